/* Answers "which blob is sha256:<hex>?" for FUSE lookups without holding a FUSE thread.
 *
 * A digest the node knows is answered at once, on the caller's thread. One it does not know
 * may be known to the peers' directory (a blob registered on another node): asking costs a
 * network round trip, up to a couple of seconds when homes are slow, so the question is queued
 * and answered from one of the resolver's own threads (FUSE lets a request be answered from any
 * thread). Lookups of one digest in flight together share one question (single flight), and
 * the engine remembers a digest nobody knew for a moment, so a storm of lookups of a bad name
 * costs one query.
 *
 * Bounds: at most max_pending distinct digests queued or being asked, with at most
 * max_pending waiters each; past that a lookup fails at once with -EBUSY. */
#pragma once
#include <stddef.h>

#include "engine/engine.h"

struct resolver;

/* DONE gets 0 and the blob, or -ENOENT (nobody knows it), -EBUSY (too many lookups queued),
 * -ECANCELED (shutting down). B is valid during the call only. */
typedef void (*resolver_done_fn)(void *ctx, int err, const struct engine_blob_info *b);

/* Borrows E (it must outlive the resolver). 0 or -errno. */
int resolver_new(struct engine *e, unsigned threads, size_t max_pending, struct resolver **ret);

/* Answers everything still queued with -ECANCELED and joins the threads. NULL-safe. Call
 * before engine_free(). */
void resolver_free(struct resolver *r);

/* Looks D up; DONE is called exactly once, possibly before this returns. Never blocks on
 * the network. */
void resolver_lookup(struct resolver *r, const struct digest *d, resolver_done_fn done, void *ctx);
