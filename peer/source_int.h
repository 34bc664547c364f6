/* peer/source's private header (SQLite's sqliteInt.h habit, as engine/engine_int.h): the * structures every file of the source shares and the prototypes of the internal functions one
 * file defines and another calls. Nothing outside peer/source*.c includes it (and
 * tests/unit/test_source_cache.c, which reaches the locate cache); the contract is source.h.
 *
 * Internal functions are named src_*. Unless a comment says otherwise they run on the HTTP
 * client's thread (net/http_client.h: as its callbacks, one at a time, never blocking), which
 * owns every job, transfer, the distrust table and the locate cache (see source.c's essay for
 * the phases a job walks and who owns what). */
#pragma once
#include "peer/source.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>

#include "net/http_client.h"
#include "peer/httpd.h"
#include "peer/proto.h"
#include "peer/rendezvous.h"
#include "util/chain.h"
#include "util/log.h"

#define MAX_HOMES MEMBERS_MAX_HOMES
#define MAX_CANDIDATES 8       /* peers tried for one chunk before the origin */
#define DISTRUST_SLOTS 256     /* (peer, blob) pairs that sent bad bytes */
#define LOCATE_TIMEOUT_MS 1000 /* a home that has not answered by then is skipped */
#define LOCATE_BODY_MAX WIRE_MAX_BODY
#define URL_MAX 1200
#define XFER_RECV_BUFFER (512 << 10) /* a chunk in 16 KiB receives is 64 callbacks a MiB */
#define BUSY_RETRIES 20              /* 503s from one job's peers before moving on */
#define BUSY_PAUSE_MS 10             /* grows linearly with each retry ... */
#define BUSY_PAUSE_MAX_MS 200        /* ... up to this */
#define RECORD_SLOTS 64              /* blobs whose locations were recorded lately */
#define RECORD_INTERVAL_MS 5000      /* record a blob's locations at most this often */
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
/* Digest questions held at one home at once (g_wait): a reader's chunks in CONFIRM beyond it
 * queue here, and are mostly answered at once by the announce that woke the first ones. */
#define DIGEST_WAITS_PER_HOME 4
#define DIGEST_WAIT_DEFAULT_MS 2000

#define VERIFIERS 2

/* How a chunk from a given peer can be checked (src_check_of): by a chain step (util/chain.h),
 * by its plain sha256, or not at all (only the sender's word is known). */
enum check_kind { CHECK_NONE, CHECK_SHA, CHECK_CHAIN };

/* A chunk received from a peer, waiting to be checked against its expected digest. */
struct verify_item {
        struct verify_item *next;
        struct job *job;
        uint8_t *buf; /* job->len bytes, owned */
        enum check_kind kind;
        struct digest want; /* CHECK_SHA: the sha256; CHECK_CHAIN: the value the step ends at */
        struct digest want_prev; /* CHECK_CHAIN: the value it starts from (not for chunk 0) */
        char peer[PEER_ID_MAX];
        uint64_t ttfb_us;
};

struct candidate {
        char id[PEER_ID_MAX];
        bool claimed; /* it is fetching the chunk: wait for it */
};

struct job {
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
        /* The chain step the chunk is checked by (util/chain.h), preferred to SHA when both
         * are known: the hash from CHAIN_PREV (chunk idx - 1's value; unused for chunk 0) over
         * its bytes ends at CHAIN (chunk idx's value; for the last chunk the blob digest, which
         * is no one's word). CHAIN_HOME: the home whose answer gave the values it took ("" when
         * it took none: chunk 0 of a one-chunk blob is checked by the blob digest alone). */
        struct digest chain_prev, chain;
        bool chain_known;
        char chain_home[PEER_ID_MAX];
        /* CONFIRM: bytes from held_peer waiting for a digest from another home. */
        uint8_t *held;
        char held_peer[PEER_ID_MAX];
        uint64_t held_ttfb_us;
        unsigned confirm_next;  /* homes asked this round */
        unsigned confirm_round; /* rounds asked so far: each starts one home further on */
        uint64_t confirm_until_ms;
        bool confirm_failed;      /* no home had a digest in time: unchecked peers are skipped */
        uint64_t confirm_wait_ms; /* the wait the next digest question asks the home for */
        uint64_t confirm_sent_ms; /* when this round's question left; 0: none this round */
        uint64_t not_before_ms;   /* a busy peer is asked again, after a pause */
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
        /* What the job does when the call it waits for runs (source_xfer.c's job_call). */
        void (*resume)(struct source *s, struct job *j);
};

