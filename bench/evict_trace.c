/* evict_trace: writes a deterministic synthetic chunk-reference trace for bench/evict_sim.
 *
 *   evict_trace SEED [REFS] > trace.bin
 *
 * The workload the policy is built for (cache/policy.c): many containers start from the same few
 * layers, interleaved with one-off full reads of layers pulled once (a new image, `blobctl
 * prefetch`). Chunk granularity 1 MiB; one record is one reference to a chunk (the engine counts
 * one reference per stream per chunk, see touch() in engine/residency.c).
 *
 *   - hot set: HOT_LAYERS layers of 40..90 MiB (about 512 MiB in all, the exact figure goes to
 *     stderr). A "container start" is a burst of BURST references drawn from the hot set's chunks
 *     with Zipf(ZIPF_S) popularity; the popularity ranks are a random permutation of the chunks,
 *     so hot chunks are spread over all hot layers.
 *   - scans: a new layer of 64..768 MiB (uniform), read once start to end, never again.
 *   - an event is a scan with probability P_SCAN, else a container start; P_SCAN is chosen so
 *     that about half of all references come from scans.
 * Layer sizes are not multiples of the chunk, so last chunks are short (the budget is in bytes).
 *
 * Everything comes from splitmix64(SEED): the same SEED gives the same trace on every machine.
 * Format: "P2PTRC01", uint32 hot_layers, uint32 0, uint64 count, then count records of
 * { uint32 blob, uint32 idx, uint32 bytes } in host byte order. Blobs < hot_layers are hot. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MiB (1024u * 1024u)
#define HOT_LAYERS 8
#define BURST 64
#define ZIPF_S 0.9
#define P_SCAN 0.133
#define SCAN_MIN_MIB 64
#define SCAN_MAX_MIB 768

struct rec {
        uint32_t blob, idx, bytes;
};

static uint64_t rng;

static uint64_t next64(void) {
        uint64_t z = (rng += UINT64_C(0x9e3779b97f4a7c15));
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        return z ^ (z >> 31);
}

static double uniform(void) { /* [0, 1) */
        return (double)(next64() >> 11) * 0x1.0p-53;
}

static uint64_t between(uint64_t lo, uint64_t hi) { /* [lo, hi] */
        return lo + next64() % (hi - lo + 1);
}

static void put(struct rec r) {
        if (fwrite(&r, sizeof(r), 1, stdout) != 1) {
                perror("evict_trace: write");
                exit(1);
        }
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: evict_trace SEED [REFS] > trace.bin\n");
                return 2;
        }
        rng = strtoull(argv[1], NULL, 0);
        uint64_t target = argc > 2 ? strtoull(argv[2], NULL, 0) : 2000000;

        /* the hot layers and their chunks */
        uint64_t layer_bytes[HOT_LAYERS], hot_bytes = 0;
        uint32_t nhot = 0;
        for (int l = 0; l < HOT_LAYERS; l++) {
                layer_bytes[l] = between(40 * (uint64_t)MiB, 90 * (uint64_t)MiB);
                hot_bytes += layer_bytes[l];
                nhot += (uint32_t)((layer_bytes[l] + MiB - 1) / MiB);
        }
        struct rec *hot = malloc(nhot * sizeof(*hot));
        double *cdf = malloc(nhot * sizeof(*cdf));
        if (!hot || !cdf)
                return 1;
        uint32_t n = 0;
        for (uint32_t l = 0; l < HOT_LAYERS; l++)
                for (uint64_t off = 0; off < layer_bytes[l]; off += MiB, n++)
                        hot[n] = (struct rec){l, (uint32_t)(off / MiB),
                                              (uint32_t)(layer_bytes[l] - off < MiB
                                                                 ? layer_bytes[l] - off
                                                                 : MiB)};
        for (uint32_t i = nhot - 1; i > 0; i--) { /* popularity rank = random permutation */
                uint32_t j = (uint32_t)(next64() % (i + 1));
                struct rec t = hot[i];
                hot[i] = hot[j];
                hot[j] = t;
        }
        double sum = 0;
        for (uint32_t i = 0; i < nhot; i++)
                cdf[i] = (sum += 1.0 / pow((double)(i + 1), ZIPF_S));
        for (uint32_t i = 0; i < nhot; i++)
                cdf[i] /= sum;

        const char magic[8] = {'P', '2', 'P', 'T', 'R', 'C', '0', '1'};
        uint32_t hdr[2] = {HOT_LAYERS, 0};
        uint64_t count = 0;
        fwrite(magic, 1, 8, stdout);
        fwrite(hdr, sizeof(hdr), 1, stdout);
        long count_pos = ftell(stdout); /* stdout must be a file: we come back for the count */
        fwrite(&count, sizeof(count), 1, stdout);
        if (count_pos < 0) {
                fprintf(stderr, "evict_trace: stdout must be a regular file\n");
                return 2;
        }

        uint32_t next_blob = HOT_LAYERS;
        uint64_t scans = 0, starts = 0, scan_refs = 0, hot_refs = 0;
        while (count < target) {
                if (uniform() < P_SCAN) {
                        uint64_t size =
                                between(SCAN_MIN_MIB * (uint64_t)MiB, SCAN_MAX_MIB * (uint64_t)MiB);
                        for (uint64_t off = 0; off < size; off += MiB, count++, scan_refs++)
                                put((struct rec){next_blob, (uint32_t)(off / MiB),
                                                 (uint32_t)(size - off < MiB ? size - off : MiB)});
                        next_blob++;
                        scans++;
                } else {
                        for (int k = 0; k < BURST; k++, count++, hot_refs++) {
                                double u = uniform();
                                uint32_t lo = 0, hi = nhot - 1;
                                while (lo < hi) { /* first rank with cdf >= u */
                                        uint32_t mid = lo + (hi - lo) / 2;
                                        if (cdf[mid] < u)
                                                lo = mid + 1;
                                        else
                                                hi = mid;
                                }
                                put(hot[lo]);
                        }
                        starts++;
                }
        }
        fseek(stdout, count_pos, SEEK_SET);
        fwrite(&count, sizeof(count), 1, stdout);
        if (fflush(stdout) != 0) {
                perror("evict_trace: write");
                return 1;
        }
        fprintf(stderr,
                "seed=%s refs=%llu hot_refs=%llu scan_refs=%llu container_starts=%llu scans=%llu "
                "hot_set_bytes=%llu hot_chunks=%u\n",
                argv[1], (unsigned long long)count, (unsigned long long)hot_refs,
                (unsigned long long)scan_refs, (unsigned long long)starts,
                (unsigned long long)scans, (unsigned long long)hot_bytes, nhot);
        free(hot);
        free(cdf);
        return 0;
}
