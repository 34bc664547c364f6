/* Unit tests for cache/store.c: sparse files, holes and truncation seen as -ESTALE, punching,
 * removal, an operator's rm -rf, block accounting and page-cache discipline, readahead and its
 * bound; every read checked against the checksums written with the bytes (flipped bytes, zeros,
 * a replaced file, damaged or missing checksum files, moved blocks, unaligned reads: -EBADMSG,
 * never wrong bytes), and reclaiming files the index does not know.
 *
 * Every test runs against its own store in a private temporary directory, removed by the
 * teardown. The page-cache test needs a filesystem whose pages can be dropped: tmpfs pages are
 * the file itself, so on a tmpfs /tmp the store goes under /var/tmp, and if that is tmpfs too
 * the one page-cache test is skipped. Sizes are multiples of 4 KiB so holes fall on block
 * boundaries whatever the filesystem's block size up to that. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cache/store.h"
#include "cache/store_int.h" /* sto_ra_piece, RA_PIECE_MIN: the sizing has no public face */
#include "util/digest.h"

#define KIB (UINT64_C(1) << 10)
#define MIB (UINT64_C(1) << 20)
/* Blocks a filesystem may add to a file's st_blocks beyond its data (extent tree, indirect
 * blocks); ext4 with inline extents adds nothing, others a few blocks. */
#define SLACK (128 * KIB)

struct fixture {
        char dir[256]; /* the state directory given to store_open (mkdtemp: short) */
        bool tmpfs;    /* page cache cannot be dropped there */
        struct store *s;
};

static bool is_tmpfs(const char *path) {
        struct statfs sf;
        return statfs(path, &sf) == 0 && sf.f_type == TMPFS_MAGIC;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void)st;
        (void)flag;
        (void)ftw;
        return remove(path) < 0 ? -errno : 0;
}

static int rm_rf(const char *path) {
        return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int setup(void **state) {
        struct fixture *f = calloc(1, sizeof(*f));
        if (!f)
                return -1;
        const char *base = "/tmp";
        if (is_tmpfs(base) && !is_tmpfs("/var/tmp"))
                base = "/var/tmp";
        snprintf(f->dir, sizeof(f->dir), "%s/p2pblobs-test-store-XXXXXX", base);
        if (!mkdtemp(f->dir)) {
                free(f);
                return -1;
        }
        f->tmpfs = is_tmpfs(f->dir);
        if (store_open(f->dir, &f->s) < 0) {
                rm_rf(f->dir);
                free(f);
                return -1;
        }
        *state = f;
        return 0;
}

static int teardown(void **state) {
        struct fixture *f = *state;
        store_close(f->s);
        int r = rm_rf(f->dir);
        free(f);
        return r == 0 ? 0 : -1;
}

static struct digest D(const char *name) {
        struct digest d;
        digest_sha256(name, strlen(name), &d);
        return d;
}

static void
blob_file(const struct fixture *f, const struct digest *d, char path[PATH_MAX]) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(d, hex);
        int n = snprintf(path, PATH_MAX, "%s/chunks/sha256/%s", f->dir, hex);
        assert_true(n > 0 && n < PATH_MAX);
}

/* Bytes that differ by offset and by seed, so a read from the wrong place is noticed. */
static void *pattern(size_t len, uint32_t seed) {
        uint8_t *p = malloc(len);
        assert_non_null(p);
        for (size_t i = 0; i < len; i++)
                p[i] = (uint8_t)((i * 131u + seed * 7u + (i >> 12)) & 0xff);
        return p;
}

static void write_pattern(struct fixture *f, const struct digest *d, uint64_t size, uint64_t off,
                          size_t len, uint32_t seed) {
        void *buf = pattern(len, seed);
        assert_int_equal(store_write(f->s, d, size, off, buf, len), 0);
        free(buf);
}

/* Reads [OFF, OFF+LEN) and compares it with pattern(LEN_ALL, SEED) starting at SKIP. */
static void expect_pattern(struct fixture *f, const struct digest *d, uint64_t off, size_t len,
                           uint32_t seed, size_t skip) {
        void *want = pattern(skip + len, seed);
        void *got = malloc(len);
        assert_non_null(got);
        assert_int_equal(store_read(f->s, d, off, got, len), 0);
        assert_memory_equal(got, (char *)want + skip, len);
        free(got);
        free(want);
}

static void expect_read_stale(struct fixture *f, const struct digest *d, uint64_t off, size_t len) {
        void *buf = malloc(len ? len : 1);
        assert_non_null(buf);
        assert_int_equal(store_read(f->s, d, off, buf, len), -ESTALE);
        free(buf);
}

static uint64_t allocated_of(const char *path) {
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        return (uint64_t)st.st_blocks * 512u;
}

