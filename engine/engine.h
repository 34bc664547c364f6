/* The read engine: turns "read LEN bytes at OFF of blob B" into chunks served from the store or
 * fetched once from its sources (engine_source_ops), and answers through a callback. FUSE-free: fs/fuse.c adapts it
 * to the kernel, the control server and tests drive it directly.
 *
 * Guarantees:
 *  - a missing chunk is fetched once however many readers want it (single flight);
 *  - a read that must wait is queued on the chunks it needs and answered from the fetch
 *    completion; no thread sleeps on the network on its behalf; a read within the one chunk
 *    that landed may be answered from its buffer before the chunk is written (and so before
 *    it counts as present), never before the checks a chunk gets before it is served;
 *  - present chunks are pinned while being copied or awaited, so eviction never races a read;
 *  - the store holds at most the budget plus the pinned chunks: read ahead and not yet read
 *    (at most min(max_inflight, budget/4)), awaiting the verification hash (at most
 *    min(16, max_inflight, budget/4)), and being copied to readers this instant;
 *  - a blob is verified against its digest when its chunks have all passed through the hash
 *    (in order, as they land); a mismatch discards its chunks, and reads of it fail with EIO
 *    for verify_retry_ms before a refetch is tried. A blob no larger than one chunk is verified
 *    before any of its bytes are served.
 *
 * The reply callback is called exactly once per engine_read, from the calling thread (data
 * already present) or a completion worker. The buffer passed to it is valid during the call. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/store.h"
#include "index/index.h"
#include "util/chain.h"
#include "util/digest.h"

struct engine;

/* A chunk fetch's completion. 0 and a malloc'd BUF of exactly the LEN asked for (ownership
 * passes to the engine), or a -errno and a REASON for people (-ECANCELED: shutting down). CHK,
 * when not NULL, says what the source checked the bytes against (above); NULL: nothing. It
 * may run on any thread, even inside the fetch call itself, and must not block. */
typedef void (*engine_fetch_done_fn)(void *ctx, int err, const char *reason, uint8_t *buf,
                                     size_t len, const struct chunk_check *chk);

/* How the engine reaches its sources: everything it asks of the network goes through this
 * table, so the engine itself knows no peer, registry or HTTP client. The daemon (fs/sources.c)
 * wires it to the peer source (peers, then the origin) or, on a node alone, to the origin
 * client; unit tests wire it to a fake. UD is passed to every call. The table is copied by
 * engine_new(); what UD points to must outlive engine_stop_fetching() (fetch) and the last
 * engine_add() / engine_lookup() (lookup, blob_size).
 *
 * The engine calls FETCH without its lock, never after engine_stop_fetching() has begun, at
 * most max_inflight at once. LOOKUP and BLOB_SIZE block their caller (the control thread, the
 * mirror, the lookup resolver: never the read path). */
