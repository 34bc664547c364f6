/* blobctl stat, ls and peers: the daemon's figures rendered (aligned, coloured on a TTY) or
 * passed through (--json); when the daemon is down, what the index records, read read-only
 * (idx_open_readonly), with the same keys where the index keeps them. */
#include "tools/blobctl_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "index/index.h"
#include "net/api_routes.h"
#include "tools/blobctl_snapshots.h"
#include "util/digest.h"
#include "util/log.h"
#include "util/parse.h"

static void print_stat(const struct opts *o, json_t *s) {
        char a[32], b[32], c[32];
        uint64_t budget = bc_num(s, "cache", "budget_bytes");
        uint64_t eff = bc_num(s, "cache", "effective_budget_bytes");
        uint64_t used = bc_num(s, "cache", "used_bytes");
        uint64_t hits = bc_num(s, "cache", "hits"), misses = bc_num(s, "cache", "misses");
        uint64_t up = bc_num(s, "uptime_seconds", NULL);
        printf("%sp2pblobsd %s%s, up %" PRIu64 "d %02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 "\n",
               bc_bold(o),
               json_string_value(json_object_get(s, "version"))
                       ? json_string_value(json_object_get(s, "version"))
                       : "?",
               bc_reset(o), up / 86400, up / 3600 % 24, up / 60 % 60, up % 60);
        printf("%-10s %s of %s (%.0f%%), %" PRIu64
               " chunks, %s in use (reads, readahead, hashing)\n",
               "cache", bc_human(used, a, sizeof(a)), bc_human(budget, b, sizeof(b)),
               bc_pct(used, budget), bc_num(s, "cache", "chunks_present"),
               bc_human(bc_num(s, "cache", "pinned_bytes"), c, sizeof(c)));
        if (eff != budget)
                printf("%-10s %sdisk full: effective budget shrunk to %s%s\n", "", bc_yellow(o),
                       bc_human(eff, a, sizeof(a)), bc_reset(o));
        printf("%-10s %.1f%% (%" PRIu64 " hits, %" PRIu64 " misses), %" PRIu64 " evicted\n",
               "hit ratio", bc_pct(hits, hits + misses), hits, misses,
               bc_num(s, "cache", "evicted_chunks"));
        uint64_t ob = bc_num(s, "fetched", "origin_bytes"), pb = bc_num(s, "fetched", "peer_bytes");
        printf("%-10s %s from origin (%" PRIu64 " requests), %s from peers (%.0f%%), %" PRIu64
               " chunks in flight\n",
               "fetched", bc_human(ob, a, sizeof(a)), bc_num(s, "fetched", "origin_requests"),
               bc_human(pb, b, sizeof(b)), bc_pct(pb, ob + pb),
               bc_num(s, "fetched", "inflight_chunks"));
        printf("%-10s %s to peers\n", "served",
               bc_human(bc_num(s, "served", "peer_bytes"), a, sizeof(a)));
        printf("%-10s %" PRIu64 " up of %" PRIu64 " known\n", "peers", bc_num(s, "peers", "up"),
               bc_num(s, "peers", "known"));
        printf("%-10s %" PRIu64 " known: %" PRIu64 " complete, %" PRIu64 " partial, %" PRIu64
               " verified, %" PRIu64 " pinned\n",
               "blobs", bc_num(s, "blobs", NULL), bc_num(s, "blobs_complete", NULL),
               bc_num(s, "blobs_partial", NULL), bc_num(s, "blobs_verified", NULL),
               bc_num(s, "blobs_pinned", NULL));
        json_t *e = json_object_get(s, "errors");
        uint64_t nerr = bc_num(e, "read_errors", NULL);
        printf("%-10s %s%" PRIu64 " read errors%s; origin: %" PRIu64 " connect, %" PRIu64
               " timeout, %" PRIu64 " http, %" PRIu64 " not found, %" PRIu64 " denied, %" PRIu64
               " protocol; %" PRIu64 " verify failures, %" PRIu64 " lost chunks, %" PRIu64
               " corrupt in store, %" PRIu64 " disk full; peers: %" PRIu64
               " failed transfers, %" PRIu64 " corrupt chunks\n",
               "errors", nerr ? bc_red(o) : "", nerr, nerr ? bc_reset(o) : "",
               bc_num(e, "origin_by_cause", "connect"), bc_num(e, "origin_by_cause", "timeout"),
               bc_num(e, "origin_by_cause", "http"), bc_num(e, "origin_by_cause", "not_found"),
               bc_num(e, "origin_by_cause", "denied"), bc_num(e, "origin_by_cause", "protocol"),
               bc_num(e, "verify_failures", NULL), bc_num(e, "lost_chunks", NULL),
               bc_num(e, "store_corrupt_chunks", NULL), bc_num(e, "store_full_events", NULL),
               bc_num(e, "peer_failures", NULL), bc_num(e, "peer_corrupt_chunks", NULL));
        json_t *m = json_object_get(s, "memory");
        printf("%-10s rss %s", "memory", bc_human(bc_num(m, "rss_bytes", NULL), a, sizeof(a)));
        if (json_is_integer(json_object_get(m, "cgroup_working_set_bytes")))
                printf(", cgroup v%" PRIu64 " working set %s (usage %s)",
                       bc_num(m, "cgroup_version", NULL),
                       bc_human(bc_num(m, "cgroup_working_set_bytes", NULL), b, sizeof(b)),
                       bc_human(bc_num(m, "cgroup_usage_bytes", NULL), c, sizeof(c)));
        printf(", store in page cache %s\n",
               bc_human(bc_num(m, "store_page_cache_bytes", NULL), a, sizeof(a)));
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
                         const struct digest *sha, const struct digest *chain) {
        (void)chain;
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
                                        json_integer((json_int_t)bc_num(b, "chunks_present", NULL) +
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

int bc_cmd_stat(const struct opts *o) {
        for (;;) {
                json_t *s = NULL;
                int rc = bc_request(o, &(struct api_request){.route = API_STAT}, &s, false);
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
                                bc_print_json(j);
                                json_decref(j);
                        } else {
                                printf("daemon     %snot running%s\n", bc_red(o), bc_reset(o));
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
                        bc_print_json(s);
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
        printf("%s%-71s %10s %8s %-3s %-3s %-12s %s%s\n", bc_bold(o), "DIGEST", "SIZE", "PRESENT",
               "VER", "PIN", "LAST READ", "SOURCE", bc_reset(o));
        size_t i;
        json_t *b;
        json_array_foreach(arr, i, b) {
                char sz[32], when[32];
                uint64_t chunks = bc_num(b, "chunks", NULL),
                         present = bc_num(b, "chunks_present", NULL);
                printf("%-71s %10s %7.0f%% %-3s %-3s %-12s %s\n",
                       json_string_value(json_object_get(b, "digest")),
                       bc_human(bc_num(b, "size", NULL), sz, sizeof(sz)),
                       chunks ? bc_pct(present, chunks) : 100.0,
                       json_is_true(json_object_get(b, "verified")) ? "yes" : "no",
                       json_is_true(json_object_get(b, "pinned")) ? "yes" : "-",
                       bc_ago((int64_t)bc_num(b, "last_access", NULL), when, sizeof(when)),
                       json_string_value(json_object_get(b, "source")));
        }
}

int bc_cmd_ls(const struct opts *o) {
        json_t *arr = NULL;
        int rc = bc_request(o, &(struct api_request){.route = API_LIST}, &arr, false);
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
                bc_print_json(arr);
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
        printf("%s%-30s %-5s %-8s %9s %10s %10s %8s %s%s\n", bc_bold(o), "ADDRESS", "STATE",
               "LOCALITY", "LATENCY", "FROM", "TO", "FAILURES", "LAST SEEN", bc_reset(o));
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
                uint64_t failures = bc_num(p, "failures", NULL);
                char addr[64];
                snprintf(addr, sizeof(addr), "%s%s", id ? id : "?", self ? " (self)" : "");
                /* Pad before colouring: escape sequences would upset the widths. */
                printf("%-30s %s%-5s%s %-8s %9s %10s %10s %s%8" PRIu64 "%s %s\n", addr,
                       up ? bc_green(o) : bc_red(o), state ? state : "?", bc_reset(o),
                       json_string_value(json_object_get(p, "locality"))
                               ? json_string_value(json_object_get(p, "locality"))
                               : "?",
                       self ? "-" : lat,
                       bc_human(bc_num(p, "bytes_from", NULL), from, sizeof(from)),
                       bc_human(bc_num(p, "bytes_to", NULL), to, sizeof(to)),
                       failures ? bc_yellow(o) : "", failures, failures ? bc_reset(o) : "",
                       self ? "-"
                            : bc_ago((int64_t)bc_num(p, "last_seen", NULL), when, sizeof(when)));
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

int bc_cmd_peers(const struct opts *o) {
        json_t *arr = NULL;
        int rc = bc_request(o, &(struct api_request){.route = API_PEERS}, &arr, false);
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
                bc_print_json(arr);
        else
                print_peers(o, arr);
        json_decref(arr);
        return rc;
}
