/* The announcer. See announce.h for the contract.
 *
 * The dirty set is an open-addressing table of digests, each with the lowest and highest chunk
 * that changed since the last round (so a streaming reader's announce carries the digests of
 * the chunks it just fetched, not of the whole blob). A round swaps the table out under the
 * lock and does everything else — snapshots, hashing homes, JSON, HTTP — without it, so the
 * engine's hook never waits on the network.
 *
 * Grouping: each blob goes to its k homes; a round builds one announce per distinct home and
 * sends them one after another (a round's requests are few: the homes of a few dirty blobs,
 * or on a full refresh at most every member once).
 *
 * Sending: each announce is one POST on the node's HTTP client (net/http_client.h), waited for
 * by the announcer's thread, tagged with the announcer's group so announce_free() cancels one
 * in flight instead of waiting out its timeout.
 *
 * Hushing (issue 18): a home's "full" verdict goes into the hush table (announce_hush.h);
 * filing a blob skips the homes it is hushed for, and each round first takes the pairs whose
 * time has come and files each of those blobs under its one home (a full round files
 * everything anyway). The home decides again on that announce. */
#include "peer/announce.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net/http_client.h"
#include "peer/announce_hush.h"
#include "peer/httpd.h"
#include "peer/proto.h"
#include "util/log.h"

#define ANNOUNCE_BATCH_BLOBS 1024 /* blobs per announce request (the wire allows 4096) */
#define MIN_FULL_GAP_MS 1000      /* full rounds asked for by restarted homes: at most this often */

struct dirty {
        struct digest d;
        uint32_t lo, hi; /* changed chunks; lo > hi: none (the blob itself) */
        bool used;
        bool unhush; /* a chunk we had claimed landed: announce to every home (announce.h) */
};

/* A chunk this node claimed (announce_claimed), until it lands. */
struct claimed {
        struct digest d;
        uint32_t idx;
        bool used;
};

/* One home's announce under construction. */
struct outbox {
        char home[PEER_ID_MAX];
        struct wire_blob *blobs;
        uint32_t n, cap;
        struct wire_index *idx; /* at most ANNOUNCE_INDEX_MAX: one announce carries them all */
        uint32_t nidx, capidx;
};

/* A published layer index; DIRTY: not yet sent since it was published. */
struct ann_index {
        struct wire_index x;
        bool dirty;
};

struct announcer {
        struct announce_config cfg;
        pthread_t thread;
        bool thread_started;
        struct http_client *http; /* cfg.http, or our own (own_http) */
        bool own_http;
        struct http_group *group; /* our POSTs; closed by announce_free() */

        pthread_mutex_t lock; /* dirty, ndirty, overflow, want_full, soon, stopping, stats */
        pthread_cond_t cond;
        struct dirty *dirty;
        size_t ndirty;
        size_t dirty_max, cap; /* cap: a power of two >= 2 x dirty_max (load <= 1/2) */
        bool overflow;
        bool want_full; /* announce_refresh_soon(): a full round, once MIN_FULL_GAP_MS allows */
        bool soon;      /* a blob was registered: the next round runs without waiting */
        bool stopping;
        struct announce_stats stats;
        struct ann_index *indexes; /* ANNOUNCE_INDEX_MAX slots, nindexes used */
        size_t nindexes;
        struct announce_hush *hush; /* its own lock */
        /* Claimed chunks (a ring: the oldest overwritten), whether one landed since the last
         * round, and when the last round ended (under lock). */
        struct claimed claimed[ANNOUNCE_CLAIMED_MAX];
        unsigned claimed_next, nclaimed;
        bool early;
        uint64_t last_round_ms;

        /* thread only */
        struct dirty *taken;
        uint64_t members_version;
        uint64_t last_full_ms;
        const struct outboxes *sending; /* the round's boxes while send_boxes() runs */
};

static size_t slot_of(const struct announcer *a, const struct digest *d) {
        uint64_t h;
        memcpy(&h, d->bytes + 8, sizeof(h));
        return (size_t)h & (a->cap - 1);
}

/* Under a->lock: chunk IDX of D landed; if we had claimed it, wake the thread for an early
 * round and say so. A scan of at most ANNOUNCE_CLAIMED_MAX entries, only while claims are
 * pending. */
static bool landed_claim(struct announcer *a, const struct digest *d, uint32_t idx) {
        for (unsigned i = 0; a->nclaimed && i < ANNOUNCE_CLAIMED_MAX; i++) {
                struct claimed *c = &a->claimed[i];
                if (c->used && c->idx == idx && digest_equal(&c->d, d)) {
                        c->used = false;
                        a->nclaimed--;
                        a->early = true;
                        pthread_cond_signal(&a->cond);
                        return true;
                }
        }
        return false;
}