static void test_open_creates_dir(void **state) {
        struct fixture *f = *state;
        char want[PATH_MAX];
        struct stat st;

        snprintf(want, sizeof(want), "%s/chunks/sha256", f->dir);
        assert_int_equal(stat(want, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_string_equal(store_dir(f->s), want);
        assert_int_equal(store_allocated_bytes(f->s), 0);

        /* Opening an existing store again is fine. */
        struct store *again = NULL;
        assert_int_equal(store_open(f->dir, &again), 0);
        assert_non_null(again);
        assert_string_equal(store_dir(again), want);
        store_close(again);
        store_close(NULL);

        /* A state directory that cannot be created (its parent is a regular file) fails with
         * -errno and leaves the out-parameter alone. */
        char bad[PATH_MAX];
        snprintf(bad, sizeof(bad), "%s/file", f->dir);
        int fd = open(bad, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        close(fd);
        static char sentinel_obj;
        struct store *sentinel = (struct store *)(void *)&sentinel_obj;
        struct store *s = sentinel;
        assert_int_equal(store_open(bad, &s), -ENOTDIR);
        assert_ptr_equal(s, sentinel);
}

static void test_write_sparse_read_back(void **state) {
        struct fixture *f = *state;
        struct digest d = D("sparse");
        char path[PATH_MAX];
        struct stat st;
        const uint64_t size = 64 * MIB;

        write_pattern(f, &d, size, 8 * MIB, MIB, 1);
        blob_file(f, &d, path);
        assert_int_equal(stat(path, &st), 0);
        assert_true(S_ISREG(st.st_mode));
        assert_true((uint64_t)st.st_size == size);
        /* Only the written megabyte is allocated, not 64. */
        assert_true((uint64_t)st.st_blocks * 512u >= MIB);
        assert_true((uint64_t)st.st_blocks * 512u <= MIB + SLACK);

        expect_pattern(f, &d, 8 * MIB, MIB, 1, 0);
        expect_pattern(f, &d, 8 * MIB + 4 * KIB, 8 * KIB, 1, 4 * KIB); /* a sub-range */

        /* A second chunk of the same blob leaves the first alone and the size unchanged. */
        write_pattern(f, &d, size, 63 * MIB, MIB, 2);
        assert_int_equal(stat(path, &st), 0);
        assert_true((uint64_t)st.st_size == size);
        expect_pattern(f, &d, 8 * MIB, MIB, 1, 0);
        expect_pattern(f, &d, 63 * MIB, MIB, 2, 0);

        /* A blob whose size is not a block multiple, written whole, reads back whole. */
        struct digest odd = D("odd-size");
        write_pattern(f, &odd, 10000, 0, 10000, 3);
        blob_file(f, &odd, path);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_size, 10000);
        expect_pattern(f, &odd, 0, 10000, 3, 0);
        expect_read_stale(f, &odd, 8192, 10000 - 8192 + 1); /* one byte past the end */
}

static void test_read_stale(void **state) {
        struct fixture *f = *state;
        struct digest d = D("holes"), missing = D("never-written"), t = D("truncated");
        char path[PATH_MAX];

        /* A hole: a range of a known blob that was never written. */
        write_pattern(f, &d, 16 * MIB, 4 * MIB, MIB, 4);
        expect_read_stale(f, &d, 0, MIB);
        expect_read_stale(f, &d, 6 * MIB, 4 * KIB);
        expect_read_stale(f, &d, 15 * MIB, MIB); /* the tail, up to the blob's end */
        expect_pattern(f, &d, 4 * MIB, MIB, 4, 0);

        /* A file that does not exist. */
        expect_read_stale(f, &missing, 0, 4 * KIB);

        /* A file truncated by hand under the store. */
        write_pattern(f, &t, 4 * MIB, 0, 4 * MIB, 5);
        expect_pattern(f, &t, 2 * MIB, MIB, 5, 2 * MIB);
        blob_file(f, &t, path);
        assert_int_equal(truncate(path, (off_t)MIB), 0);
        expect_read_stale(f, &t, 2 * MIB, MIB);  /* wholly past the new end */
        expect_read_stale(f, &t, MIB / 2, MIB);  /* straddles the new end */
        expect_read_stale(f, &t, MIB, 4 * KIB);  /* starts exactly at the new end */
        expect_pattern(f, &t, 0, MIB / 2, 5, 0); /* what is left is still served */
        expect_pattern(f, &t, MIB - 4 * KIB, 4 * KIB, 5, MIB - 4 * KIB);

        /* Truncated to zero. */
        assert_int_equal(truncate(path, 0), 0);
        expect_read_stale(f, &t, 0, 4 * KIB);
}

static void test_probe(void **state) {
        struct fixture *f = *state;
        struct digest d = D("probe"), missing = D("probe-missing"), last = D("probe-last");
        char path[PATH_MAX];

        /* Data at [4 MiB, 6 MiB) of a 16 MiB blob, holes around it. */
        write_pattern(f, &d, 16 * MIB, 4 * MIB, 2 * MIB, 6);
        assert_int_equal(store_probe(f->s, &d, 4 * MIB, 2 * MIB), 0);
        assert_int_equal(store_probe(f->s, &d, 4 * MIB, MIB), 0);
        assert_int_equal(store_probe(f->s, &d, 5 * MIB, MIB), 0);
        assert_int_equal(store_probe(f->s, &d, 0, MIB), -ESTALE);        /* hole */
        assert_int_equal(store_probe(f->s, &d, 10 * MIB, MIB), -ESTALE); /* hole after data */
        assert_int_equal(store_probe(f->s, &d, 15 * MIB, MIB), -ESTALE); /* hole at the end */
        /* Straddling: data then hole, and hole then data. */
        assert_int_equal(store_probe(f->s, &d, 5 * MIB, 2 * MIB), -ESTALE);
        assert_int_equal(store_probe(f->s, &d, 6 * MIB - 4 * KIB, 8 * KIB), -ESTALE);
        assert_int_equal(store_probe(f->s, &d, 3 * MIB, 2 * MIB), -ESTALE);
        assert_int_equal(store_probe(f->s, &d, 4 * MIB - 4 * KIB, 8 * KIB), -ESTALE);
        /* Past the end of the blob. */
        assert_int_equal(store_probe(f->s, &d, 16 * MIB, 4 * KIB), -ESTALE);

        /* Missing file. */
        assert_int_equal(store_probe(f->s, &missing, 0, 4 * KIB), -ESTALE);

        /* The last, short chunk of a blob whose size is not a chunk multiple; the chunk before
         * it was never written. */
        write_pattern(f, &last, 3 * MIB + 1000, 3 * MIB, 1000, 7);
        assert_int_equal(store_probe(f->s, &last, 3 * MIB, 1000), 0);
        expect_pattern(f, &last, 3 * MIB, 1000, 7, 0);
        assert_int_equal(store_probe(f->s, &last, 2 * MIB, MIB), -ESTALE);
        assert_int_equal(store_probe(f->s, &last, 3 * MIB, 1001), -ESTALE);

        /* Truncated by hand: the chunk that was there is gone. */
        blob_file(f, &d, path);
        assert_int_equal(truncate(path, (off_t)(5 * MIB)), 0);
        assert_int_equal(store_probe(f->s, &d, 4 * MIB, MIB), 0);
        assert_int_equal(store_probe(f->s, &d, 5 * MIB, MIB), -ESTALE);
        assert_int_equal(store_probe(f->s, &d, 4 * MIB, 2 * MIB), -ESTALE);
}

static void test_punch(void **state) {
        struct fixture *f = *state;
        struct digest d = D("punch"), missing = D("punch-missing");
        char path[PATH_MAX];
        struct stat st;

        write_pattern(f, &d, 4 * MIB, 0, 2 * MIB, 8);
        blob_file(f, &d, path);
        uint64_t before = allocated_of(path);
        assert_true(before >= 2 * MIB);

        assert_int_equal(store_punch(f->s, &d, 0, MIB), 0);
        expect_read_stale(f, &d, 0, MIB);
        expect_read_stale(f, &d, MIB / 2, 4 * KIB);
        assert_int_equal(store_probe(f->s, &d, 0, MIB), -ESTALE);
        /* The neighbouring chunk is untouched, and the file keeps its size. */
        expect_pattern(f, &d, MIB, MIB, 8, MIB);
        assert_int_equal(store_probe(f->s, &d, MIB, MIB), 0);
        assert_int_equal(stat(path, &st), 0);
        assert_true((uint64_t)st.st_size == 4 * MIB);
        uint64_t after = allocated_of(path);
        assert_true(after <= before - MIB);
        assert_true(after >= MIB);

        /* Punching a hole that is already a hole, and a file that does not exist, are fine. */
        assert_int_equal(store_punch(f->s, &d, 2 * MIB, MIB), 0);
        assert_int_equal(store_punch(f->s, &missing, 0, MIB), 0);
        assert_int_equal(stat(path, &st), 0);
        assert_true((uint64_t)st.st_size == 4 * MIB);

        /* A punched chunk can be written again. */
        write_pattern(f, &d, 4 * MIB, 0, MIB, 9);
        expect_pattern(f, &d, 0, MIB, 9, 0);
        expect_pattern(f, &d, MIB, MIB, 8, MIB);
}

static void test_remove(void **state) {
        struct fixture *f = *state;
        struct digest d = D("remove"), other = D("remove-other");
        char path[PATH_MAX];
        struct stat st;

        write_pattern(f, &d, 2 * MIB, 0, 2 * MIB, 10);
        write_pattern(f, &other, MIB, 0, MIB, 11);
        blob_file(f, &d, path);
        assert_int_equal(store_remove(f->s, &d), 0);
        assert_int_equal(stat(path, &st), -1);
        assert_int_equal(errno, ENOENT);
        expect_read_stale(f, &d, 0, MIB);
        assert_int_equal(store_probe(f->s, &d, 0, MIB), -ESTALE);
        assert_int_equal(store_remove(f->s, &d), 0); /* already gone */
        expect_pattern(f, &other, 0, MIB, 11, 0);    /* only that blob */

        /* Written again after removal: a fresh sparse file. */
        write_pattern(f, &d, 2 * MIB, MIB, MIB, 12);
        expect_read_stale(f, &d, 0, MIB);
        expect_pattern(f, &d, MIB, MIB, 12, 0);
}

static void test_write_after_rm_rf(void **state) {
        struct fixture *f = *state;
        struct digest d = D("before-rm"), e = D("after-rm");
        char chunks[PATH_MAX];
        struct stat st;

        write_pattern(f, &d, MIB, 0, MIB, 13);
        snprintf(chunks, sizeof(chunks), "%s/chunks", f->dir);
        assert_int_equal(rm_rf(chunks), 0);
        assert_int_equal(stat(chunks, &st), -1);

        expect_read_stale(f, &d, 0, MIB);
        assert_int_equal(store_probe(f->s, &d, 0, MIB), -ESTALE);
        assert_int_equal(store_punch(f->s, &d, 0, MIB), 0);
        assert_int_equal(store_remove(f->s, &d), 0);
        assert_int_equal(store_allocated_bytes(f->s), 0);

        write_pattern(f, &e, 2 * MIB, MIB, MIB, 14);
        assert_int_equal(stat(store_dir(f->s), &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        expect_pattern(f, &e, MIB, MIB, 14, 0);
        expect_read_stale(f, &d, 0, MIB); /* the deleted blob did not come back */
}

static void test_allocated_bytes(void **state) {
        struct fixture *f = *state;
        struct digest a = D("alloc-a"), b = D("alloc-b");
        uint64_t n;

        assert_int_equal(store_allocated_bytes(f->s), 0);

        write_pattern(f, &a, 16 * MIB, 2 * MIB, MIB, 15);
        n = store_allocated_bytes(f->s);
        assert_true(n >= MIB && n <= MIB + SLACK);

        write_pattern(f, &b, 8 * MIB, 0, 2 * MIB, 16);
        n = store_allocated_bytes(f->s);
        assert_true(n >= 3 * MIB && n <= 3 * MIB + 2 * SLACK);

        assert_int_equal(store_punch(f->s, &b, 0, MIB), 0);
        n = store_allocated_bytes(f->s);
        assert_true(n >= 2 * MIB && n <= 2 * MIB + 2 * SLACK);

        assert_int_equal(store_remove(f->s, &a), 0);
        n = store_allocated_bytes(f->s);
        assert_true(n >= MIB && n <= MIB + SLACK);

        assert_int_equal(store_punch(f->s, &b, MIB, MIB), 0);
        n = store_allocated_bytes(f->s);
        assert_true(n <= SLACK);
}

static void test_page_cache(void **state) {
        struct fixture *f = *state;
        struct digest d = D("page-cache");
        const size_t chunk = MIB;
        char path[PATH_MAX];

        if (f->tmpfs)
                skip(); /* tmpfs pages are the data: nothing can be dropped */

        void *buf = pattern(8 * MIB, 17);
        for (size_t i = 0; i < 8; i++)
                assert_int_equal(
                        store_write(f->s, &d, 8 * MIB, i * chunk, (char *)buf + i * chunk, chunk),
                        0);
        uint64_t cached = store_page_cache_bytes(f->s);
        if (cached >= MIB)
                fail_msg("after writing 8 MiB, %llu bytes of the store sit in page cache",
                         (unsigned long long)cached);

        /* Reads drop what they read too. */
        void *got = malloc(chunk);
        assert_non_null(got);
        for (size_t i = 0; i < 8; i++) {
                assert_int_equal(store_read(f->s, &d, i * chunk, got, chunk), 0);
                assert_memory_equal(got, (char *)buf + i * chunk, chunk);
        }
        free(got);
        cached = store_page_cache_bytes(f->s);
        if (cached >= MIB)
                fail_msg("after reading 8 MiB, %llu bytes of the store sit in page cache",
                         (unsigned long long)cached);

        /* The measure itself sees pages: a file written into the store by hand, without the
         * store's discipline, shows up. */
        struct digest hand = D("by-hand");
        blob_file(f, &hand, path);
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, buf, 4 * MIB), (ssize_t)(4 * MIB));
        close(fd);
        cached = store_page_cache_bytes(f->s);
        assert_true(cached >= 2 * MIB);
        free(buf);
}

/* Bytes of [OFF, OFF+LEN) of PATH in the page cache and up to date (mincore). */
static uint64_t resident(const char *path, uint64_t off, size_t len) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)off);
        assert_true(m != MAP_FAILED);
        size_t pages = (len + 4095) / 4096;
        unsigned char *vec = malloc(pages);
        assert_non_null(vec);
        assert_int_equal(mincore(m, len, vec), 0);
        uint64_t n = 0;
        for (size_t i = 0; i < pages; i++)
                if (vec[i] & 1)
                        n += 4096;
        free(vec);
        munmap(m, len);
        close(fd);
        return n;
}

