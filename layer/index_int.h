/* The layer builder's private structures, shared by the files that make up the pass:
 * layer/build.c (the builder, its table of entries), layer/pass.c (the bytes: gzip, zstd,
 * tar, digests, checkpoints) and layer/finish.c (the table made into an index). Not for
 * other modules: they reach the builder through layer/layer.h and layer/internal.h. */
#pragma once
#include "layer/internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <zlib.h>
#include <zstd.h>

/* "No entry" in the size_t links of struct bfile and the opaque markers. */
#define NONE SIZE_MAX

struct bfile {
        struct layer_file f;
        size_t path_off, link_off, xa_first;
        size_t target;            /* hard links: the entry whose data this shares */
        bool dead;                /* replaced by a later entry of the same path, or dropped */
        uint32_t new_chunk_first; /* eStargz: F.chunk_first in the index */
        /* 1 + the index of the last non-directory entry of this path (0: none). containerd's
         * applier removes whatever tree is at a path before it writes a non-directory there,
         * so every entry under this path with a lower index is dropped at finish. Carried
         * over when a later entry replaces this one. */
        size_t cut;
        size_t dropped_by; /* dropped: the CUT that dropped it (hard links read later fail) */
};

struct bxattr {
        size_t name_off, val_off;
        uint32_t len;
};

struct layer_builder {
        uint32_t span;
        size_t max_files, max_bytes;
        bool check_diff, check_blob;
        struct digest want_diff, want_blob;
        int err;
        char errmsg[384];

        int fmt;
        uint8_t head[TAR_BLOCK];
        size_t head_len;
        EVP_MD_CTX *blob_md, *tar_md;
        struct tar_parser *tar;

        z_stream zs;
        bool zs_init, member_end;
        uint8_t *window; /* circular: the last LAYER_WINDOW bytes of output */
        uint64_t totin, totout, last_in;
        ZSTD_CCtx *cctx;
        uint8_t lin[LAYER_WINDOW];

        struct bfile *files;
        size_t nfiles, files_cap;
        struct bxattr *xas;
        size_t nxas, xas_cap;
        char *arena;
        size_t alen, acap;
        uint32_t *map; /* open addressing: file index + 1, 0 empty */
        size_t map_cap, map_used;
        size_t *opaques;    /* arena offsets of the opaque markers' directories */
        size_t *opaque_seq; /* NFILES when each marker was read: its place in the tar */
        size_t nopaques, opaques_cap, opaque_seq_cap;
        struct layer_checkpoint *cps;
        size_t ncps, cps_cap;
        struct layer_chunk *chunks; /* eStargz; F.chunk_first indexes this while building */
        size_t nchunks, chunks_cap;
        uint8_t *wins;
        size_t wins_len, wins_cap;

        struct layer_zpass_cfg zcfg; /* zstd */
        struct layer_zpass *zp;
};

#define bfail layer_builder_fail

/* Grows *P (an array of *CAP elements of ELEM bytes) to hold at least NEED, doubling.
 * 0 or -ENOMEM (*P and *CAP unchanged). */
int layer_grow(void **p, size_t *cap, size_t need, size_t elem);
/* Is B under directory A ("" is everything's ancestor)? */
bool layer_path_under(const char *a, const char *b);

/* ---- the table (layer/build.c) ---------------------------------------------------------- */

/* The live entry of PATH, or -ENOENT. */
ssize_t layer_builder_find(const struct layer_builder *b, const char *path);
/* Makes FILES[IDX] the entry for its path (the previous one, if any, is replaced). 0 or
 * -errno, the builder's error set. */
int layer_builder_put(struct layer_builder *b, size_t idx);
/* A new zeroed entry of PATH at the end of FILES (not yet in the map), or NULL (the
 * builder's error set). Moves FILES. */
struct bfile *layer_builder_new_file(struct layer_builder *b, const char *path);

/* ---- the finish (layer/finish.c) -------------------------------------------------------- */

/* Drops replaced entries, resolves hard links to replaced targets, marks opaque directories
 * and adds the implied parents. 0 or -errno, the builder's error set. */
int layer_builder_finish_table(struct layer_builder *b);
/* The index from the finished table (taking the builder's strings, checkpoints and windows),
 * or NULL (the builder's error set). */
struct layer_index *layer_builder_index(struct layer_builder *b, const struct digest *blob,
                                        const struct digest *tar);
