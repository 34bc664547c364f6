/* blobctl: the operator's window into p2pblobsd.
 *
 * Talks HTTP to the daemon's control socket (libcurl over AF_UNIX). When the daemon is down,
 * `stat` and `ls` read the index read-only instead and say so. Exit codes are part of the
 * interface, so scripts can tell failures apart:
 *   0 success, 1 failed (the daemon or the origin said no), 2 bad arguments,
 *   3 the daemon is not running, 4 no such blob, 5 permission denied (not root).
 * Human output is aligned and readable at a glance; colour and progress bars only on a TTY
 * (and never with NO_COLOR set); --json output has stable keys. */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "index/index.h"
#include "net/api_routes.h"
#include "tools/blobctl_layers.h"
#include "tools/blobctl_snapshots.h"
#include "tools/containerd_config.h"
#include "util/digest.h"
#include "util/log.h"
#include "util/parse.h"

enum {
        EXIT_OK = 0,
        EXIT_FAILED = 1,
        EXIT_USAGE = 2,
        EXIT_DOWN = 3,
        EXIT_NOT_FOUND = 4,
        EXIT_DENIED = 5
};

#define DEFAULT_SOCKET "/run/p2pblobs/control.sock"
#define DEFAULT_STATE_DIR "/var/cache/p2pblobs"
#define RESPONSE_MAX (16u << 20)

struct opts {
        const char *socket_path;
        const char *state_dir;
        bool json;
        bool all;
        bool watch;
        unsigned interval_s;
        bool tty;     /* stdout is a terminal */
        bool err_tty; /* stderr is a terminal: progress bars go there */
        bool colour;  /* tty and NO_COLOR unset */
};

/* ---- output helpers ------------------------------------------------------------------- */

static const char *bold(const struct opts *o) {
        return o->colour ? "\033[1m" : "";
}
static const char *red(const struct opts *o) {
        return o->colour ? "\033[31m" : "";
}
static const char *yellow(const struct opts *o) {
        return o->colour ? "\033[33m" : "";
}
static const char *green(const struct opts *o) {
        return o->colour ? "\033[32m" : "";
}
static const char *reset(const struct opts *o) {
        return o->colour ? "\033[0m" : "";
}

static const char *human(uint64_t bytes, char *buf, size_t len) {
        format_size(bytes, buf, len);
        return buf;
}

static const char *ago(int64_t when, char *buf, size_t len) {
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

static uint64_t num(json_t *obj, const char *a, const char *b) {
        json_t *v = json_object_get(obj, a);
        if (b)
                v = json_object_get(v, b);
        return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

static double pct(uint64_t part, uint64_t whole) {
        return whole ? 100.0 * (double)part / (double)whole : 0.0;
}

/* ---- talking to the daemon ---------------------------------------------------------------- */

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

/* A request's path and query: the longest query the daemon takes, and room for the path. */
#define REQUEST_PATH_MAX (ROUTE_QUERY_MAX + 512)

/* Performs METHOD PATH on the control socket. Returns an exit code; on success *RET holds the
 * parsed answer. QUIET_DOWN: do not print the "not running" message (the caller falls back). */
static int call(const struct opts *o, const char *method, const char *path, json_t **ret,
                bool quiet_down) {
        CURL *c = curl_easy_init();
        if (!c) {
                fprintf(stderr, "blobctl: out of memory\n");
                return EXIT_FAILED;
        }
        char url[REQUEST_PATH_MAX + 32];
        if ((size_t)snprintf(url, sizeof(url), "http://localhost%s", path) >= sizeof(url)) {
                curl_easy_cleanup(c);
                fprintf(stderr, "blobctl: the request is too long\n");
                return EXIT_USAGE;
        }
        struct response resp = {0};
        curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, o->socket_path);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (strcmp(method, "POST") == 0)
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L); /* verify of a large blob reads it all */
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        CURLcode cc = curl_easy_perform(c);
        long status = 0, os_errno = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os_errno);
        curl_easy_cleanup(c);
        if (cc == CURLE_COULDNT_CONNECT && (os_errno == EACCES || os_errno == EPERM)) {
                /* The socket is there and root's (0600): the daemon runs, we may not talk to
                 * it. Not "not running", and no fall-back to the index (0600 as well). */
                fprintf(stderr, "blobctl: permission denied (run as root): %s\n", o->socket_path);
                free(resp.data);
                return EXIT_DENIED;
        }
        if (cc == CURLE_COULDNT_CONNECT) {
                if (!quiet_down)
                        fprintf(stderr,
                                "blobctl: the daemon is not running (nothing listens on %s); "
                                "start it with 'systemctl start p2pblobs'\n",
                                o->socket_path);
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
                return status == 400 ? EXIT_USAGE : status == 404 ? EXIT_NOT_FOUND : EXIT_FAILED;
        }
        if (!body) {
                fprintf(stderr, "blobctl: the daemon's answer is not JSON: %s\n", jerr.text);
                return EXIT_FAILED;
        }
        *ret = body;
        return EXIT_OK;
}

