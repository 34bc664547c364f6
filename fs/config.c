/* The option table, and config_load: defaults, then the INI file (via inih), then the
 * command line (getopt_long, whose option array is sized from the table at compile time,
 * hence here). Adding an option is one row in `options` and one field in struct
 * daemon_config. The other readers of the table: config_parse.c (a value's text, the INI
 * file, defaults, freeing), config_check.c (checks across keys, SIGHUP's comparison),
 * config_help.c (--help, the man page); config_int.h is what they share. */
#include "fs/config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fs/config_int.h"

#define F(field) offsetof(struct daemon_config, field)
#define FC(field) offsetof(struct daemon_config, field)
#define GiB (UINT64_C(1) << 30)
#define MiB (UINT64_C(1) << 20)

static const struct opt_def options[] = {
        {"config", OPT_STRING, "/etc/p2pblobs/p2pblobs.conf", 0, 0, F(config_path), 0, "PATH",
         "INI configuration file (keys are these option names); missing is fine", OPT_START_ONLY},
        {"mountpoint", OPT_STRING, "/var/lib/p2pblobs", 0, 0, F(mountpoint), 0, "DIR",
         "where the blob tree is mounted", OPT_RESTART},
        {"state-dir", OPT_STRING, "/var/cache/p2pblobs", 0, 0, F(state_dir), 0, "DIR",
         "index.db and the chunk store", OPT_RESTART},
        {"control-socket", OPT_STRING, "/run/p2pblobs/control.sock", 0, 0, F(control_socket), 0,
         "PATH", "unix socket blobctl talks to", OPT_RESTART},
        {"listen", OPT_STRING, "0.0.0.0:5001", 0, 0, F(listen), 0, "ADDR:PORT",
         "HTTP server for /healthz, /readyz, /metrics (\"off\" disables)", OPT_RESTART},
        {"mirror-listen", OPT_STRING, "127.0.0.1:5000", 0, 0, F(mirror_listen), 0, "ADDR:PORT",
         "containerd pull-through mirror (hosts.toml; \"off\" disables)", OPT_RESTART},
        {"mirror-registries", OPT_STRING, NULL, 0, 0, F(mirror_registries), 0, "HOST,...",
         "registries the mirror fetches from, besides --insecure-registry, --registry-config and "
         "--mirror-hosts-dir ones (\"*\": any a local user names)",
         OPT_RESTART},
        {"mirror-allow-users", OPT_BOOL, "false", 0, 0, F(mirror_allow_users), 0, NULL,
         "serve local users other than root, and other hosts, through the mirror (and the "
         "node's registry credentials)",
         OPT_RESTART},
        {"mirror-hosts-dir", OPT_STRING, "/etc/p2pblobs/certs.d", 0, 0, F(mirror_hosts_dir), 0,
         "DIR", "a registry with DIR/<registry>/hosts.toml (blobctl containerd-config) is mirrored",
         OPT_RESTART},
        {"allow-other", OPT_BOOL, "false", 0, 0, F(allow_other), 0, NULL,
         "let every local user read the mounted tree (default: root only)", OPT_RESTART},
        {"http-header-timeout", OPT_DURATION, "10s", 100, 600 * 1000, F(http_header_timeout_ms), 0,
         "DURATION", "a client must send its request's headers within this, however slowly",
         OPT_RESTART},
        {"snapshotter-socket", OPT_STRING, "", 0, 0, F(snapshotter_socket), 0, "PATH",
         "containerd proxy snapshotter socket (proxy_plugins; empty disables)", OPT_RESTART},
        {"snapshotter-lazy-wait", OPT_DURATION, "30s", 0, 600 * 1000, F(snapshotter_lazy_wait_ms),
         0, "DURATION", "how long a layer Prepare waits for its tree before unpacking (0: no lazy)",
         OPT_RESTART},
        {"snapshotter-prefetch", OPT_BOOL, "false", 0, 0, F(snapshotter_prefetch), 0, NULL,
         "fetch the remote layers of a started container whole, in the background", OPT_RESTART},
        {"snapshotter-prefetch-layers", OPT_UINT, "1", 1, 16, F(snapshotter_prefetch_layers), 0,
         "N", "layers prefetching at once (each keeps a few chunk fetches in flight)", OPT_RESTART},
        {"snapshotter-prefetch-max-layer", OPT_SIZE, "1G", 0, UINT64_C(1) << 50,
         F(snapshotter_prefetch_max_layer), 0, "SIZE",
         "a layer larger than this (compressed) is not prefetched (0: no cap but the budget's)",
         OPT_RESTART},
        {"cache-budget", OPT_SIZE, "10G", 4 * MiB, UINT64_C(1) << 50, F(cache_budget), 0, "SIZE",
         "bytes of chunks kept on disk (512M, 10G)", OPT_LIVE},
        {"chunk-size", OPT_SIZE, "1M", 64 << 10, 16 * MiB, F(chunk_size), 0, "SIZE",
         "fetch and cache granularity; one value per cluster", OPT_RESTART},
        {"insecure-registry", OPT_LIST, NULL, 0, 0, F(insecure), FC(n_insecure), "HOST:PORT",
         "reach this registry over plain HTTP (repeatable)", OPT_RESTART},
        {"registry-config", OPT_STRING, NULL, 0, 0, F(registry_config), 0, "PATH",
         "docker-style config.json with registry credentials", OPT_RESTART},
        {"ca-file", OPT_STRING, NULL, 0, 0, F(ca_file), 0, "PATH",
         "extra CA certificates for registries", OPT_RESTART},
        {"fetch-timeout", OPT_DURATION, "30s", 100, 3600 * 1000, F(fetch_timeout_ms), 0, "DURATION",
         "a chunk not fetched by then fails its readers with EIO", OPT_RESTART},
        {"connect-timeout", OPT_DURATION, "5s", 50, 600 * 1000, F(connect_timeout_ms), 0,
         "DURATION", "TCP+TLS connect timeout per attempt", OPT_RESTART},
        {"verify-retry", OPT_DURATION, "30s", 0, 24 * 3600 * 1000, F(verify_retry_ms), 0,
         "DURATION", "after a blob fails verification, reads fail with EIO this long", OPT_RESTART},
        {"shutdown-timeout", OPT_DURATION, "10s", 0, 600 * 1000, F(shutdown_timeout_ms), 0,
         "DURATION", "on SIGTERM, reads in flight get this long to finish", OPT_LIVE},
        {"readahead", OPT_UINT, "8", 0, 256, F(readahead), 0, "CHUNKS",
         "chunks fetched ahead of a sequential reader", OPT_RESTART},
        {"max-inflight", OPT_UINT, "64", 1, 4096, F(max_inflight), 0, "N",
         "chunk fetches in flight (readahead stops at this)", OPT_RESTART},
        {"landed-chunks", OPT_UINT, "16", 0, 64, F(landed_chunks), 0, "CHUNKS",
         "chunks just fetched kept in memory for reads across a chunk edge (0: none)", OPT_RESTART},
        {"store-open-blobs", OPT_UINT, "64", 0, 4096, F(store_open_blobs), 0, "N",
         "blobs whose store files stay open for reads (2 descriptors each; 0: none)", OPT_RESTART},
        {"max-connections", OPT_UINT, "16", 1, 1024, F(max_connections), 0, "N",
         "concurrent connections to origins", OPT_RESTART},
        {"workers", OPT_UINT, "4", 1, 64, F(workers), 0, "N", "threads writing fetched chunks",
         OPT_RESTART},
        {"max-blobs", OPT_UINT, "100000", 1, 10000000, F(max_blobs), 0, "N",
         "blobs the node keeps track of", OPT_RESTART},
        {"layer-span", OPT_SIZE, "2M", MiB, 4 * MiB, F(layer_span), 0, "SIZE",
         "compressed bytes between the checkpoints of a gzip layer's index", OPT_RESTART},
        {"layer-span-cache", OPT_SIZE, "64M", 0, 16 * GiB, F(layer_span_cache), 0, "SIZE",
         "memory for inflated bytes of gzip layers (0: none)", OPT_RESTART},
        {"layer-workers", OPT_UINT, "4", 1, 64, F(layer_workers), 0, "N",
         "threads that read layer files and build layer indexes", OPT_RESTART},
        {"max-layers", OPT_UINT, "4096", 1, 1000000, F(max_layers), 0, "N",
         "image layers the node shows as file trees", OPT_RESTART},
        {"peers", OPT_LIST, NULL, 0, 0, F(peers), FC(n_peers), "HOST:PORT,...",
         "static peers (repeatable, or comma-separated)", OPT_RESTART},
        {"peer-dns", OPT_STRING, NULL, 0, 0, F(peer_dns), 0, "NAME",
         "DNS name whose A/AAAA records are the peers (a headless Service)", OPT_RESTART},
        {"peer-port", OPT_UINT, "5001", 1, 65535, F(peer_port), 0, "PORT",
         "port of peers found through --peer-dns", OPT_RESTART},
        {"peer-refresh", OPT_DURATION, "30s", 100, 3600 * 1000, F(peer_refresh_ms), 0, "DURATION",
         "how often --peer-dns is resolved again", OPT_RESTART},
        {"max-peers", OPT_UINT, "4096", 2, 65536, F(max_peers), 0, "N",
         "members kept (the lowest ids past it, so every node keeps the same ones)", OPT_RESTART},
        {"advertise-address", OPT_STRING, NULL, 0, 0, F(advertise_address), 0, "ADDR",
         "address peers reach this node at (default: the default route's interface)", OPT_RESTART},
        {"cluster-token-file", OPT_STRING, NULL, 0, 0, F(cluster_token_file), 0, "PATH",
         "file holding the cluster's shared secret: peer requests without it are refused",
         OPT_RESTART},
        {"homes", OPT_UINT, "3", 1, 16, F(homes), 0, "K",
         "directory homes per blob (rendezvous hashing)", OPT_RESTART},
        {"peer-connect-timeout", OPT_DURATION, "250ms", 10, 60 * 1000, F(peer_connect_timeout_ms),
         0, "DURATION", "connect timeout to a peer; a peer that misses it is marked down",
         OPT_RESTART},
        {"peer-stall-timeout", OPT_DURATION, "1s", 50, 60 * 1000, F(peer_stall_timeout_ms), 0,
         "DURATION", "a peer transfer that receives nothing this long moves to the next source",
         OPT_RESTART},
        {"announce-interval", OPT_DURATION, "250ms", 10, 60 * 1000, F(announce_interval_ms), 0,
         "DURATION", "how often changes in what this node holds are sent to the homes",
         OPT_RESTART},
        {"location-ttl", OPT_DURATION, "60s", 1000, 3600 * 1000, F(location_ttl_ms), 0, "DURATION",
         "homes forget a holder not heard from this long (it re-announces at a third)",
         OPT_RESTART},
        {"max-holders", OPT_UINT, "32", 1, 64, F(max_holders), 0, "N",
         "holders a home records per blob; others are told it is full", OPT_RESTART},
        {"home-locate-rate", OPT_UINT, "20", 1, 100000, F(home_locate_rate), 0, "N",
         "locates per second per blob a home aims at: its answers say how long to reuse them",
         OPT_RESTART},
        {"digest-waiters", OPT_UINT, "64", 1, CONFIG_DIGEST_WAITERS_MAX, F(digest_waiters), 0, "N",
         "digest questions a home holds until an announce answers them (more: at once)",
         OPT_RESTART},
        {"log-level", OPT_LEVEL, "info", 0, 0, F(log_level), 0, "LEVEL",
         "error, warning, notice, info or debug", OPT_LIVE},
        {"foreground", OPT_FLAG, "0", 0, 0, F(foreground), 0, NULL,
         "stay in the foreground (systemd, tests)", OPT_START_ONLY},
        {"help", OPT_FLAG, "0", 0, 0, F(help), 0, NULL, "show this help", OPT_START_ONLY},
        {"version", OPT_FLAG, "0", 0, 0, F(version), 0, NULL, "show the version", OPT_START_ONLY},
};
#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