/* Readahead is asynchronous: waits (up to 10 s) until [OFF, OFF+LEN) is all in. */
static void wait_resident(const char *path, uint64_t off, size_t len) {
        for (int i = 0; i < 10000; i++) {
                if (resident(path, off, len) == len)
                        return;
                nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
        }
        fail_msg("readahead of [%llu, +%zu) never arrived", (unsigned long long)off, len);
}

static void read_chunk(struct fixture *f, const struct digest *d, const uint8_t *all, uint64_t off,
                       size_t len) {
        uint8_t *got = malloc(len);
        assert_non_null(got);
        assert_int_equal(store_read(f->s, d, off, got, len), 0);
        assert_memory_equal(got, all + off, len);
        free(got);
}

static void test_readahead(void **state) {
        struct fixture *f = *state;
        struct digest d = D("readahead"), missing = D("readahead-missing");
        /* Reads drop their pages in batches of STORE_DROP_BATCH through one blob: chunks of
         * twice that make every half-chunk read below a whole batch, dropped at once. */
        const size_t chunk = 2 * STORE_DROP_BATCH;
        const uint64_t nchunks = STORE_RA_MAX_BYTES / chunk + 8, size = nchunks * chunk;
        char path[PATH_MAX];

        assert_int_equal(store_readahead(f->s, &d, 0, 0), -E2BIG);
        assert_int_equal(store_readahead(f->s, &d, 0, STORE_RA_MAX_BYTES + 1), -E2BIG);
        assert_int_equal(store_readahead(f->s, &missing, 0, chunk), -ESTALE);
        if (f->tmpfs)
                skip(); /* tmpfs pages are the data: readahead and dropping mean nothing */

        uint8_t *all = pattern(size, 18);
        for (uint64_t i = 0; i < nchunks; i++)
                assert_int_equal(store_write(f->s, &d, size, i * chunk, all + i * chunk, chunk), 0);
        blob_file(f, &d, path);
        assert_true(resident(path, 0, size) < MIB); /* writes dropped their pages */

        /* Asked for: the chunk comes into the page cache without anyone reading it. */
        assert_int_equal(store_readahead(f->s, &d, 0, chunk), 0);
        wait_resident(path, 0, chunk);

        /* Read in part: the rest stays for the reader (and the part read with it: a range's
         * pages are the readahead list's to drop, once it is read whole or ages out). */
        read_chunk(f, &d, all, 0, chunk / 2);
        assert_true(resident(path, chunk / 2, chunk / 2) == chunk / 2);

        /* Not read whole yet, so asking again asks for nothing: with the half that was read
         * dropped behind the store's back, once a later chunk asked for has arrived, that half
         * is still out. */
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(posix_fadvise(fd, 0, (off_t)(chunk / 2), POSIX_FADV_DONTNEED), 0);
        close(fd);
        assert_true(resident(path, 0, chunk / 2) == 0);
        assert_int_equal(store_readahead(f->s, &d, 0, chunk), 0);
        assert_int_equal(store_readahead(f->s, &d, chunk, chunk), 0);
        wait_resident(path, chunk, chunk);
        assert_true(resident(path, 0, chunk / 2) == 0);

        /* Read whole, it is forgotten: a new request reads it ahead again. */
        read_chunk(f, &d, all, chunk / 2, chunk / 2);
        read_chunk(f, &d, all, chunk, chunk);
        assert_true(resident(path, 0, 2 * chunk) == 0);
        assert_int_equal(store_readahead(f->s, &d, 0, chunk), 0);
        wait_resident(path, 0, chunk);
        read_chunk(f, &d, all, 0, chunk);
        assert_true(resident(path, 0, size) == 0);

        /* The bound: a reader that asks for every chunk and reads none holds at most
         * STORE_RA_MAX_BYTES; the oldest ranges are dropped to make room. (Each waits for the
         * previous to arrive: DONTNEED cannot drop pages whose read is still in flight.) */
        for (uint64_t i = 0; i < nchunks; i++) {
                assert_int_equal(store_readahead(f->s, &d, i * chunk, chunk), 0);
                wait_resident(path, i * chunk, chunk);
                uint64_t held = resident(path, 0, size);
                if (held > STORE_RA_MAX_BYTES)
                        fail_msg("after %llu chunks asked for, %llu bytes in page cache",
                                 (unsigned long long)i + 1, (unsigned long long)held);
        }
        uint64_t kept = STORE_RA_MAX_BYTES / chunk, first_kept = nchunks - kept;
        assert_true(resident(path, 0, first_kept * chunk) == 0);
        assert_true(resident(path, first_kept * chunk, kept * chunk) == kept * chunk);

        /* Read whole, they all leave the page cache. */
        for (uint64_t i = first_kept; i < nchunks; i++)
                read_chunk(f, &d, all, i * chunk, chunk);
        assert_true(resident(path, 0, size) == 0);
        assert_true(store_page_cache_bytes(f->s) < MIB);
        free(all);
}

