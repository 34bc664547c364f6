/* readbench: the reader side of `make bench`, so the mount and the baseline file are read by
 * the same code with the same calls (no interpreter in the timed loop).
 *
 *   readbench seq  PATH BLOCK [random]   read PATH start to end in BLOCK-sized read()s;
 *                                        "random": with POSIX_FADV_RANDOM (no kernel
 *                                        readahead), as cache/store.c reads the store
 *   readbench rand PATH BLOCK COUNT SEED COUNT pread()s of BLOCK bytes at BLOCK-aligned offsets
 *                                        drawn uniformly from the file (splitmix64, SEED)
 *
 * Prints one line of key=value: bytes, seconds (open to last byte), ttfb (open to the first
 * read returning data; the first read asks for 4 KiB so it is not held up by a large buffer),
 * and for rand, reads. seq leaves the kernel's default readahead alone; rand sets
 * POSIX_FADV_RANDOM, as a random reader should. Exit 1 on any error or short file. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t splitmix64(uint64_t *s) {
        uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        return z ^ (z >> 31);
}

static void die(const char *what, const char *path) {
        fprintf(stderr, "readbench: %s %s: %s\n", what, path, strerror(errno));
        exit(1);
}

int main(int argc, char **argv) {
        if (argc < 4 || (strcmp(argv[1], "seq") && strcmp(argv[1], "rand")) ||
            (!strcmp(argv[1], "rand") && argc < 6)) {
                fprintf(stderr,
                        "usage: readbench seq PATH BLOCK [random] | rand PATH BLOCK COUNT SEED\n");
                return 2;
        }
        const char *path = argv[2];
        size_t block = strtoull(argv[3], NULL, 0);
        if (block == 0)
                return 2;
        char *buf = aligned_alloc(4096, (block + 4095) / 4096 * 4096);
        if (!buf)
                return 1;
        memset(buf, 0, block);

        double t0 = now(), ttfb = -1;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                die("open", path);
        uint64_t total = 0;
        if (!strcmp(argv[1], "seq")) {
                if (argc > 4 && !strcmp(argv[4], "random"))
                        posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
                size_t want = block < 4096 ? block : 4096; /* the first read: time to first byte */
                for (;;) {
                        ssize_t n = read(fd, buf, want);
                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                die("read", path);
                        }
                        if (n == 0)
                                break;
                        if (ttfb < 0)
                                ttfb = now() - t0;
                        total += (uint64_t)n;
                        want = block;
                }
                double dt = now() - t0;
                printf("bytes=%llu seconds=%.6f ttfb=%.6f\n", (unsigned long long)total, dt, ttfb);
        } else {
                uint64_t count = strtoull(argv[4], NULL, 0), seed = strtoull(argv[5], NULL, 0);
                struct stat st;
                if (fstat(fd, &st) < 0)
                        die("fstat", path);
                uint64_t nblocks = (uint64_t)st.st_size / block;
                if (nblocks == 0) {
                        fprintf(stderr, "readbench: %s is smaller than one block\n", path);
                        return 1;
                }
                posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
                for (uint64_t i = 0; i < count; i++) {
                        uint64_t off = splitmix64(&seed) % nblocks * block;
                        for (size_t done = 0; done < block;) {
                                ssize_t n =
                                        pread(fd, buf + done, block - done, (off_t)(off + done));
                                if (n < 0 && errno == EINTR)
                                        continue;
                                if (n <= 0)
                                        die("pread", path);
                                done += (size_t)n;
                        }
                        if (ttfb < 0)
                                ttfb = now() - t0;
                        total += block;
                }
                double dt = now() - t0;
                printf("bytes=%llu seconds=%.6f ttfb=%.6f reads=%llu\n", (unsigned long long)total,
                       dt, ttfb, (unsigned long long)count);
        }
        close(fd);
        free(buf);
        return 0;
}