/* Performs request Q, built from the control API's route table (net/api_routes.h) as the
 * daemon routes it. Returns an exit code, as call(). */
static int request(const struct opts *o, const struct api_request *q, json_t **ret,
                   bool quiet_down) {
        const char *method;
        char path[REQUEST_PATH_MAX]; /* call() prefixes it with the URL's scheme and host */
        int r = api_build_request(q, &method, path, sizeof(path));
        if (r < 0) {
                fprintf(stderr, "blobctl: %s\n",
                        r == -ENAMETOOLONG ? "the request is too long"
                                           : "cannot build the request (a blobctl bug)");
                return EXIT_USAGE;
        }
        return call(o, method, path, ret, quiet_down);
}

/* For blobctl_layers.c: its requests, from the same table. */
static int request_layers(void *ud, const struct api_request *q, json_t **ret) {
        return request(ud, q, ret, false);
}

static void print_json(json_t *v) {
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

/* ---- stat ---------------------------------------------------------------------------------- */

static void print_stat(const struct opts *o, json_t *s) {
        char a[32], b[32], c[32];
        uint64_t budget = num(s, "cache", "budget_bytes");
        uint64_t eff = num(s, "cache", "effective_budget_bytes");
        uint64_t used = num(s, "cache", "used_bytes");
        uint64_t hits = num(s, "cache", "hits"), misses = num(s, "cache", "misses");
        uint64_t up = num(s, "uptime_seconds", NULL);
        printf("%sp2pblobsd %s%s, up %" PRIu64 "d %02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 "\n",
               bold(o),
               json_string_value(json_object_get(s, "version"))
                       ? json_string_value(json_object_get(s, "version"))
                       : "?",
               reset(o), up / 86400, up / 3600 % 24, up / 60 % 60, up % 60);
        printf("%-10s %s of %s (%.0f%%), %" PRIu64
               " chunks, %s in use (reads, readahead, hashing)\n",
               "cache", human(used, a, sizeof(a)), human(budget, b, sizeof(b)), pct(used, budget),
               num(s, "cache", "chunks_present"),
               human(num(s, "cache", "pinned_bytes"), c, sizeof(c)));
        if (eff != budget)
                printf("%-10s %sdisk full: effective budget shrunk to %s%s\n", "", yellow(o),
                       human(eff, a, sizeof(a)), reset(o));
        printf("%-10s %.1f%% (%" PRIu64 " hits, %" PRIu64 " misses), %" PRIu64 " evicted\n",
               "hit ratio", pct(hits, hits + misses), hits, misses,
               num(s, "cache", "evicted_chunks"));
        uint64_t ob = num(s, "fetched", "origin_bytes"), pb = num(s, "fetched", "peer_bytes");
        printf("%-10s %s from origin (%" PRIu64 " requests), %s from peers (%.0f%%), %" PRIu64
               " chunks in flight\n",
               "fetched", human(ob, a, sizeof(a)), num(s, "fetched", "origin_requests"),
               human(pb, b, sizeof(b)), pct(pb, ob + pb), num(s, "fetched", "inflight_chunks"));
        printf("%-10s %s to peers\n", "served",
               human(num(s, "served", "peer_bytes"), a, sizeof(a)));
        printf("%-10s %" PRIu64 " up of %" PRIu64 " known\n", "peers", num(s, "peers", "up"),
               num(s, "peers", "known"));
        printf("%-10s %" PRIu64 " known: %" PRIu64 " complete, %" PRIu64 " partial, %" PRIu64
               " verified, %" PRIu64 " pinned\n",
               "blobs", num(s, "blobs", NULL), num(s, "blobs_complete", NULL),
               num(s, "blobs_partial", NULL), num(s, "blobs_verified", NULL),
               num(s, "blobs_pinned", NULL));
        json_t *e = json_object_get(s, "errors");
        uint64_t nerr = num(e, "read_errors", NULL);
        printf("%-10s %s%" PRIu64 " read errors%s; origin: %" PRIu64 " connect, %" PRIu64
               " timeout, %" PRIu64 " http, %" PRIu64 " not found, %" PRIu64 " denied, %" PRIu64
               " protocol; %" PRIu64 " verify failures, %" PRIu64 " lost chunks, %" PRIu64
               " corrupt in store, %" PRIu64 " disk full; peers: %" PRIu64
               " failed transfers, %" PRIu64 " corrupt chunks\n",
               "errors", nerr ? red(o) : "", nerr, nerr ? reset(o) : "",
               num(e, "origin_by_cause", "connect"), num(e, "origin_by_cause", "timeout"),
               num(e, "origin_by_cause", "http"), num(e, "origin_by_cause", "not_found"),
               num(e, "origin_by_cause", "denied"), num(e, "origin_by_cause", "protocol"),
               num(e, "verify_failures", NULL), num(e, "lost_chunks", NULL),
               num(e, "store_corrupt_chunks", NULL), num(e, "store_full_events", NULL),
               num(e, "peer_failures", NULL), num(e, "peer_corrupt_chunks", NULL));
        json_t *m = json_object_get(s, "memory");
        printf("%-10s rss %s", "memory", human(num(m, "rss_bytes", NULL), a, sizeof(a)));
        if (json_is_integer(json_object_get(m, "cgroup_working_set_bytes")))
                printf(", cgroup v%" PRIu64 " working set %s (usage %s)",
                       num(m, "cgroup_version", NULL),
                       human(num(m, "cgroup_working_set_bytes", NULL), b, sizeof(b)),
                       human(num(m, "cgroup_usage_bytes", NULL), c, sizeof(c)));
        printf(", store in page cache %s\n",
               human(num(m, "store_page_cache_bytes", NULL), a, sizeof(a)));
        blobctl_print_snapshotter_stat(stdout, s);
}

struct offline {
        uint64_t blobs, verified, pinned, chunks, bytes;
        json_t *list; /* for ls */
        uint32_t chunk_size;
};

static int offline_blob(void *ud, const struct idx_blob *b) {
        struct offline *off = ud;
        off->blobs++;
        off->verified += b->verified;
        off->pinned += b->pinned;
        off->chunk_size = b->chunk_size;
        if (off->list) {
                char hex[DIGEST_HEX_LEN + 8];
                memcpy(hex, "sha256:", 7);
                digest_to_hex(&b->digest, hex + 7);
                uint64_t chunks = b->chunk_size ? (b->size + b->chunk_size - 1) / b->chunk_size : 0;
                json_array_append_new(off->list,
                                      json_pack("{s:s, s:I, s:s, s:I, s:I, s:b, s:b, s:I, s:I}",
                                                "digest", hex, "size", (json_int_t)b->size,
                                                "source", b->source, "chunks", (json_int_t)chunks,
                                                "chunks_present", (json_int_t)0, "verified",
                                                b->verified, "pinned", b->pinned, "added_at",
                                                (json_int_t)b->added_at, "last_access",
                                                (json_int_t)b->last_access));
        }
        return 0;
}

static int offline_chunk(void *ud, const struct digest *blob, uint32_t idx, bool present,
                         const struct digest *sha) {
        (void)idx;
        (void)sha;
        struct offline *off = ud;
        if (!present)
                return 0;
        off->chunks++;
        if (off->list) { /* count per blob: the list is in added order, search by digest */
                char hex[DIGEST_HEX_LEN + 8];
                memcpy(hex, "sha256:", 7);
                digest_to_hex(blob, hex + 7);
                size_t i;
                json_t *b;
                json_array_foreach(off->list, i, b) {
                        if (strcmp(json_string_value(json_object_get(b, "digest")), hex) == 0) {
                                json_object_set_new(
                                        b, "chunks_present",
                                        json_integer((json_int_t)num(b, "chunks_present", NULL) +
                                                     1));
                                break;
                        }
                }
        }
        return 0;
}

/* The daemon is down: opens the index read-only, runs WALK over it, and says where the figures
 * came from ("showing WHAT the index at PATH WHEN"). 0 or WALK's / the index's -errno. */
static int offline_index(const struct opts *o, int (*walk)(struct index *ix, void *ud), void *ud,
                         const char *what, const char *when) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/index.db", o->state_dir);
        if (access(path, R_OK) < 0) {
                fprintf(stderr, "blobctl: and no index at %s to read instead (--state-dir?)\n",
                        path);
                return -ENOENT;
        }
        struct index *ix;
        log_max_level = LOG_LVL_ERR - 1; /* the index logs SQLite errors; we report our own */
        int r = idx_open_readonly(path, &ix);
        if (r == 0) {
                r = walk(ix, ud);
                idx_close(ix);
        }
        if (r < 0)
                fprintf(stderr, "blobctl: cannot read the index at %s: %s\n", path, strerror(-r));
        else
                fprintf(stderr,
                        "blobctl: the daemon is not running; showing %s the index at %s %s\n", what,
                        path, when);
        return r;
}

