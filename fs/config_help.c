/* --help and the man page's OPTIONS entries, both from the option table (and, for the man
 * page, the longer text of man_text). */
#include "fs/config_int.h"

#include <string.h>

void config_usage(FILE *out, const char *prog) {
        fprintf(out,
                "Usage: %s [OPTIONS]\n\n"
                "Mounts a read-only tree of container-image blobs, fetched lazily and "
                "cached under a byte budget.\n\n",
                prog);
        for (size_t i = 0; i < cfg_n_options; i++) {
                const struct opt_def *o = &cfg_options[i];
                char left[64];
                snprintf(left, sizeof(left), "--%s%s%s", o->name, o->metavar ? " " : "",
                         o->metavar ? o->metavar : "");
                fprintf(out, "  %-32s %s", left, o->help);
                if (o->def && o->type != OPT_FLAG)
                        fprintf(out, " [%s]", o->def);
                fputc('\n', out);
        }
}

/* The man page's text for each option (roff), beside the one-line help of the table: the
 * OPTIONS section of man/p2pblobsd.8 is generated from both (config_man_options, `make man`),
 * and `make lint` fails when the page and the table disagree. An option missing here is
 * documented by its help line. */
static const struct {
        const char *name, *roff;
} man_text[] = {
        {"config", "INI configuration file. A missing file is fine; an unknown key, a bad value or "
                   "a directory\n"
                   "is an error.\n"},
        {"mountpoint", "Where the blob tree is mounted. Created if missing; a stale mount left "
                       "there by a crash is\n"
                       "detached first.\n"},
        {"state-dir", "Holds\n"
                      ".I index.db\n"
                      "and the chunk store. A cache: deleting it while the daemon is stopped only "
                      "costs refetches.\n"},
        {"control-socket", "Unix socket\n"
                           ".BR blobctl (8)\n"
                           "talks to, mode 0600.\n"},
        {"listen", "Serve\n"
                   ".BR /healthz ,\n"
                   ".B /readyz\n"
                   "(200 once the mount answers, 503 before and while stopping) and\n"
                   ".B /metrics\n"
                   "(Prometheus text) over HTTP here;\n"
                   ".B off\n"
                   "disables it. With peers, the peer protocol is served here too. At most 256 "
                   "connections, 32\n"
                   "more that only local root (kubelet probing the node) may take, and 32 per "
                   "client (an\n"
                   "address, or a local user); see\n"
                   ".BR \\-\\-http-header-timeout .\n"},
        {"mirror-listen",
         "Serve containerd as a pull-through registry mirror here (hosts.toml; see\n"
         ".B containerd-config\n"
         "in\n"
         ".BR blobctl (8)):\n"
         "blobs by digest through the same read path as the tree (and registered in it), manifests "
         "by\n"
         "digest kept in the same cache, under the same budget,\n"
         "tags resolved at the origin each time (the last known digest, logged as stale, while the "
         "origin\n"
         "is unreachable). What it cannot serve it answers at once with 404, so containerd falls "
         "back to\n"
         "the origin. It uses the daemon's own registry credentials and never forwards a "
         "client's.\n"
         ".B off\n"
         "disables it; a port already taken is logged and the daemon runs without it.\n"
         "It fetches only from registries the node is configured for (see\n"
         ".BR \\-\\-mirror-registries );\n"
         "anything else is answered 404 at once.\n"
         "Any local user can connect to it: it keeps 32 of its 64 connections for root "
         "(containerd) and\n"
         "gives any other user at most 8 (the uid of a loopback client is the kernel's word, "
         "from its\n"
         "socket table).\n"},
        {"mirror-registries",
         "The registries the mirror fetches from, besides those given by\n"
         ".BR \\-\\-insecure-registry ,\n"
         "those with credentials in\n"
         ".B \\-\\-registry-config\n"
         "and those with a\n"
         ".I hosts.toml\n"
         "of their own in\n"
         ".BR \\-\\-mirror-hosts-dir .\n"
         ".B *\n"
         "mirrors any registry a client names in\n"
         ".IR ?ns= ,\n"
         "which lets every local user make the node fetch from any address it can reach.\n"},
        {"mirror-allow-users",
         "Serve clients other than local root through the mirror: other local users, and other "
         "hosts\n"
         "when\n"
         ".B \\-\\-mirror-listen\n"
         "is not a loopback address. Off by default: they get 403 at once, because what the "
         "mirror\n"
         "fetches it fetches with the node's registry credentials, which are for containerd's "
         "pulls\n"
         "only. On, any of them can pull what those credentials can, private images included.\n"},
        {"mirror-hosts-dir", "A registry with a\n"
                             ".I DIR/<registry>/hosts.toml\n"
                             "(what\n"
                             ".B blobctl containerd-config \\-\\-write\n"
                             "installs) is mirrored;\n"
                             ".I _default\n"
                             "names no registry and does not count.\n"},
        {"allow-other",
         "Let every local user enter the mounted tree. Off by default: the kernel lets only the\n"
         "mounting user, root (as containerd is), in. On, any local user reads every blob the "
         "node\n"
         "holds, private images' included, and opening a blob not yet cached makes the node fetch "
         "it\n"
         "from the origin with its own credentials. Lazy containers do not need it, whatever "
         "user\n"
         "they run as: overlayfs reads the layer trees with its mounter's (containerd's) "
         "credentials.\n"},
        {"snapshotter-socket",
         "Serve containerd as a proxy snapshotter on this unix socket (containerd's\n"
         ".B [proxy_plugins.p2pblobs]\n"
         "with\n"
         ".B type = \"snapshot\"\n"
         "and this\n"
         ".BR address ):\n"
         "overlay snapshots under\n"
         ".IR STATE_DIR/snapshots ,\n"
         "their metadata in the index. Empty (the default) disables it; a socket that cannot be "
         "created\n"
         "stops the daemon at start.\n"},
        {"snapshotter-lazy-wait",
         "A Prepare of an image layer (CRI's or ctr-remote's layer labels) registers the layer "
         "and waits\n"
         "this long for its tree (its index: from the store, a peer, or one pass over the layer). "
         "Ready\n"
         "in time, the layer is a remote snapshot containerd neither downloads nor unpacks; "
         "otherwise\n"
         "(and for any layer that cannot be served lazily) containerd unpacks it as usual. Other "
         "snapshot\n"
         "requests are answered during the wait. 0 turns lazy layers off.\n"},
        {"snapshotter-prefetch",
         "When containerd mounts a container's snapshot (task create) or a view whose lower "
         "layers\n"
         "include remote (lazy) layers, fetch those layers whole in the background, so later "
         "reads\n"
         "need no network. Off by default: a container then fetches only what it reads. At most\n"
         ".B \\-\\-snapshotter-prefetch-layers\n"
         "layers at once, each a few chunks at a time, so a container's own reads are never "
         "queued\n"
         "behind a whole layer; a layer larger than\n"
         ".B \\-\\-snapshotter-prefetch-max-layer\n"
         "or than half the cache budget is skipped (it would evict itself), and one waits while "
         "it and\n"
         "the layers prefetching already would together pass half the budget. Prefetched chunks "
         "are not\n"
         "pinned. zstd layers are skipped (their files are read from the seekable copy). "
         "Counted as\n"
         ".B snapshotter.prefetch\n"
         "in\n"
         ".B blobctl stat\n"
         "and /metrics.\n"},
        {"snapshotter-prefetch-layers",
         "Layers prefetched at once. Each keeps up to 8 chunk fetches in flight, and at most "
         "half of\n"
         ".B \\-\\-max-connections\n"
         "go to prefetch, so a container's own reads never wait behind one: a larger value is "
         "lowered\n"
         "to fit, with a notice (the default 16 connections fit one layer).\n"},
        {"snapshotter-prefetch-max-layer",
         "A layer whose compressed size is larger than this is not prefetched (0: no cap but "
         "half the\n"
         "cache budget).\n"},
        {"http-header-timeout", "A client of\n"
                                ".BR \\-\\-listen ,\n"
                                ".B \\-\\-mirror-listen\n"
                                "or the control socket must have sent its request's headers this "
                                "soon after connecting, or\n"
                                "after the previous answer on a kept-alive connection, however "
                                "slowly it trickles them; then\n"
                                "its connection is closed. Each server also caps connections per "
                                "client (an address, or a\n"
                                "local user) and keeps some for root only, so kubelet's probes and "
                                "containerd are answered\n"
                                "while others flood it.\n"},
        {"cache-budget", "Bytes of chunks kept on disk. The store never holds more than this plus "
                         "the chunks being\n"
                         "fetched. A smaller budget shrinks the store at once.\n"},
        {"chunk-size", "Fetch and cache granularity, one value per cluster.\n"},
        {"insecure-registry", "Reach this registry over plain HTTP. Repeatable.\n"},
        {"registry-config", "docker-style\n"
                            ".I config.json\n"
                            "with registry credentials. Credentials are never logged.\n"},
        {"ca-file", "Extra CA certificates (PEM) trusted for registries.\n"},
        {"fetch-timeout", "A chunk not fetched by then fails its readers with EIO.\n"},
        {"connect-timeout", "TCP and TLS connect timeout per attempt.\n"},
        {"verify-retry", "After a blob fails verification, reads of it fail with EIO this long "
                         "before a refetch is\n"
                         "tried.\n"},
        {"shutdown-timeout", "On SIGTERM, reads waiting on the network get this long to finish "
                             "before they fail with EIO\n"
                             "and the daemon unmounts.\n"},
        {"readahead", "Chunks fetched ahead of a sequential reader.\n"},
        {"max-inflight", "Chunk fetches in flight, readahead included.\n"},
        {"landed-chunks", "Chunks just fetched that stay in memory after they are written to "
                          "the store, so that the\n"
                          "kernel's reads that straddle a chunk edge are not read back from "
                          "disk, and so that the\n"
                          "blob's verification hashes them from memory when it runs behind the "
                          "chunks landing. Each costs a chunk of\n"
                          "memory, counted in the memory figures of\n"
                          ".BR blobctl\\ stat .\n"
                          "0 disables it.\n"},
        {"store-open-blobs", "Blobs whose store files (data and checksums) stay open between "
                             "reads, least recently\n"
                             "used closed first. A file deleted or replaced under the daemon is "
                             "noticed on the next read\n"
                             "all the same. 0: every read opens and closes them.\n"},
        {"max-connections", "Concurrent connections to origin registries.\n"},
        {"workers", "Threads writing fetched chunks to the store.\n"},
        {"max-blobs", "Blobs the node keeps track of.\n"},
        {"layer-span", "Compressed bytes between the decompression checkpoints of a gzip "
                       "layer's index: reading one\n"
                       "file inflates at most this much before its bytes. Smaller spans make "
                       "bigger indexes.\n"},
        {"layer-span-cache", "Memory kept for inflated bytes of gzip layers, so small reads of "
                             "neighbouring files do\n"
                             "not inflate the same span again. Counted in the memory figures.\n"},
        {"layer-workers", "Threads that read files of layer trees and build layer indexes (at "
                          "most half of them\n"
                          "build at once).\n"},
        {"max-layers", "Image layers the node shows under\n"
                       ".IR mountpoint /layers/sha256/.\n"},
        {"peers", "Static peers (repeatable, or comma-separated). With\n"
                  ".B \\-\\-peers\n"
                  "or\n"
                  ".BR \\-\\-peer-dns ,\n"
                  "the node shares chunks with its peers: it serves the chunks it holds on\n"
                  ".BR \\-\\-listen ,\n"
                  "announces them to each blob's home nodes, and reads missing chunks from peers "
                  "before the\n"
                  "origin.\n"},
        {"peer-dns",
         "A DNS name whose A/AAAA records are the peers (the DaemonSet's headless Service),\n"
         "re-resolved every\n"
         ".BR \\-\\-peer-refresh .\n"
         "No leader, no consensus: start-up costs the same at any cluster size.\n"},
        {"peer-port", "Port of peers found through\n"
                      ".BR \\-\\-peer-dns .\n"},
        {"peer-refresh", "How often\n"
                         ".B \\-\\-peer-dns\n"
                         "is resolved again.\n"},
        {"max-peers",
         "Members kept, self included (memory: about 500 bytes each, allocated at start). Past it\n"
         "the lowest ids are kept, so nodes that receive the same oversized answer keep the same\n"
         "members. A DNS answer is at most 64 KiB: a name with more than about 4000 A records\n"
         "cannot be resolved at all (glibc fails the lookup; the daemon logs a warning and keeps\n"
         "the members it had). Past that, split the Service and list the names in\n"
         ".B \\-\\-peers\n"
         "(each name:port is resolved every refresh).\n"},
        {"advertise-address", "The address peers reach this node at. Default: the address of the "
                              "interface that carries\n"
                              "the default route (netlink), re-read when addresses change.\n"},
        {"cluster-token-file",
         "A file holding the cluster's shared secret (one line of printable ASCII, at most 256 "
         "bytes;\n"
         "a Kubernetes Secret). With it, every peer request carries the token and the peer "
         "protocol\n"
         "(chunks, announces, locates) refuses requests without it (401); probes and\n"
         ".B /metrics\n"
         "stay open. Every node needs the same token.\n"},
        {"homes",
         "Home nodes per blob digest (rendezvous hashing): the nodes that keep its directory of\n"
         "holders.\n"},
        {"peer-connect-timeout", "Connect timeout to a peer; a peer that misses it is marked down "
                                 "at once and probed in the\n"
                                 "background.\n"},
        {"peer-stall-timeout", "A peer transfer that receives nothing this long (or takes twice as "
                               "long in all) is abandoned\n"
                               "for the next source.\n"},
        {"announce-interval",
         "How often changes in what this node holds are sent to the homes, batched.\n"},
        {"location-ttl",
         "Homes forget a holder not heard from this long; holders announce everything again every\n"
         "third of it.\n"},
        {"max-holders", "Holders a home records per blob (at most 64, the holders one locate "
                        "answer lists). When it\n"
                        "has that many and together they hold every chunk of the blob, another "
                        "node's announce is\n"
                        "answered \"full\": that node stops announcing the blob to this home until "
                        "a retry time the\n"
                        "home spaces a third of\n"
                        ".B --location-ttl\n"
                        "divided by this apart, so a slot that frees up is taken again soon.\n"},
        {"digest-waiters",
         "Digest questions a home holds at once. A reader that got a chunk from the node fetching "
         "it,\n"
         "whose word is then its only digest, asks another home for the chunk's digest; the home "
         "holds\n"
         "the question until an announce brings the digest or the reader's wait ends. Past this "
         "many, a\n"
         "question is answered at once without it, and the reader asks again shortly. Each held\n"
         "question keeps one of the 256 peer connections of\n"
         ".B \\-\\-listen\n"
         "(and its thread), hence at most 128.\n"},
        {"log-level", ".BR error ,\n"
                      ".BR warning ,\n"
                      ".BR notice ,\n"
                      ".B info\n"
                      "or\n"
                      ".BR debug .\n"},
        {"foreground",
         "Stay in the foreground (what systemd and container runtimes want). Without it the "
         "daemon\n"
         "detaches into a session of its own, and the command returns only once the mount serves: "
         "exit 0,\n"
         "or 1 when the start failed (the log, on the inherited standard error, says why).\n"},
        {"help", "Show the options with their defaults and exit.\n"},
        {"version", "Show the version and exit.\n"},

};

