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
 * chunk digests (allocated densely with the first one, nchunks x 32 bytes), a small array
 * of holder records (grown up to max_holders, each an nchunks-bit map) and an array of
 * claims (grown up to max_claims). Holder and claim arrays are scanned linearly: they are
 * bounded by a few dozen and about a thousand entries, and a scan touches one cache-friendly
 * array where a per-blob index would cost memory on every blob.
 *
 * An announce whose present set is empty refreshes the blob's metadata (the blob stays
 * resolvable) and removes the node's holder record: a node that holds nothing is not worth
 * a slot a real holder could use. A blob lives while its newest announce or one of its
 * claims does.
 *
 * Chunk digests and their provenance. Each recorded digest carries one bit: whether it came
 * from a node that had verified the whole blob (its announce said "verified"). That is the
 * strongest word a home can have short of hashing the bytes itself: those digests are of
 * bytes that hashed, whole, to the blob's digest. The rules, per chunk:
 *   - unknown: the first digest announced is recorded, with its bit;
 *   - the same digest again: recorded, and verified once any announcer was verified;
 *   - a different digest, verified, over an unverified one: the verified one replaces it
 *     (the unverified one described bytes that did not verify, or was a lie);
 *   - a different digest, unverified, against a verified one: ignored;
 *   - a different digest of the same standing (both unverified, or both verified — the
 *     latter means someone lies about verifying): the directory cannot tell which holder
 *     has bad data, so it forgets the digest (logged at debug) and readers take the chunk
 *     from the origin, instead of distrusting honest peers on the word of whoever spoke
 *     first. The dispute is remembered while the blob's record lives: otherwise whoever
 *     re-announces first after it (a liar announcing twice a second) would be believed
 *     again. After an unverified dispute only a verified digest is recorded; after a
 *     verified one, none.
 * Readers check every peer's bytes against these digests (never against the serving peer's
 * own word), and a blob read whole is verified against its own digest in the end.
 *
 * Claims. A claim (chunk, claimant, time) is granted when no live holder has the chunk and
 * no live claim covers it, renewed when its claimant asks again, and dropped when the
 * claimant announces the chunk present, when it expires, or (oldest first) when the blob
 * already has max_claims: dropping a claim costs at most a duplicate origin fetch, while
 * refusing one could leave a chunk that nobody fetches.
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
 * Locking: one mutex around everything; nothing is called out while it is held except the
 * allocator and debug logging. Locate answers are copies, so callers never see our memory.
 */
#include "peer/directory.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>

#include "util/log.h"

#define DIR_DEFAULT_MAX_CLAIMS 1024
#define DIR_DEFAULT_MAX_BYTES ((size_t)64 << 20)
#define DIR_MAX_BUCKETS ((size_t)1 << 22)

struct dir_holder {
        char node[PEER_ID_MAX];
        uint8_t *present; /* nchunks bits, never empty (an empty set has no record) */
        uint64_t last_ms; /* its last announce */
};

struct dir_claim {
        char node[PEER_ID_MAX];
        uint32_t chunk;
        uint64_t since_ms; /* granted or renewed */
};

struct dir_blob {
        struct digest digest;
        uint64_t size;
        uint32_t nchunks;
        char source[IDX_SOURCE_MAX];
        uint64_t last_ms;      /* newest announce from any node, empty or not */
        struct digest *sha;    /* nchunks entries once the first digest arrives; else NULL */
        uint8_t *sha_known;    /* bitmap, allocated with sha */
        uint8_t *sha_verified; /* bitmap, allocated with sha: from a verified announcer */
        uint8_t *disputed;     /* bitmap, with sha: two unverified digests disagreed */
        uint8_t *disputed_v;   /* bitmap, with sha: two verified digests disagreed */
        struct dir_holder *holders;
        size_t nholders, holders_cap;
        struct dir_claim *claims;
        size_t nclaims, claims_cap;
        struct dir_blob *hnext;       /* hash chain */
        struct dir_blob *prev, *next; /* announce order, oldest first */
};

struct dir_irec {
        char node[PEER_ID_MAX];
        struct digest index;
        uint64_t size;
        uint64_t last_ms;
};

struct dir_layer {
        struct digest layer;
        struct dir_irec recs[DIR_INDEX_NODES];
        unsigned nrecs;
        uint64_t last_ms;              /* newest record */
        struct dir_layer *hnext;       /* hash chain */
        struct dir_layer *prev, *next; /* newest record order, oldest first */
};

