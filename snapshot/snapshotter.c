/* The containerd proxy snapshotter. See snapshotter.h for the contract.
 *
 * Each method is: unpack the request (protobuf-c), one call into the metadata store (one
 * transaction there, so the checks containerd makes and the write they guard are atomic), the
 * directory work, pack the response. The metadata decides; directories follow it. A Prepare
 * whose mkdir fails undoes its row; a crash between a Remove's row and its rm leaves a
 * directory no row owns, which Cleanup removes, as containerd's overlay snapshotter does (and
 * ids are never reused, so such a directory is never adopted).
 *
 * Mount semantics are containerd's overlay snapshotter's, so an image unpacked here looks the
 * same as with the stock one. Usage of an active snapshot is computed by walking its fs dir
 * (blocks of distinct inodes, as continuity's DiskUsage), and is recorded at Commit.
 *
 * Lazy layers follow stargz-snapshotter's protocol with containerd's unpacker: the Prepare of
 * a layer first creates the active snapshot it asked for (so a fallback is just answering its
 * mounts), then, when the layer's tree is ready, commits that active snapshot under the target
 * chain id as a remote snapshot (same id, an empty fs dir, a row in snapshot_remote naming the
 * layer) and answers ALREADY_EXISTS; the unpacker then finds the chain id with Stat and moves
 * on, and containerd's metadata finds it with a Walk on the snapshot.ref label and the parent.
 * A remote parent's lowerdir is <id>/l/<n>, a symlink to the layer tree made at mount time
 * (overlayfs resolves the path when it mounts); a local parent's is its fs dir, as before.
 *
 * Container starts: a Prepare that is not a layer's records, in a small table (starts, at most
 * SNAPSHOTTER_STARTS_MAX, the oldest dropped first), what its remote lowers had fetched so
 * far; snapshotter_start_fetched subtracts that from what they have fetched now. A Mounts of
 * an active snapshot (task create) or a View over remote lowers queues those layers for the
 * prefetcher when it is on; queueing never blocks the answer. */
#include "snapshot/snapshotter.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fts.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "google/protobuf/empty.pb-c.h"
#include "index/snapshots.h"
#include "snapshot/filter.h"
#include "snapshot/grpc.h"
#include "snapshot/lazy.h"
#include "snapshots.pb-c.h"
#include "util/log.h"

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

#define REMOTE_LABEL_VALUE "remote snapshot" /* stargz's value, so tools that look for it agree */

/* ---- errors ---- */

static void fail(struct grpc_resp *resp, int r, const char *op, const char *key) {
        switch (r) {
        case -EEXIST:
                grpc_resp_error(resp, GRPC_ALREADY_EXISTS, "%s snapshot %s: already exists", op,
                                key);
                break;
        case -ENOENT:
                grpc_resp_error(resp, GRPC_NOT_FOUND, "%s snapshot %s: not found", op, key);
                break;
        case -EINVAL:
                grpc_resp_error(resp, GRPC_INVALID_ARGUMENT, "%s snapshot %s: invalid argument", op,
                                key);
                break;
        case -EBUSY:
                grpc_resp_error(resp, GRPC_FAILED_PRECONDITION,
                                "cannot %s snapshot %s: %s: failed precondition", op, key,
                                strcmp(op, "remove") == 0  ? "it has children"
                                : strcmp(op, "mount") == 0 ? "committed"
                                                           : "not active");
                break;
        default:
                grpc_resp_error(resp, GRPC_UNKNOWN, "%s snapshot %s: %s", op, key, strerror(-r));
        }
}

/* ---- directories ---- */

static void snap_path(const struct snapshotter *sn, int64_t id, const char *sub, char *out,
                      size_t cap) {
        snprintf(out, cap, "%s/%" PRId64 "%s%s", sn->root, id, sub ? "/" : "", sub ? sub : "");
}

/* rm -rf PATH without following symlinks or crossing mounts. 0 or -errno of the first
 * failure (it goes on with the rest). */
static int remove_tree(const char *path) {
        char *argv[] = {(char *)path, NULL};
        FTS *fts = fts_open(argv, FTS_PHYSICAL | FTS_NOCHDIR | FTS_XDEV, NULL);
        if (!fts)
                return -errno;
        int r = 0;
        FTSENT *e;
        while ((e = fts_read(fts))) {
                int rc = 0;
                switch (e->fts_info) {
                case FTS_D:
                        break;
                case FTS_DP:
                        rc = rmdir(e->fts_accpath);
                        break;
                case FTS_DNR:
                case FTS_ERR:
                case FTS_NS:
                        if (e->fts_errno != ENOENT && r == 0)
                                r = -e->fts_errno;
                        break;
                default:
                        rc = unlink(e->fts_accpath);
                }
                if (rc < 0 && errno != ENOENT && r == 0)
                        r = -errno;
        }
        fts_close(fts);
        return r;
}

struct inode_key {
        dev_t dev;
        ino_t ino;
};

