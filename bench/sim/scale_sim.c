/* scale_sim: the directory, announce batching, rendezvous and membership code of p2pblobs at
 * N nodes, on a simulated clock, in one process.
 *
 * What is real. Every node has its own struct directory (peer/directory.c: its home role)
 * and its own struct announcer (peer/announce.c, a manual one: the sim runs its rounds and
 * its send hook delivers each announce straight into the home's directory with dir_apply).
 * Homes come from a struct members (peer/members.c, a manual one fed by members_update(),
 * the same merge a DNS refresh runs) and peer/rendezvous.c under it. Locates are
 * dir_locate() calls on the home's directory, claims included. Message sizes are the real
 * JSON bodies (wire_announce_build / wire_locate_build), measured on a sample of the
 * messages (every --sample-th) and scaled by a ratio estimator (bytes per "unit" of content:
 * blobs, digests, holders and bitmap bytes), which is printed so the error can be judged.
 *
 * What is modelled (not the daemon's code). The read path's choice of home and source
 * follows peer/source.c's rules (first the home rdv_spread() picks, asked without a claim, who
 * holds the chunk; when nobody does, the first home in rendezvous order, with the claim; a
 * home that is ourselves and knows no holder sends us on to the next home without claiming;
 * holders before claimants; the origin when nobody has it; --no-spread: the first home only,
 * as before issue 18's fix; a fresh kept answer (younger than the "ttl_ms" the home said,
 * --home-locate-rate, or 1 s) that names a holder of the chunk and carries its digest is used
 * without asking, as source.c's locate cache does, one slot per node;
 * --no-locate-cache: a locate per miss, as before) but is written here, since source.c is
 * bound to libcurl.
 * Eviction is whole-blob LRU under the node's budget (cache/policy.c works per chunk and
 * needs the store). Transfers take a tick: a node fetches at most --rate chunks per 250 ms
 * tick (1 MiB chunks: 1 Gbit/s); a claimant's waiters receive the chunk in the same tick.
 * One membership view is shared by every node (they resolve the same name; refreshes are
 * modelled in step, every --dns-refresh). DNS bytes are computed from the DNS wire format
 * (see dns_cost()); probes of departed nodes from members.c's backoff constants.
 *
 * The workload: --images images of 10 layers (the first two drawn from 20 shared base layers),
 * layer sizes log-uniform in [1, 500] MiB; every --wave-gap seconds a wave starts: a Zipf-
 * popular image is pulled in full (every chunk of every layer) by a --wave-frac fraction of
 * the nodes, each starting within the first 10 s of the wave; nodes start within the first
 * 20 s; at --churn-at 1% of the nodes leave, and 1% new ones join one refresh later.
 *
 * Besides means over the run, the busiest home's peak (the most locates, and announces, it
 * received in one simulated second) and why readers' misses were not answered from their kept
 * answer (none kept, too old, no digest of the chunk in it, no holder of it named).
 *
 * Announces are counted per home (the busiest home's, split into its senders' full rounds and
 * the rest, "deltas", registrations among them: announces whose blobs have no chunk yet) and
 * per blob (the announces of one blob its homes received in delta rounds, the most in one
 * second: what issue 18's "covered" verdict bounds).
 *
 * Output: one line per metric, "key value", or with --tsv a header and one row (for
 * bench/sim/run.sh). Deterministic for a given --seed. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "peer/announce.h"
#include "peer/directory.h"
#include "peer/members.h"
#include "peer/rendezvous.h"
#include "peer/wire.h"
#include "util/digest.h"
#include "util/log.h"

#define MIB (1024ull * 1024)
#define CHUNK MIB
#define LAYERS 10
#define BASES 20
#define TICK_MS 250
#define T0 1000000ull /* the simulated clock starts here: announce treats 0 as "never" */
#define PORT 5001
#define K_HOMES 3
#define ANN_REFRESH_MS 20000 /* the daemon's: a third of --location-ttl (60 s) */
#define LOCATION_TTL_MS 60000
#define CLAIM_TTL_MS 10000
#define MAX_HOLDERS 32         /* fs/peers.c */
#define LOCATE_REQ_BYTES 260   /* GET /p2p/v1/locate/sha256:<64>?chunk=N&node=ID + headers */
#define ANNOUNCE_HDR_BYTES 200 /* POST line and headers */
#define HTTP_RESP_BYTES 120    /* status line and headers of an answer */
#define DNS_NAME "p2pblobs.kube-system.svc.cluster.local"
#define DEAD_SEEN_MAX 256

struct opts {
        unsigned n, images, waves, rate, sample;
        double wave_frac;
        uint64_t budget, wave_gap_ms, wave_spread_ms, dns_refresh_ms, churn_at_ms, seed;
        bool tsv, no_churn, no_spread, no_locate_cache, no_full, confirm_wait, confirm_poll,
                early_announce;
        unsigned locate_rate; /* --home-locate-rate: the homes' dir_config.locate_rate */
        unsigned locate_span; /* --locate-span: digests per answer (0: DIR_LOCATE_SPAN) */
};

struct blob {
        struct digest d;
        uint64_t size;
        uint32_t nchunks;
        uint64_t origin_chunks; /* fetched from the origin, cluster-wide */
        uint64_t first_reads;   /* distinct chunks read, cluster-wide (first reader of each) */
        uint8_t *read_once;     /* bitmap: some node has read the chunk */
        /* Announces of this blob its homes received (one per blob per announce), in delta
         * rounds of their senders (the rest in full rounds); this round's, until run_round()
         * knows which kind it was; delta ones in the current simulated second, and the most in
         * any second. */
        uint64_t rx_delta, rx_full, rx_round, rx_sec, rx_delta_sec, rx_delta_peak;
};

struct held {
        uint32_t blob;
        uint8_t *present;
        uint32_t npresent;
        uint64_t last_use;
};

struct ctr {
        uint64_t msgs, bytes;
};

struct node {
        char id[PEER_ID_MAX];
        bool alive, started;
        uint64_t start_ms, serving_ms;
        struct directory *dir;
        struct announcer *ann;
        struct held *held;
        uint32_t nheld, cap;
        uint64_t bytes_held;
        /* the pull in progress */
        int image; /* -1: none */
        unsigned layer;
        uint32_t chunk;
        uint64_t pull_at;
        bool dirty;
        uint64_t last_full, next_expire;
        /* traffic */
        struct ctr ann_tx, ann_rx, loc_tx, loc_rx, dns, probe;
        /* Announces received in full (refresh) rounds of their sender, the rest being deltas;
         * ann_rx_round: this round's, until run_round() knows which kind it was. */
        uint64_t ann_rx_full, ann_rx_round;
        uint64_t ann_rx_empty; /* announces whose blobs all had no chunk (registrations) */
        /* Blobs of announces received, by what the sender held (enum aclass) and whether the
         * home told it a verdict (1) or recorded it (0); _round until run_round() knows whether
         * the round was a full one, then added to cls_delta or cls_full. */
        uint64_t cls_round[3][2], cls_delta[3][2], cls_full[3][2];
        /* the same, in the current simulated second and in the peak second (ann_rx_peak) */
        uint64_t cls_sec[3][2], cls_peak[3][2], ann_peak_at;
        uint64_t peer_in, peer_out, origin_in;
        uint64_t misses, locate_answers, answer_holders;
        /* Departed nodes it tried to reach (each is marked down and probed until DNS drops
         * it): distinct ones, up to DEAD_SEEN_MAX. */
        int dead_seen[DEAD_SEEN_MAX];
        unsigned ndead_seen;
        uint64_t dir_bytes_max;
        /* source.c's locate cache, one slot (a node pulls one layer at a time): the last
         * answer, about chunk cache_chunk of blob cache_blob at cache_at. */
        bool cache_used;
        uint32_t cache_blob, cache_chunk;
        uint64_t cache_at;
        struct wire_locate cache;
        uint64_t cache_hits;
        /* locates (and announces) received in the current simulated second, and the most in
         * any second: the hot spot's peak, which a mean over the run hides */
        uint64_t sec, loc_rx_sec, loc_rx_peak, ann_rx_sec, ann_rx_peak;
        /* the kinds of this second's locates (enum lkind), and of the peak second's */
        uint64_t kind_sec[5], kind_peak[5];
};

/* What a locate received was: the first of a blob by its reader (nothing kept), a kept
 * answer too old, a kept answer without the chunk's digest, or without a holder of it; or
 * (--confirm-wait) a CONFIRM query for the digest of a chunk received without one. */
enum lkind { LK_NONE, LK_OLD, LK_DIGEST, LK_HOLDER, LK_CONFIRM };
static enum lkind cur_kind;

#define LCACHE_TTL_MS 1000      /* peer/source_int.h: when the answer says no TTL */
#define LCACHE_TTL_MAX_MS 60000 /* peer/source_cache.c: the most a home may ask for */

