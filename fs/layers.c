/* The layer trees' FUSE handlers. See layers.h.
 *
 * Everything but reads is answered at once from the layer's index (ltree_index_get never
 * touches the network); reads go to ltree_read, which answers from a tree worker, so no FUSE
 * thread waits on the network. The tree pointer is behind a read-write lock so the daemon can
 * retire it (fs_layers_set(NULL)) while a request is using it. */
#include "fs/layers.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "layertree/layertree.h"

#define ENTRY_TIMEOUT 3600.0 /* a READY layer never changes */
#define DIR_TIMEOUT 1.0      /* layers/sha256/ grows as layers become ready */
#define OPAQUE_XATTR "trusted.overlay.opaque"

static pthread_rwlock_t tree_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct ltree *tree; /* tree_lock */

void fs_layers_set(struct ltree *lt) {
        pthread_rwlock_wrlock(&tree_lock);
        tree = lt;
        pthread_rwlock_unlock(&tree_lock);
}

static struct ltree *tree_get(void) {
        pthread_rwlock_rdlock(&tree_lock);
        if (!tree)
                pthread_rwlock_unlock(&tree_lock);
        return tree;
}

static void tree_put(void) {
        pthread_rwlock_unlock(&tree_lock);
}

bool fs_layers_enabled(void) {
        struct ltree *lt = tree_get();
        if (lt)
                tree_put();
        return lt != NULL;
}

bool fs_layers_owns(fuse_ino_t ino) {
        return (ino == FS_INO_LAYERS || ino == FS_INO_LAYERS_SHA256 || (ino & FS_LAYER_INO_BIT)) &&
               fs_layers_enabled();
}

static fuse_ino_t ino_of(uint32_t id, uint32_t file) {
        return (fuse_ino_t)(FS_LAYER_INO_BIT | (uint64_t)id << 32 | file);
}

static bool split_ino(fuse_ino_t ino, uint32_t *id, uint32_t *file) {
        if (!(ino & FS_LAYER_INO_BIT))
                return false;
        *id = (uint32_t)((ino & ~FS_LAYER_INO_BIT) >> 32);
        *file = (uint32_t)ino;
        return true;
}

static void fill_dir(struct stat *st, fuse_ino_t ino) {
        memset(st, 0, sizeof(*st));
        st->st_ino = ino;
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
}

static mode_t type_bits(uint8_t type) {
        switch (type) {
        case TAR_DIR:
                return S_IFDIR;
        case TAR_SYMLINK:
                return S_IFLNK;
        case TAR_CHR:
        case TAR_WHITEOUT: /* overlayfs's whiteout: a character device 0/0 */
                return S_IFCHR;
        case TAR_BLK:
                return S_IFBLK;
        case TAR_FIFO:
                return S_IFIFO;
        default:
                return S_IFREG;
        }
}

static void fill_file(struct stat *st, fuse_ino_t ino, const struct layer_file *f, uint32_t nlink) {
        memset(st, 0, sizeof(*st));
        st->st_ino = ino;
        st->st_mode = type_bits(f->type) | (f->mode & 07777);
        st->st_nlink = f->type == TAR_DIR ? 1 : nlink; /* 1: "unknown" (find does not guess) */
        st->st_uid = f->uid;
        st->st_gid = f->gid;
        if (f->type == TAR_REG)
                st->st_size = (off_t)f->size;
        else if (f->type == TAR_SYMLINK && f->link)
                st->st_size = (off_t)strlen(f->link);
        if (f->type == TAR_CHR || f->type == TAR_BLK)
                st->st_rdev = makedev(f->devmajor, f->devminor);
        st->st_blksize = 4096;
        st->st_blocks = (blkcnt_t)((st->st_size + 511) / 512);
        st->st_mtim.tv_sec = (time_t)f->mtime;
        st->st_mtim.tv_nsec = f->mtime_nsec;
        st->st_atim = st->st_ctim = st->st_mtim;
}

/* The canonical file of (ID, FILE) with its attributes. 0 or -errno. */
static int stat_file(struct ltree *lt, uint32_t id, uint32_t file, const struct layer_index **ix,
                     const struct layer_file **ret_f, struct stat *st) {
        uint32_t canon, nlink;
        int r = ltree_index_get(lt, id, ix);
        if (r < 0)
                return r == -ENOENT || r == -EAGAIN ? -ENOENT : -EIO;
        r = ltree_file_inode(lt, id, file, &canon, &nlink);
        if (r < 0) {
                ltree_index_put(lt, id);
                return -ENOENT;
        }
        const struct layer_file *f = layer_index_file(*ix, canon);
        if (st)
                fill_file(st, ino_of(id, canon), f, nlink);
        *ret_f = f;
        return 0;
}

