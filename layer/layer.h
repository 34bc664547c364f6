/* Layer indexes: the file table of an image layer and, for gzip layers, the decompression
 * checkpoints that let one file be read without inflating the layer from its start.
 *
 * Lifecycle: a layer_builder is fed the layer's bytes once, in order (the "pass"), and
 * produces a layer_index; an index is encoded to a compact content-addressed form
 * (layer_index_encode) that other nodes decode (layer_index_decode) instead of running the
 * pass; a layer_reader reads file bytes through an index, fetching only the compressed ranges
 * it needs through a callback. Nothing here does I/O, locks or logs: the engine supplies the
 * bytes and decides where the index is stored. No FUSE. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "layer/tar.h"
#include "util/digest.h"

enum layer_format {
        LAYER_FMT_TAR = 1,     /* plain tar: the uncompressed offset is the blob offset */
        LAYER_FMT_GZIP = 2,    /* tar+gzip, one or more members */
        LAYER_FMT_ZSTD = 3,    /* tar+zstd: read through a seekable copy (see below) */
        LAYER_FMT_ESTARGZ = 4, /* gzip with a TOC: files in members of their own, no pass */
};

/* File types are tar.h's enum tar_type (TAR_REG ... TAR_OPAQUE is never a file: it becomes
 * LAYER_F_OPAQUE on the directory). */
#define LAYER_F_OPAQUE 0x01   /* directory with ".wh..wh..opq": trusted.overlay.opaque=y */
#define LAYER_F_IMPLICIT 0x02 /* directory not in the tar, implied by a path under it */

#define LAYER_WINDOW 32768u           /* deflate's window: the bytes a checkpoint carries */
#define LAYER_SPAN_DEFAULT (2u << 20) /* compressed bytes between checkpoints */
#define LAYER_SPAN_MIN (16u << 10)    /* (the daemon's option allows 1-4 MiB) */
#define LAYER_SPAN_MAX (64u << 20)
#define LAYER_INDEX_DECODED_MAX (1ull << 30)

/* zstd layers. One zstd frame has no place to start decompressing but its beginning, so the
 * pass writes a seekable copy of the tar: independent zstd frames of FRAME uncompressed bytes
 * each (the last shorter), followed by the zstd seekable format's seek table in a skippable
 * frame (so the copy is itself a valid tar+zstd stream: `zstd -dc` gives the tar back). The
 * copy is a derived blob of its own; its digest and size are in the index, and the reader of
 * a zstd index fetches from it, never from the layer. */
#define LAYER_ZSTD_FRAME_DEFAULT (1u << 20) /* uncompressed bytes per frame of the copy */
#define LAYER_ZSTD_FRAME_MIN (64u << 10)
#define LAYER_ZSTD_FRAME_MAX (4u << 20)
#define LAYER_ZSTD_LEVEL_DEFAULT 3
/* The largest window a frame of the layer may ask the pass to hold (zstd --long=27 still
 * fits; ultra levels and --long=31 are refused). Bounds the pass's memory. */
#define LAYER_ZSTD_WINDOW_LOG_MAX 27

/* Receives the seekable copy's bytes, in order, LEN > 0 at a time, during the pass (feed and
 * finish). 0 or -errno: the pass stops with that error. */
typedef int (*layer_sink_fn)(void *ctx, const void *buf, size_t len);

struct layer_xattr {
        const char *name; /* NUL-terminated */
        const uint8_t *value;
        uint32_t len;
};

/* One entry of the file table. Strings and xattrs belong to the index. */
struct layer_file {
        const char *path; /* normalised (tar_path_normalise); "" is the root */
        const char *link; /* symlink target; hard link: the path of the file it shares data
                           * with (never itself a hard link); NULL otherwise */
        uint8_t type;     /* enum tar_type */
        uint8_t flags;    /* LAYER_F_* */
        uint32_t mode;    /* 07777 bits; the type is TYPE */
        uint32_t uid, gid, devmajor, devminor;
        int64_t mtime;
        uint32_t mtime_nsec;
        uint64_t size;                 /* regular files and hard links to them; 0 otherwise */
        uint64_t offset;               /* of the data in the uncompressed tar; 0 when SIZE is 0 */
        uint32_t xattr_first, nxattrs; /* into layer_index_xattr() */
        uint32_t chunk_first, nchunks; /* eStargz: into layer_index_chunk(); else 0 (and
                                        * OFFSET is 0: chunks locate the data) */
};

