/* blobctl: the operator's window into p2pblobsd.
 *
 * Talks HTTP to the daemon's control socket (libcurl over AF_UNIX). When the daemon is down,
 * `stat` and `ls` read the index read-only instead and say so. Exit codes are part of the
 * interface, so scripts can tell failures apart:
 *   0 success, 1 failed (the daemon or the origin said no), 2 bad arguments,
 *   3 the daemon is not running, 4 no such blob, 5 permission denied (not root).
 * Human output is aligned and readable at a glance; colour and progress bars only on a TTY
 * (and never with NO_COLOR set); --json output has stable keys. */
#include "tools/blobctl_int.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "net/api_routes.h"
#include "tools/blobctl_layers.h"
#include "tools/blobctl_snapshots.h"
#include "tools/containerd_config.h"
#include "util/digest.h"
#include "util/parse.h"

#define DEFAULT_SOCKET "/run/p2pblobs/control.sock"
#define DEFAULT_STATE_DIR "/var/cache/p2pblobs"

/* ---- output helpers ------------------------------------------------------------------- */

const char *bc_bold(const struct opts *o) {
        return o->colour ? "\033[1m" : "";
}
const char *bc_red(const struct opts *o) {
        return o->colour ? "\033[31m" : "";
}
const char *bc_yellow(const struct opts *o) {
        return o->colour ? "\033[33m" : "";
}
const char *bc_green(const struct opts *o) {
        return o->colour ? "\033[32m" : "";
}
const char *bc_reset(const struct opts *o) {
        return o->colour ? "\033[0m" : "";
}

const char *bc_human(uint64_t bytes, char *buf, size_t len) {
        format_size(bytes, buf, len);
        return buf;
}

const char *bc_ago(int64_t when, char *buf, size_t len) {
        if (when <= 0) {
                snprintf(buf, len, "never");
                return buf;
        }
        int64_t d = (int64_t)time(NULL) - when;
        if (d < 0)
                d = 0;
        if (d < 120)
                snprintf(buf, len, "%" PRId64 "s ago", d);
        else if (d < 7200)
                snprintf(buf, len, "%" PRId64 "m ago", d / 60);
        else if (d < 172800)
                snprintf(buf, len, "%" PRId64 "h ago", d / 3600);
        else
                snprintf(buf, len, "%" PRId64 "d ago", d / 86400);
        return buf;
}

