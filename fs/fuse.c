/* FUSE low-level operations. See fuse.h.
 *
 * Each handler replies exactly once. Reads go to the engine with the request as context; the
 * engine answers from the calling thread when the bytes are on disk, or later from a completion
 * worker (the low-level API allows replying from any thread), so no FUSE thread ever sleeps on
 * the network.
 *
 * Page cache: blob files are immutable, so every open sets keep_cache — re-reads are served by
 * the kernel and never reach us, and nothing is cached twice (the store drops its own pages).
 * A blob not verified yet may still fail verification: the failure drops what the kernel
 * cached of it (fs_invalidate(), called by the engine before the failing reads are answered),
 * so no re-read, on an open file or a new one, is ever answered with bytes that failed.
 * Opening without keep_cache instead would make the kernel drop the file's pages at every
 * open, which waits for the pages of any read of it still waiting on the network: a second
 * container opening a layer being fetched would hang in open() up to the fetch timeout. */
#define FUSE_USE_VERSION 312
#include "fs/fuse.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "engine/engine.h"
#include "fs/layers.h"
#include "fs/resolver.h"
#include "util/log.h"

enum { INO_ROOT = 1, INO_BLOBS = 2, INO_SHA256 = 3, INO_BLOB_BASE = 16 };

#define ENTRY_TIMEOUT 3600.0 /* blobs never change: cache names and attributes for long */
#define DIR_TIMEOUT 1.0      /* the sha256/ listing grows as blobs are added */

struct open_blob {
        uint32_t id;
        struct engine_stream stream;
        struct open_blob *prev, *next; /* in open_files */
};

/* Open handles, so fs_destroy() can free those whose RELEASE never came (the session ended
 * first). One session per process, hence file scope. */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static struct open_blob *open_files;

static void open_track(struct open_blob *ob) {
        pthread_mutex_lock(&open_lock);
        ob->prev = NULL;
        ob->next = open_files;
        if (open_files)
                open_files->prev = ob;
        open_files = ob;
        pthread_mutex_unlock(&open_lock);
}

static void open_untrack(struct open_blob *ob) {
        pthread_mutex_lock(&open_lock);
        if (ob->prev)
                ob->prev->next = ob->next;
        else
                open_files = ob->next;
        if (ob->next)
                ob->next->prev = ob->prev;
        pthread_mutex_unlock(&open_lock);
}

/* One mount per process: the session's userdata points here. */
struct fs_ctx {
        struct engine *e;
        struct resolver *resolver; /* NULL: unknown digests are ENOENT at once */
        struct fuse_session *se;   /* atomic: read by engine workers (fs_invalidate) */
};
static struct fs_ctx fs_ctx;

static struct engine *engine_of(fuse_req_t req) {
        return ((struct fs_ctx *)fuse_req_userdata(req))->e;
}

static void fill_dir(struct stat *st, fuse_ino_t ino) {
        memset(st, 0, sizeof(*st));
        st->st_ino = ino;
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
}

static void fill_blob(struct stat *st, const struct engine_blob_info *b) {
        memset(st, 0, sizeof(*st));
        st->st_ino = INO_BLOB_BASE + b->id;
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = (off_t)b->size;
        st->st_blocks = (blkcnt_t)((b->size + 511) / 512);
        st->st_blksize = 1 << 20;
        st->st_mtime = st->st_ctime = st->st_atime = (time_t)b->added_at;
}