/* snprintf that must fit. */
#define FMT(buf, ...) assert_true((size_t)snprintf(buf, sizeof(buf), __VA_ARGS__) < sizeof(buf))

/* Writes "VALUE\n" to DIR/NAME (creating DIR and its parents). */
static void put_file(const char *dir, const char *name, const char *value) {
        char path[PATH_MAX];
        FMT(path, "mkdir -p '%s'", dir);
        assert_int_equal(system(path), 0);
        FMT(path, "%s/%s", dir, name);
        FILE *fp = fopen(path, "w");
        assert_non_null(fp);
        fprintf(fp, "%s\n", value);
        fclose(fp);
}

/* Readahead pieces: as large as the kernel submits whole for the store's disk (the larger of
 * max_sectors_kb and read_ahead_kb of its queue, a partition's being its disk's), never below
 * the default-settings cap nor above the readahead bound, and the floor when sysfs says
 * nothing. A fake sysfs under the fixture's directory stands for /sys. */
static void test_ra_piece(void **state) {
        struct fixture *f = *state;
        struct stat st;
        assert_int_equal(stat(f->dir, &st), 0);
        char sys[PATH_MAX], dev[PATH_MAX], disk[PATH_MAX];
        FMT(sys, "%s/sys", f->dir);
        FMT(dev, "%s/dev/block/%u:%u", sys, major(st.st_dev), minor(st.st_dev));

        assert_int_equal(sto_ra_piece(sys, f->dir), RA_PIECE_MIN); /* no such device */
        assert_int_equal(sto_ra_piece(sys, "/nonexistent/dir"), RA_PIECE_MIN);

        char q[PATH_MAX];
        FMT(q, "%s/queue", dev);
        put_file(q, "max_sectors_kb", "1280");
        put_file(q, "read_ahead_kb", "128");
        assert_int_equal(sto_ra_piece(sys, f->dir), 1280 * KIB);
        put_file(q, "read_ahead_kb", "8192");
        assert_int_equal(sto_ra_piece(sys, f->dir), 8 * MIB);
        put_file(q, "max_sectors_kb", "64");
        put_file(q, "read_ahead_kb", "64");
        assert_int_equal(sto_ra_piece(sys, f->dir), RA_PIECE_MIN);
        put_file(q, "read_ahead_kb", "1048576");
        assert_int_equal(sto_ra_piece(sys, f->dir), STORE_RA_MAX_BYTES);
        put_file(q, "read_ahead_kb", "junk");
        put_file(q, "max_sectors_kb", "junk");
        assert_int_equal(sto_ra_piece(sys, f->dir), RA_PIECE_MIN);

        /* A partition: dev/block/M:m links to the partition's directory inside its disk's. */
        FMT(q, "rm -rf '%s'", dev);
        assert_int_equal(system(q), 0);
        FMT(disk, "%s/devices/vdz", sys);
        FMT(q, "%s/vdz1", disk);
        put_file(q, "partition", "1");
        FMT(q, "%s/queue", disk);
        put_file(q, "max_sectors_kb", "4096");
        put_file(q, "read_ahead_kb", "128");
        FMT(q, "%s/vdz1", disk);
        assert_int_equal(symlink(q, dev), 0);
        assert_int_equal(sto_ra_piece(sys, f->dir), 4 * MIB);
}

