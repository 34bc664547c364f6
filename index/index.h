/* The node's index in SQLite: which blobs it knows and which of their chunks are on disk.
 *
 * One database, <state-dir>/index.db, in WAL mode. All SQL of the project lives in index/.
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
#include <stddef.h>
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

/* A peer as last persisted by the membership (peer/members.c), for blobctl with the daemon
 * down. The index does not interpret the text fields; it keeps what it is given. */
#define IDX_PEER_ID_MAX 64                 /* same as PEER_ID_MAX: "[v6]:port" */
#define IDX_LOCATION_BITMAP_MAX (1u << 19) /* 4 Mi chunks, one bit each */

struct idx_peer {
        char id[IDX_PEER_ID_MAX]; /* "addr:port" */
        char state[8];            /* "up", "down" */
        char locality[16];        /* "self", "on-link", "routed", "unknown" */
        uint64_t latency_us;      /* 0 = not measured */
        uint64_t failures;
        uint64_t bytes_from; /* chunk bytes fetched from it */
        uint64_t bytes_to;   /* chunk bytes served to it */
        int64_t last_seen;   /* unix seconds of the last success; 0 = never */
};

/* Opens or creates the database at PATH, applies migrations, checks every page
 * (quick_check), starts the writer thread. 0 or -errno: -EBADMSG when the file is damaged or
 * not a database at all (see idx_move_aside), -EIO with a logged SQLite message for other
 * database errors. */
int idx_open(const char *path, struct index **ret);

/* Renames the database at PATH (closed), and its -wal and -shm when present, to
 * "PATH.corrupt-NOW" (and "...-wal", "...-shm", so SQLite opens them together), kept for
 * inspection; *RET_PATH (LEN bytes) gets the new name. 0 or -errno. */
int idx_move_aside(const char *path, int64_t now, char *ret_path, size_t len);

/* Opens an existing database read-only (no writer thread; write calls are no-ops), for blobctl
 * when the daemon is down. */
int idx_open_readonly(const char *path, struct index **ret);

/* Commits every queued write, stops the writer, closes. NULL-safe. */
void idx_close(struct index *ix);

/* Calls FN for every blob; a negative return from FN stops the walk and is returned. */
int idx_for_each_blob(struct index *ix, int (*fn)(void *ud, const struct idx_blob *b), void *ud);

/* Calls FN for every recorded chunk (present or not), ordered by blob then index. SHA is NULL
 * when the chunk's digest is not known, CHAIN when its chain value is not. */
int idx_for_each_chunk(struct index *ix,
                       int (*fn)(void *ud, const struct digest *blob, uint32_t idx, bool present,
                                 const struct digest *sha, const struct digest *chain),
                       void *ud);

/* Queued writes. Applied in order. */
void idx_put_blob(struct index *ix, const struct idx_blob *b);
void idx_chunk_present(struct index *ix, const struct digest *blob, uint32_t idx,
                       const struct digest *sha);
/* Records chunk IDX's chain value (util/chain.h), with or without its bytes. */
void idx_chunk_chain(struct index *ix, const struct digest *blob, uint32_t idx,
                     const struct digest *chain);
void idx_chunk_absent(struct index *ix, const struct digest *blob, uint32_t idx);
/* Forgets every chunk of BLOB, digests included (the blob failed verification). */
void idx_blob_forget_chunks(struct index *ix, const struct digest *blob);
void idx_blob_verified(struct index *ix, const struct digest *blob, bool verified);
void idx_blob_pinned(struct index *ix, const struct digest *blob, bool pinned);
void idx_blob_accessed(struct index *ix, const struct digest *blob, int64_t when);

/* Replaces the whole peers table with V[0..N) (queued; V is copied). 0, or -ENOMEM. */
int idx_put_peers(struct index *ix, const struct idx_peer *v, size_t n);

/* Records that PEER holds the chunks of BLOB set in the bitmap PRESENT (NBYTES bytes, at most
 * IDX_LOCATION_BITMAP_MAX) until EXPIRES_AT (unix seconds), replacing what was recorded for
 * that pair (queued; PRESENT is copied). 0, -EINVAL (id too long, bitmap too large), -ENOMEM. */
int idx_put_location(struct index *ix, const struct digest *blob, const char *peer,
                     const uint8_t *present, size_t nbytes, int64_t expires_at);
/* Deletes every location whose expiry is at or before NOW (queued). */
void idx_expire_locations(struct index *ix, int64_t now);

/* Calls FN for every persisted peer, ordered by id; a negative return from FN stops the walk
 * and is returned. 0 or -EIO. */
int idx_for_each_peer(struct index *ix, int (*fn)(void *ud, const struct idx_peer *p), void *ud);

/* Calls FN for every location of BLOB, ordered by peer, expired ones included (compare
 * EXPIRES_AT with the clock). PRESENT is valid during the call only. As above. */
int idx_for_each_location(struct index *ix, const struct digest *blob,
                          int (*fn)(void *ud, const char *peer, const uint8_t *present,
                                    size_t nbytes, int64_t expires_at),
                          void *ud);

/* Reads the recorded sha256 of every chunk of BLOB into DIGESTS (NCHUNKS entries) and sets
 * KNOWN[i] for those recorded. Reads the committed state (call idx_flush() first to include
 * queued writes). 0 or -EIO. */
int idx_chunk_digests(struct index *ix, const struct digest *blob, uint32_t nchunks,
                      struct digest *digests, bool *known);

/* Waits until everything queued before the call is committed. 0, or -EIO if a batch failed. */
int idx_flush(struct index *ix);

/* The database file's path, for modules with a connection of their own (index/layers.c). */
const char *idx_db_path(const struct index *ix);
/* Opened with idx_open_readonly(). */
bool idx_is_readonly(const struct index *ix);

/* Writes that failed (disk full, I/O error) since open: they are logged and counted, the
 * in-memory state stays right, and start-up validation repairs the index. */
uint64_t idx_write_errors(struct index *ix);
