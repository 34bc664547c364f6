/* Layer trees: the image layers registered on this node, their indexes, and reads of the files
 * inside them through the engine. FUSE-free: fs/layers.c shows them under
 * <mountpoint>/layers/sha256/<layer digest>/, the snapshotter registers the layers containerd
 * prepares, blobctl lists them through the control API.
 *
 * A layer is a blob the engine knows (engine_add) plus its index (layer/layer.h): the file
 * table and, for gzip, decompression checkpoints. The index is derived data, found in this
 * order: already in the store (the layers table in the node's SQLite index names its derived
 * blob), from a peer (ltree_peer_ops.locate_index names the derived blob; its bytes come
 * through the engine like any blob's and are checked against that digest before decoding), or
 * built by one streaming pass over the layer, in the background, then stored as a derived blob
 * (engine_put: under the budget, pinnable, served to peers) and published to the cluster.
 * A zstd layer's pass also stores the layer's seekable copy (a second derived blob, written
 * as the pass goes: engine_put_begin...); its files are read from the copy, never the layer.
 *
 * Reads of file bytes run on the tree's own bounded worker threads (inflating is CPU work and
 * the compressed chunks may come from the network): the caller is answered through a callback,
 * exactly once, so no FUSE thread sleeps. Inflated spans are kept in a bounded cache so small
 * reads do not inflate a span twice.
 *
 * Trust: every compressed byte read comes through the engine, verified as any blob's bytes are.
 * The index decides which bytes a file is; one built here is checked against the diff_id when it
 * is known; one from a peer is checked against the digest the cluster's directory gave for it
 * (not the sender's word), so a peer that lies about an index must also be a home. An index
 * loaded from its head alone (the split encoding) cannot be checked whole: its chunks, like
 * any peer chunk, are checked against digests from the homes (announced by the node that
 * built and verified it), the homes that also named its digest; so the trust is the same
 * homes', chunk by chunk. A window whose chunks cannot be fetched later (no node holds the
 * index any more) fails the read of that span with the engine's error. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layer/layer.h"
#include "util/digest.h"

struct engine;
struct index;
struct ltree;

enum ltree_state {
        LTREE_PENDING = 1, /* registered; the index is being looked for or built */
        LTREE_READY,       /* the index is loaded: the tree can be listed and read */
        LTREE_FAILED,      /* no index could be had: ltree_layer_info.error says why */
};

enum ltree_index_origin {
        LTREE_INDEX_NONE = 0,
        LTREE_INDEX_BUILT, /* this node ran the pass */
        LTREE_INDEX_LOCAL, /* loaded from this node's store (built or fetched earlier) */
        LTREE_INDEX_PEER,  /* fetched from a peer this time */
        LTREE_INDEX_TOC,   /* eStargz: the layer's own TOC, no pass */
};

/* How the tree reaches the cluster for indexes. Optional (NULL ops or NULL members: a node
 * alone always builds). Both may be called from the tree's worker threads. */
struct ltree_peer_ops {
        void *ud;
        /* Which derived blob holds the index of LAYER: 0 and *RET_INDEX and *RET_SIZE, -ENOENT
         * when no node published one, other -errno when nobody could be asked. Blocks, bounded
         * by DEADLINE_MS (now_ms() clock). */
        int (*locate_index)(void *ud, const struct digest *layer, uint64_t deadline_ms,
                            struct digest *ret_index, uint64_t *ret_size);
        /* This node holds INDEX (SIZE bytes), the index of LAYER: tell the cluster (and keep
         * telling it while the node holds it). Never blocks. */
        void (*publish_index)(void *ud, const struct digest *layer, const struct digest *index,
                              uint64_t size);
};

struct ltree_config {
        uint32_t span;           /* checkpoint span in compressed bytes; 0: LAYER_SPAN_DEFAULT */
        size_t span_cache_bytes; /* inflated spans kept in memory */
        uint32_t max_layers;
        unsigned workers;          /* threads that read files and build indexes */
        uint64_t index_timeout_ms; /* locating and fetching an index from peers */
};