static int do_lookup(struct ltree *lt, fuse_ino_t parent, const char *name,
                     struct fuse_entry_param *ep) {
        memset(ep, 0, sizeof(*ep));
        ep->attr_timeout = ep->entry_timeout = DIR_TIMEOUT;
        if (parent == 1 && strcmp(name, "layers") == 0) {
                ep->ino = FS_INO_LAYERS;
                fill_dir(&ep->attr, ep->ino);
                return 0;
        }
        if (parent == FS_INO_LAYERS) {
                if (strcmp(name, "sha256") != 0)
                        return -ENOENT;
                ep->ino = FS_INO_LAYERS_SHA256;
                fill_dir(&ep->attr, ep->ino);
                return 0;
        }
        const struct layer_index *ix;
        const struct layer_file *f;
        if (parent == FS_INO_LAYERS_SHA256) {
                struct digest d;
                struct ltree_layer_info info;
                if (digest_from_hex(name, strlen(name), &d) < 0 || ltree_find(lt, &d, &info) < 0 ||
                    info.state != LTREE_READY)
                        return -ENOENT; /* not cached: it may become ready in a moment */
                int r = stat_file(lt, info.id, 0, &ix, &f, &ep->attr);
                if (r < 0)
                        return r;
                ltree_index_put(lt, info.id);
                ep->ino = ep->attr.st_ino;
                ep->attr_timeout = ep->entry_timeout = ENTRY_TIMEOUT;
                return 0;
        }
        uint32_t id, file;
        if (!split_ino(parent, &id, &file))
                return -ENOENT;
        int r = stat_file(lt, id, file, &ix, &f, NULL);
        if (r < 0)
                return r;
        if (f->type != TAR_DIR) {
                ltree_index_put(lt, id);
                return -ENOTDIR;
        }
        char path[4096 + 256];
        int n = f->path[0] ? snprintf(path, sizeof(path), "%s/%s", f->path, name)
                           : snprintf(path, sizeof(path), "%s", name);
        ssize_t child =
                n < 0 || (size_t)n >= sizeof(path) ? -ENAMETOOLONG : layer_index_lookup(ix, path);
        ltree_index_put(lt, id);
        if (child < 0)
                return child == -ENAMETOOLONG ? -ENAMETOOLONG : -ENOENT;
        r = stat_file(lt, id, (uint32_t)child, &ix, &f, &ep->attr);
        if (r < 0)
                return r;
        ltree_index_put(lt, id);
        ep->ino = ep->attr.st_ino;
        ep->attr_timeout = ep->entry_timeout = ENTRY_TIMEOUT;
        return 0;
}

void fs_layers_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
        struct ltree *lt = tree_get();
        if (!lt) {
                fuse_reply_err(req, ENOENT);
                return;
        }
        struct fuse_entry_param ep;
        int r = do_lookup(lt, parent, name, &ep);
        tree_put();
        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_entry(req, &ep);
}

void fs_layers_getattr(fuse_req_t req, fuse_ino_t ino) {
        struct stat st;
        double timeout = ENTRY_TIMEOUT;
        int r = 0;
        if (ino == FS_INO_LAYERS || ino == FS_INO_LAYERS_SHA256) {
                fill_dir(&st, ino);
                timeout = DIR_TIMEOUT;
        } else {
                struct ltree *lt = tree_get();
                uint32_t id, file;
                const struct layer_index *ix;
                const struct layer_file *f;
                if (!lt) {
                        r = -ENOENT;
                } else {
                        r = split_ino(ino, &id, &file) ? stat_file(lt, id, file, &ix, &f, &st)
                                                       : -ENOENT;
                        if (r == 0)
                                ltree_index_put(lt, id);
                        tree_put();
                }
        }
        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_attr(req, &st, timeout);
}

void fs_layers_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        if (ino == FS_INO_LAYERS || ino == FS_INO_LAYERS_SHA256) {
                fuse_reply_open(req, fi);
                return;
        }
        struct ltree *lt = tree_get();
        uint32_t id, file;
        const struct layer_index *ix;
        const struct layer_file *f;
        int r = -ENOENT;
        if (lt) {
                r = split_ino(ino, &id, &file) ? stat_file(lt, id, file, &ix, &f, NULL) : -ENOENT;
                if (r == 0) {
                        r = f->type == TAR_DIR ? 0 : -ENOTDIR;
                        ltree_index_put(lt, id);
                }
                tree_put();
        }
        if (r < 0)
                fuse_reply_err(req, -r);
        else {
                fi->keep_cache = 1;
                fi->cache_readdir = 1;
                fuse_reply_open(req, fi);
        }
}

