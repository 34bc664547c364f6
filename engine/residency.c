/* Residency: which chunks stay on disk. Pins (readahead pins, hash-frontier pins, a read's
 * pins while it copies or waits), the budget and its eviction in the policy's order (S3-FIFO,
 * operator-pinned blobs last), and the shrink of the effective budget when the disk is full
 * (ENOSPC on a chunk write).
 *
 * Invariants: the store holds at most the effective budget plus the pinned chunks; readahead
 * pins are at most ra_pin_cap() (a quarter of the budget's chunks, at most max_inflight) and
 * hash pins at most min(HASH_PIN_WINDOW, ra_pin_cap()), so pins never take more than half the
 * cache. A chunk's present bit is cleared before its bytes are punched, so a reader that finds
 * the bit clear never reads them.
 * Cost: everything here but eng_write_chunk() runs under the engine lock and is O(chunks
 * evicted); eviction punches holes in the store with the lock held. */
#include "engine/engine_int.h"

/* Caller holds lock. B holds no chunk any more: its digests go too, so their memory follows
 * what is on disk (the budget), not every blob ever read. A refetch from a peer is checked
 * against the digests the directory carries. A verified blob stops being verified with them:
 * "verified" promises that every chunk it lands again matches the digest it verified with
 * (engine/fetch.c), and with the digests gone an origin refetch would land unchecked under
 * that promise. It verifies again through the frontier, like a blob never read. */
static void forget_shas(struct engine *e, struct blob *b, struct notes *ns) {
        if (b->npresent)
                return;
        store_release(e->store, &b->digest); /* nothing left to read: close its descriptors */
        /* The frontier stands mid-blob and goes on from its hash when the next chunk lands:
         * the values behind it are what it hashed, and they stay (so does "verified", the
         * rare blob a put verified meanwhile: its digests stay with it). Forgotten, they
         * would be recorded again from a source's step (a home's word), which the frontier
         * never checks once past them; the blob would verify with them and announce them as
         * verified. */
        if (b->hashed > 0)
                return;
        eng_forget_digests(b);
        if (b->verified) {
                b->verified = false;
                e->st.blobs_verified--;
                eng_note(ns, NOTE_VERIFIED, b, 0, false, NULL);
        }
}

/* Caller holds lock. How many readahead pins there may be: max_inflight, but at most a quarter
 * of the budget's chunks (at least 2). Pinned chunks cannot be evicted, so in a small cache
 * more would push out everything else, the hot set first. */
static unsigned ra_pin_cap(const struct engine *e) {
        ASSERT_HELD(&e->lock);
        uint64_t quarter = e->effective_budget / e->cfg.chunk_size / 4;
        unsigned cap = quarter < e->cfg.max_inflight ? (unsigned)quarter : e->cfg.max_inflight;
        return cap < 2 ? 2 : cap;
}

/* Caller holds lock. Pins chunk IDX of B, just brought in by readahead, in the ring. */
void eng_ra_pin(struct engine *e, struct blob *b, uint32_t idx) {
        ASSERT_HELD(&e->lock);
        unsigned ring = e->cfg.max_inflight, cap = ra_pin_cap(e);
        if (e->ra_count && e->ra_count >= cap) { /* release the oldest */
                policy_unpin(e->policy, e->ra_pins[e->ra_head]);
                e->ra_head = (e->ra_head + 1) % ring;
                e->ra_count--;
        }
        if (e->ra_count >= cap || policy_pin(e->policy, key_of(b, idx)) < 0)
                return;
        e->ra_pins[(e->ra_head + e->ra_count) % ring] = key_of(b, idx);
        e->ra_count++;
}

/* Caller holds lock. The reader reached a readahead chunk: it is an ordinary chunk now.
 * Returns whether it was one. */
bool eng_ra_release(struct engine *e, struct blob *b, uint32_t idx) {
        ASSERT_HELD(&e->lock);
        unsigned cap = e->cfg.max_inflight;
        for (unsigned i = 0; i < e->ra_count; i++) {
                unsigned pos = (e->ra_head + i) % cap;
                if (e->ra_pins[pos].blob != b->id || e->ra_pins[pos].idx != idx)
                        continue;
                policy_unpin(e->policy, e->ra_pins[pos]);
                /* close the gap: move the oldest entry into it */
                e->ra_pins[pos] = e->ra_pins[e->ra_head];
                e->ra_head = (e->ra_head + 1) % cap;
                e->ra_count--;
                return true;
        }
        return false;
}