static int do_getattr(struct engine *e, fuse_ino_t ino, struct stat *st, double *timeout) {
        if (ino == INO_ROOT || ino == INO_BLOBS || ino == INO_SHA256) {
                fill_dir(st, ino);
                *timeout = DIR_TIMEOUT;
                return 0;
        }
        if (ino < INO_BLOB_BASE || ino - INO_BLOB_BASE > UINT32_MAX)
                return -ENOENT;
        struct engine_blob_info b;
        int r = engine_get(e, (uint32_t)(ino - INO_BLOB_BASE), &b);
        if (r < 0)
                return r;
        fill_blob(st, &b);
        *timeout = ENTRY_TIMEOUT;
        return 0;
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        (void)fi;
        struct stat st;
        double timeout;
        if (fs_layers_owns(ino)) {
                fs_layers_getattr(req, ino);
                return;
        }
        int r = do_getattr(engine_of(req), ino, &st, &timeout);
        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_attr(req, &st, timeout);
}

/* Names under sha256/ must be exactly 64 lowercase hex of a blob the node knows; anything
 * else is ENOENT without any fetch. */
static int do_lookup(struct engine *e, fuse_ino_t parent, const char *name,
                     struct fuse_entry_param *ep) {
        memset(ep, 0, sizeof(*ep));
        if (parent == INO_ROOT && strcmp(name, "blobs") == 0) {
                ep->ino = INO_BLOBS;
                fill_dir(&ep->attr, INO_BLOBS);
        } else if (parent == INO_BLOBS && strcmp(name, "sha256") == 0) {
                ep->ino = INO_SHA256;
                fill_dir(&ep->attr, INO_SHA256);
        } else if (parent == INO_SHA256) {
                struct digest d;
                struct engine_blob_info b;
                if (digest_from_hex(name, strlen(name), &d) < 0 || engine_find(e, &d, &b) < 0)
                        return -ENOENT;
                ep->ino = INO_BLOB_BASE + b.id;
                fill_blob(&ep->attr, &b);
                ep->attr_timeout = ep->entry_timeout = ENTRY_TIMEOUT;
                return 0;
        } else {
                return -ENOENT;
        }
        ep->attr_timeout = ep->entry_timeout = DIR_TIMEOUT;
        return 0;
}

/* A blob's lookup answered by the resolver (maybe from its thread, maybe at once). */
static void reply_blob_lookup(void *ctx, int err, const struct engine_blob_info *b) {
        fuse_req_t req = ctx;
        if (err < 0) {
                fuse_reply_err(req, err == -EBUSY ? EAGAIN : ENOENT);
                return;
        }
        struct fuse_entry_param ep;
        memset(&ep, 0, sizeof(ep));
        ep.ino = INO_BLOB_BASE + b->id;
        fill_blob(&ep.attr, b);
        ep.attr_timeout = ep.entry_timeout = ENTRY_TIMEOUT;
        fuse_reply_entry(req, &ep);
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
        struct fuse_entry_param ep;
        struct fs_ctx *ctx = fuse_req_userdata(req);
        struct digest d;
        if (fs_layers_owns(parent) ||
            (parent == INO_ROOT && strcmp(name, "layers") == 0 && fs_layers_enabled())) {
                fs_layers_lookup(req, parent, name);
                return;
        }
        if (parent == INO_SHA256 && ctx->resolver) {
                /* A digest other nodes may know: asking them must not hold this thread. */
                if (digest_from_hex(name, strlen(name), &d) < 0)
                        fuse_reply_err(req, ENOENT);
                else
                        resolver_lookup(ctx->resolver, &d, reply_blob_lookup, req);
                return;
        }
        int r = do_lookup(ctx->e, parent, name, &ep);
        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_entry(req, &ep);
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        if (fs_layers_owns(ino)) {
                fs_layers_opendir(req, ino, fi);
                return;
        }
        if (ino != INO_ROOT && ino != INO_BLOBS && ino != INO_SHA256) {
                fuse_reply_err(req, ino >= INO_BLOB_BASE ? ENOTDIR : ENOENT);
                return;
        }
        fuse_reply_open(req, fi);
}

/* Directory offsets: 1 = ".", 2 = "..", 3 + i = i-th child. Blob ids only grow, so an offset
 * stays valid while blobs are added during a listing. */