void config_man_options(FILE *out) {
        for (size_t i = 0; i < cfg_n_options; i++) {
                const struct opt_def *o = &cfg_options[i];
                const char *roff = NULL;
                for (size_t j = 0; j < sizeof(man_text) / sizeof(man_text[0]); j++)
                        if (strcmp(man_text[j].name, o->name) == 0)
                                roff = man_text[j].roff;
                fputs(".TP\n", out);
                if (o->metavar)
                        fprintf(out, ".BI \\-\\-%s \" %s\"\n", o->name, o->metavar);
                else
                        fprintf(out, ".B \\-\\-%s\n", o->name);
                if (roff)
                        fputs(roff, out);
                else /* the help line, as a sentence */
                        fprintf(out, "%c%s.\n",
                                o->help[0] >= 'a' && o->help[0] <= 'z' ? o->help[0] - 'a' + 'A'
                                                                       : o->help[0],
                                o->help + 1);
                if (o->reload == OPT_LIVE)
                        fputs("Reloadable with SIGHUP.\n", out);
                if (o->def && o->type != OPT_FLAG) {
                        if (o->def[0] == '/')
                                fprintf(out, "Default:\n.IR %s .\n", o->def);
                        else
                                fprintf(out, "Default: %s.\n", o->def);
                }
        }
}