static struct opts O = {
        .n = 100,
        .images = 200,
        .waves = 6,
        .rate = 30,
        .sample = 64,
        .wave_frac = 0.33,
        .budget = 1024 * MIB,
        .wave_gap_ms = 30000,
        .wave_spread_ms = 10000,
        .dns_refresh_ms = 30000,
        .churn_at_ms = 100000,
        .seed = 1,
        .locate_rate = 20, /* fs/config.c's default */
};

static struct node *nodes;
static unsigned nnodes, nalloc; /* nodes[0, nnodes): joined so far */
static struct blob *blobs;
static unsigned nblobs;
static unsigned (*images)[LAYERS];
static struct members *view;
static uint64_t now;

/* Size estimates: bytes per content unit, from the sampled messages. */
struct ratio {
        double bytes, units;
        uint64_t sampled, seen;
};
static struct ratio r_ann, r_loc;

static uint64_t rng_state;
static uint64_t rnd(void) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}
static double rnd01(void) {
        return (double)(rnd() >> 11) / (double)(1ull << 53);
}

static void die(const char *what, int r) {
        fprintf(stderr, "scale_sim: %s: %s\n", what, strerror(r < 0 ? -r : r));
        exit(1);
}

static void *xcalloc(size_t n, size_t s) {
        void *p = calloc(n ? n : 1, s ? s : 1);
        if (!p)
                die("calloc", ENOMEM);
        return p;
}

static void node_id(unsigned i, char out[PEER_ID_MAX]) {
        unsigned v = i + 1;
        snprintf(out, PEER_ID_MAX, "10.%u.%u.%u:%u", (v >> 16) & 255, (v >> 8) & 255, v & 255,
                 PORT);
}

/* The node of ID "10.a.b.c:port" (hot: every holder of every locate answer). */
static int node_of(const char *id) {
        unsigned part[4] = {0}, k = 0;
        for (const char *p = id; *p && *p != ':'; p++) {
                if (*p == '.') {
                        if (++k > 3)
                                return -1;
                } else if (*p >= '0' && *p <= '9') {
                        part[k] = part[k] * 10 + (unsigned)(*p - '0');
                } else {
                        return -1;
                }
        }
        if (k != 3)
                return -1;
        unsigned v = (part[1] << 16) | (part[2] << 8) | part[3];
        return v >= 1 && v <= nnodes ? (int)(v - 1) : -1;
}

static void saw_dead(struct node *nd, int dead) {
        for (unsigned i = 0; i < nd->ndead_seen; i++)
                if (nd->dead_seen[i] == dead)
                        return;
        if (nd->ndead_seen < DEAD_SEEN_MAX)
                nd->dead_seen[nd->ndead_seen++] = dead;
}

static void chunk_digest(const struct blob *b, uint32_t idx, struct digest *ret) {
        *ret = b->d;
        ret->bytes[0] ^= (uint8_t)idx;
        ret->bytes[1] ^= (uint8_t)(idx >> 8);
        ret->bytes[2] ^= (uint8_t)(idx >> 16);
        ret->bytes[31] ^= 0x5a;
}

/* ---- the node's holdings, as announce_ops sees them ----------------------------------- */

static int op_find(void *ud, const struct digest *d, uint32_t *ret_id) {
        struct node *nd = ud;
        for (uint32_t i = 0; i < nd->nheld; i++)
                if (digest_equal(&blobs[nd->held[i].blob].d, d)) {
                        *ret_id = i;
                        return 0;
                }
        return -ENOENT;
}

static uint32_t op_count(void *ud) {
        return ((struct node *)ud)->nheld;
}

static int op_snapshot(void *ud, uint32_t id, uint32_t from, uint32_t to, struct wire_blob *ret) {
        struct node *nd = ud;
        if (id >= nd->nheld)
                return -ENOENT;
        const struct held *h = &nd->held[id];
        const struct blob *b = &blobs[h->blob];
        struct wire_blob w = {.digest = b->d, .size = b->size, .nchunks = b->nchunks};
        snprintf(w.source, sizeof(w.source), "registry.example/app");
        size_t map = (b->nchunks + 7) / 8 + 1;
        w.present = xcalloc(map, 1);
        memcpy(w.present, h->present, (b->nchunks + 7) / 8);
        uint32_t hi = to < b->nchunks ? to : b->nchunks - 1, n = 0;
        for (uint32_t c = from; c <= hi && c < b->nchunks; c++)
                n += wire_bit(h->present, c);
        w.sha_idx = xcalloc(n, sizeof(*w.sha_idx));
        w.sha = xcalloc(n, sizeof(*w.sha));
        for (uint32_t c = from; c <= hi && c < b->nchunks; c++)
                if (wire_bit(h->present, c)) {
                        w.sha_idx[w.ndigests] = c;
                        chunk_digest(b, c, &w.sha[w.ndigests]);
                        w.ndigests++;
                }
        *ret = w;
        return 0;
}

static struct held *held_get(struct node *nd, uint32_t blob, bool create) {
        for (uint32_t i = 0; i < nd->nheld; i++)
                if (nd->held[i].blob == blob)
                        return &nd->held[i];
        if (!create)
                return NULL;
        if (nd->nheld == nd->cap) {
                nd->cap = nd->cap ? nd->cap * 2 : 16;
                nd->held = realloc(nd->held, nd->cap * sizeof(*nd->held));
                if (!nd->held)
                        die("realloc", ENOMEM);
        }
        struct held *h = &nd->held[nd->nheld++];
        memset(h, 0, sizeof(*h));
        h->blob = blob;
        h->present = xcalloc((blobs[blob].nchunks + 7) / 8 + 1, 1);
        return h;
}

/* ---- messages ----------------------------------------------------------------------- */

/* Homes sent to in the round being run (run_round), so their counts can be credited to full
 * or delta rounds once the announcer has said which it was. */
static unsigned *touched, ntouched;
/* Blobs announced in the round being run, likewise; and blobs by digest (open addressing). */
static unsigned *btouched, nbtouched;
static int *blob_slot;
#define BLOB_SLOTS 8192 /* a power of two > 2 x the blobs (1620 by default) */

static size_t blob_hash(const struct digest *d) {
        uint64_t h;
        memcpy(&h, d->bytes + 8, sizeof(h));
        return (size_t)(h ^ (h >> 29)) & (BLOB_SLOTS - 1);
}

static int blob_of(const struct digest *d) {
        for (size_t i = blob_hash(d); blob_slot[i] >= 0; i = (i + 1) & (BLOB_SLOTS - 1))
                if (digest_equal(&blobs[blob_slot[i]].d, d))
                        return blob_slot[i];
        return -1;
}

static uint64_t estimate(struct ratio *r, double units, bool *sample) {
        *sample = r->seen++ % O.sample == 0;
        return r->units > 0 ? (uint64_t)(units * r->bytes / r->units) : 0;
}

static double announce_units(const struct wire_announce *w) {
        double u = 1;
        for (uint32_t i = 0; i < w->nblobs; i++)
                u += 4 + w->blobs[i].ndigests * 2.0 + w->blobs[i].nchunks / 64.0;
        return u;
}

/* Counts one message received by HOME in this simulated second (*SECN), keeping the peak. */
static void per_second(struct node *home, uint64_t *secn, uint64_t *peak) {
        uint64_t sec = now / 1000;
        if (home->sec != sec) {
                home->sec = sec;
                home->loc_rx_sec = 0;
                home->ann_rx_sec = 0;
                memset(home->kind_sec, 0, sizeof(home->kind_sec));
                memset(home->cls_sec, 0, sizeof(home->cls_sec));
        }
        bool loc = secn == &home->loc_rx_sec;
        if (loc)
                home->kind_sec[cur_kind]++;
        if (++*secn > *peak) {
                *peak = *secn;
                if (loc)
                        memcpy(home->kind_peak, home->kind_sec, sizeof(home->kind_peak));
        }
}

enum aclass { AC_EMPTY, AC_PARTIAL, AC_WHOLE };

static enum aclass class_of(const struct wire_blob *b) {
        uint32_t n = 0;
        for (uint32_t k = 0; k < b->nchunks; k++)
                n += wire_bit(b->present, k);
        return n == 0 ? AC_EMPTY : n == b->nchunks ? AC_WHOLE : AC_PARTIAL;
}