static int do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, char *buf,
                      size_t *ret_len) {
        struct engine *e = engine_of(req);
        size_t len = 0;
        uint64_t nchildren = ino == INO_SHA256                        ? engine_blob_count(e)
                             : ino == INO_ROOT && fs_layers_enabled() ? 2
                                                                      : 1;
        for (uint64_t pos = (uint64_t)off; pos < 2 + nchildren; pos++) {
                struct stat st = {0};
                char name[DIGEST_HEX_LEN + 1];
                if (pos == 0) {
                        snprintf(name, sizeof(name), ".");
                        st.st_ino = ino;
                        st.st_mode = S_IFDIR;
                } else if (pos == 1) {
                        snprintf(name, sizeof(name), "..");
                        st.st_ino = ino == INO_SHA256 ? INO_BLOBS : INO_ROOT;
                        st.st_mode = S_IFDIR;
                } else if (ino == INO_ROOT && pos == 3) {
                        snprintf(name, sizeof(name), "layers");
                        st.st_ino = FS_INO_LAYERS;
                        st.st_mode = S_IFDIR;
                } else if (ino == INO_ROOT) {
                        snprintf(name, sizeof(name), "blobs");
                        st.st_ino = INO_BLOBS;
                        st.st_mode = S_IFDIR;
                } else if (ino == INO_BLOBS) {
                        snprintf(name, sizeof(name), "sha256");
                        st.st_ino = INO_SHA256;
                        st.st_mode = S_IFDIR;
                } else {
                        struct engine_blob_info b;
                        if (engine_get(e, (uint32_t)(pos - 2), &b) < 0)
                                break;
                        digest_to_hex(&b.digest, name);
                        st.st_ino = INO_BLOB_BASE + b.id;
                        st.st_mode = S_IFREG;
                }
                size_t need =
                        fuse_add_direntry(req, buf + len, size - len, name, &st, (off_t)(pos + 1));
                if (need > size - len)
                        break;
                len += need;
        }
        *ret_len = len;
        return 0;
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi) {
        (void)fi;
        if (fs_layers_owns(ino)) {
                fs_layers_readdir(req, ino, size, off);
                return;
        }
        if (size > 1 << 20)
                size = 1 << 20;
        char *buf = malloc(size);
        if (!buf) {
                fuse_reply_err(req, ENOMEM);
                return;
        }
        size_t len;
        int r = do_readdir(req, ino, size, off, buf, &len);
        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_buf(req, buf, len);
        free(buf);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        if (fs_layers_owns(ino)) {
                fs_layers_open(req, ino, fi);
                return;
        }
        if (ino < INO_BLOB_BASE) {
                fuse_reply_err(req, EISDIR);
                return;
        }
        if ((fi->flags & O_ACCMODE) != O_RDONLY) {
                fuse_reply_err(req, EROFS);
                return;
        }
        struct engine_blob_info b;
        if (engine_get(engine_of(req), (uint32_t)(ino - INO_BLOB_BASE), &b) < 0) {
                fuse_reply_err(req, ENOENT);
                return;
        }
        struct open_blob *ob = calloc(1, sizeof(*ob));
        if (!ob) {
                fuse_reply_err(req, ENOMEM);
                return;
        }
        ob->id = b.id;
        fi->fh = (uint64_t)(uintptr_t)ob;
        fi->keep_cache = 1; /* see the page-cache note at the top */
        fi->noflush = 1;
        open_track(ob);
        if (fuse_reply_open(req, fi) == -ENOENT) { /* the opener was interrupted */
                open_untrack(ob);
                free(ob);
        }
}

/* Reads waiting for the engine, so that a stop can fail them with EIO while the loop still
 * runs (fs_fail_reads). Whoever answers first (the engine or the stop) replies; the other only
 * frees. Guarded by reads_lock, as are the counters below. */
struct pending_read {
        fuse_req_t req;
        bool answered;
        struct pending_read *prev, *next;
};