/* Disk usage of PATH: 512-byte blocks and count of distinct inodes (a hard link counts once). */
static int disk_usage(const char *path, int64_t *ret_size, int64_t *ret_inodes) {
        char *argv[] = {(char *)path, NULL};
        FTS *fts = fts_open(argv, FTS_PHYSICAL | FTS_NOCHDIR | FTS_XDEV, NULL);
        if (!fts)
                return -errno;
        int64_t size = 0, inodes = 0;
        struct inode_key *seen = NULL;
        size_t nseen = 0, cap = 0;
        int r = 0;
        FTSENT *e;
        while (r == 0 && (e = fts_read(fts))) {
                if (e->fts_info == FTS_DP)
                        continue;
                if (e->fts_info == FTS_NS || e->fts_info == FTS_ERR || !e->fts_statp)
                        continue;
                const struct stat *st = e->fts_statp;
                if (st->st_nlink > 1 && !S_ISDIR(st->st_mode)) {
                        bool dup = false;
                        for (size_t i = 0; i < nseen && !dup; i++)
                                dup = seen[i].dev == st->st_dev && seen[i].ino == st->st_ino;
                        if (dup)
                                continue;
                        if (nseen == cap) {
                                size_t ncap = cap ? cap * 2 : 64;
                                struct inode_key *ns = realloc(seen, ncap * sizeof(*ns));
                                if (!ns) {
                                        r = -ENOMEM;
                                        break;
                                }
                                seen = ns;
                                cap = ncap;
                        }
                        seen[nseen++] = (struct inode_key){st->st_dev, st->st_ino};
                }
                inodes++;
                size += (int64_t)st->st_blocks * 512;
        }
        fts_close(fts);
        free(seen);
        if (r < 0)
                return r;
        *ret_size = size;
        *ret_inodes = inodes;
        return 0;
}

static int make_dirs(const struct snapshotter *sn, int64_t id, enum snap_kind kind) {
        char p[PATH_MAX];
        snap_path(sn, id, NULL, p, sizeof(p));
        if (mkdir(p, 0700) < 0) {
                if (errno != EEXIST)
                        return -errno;
                /* A directory of this id without metadata: left by a database reset. */
                remove_tree(p);
                if (mkdir(p, 0700) < 0)
                        return -errno;
        }
        snap_path(sn, id, "fs", p, sizeof(p));
        /* 0755 whatever the umask: the root of a container's filesystem. */
        if (mkdir(p, 0755) < 0 || chmod(p, 0755) < 0)
                return -errno;
        if (kind == SNAP_ACTIVE) {
                snap_path(sn, id, "work", p, sizeof(p));
                if (mkdir(p, 0711) < 0)
                        return -errno;
        }
        return 0;
}

/* ---- messages ---- */

struct labels_in {
        struct snap_label *v;
        size_t n;
};

/* The labels of a request, pointing into the message (which must outlive them). */
#define LABELS_IN(msg, out)                                                                        \
        do {                                                                                       \
                (out)->n = (msg)->n_labels;                                                        \
                (out)->v = (out)->n ? calloc((out)->n, sizeof(*(out)->v)) : NULL;                  \
                for (size_t i_ = 0; (out)->v && i_ < (out)->n; i_++) {                             \
                        (out)->v[i_].name = (msg)->labels[i_]->key;                                \
                        (out)->v[i_].value = (msg)->labels[i_]->value;                             \
                }                                                                                  \
                if ((out)->n && !(out)->v)                                                         \
                        (out)->n = 0;                                                              \
        } while (0)

/* An Info message built from a snap_info, and the storage it points into. */
struct info_pb {
        PB(Info) info;
        Google__Protobuf__Timestamp created, updated;
        PB(Info__LabelsEntry) * entries;
        PB(Info__LabelsEntry) * *ptrs;
};

static int info_to_pb(const struct snap_info *in, struct info_pb *out) {
        pb(info__init)(&out->info);
        google__protobuf__timestamp__init(&out->created);
        google__protobuf__timestamp__init(&out->updated);
        out->created.seconds = in->created_ns / 1000000000;
        out->created.nanos = (int32_t)(in->created_ns % 1000000000);
        out->updated.seconds = in->updated_ns / 1000000000;
        out->updated.nanos = (int32_t)(in->updated_ns % 1000000000);
        out->info.name = in->key;
        out->info.parent = in->parent;
        out->info.kind = (PB(Kind))in->kind;
        out->info.created_at = &out->created;
        out->info.updated_at = &out->updated;
        out->entries = NULL;
        out->ptrs = NULL;
        if (in->nlabels) {
                out->entries = calloc(in->nlabels, sizeof(*out->entries));
                out->ptrs = calloc(in->nlabels, sizeof(*out->ptrs));
                if (!out->entries || !out->ptrs) {
                        free(out->entries);
                        free(out->ptrs);
                        return -ENOMEM;
                }
                for (size_t i = 0; i < in->nlabels; i++) {
                        pb(info__labels_entry__init)(&out->entries[i]);
                        out->entries[i].key = in->labels[i].name;
                        out->entries[i].value = in->labels[i].value;
                        out->ptrs[i] = &out->entries[i];
                }
                out->info.n_labels = in->nlabels;
                out->info.labels = out->ptrs;
        }
        return 0;
}

static void info_pb_done(struct info_pb *p) {
        free(p->entries);
        free(p->ptrs);
}

/* The mount of a snapshot, and the storage it points into. */
struct mount_pb {
        Containerd__Types__Mount m;
        Containerd__Types__Mount *ptr;
        char *opts[3];
        char source[PATH_MAX];
        char work[PATH_MAX + 16], upper[PATH_MAX + 16];
        char *lower;
};

/* The lowerdir of parent N (id PARENT) of snapshot SELF into OUT: its fs dir, or for a remote
 * parent the symlink SELF/l/N to its layer tree (made or corrected here). *RET_REMOTE says
 * which. */
