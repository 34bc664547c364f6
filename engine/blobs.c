/* The blob table and registration: every known blob by id (an array, ids never reused) and
 * by digest (open addressing, twice max_blobs slots), the per-chunk digests recorded as chunks
 * arrive, and the public calls that register, find, pin and count blobs (engine_add,
 * engine_lookup, engine_find, engine_get, engine_blob_count, engine_get_stats, engine_pin).
 *
 * Invariants: the table only grows (at most max_blobs); a blob's digest, size and chunk count
 * never change once inserted, so they may be read without the lock by whoever holds the
 * pointer. Registration asks the peers' directory or the origin for a size outside the lock and
 * re-checks the table after, so a concurrent add of the same blob inserts it once.
 * Cost: per blob one struct and two bitmaps; the recorded digests (32 bytes a chunk) exist only
 * while the blob has chunks present. */
#include "engine/engine_int.h"

#include "util/ref.h"

static size_t digest_slot(const struct digest *d, size_t cap) {
        uint64_t h;
        memcpy(&h, d->bytes, sizeof(h)); /* a sha256 is already uniformly distributed */
        return (size_t)h & (cap - 1);
}

/* Caller holds lock. */
struct blob *eng_find_blob(struct engine *e, const struct digest *d) {
        ASSERT_HELD(&e->lock);
        for (size_t i = digest_slot(d, e->by_digest_cap);; i = (i + 1) & (e->by_digest_cap - 1)) {
                uint32_t v = e->by_digest[i];
                if (v == 0)
                        return NULL;
                if (digest_equal(&e->blobs[v - 1]->digest, d))
                        return e->blobs[v - 1];
        }
}

void eng_blob_info(const struct blob *b, struct engine_blob_info *ret) {
        ret->id = b->id;
        ret->digest = b->digest;
        ret->size = b->size;
        ret->chunks = b->nchunks;
        ret->chunks_present = b->npresent;
        ret->verified = b->verified;
        ret->pinned = b->pinned;
        ret->prefetching = b->prefetching;
        ret->prefetch_err = b->prefetch_err;
        ret->fetched_bytes = b->fetched_bytes;
        ret->added_at = b->added_at;
        ret->last_access = b->last_access;
        memcpy(ret->source, b->source, sizeof(ret->source));
}

/* Caller holds lock. Tells the announcer that what we hold of B changed. */
void eng_changed(struct engine *e, const struct blob *b, uint32_t idx) {
        ASSERT_HELD(&e->lock);
        /* Every change of what is present passes here: the landed ring's invariant rides on
         * it (landed.c). */
        eng_landed_changed(e, b, idx);
        if (e->cfg.on_change)
                e->cfg.on_change(e->cfg.change_ud, &b->digest, idx);
}

/* One digest per chunk of B and the bitmaps beside it (MAP2 may be NULL), zeroed: all of them
 * or none, so a blob never holds values without the bits that say which are known. True with
 * every out-parameter set; false (out of memory) with nothing allocated or written. */
static bool chunk_values_alloc(const struct blob *b, struct digest **ret_vals, uint8_t **ret_map,
                               uint8_t **ret_map2) {
        size_t map_len = ((size_t)b->nchunks + 7) / 8 + 1;
        struct digest *vals = calloc(b->nchunks ? b->nchunks : 1, sizeof(*vals));
        uint8_t *map = calloc(map_len, 1);
        uint8_t *map2 = ret_map2 ? calloc(map_len, 1) : NULL;
        if (!vals || !map || (ret_map2 && !map2)) {
                free(vals);
                free(map);
                free(map2);
                return false;
        }
        *ret_vals = vals;
        *ret_map = map;
        if (ret_map2)
                *ret_map2 = map2;
        return true;
}

/* Caller holds lock. Records the sha256 of chunk IDX of B. */
void eng_record_sha(struct blob *b, uint32_t idx, const struct digest *sha) {
        if (!b->chunk_sha && !chunk_values_alloc(b, &b->chunk_sha, &b->sha_known, NULL))
                return; /* peers then cannot check it: origin */
        b->chunk_sha[idx] = *sha;
        b->sha_known[idx / 8] |= (uint8_t)(1u << (idx % 8));
}

