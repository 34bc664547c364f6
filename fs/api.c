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
#include "fs/api_layers.h"
#include "fs/api_snapshots.h"
#include "fs/stats.h"
#include "index/index.h"
#include "net/api_routes.h"
#include "peer/members.h"
#include "peer/directory.h"
#include "registry/origin.h"
#include "peer/source.h"
#include "util/log.h"
#include "util/memstat.h"
#include "util/parse.h"

/* The handlers, one per row of net/api_routes.h's table, all of the signature api_handler_fn. */

static int api_on_stat(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                       size_t reason_len) {
        (void)q;
        json_t *root = stats_json(d);
        if (!root) {
                snprintf(reason, reason_len, "out of memory");
                return -ENOMEM;
        }
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

static int api_on_peers(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                        size_t reason_len) {
        (void)q;
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

static int api_on_list(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                       size_t reason_len) {
        (void)q;
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

static int api_on_add(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                      size_t reason_len) {
        const char *ref = q->arg[API_ARG_REF];
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

static int api_on_blob_action(struct daemon *d, const struct api_request *q, json_t **ret,
                              char *reason, size_t reason_len) {
        const struct digest *dg = &q->digest;
        enum api_action action = q->action;
        struct engine_blob_info b;
        int r = 0;
        switch (action) {
        case API_PREFETCH:
                r = engine_prefetch(d->engine, dg, &b);
                if (r == -EFBIG)
                        snprintf(reason, reason_len,
                                 "blob is larger than the cache budget; raise --cache-budget "
                                 "or read it lazily");
                if (r == 0)
                        *ret = blob_json(&b);
                break;
        case API_PIN:
        case API_UNPIN:
                r = engine_pin(d->engine, dg, action == API_PIN);
                if (r == 0 && (r = engine_find(d->engine, dg, &b)) == 0)
                        *ret = blob_json(&b);
                break;
        case API_EVICT: {
                uint64_t chunks = 0, bytes = 0;
                r = engine_evict(d->engine, dg, &chunks, &bytes);
                if (r == 0)
                        *ret = json_pack("{s:I, s:I}", "evicted_chunks", (json_int_t)chunks,
                                         "evicted_bytes", (json_int_t)bytes);
                break;
        }
        case API_VERIFY: {
                struct engine_verify_result v;
                r = engine_verify(d->engine, dg, &v);
                if (r == 0)
                        *ret = json_pack("{s:I, s:I, s:I, s:I, s:I}", "checked",
                                         (json_int_t)v.checked, "ok", (json_int_t)v.ok, "bad",
                                         (json_int_t)v.bad, "lost", (json_int_t)v.lost, "unknown",
                                         (json_int_t)v.unknown);
                break;
        }
        }
        if (r == -ENOENT && !reason[0])
                snprintf(reason, reason_len, "no such blob on this node; add it first");
        return r;
}

static int api_on_evict_all(struct daemon *d, const struct api_request *q, json_t **ret,
                            char *reason, size_t reason_len) {
        (void)q;
        (void)reason;
        (void)reason_len;
        uint64_t chunks = 0, bytes = 0;
        engine_evict(d->engine, NULL, &chunks, &bytes);
        *ret = json_pack("{s:I, s:I}", "evicted_chunks", (json_int_t)chunks, "evicted_bytes",
                         (json_int_t)bytes);
        return 0;
}

static int api_on_blob(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                       size_t reason_len) {
        struct engine_blob_info b;
        int r = engine_find(d->engine, &q->digest, &b);
        if (r < 0) {
                snprintf(reason, reason_len, "no such blob on this node");
                return r;
        }
        *ret = blob_json(&b);
        return 0;
}

/* The table's handler column: a route whose handler is not declared above does not compile. */
static const api_handler_fn handlers[API_N_ROUTES] = {
#define API_ROUTE_HANDLER(route, method, path, required, optional, handler) [route] = handler,
        API_ROUTES(API_ROUTE_HANDLER)
#undef API_ROUTE_HANDLER
};

/* Every request: routed by net/api_routes.h's table, answered by the row's handler. */
static int api_handle(void *ud, const struct control_req *req, json_t **ret, char *reason,
                      size_t reason_len) {
        struct route_query *args = malloc(sizeof(*args)); /* 16 KiB: not on the stack */
        if (!args) {
                snprintf(reason, reason_len, "out of memory");
                return -ENOMEM;
        }
        struct api_request q;
        int r = api_parse_request(control_req_method(req), control_req_path(req),
                                  control_req_query(req), args, &q, reason, reason_len);
        if (r == 0)
                r = handlers[q.route](ud, &q, ret, reason, reason_len);
        free(args);
        return r;
}

struct control_ops api_control_ops(struct daemon *d) {
        return (struct control_ops){.ud = d, .handle = api_handle};
}

static bool api_ready(void *ud) {
        struct daemon *d = ud;
        return atomic_load(&d->serving);
}

/* Prometheus text exposition of the same figures as blobctl stat (fs/stats.c's table). */
static int api_metrics(void *ud, char **ret, size_t *ret_len) {
        return stats_prometheus(ud, ret, ret_len);
}

struct httpd_ops api_httpd_ops(struct daemon *d) {
        return (struct httpd_ops){.ud = d, .ready = api_ready, .metrics = api_metrics};
}
