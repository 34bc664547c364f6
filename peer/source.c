/* Chunk sources: peers first, then the origin. See source.h for the contract.
 *
 * A chunk job walks these phases, all on the source thread:
 *   LOCATE  ask the blob's homes, in rendezvous order, who holds or fetches the chunk (a home
 *           that is ourselves is asked in memory; a home that fails is skipped);
 *   PEERS   try the candidates the answer named, best first, one transfer at a time; a
 *           transfer that fails moves on, a peer that broke the connection or went silent is
 *           reported down, a peer whose bytes fail the chunk digest is distrusted for the blob;
 *   CONFIRM bytes arrived but no digest is known that did not come from their sender: ask
 *           the other homes for the chunk's digest, again and again up to digest_wait_ms (a
 *           claimant announces it within an announce interval of the chunk landing), then
 *           verify; with none by then, the bytes are dropped and the next source is tried;
 *   ORIGIN  hand the job to the origin client, which owns it from then on.
 * Every job ends in exactly one call of its done callback.
 *
 * The locate cache and runs (issues 15, 18). A home's answer about chunk i names every holder
 * that has i with its whole chunk map, and the digests of i and the 31 chunks after it. The
 * thread keeps the latest answer per blob for LCACHE_TTL_MS (LCACHE_SLOTS blobs, LCACHE_BYTES
 * of maps and digests), so a sequential reader's next misses skip LOCATE: one question per
 * blob per second or so instead of one per chunk, which is what made the first home of a
 * popular blob a hot spot, and one round trip less before most first bytes. A chunk the kept
 * answer names no holder for, or gives no digest of, is asked as before (claims are granted
 * only there). A peer failure for the blob drops its answer. A run from source_fetch_run() is
 * planned from one answer (the cache's, or its first chunk's locate): consecutive chunks whose
 * best candidate is the same holder, with a digest we may check it by, go in one ranged GET
 * (X_RUN); each chunk is handed to a verifier as soon as its bytes are in, so the first
 * chunk's reader does not wait for the run. A run that breaks (the peer dies or stalls, a 416
 * or 503, a chunk of it fails its digest) sends the chunks not yet in on, each on its own,
 * exactly as a failed single transfer would. Trust is unchanged: a chunk's digest still comes
 * from a home that is not the sender — when the home that answered is the holder, our own
 * directory's digests are used if we are a home (one in-memory lookup per run), else the chunk
 * goes the single way, through CONFIRM.
 *
 * Whose word a chunk is checked against. A peer's bytes are accepted only against a digest
 * that did not come from that peer: the digest a home gave us, where that home is not the
 * peer serving the bytes (our own directory, when we are a home, always qualifies). What the
 * serving peer says about its own bytes — the X-P2PBlobs-Chunk-Digest header, or its locate
 * answer when it is also the home — is never used: a peer that alters bytes can make up a
 * matching digest as easily. The homes learnt their digests from the holders' announces
 * (the node that fetched the chunk from the origin, or one that verified the whole blob,
 * which wins a disagreement: peer/directory.c); README "Trust model" says what that leaves.
 *
 * Why a claim, and why waiting for it: when N nodes read one blob at the same moment, none of
 * them holds anything yet. The first to ask a home about chunk c is granted c (it fetches c
 * from the origin); the others are told who is fetching it and ask that node, which answers
 * once the chunk lands (X-P2PBlobs-Wait). So the origin serves each chunk about once, however
 * many nodes read it.
 *
 * Threading: callers push jobs onto `incoming` under `lock` and wake the thread with
 * curl_multi_wakeup(); every job, transfer and the distrust table belong to the thread. A
 * chunk received from a peer goes, with its job, to a verifier thread (hashing 1 MiB is the
 * transfer thread's biggest cost otherwise): a good chunk's job ends there; a bad one comes
 * back on `returned` for the thread to distrust the peer and try the next source.
 * Lookups on behalf of FUSE (source_lookup) use a blocking easy handle on the caller's thread
 * and touch nothing of the thread's. */
#include "peer/source.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "peer/httpd.h"
#include "peer/proto.h"
#include "peer/rendezvous.h"
#include "util/log.h"

#define MAX_HOMES MEMBERS_MAX_HOMES
#define MAX_CANDIDATES 8       /* peers tried for one chunk before the origin */
#define DISTRUST_SLOTS 256     /* (peer, blob) pairs that sent bad bytes */
#define LOCATE_TIMEOUT_MS 1000 /* a home that has not answered by then is skipped */
#define LOCATE_BODY_MAX WIRE_MAX_BODY
#define URL_MAX 1200
#define POLL_MS 20              /* stall checks run at least this often */
#define BUSY_RETRIES 20         /* 503s from one job's peers before moving on */
#define BUSY_PAUSE_MS 10        /* grows linearly with each retry ... */
#define BUSY_PAUSE_MAX_MS 200   /* ... up to this */
#define RECORD_SLOTS 64         /* blobs whose locations were recorded lately */
#define RECORD_INTERVAL_MS 5000 /* record a blob's locations at most this often */
/* Locate answers kept per blob (issue 18's hot home): an answer carries every holder's chunk
 * map and every chunk digest the home knows, so one answer serves the following misses of
 * that blob for a short while. Bounded by slots and by bytes of maps and digests; an answer
 * larger than the whole budget is used once and not kept. */
#define LCACHE_SLOTS 16
#define LCACHE_TTL_MS 1000
/* An answer older than its TTL still tells whether a peer held the blob's chunks a moment
 * ago: whether a run should wait for its first chunk's answer, to be planned from it. */
#define LCACHE_HINT_MS 10000
#define LCACHE_BYTES (4u << 20)
#define MAX_RUN 32 /* chunks of one coalesced peer transfer (the engine sends up to 16) */

enum phase { PH_LOCATE, PH_PEERS, PH_CONFIRM, PH_ORIGIN };

#define CONFIRM_POLL_MS 50 /* between rounds of asking the homes for a digest */
#define DIGEST_WAIT_DEFAULT_MS 2000

#define VERIFIERS 2

/* A chunk received from a peer, waiting to be checked against its expected digest. */
struct verify_item {
        struct verify_item *next;
        struct job *job;
        uint8_t *buf; /* job->len bytes, owned */
        struct digest want;
        char peer[PEER_ID_MAX];
        uint64_t ttfb_us;
};

struct candidate {
        char id[PEER_ID_MAX];
        bool claimed; /* it is fetching the chunk: wait for it */
};

struct job {
        struct job *next; /* incoming / queued */
        struct source *s;
        struct digest digest;
        uint64_t size;
        char origin_source[IDX_SOURCE_MAX];
        uint32_t idx;
        uint64_t off;
        size_t len;
        uint64_t deadline_ms;
        origin_done_fn done;
        void *ud;

        enum phase phase;
        char homes[MAX_HOMES][PEER_ID_MAX];
        unsigned nhomes, home_next;
        struct candidate cand[MAX_CANDIDATES];
        unsigned ncand, cand_next;
        struct digest sha; /* expected digest of the chunk */
        bool sha_known;
        char sha_home[PEER_ID_MAX]; /* the home whose answer gave it: not a check of its bytes */
        /* CONFIRM: bytes from held_peer waiting for a digest from another home. */
        uint8_t *held;
        char held_peer[PEER_ID_MAX];
        uint64_t held_ttfb_us;
        unsigned confirm_next; /* index into homes */
        uint64_t confirm_until_ms;
        bool confirm_failed;    /* no home had a digest in time: unchecked peers are skipped */
        uint64_t not_before_ms; /* a busy peer is asked again, after a pause */
        /* We are one of its homes and knew of no source: the other homes are asked too (a
         * home that restarted knows nothing until holders announce again), without claiming,
         * since our own answer already decided who fetches from the origin. */
        bool probing;
        /* The locate in flight asks the home rdv_spread() picked, without claiming, only who
         * holds the chunk: when nobody does, the job starts over at the first home. */
        bool spread;
        char bad_peer[PEER_ID_MAX]; /* set by a verifier: this peer's bytes did not match */
        unsigned busy_retries;
        /* The rest of a source_fetch_run() run, on its first job only while that job
         * locates: once the answer is in (and cached), the whole run is planned at once. */
        struct job *run_next;
};

/* X_RUN: one ranged GET for consecutive chunks that one peer holds, each chunk handed to a
 * verifier as soon as its bytes are in. */
enum xfer_kind { X_LOCATE, X_CHUNK, X_DIGEST, X_RUN };

struct xfer {
        struct xfer *next; /* running list */
        struct job *job;
        enum xfer_kind kind;
        char peer[PEER_ID_MAX];
        bool claimed;
        CURL *easy;
        struct curl_slist *headers;
        uint8_t *buf;
        size_t got, cap;
        bool overflow;
        uint64_t started_ms, last_byte_ms, stall_ms;
        uint64_t total_ms; /* a transfer slower than this is abandoned for the next source */
        bool stalled;
        char curl_error[CURL_ERROR_SIZE];
        uint64_t deadline_ms; /* the job's (a run's jobs share one) */
        /* X_RUN: run[0 .. delivered) went to the verifiers (not ours any more), the rest are
         * still ours; BUF holds the bytes of run[delivered] so far (GOT of them). */
        struct job *run[MAX_RUN];
        unsigned nrun, delivered;
        struct digest blob;
        uint64_t ttfb_us;
};