/* The announcer's send hook: counts, sizes and delivers one announce. */
static int send_announce(void *ud, const char *home, const struct wire_announce *w,
                         struct wire_reply *reply) {
        struct node *from = ud;
        int h = node_of(home);
        double units = announce_units(w);
        bool sample;
        uint64_t bytes = estimate(&r_ann, units, &sample);
        if (sample || bytes == 0) {
                char *body;
                size_t len;
                if (wire_announce_build(w, &body, &len) == 0) {
                        r_ann.bytes += (double)len;
                        r_ann.units += units;
                        r_ann.sampled++;
                        bytes = len;
                        free(body);
                }
        }
        bytes += ANNOUNCE_HDR_BYTES;
        from->ann_tx.msgs++;
        from->ann_tx.bytes += bytes;
        if (h < 0 || !nodes[h].alive) {
                if (h >= 0)
                        saw_dead(from, h);
                return -EHOSTUNREACH;
        }
        nodes[h].ann_rx.msgs++;
        nodes[h].ann_rx.bytes += bytes;
        {
                bool empty = true;
                for (uint32_t i = 0; i < w->nblobs && empty; i++)
                        for (uint32_t k = 0; k < (w->blobs[i].nchunks + 7) / 8 && empty; k++)
                                empty = w->blobs[i].present[k] == 0;
                nodes[h].ann_rx_empty += empty && w->nblobs;
        }
        per_second(&nodes[h], &nodes[h].ann_rx_sec, &nodes[h].ann_rx_peak);
        if (nodes[h].ann_rx_round++ == 0 && ntouched < nalloc)
                touched[ntouched++] = (unsigned)h;
        for (uint32_t i = 0; i < w->nblobs; i++) {
                int bi = blob_of(&w->blobs[i].digest);
                if (bi >= 0 && blobs[bi].rx_round++ == 0 && nbtouched < nblobs)
                        btouched[nbtouched++] = (unsigned)bi;
        }
        char reason[128];
        uint32_t before = reply->nfull;
        int r = dir_apply_full(nodes[h].dir, w, now, O.no_full ? NULL : reply, reason,
                               sizeof(reason));
        for (uint32_t i = 0; i < w->nblobs; i++) {
                bool told = false;
                for (uint32_t j = before; j < reply->nfull && !told; j++)
                        told = digest_equal(&reply->full[j].digest, &w->blobs[i].digest);
                enum aclass c = class_of(&w->blobs[i]);
                nodes[h].cls_round[c][told]++;
                nodes[h].cls_sec[c][told]++;
        }
        if (nodes[h].ann_rx_sec == nodes[h].ann_rx_peak) {
                memcpy(nodes[h].cls_peak, nodes[h].cls_sec, sizeof(nodes[h].cls_peak));
                nodes[h].ann_peak_at = now / 1000;
        }
        return r;
}

/* One announce round of ND; the announces its homes received are credited to their
 * ann_rx_full when it was a full (refresh) round. */
static void run_round(struct node *nd) {
        struct announce_stats before, after;
        announce_get_stats(nd->ann, &before);
        announce_round(nd->ann, now);
        announce_get_stats(nd->ann, &after);
        bool full = after.full_rounds != before.full_rounds;
        for (unsigned i = 0; i < ntouched; i++) {
                struct node *h = &nodes[touched[i]];
                if (full)
                        h->ann_rx_full += h->ann_rx_round;
                h->ann_rx_round = 0;
                for (int c = 0; c < 3; c++)
                        for (int t = 0; t < 2; t++) {
                                (full ? h->cls_full : h->cls_delta)[c][t] += h->cls_round[c][t];
                                h->cls_round[c][t] = 0;
                        }
        }
        ntouched = 0;
        uint64_t sec = now / 1000;
        for (unsigned i = 0; i < nbtouched; i++) {
                struct blob *b = &blobs[btouched[i]];
                if (full) {
                        b->rx_full += b->rx_round;
                } else {
                        if (b->rx_sec != sec) {
                                b->rx_sec = sec;
                                b->rx_delta_sec = 0;
                        }
                        b->rx_delta += b->rx_round;
                        b->rx_delta_sec += b->rx_round;
                        if (b->rx_delta_sec > b->rx_delta_peak)
                                b->rx_delta_peak = b->rx_delta_sec;
                }
                b->rx_round = 0;
        }
        nbtouched = 0;
}

static double locate_units(const struct wire_locate *l) {
        double u = 2 + l->nholders * (1 + l->nchunks / 64.0);
        for (uint32_t c = 0; c < l->nchunks; c++)
                u += l->sha_known && wire_bit(l->sha_known, c) ? 2 : 0;
        return u;
}

/* Accounts one locate from NODE to HOME (its answer L, or none). */
static void count_locate(struct node *nd, struct node *home, const struct wire_locate *l) {
        uint64_t ans = HTTP_RESP_BYTES;
        if (l) {
                double units = locate_units(l);
                bool sample;
                uint64_t bytes = estimate(&r_loc, units, &sample);
                if (sample || bytes == 0) {
                        char *body;
                        size_t len;
                        if (wire_locate_build(l, &body, &len) == 0) {
                                r_loc.bytes += (double)len;
                                r_loc.units += units;
                                r_loc.sampled++;
                                bytes = len;
                                free(body);
                        }
                }
                ans += bytes;
        }
        nd->loc_tx.msgs++;
        nd->loc_tx.bytes += LOCATE_REQ_BYTES + ans;
        home->loc_rx.msgs++;
        home->loc_rx.bytes += LOCATE_REQ_BYTES + ans;
        per_second(home, &home->loc_rx_sec, &home->loc_rx_peak);
}

/* ---- the read path (peer/source.c's rules) ---------------------------------------------- */

enum src { SRC_ORIGIN, SRC_PEER };

/* Why a chunk went to the origin: no home knew the blob (-ENOENT everywhere, or homes gone),
 * we were granted the claim, or an answer listed nobody usable and granted nothing. */
static uint64_t why_unknown, why_claim, why_nobody;
/* Chunks fetched from the origin while a live node held them: what the directory exists to
 * prevent (0 wanted). A blob every node evicted and a later wave reads again is not one. */
static uint64_t origin_peer_held;

static bool some_node_holds(uint32_t bi, uint32_t c) {
        for (unsigned i = 0; i < nnodes; i++) {
                struct held *h = nodes[i].alive ? held_get(&nodes[i], bi, false) : NULL;
                if (h && wire_bit(h->present, c))
                        return true;
        }
        return false;
}
/* --early-announce (announce.h announce_claimed): this pull_tick landed a chunk on a claim. */
static bool tick_claimed;
static uint64_t early_rounds;
/* Why a miss was not answered from the kept answer: none kept (or another blob's), too old,
 * the chunk's digest not in it, no live holder of the chunk named in it. */
static uint64_t cm_none, cm_old, cm_digest, cm_holder;
static uint64_t spread_misses; /* spread locates that named nobody: the first home was asked */

/* Keeps answer *L (about chunk C of blob BI) as NODE's cached one, taking its contents. */
static void cache_keep(struct node *nd, uint32_t bi, uint32_t c, struct wire_locate *l) {
        if (O.no_locate_cache) {
                wire_locate_free(l);
                return;
        }
        if (nd->cache_used)
                wire_locate_free(&nd->cache);
        nd->cache = *l;
        *l = (struct wire_locate){0};
        nd->cache_used = true;
        nd->cache_blob = bi;
        nd->cache_chunk = c;
        nd->cache_at = now;
}

/* Where NODE gets chunk C of blob B: asks the homes, as source.c does. *RET_PEER: the node
 * that serves it (SRC_PEER). */
