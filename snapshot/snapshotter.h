/* The containerd proxy snapshotter: the daemon's third front end.
 *
 * Serves containerd.services.snapshots.v1.Snapshots on a unix socket, so containerd can use it
 * as `[proxy_plugins.p2pblobs] type = "snapshot" address = "<socket>"`. Snapshots are overlay
 * snapshots with containerd's overlayfs semantics: <state-dir>/snapshots/<id>/fs is a
 * snapshot's own tree (the upper dir while active), <id>/work its overlay work dir; an active
 * snapshot or view with no parent mounts as a bind of its fs dir, with parents as an overlay
 * whose lowerdirs are the parents' fs dirs, nearest first. Metadata lives in the node's index
 * (index/snapshots.h) and survives restarts.
 *
 * Lazy layers (once snapshotter_set_lazy() gave a layer server): a Prepare whose labels name a
 * layer (snapshot/lazy.h) registers it, waits a bounded time for its tree, then commits a
 * remote snapshot named by the chain id containerd targets and answers ALREADY_EXISTS, as
 * stargz-snapshotter does; containerd then skips the layer's download and unpack. A remote
 * snapshot's tree is the layer tree (<layers root>/sha256/<hex>), so overlays over it have
 * the layer trees as lowerdirs, reached through short per-snapshot symlinks (<id>/l/<n>) so
 * that an image of hundreds of layers fits containerd's one-page mount options once its
 * mount helper has made them relative. Any layer that cannot be served lazily gets the normal
 * snapshot it asked for: the lazy path never fails a pull.
 *
 * Container starts (a Prepare without layer labels, then Mounts, as containerd's task create
 * does): the snapshot's remote lowers may be prefetched whole in the background
 * (snapshotter_set_prefetch, snapshot/prefetch.h), and the bytes they fetch from peers and the
 * origin are counted for the snapshot (snapshotter_start_fetched).
 *
 * Threads: a Prepare that waits for a tree runs on a job thread of its own (grpc.c: a slow
 * method), so containerd's other requests are answered meanwhile; a daemon stopping waits for
 * it, at most the wait. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "snapshot/prefetch.h"

struct snapshotter;
struct lazy_layer;
struct snap_info;

/* What serves layer trees. Every member is called from gRPC threads. */
struct snapshotter_lazy {
        void *ud;
        /* Registers layer L and waits up to WAIT_MS for its tree. 0: the tree is ready (it
         * stays so while the daemon runs); -errno: the layer is not served lazily, REASON
         * says why (a normal snapshot follows). Blocks. */
        int (*serve)(void *ud, const struct lazy_layer *l, uint64_t wait_ms, char *reason,
                     size_t reason_len);
        /* Registers again, at start, the layer of a remote snapshot recorded earlier (REF as
         * serve got it, LAYER "sha256:<hex>"), so its tree comes back. 0 or -errno (logged). */
        int (*restore)(void *ud, const char *ref, const char *layer);
        /* The directory that holds sha256/<hex>/ trees: "<mountpoint>/layers". */
        const char *layers_root;
        /* Optional: the bytes of LAYER ("sha256:<hex>") fetched from peers and the origin
         * since the daemon started (a counter that only grows). 0 and *RET, or -errno (not
         * known: counted as 0). Never blocks on the network. */
        int (*layer_fetched)(void *ud, const char *layer, uint64_t *ret);
};

/* Opens the metadata in INDEX_PATH (migrated by idx_open), creates STATE_DIR/snapshots and
 * starts serving on SOCKET_PATH. 0 or -errno. */
int snapshotter_start(const char *state_dir, const char *index_path, const char *socket_path,
                      struct snapshotter **ret);

/* Turns lazy layers on (OPS copied; OPS->ud and layers_root must outlive SN) with Prepares
 * waiting up to WAIT_MS for a tree (0: lazy layers stay off), and re-registers the layers of
 * the remote snapshots recorded (blocking, like ltree_add). May be called once, any time after
 * start. */
void snapshotter_set_lazy(struct snapshotter *sn, const struct snapshotter_lazy *ops,
                          uint64_t wait_ms);

/* Turns background prefetch on: every Mounts of an active snapshot, and every View, whose
 * lowers include remote snapshots queues their layers (prefetch.h: CFG bounds it, OPS reach
 * the engine; OPS->ud must outlive SN). Off until called. Call once, after
 * snapshotter_set_lazy. 0 or -errno (prefetch_new's). */
int snapshotter_set_prefetch(struct snapshotter *sn, const struct prefetch_config *cfg,
                             const struct prefetch_ops *ops);

struct snapshotter_stats {
        uint64_t lazy_layers;           /* Prepares answered with a remote snapshot */
        uint64_t lazy_fallbacks;        /* layer Prepares that got a normal snapshot instead */
        uint64_t remote_mounts;         /* mounts handed out with at least one layer tree */
        uint64_t starts;                /* container (not layer) Prepares over a remote lower */
        struct prefetch_stats prefetch; /* zeros while prefetch is off */
};
void snapshotter_get_stats(struct snapshotter *sn, struct snapshotter_stats *ret);

/* Calls FN for every snapshot in id order (INFO valid during the call; FN must not call into
 * SN). A negative return from FN stops the walk and is returned. */
int snapshotter_for_each(struct snapshotter *sn, int (*fn)(void *ud, const struct snap_info *info),
                         void *ud);

/* Bytes fetched per container start, for active snapshot KEY: the sum, over its remote
 * lowers, of what each layer fetched from peers and the origin (layer_fetched) since KEY's
 * Prepare. Counted per layer and summed: a layer under two containers started together counts
 * its fetches for both (the kernel's reads through overlayfs name no container), and prefetch
 * counts too. In the daemon a layer's figure is the bytes of its blob's chunks that landed
 * from the network (engine_blob_info.fetched_bytes): store hits and local lowers count
 * nothing, a chunk evicted and fetched again counts twice, a request abandoned or retried
 * counts once (what landed, not what was sent), and a zstd layer's seekable copy is not
 * counted (fs/snap_lazy.c). For a snapshot prepared before this daemon started (or beyond the
 * SNAPSHOTTER_STARTS_MAX most recent Prepares) the count runs from the daemon's start, and
 * SINCE_PREPARE is false. Blocks on the metadata only. 0; -ENOENT; -EINVAL not active. */
#define SNAPSHOTTER_STARTS_MAX 1024
struct snapshotter_start {
        uint64_t fetched_bytes;
        uint32_t remote_lowers;
        bool since_prepare;
};
int snapshotter_start_fetched(struct snapshotter *sn, const char *key,
                              struct snapshotter_start *ret);

/* Stops serving (in-flight requests finish first) and closes. NULL-safe. */
void snapshotter_stop(struct snapshotter *sn);
