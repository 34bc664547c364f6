/* A home directory's answers (directory.c has the tables and the essay): locate answers, and
 * the claims a reader's miss may be granted.
 *
 * Claims. A claim (chunk, claimant, time) is granted when no live holder has the chunk and
 * no live claim covers it, renewed when its claimant asks again, and dropped when the
 * claimant announces the chunk present, when it expires, or (oldest first) when the blob
 * already has max_claims: dropping a claim costs at most a duplicate origin fetch, while
 * refusing one could leave a chunk that nobody fetches.
 */
#include "peer/directory_int.h"

#include <time.h>

/* Decides CLAIMANT's claim on CHUNK of B. */
static int claim(struct directory *dir, struct dir_blob *b, const char *claimant, uint32_t chunk,
                 uint64_t now, bool *ret_granted) {
        struct dir_claim *c;

        for (size_t i = 0; i < b->nholders; i++)
                if (dri_live(b->holders[i].last_ms, dir->cfg.ttl_ms, now) &&
                    wire_bit(b->holders[i].present, chunk)) {
                        *ret_granted = false;
                        return 0;
                }
        for (size_t i = b->nclaims; i-- > 0;) {
                c = &b->claims[i];
                if (!dri_live(c->since_ms, dir->cfg.claim_ttl_ms, now)) {
                        dri_claim_remove(dir, b, i);
                        continue;
                }
                if (c->chunk != chunk)
                        continue;
                *ret_granted = strcmp(c->node, claimant) == 0;
                if (*ret_granted)
                        c->since_ms = now; /* the claimant is still at it */
                return 0;
        }
        if (b->nclaims >= dir->cfg.max_claims) {
                size_t old = 0;

                for (size_t i = 1; i < b->nclaims; i++)
                        if (b->claims[i].since_ms < b->claims[old].since_ms)
                                old = i;
                dri_claim_remove(dir, b, old);
        }
        if (dri_grow((void **)&b->claims, &b->claims_cap, b->nclaims, dir->cfg.max_claims,
                     sizeof(*b->claims)) < 0)
                return -ENOMEM;
        c = &b->claims[b->nclaims++];
        snprintf(c->node, sizeof(c->node), "%s", claimant);
        c->chunk = chunk;
        c->since_ms = now;
        dir->stats.claims++;
        dir->stats.claims_granted++;
        *ret_granted = true;
        return 0;
}

/* Adds claim C to L's fetching entries (one per node, at most WIRE_MAX_HOLDERS). */
static int add_fetching(struct wire_locate *l, uint32_t first, const struct dir_claim *c) {
        struct wire_holder *h = NULL;

        for (uint32_t i = first; i < l->nholders && !h; i++)
                if (strcmp(l->holders[i].node, c->node) == 0)
                        h = &l->holders[i];
        if (!h) {
                if (l->nholders - first >= WIRE_MAX_HOLDERS)
                        return 0; /* a reader needs a few, not all */
                h = &l->holders[l->nholders];
                h->present = calloc(1, dri_bitmap_bytes(l->nchunks));
                if (!h->present)
                        return -ENOMEM;
                snprintf(h->node, sizeof(h->node), "%s", c->node);
                h->fetching = true;
                l->nholders++;
        }
        wire_set_bit(h->present, c->chunk);
        return 0;
}

/* Whether chain values KNOWN (a bitmap, NULL: none) of a blob of NCHUNKS let a reader check
 * CHUNK (util/chain.h): it hashes the chunk from chunk - 1's value (for chunk 0 SHA-256's
 * initial state) and must reach the chunk's own (for the last chunk the blob digest, which
 * the reader has). A blob of one chunk has no chain value to give. */
static bool chain_checks(const uint8_t *known, uint32_t nchunks, uint32_t chunk) {
        if (!known || nchunks < 2 || chunk >= nchunks)
                return false;
        return (chunk == 0 || wire_bit(known, chunk - 1)) &&
               (chunk == nchunks - 1 || wire_bit(known, chunk));
}

/* Whether answer L about CHUNK is one a reader keeps and reuses (peer/source_plan.c): it names
 * a holder of CHUNK and carries what checks CHUNK (its digest, or the chain values). Readers
 * ask again for such an answer only when their kept one ran out, so these measure readers; the
 * others (a chunk nobody holds yet, or whose digest is not known: a wave's front, claims) come
 * per chunk whatever the TTL says. */
static bool reusable(const struct wire_locate *l, uint32_t chunk) {
        if (!wire_bit(l->sha_known, chunk) && !chain_checks(l->chain_known, l->nchunks, chunk))
                return false;
        for (uint32_t i = 0; i < l->nholders; i++)
                if (!l->holders[i].fetching && wire_bit(l->holders[i].present, chunk))
                        return true;
        return false;
}

/* The reuse time for B's answers at NOW (dir_locate's contract), counting this locate when
 * COUNT (a reusable answer). */
