/* The on-disk chunk store: one sparse file per blob, <dir>/chunks/sha256/<hex>.
 *
 * The store only moves bytes; which chunks are present is the index's and the engine's
 * business. Every call opens the blob's file and closes it again: a file deleted or truncated
 * under us is then noticed on the next access (-ESTALE) instead of being served from a stale
 * descriptor, at the cost of an open/close per chunk (microseconds, next to a 1 MiB copy).
 *
 * Page-cache discipline: writes are written back and their pages dropped
 * (sync_file_range + POSIX_FADV_DONTNEED); reads drop what they read. The one exception is
 * readahead a caller asks for (store_readahead): those pages stay until they are read, but the
 * store remembers at most STORE_RA_MAX_BYTES of such ranges and drops the oldest to make room.
 * The store's own page cache footprint is therefore bounded by the chunks being copied at this
 * instant plus STORE_RA_MAX_BYTES, however many terabytes stream through. All functions are
 * thread-safe and block on disk I/O only. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util/digest.h"

struct store;

/* Opens (creating) the store under STATE_DIR. 0 or -errno. */
int store_open(const char *state_dir, struct store **ret);
void store_close(struct store *s); /* NULL-safe */

/* Writes LEN bytes at OFF into BLOB's file, creating it sparse with SIZE bytes. Returns once the
 * bytes are on disk (not merely in page cache) and their pages dropped. 0, -ENOSPC, -errno. */
int store_write(struct store *s, const struct digest *blob, uint64_t size, uint64_t off,
                const void *buf, size_t len);

/* Reads exactly LEN bytes at OFF. 0; -ESTALE when the bytes are gone (file missing or short,
 * or a hole where data should be); -errno on I/O failure. Drops the pages it read, and forgets
 * readahead ranges (store_readahead) once they have been read whole. */
int store_read(struct store *s, const struct digest *blob, uint64_t off, void *buf, size_t len);

/* The most bytes of readahead the store keeps in the page cache at once, all blobs and readers
 * together: a few chunks ahead of each of a few sequential readers. */
#define STORE_RA_MAX_BYTES (UINT64_C(32) << 20)

/* Asks the kernel to start reading LEN bytes at OFF of BLOB into the page cache and returns
 * without waiting for them (POSIX_FADV_WILLNEED), so a store_read() of them a moment later
 * finds them there, or under way, instead of waiting for the disk at queue depth one. For a
 * sequential reader: the caller names ranges it is about to read. The range stays in the page
 * cache until store_read() has read all of it; when the ranges outstanding would pass
 * STORE_RA_MAX_BYTES, the oldest are dropped (and will simply be read from disk). A range
 * already asked for is not asked for again. The caller must know the bytes are there (a hole
 * would be read as zero pages: harmless, store_read still reports it, but wasted).
 * 0; -E2BIG when LEN is 0 or above STORE_RA_MAX_BYTES; -ESTALE when the file is missing;
 * -errno. Blocks only on opening the file and submitting the I/O. */
int store_readahead(struct store *s, const struct digest *blob, uint64_t off, size_t len);

/* Checks that LEN bytes at OFF are backed by data (no hole, file long enough) without reading
 * them. 0, -ESTALE, -errno. Used to validate the index against the disk at start-up. */
int store_probe(struct store *s, const struct digest *blob, uint64_t off, size_t len);

/* Frees LEN bytes at OFF (punches a hole; the file keeps its size). A missing file is fine. */
int store_punch(struct store *s, const struct digest *blob, uint64_t off, size_t len);

/* Removes BLOB's file. A missing file is fine. */
int store_remove(struct store *s, const struct digest *blob);

/* Disk blocks the store's files occupy, in bytes (st_blocks * 512 summed). */
uint64_t store_allocated_bytes(struct store *s);

/* How much of the store's files sits in the page cache right now (mincore over windows). */
uint64_t store_page_cache_bytes(struct store *s);

/* The directory holding the chunk files (for messages). */
const char *store_dir(const struct store *s);
