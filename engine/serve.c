/* Serving peers and the mirror from local chunks: engine_serve() (bytes of present chunks,
 * waiting a bounded time for a chunk this node is fetching), engine_blob_size() (HEAD),
 * engine_snapshot() (what this node holds, for announces) and engine_put() (small objects
 * the caller already holds whole, such as the mirror's manifests).
 *
 * Invariants: nothing here fetches on a peer's behalf; served chunks are pinned while copied;
 * engine_put() never overwrites a chunk that is present or being fetched.
 * Cost: blocks on disk reads and writes (the peer server's and mirror's threads, never the
 * FUSE path); engine_serve's wait is bounded by WAIT_MS and by engine_stop_fetching(). */
#include "engine/engine_int.h"

/* Caller holds lock. Whether a fetch of chunk IDX of B is running on this node. */
static bool chunk_inflight(const struct blob *b, uint32_t idx) {
        for (const struct inflight *f = b->inflight; f; f = f->next)
                if (f->idx == idx)
                        return true;
        return false;
}

#define SERVE_RA_CHUNKS 2      /* chunks read ahead from the store for a peer reading in order */
#define SERVE_IN_ORDER_SLACK 4 /* chunks a stream's concurrent requests may arrive out of order */

/* Caller holds lock. Whether the request for chunks FIRST..LAST of B continues one of the
 * blob's recent peer streams (it starts within a few chunks of where one would go next), and
 * the record of that stream moved on, or a new one started. A peer reading in order asks a few
 * requests at a time, which may arrive out of order; one reading at random (a cold 4 KiB read
 * per chunk, a container's scattered file reads) would only make the disk read a neighbour it
 * will not ask for, before its own chunk (issue 15: 8-16 WILLNEED calls per random GET). */
bool eng_serve_in_order(struct blob *b, uint32_t first, uint32_t last) {
        for (unsigned i = 0; i < SERVE_STREAMS; i++) {
                uint32_t next = b->serve_next[i];
                if (next && first + SERVE_IN_ORDER_SLACK >= next &&
                    first <= next + SERVE_IN_ORDER_SLACK) {
                        if (last + 1 > next)
                                b->serve_next[i] = last + 1;
                        return true;
                }
        }
        b->serve_next[b->serve_slot] = last + 1;
        b->serve_slot = (b->serve_slot + 1) % SERVE_STREAMS;
        return false;
}

int engine_serve(struct engine *e, const struct digest *d, uint64_t off, size_t len,
                 uint64_t wait_ms, void *buf, struct digest *ret_sha, bool *ret_sha_known) {
        uint64_t deadline = now_ms() + wait_ms;
        eng_lock(&e->lock);
        struct blob *b = eng_find_blob(e, d);
        if (!b) {
                eng_unlock(&e->lock);
                return -ENOENT;
        }
        if (len == 0 || off >= b->size || len > b->size - off) {
                eng_unlock(&e->lock);
                return -EINVAL;
        }
        uint32_t first = (uint32_t)(off / e->cfg.chunk_size);
        uint32_t last = (uint32_t)((off + len - 1) / e->cfg.chunk_size);
        if (last - first + 1 > 63) {
                eng_unlock(&e->lock);
                return -EINVAL;
        }
        /* Wait (bounded) for chunks this node is fetching; anything else is not ours to
         * fetch on a peer's behalf. */
        for (uint32_t i = first; i <= last; i++) {
                while (!bit_get(b->present, i)) {
                        if (!chunk_inflight(b, i) || now_ms() >= deadline || e->fetch_stopped) {
                                eng_unlock(&e->lock);
                                return -ERANGE;
                        }
                        uint64_t left = deadline - now_ms();
                        if (left > 100)
                                left = 100; /* re-check the deadline and the fetch's fate */
                        struct timespec ts = deadline_after_ms(CLOCK_REALTIME, left);
                        eng_cond_timedwait(&e->landed_cond, &e->lock, &ts);
                }
        }
        if (!buf) { /* only waiting: the caller copies once it holds a buffer */
                eng_unlock(&e->lock);
                return 0;
        }
        struct pending pr = {.blob = b, .off = off, .len = len, .first = first, .last = last};
        for (uint32_t i = first; i <= last; i++)
                eng_pin_for(e, &pr, i);
        bool one = first == last && chunk_off(e, first) == off && chunk_len(e, b, first) == len;
        bool known = one && b->sha_known && bit_get(b->sha_known, first);
        if (known && ret_sha)
                *ret_sha = b->chunk_sha[first];
        /* A peer reading a blob in order asks for its chunks a few at a time: start the disk
         * on the next ones we hold while we copy this one (bounded by the store). */
        uint32_t ra_to = last + 1;
        if (eng_serve_in_order(b, first, last))
                while (ra_to < b->nchunks && ra_to <= last + SERVE_RA_CHUNKS &&
                       bit_get(b->present, ra_to))
                        ra_to++;
        eng_unlock(&e->lock);
        if (ret_sha_known)
                *ret_sha_known = known;
        for (uint32_t i = last + 1; i < ra_to; i++)
                store_readahead(e->store, &b->digest, chunk_off(e, i), chunk_len(e, b, i));

        uint32_t lost = 0;
        int r = eng_copy_read(e, &pr, buf, NULL, 0, &lost);
        eng_copy_finish(e, &pr, r, lost);
        if (eng_is_store_loss(r))
                return -ERANGE; /* lost from the store (or failed its check): not here after all */
        return r;
}