static enum src locate_chunk(struct node *nd, uint32_t bi, uint32_t c, int *ret_peer) {
        const struct blob *b = &blobs[bi];
        char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
        size_t nh = members_homes(view, &b->d, K_HOMES, homes, NULL);
        bool probing = false;
        nd->misses++;
        /* source.c: a fresh kept answer (younger than the TTL it says, or 1 s) that names a
         * holder of C and carries C's digest (the answer about chunk k carries the digests of
         * k .. k + DIR_LOCATE_SPAN - 1 that the home knows) needs no question. */
        uint64_t ttl = nd->cache.ttl_ms ? nd->cache.ttl_ms : LCACHE_TTL_MS;
        if (ttl > LCACHE_TTL_MAX_MS)
                ttl = LCACHE_TTL_MAX_MS;
        bool digest = nd->cache_used && c < nd->cache.nchunks && nd->cache.sha_known &&
                      wire_bit(nd->cache.sha_known, c);
        cur_kind = LK_HOLDER;
        if (!nd->cache_used || nd->cache_blob != bi) {
                cm_none++;
                cur_kind = LK_NONE;
        } else if (now - nd->cache_at >= ttl) {
                cm_old++;
                cur_kind = LK_OLD;
        } else if (!digest) {
                cm_digest++;
                cur_kind = LK_DIGEST;
        }
        if (nd->cache_used && nd->cache_blob == bi && now - nd->cache_at < ttl && digest) {
                int pick = -1, wait = -1;
                for (uint32_t k = 0; k < nd->cache.nholders; k++) {
                        int p = node_of(nd->cache.holders[k].node);
                        if (p < 0 || p == (int)(nd - nodes) || !nodes[p].alive ||
                            !wire_bit(nd->cache.holders[k].present, c))
                                continue;
                        if (!nd->cache.holders[k].fetching && pick < 0)
                                pick = p;
                        if (nd->cache.holders[k].fetching && wait < 0)
                                wait = p;
                }
                if (pick < 0)
                        pick = wait;
                if (pick >= 0) {
                        nd->cache_hits++;
                        *ret_peer = pick;
                        return SRC_PEER;
                }
                cm_holder++;
        }
        size_t spread = O.no_spread ? 0 : rdv_spread(nd->id, &b->d, nh);
        int ph = spread > 0 ? node_of(homes[spread]) : -1;
        if (ph >= 0 && (&nodes[ph] == nd || nodes[ph].alive)) {
                /* Who holds it, asked of the spread home; claims stay with the first home. */
                struct wire_locate l;
                int r = dir_locate(nodes[ph].dir, &b->d, NULL, c, now, &l);
                if (&nodes[ph] != nd)
                        count_locate(nd, &nodes[ph], r == 0 ? &l : NULL);
                int got = -1;
                for (uint32_t k = 0; r == 0 && k < l.nholders && got < 0; k++) {
                        int p = node_of(l.holders[k].node);
                        if (p >= 0 && p != (int)(nd - nodes) && nodes[p].alive &&
                            wire_bit(l.holders[k].present, c))
                                got = p;
                }
                if (r == 0) {
                        if (got >= 0) {
                                nd->locate_answers++;
                                nd->answer_holders += l.nholders;
                        }
                        cache_keep(nd, bi, c, &l);
                }
                if (got >= 0) {
                        *ret_peer = got;
                        return SRC_PEER;
                }
                spread_misses++;
        }
        for (size_t i = 0; i < nh; i++) {
                int hi = node_of(homes[i]);
                if (hi < 0)
                        continue;
                struct node *home = &nodes[hi];
                struct wire_locate l;
                if (home == nd) {
                        int r = dir_locate(nd->dir, &b->d, nd->id, c, now, &l);
                        if (r == 0 && (l.nholders > 0 || i + 1 >= nh))
                                goto answer;
                        if (r == 0) {
                                probing = true;
                                wire_locate_free(&l);
                        }
                        continue;
                }
                if (!home->alive) { /* a connect timeout; it is marked down, then probed */
                        nd->loc_tx.msgs++;
                        nd->loc_tx.bytes += LOCATE_REQ_BYTES;
                        saw_dead(nd, hi);
                        continue;
                }
                int r = dir_locate(home->dir, &b->d, probing ? NULL : nd->id, c, now, &l);
                count_locate(nd, home, r == 0 ? &l : NULL);
                if (r < 0)
                        continue; /* 404: the next home may know */
        answer:
                nd->locate_answers++;
                nd->answer_holders += l.nholders;
                int pick = -1, wait = -1;
                for (uint32_t k = 0; k < l.nholders; k++) {
                        int p = node_of(l.holders[k].node);
                        if (p < 0 || p == (int)(nd - nodes) || !nodes[p].alive ||
                            !wire_bit(l.holders[k].present, c))
                                continue;
                        if (!l.holders[k].fetching && pick < 0)
                                pick = p;
                        if (l.holders[k].fetching && wait < 0)
                                wait = p;
                }
                bool granted = l.has_claim && l.claim_granted && l.claim_chunk == c;
                cache_keep(nd, bi, c, &l);
                if (pick < 0)
                        pick = wait; /* the claimant answers once the chunk lands */
                if (pick >= 0) {
                        *ret_peer = pick;
                        return SRC_PEER;
                }
                if (granted) {
                        why_claim++;
                        tick_claimed = true;
                        /* source.c's claimed hook (fs/peers.c): the announcer un-hushes the
                         * blob when the chunk lands, so every home hears of it */
                        announce_claimed(nd->ann, &b->d, c);
                } else
                        why_nobody++;
                return SRC_ORIGIN;
        }
        why_unknown++;
        return SRC_ORIGIN;
}

static void evict(struct node *nd, uint32_t keep_blob) {
        while (nd->bytes_held > O.budget) {
                struct held *lru = NULL;
                for (uint32_t i = 0; i < nd->nheld; i++) {
                        struct held *h = &nd->held[i];
                        if (h->npresent && h->blob != keep_blob &&
                            (!lru || h->last_use < lru->last_use))
                                lru = h;
                }
                if (!lru)
                        return;
                const struct blob *b = &blobs[lru->blob];
                memset(lru->present, 0, (b->nchunks + 7) / 8);
                nd->bytes_held -= (uint64_t)lru->npresent * CHUNK;
                lru->npresent = 0;
                /* the engine reports evicted chunks one by one (engine/residency.c), not the
                 * blob: one report marks it dirty with a chunk changed, as those do */
                announce_changed(nd->ann, &b->d, 0);
                nd->dirty = true;
        }
}

/* Whether ND's kept answer (the one its last chunk was planned from) has chunk C's digest. */
static bool digest_kept(const struct node *nd, uint32_t bi, uint32_t c) {
        return nd->cache_used && nd->cache_blob == bi && c < nd->cache.nchunks &&
               nd->cache.sha_known && wire_bit(nd->cache.sha_known, c);
}

/* --confirm-wait: bytes from a peer whose digest no home gave wait (source_verify.c's CONFIRM)
 * until the digest reaches a home, with the claimant's next announce, and the reader reads
 * nothing more this tick. It asks the homes other than the SENDER (its own directory in
 * memory, not counted) one a round, a round starting one home further on: with the daemon's
 * digest questions held at the home (issue 18, dir_wait_digest) one round, one question;
 * with --confirm-poll, as the daemon did before, a round every CONFIRM_POLL_MS until the
 * announce, which comes uniformly 0 .. TICK_MS after the bytes: 1 .. TICK_MS / 50 rounds.
 * Without --confirm-wait, such a reader ran in step with the claimant and asked about every
 * chunk. */
#define CONFIRM_POLL_MS 50 /* peer/source_int.h */
static uint64_t confirm_queries, confirms;
static void confirm_wait(struct node *nd, const struct blob *b, int sender) {
        char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
        size_t nh = members_homes(view, &b->d, K_HOMES, homes, NULL);
        /* Its own stream (splitmix64 of the count), so the workload's rnd() is the same with
         * and without --confirm-poll. */
        uint64_t z = (confirms + 1) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        unsigned rounds = O.confirm_poll ? 1 + (unsigned)(z % (TICK_MS / CONFIRM_POLL_MS)) : 1;
        confirms++;
        for (unsigned r = 0; r < rounds && nh; r++) {
                for (size_t k = 0; k < nh; k++) {
                        int hi = node_of(homes[(r + k) % nh]);
                        if (hi < 0 || hi == sender || &nodes[hi] == nd || !nodes[hi].alive)
                                continue;
                        confirm_queries++;
                        cur_kind = LK_CONFIRM;
                        count_locate(nd, &nodes[hi], NULL);
                        break;
                }
        }
}

/* One tick of NODE's pull: up to --rate chunk misses. */
static void pull_tick(struct node *nd) {
        unsigned budget = O.rate;
        while (nd->image >= 0 && budget > 0) {
                if (nd->layer >= LAYERS) {
                        nd->image = -1;
                        break;
                }
                uint32_t bi = images[nd->image][nd->layer];
                struct blob *b = &blobs[bi];
                struct held *h = held_get(nd, bi, true);
                h->last_use = now;
                if (nd->chunk >= b->nchunks) {
                        nd->layer++;
                        nd->chunk = 0;
                        continue;
                }
                uint32_t c = nd->chunk++;
                if (wire_bit(h->present, c))
                        continue; /* a cache hit costs nothing here */
                budget--;
                int peer = -1;
                if (locate_chunk(nd, bi, c, &peer) == SRC_PEER) {
                        nd->peer_in += CHUNK;
                        nodes[peer].peer_out += CHUNK;
                        if (O.confirm_wait && !digest_kept(nd, bi, c)) {
                                confirm_wait(nd, b, peer);
                                /* With the claimant's early announce the digest follows the
                                 * bytes within milliseconds: the reader goes on this tick. */
                                if (!O.early_announce)
                                        budget = 0;
                        }
                } else {
                        nd->origin_in += CHUNK;
                        b->origin_chunks++;
                        if (wire_bit(b->read_once, c) && some_node_holds(bi, c))
                                origin_peer_held++;
                }
                if (!wire_bit(b->read_once, c)) {
                        wire_set_bit(b->read_once, c);
                        b->first_reads++;
                }
                wire_set_bit(h->present, c);
                h->npresent++;
                nd->bytes_held += CHUNK;
                announce_changed(nd->ann, &b->d, c);
                nd->dirty = true;
                evict(nd, bi);
        }
}

/* ---- membership ------------------------------------------------------------------------ */

/* DNS cost of one resolution of a name with N A records, as glibc's stub does it (A and
 * AAAA asked; no EDNS by default, so UDP answers stop at 512 bytes and come back truncated
 * (TC) past 30 records, and the query is repeated over TCP). A message is at most 65535
 * bytes: 4092 A records of this name; what does not fit is not in any answer. Returns
 * bytes both ways, *RET_MSGS the messages, *RET_SEEN the records the answer carries. */
