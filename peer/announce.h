/* The announcer: tells each blob's homes what this node holds of it.
 *
 * The engine reports every change (a blob registered, a chunk landed or evicted) through
 * announce_changed(), which only marks the blob dirty (and, for a blob newly dirty as a whole
 * — registered — wakes the thread: homes grant no claims on a blob they have not heard of,
 * so its first readers would all go to the origin; a blob just registered, of which it holds
 * nothing, goes to its first usable home alone, the one readers ask for claims, and reaches
 * the others with its first chunk). Every interval the announcer's thread
 * sends, to each home of each dirty blob, that blob's whole present set and the digests of
 * the chunks that changed — batched, one request per home. Every refresh interval (a third
 * of the homes' TTL), and whenever the membership changes (homes move), it sends everything
 * it holds instead, so a home that restarted or just became home learns it all within one
 * refresh; and when a node announces with a new boot id (it restarted: if it is a home, its
 * directory is empty), through announce_refresh_soon(). Announces are soft state: a lost one
 * costs freshness, never correctness.
 *
 * Bounds: the dirty set holds at most ANNOUNCE_DIRTY_MAX blobs; past that, the next round is
 * a full refresh. Requests time out after a second; a home that is down is skipped (the next
 * full refresh reaches it). The peer layer does not know the engine: it reads the node's
 * holdings through announce_ops.
 *
 * Layer indexes (announce_index()): the node also tells the homes of a LAYER's digest which
 * blob holds that layer's index, in the announces' "indexes" (peer/wire.h) — at once when
 * published, then with every full refresh, as holder records are. Before each full refresh
 * the announcer checks that the node still holds the index blob whole (announce_ops.find and
 * .snapshot: one small blob each, at most ANNOUNCE_INDEX_MAX of them); one evicted even in
 * part, or forgotten, is withdrawn: no longer announced, so the homes' record expires within
 * their TTL. Publishing again (the index rebuilt or fetched) puts it back.
 *
 * Homes that are full (issue 18). A home keeps max_holders holders per blob; when it already
 * has that many and they hold every chunk of the blob, it answers "full" for the blob with a
 * retry time (peer/wire_reply.h, dir_apply_full); when they hold every chunk this node
 * announced but not the whole blob, "covered", with the chunks they hold. The announcer then
 * leaves that blob out of what it sends to THAT home — deltas and full refreshes alike — until
 * the retry time (a covered one only while this node holds nothing outside those chunks),
 * and then sends it to that home once, without waiting for the next round that would (so the
 * home's spacing of retries holds, and a slot freed by an expired holder is retaken within
 * about one spacing). A verdict of the blob's first home (the first of its homes that is this
 * node or usable: the one readers ask for claims) holds at its other homes too: it is lent to
 * those the same round did not reach (they answer for themselves), and while it lasts the
 * blob is left out for all of them. A loan never hides an eviction (a change that lost
 * chunks, or nothing held): a home that recorded us before the verdict must hear it. The
 * first home recording us again (it restarted, or lost holders) recalls its loans. Loans take
 * at most half the pairs. Bounds: ANNOUNCE_HUSH_MAX
 * (blob, home) pairs; past that the home is not obeyed (the cost is announces, not
 * correctness). A retry time beyond ANNOUNCE_HUSH_MAX_MS is cut to it. A home that restarted
 * (announce_home_restarted) is no longer hushed: it knows nothing now. Nor is any home of a
 * blob once a chunk of it this node was granted a claim on lands (announce_claimed): that
 * chunk is one no recorded holder has, which every home must hear. */
#pragma once
#include <stdint.h>

#include "peer/directory.h"
#include "peer/members.h"
#include "peer/wire.h"
#include "peer/wire_reply.h"

#define ANNOUNCE_DIRTY_MAX 4096
#define ANNOUNCE_INDEX_MAX WIRE_MAX_INDEXES   /* layer indexes this node announces */
#define ANNOUNCE_HUSH_MAX 8192                /* (blob, home) pairs a home said "full" for */
#define ANNOUNCE_HUSH_MAX_MS (3600ull * 1000) /* longest a home's "full" is obeyed */
#define ANNOUNCE_CLAIMED_MAX 256              /* claimed chunks remembered until they land */
#define ANNOUNCE_EARLY_GAP_MS 100             /* at most one early round this often */
#define ANNOUNCE_EARLY_COALESCE_MS 5          /* landings this close go in one early round */

struct announcer;

struct announce_ops {
        void *ud;
        uint32_t (*count)(void *ud); /* blobs known; ids are 0 .. count-1 */
        /* Blob ID's holdings with the digests of present chunks in [sha_from, sha_to]; the
         * arrays in RET are malloc'd (present, sha_idx, sha; chain_idx, chain for the chain
         * values over the same range, NULL when none). 0 or -errno. */
        int (*snapshot)(void *ud, uint32_t id, uint32_t sha_from, uint32_t sha_to,
                        struct wire_blob *ret);
        int (*find)(void *ud, const struct digest *d, uint32_t *ret_id); /* 0 or -ENOENT */
};