static int walk_blobs(struct index *ix, void *ud) {
        int r = idx_for_each_blob(ix, offline_blob, ud);
        return r < 0 ? r : idx_for_each_chunk(ix, offline_chunk, ud);
}

/* The daemon is down: read what the index says, read-only, and say where it came from. */
static int offline_read(const struct opts *o, struct offline *off) {
        return offline_index(o, walk_blobs, off, "what", "records");
}

static int cmd_stat(const struct opts *o) {
        for (;;) {
                json_t *s = NULL;
                int rc = request(o, &(struct api_request){.route = API_STAT}, &s, false);
                if (rc == EXIT_DOWN) {
                        struct offline off = {0};
                        if (offline_read(o, &off) < 0)
                                return EXIT_DOWN;
                        if (o->json) {
                                json_t *j =
                                        json_pack("{s:b, s:I, s:I, s:I, s:{s:I}}", "daemon_running",
                                                  0, "blobs", (json_int_t)off.blobs,
                                                  "blobs_verified", (json_int_t)off.verified,
                                                  "blobs_pinned", (json_int_t)off.pinned, "cache",
                                                  "chunks_present", (json_int_t)off.chunks);
                                print_json(j);
                                json_decref(j);
                        } else {
                                printf("daemon     %snot running%s\n", red(o), reset(o));
                                printf("%-10s %" PRIu64 " known, %" PRIu64 " verified, %" PRIu64
                                       " pinned\n",
                                       "blobs", off.blobs, off.verified, off.pinned);
                                printf("%-10s %" PRIu64 " chunks recorded present\n", "cache",
                                       off.chunks);
                        }
                        return EXIT_DOWN;
                }
                if (rc != EXIT_OK)
                        return rc;
                if (o->watch && o->tty)
                        fputs("\033[H\033[2J", stdout); /* home, clear */
                if (o->json)
                        print_json(s);
                else
                        print_stat(o, s);
                json_decref(s);
                if (!o->watch)
                        return EXIT_OK;
                if (!o->tty)
                        putchar('\n');
                fflush(stdout);
                sleep(o->interval_s);
        }
}