/* eStargz: a piece of a file's data in a gzip member of its own. */
struct layer_chunk {
        uint64_t file_off; /* where the piece starts in the file */
        uint64_t size;
        uint64_t in;    /* blob offset of the gzip member */
        uint64_t inner; /* bytes of the member's output before the piece */
};

struct layer_index_info {
        enum layer_format format;
        uint32_t span;
        uint64_t blob_size;        /* bytes of the layer blob (compressed) */
        uint64_t tar_size;         /* bytes of the uncompressed tar */
        struct digest blob_digest; /* sha256 of the blob: the layer digest */
        struct digest diff_id;     /* sha256 of the uncompressed tar */
        size_t nfiles, nxattrs, ncheckpoints, nchunks;
        size_t memory; /* bytes this index holds in memory */
        /* The blob layer_reader's FETCH reads: the layer itself, or for zstd the seekable
         * copy (its digest and size, computed in the pass; SPAN is its frame size). */
        struct digest data_digest;
        uint64_t data_size;
        size_t nframes; /* zstd: frames of the seekable copy */
        /* Loaded by layer_index_decode_head(): the windows are still in the encoded index,
         * from byte WINDOWS_OFFSET on; a reader needs layer_reader_set_windows(). */
        bool windows_lazy;
        uint64_t windows_offset;
};

struct layer_index;

void layer_index_free(struct layer_index *ix); /* NULL-safe */
void layer_index_info(const struct layer_index *ix, struct layer_index_info *ret);

/* Files are sorted by path with '/' ordered before every other byte, so a directory is
 * followed by all of its descendants. Index 0 is always the root "". */
size_t layer_index_nfiles(const struct layer_index *ix);
const struct layer_file *layer_index_file(const struct layer_index *ix, size_t i);
const struct layer_xattr *layer_index_xattr(const struct layer_index *ix, size_t i);
/* The file at PATH (normalised, "" for the root): its index, or -ENOENT. O(log n). */
ssize_t layer_index_lookup(const struct layer_index *ix, const char *path);
/* Children of directory DIR: start with CURSOR = DIR, then pass back what it returns; returns
 * the next direct child's index, or -ENOENT when there are no more. O(1) per child. */
ssize_t layer_index_next_child(const struct layer_index *ix, size_t dir, size_t cursor);

/* The pass. */
struct layer_build_opts {
        uint32_t span;                    /* 0: LAYER_SPAN_DEFAULT; else within MIN..MAX */
        const struct digest *diff_id;     /* when known: the pass fails if the tar differs */
        const struct digest *blob_digest; /* when known: the pass fails if the blob differs */
        size_t max_files;                 /* 0: 4 Mi entries */
        size_t max_bytes;                 /* names, xattrs and windows; 0: 512 MiB */
        /* zstd layers: without a SINK the pass refuses them (-EOPNOTSUPP). */
        layer_sink_fn sink; /* the seekable copy goes here */
        void *sink_ctx;
        uint32_t zstd_frame; /* 0: LAYER_ZSTD_FRAME_DEFAULT; clamped to MIN..MAX */
        int zstd_level;      /* 0: LAYER_ZSTD_LEVEL_DEFAULT */
};

struct layer_builder;

/* NULL on allocation failure; O may be NULL for the defaults. */
struct layer_builder *layer_builder_new(const struct layer_build_opts *o);
void layer_builder_free(struct layer_builder *b); /* NULL-safe */
/* The next LEN bytes of the blob. 0 or -errno, sticky: -EPROTONOSUPPORT unknown format,
 * -EOPNOTSUPP zstd without a sink, -EBADMSG corrupt gzip or zstd (a zstd frame whose window
 * is over 2^LAYER_ZSTD_WINDOW_LOG_MAX is corrupt for us), tar errors as tar_parser_feed(),
 * -EFBIG over max_files/max_bytes, -ENOMEM, the sink's error.
 * zstd: the decompressed tar is parsed and hashed as for gzip, and the seekable copy is
 * written to the sink as the pass goes (memory: the layer's window, at most
 * 2^LAYER_ZSTD_WINDOW_LOG_MAX, plus about three frames; never the layer). When the pass fails
 * (here or at finish, a diff_id mismatch included) what the sink got is garbage: discard it. */