struct lcache_entry {
        bool used;
        struct digest blob;
        uint64_t at_ms;
        size_t bytes;
        char home[PEER_ID_MAX]; /* who answered: its digests are no check of its own bytes */
        struct wire_locate l;
};

struct distrust {
        char peer[PEER_ID_MAX];
        struct digest blob;
        bool used;
};

struct source {
        struct source_config cfg;
        CURLM *multi;
        pthread_t thread;
        bool thread_started;

        pthread_mutex_t lock; /* incoming, returned, stopping, stats */
        struct job *incoming;
        struct job *returned; /* failed verification: back to the thread for the next source */

        /* Verifiers: hashing a received chunk (about 0.6 ms a MiB) is done off the transfer
         * thread, which otherwise spends most of its time hashing while transfers wait. */
        pthread_mutex_t vq_lock; /* the queue and vstop */
        pthread_cond_t vq_cond;
        struct verify_item *vq_head, **vq_tail;
        bool vstop;
        pthread_t verifiers[VERIFIERS];
        unsigned nverifiers;
        bool stopping;
        struct source_stats stats;

        /* thread only */
        struct xfer *running;
        unsigned active;
        struct job *queued; /* waiting for a transfer slot */
        struct distrust distrust[DISTRUST_SLOTS];
        unsigned distrust_next;
        struct {
                struct digest blob;
                uint64_t at_ms;
        } recorded[RECORD_SLOTS];
        unsigned recorded_next;
        struct lcache_entry lcache[LCACHE_SLOTS];
        size_t lcache_bytes;
};

static void stat_add(struct source *s, uint64_t *field, uint64_t n) {
        pthread_mutex_lock(&s->lock);
        *field += n;
        pthread_mutex_unlock(&s->lock);
}

static bool distrusted(const struct source *s, const char *peer, const struct digest *blob) {
        for (unsigned i = 0; i < DISTRUST_SLOTS; i++)
                if (s->distrust[i].used && digest_equal(&s->distrust[i].blob, blob) &&
                    strcmp(s->distrust[i].peer, peer) == 0)
                        return true;
        return false;
}

static void distrust_add(struct source *s, const char *peer, const struct digest *blob) {
        struct distrust *d = &s->distrust[s->distrust_next++ % DISTRUST_SLOTS];
        snprintf(d->peer, sizeof(d->peer), "%s", peer);
        d->blob = *blob;
        d->used = true;
}

/* ---- the locate cache (thread only) -------------------------------------------------------- */

static size_t lcache_cost(const struct wire_locate *l) {
        size_t map = ((size_t)l->nchunks + 7) / 8;
        return (size_t)l->nchunks * sizeof(struct digest) + map * (3 + (size_t)l->nholders) +
               (size_t)l->nholders * sizeof(struct wire_holder) + sizeof(struct lcache_entry);
}

static void lcache_evict(struct source *s, struct lcache_entry *e) {
        if (!e->used)
                return;
        wire_locate_free(&e->l);
        s->lcache_bytes -= e->bytes;
        e->used = false;
}

/* The answer kept for BLOB if younger than MAX_AGE_MS, or NULL. */
static struct lcache_entry *lcache_find(struct source *s, const struct digest *blob,
                                        uint64_t max_age_ms) {
        uint64_t now = now_ms();
        for (unsigned i = 0; i < LCACHE_SLOTS; i++) {
                struct lcache_entry *e = &s->lcache[i];
                if (!e->used || !digest_equal(&e->blob, blob))
                        continue;
                if (now - e->at_ms < max_age_ms)
                        return e;
                if (now - e->at_ms >= LCACHE_HINT_MS)
                        lcache_evict(s, e);
                return NULL;
        }
        return NULL;
}

/* The fresh answer kept for BLOB, or NULL. */
static struct lcache_entry *lcache_get(struct source *s, const struct digest *blob) {
        return lcache_find(s, blob, LCACHE_TTL_MS);
}

/* Forgets BLOB's answer: a peer it named failed us, so the next miss asks a home again. */
static void lcache_drop(struct source *s, const struct digest *blob) {
        for (unsigned i = 0; i < LCACHE_SLOTS; i++)
                if (s->lcache[i].used && digest_equal(&s->lcache[i].blob, blob))
                        lcache_evict(s, &s->lcache[i]);
}

/* Keeps answer *L from HOME, taking its contents (*L is left empty, so freeing it is a no-op).
 * Returns the kept copy, or NULL when it does not fit the budget (then *L is untouched). The
 * claim is not kept: it answered one job's question, not the next one's. */
static struct lcache_entry *lcache_put(struct source *s, struct wire_locate *l, const char *home) {
        size_t cost = lcache_cost(l);
        if (cost > LCACHE_BYTES / 2)
                return NULL;
        lcache_drop(s, &l->digest);
        struct lcache_entry *slot = NULL;
        while (!slot || s->lcache_bytes + cost > LCACHE_BYTES) {
                struct lcache_entry *oldest = NULL;
                slot = NULL;
                for (unsigned i = 0; i < LCACHE_SLOTS; i++) {
                        struct lcache_entry *e = &s->lcache[i];
                        if (!e->used) {
                                slot = slot ? slot : e;
                                continue;
                        }
                        if (!oldest || e->at_ms < oldest->at_ms)
                                oldest = e;
                }
                if (slot && s->lcache_bytes + cost <= LCACHE_BYTES)
                        break;
                lcache_evict(s, oldest); /* non-NULL: the budget is used by someone */
                slot = NULL;
        }
        slot->used = true;
        slot->blob = l->digest;
        slot->at_ms = now_ms();
        slot->bytes = cost;
        snprintf(slot->home, sizeof(slot->home), "%s", home);
        slot->l = *l;
        slot->l.has_claim = false;
        s->lcache_bytes += cost;
        *l = (struct wire_locate){0};
        return slot;
}

/* Homes of D, best first, into HOMES; returns how many. Self included. */
static unsigned homes_of(struct source *s, const struct digest *d, char (*homes)[PEER_ID_MAX]) {
        return (unsigned)members_homes(s->cfg.members, d, s->cfg.homes, homes, NULL);
}

/* ---- finishing ------------------------------------------------------------------------------ */

/* SHA: the digest of BUF the verifier just computed (the engine records it instead of hashing
 * the chunk a second time), or NULL. */
static void job_done(struct job *j, int err, const char *reason, uint8_t *buf, size_t len,
                     const struct digest *sha) {
        struct job *f = j->run_next; /* only while J locates: it cannot succeed then */
        j->done(j->ud, err, reason, buf, len, sha);
        free(j->held);
        free(j);
        while (f) {
                struct job *next = f->run_next;
                f->run_next = NULL;
                job_done(f, err, reason, NULL, 0, NULL);
                f = next;
        }
}

static void release_run(struct source *s, struct job *j);

static void to_origin(struct source *s, struct job *j) {
        release_run(s, j); /* the rest of its run may still find peers */
        j->phase = PH_ORIGIN;
        stat_add(s, &s->stats.origin_chunks, 1);
        /* Peers that were slow to fail must not use up the origin's turn: the read fails with
         * EIO only after the origin, too, had a fair chance (DESIGN §3.4). */
        uint64_t floor = now_ms() + s->cfg.origin_reserve_ms;
        if (j->deadline_ms < floor)
                j->deadline_ms = floor;
        /* The origin client owns the job's callback from here; the job itself is done. */
        origin_fetch(s->cfg.origin, j->origin_source, &j->digest, j->off, j->len, j->deadline_ms,
                     j->done, j->ud);
        free(j->held);
        free(j);
}

/* ---- transfers ------------------------------------------------------------------------------ */

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
        struct xfer *x = ud;
        size_t n = size * nmemb;
        x->last_byte_ms = now_ms();
        if (x->got + n > x->cap) {
                x->overflow = true;
                return 0; /* abort: more than asked for */
        }
        memcpy(x->buf + x->got, data, n);
        x->got += n;
        return n;
}

static size_t on_locate_body(char *data, size_t size, size_t nmemb, void *ud);

static void xfer_free(struct xfer *x) {
        if (!x)
                return;
        if (x->easy)
                curl_easy_cleanup(x->easy);
        curl_slist_free_all(x->headers);
        free(x->buf);
        free(x);
}

/* The cluster token header, when the cluster has one. */
static void add_token(const struct source *s, struct curl_slist **headers) {
        if (!s->cfg.token)
                return;
        char h[HTTPD_TOKEN_MAX + 32];
        snprintf(h, sizeof(h), PROTO_TOKEN_HEADER ": %s", s->cfg.token);
        *headers = curl_slist_append(*headers, h);
}

static unsigned active_to(const struct source *s, const char *peer) {
        unsigned n = 0;
        for (const struct xfer *x = s->running; x; x = x->next)
                n += strcmp(x->peer, peer) == 0;
        return n;
}

static int xfer_launch(struct source *s, struct xfer *x, const char *url,
                       curl_write_callback write);

