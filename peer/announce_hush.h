/* The announcer's record of homes that said "full" (peer/wire_reply.h): (blob, home) pairs not
 * to announce until a time, and, once that time has passed, the retry still owed to that home.
 *
 * Bounded: at most MAX pairs; a pair that does not fit is not hushed (announces go on as
 * before). Thread-safe (one internal mutex, a leaf). Memory grows with use, up to
 * 2 x MAX x ~110 bytes. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "peer/wire.h"

struct announce_hush;

struct hush_due {
        struct digest d;
        char home[PEER_ID_MAX];
};

/* 0 or -ENOMEM; MAX > 0. */
int hush_new(size_t max, struct announce_hush **ret);
void hush_free(struct announce_hush *h); /* NULL-safe */

/* Do not announce D to HOME before UNTIL (replacing an earlier time for the pair). 0; -ENOSPC
 * when MAX pairs are hushed already; -EINVAL for a HOME too long; -ENOMEM. */
int hush_add(struct announce_hush *h, const struct digest *d, const char *home, uint64_t until);

/* Whether D is hushed for HOME at NOW. */
bool hush_is(struct announce_hush *h, const struct digest *d, const char *home, uint64_t now);

/* The pairs whose time has come by NOW, each handed out once (*RET malloc'd, *RET_N entries;
 * NULL and 0 when none) and forgotten. Cheap when none is due. 0 or -ENOMEM (nothing taken). */
int hush_take_due(struct announce_hush *h, uint64_t now, struct hush_due **ret, size_t *ret_n);

/* Forgets every pair of HOME (it restarted), owing it no retry. */
void hush_forget_home(struct announce_hush *h, const char *home);

size_t hush_count(struct announce_hush *h);      /* pairs hushed or owed a retry */
uint64_t hush_next_due(struct announce_hush *h); /* earliest time of a pair; UINT64_MAX: none */