struct engine_source_ops {
        void *ud;
        /* Fetches chunk IDX (LEN bytes at OFF) of blob BLOB, SIZE bytes in all, whose origin is
         * SOURCE ("registry/repository"; copy it if needed), by DEADLINE_MS (now_ms() clock).
         * Calls DONE(CTX, ...) exactly once. Never blocks. Required. */
        void (*fetch)(void *ud, const struct digest *blob, uint64_t size, const char *source,
                      uint32_t idx, uint64_t off, size_t len, uint64_t deadline_ms,
                      engine_fetch_done_fn done, void *ctx);
        /* Optional. Fetches the N >= 2 consecutive chunks IDX .. IDX + N - 1 of BLOB (each
         * CHUNK_SIZE bytes at IDX * CHUNK_SIZE, the blob's last one shorter), as FETCH would
         * one by one, but coalesced where the source can (one ranged GET for the run): calls
         * DONE(CTXS[i], ...) exactly once for chunk IDX + i, each as soon as that chunk's bytes
         * are in and checked, so chunk i's readers never wait for chunk i + 1. The chunks may
         * complete in any order and each succeed or fail on its own (a source may split the
         * run). CTXS need not outlive the call. Never blocks. NULL: the engine calls FETCH
         * per chunk. */
        void (*fetch_run)(void *ud, const struct digest *blob, uint64_t size, const char *source,
                          uint32_t idx, unsigned n, uint32_t chunk_size, uint64_t deadline_ms,
                          engine_fetch_done_fn done, void *const *ctxs);
        /* Asks who else knows BLOB, a blob this node has never seen: its size and origin
         * (RET_SOURCE, SOURCE_LEN bytes), by DEADLINE_MS. 0; -ENOENT when nobody knows it;
         * other -errno when nobody could be asked. NULL: the node has nobody to ask (it runs
         * alone); engine_lookup() then answers -ENOENT and engine_add() asks BLOB_SIZE. */
        int (*lookup)(void *ud, const struct digest *blob, uint64_t deadline_ms, uint64_t *ret_size,
                      char *ret_source, size_t source_len);
        /* Asks the origin SOURCE for BLOB's size, by DEADLINE_MS. 0 and *RET_SIZE, or -errno
         * (-ENOENT: the origin does not have it) with REASON filled. Required. */
        int (*blob_size)(void *ud, const char *source, const struct digest *blob,
                         uint64_t deadline_ms, uint64_t *ret_size, char *reason, size_t reason_len);
};

struct engine_config {
        uint64_t cache_budget; /* bytes of present chunks */
        uint32_t chunk_size;
        unsigned readahead_chunks; /* max chunks fetched ahead of a sequential reader */
        unsigned max_inflight;     /* chunk fetches in flight, readahead included */
        unsigned workers;          /* completion threads */
        uint64_t fetch_timeout_ms; /* a chunk not fetched by then fails its readers (EIO) */
        uint64_t verify_retry_ms;  /* a blob that failed verification answers EIO this long */
        uint32_t max_blobs;
        size_t max_read; /* the largest read the caller will ask for */
        /* Peers (optional). ON_CHANGE is called whenever a blob is registered or one of its
         * chunks becomes present or absent — with the engine lock held, so it must only note
         * the digest and return (the announcer queues it). IDX is the chunk, UINT32_MAX for
         * the blob. */
        void (*on_change)(void *ud, const struct digest *blob, uint32_t idx);
        void *change_ud;
        /* Optional. Blob ID failed verification: drop every copy of its bytes in
         * [OFF, OFF + LEN) cached outside the engine (the kernel's page cache; LEN 0: to the
         * end). Called before any reader is answered with the failure, on a completion
         * worker without the engine lock, once per range that no read still pending in the
         * engine covers: the kernel keeps those pages locked until we answer, so dropping
         * them would wait for us (and they get the error, never cached bytes). May block
         * while the kernel drops pages; must not call back into the engine. */
        void (*on_invalidate)(void *ud, uint32_t id, uint64_t off, uint64_t len);
        void *invalidate_ud;
        /* Chunks that just landed kept in memory for reads straddling a chunk boundary
         * (engine/landed.c); 0: none. Costs up to that many chunks of memory. */
        unsigned landed_chunks;
};

struct engine_blob_info {
        uint32_t id;
        struct digest digest;
        uint64_t size;
        uint32_t chunks;
        uint32_t chunks_present;
        bool verified;
        bool pinned;      /* operator pin: evicted only when nothing else is left */
        bool prefetching; /* engine_prefetch() is fetching it */
        int prefetch_err; /* 0, or why the last prefetch stopped (-errno) */
        /* bytes of chunks fetched from peers or the origin that landed in the store since the
         * daemon started (readers', readahead's and prefetch's alike; never store hits) */
        uint64_t fetched_bytes;
        int64_t added_at;
        int64_t last_access; /* unix seconds, updated at most once a minute; 0 = never */
        char source[IDX_SOURCE_MAX];
};