/* Caller holds lock. A reader reads present chunk IDX. Only a re-reference counts as a hit for
 * the policy: not the first read of a chunk readahead brought in, and not the second, third ...
 * FUSE request of one stream inside the same chunk. Counting those would make a one-time scan
 * look hot and defeat S3-FIFO's scan resistance. */
void eng_touch(struct engine *e, struct blob *b, uint32_t idx, struct engine_stream *stream) {
        ASSERT_HELD(&e->lock);
        bool first_read = bit_get(b->unread, idx);
        if (first_read) {
                bit_clear(b->unread, idx);
                eng_ra_release(e, b, idx);
        }
        uint64_t tag = ((uint64_t)b->id << 32 | idx) + 1;
        bool same_stream_chunk = stream && stream->last_chunk == tag;
        if (stream)
                stream->last_chunk = tag;
        if (!first_read && !same_stream_chunk)
                policy_touch(e->policy, key_of(b, idx));
}

/* Caller holds lock. A chunk that lands a little ahead of its blob's verification frontier is
 * pinned until the frontier has hashed it. Without this, a fast sequential reader under a small
 * budget outruns the frontier, the chunks in between leave the small FIFO unhashed, and the blob
 * never verifies. Bounded: only within HASH_PIN_WINDOW chunks of the frontier (a random read
 * further on pins nothing), and at most min(HASH_PIN_WINDOW, ra_pin_cap()) in all. */

void eng_hash_pin(struct engine *e, struct blob *b, uint32_t idx) {
        ASSERT_HELD(&e->lock);
        if (b->verified || idx < b->hashed || idx - b->hashed >= HASH_PIN_WINDOW)
                return;
        uint64_t bit = UINT64_C(1) << (idx - b->hashed);
        /* Like readahead pins, at most a quarter of the budget: pins of both kinds together
         * never take more than half the cache from operator-pinned blobs or a hot set. */
        unsigned ra_cap = ra_pin_cap(e);
        unsigned cap = ra_cap < HASH_PIN_WINDOW ? ra_cap : HASH_PIN_WINDOW;
        if ((b->hash_pins & bit) || e->hash_pin_count >= cap)
                return;
        if (policy_pin(e->policy, key_of(b, idx)) < 0)
                return;
        b->hash_pins |= bit;
        e->hash_pin_count++;
}

/* Caller holds lock. The frontier moves past chunk b->hashed. */
void eng_hash_pin_advance(struct engine *e, struct blob *b) {
        ASSERT_HELD(&e->lock);
        if (b->hash_pins & 1) {
                policy_unpin(e->policy, key_of(b, b->hashed));
                e->hash_pin_count--;
        }
        b->hash_pins >>= 1;
        b->hashed++;
}

/* Caller holds lock. Chunk IDX leaves the cache: its pin goes with its policy entry. */
void eng_hash_pin_drop(struct engine *e, struct blob *b, uint32_t idx) {
        ASSERT_HELD(&e->lock);
        if (idx < b->hashed || idx - b->hashed >= 64)
                return;
        uint64_t bit = UINT64_C(1) << (idx - b->hashed);
        if (b->hash_pins & bit) {
                b->hash_pins &= ~bit;
                e->hash_pin_count--;
        }
}

/* Forgets chunk IDX of B: bit, policy entry; the bytes are punched by the caller or already
 * gone. */
void eng_mark_absent(struct engine *e, struct blob *b, uint32_t idx, struct notes *ns) {
        ASSERT_HELD(&e->lock);
        if (!bit_get(b->present, idx))
                return;
        bit_clear(b->present, idx);
        bit_clear(b->unread, idx);
        b->npresent--;
        eng_ra_release(e, b, idx); /* a stale ring entry would later unpin someone else's pin */
        eng_hash_pin_drop(e, b, idx);
        policy_remove(e->policy, key_of(b, idx));
        eng_note(ns, NOTE_ABSENT, b, idx, false, NULL);
        forget_shas(e, b, ns);
        eng_changed(e, b, idx);
}

/* The store could not give back chunk IDX of B: ERR is -ESTALE (its bytes are gone) or
 * -EBADMSG (they failed their checksum: bit rot, or changed under us). Either way the chunk is
 * absent from now on and the next read refetches it; corrupt bytes are punched, and the blob is
 * no longer "verified" (that means the bytes on disk are the verified ones) until its chunks
 * have been through the hash again. Returns true when this is the blob's first corrupt chunk,
 * to be logged with eng_log_corrupt() (once per blob, after unlocking). */
