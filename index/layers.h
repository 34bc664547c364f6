/* The image layers a node has registered (layertree/), in the node's index (migration 5).
 *
 * One row per layer: where it comes from, what the caller said about it (media type, diff_id,
 * eStargz TOC digest), and what the node learned (format, the digest and size of its index as
 * a derived blob, its state and error). Rows are few (a handful per image) and written when a
 * layer is added or its index is found, so the calls are synchronous on a connection of their
 * own (like index/snapshots.c): a row is on disk when the call returns.
 *
 * Thread-safety: every function may be called from any thread; calls are serialised. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "index/index.h"
#include "util/digest.h"

#define IDX_LAYER_ERROR_MAX 200

struct idx_layer {
        struct digest digest;
        char source[IDX_SOURCE_MAX];         /* "registry/repository" */
        char media_type[IDX_MEDIA_TYPE_MAX]; /* "" when not given */
        bool has_diff_id, has_toc_digest, has_index;
        struct digest diff_id, toc_digest;
        struct digest index_digest; /* the derived blob holding the encoded index */
        uint64_t index_size;
        int format; /* enum layer_format, 0 unknown */
        int state;  /* enum ltree_state, as the tree last recorded it */
        char error[IDX_LAYER_ERROR_MAX];
        int error_code;   /* FAILED: the -errno behind ERROR (0 unknown: rows before it) */
        int64_t added_at; /* unix seconds */
};

struct idx_layers;

/* Opens a connection to IX's database (migrated by idx_open). IX opened read-only gives a
 * read-only connection (put is then -EROFS). 0, -ENOMEM, -EIO. */
int idx_layers_open(struct index *ix, struct idx_layers **ret);
void idx_layers_close(struct idx_layers *l); /* NULL-safe */

/* Inserts or replaces the row of L->digest. 0, -EIO, -EROFS. */
int idx_layer_put(struct idx_layers *l, const struct idx_layer *row);

/* Calls FN for every row, in added_at then digest order; a negative return from FN stops the
 * walk and is returned. Rows that do not parse are skipped. 0 or -EIO. */
int idx_layers_for_each(struct idx_layers *l, int (*fn)(void *ud, const struct idx_layer *row),
                        void *ud);