bool eng_chain_of(const struct blob *b, uint32_t idx, struct digest *ret) {
        if (idx + 1 == b->nchunks) {
                *ret = b->digest;
                return true;
        }
        if (!b->chain || idx >= b->nchunks || !bit_get(b->chain_known, idx))
                return false;
        *ret = b->chain[idx];
        return true;
}

bool eng_chain_step_of(const struct blob *b, uint32_t idx, struct digest *ret_prev,
                       struct digest *ret_want) {
        if (idx >= b->nchunks || (idx > 0 && !eng_chain_of(b, idx - 1, ret_prev)))
                return false;
        return eng_chain_of(b, idx, ret_want);
}

bool eng_chain_step_agrees(const struct blob *b, uint32_t idx, const struct chunk_check *chk) {
        struct digest prev, want;
        return chk->has_chain && eng_chain_step_of(b, idx, &prev, &want) &&
               (idx == 0 || digest_equal(&prev, &chk->chain_prev)) &&
               digest_equal(&want, &chk->chain);
}

/* Without the chain arrays the frontier hashes every chunk, and peers check plain digests. */
static bool chain_alloc(struct blob *b) {
        return b->chain || chunk_values_alloc(b, &b->chain, &b->chain_known, &b->linked);
}

bool eng_record_chain(struct blob *b, uint32_t idx, const struct digest *value, bool frontier,
                      struct notes *ns) {
        if (idx + 1 >= b->nchunks) /* the last chunk's value is the blob digest */
                return idx + 1 == b->nchunks && digest_equal(value, &b->digest);
        if (!chain_alloc(b))
                return false;
        if (bit_get(b->chain_known, idx)) {
                if (digest_equal(&b->chain[idx], value))
                        return true;
                if (!frontier)
                        return false;
                bit_clear(b->linked, idx + 1); /* it was checked from the value we replace */
        }
        b->chain[idx] = *value;
        bit_set(b->chain_known, idx);
        if (ns)
                eng_note(ns, NOTE_CHAIN, b, idx, false, value);
        return true;
}

bool eng_take_chain_check(struct blob *b, uint32_t idx, const struct chunk_check *chk,
                          struct notes *ns) {
        if (!chk->has_chain || idx >= b->nchunks || !chain_alloc(b))
                return false;
        /* A verified blob's values are the ones it verified with, or none (a put, a blob
         * verified before chain values): one it lacks is never taken from a source's step
         * (a home's word), which it would announce as verified and check refetches by. */
        if (b->verified && !eng_chain_step_agrees(b, idx, chk))
                return false;
        struct digest have;
        /* Both ends must agree with what is recorded before either is recorded: a step from a
         * value we disagree with proves nothing about our chain. */
        if (idx > 0 && eng_chain_of(b, idx - 1, &have) && !digest_equal(&have, &chk->chain_prev))
                return false;
        if (eng_chain_of(b, idx, &have) && !digest_equal(&have, &chk->chain))
                return false;
        if (idx > 0 && !eng_record_chain(b, idx - 1, &chk->chain_prev, false, ns))
                return false;
        if (!eng_record_chain(b, idx, &chk->chain, false, ns))
                return false;
        bit_set(b->linked, idx);
        return true;
}

void eng_forget_digests(struct blob *b) {
        free(b->chunk_sha);
        free(b->sha_known);
        free(b->chain);
        free(b->chain_known);
        free(b->linked);
        b->chunk_sha = b->chain = NULL;
        b->sha_known = b->chain_known = b->linked = NULL;
}

