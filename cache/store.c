/* Sparse-file chunk store. See store.h for the contract.
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
 * one as its size.
 *
 * Page cache of reads: dropped in batches (store.h), since every POSIX_FADV_DONTNEED whose
 * pages are still on another CPU's LRU batch makes the kernel drain every CPU's
 * (lru_add_drain_all: a fifth of the samples of random 4 KiB reads when done per read).
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

#include "util/crc32c.h"

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

/* One open blob: its data file and its checksum file, shared by every thread reading the blob.
 * The two descriptors are immutable once the entry exists and are used only with pread(),
 * fstat(), posix_fadvise() and (on a failed check) lseek(SEEK_DATA/SEEK_HOLE): nothing relies
 * on a file offset, so threads share them without a lock. What must not happen is a close()
 * while another thread is inside a pread() (the number could be reused by an open of another
 * file meanwhile): hence the reference count, and the descriptors are closed by whoever drops
 * the last reference. */
struct fd_ent {
        struct store *s;    /* (immutable) */
        struct digest blob; /* (immutable) */
        int fd, sfd;        /* data, checksums, O_RDONLY (immutable) */
        unsigned refs;      /* the table's (while cached) + one per user (fd_lock) */
        bool cached;        /* in s->fds[] (fd_lock) */
        uint64_t used;      /* LRU clock (fd_lock) */
        /* Pages read and not dropped yet: [drop_from, drop_to), drop_bytes read in it; see
         * "Page cache" in the essay. (fd_lock) */
        uint64_t drop_from, drop_to, drop_bytes;
};

