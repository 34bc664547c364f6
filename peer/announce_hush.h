/* The announcer's record of homes that said "full" (peer/wire_reply.h): (blob, home) pairs not
 * to announce until a time, and, once that time has passed, the retry still owed to that home.
 *
 * A pair may be hushed only while this node's chunks of the blob stay within a set the home
 * named ("covered", wire_reply.h): hush_is() then compares.
 *
 * Bounded: at most MAX pairs, and HUSH_MAX_MAP_BYTES of those sets; a pair that does not fit
 * is not hushed (announces go on as before). Thread-safe (one internal mutex, a leaf). Memory
 * grows with use, up to 2 x MAX x ~120 bytes + HUSH_MAX_MAP_BYTES. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "peer/wire.h"

struct announce_hush;

#define HUSH_MAX_MAP_BYTES (4u << 20)

struct hush_due {
        struct digest d;
        char home[PEER_ID_MAX];
};

/* 0 or -ENOMEM; MAX > 0. */
int hush_new(size_t max, struct announce_hush **ret);
void hush_free(struct announce_hush *h); /* NULL-safe */

/* Do not announce D to HOME before UNTIL (replacing an earlier time and set for the pair);
 * with COVERED non-NULL (NCHUNKS bits, copied), only while what we hold of D is within it;
 * with UNTIL_WHOLE, only until we hold all NCHUNKS chunks of it. 0; -ENOSPC when MAX pairs
 * are hushed already or the sets would pass HUSH_MAX_MAP_BYTES; -EINVAL for a HOME too long
 * or NCHUNKS 0 with a set or UNTIL_WHOLE; -ENOMEM. */
int hush_add(struct announce_hush *h, const struct digest *d, const char *home, uint64_t until,
             const uint8_t *covered, uint32_t nchunks, bool until_whole);

/* hush_add() for a verdict another home gave (the blob's first home, for all its homes):
 * such a pair never hushes an announce of nothing held, since HOME may have recorded us as a
 * holder before that verdict and must hear that we evicted the blob. Loans take at most half
 * the table: -ENOSPC for a new one once MAX / 2 pairs are live. */
int hush_lend(struct announce_hush *h, const struct digest *d, const char *home, uint64_t until,
              const uint8_t *covered, uint32_t nchunks, bool until_whole);

/* Whether D is hushed for HOME at NOW, for a node holding PRESENT (NCHUNKS bits) of it: the
 * pair is live, has no set or PRESENT is within it (a set of another size: not hushed), was
 * not hushed until we were whole or we are not, and is not lent or PRESENT has a chunk. */
bool hush_is(struct announce_hush *h, const struct digest *d, const char *home, uint64_t now,
             const uint8_t *present, uint32_t nchunks);

/* hush_is() by HOME's own verdict only (a lent pair never hushes): for an announce that
 * reports evicted chunks, which a home that recorded us must hear. */
bool hush_is_own(struct announce_hush *h, const struct digest *d, const char *home, uint64_t now,
                 const uint8_t *present, uint32_t nchunks);

/* The pairs whose time has come by NOW, each handed out once (*RET malloc'd, *RET_N entries;
 * NULL and 0 when none) and forgotten. Cheap when none is due. 0 or -ENOMEM (nothing taken). */
int hush_take_due(struct announce_hush *h, uint64_t now, struct hush_due **ret, size_t *ret_n);

/* Forgets the pair (D, HOME), owing it no retry: D is announced to HOME again from now on.
 * Whether there was one. */
bool hush_forget(struct announce_hush *h, const struct digest *d, const char *home);

/* hush_forget() of a pair hush_lend() made; a pair of HOME's own verdict stays. */
bool hush_forget_lent(struct announce_hush *h, const struct digest *d, const char *home);

/* Forgets every pair of HOME (it restarted), owing it no retry. */
void hush_forget_home(struct announce_hush *h, const char *home);

size_t hush_count(struct announce_hush *h);      /* pairs hushed or owed a retry */
uint64_t hush_next_due(struct announce_hush *h); /* earliest time of a pair; UINT64_MAX: none */
