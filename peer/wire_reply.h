/* The body of a home's answer to an announce (POST /p2p/v1/announce, 200), added with issue 18:
 *   {"full":[{"digest":"sha256:<hex>", "retry_ms":N}, ...],
 *    "covered":[{"digest":"sha256:<hex>", "retry_ms":N, "chunks":C, "present":[[0,40]]}, ...]}
 * "full" lists the announced blobs the home did not record the sender as a holder of: it keeps
 * max_holders holders per blob and those it has already hold every chunk of the blob.
 * "covered" (issue 18, later: the deltas of a wave's front) lists those whose recorded holders
 * hold every chunk the sender announced but not the whole blob; "present" is the chunks they
 * hold (ranges [start, end) of the blob's C chunks, as in an announce). The sender should not
 * announce a covered blob to that home while what it holds of it stays within "present", up
 * to RETRY_MS: a chunk outside it is one the home must hear of (or it would grant its claim
 * again). An older sender ignores "covered" and keeps announcing, which is safe.
 * The sender should not announce that blob to that home again (deltas and refreshes alike)
 * for RETRY_MS, then once, to be recorded if a slot is free by then (peer/directory.h says how
 * the home spaces those retries). Older homes answer "ok\n", and older senders ignore the
 * body, so both directions stay compatible: a sender that does not understand it keeps
 * announcing as before. The parser takes untrusted bytes, as wire.h's do. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "util/digest.h"

#define WIRE_REPLY_MAX_FULL 4096 /* entries in one reply (an announce has at most as many blobs) */
/* Ranges in one "covered" entry: a home whose coverage is more fragmented records the sender
 * instead, so a reply stays under WIRE_REPLY_MAX_FULL x ~1 KB. */
#define WIRE_REPLY_MAX_RANGES 64
/* Bytes of "covered" bitmaps a parsed reply may hold (a reply naming huge blobs is refused). */
#define WIRE_REPLY_MAX_COVERED_BYTES (4u << 20)

struct wire_full {
        struct digest digest;
        uint64_t retry_ms; /* 1 .. 2^53 */
        /* "covered": the chunks the home's holders hold, a bitmap of NCHUNKS bits (malloc'd,
         * owned by the reply); NULL: "full" (the whole blob). */
        uint8_t *covered;
        uint32_t nchunks;
};

struct wire_reply {
        uint32_t nfull;
        struct wire_full *full; /* malloc'd, nfull entries; NULL when none */
};

/* Serialises R into a malloc'd NUL-terminated JSON text (free()); RET_LEN may be NULL.
 * 0; -EINVAL (too many entries, a retry_ms out of range); -ENOMEM. */
int wire_reply_build(const struct wire_reply *r, char **ret, size_t *ret_len);

/* Parses a reply. A body that is not a JSON object (an older home's "ok\n") or has neither
 * "full" nor "covered" is an empty reply (0). -EINVAL when either is there but malformed
 * (nothing to free); else 0 and *RET to free with wire_reply_free(). Entries of both lists
 * are in R->full, "covered" ones with their bitmap, at most WIRE_REPLY_MAX_FULL in all. */
int wire_reply_parse(const char *body, size_t len, struct wire_reply *ret);

/* Appends (D, RETRY_MS) to R. 0 or -ENOMEM; -ENOSPC past WIRE_REPLY_MAX_FULL. */
int wire_reply_add(struct wire_reply *r, const struct digest *d, uint64_t retry_ms);

/* Appends a "covered" entry: a copy of COVERED (NCHUNKS bits, 1 .. WIRE_MAX_CHUNKS). 0;
 * -EINVAL (NCHUNKS out of range, or more than WIRE_REPLY_MAX_RANGES ranges); -ENOSPC, -ENOMEM
 * as wire_reply_add. */
int wire_reply_add_covered(struct wire_reply *r, const struct digest *d, uint64_t retry_ms,
                           const uint8_t *covered, uint32_t nchunks);

/* Ranges of set bits in the first NCHUNKS bits of MAP, counting no further than LIMIT + 1. */
uint32_t wire_reply_ranges(const uint8_t *map, uint32_t nchunks, uint32_t limit);

void wire_reply_free(struct wire_reply *r); /* frees the contents; NULL-safe */