static int xfer_start(struct source *s, struct job *j, enum xfer_kind kind, const char *peer,
                      bool claimed, const char *self) {
        struct xfer *x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->job = j;
        x->kind = kind;
        x->claimed = claimed;
        snprintf(x->peer, sizeof(x->peer), "%s", peer);
        char hex[DIGEST_HEX_LEN + 1], url[URL_MAX], range[96], wait[64];
        digest_to_hex(&j->digest, hex);
        if (kind == X_LOCATE || kind == X_DIGEST) {
                add_token(s, &x->headers);
                if (j->probing || j->spread || kind == X_DIGEST) /* no claim: only asking */
                        snprintf(url, sizeof(url),
                                 "http://%s" PROTO_LOCATE_PATH "%s?" PROTO_ARG_CHUNK "=%" PRIu32,
                                 peer, hex, j->idx);
                else
                        snprintf(url, sizeof(url),
                                 "http://%s" PROTO_LOCATE_PATH "%s?" PROTO_ARG_CHUNK "=%" PRIu32
                                 "&" PROTO_ARG_NODE "=%s",
                                 peer, hex, j->idx, self);
                x->stall_ms = x->total_ms = LOCATE_TIMEOUT_MS;
        } else {
                x->cap = j->len;
                snprintf(url, sizeof(url), "http://%s" PROTO_BLOB_PATH "%s", peer, hex);
                snprintf(range, sizeof(range), "Range: bytes=%" PRIu64 "-%" PRIu64, j->off,
                         j->off + j->len - 1);
                x->headers = curl_slist_append(x->headers, range);
                add_token(s, &x->headers);
                x->stall_ms = s->cfg.stall_timeout_ms;
                /* A chunk on a peer's disk crosses a cluster network in milliseconds; one that
                 * trickles for twice the stall time goes to the next source instead. */
                x->total_ms = 2 * s->cfg.stall_timeout_ms;
                if (claimed) {
                        /* It answers once the chunk lands: silence is expected that long. */
                        snprintf(wait, sizeof(wait), PROTO_WAIT_HEADER ": %" PRIu64,
                                 s->cfg.claim_wait_ms);
                        x->headers = curl_slist_append(x->headers, wait);
                        x->stall_ms += s->cfg.claim_wait_ms;
                        x->total_ms += s->cfg.claim_wait_ms;
                }
        }
        if (kind != X_CHUNK)
                x->cap = 64 << 10; /* grows, up to LOCATE_BODY_MAX */
        x->buf = malloc(x->cap ? x->cap : 1);
        x->deadline_ms = j->deadline_ms;
        if (!x->buf) {
                xfer_free(x);
                return -ENOMEM;
        }
        return xfer_launch(s, x, url, kind == X_CHUNK ? on_body : on_locate_body);
}

/* Starts X (its headers, buffer and limits set) as a GET of URL whose body goes to WRITE.
 * 0, or -errno with X freed. */
static int xfer_launch(struct source *s, struct xfer *x, const char *url,
                       curl_write_callback write) {
        x->easy = curl_easy_init();
        if (!x->easy) {
                xfer_free(x);
                return -ENOMEM;
        }
        CURL *h = x->easy;
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, x->headers);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write);
        /* A chunk in 16 KiB receives (curl's default) is 64 recvfrom and callbacks per MiB;
         * 512 KiB per chunk transfer, at most max_transfers of them (see source.h). */
        if (x->kind == X_CHUNK || x->kind == X_RUN)
                curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 512L << 10);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)s->cfg.connect_timeout_ms);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, x->curl_error);
        curl_easy_setopt(h, CURLOPT_PRIVATE, x);
        curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
        /* No proxy between nodes of one cluster, whatever the environment says. */
        curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
        x->started_ms = x->last_byte_ms = now_ms();
        if (curl_multi_add_handle(s->multi, h) != CURLM_OK) {
                xfer_free(x);
                return -EIO;
        }
        x->next = s->running;
        s->running = x;
        s->active++;
        return 0;
}

static void xfer_detach(struct source *s, struct xfer *x) {
        curl_multi_remove_handle(s->multi, x->easy);
        for (struct xfer **pp = &s->running; *pp; pp = &(*pp)->next)
                if (*pp == x) {
                        *pp = x->next;
                        break;
                }
        s->active--;
}

/* ---- the job's phases ----------------------------------------------------------------------- */

static void next_home(struct source *s, struct job *j);
static void next_candidate(struct source *s, struct job *j);
static void next_confirm(struct source *s, struct job *j);

/* Writes the holders in L to the index (for blobctl and post-mortems), at most once per
 * RECORD_INTERVAL_MS per blob: a reader locates every chunk, the index needs far less. */
static void record_locations(struct source *s, const struct wire_locate *l) {
        if (!s->cfg.ix)
                return;
        uint64_t now = now_ms();
        for (unsigned i = 0; i < RECORD_SLOTS; i++)
                if (digest_equal(&s->recorded[i].blob, &l->digest) &&
                    now - s->recorded[i].at_ms < RECORD_INTERVAL_MS)
                        return;
        unsigned slot = s->recorded_next++ % RECORD_SLOTS;
        s->recorded[slot].blob = l->digest;
        s->recorded[slot].at_ms = now;
        int64_t expires = (int64_t)time(NULL) + (int64_t)(s->cfg.location_ttl_ms / 1000);
        for (uint32_t i = 0; i < l->nholders; i++)
                if (!l->holders[i].fetching)
                        idx_put_location(s->cfg.ix, &l->digest, l->holders[i].node,
                                         l->holders[i].present, ((size_t)l->nchunks + 7) / 8,
                                         expires);
}

/* Whether answer L is about J's blob, as J knows it, and covers J's chunk. */
static bool answer_fits(const struct source *s, const struct job *j, const struct wire_locate *l) {
        return digest_equal(&l->digest, &j->digest) && l->chunk_size == s->cfg.chunk_size &&
               l->nchunks > j->idx && l->size == j->size;
}

/* J's candidates from answer L (which fits J), in order, and the expected digest, as HOME
 * said it. Leaves J in PEERS, about to try its first candidate. */
static void plan_job(struct source *s, struct job *j, const struct wire_locate *l, const char *home,
                     const char *self) {
        if (l->sha_known && wire_bit(l->sha_known, j->idx)) {
                j->sha = l->sha[j->idx];
                j->sha_known = true;
                snprintf(j->sha_home, sizeof(j->sha_home), "%s", home);
        }
        struct {
                uint64_t key;
                struct candidate c;
        } v[WIRE_MAX_HOLDERS];
        unsigned n = 0;
        for (uint32_t i = 0; i < l->nholders && n < WIRE_MAX_HOLDERS; i++) {
                const struct wire_holder *h = &l->holders[i];
                if (!wire_bit(h->present, j->idx) || strcmp(h->node, self) == 0 ||
                    distrusted(s, h->node, &j->digest))
                        continue;
                uint64_t key = members_rank_key(s->cfg.members, h->node);
                if (key == UINT64_MAX)
                        continue; /* down, unknown or self */
                /* Holders before claimants: bytes on disk beat bytes still on the way. */
                v[n].key = h->fetching ? key / 2 + UINT64_MAX / 2 : key / 2;
                snprintf(v[n].c.id, sizeof(v[n].c.id), "%s", h->node);
                v[n].c.claimed = h->fetching;
                n++;
        }
        for (unsigned a = 1; a < n; a++) /* insertion sort: n is small */
                for (unsigned b = a; b > 0 && v[b].key < v[b - 1].key; b--) {
                        __typeof__(v[0]) t = v[b];
                        v[b] = v[b - 1];
                        v[b - 1] = t;
                }
        j->ncand = 0;
        for (unsigned i = 0; i < n && j->ncand < MAX_CANDIDATES; i++)
                j->cand[j->ncand++] = v[i].c;
        j->phase = PH_PEERS;
        j->cand_next = 0;
}

static void start_job(struct source *s, struct job *j);
static void run_plan(struct source *s, struct job *head, const struct wire_locate *l,
                     const char *home, const char *self);

/* Starts the jobs chained on J->run_next one by one (each locates, or uses the cache). */
static void release_run(struct source *s, struct job *j) {
        struct job *f = j->run_next;
        j->run_next = NULL;
        while (f) {
                struct job *next = f->run_next;
                f->run_next = NULL;
                start_job(s, f);
                f = next;
        }
}

/* What HOME told us about J's chunk (answer *L, whose contents may be taken into the cache):
 * candidates, in order, and the expected digest; a run waiting on J is planned from it. */
static void use_answer(struct source *s, struct job *j, struct wire_locate *l, const char *home,
                       const char *self) {
        if (!answer_fits(s, j, l)) {
                log_debug("locate answer does not fit blob chunk=%" PRIu32, j->idx);
                to_origin(s, j);
                return;
        }
        record_locations(s, l);
        if (l->has_claim && l->claim_granted && l->claim_chunk == j->idx)
                stat_add(s, &s->stats.claims, 1);
        struct lcache_entry *e = lcache_put(s, l, home);
        const struct wire_locate *a = e ? &e->l : l;
        if (j->run_next) {
                run_plan(s, j, a, home, self);
                return;
        }
        plan_job(s, j, a, home, self);
        next_candidate(s, j);
}

static void next_home(struct source *s, struct job *j) {
        char self[PEER_ID_MAX];
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        while (j->home_next < j->nhomes) {
                const char *home = j->homes[j->home_next++];
                if (now_ms() >= j->deadline_ms)
                        break;
                if (self[0] && strcmp(home, self) == 0) {
                        struct wire_locate l;
                        stat_add(s, &s->stats.locates, 1);
                        int r = dir_locate(s->cfg.dir, &j->digest, self, j->idx, now_ms(), &l);
                        if (r == 0 && (l.nholders > 0 || j->home_next >= j->nhomes)) {
                                use_answer(s, j, &l, self, self);
                                wire_locate_free(&l);
                                return;
                        }
                        if (r == 0) {
                                j->probing = true; /* nobody here: maybe elsewhere */
                                wire_locate_free(&l);
                        }
                        continue; /* we know nothing of it: the next home may */
                }
                if (!members_usable(s->cfg.members, home))
                        continue;
                if (!self[0])
                        break; /* we cannot claim without a name: origin */
                int r = xfer_start(s, j, X_LOCATE, home, false, self);
                if (r == 0) {
                        stat_add(s, &s->stats.locates, 1);
                        return;
                }
        }
        to_origin(s, j);
}