/* X_RUN: one ranged GET for consecutive chunks that one peer holds, each chunk handed to a
 * verifier as soon as its bytes are in. */
enum xfer_kind { X_LOCATE, X_CHUNK, X_DIGEST, X_RUN };

/* One request on the HTTP client (its ud): what it asks for whom, and the bytes received. */
struct xfer {
        struct source *s;
        struct job *job;
        enum xfer_kind kind;
        char peer[PEER_ID_MAX];
        bool claimed;
        uint8_t *buf; /* X_CHUNK, X_RUN: the chunk being received (CAP bytes, GOT of them) */
        size_t got, cap;
        bool overflow; /* more bytes than asked for */
        int data_err;  /* why our body callback refused the bytes (0: it did not) */
        uint64_t submitted_ms;
        /* X_RUN: run[0 .. delivered) went to the verifiers (not ours any more), the rest are
         * still ours; BUF holds the bytes of run[delivered] so far (GOT of them). */
        struct job *run[MAX_RUN];
        unsigned nrun, delivered;
        struct digest blob;
        uint64_t ttfb_us;
        struct xfer *prev_run, *next_run; /* X_RUN: on s->runs while in flight */
        /* X_CHUNK, X_RUN: the sha256 of BUF's GOT bytes, kept as they arrive when the digest
         * to check them by (WANT) was known when the chunk began (src_checkable), so the
         * check ends with the last byte instead of waiting for a verifier to hash the whole
         * chunk; NULL otherwise (CONFIRM: held bytes go to a verifier once a digest comes) or
         * when hashing failed (the verifier then hashes the buffer whole). Its state covers
         * exactly BUF's bytes: it lives and dies with this transfer's chunk. */
        EVP_MD_CTX *md;
        /* Instead of MD, when the chunk is checked by a chain step (CHAINING): CH is the hash
         * from WANT_PREV, begun with the chunk, and WANT the value it must end at. */
        bool chaining;
        struct chain_hash ch;
        struct digest want_prev;
        struct digest want;
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
        /* Chunk transfers (single and runs): at most max_total at once, max_per_peer to one
         * peer. Directory queries (locates, digest queries) and calls (jobs handed to the
         * client's thread, timers) have a group of their own without a cap, so chunk
         * transfers never hold them back. */
        struct http_group *g_chunks, *g_query;
        /* Digest questions a home holds (CONFIRM, X-P2PBlobs-Wait), apart from g_query so
         * they never hold its QUERIES_PER_HOME slots: at most DIGEST_WAITS_PER_HOME a home. */
        struct http_group *g_wait;
        atomic_bool stopping; /* jobs that would go to the origin end ECANCELED instead */

        pthread_mutex_t lock; /* stats */

        /* Verifiers: hash, off the client's thread, the chunks that were not hashed as they
         * arrived (source_verify.c: CONFIRM's held bytes, a hash that failed). */
        pthread_mutex_t vq_lock; /* the queue and vstop */
        pthread_cond_t vq_cond;
        struct verify_item *vq_head, **vq_tail;
        bool vstop;
        pthread_t verifiers[VERIFIERS];
        unsigned nverifiers;
        struct source_stats stats;

