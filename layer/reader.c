/* Reading file bytes through a layer index.
 *
 * Plain tar: the file's bytes are the blob's bytes at the same offset. Gzip: find the last
 * checkpoint at or before the wanted tar offset, start a raw inflate there (the checkpoint's
 * partial byte primed with inflatePrime(), its window set as the dictionary), inflate and
 * discard up to the offset, then into the caller's buffer. Blob bytes come from the fetch
 * callback in pieces of FETCH_CHUNK, so a read costs at most the compressed bytes from the
 * checkpoint to the end of the wanted data, plus one piece.
 *
 * The reader keeps its inflate state between calls: a read that starts at or after where the
 * last one stopped, with no closer checkpoint in between, continues instead of restarting,
 * which makes sequential reads of a file cost one pass over its compressed bytes. A layer with
 * several gzip members (eStargz is one per file) is followed across members: after the raw
 * deflate data of a member end its 8-byte trailer is skipped and the next member is read as
 * gzip (header checked; CRC checked for every member begun at its header).
 *
 * eStargz: a file's data is a list of chunks, each at INNER bytes into a gzip member of its
 * own; a read inflates the member from its start (gzip header and all: no dictionary, no
 * bits) and continues while the next read is further into the same chunk.
 *
 * zstd: the index's frames of the seekable copy, in layer/zstd.c (FETCH reads the copy).
 *
 * An index loaded from its head alone has no windows in memory: a restart at a checkpoint reads
 * that checkpoint's window (one zstd frame, about 32 KiB) from the encoded index through a
 * second callback and checks it before priming inflate with it.
 *
 * Cost: about 83 KiB per reader (inflate's state and window, one input piece, one window and
 * one compressed window).
 */
#include "layer/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>

#define FETCH_CHUNK (64u << 10)

struct layer_reader {
        const struct layer_index *ix;
        layer_fetch_fn fetch;
        void *ctx;
        uint64_t fetched;
        layer_fetch_fn wfetch; /* the encoded index, for a lazily loaded one's windows */
        void *wctx;

        z_stream zs;
        bool zs_init, live, raw;
        size_t chunk;  /* eStargz: the chunk the live inflate is in */
        uint64_t upos; /* tar offset of the next byte inflate will produce */
        uint64_t cpos; /* blob offset of the next byte to fetch */
        ZSTD_DCtx *dctx;
        struct layer_zreader *zr; /* zstd */
        uint8_t in[FETCH_CHUNK];
        uint8_t scratch[LAYER_WINDOW];
        uint8_t zwin[LAYER_WINDOW_ZMAX]; /* a window's frame read from the encoded index */
};

struct layer_reader *layer_reader_new(const struct layer_index *ix, layer_fetch_fn fetch,
                                      void *ctx) {
        struct layer_reader *r = calloc(1, sizeof(*r));

        if (!r)
                return NULL;
        r->ix = ix;
        r->fetch = fetch;
        r->ctx = ctx;
        if (ix->format == LAYER_FMT_GZIP || ix->format == LAYER_FMT_ESTARGZ) {
                r->dctx = ZSTD_createDCtx();
                if (!r->dctx || inflateInit2(&r->zs, -15) != Z_OK) {
                        ZSTD_freeDCtx(r->dctx);
                        free(r);
                        return NULL;
                }
                r->zs_init = true;
        }
        if (ix->format == LAYER_FMT_ZSTD) {
                r->zr = layer_zreader_new(ix);
                if (!r->zr) {
                        free(r);
                        return NULL;
                }
        }
        return r;
}

void layer_reader_free(struct layer_reader *r) {
        if (!r)
                return;
        if (r->zs_init)
                inflateEnd(&r->zs);
        ZSTD_freeDCtx(r->dctx);
        layer_zreader_free(r->zr);
        free(r);
}

uint64_t layer_reader_fetched(const struct layer_reader *r) {
        return r->fetched;
}

void layer_reader_set_windows(struct layer_reader *r, layer_fetch_fn fetch, void *ctx) {
        r->wfetch = fetch;
        r->wctx = ctx;
}

/* Checkpoint CP's window, decompressed into the scratch buffer. A lazily loaded index's comes
 * from the encoded index blob, checked frame and length before use (the head checked only
 * where the window lies). */