struct directory {
        pthread_mutex_t lock;
        struct dir_config cfg; /* immutable after dir_new */
        uint64_t seed;
        struct dir_blob **buckets;
        size_t nbuckets; /* a power of two */
        struct dir_blob *oldest, *newest;
        struct dir_stats stats; /* blobs, holders, claims are current counts */
        size_t bytes;           /* holder bitmaps and digest arrays, against cfg.max_bytes */
        struct dir_layer **lbuckets;
        size_t nlbuckets; /* a power of two */
        struct dir_layer *loldest, *lnewest;
};

static size_t bitmap_bytes(uint32_t nchunks) {
        return nchunks == 0 ? 1 : ((size_t)nchunks + 7) / 8;
}

static size_t sha_bytes(uint32_t nchunks) {
        return (size_t)nchunks * sizeof(struct digest) + 4 * bitmap_bytes(nchunks);
}

static bool live(uint64_t since, uint64_t ttl, uint64_t now) {
        return now < since || now - since < ttl;
}

static bool bitmap_empty(const uint8_t *map, uint32_t nchunks) {
        for (uint32_t i = 0; i < nchunks / 8; i++)
                if (map[i])
                        return false;
        for (uint32_t i = nchunks / 8 * 8; i < nchunks; i++)
                if (wire_bit(map, i))
                        return false;
        return true;
}

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

static struct dir_blob *blob_find(struct directory *dir, const struct digest *d) {
        for (struct dir_blob *b = dir->buckets[bucket_of(dir, d)]; b; b = b->hnext)
                if (digest_equal(&b->digest, d))
                        return b;
        return NULL;
}

