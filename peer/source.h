/* Where a chunk comes from: peers that hold it, else the origin registry.
 *
 * For each chunk the engine misses, source_fetch() asks one of the blob's homes (rendezvous
 * hashing over the membership) who holds or is fetching that chunk — one round trip at any
 * cluster size. Readers spread these questions over the k homes (rendezvous.h's
 * rdv_spread), so the busiest home's load does not grow with the readers of a blob; a chunk
 * nobody holds yet is then asked of the first home, which alone grants the claim to fetch it
 * from the origin (a second round trip, for chunks new to the cluster). Then it tries, in
 * order:
 *   1. peers that hold the chunk, best first (members_rank_key: on-link, latency, failures);
 *   2. a peer that is fetching it from the origin right now (its claim), waiting for it;
 *   3. the origin, when this node was granted the claim, or when every peer failed.
 * A peer that refuses a connection, misses the connect timeout or stops sending for the stall
 * timeout is reported to the membership (marked down at once, probed in the background) and
 * the next source is tried; a dead peer costs a reader milliseconds, not a TCP timeout. Bytes
 * from a peer are checked against the chunk's sha256 as a home knows it (announced by the
 * node that fetched it from the origin, or by one that verified the whole blob) — never
 * against the serving peer's own word: not its digest header, not its locate answer when it
 * is the home. Bytes with no such digest wait (digest_wait_ms) for a home to learn one, and
 * are dropped when none does. A peer whose bytes do not match is never asked for that blob
 * again (a bounded table) and the chunk is fetched from the next source.
 *
 * A home's answer is kept per blob for a second (bounded, dropped when a peer it named fails
 * us), so a sequential reader asks about one chunk in many; and consecutive chunks of a run
 * that one peer holds come in one ranged GET, each checked and completed on its own
 * (source_fetch_run).
 *
 * Without members (a node alone) every fetch goes straight to the origin.
 *
 * Threads and bounds: every peer transfer and directory query is a request on the node's one
 * HTTP client (net/http_client.h), whose thread runs the source's logic in its callbacks; at
 * most max_total chunk transfers at once and max_per_peer to one peer, the rest wait in the
 * client's queue, while directory queries are never held back by chunk transfers; each chunk
 * transfer owns one chunk buffer. Two verifier threads hash what peers sent, so the client's
 * thread keeps moving bytes. The callback contract is origin_fetch()'s: DONE exactly once, on
 * the client's thread or a verifier's, never blocking. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index/index.h"
#include "peer/directory.h"
#include "peer/members.h"
#include "registry/origin.h"
#include "util/digest.h"

struct source;
struct http_client;

struct source_config {
        struct origin *origin;    /* borrowed */
        struct http_client *http; /* borrowed: runs every peer request; its max_inflight should
                                     leave max_total to the source beside its other users */
        struct members *members;  /* borrowed; NULL: origin only */
        struct directory *dir;    /* borrowed: our own home role, asked without HTTP */
        struct index *ix;         /* borrowed, may be NULL: locations learnt are recorded */
        uint64_t location_ttl_ms; /* how long a recorded location stays valid */
        uint32_t chunk_size;
        unsigned homes;              /* k */
        uint64_t connect_timeout_ms; /* to peers */
        uint64_t stall_timeout_ms;   /* no bytes from a peer this long: next source */
        uint64_t claim_wait_ms;      /* how long a peer may wait for a chunk it is fetching */
        /* How long bytes from a peer wait for a digest from a home other than that peer
         * (a claimant announces one within an announce interval); 0: 2 s. */
        uint64_t digest_wait_ms;
        uint64_t origin_reserve_ms; /* time the origin always gets, however long peers took */
        unsigned max_total;
        unsigned max_per_peer;
        const char *token; /* the cluster token sent with every request, or NULL; borrowed */
        /* Issue 18: a home granted this node the claim on chunk IDX of D (it fetches it from
         * the origin, and readers wait for it): the announcer is told (announce_claimed), so
         * the chunk is announced as soon as it lands. On the client's thread; must not block.
         * NULL: not told. */
        void (*claimed)(void *ud, const struct digest *d, uint32_t idx);
        void *claimed_ud;
};

int source_new(const struct source_config *cfg, struct source **ret);