static uint64_t dns_cost(unsigned n, uint64_t *ret_msgs, unsigned *ret_seen) {
        const uint64_t qname = strlen(DNS_NAME) + 2, hdr = 12, q = hdr + qname + 4, rr = 16;
        uint64_t full = q + rr * n, bytes = 2 * (q + 28) + (q + 28) * 2, msgs = 4;
        unsigned fit = (unsigned)((65535 - q) / rr);
        *ret_seen = n < fit ? n : fit;
        uint64_t ans = q + rr * *ret_seen;
        (void)full;
        if (ans > 512) { /* UDP answer truncated at 512, then TCP: handshake, query, answer */
                bytes = 2 * (q + 28) + 512 + 28 + (q + 28) /* AAAA over UDP, A truncated */
                        + 3 * 40 + (q + 2 + 40) + (ans + 2 + 40 * (1 + ans / 1448)) + 4 * 40;
                msgs = 4 + 2;
        } else {
                bytes = 2 * (q + 28) + (ans + 28) + (q + 28);
        }
        *ret_msgs = msgs;
        return bytes;
}

static void view_update(void) {
        const char **ids = xcalloc(nnodes, sizeof(*ids));
        size_t n = 0;
        for (unsigned i = 0; i < nnodes; i++)
                if (nodes[i].alive)
                        ids[n++] = nodes[i].id;
        int r = members_update(view, ids, n, true);
        if (r < 0)
                die("members_update", r);
        free(ids);
}

static struct members *new_view(size_t max_peers) {
        struct members_config mc = {
                .listen_port = PORT,
                .refresh_ms = 30000,
                .probe_timeout_ms = 1000,
                .max_peers = max_peers,
                .manual = true,
        };
        struct members *m;
        int r = members_new(&mc, &m);
        if (r < 0)
                die("members_new", r);
        return m;
}

/* Keys moved: of every blob's K homes, the share that changes when 1% of the N members
 * leave or 1% join, each membership built by members_update() and asked by members_homes(). */
static void keys_moved(double *ret_leave, double *ret_join, double *ret_blobs_leave) {
        unsigned n = O.n, d = n / 100 ? n / 100 : 1;
        const char **ids = xcalloc(n + d, sizeof(*ids));
        char(*store)[PEER_ID_MAX] = xcalloc(n + d, PEER_ID_MAX);
        for (unsigned i = 0; i < n + d; i++) {
                node_id(i, store[i]);
                ids[i] = store[i];
        }
        struct members *a = new_view(n + d), *l = new_view(n + d), *j = new_view(n + d);
        members_update(a, ids, n, true);
        /* leave: the first d of a random permutation are gone */
        const char **rest = xcalloc(n, sizeof(*rest));
        size_t nr = 0;
        for (unsigned i = 0; i < n; i++)
                if (i % (n / d) != 0 || i / (n / d) >= d)
                        rest[nr++] = ids[i];
        members_update(l, rest, nr, true);
        members_update(j, ids, n + d, true);
        uint64_t moved_l = 0, moved_j = 0, total = 0, blobs_l = 0;
        for (unsigned bi = 0; bi < nblobs; bi++) {
                char ha[MEMBERS_MAX_HOMES][PEER_ID_MAX], hl[MEMBERS_MAX_HOMES][PEER_ID_MAX],
                        hj[MEMBERS_MAX_HOMES][PEER_ID_MAX];
                size_t na = members_homes(a, &blobs[bi].d, K_HOMES, ha, NULL);
                members_homes(l, &blobs[bi].d, K_HOMES, hl, NULL);
                members_homes(j, &blobs[bi].d, K_HOMES, hj, NULL);
                bool any = false;
                for (size_t x = 0; x < na; x++) {
                        bool in_l = false, in_j = false;
                        for (size_t y = 0; y < na; y++) {
                                in_l |= strcmp(ha[x], hl[y]) == 0;
                                in_j |= strcmp(ha[x], hj[y]) == 0;
                        }
                        moved_l += !in_l;
                        moved_j += !in_j;
                        any |= !in_l;
                        total++;
                }
                blobs_l += any;
        }
        *ret_leave = (double)moved_l / (double)total;
        *ret_join = (double)moved_j / (double)total;
        *ret_blobs_leave = (double)blobs_l / (double)nblobs;
        members_free(a);
        members_free(l);
        members_free(j);
        free(rest);
        free(store);
        free(ids);
}

/* CPU time of members_update() on a fresh membership with N ids: the merge a node runs on
 * its first resolution before it can compute any home. Real time on this machine. */
static double merge_cpu_ms(unsigned n) {
        const char **ids = xcalloc(n, sizeof(*ids));
        char(*store)[PEER_ID_MAX] = xcalloc(n, PEER_ID_MAX);
        for (unsigned i = 0; i < n; i++) {
                node_id((i * 7919u) % n, store[i]); /* not in sorted order */
                ids[i] = store[i];
        }
        struct members *m = new_view(n);
        struct timespec t0, t1;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
        members_update(m, ids, n, true);
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
        members_free(m);
        free(store);
        free(ids);
        return (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
}

/* ---- nodes ------------------------------------------------------------------------------ */

static void node_start(unsigned i) {
        struct node *nd = &nodes[i];
        struct dir_config dc = {
                .chunk_size = CHUNK,
                .max_blobs = 100000,
                .max_holders = MAX_HOLDERS,
                .ttl_ms = LOCATION_TTL_MS,
                .claim_ttl_ms = CLAIM_TTL_MS,
                .locate_rate = O.locate_rate,
                .locate_span = O.locate_span,
        };
        int r = dir_new(&dc, &nd->dir);
        if (r < 0)
                die("dir_new", r);
        struct announce_config ac = {
                .ops = {.ud = nd, .count = op_count, .snapshot = op_snapshot, .find = op_find},
                .members = view,
                .dir = nd->dir,
                .chunk_size = CHUNK,
                .homes = K_HOMES,
                .interval_ms = TICK_MS,
                .refresh_ms = ANN_REFRESH_MS,
                .dirty_max = 256,
                .manual = true,
                .send = send_announce,
                .send_ud = nd,
                .self = nd->id,
        };
        r = announce_new(&ac, &nd->ann);
        if (r < 0)
                die("announce_new", r);
        nd->started = true;
        nd->alive = true;
        nd->image = -1;
        nd->next_expire = now + 5000 + rnd() % 5000;
}

static void node_stop(struct node *nd) {
        nd->alive = false;
        nd->image = -1;
}

static void node_free(struct node *nd) {
        if (!nd->started)
                return;
        announce_free(nd->ann);
        dir_free(nd->dir);
        for (uint32_t i = 0; i < nd->nheld; i++)
                free(nd->held[i].present);
        free(nd->held);
        if (nd->cache_used)
                wire_locate_free(&nd->cache);
}

/* ---- the run ---------------------------------------------------------------------------- */

static void make_catalog(void) {
        nblobs = BASES + O.images * (LAYERS - 2);
        blobs = xcalloc(nblobs, sizeof(*blobs));
        for (unsigned i = 0; i < nblobs; i++) {
                struct blob *b = &blobs[i];
                for (unsigned k = 0; k < DIGEST_LEN; k += 8) {
                        uint64_t w = rnd();
                        memcpy(b->d.bytes + k, &w, 8);
                }
                double mib = exp(rnd01() * log(500.0)); /* log-uniform 1 .. 500 MiB */
                b->size = (uint64_t)(mib * (double)MIB) + 1 + rnd() % 4096;
                b->nchunks = (uint32_t)((b->size + CHUNK - 1) / CHUNK);
                b->read_once = xcalloc((b->nchunks + 7) / 8 + 1, 1);
        }
        if (nblobs * 2 > BLOB_SLOTS)
                die("too many blobs for BLOB_SLOTS", E2BIG);
        blob_slot = xcalloc(BLOB_SLOTS, sizeof(*blob_slot));
        for (size_t i = 0; i < BLOB_SLOTS; i++)
                blob_slot[i] = -1;
        btouched = xcalloc(nblobs, sizeof(*btouched));
        for (unsigned i = 0; i < nblobs; i++) {
                size_t j = blob_hash(&blobs[i].d);
                while (blob_slot[j] >= 0)
                        j = (j + 1) & (BLOB_SLOTS - 1);
                blob_slot[j] = (int)i;
        }
        images = xcalloc(O.images, sizeof(*images));
        for (unsigned i = 0; i < O.images; i++) {
                images[i][0] = (unsigned)(rnd() % (BASES / 2));
                images[i][1] = BASES / 2 + (unsigned)(rnd() % (BASES / 2));
                for (unsigned l = 2; l < LAYERS; l++)
                        images[i][l] = BASES + i * (LAYERS - 2) + (l - 2);
        }
}

/* A Zipf(1)-popular image. */
static unsigned pick_image(void) {
        double h = 0;
        for (unsigned i = 1; i <= O.images; i++)
                h += 1.0 / i;
        double u = rnd01() * h, acc = 0;
        for (unsigned i = 1; i <= O.images; i++) {
                acc += 1.0 / i;
                if (u <= acc)
                        return i - 1;
        }
        return O.images - 1;
}

static void usage(void) {
        fprintf(stderr, "usage: scale_sim [--n N] [--images N] [--waves N] [--wave-frac PERCENT] "
                        "[--wave-gap S] [--wave-spread S] [--budget MIB] [--rate CHUNKS] [--sample "
                        "K] [--seed S] [--home-locate-rate R] [--locate-span CHUNKS] "
                        "[--no-churn] [--no-spread] [--no-locate-cache] [--no-full] "
                        "[--confirm-wait] [--confirm-poll] [--early-announce] "
                        "[--tsv]\n");
        exit(2);
}

static uint64_t num(const char *s) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || end == s || *end)
                usage();
        return v;
}

