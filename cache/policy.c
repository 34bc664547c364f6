/* The eviction policy: which resident chunk to punch out next. S3-FIFO (Yang et al., SOSP'23)
 * at chunk granularity, with pinning.
 *
 * Why S3-FIFO: the workload is "many containers start from the same few layers" interleaved
 * with one-off full reads (a new image pulled once, `blobctl prefetch`). LRU lets one such scan
 * flush the hot set; S3-FIFO sends new chunks through a small FIFO (10% of the budget) first,
 * so a chunk must be hit again before it earns a place in the main FIFO, and a scan flows
 * through the small queue only. A ghost FIFO remembers keys recently evicted from the small
 * queue, so a chunk that comes back soon goes straight to main. Main is a CLOCK: a 2-bit
 * frequency, decremented once per pass, buys an entry further passes.
 *
 * Structures (all preallocated by policy_new(), nothing allocates afterwards):
 *   - one slot array of 2 * MAX_ENTRIES slots: MAX_ENTRIES resident and as many ghosts; a
 *     chunk evicted from small keeps its slot and becomes a ghost in place;
 *   - a chained hash table on (blob, idx), indices instead of pointers, buckets >= slots, so
 *     chains average under one entry;
 *   - three intrusive doubly-linked FIFOs (small, main, ghost) threaded through the slots;
 *     unused slots sit on a free list.
 *
 * Invariants (checked by the unit test after every operation of a random stress run):
 *   - every slot is on exactly one list (small, main, ghost or free); small and main hold
 *     exactly the resident chunks, and each list's count and byte sum match its members;
 *   - every key on small, main or ghost is in the hash table exactly once;
 *   - resident <= MAX_ENTRIES and ghosts <= MAX_ENTRIES;
 *   - pinned_count/pinned_bytes are the count/bytes of resident slots with pins > 0.
 *
 * Costs: insert, touch, remove, contains, pin and unpin are O(1) expected. A victim costs
 * O(1) amortised: every step of the scan either evicts, promotes an entry from small to main
 * (once per insertion), spends a frequency point (bought by a touch), or rotates a pinned
 * entry; only the last is not paid for in advance, and the caller keeps pins few (chunks
 * being read or served). A scan is bounded, so when every resident chunk is pinned the call
 * returns false in O(n) (O(1) when the pinned count says so up front). Memory is about
 * 2 * 32 bytes per MAX_ENTRIES plus 4 bytes per bucket.
 *
 * Not thread-safe: the cache's lock protects it.
 */
#include "cache/policy.h"

#include <errno.h>
#include <stdlib.h>

#define NIL UINT32_MAX
#define FREQ_MAX 3

enum queue_id { Q_FREE = 0, Q_SMALL, Q_MAIN, Q_GHOST, Q_COUNT };

struct slot {
        struct chunk_key key;
        uint32_t bytes;
        uint32_t pins;
        uint32_t prev, next; /* FIFO links, head = oldest; the free list uses next only */
        uint32_t hnext;      /* hash chain */
        uint8_t queue;       /* enum queue_id */
        uint8_t freq;        /* 0..FREQ_MAX */
};

struct fifo {
        uint32_t head, tail;
        size_t count;
        uint64_t bytes;
};

struct policy {
        uint64_t budget;
        uint64_t small_target; /* budget / 10: the small FIFO's share */
        size_t max_entries;    /* resident bound, and ghost bound */

        struct slot *slots;
        uint32_t nslots;
        uint32_t *buckets;
        uint32_t bucket_mask;

        struct fifo q[Q_COUNT]; /* q[Q_FREE] is the free list (head only) */

        size_t pinned_count;
        uint64_t pinned_bytes;
};

static uint32_t key_hash(struct chunk_key k) {
        /* splitmix64's finaliser: chunk indexes of one blob are consecutive integers and
         * must still spread over every bucket. */
        uint64_t x = (uint64_t)k.blob << 32 | k.idx;
        x ^= x >> 30;
        x *= UINT64_C(0xbf58476d1ce4e5b9);
        x ^= x >> 27;
        x *= UINT64_C(0x94d049bb133111eb);
        x ^= x >> 31;
        return (uint32_t)x;
}

static bool key_eq(struct chunk_key a, struct chunk_key b) {
        return a.blob == b.blob && a.idx == b.idx;
}

static uint32_t hash_find(const struct policy *p, struct chunk_key key) {
        uint32_t i = p->buckets[key_hash(key) & p->bucket_mask];

        while (i != NIL && !key_eq(p->slots[i].key, key))
                i = p->slots[i].hnext;
        return i;
}

static void hash_add(struct policy *p, uint32_t i) {
        uint32_t *b = &p->buckets[key_hash(p->slots[i].key) & p->bucket_mask];

        p->slots[i].hnext = *b;
        *b = i;
}

static void hash_del(struct policy *p, uint32_t i) {
        uint32_t *link = &p->buckets[key_hash(p->slots[i].key) & p->bucket_mask];

        while (*link != i)
                link = &p->slots[*link].hnext;
        *link = p->slots[i].hnext;
        p->slots[i].hnext = NIL;
}

