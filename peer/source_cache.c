/* The locate cache (issues 15, 18): the latest home answer per blob, kept for the time the
 * answer says ("ttl_ms", at most LCACHE_TTL_MAX_MS; LCACHE_TTL_MS when it says none) so a
 * sequential reader's next misses skip LOCATE, and up to LCACHE_HINT_MS (or that time, if
 * longer) as a hint of whether a peer held a blob's chunks a moment ago. A home says a longer
 * time when many readers ask it about the blob (peer/directory.h, dir_locate), so its load
 * stays near a configured rate whatever the number of readers; a stale answer is safe (every
 * byte is checked, a holder that lost a chunk answers 416 and the answer is dropped), and it
 * never carries a claim. Bounded by LCACHE_SLOTS answers and LCACHE_BYTES of
 * maps and digests; an answer larger than half the budget is used once and not kept. Belongs
 * to the source's thread: no lock. Costs one linear scan of LCACHE_SLOTS per lookup. */
#include "peer/source_int.h"

/* ---- the locate cache (thread only) -------------------------------------------------------- */

static size_t lcache_cost(const struct wire_locate *l) {
        size_t map = ((size_t)l->nchunks + 7) / 8;
        /* Chain values, when the home sent any: as many again as the digests, two maps more. */
        size_t chain = l->chain ? (size_t)l->nchunks * sizeof(struct digest) + 2 * map : 0;
        return (size_t)l->nchunks * sizeof(struct digest) + map * (3 + (size_t)l->nholders) +
               chain + (size_t)l->nholders * sizeof(struct wire_holder) +
               sizeof(struct lcache_entry);
}

void src_lcache_evict(struct source *s, struct lcache_entry *e) {
        if (!e->used)
                return;
        wire_locate_free(&e->l);
        s->lcache_bytes -= e->bytes;
        e->used = false;
}

/* A home may ask for at most this much reuse: past it the holder maps are too old to be worth
 * trying first, whatever the home says. */
#define LCACHE_TTL_MAX_MS 60000

/* How long E's answer may be used: what its home said, or our default. */
static uint64_t lcache_ttl(const struct lcache_entry *e) {
        if (e->l.ttl_ms == 0)
                return LCACHE_TTL_MS;
        return e->l.ttl_ms < LCACHE_TTL_MAX_MS ? e->l.ttl_ms : LCACHE_TTL_MAX_MS;
}

/* The answer kept for BLOB if younger than MAX_AGE_MS or its TTL, whichever is longer, or NULL. */
struct lcache_entry *src_lcache_find(struct source *s, const struct digest *blob,
                                     uint64_t max_age_ms) {
        uint64_t now = now_ms();
        for (unsigned i = 0; i < LCACHE_SLOTS; i++) {
                struct lcache_entry *e = &s->lcache[i];
                if (!e->used || !digest_equal(&e->blob, blob))
                        continue;
                uint64_t ttl = lcache_ttl(e);
                if (now - e->at_ms < (max_age_ms > ttl ? max_age_ms : ttl))
                        return e;
                if (now - e->at_ms >= (ttl > LCACHE_HINT_MS ? ttl : LCACHE_HINT_MS))
                        src_lcache_evict(s, e);
                return NULL;
        }
        return NULL;
}

/* The fresh answer kept for BLOB (younger than its TTL), or NULL. */
struct lcache_entry *src_lcache_get(struct source *s, const struct digest *blob) {
        return src_lcache_find(s, blob, 0);
}

/* Forgets BLOB's answer: a peer it named failed us, so the next miss asks a home again. */
void src_lcache_drop(struct source *s, const struct digest *blob) {
        for (unsigned i = 0; i < LCACHE_SLOTS; i++)
                if (s->lcache[i].used && digest_equal(&s->lcache[i].blob, blob))
                        src_lcache_evict(s, &s->lcache[i]);
}

/* Keeps answer *L from HOME, taking its contents (*L is left empty, so freeing it is a no-op).
 * Returns the kept copy, or NULL when it does not fit the budget (then *L is untouched). The
 * claim is not kept: it answered one job's question, not the next one's. */
struct lcache_entry *src_lcache_put(struct source *s, struct wire_locate *l, const char *home) {
        size_t cost = lcache_cost(l);
        if (cost > LCACHE_BYTES / 2)
                return NULL;
        src_lcache_drop(s, &l->digest);
        struct lcache_entry *slot = NULL;
        while (!slot || s->lcache_bytes + cost > LCACHE_BYTES) {
                struct lcache_entry *oldest = NULL;
                slot = NULL;
                for (unsigned i = 0; i < LCACHE_SLOTS; i++) {
                        struct lcache_entry *e = &s->lcache[i];
                        if (!e->used) {
                                slot = slot ? slot : e;
                                continue;
                        }
                        if (!oldest || e->at_ms < oldest->at_ms)
                                oldest = e;
                }
                if (slot && s->lcache_bytes + cost <= LCACHE_BYTES)
                        break;
                src_lcache_evict(s, oldest); /* non-NULL: the budget is used by someone */
                slot = NULL;
        }
        slot->used = true;
        slot->blob = l->digest;
        slot->at_ms = now_ms();
        slot->bytes = cost;
        snprintf(slot->home, sizeof(slot->home), "%s", home);
        slot->l = *l;
        slot->l.has_claim = false;
        s->lcache_bytes += cost;
        *l = (struct wire_locate){0};
        return slot;
}

/* Homes of D, best first, into HOMES; returns how many. Self included. */