struct announce_config {
        struct announce_ops ops;
        struct members *members; /* borrowed */
        struct directory *dir;   /* borrowed: announces to ourselves go here directly */
        uint32_t chunk_size;
        unsigned homes;
        uint64_t interval_ms;
        uint64_t refresh_ms;
        uint64_t timeout_ms;
        const char *token; /* the cluster token sent with every announce, or NULL; borrowed */
        /* Announces are POSTed on this client (borrowed; it must outlive the announcer).
         * NULL: the announcer makes one of its own unless SEND is set. */
        struct http_client *http;
        uint64_t boot;    /* this daemon's boot id (wire.h), sent with every announce; 0: none */
        size_t dirty_max; /* blobs in the dirty set; 0: ANNOUNCE_DIRTY_MAX */
        /* A seam for simulations (bench/sim) and tests. MANUAL: no thread; the caller runs
         * rounds with announce_round(). SEND (NULL: HTTP POST) carries one announce to a home
         * that is not ourselves, returning 0 or -errno, and may fill *REPLY (zeroed; the
         * announcer frees it) with the home's verdict. SELF (NULL: members_self()) is our
         * id; borrowed. */
        bool manual;
        int (*send)(void *ud, const char *home, const struct wire_announce *w,
                    struct wire_reply *reply);
        void *send_ud;
        const char *self;
};

int announce_new(const struct announce_config *cfg, struct announcer **ret);
void announce_free(struct announcer *a); /* NULL-safe; stops the thread */

/* Chunk IDX of blob D changed (UINT32_MAX: the blob itself). Never blocks; safe to call
 * with other locks held (it takes only the announcer's own). */
void announce_changed(struct announcer *a, const struct digest *d, uint32_t idx);

/* Issue 18, the front of a wave: this node was granted the claim on chunk IDX of D, so
 * readers are waiting for it, and those that receive it from us wait for its digest to reach
 * another home. When it lands (announce_changed(D, IDX)), the thread runs a round after
 * ANNOUNCE_EARLY_COALESCE_MS (landings that close go together) instead of at the next
 * interval, at most one such early round per ANNOUNCE_EARLY_GAP_MS: a node streaming a blob
 * on claims sends at most 1000 / ANNOUNCE_EARLY_GAP_MS rounds a second, not one per chunk.
 * At most ANNOUNCE_CLAIMED_MAX claims are remembered (the oldest forgotten: its chunk goes
 * with the next interval's round, as before). And the round that carries the landed chunk
 * announces D to every home of D, hushed or not (their "full" verdicts forgotten): the chunk
 * came from the origin, so no recorded holder has it, and a home that did not hear of it
 * would grant its claim again (a second origin fetch) and could not give its digest to the
 * readers holding our bytes. Never blocks; a manual announcer (no thread) only remembers the
 * claim, for the un-hush. */
void announce_claimed(struct announcer *a, const struct digest *d, uint32_t idx);

/* This node holds blob INDEX (SIZE bytes), the index of LAYER: announce it to LAYER's homes
 * from the next round on (it wakes the thread), and at every full refresh while the node
 * holds INDEX whole. Replaces an earlier index of LAYER. Never blocks. 0; -ENOSPC when
 * ANNOUNCE_INDEX_MAX layers are announced already (nothing changes); -EINVAL size 0. */
int announce_index(struct announcer *a, const struct digest *layer, const struct digest *index,
                   uint64_t size);

/* A home restarted (a new boot id in its announce): the next round, at least a second after
 * the last full one, announces everything, so the home relearns it now rather than at the
 * next refresh. Never blocks. */
void announce_refresh_soon(struct announcer *a);
/* NODE announced with a new boot id: if it is a home that said "full" for some of our blobs,
 * it has forgotten that with the rest; it is no longer hushed, then announce_refresh_soon(). */
void announce_home_restarted(struct announcer *a, const char *node);
/* One round now (a manual announcer's clock is the caller's NOW_MS, monotonic): what the
 * thread does every interval. Blocks on the sends. */
void announce_round(struct announcer *a, uint64_t now_ms);
/* When the earliest hushed pair's retry is due (UINT64_MAX: none): a manual announcer's
 * caller runs a round by then, as the thread does every interval. */
uint64_t announce_next_retry(struct announcer *a);

struct announce_stats {
        uint64_t rounds, full_rounds, requests, failures, blobs_sent;
        uint64_t indexes, indexes_withdrawn; /* announced now; withdrawn since start */
        /* Homes' "full" verdicts obeyed, (blob, home) announces left out for one, retries
         * sent when one ran out; hushed now: pairs in the table (live or waiting to retry). */
        uint64_t told_full, hushed_sends, hush_retries, hushed;
        uint64_t early_rounds; /* rounds run early for claimed chunks that landed */
        uint64_t unhushed;     /* (blob, home) pairs un-hushed: a claimed chunk of it landed */
};
void announce_get_stats(struct announcer *a, struct announce_stats *ret);
