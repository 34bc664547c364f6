/* The index's private header (engine/engine_int.h's habit): the structures its files share and
 * the functions one file defines and another calls, named ix_*. Shared by index/index.c (open,
 * close, the connections), schema.c (the migrations), writer.c (the write queue and its
 * thread) and query.c (the reads). Outside index/ only tests/unit/test_index.c includes it, to
 * watch the queue fill; the contract is index/index.h.
 *
 * Locks: ix->lock (the write queue) and ix->rlock (the reader connection) are never held
 * together. */
#pragma once
#include "index/index.h"

#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WRITE_QUEUE_MAX 16384
#define WRITE_BATCH 2048

enum op_kind {
        OP_PUT_BLOB,
        OP_CHUNK_PRESENT,
        OP_CHUNK_CHAIN,
        OP_CHUNK_ABSENT,
        OP_FORGET_CHUNKS,
        OP_VERIFIED,
        OP_PINNED,
        OP_ACCESSED,
        OP_PUT_PEERS,
        OP_PUT_LOCATION,
        OP_EXPIRE_LOCATIONS,
};

/* OP_PUT_LOCATION's payload: one allocation, the bitmap after the header. */
struct location_op {
        char peer[IDX_PEER_ID_MAX];
        size_t nbytes;
        uint8_t present[];
};

struct op {
        enum op_kind kind;
        struct digest blob;
        uint32_t idx;
        bool flag;
        int64_t when;
        bool has_sha;
        struct digest sha;
        struct idx_blob *b;     /* OP_PUT_BLOB only; owned by the op */
        struct idx_peer *peers; /* OP_PUT_PEERS only (npeers); owned by the op */
        size_t npeers;
        struct location_op *loc; /* OP_PUT_LOCATION only; owned by the op */
};

enum stmt_id {
        ST_PUT_BLOB,
        ST_CHUNK_PRESENT,
        ST_CHUNK_CHAIN,
        ST_CHUNK_ABSENT,
        ST_FORGET_CHUNKS,
        ST_VERIFIED,
        ST_PINNED,
        ST_ACCESSED,
        ST_DELETE_PEERS,
        ST_PUT_PEER,
        ST_PUT_LOCATION,
        ST_EXPIRE_LOCATIONS,
        ST_MAX,
};

struct index {
        sqlite3 *wdb; /* writer connection: writer thread only (and open/close) */
        sqlite3 *rdb; /* reader connection: serialised by rlock */
        pthread_mutex_t rlock;
        sqlite3_stmt *stmt[ST_MAX];
        bool readonly;
        char path[PATH_MAX]; /* for modules with a connection of their own (index/layers.c) */

        pthread_mutex_t lock; /* protects everything below */
        pthread_cond_t not_empty, not_full, committed;
        struct op *ring; /* WRITE_QUEUE_MAX ops */
        size_t head, count;
        uint64_t pushed, done; /* sequence numbers: ops pushed / ops committed */
        uint64_t write_errors;
        bool stopping;
        pthread_t writer;
};

/* index.c */

/* Logs SQLite's error on DB (NULL: it could not be allocated) for WHAT; returns -EIO. */
int ix_db_error(sqlite3 *db, const char *what);

/* schema.c */

/* The number of migrations this program knows: the schema version it writes. */
extern const int ix_n_migrations;

/* The schema version recorded in DB (0 for a new database), or -EIO. */
int ix_schema_version(sqlite3 *db);

/* Brings DB to ix_n_migrations, each migration in its own transaction. 0, -EPROTO when DB is
 * newer than this program, -EIO. */
int ix_migrate(sqlite3 *db);

/* writer.c */

/* Prepares the writer's statements on ix->wdb. 0 or -EIO. */
int ix_prepare_writes(struct index *ix);

/* The writer thread (ARG: the index): drains the queue in batches of WRITE_BATCH ops, one
 * transaction each, until ix->stopping and the queue is empty. */
void *ix_writer_main(void *arg);

/* Binds digest D as hex (digest_to_hex, the form every table stores) to column COL of ST;
 * query.c's reads use it too. */
void ix_bind_digest_hex(sqlite3_stmt *st, int col, const struct digest *d);

/* query.c: the idx_chunk_digests and idx_for_each_* of index.h; nothing private. */