static int lower_dir(struct snapshotter *sn, int64_t self, size_t n, int64_t parent, char *out,
                     size_t cap, bool *ret_remote) {
        char layer[DIGEST_HEX_LEN + 8];
        int r = snapdb_remote_layer(sn->db, parent, layer, sizeof(layer));
        if (r < 0)
                return r;
        *ret_remote = layer[0] != 0;
        if (!layer[0]) {
                snap_path(sn, parent, "fs", out, cap);
                return 0;
        }
        pthread_mutex_lock(&sn->lazy_lock);
        const char *root = sn->lazy.layers_root;
        pthread_mutex_unlock(&sn->lazy_lock);
        if (!root || strncmp(layer, "sha256:", 7) != 0)
                return -ENOTCONN; /* no layer trees in this daemon: cannot mount it */
        char target[PATH_MAX], dir[PATH_MAX], tmp[PATH_MAX + 8], cur[PATH_MAX];
        if ((size_t)snprintf(target, sizeof(target), "%s/sha256/%s", root, layer + 7) >=
            sizeof(target))
                return -ENAMETOOLONG;
        snap_path(sn, self, "l", dir, sizeof(dir));
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        if ((size_t)snprintf(out, cap, "%s/%zu", dir, n) >= cap)
                return -ENAMETOOLONG;
        ssize_t len = readlink(out, cur, sizeof(cur) - 1);
        if (len >= 0 && (size_t)len == strlen(target) && memcmp(cur, target, (size_t)len) == 0)
                return 0;
        /* Atomic replace: a concurrent mount of the same snapshot sees the old or new link. */
        static atomic_uint tmp_seq;
        snprintf(tmp, sizeof(tmp), "%s.tmp%u", out, atomic_fetch_add(&tmp_seq, 1));
        unlink(tmp);
        if (symlink(target, tmp) < 0)
                return -errno;
        if (rename(tmp, out) < 0) {
                r = -errno;
                unlink(tmp);
                return r;
        }
        return 0;
}

static int mount_for(struct snapshotter *sn, const struct snap_info *info, const int64_t *parents,
                     size_t nparents, struct mount_pb *out) {
        containerd__types__mount__init(&out->m);
        out->ptr = &out->m;
        out->lower = NULL;
        out->m.options = out->opts;
        out->m.source = out->source;
        char p[PATH_MAX];
        bool remote = false;
        int r;
        if (nparents == 0 || (info->kind == SNAP_VIEW && nparents == 1)) {
                /* One layer: overlay needs a lowerdir, so a bind mount does it (of the
                 * symlink to a layer tree for a remote parent: mount(2) follows it). */
                if (nparents) {
                        r = lower_dir(sn, info->id, 0, parents[0], out->source, sizeof(out->source),
                                      &remote);
                        if (r < 0)
                                return r;
                } else {
                        snap_path(sn, info->id, "fs", out->source, sizeof(out->source));
                }
                out->m.type = "bind";
                out->opts[0] = info->kind == SNAP_ACTIVE ? "rw" : "ro";
                out->opts[1] = "rbind";
                out->m.n_options = 2;
                if (remote)
                        atomic_fetch_add(&sn->remote_mounts, 1);
                return 0;
        }
        if (nparents > MAX_LAYERS)
                return -E2BIG;
        size_t cap = sizeof("lowerdir=") + nparents * (strlen(sn->root) + 48);
        out->lower = malloc(cap);
        if (!out->lower)
                return -ENOMEM;
        size_t n = (size_t)snprintf(out->lower, cap, "lowerdir=");
        for (size_t i = 0; i < nparents; i++) {
                bool rem;
                r = lower_dir(sn, info->id, i, parents[i], p, sizeof(p), &rem);
                if (r < 0) {
                        free(out->lower);
                        out->lower = NULL;
                        return r;
                }
                remote |= rem;
                n += (size_t)snprintf(out->lower + n, cap - n, "%s%s", i ? ":" : "", p);
                if (n >= cap) { /* cannot happen: every path is under root, bounded above */
                        free(out->lower);
                        out->lower = NULL;
                        return -ENAMETOOLONG;
                }
        }
        out->m.type = "overlay";
        snprintf(out->source, sizeof(out->source), "overlay");
        size_t k = 0;
        if (info->kind == SNAP_ACTIVE) {
                snap_path(sn, info->id, "work", p, sizeof(p));
                snprintf(out->work, sizeof(out->work), "workdir=%s", p);
                snap_path(sn, info->id, "fs", p, sizeof(p));
                snprintf(out->upper, sizeof(out->upper), "upperdir=%s", p);
                out->opts[k++] = out->work;
                out->opts[k++] = out->upper;
        }
        out->opts[k++] = out->lower;
        out->m.n_options = k;
        if (remote)
                atomic_fetch_add(&sn->remote_mounts, 1);
        return 0;
}

static void mount_pb_done(struct mount_pb *m) {
        free(m->lower);
}

/* ---- container starts: prefetch and bytes fetched ---- */

/* Calls FN for the layer ("sha256:<hex>") of every remote one of PARENTS; *RET_N counts them.
 * Metadata errors skip the parent (they fail the mount elsewhere). */
static void for_each_remote(struct snapshotter *sn, const int64_t *parents, size_t nparents,
                            void (*fn)(struct snapshotter *sn, const char *layer, void *ud),
                            void *ud, uint32_t *ret_n) {
        uint32_t n = 0;
        for (size_t i = 0; i < nparents; i++) {
                char layer[DIGEST_HEX_LEN + 8];
                if (snapdb_remote_layer(sn->db, parents[i], layer, sizeof(layer)) < 0 || !layer[0])
                        continue;
                n++;
                if (fn)
                        fn(sn, layer, ud);
        }
        if (ret_n)
                *ret_n = n;
}

static void add_fetched(struct snapshotter *sn, const char *layer, void *ud) {
        pthread_mutex_lock(&sn->lazy_lock);
        int (*fetched)(void *, const char *, uint64_t *) = sn->lazy.layer_fetched;
        void *lud = sn->lazy.ud;
        pthread_mutex_unlock(&sn->lazy_lock);
        uint64_t v;
        if (fetched && fetched(lud, layer, &v) == 0)
                *(uint64_t *)ud += v;
}

