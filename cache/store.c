/* Sparse-file chunk store: layout, open/close, and the descriptor cache. See store.h for the
 * contract; the parts of the store live in files by concern, sharing cache/store_int.h:
 *   store.c        layout, open/close, paths, the descriptor cache;
 *   store_sum.c    writing chunks and their checksums, the checked read, probing;
 *   store_read.c   reads, readahead ranges and page-cache drop batching;
 *   store_space.c  punching (eviction), removal, reclaim at start, disk and page-cache accounting.
 *
 * Why one sparse file per blob rather than one file per chunk: a 10 GiB budget of 1 MiB chunks
 * would be 10k files and as many inodes and directory entries; a sparse file keeps a blob's
 * chunks at their natural offsets, eviction is a punched hole (fallocate PUNCH_HOLE|KEEP_SIZE),
 * and a missing chunk is visible to SEEK_DATA.
 *
 * Lost bytes are never served as zeros, without probing for holes on every read (SEEK_HOLE is
 * O(file size) on tmpfs, and was most of a cached read's CPU there): every byte read is checked
 * against the CRC-32C written with it, seeded with its block's index, so a hole (zeros) where
 * data was passes only if the data was zeros, and then the zeros are the right bytes. A read
 * that fails its checksums probes once (SEEK_DATA/SEEK_HOLE) to tell a loss (-ESTALE) from
 * damage (-EBADMSG). Descriptors are cached (see "the descriptor cache" below); a file
 * unlinked or replaced under us shows as st_nlink 0 on the fstat every read makes, a truncated
 * one as its size. */