int layer_builder_feed(struct layer_builder *b, const void *buf, size_t len);
/* The blob ended. Checks completeness, the digests when given, hard links and parents (zstd:
 * writes the last frame and the seek table to the sink first); on
 * success *RET is the index (the caller's) and 0 is returned; -EBADMSG and the errors above
 * otherwise, with layer_builder_error() saying why. */
int layer_builder_finish(struct layer_builder *b, struct layer_index **ret);
const char *layer_builder_error(const struct layer_builder *b); /* "" when none */

/* Detects the format from the first LEN bytes of a blob: a layer_format, -EAGAIN when LEN is
 * too short to tell (up to 512 bytes are needed for tar), -EPROTONOSUPPORT otherwise. */
int layer_detect_format(const void *buf, size_t len);

/* The encoded form: versioned, zstd-compressed, deterministic for one libzstd version. *RET
 * is malloc'ed (the caller frees it); *RET_DIGEST the sha256 of the *RET_LEN bytes, its name
 * as a derived blob. A gzip index is written as version 3: a small head (everything but the
 * windows) first, then the windows, each its own zstd frame, so a node can load the head
 * alone (layer_index_head_len, layer_index_decode_head). 0, -ENOMEM, or -EINVAL for an index
 * loaded from a head (it has no windows to write). */
int layer_index_encode(const struct layer_index *ix, uint8_t **ret, size_t *ret_len,
                       struct digest *ret_digest);
/* Decodes and validates everything (counts, bounds, offsets within the tar and the blob,
 * sorted unique normalised paths, parents are directories, hard links resolve, checkpoints
 * ordered with windows that decompress to their length). Decoded bytes are bounded by
 * MAX_DECODED (0: LAYER_INDEX_DECODED_MAX). 0, -EBADMSG, -EPROTONOSUPPORT (another version),
 * -EFBIG or -ENOMEM. Does not check that the index matches a blob: compare the info's
 * blob_digest with the layer's digest. */
int layer_index_decode(const void *buf, size_t len, size_t max_decoded, struct layer_index **ret);

/* The first bytes of an encoded index needed to decode its head. BUF holds the first LEN
 * bytes (at least LAYER_INDEX_PREFIX, or the whole blob when shorter) of an encoding of TOTAL
 * bytes. 0 and *RET (<= TOTAL); -EPROTONOSUPPORT when the encoding has no separate head
 * (versions 1 and 2, or an unknown version: decode the whole blob with layer_index_decode);
 * -EBADMSG malformed, or a header that does not add up to TOTAL. */
#define LAYER_INDEX_PREFIX 40
int layer_index_head_len(const void *buf, size_t len, uint64_t total, uint64_t *ret);
/* Decodes the head of a version 3 encoding of TOTAL bytes: BUF holds at least its first
 * layer_index_head_len() bytes. Everything is validated as layer_index_decode() does except
 * the windows' contents (their offsets and lengths are checked against the blob's size):
 * the index's info says windows_lazy, and a reader of it needs layer_reader_set_windows().
 * Errors as layer_index_head_len() and layer_index_decode(). */
int layer_index_decode_head(const void *buf, size_t len, uint64_t total, size_t max_decoded,
                            struct layer_index **ret);

/* eStargz. The footer is the blob's last LAYER_ESTARGZ_FOOTER bytes (the legacy stargz footer
 * is the last 47 of them; both are accepted). */
#define LAYER_ESTARGZ_FOOTER 51
#define LAYER_ESTARGZ_TOC_MAX (64u << 20) /* decompressed TOC bytes */

/* Reads the footer FOOTER (LEN bytes: the blob's last min(51, blob size)) of a blob of
 * BLOB_SIZE bytes: *RET_TOC_OFF is where the TOC's gzip member starts and *RET_TOC_END where
 * it ends (the footer's start). 0, -EPROTONOSUPPORT when there is no eStargz footer (an
 * ordinary gzip layer: run the pass), -EBADMSG when the footer points outside the blob. */
int layer_estargz_footer(const void *footer, size_t len, uint64_t blob_size, uint64_t *ret_toc_off,
                         uint64_t *ret_toc_end);