static void queue_one(struct snapshotter *sn, const char *layer, void *ud) {
        struct prefetcher *pf = ud;
        struct digest d;
        (void)sn;
        if (digest_parse(layer, &d) == 0)
                prefetch_queue(pf, &d); /* already queued, full (counted), stopping: all fine */
}

/* A container is about to run over PARENTS: prefetch their remote layers, when on. */
static void maybe_prefetch(struct snapshotter *sn, const int64_t *parents, size_t nparents) {
        struct prefetcher *pf = atomic_load_explicit(&sn->prefetch, memory_order_acquire);
        if (pf)
                for_each_remote(sn, parents, nparents, queue_one, pf, NULL);
}

/* Records what the remote lowers of the just-prepared snapshot ID have fetched so far. */
static void record_start(struct snapshotter *sn, int64_t id, const int64_t *parents,
                         size_t nparents) {
        uint64_t base = 0;
        uint32_t n;
        for_each_remote(sn, parents, nparents, add_fetched, &base, &n);
        if (n == 0)
                return; /* no remote lower: nothing to count, no room taken */
        atomic_fetch_add(&sn->starts_counted, 1);
        pthread_mutex_lock(&sn->start_lock);
        if (sn->starts_len == SNAPSHOTTER_STARTS_MAX) { /* the oldest goes */
                sn->starts_head = (sn->starts_head + 1) % SNAPSHOTTER_STARTS_MAX;
                sn->starts_len--;
        }
        sn->starts[(sn->starts_head + sn->starts_len++) % SNAPSHOTTER_STARTS_MAX] =
                (struct start_rec){id, base};
        pthread_mutex_unlock(&sn->start_lock);
}

/* The recorded base of snapshot ID: true and *RET when there is one. Caller holds start_lock. */
static bool start_base(const struct snapshotter *sn, int64_t id, uint64_t *ret) {
        for (unsigned i = 0; i < sn->starts_len; i++) {
                const struct start_rec *s =
                        &sn->starts[(sn->starts_head + i) % SNAPSHOTTER_STARTS_MAX];
                if (s->id == id) {
                        *ret = s->base;
                        return true;
                }
        }
        return false;
}

/* Ids are never reused, so a stale record could not be mistaken for a new snapshot's; it is
 * dropped only to free its slot. */
static void forget_start(struct snapshotter *sn, int64_t id) {
        pthread_mutex_lock(&sn->start_lock);
        for (unsigned i = 0; i < sn->starts_len; i++) {
                struct start_rec *s = &sn->starts[(sn->starts_head + i) % SNAPSHOTTER_STARTS_MAX];
                if (s->id != id)
                        continue;
                /* Close the gap, keeping Prepare order. */
                for (unsigned j = i; j + 1 < sn->starts_len; j++)
                        sn->starts[(sn->starts_head + j) % SNAPSHOTTER_STARTS_MAX] =
                                sn->starts[(sn->starts_head + j + 1) % SNAPSHOTTER_STARTS_MAX];
                sn->starts_len--;
                break;
        }
        pthread_mutex_unlock(&sn->start_lock);
}

int snapshotter_start_fetched(struct snapshotter *sn, const char *key,
                              struct snapshotter_start *ret) {
        struct snap_info *info;
        int64_t *parents;
        size_t nparents;
        int r = snapdb_get(sn->db, key, &info, &parents, &nparents);
        if (r < 0)
                return r;
        struct snapshotter_start out = {0};
        if (info->kind != SNAP_ACTIVE) {
                r = -EINVAL;
                goto out_free;
        }
        uint64_t now = 0, base = 0;
        for_each_remote(sn, parents, nparents, add_fetched, &now, &out.remote_lowers);
        pthread_mutex_lock(&sn->start_lock);
        out.since_prepare = start_base(sn, info->id, &base);
        pthread_mutex_unlock(&sn->start_lock);
        out.fetched_bytes = now > base ? now - base : 0;
        *ret = out;
out_free:
        snap_info_free(info);
        free(parents);
        return r;
}

/* Answers with a response holding MOUNT (Prepare, View and Mounts have the same shape). */
#define ANSWER_MOUNTS(type, init, mp, resp)                                                        \
        do {                                                                                       \
                type out_ = init;                                                                  \
                out_.n_mounts = 1;                                                                 \
                out_.mounts = &(mp)->ptr;                                                          \
                if (grpc_resp_add((resp), &out_.base) < 0)                                         \
                        grpc_resp_error((resp), GRPC_INTERNAL, "out of memory");                   \
        } while (0)

#define BAD_REQUEST(resp) grpc_resp_error((resp), GRPC_INVALID_ARGUMENT, "malformed request")

/* ---- methods ---- */

static int create(struct snapshotter *sn, enum snap_kind kind, const char *key, const char *parent,
                  const struct labels_in *labels, struct grpc_resp *resp, struct mount_pb *mp) {
        struct snap_info *info;
        int64_t *parents;
        size_t nparents;
        const char *op = kind == SNAP_ACTIVE ? "prepare" : "view";
        if (!key[0]) {
                grpc_resp_error(resp, GRPC_INVALID_ARGUMENT, "%s: empty key", op);
                return -EINVAL;
        }
        int r = snapdb_create(sn->db, kind, key, parent, labels->v, labels->n, &info, &parents,
                              &nparents);
        if (r < 0) {
                fail(resp, r == -ENOENT ? -ENOENT : r, op, r == -ENOENT ? parent : key);
                return r;
        }
        r = make_dirs(sn, info->id, kind);
        if (r == 0)
                r = mount_for(sn, info, parents, nparents, mp);
        if (r == 0 && kind == SNAP_VIEW)
                maybe_prefetch(sn, parents, nparents);
        if (r < 0) {
                int64_t id;
                char p[PATH_MAX];
                snapdb_remove(sn->db, key, &id);
                snap_path(sn, info->id, NULL, p, sizeof(p));
                remove_tree(p);
                fail(resp, r == -EEXIST ? -EIO : r, op, key);
        }
        snap_info_free(info);
        free(parents);
        return r;
}