static void order_unlink(struct directory *dir, struct dir_blob *b) {
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

static void order_append(struct directory *dir, struct dir_blob *b) {
        b->prev = dir->newest;
        b->next = NULL;
        if (dir->newest)
                dir->newest->next = b;
        else
                dir->oldest = b;
        dir->newest = b;
}

static void holder_remove(struct directory *dir, struct dir_blob *b, size_t i) {
        free(b->holders[i].present);
        dir->bytes -= bitmap_bytes(b->nchunks);
        b->holders[i] = b->holders[--b->nholders];
        dir->stats.holders--;
}

static void claim_remove(struct directory *dir, struct dir_blob *b, size_t i) {
        b->claims[i] = b->claims[--b->nclaims];
        dir->stats.claims--;
}

static void blob_free(struct directory *dir, struct dir_blob *b) {
        struct dir_blob **p = &dir->buckets[bucket_of(dir, &b->digest)];

        while (*p != b)
                p = &(*p)->hnext;
        *p = b->hnext;
        order_unlink(dir, b);
        while (b->nholders > 0)
                holder_remove(dir, b, b->nholders - 1);
        dir->stats.claims -= b->nclaims;
        dir->stats.blobs--;
        free(b->holders);
        free(b->claims);
        if (b->sha)
                dir->bytes -= sha_bytes(b->nchunks);
        free(b->sha);
        free(b->sha_known);
        free(b->sha_verified);
        free(b->disputed);
        free(b->disputed_v);
        free(b);
}

/* Doubles *CAP (up to MAX) so that one more element fits in *ARR. */
static int grow(void **arr, size_t *cap, size_t n, size_t max, size_t elem) {
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
static int apply_index(struct directory *dir, const char *node, const struct wire_index *x,
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

                if (!live(r->last_ms, dir->cfg.ttl_ms, now_ms))
                        continue;
                /* DIR_INDEX_NODES is 8: counting the agreeing records is 64 comparisons. */
                for (unsigned j = 0; j < l->nrecs; j++) {
                        const struct dir_irec *o = &l->recs[j];

                        if (live(o->last_ms, dir->cfg.ttl_ms, now_ms) &&
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
        *ret = dir;
        return 0;
}

void dir_free(struct directory *dir) {
        if (!dir)
                return;
        while (dir->oldest)
                blob_free(dir, dir->oldest);
        while (dir->loldest)
                layer_free(dir, dir->loldest);
        free(dir->buckets);
        free(dir->lbuckets);
        pthread_mutex_destroy(&dir->lock);
        free(dir);
}

static struct dir_blob *blob_new(struct directory *dir, const struct wire_blob *wb) {
        struct dir_blob *b = calloc(1, sizeof(*b));
        size_t h;

        if (!b)
                return NULL;
        if (dir->stats.blobs >= dir->cfg.max_blobs)
                blob_free(dir, dir->oldest); /* the blob whose newest announce is oldest */
        b->digest = wb->digest;
        b->size = wb->size;
        b->nchunks = wb->nchunks;
        snprintf(b->source, sizeof(b->source), "%s", wb->source);
        h = bucket_of(dir, &b->digest);
        b->hnext = dir->buckets[h];
        dir->buckets[h] = b;
        order_append(dir, b);
        dir->stats.blobs++;
        return b;
}

static ssize_t holder_find(const struct dir_blob *b, const char *node) {
        for (size_t i = 0; i < b->nholders; i++)
                if (strcmp(b->holders[i].node, node) == 0)
                        return (ssize_t)i;
        return -1;
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
 * chunks only it listed (bench/sim, issue 18: origin fetches grew with the wave's size). */
static struct dir_holder *holder_add(struct directory *dir, struct dir_blob *b, const char *node) {
        struct dir_holder *h;
        uint8_t *present;

        present = malloc(bitmap_bytes(b->nchunks));
        if (!present)
                return NULL;
        if (b->nholders >= dir->cfg.max_holders) {
                size_t worst = 0, worst_n = popcount_map(b->holders[0].present, b->nchunks);

                for (size_t i = 1; i < b->nholders; i++) {
                        size_t n = popcount_map(b->holders[i].present, b->nchunks);

                        if (n < worst_n ||
                            (n == worst_n && b->holders[i].last_ms < b->holders[worst].last_ms)) {
                                worst = i;
                                worst_n = n;
                        }
                }
                holder_remove(dir, b, worst);
        }
        if (grow((void **)&b->holders, &b->holders_cap, b->nholders, dir->cfg.max_holders,
                 sizeof(*b->holders)) < 0) {
                free(present);
                return NULL;
        }
        h = &b->holders[b->nholders++];
        snprintf(h->node, sizeof(h->node), "%s", node);
        h->present = present;
        dir->stats.holders++;
        dir->bytes += bitmap_bytes(b->nchunks);
        return h;
}

static void bit_clear(uint8_t *map, uint32_t i) {
        map[i / 8] &= (uint8_t) ~(1u << (i % 8));
}

static int record_digests(struct directory *dir, struct dir_blob *b, const struct wire_blob *wb,
                          const char *node) {
        for (uint32_t i = 0; i < wb->ndigests; i++) {
                uint32_t idx = wb->sha_idx[i];

                if (idx >= b->nchunks)
                        continue;
                if (!b->sha) {
                        b->sha = calloc(b->nchunks, sizeof(*b->sha));
                        b->sha_known = calloc(1, bitmap_bytes(b->nchunks));
                        b->sha_verified = calloc(1, bitmap_bytes(b->nchunks));
                        b->disputed = calloc(1, bitmap_bytes(b->nchunks));
                        b->disputed_v = calloc(1, bitmap_bytes(b->nchunks));
                        if (!b->sha || !b->sha_known || !b->sha_verified || !b->disputed ||
                            !b->disputed_v) {
                                free(b->sha);
                                free(b->sha_known);
                                free(b->sha_verified);
                                free(b->disputed);
                                free(b->disputed_v);
                                b->sha = NULL;
                                b->sha_known = NULL;
                                b->sha_verified = NULL;
                                b->disputed = NULL;
                                b->disputed_v = NULL;
                                return -ENOMEM;
                        }
                        dir->bytes += sha_bytes(b->nchunks);
                }
                bool known = wire_bit(b->sha_known, idx);
                bool was_verified = known && wire_bit(b->sha_verified, idx);
                const char *kept;

                if (known && digest_equal(&b->sha[idx], &wb->sha[i])) {
                        if (wb->verified)
                                wire_set_bit(b->sha_verified, idx);
                        continue;
                }
                if (!known &&
                    (wire_bit(b->disputed_v, idx) || (wire_bit(b->disputed, idx) && !wb->verified)))
                        continue; /* disputed: this word is not enough any more */
                if (!known || (wb->verified && !was_verified)) {
                        b->sha[idx] = wb->sha[i];
                        wire_set_bit(b->sha_known, idx);
                        if (wb->verified)
                                wire_set_bit(b->sha_verified, idx);
                        else
                                bit_clear(b->sha_verified, idx);
                        if (!known)
                                continue;
                        kept = "verified";
                } else if (!wb->verified && was_verified) {
                        kept = "recorded"; /* the verified digest stands */
                } else {
                        /* Same standing, different digests: neither is believed. Readers then
                         * take the chunk from the origin instead of distrusting honest peers
                         * forever on the word of whoever spoke first; a later announce may set
                         * it again, and the whole-blob check decides in the end. */
                        bit_clear(b->sha_known, idx);
                        bit_clear(b->sha_verified, idx);
                        wire_set_bit(was_verified ? b->disputed_v : b->disputed, idx);
                        kept = "none";
                }
                char hex[DIGEST_HEX_LEN + 1];

                digest_to_hex(&b->digest, hex);
                log_debug("directory chunk digest conflict blob=%s chunk=%" PRIu32
                          " node=%s announced_verified=%d kept=%s",
                          hex, idx, node, (int)wb->verified, kept);
        }
        return 0;
}

/* One blob of NODE's announce, at NOW. */
static int apply_blob(struct directory *dir, struct dir_blob *b, const char *node,
                      const struct wire_blob *wb, uint64_t now) {
        ssize_t hi = holder_find(b, node);

        b->last_ms = now;
        order_unlink(dir, b);
        order_append(dir, b);

        if (b->nchunks == 0 || bitmap_empty(wb->present, b->nchunks)) {
                if (hi >= 0)
                        holder_remove(dir, b, (size_t)hi);
        } else {
                struct dir_holder *h = hi >= 0 ? &b->holders[hi] : holder_add(dir, b, node);

                if (!h)
                        return -ENOMEM;
                memcpy(h->present, wb->present, bitmap_bytes(b->nchunks));
                if (b->nchunks % 8) /* bits past the end stay clear: they are compared */
                        h->present[b->nchunks / 8] &= (uint8_t)((1u << (b->nchunks % 8)) - 1);
                h->last_ms = now;
                /* Claims this node now holds are done. */
                for (size_t i = b->nclaims; i-- > 0;)
                        if (strcmp(b->claims[i].node, node) == 0 &&
                            wire_bit(h->present, b->claims[i].chunk))
                                claim_remove(dir, b, i);
        }
        return record_digests(dir, b, wb, node);
}

static bool blob_alive(const struct directory *dir, const struct dir_blob *b, uint64_t now) {
        if (live(b->last_ms, dir->cfg.ttl_ms, now))
                return true;
        for (size_t i = 0; i < b->nclaims; i++)
                if (live(b->claims[i].since_ms, dir->cfg.claim_ttl_ms, now))
                        return true;
        return false;
}

int dir_apply(struct directory *dir, const struct wire_announce *a, uint64_t now_ms, char *reason,
              size_t reason_len) {
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

                b = blob_find(dir, &wb->digest);
                if (b && !blob_alive(dir, b, now_ms)) {
                        blob_free(dir, b); /* dead, not yet expired: start afresh */
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
                        b = blob_new(dir, wb);
                q = b ? apply_blob(dir, b, a->node, wb, now_ms) : -ENOMEM;
                if (q < 0 && r == 0)
                        r = q;
                while (dir->bytes > dir->cfg.max_bytes && dir->oldest && dir->oldest != b)
                        blob_free(dir, dir->oldest);
        }
        for (uint32_t i = 0; i < a->nindexes; i++) {
                int q = apply_index(dir, a->node, &a->indexes[i], now_ms);

                if (q < 0 && r == 0)
                        r = q;
        }
        pthread_mutex_unlock(&dir->lock);
        return r;
}

/* Decides CLAIMANT's claim on CHUNK of B. */
static int claim(struct directory *dir, struct dir_blob *b, const char *claimant, uint32_t chunk,
                 uint64_t now, bool *ret_granted) {
        struct dir_claim *c;

        for (size_t i = 0; i < b->nholders; i++)
                if (live(b->holders[i].last_ms, dir->cfg.ttl_ms, now) &&
                    wire_bit(b->holders[i].present, chunk)) {
                        *ret_granted = false;
                        return 0;
                }
        for (size_t i = b->nclaims; i-- > 0;) {
                c = &b->claims[i];
                if (!live(c->since_ms, dir->cfg.claim_ttl_ms, now)) {
                        claim_remove(dir, b, i);
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
                claim_remove(dir, b, old);
        }
        if (grow((void **)&b->claims, &b->claims_cap, b->nclaims, dir->cfg.max_claims,
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
                h->present = calloc(1, bitmap_bytes(l->nchunks));
                if (!h->present)
                        return -ENOMEM;
                snprintf(h->node, sizeof(h->node), "%s", c->node);
                h->fetching = true;
                l->nholders++;
        }
        wire_set_bit(h->present, c->chunk);
        return 0;
}

static int fill_locate(const struct directory *dir, const struct dir_blob *b, const char *claimant,
                       int64_t chunk, uint64_t now, struct wire_locate *l) {
        size_t bytes = bitmap_bytes(b->nchunks);
        const struct dir_claim *first = NULL;
        uint32_t nfirst;

        l->digest = b->digest;
        l->size = b->size;
        l->chunk_size = dir->cfg.chunk_size;
        l->nchunks = b->nchunks;
        snprintf(l->source, sizeof(l->source), "%s", b->source);
        l->sha = calloc(b->nchunks ? b->nchunks : 1, sizeof(*l->sha));
        l->sha_known = calloc(1, bytes);
        l->sha_verified = calloc(1, bytes);
        l->holders = calloc(2 * WIRE_MAX_HOLDERS, sizeof(*l->holders));
        if (!l->sha || !l->sha_known || !l->sha_verified || !l->holders)
                return -ENOMEM;
        /* Asked about one chunk (a reader's miss): the digests of that chunk and the
         * DIR_LOCATE_SPAN - 1 after it, and the holders that have it. The answer then costs the
         * same for a 10 GiB blob as for a 10 MiB one; the whole picture is for lookups
         * (CHUNK < 0). The following digests let the reader keep the answer and check the
         * next chunks of a sequential read (and a run of them in one GET) without asking
         * again for each (peer/source.c). */
        bool one = chunk >= 0 && (uint64_t)chunk < b->nchunks;
        if (b->sha && one) {
                uint32_t end = (uint64_t)chunk + DIR_LOCATE_SPAN < b->nchunks
                                       ? (uint32_t)chunk + DIR_LOCATE_SPAN
                                       : b->nchunks;
                for (uint32_t c = (uint32_t)chunk; c < end; c++) {
                        if (!wire_bit(b->sha_known, c))
                                continue;
                        l->sha[c] = b->sha[c];
                        wire_set_bit(l->sha_known, c);
                        if (wire_bit(b->sha_verified, c))
                                wire_set_bit(l->sha_verified, c);
                }
        } else if (b->sha) {
                memcpy(l->sha, b->sha, b->nchunks * sizeof(*b->sha));
                memcpy(l->sha_known, b->sha_known, bytes);
                memcpy(l->sha_verified, b->sha_verified, bytes);
        }
        for (size_t i = 0; i < b->nholders; i++) {
                const struct dir_holder *h = &b->holders[i];
                struct wire_holder *w = &l->holders[l->nholders];

                if (!live(h->last_ms, dir->cfg.ttl_ms, now) ||
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

                if (!live(c->since_ms, dir->cfg.claim_ttl_ms, now) ||
                    (claimant && strcmp(c->node, claimant) == 0))
                        continue;
                if (chunk >= 0 && c->chunk == (uint64_t)chunk)
                        first = c;
        }
        if (first && add_fetching(l, nfirst, first) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < b->nclaims; i++) {
                const struct dir_claim *c = &b->claims[i];

                if (!live(c->since_ms, dir->cfg.claim_ttl_ms, now) ||
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
        b = blob_find(dir, d);
        if (!b || !blob_alive(dir, b, now_ms)) {
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
out_unlock:
        pthread_mutex_unlock(&dir->lock);
        if (r < 0) {
                wire_locate_free(&l);
                return r;
        }
        *ret = l;
        return 0;
}

void dir_expire(struct directory *dir, uint64_t now_ms) {
        struct dir_blob *b, *next;

        pthread_mutex_lock(&dir->lock);
        for (b = dir->oldest; b; b = next) {
                next = b->next;
                for (size_t i = b->nholders; i-- > 0;)
                        if (!live(b->holders[i].last_ms, dir->cfg.ttl_ms, now_ms))
                                holder_remove(dir, b, i);
                for (size_t i = b->nclaims; i-- > 0;)
                        if (!live(b->claims[i].since_ms, dir->cfg.claim_ttl_ms, now_ms))
                                claim_remove(dir, b, i);
                if (!live(b->last_ms, dir->cfg.ttl_ms, now_ms) && b->nclaims == 0)
                        blob_free(dir, b);
        }
        struct dir_layer *l, *lnext;
        for (l = dir->loldest; l; l = lnext) {
                lnext = l->next;
                for (unsigned i = l->nrecs; i-- > 0;)
                        if (!live(l->recs[i].last_ms, dir->cfg.ttl_ms, now_ms))
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
        pthread_mutex_unlock(&dir->lock);
}