        /* the client's thread only */
        struct xfer *runs; /* runs in flight, for src_abort_runs */
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

/* ---- source.c: counters, distrust, finishing a job --------------------------------------------- */

unsigned src_homes_of(struct source *s, const struct digest *d, char (*homes)[PEER_ID_MAX]);
void src_distrust_add(struct source *s, const char *peer, const struct digest *blob);
bool src_distrusted(const struct source *s, const char *peer, const struct digest *blob);
void src_job_done(struct job *j, int err, const char *reason, uint8_t *buf, size_t len,
                  const struct chunk_check *chk);
void src_stat_add(struct source *s, uint64_t *field, uint64_t n);
void src_hand_to_origin(struct source *s, struct job *j);
void src_to_origin(struct source *s, struct job *j);

/* ---- source_cache.c: the locate cache (thread only) -------------------------------------------- */

void src_lcache_drop(struct source *s, const struct digest *blob);
void src_lcache_evict(struct source *s, struct lcache_entry *e);
struct lcache_entry *src_lcache_find(struct source *s, const struct digest *blob,
                                     uint64_t max_age_ms);
struct lcache_entry *src_lcache_get(struct source *s, const struct digest *blob);
struct lcache_entry *src_lcache_put(struct source *s, struct wire_locate *l, const char *home);

/* ---- source_plan.c: a job's phases, LOCATE and PEERS (homes, candidates, fail-over) ------------ */

bool src_answer_fits(const struct source *s, const struct job *j, const struct wire_locate *l);
bool src_answer_has_source(struct source *s, const struct job *j, const struct wire_locate *l,
                           const char *self);
bool src_checkable(const struct job *j, const char *peer);
/* How J's chunk from PEER is checked: by chain when J's chain values are not PEER's word, else
 * by sha256 when its digest is not, else not at all. */
enum check_kind src_check_of(const struct job *j, const char *peer);
/* Takes into J what answer L (from HOME; it fits J) says J's chunk is checked by: its sha256,
 * its chain values (both of those a chain step needs, or neither). */
void src_take_checks(struct job *j, const struct wire_locate *l, const char *home);
/* Whether answer L (which fits J) gives anything J's chunk can be checked by. */
bool src_answer_checks(const struct job *j, const struct wire_locate *l);
void src_next_candidate(struct source *s, struct job *j);
void src_next_home(struct source *s, struct job *j);
void src_plan_job(struct source *s, struct job *j, const struct wire_locate *l, const char *home,
                  const char *self);
void src_release_run(struct source *s, struct job *j);
void src_start_job(struct source *s, struct job *j);
void src_use_answer(struct source *s, struct job *j, struct wire_locate *l, const char *home,
                    const char *self);

/* ---- source_run.c: coalesced runs -------------------------------------------------------------- */

void src_abort_runs(struct source *s, const char *peer, const struct digest *blob);
int src_run_data(void *ud, struct http_response *r, const uint8_t *data, size_t n);
void src_run_done(struct source *s, struct xfer *x, const struct http_response *r);
void src_run_plan(struct source *s, struct job *head, const struct wire_locate *l, const char *home,
                  const char *self);

/* ---- source_verify.c: CONFIRM and the verifiers ------------------------------------------------ */

void src_confirm_start(struct source *s, struct job *j);
void src_corrupt_returned(struct source *s, struct job *j);
void src_digest_done(struct source *s, struct xfer *x, const struct http_response *r);
/* The start of a directory question's done callback (locates, CONFIRM's digest queries): a
 * cancel ends X's job (-ECANCELED: nothing more to do); a 200 that parses fills *L (0: the
 * caller frees it); anything else is 1, a failure counted and, when the home is to blame,
 * reported to the membership. */
int src_answer_take(struct source *s, struct xfer *x, const struct http_response *r,
                    struct wire_locate *l);
void src_next_confirm(struct source *s, struct job *j);
/* Hashing a chunk as it arrives (X's md, above). src_hash_begin: J's chunk starts on X, hashed
 * against J's digest when S may check it by that (src_checkable); else X hashes nothing.
 * src_hash_add: N more bytes of it. src_hash_accept: X's chunk BUF (owned, J->len bytes) is in
 * whole; ends J when it matches (1), or distrusts the sender and tries J's next source when
 * not (-EBADMSG; src_corrupt_returned: the sender's other runs of the blob are sent on, X's
 * too). BUF is taken either way. 0: X has no digest of it (not begun, hashing failed, or J's
 * digest is not the one it was begun for): BUF is still the caller's, for the verifiers. The
 * client's thread. */
void src_hash_begin(struct xfer *x, const struct job *j);
void src_hash_add(struct xfer *x, const uint8_t *data, size_t n);
int src_hash_accept(struct source *s, struct xfer *x, struct job *j, uint8_t *buf,
                    uint64_t ttfb_us);
void *src_verify_main(void *arg);
int src_verify_submit(struct source *s, struct job *j, uint8_t *buf, const char *peer,
                      uint64_t ttfb_us);

/* ---- source_xfer.c: transfers on the HTTP client, and handing jobs to its thread ----------------- */

bool src_cancelled(const struct http_response *r);

void src_job_later(struct source *s, struct job *j);
int src_job_start_async(struct source *s, struct job *j);
int src_return_corrupt(struct source *s, struct job *j);
void src_token_header(const struct source *s, char *out, size_t len);
void src_xfer_free(struct xfer *x);
int src_xfer_submit(struct source *s, struct xfer *x, struct http_request *q);
int src_xfer_start(struct source *s, struct job *j, enum xfer_kind kind, const char *peer,
                   bool claimed, const char *self);