/* ---- ls ------------------------------------------------------------------------------------- */

static void print_ls(const struct opts *o, json_t *arr) {
        printf("%s%-71s %10s %8s %-3s %-3s %-12s %s%s\n", bold(o), "DIGEST", "SIZE", "PRESENT",
               "VER", "PIN", "LAST READ", "SOURCE", reset(o));
        size_t i;
        json_t *b;
        json_array_foreach(arr, i, b) {
                char sz[32], when[32];
                uint64_t chunks = num(b, "chunks", NULL), present = num(b, "chunks_present", NULL);
                printf("%-71s %10s %7.0f%% %-3s %-3s %-12s %s\n",
                       json_string_value(json_object_get(b, "digest")),
                       human(num(b, "size", NULL), sz, sizeof(sz)),
                       chunks ? pct(present, chunks) : 100.0,
                       json_is_true(json_object_get(b, "verified")) ? "yes" : "no",
                       json_is_true(json_object_get(b, "pinned")) ? "yes" : "-",
                       ago((int64_t)num(b, "last_access", NULL), when, sizeof(when)),
                       json_string_value(json_object_get(b, "source")));
        }
}

static int cmd_ls(const struct opts *o) {
        json_t *arr = NULL;
        int rc = request(o, &(struct api_request){.route = API_LIST}, &arr, false);
        if (rc == EXIT_DOWN) {
                struct offline off = {.list = json_array()};
                if (!off.list || offline_read(o, &off) < 0) {
                        json_decref(off.list);
                        return EXIT_DOWN;
                }
                arr = off.list;
        } else if (rc != EXIT_OK) {
                return rc;
        }
        if (o->json)
                print_json(arr);
        else
                print_ls(o, arr);
        json_decref(arr);
        return rc;
}