struct ltree_layer_info {
        uint32_t id; /* 0 .. ltree_count()-1, never reused while the daemon runs */
        struct digest digest;
        enum ltree_state state;
        enum layer_format format; /* 0 until known */
        enum ltree_index_origin index_origin;
        struct digest index_digest; /* valid when READY (eStargz: the TOC's own digest) */
        uint64_t blob_size, tar_size;
        uint64_t files;
        uint64_t bytes_fetched; /* compressed bytes read through the engine for this layer */
        char error[200];        /* FAILED: why */
};

/* E and IX are borrowed and must outlive the tree; PEERS is copied (its UD must outlive the
 * tree). Loads the layers recorded in IX and starts their indexes. 0 or -errno. */
int ltree_new(const struct ltree_config *cfg, struct engine *e, struct index *ix,
              const struct ltree_peer_ops *peers, struct ltree **ret);

/* Stops the workers (reads still queued are answered -ECANCELED) and frees. Call before the
 * sources stop and the engine is freed (workers may wait on engine reads); after
 * engine_stop_fetching() is fine and makes those reads end at once. A layer whose index was
 * being looked for stays PENDING (unrecorded) for the next start. NULL-safe. */
void ltree_free(struct ltree *lt);

/* Registers layer REF ("registry/repository@sha256:hex") — registering the blob with the
 * engine if needed, blocking like engine_add() — and starts getting its index in the
 * background. DIFF_ID (sha256 of the uncompressed tar) and TOC_DIGEST (eStargz) may be NULL.
 * MEDIA_TYPE may be NULL or "": the format is then detected from the bytes. Persisted.
 * Idempotent. 0 and *RET; -EINVAL malformed input; -EPROTONOSUPPORT a media type that is not
 * a layer; -ENOSPC max_layers; engine_add()'s errors, with REASON. */
int ltree_add(struct ltree *lt, const char *ref, const struct digest *diff_id,
              const struct digest *toc_digest, const char *media_type, struct ltree_layer_info *ret,
              char *reason, size_t reason_len);

/* Waits up to WAIT_MS for layer D to leave PENDING. 0 and *RET when READY; -EAGAIN still
 * pending; -EIO failed (RET->error says why); -ENOENT unknown. */
int ltree_wait(struct ltree *lt, const struct digest *d, uint64_t wait_ms,
               struct ltree_layer_info *ret);

int ltree_find(struct ltree *lt, const struct digest *d, struct ltree_layer_info *ret);
int ltree_get(struct ltree *lt, uint32_t id, struct ltree_layer_info *ret);
uint32_t ltree_count(struct ltree *lt);

/* The index of READY layer ID, held until ltree_index_put(): the file table (layer_index_*)
 * for lookups, listings, attributes and xattrs. -ENOENT unknown, -EAGAIN not ready, -EIO
 * failed. Never blocks on the network. */
int ltree_index_get(struct ltree *lt, uint32_t id, const struct layer_index **ret);
void ltree_index_put(struct ltree *lt, uint32_t id);

/* For file FILE of READY layer ID: *RET_CANON the file whose inode it shares (itself, or the
 * target of a hard link) and *RET_NLINK that inode's names. Never blocks. 0, -ENOENT (unknown
 * layer or file), -EAGAIN, -EIO as ltree_index_get(). */
int ltree_file_inode(struct ltree *lt, uint32_t id, uint32_t file, uint32_t *ret_canon,
                     uint32_t *ret_nlink);

typedef void (*ltree_reply_fn)(void *ctx, int err, const void *buf, size_t len);

/* Reads up to LEN bytes at OFF of file FILE (an index into layer ID's file table: a regular
 * file or a hard link) and answers REPLY(CTX, ...) exactly once, with the bytes (short only at
 * the end of the file) or a -errno, from a worker thread or, when the bytes are cached, from
 * the caller's. LEN is at most 1 MiB. */
void ltree_read(struct ltree *lt, uint32_t id, uint32_t file, uint64_t off, size_t len,
                ltree_reply_fn reply, void *ctx);

struct ltree_stats {
        uint64_t layers, ready, pending, failed;
        uint64_t indexes_built, indexes_from_peers, indexes_local, index_failures;
        uint64_t reads, read_errors, bytes_read, bytes_fetched;
        uint64_t span_cache_bytes, span_cache_hits, span_cache_misses;
        uint64_t index_memory; /* bytes of the loaded indexes */
};
void ltree_get_stats(struct ltree *lt, struct ltree_stats *ret);
