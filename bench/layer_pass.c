/* Measures the layer index (layer/): the pass over a layer blob, the encoded index's size, and
 * the compressed bytes one small read fetches. Measures, never asserts.
 *
 *   layer_pass BLOB [SPAN_KIB]
 *
 * Reads BLOB in 1 MiB pieces (from the page cache after the first run; run `cat BLOB >
 * /dev/null` first so the disk is not what is measured), builds the index with checkpoints
 * every SPAN_KIB of compressed input (default 2048), encodes and decodes it, then reads 4 KiB
 * from the middle of the largest regular file and of a small one through a fresh reader. One
 * line of key=value per result, for bench scripts.
 *
 * A zstd layer's pass also writes the seekable copy (to an unlinked temporary file: what the
 * engine would store as a derived blob); the reads then fetch from it, and the copy's size
 * next to the layer's is reported (seekable=, overhead_pct=), with its frame size (FRAME_KIB,
 * the third argument, default 1024) and level (the fourth, default 3). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "layer/layer.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct src {
        FILE *f;
};

static ssize_t file_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        struct src *s = ctx;
        size_t n;

        if (fseeko(s->f, (off_t)off, SEEK_SET) < 0)
                return -errno;
        n = fread(buf, 1, len, s->f);
        if (n == 0 && ferror(s->f))
                return -EIO;
        return (ssize_t)n;
}

static int file_sink(void *ctx, const void *buf, size_t len) {
        struct src *s = ctx;

        return fwrite(buf, 1, len, s->f) == len ? 0 : -EIO;
}

static void read_one(const struct layer_index *ix, struct src *s, const struct layer_file *f,
                     const char *what) {
        struct layer_reader *r = layer_reader_new(ix, file_fetch, s);
        uint8_t buf[4096];
        uint64_t off = f->size > sizeof(buf) ? f->size / 2 : 0;
        double t0 = now();
        ssize_t n = layer_reader_read(r, f, off, buf, sizeof(buf));
        double t1 = now();

        printf("read=%s path=%s size=%llu got=%zd fetched=%llu ms=%.2f\n", what, f->path,
               (unsigned long long)f->size, n, (unsigned long long)layer_reader_fetched(r),
               (t1 - t0) * 1e3);
        layer_reader_free(r);
}

int main(int argc, char **argv) {
        static uint8_t buf[1 << 20];
        struct layer_build_opts o = {0};
        struct layer_builder *b;
        struct layer_index *ix, *ix2;
        struct layer_index_info info;
        const struct layer_file *big = NULL, *small = NULL;
        struct src s, copy = {NULL};
        uint8_t *enc;
        size_t n, enc_len;
        double t0, t1, t2;
        int r = 0;

        if (argc < 2) {
                fprintf(stderr, "usage: layer_pass BLOB [SPAN_KIB [FRAME_KIB [LEVEL]]]\n");
                return 2;
        }
        if (argc > 2)
                o.span = (uint32_t)strtoul(argv[2], NULL, 10) * 1024;
        if (argc > 3)
                o.zstd_frame = (uint32_t)strtoul(argv[3], NULL, 10) * 1024;
        if (argc > 4)
                o.zstd_level = (int)strtol(argv[4], NULL, 10);
        s.f = fopen(argv[1], "rb");
        copy.f = tmpfile();
        if (!s.f || !copy.f) {
                perror(argv[1]);
                return 1;
        }
        o.sink = file_sink;
        o.sink_ctx = &copy;
        b = layer_builder_new(&o);
        t0 = now();
        while (r == 0 && (n = fread(buf, 1, sizeof(buf), s.f)) > 0)
                r = layer_builder_feed(b, buf, n);
        if (r == 0)
                r = layer_builder_finish(b, &ix);
        if (r == 0 && fflush(copy.f) != 0)
                r = -EIO;
        t1 = now();
        if (r < 0) {
                fprintf(stderr, "layer_pass: %s\n", layer_builder_error(b));
                return 1;
        }
        layer_builder_free(b);
        layer_index_info(ix, &info);
        if (layer_index_encode(ix, &enc, &enc_len, NULL) < 0)
                return 1;
        t2 = now();
        if (layer_index_decode(enc, enc_len, 0, &ix2) < 0)
                return 1;
        printf("pass_s=%.3f blob=%llu tar=%llu files=%zu checkpoints=%zu span=%u memory=%zu "
               "encoded=%zu encoded_per_gib_blob=%.0f decode_ms=%.1f\n",
               t1 - t0, (unsigned long long)info.blob_size, (unsigned long long)info.tar_size,
               info.nfiles, info.ncheckpoints, info.span, info.memory, enc_len,
               (double)enc_len * (double)(1ull << 30) / (double)info.blob_size, (now() - t2) * 1e3);
        if (info.format == LAYER_FMT_ZSTD)
                printf("seekable=%llu frames=%zu frame=%u overhead_bytes=%lld overhead_pct=%.2f "
                       "tar_ratio=%.3f\n",
                       (unsigned long long)info.data_size, info.nframes, info.span,
                       (long long)info.data_size - (long long)info.blob_size,
                       100.0 * ((double)info.data_size - (double)info.blob_size) /
                               (double)info.blob_size,
                       (double)info.data_size / (double)info.tar_size);
        for (size_t i = 0; i < layer_index_nfiles(ix2); i++) {
                const struct layer_file *f = layer_index_file(ix2, i);
                if (f->type != TAR_REG)
                        continue;
                if (!big || f->size > big->size)
                        big = f;
                if (f->size >= 4096 && f->size < 65536 && (!small || i % 7 == 0))
                        small = f;
        }
        if (big)
                read_one(ix2, info.format == LAYER_FMT_ZSTD ? &copy : &s, big, "largest");
        if (small)
                read_one(ix2, info.format == LAYER_FMT_ZSTD ? &copy : &s, small, "small");
        free(enc);
        layer_index_free(ix);
        layer_index_free(ix2);
        fclose(s.f);
        fclose(copy.f);
        return 0;
}
