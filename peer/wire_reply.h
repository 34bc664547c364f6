/* The body of a home's answer to an announce (POST /p2p/v1/announce, 200), added with issue 18:
 *   {"full":[{"digest":"sha256:<hex>", "retry_ms":N}, ...]}
 * "full" lists the announced blobs the home did not record the sender as a holder of: it keeps
 * max_holders holders per blob and those it has already hold every chunk of the blob.
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

struct wire_full {
        struct digest digest;
        uint64_t retry_ms; /* 1 .. 2^53 */
};

struct wire_reply {
        uint32_t nfull;
        struct wire_full *full; /* malloc'd, nfull entries; NULL when none */
};

/* Serialises R into a malloc'd NUL-terminated JSON text (free()); RET_LEN may be NULL.
 * 0; -EINVAL (too many entries, a retry_ms out of range); -ENOMEM. */
int wire_reply_build(const struct wire_reply *r, char **ret, size_t *ret_len);

/* Parses a reply. A body that is not a JSON object (an older home's "ok\n") or has no "full"
 * is an empty reply (0). -EINVAL when "full" is there but malformed (nothing to free); else 0
 * and *RET to free with wire_reply_free(). */
int wire_reply_parse(const char *body, size_t len, struct wire_reply *ret);

/* Appends (D, RETRY_MS) to R. 0 or -ENOMEM; -ENOSPC past WIRE_REPLY_MAX_FULL. */
int wire_reply_add(struct wire_reply *r, const struct digest *d, uint64_t retry_ms);

void wire_reply_free(struct wire_reply *r); /* frees the contents; NULL-safe */