static void fifo_push(struct policy *p, enum queue_id qid, uint32_t i) {
        struct fifo *q = &p->q[qid];
        struct slot *s = &p->slots[i];

        s->queue = (uint8_t)qid;
        s->next = NIL;
        s->prev = q->tail;
        if (q->tail != NIL)
                p->slots[q->tail].next = i;
        else
                q->head = i;
        q->tail = i;
        q->count++;
        q->bytes += s->bytes;
}

static void fifo_unlink(struct policy *p, uint32_t i) {
        struct slot *s = &p->slots[i];
        struct fifo *q = &p->q[s->queue];

        if (s->prev != NIL)
                p->slots[s->prev].next = s->next;
        else
                q->head = s->next;
        if (s->next != NIL)
                p->slots[s->next].prev = s->prev;
        else
                q->tail = s->prev;
        s->prev = s->next = NIL;
        q->count--;
        q->bytes -= s->bytes;
}

static uint32_t slot_alloc(struct policy *p) {
        uint32_t i = p->q[Q_FREE].head;

        /* Cannot run dry: resident <= max_entries and ghosts <= max_entries is checked by
         * the callers, and there are 2 * max_entries slots. */
        p->q[Q_FREE].head = p->slots[i].next;
        p->q[Q_FREE].count--;
        return i;
}

static void slot_release(struct policy *p, uint32_t i) {
        struct slot *s = &p->slots[i];

        s->queue = Q_FREE;
        s->bytes = 0;
        s->pins = 0;
        s->freq = 0;
        s->prev = NIL;
        s->next = p->q[Q_FREE].head;
        p->q[Q_FREE].head = i;
        p->q[Q_FREE].count++;
}

static bool slot_resident(const struct slot *s) {
        return s->queue == Q_SMALL || s->queue == Q_MAIN;
}

static size_t resident_count(const struct policy *p) {
        return p->q[Q_SMALL].count + p->q[Q_MAIN].count;
}

static uint64_t resident_bytes(const struct policy *p) {
        return p->q[Q_SMALL].bytes + p->q[Q_MAIN].bytes;
}

struct policy *policy_new(uint64_t budget_bytes, size_t max_entries) {
        struct policy *p;
        uint64_t nslots, nbuckets = 1;

        /* Slot indexes are 32-bit with NIL reserved; a bound this large is a bug upstream. */
        if (max_entries > (UINT32_MAX - 1) / 2)
                return NULL;
        nslots = max_entries > 0 ? 2 * (uint64_t)max_entries : 1;
        while (nbuckets < nslots)
                nbuckets <<= 1;

        p = calloc(1, sizeof(*p));
        if (!p)
                return NULL;
        p->slots = calloc(nslots, sizeof(*p->slots));
        p->buckets = malloc(nbuckets * sizeof(*p->buckets));
        if (!p->slots || !p->buckets) {
                policy_free(p);
                return NULL;
        }
        p->nslots = (uint32_t)nslots;
        p->bucket_mask = (uint32_t)(nbuckets - 1);
        p->max_entries = max_entries;
        for (uint64_t b = 0; b < nbuckets; b++)
                p->buckets[b] = NIL;
        for (int q = 0; q < Q_COUNT; q++)
                p->q[q].head = p->q[q].tail = NIL;
        for (uint32_t i = p->nslots; i-- > 0;) {
                p->slots[i].hnext = NIL;
                slot_release(p, i);
        }
        policy_set_budget(p, budget_bytes);
        return p;
}

void policy_free(struct policy *p) {
        if (!p)
                return;
        free(p->buckets);
        free(p->slots);
        free(p);
}

int policy_insert(struct policy *p, struct chunk_key key, uint32_t bytes) {
        uint32_t i = hash_find(p, key);
        enum queue_id dest = Q_SMALL;

        if (i != NIL && slot_resident(&p->slots[i]))
                return -EEXIST;
        if (resident_count(p) >= p->max_entries)
                return -ENOSPC;
        if (i != NIL) {
                /* A ghost: evicted from small recently and wanted again, so it was not a
                 * one-off; skip the probation. The slot and its hash entry are reused. */
                fifo_unlink(p, i);
                dest = Q_MAIN;
        } else {
                i = slot_alloc(p);
                p->slots[i].key = key;
                hash_add(p, i);
        }
        p->slots[i].bytes = bytes;
        p->slots[i].pins = 0;
        p->slots[i].freq = 0;
        fifo_push(p, dest, i);
        return 0;
}

void policy_touch(struct policy *p, struct chunk_key key) {
        uint32_t i = hash_find(p, key);

        if (i != NIL && slot_resident(&p->slots[i]) && p->slots[i].freq < FREQ_MAX)
                p->slots[i].freq++;
}

bool policy_remove(struct policy *p, struct chunk_key key) {
        uint32_t i = hash_find(p, key);
        struct slot *s;

        if (i == NIL || !slot_resident(&p->slots[i]))
                return false;
        s = &p->slots[i];
        if (s->pins > 0) {
                p->pinned_count--;
                p->pinned_bytes -= s->bytes;
        }
        fifo_unlink(p, i);
        hash_del(p, i);
        slot_release(p, i);
        return true;
}