/* ---- checksums: every read is checked against what was written ------------------------------ */

static void sum_file(const struct fixture *f, const struct digest *d, char path[PATH_MAX]) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(d, hex);
        int n = snprintf(path, PATH_MAX, "%s/chunks/crc32c/%s", f->dir, hex);
        assert_true(n > 0 && n < PATH_MAX);
}

/* Writes LEN bytes of BUF at OFF of PATH behind the store's back. */
static void poke(const char *path, uint64_t off, const void *buf, size_t len) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
        close(fd);
}

static void flip_byte(const char *path, uint64_t off) {
        int fd = open(path, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        uint8_t c;
        assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
        c ^= 0x20;
        assert_int_equal(pwrite(fd, &c, 1, (off_t)off), 1);
        close(fd);
}

static void expect_read_corrupt(struct fixture *f, const struct digest *d, uint64_t off,
                                size_t len) {
        void *buf = malloc(len ? len : 1);
        assert_non_null(buf);
        assert_int_equal(store_read(f->s, d, off, buf, len), -EBADMSG);
        free(buf);
}

static void test_verify_flipped_byte(void **state) {
        struct fixture *f = *state;
        struct digest d = D("flip");
        char path[PATH_MAX];
        write_pattern(f, &d, 4 * MIB, 0, 2 * MIB, 20);
        write_pattern(f, &d, 4 * MIB, 2 * MIB, 2 * MIB, 21);
        blob_file(f, &d, path);
        flip_byte(path, MIB + 5000); /* in block 257 */
        expect_read_corrupt(f, &d, 0, 2 * MIB);
        expect_read_corrupt(f, &d, MIB, MIB);
        expect_read_corrupt(f, &d, MIB + 5000, 1);            /* the byte itself */
        expect_read_corrupt(f, &d, MIB + 4 * KIB + 100, 100); /* same block, other bytes */
        expect_read_corrupt(f, &d, MIB + 4000, 200);          /* straddling into it */
        /* Blocks around it, and the other chunk, still read (granularity: 4 KiB). */
        expect_pattern(f, &d, 0, MIB + 4 * KIB, 20, 0);
        expect_pattern(f, &d, MIB + 8 * KIB, MIB - 8 * KIB, 20, MIB + 8 * KIB);
        expect_pattern(f, &d, 2 * MIB, 2 * MIB, 21, 0);
        /* The probe does not read data: it still says present (the read is the check). */
        assert_int_equal(store_probe(f->s, &d, 0, 2 * MIB), 0);
        /* Written again (a refetch), it reads back. */
        write_pattern(f, &d, 4 * MIB, 0, 2 * MIB, 20);
        expect_pattern(f, &d, 0, 2 * MIB, 20, 0);
}

static void test_verify_zeros_and_random(void **state) {
        struct fixture *f = *state;
        struct digest z = D("zeros"), r = D("random");
        char path[PATH_MAX];
        void *zeros = calloc(1, MIB);
        assert_non_null(zeros);

        /* Zeros written over a chunk: data, not a hole, so only the checksums notice. */
        write_pattern(f, &z, 2 * MIB, 0, 2 * MIB, 22);
        blob_file(f, &z, path);
        poke(path, MIB, zeros, MIB);
        assert_int_equal(store_probe(f->s, &z, MIB, MIB), 0);
        expect_read_corrupt(f, &z, MIB, MIB);
        expect_read_corrupt(f, &z, MIB + 12345, 10);
        expect_pattern(f, &z, 0, MIB, 22, 0);

        /* The whole file replaced by other bytes of the same size. */
        write_pattern(f, &r, 2 * MIB + 1000, 0, 2 * MIB + 1000, 23);
        blob_file(f, &r, path);
        void *junk = pattern(2 * MIB + 1000, 99);
        poke(path, 0, junk, 2 * MIB + 1000);
        free(junk);
        expect_read_corrupt(f, &r, 0, MIB);
        expect_read_corrupt(f, &r, 2 * MIB, 1000); /* the short last block too */
        expect_read_corrupt(f, &r, 2 * MIB + 999, 1);
        free(zeros);
}

static void test_verify_checksum_file_damage(void **state) {
        struct fixture *f = *state;
        struct digest d = D("sums"), moved = D("moved");
        char path[PATH_MAX], sums[PATH_MAX];
        write_pattern(f, &d, 2 * MIB, 0, 2 * MIB, 24);
        sum_file(f, &d, sums);
        struct stat st;
        assert_int_equal(stat(sums, &st), 0);
        assert_int_equal(st.st_size, 2 * MIB / 4096 * 8); /* 8 bytes per 4 KiB block */

        /* An entry zeroed (a hole, a torn write) is no checksum: corrupt, and not present. */
        uint8_t z[8] = {0};
        poke(sums, 300 * 8, z, sizeof(z));
        expect_read_corrupt(f, &d, MIB, MIB);
        assert_int_equal(store_probe(f->s, &d, MIB, MIB), -ESTALE);
        assert_int_equal(store_probe(f->s, &d, 0, MIB), 0);
        expect_pattern(f, &d, 0, MIB, 24, 0);

        /* The checksum file gone: nothing can be checked, nothing is served. */
        assert_int_equal(unlink(sums), 0);
        expect_read_corrupt(f, &d, 0, 4 * KIB);
        assert_int_equal(store_probe(f->s, &d, 0, MIB), -ESTALE);

        /* Bytes of one block copied over another (both valid data): the checksum is seeded
         * with the block's index, so the moved block fails. */
        write_pattern(f, &moved, MIB, 0, MIB, 25);
        blob_file(f, &moved, path);
        void *all = pattern(MIB, 25);
        poke(path, 8 * KIB, all, 4 * KIB); /* block 0's bytes into block 2 */
        expect_read_corrupt(f, &moved, 8 * KIB, 4 * KIB);
        expect_pattern(f, &moved, 0, 8 * KIB, 25, 0);
        free(all);

        /* Data on disk whose checksums never got there (a crash in between): not present. */
        struct digest crash = D("crash");
        write_pattern(f, &crash, 2 * MIB, 0, MIB, 26);
        blob_file(f, &crash, path);
        void *more = pattern(MIB, 27);
        poke(path, MIB, more, MIB);
        free(more);
        assert_int_equal(store_probe(f->s, &crash, 0, MIB), 0);
        assert_int_equal(store_probe(f->s, &crash, MIB, MIB), -ESTALE);
        expect_read_corrupt(f, &crash, MIB, MIB);
}

static void test_verify_unaligned_reads(void **state) {
        struct fixture *f = *state;
        struct digest d = D("unaligned");
        const uint64_t size = 3 * MIB + 777;
        write_pattern(f, &d, size, 0, 2 * MIB, 28);
        void *tail = pattern(MIB + 777, 29);
        assert_int_equal(store_write(f->s, &d, size, 2 * MIB, tail, MIB + 777), 0);
        free(tail);
        const uint64_t offs[] = {0, 1, 4095, 4096, 4097, 100000, MIB - 1, 2 * MIB - 3};
        const size_t lens[] = {1, 2, 4095, 4096, 4097, 10000, MIB - 5};
        for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
                for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++)
                        if (offs[i] + lens[j] <= 2 * MIB)
                                expect_pattern(f, &d, offs[i], lens[j], 28, offs[i]);
        /* Across the chunk boundary, and in the short last block. */
        void *got = malloc(8 * KIB);
        assert_non_null(got);
        void *a = pattern(2 * MIB, 28), *b = pattern(MIB + 777, 29);
        assert_int_equal(store_read(f->s, &d, 2 * MIB - 4 * KIB, got, 8 * KIB), 0);
        assert_memory_equal(got, (char *)a + 2 * MIB - 4 * KIB, 4 * KIB);
        assert_memory_equal((char *)got + 4 * KIB, b, 4 * KIB);
        expect_pattern(f, &d, 3 * MIB + 10, 767, 29, MIB + 10);
        expect_pattern(f, &d, 3 * MIB, 777, 29, MIB);
        expect_read_stale(f, &d, 3 * MIB, 778); /* one past the end */
        free(a);
        free(b);
        free(got);

        /* Writes that would leave a block half covered are refused. */
        void *buf = pattern(8 * KIB, 30);
        struct digest w = D("unaligned-write");
        assert_int_equal(store_write(f->s, &w, MIB, 100, buf, 4 * KIB), -EINVAL);
        assert_int_equal(store_write(f->s, &w, MIB, 0, buf, 5000), -EINVAL);
        assert_int_equal(store_write(f->s, &w, 8 * KIB, 4 * KIB, buf, 8 * KIB), -EINVAL);
        assert_int_equal(store_write(f->s, &w, 5000, 4 * KIB, buf, 904), 0); /* ends the blob */
        free(buf);
}

