/* The snapshotter's private header: its state, shared by the files that split its work
 * (snapshotter.c: the gRPC methods and lifecycle; dirs.c: the snapshot directories; mounts.c:
 * the mounts a snapshot answers with; starts.c: container starts, prefetch and the bytes each
 * start fetched). Nothing outside snapshot/ includes it. */
#ifndef P2PBLOBS_SNAPSHOT_SNAP_INT_H
#define P2PBLOBS_SNAPSHOT_SNAP_INT_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "index/snapshots.h"
#include "snapshot/grpc.h"
#include "snapshot/prefetch.h"
#include "snapshot/snapshotter.h"
#include "snapshots.pb-c.h"

#define PB(x) Containerd__Services__Snapshots__V1__##x
#define pb(x) containerd__services__snapshots__v1__##x
#define MAX_LAYERS 512 /* lowerdirs in one mount; containerd's own limit is the page size */

struct snapshotter {
        struct snapdb *db;
        char root[PATH_MAX - 64]; /* <state-dir>/snapshots; room for "/<id>/work" */
        struct grpc_server *srv;

        pthread_mutex_t lazy_lock;    /* protects lazy and lazy_wait_ms */
        struct snapshotter_lazy lazy; /* serve NULL: lazy layers off */
        uint64_t lazy_wait_ms;
        atomic_uint_fast64_t lazy_layers, lazy_fallbacks, remote_mounts, starts_counted;
        /* Set once by snapshotter_set_prefetch before containers start; read by gRPC threads
         * (an acquire load), freed by snapshotter_stop after the server stopped. */
        struct prefetcher *_Atomic prefetch;

        /* What the remote lowers of recent Prepares had fetched then, by snapshot id, in
         * Prepare order (a ring). (start_lock) */
        pthread_mutex_t start_lock;
        struct start_rec {
                int64_t id;
                uint64_t base;
        } starts[SNAPSHOTTER_STARTS_MAX];
        unsigned starts_head, starts_len;
};

/* ---- dirs.c: <root>/<id>/{fs,work,l} ---- */

/* <root>/<ID>[/SUB] into OUT. */
void snap_path(const struct snapshotter *sn, int64_t id, const char *sub, char *out, size_t cap);
/* rm -rf PATH without following symlinks or crossing mounts. 0 or -errno of the first
 * failure (it goes on with the rest). */
int snap_remove_tree(const char *path);
/* Disk usage of PATH: bytes in 512-byte blocks and count of distinct inodes (a hard link
 * counts once). */
int snap_disk_usage(const char *path, int64_t *ret_size, int64_t *ret_inodes);
/* The directories of snapshot ID of KIND (a leftover of the same id is removed first). */
int snap_make_dirs(const struct snapshotter *sn, int64_t id, enum snap_kind kind);

/* ---- mounts.c ---- */

/* The mount of a snapshot, and the storage it points into. */
struct mount_pb {
        Containerd__Types__Mount m;
        Containerd__Types__Mount *ptr;
        char *opts[3];
        char source[PATH_MAX];
        char work[PATH_MAX + 16], upper[PATH_MAX + 16];
        char *lower;
};

/* The mount of snapshot INFO over PARENTS (nearest first) into OUT: a bind mount for one
 * layer, an overlay otherwise; a remote parent's lowerdir is a symlink to its layer tree.
 * snap_mount_done() frees what it holds. -E2BIG past MAX_LAYERS, -ENOTCONN for a remote parent
 * without layer trees. */
int snap_mount_for(struct snapshotter *sn, const struct snap_info *info, const int64_t *parents,
                   size_t nparents, struct mount_pb *out);
void snap_mount_done(struct mount_pb *m);

/* ---- starts.c ---- */

/* A container is about to run over PARENTS: prefetch their remote layers, when on. */
void snap_maybe_prefetch(struct snapshotter *sn, const int64_t *parents, size_t nparents);
/* Records what the remote lowers of the just-prepared snapshot ID have fetched so far. */
void snap_record_start(struct snapshotter *sn, int64_t id, const int64_t *parents, size_t nparents);
/* Drops snapshot ID's record (it was removed). */
void snap_forget_start(struct snapshotter *sn, int64_t id);

#endif
