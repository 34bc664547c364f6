/* The mount a snapshot answers with (Prepare, View, Mounts): containerd's overlay
 * snapshotter's shape, so an image unpacked here looks the same as with the stock one. A
 * remote parent's lowerdir is <id>/l/<n>, a symlink to its layer tree made here at mount time
 * (overlayfs resolves the path when it mounts), which keeps each lowerdir short: an image of
 * MAX_LAYERS layers fits the one page mount(2) takes for options. */
#include "snapshot/snap_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/digest.h"

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

int snap_mount_for(struct snapshotter *sn, const struct snap_info *info, const int64_t *parents,
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

void snap_mount_done(struct mount_pb *m) {
        free(m->lower);
}
