/* evict_sim: replays a bench/evict_trace trace against the daemon's eviction policy
 * (cache/policy.h, S3-FIFO, linked from libp2pblobs-core.a) and against plain LRU implemented
 * here, at each budget given.
 *
 *   evict_sim TRACE BUDGET_MIB...
 *
 * Both are driven the way engine/residency.c drives the policy: a reference to a resident chunk is a
 * hit (policy_touch); a miss inserts the chunk once it "lands" and then evicts while resident
 * bytes exceed the budget (policy_next_victim). No pins: the simulation has no chunks in flight.
 * LRU: a hit moves the chunk to the front; eviction takes the back until within budget.
 *
 * One line per budget and policy: hits, refs, hit ratio over all references and over hot-set
 * references only, and ns per reference. Also the hit ratio of an infinite cache (every
 * reference but the first to each chunk hits), the ceiling for both. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/policy.h"

#define MiB (1024u * 1024u)
#define NIL UINT32_MAX

struct rec {
        uint32_t blob, idx, bytes;
};

/* ---- plain LRU: chained hash + doubly linked list over a node pool */
struct lnode {
        struct chunk_key key;
        uint32_t bytes;
        uint32_t prev, next, hnext;
};

struct lru {
        struct lnode *n;
        uint32_t *buckets, mask, free_head, head, tail; /* head = most recent */
        uint64_t used, budget;
};

static uint32_t khash(struct chunk_key k) {
        uint64_t x = (uint64_t)k.blob << 32 | k.idx;
        x ^= x >> 30;
        x *= UINT64_C(0xbf58476d1ce4e5b9);
        x ^= x >> 27;
        x *= UINT64_C(0x94d049bb133111eb);
        return (uint32_t)(x ^ (x >> 31));
}

static int lru_init(struct lru *l, uint64_t budget, uint32_t max_nodes) {
        uint32_t nb = 1;
        while (nb < 2 * max_nodes)
                nb <<= 1;
        memset(l, 0, sizeof(*l));
        l->n = malloc((size_t)max_nodes * sizeof(*l->n));
        l->buckets = malloc((size_t)nb * sizeof(*l->buckets));
        if (!l->n || !l->buckets)
                return -ENOMEM;
        l->mask = nb - 1;
        for (uint32_t i = 0; i < nb; i++)
                l->buckets[i] = NIL;
        for (uint32_t i = 0; i < max_nodes; i++)
                l->n[i].next = i + 1 < max_nodes ? i + 1 : NIL;
        l->free_head = 0;
        l->head = l->tail = NIL;
        l->budget = budget;
        return 0;
}

static void lru_free(struct lru *l) {
        free(l->n);
        free(l->buckets);
}

static void lru_unlink(struct lru *l, uint32_t i) {
        struct lnode *x = &l->n[i];
        if (x->prev != NIL)
                l->n[x->prev].next = x->next;
        else
                l->head = x->next;
        if (x->next != NIL)
                l->n[x->next].prev = x->prev;
        else
                l->tail = x->prev;
}

static void lru_push_front(struct lru *l, uint32_t i) {
        l->n[i].prev = NIL;
        l->n[i].next = l->head;
        if (l->head != NIL)
                l->n[l->head].prev = i;
        else
                l->tail = i;
        l->head = i;
}

/* Returns whether KEY was a hit; on a miss inserts it and evicts to the budget. */
static int lru_access(struct lru *l, struct chunk_key key, uint32_t bytes) {
        uint32_t *b = &l->buckets[khash(key) & l->mask], i = *b;
        while (i != NIL && (l->n[i].key.blob != key.blob || l->n[i].key.idx != key.idx))
                i = l->n[i].hnext;
        if (i != NIL) {
                lru_unlink(l, i);
                lru_push_front(l, i);
                return 1;
        }
        i = l->free_head;
        l->free_head = l->n[i].next;
        l->n[i].key = key;
        l->n[i].bytes = bytes;
        l->n[i].hnext = *b;
        *b = i;
        lru_push_front(l, i);
        l->used += bytes;
        while (l->used > l->budget && l->tail != NIL) {
                uint32_t v = l->tail;
                lru_unlink(l, v);
                uint32_t *link = &l->buckets[khash(l->n[v].key) & l->mask];
                while (*link != v)
                        link = &l->n[*link].hnext;
                *link = l->n[v].hnext;
                l->used -= l->n[v].bytes;
                l->n[v].next = l->free_head;
                l->free_head = v;
        }
        return 0;
}