#include "cache/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int mkdir_p(const char *path) {
        char buf[PATH_MAX];
        size_t n = strlen(path);
        if (n >= sizeof(buf))
                return -ENAMETOOLONG;
        memcpy(buf, path, n + 1);
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = '\0';
                if (mkdir(buf, 0700) < 0 && errno != EEXIST)
                        return -errno;
                *p = '/';
        }
        if (mkdir(buf, 0700) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

int store_open(const char *state_dir, struct store **ret) {
        struct store *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        int n = snprintf(s->dir, sizeof(s->dir), "%s/chunks/sha256", state_dir);
        if (n < 0 || (size_t)n >= sizeof(s->dir)) {
                free(s);
                return -ENAMETOOLONG;
        }
        n = snprintf(s->sum_dir, sizeof(s->sum_dir), "%s/chunks/crc32c", state_dir);
        if (n < 0 || (size_t)n >= sizeof(s->sum_dir)) {
                free(s);
                return -ENAMETOOLONG;
        }
        int r = mkdir_p(s->dir);
        if (r == 0)
                r = mkdir_p(s->sum_dir);
        if (r < 0) {
                free(s);
                return r;
        }
        s->max_fds = STORE_OPEN_BLOBS_DEFAULT;
        s->ra_piece = sto_ra_piece("/sys", s->dir);
        s->fds = calloc(STORE_OPEN_BLOBS_MAX, sizeof(*s->fds));
        if (!s->fds) {
                free(s);
                return -ENOMEM;
        }
        pthread_mutex_init(&s->ra_lock, NULL);
        pthread_mutex_init(&s->fd_lock, NULL);
        *ret = s;
        return 0;
}

static void fd_forget_all(struct store *s);

void store_close(struct store *s) {
        if (!s)
                return;
        fd_forget_all(s);
        pthread_mutex_destroy(&s->ra_lock);
        pthread_mutex_destroy(&s->fd_lock);
        free(s->fds);
        free(s);
}

const char *store_dir(const struct store *s) {
        return s->dir;
}

/* Full paths rather than a directory fd: an operator's rm -rf of the store then shows up as
 * ENOENT on the next access instead of writes going into a deleted directory. */
int sto_file_path(const char *dir, const struct digest *blob, char path[PATH_MAX]) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(blob, hex);
        int n = snprintf(path, PATH_MAX, "%s/%s", dir, hex);
        return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

int sto_open_in(const char *dir, const struct digest *blob, int flags) {
        char path[PATH_MAX];
        int r = sto_file_path(dir, blob, path);
        if (r < 0)
                return r;
        int fd = open(path, flags | O_CLOEXEC | O_NOFOLLOW, 0600);
        return fd < 0 ? -errno : fd;
}

int sto_open_blob(struct store *s, const struct digest *blob, int flags) {
        return sto_open_in(s->dir, blob, flags);
}

/* Opens for writing, recreating DIR when it was deleted under us. */
int sto_open_for_write(const char *dir, const struct digest *blob) {
        int fd = sto_open_in(dir, blob, O_RDWR | O_CREAT);
        if (fd == -ENOENT) {
                int r = mkdir_p(dir);
                if (r < 0)
                        return r;
                fd = sto_open_in(dir, blob, O_RDWR | O_CREAT);
        }
        return fd;
}

/* ---- the descriptor cache --------------------------------------------------------------------
 *
 * One entry per blob read recently: its two descriptors, opened once, shared by every reader
 * (struct fd_ent says how), closed when the entry is evicted (least recently used, when a
 * new blob needs a slot), when the blob goes (store_remove, store_release) and at
 * store_close(). An entry found to describe a file that is no longer the one at its path
 * (unlinked or replaced: st_nlink 0) is forgotten and the path opened again, so a descriptor
 * never outlives the file the store's directory names. */

/* Caller holds fd_lock. The cached entry of BLOB, or NULL. */
static struct fd_ent *fd_find(struct store *s, const struct digest *blob) {
        for (unsigned i = 0; i < s->nfds; i++)
                if (digest_equal(&s->fds[i]->blob, blob))
                        return s->fds[i];
        return NULL;
}

/* The last reference went: drop what it still owes the page cache, close, free. */
static void fd_destroy(struct fd_ent *ent) {
        sto_fd_flush_range(ent, ent->drop_from, ent->drop_to);
        close(ent->fd);
        close(ent->sfd);
        free(ent);
}

/* Drops a reference (NULL-safe). Without fd_lock. */
void sto_fd_put(struct store *s, struct fd_ent *ent) {
        if (!ent)
                return;
        pthread_mutex_lock(&s->fd_lock);
        bool last = --ent->refs == 0;
        if (last)
                s->undropped -= ent->drop_bytes;
        pthread_mutex_unlock(&s->fd_lock);
        if (last)
                fd_destroy(ent);
}

/* Caller holds fd_lock. Takes ENT out of the table; returns it when that was the last
 * reference (the caller destroys it after unlocking), else NULL. */
static struct fd_ent *fd_unlink_locked(struct store *s, struct fd_ent *ent) {
        for (unsigned i = 0; i < s->nfds; i++)
                if (s->fds[i] == ent) {
                        s->fds[i] = s->fds[--s->nfds];
                        break;
                }
        ent->cached = false;
        if (--ent->refs)
                return NULL;
        s->undropped -= ent->drop_bytes;
        return ent;
}

/* Forgets BLOB's entry, if any: its descriptors close once the last reader is done. */
void sto_fd_forget(struct store *s, const struct digest *blob) {
        pthread_mutex_lock(&s->fd_lock);
        struct fd_ent *ent = fd_find(s, blob), *dead = NULL;
        if (ent)
                dead = fd_unlink_locked(s, ent);
        pthread_mutex_unlock(&s->fd_lock);
        if (dead)
                fd_destroy(dead);
}

/* Forgets ENT if it is still the cached entry (a reader found its file replaced). */
void sto_fd_forget_ent(struct store *s, struct fd_ent *ent) {
        pthread_mutex_lock(&s->fd_lock);
        struct fd_ent *dead = ent->cached ? fd_unlink_locked(s, ent) : NULL;
        pthread_mutex_unlock(&s->fd_lock);
        if (dead)
                fd_destroy(dead);
}

static void fd_forget_all(struct store *s) {
        for (;;) {
                pthread_mutex_lock(&s->fd_lock);
                struct fd_ent *dead = s->nfds ? fd_unlink_locked(s, s->fds[0]) : NULL;
                bool more = s->nfds > 0;
                pthread_mutex_unlock(&s->fd_lock);
                if (dead)
                        fd_destroy(dead);
                if (!more)
                        return;
        }
}

/* Evicts the least recently used entry (its descriptors close once nobody uses them). Returns
 * whether there was one. */
static bool fd_evict_lru(struct store *s) {
        pthread_mutex_lock(&s->fd_lock);
        struct fd_ent *dead = NULL;
        bool any = s->nfds > 0;
        if (any) {
                struct fd_ent *lru = s->fds[0];
                for (unsigned i = 1; i < s->nfds; i++)
                        if (s->fds[i]->used < lru->used)
                                lru = s->fds[i];
                dead = fd_unlink_locked(s, lru);
        }
        pthread_mutex_unlock(&s->fd_lock);
        if (dead)
                fd_destroy(dead);
        return any;
}

/* A referenced entry for BLOB, from the cache or opened now (and cached, evicting the least
 * recently used entry when the table is full). 0; -ESTALE when the blob file is missing;
 * -EBADMSG when its checksum file is (nothing of it can be checked); -errno. */
int sto_fd_get(struct store *s, const struct digest *blob, struct fd_ent **ret) {
        pthread_mutex_lock(&s->fd_lock);
        struct fd_ent *ent = fd_find(s, blob);
        if (ent) {
                ent->refs++;
                ent->used = ++s->clock;
                pthread_mutex_unlock(&s->fd_lock);
                *ret = ent;
                return 0;
        }
        pthread_mutex_unlock(&s->fd_lock);

        /* Opened without the lock: an open can wait for the disk. Out of descriptors (the
         * process's limit, shared with sockets): the cache gives back its oldest and tries
         * again, so a cache sized past the limit costs opens, never failed reads. */
        int fd, sfd;
        for (int attempt = 0;; attempt++) {
                fd = sto_open_in(s->dir, blob, O_RDONLY);
                sfd = fd < 0 ? fd : sto_open_in(s->sum_dir, blob, O_RDONLY);
                if (fd >= 0 && sfd >= 0)
                        break;
                if (fd >= 0)
                        close(fd);
                int err = fd < 0 ? fd : sfd;
                if ((err == -EMFILE || err == -ENFILE) && attempt < 4 && fd_evict_lru(s))
                        continue;
                if (err == -ENOENT)
                        return fd < 0 ? -ESTALE : -EBADMSG;
                return err;
        }
        /* No kernel readahead on this file: see the essay at the top. Per open file, so once
         * per descriptor. */
        posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
        ent = calloc(1, sizeof(*ent));
        if (!ent) {
                close(fd);
                close(sfd);
                return -ENOMEM;
        }
        *ent = (struct fd_ent){.s = s, .blob = *blob, .fd = fd, .sfd = sfd, .refs = 1};

        struct fd_ent *dead = NULL;
        pthread_mutex_lock(&s->fd_lock);
        struct fd_ent *other = fd_find(s, blob);
        if (other) { /* another reader opened it meanwhile: use theirs */
                other->refs++;
                other->used = ++s->clock;
                pthread_mutex_unlock(&s->fd_lock);
                fd_destroy(ent);
                *ret = other;
                return 0;
        }
        if (s->max_fds > 0) {
                if (s->nfds >= s->max_fds) {
                        struct fd_ent *lru = s->fds[0];
                        for (unsigned i = 1; i < s->nfds; i++)
                                if (s->fds[i]->used < lru->used)
                                        lru = s->fds[i];
                        dead = fd_unlink_locked(s, lru);
                }
                ent->cached = true;
                ent->refs++; /* the table's */
                ent->used = ++s->clock;
                s->fds[s->nfds++] = ent;
        }
        pthread_mutex_unlock(&s->fd_lock);
        if (dead)
                fd_destroy(dead);
        *ret = ent;
        return 0;
}

void store_set_open_blobs(struct store *s, unsigned n) {
        if (n > STORE_OPEN_BLOBS_MAX)
                n = STORE_OPEN_BLOBS_MAX;
        pthread_mutex_lock(&s->fd_lock);
        s->max_fds = n;
        bool over = s->nfds > s->max_fds;
        pthread_mutex_unlock(&s->fd_lock);
        while (over) { /* shrinking: down to the new bound now */
                fd_evict_lru(s);
                pthread_mutex_lock(&s->fd_lock);
                over = s->nfds > s->max_fds;
                pthread_mutex_unlock(&s->fd_lock);
        }
}

unsigned store_open_blobs(struct store *s) {
        pthread_mutex_lock(&s->fd_lock);
        unsigned n = s->nfds;
        pthread_mutex_unlock(&s->fd_lock);
        return n;
}

void store_release(struct store *s, const struct digest *blob) {
        sto_fd_forget(s, blob);
}