/* Whether J has a digest to check PEER's bytes against that is not PEER's own word. */
static bool checkable(const struct job *j, const char *peer) {
        return j->sha_known && strcmp(j->sha_home, peer) != 0;
}

static void next_candidate(struct source *s, struct job *j) {
        char self[PEER_ID_MAX];
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        if (now_ms() < j->not_before_ms) {
                j->next = s->queued;
                s->queued = j;
                return;
        }
        while (j->cand_next < j->ncand) {
                struct candidate *c = &j->cand[j->cand_next];
                if (now_ms() >= j->deadline_ms)
                        break;
                if (!members_usable(s->cfg.members, c->id) || distrusted(s, c->id, &j->digest) ||
                    (j->confirm_failed && !checkable(j, c->id))) {
                        j->cand_next++;
                        continue;
                }
                if (s->active >= s->cfg.max_total || active_to(s, c->id) >= s->cfg.max_per_peer) {
                        /* Wait for a slot; the candidate is tried when one frees. */
                        j->next = s->queued;
                        s->queued = j;
                        return;
                }
                j->cand_next++;
                if (xfer_start(s, j, X_CHUNK, c->id, c->claimed, self) == 0)
                        return;
        }
        to_origin(s, j);
}

/* Whether answer L names a source for J's chunk that use_answer() would try: a holder or
 * claimant of it, not ourselves, not distrusted, not down. */
static bool answer_has_source(struct source *s, const struct job *j, const struct wire_locate *l,
                              const char *self) {
        if (!answer_fits(s, j, l))
                return false;
        for (uint32_t i = 0; i < l->nholders; i++) {
                const struct wire_holder *h = &l->holders[i];
                if (wire_bit(h->present, j->idx) && strcmp(h->node, self) != 0 &&
                    !distrusted(s, h->node, &j->digest) &&
                    members_rank_key(s->cfg.members, h->node) != UINT64_MAX)
                        return true;
        }
        return false;
}

/* Whether answer L names a peer (not a claimant, not ourselves, not down) holding chunk IDX. */
static bool held_by_a_peer(struct source *s, const struct wire_locate *l, uint32_t idx,
                           const char *self) {
        if (idx >= l->nchunks)
                return false;
        for (uint32_t i = 0; i < l->nholders; i++) {
                const struct wire_holder *h = &l->holders[i];
                if (!h->fetching && wire_bit(h->present, idx) && strcmp(h->node, self) != 0 &&
                    members_rank_key(s->cfg.members, h->node) != UINT64_MAX)
                        return true;
        }
        return false;
}

/* Issue 18: the readers of a blob spread their "who holds chunk I?" over its homes
 * (rdv_spread), so no home's load grows with the number of readers. Only the first home
 * grants claims, so that "who fetches this chunk from the origin" is decided in one place:
 * a spread home that names nobody sends the job on to the usual path (first home, with a
 * claim), at the cost of a second round trip for chunks nobody holds yet. Every home hears
 * every announce of the blob, so any of them knows the holders. Returns whether the job was
 * taken care of (answered from our own directory, or a locate started). */
static bool spread_locate(struct source *s, struct job *j, const char *self) {
        size_t pick = rdv_spread(self, &j->digest, j->nhomes);
        if (pick == 0 || !self[0])
                return false; /* the first home: ask it with the claim straight away */
        const char *home = j->homes[pick];
        if (strcmp(home, self) == 0) {
                struct wire_locate l;
                stat_add(s, &s->stats.locates, 1);
                if (dir_locate(s->cfg.dir, &j->digest, NULL, j->idx, now_ms(), &l) < 0)
                        return false;
                bool found = answer_has_source(s, j, &l, self);
                if (found)
                        use_answer(s, j, &l, self, self);
                wire_locate_free(&l);
                return found;
        }
        if (!members_usable(s->cfg.members, home))
                return false;
        j->spread = true;
        if (xfer_start(s, j, X_LOCATE, home, false, self) < 0) {
                j->spread = false;
                return false;
        }
        stat_add(s, &s->stats.locates, 1);
        stat_add(s, &s->stats.spread_locates, 1);
        return true;
}

static void start_job(struct source *s, struct job *j) {
        if (!s->cfg.members) {
                to_origin(s, j);
                return;
        }
        j->nhomes = homes_of(s, &j->digest, j->homes);
        j->phase = PH_LOCATE;
        char self[PEER_ID_MAX];
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        /* A home answered about this blob a moment ago: its answer names the holders of every
         * chunk, and the digests of the chunks after the one it was asked about, so a chunk
         * someone holds whose digest it gave needs no question. Others are asked: the first
         * home grants claims, new holders show up there, and bytes without a digest would
         * wait for one (CONFIRM) after they arrived, a round trip later than a locate. */
        struct lcache_entry *e = self[0] ? lcache_get(s, &j->digest) : NULL;
        if (e && answer_has_source(s, j, &e->l, self) && wire_bit(e->l.sha_known, j->idx)) {
                stat_add(s, &s->stats.locate_cache_hits, 1);
                if (j->run_next) {
                        run_plan(s, j, &e->l, e->home, self);
                        return;
                }
                plan_job(s, j, &e->l, e->home, self);
                next_candidate(s, j);
                return;
        }
        /* A run waits for its first chunk's answer only when a peer held the chunk after it a
         * moment ago: otherwise (a blob new to the cluster, N readers at once) its chunks are
         * claimed one by one at the first home anyway, and waiting would only add a round
         * trip before the other locates start. */
        if (j->run_next) {
                struct lcache_entry *hint = lcache_find(s, &j->digest, LCACHE_HINT_MS);
                if (!hint || !held_by_a_peer(s, &hint->l, j->idx + 1, self))
                        release_run(s, j);
        }
        if (spread_locate(s, j, self))
                return;
        next_home(s, j);
}

/* Whether J is ready to go to its first candidate as part of a run: a holder (not a
 * claimant, whose answer waits), usable, whose bytes we can check without its word. */
static bool run_ready(struct source *s, const struct job *j) {
        if (j->phase != PH_PEERS || j->ncand == 0 || j->cand[0].claimed)
                return false;
        const char *p = j->cand[0].id;
        return checkable(j, p) && members_usable(s->cfg.members, p) &&
               !distrusted(s, p, &j->digest);
}

static int run_start(struct source *s, struct job **jobs, unsigned n, const char *peer);

/* HEAD's answer L (from HOME) is in: plan HEAD and the rest of its run (HEAD->run_next) from
 * it. Chunks some peer holds are grouped, consecutive chunks of one best peer into one ranged
 * GET; chunks the answer names no source for are asked of the homes on their own (their
 * claims are decided there). L is only read before anything starts: starting a job may
 * replace the cache entry L lives in. */
static void run_plan(struct source *s, struct job *head, const struct wire_locate *l,
                     const char *home, const char *self) {
        struct job *a[MAX_RUN];
        bool planned[MAX_RUN];
        unsigned n = 0;
        char h[PEER_ID_MAX];
        snprintf(h, sizeof(h), "%s", home);
        for (struct job *j = head; j && n < MAX_RUN;) { /* source_fetch_run: at most MAX_RUN */
                struct job *next = j->run_next;
                j->run_next = NULL;
                if (j != head) {
                        memcpy(j->homes, head->homes, sizeof(j->homes));
                        j->nhomes = head->nhomes;
                        j->phase = PH_LOCATE;
                }
                a[n++] = j;
                j = next;
        }
        bool need_own = false;
        for (unsigned i = 0; i < n; i++) {
                /* The head's answer decides for it (its claim included); the others are planned
                 * from it only where it names a source. */
                planned[i] = i == 0 ? answer_fits(s, a[i], l) : answer_has_source(s, a[i], l, self);
                if (!planned[i])
                        continue;
                plan_job(s, a[i], l, h, self);
                need_own |= a[i]->ncand > 0 && !checkable(a[i], a[i]->cand[0].id);
        }
        /* The home that answered is the holder (two nodes, each the other's home): its
         * digests are no check of its bytes, but our own directory's are, when we are a home. */
        bool self_home = false;
        for (unsigned i = 0; i < head->nhomes; i++)
                self_home |= strcmp(head->homes[i], self) == 0;
        struct wire_locate own;
        if (need_own && self_home && strcmp(h, self) != 0 &&
            dir_locate(s->cfg.dir, &head->digest, NULL, -1, now_ms(), &own) == 0) {
                for (unsigned i = 0; i < n; i++) {
                        struct job *j = a[i];
                        if (planned[i] && j->ncand > 0 && !checkable(j, j->cand[0].id) &&
                            answer_fits(s, j, &own) && wire_bit(own.sha_known, j->idx)) {
                                j->sha = own.sha[j->idx];
                                j->sha_known = true;
                                snprintf(j->sha_home, sizeof(j->sha_home), "%s", self);
                        }
                }
                wire_locate_free(&own);
        }
        /* L is not read from here on. */
        for (unsigned i = 0; i < n;) {
                unsigned k = i + 1;
                if (planned[i] && run_ready(s, a[i]))
                        while (k < n && planned[k] && run_ready(s, a[k]) &&
                               strcmp(a[k]->cand[0].id, a[i]->cand[0].id) == 0)
                                k++;
                if (k - i >= 2 && s->active < s->cfg.max_total &&
                    active_to(s, a[i]->cand[0].id) < s->cfg.max_per_peer &&
                    run_start(s, a + i, k - i, a[i]->cand[0].id) == 0) {
                        i = k;
                        continue;
                }
                for (; i < k; i++) {
                        if (planned[i])
                                next_candidate(s, a[i]);
                        else
                                start_job(s, a[i]);
                }
        }
}

