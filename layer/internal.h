/* The layer index's representation, shared by layer/index.c (building, lookups),
 * layer/codec.c (encoding, validation) and layer/reader.c. Not for other modules. */
#pragma once
#include "layer/layer.h"

struct layer_checkpoint {
        uint64_t in;   /* blob offset of the first whole byte of the deflate block */
        uint64_t out;  /* tar offset of the block's first byte */
        uint8_t bits;  /* 0-7 bits of the block taken from the byte at IN - 1 */
        uint32_t wlen; /* window bytes: min(OUT, LAYER_WINDOW) */
        uint64_t zoff; /* the window, zstd-compressed, at WINS + ZOFF, ZLEN bytes */
        uint32_t zlen;
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
        uint8_t *wins;
        size_t wins_len;
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

/* Orders paths with '/' before any other byte (and the end before '/'). */
int layer_path_cmp(const char *a, const char *b);
/* Fills IX->subtree_end from the sorted FILES. 0 or -ENOMEM. */
int layer_index_link_tree(struct layer_index *ix);
/* The checkpoint to start from for tar offset UOFF: the last with out <= UOFF. */
const struct layer_checkpoint *layer_index_checkpoint(const struct layer_index *ix, uint64_t uoff);
