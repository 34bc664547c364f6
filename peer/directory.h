/* The directory a home node keeps: for each blob digest it is home for, who holds which
 * chunks, the chunks' digests, and who has claimed which missing chunk to fetch from the
 * origin. Soft state: every holder record expires TTL after its last announce unless
 * refreshed (holders re-announce everything every TTL/3), and a claim expires after
 * CLAIM_TTL or as soon as its claimant announces the chunk present.
 *
 * Bounds: at most max_blobs blob records and max_holders holder records per blob (the
 * holder with the fewest chunks is dropped first, the least recently announced among equals;
 * a reader needs a few holders, not all, but holders of the chunks it lacks),
 * and max_claims claims per blob (the oldest dropped first: at worst a duplicate origin
 * fetch). A node whose announce has an empty present set keeps the blob's metadata alive
 * but has no holder record and is never listed as a holder.
 * Chunk digests are kept once per blob, and chain values (util/chain.h) apart from them, each
 * kind allocated with its first value. When max_blobs is reached, the blob whose newest
 * announce is oldest is dropped. Memory is therefore max_blobs x (nchunks x (32.5 bytes per
 * kind of value the blob has + bits per holder)), within max_bytes; the daemon sizes
 * max_blobs from --max-blobs.
 *
 * Layer indexes. The homes of a layer's digest also keep, from the "indexes" of announces,
 * records "node N holds blob I (S bytes), the index of layer L" (layertree.h): soft state
 * with the same TTL as holder records, at most DIR_INDEX_NODES per layer (the least recently
 * announced dropped first) and max_indexes layers (the layer whose newest record is oldest
 * dropped first): max_indexes x ~1 KiB.
 *
 * Thread-safe (one internal mutex); never blocks on anything else (dir_wait_digest waits, by
 * asking); no I/O. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "peer/wire.h"
#include "peer/wire_reply.h"

struct directory;

#define DIR_INDEX_NODES 8            /* index records kept per layer */
#define DIR_DEFAULT_MAX_INDEXES 4096 /* layers with index records */

struct dir_config {
        uint32_t chunk_size; /* announces with another chunk size are refused */
        size_t max_blobs;
        size_t max_holders; /* per blob, <= WIRE_MAX_HOLDERS */
        uint64_t ttl_ms;
        uint64_t claim_ttl_ms;
        size_t max_claims; /* per blob; 0: 1024 */
        /* Bytes of holder bitmaps and chunk digests kept in all (0: 64 MiB). Announces are
         * unauthenticated and bitmaps are sized by the announced blob, so the count of blobs
         * alone would not bound memory: past this, the blob whose newest announce is oldest is
         * dropped, as at max_blobs. */
        size_t max_bytes;
        size_t max_indexes; /* layers with index records; 0: DIR_DEFAULT_MAX_INDEXES */
        /* Issue 18: the reader locates of one blob per second this home aims at (0: answers say
         * no "ttl_ms", and readers keep them their own default, 1 s). See dir_locate. */
        uint32_t locate_rate;
        uint32_t locate_span; /* digests in an answer about one chunk; 0: DIR_LOCATE_SPAN */
        /* dir_wait_digest callers waiting at once (--digest-waiters); 0: DIR_DEFAULT_DIGEST_WAITERS. */
        unsigned max_digest_waiters;
};

#define DIR_DEFAULT_DIGEST_WAITERS 64

/* 0, -EINVAL (a zero bound or TTL, max_holders > WIRE_MAX_HOLDERS), -ENOMEM. */
int dir_new(const struct dir_config *cfg, struct directory **ret);
void dir_free(struct directory *dir); /* NULL-safe */

/* Applies a parsed announce at time NOW_MS (monotonic). 0; -EPROTO when its chunk size
 * differs from ours (REASON says so; nothing applied); -EINVAL for a blob whose size or
 * chunk count disagrees with what the directory already has (that blob skipped, the others
 * applied, REASON set; also for an invalid node id, nothing applied); -ENOMEM (some of it
 * applied). The announce's index records are applied too (replacing the node's record for
 * that layer). Chunk digests keep their provenance: whether the announcer had verified the
 * whole blob (wire_blob.verified). A digest that disagrees with the one recorded replaces it
 * when it is verified and the recorded one is not, is ignored when the recorded one is
 * verified and it is not, and otherwise makes that chunk's digest unknown (neither is
 * believed) and disputed for as long as the blob's record lives: after a dispute between
 * unverified digests only a verified one is recorded again, after one between verified
 * digests none is. Chain values (wire_blob.chain) follow the same rules with their own
 * provenance and disputes, never compared with digests; one for the last chunk (the blob
 * digest itself) is ignored. A holder record is live while NOW_MS - its last announce <
 * ttl_ms. */