/* Queues BUF (J's chunk from PEER, now owned by the verifier) for checking against J->sha.
 * 0; -ENOMEM (BUF freed). */
static int verify_submit(struct source *s, struct job *j, uint8_t *buf, const char *peer,
                         uint64_t ttfb_us) {
        struct verify_item *v = calloc(1, sizeof(*v));
        if (!v) {
                free(buf);
                return -ENOMEM;
        }
        v->job = j;
        v->buf = buf;
        v->want = j->sha;
        v->ttfb_us = ttfb_us;
        snprintf(v->peer, sizeof(v->peer), "%s", peer);
        pthread_mutex_lock(&s->vq_lock);
        *s->vq_tail = v;
        s->vq_tail = &v->next;
        pthread_cond_signal(&s->vq_cond);
        pthread_mutex_unlock(&s->vq_lock);
        return 0;
}

static void confirm_start(struct source *s, struct job *j) {
        j->phase = PH_CONFIRM;
        j->confirm_next = 0;
        j->confirm_until_ms = now_ms() + s->cfg.digest_wait_ms;
        if (j->confirm_until_ms > j->deadline_ms)
                j->confirm_until_ms = j->deadline_ms;
        next_confirm(s, j);
}

/* CONFIRM found the digest of J's held chunk at HOME: check the bytes against it. */
static void confirm_found(struct source *s, struct job *j, const struct digest *sha,
                          const char *home) {
        j->sha = *sha;
        j->sha_known = true;
        snprintf(j->sha_home, sizeof(j->sha_home), "%s", home);
        uint8_t *buf = j->held;
        j->held = NULL;
        j->phase = PH_PEERS;
        if (verify_submit(s, j, buf, j->held_peer, j->held_ttfb_us) < 0) {
                stat_add(s, &s->stats.peer_failures, 1);
                next_candidate(s, j);
        }
}

/* CONFIRM: asks the next home (not the sender of the held bytes) for the chunk's digest;
 * after a round without one, pauses and asks again until confirm_until_ms, then gives the
 * bytes up as unchecked. */
static void next_confirm(struct source *s, struct job *j) {
        char self[PEER_ID_MAX];
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        uint64_t now = now_ms();
        if (now < j->not_before_ms) {
                j->next = s->queued;
                s->queued = j;
                return;
        }
        bool any = false; /* a home other than the sender exists: waiting may pay */
        for (unsigned i = 0; i < j->nhomes && !any; i++)
                any = strcmp(j->homes[i], j->held_peer) != 0;
        while (any && j->confirm_next < j->nhomes && now < j->confirm_until_ms) {
                const char *home = j->homes[j->confirm_next++];
                if (strcmp(home, j->held_peer) == 0)
                        continue; /* its word about its own bytes is what we lack */
                if (self[0] && strcmp(home, self) == 0) {
                        struct wire_locate l;
                        if (dir_locate(s->cfg.dir, &j->digest, NULL, j->idx, now, &l) == 0) {
                                bool found = l.nchunks > j->idx && l.size == j->size &&
                                             wire_bit(l.sha_known, j->idx);
                                struct digest sha = found ? l.sha[j->idx] : (struct digest){0};
                                wire_locate_free(&l);
                                if (found) {
                                        confirm_found(s, j, &sha, self);
                                        return;
                                }
                        }
                        continue;
                }
                if (!self[0] || !members_usable(s->cfg.members, home))
                        continue;
                if (xfer_start(s, j, X_DIGEST, home, false, self) == 0) {
                        stat_add(s, &s->stats.locates, 1);
                        return;
                }
        }
        if (any && now + CONFIRM_POLL_MS < j->confirm_until_ms) {
                j->confirm_next = 0; /* another round, once the claimant had time to announce */
                j->not_before_ms = now + CONFIRM_POLL_MS;
                j->next = s->queued;
                s->queued = j;
                return;
        }
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&j->digest, hex);
        log_debug("peer chunk refused unchecked peer=%s digest=sha256:%s chunk=%" PRIu32
                  " why=\"no home other than the sender knows its digest\"",
                  j->held_peer, hex, j->idx);
        free(j->held);
        j->held = NULL;
        j->confirm_failed = true;
        j->phase = PH_PEERS;
        pthread_mutex_lock(&s->lock);
        s->stats.peer_failures++;
        s->stats.peer_unchecked++;
        pthread_mutex_unlock(&s->lock);
        next_candidate(s, j);
}

/* ---- coalesced runs ------------------------------------------------------------------------ */

/* The body of a run: bytes fill the chunk being received; a full chunk goes to a verifier at
 * once (its readers do not wait for the rest of the run), with its own digest from a home. */
static size_t on_run_body(char *data, size_t size, size_t nmemb, void *ud) {
        struct xfer *x = ud;
        size_t n = size * nmemb, left = n;
        x->last_byte_ms = now_ms();
        if (x->delivered == 0 && x->got == 0) {
                /* An error answer's body is not chunk bytes (a short last chunk could look
                 * whole): take only a partial answer, or the whole blob when asked whole. */
                long status = 0;
                curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
                if (status != 206 &&
                    !(status == 200 && x->run[0]->off == 0 &&
                      x->run[x->nrun - 1]->off + x->run[x->nrun - 1]->len == x->run[0]->size))
                        return 0;
                curl_off_t t = 0;
                if (curl_easy_getinfo(x->easy, CURLINFO_STARTTRANSFER_TIME_T, &t) == CURLE_OK)
                        x->ttfb_us = (uint64_t)t;
        }
        while (left) {
                if (x->delivered >= x->nrun || !x->buf) {
                        x->overflow = true;
                        return 0;
                }
                struct job *j = x->run[x->delivered];
                size_t take = j->len - x->got < left ? j->len - x->got : left;
                memcpy(x->buf + x->got, data, take);
                x->got += take;
                data += take;
                left -= take;
                if (x->got < j->len)
                        break;
                uint8_t *buf = x->buf;
                x->buf = NULL;
                x->got = 0;
                if (verify_submit(j->s, j, buf, x->peer, x->ttfb_us) < 0)
                        return 0; /* J is still ours: run_done sends it on */
                x->delivered++;
                if (x->delivered < x->nrun) {
                        x->buf = malloc(x->run[x->delivered]->len);
                        if (!x->buf)
                                return 0;
                }
        }
        return n;
}

/* One ranged GET to PEER for JOBS[0 .. N) (consecutive chunks, each with a candidate list
 * whose first entry is PEER and a digest to check it by). 0, or -errno (nothing started). */
static int run_start(struct source *s, struct job **jobs, unsigned n, const char *peer) {
        struct xfer *x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->kind = X_RUN;
        memcpy(x->run, jobs, n * sizeof(*jobs));
        x->nrun = n;
        x->blob = jobs[0]->digest;
        x->deadline_ms = jobs[0]->deadline_ms;
        snprintf(x->peer, sizeof(x->peer), "%s", peer);
        char hex[DIGEST_HEX_LEN + 1], url[URL_MAX], range[96];
        digest_to_hex(&x->blob, hex);
        snprintf(url, sizeof(url), "http://%s" PROTO_BLOB_PATH "%s", peer, hex);
        snprintf(range, sizeof(range), "Range: bytes=%" PRIu64 "-%" PRIu64, jobs[0]->off,
                 jobs[n - 1]->off + jobs[n - 1]->len - 1);
        x->headers = curl_slist_append(x->headers, range);
        add_token(s, &x->headers);
        x->stall_ms = s->cfg.stall_timeout_ms;
        x->total_ms = 2 * s->cfg.stall_timeout_ms * n; /* as a chunk's, per chunk */
        x->cap = jobs[0]->len;
        x->buf = malloc(x->cap);
        if (!x->buf) {
                xfer_free(x);
                return -ENOMEM;
        }
        int r = xfer_launch(s, x, url, on_run_body);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < n; i++)
                jobs[i]->cand_next = 1; /* the rest of its candidates, should the run fail */
        pthread_mutex_lock(&s->lock);
        s->stats.run_transfers++;
        s->stats.run_chunks += n;
        pthread_mutex_unlock(&s->lock);
        return 0;
}

/* A run ended (or was given up): the chunks not delivered go on, each on its own, to their
 * next source; the peer is reported when it broke the transfer. */