void announce_changed(struct announcer *a, const struct digest *d, uint32_t idx) {
        pthread_mutex_lock(&a->lock);
        size_t i = slot_of(a, d);
        while (a->dirty[i].used && !digest_equal(&a->dirty[i].d, d))
                i = (i + 1) & (a->cap - 1);
        struct dirty *e = &a->dirty[i];
        if (!e->used) {
                if (a->ndirty >= a->dirty_max) {
                        a->overflow = true; /* the next round sends everything */
                        pthread_mutex_unlock(&a->lock);
                        return;
                }
                e->used = true;
                e->d = *d;
                e->lo = UINT32_MAX;
                e->hi = 0;
                a->ndirty++;
                /* A blob just registered: announce it now, not at the next interval. Until a
                 * home has heard of a blob it grants no claims on it, so every node that starts
                 * reading it meanwhile fetches from the origin (bench/sim, issue 18: at 5000
                 * nodes ~40 nodes start a layer within one 250 ms interval of a wave). */
                if (idx == UINT32_MAX) {
                        a->soon = true;
                        pthread_cond_signal(&a->cond);
                }
        }
        if (idx != UINT32_MAX) {
                if (idx < e->lo)
                        e->lo = idx;
                if (idx > e->hi)
                        e->hi = idx;
                if (landed_claim(a, d, idx))
                        e->unhush = true;
        }
        pthread_mutex_unlock(&a->lock);
}

void announce_claimed(struct announcer *a, const struct digest *d, uint32_t idx) {
        pthread_mutex_lock(&a->lock);
        struct claimed *c = &a->claimed[a->claimed_next];
        a->claimed_next = (a->claimed_next + 1) % ANNOUNCE_CLAIMED_MAX;
        if (!c->used)
                a->nclaimed++;
        *c = (struct claimed){.d = *d, .idx = idx, .used = true};
        pthread_mutex_unlock(&a->lock);
}

static void blob_clear(struct wire_blob *b) {
        free(b->present);
        free(b->sha_idx);
        free(b->sha);
        free(b->chain_idx);
        free(b->chain);
}

/* A round's outboxes, one per distinct home, found by a hash of the home's id: a full round
 * files every blob under each of its k homes, and a node holding B blobs in a cluster of N
 * talks to up to min(N, kB) homes; a linear search (and a realloc per new home) made a full
 * round O(kB x min(N, kB)): 0.4 s of CPU for 2000 blobs at N = 5000. */
struct outboxes {
        struct outbox *v;
        size_t n, cap;
        size_t *slot; /* nslots (a power of two), index + 1; 0: empty */
        size_t nslots;
};

static size_t home_hash(const char *home) {
        uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
        for (const char *p = home; *p; p++)
                h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
        return (size_t)(h ^ (h >> 29));
}

static int outboxes_rehash(struct outboxes *bx, size_t nslots) {
        size_t *slot = calloc(nslots, sizeof(*slot));
        if (!slot)
                return -ENOMEM;
        for (size_t i = 0; i < bx->n; i++) {
                size_t j = home_hash(bx->v[i].home) & (nslots - 1);
                while (slot[j])
                        j = (j + 1) & (nslots - 1);
                slot[j] = i + 1;
        }
        free(bx->slot);
        bx->slot = slot;
        bx->nslots = nslots;
        return 0;
}

/* Whether HOME's box in BX holds blob D. */
static bool outbox_holds(const struct outboxes *bx, const char *home, const struct digest *d) {
        if (!bx->nslots)
                return false;
        for (size_t j = home_hash(home) & (bx->nslots - 1); bx->slot[j];
             j = (j + 1) & (bx->nslots - 1)) {
                const struct outbox *o = &bx->v[bx->slot[j] - 1];
                if (strcmp(o->home, home) != 0)
                        continue;
                for (uint32_t k = 0; k < o->n; k++)
                        if (digest_equal(&o->blobs[k].digest, d))
                                return true;
                return false;
        }
        return false;
}

static struct outbox *outbox_for(struct outboxes *bx, const char *home) {
        size_t len = strlen(home);
        if (len >= sizeof(bx->v->home))
                return NULL; /* members_homes() hands out ids that fit; anything else is a bug */
        if (2 * (bx->n + 1) > bx->nslots &&
            outboxes_rehash(bx, bx->nslots ? bx->nslots * 2 : 64) < 0)
                return NULL;
        size_t j = home_hash(home) & (bx->nslots - 1);
        for (; bx->slot[j]; j = (j + 1) & (bx->nslots - 1))
                if (strcmp(bx->v[bx->slot[j] - 1].home, home) == 0)
                        return &bx->v[bx->slot[j] - 1];
        if (bx->n == bx->cap) {
                size_t cap = bx->cap ? bx->cap * 2 : 16;
                struct outbox *v = realloc(bx->v, cap * sizeof(*v));
                if (!v)
                        return NULL;
                bx->v = v;
                bx->cap = cap;
        }
        struct outbox *o = &bx->v[bx->n];
        bx->slot[j] = ++bx->n;
        memset(o, 0, sizeof(*o));
        memcpy(o->home, home, len + 1);
        return o;
}