struct pct {
        double mean, max;
};
static struct pct per_node(uint64_t (*f)(const struct node *), double div) {
        struct pct p = {0, 0};
        unsigned n = 0;
        for (unsigned i = 0; i < O.n; i++) { /* the original nodes that stayed */
                if (!nodes[i].alive)
                        continue;
                double v = (double)f(&nodes[i]) / div;
                p.mean += v;
                if (v > p.max)
                        p.max = v;
                n++;
        }
        p.mean = n ? p.mean / n : 0;
        return p;
}
static uint64_t g_ann_msgs(const struct node *x) {
        return x->ann_tx.msgs + x->ann_rx.msgs;
}
static uint64_t g_ann_bytes(const struct node *x) {
        return x->ann_tx.bytes + x->ann_rx.bytes;
}
static uint64_t g_loc_msgs(const struct node *x) {
        return x->loc_tx.msgs + x->loc_rx.msgs;
}
static uint64_t g_loc_bytes(const struct node *x) {
        return x->loc_tx.bytes + x->loc_rx.bytes;
}
static uint64_t g_loc_rx(const struct node *x) {
        return x->loc_rx.msgs;
}
static uint64_t g_loc_rx_peak(const struct node *x) {
        return x->loc_rx_peak;
}
static uint64_t g_ann_rx_peak(const struct node *x) {
        return x->ann_rx_peak;
}
static uint64_t g_ann_rx(const struct node *x) {
        return x->ann_rx.msgs;
}
static uint64_t g_mem_msgs(const struct node *x) {
        return x->dns.msgs + x->probe.msgs;
}
static uint64_t g_mem_bytes(const struct node *x) {
        return x->dns.bytes + x->probe.bytes;
}
static uint64_t g_dir_bytes(const struct node *x) {
        return x->dir_bytes_max;
}
static uint64_t g_serving(const struct node *x) {
        return x->serving_ms - x->start_ms;
}

