/* The store's checksums: writing a chunk and the CRC-32C entries of its blocks, reading a
 * range checked against them, and probing for presence at start-up. Part of the store (see
 * store.c for the layout of the files, store.h for the contract).
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
 * MiB; RWF_NOWAIT first, so that entries not in the page cache are read ahead with their
 * neighbours, see SUM_RA_BYTES) and a CRC of every byte (about 15 GB/s with the CPU
 * instruction, next to a disk read).
 * The checksum files' pages are left in the page cache while their chunks are present (their
 * reads would otherwise add a synchronous disk read to every cached read) and dropped when a
 * chunk is punched: about 1/512 of the budget, plus a page at the edges of what is present. */
#include "cache/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "util/crc32c.h"

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
        int fd = sto_open_for_write(s->sum_dir, blob);
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

/* Entries read ahead when a read's entries are not in the page cache: the checksums of 32 MiB
 * of data. Without it a random reader waited for a disk read of the checksum file on top of the
 * data's until every page of it had been read once (bench item 1 after dropping the page cache:
 * 512 extra synchronous reads per GiB of blob, each doubling that read's wait). */
#define SUM_RA_BYTES (UINT64_C(64) << 10)

/* Block FIRST's entry is not in the page cache: asks for the entries of the present data around
 * it, within the aligned SUM_RA_BYTES window of entries holding FIRST's, and returns without
 * waiting. Present data only (no hole of FD, the data file, in between): those entries stay in
 * the page cache anyway while their chunks are present (see the note at the top); entries of
 * absent or punched chunks are not brought back. A few lseeks, on a miss only. */
static void sums_readahead(int fd, int sfd, uint64_t first) {
        const uint64_t span = SUM_RA_BYTES / SUM_LEN * BLOCK; /* data a window's entries cover */
        uint64_t off = first * BLOCK, ws = off - off % span, from = off;
        off_t d = lseek(fd, (off_t)ws, SEEK_DATA);
        off_t h = d >= 0 && (uint64_t)d <= off ? lseek(fd, d, SEEK_HOLE) : -1;
        if (h >= 0 && (uint64_t)h > off)
                from = (uint64_t)d; /* data all the way from D to FIRST */
        else
                h = lseek(fd, (off_t)off, SEEK_HOLE);
        if (h < 0 || (uint64_t)h <= off)
                return; /* FIRST is not data (its read fails its checksum anyway) */
        uint64_t to = (uint64_t)h < ws + span ? (uint64_t)h : ws + span;
        uint64_t sfrom = from / BLOCK * SUM_LEN, sto = (to + BLOCK - 1) / BLOCK * SUM_LEN;
        posix_fadvise(sfd, (off_t)sfrom, (off_t)(sto - sfrom), POSIX_FADV_WILLNEED);
}

/* Reads the entries of NBLK blocks from FIRST into SUMS, reading ahead (sums_readahead) when
 * they are not in the page cache. 0, -ESTALE at the end of the file, -errno. */
static int read_sums(int fd, int sfd, uint64_t first, uint8_t *sums, size_t nblk) {
        size_t len = nblk * SUM_LEN;
        struct iovec iov = {.iov_base = sums, .iov_len = len};
        /* RWF_NOWAIT: only what the page cache holds. A kernel or filesystem without it
         * (EOPNOTSUPP) just reads, as before. */
        ssize_t n = preadv2(sfd, &iov, 1, (off_t)(first * SUM_LEN), RWF_NOWAIT);
        if (n == (ssize_t)len)
                return 0;
        if (n >= 0 || errno == EAGAIN)
                sums_readahead(fd, sfd, first);
        return pread_full(sfd, sums, len, first * SUM_LEN);
}

/* Checks N bytes at DATA, which are the file's bytes from block FIRST on (whole blocks, the
 * last one short only at the blob's end), against their entries in SFD (FD: the data file).
 * 0, -EBADMSG on a mismatch or a missing entry, -errno. At most SUM_WINDOW blocks. */
static int check_blocks(int fd, int sfd, uint64_t first, const uint8_t *data, size_t n) {
        uint8_t sums[SUM_WINDOW * SUM_LEN];
        size_t nblk = (n + BLOCK - 1) / BLOCK;
        int r = read_sums(fd, sfd, first, sums, nblk);
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
        int fd = sto_open_for_write(s->dir, blob);
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

int sto_probe_fd(int fd, uint64_t off, size_t len) {
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
        int sfd = sto_open_in(s->sum_dir, blob, O_RDONLY);
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
        int fd = sto_open_blob(s, blob, O_RDONLY);
        if (fd < 0)
                return fd == -ENOENT ? -ESTALE : fd;
        int r = sto_probe_fd(fd, off, len);
        close(fd);
        return r < 0 ? r : probe_sums(s, blob, off, len);
}

/* Reads [OFF, OFF+LEN) of FD into BUF, checking every block it touches against SFD: blocks
 * wholly inside the range are read in place, a block the range covers only in part is read
 * whole into a bounce buffer. SIZE is the file's size. 0, -EBADMSG, -ESTALE, -errno. */
int sto_read_verified(int fd, int sfd, uint64_t size, uint64_t off, uint8_t *buf, size_t len) {
        uint64_t end = off + len;
        for (uint64_t pos = off; pos < end;) {
                uint64_t blk = pos / BLOCK, bstart = blk * BLOCK;
                uint64_t bend = bstart + BLOCK < size ? bstart + BLOCK : size;
                int r;
                if (pos != bstart || end < bend) {
                        uint8_t tmp[BLOCK];
                        r = pread_full(fd, tmp, (size_t)(bend - bstart), bstart);
                        if (r == 0)
                                r = check_blocks(fd, sfd, blk, tmp, (size_t)(bend - bstart));
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
                        r = check_blocks(fd, sfd, blk, buf + (pos - off), (size_t)(wend - pos));
                if (r < 0)
                        return r;
                pos = wend;
        }
        return 0;
}