int engine_blob_size(struct engine *e, const struct digest *d, uint64_t *ret_size) {
        eng_lock(&e->lock);
        struct blob *b = eng_find_blob(e, d);
        if (b)
                *ret_size = b->size;
        eng_unlock(&e->lock);
        return b ? 0 : -ENOENT;
}

/* Caller holds lock. Whether the announce carries chunk I's plain digest: I is present and
 * its digest was recorded when its bytes arrived. */
static bool sha_told(const struct blob *b, uint32_t i) {
        return bit_get(b->present, i) && bit_get(b->sha_known, i);
}

/* Caller holds lock. Whether the announce carries chunk I's chain value: I is present and
 * its bytes were hashed to that value, by the frontier (behind it, or the blob verified) or
 * by the chunk's own checked step (linked). A value that only came with the next chunk's
 * step is a home's word about bytes no hash here led to: not ours to tell. The last chunk's
 * value is the blob digest: never sent. */
static bool chain_told(const struct blob *b, uint32_t i) {
        return i + 1 < b->nchunks && bit_get(b->present, i) && bit_get(b->chain_known, i) &&
               (b->verified || i < b->hashed || bit_get(b->linked, i));
}

/* Caller holds lock. Of B's per-chunk values VALS (chunk_sha or chain; NULL when B has none
 * yet, and then neither has the bitmap TOLD reads), those of the chunks in [FROM, TO] that
 * TOLD admits, in index order: *RET_N of them in *RET_IDX and *RET_VALS, malloc'd with room
 * for one at least (the caller frees both). 0 with every out-parameter set; -ENOMEM, none. */
static int told_values(const struct blob *b, uint32_t from, uint32_t to, const struct digest *vals,
                       bool (*told)(const struct blob *, uint32_t), uint32_t *ret_n,
                       uint32_t **ret_idx, struct digest **ret_vals) {
        uint32_t n = 0;
        if (vals && b->nchunks)
                for (uint32_t i = from; i <= to; i++)
                        n += told(b, i);
        uint32_t *idx = malloc((n ? n : 1) * sizeof(*idx));
        struct digest *out = malloc((n ? n : 1) * sizeof(*out));
        if (!idx || !out) {
                free(idx);
                free(out);
                return -ENOMEM;
        }
        uint32_t k = 0;
        for (uint32_t i = from; k < n && i <= to; i++)
                if (told(b, i)) {
                        idx[k] = i;
                        out[k++] = vals[i];
                }
        *ret_n = n;
        *ret_idx = idx;
        *ret_vals = out;
        return 0;
}

int engine_snapshot(struct engine *e, uint32_t id, uint32_t sha_from, uint32_t sha_to,
                    struct engine_blob_snapshot *ret) {
        eng_lock(&e->lock);
        if (id >= e->nblobs) {
                eng_unlock(&e->lock);
                return -ENOENT;
        }
        struct blob *b = e->blobs[id];
        size_t map_len = ((size_t)b->nchunks + 7) / 8 + 1;
        if (sha_to >= b->nchunks)
                sha_to = b->nchunks ? b->nchunks - 1 : 0;
        struct engine_blob_snapshot w = {.digest = b->digest,
                                         .size = b->size,
                                         .nchunks = b->nchunks,
                                         .verified = b->verified}; /* digests of verified bytes */
        memcpy(w.source, b->source, sizeof(w.source));
        w.present = malloc(map_len);
        if (!w.present ||
            told_values(b, sha_from, sha_to, b->chunk_sha, sha_told, &w.ndigests, &w.sha_idx,
                        &w.sha) < 0 ||
            told_values(b, sha_from, sha_to, b->chain, chain_told, &w.nchain, &w.chain_idx,
                        &w.chain) < 0) {
                eng_unlock(&e->lock);
                free(w.present);
                free(w.sha_idx); /* NULL unless the chain values' allocation failed */
                free(w.sha);
                return -ENOMEM;
        }
        memcpy(w.present, b->present, map_len);
        eng_unlock(&e->lock);
        *ret = w;
        return 0;
}

/* The steps of storing a blob the caller holds, shared with engine/derived.c's streaming put. */