static uint32_t locate_ttl(const struct directory *dir, struct dir_blob *b, bool count,
                           uint64_t now) {
        if (b->loc_ttl_ms == 0 || now < b->loc_win_ms) {
                b->loc_ttl_ms = DIR_LOCATE_TTL_MIN_MS;
                b->loc_win_ms = now;
                b->loc_win_n = 0;
        }
        if (count && b->loc_win_n < UINT32_MAX)
                b->loc_win_n++;
        uint64_t elapsed = now - b->loc_win_ms;
        if (elapsed < DIR_LOCATE_WINDOW_MS)
                return b->loc_ttl_ms;
        /* Readers now ~ rate x TTL; the TTL that brings their locates to locate_rate is
         * readers / locate_rate, i.e. TTL x rate / locate_rate (ms x per-second / per-second). */
        double rate = (double)b->loc_win_n * 1000.0 / (double)elapsed;
        double want = (double)b->loc_ttl_ms * rate / (double)dir->cfg.locate_rate;
        /* Damped: an answer's TTL reaches its readers only as their kept answers run out. After
         * a quiet spell the estimate is as good as its window is long, so it may fall further. */
        double lo = (double)b->loc_ttl_ms * DIR_LOCATE_WINDOW_MS / (2.0 * (double)elapsed);
        double hi = (double)b->loc_ttl_ms * 4;
        want = want < lo ? lo : want > hi ? hi : want;
        want = want < DIR_LOCATE_TTL_MIN_MS   ? DIR_LOCATE_TTL_MIN_MS
               : want > DIR_LOCATE_TTL_MAX_MS ? DIR_LOCATE_TTL_MAX_MS
                                              : want;
        b->loc_ttl_ms = (uint32_t)want;
        b->loc_win_ms = now;
        b->loc_win_n = 0;
        return b->loc_ttl_ms;
}

static int fill_locate(const struct directory *dir, const struct dir_blob *b, const char *claimant,
                       int64_t chunk, uint64_t now, struct wire_locate *l) {
        size_t bytes = dri_bitmap_bytes(b->nchunks);
        const struct dir_claim *first = NULL;
        uint32_t nfirst;

        l->digest = b->digest;
        l->size = b->size;
        l->chunk_size = dir->cfg.chunk_size;
        l->nchunks = b->nchunks;
        snprintf(l->source, sizeof(l->source), "%s", b->source);
        l->holders = calloc(2 * WIRE_MAX_HOLDERS, sizeof(*l->holders));
        if (!l->holders)
                return -ENOMEM;
        /* Asked about one chunk (a reader's miss): the digests of that chunk and the
         * locate_span - 1 after it, and the holders that have it. The answer then costs the
         * same for a 10 GiB blob as for a 10 MiB one; the whole picture is for lookups
         * (CHUNK < 0). The following digests let the reader keep the answer and check the
         * next chunks of a sequential read (and a run of them in one GET) without asking
         * again for each (peer/source.c). Chain values over the same span and one more, the
         * chunk's before it: chunk CHUNK is checked from that one. Chain arrays only when the
         * blob has chain values at all (a reader takes NULL for none). */
        bool one = chunk >= 0 && (uint64_t)chunk < b->nchunks;
        uint32_t from = one ? (uint32_t)chunk : 0, end = b->nchunks;
        if (one && (uint64_t)chunk + dir->cfg.locate_span < b->nchunks)
                end = (uint32_t)chunk + dir->cfg.locate_span;
        if (dri_values_copy(&b->sha, b->nchunks, from, end, true, &l->sha, &l->sha_known,
                            &l->sha_verified) < 0 ||
            dri_values_copy(&b->chain, b->nchunks, from ? from - 1 : 0, end, false, &l->chain,
                            &l->chain_known, &l->chain_verified) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < b->nholders; i++) {
                const struct dir_holder *h = &b->holders[i];
                struct wire_holder *w = &l->holders[l->nholders];

                if (!dri_live(h->last_ms, dir->cfg.ttl_ms, now) ||
                    (claimant && strcmp(h->node, claimant) == 0) ||
                    (one && !wire_bit(h->present, (uint32_t)chunk)))
                        continue;
                w->present = malloc(bytes);
                if (!w->present)
                        return -ENOMEM;
                memcpy(w->present, h->present, bytes);
                snprintf(w->node, sizeof(w->node), "%s", h->node);
                l->nholders++;
        }
        /* Fetching nodes: the one fetching the chunk asked about first, so it is listed
         * even when there are more claimants than fit. */
        nfirst = l->nholders;
        for (size_t i = 0; i < b->nclaims; i++) {
                const struct dir_claim *c = &b->claims[i];

                if (!dri_live(c->since_ms, dir->cfg.claim_ttl_ms, now) ||
                    (claimant && strcmp(c->node, claimant) == 0))
                        continue;
                if (chunk >= 0 && c->chunk == (uint64_t)chunk)
                        first = c;
        }
        if (first && add_fetching(l, nfirst, first) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < b->nclaims; i++) {
                const struct dir_claim *c = &b->claims[i];

                if (!dri_live(c->since_ms, dir->cfg.claim_ttl_ms, now) ||
                    (claimant && strcmp(c->node, claimant) == 0) || (one && c->chunk != chunk))
                        continue;
                if (add_fetching(l, nfirst, c) < 0)
                        return -ENOMEM;
        }
        return 0;
}

