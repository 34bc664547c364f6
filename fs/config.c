/* The option table and its three readers (defaults, INI file via inih, getopt_long).
 * Adding an option is one row in `options` and one field in struct daemon_config. */
#include "fs/config.h"

#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/log.h"
#include "util/parse.h"

enum opt_type {
        OPT_STRING,
        OPT_SIZE,
        OPT_DURATION,
        OPT_UINT,
        OPT_BOOL,
        OPT_LEVEL,
        OPT_LIST,
        OPT_FLAG
};

/* What SIGHUP does with a changed value (fs/main.c's reload()). */
enum opt_reload {
        OPT_RESTART = 0, /* wired into threads, sockets or the mount at start: logged as such */
        OPT_LIVE,        /* applied by reload() at once */
        OPT_START_ONLY,  /* command-line only (--config, --foreground ...): never compared */
};

struct opt_def {
        const char *name;
        enum opt_type type;
        const char *def; /* NULL: no default */
        uint64_t min, max;
        size_t offset;
        size_t count_offset; /* OPT_LIST: where the element count lives */
        const char *metavar;
        const char *help;
        enum opt_reload reload;
};

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
        {"log-level", OPT_LEVEL, "info", 0, 0, F(log_level), 0, "LEVEL",
         "error, warning, notice, info or debug", OPT_LIVE},
        {"foreground", OPT_FLAG, "0", 0, 0, F(foreground), 0, NULL,
         "stay in the foreground (systemd, tests)", OPT_START_ONLY},
        {"help", OPT_FLAG, "0", 0, 0, F(help), 0, NULL, "show this help", OPT_START_ONLY},
        {"version", OPT_FLAG, "0", 0, 0, F(version), 0, NULL, "show the version", OPT_START_ONLY},
};
#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

/* Where parse errors go: stderr (the daemon's log), or what config_set_error_stream() said. */
static FILE *error_stream;
#define ERRS (error_stream ? error_stream : stderr)

void config_set_error_stream(FILE *f) {
        error_stream = f;
}

/* The field at OFFSET of CFG. offsetof() of a member of the right type put it there, so the
 * alignment is the member's own; going through void * says so to -Wcast-align. */
static void *opt_field(struct daemon_config *cfg, size_t offset) {
        return (char *)cfg + offset;
}

/* Appends "host:port" values, comma-separated, to the list option O. */
static int add_list_values(struct daemon_config *cfg, const struct opt_def *o, const char *value,
                           const char *origin) {
        char **list = opt_field(cfg, o->offset);
        size_t *count = opt_field(cfg, o->count_offset);
        const char *p = value;
        for (;;) {
                const char *end = strchr(p, ',');
                size_t n = end ? (size_t)(end - p) : strlen(p);
                char item[300];
                char host[256];
                uint16_t port;
                if (n == 0 || n >= sizeof(item)) {
                        fprintf(ERRS, "%s: --%s wants HOST:PORT[,HOST:PORT...], got \"%s\"\n",
                                origin, o->name, value);
                        return -EINVAL;
                }
                memcpy(item, p, n);
                item[n] = '\0';
                if (parse_hostport(item, host, sizeof(host), &port) < 0) {
                        fprintf(ERRS, "%s: --%s wants HOST:PORT, got \"%s\"\n", origin, o->name,
                                item);
                        return -EINVAL;
                }
                if (*count >= CONFIG_LIST_MAX) {
                        fprintf(ERRS, "%s: too many --%s values (max %d)\n", origin, o->name,
                                CONFIG_LIST_MAX);
                        return -EINVAL;
                }
                char *copy = strdup(item);
                if (!copy)
                        return -ENOMEM;
                list[(*count)++] = copy;
                if (!end)
                        return 0;
                p = end + 1;
        }
}

static int set_value(struct daemon_config *cfg, const struct opt_def *o, const char *value,
                     const char *origin) {
        void *field = (char *)cfg + o->offset;
        int r = 0;
        uint64_t u = 0;
        switch (o->type) {
        case OPT_STRING: {
                char *copy = strdup(value);
                if (!copy)
                        return -ENOMEM;
                free(*(char **)field);
                *(char **)field = copy;
                return 0;
        }
        case OPT_LIST:
                return add_list_values(cfg, o, value, origin);
        case OPT_SIZE:
                r = parse_size(value, &u);
                break;
        case OPT_DURATION:
                r = parse_duration_ms(value, &u);
                break;
        case OPT_UINT:
                r = parse_u64(value, o->min, o->max, &u);
                break;
        case OPT_BOOL:
        case OPT_FLAG: {
                bool b;
                r = parse_bool(value, &b);
                if (r == 0)
                        *(bool *)field = b;
                break;
        }
        case OPT_LEVEL: {
                int l;
                r = log_parse_level(value, &l);
                if (r == 0)
                        *(int *)field = l;
                break;
        }
        }
        if (r == 0 && (o->type == OPT_SIZE || o->type == OPT_DURATION || o->type == OPT_UINT)) {
                if (u < o->min || (o->max && u > o->max))
                        r = -ERANGE;
                else
                        *(uint64_t *)field = u;
        }
        if (r < 0)
                fprintf(ERRS, "%s: invalid value \"%s\" for %s: %s\n", origin, value, o->name,
                        r == -ERANGE ? "out of range" : "malformed");
        return r;
}

static const struct opt_def *find_option(const char *name) {
        for (size_t i = 0; i < N_OPTIONS; i++)
                if (strcmp(options[i].name, name) == 0)
                        return &options[i];
        return NULL;
}