int main(int argc, char **argv) {
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                const char *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (strcmp(a, "--tsv") == 0) {
                        O.tsv = true;
                        continue;
                }
                if (strcmp(a, "--no-churn") == 0) {
                        O.no_churn = true;
                        continue;
                }
                if (strcmp(a, "--no-full") == 0) { /* homes never answer "full", as before */
                        O.no_full = true;
                        continue;
                }
                if (strcmp(a, "--no-locate-cache") == 0) { /* a locate per chunk miss */
                        O.no_locate_cache = true;
                        continue;
                }
                if (strcmp(a, "--confirm-wait") == 0) {
                        O.confirm_wait = true;
                        continue;
                }
                if (strcmp(a, "--early-announce") == 0) { /* claimed chunks announced at once */
                        O.early_announce = true;
                        continue;
                }
                if (strcmp(a, "--confirm-poll") == 0) { /* CONFIRM polls, as before issue 18 */
                        O.confirm_wait = O.confirm_poll = true;
                        continue;
                }
                if (strcmp(a, "--no-spread") == 0) { /* every reader asks the first home */
                        O.no_spread = true;
                        continue;
                }
                if (!v)
                        usage();
                i++;
                if (strcmp(a, "--n") == 0)
                        O.n = (unsigned)num(v);
                else if (strcmp(a, "--images") == 0)
                        O.images = (unsigned)num(v);
                else if (strcmp(a, "--waves") == 0)
                        O.waves = (unsigned)num(v);
                else if (strcmp(a, "--wave-frac") == 0)
                        O.wave_frac = (double)num(v) / 100.0;
                else if (strcmp(a, "--wave-gap") == 0)
                        O.wave_gap_ms = num(v) * 1000;
                else if (strcmp(a, "--wave-spread") == 0)
                        O.wave_spread_ms = num(v) * 1000;
                else if (strcmp(a, "--budget") == 0)
                        O.budget = num(v) * MIB;
                else if (strcmp(a, "--rate") == 0)
                        O.rate = (unsigned)num(v);
                else if (strcmp(a, "--sample") == 0)
                        O.sample = (unsigned)num(v);
                else if (strcmp(a, "--seed") == 0)
                        O.seed = num(v);
                else if (strcmp(a, "--home-locate-rate") == 0) /* 0: answers say no TTL */
                        O.locate_rate = (unsigned)num(v);
                else if (strcmp(a, "--locate-span") == 0) /* 32: as before issue 18's TTL */
                        O.locate_span = (unsigned)num(v);
                else
                        usage();
        }
        if (O.n < 2 || O.images < 1 || O.rate < 1 || O.sample < 1)
                usage();
        log_max_level = LOG_LVL_WARNING; /* the membership changes are what the sim does */
        rng_state = O.seed * 0x9e3779b97f4a7c15ull + 1;
        make_catalog();

        unsigned joiners = O.n / 100 ? O.n / 100 : 1;
        nalloc = O.n + joiners;
        nodes = xcalloc(nalloc, sizeof(*nodes));
        touched = xcalloc(nalloc, sizeof(*touched));
        for (unsigned i = 0; i < nalloc; i++)
                node_id(i, nodes[i].id);
        nnodes = O.n;
        view = new_view(nalloc);

        double moved_leave, moved_join, blobs_leave;
        keys_moved(&moved_leave, &moved_join, &blobs_leave);
        double merge_ms = merge_cpu_ms(O.n);
        uint64_t dns_msgs;
        unsigned dns_seen;
        uint64_t dns_bytes = dns_cost(O.n, &dns_msgs, &dns_seen);

        /* Timeline (ms from T0): node starts in [0, 20 s); waves from 30 s; churn. */
        uint64_t end = 30000 + O.waves * O.wave_gap_ms + 60000;
        uint64_t churn_leave = O.churn_at_ms, churn_join = O.churn_at_ms + O.dns_refresh_ms;
        for (unsigned i = 0; i < O.n; i++)
                nodes[i].start_ms = T0 + rnd() % 20000;
        /* Every node is in DNS from the start (the Service lists pods as they are scheduled);
         * the shared view holds everyone alive, which a refresh after the start confirms. */
        for (unsigned i = 0; i < O.n; i++)
                nodes[i].alive = true;
        view_update();
        for (unsigned i = 0; i < O.n; i++)
                nodes[i].alive = false;
        uint64_t next_dns = T0 + O.dns_refresh_ms;
        unsigned wave = 0;
        uint64_t churn_dead = 0;
        uint64_t ann_before = 0, ann_after = 0; /* announce messages in the 30 s around churn */
        uint64_t ver_seen = members_version(view);

        for (now = T0; now < T0 + end; now += TICK_MS) {
                uint64_t t = now - T0;
                /* starts: resolve (one DNS resolution), merge, then serving */
                for (unsigned i = 0; i < nnodes; i++) {
                        struct node *nd = &nodes[i];
                        if (nd->started || nd->start_ms > now)
                                continue;
                        node_start(i);
                        nd->dns.msgs += dns_msgs;
                        nd->dns.bytes += dns_bytes;
                        /* resolution ~ 2 RTTs + TCP fallback 2 RTTs (0.5 ms each) + merge CPU */
                        nd->serving_ms = now + 2 + (uint64_t)merge_ms;
                        nd->last_full = now;
                        run_round(nd); /* first, full round: it is findable */
                }
                /* waves */
                if (wave < O.waves && t >= 30000 + wave * O.wave_gap_ms) {
                        unsigned img = pick_image();
                        for (unsigned i = 0; i < nnodes; i++)
                                if (nodes[i].alive && nodes[i].image < 0 && rnd01() < O.wave_frac) {
                                        nodes[i].image = (int)img;
                                        nodes[i].layer = 0;
                                        nodes[i].chunk = 0;
                                        nodes[i].pull_at =
                                                now +
                                                (O.wave_spread_ms ? rnd() % O.wave_spread_ms : 0);
                                }
                        wave++;
                }
                /* a pull starts: the manifest's layers are registered, as the mirror does when
                 * containerd asks for them, and announced at once (announce_changed wakes the
                 * announcer for a registered blob; the round trip is under a tick, so homes
                 * know the blob before this tick's reads) */
                for (unsigned i = 0; i < nnodes; i++) {
                        struct node *nd = &nodes[i];
                        if (!nd->alive || nd->image < 0 || nd->pull_at > now ||
                            nd->pull_at + TICK_MS <= now)
                                continue;
                        for (unsigned l = 0; l < LAYERS; l++) {
                                unsigned bi = images[nd->image][l];
                                held_get(nd, bi, true)->last_use = now;
                                announce_changed(nd->ann, &blobs[bi].d, UINT32_MAX);
                        }
                        run_round(nd);
                }
                /* churn: 1% leave; a refresh later, 1% join */
                if (!O.no_churn && t == churn_leave) {
                        for (unsigned i = 0; i < O.n; i += 100) {
                                node_stop(&nodes[i]);
                                churn_dead++;
                        }
                }
                if (!O.no_churn && t == churn_join) {
                        for (unsigned i = O.n; i < nalloc; i++)
                                nodes[i].start_ms = now + rnd() % 5000;
                        nnodes = nalloc;
                }
                /* pulls, in a rotating order */
                unsigned off = (unsigned)(rnd() % nnodes);
                for (unsigned k = 0; k < nnodes; k++) {
                        struct node *nd = &nodes[(k + off) % nnodes];
                        if (nd->alive && nd->image >= 0 && nd->pull_at <= now) {
                                tick_claimed = false;
                                pull_tick(nd);
                                /* The claimant's landed claims are announced now (one early
                                 * round a tick at most: the daemon allows one per 100 ms),
                                 * so the readers after it this tick find their digests. */
                                if (O.early_announce && tick_claimed && nd->dirty) {
                                        run_round(nd);
                                        nd->dirty = false;
                                        early_rounds++;
                                }
                        }
                }
                /* DNS refreshes (all nodes in step): the view follows who is alive */
                if (now >= next_dns) {
                        view_update();
                        for (unsigned i = 0; i < nnodes; i++)
                                if (nodes[i].alive) {
                                        nodes[i].dns.msgs += dns_msgs;
                                        nodes[i].dns.bytes += dns_bytes;
                                }
                        next_dns += O.dns_refresh_ms;
                }
                uint64_t ver = members_version(view);
                bool moved = ver != ver_seen;
                ver_seen = ver;
                /* announce rounds: dirty nodes, full refresh due, or homes moved */
                for (unsigned i = 0; i < nnodes; i++) {
                        struct node *nd = &nodes[i];
                        if (!nd->alive)
                                continue;
                        bool full = moved || now - nd->last_full >= ANN_REFRESH_MS;
                        if (nd->dirty || full || announce_next_retry(nd->ann) <= now) {
                                uint64_t before = nd->ann_tx.msgs;
                                run_round(nd);
                                if (full)
                                        nd->last_full = now;
                                nd->dirty = false;
                                if (now >= T0 + churn_leave - 30000 && now < T0 + churn_leave)
                                        ann_before += nd->ann_tx.msgs - before;
                                if (now >= T0 + churn_leave &&
                                    now < T0 + churn_leave + 30000 + O.dns_refresh_ms)
                                        ann_after += nd->ann_tx.msgs - before;
                        }
                        if (now >= nd->next_expire) {
                                dir_expire(nd->dir, now);
                                nd->next_expire = now + 5000;
                                struct dir_stats ds;
                                dir_get_stats(nd->dir, &ds);
                                if (ds.bytes > nd->dir_bytes_max)
                                        nd->dir_bytes_max = ds.bytes;
                        }
                }
        }
        /* Probes: a departed node that a peer reached for is marked down there and probed
         * (250 ms doubling to 10 s, members.c) until DNS forgets it, two refreshes after it
         * left: about 1 + log2(40) + (window - 20 s) / 10 s probes. */
        double window_s = (double)(2 * O.dns_refresh_ms) / 1000.0;
        double probes_per_dead = 6 + (window_s > 20 ? (window_s - 20) / 10 : 0);
        for (unsigned i = 0; i < nnodes; i++) {
                uint64_t dead = nodes[i].ndead_seen;
                nodes[i].probe.msgs = (uint64_t)((double)dead * probes_per_dead * 2);
                nodes[i].probe.bytes = nodes[i].probe.msgs * 150;
        }

        double secs = (double)end / 1000.0;
        struct pct ann_m = per_node(g_ann_msgs, secs), ann_b = per_node(g_ann_bytes, secs);
        struct pct loc_m = per_node(g_loc_msgs, secs), loc_b = per_node(g_loc_bytes, secs);
        struct pct locrx = per_node(g_loc_rx, secs), annrx = per_node(g_ann_rx, secs);
        struct pct locpk = per_node(g_loc_rx_peak, 1), annpk = per_node(g_ann_rx_peak, 1);
        struct pct mem_m = per_node(g_mem_msgs, secs), mem_b = per_node(g_mem_bytes, secs);
        struct pct dirb = per_node(g_dir_bytes, 1024.0);
        struct pct serve = per_node(g_serving, 1.0);
        uint64_t misses = 0, answers = 0, holders = 0, origin = 0, first = 0, peer = 0;
        for (unsigned i = 0; i < nnodes; i++) {
                misses += nodes[i].misses;
                answers += nodes[i].locate_answers;
                holders += nodes[i].answer_holders;
                peer += nodes[i].peer_in;
        }
        unsigned blobs_read = 0;
        double amp_sum = 0, amp_max = 0;
        for (unsigned bi = 0; bi < nblobs; bi++) {
                origin += blobs[bi].origin_chunks;
                first += blobs[bi].first_reads;
                if (blobs[bi].first_reads) {
                        double a = (double)blobs[bi].origin_chunks / (double)blobs[bi].first_reads;
                        amp_sum += a;
                        amp_max = a > amp_max ? a : amp_max;
                        blobs_read++;
                }
        }
        double amp = blobs_read ? amp_sum / blobs_read : 0;
        /* The blob whose homes received the most deltas, and the most in one second. */
        uint64_t blob_delta_max = 0, blob_delta_peak = 0, blob_full_max = 0;
        for (unsigned bi = 0; bi < nblobs; bi++) {
                if (blobs[bi].rx_delta > blob_delta_max)
                        blob_delta_max = blobs[bi].rx_delta;
                if (blobs[bi].rx_full > blob_full_max)
                        blob_full_max = blobs[bi].rx_full;
                if (blobs[bi].rx_delta_peak > blob_delta_peak)
                        blob_delta_peak = blobs[bi].rx_delta_peak;
        }
        uint64_t told_full = 0, unhushed = 0;
        for (unsigned i = 0; i < nnodes; i++) {
                struct announce_stats as;
                if (!nodes[i].started)
                        continue;
                announce_get_stats(nodes[i].ann, &as);
                told_full += as.told_full;
                unhushed += as.unhushed;
        }
        /* The busiest home (most announces received): how many came in full rounds. */
        const struct node *busiest = NULL;
        uint64_t rx_all = 0, rx_full = 0;
        for (unsigned i = 0; i < O.n; i++) {
                if (!nodes[i].alive)
                        continue;
                rx_all += nodes[i].ann_rx.msgs;
                rx_full += nodes[i].ann_rx_full;
                if (!busiest || nodes[i].ann_rx.msgs > busiest->ann_rx.msgs)
                        busiest = &nodes[i];
        }
        double busiest_full = busiest ? (double)busiest->ann_rx_full / secs : 0;
        struct dir_stats bds = {0};
        if (busiest)
                dir_get_stats(busiest->dir, &bds);
        double busiest_delta =
                busiest ? (double)(busiest->ann_rx.msgs - busiest->ann_rx_full) / secs : 0;
        uint64_t locate_msgs = 0;
        for (unsigned i = 0; i < nnodes; i++)
                locate_msgs += nodes[i].loc_tx.msgs;

        if (O.tsv) {
                printf("n\tann_msgs\tann_msgs_max\tann_Bps\tann_Bps_max\tann_rx_max\t"
                       "loc_msgs\tloc_msgs_max\tloc_Bps\tloc_Bps_max\tloc_rx_max\t"
                       "mem_msgs\tmem_Bps\tdns_seen\thome_KiB\thome_KiB_max\t"
                       "locates_per_miss\tanswers_per_miss\tholders_per_answer\t"
                       "moved_leave\tmoved_join\tblobs_moved_leave\torigin_amp\torigin_amp_max\t"
                       "peer_share\tserving_ms\tserving_ms_max\tmerge_ms\tann_churn_ratio\t"
                       "ann_rx_max_full\tann_rx_max_delta\tloc_rx_peak\tann_rx_peak\t"
                       "loc_too_old\tloc_no_digest\tblob_delta_max\tblob_delta_peak\t"
                       "origin_peer_held\n");
                printf("%u\t%.3f\t%.3f\t%.0f\t%.0f\t%.3f\t%.3f\t%.3f\t%.0f\t%.0f\t%.3f\t%.4f\t%."
                       "1f\t"
                       "%u\t%.1f\t%.1f\t%.3f\t%.3f\t%.2f\t%.4f\t%.4f\t%.4f\t%.3f\t%.2f\t%.3f\t%."
                       "0f\t"
                       "%.0f\t%.2f\t%.2f\t%.3f\t%.3f\t%.0f\t%.0f\t%" PRIu64 "\t%" PRIu64
                       "\t%.3f\t%" PRIu64 "\t%" PRIu64 "\n",
                       O.n, ann_m.mean, ann_m.max, ann_b.mean, ann_b.max, annrx.max, loc_m.mean,
                       loc_m.max, loc_b.mean, loc_b.max, locrx.max, mem_m.mean, mem_b.mean,
                       dns_seen, dirb.mean, dirb.max,
                       misses ? (double)locate_msgs / (double)misses : 0,
                       misses ? (double)answers / (double)misses : 0,
                       answers ? (double)holders / (double)answers : 0, moved_leave, moved_join,
                       blobs_leave, amp, amp_max,
                       (double)peer / (double)((peer + origin * CHUNK) ?: 1), serve.mean, serve.max,
                       merge_ms, ann_before ? (double)ann_after / (double)ann_before : 0,
                       busiest_full, busiest_delta, locpk.max, annpk.max, cm_old, cm_digest,
                       (double)blob_delta_max / secs, blob_delta_peak, origin_peer_held);
        } else {
                printf("n %u\nsimulated_s %.0f\nblobs %u\nchunk_misses %" PRIu64 "\n", O.n, secs,
                       nblobs, misses);
                printf("announce_msgs_per_node_s mean %.3f max %.3f (max received %.3f)\n",
                       ann_m.mean, ann_m.max, annrx.max);
                printf("busiest_home_announces_received_s full_rounds %.3f deltas %.3f "
                       "(all homes: %.1f%% in full rounds)\n",
                       busiest_full, busiest_delta,
                       rx_all ? 100.0 * (double)rx_full / (double)rx_all : 0);
                printf("busiest_blob_deltas_received_s %.3f peak_second %" PRIu64
                       " (one blob's announces in its senders' delta rounds, at all its homes; "
                       "full rounds: %.3f/s)\n",
                       (double)blob_delta_max / secs, blob_delta_peak,
                       (double)blob_full_max / secs);
                printf("told_full %" PRIu64 " unhushed_on_claim %" PRIu64
                       " (busiest home: %.3f blobs told full/s; %.3f announces/s)\n",
                       told_full, unhushed, (double)bds.told_full / secs,
                       (double)bds.announces / secs);
                printf("busiest_home_registrations_s %.3f (announces of blobs with no chunk)\n",
                       busiest ? (double)busiest->ann_rx_empty / secs : 0);
                if (busiest) {
                        static const char *cn[3] = {"empty", "partial", "whole"};
                        printf("busiest_home_blobs_received_s (delta rounds: recorded/told; "
                               "full rounds: recorded/told)");
                        for (int c = 0; c < 3; c++)
                                printf(" %s %.2f/%.2f %.2f/%.2f", cn[c],
                                       (double)busiest->cls_delta[c][0] / secs,
                                       (double)busiest->cls_delta[c][1] / secs,
                                       (double)busiest->cls_full[c][0] / secs,
                                       (double)busiest->cls_full[c][1] / secs);
                        printf("\n");
                        const struct node *pk = busiest;
                        for (unsigned i = 0; i < O.n; i++)
                                if (nodes[i].ann_rx_peak > pk->ann_rx_peak)
                                        pk = &nodes[i];
                        printf("peak_announce_second at %" PRIu64 " s: %" PRIu64
                               " announces, blobs recorded/told:",
                               pk->ann_peak_at, pk->ann_rx_peak);
                        for (int c = 0; c < 3; c++)
                                printf(" %s %" PRIu64 "/%" PRIu64, cn[c], pk->cls_peak[c][0],
                                       pk->cls_peak[c][1]);
                        printf("\n");
                }
                printf("announce_bytes_per_node_s mean %.0f max %.0f\n", ann_b.mean, ann_b.max);
                printf("locate_msgs_per_node_s mean %.3f max %.3f (max received %.3f)\n",
                       loc_m.mean, loc_m.max, locrx.max);
                printf("locate_bytes_per_node_s mean %.0f max %.0f\n", loc_b.mean, loc_b.max);
                printf("membership_msgs_per_node_s %.4f bytes_per_node_s %.1f (dns answer "
                       "carries %u of %u)\n",
                       mem_m.mean, mem_b.mean, dns_seen, O.n);
                printf("home_memory_KiB mean %.1f max %.1f\n", dirb.mean, dirb.max);
                printf("locates_per_miss %.3f answers_per_miss %.3f holders_per_answer %.2f\n",
                       misses ? (double)locate_msgs / (double)misses : 0,
                       misses ? (double)answers / (double)misses : 0,
                       answers ? (double)holders / (double)answers : 0);
                printf("keys_moved leave_1pct %.4f join_1pct %.4f blobs_with_a_moved_home %.4f\n",
                       moved_leave, moved_join, blobs_leave);
                printf("origin_chunks_per_distinct_chunk mean %.3f max %.2f (all %" PRIu64
                       " / %" PRIu64 ")\n",
                       amp, amp_max, origin, first);
                printf("start_to_serving_ms mean %.0f max %.0f (merge CPU %.2f ms)\n", serve.mean,
                       serve.max, merge_ms);
                printf("origin_fetches unknown_blob %" PRIu64 " claim %" PRIu64
                       " answer_without_source %" PRIu64 "\n",
                       why_unknown, why_claim, why_nobody);
                printf("origin_chunks_a_peer_held %" PRIu64 " (fetched from the origin while a "
                       "live node held them; 0 wanted)\n",
                       origin_peer_held);
                printf("spread_locates_naming_nobody %" PRIu64 "\n", spread_misses);
                printf("busiest_home_peak_s locates %.0f announces %.0f (most received in one "
                       "simulated second)\n",
                       locpk.max, annpk.max);
                uint64_t hits = 0;
                for (unsigned i = 0; i < nnodes; i++)
                        hits += nodes[i].cache_hits;
                printf("locate_cache hits %" PRIu64 " misses: none_kept %" PRIu64
                       " too_old %" PRIu64 " no_digest %" PRIu64 " no_holder %" PRIu64 "\n",
                       hits, cm_none, cm_old, cm_digest, cm_holder);
                const struct node *pk = NULL;
                for (unsigned i = 0; i < O.n; i++)
                        if (nodes[i].alive && (!pk || nodes[i].loc_rx_peak > pk->loc_rx_peak))
                                pk = &nodes[i];
                if (pk)
                        printf("busiest_home_peak_second_locates none_kept %" PRIu64
                               " too_old %" PRIu64 " no_digest %" PRIu64 " no_holder %" PRIu64
                               " confirm %" PRIu64 "\n",
                               pk->kind_peak[0], pk->kind_peak[1], pk->kind_peak[2],
                               pk->kind_peak[3], pk->kind_peak[4]);
                printf("early_announce_rounds %" PRIu64 "\n", early_rounds);
                printf("confirm_queries %" PRIu64 " confirms %" PRIu64 " per_confirm %.2f\n",
                       confirm_queries, confirms,
                       confirms ? (double)confirm_queries / (double)confirms : 0.0);
                uint64_t ctl = 0;
                for (unsigned i = 0; i < nnodes; i++)
                        ctl += nodes[i].ann_tx.msgs + nodes[i].ann_rx.msgs + nodes[i].loc_tx.msgs +
                               nodes[i].loc_rx.msgs;
                printf("control_msgs_per_chunk_miss %.3f (announces and locates, sent and "
                       "received, per node)\n",
                       misses ? (double)ctl / (double)misses : 0);
                printf("churn left %" PRIu64 " joined %u\n", churn_dead, O.no_churn ? 0 : joiners);
                printf("announce_msgs churn/steady %.2f\n",
                       ann_before ? (double)ann_after / (double)ann_before : 0);
                printf("sampled announce %" PRIu64 "/%" PRIu64 " locate %" PRIu64 "/%" PRIu64 "\n",
                       r_ann.sampled, r_ann.seen, r_loc.sampled, r_loc.seen);
        }
        for (unsigned i = 0; i < nalloc; i++)
                node_free(&nodes[i]);
        members_free(view);
        for (unsigned i = 0; i < nblobs; i++)
                free(blobs[i].read_once);
        free(blobs);
        free(images);
        free(nodes);
        free(touched);
        free(btouched);
        free(blob_slot);
        return 0;
}
