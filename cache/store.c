/* Sparse-file chunk store. See store.h for the contract.
 *
 * Why one sparse file per blob rather than one file per chunk: a 10 GiB budget of 1 MiB chunks
 * would be 10k files and as many inodes and directory entries; a sparse file keeps a blob's
 * chunks at their natural offsets, eviction is a punched hole (fallocate PUNCH_HOLE|KEEP_SIZE),
 * and a missing chunk is visible to SEEK_DATA, which is how lost bytes are detected rather
 * than served as zeros.
 *
 * Reads and readahead. store_read() reads exactly what it is asked for (POSIX_FADV_RANDOM: no
 * kernel readahead) and drops it: kernel readahead on every read added pages nobody read, paid
 * for twice (reading, then evicting), and cost a quarter of the daemon's CPU. But a sequential
 * reader served that way waits for one synchronous disk read per chunk at queue depth one: a
 * fifth of what the disk gives the same reads of the store file. So readahead is the caller's
 * decision, per range (store_readahead: the engine asks for the next few chunks of a sequential
 * stream, which it knows are present), and the store keeps the account: a fixed list of ranges
 * asked for and not yet read whole, at most STORE_RA_MAX_BYTES in all. A range read whole
 * leaves the list (its reads dropped its pages); when a new range does not fit, the oldest are
 * dropped from the page cache (DONTNEED) and forgotten, so an abandoned stream costs nothing
 * after the list turns over. Readahead pages are thus bounded by design, however many readers
 * there are and whatever they do. One gap: DONTNEED skips pages whose read is still in flight,
 * so a range dropped within a disk latency of being asked for keeps those pages until they are
 * read or reclaimed; that takes more than STORE_RA_MAX_BYTES of readahead asked for in that
 * time (the engine asks for a few chunks per sequential stream). */
#include "cache/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A range store_readahead() brought in that store_read() has not yet read whole. */
struct ra_range {
        struct digest blob;
        uint64_t off, len;
        uint64_t read; /* bytes of it read since; a byte read twice counts twice, which at worst
                        * forgets the range early (its reads still drop what they read) */
};

/* Ranges remembered at once; with chunk-sized ranges, STORE_RA_MAX_BYTES binds first. */
#define RA_SLOTS 64

/* One POSIX_FADV_WILLNEED is cut short by the kernel at max(the disk's largest request, the
 * file's readahead window): 128 KiB on a disk with default settings. Asking in pieces no larger
 * gets the whole range submitted, all of it in flight at once. */
#define RA_PIECE (128u << 10)

struct store {
        char dir[PATH_MAX];           /* <state>/chunks/sha256; immutable after open, so no lock */
        pthread_mutex_t ra_lock;      /* protects the three fields below; taken alone */
        struct ra_range ra[RA_SLOTS]; /* oldest first */
        unsigned ra_count;
        uint64_t ra_bytes; /* sum of ra[].len: at most STORE_RA_MAX_BYTES */
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
        pthread_mutex_init(&s->ra_lock, NULL);
        *ret = s;
        return 0;
}

void store_close(struct store *s) {
        if (!s)
                return;
        pthread_mutex_destroy(&s->ra_lock);
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

/* Submits reads of [OFF, OFF+LEN) without waiting for them; see RA_PIECE. */
static void willneed(int fd, uint64_t off, uint64_t len) {
        for (uint64_t done = 0; done < len; done += RA_PIECE) {
                uint64_t n = len - done < RA_PIECE ? len - done : RA_PIECE;
                posix_fadvise(fd, (off_t)(off + done), (off_t)n, POSIX_FADV_WILLNEED);
        }
}

/* Drops the page cache of a range; a file that is gone has none. */
static void drop_range(struct store *s, const struct digest *blob, uint64_t off, uint64_t len) {
        int fd = open_blob(s, blob, O_RDONLY);
        if (fd < 0)
                return;
        posix_fadvise(fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
        close(fd);
}

/* Caller holds ra_lock. */
static void ra_remove(struct store *s, unsigned i) {
        s->ra_bytes -= s->ra[i].len;
        memmove(&s->ra[i], &s->ra[i + 1], (s->ra_count - i - 1) * sizeof(s->ra[0]));
        s->ra_count--;
}

static bool overlaps(const struct ra_range *r, const struct digest *blob, uint64_t off,
                     uint64_t len) {
        return off < r->off + r->len && r->off < off + len && digest_equal(&r->blob, blob);
}

/* store_read() read [OFF, OFF+LEN) of BLOB and dropped it: readahead ranges now read whole are
 * forgotten. (A read that failed notes nothing: its ranges age out of the list, dropped.) */
static void ra_note_read(struct store *s, const struct digest *blob, uint64_t off, uint64_t len) {
        pthread_mutex_lock(&s->ra_lock);
        for (unsigned i = 0; i < s->ra_count;) {
                struct ra_range *r = &s->ra[i];
                if (!overlaps(r, blob, off, len)) {
                        i++;
                        continue;
                }
                uint64_t from = off > r->off ? off : r->off;
                uint64_t to = off + len < r->off + r->len ? off + len : r->off + r->len;
                r->read += to - from;
                if (r->read >= r->len)
                        ra_remove(s, i);
                else
                        i++;
        }
        pthread_mutex_unlock(&s->ra_lock);
}

int store_readahead(struct store *s, const struct digest *blob, uint64_t off, size_t len) {
        if (len == 0 || len > STORE_RA_MAX_BYTES)
                return -E2BIG;
        struct ra_range old[RA_SLOTS];
        unsigned nold = 0;
        pthread_mutex_lock(&s->ra_lock);
        for (unsigned i = 0; i < s->ra_count; i++) {
                const struct ra_range *r = &s->ra[i];
                if (r->off <= off && off + len <= r->off + r->len && digest_equal(&r->blob, blob)) {
                        pthread_mutex_unlock(&s->ra_lock);
                        return 0; /* asked for already, not read yet */
                }
        }
        while (s->ra_count == RA_SLOTS || s->ra_bytes + len > STORE_RA_MAX_BYTES) {
                old[nold++] = s->ra[0];
                ra_remove(s, 0);
        }
        s->ra[s->ra_count++] = (struct ra_range){.blob = *blob, .off = off, .len = len};
        s->ra_bytes += len;
        pthread_mutex_unlock(&s->ra_lock);

        /* Dropped outside the lock: readers never wait for these syscalls. A page a reader
         * is copying this instant is skipped by DONTNEED, and that reader drops it after. */
        for (unsigned i = 0; i < nold; i++)
                drop_range(s, &old[i].blob, old[i].off, old[i].len);
        int fd = open_blob(s, blob, O_RDONLY);
        if (fd < 0) { /* nothing was read ahead: take the range back off the list */
                pthread_mutex_lock(&s->ra_lock);
                for (unsigned i = s->ra_count; i-- > 0;)
                        if (s->ra[i].off == off && s->ra[i].len == len &&
                            digest_equal(&s->ra[i].blob, blob)) {
                                ra_remove(s, i);
                                break;
                        }
                pthread_mutex_unlock(&s->ra_lock);
                return fd == -ENOENT ? -ESTALE : fd;
        }
        willneed(fd, (uint64_t)off, len);
        close(fd);
        return 0;
}

int store_read(struct store *s, const struct digest *blob, uint64_t off, void *buf, size_t len) {
        int fd = open_blob(s, blob, O_RDONLY);
        if (fd < 0)
                return fd == -ENOENT ? -ESTALE : fd;
        /* No kernel readahead: see the essay at the top. */
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
        if (r == 0)
                ra_note_read(s, blob, off, len);
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