/* ---- peers ---------------------------------------------------------------------------------- */

static void print_peers(const struct opts *o, json_t *arr) {
        if (json_array_size(arr) == 0) {
                printf("no peers: this node runs alone (see --peers and --peer-dns in "
                       "p2pblobsd(8))\n");
                return;
        }
        printf("%s%-30s %-5s %-8s %9s %10s %10s %8s %s%s\n", bold(o), "ADDRESS", "STATE",
               "LOCALITY", "LATENCY", "FROM", "TO", "FAILURES", "LAST SEEN", reset(o));
        size_t i;
        json_t *p;
        json_array_foreach(arr, i, p) {
                char lat[32] = "-", from[32], to[32], when[32];
                json_t *l = json_object_get(p, "latency_ms");
                if (json_is_number(l))
                        snprintf(lat, sizeof(lat), "%.1f ms", json_number_value(l));
                const char *id = json_string_value(json_object_get(p, "id"));
                const char *state = json_string_value(json_object_get(p, "state"));
                bool self = json_is_true(json_object_get(p, "self"));
                bool up = state && strcmp(state, "up") == 0;
                uint64_t failures = num(p, "failures", NULL);
                char addr[64];
                snprintf(addr, sizeof(addr), "%s%s", id ? id : "?", self ? " (self)" : "");
                /* Pad before colouring: escape sequences would upset the widths. */
                printf("%-30s %s%-5s%s %-8s %9s %10s %10s %s%8" PRIu64 "%s %s\n", addr,
                       up ? green(o) : red(o), state ? state : "?", reset(o),
                       json_string_value(json_object_get(p, "locality"))
                               ? json_string_value(json_object_get(p, "locality"))
                               : "?",
                       self ? "-" : lat, human(num(p, "bytes_from", NULL), from, sizeof(from)),
                       human(num(p, "bytes_to", NULL), to, sizeof(to)), failures ? yellow(o) : "",
                       failures, failures ? reset(o) : "",
                       self ? "-" : ago((int64_t)num(p, "last_seen", NULL), when, sizeof(when)));
        }
}

static int offline_peer(void *ud, const struct idx_peer *p) {
        json_t *arr = ud;
        char host[IDX_PEER_ID_MAX];
        uint16_t port = 0;
        if (parse_hostport(p->id, host, sizeof(host), &port) < 0)
                snprintf(host, sizeof(host), "%s", p->id);
        json_t *lat = p->latency_us ? json_real((double)p->latency_us / 1000.0) : json_null();
        /* The same keys as the daemon's answer; what the index does not keep is null. */
        json_array_append_new(
                arr, json_pack("{s:s, s:s, s:I, s:s, s:s, s:o, s:I, s:I, s:I, s:I, s:b, s:n}", "id",
                               p->id, "address", host, "port", (json_int_t)port, "state", p->state,
                               "locality", p->locality, "latency_ms", lat, "bytes_from",
                               (json_int_t)p->bytes_from, "bytes_to", (json_int_t)p->bytes_to,
                               "failures", (json_int_t)p->failures, "last_seen",
                               (json_int_t)p->last_seen, "self", strcmp(p->locality, "self") == 0,
                               "source"));
        return 0;
}

static int walk_peers(struct index *ix, void *ud) {
        return idx_for_each_peer(ix, offline_peer, ud);
}

/* The daemon is down: the peers as the index last recorded them. */
static int offline_peers(const struct opts *o, json_t *arr) {
        return offline_index(o, walk_peers, arr, "the peers", "last recorded");
}

