/* Container starts: prefetch of a starting container's remote layers, and the bytes each
 * start fetched. A Prepare that is not a layer's records, in a small table (starts, at most
 * SNAPSHOTTER_STARTS_MAX, the oldest dropped first), what its remote lowers had fetched so
 * far; snapshotter_start_fetched subtracts that from what they have fetched now. A Mounts of
 * an active snapshot (task create) or a View over remote lowers queues those layers for the
 * prefetcher when it is on; queueing never blocks the answer. */
#include "snapshot/snap_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/digest.h"

/* Calls FN for the layer ("sha256:<hex>") of every remote one of PARENTS; *RET_N counts them.
 * Metadata errors skip the parent (they fail the mount elsewhere). */
static void for_each_remote(struct snapshotter *sn, const int64_t *parents, size_t nparents,
                            void (*fn)(struct snapshotter *sn, const char *layer, void *ud),
                            void *ud, uint32_t *ret_n) {
        uint32_t n = 0;
        for (size_t i = 0; i < nparents; i++) {
                char layer[DIGEST_HEX_LEN + 8];
                if (snapdb_remote_layer(sn->db, parents[i], layer, sizeof(layer)) < 0 || !layer[0])
                        continue;
                n++;
                if (fn)
                        fn(sn, layer, ud);
        }
        if (ret_n)
                *ret_n = n;
}

static void add_fetched(struct snapshotter *sn, const char *layer, void *ud) {
        pthread_mutex_lock(&sn->lazy_lock);
        int (*fetched)(void *, const char *, uint64_t *) = sn->lazy.layer_fetched;
        void *lud = sn->lazy.ud;
        pthread_mutex_unlock(&sn->lazy_lock);
        uint64_t v;
        if (fetched && fetched(lud, layer, &v) == 0)
                *(uint64_t *)ud += v;
}

static void queue_one(struct snapshotter *sn, const char *layer, void *ud) {
        struct prefetcher *pf = ud;
        struct digest d;
        (void)sn;
        if (digest_parse(layer, &d) == 0)
                prefetch_queue(pf, &d); /* already queued, full (counted), stopping: all fine */
}

void snap_maybe_prefetch(struct snapshotter *sn, const int64_t *parents, size_t nparents) {
        struct prefetcher *pf = atomic_load_explicit(&sn->prefetch, memory_order_acquire);
        if (pf)
                for_each_remote(sn, parents, nparents, queue_one, pf, NULL);
}

void snap_record_start(struct snapshotter *sn, int64_t id, const int64_t *parents,
                       size_t nparents) {
        uint64_t base = 0;
        uint32_t n;
        for_each_remote(sn, parents, nparents, add_fetched, &base, &n);
        if (n == 0)
                return; /* no remote lower: nothing to count, no room taken */
        atomic_fetch_add(&sn->starts_counted, 1);
        pthread_mutex_lock(&sn->start_lock);
        if (sn->starts_len == SNAPSHOTTER_STARTS_MAX) { /* the oldest goes */
                sn->starts_head = (sn->starts_head + 1) % SNAPSHOTTER_STARTS_MAX;
                sn->starts_len--;
        }
        sn->starts[(sn->starts_head + sn->starts_len++) % SNAPSHOTTER_STARTS_MAX] =
                (struct start_rec){id, base};
        pthread_mutex_unlock(&sn->start_lock);
}

/* The recorded base of snapshot ID: true and *RET when there is one. Caller holds start_lock. */
static bool start_base(const struct snapshotter *sn, int64_t id, uint64_t *ret) {
        for (unsigned i = 0; i < sn->starts_len; i++) {
                const struct start_rec *s =
                        &sn->starts[(sn->starts_head + i) % SNAPSHOTTER_STARTS_MAX];
                if (s->id == id) {
                        *ret = s->base;
                        return true;
                }
        }
        return false;
}

/* Ids are never reused, so a stale record could not be mistaken for a new snapshot's; it is
 * dropped only to free its slot. */
void snap_forget_start(struct snapshotter *sn, int64_t id) {
        pthread_mutex_lock(&sn->start_lock);
        for (unsigned i = 0; i < sn->starts_len; i++) {
                struct start_rec *s = &sn->starts[(sn->starts_head + i) % SNAPSHOTTER_STARTS_MAX];
                if (s->id != id)
                        continue;
                /* Close the gap, keeping Prepare order. */
                for (unsigned j = i; j + 1 < sn->starts_len; j++)
                        sn->starts[(sn->starts_head + j) % SNAPSHOTTER_STARTS_MAX] =
                                sn->starts[(sn->starts_head + j + 1) % SNAPSHOTTER_STARTS_MAX];
                sn->starts_len--;
                break;
        }
        pthread_mutex_unlock(&sn->start_lock);
}

int snapshotter_start_fetched(struct snapshotter *sn, const char *key,
                              struct snapshotter_start *ret) {
        struct snap_info *info;
        int64_t *parents;
        size_t nparents;
        int r = snapdb_get(sn->db, key, &info, &parents, &nparents);
        if (r < 0)
                return r;
        struct snapshotter_start out = {0};
        if (info->kind != SNAP_ACTIVE) {
                r = -EINVAL;
                goto out_free;
        }
        uint64_t now = 0, base = 0;
        for_each_remote(sn, parents, nparents, add_fetched, &now, &out.remote_lowers);
        pthread_mutex_lock(&sn->start_lock);
        out.since_prepare = start_base(sn, info->id, &base);
        pthread_mutex_unlock(&sn->start_lock);
        out.fetched_bytes = now > base ? now - base : 0;
        *ret = out;
out_free:
        snap_info_free(info);
        free(parents);
        return r;
}