/* Adds a copy of B (the arrays are duplicated) to box O. */
static int outbox_add(struct outbox *o, const struct wire_blob *b) {
        if (o->n == o->cap) {
                uint32_t cap = o->cap ? o->cap * 2 : 8;
                struct wire_blob *v = realloc(o->blobs, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                o->blobs = v;
                o->cap = cap;
        }
        struct wire_blob c = *b;
        size_t map = ((size_t)b->nchunks + 7) / 8 + 1;
        c.present = malloc(map);
        c.sha_idx = malloc((b->ndigests ? b->ndigests : 1) * sizeof(*c.sha_idx));
        c.sha = malloc((b->ndigests ? b->ndigests : 1) * sizeof(*c.sha));
        c.chain_idx = malloc((b->nchain ? b->nchain : 1) * sizeof(*c.chain_idx));
        c.chain = malloc((b->nchain ? b->nchain : 1) * sizeof(*c.chain));
        if (!c.present || !c.sha_idx || !c.sha || !c.chain_idx || !c.chain) {
                blob_clear(&c);
                return -ENOMEM;
        }
        memcpy(c.present, b->present, map);
        memcpy(c.sha_idx, b->sha_idx, b->ndigests * sizeof(*c.sha_idx));
        memcpy(c.sha, b->sha, b->ndigests * sizeof(*c.sha));
        if (b->nchain) { /* NULL when the snapshot has none */
                memcpy(c.chain_idx, b->chain_idx, b->nchain * sizeof(*c.chain_idx));
                memcpy(c.chain, b->chain, b->nchain * sizeof(*c.chain));
        }
        o->blobs[o->n++] = c;
        return 0;
}

static int outbox_add_index(struct outbox *o, const struct wire_index *x) {
        if (o->nidx == o->capidx) {
                uint32_t cap = o->capidx ? o->capidx * 2 : 8;
                struct wire_index *v = realloc(o->idx, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                o->idx = v;
                o->capidx = cap;
        }
        o->idx[o->nidx++] = *x;
        return 0;
}

static void outboxes_free(struct outboxes *bx) {
        for (size_t i = 0; i < bx->n; i++) {
                for (uint32_t j = 0; j < bx->v[i].n; j++)
                        blob_clear(&bx->v[i].blobs[j]);
                free(bx->v[i].blobs);
                free(bx->v[i].idx);
        }
        free(bx->v);
        free(bx->slot);
}

/* Whether a chunk of LO..HI (the changed ones, and those between) is absent from MAP: some
 * changed chunk was evicted. (One that landed is present, unless evicted since; a chunk
 * between two that landed out of order counts too, which only means announcing as if.) */
static bool range_lost(const uint8_t *map, uint32_t nchunks, uint32_t lo, uint32_t hi) {
        for (uint32_t i = lo; i <= hi && i < nchunks; i++)
                if (!wire_bit(map, i))
                        return true;
        return false;
}

/* The round's changed chunks of D (the taken dirty set, thread only): false when none. */
static bool taken_range(const struct announcer *a, const struct digest *d, uint32_t *lo,
                        uint32_t *hi) {
        for (size_t i = slot_of(a, d); a->taken[i].used; i = (i + 1) & (a->cap - 1))
                if (digest_equal(&a->taken[i].d, d)) {
                        *lo = a->taken[i].lo;
                        *hi = a->taken[i].hi;
                        return *lo <= *hi;
                }
        return false;
}

/* Why a blob is filed: a full round's refresh, a hushed pair's retry, a chunk of it that
 * changed (landed or was evicted), or the blob itself (registered). */
enum filing { FILED_REFRESH, FILED_RETRY, FILED_CHANGE, FILED_REGISTERED };

/* The index in HOMES[0..N) of a blob's first home: the first that is SELF or usable, the one
 * readers ask for claims; N when none is. */
static size_t first_home(struct announcer *a, char (*homes)[PEER_ID_MAX], size_t n,
                         const char *self) {
        size_t i = 0;
        while (i < n && strcmp(homes[i], self) != 0 && !members_usable(a->cfg.members, homes[i]))
                i++;
        return i;
}

/* Files blob ID's snapshot (digests of chunks LO..HI) under each of its homes that has not
 * hushed it (or under ONLY, when not NULL: a hushed pair's retry, unless already filed).
 * SELF is our id. A verdict of the blob's first home hushes it at every home: the others keep
 * as many holders as it does, learn them from the same holders' announces, and never grant
 * claims while it can. Issue 18 (bench/sim, N = 5000): each reader of a wave that the first
 * home had told "covered" still sent its first delta to every other home, to be told the
 * same, and a home a membership change made a blob's home heard every holder of it in one
 * round (1642 of them in one second), though the first home had hushed them all.
 * WHY is FILED_REGISTERED when the blob itself changed (no chunk did): if we hold none of it,
 * it was just registered, and only the first usable home (and SELF, if a home) hears of it.
 * That is the home readers ask for claims, the one that must know the blob before anyone
 * holds a chunk of it; the others learn it from the first holder's announce, and until then
 * answer readers as they would knowing it (nobody holds it; ask the first home). Issue 18:
 * every reader of a wave registered every layer with all k homes, about half of the busiest
 * home's deltas at N = 5000 (bench/sim). Evictions report chunks (engine/residency.c), so an
 * empty set that follows one goes to every home. */
static void file_blob(struct announcer *a, uint32_t id, uint32_t lo, uint32_t hi, uint64_t now,
                      const char *only, const char *self, enum filing why, struct outboxes *bx) {
        struct wire_blob b;
        if (a->cfg.ops.snapshot(a->cfg.ops.ud, id, lo, hi, &b) < 0)
                return;
        if (b.nchunks > WIRE_MAX_CHUNKS) { /* the wire cannot carry it: it stays unshared */
                blob_clear(&b);
                return;
        }
        if (only) {
                struct outbox *o = outbox_holds(bx, only, &b.digest) ? NULL : outbox_for(bx, only);
                if (o)
                        outbox_add(o, &b);
                blob_clear(&b);
                return;
        }
        char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
        size_t n = members_homes(a->cfg.members, &b.digest, a->cfg.homes, homes, NULL);
        uint64_t hushed = 0;
        bool held = !wire_bits_none(b.present, b.nchunks);
        bool first_only = why == FILED_REGISTERED && !held, told_one = false;
        /* Not for a change that lost chunks (we evicted them): another home may have recorded
         * us before the first home's verdict, and must hear of it, or it names us for chunks
         * we no longer hold until its TTL. Only a home's own verdict hushes that. */
        uint32_t clo = lo, chi = hi; /* a full round carries the round's changes too */
        bool changed = why == FILED_CHANGE ||
                       (why == FILED_REFRESH && taken_range(a, &b.digest, &clo, &chi));
        bool evicted = changed && range_lost(b.present, b.nchunks, clo, chi);
        size_t first = first_home(a, homes, n, self);
        bool first_hushed = !evicted && first < n &&
                            hush_is(a->hush, &b.digest, homes[first], now, b.present, b.nchunks);
        for (size_t i = 0; i < n; i++) {
                if (first_only && strcmp(homes[i], self) != 0) {
                        if (told_one || !members_usable(a->cfg.members, homes[i]))
                                continue;
                        told_one = true;
                }
                if ((first_hushed && i > first) ||
                    (evicted ? hush_is_own(a->hush, &b.digest, homes[i], now, b.present, b.nchunks)
                             : hush_is(a->hush, &b.digest, homes[i], now, b.present, b.nchunks))) {
                        hushed++; /* that home has max_holders that hold all we do */
                        continue;
                }
                struct outbox *o = outbox_for(bx, homes[i]);
                if (o)
                        outbox_add(o, &b);
        }
        blob_clear(&b);
        if (hushed) {
                pthread_mutex_lock(&a->lock);
                a->stats.hushed_sends += hushed;
                pthread_mutex_unlock(&a->lock);
        }
}

/* A chunk of D that we had claimed landed: no home of D is hushed any more, so this round's
 * announce of D, which carries that chunk, reaches all of them (the home that granted the
 * claim records us whatever it holds; the others have no recorded holder of the chunk, and
 * readers holding our bytes ask them for its digest). They decide again on it. */
static void unhush_blob(struct announcer *a, const struct digest *d) {
        char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
        size_t n = members_homes(a->cfg.members, d, a->cfg.homes, homes, NULL);
        uint64_t forgot = 0;
        for (size_t i = 0; i < n; i++)
                forgot += hush_forget(a->hush, d, homes[i]);
        if (forgot) {
                pthread_mutex_lock(&a->lock);
                a->stats.unhushed += forgot;
                pthread_mutex_unlock(&a->lock);
        }
}

/* Files, under its one home each, the blobs of the hushed pairs whose time has come. On a
 * FULL round they are filed with everything else: their pairs are only forgotten. */
static void file_retries(struct announcer *a, uint64_t now, bool full, struct outboxes *bx) {
        struct hush_due *due;
        size_t n;
        if (hush_take_due(a->hush, now, &due, &n) < 0 || n == 0)
                return;
        for (size_t i = 0; i < n && !full; i++) {
                uint32_t id;
                if (a->cfg.ops.find(a->cfg.ops.ud, &due[i].d, &id) == 0)
                        file_blob(a, id, UINT32_MAX, 0, now, due[i].home, "" /* unused with ONLY */,
                                  FILED_RETRY, bx);
        }
        free(due);
        pthread_mutex_lock(&a->lock);
        a->stats.hush_retries += full ? 0 : n;
        pthread_mutex_unlock(&a->lock);
}

/* HOME's verdict F on our announce B, when HOME is B's first home, hushes B at its other
 * homes too, up to the same time (a pair already hushed there at least as long keeps its own).
 * file_blob() also treats a live pair at the first home as one at every home; this copy is
 * what keeps them quiet when the first home changes (a membership change, or it goes down)
 * before the retry time: bench/sim N = 5000, the busiest home's peak second 1200 -> 754
 * announces with it, and 20.3 -> 17.6 announces/s. */
/* D's homes into HOMES, returning how many; *RET_FROM: the index after D's first home when
 * that is HOME, else the count (HOME lends and recalls nothing). */
static size_t homes_after_first(struct announcer *a, const char *self, const char *home,
                                const struct digest *d, char (*homes)[PEER_ID_MAX],
                                size_t *ret_from) {
        size_t n = members_homes(a->cfg.members, d, a->cfg.homes, homes, NULL);
        size_t first = first_home(a, homes, n, self);
        *ret_from = first < n && strcmp(homes[first], home) == 0 ? first + 1 : n;
        return n;
}

static void hush_other_homes(struct announcer *a, const char *self, const char *home,
                             const struct wire_full *f, const struct wire_blob *b, uint64_t until,
                             bool until_whole) {
        char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
        size_t from, n = homes_after_first(a, self, home, &f->digest, homes, &from);
        for (size_t i = from; i < n; i++) {
                if (a->sending && outbox_holds(a->sending, homes[i], &f->digest))
                        continue; /* it heard this round's announce and answers for itself */
                if (!hush_is(a->hush, &f->digest, homes[i], until - 1, b->present, b->nchunks))
                        (void)hush_lend(a->hush, &f->digest, homes[i], until, f->covered,
                                        b->nchunks, until_whole); /* -ENOSPC: announced there */
        }
}

/* HOME recorded us for D: if it is D's first home, the verdict it lent D's other homes no
 * longer holds (it restarted, or its holders went), and they hear us again. */
static void recall_loans(struct announcer *a, const char *self, const char *home,
                         const struct digest *d) {
        char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
        size_t from, n = homes_after_first(a, self, home, d, homes, &from);
        for (size_t i = from; i < n; i++)
                hush_forget_lent(a->hush, d, homes[i]);
}

/* HOME's verdict on the announce of BLOBS[0..N): each blob it is full for (and that we did
 * announce to it) is hushed for that home until its retry time; each other one, recorded, is
 * no longer hushed there. (A pair hushed while we held chunks within a "covered" set would
 * otherwise outlive our record: once we evict the blob, an empty set is within any set, and
 * the home would keep naming us as a holder until its TTL.) */
static void take_verdict(struct announcer *a, const char *self, const char *home,
                         const struct wire_blob *blobs, uint32_t n, const struct wire_reply *rp,
                         uint64_t now) {
        uint64_t obeyed = 0;
        for (uint32_t j = 0; j < n; j++) {
                bool told = false;
                for (uint32_t i = 0; i < rp->nfull && !told; i++)
                        told = digest_equal(&blobs[j].digest, &rp->full[i].digest);
                if (told)
                        continue;
                hush_forget(a->hush, &blobs[j].digest, home);
                if (hush_count(a->hush))
                        recall_loans(a, self, home, &blobs[j].digest);
        }
        for (uint32_t i = 0; i < rp->nfull; i++) {
                const struct wire_full *f = &rp->full[i];
                const struct wire_blob *b = NULL;
                for (uint32_t j = 0; j < n && !b; j++)
                        if (digest_equal(&blobs[j].digest, &f->digest))
                                b = &blobs[j];
                if (!b || b->nchunks == 0)
                        continue; /* not ours to hush: the home answered about something else */
                if (f->covered && f->nchunks != b->nchunks)
                        continue; /* a set of another blob's size: not obeyed */
                uint64_t ms = f->retry_ms;
                if (ms > ANNOUNCE_HUSH_MAX_MS)
                        ms = ANNOUNCE_HUSH_MAX_MS;
                /* Told while we were still reading it: hushed until we hold it whole, then
                 * announced once. Meanwhile the home may have lost the holders that covered
                 * us (they evicted it), and the readers after us need a whole holder: before
                 * this, the readers still reading were heard, and recorded in their place.
                 * (Asking only a bounded number of them per blob per second, issue 18, left
                 * every recorded holder evicting at once with the home naming none: bench/sim
                 * at N = 5000 fetched 28-153 chunks from the origin that 1000+ peers held, in
                 * 5 of 6 seeds.) */
                bool partial = !wire_bits_all(b->present, b->nchunks);
                if (hush_add(a->hush, &f->digest, home, now + ms, f->covered, b->nchunks,
                             partial) != 0)
                        continue; /* not hushed here, so not lent to the others either */
                obeyed++;
                hush_other_homes(a, self, home, f, b, now + ms, partial);
        }
        if (obeyed) {
                pthread_mutex_lock(&a->lock);
                a->stats.told_full += obeyed;
                pthread_mutex_unlock(&a->lock);
        }
}

/* Files index record X under each home of its layer. */
static void file_index(struct announcer *a, const struct wire_index *x, struct outboxes *bx) {
        char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
        size_t n = members_homes(a->cfg.members, &x->layer, a->cfg.homes, homes, NULL);
        for (size_t i = 0; i < n; i++) {
                struct outbox *o = outbox_for(bx, homes[i]);
                if (o && o->nidx < ANNOUNCE_INDEX_MAX)
                        outbox_add_index(o, x);
        }
}

/* Whether this node still holds blob D whole (an index it announces). */
static bool holds_whole(struct announcer *a, const struct digest *d) {
        uint32_t id;
        struct wire_blob b;
        if (a->cfg.ops.find(a->cfg.ops.ud, d, &id) < 0)
                return false;
        if (a->cfg.ops.snapshot(a->cfg.ops.ud, id, UINT32_MAX, 0, &b) < 0) /* no digests */
                return false;
        bool whole = b.nchunks > 0;
        for (uint32_t i = 0; whole && i < b.nchunks; i++)
                whole = wire_bit(b.present, i);
        blob_clear(&b);
        return whole;
}

int announce_index(struct announcer *a, const struct digest *layer, const struct digest *index,
                   uint64_t size) {
        if (size == 0 || size > INT64_MAX)
                return -EINVAL;
        int r = 0;
        pthread_mutex_lock(&a->lock);
        size_t i = 0;
        while (i < a->nindexes && !digest_equal(&a->indexes[i].x.layer, layer))
                i++;
        if (i == a->nindexes) {
                if (a->nindexes >= ANNOUNCE_INDEX_MAX) {
                        r = -ENOSPC;
                        goto out_unlock;
                }
                a->nindexes++;
                a->stats.indexes++;
        }
        a->indexes[i] = (struct ann_index){.x = {.layer = *layer, .index = *index, .size = size},
                                           .dirty = true};
        a->soon = true; /* readers of the layer on other nodes would otherwise build it too */
        pthread_cond_signal(&a->cond);
out_unlock:
        pthread_mutex_unlock(&a->lock);
        return r;
}

/* The index records to send this round, copied (RET, *RET_N; NULL when none): all of them on
 * a FULL round, after dropping those whose blob this node no longer holds whole; else those
 * published since the last round. */
static struct wire_index *take_indexes(struct announcer *a, bool full, size_t *ret_n) {
        struct wire_index *v = NULL;
        size_t n = 0;
        pthread_mutex_lock(&a->lock);
        if (a->nindexes)
                v = malloc(a->nindexes * sizeof(*v));
        for (size_t i = 0; v && i < a->nindexes; i++)
                if (full || a->indexes[i].dirty) {
                        v[n++] = a->indexes[i].x;
                        a->indexes[i].dirty = false;
                }
        pthread_mutex_unlock(&a->lock);
        if (!full || !v) {
                *ret_n = n;
                return v;
        }
        /* Outside the lock: snapshots take the engine's. */
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) {
                if (holds_whole(a, &v[i].index)) {
                        v[kept++] = v[i];
                        continue;
                }
                pthread_mutex_lock(&a->lock);
                for (size_t j = 0; j < a->nindexes; j++)
                        if (wire_index_equal(&a->indexes[j].x, &v[i])) {
                                a->indexes[j] = a->indexes[--a->nindexes];
                                a->stats.indexes--;
                                a->stats.indexes_withdrawn++;
                                break;
                        }
                pthread_mutex_unlock(&a->lock);
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(&v[i].layer, hex);
                log_debug("layer index withdrawn layer=sha256:%s reason=\"index blob no longer "
                          "held whole\"",
                          hex);
        }
        *ret_n = kept;
        return v;
}

/* POSTs BODY to HOME, its verdict into *REPLY (zeroed). 0 or -errno; logs the reason of a
 * refusal (the chunk size, usually). */
static int post(struct announcer *a, const char *home, const char *body, size_t len,
                struct wire_reply *reply) {
        char url[256];
        snprintf(url, sizeof(url), "http://%s" PROTO_ANNOUNCE_PATH, home);
        char th[HTTPD_TOKEN_MAX + 32];
        struct http_request q = {
                .method = "POST",
                .url = url,
                .headers = {"Content-Type: application/json"},
                .post_body = body,
                .post_len = len,
                .protocols = "http",
                .no_proxy = true,
                /* A connection kept from before our address changed would carry the
                 * announce of the new address from the old one, into a timeout; and the
                 * home, marked down for it, would wait for the next full refresh
                 * (test_peers.py's renumbering). Announces are a few a second at most. */
                .fresh_connection = true,
                .connect_timeout_ms = a->cfg.timeout_ms,
                .deadline_ms = now_ms() + a->cfg.timeout_ms * 2,
                .group = a->group,
                /* The home's verdict (peer/wire_reply.h): about 100 bytes per blob it is full
                 * for, at most one entry per blob sent. */
                .body_max = WIRE_MAX_BODY,
        };
        if (a->cfg.token) {
                snprintf(th, sizeof(th), "%s: %s", PROTO_TOKEN_HEADER, a->cfg.token);
                q.headers[1] = th;
        }
        struct http_response resp;
        int r = http_client_run(a->http, &q, &resp);
        long status = resp.status;
        enum fetch_err cls = resp.fclass;
        char reason[HTTP_CLIENT_REASON_MAX];
        snprintf(reason, sizeof(reason), "%s", resp.reason);
        /* "ok\n" from an older home parses as no verdict; a malformed one is ignored (the
         * home is not obeyed, which costs announces, not correctness). */
        if (r == 0 && status == 200 &&
            wire_reply_parse((const char *)resp.body.data, resp.body.len, reply) < 0)
                log_debug("unreadable announce reply ignored home=%s", home);
        http_response_clear(&resp);
        if (r == -ECANCELED)
                return r; /* stopping: the home did nothing wrong */
        if (r < 0) {
                if (cls != FETCH_ERR_LOCAL) /* not queued here: not the home's doing */
                        members_report_failure(a->cfg.members, home, reason);
                return -EHOSTUNREACH;
        }
        if (status != 200 && status != 204) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(60000);
                uint64_t suppressed = 0;
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_warning("home refused our announce home=%s status=%ld "
                                    "hint=\"%s\" suppressed=%" PRIu64,
                                    home, status,
                                    status == 401 || status == 403
                                            ? "check that every node has the same "
                                              "--cluster-token-file"
                                            : "check that every node runs the same --chunk-size",
                                    suppressed);
                return -EPROTO;
        }
        return 0;
}

