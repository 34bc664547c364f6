/* The control API's handlers: JSON views of the daemon's state for blobctl.
 *
 * Handlers run on the control server's threads; everything they read is thread-safe
 * (engine and origin snapshots, the store's directory walk, /proc and cgroup files). */
#include "fs/api.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/store.h"
#include "engine/engine.h"
#include "index/index.h"
#include "peer/members.h"
#include "peer/directory.h"
#include "peer/origin.h"
#include "peer/source.h"
#include "util/log.h"
#include "util/memstat.h"
#include "util/parse.h"

static int add_u64(json_t *obj, const char *key, uint64_t v) {
        return json_object_set_new(obj, key, json_integer((json_int_t)v));
}

/* Peer figures for stat and /metrics: zeros when the node runs without peers. */
struct peer_totals {
        uint64_t known, up, bytes_from, bytes_to;
};

static void peer_totals(struct daemon *d, struct peer_totals *t) {
        memset(t, 0, sizeof(*t));
        if (!d->members)
                return;
        members_counts(d->members, &t->up, &t->known);
        struct peer_info *v;
        size_t n;
        if (members_snapshot(d->members, &v, &n) < 0)
                return;
        for (size_t i = 0; i < n; i++) {
                t->bytes_from += v[i].bytes_from;
                t->bytes_to += v[i].bytes_to;
        }
        free(v);
}

static int on_stat(struct daemon *d, json_t **ret, char *reason, size_t reason_len) {
        struct peer_totals pt;
        peer_totals(d, &pt);
        struct engine_stats es;
        struct origin_stats os;
        engine_get_stats(d->engine, &es);
        origin_get_stats(d->origin, &os);

        json_t *cache = json_object(), *fetched = json_object(), *memory = json_object(),
               *errors = json_object(), *root = json_object();
        if (!cache || !fetched || !memory || !errors || !root) {
                json_decref(cache);
                json_decref(fetched);
                json_decref(memory);
                json_decref(errors);
                json_decref(root);
                snprintf(reason, reason_len, "out of memory");
                return -ENOMEM;
        }
        add_u64(cache, "budget_bytes", es.budget_bytes);
        add_u64(cache, "effective_budget_bytes", es.effective_budget_bytes);
        add_u64(cache, "used_bytes", es.used_bytes);
        add_u64(cache, "pinned_bytes", es.pinned_bytes);
        add_u64(cache, "chunks_present", es.chunks_present);
        add_u64(cache, "hits", es.hits);
        add_u64(cache, "misses", es.misses);
        add_u64(cache, "evicted_chunks", es.evicted_chunks);
        add_u64(cache, "store_allocated_bytes", store_allocated_bytes(d->store));

        add_u64(fetched, "origin_bytes", os.bytes);
        add_u64(fetched, "origin_requests", os.requests);
        add_u64(fetched, "origin_errors", os.errors);
        json_t *causes =
                json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "connect", (json_int_t)os.err_connect,
                          "timeout", (json_int_t)os.err_timeout, "http", (json_int_t)os.err_http,
                          "not_found", (json_int_t)os.err_not_found, "denied",
                          (json_int_t)os.err_denied, "protocol", (json_int_t)os.err_protocol);
        json_object_set_new(errors, "origin_by_cause", causes);
        add_u64(fetched, "peer_bytes", pt.bytes_from);
        add_u64(fetched, "inflight_chunks", es.inflight_chunks);
        add_u64(fetched, "readahead_chunks", es.readahead_chunks);

        add_u64(errors, "read_errors", es.read_errors);
        add_u64(errors, "verify_failures", es.verify_failures);
        add_u64(errors, "store_full_events", es.store_full_events);
        add_u64(errors, "lost_chunks", es.lost_chunks);
        add_u64(errors, "index_write_errors", idx_write_errors(d->ix));
        struct source_stats ss = {0};
        if (d->source)
                source_get_stats(d->source, &ss);
        add_u64(errors, "peer_failures", ss.peer_failures);
        add_u64(errors, "peer_corrupt_chunks", ss.peer_corrupt);

        uint64_t rss = 0;
        memstat_rss(&rss);
        add_u64(memory, "rss_bytes", rss);
        struct cgroup_memory cm = {0};
        if (memstat_self(&cm) == 0) {
                add_u64(memory, "cgroup_version", (uint64_t)cm.version);
                add_u64(memory, "cgroup_usage_bytes", cm.usage_bytes);
                add_u64(memory, "cgroup_inactive_file_bytes", cm.inactive_file_bytes);
                add_u64(memory, "cgroup_working_set_bytes", cm.working_set_bytes);
        } else {
                json_object_set_new(memory, "cgroup_version", json_integer(0));
                json_object_set_new(memory, "cgroup_usage_bytes", json_null());
                json_object_set_new(memory, "cgroup_inactive_file_bytes", json_null());
                json_object_set_new(memory, "cgroup_working_set_bytes", json_null());
        }
        add_u64(memory, "store_page_cache_bytes", store_page_cache_bytes(d->store));

        json_object_set_new(root, "version", json_string(P2PBLOBS_VERSION));
        add_u64(root, "uptime_seconds", (uint64_t)(time(NULL) - d->started));
        add_u64(root, "chunk_size", d->cfg.chunk_size);
        add_u64(root, "blobs", es.blobs);
        add_u64(root, "blobs_verified", es.blobs_verified);
        add_u64(root, "blobs_complete", es.blobs_complete);
        add_u64(root, "blobs_partial", es.blobs_partial);
        add_u64(root, "blobs_pinned", es.blobs_pinned);
        json_object_set_new(root, "daemon_running", json_true());
        json_object_set_new(root, "cache", cache);
        json_object_set_new(root, "fetched", fetched);
        json_object_set_new(root, "errors", errors);
        /* Peer figures: true zeros when the node runs without peers. */
        json_object_set_new(root, "served",
                            json_pack("{s:I}", "peer_bytes", (json_int_t)pt.bytes_to));
        json_object_set_new(
                root, "peers",
                json_pack("{s:I, s:I}", "known", (json_int_t)pt.known, "up", (json_int_t)pt.up));
        json_object_set_new(root, "memory", memory);
        *ret = root;
        return 0;
}

