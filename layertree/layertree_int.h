/* The layer trees' private header (engine/engine_int.h's habit): the representation and the
 * functions one file defines and another calls, named lt_*. Shared by layertree/layertree.c
 * (lifecycle, the API), state.c (the per-layer state, rows, READY and FAILED), workers.c (the
 * worker threads: reads, index jobs, index completion) and build.c (finding a layer's index).
 * Not for other modules; the contract is layertree/layertree.h. */
#pragma once
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "index/index.h"
#include "layertree/layertree.h"

struct engine_stream;
struct idx_layers;
struct spancache;

#define DERIVED_SOURCE "p2pblobs.invalid/layer-index"
#define COPY_SOURCE "p2pblobs.invalid/layer-seekable" /* a zstd layer's seekable copy */
#define IO_MAX (1u << 20)                             /* one engine read; the engine's max_read */
#define READ_MAX (1u << 20)                           /* one ltree_read */
#define READ_QUEUE_MAX 65536                          /* reads waiting for a worker */
#define INDEX_BLOB_MAX (256u << 20) /* an encoded index from the store or a peer */
#define READERS_PER_WORKER 4
#define SPAN_BLOCK (128u << 10) /* the span cache's unit of inflated tar bytes */
/* How long after a layer is READY from its index's head alone the rest of the index blob is
 * fetched (engine_prefetch, in the background): after the container start that wanted the
 * layer (so its reads do not compete with 8 MiB of windows), soon enough that the node holds
 * the whole index, verified whole by the engine and served to peers, before the node that
 * built it may go away. */
#define INDEX_COMPLETE_DELAY_MS 10000

struct layer {
        uint32_t id;
        struct digest digest;
        char source[IDX_SOURCE_MAX];
        char media_type[IDX_MEDIA_TYPE_MAX];
        bool has_diff_id, has_toc;
        struct digest diff_id, toc_digest;
        int64_t added_at;
        uint32_t blob_id; /* the engine's; valid once blob_known */
        uint32_t data_id; /* the blob reads fetch from (the layer, or a zstd layer's seekable
                           * copy); set with ix */
        bool blob_known;
        uint64_t blob_size;

        /* lt->lock */
        enum ltree_state state;
        enum layer_format format;
        enum ltree_index_origin origin;
        bool has_index;
        struct digest index_digest;
        uint64_t index_size;
        char error[200];
        int error_code; /* FAILED: the -errno (recorded, so a start can retry transient ones) */
        bool queued;    /* an index job is queued or running */
        /* An index loaded from its head: when (now_ms()) the rest of the index blob is to be
         * fetched in the background; 0 when nothing is left to do. */
        uint64_t complete_at;
        uint32_t next_job;
        uint64_t row_seq;     /* rows copied for the database */
        uint64_t row_written; /* the newest of them written (lt->db_lock) */

        /* Set once when READY, immutable after. */
        struct layer_index *ix;
        uint32_t *canon;        /* file -> the file whose inode it shares */
        uint32_t *nlink;        /* file -> names of its inode (for canonical files) */
        uint32_t index_blob_id; /* the engine's id of the index blob, for an index loaded from
                                 * its head (its windows are read from it) */
        uint64_t tar_size, files;
        size_t memory;

        _Atomic uint64_t fetched;
};

struct read_job {
        uint32_t id, file;
        uint64_t off;
        size_t len;
        ltree_reply_fn reply;
        void *ctx;
        struct read_job *next;
};

struct worker;

struct fetch_ctx {
        struct ltree *lt;
        struct layer *l;
};

struct reader_slot {
        uint32_t id; /* layer; valid when r is set */
        struct layer_reader *r;
        struct fetch_ctx fc;
        uint64_t used; /* for LRU */
};

struct worker {
        struct ltree *lt;
        pthread_t thread;
        bool started;
        uint8_t *buf; /* READ_MAX */
        struct reader_slot slots[READERS_PER_WORKER];
        uint64_t tick;
};

struct ltree {
        struct ltree_config cfg;
        struct engine *e;
        struct index *ix;
        struct idx_layers *db;
        struct ltree_peer_ops peers;
        bool have_peers;
        struct spancache *spans;

        pthread_mutex_t db_lock; /* serialises row writes (taken without lock held) */
        pthread_mutex_t lock;    /* everything below, and the layers' fields marked so */
        pthread_cond_t work;     /* a job was queued, or stopping */
        pthread_cond_t changed;  /* a layer left PENDING */
        struct layer **layers;   /* cfg.max_layers slots */
        uint32_t n;
        struct read_job *rq_head, *rq_tail;
        size_t rq_len;
        uint32_t bq_head, bq_tail; /* index jobs: layer ids + 1 linked through next_job */
        unsigned builds_running, builds_max;
        bool stopping;
        struct ltree_stats st; /* layers/ready/... computed on demand */

        struct worker *workers;
};

/* state.c */

/* L's info as it is now (lt->lock held). */
void lt_info(const struct layer *l, struct ltree_layer_info *ret);

/* Records L's row as it is now. Called without lt->lock (it takes it, then lt->db_lock): a
 * FUSE thread never waits on SQLite. */
void lt_persist(struct ltree *lt, struct layer *l);

/* L could not get an index: FAILED, why recorded, waiters woken; while stopping (or on
 * -ECANCELED) it stays PENDING, unrecorded, for the next start. */
void lt_fail(struct ltree *lt, struct layer *l, int err, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* The engine id of the blob the reader of IX fetches from: L's own, or for zstd its seekable
 * copy, known here or (registered now) to the peers' directory. 0 or -ENOENT. */
int lt_data_blob(struct ltree *lt, const struct layer *l, const struct layer_index *ix,
                 uint32_t *ret_id);

/* L's index is IX (ours now), found through ORIGIN: READY, recorded, published. */
void lt_ready(struct ltree *lt, struct layer *l, struct layer_index *ix,
              enum ltree_index_origin origin, const struct digest *index_digest,
              uint64_t index_size);

/* workers.c */

/* A worker thread (ARG: its struct worker): reads first, then index jobs, then due index
 * completions, until lt->stopping. */
void *lt_worker_main(void *arg);

/* Queues L's index job unless one is queued or running (lt->lock held). */
void lt_queue_index(struct ltree *lt, struct layer *l);

/* Up to LEN bytes of blob BLOB_ID at OFF through the engine: the count (short only at the
 * end), or -errno. Blocks until the engine answers (bounded by its fetch timeout): workers
 * only. */
ssize_t lt_pread(struct ltree *lt, uint32_t blob_id, uint64_t off, void *buf, size_t len,
                 struct engine_stream *stream);

/* build.c */

/* The index job of layer L, on a worker (BUF: READ_MAX bytes of scratch): store, peers, TOC
 * or pass; ends with lt_ready() or lt_fail(). */
void lt_index_job(struct ltree *lt, struct layer *l, uint8_t *buf);