/* Serves the layer of the just-created active snapshot KEY lazily: its tree ready, KEY is
 * committed as LZ's target, a remote snapshot. 0 when it is (the Prepare answers
 * ALREADY_EXISTS); -errno when it is not (KEY stays the normal snapshot it was). */
static int try_remote(struct snapshotter *sn, const char *key, const struct labels_in *in,
                      const struct lazy_layer *lz) {
        pthread_mutex_lock(&sn->lazy_lock);
        struct snapshotter_lazy ops = sn->lazy;
        uint64_t wait_ms = sn->lazy_wait_ms;
        pthread_mutex_unlock(&sn->lazy_lock);
        char reason[256] = "";
        int r;
        if (!ops.serve || wait_ms == 0) {
                r = -ENOTSUP;
                snprintf(reason, sizeof(reason), "lazy layers are off in this daemon");
        } else {
                r = ops.serve(ops.ud, lz, wait_ms, reason, sizeof(reason));
        }
        if (r == 0) {
                /* The Prepare's labels (snapshot.ref among them: containerd's Walk looks for it)
                 * and the remote marker. */
                struct snap_label *v = calloc(in->n + 1, sizeof(*v));
                size_t n = 0;
                if (!v) {
                        r = -ENOMEM;
                } else {
                        for (size_t i = 0; i < in->n; i++)
                                if (strcmp(in->v[i].name, LAZY_LABEL_REMOTE) != 0)
                                        v[n++] = in->v[i];
                        v[n++] = (struct snap_label){LAZY_LABEL_REMOTE, REMOTE_LABEL_VALUE};
                        r = snapdb_commit_remote(sn->db, lz->target, key, v, n, lz->layer, lz->ref);
                        free(v);
                }
                if (r == -EEXIST) {
                        /* Another Prepare of the same chain committed it first: it exists, and
                         * this active snapshot is not needed. */
                        int64_t id;
                        if (snapdb_remove(sn->db, key, &id) == 0) {
                                char p[PATH_MAX];
                                snap_path(sn, id, NULL, p, sizeof(p));
                                remove_tree(p);
                        }
                        r = 0;
                } else if (r < 0) {
                        snprintf(reason, sizeof(reason), "cannot record the remote snapshot");
                }
        }
        if (r == 0) {
                atomic_fetch_add(&sn->lazy_layers, 1);
                log_info("lazy layer layer=%s target=%s", lz->layer, lz->target);
                return 0;
        }
        atomic_fetch_add(&sn->lazy_fallbacks, 1);
        log_notice("lazy layer fallback layer=%s err=%s reason=\"%s\" hint=\"containerd "
                   "unpacks it as a normal snapshot\"",
                   lz->layer, strerror(-r), reason);
        return r;
}

/* A Prepare that is not a layer's: a container's (or a build's) snapshot. */
static void note_start(struct snapshotter *sn, const char *key) {
        struct snap_info *info;
        int64_t *parents;
        size_t nparents;
        if (snapdb_get(sn->db, key, &info, &parents, &nparents) < 0)
                return;
        record_start(sn, info->id, parents, nparents);
        snap_info_free(info);
        free(parents);
}