struct store {
        char dir[PATH_MAX];           /* <state>/chunks/sha256; immutable after open, so no lock */
        char sum_dir[PATH_MAX];       /* <state>/chunks/crc32c; the same */
        pthread_mutex_t ra_lock;      /* protects the three fields below; taken alone */
        struct ra_range ra[RA_SLOTS]; /* oldest first */
        unsigned ra_count;
        uint64_t ra_bytes; /* sum of ra[].len: at most STORE_RA_MAX_BYTES */
        /* The descriptor cache. fd_lock is a leaf (never held across a syscall that waits for
         * the disk, never together with ra_lock). */
        pthread_mutex_t fd_lock;
        struct fd_ent **fds; /* max_fds slots, nfds used (fd_lock) */
        unsigned nfds, max_fds;
        uint64_t clock;     /* (fd_lock) */
        uint64_t undropped; /* sum of every entry's drop_bytes (fd_lock) */
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
static int file_path(const char *dir, const struct digest *blob, char path[PATH_MAX]) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(blob, hex);
        int n = snprintf(path, PATH_MAX, "%s/%s", dir, hex);
        return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

static int open_in(const char *dir, const struct digest *blob, int flags) {
        char path[PATH_MAX];
        int r = file_path(dir, blob, path);
        if (r < 0)
                return r;
        int fd = open(path, flags | O_CLOEXEC | O_NOFOLLOW, 0600);
        return fd < 0 ? -errno : fd;
}

static int open_blob(struct store *s, const struct digest *blob, int flags) {
        return open_in(s->dir, blob, flags);
}

/* Opens for writing, recreating DIR when it was deleted under us. */
static int open_for_write(const char *dir, const struct digest *blob) {
        int fd = open_in(dir, blob, O_RDWR | O_CREAT);
        if (fd == -ENOENT) {
                int r = mkdir_p(dir);
                if (r < 0)
                        return r;
                fd = open_in(dir, blob, O_RDWR | O_CREAT);
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

static void dontneed(int fd, uint64_t from, uint64_t to) {
        if (to > from)
                posix_fadvise(fd, (off_t)from, (off_t)(to - from), POSIX_FADV_DONTNEED);
}

/* Drops the pages of [FROM, TO) of ENT's file, except those of readahead ranges not read
 * whole yet: a batch spans whatever its reads spanned (concurrent requests of one stream
 * arrive out of order), and dropping the chunk a reader is about to read would make it wait
 * for the disk. Those pages are the readahead list's to drop (when read whole, or when they
 * age out). Called with a reference, without fd_lock and ra_lock. */
static void fd_flush_range(const struct fd_ent *ent, uint64_t from, uint64_t to) {
        if (to <= from)
                return;
        struct store *s = ent->s;
        uint64_t keep_off[RA_SLOTS], keep_end[RA_SLOTS];
        unsigned n = 0;
        pthread_mutex_lock(&s->ra_lock);
        for (unsigned i = 0; i < s->ra_count; i++) {
                const struct ra_range *r = &s->ra[i];
                if (r->off < to && from < r->off + r->len && digest_equal(&r->blob, &ent->blob)) {
                        /* insertion sort by offset: a handful of ranges */
                        unsigned j = n++;
                        for (; j > 0 && keep_off[j - 1] > r->off; j--) {
                                keep_off[j] = keep_off[j - 1];
                                keep_end[j] = keep_end[j - 1];
                        }
                        keep_off[j] = r->off;
                        keep_end[j] = r->off + r->len;
                }
        }
        pthread_mutex_unlock(&s->ra_lock);
        uint64_t pos = from;
        for (unsigned i = 0; i < n && pos < to; i++) {
                dontneed(ent->fd, pos, keep_off[i] < to ? keep_off[i] : to);
                if (keep_end[i] > pos)
                        pos = keep_end[i];
        }
        dontneed(ent->fd, pos, to);
}

/* The last reference went: drop what it still owes the page cache, close, free. */
static void fd_destroy(struct fd_ent *ent) {
        fd_flush_range(ent, ent->drop_from, ent->drop_to);
        close(ent->fd);
        close(ent->sfd);
        free(ent);
}

/* Drops a reference (NULL-safe). Without fd_lock. */
static void fd_put(struct store *s, struct fd_ent *ent) {
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
static void fd_forget(struct store *s, const struct digest *blob) {
        pthread_mutex_lock(&s->fd_lock);
        struct fd_ent *ent = fd_find(s, blob), *dead = NULL;
        if (ent)
                dead = fd_unlink_locked(s, ent);
        pthread_mutex_unlock(&s->fd_lock);
        if (dead)
                fd_destroy(dead);
}

/* Forgets ENT if it is still the cached entry (a reader found its file replaced). */
static void fd_forget_ent(struct store *s, struct fd_ent *ent) {
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
static int fd_get(struct store *s, const struct digest *blob, struct fd_ent **ret) {
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
                fd = open_in(s->dir, blob, O_RDONLY);
                sfd = fd < 0 ? fd : open_in(s->sum_dir, blob, O_RDONLY);
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
        fd_forget(s, blob);
}

/* ---- checksums ------------------------------------------------------------------------------
 *
 * Every BLOCK of a blob file has an entry in the blob's checksum file, <state>/chunks/crc32c/
 * <hex>: entry i (at i * SUM_LEN) covers bytes [i * BLOCK, (i + 1) * BLOCK) of the blob, the
 * last block short when the size is not a multiple. An entry is the block's CRC-32C, seeded
 * with the block's index (a block found at the wrong offset fails too), followed by its
 * complement: a hole or a torn write in the checksum file (zeros) is never a valid entry, so
 * "no checksum" and "wrong checksum" are the same failure. Entries are 8 bytes, aligned: no
 * entry straddles a sector.
 *
 * Order: store_write() writes the data, then the entries, each written back before it returns,
 * and the caller marks the chunk present only after that; a crash in between leaves bytes with
 * no (valid) entries, which store_probe() reports as lost at start-up. Entries are never
 * cleared: a blob's bytes at an offset never change (content addressing), so an entry that
 * outlives its punched chunk is still right when the chunk is written again. store_remove()
 * removes both files.
 *
 * Cost: 8 bytes per 4 KiB (0.2%) on disk; on every read one pread of the entries (2 KiB per
 * MiB) and a CRC of every byte (about 15 GB/s with the CPU instruction, next to a disk read).
 * The checksum files' pages are left in the page cache while their chunks are present (their
 * reads would otherwise add a synchronous disk read to every cached read) and dropped when a
 * chunk is punched: about 1/512 of the budget, plus a page at the edges of what is present. */
#define BLOCK 4096u
#define SUM_LEN 8u
#define SUM_WINDOW 256u /* entries read at once: 2 KiB, for 1 MiB of data */

static void put32le(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t)v;
        p[1] = (uint8_t)(v >> 8);
        p[2] = (uint8_t)(v >> 16);
        p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32le(const uint8_t *p) {
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t block_crc(uint64_t blk, const uint8_t *p, size_t n) {
        return crc32c((uint32_t)blk, p, n);
}

static void sum_encode(uint8_t *out, uint32_t crc) {
        put32le(out, crc);
        put32le(out + 4, ~crc);
}

static bool sum_decode(const uint8_t *in, uint32_t *ret_crc) {
        uint32_t a = get32le(in), b = get32le(in + 4);
        if (a != ~b)
                return false;
        *ret_crc = a;
        return true;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off) {
        for (size_t done = 0; done < len;) {
                ssize_t w = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                done += (size_t)w;
        }
        return 0;
}

/* Reads exactly LEN bytes; -ESTALE at end of file. */
static int pread_full(int fd, void *buf, size_t len, uint64_t off) {
        for (size_t done = 0; done < len;) {
                ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -ESTALE;
                done += (size_t)n;
        }
        return 0;
}

static uint64_t blocks_of(uint64_t size) {
        return (size + BLOCK - 1) / BLOCK;
}

/* Writes NBLK encoded entries from block FIRST on, and writes them back. */
static int write_sums(struct store *s, const struct digest *blob, uint64_t size, uint64_t first,
                      const uint8_t *sums, size_t nblk) {
        int fd = open_for_write(s->sum_dir, blob);
        if (fd < 0)
                return fd;
        int r = 0;
        struct stat st;
        uint64_t want = blocks_of(size) * SUM_LEN;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                goto out_close;
        }
        if ((uint64_t)st.st_size != want && ftruncate(fd, (off_t)want) < 0) {
                r = -errno;
                goto out_close;
        }
        r = pwrite_full(fd, sums, nblk * SUM_LEN, first * SUM_LEN);
        if (r == 0 && sync_file_range(fd, (off_t)(first * SUM_LEN), (off_t)(nblk * SUM_LEN),
                                      SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                              SYNC_FILE_RANGE_WAIT_AFTER) < 0)
                r = -errno;
out_close:
        close(fd);
        return r;
}

/* Checks N bytes at DATA, which are the file's bytes from block FIRST on (whole blocks, the
 * last one short only at the blob's end), against their entries in SFD. 0, -EBADMSG on a
 * mismatch or a missing entry, -errno. At most SUM_WINDOW blocks. */
static int check_blocks(int sfd, uint64_t first, const uint8_t *data, size_t n) {
        uint8_t sums[SUM_WINDOW * SUM_LEN];
        size_t nblk = (n + BLOCK - 1) / BLOCK;
        int r = pread_full(sfd, sums, nblk * SUM_LEN, first * SUM_LEN);
        if (r < 0)
                return r == -ESTALE ? -EBADMSG : r;
        for (size_t i = 0; i < nblk; i++) {
                size_t bn = n - i * BLOCK < BLOCK ? n - i * BLOCK : BLOCK;
                uint32_t want;
                if (!sum_decode(sums + i * SUM_LEN, &want) ||
                    block_crc(first + i, data + i * BLOCK, bn) != want)
                        return -EBADMSG;
        }
        return 0;
}

int store_write(struct store *s, const struct digest *blob, uint64_t size, uint64_t off,
                const void *buf, size_t len) {
        if (off % BLOCK || (len % BLOCK && off + len != size) || off + len > size)
                return -EINVAL;
        size_t nblk = (len + BLOCK - 1) / BLOCK;
        uint8_t *sums = malloc(nblk ? nblk * SUM_LEN : 1);
        if (!sums)
                return -ENOMEM;
        for (size_t i = 0; i < nblk; i++) {
                size_t n = len - i * BLOCK < BLOCK ? len - i * BLOCK : BLOCK;
                sum_encode(sums + i * SUM_LEN,
                           block_crc(off / BLOCK + i, (const uint8_t *)buf + i * BLOCK, n));
        }
        int r = 0;
        int fd = open_for_write(s->dir, blob);
        if (fd < 0) {
                r = fd;
                goto out_free;
        }
        struct stat st;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                goto out_close;
        }
        if ((uint64_t)st.st_size != size && ftruncate(fd, (off_t)size) < 0) {
                r = -errno;
                goto out_close;
        }
        r = pwrite_full(fd, buf, len, off);
        if (r < 0)
                goto out_close;
        /* Write back now so the pages are clean and DONTNEED can really drop them; an error
         * here (ENOSPC on delayed allocation, EIO) means the bytes are not on disk. */
        if (sync_file_range(fd, (off_t)off, (off_t)len,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                    SYNC_FILE_RANGE_WAIT_AFTER) < 0) {
                r = -errno;
                goto out_close;
        }
        posix_fadvise(fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
        /* The bytes are on disk: now their checksums (see the essay above on the order). */
        r = write_sums(s, blob, size, off / BLOCK, sums, nblk);
out_close:
        close(fd);
out_free:
        free(sums);
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

/* Whether every block of [OFF, OFF+LEN) has a valid entry in BLOB's checksum file (without
 * reading the data). 0, -ESTALE, -errno. */
static int probe_sums(struct store *s, const struct digest *blob, uint64_t off, size_t len) {
        if (len == 0)
                return 0;
        int sfd = open_in(s->sum_dir, blob, O_RDONLY);
        if (sfd < 0)
                return sfd == -ENOENT ? -ESTALE : sfd;
        uint8_t sums[SUM_WINDOW * SUM_LEN];
        uint64_t first = off / BLOCK, last = (off + len - 1) / BLOCK;
        int r = 0;
        for (uint64_t b = first; b <= last && r == 0; b += SUM_WINDOW) {
                uint64_t n = last - b + 1 < SUM_WINDOW ? last - b + 1 : SUM_WINDOW;
                r = pread_full(sfd, sums, (size_t)n * SUM_LEN, b * SUM_LEN);
                for (uint64_t i = 0; i < n && r == 0; i++) {
                        uint32_t crc;
                        if (!sum_decode(sums + i * SUM_LEN, &crc))
                                r = -ESTALE;
                }
        }
        close(sfd);
        return r;
}

int store_probe(struct store *s, const struct digest *blob, uint64_t off, size_t len) {
        int fd = open_blob(s, blob, O_RDONLY);
        if (fd < 0)
                return fd == -ENOENT ? -ESTALE : fd;
        int r = probe_fd(fd, off, len);
        close(fd);
        return r < 0 ? r : probe_sums(s, blob, off, len);
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
        struct fd_ent *ent;
        if (fd_get(s, blob, &ent) < 0)
                return;
        fd_flush_range(ent, off, off + len);
        fd_put(s, ent);
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

/* store_read() read [OFF, OFF+LEN) of BLOB through ENT: readahead ranges now read whole are
 * forgotten and their pages dropped (the read batches leave them alone while they are on the
 * list, see fd_flush_range). (A read that failed notes nothing: its ranges age out of the
 * list, dropped.) */
static void ra_note_read(struct store *s, const struct fd_ent *ent, uint64_t off, uint64_t len) {
        const struct digest *blob = &ent->blob;
        uint64_t done_off[RA_SLOTS], done_end[RA_SLOTS];
        unsigned ndone = 0;
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
                if (r->read >= r->len) {
                        done_off[ndone] = r->off;
                        done_end[ndone++] = r->off + r->len;
                        ra_remove(s, i);
                } else {
                        i++;
                }
        }
        pthread_mutex_unlock(&s->ra_lock);
        for (unsigned i = 0; i < ndone; i++)
                fd_flush_range(ent, done_off[i], done_end[i]);
}

void store_note_served(struct store *s, const struct digest *blob, uint64_t off, size_t len) {
        bool any = false;
        pthread_mutex_lock(&s->ra_lock);
        for (unsigned i = 0; i < s->ra_count && !any; i++)
                any = overlaps(&s->ra[i], blob, off, len);
        pthread_mutex_unlock(&s->ra_lock);
        struct fd_ent *ent;
        if (!any || fd_get(s, blob, &ent) < 0)
                return;
        ra_note_read(s, ent, off, len);
        fd_put(s, ent);
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
        struct fd_ent *ent;
        int r = fd_get(s, blob, &ent);
        if (r < 0) { /* nothing was read ahead: take the range back off the list */
                pthread_mutex_lock(&s->ra_lock);
                for (unsigned i = s->ra_count; i-- > 0;)
                        if (s->ra[i].off == off && s->ra[i].len == len &&
                            digest_equal(&s->ra[i].blob, blob)) {
                                ra_remove(s, i);
                                break;
                        }
                pthread_mutex_unlock(&s->ra_lock);
                return r == -EBADMSG ? -ESTALE : r;
        }
        willneed(ent->fd, (uint64_t)off, len);
        fd_put(s, ent);
        return 0;
}

/* Reads [OFF, OFF+LEN) of FD into BUF, checking every block it touches against SFD: blocks
 * wholly inside the range are read in place, a block the range covers only in part is read
 * whole into a bounce buffer. SIZE is the file's size. 0, -EBADMSG, -ESTALE, -errno. */
static int read_verified(int fd, int sfd, uint64_t size, uint64_t off, uint8_t *buf, size_t len) {
        uint64_t end = off + len;
        for (uint64_t pos = off; pos < end;) {
                uint64_t blk = pos / BLOCK, bstart = blk * BLOCK;
                uint64_t bend = bstart + BLOCK < size ? bstart + BLOCK : size;
                int r;
                if (pos != bstart || end < bend) {
                        uint8_t tmp[BLOCK];
                        r = pread_full(fd, tmp, (size_t)(bend - bstart), bstart);
                        if (r == 0)
                                r = check_blocks(sfd, blk, tmp, (size_t)(bend - bstart));
                        if (r < 0)
                                return r;
                        uint64_t to = end < bend ? end : bend;
                        memcpy(buf + (pos - off), tmp + (pos - bstart), (size_t)(to - pos));
                        pos = to;
                        continue;
                }
                /* Whole blocks from POS: up to a window, ending on a block boundary or at the
                 * end of the file (at least BEND, since END >= BEND). */
                uint64_t wend = pos + (uint64_t)SUM_WINDOW * BLOCK;
                if (wend > end)
                        wend = end;
                if (wend != size)
                        wend -= wend % BLOCK;
                r = pread_full(fd, buf + (pos - off), (size_t)(wend - pos), pos);
                if (r == 0)
                        r = check_blocks(sfd, blk, buf + (pos - off), (size_t)(wend - pos));
                if (r < 0)
                        return r;
                pos = wend;
        }
        return 0;
}

/* Notes that ENT's pages [FROM, TO) were read: they are dropped with the entry's next batch
 * (once STORE_DROP_BATCH bytes were read through it), or all entries' batches at once when
 * the store owes the page cache more than STORE_DROP_MAX in all. Without fd_lock. */
static void fd_flush_some(struct store *s);

static void fd_note_read(struct store *s, struct fd_ent *ent, uint64_t from, uint64_t to) {
        uint64_t dfrom = 0, dto = 0;
        pthread_mutex_lock(&s->fd_lock);
        if (ent->drop_bytes == 0) {
                ent->drop_from = from;
                ent->drop_to = to;
        } else {
                if (from < ent->drop_from)
                        ent->drop_from = from;
                if (to > ent->drop_to)
                        ent->drop_to = to;
        }
        ent->drop_bytes += to - from;
        s->undropped += to - from;
        if (ent->drop_bytes >= STORE_DROP_BATCH) {
                dfrom = ent->drop_from;
                dto = ent->drop_to;
                s->undropped -= ent->drop_bytes;
                ent->drop_bytes = ent->drop_from = ent->drop_to = 0;
        }
        bool over = s->undropped > STORE_DROP_MAX;
        pthread_mutex_unlock(&s->fd_lock);
        fd_flush_range(ent, dfrom, dto);
        if (over)
                fd_flush_some(s);
}

/* Drops cached entries' batches until the store owes at most half of STORE_DROP_MAX. What
 * entries out of the table owe (a reader still holds one) is dropped when that reader lets
 * go. */
static void fd_flush_some(struct store *s) {
        for (;;) {
                struct fd_ent *ent = NULL;
                uint64_t from = 0, to = 0;
                pthread_mutex_lock(&s->fd_lock);
                for (unsigned i = 0; i < s->nfds && s->undropped > STORE_DROP_MAX / 2; i++)
                        if (s->fds[i]->drop_bytes) {
                                ent = s->fds[i];
                                break;
                        }
                if (ent) {
                        from = ent->drop_from;
                        to = ent->drop_to;
                        s->undropped -= ent->drop_bytes;
                        ent->drop_bytes = ent->drop_from = ent->drop_to = 0;
                        ent->refs++;
                }
                pthread_mutex_unlock(&s->fd_lock);
                if (!ent)
                        return;
                fd_flush_range(ent, from, to);
                fd_put(s, ent);
        }
}

/* The file ENT describes is no longer the one at its path: unlinked (rm), or replaced by a
 * rename. Checked on every read, one fstat of each descriptor, so a descriptor cached before
 * an operator's rm never serves the old inode's bytes as if the store still had them. */
#define FD_REPLACED 1

/* One attempt of store_read() through ENT. 0, FD_REPLACED, or store_read()'s errors. */
static int read_ent(struct fd_ent *ent, uint64_t off, void *buf, size_t len, uint64_t *ret_from,
                    uint64_t *ret_to) {
        struct stat st, sst;
        if (fstat(ent->fd, &st) < 0 || fstat(ent->sfd, &sst) < 0)
                return -errno;
        if (st.st_nlink == 0 || sst.st_nlink == 0)
                return FD_REPLACED;
        uint64_t size = (uint64_t)st.st_size;
        if (size < off + len)
                return -ESTALE; /* truncated under us */
        if (len == 0)
                return 0;
        /* The enclosing blocks are what gets read and checked. */
        uint64_t from = off - off % BLOCK;
        uint64_t to = (off + len + BLOCK - 1) / BLOCK * BLOCK;
        if (to > size)
                to = size;
        *ret_from = from;
        *ret_to = to;
        int r = read_verified(ent->fd, ent->sfd, size, off, buf, len);
        /* Lost or damaged? A hole (bytes gone: punched, or a file truncated and grown again)
         * reads as zeros, which fail their checksums unless the bytes were zeros (then the
         * zeros are right): only a failure pays for the probe that tells the two apart. */
        if (r == -EBADMSG && probe_fd(ent->fd, from, (size_t)(to - from)) == -ESTALE)
                r = -ESTALE;
        return r;
}

int store_read(struct store *s, const struct digest *blob, uint64_t off, void *buf, size_t len) {
        for (int attempt = 0;; attempt++) {
                struct fd_ent *ent;
                int r = fd_get(s, blob, &ent);
                if (r < 0)
                        return r;
                uint64_t from = 0, to = 0;
                r = read_ent(ent, off, buf, len, &from, &to);
                if (r == FD_REPLACED) {
                        fd_forget_ent(s, ent);
                        fd_put(s, ent);
                        if (attempt == 0)
                                continue; /* open what the path names now */
                        return -ESTALE;
                }
                if (r == 0) /* first: a range read whole is dropped, not kept by the batch */
                        ra_note_read(s, ent, off, len);
                if (to > from)
                        fd_note_read(s, ent, from, to); /* also after a failure: it read them */
                fd_put(s, ent);
                return r;
        }
}

int store_punch(struct store *s, const struct digest *blob, uint64_t off, size_t len) {
        int fd = open_blob(s, blob, O_RDWR);
        if (fd < 0)
                return fd == -ENOENT ? 0 : fd;
        int r = 0;
        if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
                r = -errno;
        close(fd);
        /* The entries stay (see the essay on checksums), their pages go: what the checksum
         * files keep in the page cache follows the chunks present, not every chunk ever read. */
        int sfd = open_in(s->sum_dir, blob, O_RDONLY);
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
        int r = file_path(s->dir, blob, path);
        if (r == 0)
                r = file_path(s->sum_dir, blob, sums);
        if (r < 0)
                return r;
        /* The data first: a checksum file without its data is harmless (and reclaimed at
         * start), data without checksums reads as corrupt. */
        fd_forget(s, blob); /* its descriptors close once the last reader is done */
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