/* ---- S3-FIFO through cache/policy.h, as engine/residency.c calls it */
static int s3_access(struct policy *p, struct chunk_key key, uint32_t bytes) {
        struct chunk_key victim;
        if (policy_contains(p, key)) {
                policy_touch(p, key);
                return 1;
        }
        if (policy_insert(p, key, bytes) == -ENOSPC) {
                while (policy_next_victim(p, &victim))
                        ;
                if (policy_insert(p, key, bytes) != 0) {
                        fprintf(stderr, "evict_sim: policy_insert failed\n");
                        exit(1);
                }
        }
        while (policy_next_victim(p, &victim))
                ;
        return 0;
}

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
        if (argc < 3) {
                fprintf(stderr, "usage: evict_sim TRACE BUDGET_MIB...\n");
                return 2;
        }
        FILE *f = fopen(argv[1], "rb");
        char magic[8];
        uint32_t hdr[2];
        uint64_t count;
        if (!f || fread(magic, 1, 8, f) != 8 || memcmp(magic, "P2PTRC01", 8) ||
            fread(hdr, sizeof(hdr), 1, f) != 1 || fread(&count, sizeof(count), 1, f) != 1) {
                fprintf(stderr, "evict_sim: %s is not an evict_trace trace\n", argv[1]);
                return 1;
        }
        uint32_t hot_layers = hdr[0];
        struct rec *t = malloc(count * sizeof(*t));
        if (!t || fread(t, sizeof(*t), count, f) != count) {
                fprintf(stderr, "evict_sim: short trace %s\n", argv[1]);
                return 1;
        }
        fclose(f);

        /* the infinite cache: first references miss, every other hits */
        uint64_t hot_refs = 0;
        for (uint64_t i = 0; i < count; i++)
                hot_refs += t[i].blob < hot_layers;
        struct lru seen;
        if (lru_init(&seen, UINT64_MAX, (uint32_t)count) < 0)
                return 1;
        uint64_t inf_hits = 0, inf_hot = 0;
        for (uint64_t i = 0; i < count; i++) {
                int h = lru_access(&seen, (struct chunk_key){t[i].blob, t[i].idx}, t[i].bytes);
                inf_hits += h;
                inf_hot += h && t[i].blob < hot_layers;
        }
        lru_free(&seen);
        printf("policy=infinite budget_mib=0 refs=%llu hits=%llu hit_ratio=%.6f hot_hit_ratio=%.6f "
               "ns_per_ref=0\n",
               (unsigned long long)count, (unsigned long long)inf_hits,
               (double)inf_hits / (double)count, hot_refs ? (double)inf_hot / (double)hot_refs : 0);

        for (int a = 2; a < argc; a++) {
                uint64_t budget = strtoull(argv[a], NULL, 0) * MiB;
                for (int which = 0; which < 2; which++) {
                        uint64_t hits = 0, hot_hits = 0;
                        double t0;
                        if (which == 0) {
                                size_t max_entries =
                                        (size_t)(budget / MiB) * 2 + 4096; /* as engine.c */
                                struct policy *p = policy_new(budget, max_entries);
                                if (!p)
                                        return 1;
                                t0 = now();
                                for (uint64_t i = 0; i < count; i++) {
                                        int h = s3_access(p,
                                                          (struct chunk_key){t[i].blob, t[i].idx},
                                                          t[i].bytes);
                                        hits += h;
                                        hot_hits += h && t[i].blob < hot_layers;
                                }
                                t0 = now() - t0;
                                policy_free(p);
                        } else {
                                struct lru l;
                                /* resident chunks <= distinct chunks <= references */
                                if (lru_init(&l, budget, (uint32_t)count + 1) < 0)
                                        return 1;
                                t0 = now();
                                for (uint64_t i = 0; i < count; i++) {
                                        int h = lru_access(&l,
                                                           (struct chunk_key){t[i].blob, t[i].idx},
                                                           t[i].bytes);
                                        hits += h;
                                        hot_hits += h && t[i].blob < hot_layers;
                                }
                                t0 = now() - t0;
                                lru_free(&l);
                        }
                        printf("policy=%s budget_mib=%s refs=%llu hits=%llu hit_ratio=%.6f "
                               "hot_hit_ratio=%.6f ns_per_ref=%.1f\n",
                               which == 0 ? "s3fifo" : "lru", argv[a], (unsigned long long)count,
                               (unsigned long long)hits, (double)hits / (double)count,
                               hot_refs ? (double)hot_hits / (double)hot_refs : 0,
                               t0 * 1e9 / (double)count);
                }
        }
        free(t);
        return 0;
}