/* Cancels the source's requests on the client and stops the verifiers; pending fetches
 * complete with -ECANCELED. Not from the client's thread. NULL-safe. Call before origin_free()
 * and http_client_free(). */
void source_free(struct source *s);

/* As origin_fetch(), for chunk IDX (LEN bytes at OFF) of blob DIGEST of SIZE bytes, whose
 * origin is SOURCE ("registry/repository"; copied). */
void source_fetch(struct source *s, const struct digest *digest, uint64_t size, const char *source,
                  uint32_t idx, uint64_t off, size_t len, uint64_t deadline_ms, origin_done_fn done,
                  void *ud);

/* As source_fetch() for the N consecutive chunks from IDX (CHUNK_SIZE bytes each, the last
 * one ending at SIZE at most), with origin_fetch_run()'s contract: DONE(UDS[i], ...) once per
 * chunk, each as soon as it is in. A node alone asks the origin with one GET for the run; with
 * peers, one locate (or the cached answer) plans the run: consecutive chunks that one peer
 * holds go in one ranged GET to it, each chunk checked against its own digest from a home and
 * completed as its bytes arrive; a chunk that fails its check, or a peer that stalls or dies
 * mid-run, sends the chunks not yet in to their next sources one by one. Chunks the answer
 * names no source for go their own way (as source_fetch()). UDS need not outlive the call. */
void source_fetch_run(struct source *s, const struct digest *digest, uint64_t size,
                      const char *source, uint32_t idx, unsigned n, size_t chunk_size,
                      uint64_t deadline_ms, origin_done_fn done, void *const *uds);

/* Asks the homes what they know of DIGEST (blocking the caller until an answer or
 * DEADLINE_MS; never from the HTTP client's thread, whose callbacks must not block): its size
 * and origin. 0; -ENOENT when no home knows it; -EHOSTUNREACH when no
 * home answered; -ENOTCONN without members. */
int source_lookup(struct source *s, const struct digest *digest, uint64_t deadline_ms,
                  uint64_t *ret_size, char *ret_source, size_t source_len);

/* Asks the homes of LAYER which blob holds its index (peer/wire.h's index answer), blocking
 * the caller until an answer or DEADLINE_MS: one round trip to the first home that answers
 * (ourselves without HTTP when we are one), the next home on failure or "none known". The
 * digest is the home's word, never the word of the node that will send the index's bytes:
 * the caller checks those bytes against *RET_INDEX. 0 and *RET_INDEX, *RET_SIZE; -ENOENT when
 * every home that answered knows none (a home older than the index route answers 404, so it
 * counts as knowing none); -EHOSTUNREACH when no home answered; -ENOTCONN without members. */
int source_locate_index(struct source *s, const struct digest *layer, uint64_t deadline_ms,
                        struct digest *ret_index, uint64_t *ret_size);

struct source_stats {
        uint64_t peer_bytes; /* verified chunk bytes received from peers */
        uint64_t peer_chunks;
        uint64_t peer_failures;  /* transfers that failed (connect, stall, HTTP, short) */
        uint64_t peer_corrupt;   /* chunks whose bytes did not match their digest */
        uint64_t peer_unchecked; /* chunks dropped: no digest but their sender's (in failures) */
        uint64_t locates;        /* directory queries */
        uint64_t locate_failures;
        uint64_t origin_chunks; /* chunks handed to the origin */
        uint64_t claims;        /* chunks this node was told to fetch from the origin */
        uint64_t index_locates; /* source_locate_index() queries, to homes or ourselves */
        /* Locates asked of the home rdv_spread() picked (not the first), and those of them
         * that named no source, so the job asked the first home too. */
        uint64_t spread_locates, spread_misses;
        /* Chunk misses answered from a locate answer kept for their blob (no question). */
        uint64_t locate_cache_hits;
        /* Ranged GETs to a peer for consecutive chunks it holds, and the chunks they asked. */
        uint64_t run_transfers, run_chunks;
        /* CONFIRM (issue 18): digest questions sent to other homes, and held chunks whose
         * digest a home other than their sender gave (then checked against it). */
        uint64_t confirm_queries, confirmed;
};
void source_get_stats(struct source *s, struct source_stats *ret);
