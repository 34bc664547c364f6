/* The node's index in SQLite: which blobs it knows and which of their chunks are on disk.
 *
 * One database, <state-dir>/index.db, in WAL mode. All SQL of the project lives in index.c.
 * Writes are queued and applied by one writer thread in batched transactions (a chunk landing
 * costs a queue push, not an fsync); readers use their own connection. The in-memory state of
 * the engine is the truth while the daemon runs; the index is what survives a restart, and it
 * errs on the safe side: a chunk is recorded present only after its bytes are on disk, and
 * start-up checks present chunks against the disk anyway.
 *
 * Thread-safety: every function may be called from any thread. Queue pushes block only when
 * the bounded write queue is full (back-pressure on a disk that cannot keep up). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "util/digest.h"

#define IDX_SOURCE_MAX 512
#define IDX_MEDIA_TYPE_MAX 128

struct index;

struct idx_blob {
        struct digest digest;
        uint64_t size;
        uint32_t chunk_size;
        char source[IDX_SOURCE_MAX];         /* "registry/repository" */
        char media_type[IDX_MEDIA_TYPE_MAX]; /* "" when unknown */
        bool verified;                       /* whole-blob sha256 matched its digest */
        bool pinned;                         /* the operator asked to keep it (evicted last) */
        int64_t added_at;                    /* unix seconds */
        int64_t last_access;                 /* unix seconds of the last read; 0 = never */
};

/* Opens or creates the database at PATH, applies migrations, starts the writer thread.
 * 0 or -errno (-EIO with a logged SQLite message for database errors). */
int idx_open(const char *path, struct index **ret);

/* Opens an existing database read-only (no writer thread; write calls are no-ops), for blobctl
 * when the daemon is down. */
int idx_open_readonly(const char *path, struct index **ret);

/* Commits every queued write, stops the writer, closes. NULL-safe. */
void idx_close(struct index *ix);

/* Calls FN for every blob; a negative return from FN stops the walk and is returned. */
int idx_for_each_blob(struct index *ix, int (*fn)(void *ud, const struct idx_blob *b), void *ud);

/* Calls FN for every recorded chunk (present or not), ordered by blob then index. SHA is NULL
 * when the chunk's digest is not known. */
int idx_for_each_chunk(struct index *ix,
                       int (*fn)(void *ud, const struct digest *blob, uint32_t idx, bool present,
                                 const struct digest *sha),
                       void *ud);

/* Queued writes. Applied in order. */
void idx_put_blob(struct index *ix, const struct idx_blob *b);
void idx_chunk_present(struct index *ix, const struct digest *blob, uint32_t idx,
                       const struct digest *sha);
void idx_chunk_absent(struct index *ix, const struct digest *blob, uint32_t idx);
/* Forgets every chunk of BLOB, digests included (the blob failed verification). */
void idx_blob_forget_chunks(struct index *ix, const struct digest *blob);
void idx_blob_verified(struct index *ix, const struct digest *blob, bool verified);
void idx_blob_pinned(struct index *ix, const struct digest *blob, bool pinned);
void idx_blob_accessed(struct index *ix, const struct digest *blob, int64_t when);

/* Reads the recorded sha256 of every chunk of BLOB into DIGESTS (NCHUNKS entries) and sets
 * KNOWN[i] for those recorded. Reads the committed state (call idx_flush() first to include
 * queued writes). 0 or -EIO. */
int idx_chunk_digests(struct index *ix, const struct digest *blob, uint32_t nchunks,
                      struct digest *digests, bool *known);

/* Waits until everything queued before the call is committed. 0, or -EIO if a batch failed. */
int idx_flush(struct index *ix);

/* Writes that failed (disk full, I/O error) since open: they are logged and counted, the
 * in-memory state stays right, and start-up validation repairs the index. */
uint64_t idx_write_errors(struct index *ix);
