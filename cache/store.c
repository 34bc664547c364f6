/* Sparse-file chunk store. See store.h for the contract.
 *
 * Why one sparse file per blob rather than one file per chunk: a 10 GiB budget of 1 MiB chunks
 * would be 10k files and as many inodes and directory entries; a sparse file keeps a blob's
 * chunks at their natural offsets, eviction is a punched hole (fallocate PUNCH_HOLE|KEEP_SIZE),
 * and a missing chunk is visible to SEEK_DATA, which is how lost bytes are detected rather
 * than served as zeros. */
#include "cache/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct store {
        char dir[PATH_MAX]; /* <state>/chunks/sha256; immutable after open, so no lock */
};

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
        int r = mkdir_p(s->dir);
        if (r < 0) {
                free(s);
                return r;
        }
        *ret = s;
        return 0;
}

void store_close(struct store *s) {
        free(s);
}

const char *store_dir(const struct store *s) {
        return s->dir;
}

/* Full paths rather than a directory fd: an operator's rm -rf of the store then shows up as
 * ENOENT on the next access instead of writes going into a deleted directory. */
static int blob_path(const struct store *s, const struct digest *blob, char path[PATH_MAX]) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(blob, hex);
        int n = snprintf(path, PATH_MAX, "%s/%s", s->dir, hex);
        return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

static int open_blob(struct store *s, const struct digest *blob, int flags) {
        char path[PATH_MAX];
        int r = blob_path(s, blob, path);
        if (r < 0)
                return r;
        int fd = open(path, flags | O_CLOEXEC | O_NOFOLLOW, 0600);
        return fd < 0 ? -errno : fd;
}

int store_write(struct store *s, const struct digest *blob, uint64_t size, uint64_t off,
                const void *buf, size_t len) {
        int fd = open_blob(s, blob, O_RDWR | O_CREAT);
        if (fd == -ENOENT) { /* the directory was deleted under us: recreate it */
                int r = mkdir_p(s->dir);
                if (r < 0)
                        return r;
                fd = open_blob(s, blob, O_RDWR | O_CREAT);
        }
        if (fd < 0)
                return fd;
        int r = 0;
        struct stat st;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                goto out_close;
        }
        if ((uint64_t)st.st_size != size && ftruncate(fd, (off_t)size) < 0) {
                r = -errno;
                goto out_close;
        }
        for (size_t done = 0; done < len;) {
                ssize_t w = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto out_close;
                }
                done += (size_t)w;
        }
        /* Write back now so the pages are clean and DONTNEED can really drop them; an error
         * here (ENOSPC on delayed allocation, EIO) means the bytes are not on disk. */
        if (sync_file_range(fd, (off_t)off, (off_t)len,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                    SYNC_FILE_RANGE_WAIT_AFTER) < 0) {
                r = -errno;
                goto out_close;
        }
        posix_fadvise(fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
out_close:
        close(fd);
        return r;
}

static int probe_fd(int fd, uint64_t off, size_t len) {
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if ((uint64_t)st.st_size < off + len)
                return -ESTALE;
        if (len == 0)
                return 0;
        /* The chunk must start in data and no hole may begin inside it. */
        off_t d = lseek(fd, (off_t)off, SEEK_DATA);
        if (d < 0)
                return errno == ENXIO ? -ESTALE : -errno;
        if ((uint64_t)d != off)
                return -ESTALE;
        off_t h = lseek(fd, (off_t)off, SEEK_HOLE);
        if (h < 0)
                return -errno;
        if ((uint64_t)h < off + len)
                return -ESTALE;
        return 0;
}

int store_probe(struct store *s, const struct digest *blob, uint64_t off, size_t len) {
        int fd = open_blob(s, blob, O_RDONLY);
        if (fd < 0)
                return fd == -ENOENT ? -ESTALE : fd;
        int r = probe_fd(fd, off, len);
        close(fd);
        return r;
}

int store_read(struct store *s, const struct digest *blob, uint64_t off, void *buf, size_t len) {
        int fd = open_blob(s, blob, O_RDONLY);
        if (fd < 0)
                return fd == -ENOENT ? -ESTALE : fd;
        /* We read exactly what we need and drop it after: the kernel's readahead on the store
         * would only add pages we then pay to evict (seen in profiles as page-cache churn). */
        posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
        int r = probe_fd(fd, off, len);
        if (r < 0)
                goto out_close;
        for (size_t done = 0; done < len;) {
                ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto out_drop;
                }
                if (n == 0) { /* truncated between probe and read */
                        r = -ESTALE;
                        goto out_drop;
                }
                done += (size_t)n;
        }
out_drop:
        posix_fadvise(fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
out_close:
        close(fd);
        return r;
}

int store_punch(struct store *s, const struct digest *blob, uint64_t off, size_t len) {
        int fd = open_blob(s, blob, O_RDWR);
        if (fd < 0)
                return fd == -ENOENT ? 0 : fd;
        int r = 0;
        if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
                r = -errno;
        close(fd);
        return r;
}

int store_remove(struct store *s, const struct digest *blob) {
        char path[PATH_MAX];
        int r = blob_path(s, blob, path);
        if (r < 0)
                return r;
        if (unlink(path) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

/* Calls FN for each regular file in the store with an O_RDONLY fd. */
static void for_each_file(struct store *s, void (*fn)(int fd, const struct stat *st, void *ud),
                          void *ud) {
        int dfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
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