int dir_apply(struct directory *dir, const struct wire_announce *a, uint64_t now_ms, char *reason,
              size_t reason_len);

/* dir_apply, and the home's verdict for the announcer (issue 18: the homes of a popular blob
 * received every holder's announces, though they keep max_holders of them). A blob of A is not
 * recorded, and is added to *FULL (wire_reply.h; the caller frees it) with a retry time, when
 * the announcer is not a recorded holder of it, the blob has max_holders live holders, the
 * announcer holds no live claim on it and the live recorded holders together hold every chunk
 * of the blob (so every chunk the announcer holds, and no claim is granted while they do):
 * recording it would only drop a holder as good for readers. When they hold every chunk the
 * announcer announced but not the whole blob, the blob is added as "covered" instead, with
 * the chunks they hold (at most WIRE_REPLY_MAX_RANGES ranges; past that the announcer is
 * recorded): the announcer keeps quiet while it holds nothing outside them (issue 18: the
 * deltas of a wave's front, where recorded holders never cover the whole blob). An announcer
 * that holds none of the blob (it registered it to read it) and is not recorded is told too. Its metadata and chunk
 * digests are applied as dir_apply would. Retry times are handed out per blob, each
 * (ttl_ms / 3) / max_holders after the previous one: retries reach the home about
 * max_holders times per refresh period (ttl_ms / 3) whatever the number of holders, and when
 * a recorded holder expires or leaves, a retrying one takes its slot within about that gap.
 * An announcer that is a recorded holder is never told "full": it refreshes its record.
 * FULL NULL: dir_apply. */
int dir_apply_full(struct directory *dir, const struct wire_announce *a, uint64_t now_ms,
                   struct wire_reply *full, char *reason, size_t reason_len);

/* Chunk digests in an answer about one chunk: that chunk's and the next ones', enough to check
 * a reader's following misses without asking again. Issue 18: with 32 (one run) a reader at
 * 1 Gbit/s (~120 chunks/s) asked again every quarter second whatever the answer's TTL, so the
 * home of a popular blob heard every reader about 4 times a second; 512 digests (about 38 KB
 * of JSON, half a GiB of chunks) make the TTL the limit. A digest costs a reader ~75 bytes per
 * MiB it reads, as before: only a reader that stops early pays for digests it does not use. */
#define DIR_LOCATE_SPAN 512

/* The reuse times a home's answers say (dir_config.locate_rate): from DIR_LOCATE_TTL_MIN_MS
 * (the readers' default) up to DIR_LOCATE_TTL_MAX_MS, re-decided per blob every
 * DIR_LOCATE_WINDOW_MS from the reader locates the blob had in that window. */
#define DIR_LOCATE_TTL_MIN_MS 1000
#define DIR_LOCATE_TTL_MAX_MS 30000
#define DIR_LOCATE_WINDOW_MS 1000

/* Fills RET (free with wire_locate_free) with what the directory knows of D: blob metadata,
 * chunk digests and chain values (each with their verified bits; RET->chain and its bitmaps
 * NULL when the blob has no chain value), live holders (not expired), live claims as
 * "fetching" holders. CHUNK >= 0 (a reader's miss): only the holders that have CHUNK, the
 * digests of CHUNK .. CHUNK + locate_span - 1 and the chain values of CHUNK - 1 .. CHUNK +
 * locate_span - 1 (chunk CHUNK is checked from CHUNK - 1's); CHUNK < 0: every holder and
 * value.
 * With CLAIMANT non-NULL and CHUNK < nchunks: if no live holder has CHUNK and no live claim
 * covers it, CLAIMANT is granted it (recorded with claim_ttl) and RET says claim_granted;
 * a claim CLAIMANT already holds is granted again (and its claim_ttl restarts). The claimant
 * itself never appears among the holders of RET (present or fetching). With
 * cfg.locate_rate, RET->ttl_ms says how long the reader may reuse the answer (never its
 * claim): each reader asks a blob's home about once per TTL while it reads, so the home
 * estimates the blob's readers as (locates per second whose answer a reader would reuse: it
 * names a holder of CHUNK and carries CHUNK's digest or the chain values that check it) x
 * (the TTL it said) and says readers / locate_rate, within DIR_LOCATE_TTL_MIN_MS ..
 * DIR_LOCATE_TTL_MAX_MS, changing it at most 4x
 * up or 2x down per window: the blob's locates then stay near locate_rate whatever the number
 * of readers, up to locate_rate x DIR_LOCATE_TTL_MAX_MS / 1000 readers. A stale answer costs
 * nothing unsafe: every byte is checked against a digest, and a holder that no longer has a
 * chunk answers 416 and the reader asks again. At most
 * WIRE_MAX_HOLDERS fetching nodes are listed, the one fetching CHUNK first. -ENOENT when the
 * blob is unknown or dead (no announce of it, even with an empty present set, within ttl_ms
 * and no live claim); -EINVAL for a CLAIMANT that is not a node id; -ENOMEM. */
