/* State-directory guards. See statedir.h for the contract.
 *
 * Why a lock: two daemons on one state dir share one SQLite index and one store, each with
 * its own in-memory truth about which chunks are present; one evicts (punches) what the other
 * is serving and the index says whatever the last writer said. flock() is per open file
 * description, released by the kernel when the holder dies, so a crash never leaves a stale
 * lock behind (unlike a pid file alone); the pid in the file is only for the message.
 *
 * Why probe writability by creating a file: a read-only mount (or a full inode table) refuses
 * even root, and root ignores permission bits, so access(W_OK) answers the wrong question. A
 * daemon that started anyway said ready and then failed every cold read with EIO.
 *
 * Why move a corrupt index aside: it is a cache of what the store holds, never the only copy
 * of anything, so the right response to "file is not a database" or "malformed" is to keep
 * the file for inspection, start empty, and let statedir_reclaim() drop the store files the
 * new index does not know, rather than refuse to start a node over a cache. */
#include "fs/statedir.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "cache/store.h"
#include "engine/engine.h"
#include "index/index.h"
#include "util/log.h"

struct statedir {
        char dir[PATH_MAX];
        int lock_fd;
};

int statedir_check_writable(const char *path) {
        char probe[PATH_MAX];
        int n = snprintf(probe, sizeof(probe), "%s/.write-probe-%ld", path, (long)getpid());
        if (n < 0 || (size_t)n >= sizeof(probe))
                return -ENAMETOOLONG;
        int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) {
                int r = -errno;
                log_err("state directory is not writable path=%s err=%s hint=\"the cache needs "
                        "a writable --state-dir (a read-only mount or a full disk?)\"",
                        path, strerror(-r));
                return r;
        }
        close(fd);
        unlink(probe);
        return 0;
}

/* The pid the holder wrote into the lock file, or 0 when there is none yet. */
static long holder_pid(int fd) {
        char buf[32];
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        if (n <= 0)
                return 0;
        buf[n] = '\0';
        char *end;
        errno = 0;
        long pid = strtol(buf, &end, 10);
        if (errno || end == buf || pid <= 0)
                return 0;
        return pid;
}

int statedir_open(const char *dir, struct statedir **ret) {
        struct statedir *sd = calloc(1, sizeof(*sd));
        if (!sd)
                return -ENOMEM;
        sd->lock_fd = -1;
        int n = snprintf(sd->dir, sizeof(sd->dir), "%s", dir);
        int r = n < 0 || (size_t)n >= sizeof(sd->dir) ? -ENAMETOOLONG : 0;
        if (r < 0)
                goto out_free;
        r = statedir_check_writable(dir);
        if (r < 0)
                goto out_free;
        char path[PATH_MAX];
        n = snprintf(path, sizeof(path), "%s/lock", dir);
        if (n < 0 || (size_t)n >= sizeof(path)) {
                r = -ENAMETOOLONG;
                goto out_free;
        }
        sd->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (sd->lock_fd < 0) {
                r = -errno;
                log_err("cannot open the state directory's lock path=%s err=%s", path,
                        strerror(-r));
                goto out_free;
        }
        if (flock(sd->lock_fd, LOCK_EX | LOCK_NB) < 0) {
                r = errno == EWOULDBLOCK ? -EBUSY : -errno;
                if (r == -EBUSY) {
                        long pid = holder_pid(sd->lock_fd);
                        char who[32] = "unknown";
                        if (pid > 0)
                                snprintf(who, sizeof(who), "%ld", pid);
                        log_err("state directory is in use by another p2pblobsd dir=%s pid=%s "
                                "hint=\"stop that daemon, or give this one its own "
                                "--state-dir\"",
                                dir, who);
                } else {
                        log_err("cannot lock the state directory path=%s err=%s", path,
                                strerror(-r));
                }
                goto out_close;
        }
        char pid[32];
        n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
        if (ftruncate(sd->lock_fd, 0) < 0 || pwrite(sd->lock_fd, pid, (size_t)n, 0) != n) {
                r = -errno;
                log_err("cannot write the state directory's lock path=%s err=%s", path,
                        strerror(-r));
                goto out_close;
        }
        *ret = sd;
        return 0;
out_close:
        close(sd->lock_fd);
out_free:
        free(sd);
        return r;
}

void statedir_close(struct statedir *sd) {
        if (!sd)
                return;
        if (sd->lock_fd >= 0)
                close(sd->lock_fd); /* releases the lock */
        free(sd);
}

int statedir_open_index(const struct statedir *sd, struct index **ret) {
        char path[PATH_MAX];
        int n = snprintf(path, sizeof(path), "%s/index.db", sd->dir);
        if (n < 0 || (size_t)n >= sizeof(path))
                return -ENAMETOOLONG;
        int r = idx_open(path, ret);
        if (r != -EBADMSG) {
                if (r < 0)
                        log_err("cannot open index path=%s err=%s", path, strerror(-r));
                return r;
        }
        char aside[PATH_MAX];
        r = idx_move_aside(path, (int64_t)time(NULL), aside, sizeof(aside));
        if (r < 0) {
                log_err("index is corrupt and cannot be moved aside path=%s err=%s hint=\"stop "
                        "the daemon and delete it: it is a cache\"",
                        path, strerror(-r));
                return r;
        }
        log_err("index is corrupt path=%s moved_to=%s hint=\"starting with an empty cache; the "
                "old file is kept for inspection, delete it when done\"",
                path, aside);
        r = idx_open(path, ret);
        if (r < 0)
                log_err("cannot open a new index path=%s err=%s", path, strerror(-r));
        return r;
}

/* A blob's files are kept when the engine knows it and holds at least one of its chunks. */
static bool keep_blob(void *ud, const struct digest *blob) {
        struct engine_blob_info info;
        return engine_find(ud, blob, &info) == 0 && info.chunks_present > 0;
}

void statedir_reclaim(struct store *store, struct engine *e) {
        struct store_reclaimed rc = {0};
        store_reclaim(store, keep_blob, e, &rc);
        if (rc.files)
                log_notice("reclaimed store files the index does not hold dir=%s files=%" PRIu64
                           " bytes=%" PRIu64,
                           store_dir(store), rc.files, rc.bytes);
}