struct ini_ctx {
        struct daemon_config *cfg;
        const char *path;
        int err;
};

static int on_ini(void *ud, const char *section, const char *name, const char *value) {
        struct ini_ctx *c = ud;
        (void)section; /* one flat namespace; sections are allowed for readability */
        const struct opt_def *o = find_option(name);
        if (!o || o->type == OPT_FLAG || strcmp(name, "config") == 0) {
                fprintf(ERRS, "%s: unknown key \"%s\"\n", c->path, name);
                c->err = -EINVAL;
                return 1; /* keep going: report every bad key at once */
        }
        if (set_value(c->cfg, o, value, c->path) < 0)
                c->err = -EINVAL;
        return 1;
}

int config_defaults(struct daemon_config *cfg) {
        memset(cfg, 0, sizeof(*cfg));
        for (size_t i = 0; i < N_OPTIONS; i++)
                if (options[i].def && set_value(cfg, &options[i], options[i].def, "default") < 0)
                        return -EINVAL;
        return 0;
}

int config_parse_file(struct daemon_config *cfg, FILE *f, const char *path) {
        struct ini_ctx ctx = {.cfg = cfg, .path = path};
        int line = ini_parse_file(f, on_ini, &ctx);
        if (line > 0) {
                fprintf(ERRS, "%s:%d: syntax error\n", path, line);
                return -EINVAL;
        }
        if (line < 0) /* -1: cannot open (not for a stream), -2: out of memory */
                return line == -2 ? -ENOMEM : -EINVAL;
        return ctx.err;
}

int config_check(const struct daemon_config *cfg) {
        char host[256];
        uint16_t port;
        if (strcmp(cfg->listen, "off") != 0 &&
            parse_hostport(cfg->listen, host, sizeof(host), &port) < 0) {
                fprintf(ERRS, "invalid value \"%s\" for listen: want ADDR:PORT or off\n",
                        cfg->listen);
                return -EINVAL;
        }
        if (strcmp(cfg->mirror_listen, "off") != 0 &&
            parse_hostport(cfg->mirror_listen, host, sizeof(host), &port) < 0) {
                fprintf(ERRS, "invalid value \"%s\" for mirror-listen: want ADDR:PORT or off\n",
                        cfg->mirror_listen);
                return -EINVAL;
        }
        return 0;
}

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
                        if (set_value(cfg, &options[c], optarg, "--config") < 0)
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
                if (set_value(cfg, o, v, "command line") < 0)
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

void config_free(struct daemon_config *cfg) {
        for (size_t i = 0; i < N_OPTIONS; i++)
                if (options[i].type == OPT_STRING) {
                        char **p = opt_field(cfg, options[i].offset);
                        free(*p);
                        *p = NULL;
                }
        for (size_t i = 0; i < N_OPTIONS; i++)
                if (options[i].type == OPT_LIST) {
                        char **list = opt_field(cfg, options[i].offset);
                        size_t *count = opt_field(cfg, options[i].count_offset);
                        for (size_t j = 0; j < *count; j++)
                                free(list[j]);
                        *count = 0;
                }
}

void config_usage(FILE *out, const char *prog) {
        fprintf(out,
                "Usage: %s [OPTIONS]\n\n"
                "Mounts a read-only tree of container-image blobs, fetched lazily and "
                "cached under a byte budget.\n\n",
                prog);
        for (size_t i = 0; i < N_OPTIONS; i++) {
                const struct opt_def *o = &options[i];
                char left[64];
                snprintf(left, sizeof(left), "--%s%s%s", o->name, o->metavar ? " " : "",
                         o->metavar ? o->metavar : "");
                fprintf(out, "  %-32s %s", left, o->help);
                if (o->def && o->type != OPT_FLAG)
                        fprintf(out, " [%s]", o->def);
                fputc('\n', out);
        }
}

static bool opt_equal(const struct daemon_config *a, const struct daemon_config *b,
                      const struct opt_def *o) {
        const void *fa = (const char *)a + o->offset, *fb = (const char *)b + o->offset;
        switch (o->type) {
        case OPT_STRING: {
                const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
                return sa == sb || (sa && sb && strcmp(sa, sb) == 0);
        }
        case OPT_LIST: {
                char *const *la = fa, *const *lb = fb;
                size_t na = *(const size_t *)(const void *)((const char *)a + o->count_offset);
                size_t nb = *(const size_t *)(const void *)((const char *)b + o->count_offset);
                if (na != nb)
                        return false;
                for (size_t i = 0; i < na; i++)
                        if (strcmp(la[i], lb[i]) != 0)
                                return false;
                return true;
        }
        case OPT_SIZE:
        case OPT_DURATION:
        case OPT_UINT:
                return *(const uint64_t *)fa == *(const uint64_t *)fb;
        case OPT_BOOL:
        case OPT_FLAG:
                return *(const bool *)fa == *(const bool *)fb;
        case OPT_LEVEL:
                return *(const int *)fa == *(const int *)fb;
        }
        return true;
}

void config_diff(const struct daemon_config *old, const struct daemon_config *new,
                 void (*fn)(void *ud, const char *key, bool live), void *ud) {
        for (size_t i = 0; i < N_OPTIONS; i++)
                if (options[i].reload != OPT_START_ONLY && !opt_equal(old, new, &options[i]))
                        fn(ud, options[i].name, options[i].reload == OPT_LIVE);
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
        for (size_t i = 0; i < N_OPTIONS; i++) {
                const struct opt_def *o = &options[i];
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
