/* The read engine's lifecycle: engine_new() and engine_free(), engine_stop_fetching() and
 * engine_barrier(). See engine.h for the contract, engine_int.h for the structures and the lock
 * order, and the files named below for each concern.
 *
 * State and locking. One mutex, `lock`, protects the blob table, every blob's present bitmap
 * and verification state, the in-flight fetches with their waiters, the eviction policy and the
 * counters. Critical sections are short (bit tests, list edits, punching evicted chunks); disk
 * copies, hashing and the network all run outside it. Lock order: engine lock, then (inside
 * policy and index calls) nothing that calls back. Index writes are queued after unlocking
 * (notes.c).
 *
 * The concerns, one file each: read.c (engine_read and answering reads), fetch.c (single
 * flight, readahead windows, completion workers), residency.c (pins, budget, eviction, the
 * ENOSPC shrink), verify.c (the hash frontier, engine_verify), blobs.c (the blob table,
 * registration, lookups, stats), load.c (start-up), prefetch.c, serve.c (peers and the mirror),
 * notes.c (the index write queue).
 *
 * Memory: per blob a bitmap (chunks/8 bytes) and a hash context while hashing; per in-flight
 * chunk one buffer (in the source) — bounded by max_inflight plus the kernel's outstanding
 * requests; per worker/FUSE thread one max_read buffer; the landed ring (landed.c), at most
 * landed_chunks chunks plus those being copied from it this instant.
 *
 * Shutdown costs: engine_stop_fetching() takes fetch_lock exclusively, so it waits for every
 * submit() under way; engine_free() joins the workers, then answers what is still queued. */
#include "engine/engine_int.h"

int engine_new(const struct engine_config *cfg, struct index *ix, struct store *store,
               const struct engine_source_ops *src, struct engine **ret) {
        /* A read spans at most max_read / chunk_size + 1 chunks; pending reads track their pins
         * in 64 bits. */
        if (cfg->chunk_size == 0 || cfg->max_blobs == 0 || cfg->max_read == 0 ||
            cfg->max_read / cfg->chunk_size + 2 > 64 || !src || !src->fetch || !src->blob_size)
                return -EINVAL;
        struct engine *e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        e->cfg = *cfg;
        if (e->cfg.workers == 0)
                e->cfg.workers = 2;
        e->ix = ix;
        e->store = store;
        e->src = *src;
        e->budget = e->effective_budget = cfg->cache_budget;
        e->st.budget_bytes = e->st.effective_budget_bytes = cfg->cache_budget;
        pthread_mutex_init(&e->lock.m, NULL);
        pthread_cond_init(&e->hash_cond, NULL);
        pthread_cond_init(&e->landed_cond, NULL);
        pthread_rwlock_init(&e->fetch_lock, NULL);
        pthread_mutex_init(&e->cq_lock, NULL);
        pthread_cond_init(&e->cq_cond, NULL);
        e->cq_tail = &e->cq_head;
        e->by_digest_cap = 16;
        while (e->by_digest_cap < (size_t)cfg->max_blobs * 2)
                e->by_digest_cap *= 2;
        e->blobs = calloc(cfg->max_blobs, sizeof(*e->blobs));
        e->by_digest = calloc(e->by_digest_cap, sizeof(*e->by_digest));
        /* Resident chunks can exceed budget/chunk_size by the pinned ones and by short last
         * chunks; the margin keeps -ENOSPC from the policy a corner case. */
        size_t max_entries = (size_t)(cfg->cache_budget / cfg->chunk_size) * 2 + 4096;
        e->policy = policy_new(cfg->cache_budget, max_entries);
        e->workers = calloc(e->cfg.workers, sizeof(*e->workers));
        e->ra_pins = calloc(cfg->max_inflight ? cfg->max_inflight : 1, sizeof(*e->ra_pins));
        if (!e->cfg.max_inflight)
                e->cfg.max_inflight = 1;
        int lr = eng_landed_init(e);
        if (!e->blobs || !e->by_digest || !e->policy || !e->workers || !e->ra_pins || lr < 0) {
                engine_free(e);
                return -ENOMEM;
        }
        for (unsigned i = 0; i < e->cfg.workers; i++) {
                int r = -pthread_create(&e->workers[i], NULL, eng_worker_main, e);
                if (r < 0) {
                        engine_free(e);
                        return r;
                }
                e->nworkers++;
        }
        *ret = e;
        return 0;
}

void engine_free(struct engine *e) {
        if (!e)
                return;
        pthread_mutex_lock(&e->cq_lock);
        e->stopping = true;
        pthread_cond_broadcast(&e->cq_cond);
        pthread_mutex_unlock(&e->cq_lock);
        for (unsigned i = 0; i < e->nworkers; i++)
                pthread_join(e->workers[i], NULL);
        /* The sources are stopped, so no fetch is still running: anything in flight was answered by
         * its completion. What remains is memory. */
        for (uint32_t i = 0; i < e->nblobs; i++) {
                struct blob *b = e->blobs[i];
                while (b->inflight) {
                        /* No other thread is left; the lock is for eng_inflight_end()'s
                         * contract (ASSERT_HELD), and is released before eng_answer() takes it. */
                        eng_lock(&e->lock);
                        struct waiter *w = eng_inflight_end(e, b->inflight);
                        eng_unlock(&e->lock);
                        while (w) {
                                struct waiter *next = w->next;
                                struct pending *pr = w->pr;
                                pr->err = -EIO;
                                if (--pr->missing == 0)
                                        eng_answer(e, pr, NULL, 0);
                                free(w);
                                w = next;
                        }
                }
                free(b->fr);
                eng_forget_digests(b);
                free(b->present);
                free(b->unread);
                free(b);
        }
        eng_landed_free(e);
        free(e->workers);
        free(e->ra_pins);
        policy_free(e->policy);
        free(e->blobs);
        free(e->by_digest);
        pthread_mutex_destroy(&e->lock.m);
        pthread_cond_destroy(&e->hash_cond);
        pthread_cond_destroy(&e->landed_cond);
        pthread_rwlock_destroy(&e->fetch_lock);
        pthread_mutex_destroy(&e->cq_lock);
        pthread_cond_destroy(&e->cq_cond);
        free(e);
}

void engine_stop_fetching(struct engine *e) {
        pthread_rwlock_wrlock(&e->fetch_lock);
        eng_lock(&e->lock);
        e->fetch_stopped = true;
        for (uint32_t i = 0; i < e->nblobs; i++)
                e->blobs[i]->prefetching = false;
        pthread_cond_broadcast(&e->landed_cond); /* peers waiting in engine_serve give up */
        eng_unlock(&e->lock);
        pthread_rwlock_unlock(&e->fetch_lock);
}

void engine_barrier(struct engine *e) {
        eng_lock(&e->lock);
        eng_unlock(&e->lock);
}