/* One member for GET /v1/peers (blobctl peers). */
static json_t *peer_json(const struct peer_info *p) {
        char host[PEER_ID_MAX];
        uint16_t port = 0;
        if (parse_hostport(p->id, host, sizeof(host), &port) < 0)
                snprintf(host, sizeof(host), "%s", p->id);
        json_t *lat = p->latency_us ? json_real((double)p->latency_us / 1000.0) : json_null();
        return json_pack("{s:s, s:s, s:I, s:s, s:s, s:o, s:I, s:I, s:I, s:I, s:b, s:s}", "id",
                         p->id, "address", host, "port", (json_int_t)port, "state",
                         p->state == PEER_UP ? "up" : "down", "locality",
                         nl_locality_name(p->locality), "latency_ms", lat, "bytes_from",
                         (json_int_t)p->bytes_from, "bytes_to", (json_int_t)p->bytes_to, "failures",
                         (json_int_t)p->failures, "last_seen", (json_int_t)p->last_seen, "self",
                         p->is_self, "source",
                         p->from_static ? "static"
                         : p->from_dns  ? "dns"
                                        : "self");
}

static int on_peers(struct daemon *d, json_t **ret, char *reason, size_t reason_len) {
        json_t *arr = json_array();
        struct peer_info *v = NULL;
        size_t n = 0;
        if (!arr || (d->members && members_snapshot(d->members, &v, &n) < 0)) {
                json_decref(arr);
                snprintf(reason, reason_len, "out of memory");
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++)
                json_array_append_new(arr, peer_json(&v[i]));
        free(v);
        *ret = arr;
        return 0;
}

static json_t *blob_json(const struct engine_blob_info *b) {
        char hex[DIGEST_HEX_LEN + 8];
        memcpy(hex, "sha256:", 7);
        digest_to_hex(&b->digest, hex + 7);
        return json_pack("{s:s, s:I, s:s, s:I, s:I, s:b, s:b, s:b, s:s?, s:I, s:I}", "digest", hex,
                         "size", (json_int_t)b->size, "source", b->source, "chunks",
                         (json_int_t)b->chunks, "chunks_present", (json_int_t)b->chunks_present,
                         "verified", b->verified, "pinned", b->pinned, "prefetching",
                         b->prefetching, "prefetch_error",
                         b->prefetch_err ? strerror(-b->prefetch_err) : NULL, "added_at",
                         (json_int_t)b->added_at, "last_access", (json_int_t)b->last_access);
}