static pthread_mutex_t reads_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reads_cond = PTHREAD_COND_INITIALIZER;
static struct pending_read *pending_reads;
static bool failing_reads;     /* stopping: reads are answered EIO without the engine */
static unsigned failed_reads;  /* reads the stop answered with EIO */
static unsigned retried_reads; /* reads that came in after that, answered EIO at once */

static void reply_read(void *ctx, int err, const void *buf, size_t len) {
        struct pending_read *pr = ctx;
        pthread_mutex_lock(&reads_lock);
        if (pr->prev)
                pr->prev->next = pr->next;
        else
                pending_reads = pr->next;
        if (pr->next)
                pr->next->prev = pr->prev;
        bool answered = pr->answered;
        pthread_mutex_unlock(&reads_lock);
        if (!answered) {
                if (err < 0)
                        fuse_reply_err(pr->req, -err);
                else
                        fuse_reply_buf(pr->req, buf, len);
        }
        free(pr);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
        if (ino & FS_LAYER_INO_BIT) {
                fs_layers_read(req, ino, size, off);
                return;
        }
        struct open_blob *ob = (struct open_blob *)(uintptr_t)fi->fh;
        if (off < 0) {
                fuse_reply_err(req, EINVAL);
                return;
        }
        log_debug("fuse read blob_id=%u off=%jd size=%zu", ob->id, (intmax_t)off, size);
        struct pending_read *pr = calloc(1, sizeof(*pr));
        if (!pr) {
                fuse_reply_err(req, ENOMEM);
                return;
        }
        pr->req = req;
        pthread_mutex_lock(&reads_lock);
        if (failing_reads) {
                retried_reads++;
                pthread_cond_broadcast(&reads_cond);
                pthread_mutex_unlock(&reads_lock);
                free(pr);
                fuse_reply_err(req, EIO);
                return;
        }
        pr->next = pending_reads;
        if (pending_reads)
                pending_reads->prev = pr;
        pending_reads = pr;
        pthread_mutex_unlock(&reads_lock);
        engine_read(engine_of(req), ob->id, (uint64_t)off, size, &ob->stream, reply_read, pr);
}

static void fs_fail_reads(uint64_t wait_ms) {
        pthread_mutex_lock(&reads_lock);
        failing_reads = true;
        for (struct pending_read *pr = pending_reads; pr; pr = pr->next)
                if (!pr->answered) {
                        pr->answered = true;
                        failed_reads++;
                        fuse_reply_err(pr->req, EIO);
                }
        /* The kernel retries a failed readahead with a read of its own for the reader that
         * waits on it; answer those too (EIO, above) before the loop stops, or the reader
         * gets the aborted connection's ECONNABORTED instead. Readahead nobody waits on is
         * not retried, hence the bound. */
        struct timespec ts = deadline_after_ms(CLOCK_REALTIME, wait_ms);
        while (retried_reads < failed_reads &&
               pthread_cond_timedwait(&reads_cond, &reads_lock, &ts) == 0)
                ;
        pthread_mutex_unlock(&reads_lock);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
        struct open_blob *ob = (struct open_blob *)(uintptr_t)fi->fh;
        if (ino & FS_LAYER_INO_BIT) { /* layer files keep nothing per open */
                fuse_reply_err(req, 0);
                return;
        }
        open_untrack(ob);
        free(ob);
        fuse_reply_err(req, 0);
}

static void fs_readlink(fuse_req_t req, fuse_ino_t ino) {
        if (ino & FS_LAYER_INO_BIT)
                fs_layers_readlink(req, ino);
        else
                fuse_reply_err(req, EINVAL);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino) {
        (void)ino;
        struct statvfs sv = {.f_bsize = 1 << 20,
                             .f_frsize = 1 << 20,
                             .f_namemax = 255,
                             .f_files = engine_blob_count(engine_of(req))};
        fuse_reply_statfs(req, &sv);
}