/* Sends BLOBS[0..N) to HOME in as few announces as the wire's bounds allow: a batch too
 * large to build (-EMSGSIZE: body size or chunk count) is split in two. */
static int send_batch(struct announcer *a, const char *self, const char *home,
                      struct wire_blob *blobs, uint32_t n, struct wire_index *idx, uint32_t nidx,
                      uint64_t now) {
        /* The index records (at most WIRE_MAX_INDEXES, a few hundred bytes each: they fit any
         * body) ride with the first part of a split. */
        if (n > ANNOUNCE_BATCH_BLOBS) {
                int r1 = send_batch(a, self, home, blobs, ANNOUNCE_BATCH_BLOBS, idx, nidx, now);
                int r2 = send_batch(a, self, home, blobs + ANNOUNCE_BATCH_BLOBS,
                                    n - ANNOUNCE_BATCH_BLOBS, NULL, 0, now);
                return r1 < 0 ? r1 : r2;
        }
        struct wire_announce w = {.chunk_size = a->cfg.chunk_size,
                                  .boot = a->cfg.boot,
                                  .nblobs = n,
                                  .blobs = blobs,
                                  .nindexes = nidx,
                                  .indexes = idx};
        snprintf(w.node, sizeof(w.node), "%s", self);
        struct wire_reply rp = {0};
        if (strcmp(home, self) == 0) {
                char reason[128];
                int r = dir_apply_full(a->cfg.dir, &w, now, &rp, reason, sizeof(reason));
                take_verdict(a, self, home, blobs, n, &rp, now);
                wire_reply_free(&rp);
                return r;
        }
        if (a->cfg.send) {
                int r = a->cfg.send(a->cfg.send_ud, home, &w, &rp);
                if (r == 0)
                        take_verdict(a, self, home, blobs, n, &rp, now);
                wire_reply_free(&rp);
                pthread_mutex_lock(&a->lock);
                a->stats.requests++;
                pthread_mutex_unlock(&a->lock);
                return r;
        }
        char *body = NULL;
        size_t len = 0;
        int r = wire_announce_build(&w, &body, &len);
        if (r == -EMSGSIZE && n > 1) {
                int r1 = send_batch(a, self, home, blobs, n / 2, idx, nidx, now);
                int r2 = send_batch(a, self, home, blobs + n / 2, n - n / 2, NULL, 0, now);
                return r1 < 0 ? r1 : r2;
        }
        if (r == -EMSGSIZE && n == 1 && (blobs[0].ndigests || blobs[0].nchain)) {
                /* One blob whose digests (and chain values) alone overflow a body: announce
                 * what it holds without them (readers then take those chunks from the
                 * origin). */
                blobs[0].ndigests = 0;
                blobs[0].nchain = 0;
                return send_batch(a, self, home, blobs, 1, idx, nidx, now);
        }
        if (r == 0)
                r = post(a, home, body, len, &rp);
        free(body);
        if (r == 0)
                take_verdict(a, self, home, blobs, n, &rp, now);
        wire_reply_free(&rp);
        pthread_mutex_lock(&a->lock);
        a->stats.requests++;
        pthread_mutex_unlock(&a->lock);
        return r;
}