struct engine_stats {
        uint64_t budget_bytes, effective_budget_bytes, used_bytes, pinned_bytes;
        uint64_t chunks_present, hits, misses, evicted_chunks;
        uint64_t inflight_chunks, readahead_chunks;
        uint64_t blobs, blobs_verified, blobs_complete, blobs_partial, blobs_pinned;
        uint64_t read_errors, verify_failures, store_full_events, lost_chunks;
        uint64_t corrupt_chunks; /* chunks whose bytes failed the store's checksum */
        /* the landed ring: bytes held now (copies under way included), the most ever, and
         * chunk parts served from it instead of the store */
        uint64_t landed_bytes, landed_peak_bytes, landed_hits;
        /* the verification frontier: chunks it hashed, and chunks it passed without hashing
         * because a source's chain check had covered them (util/chain.h) */
        uint64_t frontier_hashed_chunks, frontier_linked_chunks;
        /* chunks hashed as they landed, apart from the frontier: a plain digest for a chunk
         * out of order, or a verified blob's check of a refetch */
        uint64_t landing_hashed_chunks;
};

/* Per-open-file state the caller keeps for sequential detection; zero-initialise it. The
 * engine reads and writes it under its lock. */
struct engine_stream {
        uint64_t next_off;   /* where a sequential reader reads next */
        uint64_t run;        /* bytes read sequentially so far */
        uint64_t last_chunk; /* 1 + the chunk this stream last touched (0: none) */
};

typedef void (*engine_reply_fn)(void *ctx, int err, const void *buf, size_t len);

/* The engine borrows IX and STORE: they must outlive it. SRC is copied (see
 * engine_source_ops for how long its UD must live). Starts the workers. 0; -EINVAL (a bad
 * configuration, or SRC without fetch or blob_size); -ENOMEM; -errno. */
int engine_new(const struct engine_config *cfg, struct index *ix, struct store *store,
               const struct engine_source_ops *src, struct engine **ret);

/* Answers every pending read (EIO), joins the workers. Call after engine_stop_fetching() and
 * after the sources are stopped (every fetch they were given has completed), so no completion
 * arrives later. NULL-safe. */
void engine_free(struct engine *e);

/* Loads the blobs and present chunks from the index, checking each present chunk against the
 * store (lost ones are forgotten and will be refetched). 0 or -errno. */
int engine_load(struct engine *e);

/* Registers REF ("registry/repository@sha256:hex"): unless the blob is already known, asks
 * the sources' lookup (when there is one) and then the origin (blob_size) for its size,
 * blocking, bounded by the fetch timeout. 0 and *RET; -EINVAL for a
 * malformed reference; -ENOENT when the origin does not have it; -ENOSPC when max_blobs are
 * known; other -errno with REASON. */
int engine_add(struct engine *e, const char *ref, struct engine_blob_info *ret, char *reason,
               size_t reason_len);

/* Looks a blob up by digest / by id. 0 or -ENOENT. Never touches the network. */
int engine_find(struct engine *e, const struct digest *d, struct engine_blob_info *ret);
int engine_get(struct engine *e, uint32_t id, struct engine_blob_info *ret);

/* Number of known blobs; ids are 0 .. count-1 and never reused. */
uint32_t engine_blob_count(struct engine *e);

/* Reads LEN bytes at OFF of blob ID (short at end of blob; 0 bytes past it). STREAM may be
 * NULL (no readahead). */
void engine_read(struct engine *e, uint32_t id, uint64_t off, size_t len,
                 struct engine_stream *stream, engine_reply_fn reply, void *ctx);

void engine_get_stats(struct engine *e, struct engine_stats *ret);

/* Changes the budget; evicts down to it at once. */
void engine_set_budget(struct engine *e, uint64_t budget);

/* Operator pin: a pinned blob's chunks are evicted only when nothing unpinned is left.
 * Persisted. 0 or -ENOENT. */
int engine_pin(struct engine *e, const struct digest *d, bool pinned);

/* Drops the present chunks of blob D (NULL: of every blob) from the store, except those
 * being read this instant. Reports what it dropped. 0 or -ENOENT. */
