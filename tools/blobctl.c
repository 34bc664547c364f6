/* blobctl: the operator's window into p2pblobsd.
 *
 * Talks HTTP to the daemon's control socket (libcurl over AF_UNIX). Exit codes are part of the
 * interface, so scripts can tell failures apart:
 *   0 success, 1 the daemon refused or failed (e.g. blob not found at the origin),
 *   2 bad arguments or a malformed reference, 3 the daemon is not running. */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/parse.h"

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_DOWN = 3 };

#define DEFAULT_SOCKET "/run/p2pblobs/control.sock"
#define RESPONSE_MAX (16u << 20)

struct response {
        char *data;
        size_t len;
        bool too_big;
};

static size_t on_data(char *p, size_t size, size_t n, void *ud) {
        struct response *r = ud;
        size_t add = size * n;
        if (r->len + add > RESPONSE_MAX) {
                r->too_big = true;
                return 0;
        }
        char *grown = realloc(r->data, r->len + add + 1);
        if (!grown)
                return 0;
        memcpy(grown + r->len, p, add);
        r->data = grown;
        r->len += add;
        r->data[r->len] = '\0';
        return add;
}

/* Performs METHOD PATH on the control socket. Returns an exit code; on success *RET holds the
 * parsed JSON answer. */
static int call(const char *socket_path, const char *method, const char *path, json_t **ret) {
        CURL *c = curl_easy_init();
        if (!c) {
                fprintf(stderr, "blobctl: out of memory\n");
                return EXIT_FAILED;
        }
        char url[4096];
        snprintf(url, sizeof(url), "http://localhost%s", path);
        struct response resp = {0};
        curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, socket_path);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (strcmp(method, "POST") == 0)
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        CURLcode cc = curl_easy_perform(c);
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        if (cc == CURLE_COULDNT_CONNECT) {
                fprintf(stderr, "blobctl: the daemon is not running (cannot connect to %s)\n",
                        socket_path);
                free(resp.data);
                return EXIT_DOWN;
        }
        if (cc != CURLE_OK) {
                fprintf(stderr, "blobctl: talking to the daemon failed: %s\n",
                        resp.too_big ? "answer too large" : curl_easy_strerror(cc));
                free(resp.data);
                return EXIT_FAILED;
        }
        json_error_t jerr;
        json_t *body = resp.data ? json_loads(resp.data, 0, &jerr) : NULL;
        free(resp.data);
        if (status != 200) {
                const char *msg = body ? json_string_value(json_object_get(body, "error")) : NULL;
                fprintf(stderr, "blobctl: %s\n", msg ? msg : "the daemon answered an error");
                json_decref(body);
                return status == 400 ? EXIT_USAGE : EXIT_FAILED;
        }
        if (!body) {
                fprintf(stderr, "blobctl: the daemon's answer is not JSON: %s\n", jerr.text);
                return EXIT_FAILED;
        }
        *ret = body;
        return EXIT_OK;
}

