/* Verification: the hash frontier, what happens when a blob fails, and engine_verify().
 *
 * Verification. Each blob keeps a SHA-256 context over its prefix of chunks [0, hashed). When
 * chunk `hashed` becomes present the frontier advances through every present chunk after it;
 * reaching the end compares the digest. With a budget smaller than the blob, a sequential read
 * still verifies: the frontier follows the reader. If the advance will reach the end, the
 * waiting readers are answered only after the comparison, so the last read of a corrupt blob
 * fails rather than completing it.
 *
 * Invariants: one worker at a time advances a blob's frontier (b->hashing); a discard bumps the
 * blob's generation, so a frontier or fetch that began before it does not mark anything present
 * afterwards.
 * Cost: one chunk_size buffer while re-reading chunks from the store; hashing runs without the
 * engine lock. */
#include "engine/engine_int.h"

/* Discards every chunk of B after a verification failure. Caller holds lock. */
static void discard_blob(struct engine *e, struct blob *b, struct notes *ns) {
        ASSERT_HELD(&e->lock);
        for (uint32_t i = 0; i < b->nchunks; i++)
                if (bit_get(b->present, i)) {
                        bit_clear(b->present, i);
                        bit_clear(b->unread, i);
                        eng_ra_release(e, b, i);
                        eng_hash_pin_drop(e, b, i);
                        policy_remove(e->policy, key_of(b, i));
                }
        b->npresent = 0;
        b->generation++;
        /* The recorded chunk digests and chain values described bytes that failed the
         * whole-blob check. */
        eng_forget_digests(b);
        eng_changed(e, b, UINT32_MAX);
        eng_note(ns, NOTE_FORGET, b, 0, false, NULL);
        store_remove(e->store, &b->digest);
}

struct byte_range {
        uint64_t off, end;
};

static int range_cmp(const void *a, const void *b) {
        const struct byte_range *x = a, *y = b;
        return x->off < y->off ? -1 : x->off > y->off;
}

/* Before any reader hears of B's failure, the caller drops what it caches of B's bytes
 * (cfg.on_invalidate: the kernel's page cache), so no re-read, on an open file or a new one,
 * is answered with bytes that failed. Ranges of reads still pending (DONE, about to be
 * answered with the error, and those waiting on other chunks) are left out, to the page: the
 * kernel holds their pages locked until we answer, and waiting for them here could wait for
 * ourselves. Reads the engine has not seen yet cannot wait on us: they find failed_until_ms
 * set and fail at once. */
void eng_invalidate_blob(struct engine *e, struct blob *b, const struct pending *done) {
        ASSERT_NOT_HELD(&e->lock);
        if (!e->cfg.on_invalidate)
                return;
        const uint64_t page = 4096;
        size_t n = 0, cap = 0;
        struct byte_range *r = NULL;
        eng_lock(&e->lock);
        for (const struct pending *pr = done; pr; pr = pr->next_done)
                cap++;
        for (const struct inflight *f = b->inflight; f; f = f->next)
                for (const struct waiter *w = f->waiters; w; w = w->next)
                        cap++;
        r = cap ? malloc(cap * sizeof(*r)) : NULL;
        if (cap && !r) {
                eng_unlock(&e->lock);
                /* Without the list, the whole file could wait on a pending read's page: the
                 * retry window's EIO (failed_until_ms) still holds new reads off. */
                log_warning("cannot invalidate the page cache of a failed blob blob_id=%u "
                            "err=\"out of memory\"",
                            b->id);
                return;
        }
        for (const struct pending *pr = done; pr; pr = pr->next_done)
                r[n++] = (struct byte_range){pr->off, pr->off + pr->len};
        for (const struct inflight *f = b->inflight; f; f = f->next)
                for (const struct waiter *w = f->waiters; w; w = w->next)
                        r[n++] = (struct byte_range){w->pr->off, w->pr->off + w->pr->len};
        uint64_t size = b->size;
        uint32_t id = b->id;
        eng_unlock(&e->lock);
        if (n > 1)
                qsort(r, n, sizeof(*r), range_cmp);
        uint64_t pos = 0;
        for (size_t i = 0; i <= n; i++) {
                uint64_t start = (pos + page - 1) / page * page; /* a partly pending page: kept */
                uint64_t end = i < n ? r[i].off / page * page : size;
                if (end > start)
                        e->cfg.on_invalidate(e->cfg.invalidate_ud, id, start,
                                             i < n ? end - start : 0);
                if (i < n && r[i].end > pos)
                        pos = r[i].end;
        }
        free(r);
}

/* Caller holds lock. Whether B's frontier hash stands exactly at the chain value chunk I was
 * checked from (the standard initial state for chunk 0). It does whenever the frontier itself
 * recorded value i - 1, or passed chunk i - 1 by its link; checked anyway, so that no record
 * kept or lost elsewhere (digests freed while the frontier was mid-blob, a value a home sent
 * after that) can let the frontier pass bytes its own hash did not lead to. */