int engine_evict(struct engine *e, const struct digest *d, uint64_t *ret_chunks,
                 uint64_t *ret_bytes);

/* The chunk fetches engine_prefetch() keeps in flight per blob (and within max_inflight):
 * callers that share the sources' connections size themselves by it. */
#define ENGINE_PREFETCH_WINDOW 8u

/* Starts fetching every missing chunk of blob D in the background, a few at a time; progress
 * shows in engine_find()'s chunks_present / prefetching / prefetch_err. 0; -ENOENT; -EFBIG
 * when the blob is larger than the effective budget (it could never be held whole). */
int engine_prefetch(struct engine *e, const struct digest *d, struct engine_blob_info *ret);

/* Serves LEN bytes at OFF of blob D to a peer from local chunks only: never fetches. A chunk
 * that is missing but being fetched by this node right now is waited for, up to WAIT_MS.
 * Blocks on disk reads and that wait (the peer server's threads, never the FUSE path).
 * 0 and the bytes in BUF; -ENOENT: unknown blob; -ERANGE: a chunk is not here (or did not
 * land in time); -EINVAL: beyond the end; -EIO. When the range is one whole chunk, *RET_SHA
 * gets its recorded sha256 and *RET_SHA_KNOWN says whether there is one. With BUF NULL it
 * only waits: 0 once the range is present (it may be evicted again before a copy). */
int engine_serve(struct engine *e, const struct digest *d, uint64_t off, size_t len,
                 uint64_t wait_ms, void *buf, struct digest *ret_sha, bool *ret_sha_known);

/* The size of blob D, for HEAD requests. 0 or -ENOENT. */
int engine_blob_size(struct engine *e, const struct digest *d, uint64_t *ret_size);

/* What this node holds of one blob, for announces (the peer layer copies it into its wire
 * format). PRESENT is a bitmap of NCHUNKS bits; SHA[i] is the recorded digest of chunk
 * SHA_IDX[i], NDIGESTS of them. */
struct engine_blob_snapshot {
        struct digest digest;
        uint64_t size;
        uint32_t nchunks;
        bool verified; /* the blob verified whole: its chunk digests are of verified bytes */
        char source[IDX_SOURCE_MAX];
        uint8_t *present; /* malloc'd, (nchunks + 7) / 8 + 1 bytes */
        uint32_t ndigests;
        uint32_t *sha_idx;  /* malloc'd */
        struct digest *sha; /* malloc'd */
        /* Chain values (util/chain.h) of present chunks, never the last one's (the blob
         * digest): CHAIN[i] is chunk CHAIN_IDX[i]'s, NCHAIN of them. */
        uint32_t nchain;
        uint32_t *chain_idx;  /* malloc'd */
        struct digest *chain; /* malloc'd */
};

/* What this node holds of blob ID: metadata, the present bitmap and the recorded digests of
 * present chunks in [SHA_FROM, SHA_TO]. The caller owns the five arrays (free() each); chain values over the same range.
 * 0 or -ENOENT / -ENOMEM. */
int engine_snapshot(struct engine *e, uint32_t id, uint32_t sha_from, uint32_t sha_to,
                    struct engine_blob_snapshot *ret);

/* Finds blob D, asking the sources' lookup (the peers' directory) when this node does not know it (blocking, at
 * most a couple of seconds; for FUSE lookups and the mirror, never the read path); a blob
 * found that way is registered here. A digest nobody knows is remembered for a moment so a
 * storm of lookups costs one query. 0 or -ENOENT. */
int engine_lookup(struct engine *e, const struct digest *d, struct engine_blob_info *ret);

/* Stores BUF (LEN bytes, whose sha256 must be D) as blob D from SOURCE ("registry/
 * repository"), registering it if needed: for small content-addressed objects the caller
 * already holds whole, such as manifests the mirror fetched, so peers can be served them like
 * any blob. Chunks present or being fetched are left alone. Blocks on disk writes. 0;
 * -EBADMSG (not D); -EFBIG (larger than a quarter of the budget); -ENOSPC; -errno. */