static int load_window(struct layer_reader *r, const struct layer_checkpoint *cp) {
        const struct layer_index *ix = r->ix;
        size_t got;

        if (!ix->wins_lazy) {
                got = ZSTD_decompressDCtx(r->dctx, r->scratch, LAYER_WINDOW, ix->wins + cp->zoff,
                                          cp->zlen);
                return ZSTD_isError(got) || got != cp->wlen ? -EBADMSG : 0;
        }
        if (!r->wfetch)
                return -EIO;
        if (cp->zlen > sizeof(r->zwin))
                return -EBADMSG; /* the decoder refuses these */
        uint64_t off = ix->wins_base + cp->zoff;
        for (size_t have = 0; have < cp->zlen;) {
                ssize_t n = r->wfetch(r->wctx, off + have, r->zwin + have, cp->zlen - have);
                if (n < 0)
                        return (int)n;
                if (n == 0 || (size_t)n > cp->zlen - have)
                        return -EBADMSG;
                have += (size_t)n;
        }
        return layer_index_window(ix, (size_t)(cp - ix->cps), r->zwin, cp->zlen, r->scratch);
}

/* Exactly LEN bytes of the blob at OFF, or -errno (-EBADMSG for a blob shorter than the
 * index says). */
static int fetch_exact(struct layer_reader *r, uint64_t off, void *buf, size_t len) {
        uint8_t *p = buf;

        while (len > 0) {
                ssize_t n = r->fetch(r->ctx, off, p, len);
                if (n < 0)
                        return (int)n;
                if (n == 0 || (size_t)n > len)
                        return -EBADMSG;
                r->fetched += (uint64_t)n;
                off += (uint64_t)n;
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

/* Refills the inflate input with the next piece of the blob. */
static int refill(struct layer_reader *r) {
        uint64_t left = r->ix->blob_size - r->cpos;
        size_t n = left < FETCH_CHUNK ? (size_t)left : FETCH_CHUNK;
        int e;

        if (n == 0)
                return -EBADMSG; /* the index promised more than the blob holds */
        e = fetch_exact(r, r->cpos, r->in, n);
        if (e < 0)
                return e;
        r->cpos += n;
        r->zs.next_in = r->in;
        r->zs.avail_in = (uInt)n;
        return 0;
}

static int start_at(struct layer_reader *r, const struct layer_checkpoint *cp) {
        uint8_t byte;
        int e;

        r->live = false;
        if (inflateReset2(&r->zs, -15) != Z_OK)
                return -EBADMSG;
        r->zs.avail_in = 0;
        r->cpos = cp->in;
        if (cp->bits) {
                e = fetch_exact(r, cp->in - 1, &byte, 1);
                if (e < 0)
                        return e;
                if (inflatePrime(&r->zs, cp->bits, byte >> (8 - cp->bits)) != Z_OK)
                        return -EBADMSG;
        }
        if (cp->wlen) {
                e = load_window(r, cp);
                if (e < 0)
                        return e;
                if (inflateSetDictionary(&r->zs, r->scratch, cp->wlen) != Z_OK)
                        return -EBADMSG;
        }
        r->upos = cp->out;
        r->raw = true;
        r->live = true;
        return 0;
}

/* Inflates into OUT (LEN bytes; OUT NULL discards into scratch), following gzip members. */
static int inflate_to(struct layer_reader *r, uint8_t *out, size_t len) {
        while (len > 0) {
                size_t want = len, produced;
                uint8_t *dst = out ? out : r->scratch;
                int zr, e;

                if (!out && want > LAYER_WINDOW)
                        want = LAYER_WINDOW;
                if (want > (1u << 30))
                        want = 1u << 30;
                if (r->zs.avail_in == 0) {
                        e = refill(r);
                        if (e < 0)
                                return e;
                }
                r->zs.next_out = dst;
                r->zs.avail_out = (uInt)want;
                zr = inflate(&r->zs, Z_NO_FLUSH);
                produced = want - r->zs.avail_out;
                r->upos += produced;
                len -= produced;
                if (out)
                        out += produced;
                if (zr == Z_STREAM_END) {
                        if (r->raw) {
                                /* Skip the member's trailer (CRC32, ISIZE): raw inflate
                                 * began mid-member and cannot check it. */
                                for (int skip = 8; skip > 0;) {
                                        uInt k;
                                        if (r->zs.avail_in == 0) {
                                                e = refill(r);
                                                if (e < 0)
                                                        return e;
                                        }
                                        k = r->zs.avail_in < (uInt)skip ? r->zs.avail_in
                                                                        : (uInt)skip;
                                        r->zs.next_in += k;
                                        r->zs.avail_in -= k;
                                        skip -= (int)k;
                                }
                                r->raw = false;
                        }
                        if (len == 0)
                                break;
                        if (inflateReset2(&r->zs, 16 + 15) != Z_OK)
                                return -EBADMSG;
                        continue;
                }
                if (zr == Z_BUF_ERROR && r->zs.avail_in == 0)
                        continue;
                if (zr != Z_OK)
                        return -EBADMSG;
        }
        return 0;
}

static ssize_t read_gzip(struct layer_reader *r, uint64_t uoff, uint8_t *buf, size_t len) {
        const struct layer_checkpoint *cp = layer_index_checkpoint(r->ix, uoff);
        int e;

        if (!cp)
                return -EBADMSG;
        /* Continue the running inflate unless a checkpoint is closer or we would go back. */
        if (!r->live || r->upos > uoff || cp->out > r->upos) {
                e = start_at(r, cp);
                if (e < 0)
                        return e;
        }
        e = inflate_to(r, NULL, uoff - r->upos);
        if (e == 0)
                e = inflate_to(r, buf, len);
        if (e < 0) {
                r->live = false;
                return e;
        }
        return (ssize_t)len;
}

/* eStargz: LEN bytes at OFF of F, chunk by chunk. UPOS counts the member's output. */
static ssize_t read_chunks(struct layer_reader *r, const struct layer_file *f, uint64_t off,
                           uint8_t *buf, size_t len) {
        const struct layer_index *ix = r->ix;
        size_t lo = f->chunk_first, hi = (size_t)f->chunk_first + f->nchunks, done = 0;
        int e = 0;

        if (hi > ix->nchunks || lo >= hi)
                return -EBADMSG;
        while (hi - lo > 1) { /* the last chunk starting at or before OFF */
                size_t mid = lo + (hi - lo) / 2;
                if (ix->chunks[mid].file_off <= off)
                        lo = mid;
                else
                        hi = mid;
        }
        for (size_t c = lo; done < len && c < (size_t)f->chunk_first + f->nchunks; c++) {
                const struct layer_chunk *ch = &ix->chunks[c];
                uint64_t at = ch->inner + (off + done - ch->file_off);
                size_t n = len - done;

                if (n > ch->file_off + ch->size - (off + done))
                        n = (size_t)(ch->file_off + ch->size - (off + done));
                if (!r->live || r->chunk != c || r->upos > at) {
                        r->live = false;
                        if (inflateReset2(&r->zs, 16 + 15) != Z_OK)
                                return -EBADMSG;
                        r->zs.avail_in = 0;
                        r->cpos = ch->in;
                        r->upos = 0;
                        r->raw = false;
                        r->chunk = c;
                        r->live = true;
                }
                e = inflate_to(r, NULL, at - r->upos);
                if (e == 0)
                        e = inflate_to(r, buf + done, n);
                if (e < 0) {
                        r->live = false;
                        return e;
                }
                done += n;
        }
        return (ssize_t)done;
}

ssize_t layer_reader_read_tar(struct layer_reader *r, uint64_t uoff, void *buf, size_t len) {
        const struct layer_index *ix = r->ix;
        int e;

        if (ix->format == LAYER_FMT_ESTARGZ)
                return -EINVAL;
        if (uoff >= ix->tar_size || len == 0)
                return 0;
        if (len > ix->tar_size - uoff)
                len = (size_t)(ix->tar_size - uoff);
        if (len > SSIZE_MAX)
                len = SSIZE_MAX;
        if (ix->format == LAYER_FMT_TAR) {
                e = fetch_exact(r, uoff, buf, len);
                return e < 0 ? e : (ssize_t)len;
        }
        if (ix->format == LAYER_FMT_ZSTD)
                return layer_zreader_read(r->zr, r->fetch, r->ctx, &r->fetched, uoff, buf, len);
        return read_gzip(r, uoff, buf, len);
}

ssize_t layer_reader_read(struct layer_reader *r, const struct layer_file *f, uint64_t off,
                          void *buf, size_t len) {
        const struct layer_index *ix = r->ix;
        uint64_t uoff;
        int e;

        if (f->type == TAR_DIR)
                return -EISDIR;
        if (f->type != TAR_REG && f->type != TAR_HARDLINK)
                return -EINVAL;
        if (off >= f->size || len == 0)
                return 0;
        if (len > f->size - off)
                len = (size_t)(f->size - off);
        if (len > SSIZE_MAX)
                len = SSIZE_MAX;
        if (ix->format == LAYER_FMT_ESTARGZ)
                return read_chunks(r, f, off, buf, len);
        uoff = f->offset + off;
        if (uoff > ix->tar_size || len > ix->tar_size - uoff)
                return -EBADMSG;
        if (ix->format == LAYER_FMT_TAR) {
                e = fetch_exact(r, uoff, buf, len);
                return e < 0 ? e : (ssize_t)len;
        }
        if (ix->format == LAYER_FMT_ZSTD)
                return layer_zreader_read(r->zr, r->fetch, r->ctx, &r->fetched, uoff, buf, len);
        return read_gzip(r, uoff, buf, len);
}