static void fs_init(void *ud, struct fuse_conn_info *conn) {
        (void)ud;
        /* libfuse derives the kernel's max_pages from max_write, even on a read-only mount:
         * 1 MiB here is what makes 1 MiB reads possible (measured 1.7 -> 3.2 GB/s). */
        conn->max_write = FS_MAX_READ;
        conn->max_read = FS_MAX_READ; /* must match the max_read mount option */
        conn->max_readahead = FS_MAX_READ;
        conn->want |= FUSE_CAP_ASYNC_READ;
        conn->want &= ~(unsigned)FUSE_CAP_READDIRPLUS;
}

static const struct fuse_lowlevel_ops ops = {
        .init = fs_init,
        .lookup = fs_lookup,
        .getattr = fs_getattr,
        .opendir = fs_opendir,
        .readdir = fs_readdir,
        .open = fs_open,
        .read = fs_read,
        .release = fs_release,
        .readlink = fs_readlink,
        .getxattr = fs_layers_getxattr,
        .listxattr = fs_layers_listxattr,
        .statfs = fs_statfs,
};

void fs_invalidate(void *ud, uint32_t id, uint64_t off, uint64_t len) {
        (void)ud;
        struct fuse_session *se = __atomic_load_n(&fs_ctx.se, __ATOMIC_ACQUIRE);
        if (!se)
                return;
        int r = fuse_lowlevel_notify_inval_inode(se, (fuse_ino_t)INO_BLOB_BASE + id, (off_t)off,
                                                 (off_t)len);
        /* -ENOENT: the kernel holds no inode for it, so no pages either. */
        if (r < 0 && r != -ENOENT) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                uint64_t suppressed = 0;
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_warning("cannot drop the page cache of a failed blob blob_id=%u "
                                    "err=%s hint=\"re-reads of open files may see its bytes "
                                    "until they are closed\" suppressed=%" PRIu64,
                                    id, strerror(-r), suppressed);
        }
}

/* A daemon killed with SIGKILL leaves its mount behind: every access fails with ENOTCONN.
 * stat() is not a reliable probe (the kernel may answer it from cached attributes); opening the
 * directory always reaches the filesystem. Crashes can stack mounts, hence the loop. */
static int recover_stale_mount(const char *mountpoint) {
        for (int i = 0; i < 8; i++) {
                int fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (fd >= 0) {
                        close(fd);
                        return 0;
                }
                if (errno == ENOENT) {
                        if (mkdir(mountpoint, 0755) < 0 && errno != EEXIST)
                                return -errno;
                        continue;
                }
                if (errno != ENOTCONN)
                        return -errno;
                log_notice("stale mount found, detaching it mountpoint=%s", mountpoint);
                if (umount2(mountpoint, MNT_DETACH) < 0)
                        return -errno;
        }
        return -EBUSY;
}

/* The kernel caps a FUSE mount's readahead at its bdi's read_ahead_kb (128 KiB by default),
 * whatever max_readahead we negotiate, and a buffered read is cut into readahead-sized
 * requests. Raising it to 1 MiB lets one request carry one chunk. The bdi is named after the
 * mount's anonymous device, which /proc/self/mountinfo shows without a FUSE round trip (a
 * stat of the mountpoint would wait for the loop we have not started yet). Best effort. */
static void raise_readahead(const char *mountpoint) {
        FILE *f = fopen("/proc/self/mountinfo", "re");
        if (!f)
                return;
        char line[4096], dev[32] = "";
        while (fgets(line, sizeof(line), f)) {
                unsigned id, parent, major, minor;
                char mp[PATH_MAX];
                if (sscanf(line, "%u %u %u:%u %*s %4095s", &id, &parent, &major, &minor, mp) == 5 &&
                    strcmp(mp, mountpoint) == 0 && strstr(line, " - fuse.p2pblobs "))
                        snprintf(dev, sizeof(dev), "%u:%u", major, minor); /* last one wins */
        }
        fclose(f);
        if (!dev[0])
                return;
        char path[128];
        snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
        FILE *ra = fopen(path, "we");
        if (!ra || fprintf(ra, "%u\n", FS_MAX_READ / 1024) < 0 || fclose(ra) != 0)
                log_notice(
                        "cannot raise readahead path=%s err=\"%m\" hint=\"reads stay at 128 KiB\"",
                        path);
}