static void run_done(struct source *s, struct xfer *x, CURLcode cc, long status) {
        if (x->delivered == x->nrun)
                return; /* every chunk is with a verifier */
        uint64_t now = now_ms();
        const char *why;
        bool peer_fault = false, busy = false, restart = false;
        if (x->stalled) {
                why = "stalled";
                peer_fault = true;
        } else if (status == 503) {
                why = "busy";
                busy = true;
        } else if (status != 206 && status != 200) {
                why = status == 416 ? "does not hold the run (http 416)" : "refused";
                restart = status == 416; /* our picture of it was stale: ask again */
        } else if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && !x->overflow)) {
                why = x->curl_error[0] ? x->curl_error : curl_easy_strerror(cc);
                peer_fault = true;
        } else if (cc == CURLE_WRITE_ERROR) {
                why = "out of memory";
        } else {
                why = "short or long answer";
                peer_fault = true;
        }
        lcache_drop(s, &x->blob);
        if (!busy) {
                stat_add(s, &s->stats.peer_failures, 1);
                if (peer_fault)
                        members_report_failure(s->cfg.members, x->peer, why);
                log_debug("peer run failed peer=%s chunk=%" PRIu32 " chunks=%u delivered=%u"
                          " why=\"%s\" ms=%" PRIu64,
                          x->peer, x->run[x->delivered]->idx, x->nrun, x->delivered, why,
                          now - x->started_ms);
        }
        for (unsigned i = x->delivered; i < x->nrun; i++) {
                struct job *j = x->run[i];
                if (busy && j->busy_retries < BUSY_RETRIES) {
                        j->busy_retries++;
                        j->cand_next = 0;
                        uint64_t pause = BUSY_PAUSE_MS * j->busy_retries;
                        j->not_before_ms =
                                now + (pause < BUSY_PAUSE_MAX_MS ? pause : BUSY_PAUSE_MAX_MS);
                        j->next = s->queued;
                        s->queued = j;
                } else if (restart) {
                        j->ncand = j->cand_next = 0;
                        j->sha_known = false;
                        start_job(s, j);
                } else {
                        next_candidate(s, j);
                }
        }
        x->delivered = x->nrun;
}

/* The runs from PEER of BLOB stop here (it sent a chunk that failed its digest): their
 * remaining chunks go to their next sources. */
static void abort_runs(struct source *s, const char *peer, const struct digest *blob) {
        for (;;) {
                struct xfer *x = s->running;
                while (x && !(x->kind == X_RUN && strcmp(x->peer, peer) == 0 &&
                              digest_equal(&x->blob, blob)))
                        x = x->next;
                if (!x)
                        return;
                xfer_detach(s, x);
                for (unsigned i = x->delivered; i < x->nrun; i++)
                        next_candidate(s, x->run[i]);
                x->delivered = x->nrun;
                xfer_free(x);
        }
}

/* A digest query (CONFIRM) ended. */
static void digest_done(struct source *s, struct xfer *x, CURLcode cc, long status) {
        struct job *j = x->job;
        if (cc == CURLE_OK && status == 200) {
                struct wire_locate l;
                char reason[128];
                if (wire_locate_parse((const char *)x->buf, x->got, &l, reason, sizeof(reason)) ==
                    0) {
                        bool found = digest_equal(&l.digest, &j->digest) && l.size == j->size &&
                                     l.chunk_size == s->cfg.chunk_size && l.nchunks > j->idx &&
                                     wire_bit(l.sha_known, j->idx);
                        struct digest sha = found ? l.sha[j->idx] : (struct digest){0};
                        wire_locate_free(&l);
                        if (found) {
                                confirm_found(s, j, &sha, x->peer);
                                return;
                        }
                }
        } else if (cc != CURLE_OK || x->stalled) {
                stat_add(s, &s->stats.locate_failures, 1);
                if (now_ms() < j->deadline_ms && cc != CURLE_WRITE_ERROR)
                        members_report_failure(s->cfg.members, x->peer,
                                               x->stalled ? "stalled" : curl_easy_strerror(cc));
        }
        next_confirm(s, j);
}

/* A chunk transfer ended: verify and finish, or move on. */
static void chunk_done(struct source *s, struct xfer *x, CURLcode cc, long status) {
        struct job *j = x->job;
        uint64_t now = now_ms();
        const char *why = NULL;
        char status_why[48];
        bool peer_fault = false;
        if (x->stalled) {
                why = "stalled";
                peer_fault = true;
        } else if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && x->overflow)) {
                why = x->curl_error[0] ? x->curl_error : curl_easy_strerror(cc);
                peer_fault = true;
        } else if (status == 503 && j->busy_retries < BUSY_RETRIES) {
                /* Busy serving others: it holds the chunk, so ask it again shortly rather
                 * than move on (the next source may be the origin). */
                j->busy_retries++;
                j->cand_next--;
                uint64_t pause = BUSY_PAUSE_MS * j->busy_retries;
                j->not_before_ms = now + (pause < BUSY_PAUSE_MAX_MS ? pause : BUSY_PAUSE_MAX_MS);
                j->next = s->queued;
                s->queued = j;
                return;
        } else if (status != 206 && status != 200) {
                snprintf(status_why, sizeof(status_why), "%s (http %ld)",
                         status == 416 ? "does not hold it" : "refused", status);
                why = status_why;
        } else if (x->overflow || x->got != j->len) {
                why = "short or long answer";
                peer_fault = true;
        }
        if (!why) {
                uint64_t ttfb_us = 0;
                curl_off_t t = 0;
                if (!x->claimed && /* a claimant's wait is not its latency */
                    curl_easy_getinfo(x->easy, CURLINFO_STARTTRANSFER_TIME_T, &t) == CURLE_OK)
                        ttfb_us = (uint64_t)t;
                uint8_t *buf = x->buf;
                x->buf = NULL;
                if (checkable(j, x->peer)) {
                        if (verify_submit(s, j, buf, x->peer, ttfb_us) == 0)
                                return; /* the verifier finishes the job, or hands it back */
                        why = "out of memory";
                } else {
                        /* Only the sender's word for these bytes so far: hold them and ask
                         * the other homes for the chunk's digest. */
                        free(j->held);
                        j->held = buf;
                        snprintf(j->held_peer, sizeof(j->held_peer), "%s", x->peer);
                        j->held_ttfb_us = ttfb_us;
                        confirm_start(s, j);
                        return;
                }
        }
        stat_add(s, &s->stats.peer_failures, 1);
        lcache_drop(s, &j->digest);
        if (peer_fault)
                members_report_failure(s->cfg.members, x->peer, why);
        log_debug("peer transfer failed peer=%s chunk=%" PRIu32 " why=\"%s\" ms=%" PRIu64, x->peer,
                  j->idx, why, now - x->started_ms);
        next_candidate(s, j);
}

static void locate_done(struct source *s, struct xfer *x, CURLcode cc, long status) {
        struct job *j = x->job;
        if (cc == CURLE_OK && status == 200) {
                struct wire_locate l;
                char reason[128];
                if (wire_locate_parse((const char *)x->buf, x->got, &l, reason, sizeof(reason)) ==
                    0) {
                        char self[PEER_ID_MAX];
                        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                                self[0] = '\0';
                        bool spread = j->spread;
                        j->spread = false;
                        if (!spread || answer_has_source(s, j, &l, self)) {
                                use_answer(s, j, &l, x->peer, self);
                                wire_locate_free(&l);
                                return;
                        }
                        /* Nobody holds it: the first home decides who fetches it. */
                        wire_locate_free(&l);
                        stat_add(s, &s->stats.spread_misses, 1);
                        next_home(s, j);
                        return;
                }
                log_debug("malformed locate answer home=%s reason=\"%s\"", x->peer, reason);
        }
        if (cc != CURLE_OK || x->stalled) {
                stat_add(s, &s->stats.locate_failures, 1);
                /* Our own deadline or an answer too large to take is not the home's fault. */
                bool ours = now_ms() >= j->deadline_ms || cc == CURLE_WRITE_ERROR;
                if (!ours)
                        members_report_failure(s->cfg.members, x->peer,
                                               x->stalled ? "stalled" : curl_easy_strerror(cc));
        }
        j->spread = false;
        next_home(s, j); /* 404: this home does not know it; another may */
}

/* A locate body can be larger than the first buffer: grow it, up to the bound. */
static size_t on_locate_body(char *data, size_t size, size_t nmemb, void *ud) {
        struct xfer *x = ud;
        size_t n = size * nmemb;
        x->last_byte_ms = now_ms();
        if (x->got + n > x->cap) {
                size_t cap = x->cap;
                while (cap < x->got + n && cap < LOCATE_BODY_MAX)
                        cap *= 2;
                if (cap < x->got + n)
                        return 0;
                uint8_t *b = realloc(x->buf, cap);
                if (!b)
                        return 0;
                x->buf = b;
                x->cap = cap;
        }
        memcpy(x->buf + x->got, data, n);
        x->got += n;
        return n;
}

static void finish_transfers(struct source *s) {
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(s->multi, &left))) {
                if (m->msg != CURLMSG_DONE)
                        continue;
                struct xfer *x = NULL;
                curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
                CURLcode cc = m->data.result;
                long status = 0;
                curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
                xfer_detach(s, x);
                if (x->kind == X_LOCATE)
                        locate_done(s, x, cc, status);
                else if (x->kind == X_DIGEST)
                        digest_done(s, x, cc, status);
                else if (x->kind == X_RUN)
                        run_done(s, x, cc, status);
                else
                        chunk_done(s, x, cc, status);
                xfer_free(x);
        }
}

/* Transfers that received nothing for their stall time, took longer than their total time,
 * or outlived their job's deadline are ended as stalled: the peer is silent (a link that
 * drops packets refuses nothing) or too slow to be worth waiting for. */
