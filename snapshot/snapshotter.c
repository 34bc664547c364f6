/* The containerd proxy snapshotter. See snapshotter.h for the contract.
 *
 * Each method is: unpack the request (protobuf-c), one call into the metadata store (one
 * transaction there, so the checks containerd makes and the write they guard are atomic), the
 * directory work, pack the response. The unpacking, the UTF-8 check of every string
 * (pbstrings.h) and the freeing are serve()'s, for every method of the table
 * SNAPSHOTS_METHODS; a method's m_ function holds only what is its own. The metadata decides;
 * directories follow it. A Prepare whose mkdir fails undoes its row; a crash between a
 * Remove's row and its rm leaves a directory no row owns, which Cleanup removes, as
 * containerd's overlay snapshotter does (and ids are never reused, so such a directory is
 * never adopted).
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
 * Files: this one holds the methods and the lifecycle; dirs.c the directories, mounts.c the
 * mounts, starts.c container starts (prefetch, bytes per start); snap_int.h their state. */
#include "snapshot/snap_int.h"

#include <dirent.h>
#include <errno.h>
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
#include "snapshot/pbstrings.h"
#include "snapshots.pb-c.h"
#include "util/log.h"

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

#define BAD_REQUEST(resp) grpc_resp_error((resp), GRPC_INVALID_ARGUMENT, "malformed request")

/* ---- answers ---- */

/* Adds reply OUT to RESP; a reply that cannot be added is the error. */
static void answer(struct grpc_resp *resp, const ProtobufCMessage *out) {
        if (grpc_resp_add(resp, out) < 0)
                grpc_resp_error(resp, GRPC_INTERNAL, "out of memory");
}

static void answer_empty(struct grpc_resp *resp) {
        Google__Protobuf__Empty e = GOOGLE__PROTOBUF__EMPTY__INIT;
        answer(resp, &e.base);
}

/* Answers with OUT, a response holding MOUNT (Prepare, View and Mounts have the same shape). */
#define ANSWER_MOUNTS(out, mp, resp)                                                               \
        do {                                                                                       \
                (out).n_mounts = 1;                                                                \
                (out).mounts = &(mp)->ptr;                                                         \
                answer((resp), &(out).base);                                                       \
        } while (0)

/* Answers with OUT, a response whose one field *SLOT is INFO (Stat and Update). */
static void answer_info(struct grpc_resp *resp, const struct snap_info *info, ProtobufCMessage *out,
                        PB(Info) * *slot) {
        struct info_pb ip;
        if (info_to_pb(info, &ip) < 0) {
                grpc_resp_error(resp, GRPC_INTERNAL, "out of memory");
                return;
        }
        *slot = &ip.info;
        answer(resp, out);
        info_pb_done(&ip);
}

/* ---- create, and lazy layers ---- */

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
        r = snap_make_dirs(sn, info->id, kind);
        if (r == 0)
                r = snap_mount_for(sn, info, parents, nparents, mp);
        if (r == 0 && kind == SNAP_VIEW)
                snap_maybe_prefetch(sn, parents, nparents);
        if (r < 0) {
                int64_t id;
                char p[PATH_MAX];
                snapdb_remove(sn->db, key, &id);
                snap_path(sn, info->id, NULL, p, sizeof(p));
                snap_remove_tree(p);
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
                                snap_remove_tree(p);
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
        snap_record_start(sn, info->id, parents, nparents);
        snap_info_free(info);
        free(parents);
}

/* ---- methods ----
 *
 * Each is what is particular to one method of the service: serve() (below) has unpacked MSG,
 * the request, and frees it after; the method fills RESP with its reply or its error. */

static void m_prepare(struct snapshotter *sn, const void *msg, struct grpc_resp *resp) {
        const PB(PrepareSnapshotRequest) *m = msg;
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
                        PB(PrepareSnapshotResponse)
                        out = CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_RESPONSE__INIT;
                        ANSWER_MOUNTS(out, &mp, resp);
                }
                snap_mount_done(&mp);
        }
        free(labels.v);
}

static void m_view(struct snapshotter *sn, const void *msg, struct grpc_resp *resp) {
        const PB(ViewSnapshotRequest) *m = msg;
        struct labels_in labels;
        LABELS_IN(m, &labels);
        struct mount_pb mp = {0};
        if (create(sn, SNAP_VIEW, m->key, m->parent, &labels, resp, &mp) == 0) {
                PB(ViewSnapshotResponse)
                out = CONTAINERD__SERVICES__SNAPSHOTS__V1__VIEW_SNAPSHOT_RESPONSE__INIT;
                ANSWER_MOUNTS(out, &mp, resp);
                snap_mount_done(&mp);
        }
        free(labels.v);
}

static void m_mounts(struct snapshotter *sn, const void *msg, struct grpc_resp *resp) {
        const PB(MountsRequest) *m = msg;
        struct snap_info *info;
        int64_t *parents;
        size_t nparents;
        int r = snapdb_get(sn->db, m->key, &info, &parents, &nparents);
        if (r == 0) {
                struct mount_pb mp;
                if (info->kind == SNAP_COMMITTED)
                        r = -EBUSY; /* containerd: only active snapshots and views mount */
                else
                        r = snap_mount_for(sn, info, parents, nparents, &mp);
                if (r == 0)
                        snap_maybe_prefetch(sn, parents, nparents);
                if (r == 0) {
                        PB(MountsResponse)
                        out = CONTAINERD__SERVICES__SNAPSHOTS__V1__MOUNTS_RESPONSE__INIT;
                        ANSWER_MOUNTS(out, &mp, resp);
                        snap_mount_done(&mp);
                }
                snap_info_free(info);
                free(parents);
        }
        if (r < 0)
                fail(resp, r, "mount", m->key);
}