/* The checksum files' pages stay cached while their chunks are present and leave with them:
 * their page cache follows the budget, not every chunk ever streamed. */
static void test_checksum_pages_follow_chunks(void **state) {
        struct fixture *f = *state;
        struct digest d = D("sum-pages");
        char sums[PATH_MAX];
        if (f->tmpfs)
                skip();
        const size_t n = 64;
        for (size_t i = 0; i < n; i++)
                write_pattern(f, &d, n * MIB, i * MIB, MIB, 40);
        void *got = malloc(MIB);
        assert_non_null(got);
        for (size_t i = 0; i < n; i++)
                assert_int_equal(store_read(f->s, &d, i * MIB, got, MIB), 0);
        free(got);
        sum_file(f, &d, sums);
        const size_t sum_len = n * MIB / 4096 * 8; /* 128 KiB */
        assert_true(resident(sums, 0, sum_len) >= sum_len / 2);
        for (size_t i = 0; i < n; i++)
                assert_int_equal(store_punch(f->s, &d, i * MIB, MIB), 0);
        assert_int_equal(resident(sums, 0, sum_len), 0);
        assert_true(store_page_cache_bytes(f->s) < 64 * KIB);
}

/* Whether [OFF, OFF+LEN) of PATH is all in the page cache within a second (readahead is
 * asynchronous). */
static bool arrives(const char *path, uint64_t off, size_t len) {
        for (int i = 0; i < 1000; i++) {
                if (resident(path, off, len) == len)
                        return true;
                nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
        }
        return false;
}

/* One pass of test_checksum_readahead from a cold checksum file: false when pages that were
 * read ahead went missing (see there). */
