/* The snapshot directories: <root>/<id>/fs (the snapshot's files, an upperdir when active),
 * <root>/<id>/work (overlay's workdir, active only) and <root>/<id>/l (symlinks to the layer
 * trees of remote parents, mounts.c). The metadata decides; these follow it
 * (snapshotter.c). */
#include "snapshot/snap_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fts.h>
#include <sys/stat.h>
#include <unistd.h>

void snap_path(const struct snapshotter *sn, int64_t id, const char *sub, char *out, size_t cap) {
        snprintf(out, cap, "%s/%" PRId64 "%s%s", sn->root, id, sub ? "/" : "", sub ? sub : "");
}

int snap_remove_tree(const char *path) {
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

int snap_disk_usage(const char *path, int64_t *ret_size, int64_t *ret_inodes) {
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

int snap_make_dirs(const struct snapshotter *sn, int64_t id, enum snap_kind kind) {
        char p[PATH_MAX];
        snap_path(sn, id, NULL, p, sizeof(p));
        if (mkdir(p, 0700) < 0) {
                if (errno != EEXIST)
                        return -errno;
                /* A directory of this id without metadata: left by a database reset. */
                snap_remove_tree(p);
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