static int on_list(struct daemon *d, json_t **ret, char *reason, size_t reason_len) {
        json_t *arr = json_array();
        if (!arr) {
                snprintf(reason, reason_len, "out of memory");
                return -ENOMEM;
        }
        uint32_t n = engine_blob_count(d->engine);
        for (uint32_t i = 0; i < n; i++) {
                struct engine_blob_info b;
                if (engine_get(d->engine, i, &b) == 0)
                        json_array_append_new(arr, blob_json(&b));
        }
        *ret = arr;
        return 0;
}

static int on_add(struct daemon *d, const char *ref, json_t **ret, char *reason,
                  size_t reason_len) {
        struct engine_blob_info b;
        int r = engine_add(d->engine, ref, &b, reason, reason_len);
        if (r < 0) {
                log_notice("blob add failed ref=\"%s\" err=%s reason=\"%s\"", ref, strerror(-r),
                           reason);
                return r;
        }
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&b.digest, hex);
        log_info("blob added digest=sha256:%s size=%" PRIu64 " source=%s", hex, b.size, b.source);
        *ret = blob_json(&b);
        return 0;
}

/* "sha256:<hex>" from a path component; -EINVAL otherwise. */
static int parse_digest_arg(const char *s, size_t len, struct digest *ret, char *reason,
                            size_t reason_len) {
        char buf[DIGEST_HEX_LEN + 8];
        if (len >= sizeof(buf) ||
            (memcpy(buf, s, len), buf[len] = '\0', digest_parse(buf, ret) < 0)) {
                snprintf(reason, reason_len, "malformed digest: want sha256:<64 lowercase hex>");
                return -EINVAL;
        }
        return 0;
}

static int blob_action(struct daemon *d, const struct digest *dg, const char *action, json_t **ret,
                       char *reason, size_t reason_len) {
        struct engine_blob_info b;
        int r;
        if (strcmp(action, "prefetch") == 0) {
                r = engine_prefetch(d->engine, dg, &b);
                if (r == -EFBIG)
                        snprintf(reason, reason_len,
                                 "blob is larger than the cache budget; raise --cache-budget "
                                 "or read it lazily");
                if (r == 0)
                        *ret = blob_json(&b);
        } else if (strcmp(action, "pin") == 0 || strcmp(action, "unpin") == 0) {
                r = engine_pin(d->engine, dg, action[0] == 'p');
                if (r == 0 && (r = engine_find(d->engine, dg, &b)) == 0)
                        *ret = blob_json(&b);
        } else if (strcmp(action, "evict") == 0) {
                uint64_t chunks = 0, bytes = 0;
                r = engine_evict(d->engine, dg, &chunks, &bytes);
                if (r == 0)
                        *ret = json_pack("{s:I, s:I}", "evicted_chunks", (json_int_t)chunks,
                                         "evicted_bytes", (json_int_t)bytes);
        } else if (strcmp(action, "verify") == 0) {
                struct engine_verify_result v;
                r = engine_verify(d->engine, dg, &v);
                if (r == 0)
                        *ret = json_pack("{s:I, s:I, s:I, s:I, s:I}", "checked",
                                         (json_int_t)v.checked, "ok", (json_int_t)v.ok, "bad",
                                         (json_int_t)v.bad, "lost", (json_int_t)v.lost, "unknown",
                                         (json_int_t)v.unknown);
        } else {
                snprintf(reason, reason_len, "no such action \"%s\"", action);
                return -ENOENT;
        }
        if (r == -ENOENT && !reason[0])
                snprintf(reason, reason_len, "no such blob on this node; add it first");
        return r;
}