static void check_stalls(struct source *s) {
        uint64_t now = now_ms();
        struct xfer *x = s->running;
        while (x) {
                struct xfer *next = x->next;
                if (now - x->last_byte_ms >= x->stall_ms || now - x->started_ms >= x->total_ms ||
                    now >= x->deadline_ms) {
                        x->stalled = true;
                        xfer_detach(s, x);
                        if (x->kind == X_LOCATE)
                                locate_done(s, x, CURLE_OPERATION_TIMEDOUT, 0);
                        else if (x->kind == X_DIGEST)
                                digest_done(s, x, CURLE_OPERATION_TIMEDOUT, 0);
                        else if (x->kind == X_RUN)
                                run_done(s, x, CURLE_OPERATION_TIMEDOUT, 0);
                        else
                                chunk_done(s, x, CURLE_OPERATION_TIMEDOUT, 0);
                        xfer_free(x);
                }
                x = next;
        }
}

static void start_queued(struct source *s) {
        struct job *q = s->queued;
        s->queued = NULL;
        while (q) { /* each re-queues itself if still no slot */
                struct job *next = q->next;
                if (q->phase == PH_CONFIRM)
                        next_confirm(s, q);
                else
                        next_candidate(s, q);
                q = next;
        }
}

/* Verifier thread: checks received chunks. A good one finishes its job here (the done
 * callback may run on any of our threads); a bad one goes back to the transfer thread, which
 * owns the distrust table and the next-source logic. */
static void *verify_main(void *arg) {
        struct source *s = arg;
        pthread_mutex_lock(&s->vq_lock);
        for (;;) {
                struct verify_item *v = s->vq_head;
                if (!v) {
                        if (s->vstop)
                                break;
                        pthread_cond_wait(&s->vq_cond, &s->vq_lock);
                        continue;
                }
                s->vq_head = v->next;
                if (!s->vq_head)
                        s->vq_tail = &s->vq_head;
                pthread_mutex_unlock(&s->vq_lock);

                struct job *j = v->job;
                struct digest got;
                digest_sha256(v->buf, j->len, &got);
                if (digest_equal(&got, &v->want)) {
                        members_report_success(s->cfg.members, v->peer, v->ttfb_us, j->len);
                        pthread_mutex_lock(&s->lock);
                        s->stats.peer_bytes += j->len;
                        s->stats.peer_chunks++;
                        pthread_mutex_unlock(&s->lock);
                        job_done(j, 0, NULL, v->buf, j->len, &got);
                } else {
                        free(v->buf);
                        snprintf(j->bad_peer, sizeof(j->bad_peer), "%s", v->peer);
                        pthread_mutex_lock(&s->lock);
                        j->next = s->returned;
                        s->returned = j;
                        pthread_mutex_unlock(&s->lock);
                        curl_multi_wakeup(s->multi);
                }
                free(v);
                pthread_mutex_lock(&s->vq_lock);
        }
        pthread_mutex_unlock(&s->vq_lock);
        return NULL;
}

/* Transfer thread: a chunk whose bytes did not match; distrust its sender for the blob and
 * try the next source. */
static void corrupt_returned(struct source *s, struct job *j) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&j->digest, hex);
        log_warning("peer sent a corrupt chunk peer=%s digest=sha256:%s chunk=%" PRIu32
                    " hint=\"not asking it for this blob again\"",
                    j->bad_peer, hex, j->idx);
        distrust_add(s, j->bad_peer, &j->digest);
        members_report_failure(s->cfg.members, j->bad_peer, "corrupt chunk");
        stat_add(s, &s->stats.peer_corrupt, 1);
        lcache_drop(s, &j->digest);
        abort_runs(s, j->bad_peer, &j->digest);
        next_candidate(s, j);
}

static void *source_main(void *arg) {
        struct source *s = arg;
        for (;;) {
                pthread_mutex_lock(&s->lock);
                bool stopping = s->stopping;
                struct job *in = s->incoming;
                s->incoming = NULL;
                struct job *back = stopping ? NULL : s->returned;
                if (!stopping)
                        s->returned = NULL;
                pthread_mutex_unlock(&s->lock);
                if (stopping) {
                        while (in) {
                                struct job *next = in->next;
                                job_done(in, -ECANCELED, "shutting down", NULL, 0, NULL);
                                in = next;
                        }
                        break;
                }
                while (back) {
                        struct job *next = back->next;
                        corrupt_returned(s, back);
                        back = next;
                }
                /* Reverse to keep arrival order. */
                struct job *rev = NULL;
                while (in) {
                        struct job *next = in->next;
                        in->next = rev;
                        rev = in;
                        in = next;
                }
                while (rev) {
                        struct job *next = rev->next;
                        start_job(s, rev);
                        rev = next;
                }
                int running = 0;
                curl_multi_perform(s->multi, &running);
                finish_transfers(s);
                check_stalls(s);
                if (s->queued)
                        start_queued(s);
                curl_multi_poll(s->multi, NULL, 0, POLL_MS, NULL);
        }
        /* Stopping: fail what runs and what waits. */
        while (s->running) {
                struct xfer *x = s->running;
                xfer_detach(s, x);
                if (x->kind == X_RUN)
                        for (unsigned i = x->delivered; i < x->nrun; i++)
                                job_done(x->run[i], -ECANCELED, "shutting down", NULL, 0, NULL);
                else
                        job_done(x->job, -ECANCELED, "shutting down", NULL, 0, NULL);
                xfer_free(x);
        }
        while (s->queued) {
                struct job *j = s->queued;
                s->queued = j->next;
                job_done(j, -ECANCELED, "shutting down", NULL, 0, NULL);
        }
        return NULL;
}

/* ---- public --------------------------------------------------------------------------------- */

int source_new(const struct source_config *cfg, struct source **ret) {
        struct source *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->cfg = *cfg;
        if (!s->cfg.max_total)
                s->cfg.max_total = 64;
        if (!s->cfg.max_per_peer)
                s->cfg.max_per_peer = 8;
        if (!s->cfg.homes)
                s->cfg.homes = 3;
        if (!s->cfg.digest_wait_ms)
                s->cfg.digest_wait_ms = DIGEST_WAIT_DEFAULT_MS;
        pthread_mutex_init(&s->lock, NULL);
        pthread_mutex_init(&s->vq_lock, NULL);
        pthread_cond_init(&s->vq_cond, NULL);
        s->vq_tail = &s->vq_head;
        s->multi = curl_multi_init();
        if (!s->multi) {
                source_free(s);
                return -ENOMEM;
        }
        curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)s->cfg.max_per_peer);
        curl_multi_setopt(s->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)s->cfg.max_total);
        int r = -pthread_create(&s->thread, NULL, source_main, s);
        if (r < 0) {
                source_free(s);
                return r;
        }
        s->thread_started = true;
        for (unsigned i = 0; i < VERIFIERS; i++) {
                r = -pthread_create(&s->verifiers[i], NULL, verify_main, s);
                if (r < 0) {
                        source_free(s);
                        return r;
                }
                s->nverifiers++;
        }
        *ret = s;
        return 0;
}

void source_free(struct source *s) {
        if (!s)
                return;
        if (s->thread_started) {
                pthread_mutex_lock(&s->lock);
                s->stopping = true;
                pthread_mutex_unlock(&s->lock);
                curl_multi_wakeup(s->multi);
                pthread_join(s->thread, NULL);
        }
        /* The verifiers finish what they hold (a good chunk completes its job; a bad one is
         * handed back, and failed below: nobody will try another source now). */
        pthread_mutex_lock(&s->vq_lock);
        s->vstop = true;
        pthread_cond_broadcast(&s->vq_cond);
        pthread_mutex_unlock(&s->vq_lock);
        for (unsigned i = 0; i < s->nverifiers; i++)
                pthread_join(s->verifiers[i], NULL);
        while (s->returned) {
                struct job *j = s->returned;
                s->returned = j->next;
                job_done(j, -ECANCELED, "shutting down", NULL, 0, NULL);
        }
        if (s->multi)
                curl_multi_cleanup(s->multi);
        for (unsigned i = 0; i < LCACHE_SLOTS; i++)
                lcache_evict(s, &s->lcache[i]);
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->vq_lock);
        pthread_cond_destroy(&s->vq_cond);
        free(s);
}

/* A job for chunk IDX (LEN bytes at OFF), or NULL (out of memory). */
static struct job *job_new(struct source *s, const struct digest *digest, uint64_t size,
                           const char *source, uint32_t idx, uint64_t off, size_t len,
                           uint64_t deadline_ms, origin_done_fn done, void *ud) {
        struct job *j = calloc(1, sizeof(*j));
        if (!j)
                return NULL;
        j->s = s;
        j->digest = *digest;
        j->size = size;
        snprintf(j->origin_source, sizeof(j->origin_source), "%s", source);
        j->idx = idx;
        j->off = off;
        j->len = len;
        j->deadline_ms = deadline_ms;
        j->done = done;
        j->ud = ud;
        return j;
}

/* Hands J (and the run chained on it) to the thread. */
static void job_submit(struct source *s, struct job *j) {
        pthread_mutex_lock(&s->lock);
        bool stopping = s->stopping;
        if (!stopping) {
                j->next = s->incoming;
                s->incoming = j;
        }
        pthread_mutex_unlock(&s->lock);
        if (stopping) {
                job_done(j, -ECANCELED, "shutting down", NULL, 0, NULL);
                return;
        }
        curl_multi_wakeup(s->multi);
}

