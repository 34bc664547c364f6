/* The containerd snapshotter's metadata in the node's index (tables of migrations 4 and 6).
 *
 * A snapshot is a key, a kind (view, active, committed), an optional committed parent, labels,
 * two timestamps and, once committed, its usage. Its numeric id names its directory under
 * <state-dir>/snapshots/<id>/ and never changes: a commit renames the key and keeps the id, so
 * the children of a committed snapshot keep pointing at the same directory.
 *
 * The rules are containerd's (snapshots/storage/bolt.go), enforced here inside one transaction
 * each, and reported as errnos the service maps to gRPC codes:
 *   -EEXIST   the key (or the commit's name) is taken            ALREADY_EXISTS
 *   -ENOENT   no such key (or parent)                             NOT_FOUND
 *   -EINVAL   the parent is not committed; an immutable field     INVALID_ARGUMENT
 *   -EBUSY    commit of a non-active snapshot; remove of a parent FAILED_PRECONDITION
 *   -EIO      SQLite failed (logged at debug level)
 *
 * It uses its own connection to index.db (the index's writer thread batches asynchronously;
 * these calls must be synchronous and transactional). idx_open must have migrated the file.
 * Thread-safety: every function may be called from any thread; calls are serialised. */
#pragma once
#include <stddef.h>
#include <stdint.h>

enum snap_kind { SNAP_VIEW = 1, SNAP_ACTIVE = 2, SNAP_COMMITTED = 3 }; /* the proto's values */

struct snap_label {
        char *name;
        char *value;
};

struct snap_info {
        int64_t id;
        char *key;
        char *parent; /* "" when none */
        enum snap_kind kind;
        int64_t created_ns, updated_ns; /* unix nanoseconds */
        int64_t usage_size, usage_inodes;
        /* A remote snapshot (committed, its tree a layer tree of the FUSE mount, its own dir
         * empty): the layer digest "sha256:<hex>" and the ref it was registered by; "" both for
         * every other snapshot. */
        char *remote_layer, *remote_ref;
        size_t nlabels;
        struct snap_label *labels; /* sorted by name, no empty values */
};

struct snapdb;

/* Opens PATH (an index.db idx_open has migrated). 0, -ENOMEM, -EIO, -EPROTO (no tables). */
int snapdb_open(const char *path, struct snapdb **ret);
void snapdb_close(struct snapdb *db); /* NULL-safe */

void snap_info_free(struct snap_info *info); /* NULL-safe */

/* Creates KEY of KIND (view or active) on PARENT ("" or NULL: none) with LABELS (labels with an
 * empty value are dropped). On success *RET_INFO is the new snapshot and *RET_PARENTS its chain
 * of ancestor ids, nearest first (*RET_NPARENTS of them; free() it). */
int snapdb_create(struct snapdb *db, enum snap_kind kind, const char *key, const char *parent,
                  const struct snap_label *labels, size_t nlabels, struct snap_info **ret_info,
                  int64_t **ret_parents, size_t *ret_nparents);

/* The snapshot KEY and (when RET_PARENTS is not NULL) its ancestor ids, as above. */
int snapdb_get(struct snapdb *db, const char *key, struct snap_info **ret_info,
               int64_t **ret_parents, size_t *ret_nparents);

/* Commits the active KEY as NAME, replacing its labels with LABELS and recording its usage.
 * The id is kept. */
int snapdb_commit(struct snapdb *db, const char *name, const char *key,
                  const struct snap_label *labels, size_t nlabels, int64_t usage_size,
                  int64_t usage_inodes);

/* As snapdb_commit (usage 0), and records the committed snapshot as remote: its tree is layer
 * LAYER ("sha256:<hex>", not empty) registered as REF. One transaction. */
int snapdb_commit_remote(struct snapdb *db, const char *name, const char *key,
                         const struct snap_label *labels, size_t nlabels, const char *layer,
                         const char *ref);

/* The layer of snapshot ID into BUF ("" when it is not remote, or unknown). 0, -EIO,
 * -ENAMETOOLONG. */
int snapdb_remote_layer(struct snapdb *db, int64_t id, char *buf, size_t cap);

/* Removes KEY (which must have no children); *RET_ID is the id whose directory is now free. */
int snapdb_remove(struct snapdb *db, const char *key, int64_t *ret_id);

/* Updates the labels of KEY as containerd's UpdateInfo does: with no PATHS every label is
 * replaced by LABELS; "labels" does the same; "labels.<name>" sets (or, when LABELS has no
 * value for it, deletes) one label; any other path is -EINVAL. Bumps the updated time.
 * *RET_INFO is the snapshot after the update. */
int snapdb_update(struct snapdb *db, const char *key, const struct snap_label *labels,
                  size_t nlabels, char *const *paths, size_t npaths, struct snap_info **ret_info);

/* Calls FN for every snapshot, in id order; a negative return from FN stops the walk and is
 * returned. INFO is valid during the call only. FN must not call back into DB. */
int snapdb_for_each(struct snapdb *db, int (*fn)(void *ud, const struct snap_info *info), void *ud);
