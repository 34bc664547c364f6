/* The directory a home node keeps: who holds which chunks of the blobs it is home for.
 *
 * Everything here is soft state rebuilt from announces, so the code favours forgetting over
 * bookkeeping: a record that is not refreshed within its TTL is treated as absent at once
 * (every read compares times) and freed by the next dir_expire(). Times are the caller's
 * monotonic milliseconds; a record stamped at T is live while now - T < ttl, so it is dead
 * at exactly T + ttl, and a clock that steps backwards keeps records alive rather than
 * killing them.
 *
 * Layout. Blobs sit in a chained hash table keyed by their digest, mixed with a per-
 * directory random seed: digests in announces are whatever a peer sends, and an unkeyed
 * table would let one peer pile every record into one chain. Blobs are also on a list in
 * order of their newest announce, so the blob to drop at max_blobs is the list's head,
 * O(1). Per blob: the metadata (size, chunk count, source, all as first recorded), the
 * chunk digests and, apart, the chain values (each kind allocated densely with its first
 * value, nchunks x 32.5 bytes; a blob that never gets a chain value pays 8 bytes for them), a
 * small array of holder records (grown up to max_holders, each an nchunks-bit map) and an
 * array of claims (grown up to max_claims). Holder and claim arrays are scanned linearly: they are
 * bounded by a few dozen and about a thousand entries, and a scan touches one cache-friendly
 * array where a per-blob index would cost memory on every blob.
 *
 * An announce whose present set is empty refreshes the blob's metadata (the blob stays
 * resolvable) and removes the node's holder record: a node that holds nothing is not worth
 * a slot a real holder could use. A blob lives while its newest announce or one of its
 * claims does.
 *
 * Layer indexes. A second, smaller table keyed by layer digest (same seed) holds, per layer,
 * up to DIR_INDEX_NODES records (node, index digest, size, last announce), and the layers
 * are on their own list in order of their newest record, so the one to drop at max_indexes
 * is found in O(1). These records are what the announcers said and nothing more: a home
 * cannot check that blob I is an index of L (that takes the layer's bytes), so the answer is
 * the index most nodes agree on. Its worth is that it comes from a home, chosen by
 * rendezvous over the membership, and not from whichever node will send the index's bytes:
 * the reader checks those bytes against the home's digest, so a lying sender must also be,
 * or outvote at, a home of the layer.
 *
 * The other concerns live in directory_apply.c (announces), directory_values.c (the rules
 * for chunk digests and chain values) and directory_locate.c (claims and locate answers),
 * over directory_int.h.
 *
 * Locking: one mutex around everything; nothing is called out while it is held except the
 * allocator and debug logging. Locate answers are copies, so callers never see our memory.
 */
#include "peer/directory_int.h"

#include <sys/random.h>

#define DIR_DEFAULT_MAX_CLAIMS 1024
#define DIR_DEFAULT_MAX_BYTES ((size_t)64 << 20)
#define DIR_MAX_BUCKETS ((size_t)1 << 22)