static void send_boxes(struct announcer *a, const char *self, const struct outboxes *bx,
                       uint64_t now) {
        a->sending = bx; /* hush_other_homes() lends nothing to a home this round reaches */
        for (size_t i = 0; i < bx->n; i++) {
                struct outbox *o = &bx->v[i];
                int r;
                if (strcmp(o->home, self) != 0 && !members_usable(a->cfg.members, o->home))
                        r = -EHOSTDOWN; /* the next full refresh after it is back reaches it */
                else
                        r = send_batch(a, self, o->home, o->blobs, o->n, o->idx, o->nidx, now);
                pthread_mutex_lock(&a->lock);
                a->stats.blobs_sent += o->n;
                if (r < 0)
                        a->stats.failures++;
                pthread_mutex_unlock(&a->lock);
        }
        a->sending = NULL;
}

void announce_round(struct announcer *a, uint64_t now) {
        char self[PEER_ID_MAX];
        if (a->cfg.self)
                snprintf(self, sizeof(self), "%s", a->cfg.self);
        else if (members_self(a->cfg.members, self, sizeof(self)) < 0)
                return; /* no address to announce yet; dirty entries wait */
        uint64_t version = members_version(a->cfg.members);
        if (a->cfg.dir)
                dir_expire(a->cfg.dir, now); /* the home role's soft state ages here too */

        pthread_mutex_lock(&a->lock);
        bool full = a->overflow || version != a->members_version || a->last_full_ms == 0 ||
                    now - a->last_full_ms >= a->cfg.refresh_ms ||
                    (a->want_full && now - a->last_full_ms >= MIN_FULL_GAP_MS);
        if (full)
                a->want_full = false;
        struct dirty *t = a->dirty;
        a->dirty = a->taken;
        a->taken = t;
        a->ndirty = 0;
        a->overflow = false;
        pthread_mutex_unlock(&a->lock);

        struct outboxes bx = {0};
        size_t nblobs = 0;
        for (size_t i = 0; i < a->cap; i++)
                if (a->taken[i].used && a->taken[i].unhush)
                        unhush_blob(a, &a->taken[i].d);
        if (full) {
                uint32_t n = a->cfg.ops.count(a->cfg.ops.ud);
                file_retries(a, now, true, &bx);
                for (uint32_t id = 0; id < n; id++)
                        file_blob(a, id, 0, UINT32_MAX, now, NULL, self, FILED_REFRESH, &bx);
                nblobs = n;
                a->members_version = version;
                a->last_full_ms = now;
        } else {
                for (size_t i = 0; i < a->cap; i++) {
                        struct dirty *e = &a->taken[i];
                        if (!e->used)
                                continue;
                        uint32_t id;
                        if (a->cfg.ops.find(a->cfg.ops.ud, &e->d, &id) == 0) {
                                /* lo > hi: nothing but the blob changed: no digests */
                                file_blob(a, id, e->lo, e->lo <= e->hi ? e->hi : 0, now, NULL, self,
                                          e->lo > e->hi ? FILED_REGISTERED : FILED_CHANGE, &bx);
                                nblobs++;
                        }
                }
                file_retries(a, now, false, &bx);
        }
        memset(a->taken, 0, a->cap * sizeof(*a->taken));
        size_t nidx = 0;
        struct wire_index *idx = take_indexes(a, full, &nidx);
        for (size_t i = 0; i < nidx; i++)
                file_index(a, &idx[i], &bx);
        free(idx);
        if (bx.n)
                send_boxes(a, self, &bx, now);
        outboxes_free(&bx);
        pthread_mutex_lock(&a->lock);
        a->stats.rounds++;
        a->stats.full_rounds += full;
        pthread_mutex_unlock(&a->lock);
        if (full)
                log_debug("announced everything blobs=%zu homes=%zu", nblobs, bx.n);
}

