/* The announcer's hushed (blob, home) pairs (announce_hush.h).
 *
 * An open-addressing table keyed by (digest, home), linear probing, load at most 1/2. A pair
 * that is done (retried, or its home restarted) stays as a dead slot, so that probing needs
 * no tombstone logic; dead slots are dropped whenever the table is rebuilt (when it would
 * pass half full: growing while below 2 x MAX slots, else in place). NEXT_DUE, the earliest
 * time among live pairs, makes hush_take_due() a comparison in the rounds where nothing is
 * due (four rounds a second). */
#include "peer/announce_hush.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { EMPTY, LIVE, DEAD };

struct hush_ent {
        struct digest d;
        char home[PEER_ID_MAX];
        uint64_t until;
        uint8_t *map; /* LIVE only: the home's "covered" set, nchunks bits; NULL: none */
        uint32_t nchunks;
        bool until_whole;
        bool lent; /* hush_lend(): another home's verdict */
        uint8_t state;
};

struct announce_hush {
        pthread_mutex_t lock;
        struct hush_ent *v;
        size_t cap;  /* slots: 0 or a power of two */
        size_t used; /* slots not EMPTY */
        size_t live;
        size_t max;
        size_t map_bytes;  /* of the LIVE pairs' sets, at most HUSH_MAX_MAP_BYTES */
        uint64_t next_due; /* min until over LIVE; UINT64_MAX: none */
};

static size_t map_size(uint32_t nchunks) {
        return ((size_t)nchunks + 7) / 8;
}

/* E stops being LIVE (its set freed). */
static void retire(struct announce_hush *h, struct hush_ent *e) {
        if (e->map)
                h->map_bytes -= map_size(e->nchunks);
        free(e->map);
        e->map = NULL;
        e->state = DEAD;
        h->live--;
}

static size_t hash_of(const struct digest *d, const char *home) {
        uint64_t h;
        memcpy(&h, d->bytes + 16, sizeof(h));
        for (const char *p = home; *p; p++) /* FNV-1a over the home, on the digest's bits */
                h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
        return (size_t)(h ^ (h >> 31));
}

/* The slot of (D, HOME), or the empty slot where it would go. CAP > 0. */
static struct hush_ent *slot_for(struct announce_hush *h, const struct digest *d,
                                 const char *home) {
        size_t i = hash_of(d, home) & (h->cap - 1);
        while (h->v[i].state != EMPTY &&
               !(digest_equal(&h->v[i].d, d) && strcmp(h->v[i].home, home) == 0))
                i = (i + 1) & (h->cap - 1);
        return &h->v[i];
}

/* Rebuilds the table with CAP slots, dropping dead pairs. */
static int rebuild(struct announce_hush *h, size_t cap) {
        struct hush_ent *old = h->v;
        size_t ocap = h->cap;
        h->v = calloc(cap, sizeof(*h->v));
        if (!h->v) {
                h->v = old;
                return -ENOMEM;
        }
        h->cap = cap;
        h->used = 0;
        for (size_t i = 0; i < ocap; i++)
                if (old[i].state == LIVE) {
                        *slot_for(h, &old[i].d, old[i].home) = old[i];
                        h->used++;
                }
        free(old);
        return 0;
}

int hush_new(size_t max, struct announce_hush **ret) {
        struct announce_hush *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        pthread_mutex_init(&h->lock, NULL);
        h->max = max ? max : 1;
        h->next_due = UINT64_MAX;
        *ret = h;
        return 0;
}

void hush_free(struct announce_hush *h) {
        if (!h)
                return;
        pthread_mutex_destroy(&h->lock);
        for (size_t i = 0; i < h->cap; i++)
                if (h->v[i].state == LIVE)
                        free(h->v[i].map);
        free(h->v);
        free(h);
}

static int add(struct announce_hush *h, const struct digest *d, const char *home, uint64_t until,
               const uint8_t *covered, uint32_t nchunks, bool until_whole, bool lent) {
        if (strlen(home) >= PEER_ID_MAX || ((covered || until_whole) && nchunks == 0))
                return -EINVAL;
        uint8_t *map = NULL;
        if (covered) {
                if (!(map = malloc(map_size(nchunks))))
                        return -ENOMEM;
                memcpy(map, covered, map_size(nchunks));
        }
        int r = 0;
        pthread_mutex_lock(&h->lock);
        struct hush_ent *e = h->cap ? slot_for(h, d, home) : NULL;
        size_t old = e && e->state == LIVE && e->map ? map_size(e->nchunks) : 0;
        if (map && h->map_bytes - old + map_size(nchunks) > HUSH_MAX_MAP_BYTES) {
                r = -ENOSPC; /* the pair, if any, keeps what it had */
                goto out;
        }
        if (lent && (!e || e->state != LIVE) && 2 * h->live >= h->max) {
                r = -ENOSPC; /* past half the table, loans yield to homes' own verdicts */
                goto out;
        }
        if (!e || e->state == EMPTY) {
                if (2 * (h->used + 1) > h->cap) {
                        size_t cap = h->cap ? h->cap : 64;
                        if (2 * (h->live + 1) > cap / 2 && cap < 2 * h->max)
                                cap *= 2; /* more than a quarter live: grow */
                        if (h->live >= h->max) {
                                r = -ENOSPC;
                                goto out;
                        }
                        if ((r = rebuild(h, cap)) < 0)
                                goto out;
                }
                e = slot_for(h, d, home);
                if (e->state == EMPTY) {
                        h->used++;
                        e->d = *d;
                        memcpy(e->home, home, strlen(home) + 1);
                }
        }
        if (e->state != LIVE)
                h->live++;
        else
                free(e->map);
        h->map_bytes = h->map_bytes - old + (map ? map_size(nchunks) : 0);
        e->state = LIVE;
        e->until = until;
        e->map = map;
        e->nchunks = nchunks;
        e->until_whole = until_whole;
        e->lent = lent;
        map = NULL;
        if (until < h->next_due)
                h->next_due = until;
out:
        pthread_mutex_unlock(&h->lock);
        free(map);
        return r;
}