static bool checksum_readahead_pass(struct fixture *f, const struct digest *d, const char *sums) {
        const uint64_t entries = 2 * KIB; /* entry bytes per MiB of data */
        int fd = open(sums, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
        close(fd);
        if (resident(sums, 0, 128 * KIB) != 0)
                return false;
        /* Window 0 (data [0, 32 MiB)), all present: all of its entries. */
        expect_pattern(f, d, 5 * MIB + 4096, 4096, 65, 4096);
        if (!arrives(sums, 0, 32 * entries))
                return false;
        /* Window 1 (data [32, 64 MiB)), read at 36 MiB: the entries of [32, 40 MiB), the data
         * that runs up to it, and not past the hole at 40 MiB. */
        expect_pattern(f, d, 36 * MIB, 4096, 96, 0);
        if (!arrives(sums, 32 * entries, 8 * entries))
                return false;
        assert_int_equal(resident(sums, 44 * entries, 4096), 0);
        /* Past the hole, from the read on: [50, 64 MiB). */
        expect_pattern(f, d, 50 * MIB, 4096, 110, 0);
        if (!arrives(sums, 50 * entries, 14 * entries))
                return false;
        assert_int_equal(resident(sums, 44 * entries, 4096), 0);
        return true;
}

/* A read whose checksums are not in the page cache reads ahead the checksums of the present
 * data around it (64 KiB of entries: 32 MiB of data), so a random reader does not wait for one
 * disk read of the checksum file per 2 MiB of blob; never the entries of data not there (a
 * punched chunk's stay out). Pages that arrived can vanish under us when another process
 * drops the machine's page cache (benchmarks do): then the pass is repeated. */
static void test_checksum_readahead(void **state) {
        struct fixture *f = *state;
        struct digest d = D("sum-readahead");
        char sums[PATH_MAX];
        if (f->tmpfs)
                skip();
        const uint64_t size = 64 * MIB;
        for (uint64_t i = 0; i < 64; i++)
                if (i < 40 || i >= 48 || i == 44)
                        write_pattern(f, &d, size, i * MIB, MIB, (uint32_t)(60 + i));
        assert_int_equal(store_punch(f->s, &d, 44 * MIB, MIB), 0); /* its entries stay */
        sum_file(f, &d, sums);
        int pass = 0;
        while (!checksum_readahead_pass(f, &d, sums))
                if (++pass == 5)
                        fail_msg("checksums read ahead never all arrived (5 passes)");
        /* A read whose entries came in that way reads and checks as any other. */
        expect_pattern(f, &d, 20 * MIB, MIB, 80, 0);
}

static bool keep_named(void *ud, const struct digest *blob) {
        return digest_equal(ud, blob);
}

static void test_reclaim(void **state) {
        struct fixture *f = *state;
        struct digest keep = D("keep"), orphan = D("orphan"), lone = D("lone-sums");
        char path[PATH_MAX], sums[PATH_MAX];
        struct stat st;
        write_pattern(f, &keep, 2 * MIB, 0, MIB, 31);
        write_pattern(f, &orphan, 4 * MIB, 0, 4 * MIB, 32);
        write_pattern(f, &lone, MIB, 0, MIB, 33);
        blob_file(f, &lone, path);
        assert_int_equal(unlink(path), 0); /* its checksum file stays behind */
        char junk[PATH_MAX];
        snprintf(junk, sizeof(junk), "%s/not-a-digest", store_dir(f->s));
        int fd = open(junk, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        close(fd);

        struct store_reclaimed r = {0};
        assert_int_equal(store_reclaim(f->s, keep_named, &keep, &r), 0);
        assert_int_equal(r.files, 3); /* orphan's two files, lone's checksum file */
        assert_true(r.bytes >= 4 * MIB);
        blob_file(f, &orphan, path);
        assert_int_equal(stat(path, &st), -1);
        sum_file(f, &orphan, sums);
        assert_int_equal(stat(sums, &st), -1);
        sum_file(f, &lone, sums);
        assert_int_equal(stat(sums, &st), -1);
        assert_int_equal(stat(junk, &st), 0);
        expect_pattern(f, &keep, 0, MIB, 31, 0);
        uint64_t n = store_allocated_bytes(f->s);
        assert_true(n >= MIB && n <= MIB + SLACK);
}

/* ---- the descriptor cache, and presence without probing ------------------------------------- */

/* Descriptors this process has open. */
static unsigned open_fds(void) {
        unsigned n = 0;
        for (int fd = 0; fd < 4096; fd++)
                if (fcntl(fd, F_GETFD) >= 0)
                        n++;
        return n;
}

static void test_fd_cache_bound(void **state) {
        struct fixture *f = *state;
        struct digest d[6];
        char name[32];
        for (unsigned i = 0; i < 6; i++) {
                snprintf(name, sizeof(name), "fdcache-%u", i);
                d[i] = D(name);
                write_pattern(f, &d[i], 2 * MIB, 0, 2 * MIB, 40 + i);
        }
        store_set_open_blobs(f->s, 3);
        unsigned before = open_fds();
        for (unsigned round = 0; round < 3; round++)
                for (unsigned i = 0; i < 6; i++) {
                        expect_pattern(f, &d[i], 0, 64 * KIB, 40 + i, 0);
                        expect_pattern(f, &d[i], MIB + 4 * KIB, 4 * KIB, 40 + i, MIB + 4 * KIB);
                        assert_true(store_open_blobs(f->s) <= 3);
                        assert_true(open_fds() <= before + 2 * 3);
                }
        assert_int_equal(store_open_blobs(f->s), 3);

        /* A blob read again and again keeps its descriptors (one open for many reads). */
        store_set_open_blobs(f->s, 1);
        assert_int_equal(store_open_blobs(f->s), 1);
        assert_int_equal(open_fds(), before + 2);
        for (unsigned i = 0; i < 50; i++)
                expect_pattern(f, &d[0], i * 4 * KIB, 4 * KIB, 40, i * 4 * KIB);
        assert_int_equal(open_fds(), before + 2);

        /* Released (the blob's last chunk went) and removed blobs close theirs. */
        store_release(f->s, &d[0]);
        assert_int_equal(store_open_blobs(f->s), 0);
        assert_int_equal(open_fds(), before);
        expect_pattern(f, &d[1], 0, 4 * KIB, 41, 0);
        assert_int_equal(store_remove(f->s, &d[1]), 0);
        assert_int_equal(open_fds(), before);
        expect_read_stale(f, &d[1], 0, 4 * KIB);

        /* 0: nothing stays open, reads still work. */
        store_set_open_blobs(f->s, 0);
        expect_pattern(f, &d[2], 0, 4 * KIB, 42, 0);
        assert_int_equal(store_open_blobs(f->s), 0);
        assert_int_equal(open_fds(), before);
}

/* A cache larger than the process may open: reads still succeed, the cache gives back its
 * oldest descriptors when an open fails with EMFILE. */
static void test_fd_limit(void **state) {
        struct fixture *f = *state;
        struct digest d[8];
        char name[32];
        for (unsigned i = 0; i < 8; i++) {
                snprintf(name, sizeof(name), "fdlimit-%u", i);
                d[i] = D(name);
                write_pattern(f, &d[i], MIB, 0, MIB, 70 + i);
        }
        store_set_open_blobs(f->s, 64);
        /* New descriptors take the lowest free numbers below the limit: leave six free. */
        int top = 0, free_slots = 0;
        for (; top < 4096 && free_slots < 6; top++)
                free_slots += fcntl(top, F_GETFD) < 0;
        struct rlimit old, lim;
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
        lim = old;
        lim.rlim_cur = (rlim_t)top; /* room for three blobs */
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);
        void *buf = malloc(4 * KIB);
        assert_non_null(buf);
        int fails = 0;
        for (unsigned round = 0; round < 2; round++)
                for (unsigned i = 0; i < 8; i++)
                        fails += store_read(f->s, &d[i], 0, buf, 4 * KIB) != 0;
        unsigned cached = store_open_blobs(f->s);
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
        free(buf);
        assert_int_equal(fails, 0);
        assert_true(cached < 8);
        expect_pattern(f, &d[7], 0, 4 * KIB, 77, 0);
}

/* A file deleted, replaced, truncated or holed under an open descriptor is noticed on the next
 * read: never the old inode's bytes as if the store still had them, never zeros. */
static void test_lost_under_open_fd(void **state) {
        struct fixture *f = *state;
        struct digest d = D("under-open-fd");
        char path[PATH_MAX], sums[PATH_MAX], hex[DIGEST_HEX_LEN + 1];
        const uint64_t size = 4 * MIB;
        blob_file(f, &d, path);
        digest_to_hex(&d, hex);
        snprintf(sums, sizeof(sums), "%s/chunks/crc32c/%s", f->dir, hex);

        /* Deleted: -ESTALE, and once it is written again the new file is read. */
        write_pattern(f, &d, size, 0, size, 50);
        expect_pattern(f, &d, 0, MIB, 50, 0); /* the descriptors are cached now */
        assert_int_equal(store_open_blobs(f->s), 1);
        assert_int_equal(unlink(path), 0);
        expect_read_stale(f, &d, 0, MIB);
        write_pattern(f, &d, size, 0, size, 50);
        expect_pattern(f, &d, MIB, MIB, 50, MIB);

        /* Its checksum file deleted: nothing can be checked, so nothing is served. */
        uint8_t *buf = malloc(MIB);
        assert_non_null(buf);
        assert_int_equal(unlink(sums), 0);
        assert_int_equal(store_read(f->s, &d, 0, buf, MIB), -EBADMSG);
        assert_int_equal(store_remove(f->s, &d), 0);

        /* Replaced by a rename: the new file's bytes fail their checksums. */
        write_pattern(f, &d, size, 0, size, 51);
        expect_pattern(f, &d, 0, MIB, 51, 0);
        char tmp[PATH_MAX + 8];
        snprintf(tmp, sizeof(tmp), "%s.new", path);
        void *other = pattern(size, 99);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, other, size), (ssize_t)size);
        close(fd);
        free(other);
        assert_int_equal(rename(tmp, path), 0);
        assert_int_equal(store_read(f->s, &d, 0, buf, MIB), -EBADMSG);

        /* Truncated, and a hole punched behind the store's back: -ESTALE, not zeros. */
        assert_int_equal(store_remove(f->s, &d), 0);
        write_pattern(f, &d, size, 0, size, 52);
        expect_pattern(f, &d, 0, MIB, 52, 0);
        fd = open(path, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(
                fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)MIB, (off_t)MIB),
                0);
        assert_int_equal(store_read(f->s, &d, MIB + 4 * KIB, buf, 4 * KIB), -ESTALE);
        expect_pattern(f, &d, 2 * MIB, MIB, 52, 2 * MIB); /* the rest is still there */
        assert_int_equal(ftruncate(fd, (off_t)(3 * MIB)), 0);
        close(fd);
        expect_read_stale(f, &d, 3 * MIB, 4 * KIB);
        expect_pattern(f, &d, 2 * MIB, MIB, 52, 2 * MIB);
        free(buf);
}