static uint64_t mix(uint64_t z) {
        z += 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static uint64_t hash_of(const struct directory *dir, const struct digest *d) {
        uint64_t h = dir->seed, w;

        for (size_t i = 0; i < DIGEST_LEN; i += 8) {
                memcpy(&w, d->bytes + i, 8);
                h = mix(h ^ w);
        }
        return h;
}

static size_t bucket_of(const struct directory *dir, const struct digest *d) {
        return (size_t)hash_of(dir, d) & (dir->nbuckets - 1);
}

struct dir_blob *dri_blob_find(struct directory *dir, const struct digest *d) {
        for (struct dir_blob *b = dir->buckets[bucket_of(dir, d)]; b; b = b->hnext)
                if (digest_equal(&b->digest, d))
                        return b;
        return NULL;
}

void dri_order_unlink(struct directory *dir, struct dir_blob *b) {
        if (b->prev)
                b->prev->next = b->next;
        else
                dir->oldest = b->next;
        if (b->next)
                b->next->prev = b->prev;
        else
                dir->newest = b->prev;
        b->prev = b->next = NULL;
}

void dri_order_append(struct directory *dir, struct dir_blob *b) {
        b->prev = dir->newest;
        b->next = NULL;
        if (dir->newest)
                dir->newest->next = b;
        else
                dir->oldest = b;
        dir->newest = b;
}

void dri_holder_remove(struct directory *dir, struct dir_blob *b, size_t i) {
        free(b->holders[i].present);
        dir->bytes -= dri_bitmap_bytes(b->nchunks);
        b->holders[i] = b->holders[--b->nholders];
        dir->stats.holders--;
}

void dri_claim_remove(struct directory *dir, struct dir_blob *b, size_t i) {
        b->claims[i] = b->claims[--b->nclaims];
        dir->stats.claims--;
}

void dri_blob_free(struct directory *dir, struct dir_blob *b) {
        struct dir_blob **p = &dir->buckets[bucket_of(dir, &b->digest)];

        while (*p != b)
                p = &(*p)->hnext;
        *p = b->hnext;
        dri_order_unlink(dir, b);
        while (b->nholders > 0)
                dri_holder_remove(dir, b, b->nholders - 1);
        dir->stats.claims -= b->nclaims;
        dir->stats.blobs--;
        free(b->holders);
        free(b->claims);
        dri_values_free(dir, &b->sha, b->nchunks);
        dri_values_free(dir, &b->chain, b->nchunks);
        free(b);
}

/* Doubles *CAP (up to MAX) so that one more element fits in *ARR. */
int dri_grow(void **arr, size_t *cap, size_t n, size_t max, size_t elem) {
        size_t ncap;
        void *p;

        if (n < *cap)
                return 0;
        ncap = *cap ? *cap * 2 : 4;
        if (ncap > max)
                ncap = max;
        p = realloc(*arr, ncap * elem);
        if (!p)
                return -ENOMEM;
        *arr = p;
        *cap = ncap;
        return 0;
}

/* ---- layer index records ---------------------------------------------------------------- */

static size_t lbucket_of(const struct directory *dir, const struct digest *d) {
        return (size_t)hash_of(dir, d) & (dir->nlbuckets - 1);
}

static struct dir_layer *layer_find(struct directory *dir, const struct digest *d) {
        for (struct dir_layer *l = dir->lbuckets[lbucket_of(dir, d)]; l; l = l->hnext)
                if (digest_equal(&l->layer, d))
                        return l;
        return NULL;
}

static void layer_unlink(struct directory *dir, struct dir_layer *l) {
        if (l->prev)
                l->prev->next = l->next;
        else
                dir->loldest = l->next;
        if (l->next)
                l->next->prev = l->prev;
        else
                dir->lnewest = l->prev;
        l->prev = l->next = NULL;
}

static void layer_append(struct directory *dir, struct dir_layer *l) {
        l->prev = dir->lnewest;
        l->next = NULL;
        if (dir->lnewest)
                dir->lnewest->next = l;
        else
                dir->loldest = l;
        dir->lnewest = l;
}

static void layer_free(struct directory *dir, struct dir_layer *l) {
        struct dir_layer **p = &dir->lbuckets[lbucket_of(dir, &l->layer)];

        while (*p != l)
                p = &(*p)->hnext;
        *p = l->hnext;
        layer_unlink(dir, l);
        dir->stats.indexes--;
        dir->stats.index_records -= l->nrecs;
        free(l);
}

static void irec_remove(struct directory *dir, struct dir_layer *l, unsigned i) {
        l->recs[i] = l->recs[--l->nrecs];
        dir->stats.index_records--;
}

/* NODE says it holds X: its record for X's layer is replaced (or added: when the layer has
 * DIR_INDEX_NODES records, the least recently announced goes). */
int dri_apply_index(struct directory *dir, const char *node, const struct wire_index *x,
                    uint64_t now) {
        struct dir_layer *l = layer_find(dir, &x->layer);
        struct dir_irec *rec = NULL;

        if (x->size == 0 || x->size > INT64_MAX)
                return -EINVAL;
        if (!l) {
                l = calloc(1, sizeof(*l));
                if (!l)
                        return -ENOMEM;
                if (dir->stats.indexes >= dir->cfg.max_indexes)
                        layer_free(dir, dir->loldest); /* the layer whose newest record is oldest */
                l->layer = x->layer;
                size_t h = lbucket_of(dir, &l->layer);
                l->hnext = dir->lbuckets[h];
                dir->lbuckets[h] = l;
                layer_append(dir, l);
                dir->stats.indexes++;
        } else {
                layer_unlink(dir, l);
                layer_append(dir, l);
        }
        l->last_ms = now;
        for (unsigned i = 0; i < l->nrecs && !rec; i++)
                if (strcmp(l->recs[i].node, node) == 0)
                        rec = &l->recs[i];
        if (!rec) {
                if (l->nrecs == DIR_INDEX_NODES) {
                        unsigned old = 0;

                        for (unsigned i = 1; i < l->nrecs; i++)
                                if (l->recs[i].last_ms < l->recs[old].last_ms)
                                        old = i;
                        irec_remove(dir, l, old);
                }
                rec = &l->recs[l->nrecs++];
                dir->stats.index_records++;
                snprintf(rec->node, sizeof(rec->node), "%s", node);
        }
        rec->index = x->index;
        rec->size = x->size;
        rec->last_ms = now;
        return 0;
}

int dir_locate_index(struct directory *dir, const struct digest *layer, uint64_t now_ms,
                     struct wire_index *ret) {
        const struct dir_irec *best = NULL;
        unsigned best_votes = 0;
        struct dir_layer *l;

        pthread_mutex_lock(&dir->lock);
        dir->stats.index_locates++;
        l = layer_find(dir, layer);
        for (unsigned i = 0; l && i < l->nrecs; i++) {
                const struct dir_irec *r = &l->recs[i];
                unsigned votes = 0;

                if (!dri_live(r->last_ms, dir->cfg.ttl_ms, now_ms))
                        continue;
                /* DIR_INDEX_NODES is 8: counting the agreeing records is 64 comparisons. */
                for (unsigned j = 0; j < l->nrecs; j++) {
                        const struct dir_irec *o = &l->recs[j];

                        if (dri_live(o->last_ms, dir->cfg.ttl_ms, now_ms) &&
                            digest_equal(&o->index, &r->index) && o->size == r->size)
                                votes++;
                }
                if (!best || votes > best_votes ||
                    (votes == best_votes && r->last_ms > best->last_ms)) {
                        best = r;
                        best_votes = votes;
                }
        }
        if (!best) {
                dir->stats.index_misses++;
                pthread_mutex_unlock(&dir->lock);
                return -ENOENT;
        }
        *ret = (struct wire_index){.layer = *layer, .index = best->index, .size = best->size};
        pthread_mutex_unlock(&dir->lock);
        return 0;
}

/* ---- the directory ----------------------------------------------------------------------- */

int dir_new(const struct dir_config *cfg, struct directory **ret) {
        struct directory *dir;
        size_t want;

        if (cfg->chunk_size == 0 || cfg->max_blobs == 0 || cfg->max_holders == 0 ||
            cfg->max_holders > WIRE_MAX_HOLDERS || cfg->ttl_ms == 0 || cfg->claim_ttl_ms == 0)
                return -EINVAL;
        dir = calloc(1, sizeof(*dir));
        if (!dir)
                return -ENOMEM;
        dir->cfg = *cfg;
        if (dir->cfg.max_claims == 0)
                dir->cfg.max_claims = DIR_DEFAULT_MAX_CLAIMS;
        if (dir->cfg.max_bytes == 0)
                dir->cfg.max_bytes = DIR_DEFAULT_MAX_BYTES;
        if (dir->cfg.max_indexes == 0)
                dir->cfg.max_indexes = DIR_DEFAULT_MAX_INDEXES;
        if (dir->cfg.max_digest_waiters == 0)
                dir->cfg.max_digest_waiters = DIR_DEFAULT_DIGEST_WAITERS;
        if (dir->cfg.locate_span == 0)
                dir->cfg.locate_span = DIR_LOCATE_SPAN;
        want = cfg->max_blobs < DIR_MAX_BUCKETS ? cfg->max_blobs : DIR_MAX_BUCKETS;
        for (dir->nbuckets = 16; dir->nbuckets < want; dir->nbuckets *= 2)
                ;
        want = dir->cfg.max_indexes < DIR_MAX_BUCKETS ? dir->cfg.max_indexes : DIR_MAX_BUCKETS;
        for (dir->nlbuckets = 16; dir->nlbuckets < want; dir->nlbuckets *= 2)
                ;
        dir->buckets = calloc(dir->nbuckets, sizeof(*dir->buckets));
        dir->lbuckets = calloc(dir->nlbuckets, sizeof(*dir->lbuckets));
        if (!dir->buckets || !dir->lbuckets) {
                free(dir->buckets);
                free(dir->lbuckets);
                free(dir);
                return -ENOMEM;
        }
        /* Unpredictable is enough; a failed getrandom() only weakens flood resistance. */
        if (getrandom(&dir->seed, sizeof(dir->seed), GRND_NONBLOCK) != sizeof(dir->seed))
                dir->seed = mix((uint64_t)(uintptr_t)dir ^ now_ms());
        pthread_mutex_init(&dir->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&dir->digest_cond, &ca);
        pthread_condattr_destroy(&ca);
        *ret = dir;
        return 0;
}

void dir_free(struct directory *dir) {
        if (!dir)
                return;
        while (dir->oldest)
                dri_blob_free(dir, dir->oldest);
        while (dir->loldest)
                layer_free(dir, dir->loldest);
        free(dir->buckets);
        free(dir->lbuckets);
        pthread_cond_destroy(&dir->digest_cond);
        pthread_mutex_destroy(&dir->lock);
        free(dir);
}

struct dir_blob *dri_blob_new(struct directory *dir, const struct wire_blob *wb) {
        struct dir_blob *b = calloc(1, sizeof(*b));
        size_t h;

        if (!b)
                return NULL;
        if (dir->stats.blobs >= dir->cfg.max_blobs)
                dri_blob_free(dir, dir->oldest); /* the blob whose newest announce is oldest */
        b->digest = wb->digest;
        b->size = wb->size;
        b->nchunks = wb->nchunks;
        snprintf(b->source, sizeof(b->source), "%s", wb->source);
        h = bucket_of(dir, &b->digest);
        b->hnext = dir->buckets[h];
        dir->buckets[h] = b;
        dri_order_append(dir, b);
        dir->stats.blobs++;
        return b;
}

static size_t popcount_map(const uint8_t *map, uint32_t nchunks) {
        size_t n = 0;

        for (size_t i = 0; i < ((size_t)nchunks + 7) / 8; i++)
                n += (size_t)__builtin_popcount(map[i]);
        return n;
}

/* A new holder record for NODE; when full, the holder with the fewest chunks goes (the least
 * recently announced among equals). Not the least recently announced one: in a wave of
 * readers every holder announces each round, and the oldest announce is that of the reader
 * furthest ahead, who holds the most: dropping it sent the readers behind to the origin for
 * chunks only it listed (bench/sim, issue 18: origin fetches grew with the wave's size).
 * An expired holder (dir_expire has not run yet) goes before any live one: a holder told the
 * home was full comes back to take exactly such a slot. */
struct dir_holder *dri_holder_add(struct directory *dir, struct dir_blob *b, const char *node,
                                  uint64_t now) {
        struct dir_holder *h;
        uint8_t *present;

        present = malloc(dri_bitmap_bytes(b->nchunks));
        if (!present)
                return NULL;
        if (b->nholders >= dir->cfg.max_holders) {
                size_t worst = 0, worst_n = popcount_map(b->holders[0].present, b->nchunks);

                bool worst_dead = !dri_live(b->holders[0].last_ms, dir->cfg.ttl_ms, now);

                for (size_t i = 1; i < b->nholders; i++) {
                        size_t n = popcount_map(b->holders[i].present, b->nchunks);
                        bool dead = !dri_live(b->holders[i].last_ms, dir->cfg.ttl_ms, now);

                        if (dead != worst_dead) {
                                if (!dead)
                                        continue;
                        } else if (!(n < worst_n ||
                                     (n == worst_n &&
                                      b->holders[i].last_ms < b->holders[worst].last_ms))) {
                                continue;
                        }
                        worst = i;
                        worst_n = n;
                        worst_dead = dead;
                }
                dri_holder_remove(dir, b, worst);
        }
        if (dri_grow((void **)&b->holders, &b->holders_cap, b->nholders, dir->cfg.max_holders,
                     sizeof(*b->holders)) < 0) {
                free(present);
                return NULL;
        }
        h = &b->holders[b->nholders++];
        snprintf(h->node, sizeof(h->node), "%s", node);
        h->present = present;
        dir->stats.holders++;
        dir->bytes += dri_bitmap_bytes(b->nchunks);
        return h;
}

bool dri_blob_alive(const struct directory *dir, const struct dir_blob *b, uint64_t now) {
        if (dri_live(b->last_ms, dir->cfg.ttl_ms, now))
                return true;
        for (size_t i = 0; i < b->nclaims; i++)
                if (dri_live(b->claims[i].since_ms, dir->cfg.claim_ttl_ms, now))
                        return true;
        return false;
}

void dir_expire(struct directory *dir, uint64_t now_ms) {
        struct dir_blob *b, *next;

        pthread_mutex_lock(&dir->lock);
        for (b = dir->oldest; b; b = next) {
                next = b->next;
                for (size_t i = b->nholders; i-- > 0;)
                        if (!dri_live(b->holders[i].last_ms, dir->cfg.ttl_ms, now_ms))
                                dri_holder_remove(dir, b, i);
                for (size_t i = b->nclaims; i-- > 0;)
                        if (!dri_live(b->claims[i].since_ms, dir->cfg.claim_ttl_ms, now_ms))
                                dri_claim_remove(dir, b, i);
                if (!dri_live(b->last_ms, dir->cfg.ttl_ms, now_ms) && b->nclaims == 0)
                        dri_blob_free(dir, b);
        }
        struct dir_layer *l, *lnext;
        for (l = dir->loldest; l; l = lnext) {
                lnext = l->next;
                for (unsigned i = l->nrecs; i-- > 0;)
                        if (!dri_live(l->recs[i].last_ms, dir->cfg.ttl_ms, now_ms))
                                irec_remove(dir, l, i);
                if (l->nrecs == 0)
                        layer_free(dir, l);
        }
        pthread_mutex_unlock(&dir->lock);
}

void dir_get_stats(struct directory *dir, struct dir_stats *ret) {
        pthread_mutex_lock(&dir->lock);
        *ret = dir->stats;
        ret->bytes = dir->bytes;
        ret->digest_waiters = dir->digest_waiters;
        pthread_mutex_unlock(&dir->lock);
}
