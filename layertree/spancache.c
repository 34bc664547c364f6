/* The inflated-span cache. See spancache.h.
 *
 * A chained hash table (a power of two of buckets, sized for the most blocks the bound can
 * hold, at most 64 Ki) plus one LRU list. Lookups cost a hash and a short chain walk; a put
 * evicts from the list's tail. Memory: the bound, plus about 64 bytes per block and 8 per
 * bucket. */
#include "layertree/spancache.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct block {
        uint32_t id;
        uint64_t blk;
        uint8_t *buf;
        size_t len;
        struct block *hnext;       /* bucket chain */
        struct block *prev, *next; /* LRU: head is the most recent */
};

struct spancache {
        pthread_mutex_t lock; /* everything below */
        size_t max_bytes;
        struct block **buckets;
        size_t nbuckets; /* power of two */
        struct block *head, *tail;
        struct spancache_stats st;
};

int spancache_new(size_t max_bytes, struct spancache **ret) {
        struct spancache *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        size_t want = max_bytes / (64u << 10) + 1;
        c->nbuckets = 16;
        while (c->nbuckets < want && c->nbuckets < (64u << 10))
                c->nbuckets <<= 1;
        c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
        if (!c->buckets) {
                free(c);
                return -ENOMEM;
        }
        c->max_bytes = max_bytes;
        pthread_mutex_init(&c->lock, NULL);
        *ret = c;
        return 0;
}

void spancache_free(struct spancache *c) {
        if (!c)
                return;
        for (struct block *b = c->head, *next; b; b = next) {
                next = b->next;
                free(b->buf);
                free(b);
        }
        free(c->buckets);
        pthread_mutex_destroy(&c->lock);
        free(c);
}

static size_t bucket_of(const struct spancache *c, uint32_t id, uint64_t blk) {
        uint64_t h = (blk ^ ((uint64_t)id << 40)) * UINT64_C(0x9e3779b97f4a7c15);
        return (size_t)(h >> 32) & (c->nbuckets - 1);
}

static struct block **slot_of(struct spancache *c, uint32_t id, uint64_t blk) {
        struct block **p = &c->buckets[bucket_of(c, id, blk)];
        while (*p && ((*p)->id != id || (*p)->blk != blk))
                p = &(*p)->hnext;
        return p;
}

static void lru_unlink(struct spancache *c, struct block *b) {
        if (b->prev)
                b->prev->next = b->next;
        else
                c->head = b->next;
        if (b->next)
                b->next->prev = b->prev;
        else
                c->tail = b->prev;
        b->prev = b->next = NULL;
}

static void lru_push(struct spancache *c, struct block *b) {
        b->prev = NULL;
        b->next = c->head;
        if (c->head)
                c->head->prev = b;
        c->head = b;
        if (!c->tail)
                c->tail = b;
}

static void drop(struct spancache *c, struct block *b) {
        struct block **p = slot_of(c, b->id, b->blk);
        *p = b->hnext;
        lru_unlink(c, b);
        c->st.bytes -= b->len;
        c->st.blocks--;
        c->st.evicted++;
        free(b->buf);
        free(b);
}

int spancache_get(struct spancache *c, uint32_t id, uint64_t blk, size_t off, void *dst, size_t n) {
        pthread_mutex_lock(&c->lock);
        struct block *b = *slot_of(c, id, blk);
        int r = -ENOENT;
        if (b && off <= b->len && n <= b->len - off) {
                memcpy(dst, b->buf + off, n);
                lru_unlink(c, b);
                lru_push(c, b);
                c->st.hits++;
                r = 0;
        } else {
                c->st.misses++;
        }
        pthread_mutex_unlock(&c->lock);
        return r;
}

void spancache_put(struct spancache *c, uint32_t id, uint64_t blk, void *buf, size_t len) {
        if (len > c->max_bytes) {
                free(buf);
                return;
        }
        struct block *nb = calloc(1, sizeof(*nb));
        if (!nb) {
                free(buf);
                return;
        }
        pthread_mutex_lock(&c->lock);
        struct block **p = slot_of(c, id, blk);
        if (*p) { /* another worker inflated it meanwhile */
                pthread_mutex_unlock(&c->lock);
                free(nb);
                free(buf);
                return;
        }
        while (c->tail && c->st.bytes + len > c->max_bytes)
                drop(c, c->tail);
        p = slot_of(c, id, blk); /* a drop may have changed the chain */
        *nb = (struct block){.id = id, .blk = blk, .buf = buf, .len = len};
        *p = nb;
        lru_push(c, nb);
        c->st.bytes += len;
        c->st.blocks++;
        pthread_mutex_unlock(&c->lock);
}

void spancache_get_stats(struct spancache *c, struct spancache_stats *ret) {
        pthread_mutex_lock(&c->lock);
        *ret = c->st;
        pthread_mutex_unlock(&c->lock);
}
