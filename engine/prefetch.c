/* Prefetch: engine_prefetch() fetches every missing chunk of a blob in the background,
 * PREFETCH_WINDOW at a time (and within max_inflight), driven by the fetch completions
 * (eng_prefetch_pump() from complete()).
 *
 * Invariants: a prefetched chunk is not pinned (it graduates to the policy's main queue
 * instead); a blob larger than the effective budget is refused, as it could never be held
 * whole; the first failure stops the prefetch and is reported in prefetch_err.
 * Cost: at most PREFETCH_WINDOW fetches per blob in flight; state is four fields per blob. */
#include "engine/engine_int.h"

/* Caller holds lock. Keeps up to PREFETCH_WINDOW (and the in-flight limit) of B's missing
 * chunks in flight for engine_prefetch(); clears b->prefetching when nothing is left. */
void eng_prefetch_pump(struct engine *e, struct blob *b, struct inflight **starts, size_t *nstarts,
                       size_t max_starts) {
        ASSERT_HELD(&e->lock);
        unsigned window =
                PREFETCH_WINDOW < e->cfg.max_inflight ? PREFETCH_WINDOW : e->cfg.max_inflight;
        while (b->prefetching && b->prefetch_next < b->nchunks && b->prefetch_inflight < window &&
               *nstarts < max_starts) {
                uint32_t i = b->prefetch_next++;
                if (bit_get(b->present, i))
                        continue;
                bool is_new;
                struct inflight *f = eng_inflight_get(e, b, i, true, &is_new);
                if (!f || !is_new)
                        continue; /* a reader's fetch is already getting it */
                f->prefetch = true;
                b->prefetch_inflight++;
                starts[(*nstarts)++] = f;
        }
        if (b->prefetch_next >= b->nchunks && b->prefetch_inflight == 0)
                b->prefetching = false;
}

int engine_prefetch(struct engine *e, const struct digest *d, struct engine_blob_info *ret) {
        struct inflight *starts[PREFETCH_WINDOW];
        size_t nstarts = 0;
        eng_lock(&e->lock);
        struct blob *b = eng_find_blob(e, d);
        if (!b) {
                eng_unlock(&e->lock);
                return -ENOENT;
        }
        if (b->size > e->effective_budget) {
                eng_unlock(&e->lock);
                return -EFBIG;
        }
        if (!b->prefetching) {
                b->prefetching = true;
                b->prefetch_next = 0;
                b->prefetch_err = 0;
        }
        eng_prefetch_pump(e, b, starts, &nstarts, PREFETCH_WINDOW);
        eng_blob_info(b, ret);
        eng_unlock(&e->lock);
        for (size_t i = 0; i < nstarts; i++)
                eng_submit(e, starts[i]);
        return 0;
}