static int cmd_peers(const struct opts *o) {
        json_t *arr = NULL;
        int rc = request(o, &(struct api_request){.route = API_PEERS}, &arr, false);
        if (rc == EXIT_DOWN) {
                arr = json_array();
                if (!arr || offline_peers(o, arr) < 0) {
                        json_decref(arr);
                        return EXIT_DOWN;
                }
        } else if (rc != EXIT_OK) {
                return rc;
        }
        if (o->json)
                print_json(arr);
        else
                print_peers(o, arr);
        json_decref(arr);
        return rc;
}

/* ---- add, pin, unpin, evict, verify ------------------------------------------------------- */

static int cmd_add(const struct opts *o, const char *ref) {
        json_t *out = NULL;
        int rc = request(o, &(struct api_request){.route = API_ADD, .arg[API_ARG_REF] = ref}, &out,
                         false);
        if (rc != EXIT_OK)
                return rc;
        if (o->json)
                print_json(out);
        else
                printf("%s %" PRIu64 "\n", json_string_value(json_object_get(out, "digest")),
                       num(out, "size", NULL));
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
        int rc = request(o, &q, &out, false);
        if (rc != EXIT_OK)
                return rc;
        char a[32];
        if (o->json) {
                print_json(out);
        } else if (strcmp(action, "evict") == 0) {
                printf("evicted %" PRIu64 " chunks (%s)\n", num(out, "evicted_chunks", NULL),
                       human(num(out, "evicted_bytes", NULL), a, sizeof(a)));
        } else if (strcmp(action, "verify") == 0) {
                uint64_t bad = num(out, "bad", NULL), lost = num(out, "lost", NULL);
                printf("%s: %" PRIu64 " chunks checked, %" PRIu64 " ok, %s%" PRIu64 " bad, %" PRIu64
                       " lost%s, %" PRIu64 " without a recorded digest\n",
                       dg, num(out, "checked", NULL), num(out, "ok", NULL),
                       bad || lost ? red(o) : "", bad, lost, bad || lost ? reset(o) : "",
                       num(out, "unknown", NULL));
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
        fprintf(stderr, "\r%.19s [%s] %3.0f%% %s / %s %s/s%s\033[K", dg, bar, pct(done, total),
                human(done, a, sizeof(a)), human(total, b, sizeof(b)),
                human((uint64_t)rate, r, sizeof(r)), eta);
}

static int prefetch_one(const struct opts *o, const char *arg) {
        char dg[DIGEST_HEX_LEN + 8];
        struct api_request q = {.route = API_BLOB_ACTION, .action = API_PREFETCH};
        if (digest_arg(arg, dg, &q.digest) < 0)
                return EXIT_USAGE;
        json_t *b = NULL;
        int rc = request(o, &q, &b, false);
        if (rc != EXIT_OK)
                return rc;
        q.route = API_BLOB; /* then its progress */
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        uint64_t total = num(b, "size", NULL), chunks = num(b, "chunks", NULL);
        uint64_t start = chunks ? total * num(b, "chunks_present", NULL) / chunks : total;
        bool show = o->err_tty && !o->json; /* the bar is drawn on stderr */
        for (;;) {
                uint64_t present = num(b, "chunks_present", NULL);
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
                                print_json(b);
                        } else if (!show) {
                                char a[32];
                                printf("%s %s present\n", dg, human(done, a, sizeof(a)));
                        }
                        json_decref(b);
                        return rc;
                }
                json_decref(b);
                b = NULL;
                usleep(200 * 1000);
                rc = request(o, &q, &b, false);
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
                int lrc = blobctl_layers(cmd, argc - optind, argv + optind, request_layers, &o);
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
                rc = cmd_stat(&o);
        } else if (strcmp(cmd, "ls") == 0) {
                rc = cmd_ls(&o);
        } else if (strcmp(cmd, "peers") == 0) {
                rc = cmd_peers(&o);
        } else if (strcmp(cmd, "add") == 0) {
                rc = cmd_add(&o, args[0]);
        } else if (strcmp(cmd, "snapshots") == 0) {
                json_t *arr = NULL;
                rc = request(&o, &(struct api_request){.route = API_SNAPSHOTS}, &arr, false);
                if (rc == EXIT_OK && o.json)
                        print_json(arr);
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
