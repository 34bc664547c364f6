/* readbench: the reader side of `make bench`, so the mount and the baseline file are read by
 * the same code with the same calls (no interpreter in the timed loop).
 *
 *   readbench seq  PATH BLOCK [random]   read PATH start to end in BLOCK-sized read()s;
 *                                        "random": with POSIX_FADV_RANDOM (no kernel
 *                                        readahead), as cache/store.c reads the store
 *   readbench rand PATH BLOCK COUNT SEED COUNT pread()s of BLOCK bytes at BLOCK-aligned offsets
 *                                        drawn uniformly from the file (splitmix64, SEED)
 *   readbench lat PATH BLOCK COUNT SEED SPAN  COUNT pread()s of BLOCK bytes, each in a SPAN-sized
 *                                        region (a chunk) no other read touches, regions in
 *                                        random order: on a cold mount every read is a miss.
 *                                        Prints each read's latency quantiles (p50, p99, max)
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

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

static void die(const char *what, const char *path) {
        fprintf(stderr, "readbench: %s %s: %s\n", what, path, strerror(errno));
        exit(1);
}

int main(int argc, char **argv) {
        if (argc < 4 ||
            (strcmp(argv[1], "seq") && strcmp(argv[1], "rand") && strcmp(argv[1], "lat")) ||
            (!strcmp(argv[1], "rand") && argc < 6) || (!strcmp(argv[1], "lat") && argc < 7)) {
                fprintf(stderr, "usage: readbench seq PATH BLOCK [random] | rand PATH BLOCK COUNT "
                                "SEED | lat PATH BLOCK COUNT SEED SPAN\n");
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
        } else if (!strcmp(argv[1], "lat")) {
                uint64_t count = strtoull(argv[4], NULL, 0), seed = strtoull(argv[5], NULL, 0);
                uint64_t span = strtoull(argv[6], NULL, 0);
                struct stat st;
                if (fstat(fd, &st) < 0)
                        die("fstat", path);
                uint64_t nreg = span ? (uint64_t)st.st_size / span : 0;
                if (span < block || count == 0 || count > nreg || count > 100000) {
                        fprintf(stderr, "readbench: lat needs COUNT <= %llu regions of SPAN\n",
                                (unsigned long long)nreg);
                        return 2;
                }
                uint64_t *reg = malloc(nreg * sizeof(*reg));
                double *lat = malloc(count * sizeof(*lat));
                if (!reg || !lat)
                        return 1;
                for (uint64_t i = 0; i < nreg; i++)
                        reg[i] = i;
                for (uint64_t i = nreg - 1; i > 0; i--) { /* Fisher-Yates */
                        uint64_t j = splitmix64(&seed) % (i + 1), t = reg[i];
                        reg[i] = reg[j];
                        reg[j] = t;
                }
                posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
                for (uint64_t i = 0; i < count; i++) {
                        uint64_t off = reg[i] * span + splitmix64(&seed) % (span / block) * block;
                        double t = now();
                        for (size_t done = 0; done < block;) {
                                ssize_t n =
                                        pread(fd, buf + done, block - done, (off_t)(off + done));
                                if (n < 0 && errno == EINTR)
                                        continue;
                                if (n <= 0)
                                        die("pread", path);
                                done += (size_t)n;
                        }
                        lat[i] = now() - t;
                        total += block;
                }
                double dt = now() - t0;
                qsort(lat, count, sizeof(*lat), cmp_double);
                printf("bytes=%llu seconds=%.6f reads=%llu p50=%.6f p99=%.6f max=%.6f\n",
                       (unsigned long long)total, dt, (unsigned long long)count,
                       lat[(count - 1) / 2], lat[(count * 99 + 99) / 100 - 1], lat[count - 1]);
                free(reg);
                free(lat);
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