int engine_put(struct engine *e, const struct digest *d, const char *source, const void *buf,
               size_t len);

/* Shutdown: from now on no chunk fetch reaches the sources (new ones complete with
 * -ECANCELED at once), prefetches stop, and peers waiting in engine_serve give up. Call
 * before stopping the sources; reads still queued are answered by their fetches' completions
 * or by engine_free(). */
void engine_stop_fetching(struct engine *e);

/* Returns once every call of the change hook that had begun has returned (they all run under
 * the engine lock). For whoever retires the hook's target. */
void engine_barrier(struct engine *e);

struct engine_verify_result {
        uint32_t checked; /* present chunks re-hashed */
        uint32_t ok;
        uint32_t bad;     /* did not match their recorded digest: dropped, refetched on read */
        uint32_t lost;    /* recorded present but gone from disk: dropped */
        uint32_t unknown; /* no recorded digest to compare with */
};

/* Re-hashes the present chunks of blob D against the digests recorded when they arrived (or,
 * for a chunk that has none, its chain step: util/chain.h).
 * Blocks on disk reads (the control thread, never the read path). 0, -ENOENT, -errno. */
int engine_verify(struct engine *e, const struct digest *d, struct engine_verify_result *ret);

/* Streaming puts (engine/derived.c): a large derived blob, such as a zstd layer's seekable
 * copy, written in order by its producer and named by its digest only at the end, without the
 * blob ever being in memory whole.
 *
 * engine_put_begin() starts one for blobs from SOURCE ("registry/repository" of the layer it
 * derives from; may be NULL). WANT, when not NULL, is the digest the bytes must have; otherwise
 * the digest is whatever they hash to. 0 and *RET, or -ENOMEM. engine_put_write() appends LEN
 * bytes: 0, -EFBIG once the blob would pass a quarter of the effective budget (as engine_put),
 * -ENOSPC and other store errors; errors are sticky. engine_put_finish() checks the digest
 * (-EBADMSG: not WANT), registers the blob (verified) unless known, and stores its chunks as
 * engine_put does: under the budget (it may evict), announced like any chunk, chunks present
 * or being fetched left alone. 0 and *RET_DIGEST, *RET_SIZE (either may be NULL); -EINVAL for
 * an empty blob, -EBADMSG, -ENOSPC (max_blobs or the disk), -errno, and the first error of a
 * write. It frees P whatever it returns. engine_put_abort() drops P and what it staged
 * (NULL-safe).
 *
 * Nothing of the blob is visible (in the blob table, the index, to peers) before finish
 * succeeds. Meanwhile the bytes are staged in the store outside the budget (at most a quarter
 * of it per put); at finish they are copied to their place (written twice). All three block
 * on disk writes (a worker's thread, never the FUSE path); one stream is one thread's. */
struct engine_put_stream;
int engine_put_begin(struct engine *e, const char *source, const struct digest *want,
                     struct engine_put_stream **ret);
int engine_put_write(struct engine_put_stream *p, const void *buf, size_t len);
int engine_put_finish(struct engine_put_stream *p, struct digest *ret_digest, uint64_t *ret_size);
void engine_put_abort(struct engine_put_stream *p);

/* An adapter for producers that write through a callback of the shape
 * int (*)(void *ctx, const void *buf, size_t len) — layer_sink_fn, the layer pass's sink for a
 * zstd layer's seekable copy: zero-initialise one, set E and SOURCE, pass
 * engine_put_sink_write and a pointer to it. The stream is begun at the first write (a pass
 * that writes nothing, over a layer that is not zstd, begins none); afterwards PS is the
 * stream (NULL if none) for the caller to engine_put_finish() or engine_put_abort(). */
struct engine_put_sink {
        struct engine *e;
        const char *source;
        struct engine_put_stream *ps;
};
int engine_put_sink_write(void *ctx, const void *buf, size_t len);
