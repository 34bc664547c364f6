/* Start-up: engine_load() rebuilds the blob table and the present bitmaps from the index,
 * probing the store for each chunk the index calls present (a lost one is forgotten and will be
 * refetched) and remapping blobs recorded with another chunk size (their chunks are dropped).
 *
 * Invariant: after it, every present bit has bytes behind it in the store and an entry in the
 * policy, and the store is within the budget.
 * Cost: one store probe per present chunk, all under the engine lock (nothing else runs yet). */
#include "engine/engine_int.h"

struct load_ctx {
        struct engine *e;
        unsigned lost, kept, dropped_blobs;
        struct notes ns;
};

static int load_blob(void *ud, const struct idx_blob *ib) {
        struct load_ctx *lc = ud;
        struct engine *e = lc->e;
        ASSERT_HELD(&e->lock);
        struct blob *b;
        if (ib->chunk_size != e->cfg.chunk_size) {
                /* Chunks of another size cannot be mapped: keep the blob, drop its chunks. */
                idx_blob_forget_chunks(e->ix, &ib->digest);
                store_remove(e->store, &ib->digest);
                struct idx_blob copy = *ib;
                copy.chunk_size = e->cfg.chunk_size;
                idx_put_blob(e->ix, &copy);
                lc->dropped_blobs++;
        }
        int r = eng_insert_blob(e, &ib->digest, ib->size, ib->source, ib->added_at, ib->verified,
                                &b);
        if (r == 0) {
                b->pinned = ib->pinned;
                b->last_access = ib->last_access;
        }
        if (r == -ENOSPC) {
                log_warning("index holds more blobs than --max-blobs max=%u", e->cfg.max_blobs);
                return r;
        }
        return r;
}

static int load_chunk(void *ud, const struct digest *d, uint32_t idx, bool present,
                      const struct digest *sha, const struct digest *chain) {
        struct load_ctx *lc = ud;
        struct engine *e = lc->e;
        ASSERT_HELD(&e->lock);
        struct blob *b = eng_find_blob(e, d);
        if (!b || idx >= b->nchunks)
                return 0;
        /* A verified blob's chain values, present or not: a refetch is checked by them. */
        if (chain)
                eng_record_chain(b, idx, chain, false, NULL); /* it came from the index */
        if (!present || bit_get(b->present, idx))
                return 0;
        if (store_probe(e->store, d, chunk_off(e, idx), chunk_len(e, b, idx)) < 0) {
                lc->lost++;
                idx_chunk_absent(e->ix, d, idx);
                return 0;
        }
        if (policy_insert(e->policy, key_of(b, idx), (uint32_t)chunk_len(e, b, idx)) < 0)
                return 0;
        bit_set(b->present, idx);
        b->npresent++;
        if (sha)
                eng_record_sha(b, idx, sha);
        lc->kept++;
        return 0;
}

int engine_load(struct engine *e) {
        struct load_ctx lc = {.e = e};
        eng_lock(&e->lock);
        int r = idx_for_each_blob(e->ix, load_blob, &lc);
        if (r == 0 || r == -ENOSPC) {
                idx_flush(e->ix); /* chunk-size fixes must land before we read chunks */
                r = idx_for_each_chunk(e->ix, load_chunk, &lc);
        }
        eng_evict_to_budget(e, &lc.ns);
        eng_unlock(&e->lock);
        eng_notes_flush(e, &lc.ns);
        if (r < 0)
                return r;
        log_info("index loaded blobs=%u chunks_present=%u chunks_lost=%u used_bytes=%" PRIu64
                 " blobs_rechunked=%u",
                 e->nblobs, lc.kept, lc.lost, policy_used_bytes(e->policy), lc.dropped_blobs);
        return 0;
}