/* Adds one entry; false when BUF is full. */
static bool add_entry(fuse_req_t req, char *buf, size_t size, size_t *len, const char *name,
                      fuse_ino_t ino, mode_t type, off_t next) {
        struct stat st = {.st_ino = ino, .st_mode = type};
        size_t need = fuse_add_direntry(req, buf + *len, size - *len, name, &st, next);
        if (need > size - *len)
                return false;
        *len += need;
        return true;
}

/* Offsets: 1 after ".", 2 after "..", then 3 + layer id (layers/sha256/) or 2 + the child's
 * file index (a layer directory: the cursor of layer_index_next_child). */
static int do_readdir(struct ltree *lt, fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                      char *buf, size_t *ret_len) {
        size_t len = 0;
        uint64_t pos = (uint64_t)off;
        if (pos == 0) {
                if (!add_entry(req, buf, size, &len, ".", ino, S_IFDIR, 1))
                        goto out;
                pos = 1;
        }
        if (pos == 1) {
                fuse_ino_t up = ino == FS_INO_LAYERS          ? 1
                                : ino == FS_INO_LAYERS_SHA256 ? FS_INO_LAYERS
                                                              : ino;
                if (!add_entry(req, buf, size, &len, "..", up, S_IFDIR, 2))
                        goto out;
                pos = 2;
        }
        if (ino == FS_INO_LAYERS) {
                if (pos == 2)
                        add_entry(req, buf, size, &len, "sha256", FS_INO_LAYERS_SHA256, S_IFDIR, 3);
                goto out;
        }
        if (ino == FS_INO_LAYERS_SHA256) {
                uint32_t n = ltree_count(lt);
                for (uint64_t id = pos - 2; id < n; id++) {
                        struct ltree_layer_info info;
                        if (ltree_get(lt, (uint32_t)id, &info) < 0 || info.state != LTREE_READY)
                                continue;
                        char hex[DIGEST_HEX_LEN + 1];
                        digest_to_hex(&info.digest, hex);
                        if (!add_entry(req, buf, size, &len, hex, ino_of((uint32_t)id, 0), S_IFDIR,
                                       (off_t)(id + 3)))
                                break;
                }
                goto out;
        }
        uint32_t id, file;
        const struct layer_index *ix;
        const struct layer_file *f;
        if (!split_ino(ino, &id, &file))
                return -ENOENT;
        int r = stat_file(lt, id, file, &ix, &f, NULL);
        if (r < 0)
                return r;
        size_t dir = (size_t)(f - layer_index_file(ix, 0));
        size_t cursor = pos == 2 ? dir : (size_t)(pos - 2);
        for (ssize_t c; (c = layer_index_next_child(ix, dir, cursor)) >= 0; cursor = (size_t)c) {
                const struct layer_file *cf = layer_index_file(ix, (size_t)c);
                uint32_t canon, nlink;
                if (ltree_file_inode(lt, id, (uint32_t)c, &canon, &nlink) < 0)
                        break;
                const struct layer_file *tf = layer_index_file(ix, canon);
                const char *slash = strrchr(cf->path, '/');
                const char *name = slash ? slash + 1 : cf->path;
                if (!add_entry(req, buf, size, &len, name, ino_of(id, canon), type_bits(tf->type),
                               (off_t)(c + 2)))
                        break;
        }
        ltree_index_put(lt, id);
out:
        *ret_len = len;
        return 0;
}

void fs_layers_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off) {
        if (size > 1 << 20)
                size = 1 << 20;
        char *buf = malloc(size);
        struct ltree *lt = buf ? tree_get() : NULL;
        if (!lt) {
                free(buf);
                fuse_reply_err(req, buf ? ENOENT : ENOMEM);
                return;
        }
        size_t len = 0;
        int r = off < 0 ? -EINVAL : do_readdir(lt, req, ino, size, off, buf, &len);
        tree_put();
        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_buf(req, buf, len);
        free(buf);
}

void fs_layers_readlink(fuse_req_t req, fuse_ino_t ino) {
        struct ltree *lt = tree_get();
        uint32_t id, file;
        const struct layer_index *ix;
        const struct layer_file *f;
        if (!lt) {
                fuse_reply_err(req, ENOENT);
                return;
        }
        int r = split_ino(ino, &id, &file) ? stat_file(lt, id, file, &ix, &f, NULL) : -EINVAL;
        if (r == 0) {
                if (f->type == TAR_SYMLINK && f->link)
                        fuse_reply_readlink(req, f->link);
                else
                        fuse_reply_err(req, EINVAL);
                ltree_index_put(lt, id);
        } else {
                fuse_reply_err(req, -r);
        }
        tree_put();
}