/* Caller holds lock. Creates the in-memory blob. -ENOSPC at max_blobs. */
int eng_insert_blob(struct engine *e, const struct digest *d, uint64_t size, const char *source,
                    int64_t added_at, bool verified, struct blob **ret) {
        ASSERT_HELD(&e->lock);
        if (e->nblobs >= e->cfg.max_blobs)
                return -ENOSPC;
        uint64_t n = (size + e->cfg.chunk_size - 1) / e->cfg.chunk_size;
        if (n > UINT32_MAX)
                return -EFBIG;
        struct blob *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->present = calloc((size_t)(n + 7) / 8 + 1, 1);
        b->unread = calloc((size_t)(n + 7) / 8 + 1, 1);
        if (!b->present || !b->unread) {
                free(b->present);
                free(b->unread);
                free(b);
                return -ENOMEM;
        }
        b->id = e->nblobs;
        b->digest = *d;
        b->size = size;
        b->nchunks = (uint32_t)n;
        snprintf(b->source, sizeof(b->source), "%s", source);
        b->added_at = added_at;
        b->verified = verified;
        e->blobs[e->nblobs++] = b;
        size_t i = digest_slot(d, e->by_digest_cap);
        while (e->by_digest[i])
                i = (i + 1) & (e->by_digest_cap - 1);
        e->by_digest[i] = b->id + 1;
        e->st.blobs = e->nblobs;
        if (verified)
                e->st.blobs_verified++;
        eng_changed(e, b, UINT32_MAX);
        *ret = b;
        return 0;
}

#define LOOKUP_TIMEOUT_MS 2000 /* a directory query on behalf of a lookup or an add */
#define UNKNOWN_TTL_MS 500     /* a digest no peer knew is not asked about again this soon */

int engine_add(struct engine *e, const char *refstr, struct engine_blob_info *ret, char *reason,
               size_t reason_len) {
        struct blob_ref ref;
        int r = ref_parse(refstr, &ref);
        if (r < 0) {
                snprintf(reason, reason_len,
                         "malformed reference: want REGISTRY/REPOSITORY@sha256:<64 hex>");
                return r == -EPROTONOSUPPORT ? -EINVAL : r;
        }
        eng_lock(&e->lock);
        struct blob *b = eng_find_blob(e, &ref.digest);
        if (b) {
                eng_blob_info(b, ret);
                eng_unlock(&e->lock);
                return 0;
        }
        eng_unlock(&e->lock);

        char source[IDX_SOURCE_MAX];
        snprintf(source, sizeof(source), "%s/%s", ref.registry, ref.repository);
        uint64_t size = 0;
        /* A blob some peer already registered needs no origin round trip (and can be added
         * while the origin is down). The reference's own source is kept: it is where this
         * node's client said the blob lives. */
        char peer_source[IDX_SOURCE_MAX];
        r = e->src.lookup ? e->src.lookup(e->src.ud, &ref.digest, now_ms() + LOOKUP_TIMEOUT_MS,
                                          &size, peer_source, sizeof(peer_source))
                          : -ENOTCONN;
        if (r < 0)
                r = e->src.blob_size(e->src.ud, source, &ref.digest,
                                     now_ms() + e->cfg.fetch_timeout_ms, &size, reason, reason_len);
        if (r < 0)
                return r;

        eng_lock(&e->lock);
        b = eng_find_blob(e, &ref.digest); /* a concurrent add may have won */
        if (!b) {
                r = eng_insert_blob(e, &ref.digest, size, source, (int64_t)time(NULL), false, &b);
                if (r < 0) {
                        eng_unlock(&e->lock);
                        snprintf(reason, reason_len,
                                 r == -ENOSPC ? "too many blobs (--max-blobs)"
                                              : "cannot record the blob");
                        return r;
                }
                struct idx_blob ib = {.digest = b->digest,
                                      .size = size,
                                      .chunk_size = e->cfg.chunk_size,
                                      .added_at = b->added_at};
                memcpy(ib.source, source, sizeof(ib.source));
                eng_unlock(&e->lock);
                idx_put_blob(e->ix, &ib);
                idx_flush(e->ix);
                eng_lock(&e->lock);
        }
        eng_blob_info(b, ret);
        eng_unlock(&e->lock);
        return 0;
}

int engine_find(struct engine *e, const struct digest *d, struct engine_blob_info *ret) {
        eng_lock(&e->lock);
        struct blob *b = eng_find_blob(e, d);
        if (b)
                eng_blob_info(b, ret);
        eng_unlock(&e->lock);
        return b ? 0 : -ENOENT;
}