static uint64_t num(json_t *obj, const char *a, const char *b) {
        json_t *v = json_object_get(obj, a);
        if (b)
                v = json_object_get(v, b);
        return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

static const char *human(uint64_t bytes, char *buf, size_t len) {
        format_size(bytes, buf, len);
        return buf;
}

static void print_stat(json_t *s) {
        char a[32], b[32], c[32];
        uint64_t budget = num(s, "cache", "budget_bytes");
        uint64_t eff = num(s, "cache", "effective_budget_bytes");
        uint64_t used = num(s, "cache", "used_bytes");
        uint64_t hits = num(s, "cache", "hits"), misses = num(s, "cache", "misses");
        printf("cache     %s of %s (%.0f%%)  chunks %" PRIu64 "  hit ratio %.1f%% (%" PRIu64
               " hits, %" PRIu64 " misses)\n",
               human(used, a, sizeof(a)), human(budget, b, sizeof(b)),
               budget ? 100.0 * (double)used / (double)budget : 0.0,
               num(s, "cache", "chunks_present"),
               hits + misses ? 100.0 * (double)hits / (double)(hits + misses) : 0.0, hits, misses);
        if (eff != budget)
                printf("          disk full: effective budget shrunk to %s\n",
                       human(eff, a, sizeof(a)));
        printf("fetched   origin %s in %" PRIu64 " requests (%" PRIu64 " failed)  peers %s  "
               "in flight %" PRIu64 " chunks\n",
               human(num(s, "fetched", "origin_bytes"), a, sizeof(a)),
               num(s, "fetched", "origin_requests"), num(s, "fetched", "origin_errors"),
               human(num(s, "fetched", "peer_bytes"), b, sizeof(b)),
               num(s, "fetched", "inflight_chunks"));
        printf("blobs     %" PRIu64 " known, %" PRIu64 " verified\n", num(s, "blobs", NULL),
               num(s, "blobs_verified", NULL));
        printf("errors    reads %" PRIu64 "  verify %" PRIu64 "  disk full %" PRIu64
               "  lost chunks %" PRIu64 "\n",
               num(s, "errors", "read_errors"), num(s, "errors", "verify_failures"),
               num(s, "errors", "store_full_events"), num(s, "errors", "lost_chunks"));
        json_t *mem = json_object_get(s, "memory");
        printf("memory    rss %s", human(num(mem, "rss_bytes", NULL), a, sizeof(a)));
        if (json_is_integer(json_object_get(mem, "cgroup_working_set_bytes")))
                printf("  cgroup v%" PRIu64 " working set %s (usage %s)",
                       num(mem, "cgroup_version", NULL),
                       human(num(mem, "cgroup_working_set_bytes", NULL), b, sizeof(b)),
                       human(num(mem, "cgroup_usage_bytes", NULL), c, sizeof(c)));
        printf("  store in page cache %s\n",
               human(num(mem, "store_page_cache_bytes", NULL), a, sizeof(a)));
}

static void print_ls(json_t *arr) {
        printf("%-71s %10s %8s %-8s %s\n", "DIGEST", "SIZE", "PRESENT", "VERIFIED", "SOURCE");
        size_t i;
        json_t *b;
        json_array_foreach(arr, i, b) {
                char sz[32];
                uint64_t chunks = num(b, "chunks", NULL), present = num(b, "chunks_present", NULL);
                printf("%-71s %10s %7.0f%% %-8s %s\n",
                       json_string_value(json_object_get(b, "digest")),
                       human(num(b, "size", NULL), sz, sizeof(sz)),
                       chunks ? 100.0 * (double)present / (double)chunks : 100.0,
                       json_is_true(json_object_get(b, "verified")) ? "yes" : "no",
                       json_string_value(json_object_get(b, "source")));
        }
}

static void usage(FILE *out) {
        fprintf(out, "Usage: blobctl [--socket PATH] COMMAND [ARGS]\n\n"
                     "Commands:\n"
                     "  add REGISTRY/REPOSITORY@sha256:<hex>   register a blob in the tree\n"
                     "  ls [--json]                             list the blobs the node knows\n"
                     "  stat [--json]                           cache, fetch and memory figures\n\n"
                     "Options:\n"
                     "  --socket PATH   the daemon's control socket [" DEFAULT_SOCKET "]\n"
                     "  -h, --help      show this help\n\n"
                     "Exit status: 0 ok, 1 failed, 2 bad arguments, 3 daemon not running.\n");
}

int main(int argc, char **argv) {
        const char *socket_path = DEFAULT_SOCKET;
        static const struct option opts[] = {{"socket", required_argument, NULL, 's'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
        int c;
        /* "+": stop at the command, so its own flags (--json) are left for it. */
        while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
                switch (c) {
                case 's':
                        socket_path = optarg;
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
        bool json = false;
        const char *arg = NULL;
        for (int i = optind; i < argc; i++) {
                if (strcmp(argv[i], "--json") == 0)
                        json = true;
                else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
                        usage(stdout);
                        return EXIT_OK;
                } else if (!arg && argv[i][0] != '-')
                        arg = argv[i];
                else {
                        fprintf(stderr, "blobctl %s: unexpected argument \"%s\"\n", cmd, argv[i]);
                        return EXIT_USAGE;
                }
        }
        curl_global_init(CURL_GLOBAL_DEFAULT);
        json_t *out = NULL;
        int rc;
        if (strcmp(cmd, "add") == 0) {
                if (!arg) {
                        fprintf(stderr, "blobctl add: missing REGISTRY/REPOSITORY@sha256:<hex>\n");
                        rc = EXIT_USAGE;
                        goto out;
                }
                CURL *esc = curl_easy_init();
                char *e = esc ? curl_easy_escape(esc, arg, 0) : NULL;
                char path[4096];
                snprintf(path, sizeof(path), "/v1/blobs?ref=%s", e ? e : "");
                curl_free(e);
                curl_easy_cleanup(esc);
                rc = call(socket_path, "POST", path, &out);
                if (rc == EXIT_OK) {
                        if (json)
                                json_dumpf(out, stdout, JSON_INDENT(2));
                        else
                                printf("%s %" PRIu64 "\n",
                                       json_string_value(json_object_get(out, "digest")),
                                       num(out, "size", NULL));
                        if (json)
                                putchar('\n');
                }
        } else if (strcmp(cmd, "ls") == 0 || strcmp(cmd, "stat") == 0) {
                bool is_ls = cmd[0] == 'l';
                if (arg) {
                        fprintf(stderr, "blobctl %s: unexpected argument \"%s\"\n", cmd, arg);
                        rc = EXIT_USAGE;
                        goto out;
                }
                rc = call(socket_path, "GET", is_ls ? "/v1/blobs" : "/v1/stat", &out);
                if (rc == EXIT_OK) {
                        if (json) {
                                json_dumpf(out, stdout, JSON_INDENT(2));
                                putchar('\n');
                        } else if (is_ls) {
                                print_ls(out);
                        } else {
                                print_stat(out);
                        }
                }
        } else {
                fprintf(stderr, "blobctl: unknown command \"%s\"; try blobctl --help\n", cmd);
                rc = EXIT_USAGE;
        }
out:
        json_decref(out);
        curl_global_cleanup();
        return rc;
}