void source_fetch_run(struct source *s, const struct digest *digest, uint64_t size,
                      const char *source, uint32_t idx, unsigned n, size_t chunk_size,
                      uint64_t deadline_ms, origin_done_fn done, void *const *uds) {
        uint64_t off = (uint64_t)idx * chunk_size;
        uint64_t end =
                off + (uint64_t)n * chunk_size < size ? off + (uint64_t)n * chunk_size : size;
        if (!s->cfg.members) { /* alone: the whole run is one GET to the origin */
                stat_add(s, &s->stats.origin_chunks, n);
                origin_fetch_run(s->cfg.origin, source, digest, off, end, chunk_size, n,
                                 deadline_ms, done, uds);
                return;
        }
        /* With peers, the run's first chunk is located (or answered from the cache) and the
         * answer plans the whole run: consecutive chunks one peer holds go in one GET (see
         * run_plan), the others their own way. Runs longer than MAX_RUN are cut. */
        struct job *head = NULL, *tail = NULL;
        unsigned len = 0;
        for (unsigned i = 0; i < n; i++) {
                uint64_t coff = off + (uint64_t)i * chunk_size;
                size_t clen = coff + chunk_size < end ? chunk_size : (size_t)(end - coff);
                struct job *j = job_new(s, digest, size, source, idx + i, coff, clen, deadline_ms,
                                        done, uds[i]);
                if (!j) {
                        done(uds[i], -ENOMEM, "out of memory", NULL, 0, NULL);
                        continue;
                }
                if (!head || len == MAX_RUN) {
                        if (head)
                                job_submit(s, head);
                        head = tail = j;
                        len = 1;
                        continue;
                }
                tail->run_next = j;
                tail = j;
                len++;
        }
        if (head)
                job_submit(s, head);
}

void source_fetch(struct source *s, const struct digest *digest, uint64_t size, const char *source,
                  uint32_t idx, uint64_t off, size_t len, uint64_t deadline_ms, origin_done_fn done,
                  void *ud) {
        if (!s->cfg.members) { /* alone: no detour through our thread */
                stat_add(s, &s->stats.origin_chunks, 1);
                origin_fetch(s->cfg.origin, source, digest, off, len, deadline_ms, done, ud);
                return;
        }
        struct job *j = job_new(s, digest, size, source, idx, off, len, deadline_ms, done, ud);
        if (!j) {
                done(ud, -ENOMEM, "out of memory", NULL, 0, NULL);
                return;
        }
        job_submit(s, j);
}

struct grow_buf {
        char *p;
        size_t len, cap;
};

static size_t on_sync_body(char *data, size_t size, size_t nmemb, void *ud) {
        struct grow_buf *g = ud;
        size_t n = size * nmemb;
        if (g->len + n + 1 > g->cap) {
                size_t cap = g->cap ? g->cap : 16384;
                while (cap < g->len + n + 1)
                        cap *= 2;
                if (cap > LOCATE_BODY_MAX)
                        return 0;
                char *p = realloc(g->p, cap);
                if (!p)
                        return 0;
                g->p = p;
                g->cap = cap;
        }
        memcpy(g->p + g->len, data, n);
        g->len += n;
        return n;
}

int source_lookup(struct source *s, const struct digest *digest, uint64_t deadline_ms,
                  uint64_t *ret_size, char *ret_source, size_t source_len) {
        if (!s->cfg.members)
                return -ENOTCONN;
        char homes[MAX_HOMES][PEER_ID_MAX], self[PEER_ID_MAX];
        unsigned n = homes_of(s, digest, homes);
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        bool answered = false;
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(digest, hex);
        for (unsigned i = 0; i < n; i++) {
                uint64_t now = now_ms();
                if (now >= deadline_ms)
                        break;
                struct wire_locate l;
                int r;
                if (self[0] && strcmp(homes[i], self) == 0) {
                        r = dir_locate(s->cfg.dir, digest, NULL, -1, now, &l);
                        answered = true;
                } else {
                        if (!members_usable(s->cfg.members, homes[i]))
                                continue;
                        char url[URL_MAX];
                        snprintf(url, sizeof(url), "http://%s" PROTO_LOCATE_PATH "%s", homes[i],
                                 hex);
                        struct grow_buf g = {0};
                        struct curl_slist *hdr = NULL;
                        add_token(s, &hdr);
                        CURL *h = curl_easy_init();
                        if (!h) {
                                curl_slist_free_all(hdr);
                                return -ENOMEM;
                        }
                        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
                        uint64_t budget = deadline_ms - now;
                        if (budget > LOCATE_TIMEOUT_MS)
                                budget = LOCATE_TIMEOUT_MS;
                        curl_easy_setopt(h, CURLOPT_URL, url);
                        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
                        curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
                        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
                        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                                         (long)s->cfg.connect_timeout_ms);
                        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)budget);
                        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_sync_body);
                        curl_easy_setopt(h, CURLOPT_WRITEDATA, &g);
                        CURLcode cc = curl_easy_perform(h);
                        long status = 0;
                        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
                        curl_easy_cleanup(h);
                        curl_slist_free_all(hdr);
                        if (cc != CURLE_OK) {
                                members_report_failure(s->cfg.members, homes[i],
                                                       curl_easy_strerror(cc));
                                free(g.p);
                                continue;
                        }
                        answered = true;
                        char reason[128];
                        r = status == 200 ? wire_locate_parse(g.p ? g.p : "", g.len, &l, reason,
                                                              sizeof(reason))
                                          : -ENOENT;
                        free(g.p);
                }
                if (r < 0)
                        continue;
                bool fits = l.chunk_size == s->cfg.chunk_size && digest_equal(&l.digest, digest);
                if (fits) {
                        *ret_size = l.size;
                        snprintf(ret_source, source_len, "%s", l.source);
                }
                wire_locate_free(&l);
                if (fits)
                        return 0;
        }
        return answered ? -ENOENT : -EHOSTUNREACH;
}

/* One GET of URL into a malloc'd body (*RET, *RET_LEN; free()), within BUDGET_MS. 0 and the
 * status in *RET_STATUS, or -EHOSTUNREACH (reported to the membership as a failure of HOME). */
static int sync_get(struct source *s, const char *home, const char *url, uint64_t budget_ms,
                    long *ret_status, char **ret, size_t *ret_len) {
        struct grow_buf g = {0};
        struct curl_slist *hdr = NULL;
        add_token(s, &hdr);
        CURL *h = curl_easy_init();
        if (!h) {
                curl_slist_free_all(hdr);
                return -ENOMEM;
        }
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
        curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)s->cfg.connect_timeout_ms);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)budget_ms);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_sync_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &g);
        CURLcode cc = curl_easy_perform(h);
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(h);
        curl_slist_free_all(hdr);
        if (cc != CURLE_OK) {
                members_report_failure(s->cfg.members, home, curl_easy_strerror(cc));
                free(g.p);
                return -EHOSTUNREACH;
        }
        *ret_status = status;
        *ret = g.p;
        *ret_len = g.len;
        return 0;
}

int source_locate_index(struct source *s, const struct digest *layer, uint64_t deadline_ms,
                        struct digest *ret_index, uint64_t *ret_size) {
        if (!s->cfg.members)
                return -ENOTCONN;
        char homes[MAX_HOMES][PEER_ID_MAX], self[PEER_ID_MAX];
        unsigned n = homes_of(s, layer, homes);
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        bool answered = false;
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(layer, hex);
        for (unsigned i = 0; i < n; i++) {
                uint64_t now = now_ms();
                if (now >= deadline_ms)
                        break;
                struct wire_index x;
                int r;
                stat_add(s, &s->stats.index_locates, 1);
                if (self[0] && strcmp(homes[i], self) == 0) {
                        r = dir_locate_index(s->cfg.dir, layer, now, &x);
                        answered = true;
                } else {
                        if (!members_usable(s->cfg.members, homes[i]))
                                continue;
                        char url[URL_MAX], *body = NULL, reason[128];
                        snprintf(url, sizeof(url), "http://%s" PROTO_INDEX_PATH "%s", homes[i],
                                 hex);
                        uint64_t budget = deadline_ms - now;
                        if (budget > LOCATE_TIMEOUT_MS)
                                budget = LOCATE_TIMEOUT_MS;
                        long status = 0;
                        size_t len = 0;
                        r = sync_get(s, homes[i], url, budget, &status, &body, &len);
                        if (r == -ENOMEM)
                                return r;
                        if (r < 0)
                                continue;
                        answered = true;
                        /* 404: this home knows no index of the layer, or predates the route.
                         * Anything else but 200 (401: another cluster token) is no answer. */
                        r = status == 200 ? wire_index_parse(body ? body : "", len, &x, reason,
                                                             sizeof(reason))
                                          : -ENOENT;
                        if (status == 200 && r < 0)
                                log_debug("malformed index answer home=%s reason=\"%s\"", homes[i],
                                          reason);
                        free(body);
                }
                if (r == 0 && digest_equal(&x.layer, layer)) {
                        *ret_index = x.index;
                        *ret_size = x.size;
                        return 0;
                }
        }
        return answered ? -ENOENT : -EHOSTUNREACH;
}

void source_get_stats(struct source *s, struct source_stats *ret) {
        pthread_mutex_lock(&s->lock);
        *ret = s->stats;
        pthread_mutex_unlock(&s->lock);
}