static void *announce_main(void *arg) {
        struct announcer *a = arg;
        pthread_mutex_lock(&a->lock);
        while (!a->stopping) {
                struct timespec ts = deadline_after_ms(CLOCK_REALTIME, a->cfg.interval_ms);
                if (!a->soon && !a->early)
                        pthread_cond_timedwait(&a->cond, &a->lock, &ts);
                bool early = a->early && !a->soon;
                if (early) {
                        /* A claimed chunk landed: a round after the coalescing pause, and
                         * not before ANNOUNCE_EARLY_GAP_MS since the last one ended. */
                        uint64_t now = now_ms(), at = a->last_round_ms + ANNOUNCE_EARLY_GAP_MS;
                        if (at < now + ANNOUNCE_EARLY_COALESCE_MS)
                                at = now + ANNOUNCE_EARLY_COALESCE_MS;
                        struct timespec es = deadline_after_ms(CLOCK_REALTIME, at - now);
                        while (!a->stopping && !a->soon && now_ms() < at)
                                if (pthread_cond_timedwait(&a->cond, &a->lock, &es) == ETIMEDOUT)
                                        break;
                }
                a->soon = false;
                a->early = false;
                if (a->stopping)
                        break;
                a->stats.early_rounds += early;
                pthread_mutex_unlock(&a->lock);
                announce_round(a, now_ms());
                pthread_mutex_lock(&a->lock);
                a->last_round_ms = now_ms();
        }
        pthread_mutex_unlock(&a->lock);
        return NULL;
}

