/* The store's space: punching a chunk out (eviction), removing a blob's files, reclaiming
 * files the index does not know at start-up, and what the store occupies on disk and in the
 * page cache. Part of the store (store.c; contract in store.h). */
#include "cache/store_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int store_punch(struct store *s, const struct digest *blob, uint64_t off, size_t len) {
        int fd = sto_open_blob(s, blob, O_RDWR);
        if (fd < 0)
                return fd == -ENOENT ? 0 : fd;
        int r = 0;
        if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
                r = -errno;
        close(fd);
        /* The entries stay (see the essay on checksums), their pages go: what the checksum
         * files keep in the page cache follows the chunks present, not every chunk ever read. */
        int sfd = sto_open_in(s->sum_dir, blob, O_RDONLY);
        if (sfd >= 0) {
                /* DONTNEED drops whole pages only: round out to the pages holding the
                 * entries (a neighbour's entries sharing one are read again when needed). */
                uint64_t from = off / BLOCK * SUM_LEN,
                         to = (off + len + BLOCK - 1) / BLOCK * SUM_LEN;
                from -= from % 4096;
                to += (4096 - to % 4096) % 4096;
                posix_fadvise(sfd, (off_t)from, (off_t)(to - from), POSIX_FADV_DONTNEED);
                close(sfd);
        }
        return r;
}

int store_remove(struct store *s, const struct digest *blob) {
        char path[PATH_MAX], sums[PATH_MAX];
        int r = sto_file_path(s->dir, blob, path);
        if (r == 0)
                r = sto_file_path(s->sum_dir, blob, sums);
        if (r < 0)
                return r;
        /* The data first: a checksum file without its data is harmless (and reclaimed at
         * start), data without checksums reads as corrupt. */
        sto_fd_forget(s, blob); /* its descriptors close once the last reader is done */
        if (unlink(path) < 0 && errno != ENOENT)
                return -errno;
        if (unlink(sums) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

/* Calls FN for each regular file in DIR with an O_RDONLY fd. */
static void for_each_file_in(const char *dir, void (*fn)(int fd, const struct stat *st, void *ud),
                             void *ud) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return;
        DIR *d = fdopendir(dfd);
        if (!d) {
                close(dfd);
                return;
        }
        struct dirent *de;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                int fd = openat(dfd, de->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                if (fd < 0)
                        continue;
                struct stat st;
                if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
                        fn(fd, &st, ud);
                close(fd);
        }
        closedir(d);
}

/* ... in both of the store's directories (blob files and their checksum files). */
static void for_each_file(struct store *s, void (*fn)(int fd, const struct stat *st, void *ud),
                          void *ud) {
        for_each_file_in(s->dir, fn, ud);
        for_each_file_in(s->sum_dir, fn, ud);
}

static void add_blocks(int fd, const struct stat *st, void *ud) {
        (void)fd;
        *(uint64_t *)ud += (uint64_t)st->st_blocks * 512u;
}

uint64_t store_allocated_bytes(struct store *s) {
        uint64_t total = 0;
        for_each_file(s, add_blocks, &total);
        return total;
}

static void add_resident(int fd, const struct stat *st, void *ud) {
        const size_t window = 64u << 20; /* bound the mapping and the mincore vector */
        long page = sysconf(_SC_PAGESIZE);
        unsigned char vec[(64u << 20) / 4096];
        if (page != 4096)
                return; /* vec is sized for 4 KiB pages; other sizes are not worth the code */
        for (uint64_t off = 0; off < (uint64_t)st->st_size; off += window) {
                size_t len = (uint64_t)st->st_size - off < window
                                     ? (size_t)(st->st_size - (off_t)off)
                                     : window;
                void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)off);
                if (m == MAP_FAILED)
                        return;
                if (mincore(m, len, vec) == 0)
                        for (size_t i = 0; i < (len + 4095) / 4096; i++)
                                if (vec[i] & 1)
                                        *(uint64_t *)ud += 4096;
                munmap(m, len);
        }
}

uint64_t store_page_cache_bytes(struct store *s) {
        uint64_t total = 0;
        for_each_file(s, add_resident, &total);
        return total;
}

/* Unlinks NAME in DFD, adding what it occupied to RET. */
static void reclaim_one(int dfd, const char *name, const struct stat *st,
                        struct store_reclaimed *ret) {
        if (unlinkat(dfd, name, 0) < 0)
                return;
        ret->files++;
        ret->bytes += (uint64_t)st->st_blocks * 512u;
}

/* Removes the regular files of DIR named by a digest that KEEP refuses; with DATA_DIR also
 * those whose blob file is missing there (checksum files left without their data). */
static void reclaim_dir(const char *dir, const char *data_dir,
                        bool (*keep)(void *ud, const struct digest *blob), void *ud,
                        struct store_reclaimed *ret) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return;
        int datafd = data_dir ? open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
        DIR *d = fdopendir(dfd);
        if (!d) {
                close(dfd);
                if (datafd >= 0)
                        close(datafd);
                return;
        }
        struct dirent *de;
        while ((de = readdir(d))) {
                struct digest blob;
                struct stat st, dst;
                if (digest_from_hex(de->d_name, strlen(de->d_name), &blob) < 0)
                        continue; /* not ours to judge */
                if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                        continue;
                bool orphan = data_dir && (datafd < 0 || fstatat(datafd, de->d_name, &dst,
                                                                 AT_SYMLINK_NOFOLLOW) < 0);
                if (orphan || !keep(ud, &blob))
                        reclaim_one(dfd, de->d_name, &st, ret);
        }
        closedir(d);
        if (datafd >= 0)
                close(datafd);
}

int store_reclaim(struct store *s, bool (*keep)(void *ud, const struct digest *blob), void *ud,
                  struct store_reclaimed *ret) {
        struct store_reclaimed r = {0};
        reclaim_dir(s->dir, NULL, keep, ud, &r);
        reclaim_dir(s->sum_dir, s->dir, keep, ud, &r);
        *ret = r;
        return 0;
}