/* Routes:
 *   GET  /v1/stat                           figures for blobctl stat
 *   GET  /v1/blobs                          every blob
 *   POST /v1/blobs?ref=REG/REPO@DIGEST      register a blob
 *   GET  /v1/blobs/sha256:<hex>             one blob (prefetch progress included)
 *   POST /v1/blobs/sha256:<hex>/ACTION      prefetch, evict, pin, unpin, verify
 *   POST /v1/evict                          evict every blob's chunks
 *   GET  /v1/peers                          the membership (empty without peers) */
static int api_handle(void *ud, const struct control_req *req, json_t **ret, char *reason,
                      size_t reason_len) {
        struct daemon *d = ud;
        const char *method = control_req_method(req), *path = control_req_path(req);
        bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
        if (strcmp(path, "/v1/stat") == 0) {
                if (!get)
                        goto not_allowed;
                return on_stat(d, ret, reason, reason_len);
        }
        if (strcmp(path, "/v1/blobs") == 0) {
                if (get)
                        return on_list(d, ret, reason, reason_len);
                if (!post)
                        goto not_allowed;
                const char *ref = control_req_arg(req, "ref");
                if (!ref) {
                        snprintf(reason, reason_len, "missing ref parameter");
                        return -EINVAL;
                }
                return on_add(d, ref, ret, reason, reason_len);
        }
        if (strcmp(path, "/v1/peers") == 0) {
                if (!get)
                        goto not_allowed;
                return on_peers(d, ret, reason, reason_len);
        }
        if (strcmp(path, "/v1/evict") == 0) {
                if (!post)
                        goto not_allowed;
                uint64_t chunks = 0, bytes = 0;
                engine_evict(d->engine, NULL, &chunks, &bytes);
                *ret = json_pack("{s:I, s:I}", "evicted_chunks", (json_int_t)chunks,
                                 "evicted_bytes", (json_int_t)bytes);
                return 0;
        }
        static const char prefix[] = "/v1/blobs/";
        if (strncmp(path, prefix, sizeof(prefix) - 1) == 0) {
                const char *rest = path + sizeof(prefix) - 1;
                const char *slash = strchr(rest, '/');
                struct digest dg;
                int r = parse_digest_arg(rest, slash ? (size_t)(slash - rest) : strlen(rest), &dg,
                                         reason, reason_len);
                if (r < 0)
                        return r;
                if (!slash) {
                        if (!get)
                                goto not_allowed;
                        struct engine_blob_info b;
                        r = engine_find(d->engine, &dg, &b);
                        if (r < 0) {
                                snprintf(reason, reason_len, "no such blob on this node");
                                return r;
                        }
                        *ret = blob_json(&b);
                        return 0;
                }
                if (!post)
                        goto not_allowed;
                return blob_action(d, &dg, slash + 1, ret, reason, reason_len);
        }
        snprintf(reason, reason_len, "no such endpoint");
        return -ENOENT;
not_allowed:
        snprintf(reason, reason_len, "method not allowed");
        return -EOPNOTSUPP;
}

struct control_ops api_control_ops(struct daemon *d) {
        return (struct control_ops){.ud = d, .handle = api_handle};
}

static bool api_ready(void *ud) {
        struct daemon *d = ud;
        return atomic_load(&d->serving);
}

static void metric(FILE *f, const char *name, const char *type, const char *help, uint64_t v) {
        fprintf(f, "# HELP p2pblobs_%s %s\n# TYPE p2pblobs_%s %s\np2pblobs_%s %" PRIu64 "\n", name,
                help, name, type, name, v);
}

