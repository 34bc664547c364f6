/* The control API's handlers: JSON views of the daemon's state for blobctl.
 *
 * Handlers run on the control server's threads; everything they read is thread-safe
 * (engine and origin snapshots, the store's directory walk, /proc and cgroup files). */
#include "fs/api.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cache/store.h"
#include "fs/engine.h"
#include "index/index.h"
#include "peer/origin.h"
#include "util/log.h"
#include "util/memstat.h"

static int add_u64(json_t *obj, const char *key, uint64_t v) {
        return json_object_set_new(obj, key, json_integer((json_int_t)v));
}

static int on_stat(void *ud, json_t **ret, char *reason, size_t reason_len) {
        struct daemon *d = ud;
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
        add_u64(fetched, "peer_bytes", 0);
        add_u64(fetched, "inflight_chunks", es.inflight_chunks);
        add_u64(fetched, "readahead_chunks", es.readahead_chunks);

        add_u64(errors, "read_errors", es.read_errors);
        add_u64(errors, "verify_failures", es.verify_failures);
        add_u64(errors, "store_full_events", es.store_full_events);
        add_u64(errors, "lost_chunks", es.lost_chunks);
        add_u64(errors, "index_write_errors", idx_write_errors(d->ix));

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
                json_object_set_new(memory, "cgroup_working_set_bytes", json_null());
        }
        add_u64(memory, "store_page_cache_bytes", store_page_cache_bytes(d->store));

        json_object_set_new(root, "version", json_string(P2PBLOBS_VERSION));
        add_u64(root, "uptime_seconds", (uint64_t)(time(NULL) - d->started));
        add_u64(root, "chunk_size", d->cfg.chunk_size);
        add_u64(root, "blobs", es.blobs);
        add_u64(root, "blobs_verified", es.blobs_verified);
        json_object_set_new(root, "cache", cache);
        json_object_set_new(root, "fetched", fetched);
        json_object_set_new(root, "errors", errors);
        json_object_set_new(root, "memory", memory);
        *ret = root;
        return 0;
}

static json_t *blob_json(const struct engine_blob_info *b) {
        char hex[DIGEST_HEX_LEN + 8];
        memcpy(hex, "sha256:", 7);
        digest_to_hex(&b->digest, hex + 7);
        return json_pack("{s:s, s:I, s:s, s:I, s:I, s:b, s:I}", "digest", hex, "size",
                         (json_int_t)b->size, "source", b->source, "chunks", (json_int_t)b->chunks,
                         "chunks_present", (json_int_t)b->chunks_present, "verified", b->verified,
                         "added_at", (json_int_t)b->added_at);
}

static int on_list(void *ud, json_t **ret, char *reason, size_t reason_len) {
        struct daemon *d = ud;
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

static int on_add(void *ud, const char *ref, json_t **ret, char *reason, size_t reason_len) {
        struct daemon *d = ud;
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

struct control_ops api_control_ops(struct daemon *d) {
        return (struct control_ops){.ud = d, .stat = on_stat, .list = on_list, .add = on_add};
}