uint64_t bc_num(json_t *obj, const char *a, const char *b) {
        json_t *v = json_object_get(obj, a);
        if (b)
                v = json_object_get(v, b);
        return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

double bc_pct(uint64_t part, uint64_t whole) {
        return whole ? 100.0 * (double)part / (double)whole : 0.0;
}
void bc_print_json(json_t *v) {
        json_dumpf(v, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
        putchar('\n');
}

/* Accepts "sha256:<hex>" or a bare 64-hex digest; writes the canonical form. */
static int digest_arg(const char *arg, char out[DIGEST_HEX_LEN + 8], struct digest *ret) {
        struct digest d;
        if (digest_parse(arg, &d) < 0 && digest_from_hex(arg, strlen(arg), &d) < 0) {
                fprintf(stderr,
                        "blobctl: \"%s\" is not a digest (want sha256:<64 lowercase hex>)\n", arg);
                return -EINVAL;
        }
        memcpy(out, "sha256:", 7);
        digest_to_hex(&d, out + 7);
        *ret = d;
        return 0;
}
/* ---- add, pin, unpin, evict, verify ------------------------------------------------------- */

static int cmd_add(const struct opts *o, const char *ref) {
        json_t *out = NULL;
        int rc = bc_request(o, &(struct api_request){.route = API_ADD, .arg[API_ARG_REF] = ref},
                            &out, false);
        if (rc != EXIT_OK)
                return rc;
        if (o->json)
                bc_print_json(out);
        else
                printf("%s %" PRIu64 "\n", json_string_value(json_object_get(out, "digest")),
                       bc_num(out, "size", NULL));
        json_decref(out);
        return EXIT_OK;
}

static int cmd_action(const struct opts *o, const char *action, const char *arg) {
        char dg[DIGEST_HEX_LEN + 8];
        struct api_request q = {.route = API_EVICT_ALL};
        if (!o->all || strcmp(action, "evict") != 0) {
                q.route = API_BLOB_ACTION;
                if (api_action_find(action, strlen(action), &q.action) < 0 ||
                    digest_arg(arg, dg, &q.digest) < 0)
                        return EXIT_USAGE;
        }
        json_t *out = NULL;
        int rc = bc_request(o, &q, &out, false);
        if (rc != EXIT_OK)
                return rc;
        char a[32];
        if (o->json) {
                bc_print_json(out);
        } else if (strcmp(action, "evict") == 0) {
                printf("evicted %" PRIu64 " chunks (%s)\n", bc_num(out, "evicted_chunks", NULL),
                       bc_human(bc_num(out, "evicted_bytes", NULL), a, sizeof(a)));
        } else if (strcmp(action, "verify") == 0) {
                uint64_t bad = bc_num(out, "bad", NULL), lost = bc_num(out, "lost", NULL);
                printf("%s: %" PRIu64 " chunks checked, %" PRIu64 " ok, %s%" PRIu64 " bad, %" PRIu64
                       " lost%s, %" PRIu64 " without a recorded digest\n",
                       dg, bc_num(out, "checked", NULL), bc_num(out, "ok", NULL),
                       bad || lost ? bc_red(o) : "", bad, lost, bad || lost ? bc_reset(o) : "",
                       bc_num(out, "unknown", NULL));
                if (bad || lost)
                        rc = EXIT_FAILED;
        } else {
                printf("%s %s\n", json_string_value(json_object_get(out, "digest")),
                       json_is_true(json_object_get(out, "pinned")) ? "pinned" : "unpinned");
        }
        json_decref(out);
        return rc;
}

/* ---- prefetch ------------------------------------------------------------------------------ */

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
        (void)sig;
        interrupted = 1;
}

static void draw_bar(const char *dg, uint64_t done, uint64_t total, double rate) {
        const int width = 24;
        int filled = total ? (int)((double)done * width / (double)total) : width;
        char bar[64];
        for (int i = 0; i < width; i++)
                bar[i] = i < filled ? '#' : '-';
        bar[width] = '\0';
        char a[32], b[32], r[32], eta[32] = "";
        if (rate > 0 && done < total)
                snprintf(eta, sizeof(eta), " ETA %.0fs", (double)(total - done) / rate);
        fprintf(stderr, "\r%.19s [%s] %3.0f%% %s / %s %s/s%s\033[K", dg, bar, bc_pct(done, total),
                bc_human(done, a, sizeof(a)), bc_human(total, b, sizeof(b)),
                bc_human((uint64_t)rate, r, sizeof(r)), eta);
}

static int prefetch_one(const struct opts *o, const char *arg) {
        char dg[DIGEST_HEX_LEN + 8];
        struct api_request q = {.route = API_BLOB_ACTION, .action = API_PREFETCH};
        if (digest_arg(arg, dg, &q.digest) < 0)
                return EXIT_USAGE;
        json_t *b = NULL;
        int rc = bc_request(o, &q, &b, false);
        if (rc != EXIT_OK)
                return rc;
        q.route = API_BLOB; /* then its progress */
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        uint64_t total = bc_num(b, "size", NULL), chunks = bc_num(b, "chunks", NULL);
        uint64_t start = chunks ? total * bc_num(b, "chunks_present", NULL) / chunks : total;
        bool show = o->err_tty && !o->json; /* the bar is drawn on stderr */
        for (;;) {
                uint64_t present = bc_num(b, "chunks_present", NULL);
                uint64_t done = chunks ? total * present / chunks : total;
                bool running = json_is_true(json_object_get(b, "prefetching"));
                const char *err = json_string_value(json_object_get(b, "prefetch_error"));
                struct timespec t;
                clock_gettime(CLOCK_MONOTONIC, &t);
                double dt = (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9;
                double rate = dt > 0 ? (double)(done - (done > start ? start : done)) / dt : 0;
                if (show)
                        draw_bar(dg, done, total, rate);
                if (!running || interrupted) {
                        if (show)
                                fputc('\n', stderr);
                        if (err) {
                                fprintf(stderr, "blobctl: prefetch of %s stopped: %s\n", dg, err);
                                rc = EXIT_FAILED;
                        } else if (interrupted) {
                                fprintf(stderr, "blobctl: interrupted; the daemon keeps "
                                                "fetching in the background\n");
                                rc = EXIT_FAILED;
                        } else if (o->json) {
                                bc_print_json(b);
                        } else if (!show) {
                                char a[32];
                                printf("%s %s present\n", dg, bc_human(done, a, sizeof(a)));
                        }
                        json_decref(b);
                        return rc;
                }
                json_decref(b);
                b = NULL;
                usleep(200 * 1000);
                rc = bc_request(o, &q, &b, false);
                if (rc != EXIT_OK) {
                        if (show)
                                fputc('\n', stderr);
                        return rc;
                }
        }
}

/* ---- main ---------------------------------------------------------------------------------- */

static void usage(FILE *out) {
        fprintf(out,
                "Usage: blobctl [--socket PATH] [--state-dir DIR] COMMAND [ARGS]\n\n"
                "Commands:\n"
                "  stat [--json] [--watch [SECONDS]]      cache, fetch, error and memory figures\n"
                "  ls [--json]                            the blobs this node knows\n"
                "  peers [--json]                         peers: state, locality, latency, "
                "bytes\n"
                "  add REGISTRY/REPOSITORY@sha256:<hex>   register a blob in the tree\n"
                "  prefetch DIGEST...                     fetch whole blobs now (progress on a "
                "TTY)\n"
                "  evict DIGEST | --all                   drop cached chunks (not the blob)\n"
                "  pin DIGEST / unpin DIGEST              pinned blobs are evicted last\n"
                "  verify DIGEST                          re-hash present chunks against their "
                "recorded digests\n"
                "  layer add REGISTRY/REPO@sha256:<hex> [--diff-id D] [--toc-digest D]\n"
                "            [--media-type T] [--wait [SECONDS]]  show a layer as a file tree\n"
                "  layers [--json]                        layers: format, index state, files, "
                "bytes fetched\n"
                "  layer ls DIGEST [PATH] [--json]        the files of a layer directory\n"
                "  snapshots [--json]                     the snapshotter's snapshots, remote or "
                "not\n"
                "  containerd-config --registry HOST...   hosts.toml for the mirror (--help)\n\n"
                "Options:\n"
                "  --socket PATH     the daemon's control socket [" DEFAULT_SOCKET "]\n"
                "  --state-dir DIR   where index.db is read when the daemon is down "
                "[" DEFAULT_STATE_DIR "]\n"
                "  --json            machine-readable output with stable keys\n"
                "  -h, --help        this help\n\n"
                "DIGEST is sha256:<64 hex> or the bare hex.\n"
                "Exit status: 0 ok, 1 failed, 2 bad arguments, 3 daemon not running, 4 no such "
                "blob, 5 permission denied (run as root).\n");
}

int main(int argc, char **argv) {
        struct opts o = {
                .socket_path = DEFAULT_SOCKET, .state_dir = DEFAULT_STATE_DIR, .interval_s = 2};
        static const struct option gopts[] = {{"socket", required_argument, NULL, 's'},
                                              {"state-dir", required_argument, NULL, 'd'},
                                              {"help", no_argument, NULL, 'h'},
                                              {NULL, 0, NULL, 0}};
        int c;
        /* "+": stop at the command, so its own flags are left for it. */
        while ((c = getopt_long(argc, argv, "+h", gopts, NULL)) != -1) {
                switch (c) {
                case 's':
                        o.socket_path = optarg;
                        break;
                case 'd':
                        o.state_dir = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return EXIT_OK;
                default:
                        usage(stderr);
                        return EXIT_USAGE;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return EXIT_USAGE;
        }
        const char *cmd = argv[optind++];
        if (strcmp(cmd, "containerd-config") == 0) /* its own options: containerd_config.c */
                return cmd_containerd_config(argc - optind + 1, argv + optind - 1);
        if (strcmp(cmd, "layer") == 0 || strcmp(cmd, "layers") == 0) { /* blobctl_layers.c */
                curl_global_init(CURL_GLOBAL_DEFAULT);
                signal(SIGPIPE, SIG_IGN);
                int lrc = blobctl_layers(cmd, argc - optind, argv + optind, bc_request_layers, &o);
                curl_global_cleanup();
                return lrc;
        }
        const char *args[64];
        size_t nargs = 0;
        for (int i = optind; i < argc; i++) {
                const char *a = argv[i];
                if (strcmp(a, "--json") == 0) {
                        o.json = true;
                } else if (strcmp(a, "--all") == 0) {
                        o.all = true;
                } else if (strcmp(a, "--watch") == 0) {
                        o.watch = true;
                        uint64_t v;
                        if (i + 1 < argc && parse_u64(argv[i + 1], 1, 3600, &v) == 0) {
                                o.interval_s = (unsigned)v;
                                i++;
                        }
                } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
                        usage(stdout);
                        return EXIT_OK;
                } else if (a[0] == '-') {
                        fprintf(stderr, "blobctl %s: unknown option \"%s\"; see blobctl --help\n",
                                cmd, a);
                        return EXIT_USAGE;
                } else if (nargs < sizeof(args) / sizeof(args[0])) {
                        args[nargs++] = a;
                } else {
                        fprintf(stderr, "blobctl %s: too many arguments\n", cmd);
                        return EXIT_USAGE;
                }
        }
        o.tty = isatty(STDOUT_FILENO);
        o.err_tty = isatty(STDERR_FILENO);
        const char *no_colour = getenv("NO_COLOR");
        o.colour = o.tty && !(no_colour && no_colour[0]);

        struct cmd_shape {
                const char *name;
                size_t min, max; /* positional arguments */
        } shapes[] = {{"stat", 0, 0},      {"ls", 0, 0},       {"peers", 0, 0}, {"add", 1, 1},
                      {"prefetch", 1, 64}, {"evict", 0, 1},    {"pin", 1, 1},   {"unpin", 1, 1},
                      {"verify", 1, 1},    {"snapshots", 0, 0}};
        const struct cmd_shape *shape = NULL;
        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
                if (strcmp(shapes[i].name, cmd) == 0)
                        shape = &shapes[i];
        if (!shape) {
                fprintf(stderr, "blobctl: unknown command \"%s\"; see blobctl --help\n", cmd);
                return EXIT_USAGE;
        }
        bool evict_ok = strcmp(cmd, "evict") != 0 || (o.all ? nargs == 0 : nargs == 1);
        if (nargs < shape->min || nargs > shape->max || !evict_ok) {
                fprintf(stderr, "blobctl %s: wrong arguments; see blobctl --help\n", cmd);
                return EXIT_USAGE;
        }
        if ((o.watch && strcmp(cmd, "stat") != 0) || (o.all && strcmp(cmd, "evict") != 0)) {
                fprintf(stderr, "blobctl %s: option not valid here; see blobctl --help\n", cmd);
                return EXIT_USAGE;
        }

        curl_global_init(CURL_GLOBAL_DEFAULT);
        signal(SIGPIPE, SIG_IGN);
        int rc;
        if (strcmp(cmd, "stat") == 0) {
                rc = bc_cmd_stat(&o);
        } else if (strcmp(cmd, "ls") == 0) {
                rc = bc_cmd_ls(&o);
        } else if (strcmp(cmd, "peers") == 0) {
                rc = bc_cmd_peers(&o);
        } else if (strcmp(cmd, "add") == 0) {
                rc = cmd_add(&o, args[0]);
        } else if (strcmp(cmd, "snapshots") == 0) {
                json_t *arr = NULL;
                rc = bc_request(&o, &(struct api_request){.route = API_SNAPSHOTS}, &arr, false);
                if (rc == EXIT_OK && o.json)
                        bc_print_json(arr);
                else if (rc == EXIT_OK)
                        blobctl_print_snapshots(stdout, arr);
                json_decref(arr);
        } else if (strcmp(cmd, "prefetch") == 0) {
                struct sigaction sa = {.sa_handler = on_sigint};
                sigaction(SIGINT, &sa, NULL);
                rc = EXIT_OK;
                char dg[DIGEST_HEX_LEN + 8];
                struct digest d;
                for (size_t i = 0; i < nargs && rc == EXIT_OK; i++) /* all valid before any fetch */
                        if (digest_arg(args[i], dg, &d) < 0)
                                rc = EXIT_USAGE;
                for (size_t i = 0; i < nargs && rc == EXIT_OK && !interrupted; i++)
                        rc = prefetch_one(&o, args[i]);
        } else {
                rc = cmd_action(&o, cmd, nargs ? args[0] : NULL);
        }
        curl_global_cleanup();
        return rc;
}