int announce_new(const struct announce_config *cfg, struct announcer **ret) {
        struct announcer *a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        a->cfg = *cfg;
        if (!a->cfg.interval_ms)
                a->cfg.interval_ms = 250;
        if (!a->cfg.refresh_ms)
                a->cfg.refresh_ms = 20000;
        if (!a->cfg.timeout_ms)
                a->cfg.timeout_ms = 1000;
        pthread_mutex_init(&a->lock, NULL);
        pthread_cond_init(&a->cond, NULL);
        int r = 0;
        a->http = a->cfg.http;
        if (!a->http && !a->cfg.send) { /* announces go over HTTP: a client of our own */
                r = http_client_new(&(struct http_client_config){.max_inflight = 4}, &a->http);
                if (r < 0)
                        goto out_free;
                a->own_http = true;
        }
        if (a->http && (r = http_group_new(a->http, 0, &a->group)) < 0)
                goto out_free;
        a->dirty_max = a->cfg.dirty_max ? a->cfg.dirty_max : ANNOUNCE_DIRTY_MAX;
        for (a->cap = 2; a->cap < 2 * a->dirty_max; a->cap *= 2)
                ;
        a->dirty = calloc(a->cap, sizeof(*a->dirty));
        a->taken = calloc(a->cap, sizeof(*a->taken));
        a->indexes = calloc(ANNOUNCE_INDEX_MAX, sizeof(*a->indexes));
        r = -ENOMEM;
        if (!a->dirty || !a->taken || !a->indexes || hush_new(ANNOUNCE_HUSH_MAX, &a->hush) < 0)
                goto out_free;
        if (a->cfg.manual) {
                *ret = a;
                return 0;
        }
        r = -pthread_create(&a->thread, NULL, announce_main, a);
        if (r < 0)
                goto out_free;
        a->thread_started = true;
        *ret = a;
        return 0;
out_free:
        announce_free(a);
        return r;
}