/* Prometheus text exposition (version 0.0.4) of the same figures as blobctl stat. */
static int api_metrics(void *ud, char **ret, size_t *ret_len) {
        struct daemon *d = ud;
        struct engine_stats es;
        struct origin_stats os;
        engine_get_stats(d->engine, &es);
        origin_get_stats(d->origin, &os);
        uint64_t rss = 0;
        memstat_rss(&rss);
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f)
                return -ENOMEM;
        metric(f, "cache_budget_bytes", "gauge", "Configured cache budget.", es.budget_bytes);
        metric(f, "cache_effective_budget_bytes", "gauge",
               "Budget in force (lower after the disk filled).", es.effective_budget_bytes);
        metric(f, "cache_used_bytes", "gauge", "Bytes of chunks in the store.", es.used_bytes);
        metric(f, "cache_pinned_bytes", "gauge",
               "Bytes of chunks being read, read ahead or awaiting the hash.", es.pinned_bytes);
        metric(f, "cache_chunks", "gauge", "Chunks in the store.", es.chunks_present);
        metric(f, "cache_hits_total", "counter", "Chunk reads served from the store.", es.hits);
        metric(f, "cache_misses_total", "counter", "Chunk reads that needed a fetch.", es.misses);
        metric(f, "cache_evicted_chunks_total", "counter", "Chunks evicted.", es.evicted_chunks);
        metric(f, "inflight_chunks", "gauge", "Chunk fetches in flight.", es.inflight_chunks);
        metric(f, "origin_bytes_total", "counter", "Blob bytes fetched from origins.", os.bytes);
        metric(f, "origin_requests_total", "counter", "Blob GET attempts to origins.", os.requests);
        fprintf(f, "# HELP p2pblobs_origin_errors_total Failed origin attempts by cause.\n"
                   "# TYPE p2pblobs_origin_errors_total counter\n");
        const struct {
                const char *cause;
                uint64_t v;
        } causes[] = {{"connect", os.err_connect}, {"timeout", os.err_timeout},
                      {"http", os.err_http},       {"not_found", os.err_not_found},
                      {"denied", os.err_denied},   {"protocol", os.err_protocol}};
        for (size_t i = 0; i < sizeof(causes) / sizeof(causes[0]); i++)
                fprintf(f, "p2pblobs_origin_errors_total{cause=\"%s\"} %" PRIu64 "\n",
                        causes[i].cause, causes[i].v);
        metric(f, "read_errors_total", "counter", "Reads answered with an error.", es.read_errors);
        metric(f, "verify_failures_total", "counter", "Blobs that failed verification.",
               es.verify_failures);
        metric(f, "lost_chunks_total", "counter", "Chunks found missing from the store.",
               es.lost_chunks);
        metric(f, "store_full_total", "counter", "Times a full disk shrank the budget.",
               es.store_full_events);
        metric(f, "blobs", "gauge", "Blobs known.", es.blobs);
        metric(f, "blobs_verified", "gauge", "Blobs verified against their digest.",
               es.blobs_verified);
        struct peer_totals pt;
        peer_totals(d, &pt);
        metric(f, "peers_known", "gauge", "Peers known (self excluded).", pt.known);
        metric(f, "peers_up", "gauge", "Peers answering.", pt.up);
        metric(f, "peer_fetched_bytes_total", "counter", "Chunk bytes fetched from peers.",
               pt.bytes_from);
        metric(f, "peer_served_bytes_total", "counter", "Chunk bytes served to peers.",
               pt.bytes_to);
        struct source_stats ss = {0};
        if (d->source)
                source_get_stats(d->source, &ss);
        metric(f, "peer_transfer_failures_total", "counter",
               "Peer chunk transfers that failed (refused, timed out, stalled, short).",
               ss.peer_failures);
        metric(f, "peer_corrupt_chunks_total", "counter",
               "Chunks from peers that did not match their digest.", ss.peer_corrupt);
        metric(f, "peer_locates_total", "counter", "Directory queries to homes.", ss.locates);
        metric(f, "peer_locate_failures_total", "counter", "Directory queries that failed.",
               ss.locate_failures);
        metric(f, "origin_claims_total", "counter",
               "Chunks this node was told to fetch from the origin for the cluster.", ss.claims);
        struct dir_stats ds = {0};
        if (d->dir)
                dir_get_stats(d->dir, &ds);
        metric(f, "directory_blobs", "gauge", "Blobs this node is a home for.", ds.blobs);
        metric(f, "directory_holders", "gauge", "Holder records this node keeps as a home.",
               ds.holders);
        metric(f, "resident_memory_bytes", "gauge", "Daemon RSS.", rss);
        metric(f, "ready", "gauge", "1 while the mount serves.", api_ready(d));
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        *ret_len = len;
        return 0;
}

struct httpd_ops api_httpd_ops(struct daemon *d) {
        return (struct httpd_ops){.ud = d, .ready = api_ready, .metrics = api_metrics};
}