static void h_prepare(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {
        struct snapshotter *sn = ud;
        PB(PrepareSnapshotRequest) *m = pb(prepare_snapshot_request__unpack)(NULL, len, req);
        if (!m) {
                BAD_REQUEST(resp);
                return;
        }
        struct labels_in labels;
        LABELS_IN(m, &labels);
        struct mount_pb mp = {0};
        if (create(sn, SNAP_ACTIVE, m->key, m->parent, &labels, resp, &mp) == 0) {
                struct lazy_layer lz;
                int lr = lazy_parse(labels.v, labels.n, &lz);
                if (lr == 0 && try_remote(sn, m->key, &labels, &lz) == 0) {
                        grpc_resp_error(resp, GRPC_ALREADY_EXISTS,
                                        "target snapshot %s: already exists", lz.target);
                } else {
                        if (lr == -ENOENT)
                                note_start(sn, m->key);
                        if (lr < 0 && lr != -ENOENT) {
                                atomic_fetch_add(&sn->lazy_fallbacks, 1);
                                log_notice("lazy layer fallback key=%s err=%s reason=\"malformed "
                                           "layer labels\"",
                                           m->key, strerror(-lr));
                        }
                        ANSWER_MOUNTS(
                                PB(PrepareSnapshotResponse),
                                CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_RESPONSE__INIT,
                                &mp, resp);
                }
                mount_pb_done(&mp);
        }
        free(labels.v);
        pb(prepare_snapshot_request__free_unpacked)(m, NULL);
}

static void h_view(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {
        PB(ViewSnapshotRequest) *m = pb(view_snapshot_request__unpack)(NULL, len, req);
        if (!m) {
                BAD_REQUEST(resp);
                return;
        }
        struct labels_in labels;
        LABELS_IN(m, &labels);
        struct mount_pb mp = {0};
        if (create(ud, SNAP_VIEW, m->key, m->parent, &labels, resp, &mp) == 0) {
                ANSWER_MOUNTS(PB(ViewSnapshotResponse),
                              CONTAINERD__SERVICES__SNAPSHOTS__V1__VIEW_SNAPSHOT_RESPONSE__INIT,
                              &mp, resp);
                mount_pb_done(&mp);
        }
        free(labels.v);
        pb(view_snapshot_request__free_unpacked)(m, NULL);
}

static void h_mounts(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {
        struct snapshotter *sn = ud;
        PB(MountsRequest) *m = pb(mounts_request__unpack)(NULL, len, req);
        if (!m) {
                BAD_REQUEST(resp);
                return;
        }
        struct snap_info *info;
        int64_t *parents;
        size_t nparents;
        int r = snapdb_get(sn->db, m->key, &info, &parents, &nparents);
        if (r == 0) {
                struct mount_pb mp;
                if (info->kind == SNAP_COMMITTED)
                        r = -EBUSY; /* containerd: only active snapshots and views mount */
                else
                        r = mount_for(sn, info, parents, nparents, &mp);
                if (r == 0)
                        maybe_prefetch(sn, parents, nparents);
                if (r == 0) {
                        ANSWER_MOUNTS(PB(MountsResponse),
                                      CONTAINERD__SERVICES__SNAPSHOTS__V1__MOUNTS_RESPONSE__INIT,
                                      &mp, resp);
                        mount_pb_done(&mp);
                }
                snap_info_free(info);
                free(parents);
        }
        if (r < 0)
                fail(resp, r, "mount", m->key);
        pb(mounts_request__free_unpacked)(m, NULL);
}

static void answer_empty(struct grpc_resp *resp) {
        Google__Protobuf__Empty e = GOOGLE__PROTOBUF__EMPTY__INIT;
        if (grpc_resp_add(resp, &e.base) < 0)
                grpc_resp_error(resp, GRPC_INTERNAL, "out of memory");
}

static void h_commit(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {
        struct snapshotter *sn = ud;
        PB(CommitSnapshotRequest) *m = pb(commit_snapshot_request__unpack)(NULL, len, req);
        if (!m) {
                BAD_REQUEST(resp);
                return;
        }
        struct labels_in labels;
        LABELS_IN(m, &labels);
        int64_t size = 0, inodes = 0;
        struct snap_info *info;
        /* Usage first (outside the transaction: it walks the tree); when the key is not an
         * active snapshot the commit below fails with the error containerd would give. */
        if (snapdb_get(sn->db, m->key, &info, NULL, NULL) == 0) {
                if (info->kind == SNAP_ACTIVE) {
                        char p[PATH_MAX];
                        snap_path(sn, info->id, "fs", p, sizeof(p));
                        if (disk_usage(p, &size, &inodes) < 0)
                                size = inodes = 0;
                }
                snap_info_free(info);
        }
        int r = m->name[0]
                        ? snapdb_commit(sn->db, m->name, m->key, labels.v, labels.n, size, inodes)
                        : -EINVAL;
        if (r < 0)
                fail(resp, r, "commit", r == -EEXIST ? m->name : m->key);
        else
                answer_empty(resp);
        free(labels.v);
        pb(commit_snapshot_request__free_unpacked)(m, NULL);
}

static void h_remove(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {
        struct snapshotter *sn = ud;
        PB(RemoveSnapshotRequest) *m = pb(remove_snapshot_request__unpack)(NULL, len, req);
        if (!m) {
                BAD_REQUEST(resp);
                return;
        }
        int64_t id;
        int r = snapdb_remove(sn->db, m->key, &id);
        if (r < 0) {
                fail(resp, r, "remove", m->key);
        } else {
                char p[PATH_MAX];
                snap_path(sn, id, NULL, p, sizeof(p));
                forget_start(sn, id);
                int rr = remove_tree(p);
                if (rr < 0) /* the metadata is gone: Cleanup finishes the job */
                        log_debug("snapshot dir not removed path=%s err=%s", p, strerror(-rr));
                answer_empty(resp);
        }
        pb(remove_snapshot_request__free_unpacked)(m, NULL);
}

static void answer_info(struct grpc_resp *resp, const struct snap_info *info, bool update) {
        struct info_pb ip;
        if (info_to_pb(info, &ip) < 0) {
                grpc_resp_error(resp, GRPC_INTERNAL, "out of memory");
                return;
        }
        int r;
        if (update) {
                PB(UpdateSnapshotResponse)
                out = CONTAINERD__SERVICES__SNAPSHOTS__V1__UPDATE_SNAPSHOT_RESPONSE__INIT;
                out.info = &ip.info;
                r = grpc_resp_add(resp, &out.base);
        } else {
                PB(StatSnapshotResponse)
                out = CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_RESPONSE__INIT;
                out.info = &ip.info;
                r = grpc_resp_add(resp, &out.base);
        }
        if (r < 0)
                grpc_resp_error(resp, GRPC_INTERNAL, "out of memory");
        info_pb_done(&ip);
}

static void h_stat(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {
        struct snapshotter *sn = ud;
        PB(StatSnapshotRequest) *m = pb(stat_snapshot_request__unpack)(NULL, len, req);
        if (!m) {
                BAD_REQUEST(resp);
                return;
        }
        struct snap_info *info;
        int r = snapdb_get(sn->db, m->key, &info, NULL, NULL);
        if (r < 0) {
                fail(resp, r, "stat", m->key);
        } else {
                answer_info(resp, info, false);
                snap_info_free(info);
        }
        pb(stat_snapshot_request__free_unpacked)(m, NULL);
}

static void h_update(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {
        struct snapshotter *sn = ud;
        PB(UpdateSnapshotRequest) *m = pb(update_snapshot_request__unpack)(NULL, len, req);
        if (!m || !m->info) {
                BAD_REQUEST(resp);
                if (m)
                        pb(update_snapshot_request__free_unpacked)(m, NULL);
                return;
        }
        struct labels_in labels;
        LABELS_IN(m->info, &labels);
        struct snap_info *info;
        size_t npaths = m->update_mask ? m->update_mask->n_paths : 0;
        char *const *paths = m->update_mask ? m->update_mask->paths : NULL;
        int r = snapdb_update(sn->db, m->info->name, labels.v, labels.n, paths, npaths, &info);
        if (r < 0) {
                fail(resp, r, "update", m->info->name);
        } else {
                answer_info(resp, info, true);
                snap_info_free(info);
        }
        free(labels.v);
        pb(update_snapshot_request__free_unpacked)(m, NULL);
}

struct list_ctx {
        struct snap_filter **filters;
        size_t nfilters;
        struct grpc_resp *resp;
};

static int list_one(void *ud, const struct snap_info *info) {
        struct list_ctx *lc = ud;
        bool match = lc->nfilters == 0;
        for (size_t i = 0; i < lc->nfilters && !match; i++)
                match = snapfilter_match(lc->filters[i], info);
        if (!match)
                return 0;
        struct info_pb ip;
        if (info_to_pb(info, &ip) < 0)
                return -ENOMEM;
        PB(Info) *one = &ip.info;
        PB(ListSnapshotsResponse)
        out = CONTAINERD__SERVICES__SNAPSHOTS__V1__LIST_SNAPSHOTS_RESPONSE__INIT;
        out.n_info = 1;
        out.info = &one;
        int r = grpc_resp_add(lc->resp, &out.base);
        info_pb_done(&ip);
        return r;
}

static void h_list(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {
        struct snapshotter *sn = ud;
        PB(ListSnapshotsRequest) *m = pb(list_snapshots_request__unpack)(NULL, len, req);
        if (!m) {
                BAD_REQUEST(resp);
                return;
        }
        struct list_ctx lc = {.resp = resp};
        int r = 0;
        if (m->n_filters) {
                lc.filters = calloc(m->n_filters, sizeof(*lc.filters));
                r = lc.filters ? 0 : -ENOMEM;
        }
        for (size_t i = 0; i < m->n_filters && r == 0; i++) {
                const char *err = NULL;
                r = snapfilter_parse(m->filters[i], &lc.filters[i], &err);
                if (r == 0)
                        lc.nfilters++;
                else if (r == -EINVAL)
                        grpc_resp_error(resp, GRPC_INVALID_ARGUMENT,
                                        "filter %s: %s: invalid "
                                        "argument",
                                        m->filters[i], err);
        }
        if (r == 0)
                r = snapdb_for_each(sn->db, list_one, &lc);
        if (r < 0 && resp->status == GRPC_OK)
                grpc_resp_error(resp, GRPC_UNKNOWN, "list snapshots: %s", strerror(-r));
        for (size_t i = 0; i < lc.nfilters; i++)
                snapfilter_free(lc.filters[i]);
        free(lc.filters);
        pb(list_snapshots_request__free_unpacked)(m, NULL);
}

static void h_usage(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {
        struct snapshotter *sn = ud;
        PB(UsageRequest) *m = pb(usage_request__unpack)(NULL, len, req);
        if (!m) {
                BAD_REQUEST(resp);
                return;
        }
        struct snap_info *info;
        int r = snapdb_get(sn->db, m->key, &info, NULL, NULL);
        if (r < 0) {
                fail(resp, r, "usage of", m->key);
        } else {
                PB(UsageResponse) out = CONTAINERD__SERVICES__SNAPSHOTS__V1__USAGE_RESPONSE__INIT;
                out.size = info->usage_size;
                out.inodes = info->usage_inodes;
                if (info->kind == SNAP_ACTIVE) {
                        char p[PATH_MAX];
                        snap_path(sn, info->id, "fs", p, sizeof(p));
                        r = disk_usage(p, &out.size, &out.inodes);
                }
                if (r < 0)
                        fail(resp, r, "usage of", m->key);
                else if (grpc_resp_add(resp, &out.base) < 0)
                        grpc_resp_error(resp, GRPC_INTERNAL, "out of memory");
                snap_info_free(info);
        }
        pb(usage_request__free_unpacked)(m, NULL);
}

struct id_set {
        int64_t *v;
        size_t n, cap;
};

static int collect_id(void *ud, const struct snap_info *info) {
        struct id_set *s = ud;
        if (s->n == s->cap) {
                size_t ncap = s->cap ? s->cap * 2 : 64;
                int64_t *nv = realloc(s->v, ncap * sizeof(*nv));
                if (!nv)
                        return -ENOMEM;
                s->v = nv;
                s->cap = ncap;
        }
        s->v[s->n++] = info->id;
        return 0;
}

/* Removes every directory under the root that no snapshot owns. */
static int cleanup(struct snapshotter *sn) {
        struct id_set ids = {0};
        int r = snapdb_for_each(sn->db, collect_id, &ids);
        DIR *d = r == 0 ? opendir(sn->root) : NULL;
        if (r == 0 && !d)
                r = -errno;
        struct dirent *de;
        while (d && (de = readdir(d))) {
                char *end;
                errno = 0;
                long long id = strtoll(de->d_name, &end, 10);
                if (de->d_name[0] == '.' || *end || errno || id <= 0)
                        continue;
                bool owned = false;
                for (size_t i = 0; i < ids.n && !owned; i++)
                        owned = ids.v[i] == id;
                if (!owned) {
                        char p[PATH_MAX];
                        snap_path(sn, id, NULL, p, sizeof(p));
                        int rr = remove_tree(p);
                        if (rr < 0 && r == 0)
                                r = rr;
                }
        }
        if (d)
                closedir(d);
        free(ids.v);
        return r;
}

static void h_cleanup(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {
        PB(CleanupRequest) *m = pb(cleanup_request__unpack)(NULL, len, req);
        if (!m) {
                BAD_REQUEST(resp);
                return;
        }
        int r = cleanup(ud);
        if (r < 0)
                grpc_resp_error(resp, GRPC_UNKNOWN, "cleanup: %s", strerror(-r));
        else
                answer_empty(resp);
        pb(cleanup_request__free_unpacked)(m, NULL);
}

#define METHOD(name, fn)                                                                           \
        { "/containerd.services.snapshots.v1.Snapshots/" name, fn, false }
static const struct grpc_method methods[] = {
        {"/containerd.services.snapshots.v1.Snapshots/Prepare", h_prepare, true}, /* waits */
        METHOD("View", h_view),
        METHOD("Mounts", h_mounts),
        METHOD("Commit", h_commit),
        METHOD("Remove", h_remove),
        METHOD("Stat", h_stat),
        METHOD("Update", h_update),
        METHOD("List", h_list),
        METHOD("Usage", h_usage),
        METHOD("Cleanup", h_cleanup),
};

int snapshotter_start(const char *state_dir, const char *index_path, const char *socket_path,
                      struct snapshotter **ret) {
        struct snapshotter *sn = calloc(1, sizeof(*sn));
        if (!sn)
                return -ENOMEM;
        pthread_mutex_init(&sn->lazy_lock, NULL);
        pthread_mutex_init(&sn->start_lock, NULL);
        int r;
        if ((size_t)snprintf(sn->root, sizeof(sn->root), "%s/snapshots", state_dir) >=
            sizeof(sn->root)) {
                r = -ENAMETOOLONG;
                goto out_free;
        }
        if (mkdir(sn->root, 0700) < 0 && errno != EEXIST) {
                r = -errno;
                goto out_free;
        }
        r = snapdb_open(index_path, &sn->db);
        if (r < 0)
                goto out_free;
        r = grpc_server_start(socket_path, methods, sizeof(methods) / sizeof(methods[0]), sn,
                              &sn->srv);
        if (r < 0)
                goto out_db;
        *ret = sn;
        return 0;
out_db:
        snapdb_close(sn->db);
out_free:
        pthread_mutex_destroy(&sn->start_lock);
        pthread_mutex_destroy(&sn->lazy_lock);
        free(sn);
        return r;
}

struct remote_rec {
        char *ref, *layer;
};

struct remote_set {
        struct remote_rec *v;
        size_t n, cap;
};

static int collect_remote(void *ud, const struct snap_info *info) {
        struct remote_set *s = ud;
        if (!info->remote_layer[0])
                return 0;
        if (s->n == s->cap) {
                size_t ncap = s->cap ? s->cap * 2 : 16;
                struct remote_rec *nv = realloc(s->v, ncap * sizeof(*nv));
                if (!nv)
                        return -ENOMEM;
                s->v = nv;
                s->cap = ncap;
        }
        s->v[s->n].ref = strdup(info->remote_ref);
        s->v[s->n].layer = strdup(info->remote_layer);
        s->n++;
        return s->v[s->n - 1].ref && s->v[s->n - 1].layer ? 0 : -ENOMEM;
}

void snapshotter_set_lazy(struct snapshotter *sn, const struct snapshotter_lazy *ops,
                          uint64_t wait_ms) {
        pthread_mutex_lock(&sn->lazy_lock);
        sn->lazy = *ops;
        sn->lazy_wait_ms = wait_ms;
        pthread_mutex_unlock(&sn->lazy_lock);
        if (!ops->restore)
                return;
        /* Collected first: restore blocks, and must not run inside the metadata's walk. */
        struct remote_set set = {0};
        int r = snapdb_for_each(sn->db, collect_remote, &set);
        if (r < 0)
                log_warning("cannot list remote snapshots err=%s hint=\"their mounts fail until "
                            "their layers are registered again\"",
                            strerror(-r));
        size_t ok = 0;
        for (size_t i = 0; i < set.n; i++) {
                if (set.v[i].ref && set.v[i].layer &&
                    ops->restore(ops->ud, set.v[i].ref, set.v[i].layer) == 0)
                        ok++;
                free(set.v[i].ref);
                free(set.v[i].layer);
        }
        free(set.v);
        if (set.n)
                log_info("remote snapshots restored layers=%zu of=%zu", ok, set.n);
}

void snapshotter_get_stats(struct snapshotter *sn, struct snapshotter_stats *ret) {
        *ret = (struct snapshotter_stats){
                .lazy_layers = atomic_load(&sn->lazy_layers),
                .lazy_fallbacks = atomic_load(&sn->lazy_fallbacks),
                .remote_mounts = atomic_load(&sn->remote_mounts),
                .starts = atomic_load(&sn->starts_counted),
        };
        struct prefetcher *pf = atomic_load_explicit(&sn->prefetch, memory_order_acquire);
        if (pf)
                prefetch_get_stats(pf, &ret->prefetch);
}

int snapshotter_set_prefetch(struct snapshotter *sn, const struct prefetch_config *cfg,
                             const struct prefetch_ops *ops) {
        if (atomic_load(&sn->prefetch))
                return -EALREADY;
        struct prefetcher *pf;
        int r = prefetch_new(cfg, ops, &pf);
        if (r < 0)
                return r;
        atomic_store_explicit(&sn->prefetch, pf, memory_order_release);
        return 0;
}

int snapshotter_for_each(struct snapshotter *sn, int (*fn)(void *ud, const struct snap_info *info),
                         void *ud) {
        return snapdb_for_each(sn->db, fn, ud);
}

void snapshotter_stop(struct snapshotter *sn) {
        if (!sn)
                return;
        grpc_server_stop(sn->srv);
        /* After the server: no Mounts queues any more. */
        prefetch_free(atomic_exchange(&sn->prefetch, NULL));
        snapdb_close(sn->db);
        pthread_mutex_destroy(&sn->start_lock);
        pthread_mutex_destroy(&sn->lazy_lock);
        free(sn);
}
