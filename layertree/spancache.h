/* A bounded cache of inflated tar bytes: blocks of one layer's uncompressed stream, keyed by
 * (layer id, block number), evicted least recently used first. Inflating a gzip layer from a
 * checkpoint costs CPU proportional to the distance from it; small reads of neighbouring files
 * would pay it again and again. Thread-safe (one mutex; copies happen under it, a block is at
 * most a few hundred KiB). */
#pragma once
#include <stddef.h>
#include <stdint.h>

struct spancache;

struct spancache_stats {
        uint64_t bytes, blocks, hits, misses, evicted;
};

/* A cache holding at most MAX_BYTES of block bytes. 0 or -ENOMEM. */
int spancache_new(size_t max_bytes, struct spancache **ret);
void spancache_free(struct spancache *c); /* NULL-safe */

/* Copies N bytes at OFF of block BLK of layer ID into DST: 0, or -ENOENT when the block is not
 * cached or shorter than OFF + N. */
int spancache_get(struct spancache *c, uint32_t id, uint64_t blk, size_t off, void *dst, size_t n);

/* Keeps BUF (LEN bytes, malloc'ed: the cache owns it from now on, whatever happens) as block
 * BLK of layer ID, evicting others to stay within the bound. A block larger than the bound is
 * dropped at once. */
void spancache_put(struct spancache *c, uint32_t id, uint64_t blk, void *buf, size_t len);

void spancache_get_stats(struct spancache *c, struct spancache_stats *ret);