int dir_locate(struct directory *dir, const struct digest *d, const char *claimant, int64_t chunk,
               uint64_t now_ms, struct wire_locate *ret);

/* Issue 18, the front of a wave: a reader holding a claimant's bytes of CHUNK of D (whose only
 * digest is the claimant's word) asks the other homes for the digest, which they learn from
 * the claimant's next announce. Rather than the reader asking every 50 ms, the home holds its
 * question here: returns 0 as soon as what checks CHUNK is recorded — its digest, or the chain
 * values a reader checks it from (CHUNK - 1's and CHUNK's; CHUNK - 1's alone for the last
 * chunk, CHUNK's alone for chunk 0; never for a blob of one chunk, which has none) — at once if
 * it is, else woken by the dir_apply that records it (the blob's record live at NOW_MS, the
 * caller's time of asking, while WAIT_MS runs on the monotonic clock); -ETIMEDOUT after
 * WAIT_MS without it, -EBUSY at once when cfg.max_digest_waiters callers are already waiting
 * (so waits hold at most that many threads, and nothing else: no memory per waiter). Blocks
 * the calling thread (the only call here that does); the caller answers with dir_locate
 * afterwards whatever this returned. */
int dir_wait_digest(struct directory *dir, const struct digest *d, uint32_t chunk, uint64_t now_ms,
                    uint64_t wait_ms);

/* Ends every dir_wait_digest now waiting (-ECANCELED) and makes later ones return -ECANCELED
 * at once: a stopping daemon calls it before its peer server waits for its connections, which
 * would otherwise wait for each held question's time to run out (up to HTTPD_MAX_WAIT_MS). */
void dir_stop_waits(struct directory *dir);

/* Which blob holds the index of LAYER, as the live index records say (dir_apply): the
 * (index, size) announced by the most nodes, the most recently announced among equals — a
 * node alone cannot outvote the nodes that built the same index. This is the home's answer
 * and the reader's trust anchor: the reader checks the index's bytes, from whichever node
 * sends them, against this digest, never against the sender's word. 0 and *RET; -ENOENT
 * when no live record names LAYER. */
int dir_locate_index(struct directory *dir, const struct digest *layer, uint64_t now_ms,
                     struct wire_index *ret);

/* Drops expired holders, claims and blobs left with neither. Called periodically. */
void dir_expire(struct directory *dir, uint64_t now_ms);

struct dir_stats {
        uint64_t blobs, holders, claims; /* records now (expired ones until dir_expire) */
        /* Since dir_new; refused counts refused announces and skipped blobs. */
        uint64_t announces, refused, locates, claims_granted;
        uint64_t bytes; /* holder bitmaps and chunk digests now, against max_bytes */
        uint64_t indexes, index_records;      /* layers with index records, records (now) */
        uint64_t index_locates, index_misses; /* since dir_new */
        uint64_t told_full;    /* blobs of announces not recorded, the home full (dir_apply_full) */
        uint64_t told_covered; /* of those, "covered" (not the whole blob) */
        /* dir_wait_digest since dir_new: calls that waited, that ended with the digest
         * (at once or woken), refused at the cap; the most waiting at once. */
        uint64_t digest_waits, digest_waits_found, digest_waits_refused, digest_waiters_peak;
        uint64_t digest_waiters; /* waiting now */
};
void dir_get_stats(struct directory *dir, struct dir_stats *ret);