static void m_commit(struct snapshotter *sn, const void *msg, struct grpc_resp *resp) {
        const PB(CommitSnapshotRequest) *m = msg;
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
                        if (snap_disk_usage(p, &size, &inodes) < 0)
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
}

static void m_remove(struct snapshotter *sn, const void *msg, struct grpc_resp *resp) {
        const PB(RemoveSnapshotRequest) *m = msg;
        int64_t id;
        int r = snapdb_remove(sn->db, m->key, &id);
        if (r < 0) {
                fail(resp, r, "remove", m->key);
        } else {
                char p[PATH_MAX];
                snap_path(sn, id, NULL, p, sizeof(p));
                snap_forget_start(sn, id);
                int rr = snap_remove_tree(p);
                if (rr < 0) /* the metadata is gone: Cleanup finishes the job */
                        log_debug("snapshot dir not removed path=%s err=%s", p, strerror(-rr));
                answer_empty(resp);
        }
}

static void m_stat(struct snapshotter *sn, const void *msg, struct grpc_resp *resp) {
        const PB(StatSnapshotRequest) *m = msg;
        struct snap_info *info;
        int r = snapdb_get(sn->db, m->key, &info, NULL, NULL);
        if (r < 0) {
                fail(resp, r, "stat", m->key);
        } else {
                PB(StatSnapshotResponse)
                out = CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_RESPONSE__INIT;
                answer_info(resp, info, &out.base, &out.info);
                snap_info_free(info);
        }
}

static void m_update(struct snapshotter *sn, const void *msg, struct grpc_resp *resp) {
        const PB(UpdateSnapshotRequest) *m = msg;
        if (!m->info) {
                BAD_REQUEST(resp);
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
                PB(UpdateSnapshotResponse)
                out = CONTAINERD__SERVICES__SNAPSHOTS__V1__UPDATE_SNAPSHOT_RESPONSE__INIT;
                answer_info(resp, info, &out.base, &out.info);
                snap_info_free(info);
        }
        free(labels.v);
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

static void m_list(struct snapshotter *sn, const void *msg, struct grpc_resp *resp) {
        const PB(ListSnapshotsRequest) *m = msg;
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
}

static void m_usage(struct snapshotter *sn, const void *msg, struct grpc_resp *resp) {
        const PB(UsageRequest) *m = msg;
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
                        r = snap_disk_usage(p, &out.size, &out.inodes);
                }
                if (r < 0)
                        fail(resp, r, "usage of", m->key);
                else
                        answer(resp, &out.base);
                snap_info_free(info);
        }
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
                        int rr = snap_remove_tree(p);
                        if (rr < 0 && r == 0)
                                r = rr;
                }
        }
        if (d)
                closedir(d);
        free(ids.v);
        return r;
}

static void m_cleanup(struct snapshotter *sn, const void *msg, struct grpc_resp *resp) {
        (void)msg; /* it names only the snapshotter, this one */
        int r = cleanup(sn);
        if (r < 0)
                grpc_resp_error(resp, GRPC_UNKNOWN, "cleanup: %s", strerror(-r));
        else
                answer_empty(resp);
}

/* ---- the dispatcher ---- */

/* The gRPC handler's part that every method shares: unpacks the request with DESC (bytes that
 * are not one, or one with a string that is not UTF-8, are answered INVALID_ARGUMENT), runs
 * the method on it, frees it. */
static void serve(void *ud, const ProtobufCMessageDescriptor *desc,
                  void (*method)(struct snapshotter *sn, const void *msg, struct grpc_resp *resp),
                  const uint8_t *req, size_t len, struct grpc_resp *resp) {
        ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, req);
        if (!m) {
                BAD_REQUEST(resp);
                return;
        }
        /* Here, not in the methods, so that none can forget it: a string that is not UTF-8
         * would be stored, and make every List after it undecodable (pbstrings.h). */
        char why[384];
        if (pbstr_check(desc, req, len, why, sizeof(why)) < 0) {
                grpc_resp_error(resp, GRPC_INVALID_ARGUMENT, "malformed request: %s", why);
                protobuf_c_message_free_unpacked(m, NULL);
                return;
        }
        method(ud, m, resp);
        protobuf_c_message_free_unpacked(m, NULL);
}

/* The Snapshots service, one row a method: its name, its function (m_<fn>), its request's
 * message (pb(<request>__descriptor)), and whether it is slow (may block: it runs on a job
 * thread of its own, not the connection's). The rows make both each method's gRPC handler
 * (h_<fn>, a call of serve()) and the server's table. */
#define SNAPSHOTS_METHODS(X)                                                                       \
        X("Prepare", prepare, prepare_snapshot_request, true) /* waits for a lazy layer */         \
        X("View", view, view_snapshot_request, false)                                              \
        X("Mounts", mounts, mounts_request, false)                                                 \
        X("Commit", commit, commit_snapshot_request, false)                                        \
        X("Remove", remove, remove_snapshot_request, false)                                        \
        X("Stat", stat, stat_snapshot_request, false)                                              \
        X("Update", update, update_snapshot_request, false)                                        \
        X("List", list, list_snapshots_request, false)                                             \
        X("Usage", usage, usage_request, false)                                                    \
        X("Cleanup", cleanup, cleanup_request, false)

#define HANDLER(name, fn, request, slow)                                                           \
        static void h_##fn(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp) {     \
                serve(ud, &pb(request##__descriptor), m_##fn, req, len, resp);                     \
        }
SNAPSHOTS_METHODS(HANDLER)

#define METHOD(name, fn, request, slow)                                                            \
        {"/containerd.services.snapshots.v1.Snapshots/" name, h_##fn, slow},
static const struct grpc_method methods[] = {SNAPSHOTS_METHODS(METHOD)};

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
