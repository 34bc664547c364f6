/* The on-disk chunk store: one sparse file per blob, <dir>/chunks/sha256/<hex>.
 *
 * The store only moves bytes; which chunks are present is the index's and the engine's
 * business. Reads go through a bounded cache of open descriptors (at most
 * store_set_open_blobs() blobs, two descriptors each, least recently used evicted): a read
 * costs an fstat of each, a pread of the data and one of its checksums. A file deleted,
 * replaced or truncated under us is still noticed on the next read (-ESTALE), never served
 * from a stale descriptor: the fstat sees the unlink (st_nlink 0, and the path is opened again)
 * or the short size, and a hole fails its checksums (see store_read).
 *
 * Page-cache discipline: writes are written back and their pages dropped
 * (sync_file_range + POSIX_FADV_DONTNEED); reads drop what they read, in batches (once
 * STORE_DROP_BATCH bytes were read through a blob's descriptor, or everything once the store
 * owes more than STORE_DROP_MAX, and whatever is left when a descriptor closes): one DONTNEED
 * per batch rather than per read, because each one can make the kernel drain every CPU's LRU
 * lists. The one exception is readahead a caller asks for (store_readahead): those pages stay
 * until they are read, but the store remembers at most STORE_RA_MAX_BYTES of such ranges and
 * drops the oldest to make room. The store's own page cache footprint is therefore bounded by
 * the chunks being copied at this instant plus STORE_DROP_MAX plus STORE_RA_MAX_BYTES, however
 * many terabytes stream through. All functions are thread-safe and block on disk I/O only. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util/digest.h"

struct store;

/* Opens (creating) the store under STATE_DIR. 0 or -errno. */
int store_open(const char *state_dir, struct store **ret);
void store_close(struct store *s); /* NULL-safe */

/* Blobs whose descriptors the store keeps open by default, and at most. */
#define STORE_OPEN_BLOBS_DEFAULT 64u
#define STORE_OPEN_BLOBS_MAX 4096u

/* Bytes read through one blob's descriptor before their pages are dropped, and the most the
 * store leaves undropped in all. */
#define STORE_DROP_BATCH (UINT64_C(1) << 20)
#define STORE_DROP_MAX (UINT64_C(4) << 20)

/* Sets how many blobs' descriptors stay open (0: none, every read opens and closes; above
 * STORE_OPEN_BLOBS_MAX: that). Shrinking closes the least recently used at once (those in use
 * when their reader lets go). */
void store_set_open_blobs(struct store *s, unsigned n);

/* Blobs whose descriptors are open in the cache now. */
unsigned store_open_blobs(struct store *s);

/* BLOB holds no chunk any more (its last was evicted): closes its descriptors (once a reader
 * still using them is done). A later read opens them again. Never blocks on the disk beyond a
 * close and a DONTNEED. */
void store_release(struct store *s, const struct digest *blob);

/* Writes LEN bytes at OFF into BLOB's file, creating it sparse with SIZE bytes, and records a
 * CRC-32C of every 4 KiB block of them in BLOB's checksum file (<dir>/chunks/crc32c/<hex>),
 * after the bytes. Returns once both are on disk (not merely in page cache) and the data's pages
 * dropped: only then may the caller call the range present. OFF must be a multiple of
 * STORE_BLOCK and LEN too unless the range ends the blob (-EINVAL otherwise), so that every
 * block is written whole by one call. 0, -ENOSPC, -EINVAL, -errno. */
#define STORE_BLOCK 4096u

int store_write(struct store *s, const struct digest *blob, uint64_t size, uint64_t off,
                const void *buf, size_t len);

/* Reads exactly LEN bytes at OFF, every byte checked against the checksum recorded when it was
 * written (the whole 4 KiB blocks enclosing the range are read and checked). 0; -ESTALE when
 * the bytes are gone (file missing, replaced or short, or a hole where data should be);
 * -EBADMSG when a block does not match its checksum, or has none (bit rot, bytes changed under
 * the store): nothing of BUF may then be used; -errno on I/O failure. Presence costs nothing
 * extra: a hole reads as zeros and fails its checksums (unless the bytes were zeros, which are
 * then right), and only such a failure probes for holes (SEEK_DATA) to say -ESTALE rather than
 * -EBADMSG. Drops the pages it read (batched, see above), and forgets readahead ranges
 * (store_readahead) once they have been read whole. */
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

/* BLOB's bytes [OFF, OFF+LEN) were given to a reader from a copy in memory, not read here:
 * readahead ranges (store_readahead) this completes are forgotten and their pages dropped, as
 * store_read() would have, so a range served from elsewhere does not sit in the page cache
 * until it ages out. Cheap when no readahead range of BLOB is outstanding (one lock). */
void store_note_served(struct store *s, const struct digest *blob, uint64_t off, size_t len);

/* Checks that LEN bytes at OFF are backed by data (no hole, file long enough) and that every
 * block of them has a valid checksum entry, without reading the data. 0, -ESTALE, -errno. Used
 * to validate the index against the disk at start-up: a chunk whose checksums never made it to
 * disk (a crash between the data and the entries) is not present. */
int store_probe(struct store *s, const struct digest *blob, uint64_t off, size_t len);

/* Frees LEN bytes at OFF (punches a hole; the file keeps its size). A missing file is fine. */
int store_punch(struct store *s, const struct digest *blob, uint64_t off, size_t len);

/* Removes BLOB's file and its checksum file. A missing file is fine. */
int store_remove(struct store *s, const struct digest *blob);

/* What store_reclaim() removed. */
struct store_reclaimed {
        uint64_t files, bytes; /* bytes: allocated on disk */
};

/* Removes the files of every blob for which KEEP(UD, digest) returns false — blobs the index
 * does not know, after a lost WAL or a moved-aside index — and checksum files whose blob file
 * is gone. Files not named by a digest are left alone. For start-up, before anything writes
 * to the store. 0 and *RET. */
int store_reclaim(struct store *s, bool (*keep)(void *ud, const struct digest *blob), void *ud,
                  struct store_reclaimed *ret);

/* Disk blocks the store's files occupy, checksum files included, in bytes (st_blocks * 512
 * summed). */
uint64_t store_allocated_bytes(struct store *s);

/* How much of the store's files sits in the page cache right now (mincore over windows). */
uint64_t store_page_cache_bytes(struct store *s);

/* The directory holding the chunk files (for messages). */
const char *store_dir(const struct store *s);