bool eng_store_failed(struct engine *e, struct blob *b, uint32_t idx, int err, struct notes *ns) {
        ASSERT_HELD(&e->lock);
        bool was_present = bit_get(b->present, idx);
        eng_mark_absent(e, b, idx, ns);
        if (err != -EBADMSG) {
                e->st.lost_chunks++;
                return false;
        }
        /* A racing reader of the same bytes neither counts them twice nor punches the
         * refetch that may be writing there by now. */
        if (was_present) {
                e->st.corrupt_chunks++;
                store_punch(e->store, &b->digest, chunk_off(e, idx), chunk_len(e, b, idx));
        }
        if (b->verified) {
                b->verified = false;
                e->st.blobs_verified--;
                eng_note(ns, NOTE_VERIFIED, b, 0, false, NULL);
        }
        bool first = !b->corrupt_logged;
        b->corrupt_logged = true;
        return first;
}

void eng_copy_finish(struct engine *e, struct pending *pr, int r, uint32_t lost) {
        ASSERT_NOT_HELD(&e->lock);
        struct notes ns = {0};
        bool log_it = false;
        eng_lock(&e->lock);
        eng_unpin_all(e, pr);
        if (eng_is_store_loss(r))
                log_it = eng_store_failed(e, pr->blob, lost, r, &ns);
        eng_unlock(&e->lock);
        eng_notes_flush(e, &ns);
        if (log_it)
                eng_log_corrupt(pr->blob, lost);
}

void eng_log_corrupt(const struct blob *b, uint32_t idx) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&b->digest, hex);
        log_warning("store chunk failed its checksum digest=sha256:%s chunk=%u hint=\"bit rot or "
                    "a change under the store; it is refetched, never served; check the disk\"",
                    hex, idx);
}

/* Caller holds lock. Drops chunk K (already out of the policy): bit, index, bytes. */
static void evict_chunk(struct engine *e, struct chunk_key k, struct notes *ns) {
        ASSERT_HELD(&e->lock);
        struct blob *b = e->blobs[k.blob];
        /* Clear the bit, then punch: a reader that finds the bit clear never reads the bytes. */
        bit_clear(b->present, k.idx);
        bit_clear(b->unread, k.idx);
        b->npresent--;
        eng_note(ns, NOTE_ABSENT, b, k.idx, false, NULL);
        forget_shas(e, b, ns);
        eng_changed(e, b, k.idx);
        int r = store_punch(e->store, &b->digest, chunk_off(e, k.idx), chunk_len(e, b, k.idx));
        if (r < 0)
                log_debug("store punch failed blob_id=%u chunk=%u err=%s", b->id, k.idx,
                          strerror(-r));
        e->st.evicted_chunks++;
}

/* Caller holds lock. Evicts down to the budget in the policy's order, passing over chunks of
 * operator-pinned blobs; only if that is not enough are those evicted too. The passed-over
 * chunks go back into the policy (as ghosts they land in main, where pinned blobs belong). */
void eng_evict_to_budget(struct engine *e, struct notes *ns) {
        ASSERT_HELD(&e->lock);
        uint64_t budget = policy_budget(e->policy);
        struct chunk_key k, *deferred = NULL;
        size_t ndeferred = 0, cap = 0;
        uint64_t deferred_bytes = 0;
        while (policy_next_victim(e->policy, &k)) {
                struct blob *b = e->blobs[k.blob];
                if (b->pinned) {
                        if (ndeferred == cap) {
                                size_t ncap = cap ? cap * 2 : 64;
                                struct chunk_key *v = realloc(deferred, ncap * sizeof(*v));
                                if (!v) { /* cannot defer: evict it after all */
                                        evict_chunk(e, k, ns);
                                        continue;
                                }
                                deferred = v;
                                cap = ncap;
                        }
                        deferred[ndeferred++] = k;
                        deferred_bytes += chunk_len(e, b, k.idx);
                        policy_set_budget(e->policy,
                                          budget > deferred_bytes ? budget - deferred_bytes : 0);
                        continue;
                }
                evict_chunk(e, k, ns);
        }
        policy_set_budget(e->policy, budget);
        for (size_t i = 0; i < ndeferred; i++) {
                struct blob *b = e->blobs[deferred[i].blob];
                policy_insert(e->policy, deferred[i], (uint32_t)chunk_len(e, b, deferred[i].idx));
        }
        free(deferred);
        if (ndeferred) /* only pinned blobs (or chunks in use) are left to evict */
                while (policy_next_victim(e->policy, &k))
                        evict_chunk(e, k, ns);
}