int fs_mount(struct engine *e, struct resolver *resolver, const char *mountpoint, bool allow_other,
             struct fuse_session **ret) {
        fs_ctx = (struct fs_ctx){.e = e, .resolver = resolver};
        int r = recover_stale_mount(mountpoint);
        if (r < 0)
                return r; /* main says so, with the hint for this case */
        /* Without allow_other the kernel lets only the mounting user (root, as containerd is)
         * into the tree: any other local user would read every blob, private images' too, and
         * make the node fetch from the origin with its credentials by opening a file. */
        char *argv[] = {"p2pblobsd", "-o",
                        allow_other ? "ro,default_permissions,allow_other,fsname=p2pblobs,"
                                      "subtype=p2pblobs,max_read=1048576"
                                    : "ro,default_permissions,fsname=p2pblobs,subtype=p2pblobs,"
                                      "max_read=1048576",
                        NULL};
        struct fuse_args args = FUSE_ARGS_INIT(3, argv);
        struct fuse_session *se = fuse_session_new(&args, &ops, sizeof(ops), &fs_ctx);
        fuse_opt_free_args(&args);
        if (!se)
                return -EINVAL;
        if (fuse_session_mount(se, mountpoint) != 0) {
                fuse_session_destroy(se);
                return -EIO;
        }
        char real[PATH_MAX];
        raise_readahead(realpath(mountpoint, real) ? real : mountpoint);
        __atomic_store_n(&fs_ctx.se, se, __ATOMIC_RELEASE);
        *ret = se;
        return 0;
}

int fs_run(struct fuse_session *se, unsigned max_threads) {
        struct fuse_loop_config *lc = fuse_loop_cfg_create();
        if (!lc)
                return -ENOMEM;
        fuse_loop_cfg_set_max_threads(lc, max_threads);
        fuse_loop_cfg_set_idle_threads(lc, max_threads / 2 ? max_threads / 2 : 1);
        int r = fuse_session_loop_mt(se, lc);
        fuse_loop_cfg_destroy(lc);
        return r < 0 ? r : 0;
}

/* ---- teardown: detach, drain, end the loop, abort, destroy ------------------------------- */

#define FUSE_SUPER_MAGIC 0x65735546
#define FUSECTL_SUPER_MAGIC 0x65735543
#define FUSECTL_DIR "/sys/fs/fuse/connections"
#define FAIL_RETRY_WAIT_MS 1000 /* after failing reads at shutdown: wait for kernel retries */

/* What fs_shutdown() did, for fs_destroy(): written by the one thread that stops the loop,
 * read after fs_run() has returned on the loop's thread (which joins that thread first). */
static struct {
        bool detached;   /* we detached the mount ourselves */
        dev_t mount_dev; /* the connection's device: its minor names it in fusectl */
        int waker_dirfd;
        bool waker_started;
        pthread_t waker;
} stop_state = {.waker_dirfd = -1};

/* The loop's exit flag, and an unmount so that workers sleeping in read(/dev/fuse) see it. */
static void stop_now(struct fuse_session *se) {
        fuse_session_exit(se);
        fuse_session_unmount(se);
}

static void *waker_main(void *arg) {
        (void)arg;
        int fd = openat(stop_state.waker_dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0)
                close(fd);
        close(stop_state.waker_dirfd);
        return NULL;
}