static bool frontier_at_link(const struct blob *b, uint32_t i) {
        if (i == 0)
                return true;
        struct digest at, from;
        if (!b->chain || !bit_get(b->chain_known, i - 1))
                return false;
        chain_value(b->fr, &at);
        from = b->chain[i - 1];
        return digest_equal(&at, &from);
}

/* Advances B's verification frontier through present chunks, starting with FRESH (chunk
 * FRESH_IDX's bytes) when it is the next one. A linked chunk (a source checked it by a chain
 * step that agrees with B's chain values) is passed without reading or hashing it: the
 * frontier's hash resumes from its chain value. Any other chunk is hashed, and where it ends
 * the frontier records its chain value (announced, so readers check it with one hash too).
 * Runs without lock; b->hashing is ours. Returns true when the blob turned out corrupt. */
bool eng_advance_frontier(struct engine *e, struct blob *b, const uint8_t *fresh,
                          uint32_t fresh_idx) {
        ASSERT_NOT_HELD(&e->lock);
        uint8_t *tmp = NULL;
        bool corrupt = false, done = false;
        struct digest got;
        eng_lock(&e->lock);
        uint64_t gen = b->generation;
        for (;;) {
                uint32_t i = b->hashed;
                if (i >= b->nchunks || !bit_get(b->present, i) || b->generation != gen)
                        break;
                bool last = i + 1 == b->nchunks;
                if (!b->fr) {
                        b->fr = malloc(sizeof(*b->fr));
                        if (!b->fr)
                                break; /* try again when the next chunk lands */
                        chain_begin(b->fr, NULL, 0);
                }
                if (b->linked && bit_get(b->linked, i) && frontier_at_link(b, i)) {
                        /* The step from value i - 1, where the hash stands, to value i was
                         * checked when the chunk landed. */
                        e->st.frontier_linked_chunks++;
                        if (last) {
                                got = b->digest;
                                done = true;
                        } else {
                                chain_begin(b->fr, &b->chain[i], chunk_off(e, i + 1));
                        }
                        eng_landed_hashed(e, b, i);
                        eng_hash_pin_advance(e, b);
                        if (done)
                                break;
                        continue;
                }
                bool from_fresh = fresh && i == fresh_idx;
                if (!from_fresh)
                        policy_pin(e->policy, key_of(b, i));
                eng_unlock(&e->lock);

                size_t n = chunk_len(e, b, i);
                const uint8_t *data = fresh;
                int r = 0;
                /* A chunk another worker landed while we hashed: its bytes are in the ring
                 * (landed.c), the very bytes that landed and were written; reading them back
                 * from the store would cost a pread, its checksums and a copy. */
                struct landed_buf *lb = from_fresh ? NULL : eng_landed_get(e, b, i, n, &data);
                if (!from_fresh && !lb) {
                        if (!tmp)
                                tmp = malloc(e->cfg.chunk_size);
                        r = tmp ? store_read(e->store, &b->digest, chunk_off(e, i), tmp, n)
                                : -ENOMEM;
                        data = tmp;
                }
                if (r == 0) {
                        chain_add(b->fr, data, n);
                        if (last)
                                chain_finish(b->fr, &got);
                        else
                                chain_value(b->fr, &got);
                }
                eng_landed_put(e, lb);
                if (r == 0)
                        eng_landed_hashed(e, b, i);
                eng_lock(&e->lock);
                if (!from_fresh)
                        policy_unpin(e->policy, key_of(b, i));
                if (eng_is_store_loss(r) && b->generation == gen) {
                        /* Absent now: the frontier resumes when its refetch lands. */
                        struct notes ns = {0};
                        bool log_it = eng_store_failed(e, b, i, r, &ns);
                        eng_unlock(&e->lock);
                        eng_notes_flush(e, &ns);
                        if (log_it)
                                eng_log_corrupt(b, i);
                        eng_lock(&e->lock);
                }
                if (r < 0)
                        break; /* try again when the next chunk lands */
                e->st.frontier_hashed_chunks++;
                if (!last && b->generation == gen) {
                        struct notes ns = {0};
                        eng_record_chain(b, i, &got, true, &ns);
                        if (ns.n) { /* a new value: announce it, and keep it */
                                eng_changed(e, b, i);
                                eng_unlock(&e->lock);
                                eng_notes_flush(e, &ns);
                                eng_lock(&e->lock);
                        }
                }
                eng_hash_pin_advance(e, b);
                if (last) {
                        done = true;
                        break;
                }
        }
        if (done && b->hashed == b->nchunks && b->generation == gen) {
                free(b->fr);
                b->fr = NULL;
                b->hashed = 0; /* every hash pin was released on the way */
                struct notes ns = {0};
                if (digest_equal(&got, &b->digest)) {
                        b->verified = true;
                        e->st.blobs_verified++;
                        eng_note(&ns, NOTE_VERIFIED, b, 0, true, NULL);
                        /* Every chunk's digest is now a verified one: announce them so (the
                         * homes prefer them over any that disagree). */
                        eng_changed(e, b, 0);
                        eng_changed(e, b, b->nchunks - 1);
                } else {
                        char want[DIGEST_HEX_LEN + 1], have[DIGEST_HEX_LEN + 1];
                        digest_to_hex(&b->digest, want);
                        digest_to_hex(&got, have);
                        log_warning("blob failed verification digest=sha256:%s got=sha256:%s "
                                    "source=%s hint=\"its chunks are discarded; reads fail with "
                                    "EIO, then it is refetched\"",
                                    want, have, b->source);
                        e->st.verify_failures++;
                        b->failed_until_ms = now_ms() + e->cfg.verify_retry_ms;
                        discard_blob(e, b, &ns);
                        corrupt = true;
                }
                b->hashing = false;
                pthread_cond_broadcast(&e->hash_cond);
                eng_unlock(&e->lock);
                eng_notes_flush(e, &ns);
                free(tmp);
                return corrupt;
        }
        log_debug("verification frontier paused blob_id=%u hashed=%u chunks=%u next_present=%d",
                  b->id, b->hashed, b->nchunks,
                  b->hashed < b->nchunks ? (int)bit_get(b->present, b->hashed) : -1);
        b->hashing = false;
        pthread_cond_broadcast(&e->hash_cond);
        eng_unlock(&e->lock);
        free(tmp);
        return false;
}