/* Reads drop their pages in batches: small reads leave at most STORE_DROP_MAX behind, and a
 * blob's batch goes once STORE_DROP_BATCH was read through it, or when its descriptors close. */
static void test_drop_batched(void **state) {
        struct fixture *f = *state;
        struct digest d = D("drop-batched"), e = D("drop-batched-2");
        char path[PATH_MAX];
        const uint64_t size = 16 * MIB;
        if (f->tmpfs)
                skip(); /* tmpfs pages are the data: nothing can be dropped */
        write_pattern(f, &d, size, 0, size, 60);
        write_pattern(f, &e, size, 0, size, 61);
        blob_file(f, &d, path);
        assert_true(resident(path, 0, size) < MIB);

        /* 4 KiB reads spread over the blob: fewer than a batch stay in page cache ... */
        uint64_t reads = STORE_DROP_BATCH / (4 * KIB) / 2;
        for (uint64_t i = 0; i < reads; i++)
                expect_pattern(f, &d, i * 64 * KIB, 4 * KIB, 60, i * 64 * KIB);
        uint64_t held = resident(path, 0, size);
        assert_true(held > 0 && held <= STORE_DROP_BATCH);
        /* ... and go with the read that completes the batch. */
        for (uint64_t i = reads; i < 2 * reads; i++)
                expect_pattern(f, &d, i * 64 * KIB - 8 * KIB, 4 * KIB, 60, i * 64 * KIB - 8 * KIB);
        assert_true(resident(path, 0, size) == 0);

        /* Many blobs, each under its batch: at most STORE_DROP_MAX in all. */
        for (uint64_t i = 0; i < 3 * reads; i++) {
                expect_pattern(f, i % 2 ? &d : &e, i * 4 * KIB, 4 * KIB, i % 2 ? 60 : 61,
                               i * 4 * KIB);
                assert_true(store_page_cache_bytes(f->s) <= STORE_DROP_MAX + 64 * KIB);
        }

        /* A batch that spans a readahead range not read yet leaves that range alone (the
         * requests of one stream arrive out of order); read whole, the range goes. */
        store_release(f->s, &d); /* a fresh batch */
        assert_true(resident(path, 0, size) == 0);
        assert_int_equal(store_readahead(f->s, &d, 4 * MIB, MIB), 0);
        wait_resident(path, 4 * MIB, MIB);
        expect_pattern(f, &d, 3 * MIB + MIB / 2, MIB / 2, 60, 3 * MIB + MIB / 2);
        expect_pattern(f, &d, 5 * MIB, MIB / 2, 60, 5 * MIB);
        assert_true(resident(path, 3 * MIB, 3 * MIB) == MIB);
        expect_pattern(f, &d, 4 * MIB, MIB, 60, 4 * MIB);
        assert_true(resident(path, 0, size) == 0);

        /* A range served to its reader from memory (the engine's landed ring) goes the same
         * way, once all of it was served. */
        assert_int_equal(store_readahead(f->s, &d, 6 * MIB, MIB), 0);
        wait_resident(path, 6 * MIB, MIB);
        store_note_served(f->s, &d, 6 * MIB, MIB / 2);
        assert_true(resident(path, 6 * MIB, MIB) == MIB);
        store_note_served(f->s, &d, 6 * MIB + MIB / 2, MIB / 2);
        assert_true(resident(path, 0, size) == 0);

        /* Closing the descriptors drops what they still owe. */
        expect_pattern(f, &d, 8 * MIB, 64 * KIB, 60, 8 * MIB);
        assert_true(resident(path, 8 * MIB, 64 * KIB) > 0);
        store_release(f->s, &d);
        assert_true(resident(path, 0, size) == 0);
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        const struct CMUnitTest tests[] = {
                T(test_open_creates_dir),
                T(test_write_sparse_read_back),
                T(test_read_stale),
                T(test_probe),
                T(test_punch),
                T(test_remove),
                T(test_write_after_rm_rf),
                T(test_allocated_bytes),
                T(test_page_cache),
                T(test_readahead),
                T(test_ra_piece),
                T(test_verify_flipped_byte),
                T(test_verify_zeros_and_random),
                T(test_verify_checksum_file_damage),
                T(test_verify_unaligned_reads),
                T(test_reclaim),
                T(test_checksum_pages_follow_chunks),
                T(test_checksum_readahead),
                T(test_fd_cache_bound),
                T(test_fd_limit),
                T(test_lost_under_open_fd),
                T(test_drop_batched),
        };
#undef T
        return cmocka_run_group_tests(tests, NULL, NULL);
}