bool policy_contains(const struct policy *p, struct chunk_key key) {
        uint32_t i = hash_find(p, key);

        return i != NIL && slot_resident(&p->slots[i]);
}

bool policy_pinned(const struct policy *p, struct chunk_key key) {
        uint32_t i = hash_find(p, key);

        return i != NIL && slot_resident(&p->slots[i]) && p->slots[i].pins > 0;
}

int policy_pin(struct policy *p, struct chunk_key key) {
        uint32_t i = hash_find(p, key);
        struct slot *s;

        if (i == NIL || !slot_resident(&p->slots[i]))
                return -ENOENT;
        s = &p->slots[i];
        if (s->pins == UINT32_MAX)
                return -EOVERFLOW; /* a leak of pins upstream; refuse rather than wrap */
        if (s->pins++ == 0) {
                p->pinned_count++;
                p->pinned_bytes += s->bytes;
        }
        return 0;
}

void policy_unpin(struct policy *p, struct chunk_key key) {
        uint32_t i = hash_find(p, key);
        struct slot *s;

        if (i == NIL || !slot_resident(&p->slots[i]) || p->slots[i].pins == 0)
                return;
        s = &p->slots[i];
        if (--s->pins == 0) {
                p->pinned_count--;
                p->pinned_bytes -= s->bytes;
        }
}

/* Turns slot I, just unlinked from small, into a ghost; drops the oldest ghost when the
 * ghost FIFO is over its bound. */
static void make_ghost(struct policy *p, uint32_t i) {
        p->slots[i].bytes = 0; /* ghosts weigh nothing: q[Q_GHOST].bytes stays 0 */
        p->slots[i].freq = 0;
        fifo_push(p, Q_GHOST, i);
        while (p->q[Q_GHOST].count > p->max_entries) {
                uint32_t g = p->q[Q_GHOST].head;
                fifo_unlink(p, g);
                hash_del(p, g);
                slot_release(p, g);
        }
}

/* One pass over the small FIFO at most: the oldest unpinned entry that was never hit is the
 * victim (and becomes a ghost); entries hit while on probation move to main on the way. */
static bool evict_small(struct policy *p, struct chunk_key *ret) {
        for (size_t n = p->q[Q_SMALL].count; n > 0; n--) {
                uint32_t i = p->q[Q_SMALL].head;
                struct slot *s = &p->slots[i];

                fifo_unlink(p, i);
                if (s->pins > 0) {
                        fifo_push(p, Q_SMALL, i);
                } else if (s->freq > 0) {
                        /* Frequency kept: a chunk hit often on probation earns more passes. */
                        fifo_push(p, Q_MAIN, i);
                } else {
                        *ret = s->key;
                        make_ghost(p, i);
                        return true;
                }
        }
        return false;
}

/* CLOCK over main: an entry with frequency left spends one point and goes round again. After
 * FREQ_MAX full rotations every unpinned entry is at 0, so FREQ_MAX + 1 rotations find a
 * victim if there is one. */
static bool evict_main(struct policy *p, struct chunk_key *ret) {
        for (size_t n = (FREQ_MAX + 1) * p->q[Q_MAIN].count; n > 0; n--) {
                uint32_t i = p->q[Q_MAIN].head;
                struct slot *s = &p->slots[i];

                fifo_unlink(p, i);
                if (s->pins > 0) {
                        fifo_push(p, Q_MAIN, i);
                } else if (s->freq > 0) {
                        s->freq--;
                        fifo_push(p, Q_MAIN, i);
                } else {
                        *ret = s->key;
                        hash_del(p, i);
                        slot_release(p, i);
                        return true;
                }
        }
        return false;
}

bool policy_next_victim(struct policy *p, struct chunk_key *ret) {
        if (resident_bytes(p) <= p->budget)
                return false;
        if (p->pinned_count == resident_count(p))
                return false;
        /* Small over its share (or main empty): evict from small; if small holds nothing
         * evictable, main. Otherwise main first; if main is all pinned, small, which may
         * promote entries into main, so main once more. Each fallback only runs when the
         * previous scan found nothing, so the whole call stays bounded. */
        if (p->q[Q_SMALL].bytes > p->small_target || p->q[Q_MAIN].count == 0)
                return evict_small(p, ret) || evict_main(p, ret);
        return evict_main(p, ret) || evict_small(p, ret) || evict_main(p, ret);
}

void policy_set_budget(struct policy *p, uint64_t budget_bytes) {
        p->budget = budget_bytes;
        p->small_target = budget_bytes / 10;
}

uint64_t policy_budget(const struct policy *p) {
        return p->budget;
}

uint64_t policy_used_bytes(const struct policy *p) {
        return resident_bytes(p);
}

size_t policy_count(const struct policy *p) {
        return resident_count(p);
}

uint64_t policy_pinned_bytes(const struct policy *p) {
        return p->pinned_bytes;
}