int dir_locate(struct directory *dir, const struct digest *d, const char *claimant, int64_t chunk,
               uint64_t now_ms, struct wire_locate *ret) {
        struct wire_locate l;
        struct dir_blob *b;
        int r;

        if (claimant && !wire_node_id_valid(claimant))
                return -EINVAL;
        memset(&l, 0, sizeof(l));
        pthread_mutex_lock(&dir->lock);
        dir->stats.locates++;
        b = dri_blob_find(dir, d);
        if (!b || !dri_blob_alive(dir, b, now_ms)) {
                pthread_mutex_unlock(&dir->lock);
                return -ENOENT;
        }
        if (claimant && chunk >= 0 && chunk < (int64_t)b->nchunks) {
                r = claim(dir, b, claimant, (uint32_t)chunk, now_ms, &l.claim_granted);
                if (r < 0)
                        goto out_unlock;
                l.has_claim = true;
                l.claim_chunk = (uint32_t)chunk;
        }
        r = fill_locate(dir, b, claimant, chunk, now_ms, &l);
        if (r == 0 && dir->cfg.locate_rate && chunk >= 0 && chunk < (int64_t)b->nchunks)
                l.ttl_ms = locate_ttl(dir, b, reusable(&l, (uint32_t)chunk), now_ms);
out_unlock:
        pthread_mutex_unlock(&dir->lock);
        if (r < 0) {
                wire_locate_free(&l);
                return r;
        }
        *ret = l;
        return 0;
}

/* Under dir->lock: does a live record of D have what checks CHUNK: its digest, or the chain
 * values a reader checks it from (chain_checks)? */
static bool digest_recorded(struct directory *dir, const struct digest *d, uint32_t chunk,
                            uint64_t now) {
        struct dir_blob *b = dri_blob_find(dir, d);
        if (!b || !dri_blob_alive(dir, b, now) || chunk >= b->nchunks)
                return false;
        return dri_values_known(&b->sha, b->nchunks, chunk) ||
               chain_checks(b->chain.val ? dri_values_map(&b->chain, b->nchunks, DRI_KNOWN) : NULL,
                            b->nchunks, chunk);
}

int dir_wait_digest(struct directory *dir, const struct digest *d, uint32_t chunk, uint64_t now,
                    uint64_t wait_ms) {
        uint64_t until = now_ms() + wait_ms;
        int r = 0;

        pthread_mutex_lock(&dir->lock);
        if (digest_recorded(dir, d, chunk, now)) {
                dir->stats.digest_waits_found++;
                goto out_unlock;
        }
        if (dir->waits_stopped) {
                r = -ECANCELED;
                goto out_unlock;
        }
        if (dir->digest_waiters >= dir->cfg.max_digest_waiters) {
                dir->stats.digest_waits_refused++;
                r = -EBUSY;
                goto out_unlock;
        }
        dir->digest_waiters++;
        dir->stats.digest_waits++;
        if (dir->digest_waiters > dir->stats.digest_waiters_peak)
                dir->stats.digest_waiters_peak = dir->digest_waiters;
        struct timespec ts = {.tv_sec = (time_t)(until / 1000),
                              .tv_nsec = (long)(until % 1000) * 1000000L};
        r = -ETIMEDOUT;
        while (now_ms() < until && !dir->waits_stopped) {
                /* Woken by every announce that records a new digest: each waiter checks its
                 * own chunk (at most max_digest_waiters checks an announce). */
                if (digest_recorded(dir, d, chunk, now)) {
                        r = 0;
                        break;
                }
                int e = pthread_cond_timedwait(&dir->digest_cond, &dir->lock, &ts);
                if (e == ETIMEDOUT) {
                        if (digest_recorded(dir, d, chunk, now))
                                r = 0;
                        break;
                }
        }
        if (r != 0 && dir->waits_stopped)
                r = -ECANCELED;
        if (r == 0)
                dir->stats.digest_waits_found++;
        dir->digest_waiters--;
out_unlock:
        pthread_mutex_unlock(&dir->lock);
        return r;
}

void dir_stop_waits(struct directory *dir) {
        if (!dir)
                return;
        pthread_mutex_lock(&dir->lock);
        dir->waits_stopped = true;
        pthread_cond_broadcast(&dir->digest_cond);
        pthread_mutex_unlock(&dir->lock);
}
