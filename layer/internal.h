/* The layer index's representation, shared by layer/index.c (building, lookups),
 * layer/codec.c (encoding, validation) and layer/reader.c. Not for other modules. */
#pragma once
#include "layer/layer.h"

/* The most bytes one window's zstd frame may have (checked when decoding; the reader's
 * buffer for a window read from the encoded index). */
#define LAYER_WINDOW_ZMAX (LAYER_WINDOW + 1024)

struct layer_checkpoint {
        uint64_t in;   /* blob offset of the first whole byte of the deflate block */
        uint64_t out;  /* tar offset of the block's first byte */
        uint8_t bits;  /* 0-7 bits of the block taken from the byte at IN - 1 */
        uint32_t wlen; /* window bytes: min(OUT, LAYER_WINDOW) */
        uint64_t zoff; /* the window, zstd-compressed, at WINS + ZOFF, ZLEN bytes */
        uint32_t zlen;
};

/* zstd: one frame of the seekable copy. UOFF and COFF follow from the sizes (each frame starts
 * where the one before ends, in the tar and in the copy); they are kept for the searches. */
struct layer_zframe {
        uint64_t uoff; /* tar offset of the frame's first byte */
        uint64_t coff; /* offset of the frame in the seekable copy */
        uint32_t ulen; /* the span, or less for the last frame; never 0 */
        uint32_t clen; /* the whole zstd frame, header and checksum included */
};

struct layer_index {
        enum layer_format format;
        uint32_t span;
        uint64_t blob_size, tar_size;
        struct digest blob_digest, diff_id;

        struct layer_file *files;
        size_t nfiles;
        uint32_t *subtree_end; /* FILES[i]'s descendants are i+1 .. subtree_end[i]-1 */
        struct layer_xattr *xattrs;
        size_t nxattrs;
        struct layer_checkpoint *cps;
        size_t ncps;
        struct layer_chunk *chunks;
        size_t nchunks;

        char *strs; /* every string (NUL-terminated) and xattr value */
        size_t strs_len;
        uint8_t *wins; /* NULL when WINS_LAZY */
        size_t wins_len;
        /* Loaded from the head of a version 3 encoding (layer_index_decode_head): the windows
         * stay in the encoded blob, at WINS_BASE + zoff, read by the reader when needed. */
        bool wins_lazy;
        uint64_t wins_base;

        /* zstd (SPAN is the frame size): the seekable copy the reader fetches from. */
        struct layer_zframe *zframes;
        size_t nzframes;
        struct digest seek_digest;
        uint64_t seek_size;
};

/* The builder's table, shared with layer/estargz.c (which adds entries from a TOC instead of
 * a tar stream). */
struct layer_builder;
/* Adds an entry as the tar parser would (replacing an earlier one of the same path; hard
 * links resolved now). 0 or -errno, the builder's error set. */
int layer_builder_add(struct layer_builder *b, const struct tar_entry *e);
/* Appends a chunk to the entry added last (a regular file). 0 or -errno. */
int layer_builder_add_chunk(struct layer_builder *b, const struct layer_chunk *c);
/* Finishes a table built with layer_builder_add() (parents, opaque dirs, sorting) into an
 * eStargz index of a blob of BLOB_SIZE bytes. */
int layer_builder_finish_toc(struct layer_builder *b, uint64_t blob_size,
                             const struct digest *blob_digest, struct layer_index **ret);
int layer_builder_fail(struct layer_builder *b, int err, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Checkpoint I's window frame SRC (LEN bytes, read from a lazily loaded index's blob) checked
 * and decompressed into OUT (LAYER_WINDOW bytes). 0, -EINVAL (no such checkpoint) or
 * -EBADMSG (not one zstd frame of the checkpoint's length and window size). */
int layer_index_window(const struct layer_index *ix, size_t i, const void *src, size_t len,
                       void *out);

/* Orders paths with '/' before any other byte (and the end before '/'). */
int layer_path_cmp(const char *a, const char *b);
/* Fills IX->subtree_end from the sorted FILES. 0 or -ENOMEM. */
int layer_index_link_tree(struct layer_index *ix);
/* The checkpoint to start from for tar offset UOFF: the last with out <= UOFF. */
const struct layer_checkpoint *layer_index_checkpoint(const struct layer_index *ix, uint64_t uoff);

/* ---- zstd (layer/zstd.c) ---------------------------------------------------------------- */

/* The bytes a seekable copy of frames of these sizes has after its last frame: the seek
 * table's skippable frame (8 header bytes, 8 per frame, a 9-byte footer). */
uint64_t layer_zstd_table_len(size_t nframes);
/* Checks IX's frame table against its tar size, span and seek size: sizes within the span
 * (every frame but the last exactly the span), each frame right after the one before, the copy
 * exactly the frames plus the seek table. 0 or -EBADMSG. */
int layer_zstd_check_frames(const struct layer_index *ix);

/* The zstd half of the pass, driven by layer/index.c's builder. */
struct layer_zpass;
struct layer_zpass_cfg {
        uint32_t frame; /* within LAYER_ZSTD_FRAME_MIN..MAX */
        int level;
        layer_sink_fn sink;
        void *sink_ctx;
        size_t max_frames;
};
/* NULL on ENOMEM. */
struct layer_zpass *layer_zpass_new(const struct layer_zpass_cfg *c);
void layer_zpass_free(struct layer_zpass *z); /* NULL-safe */
/* The next LEN bytes of the layer: decompressed, and what comes out is passed to
 * layer_builder_tar_out() and to the copy. 0 or -errno (the builder's error set). */
int layer_zpass_feed(struct layer_builder *b, struct layer_zpass *z, const uint8_t *buf,
                     size_t len);
/* The layer ended: refuses a truncated stream, writes the last frame and the seek table. */
int layer_zpass_finish(struct layer_builder *b, struct layer_zpass *z);
/* Moves the frame table, the copy's digest and size into IX (after a successful finish). */
void layer_zpass_take(struct layer_zpass *z, struct layer_index *ix);

/* The builder's side of it (layer/index.c): uncompressed tar bytes, hashed and parsed. */
int layer_builder_tar_out(struct layer_builder *b, const void *buf, size_t len);

/* The zstd half of the reader, driven by layer/reader.c. */
struct layer_zreader;
struct layer_zreader *layer_zreader_new(const struct layer_index *ix); /* NULL on ENOMEM */
void layer_zreader_free(struct layer_zreader *z);                      /* NULL-safe */
/* LEN bytes of the tar at UOFF (inside the tar) into BUF, decompressing the frames that hold
 * them; FETCH reads the seekable copy, *FETCHED counts what it returned. LEN or -errno. */
ssize_t layer_zreader_read(struct layer_zreader *z, layer_fetch_fn fetch, void *ctx,
                           uint64_t *fetched, uint64_t uoff, uint8_t *buf, size_t len);
/* zstd: the frame holding tar offset UOFF (< tar_size). */
const struct layer_zframe *layer_zstd_frame_at(const struct layer_index *ix, uint64_t uoff);