int hush_add(struct announce_hush *h, const struct digest *d, const char *home, uint64_t until,
             const uint8_t *covered, uint32_t nchunks, bool until_whole) {
        return add(h, d, home, until, covered, nchunks, until_whole, false);
}

int hush_lend(struct announce_hush *h, const struct digest *d, const char *home, uint64_t until,
              const uint8_t *covered, uint32_t nchunks, bool until_whole) {
        return add(h, d, home, until, covered, nchunks, until_whole, true);
}

/* Whether the first NCHUNKS bits of A are all set in B. */
static bool within(const uint8_t *a, const uint8_t *b, uint32_t nchunks) {
        for (uint32_t k = 0; k < nchunks / 8; k++)
                if (a[k] & ~b[k])
                        return false;
        uint8_t tail = (uint8_t)((1u << (nchunks % 8)) - 1);
        return nchunks % 8 == 0 || (a[nchunks / 8] & ~b[nchunks / 8] & tail) == 0;
}

static bool is_hushed(struct announce_hush *h, const struct digest *d, const char *home,
                      uint64_t now, const uint8_t *present, uint32_t nchunks, bool own_only) {
        bool is = false;
        pthread_mutex_lock(&h->lock);
        if (h->live) {
                struct hush_ent *e = slot_for(h, d, home);
                is = e->state == LIVE && e->until > now && (!own_only || !e->lent) &&
                     (!e->map ||
                      (e->nchunks == nchunks && present && within(present, e->map, nchunks))) &&
                     (!e->until_whole ||
                      (e->nchunks == nchunks && present && !wire_bits_all(present, nchunks))) &&
                     (!e->lent || (present && !wire_bits_none(present, nchunks)));
        }
        pthread_mutex_unlock(&h->lock);
        return is;
}

bool hush_is(struct announce_hush *h, const struct digest *d, const char *home, uint64_t now,
             const uint8_t *present, uint32_t nchunks) {
        return is_hushed(h, d, home, now, present, nchunks, false);
}

bool hush_is_own(struct announce_hush *h, const struct digest *d, const char *home, uint64_t now,
                 const uint8_t *present, uint32_t nchunks) {
        return is_hushed(h, d, home, now, present, nchunks, true);
}

int hush_take_due(struct announce_hush *h, uint64_t now, struct hush_due **ret, size_t *ret_n) {
        struct hush_due *v = NULL;
        size_t n = 0, cap = 0;
        int r = 0;
        *ret = NULL;
        *ret_n = 0;
        pthread_mutex_lock(&h->lock);
        if (now < h->next_due)
                goto out;
        uint64_t next = UINT64_MAX;
        for (size_t i = 0; i < h->cap; i++) {
                struct hush_ent *e = &h->v[i];
                if (e->state != LIVE)
                        continue;
                if (e->until > now) {
                        next = e->until < next ? e->until : next;
                        continue;
                }
                if (n == cap) {
                        size_t ncap = cap ? cap * 2 : 16;
                        struct hush_due *nv = realloc(v, ncap * sizeof(*nv));
                        if (!nv) { /* nothing taken: the pairs stay due for the next round */
                                free(v);
                                r = -ENOMEM;
                                goto out;
                        }
                        v = nv;
                        cap = ncap;
                }
                v[n].d = e->d;
                memcpy(v[n].home, e->home, sizeof(v[n].home));
                n++;
        }
        /* Only now, with the list complete, are the due pairs forgotten. */
        for (size_t i = 0; i < h->cap; i++)
                if (h->v[i].state == LIVE && h->v[i].until <= now)
                        retire(h, &h->v[i]);
        h->next_due = next;
        *ret = v;
        *ret_n = n;
out:
        pthread_mutex_unlock(&h->lock);
        return r;
}

static bool forget(struct announce_hush *h, const struct digest *d, const char *home,
                   bool lent_only) {
        bool was = false;
        pthread_mutex_lock(&h->lock);
        if (h->live && strlen(home) < PEER_ID_MAX) {
                struct hush_ent *e = slot_for(h, d, home);
                if (e->state == LIVE && (!lent_only || e->lent)) {
                        retire(h, e); /* next_due may now be early: a no-op take then */
                        was = true;
                }
        }
        pthread_mutex_unlock(&h->lock);
        return was;
}

bool hush_forget(struct announce_hush *h, const struct digest *d, const char *home) {
        return forget(h, d, home, false);
}

bool hush_forget_lent(struct announce_hush *h, const struct digest *d, const char *home) {
        return forget(h, d, home, true);
}

void hush_forget_home(struct announce_hush *h, const char *home) {
        pthread_mutex_lock(&h->lock);
        for (size_t i = 0; i < h->cap; i++)
                if (h->v[i].state == LIVE && strcmp(h->v[i].home, home) == 0)
                        retire(h, &h->v[i]);
        pthread_mutex_unlock(&h->lock);
}

uint64_t hush_next_due(struct announce_hush *h) {
        pthread_mutex_lock(&h->lock);
        uint64_t t = h->next_due;
        pthread_mutex_unlock(&h->lock);
        return t;
}

size_t hush_count(struct announce_hush *h) {
        pthread_mutex_lock(&h->lock);
        size_t n = h->live;
        pthread_mutex_unlock(&h->lock);
        return n;
}
