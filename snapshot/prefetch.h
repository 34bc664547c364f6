/* Background prefetch of a started container's remote layers: a small bounded scheduler.
 *
 * The snapshotter queues the layers under a snapshot containerd mounts (prefetch_queue, never
 * blocks); one thread starts at most max_active of them at once through the ops (the engine's
 * engine_prefetch, which keeps a few chunks of a blob in flight and so never stands in front
 * of a reader's fetch for long) and polls them until they are held whole or stop. A layer is
 * skipped, never started, when it is larger than max_layer_bytes or than half the cache
 * budget (prefetching it would evict its own first chunks and the node's hot set); one that
 * would take the running layers together past half the budget waits for one of them to end
 * (prefetch_fits). Nothing is pinned: prefetched chunks are evictable like any others.
 * FUSE-free and engine-free: the ops say what a layer's blob is, so the logic is tested with
 * fakes. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "util/digest.h"

struct prefetcher;

/* What the ops report of one layer's blob. */
struct prefetch_probe {
        uint64_t size;    /* compressed bytes */
        uint64_t budget;  /* the cache budget in force now */
        bool held;        /* every chunk present already */
        bool unsupported; /* its bytes are not what reads use (a zstd layer's copy) */
        bool prefetching; /* a prefetch of it is running (ours or an operator's) */
        int prefetch_err; /* 0, or why the last prefetch stopped */
};

struct prefetch_ops {
        void *ud;
        /* What layer D's blob is now. 0 and *RET, or -errno (unknown: skipped). Must not block
         * on the network (called from the scheduler thread). */
        int (*probe)(void *ud, const struct digest *d, struct prefetch_probe *ret);
        /* Starts fetching layer D's missing chunks in the background. 0 or -errno (failed). */
        int (*start)(void *ud, const struct digest *d);
};

struct prefetch_config {
        unsigned max_active;      /* layers prefetching at once, >= 1 */
        uint64_t max_layer_bytes; /* a larger layer is skipped; 0: no cap but the budget's */
        unsigned queue_max;       /* layers waiting; past it a queued layer is skipped */
        uint64_t poll_ms;         /* how often running prefetches are looked at */
};

struct prefetch_stats {
        uint64_t queued;     /* layers accepted by prefetch_queue (each Mounts over them) */
        uint64_t started;    /* prefetches started */
        uint64_t prefetched; /* started and then held whole */
        uint64_t skipped;    /* too large, unsupported, unknown (once each), or queue full */
        uint64_t failed;     /* could not start, or stopped with an error */
        uint64_t active;     /* running now (a gauge) */
};

enum prefetch_verdict {
        PREFETCH_GO = 0,
        PREFETCH_HELD,        /* nothing to do: every chunk is here */
        PREFETCH_TOO_LARGE,   /* over max_layer_bytes */
        PREFETCH_OVER_BUDGET, /* over half the cache budget */
        PREFETCH_UNSUPPORTED,
};

/* What to do with a layer: pure. MAX_LAYER_BYTES 0: no cap. */
enum prefetch_verdict prefetch_decide(const struct prefetch_probe *p, uint64_t max_layer_bytes);
const char *prefetch_verdict_name(enum prefetch_verdict v);

/* Whether a layer of SIZE bytes (one prefetch_decide let go) may start beside running layers
 * of RUNNING_BYTES in all: together at most half of BUDGET, and always when nothing runs.
 * Pure. Otherwise it waits until one of them ends. */
bool prefetch_fits(uint64_t running_bytes, uint64_t size, uint64_t budget);

/* Starts the scheduler thread (CFG and OPS copied; OPS->ud must outlive it). 0 or -errno. */
int prefetch_new(const struct prefetch_config *cfg, const struct prefetch_ops *ops,
                 struct prefetcher **ret);

/* Queues layer D for prefetch. Never blocks (a mutex only). 0 queued; -EALREADY it is queued
 * or running already, or was skipped recently (not counted again); -ENOSPC the queue is full
 * (counted as skipped); -ESHUTDOWN stopping. */
int prefetch_queue(struct prefetcher *p, const struct digest *d);

void prefetch_get_stats(struct prefetcher *p, struct prefetch_stats *ret);

/* Stops the thread and frees. Prefetches already handed to the engine are not waited for
 * (engine_stop_fetching ends them). NULL-safe. */
void prefetch_free(struct prefetcher *p);