struct layer_estargz_opts {
        uint64_t blob_size;
        const struct digest *blob_digest; /* the layer digest, recorded in the index */
        const struct digest *toc_digest;  /* when known (the layer's annotation
                                           * containerd.io/snapshot/stargz/toc.digest): sha256
                                           * of the TOC JSON, checked */
        size_t max_toc;                   /* 0: LAYER_ESTARGZ_TOC_MAX */
        size_t max_files;                 /* 0: 4 Mi entries */
};

/* Builds the index of an eStargz layer from its TOC member (TOC, LEN bytes: the blob bytes
 * [toc_off, toc_end) of layer_estargz_footer()), without reading anything else of the blob:
 * the file table from the JSON (names normalised, whiteouts as in a tar), and the chunk table
 * (every chunk's gzip member inside [0, TOC_OFF)). 0 or -EBADMSG (malformed TOC; ERR says
 * what), -EOPNOTSUPP (an entry type we cannot serve), -EFBIG, -ENOMEM. ERR (ERR_LEN bytes)
 * may be NULL. */
int layer_estargz_index(const void *toc, size_t len, uint64_t toc_off,
                        const struct layer_estargz_opts *o, struct layer_index **ret, char *err,
                        size_t err_len);

/* eStargz chunk I of the index (NULL past the end). */
const struct layer_chunk *layer_index_chunk(const struct layer_index *ix, size_t i);

/* Reading. FETCH copies LEN bytes of the blob at OFF into BUF and returns how many (fewer
 * only at the blob's end) or -errno; it may block (the reader is for worker threads). The
 * blob is the info's data blob: the layer, or for a zstd index its seekable copy. */
typedef ssize_t (*layer_fetch_fn)(void *ctx, uint64_t off, void *buf, size_t len);

struct layer_reader;

/* A reader holds one inflate state (about 50 KiB) so sequential reads continue where the
 * last stopped; for zstd, the last frame it decompressed (the frame size, allocated at the
 * first read) and a zstd state (about 100 KiB). Not thread-safe: one per thread. IX must outlive it.
 * NULL on ENOMEM. */
struct layer_reader *layer_reader_new(const struct layer_index *ix, layer_fetch_fn fetch,
                                      void *ctx);
void layer_reader_free(struct layer_reader *r); /* NULL-safe */
/* Up to LEN bytes of regular file (or hard link) F at OFF into BUF: the count (0 at or past
 * the end), -EISDIR / -EINVAL for other types, FETCH's error, or -EBADMSG when the blob ends
 * early or does not inflate where the index says. Raw deflate has no check of its own: that
 * the bytes are right rests on FETCH returning verified blob bytes (the engine's chunk
 * digests) and on the index being the one built for this blob. */
ssize_t layer_reader_read(struct layer_reader *r, const struct layer_file *f, uint64_t off,
                          void *buf, size_t len);
/* Up to LEN bytes of the uncompressed tar stream at UOFF (plain tar, gzip and zstd layers):
 * the count (short only at the tar's end, 0 past it), -EINVAL for eStargz, or the errors of
 * layer_reader_read(). For caches of inflated spans (layertree/spancache.c), which keep tar
 * bytes whatever file they belong to. */
ssize_t layer_reader_read_tar(struct layer_reader *r, uint64_t uoff, void *buf, size_t len);
/* Compressed bytes fetched so far (of the data blob; window reads are not counted). */
uint64_t layer_reader_fetched(const struct layer_reader *r);
/* For an index loaded from its head (info.windows_lazy): FETCH (with CTX) reads the encoded
 * index blob; a checkpoint's window is read through it (at most LAYER_WINDOW + 1 KiB, at
 * windows_offset + its place) when a read starts there, and checked (one zstd frame of
 * exactly that length, inflating to the window's size) before use: -EBADMSG otherwise.
 * Without it, such a read fails with -EIO. */
void layer_reader_set_windows(struct layer_reader *r, layer_fetch_fn fetch, void *ctx);

/* The blob range [*RET_START, *RET_END) that holds LEN bytes of the uncompressed tar at UOFF:
 * what a prefetch of a read should fetch (zstd: a range of the seekable copy, the frames that
 * hold the bytes). 0 or -EINVAL (past the end). */
int layer_index_blob_range(const struct layer_index *ix, uint64_t uoff, uint64_t len,
                           uint64_t *ret_start, uint64_t *ret_end);