/* Pins chunk IDX for read PR and remembers it, so the read unpins exactly what it pinned. */
void eng_pin_for(struct engine *e, struct pending *pr, uint32_t idx) {
        ASSERT_HELD(&e->lock);
        if (policy_pin(e->policy, key_of(pr->blob, idx)) == 0)
                pr->pinned |= UINT64_C(1) << (idx - pr->first);
}

void eng_unpin_all(struct engine *e, struct pending *pr) {
        ASSERT_HELD(&e->lock);
        for (uint32_t i = pr->first; i <= pr->last; i++)
                if (pr->pinned & (UINT64_C(1) << (i - pr->first)))
                        policy_unpin(e->policy, key_of(pr->blob, i));
        pr->pinned = 0;
}

/* Writes a fetched chunk, shrinking the effective budget while the disk is full. */
int eng_write_chunk(struct engine *e, struct blob *b, uint32_t idx, const uint8_t *buf,
                    size_t len) {
        ASSERT_NOT_HELD(&e->lock);
        for (int attempt = 0;; attempt++) {
                int r = store_write(e->store, &b->digest, b->size, chunk_off(e, idx), buf, len);
                if (r != -ENOSPC || attempt >= 8)
                        return r;
                struct notes ns = {0};
                eng_lock(&e->lock);
                uint64_t used = policy_used_bytes(e->policy);
                uint64_t floor = e->cfg.chunk_size;
                uint64_t target = used > len + floor ? used - len : floor;
                bool shrunk = target < e->effective_budget;
                if (shrunk) {
                        log_warning("store disk full dir=%s budget=%" PRIu64
                                    " effective_budget=%" PRIu64
                                    " hint=\"shrinking the cache to fit the disk; free "
                                    "space or lower --cache-budget\"",
                                    store_dir(e->store), e->budget, target);
                        e->effective_budget = target;
                        e->st.effective_budget_bytes = target;
                        e->st.store_full_events++;
                        policy_set_budget(e->policy, target);
                }
                /* Evict down to the budget even when it need not shrink: chunks that were
                 * pinned when it last shrank (readers waiting on them) may be free to go now,
                 * and their space is what this write needs. */
                uint64_t before = policy_used_bytes(e->policy);
                eng_evict_to_budget(e, &ns);
                bool freed = policy_used_bytes(e->policy) < before;
                eng_unlock(&e->lock);
                eng_notes_flush(e, &ns);
                if (!shrunk && !freed && attempt >= 2)
                        return r; /* nothing left to free: the disk is full of other things */
        }
}

void engine_set_budget(struct engine *e, uint64_t budget) {
        struct notes ns = {0};
        eng_lock(&e->lock);
        e->budget = e->effective_budget = budget;
        policy_set_budget(e->policy, budget);
        eng_evict_to_budget(e, &ns);
        eng_unlock(&e->lock);
        eng_notes_flush(e, &ns);
}

/* Caller holds lock. Drops B's present chunks except those in use. */
static void evict_blob(struct engine *e, struct blob *b, struct notes *ns, uint64_t *chunks,
                       uint64_t *bytes) {
        ASSERT_HELD(&e->lock);
        b->prefetching = false;
        for (uint32_t i = 0; i < b->nchunks; i++) {
                if (!bit_get(b->present, i) || policy_pinned(e->policy, key_of(b, i)))
                        continue;
                eng_mark_absent(e, b, i, ns);
                store_punch(e->store, &b->digest, chunk_off(e, i), chunk_len(e, b, i));
                (*chunks)++;
                *bytes += chunk_len(e, b, i);
        }
}

int engine_evict(struct engine *e, const struct digest *d, uint64_t *ret_chunks,
                 uint64_t *ret_bytes) {
        struct notes ns = {0};
        uint64_t chunks = 0, bytes = 0;
        int r = 0;
        eng_lock(&e->lock);
        if (d) {
                struct blob *b = eng_find_blob(e, d);
                if (b)
                        evict_blob(e, b, &ns, &chunks, &bytes);
                else
                        r = -ENOENT;
        } else {
                for (uint32_t i = 0; i < e->nblobs; i++)
                        evict_blob(e, e->blobs[i], &ns, &chunks, &bytes);
        }
        e->st.evicted_chunks += chunks;
        eng_unlock(&e->lock);
        eng_notes_flush(e, &ns);
        if (r == 0) {
                *ret_chunks = chunks;
                *ret_bytes = bytes;
        }
        return r;
}
