/* A home directory's announces (directory.c has the tables and the essay): holder records
 * replaced by each announce, and the per-chunk values an announce carries (plain digests and
 * chain values), recorded by the rules of directory_values.c.
 */
#include "peer/directory_int.h"

static ssize_t holder_find(const struct dir_blob *b, const char *node) {
        for (size_t i = 0; i < b->nholders; i++)
                if (strcmp(b->holders[i].node, node) == 0)
                        return (ssize_t)i;
        return -1;
}

/* Records N values VALS[i] of chunks IDX[i] of B in S, those below LIMIT (an announce may name
 * any index), from NODE (VERIFIED: it verified the whole blob). */
static int record_values(struct directory *dir, struct dir_blob *b, struct dir_values *s,
                         const char *kind, uint32_t limit, uint32_t n, const uint32_t *idx,
                         const struct digest *vals, bool verified, const char *node) {
        for (uint32_t i = 0; i < n; i++) {
                if (idx[i] >= limit)
                        continue;
                int r = dri_values_record(dir, b, s, kind, idx[i], &vals[i], verified, node);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* WB's chunk digests and chain values. The last chunk's chain value is the blob digest itself
 * (util/chain.h), so one announced for it says nothing a reader needs: ignored. */
static int record_digests(struct directory *dir, struct dir_blob *b, const struct wire_blob *wb,
                          const char *node) {
        int r = record_values(dir, b, &b->sha, "digest", b->nchunks, wb->ndigests, wb->sha_idx,
                              wb->sha, wb->verified, node);
        if (r < 0)
                return r;
        return record_values(dir, b, &b->chain, "chain", b->nchunks ? b->nchunks - 1 : 0,
                             wb->nchain, wb->chain_idx, wb->chain, wb->verified, node);
}

/* The home's verdict on NODE's announce WB of B, NODE not a recorded holder (the caller
 * checks). FULL: the blob has max_holders live holders, NODE holds no live claim on it, and
 * the live recorded holders together hold every chunk of the blob — recording NODE would only
 * drop a holder as good for readers, and no claim is granted while they do. COVERED (issue 18,
 * the deltas of a wave's front): the same, except that the holders hold every chunk NODE
 * announced but not the whole blob; *RET_UNION (nchunks bits, the caller's) is what they
 * hold, and NODE stays quiet only while it holds nothing outside it (wire_reply.h). RECORD
 * otherwise.
 *
 * Why COVERED needs the union: comparing NODE's chunks alone and hushing the blob outright
 * was measured worse (bench/sim N = 1000, origin fetches per distinct chunk 1.082 -> 1.092,
 * worst blob 2.0 -> 2.33, on this branch and before it): a hushed reader goes on reading, and
 * gets chunks no holder recorded here has — from holders another home named, or from an
 * answer it kept — and the next reader was granted their claim again while hundreds held
 * them. With the union, the first such chunk makes it announce (and be recorded). A chunk it
 * was granted a claim on un-hushes the blob as well (announce_claimed), since by then the
 * union may be stale. */
enum verdict { V_RECORD, V_FULL, V_COVERED };

static enum verdict verdict_for(const struct directory *dir, const struct dir_blob *b,
                                const char *node, const uint8_t *mine, uint64_t now,
                                uint8_t *ret_union) {
        size_t nlive = 0, bytes = dri_bitmap_bytes(b->nchunks);
        bool whole = true;

        for (size_t i = 0; i < b->nholders; i++)
                nlive += dri_live(b->holders[i].last_ms, dir->cfg.ttl_ms, now);
        if (nlive < dir->cfg.max_holders)
                return V_RECORD;
        for (size_t i = 0; i < b->nclaims; i++)
                if (strcmp(b->claims[i].node, node) == 0 &&
                    dri_live(b->claims[i].since_ms, dir->cfg.claim_ttl_ms, now))
                        return V_RECORD;
        /* max_holders passes over nchunks / 8 bytes, only for an announcer that is not
         * recorded while the table is full. */
        memset(ret_union, 0, bytes);
        for (size_t i = 0; i < b->nholders; i++)
                if (dri_live(b->holders[i].last_ms, dir->cfg.ttl_ms, now))
                        for (size_t k = 0; k < bytes; k++)
                                ret_union[k] |= b->holders[i].present[k];
        for (size_t k = 0; k < bytes; k++) {
                uint8_t want = 0xff;

                if (k == bytes - 1 && b->nchunks % 8) /* bits past the end are not chunks */
                        want = (uint8_t)((1u << (b->nchunks % 8)) - 1);
                if (mine[k] & want & ~ret_union[k])
                        return V_RECORD; /* NODE holds a chunk no recorded holder has */
                whole &= (want & ~ret_union[k]) == 0;
        }
        return whole ? V_FULL : V_COVERED;
}

/* When NODE may come back to be recorded, as milliseconds from NOW: the blob's retries are
 * spaced (ttl / 3) / max_holders apart after the last one handed out, so however many nodes
 * hold the blob, about max_holders retries reach this home per refresh period (a holder
 * refreshes every ttl / 3), and a slot that frees up is taken within about one spacing. */
static uint64_t next_retry(const struct directory *dir, struct dir_blob *b, uint64_t now) {
        uint64_t gap = dir->cfg.ttl_ms / 3 / dir->cfg.max_holders;
        uint64_t at = b->retry_next_ms > now ? b->retry_next_ms : now;

        b->retry_next_ms = at + (gap ? gap : 1);
        return b->retry_next_ms - now;
}

/* Adds the verdict for NODE's announce WB of B to FULL when it is "full" or "covered":
 * 0 then, else -EAGAIN (record NODE: the verdict says so, or the reply cannot take it —
 * too many ranges, or memory). */
static int tell_full(struct directory *dir, struct dir_blob *b, const char *node,
                     const struct wire_blob *wb, uint64_t now, struct wire_reply *full) {
        uint8_t *u = malloc(dri_bitmap_bytes(b->nchunks));
        int r = -EAGAIN;

        if (!u)
                return r;
        switch (verdict_for(dir, b, node, wb->present, now, u)) {
        case V_FULL:
                if (wire_reply_add(full, &b->digest, next_retry(dir, b, now)) == 0)
                        r = 0;
                break;
        case V_COVERED:
                /* the retry time is handed out only if the entry fits */
                if (wire_reply_ranges(u, b->nchunks, WIRE_REPLY_MAX_RANGES) <=
                            WIRE_REPLY_MAX_RANGES &&
                    wire_reply_add_covered(full, &b->digest, 1, u, b->nchunks) == 0) {
                        full->full[full->nfull - 1].retry_ms = next_retry(dir, b, now);
                        dir->stats.told_covered++;
                        r = 0;
                }
                break;
        case V_RECORD:
                break;
        }
        free(u);
        return r;
}

/* One blob of NODE's announce, at NOW. With FULL non-NULL, a blob the home is full for
 * (is_full_for) is not recorded and goes into FULL with its retry time instead. */
static int apply_blob(struct directory *dir, struct dir_blob *b, const char *node,
                      const struct wire_blob *wb, uint64_t now, struct wire_reply *full) {
        ssize_t hi = holder_find(b, node);

        b->last_ms = now;
        dri_order_unlink(dir, b);
        dri_order_append(dir, b);

        if (b->nchunks == 0 || wire_bits_none(wb->present, b->nchunks)) {
                /* A node that holds none of it (it registered the blob to read it, or evicted
                 * it) and that the home does not record is told, too, when the home is full:
                 * otherwise each reader of a wave sent at least its first delta to every home
                 * (bench/sim N = 5000: half of the busiest home's deltas). */
                if (hi >= 0)
                        dri_holder_remove(dir, b, (size_t)hi);
                else if (full && b->nchunks && tell_full(dir, b, node, wb, now, full) == 0)
                        dir->stats.told_full++;
        } else if (hi < 0 && full && tell_full(dir, b, node, wb, now, full) == 0) {
                dir->stats.told_full++;
        } else {
                struct dir_holder *h =
                        hi >= 0 ? &b->holders[hi] : dri_holder_add(dir, b, node, now);

                if (!h)
                        return -ENOMEM;
                memcpy(h->present, wb->present, dri_bitmap_bytes(b->nchunks));
                if (b->nchunks % 8) /* bits past the end stay clear: they are compared */
                        h->present[b->nchunks / 8] &= (uint8_t)((1u << (b->nchunks % 8)) - 1);
                h->last_ms = now;
                /* Claims this node now holds are done. */
                for (size_t i = b->nclaims; i-- > 0;)
                        if (strcmp(b->claims[i].node, node) == 0 &&
                            wire_bit(h->present, b->claims[i].chunk))
                                dri_claim_remove(dir, b, i);
        }
        return record_digests(dir, b, wb, node);
}

int dir_apply(struct directory *dir, const struct wire_announce *a, uint64_t now_ms, char *reason,
              size_t reason_len) {
        return dir_apply_full(dir, a, now_ms, NULL, reason, reason_len);
}

int dir_apply_full(struct directory *dir, const struct wire_announce *a, uint64_t now_ms,
                   struct wire_reply *full, char *reason, size_t reason_len) {
        int r = 0;

        if (reason && reason_len > 0)
                reason[0] = '\0';
        pthread_mutex_lock(&dir->lock);
        dir->stats.announces++;
        if (a->chunk_size != dir->cfg.chunk_size) {
                dir->stats.refused++;
                pthread_mutex_unlock(&dir->lock);
                if (reason)
                        snprintf(reason, reason_len,
                                 "chunk size mismatch: announce has %" PRIu32 ", this node %" PRIu32
                                 "; every node needs the same chunk size",
                                 a->chunk_size, dir->cfg.chunk_size);
                return -EPROTO;
        }
        if (!wire_node_id_valid(a->node)) {
                dir->stats.refused++;
                pthread_mutex_unlock(&dir->lock);
                if (reason)
                        snprintf(reason, reason_len, "invalid node id in announce");
                return -EINVAL;
        }
        for (uint32_t i = 0; i < a->nblobs; i++) {
                const struct wire_blob *wb = &a->blobs[i];
                uint64_t n = wb->size / a->chunk_size + (wb->size % a->chunk_size != 0);
                struct dir_blob *b;
                int q;

                b = dri_blob_find(dir, &wb->digest);
                if (b && !dri_blob_alive(dir, b, now_ms)) {
                        dri_blob_free(dir, b); /* dead, not yet expired: start afresh */
                        b = NULL;
                }
                if (n != wb->nchunks || n > WIRE_MAX_CHUNKS ||
                    (b && (b->size != wb->size || b->nchunks != wb->nchunks))) {
                        char hex[DIGEST_HEX_LEN + 1];

                        digest_to_hex(&wb->digest, hex);
                        if (reason)
                                snprintf(reason, reason_len,
                                         "size mismatch for blob sha256:%s: announced %" PRIu64
                                         " bytes in %" PRIu32 " chunks, known as %" PRIu64
                                         "; blob skipped",
                                         hex, wb->size, wb->nchunks, b ? b->size : n);
                        dir->stats.refused++;
                        r = -EINVAL;
                        continue;
                }
                if (!b)
                        b = dri_blob_new(dir, wb);
                q = b ? apply_blob(dir, b, a->node, wb, now_ms, full) : -ENOMEM;
                if (q < 0 && r == 0)
                        r = q;
                while (dir->bytes > dir->cfg.max_bytes && dir->oldest && dir->oldest != b)
                        dri_blob_free(dir, dir->oldest);
        }
        for (uint32_t i = 0; i < a->nindexes; i++) {
                int q = dri_apply_index(dir, a->node, &a->indexes[i], now_ms);

                if (q < 0 && r == 0)
                        r = q;
        }
        if (dir->digest_new) {
                dir->digest_new = false;
                pthread_cond_broadcast(&dir->digest_cond); /* waiters each check their chunk */
        }
        pthread_mutex_unlock(&dir->lock);
        return r;
}