void fs_shutdown(struct fuse_session *se, const char *mountpoint, bool (*drain)(void *ud),
                 void *ud) {
        if (!drain) {
                stop_now(se); /* not serving yet, or the mount went away: nothing to drain */
                return;
        }
        /* Our own handle on the mount's root: it lets us wake the loop after the detach. */
        int dirfd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        struct stat st;
        struct statfs sfs;
        if (dirfd < 0 || fstat(dirfd, &st) < 0 || fstatfs(dirfd, &sfs) < 0 ||
            sfs.f_type != FUSE_SUPER_MAGIC) {
                log_warning("cannot open our mount to drain it path=%s err=\"%m\"; stopping "
                            "at once",
                            mountpoint);
                if (dirfd >= 0)
                        close(dirfd);
                stop_now(se);
                return;
        }
        if (umount2(mountpoint, MNT_DETACH) < 0) {
                log_warning("cannot detach the mount path=%s err=\"%m\"; new opens are served "
                            "while draining",
                            mountpoint);
        } else {
                stop_state.detached = true;
                stop_state.mount_dev = st.st_dev;
        }
        /* Reads still waiting get EIO (README) while the loop can still answer them and the
         * kernel's retries of them. */
        if (!drain(ud))
                fs_fail_reads(FAIL_RETRY_WAIT_MS);
        fuse_session_exit(se);
        /* Workers sleep in read(/dev/fuse) until a request comes; send one (an opendir). The
         * worker that takes it answers it, sees the exit flag and ends the loop. Any other
         * request may beat ours to it and end the loop first, leaving ours unanswered until
         * the connection goes: so it is sent from a thread of its own, which fs_destroy()
         * joins after closing the device. */
        stop_state.waker_dirfd = dirfd;
        int r = -pthread_create(&stop_state.waker, NULL, waker_main, NULL);
        if (r < 0) {
                log_warning("cannot start the loop waker err=%s; stopping at once", strerror(-r));
                close(dirfd);
                stop_state.waker_dirfd = -1;
                stop_now(se);
                return;
        }
        stop_state.waker_started = true;
}

/* A reader that still holds a file open (or the waker's request) keeps the connection alive
 * after the loop is gone; abort it through fusectl so its next request fails at once and the
 * unmount does not try a path we detached already. Mounts fusectl if nobody has (systemd does
 * at boot). Best effort. */
static void abort_connection(struct fuse_session *se) {
        struct pollfd pfd = {.fd = fuse_session_fd(se)};
        if (!stop_state.detached || pfd.fd < 0 ||
            (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR)))
                return; /* no connection left: every file on it was closed */
        struct statfs sfs;
        if (statfs(FUSECTL_DIR, &sfs) == 0 && sfs.f_type != FUSECTL_SUPER_MAGIC &&
            mount("fusectl", FUSECTL_DIR, "fusectl", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
                log_info("cannot mount fusectl path=%s err=\"%m\"", FUSECTL_DIR);
        char path[128];
        snprintf(path, sizeof(path), FUSECTL_DIR "/%u/abort", minor(stop_state.mount_dev));
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "1", 1) != 1)
                log_info("cannot abort the fuse connection path=%s err=\"%m\"", path);
        else
                log_debug("aborted the fuse connection path=%s", path);
        if (fd >= 0)
                close(fd);
}

void fs_destroy(struct fuse_session *se) {
        if (!se)
                return;
        __atomic_store_n(&fs_ctx.se, NULL, __ATOMIC_RELEASE); /* the engine is gone by now */
        abort_connection(se);
        fuse_session_unmount(se);
        fuse_session_destroy(se); /* closes the device: a request still waiting on it fails */
        if (stop_state.waker_started) {
                pthread_join(stop_state.waker, NULL);
                stop_state.waker_started = false;
        }
        pthread_mutex_lock(&open_lock);
        while (open_files) {
                struct open_blob *ob = open_files;
                open_files = ob->next;
                free(ob);
        }
        pthread_mutex_unlock(&open_lock);
}