int engine_verify(struct engine *e, const struct digest *d, struct engine_verify_result *ret) {
        eng_lock(&e->lock);
        struct blob *b = eng_find_blob(e, d);
        uint32_t n = b ? b->nchunks : 0;
        eng_unlock(&e->lock);
        if (!b)
                return -ENOENT;
        struct engine_verify_result res = {0};
        struct digest *want = calloc(n ? n : 1, sizeof(*want));
        bool *known = calloc(n ? n : 1, sizeof(*known));
        uint8_t *buf = malloc(e->cfg.chunk_size);
        int r = -ENOMEM;
        if (!want || !known || !buf)
                goto out_free;
        idx_flush(e->ix); /* digests of chunks that just landed */
        r = idx_chunk_digests(e->ix, d, n, want, known);
        if (r < 0)
                goto out_free;
        bool unverified_here = false; /* a bad chunk we found un-verified the blob: its
                                       * values stay the ones it verified with */
        for (uint32_t i = 0; i < n; i++) {
                struct notes ns = {0};
                eng_lock(&e->lock);
                bool present = bit_get(b->present, i) && policy_pin(e->policy, key_of(b, i)) == 0;
                /* A chunk with no plain digest is checked by its chain step, when known and
                 * the values are the engine's own (the frontier's: behind it, or the blob
                 * verified) or were checked over these bytes (linked). Others may be a
                 * home's word that no byte here was ever hashed to: honest bytes would be
                 * called damaged and dropped. */
                struct digest prev, step;
                bool own = b->verified || unverified_here || i < b->hashed ||
                           (b->linked && bit_get(b->linked, i));
                bool by_chain =
                        present && !known[i] && own && eng_chain_step_of(b, i, &prev, &step);
                eng_unlock(&e->lock);
                if (!present)
                        continue;
                res.checked++;
                size_t len = chunk_len(e, b, i);
                int rr = store_read(e->store, &b->digest, chunk_off(e, i), buf, len);
                struct digest got;
                bool bad = false;
                if (rr == 0 && known[i]) {
                        digest_sha256(buf, len, &got);
                        bad = !digest_equal(&got, &want[i]);
                } else if (rr == 0 && by_chain) {
                        bad = !chain_check(i ? &prev : NULL, chunk_off(e, i), buf, len, i + 1 == n,
                                           &step);
                        known[i] = true;
                }
                eng_lock(&e->lock);
                policy_unpin(e->policy, key_of(b, i));
                bool log_it = false;
                if (eng_is_store_loss(rr) || bad) { /* bad: checksums and bytes both changed */
                        unverified_here |= b->verified;
                        log_it = eng_store_failed(e, b, i, bad ? -EBADMSG : rr, &ns);
                }
                eng_unlock(&e->lock);
                eng_notes_flush(e, &ns);
                if (log_it)
                        eng_log_corrupt(b, i);
                if (rr == -EBADMSG)
                        res.bad++;
                else if (rr == -ESTALE)
                        res.lost++;
                else if (rr < 0) {
                        r = rr;
                        goto out_free;
                } else if (!known[i])
                        res.unknown++;
                else if (bad)
                        res.bad++;
                else
                        res.ok++;
        }
        if (res.bad || res.lost) {
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(d, hex);
                log_warning("verify found damaged chunks digest=sha256:%s bad=%u lost=%u "
                            "hint=\"they were dropped and will be refetched when read\"",
                            hex, res.bad, res.lost);
        }
        *ret = res;
        r = 0;
out_free:
        free(want);
        free(known);
        free(buf);
        return r;
}