int eng_put_open(struct engine *e, const struct digest *d, uint64_t len, const char *source,
                 struct blob **ret, uint64_t *ret_gen) {
        bool inserted = false;
        eng_lock(&e->lock);
        struct blob *b = eng_find_blob(e, d);
        if (!b) {
                int r = eng_insert_blob(e, d, len, source, (int64_t)time(NULL), false, &b);
                if (r < 0) {
                        eng_unlock(&e->lock);
                        return r;
                }
                inserted = true;
        } else if (b->size != len) {
                eng_unlock(&e->lock);
                return -EBADMSG; /* known under this digest with another size: not these bytes */
        }
        *ret_gen = b->generation;
        eng_unlock(&e->lock);
        if (inserted) {
                struct idx_blob ib = {.digest = *d,
                                      .size = len,
                                      .chunk_size = e->cfg.chunk_size,
                                      .added_at = (int64_t)time(NULL),
                                      .verified = false};
                snprintf(ib.source, sizeof(ib.source), "%s", source);
                idx_put_blob(e->ix, &ib);
        }
        *ret = b;
        return 0;
}

/* Whether chunk I holds the bytes whose sha256 is SHA, by its recorded digest. */
static bool chunk_matches(const struct blob *b, uint32_t i, const struct digest *sha) {
        return bit_get(b->present, i) && b->sha_known && bit_get(b->sha_known, i) &&
               digest_equal(&b->chunk_sha[i], sha);
}

int eng_put_chunk(struct engine *e, struct blob *b, uint64_t gen, uint32_t i, const uint8_t *p,
                  struct notes *ns) {
        size_t n = chunk_len(e, b, i);
        struct digest sha;
        digest_sha256(p, n, &sha); /* outside the lock: a chunk costs a couple of ms */

        eng_lock(&e->lock);
        if (b->generation != gen || chunk_inflight(b, i)) {
                /* Discarded since, or a fetch is filling it: that fetch's checks decide. */
                eng_unlock(&e->lock);
                return 0;
        }
        if (chunk_matches(b, i, &sha)) {
                eng_unlock(&e->lock);
                return 1;
        }
        /* Present with bytes nothing vouches for (a partial read from the origin, checked
         * against TLS alone) or that differ from the put's: the put's bytes were checked
         * against the digest, so they replace them. */
        eng_mark_absent(e, b, i, ns);
        eng_unlock(&e->lock);

        int r = eng_write_chunk(e, b, i, p, n);
        if (r < 0)
                return r;
        int vouched = 0;
        eng_lock(&e->lock);
        /* A fetch that a reader started while we wrote will write its own bytes over ours
         * when it lands: the chunk is then its, checked as it lands, and not vouched for by
         * this put (the review of issue 15, finding A). */
        if (!bit_get(b->present, i) && b->generation == gen && !chunk_inflight(b, i) &&
            policy_insert(e->policy, key_of(b, i), (uint32_t)n) == 0) {
                bit_set(b->present, i);
                b->npresent++;
                eng_record_sha(b, i, &sha);
                eng_note(ns, NOTE_PRESENT, b, i, false, &sha);
                eng_changed(e, b, i);
                eng_evict_to_budget(e, ns);
                vouched = 1;
        } else if (chunk_matches(b, i, &sha)) {
                vouched = 1; /* a fetch landed the same bytes meanwhile */
        }
        eng_unlock(&e->lock);
        return vouched;
}

void eng_put_close(struct engine *e, struct blob *b, uint64_t gen, bool vouched_all,
                   struct notes *ns) {
        eng_lock(&e->lock);
        if (vouched_all && !b->verified && b->npresent == b->nchunks && b->generation == gen) {
                b->verified = true; /* every chunk holds bytes the caller checked whole */
                e->st.blobs_verified++;
                eng_note(ns, NOTE_VERIFIED, b, 0, true, NULL);
                /* As verify.c does: the landed ring keeps nothing of a verified blob. */
                eng_changed(e, b, 0);
        }
        eng_unlock(&e->lock);
        eng_notes_flush(e, ns);
}

int engine_put(struct engine *e, const struct digest *d, const char *source, const void *buf,
               size_t len) {
        struct digest actual;
        digest_sha256(buf, len, &actual);
        if (!digest_equal(&actual, d))
                return -EBADMSG;
        if (len == 0 || len > e->effective_budget / 4)
                return -EFBIG;
        struct notes ns = {0};
        struct blob *b;
        uint64_t gen;
        int r = eng_put_open(e, d, len, source, &b, &gen);
        if (r < 0)
                return r;
        bool vouched_all = true;
        for (uint32_t i = 0; i < b->nchunks; i++) {
                r = eng_put_chunk(e, b, gen, i, (const uint8_t *)buf + chunk_off(e, i), &ns);
                if (r < 0) {
                        eng_notes_flush(e, &ns);
                        return r;
                }
                vouched_all &= r == 1;
        }
        eng_put_close(e, b, gen, vouched_all, &ns);
        return 0;
}