void fs_layers_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        struct ltree *lt = tree_get();
        uint32_t id, file;
        const struct layer_index *ix;
        const struct layer_file *f;
        if (!lt) {
                fuse_reply_err(req, ENOENT);
                return;
        }
        int r = split_ino(ino, &id, &file) ? stat_file(lt, id, file, &ix, &f, NULL) : -EISDIR;
        if (r == 0) {
                r = f->type == TAR_DIR ? -EISDIR : f->type != TAR_REG ? -EACCES : 0;
                ltree_index_put(lt, id);
        }
        tree_put();
        if (r == 0 && (fi->flags & O_ACCMODE) != O_RDONLY)
                r = -EROFS;
        if (r < 0) {
                fuse_reply_err(req, -r);
                return;
        }
        fi->fh = 0; /* the inode says everything */
        fi->keep_cache = 1;
        fi->noflush = 1;
        fuse_reply_open(req, fi);
}

static void reply_read(void *ctx, int err, const void *buf, size_t len) {
        fuse_req_t req = ctx;
        if (err < 0)
                fuse_reply_err(req, err == -ECANCELED ? EIO : -err);
        else
                fuse_reply_buf(req, buf, len);
}

void fs_layers_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off) {
        struct ltree *lt = tree_get();
        uint32_t id, file;
        if (!lt) {
                fuse_reply_err(req, EIO);
                return;
        }
        if (off < 0 || !split_ino(ino, &id, &file)) {
                tree_put();
                fuse_reply_err(req, EINVAL);
                return;
        }
        if (size > 1u << 20)
                size = 1u << 20;
        ltree_read(lt, id, file, (uint64_t)off, size, reply_read, req);
        tree_put();
}

void fs_layers_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
        struct ltree *lt = (ino & FS_LAYER_INO_BIT) ? tree_get() : NULL;
        uint32_t id, file;
        const struct layer_index *ix;
        const struct layer_file *f;
        if (!lt || !split_ino(ino, &id, &file) || stat_file(lt, id, file, &ix, &f, NULL) < 0) {
                if (lt)
                        tree_put();
                fuse_reply_err(req, ENODATA);
                return;
        }
        const void *val = NULL;
        size_t len = 0;
        if ((f->flags & LAYER_F_OPAQUE) && strcmp(name, OPAQUE_XATTR) == 0) {
                val = "y";
                len = 1;
        }
        for (uint32_t i = 0; !val && i < f->nxattrs; i++) {
                const struct layer_xattr *x = layer_index_xattr(ix, f->xattr_first + i);
                if (strcmp(x->name, name) == 0) {
                        val = x->value;
                        len = x->len;
                }
        }
        if (!val)
                fuse_reply_err(req, ENODATA);
        else if (size == 0)
                fuse_reply_xattr(req, len);
        else if (size < len)
                fuse_reply_err(req, ERANGE);
        else
                fuse_reply_buf(req, val, len);
        ltree_index_put(lt, id);
        tree_put();
}

void fs_layers_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
        struct ltree *lt = (ino & FS_LAYER_INO_BIT) ? tree_get() : NULL;
        uint32_t id, file;
        const struct layer_index *ix;
        const struct layer_file *f;
        if (!lt || !split_ino(ino, &id, &file) || stat_file(lt, id, file, &ix, &f, NULL) < 0) {
                if (lt)
                        tree_put();
                if (size == 0)
                        fuse_reply_xattr(req, 0);
                else
                        fuse_reply_buf(req, NULL, 0);
                return;
        }
        size_t total = (f->flags & LAYER_F_OPAQUE) ? sizeof(OPAQUE_XATTR) : 0;
        for (uint32_t i = 0; i < f->nxattrs; i++)
                total += strlen(layer_index_xattr(ix, f->xattr_first + i)->name) + 1;
        if (size == 0) {
                fuse_reply_xattr(req, total);
        } else if (size < total) {
                fuse_reply_err(req, ERANGE);
        } else {
                char *buf = malloc(total ? total : 1);
                if (!buf) {
                        fuse_reply_err(req, ENOMEM);
                } else {
                        size_t at = 0;
                        if (f->flags & LAYER_F_OPAQUE) {
                                memcpy(buf, OPAQUE_XATTR, sizeof(OPAQUE_XATTR));
                                at = sizeof(OPAQUE_XATTR);
                        }
                        for (uint32_t i = 0; i < f->nxattrs; i++) {
                                const char *n = layer_index_xattr(ix, f->xattr_first + i)->name;
                                size_t nl = strlen(n) + 1;
                                memcpy(buf + at, n, nl);
                                at += nl;
                        }
                        fuse_reply_buf(req, buf, total);
                        free(buf);
                }
        }
        ltree_index_put(lt, id);
        tree_put();
}