void announce_free(struct announcer *a) {
        if (!a)
                return;
        if (a->thread_started) {
                pthread_mutex_lock(&a->lock);
                a->stopping = true;
                pthread_cond_broadcast(&a->cond);
                pthread_mutex_unlock(&a->lock);
                http_group_close(a->group); /* a POST in flight ends now; later ones are refused */
                pthread_join(a->thread, NULL);
        }
        http_group_free(a->group);
        if (a->own_http)
                http_client_free(a->http);
        pthread_mutex_destroy(&a->lock);
        pthread_cond_destroy(&a->cond);
        free(a->dirty);
        free(a->taken);
        free(a->indexes);
        hush_free(a->hush);
        free(a);
}

void announce_refresh_soon(struct announcer *a) {
        pthread_mutex_lock(&a->lock);
        a->want_full = true;
        pthread_mutex_unlock(&a->lock);
}

uint64_t announce_next_retry(struct announcer *a) {
        return hush_next_due(a->hush);
}

void announce_home_restarted(struct announcer *a, const char *node) {
        hush_forget_home(a->hush, node);
        announce_refresh_soon(a);
}

void announce_get_stats(struct announcer *a, struct announce_stats *ret) {
        pthread_mutex_lock(&a->lock);
        *ret = a->stats;
        pthread_mutex_unlock(&a->lock);
        ret->hushed = a->hush ? hush_count(a->hush) : 0;
}