const struct opt_def *const cfg_options = options;
const size_t cfg_n_options = N_OPTIONS;

int config_load(struct daemon_config *cfg, int argc, char **argv) {
        if (config_defaults(cfg) < 0)
                return -EINVAL;

        struct option longopts[N_OPTIONS + 1];
        for (size_t i = 0; i < N_OPTIONS; i++)
                longopts[i] = (struct option){options[i].name,
                                              options[i].type == OPT_FLAG   ? no_argument
                                              : options[i].type == OPT_BOOL ? optional_argument
                                                                            : required_argument,
                                              NULL, (int)i};
        longopts[N_OPTIONS] = (struct option){0};

        /* Pass 1: only --config, so the file is read before the flags override it. */
        opterr = 0;
        optind = 1;
        int c, li;
        while ((c = getopt_long(argc, argv, "h", longopts, &li)) != -1)
                if (c >= 0 && (size_t)c < N_OPTIONS && strcmp(options[c].name, "config") == 0)
                        if (cfg_set_value(cfg, &options[c], optarg, "--config") < 0)
                                return -EINVAL;

        FILE *f = fopen(cfg->config_path, "re");
        struct stat st;
        if (f && fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
                /* fopen() opens a directory and reading it fails: it would pass for empty. */
                fprintf(ERRS, "%s: is a directory; want an INI file (or --config PATH)\n",
                        cfg->config_path);
                fclose(f);
                return -EINVAL;
        }
        if (f) {
                cfg->config_found = true;
                int r = config_parse_file(cfg, f, cfg->config_path);
                fclose(f);
                if (r < 0)
                        return r;
        } else if (errno != ENOENT) {
                fprintf(ERRS, "%s: %s\n", cfg->config_path, strerror(errno));
                return -EINVAL;
        }

        opterr = 1;
        optind = 1;
        while ((c = getopt_long(argc, argv, "h", longopts, &li)) != -1) {
                if (c == 'h') {
                        cfg->help = true;
                        continue;
                }
                if (c < 0 || (size_t)c >= N_OPTIONS) {
                        fprintf(ERRS, "try '%s --help'\n", argv[0]);
                        return -EINVAL;
                }
                const struct opt_def *o = &options[c];
                if (strcmp(o->name, "config") == 0)
                        continue;
                /* A flag, or a bool given bare (--allow-other), is true. */
                const char *v =
                        o->type == OPT_FLAG || (o->type == OPT_BOOL && !optarg) ? "1" : optarg;
                if (cfg_set_value(cfg, o, v, "command line") < 0)
                        return -EINVAL;
        }
        if (config_check(cfg) < 0)
                return -EINVAL;
        if (optind < argc) {
                fprintf(ERRS, "%s: unexpected argument \"%s\"; try --help\n", argv[0],
                        argv[optind]);
                return -EINVAL;
        }
        return 0;
}