int engine_get(struct engine *e, uint32_t id, struct engine_blob_info *ret) {
        eng_lock(&e->lock);
        bool ok = id < e->nblobs;
        if (ok)
                eng_blob_info(e->blobs[id], ret);
        eng_unlock(&e->lock);
        return ok ? 0 : -ENOENT;
}

uint32_t engine_blob_count(struct engine *e) {
        eng_lock(&e->lock);
        uint32_t n = e->nblobs;
        eng_unlock(&e->lock);
        return n;
}

void engine_get_stats(struct engine *e, struct engine_stats *ret) {
        eng_lock(&e->lock);
        *ret = e->st;
        ret->used_bytes = policy_used_bytes(e->policy);
        ret->pinned_bytes = policy_pinned_bytes(e->policy);
        ret->chunks_present = policy_count(e->policy);
        ret->budget_bytes = e->budget;
        ret->effective_budget_bytes = e->effective_budget;
        eng_landed_stats(e, &ret->landed_bytes, &ret->landed_peak_bytes, &ret->landed_hits);
        ret->blobs_complete = ret->blobs_partial = ret->blobs_pinned = 0;
        for (uint32_t i = 0; i < e->nblobs; i++) {
                const struct blob *b = e->blobs[i];
                ret->blobs_pinned += b->pinned;
                if (b->npresent == b->nchunks)
                        ret->blobs_complete++;
                else if (b->npresent)
                        ret->blobs_partial++;
        }
        eng_unlock(&e->lock);
}

int engine_pin(struct engine *e, const struct digest *d, bool pinned) {
        eng_lock(&e->lock);
        struct blob *b = eng_find_blob(e, d);
        if (b)
                b->pinned = pinned;
        eng_unlock(&e->lock);
        if (!b)
                return -ENOENT;
        idx_blob_pinned(e->ix, d, pinned);
        return idx_flush(e->ix);
}

int engine_lookup(struct engine *e, const struct digest *d, struct engine_blob_info *ret) {
        if (engine_find(e, d, ret) == 0)
                return 0;
        if (!e->src.lookup)
                return -ENOENT;
        uint64_t now = now_ms();
        eng_lock(&e->lock);
        for (size_t i = 0; i < sizeof(e->unknown) / sizeof(e->unknown[0]); i++)
                if (e->unknown[i].until_ms > now && digest_equal(&e->unknown[i].d, d)) {
                        eng_unlock(&e->lock);
                        return -ENOENT;
                }
        eng_unlock(&e->lock);

        uint64_t size = 0;
        char source[IDX_SOURCE_MAX];
        int r = e->src.lookup(e->src.ud, d, now + LOOKUP_TIMEOUT_MS, &size, source, sizeof(source));
        eng_lock(&e->lock);
        if (r < 0) {
                unsigned slot = e->unknown_next++ % (sizeof(e->unknown) / sizeof(e->unknown[0]));
                e->unknown[slot].d = *d;
                e->unknown[slot].until_ms = now_ms() + UNKNOWN_TTL_MS;
                eng_unlock(&e->lock);
                return -ENOENT;
        }
        struct blob *b = eng_find_blob(e, d); /* registered meanwhile? */
        bool inserted = false;
        if (!b) {
                r = eng_insert_blob(e, d, size, source, (int64_t)time(NULL), false, &b);
                if (r < 0) {
                        eng_unlock(&e->lock);
                        return -ENOENT;
                }
                inserted = true;
        }
        eng_blob_info(b, ret);
        eng_unlock(&e->lock);
        if (inserted) {
                struct idx_blob ib = {.digest = *d,
                                      .size = size,
                                      .chunk_size = e->cfg.chunk_size,
                                      .added_at = ret->added_at};
                memcpy(ib.source, source, sizeof(ib.source));
                idx_put_blob(e->ix, &ib);
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(d, hex);
                log_debug("blob found through peers digest=sha256:%s size=%" PRIu64 " source=%s",
                          hex, size, source);
        }
        return 0;
}
