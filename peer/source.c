/* Chunk sources: peers first, then the origin. See source.h for the contract.
 *
 * A chunk job walks these phases, all on the HTTP client's thread (source_xfer.c):
 *   LOCATE  ask the blob's homes, in rendezvous order, who holds or fetches the chunk (a home
 *           that is ourselves is asked in memory, and first: when our own directory names a
 *           holder and knows the chunk's digest, no other home is asked; a home that fails
 *           is skipped);
 *   PEERS   try the candidates the answer named, best first, one transfer at a time; a
 *           transfer that fails moves on, a peer that broke the connection or went silent is
 *           reported down, a peer whose bytes fail the chunk digest is src_distrusted for the blob;
 *   CONFIRM bytes arrived but no digest is known that did not come from their sender: ask
 *           the other homes for the chunk's digest, up to digest_wait_ms (a claimant
 *           announces a claimed chunk as it lands: announce_claimed); each question is held
 *           at the home until an announce brings the digest (X-P2PBlobs-Wait,
 *           dir_wait_digest), so it is about one question a chunk, not one per 50 ms; then
 *           verify; with none by then, the bytes are dropped and the next source is tried;
 *   ORIGIN  hand the job to the origin client, which owns it from then on.
 * Every job ends in exactly one call of its done callback.
 *
 * The locate cache and runs (issues 15, 18). A home's answer about chunk i names every holder that
 * has i with its whole chunk map, and the digests of i and the chunks after it (512 by default,
 * peer/directory.h). The thread keeps the latest answer per blob for as long as the answer says
 * (the home scales it to its --home-locate-rate; LCACHE_TTL_MS when it says none; LCACHE_SLOTS
 * blobs, LCACHE_BYTES of maps and digests), so a reader's next misses skip LOCATE: one question
 * per blob per reuse time instead of one per chunk, which is what made the first home of a popular
 * blob a hot spot, and one round trip less before most first bytes. A chunk the kept answer names
 * no holder for, or gives no digest of, is asked as before (claims are granted only there). A peer
 * failure for the blob drops its answer. A run from source_fetch_run() is planned from one answer
 * (the cache's, or its first chunk's locate): consecutive chunks whose best candidate is the same
 * holder, with a digest we may check it by, go in one ranged GET (X_RUN); each chunk is checked
 * as soon as its bytes are in, so the first chunk's reader does not wait for the run. A
 * run that breaks (the peer dies or stalls, a 416 or 503, a chunk of it fails its digest) sends
 * the chunks not yet in on, each on its own, exactly as a failed single transfer would. Trust is
 * unchanged: a chunk's digest still comes from a home that is not the sender — when the home that
 * answered is the holder, our own directory's digests are used if we are a home (one in-memory
 * lookup per run), else the chunk goes the single way, through CONFIRM.
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
 * Threading: the source has no thread of its own. Every request is a job on the node's HTTP
 * client, and the source's logic runs in the requests' done callbacks on the client's thread,
 * which owns every job, transfer, the distrust table and the locate cache; callers hand a new
 * job to that thread with a call (http_client_call). A chunk whose digest is known when its
 * transfer starts is hashed there as its bytes arrive and checked with its last byte (its first
 * byte waits for nothing more); one that was not (CONFIRM's held bytes) goes, with its job, to
 * a verifier thread: a good chunk's job ends there; a bad one is handed back to the client's
 * thread, with a call, to distrust the peer and try the next source. Lookups on behalf of FUSE
 * (source_lookup) wait for their requests on the caller's thread and touch nothing of the
 * client thread's. */

#include "peer/source_int.h"

/* Directory questions in flight to one home at once. Locates are not capped otherwise (chunk
 * transfers must not hold them back), and a reader fetching from the origin asks one per
 * claimed chunk: with max_total (64) claims at once, a burst opened that many connections to
 * one home, more than its per-client cap (HTTPD_MAX_PER_CLIENT, 32), which then refused the
 * next connection, so the reader marked the home down and stopped announcing to it
 * (tests/integration/test_locate_reuse.py). With chunk transfers' max_per_peer (8) beside
 * them, a node keeps at most about 16 connections to a peer. */
#define QUERIES_PER_HOME 8

void src_stat_add(struct source *s, uint64_t *field, uint64_t n) {
        pthread_mutex_lock(&s->lock);
        *field += n;
        pthread_mutex_unlock(&s->lock);
}

bool src_distrusted(const struct source *s, const char *peer, const struct digest *blob) {
        for (unsigned i = 0; i < DISTRUST_SLOTS; i++)
                if (s->distrust[i].used && digest_equal(&s->distrust[i].blob, blob) &&
                    strcmp(s->distrust[i].peer, peer) == 0)
                        return true;
        return false;
}

void src_distrust_add(struct source *s, const char *peer, const struct digest *blob) {
        struct distrust *d = &s->distrust[s->distrust_next++ % DISTRUST_SLOTS];
        snprintf(d->peer, sizeof(d->peer), "%s", peer);
        d->blob = *blob;
        d->used = true;
}

unsigned src_homes_of(struct source *s, const struct digest *d, char (*homes)[PEER_ID_MAX]) {
        return (unsigned)members_homes(s->cfg.members, d, s->cfg.homes, homes, NULL);
}

/* ---- finishing ------------------------------------------------------------------------------ */

/* CHK: what the check just computed over BUF (the engine takes it instead of hashing the chunk a
 * second time), or NULL. */
void src_job_done(struct job *j, int err, const char *reason, uint8_t *buf, size_t len,
                  const struct chunk_check *chk) {
        struct job *f = j->run_next; /* only while J locates: it cannot succeed then */
        j->done(j->ud, err, reason, buf, len, chk);
        free(j->held);
        free(j);
        while (f) {
                struct job *next = f->run_next;
                f->run_next = NULL;
                src_job_done(f, err, reason, NULL, 0, NULL);
                f = next;
        }
}

/* Any thread: J (none chained on it) goes to the origin client, which owns its callback from
 * here; J itself is done. */
void src_hand_to_origin(struct source *s, struct job *j) {
        j->phase = PH_ORIGIN;
        src_stat_add(s, &s->stats.origin_chunks, 1);
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

void src_to_origin(struct source *s, struct job *j) {
        if (atomic_load(&s->stopping)) { /* a request refused by a closed group led here */
                src_job_done(j, -ECANCELED, "shutting down", NULL, 0, NULL);
                return;
        }
        src_release_run(s, j); /* the rest of its run may still find peers */
        src_hand_to_origin(s, j);
}

/* ---- public --------------------------------------------------------------------------------- */

int source_new(const struct source_config *cfg, struct source **ret) {
        if (!cfg->http)
                return -EINVAL;
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
        atomic_init(&s->stopping, false);
        pthread_mutex_init(&s->lock, NULL);
        pthread_mutex_init(&s->vq_lock, NULL);
        pthread_cond_init(&s->vq_cond, NULL);
        s->vq_tail = &s->vq_head;
        int r = http_group_new_per_host(s->cfg.http, s->cfg.max_total, s->cfg.max_per_peer,
                                        &s->g_chunks);
        if (r == 0)
                r = http_group_new_per_host(s->cfg.http, 0, QUERIES_PER_HOME, &s->g_query);
        if (r == 0)
                r = http_group_new_per_host(s->cfg.http, 0, DIGEST_WAITS_PER_HOME, &s->g_wait);
        if (r < 0) {
                source_free(s);
                return r;
        }
        for (unsigned i = 0; i < VERIFIERS; i++) {
                r = -pthread_create(&s->verifiers[i], NULL, src_verify_main, s);
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
        /* Requests and calls still queued or running end with ECANCELED and fail their jobs;
         * a callback that would start another request is refused by the closed group, and one
         * that would go to the origin sees `stopping`. Chunk transfers first: their ends may
         * queue digest queries and calls, which the second close cancels. */
        atomic_store(&s->stopping, true);
        http_group_free(s->g_chunks);
        http_group_free(s->g_wait); /* before g_query: its ends queue calls there */
        http_group_free(s->g_query);
        /* The verifiers finish what they hold: a good chunk completes its job; a bad one's
         * hand-back is refused by the closed group, and it fails (verify_main). */
        pthread_mutex_lock(&s->vq_lock);
        s->vstop = true;
        pthread_cond_broadcast(&s->vq_cond);
        pthread_mutex_unlock(&s->vq_lock);
        for (unsigned i = 0; i < s->nverifiers; i++)
                pthread_join(s->verifiers[i], NULL);
        for (unsigned i = 0; i < LCACHE_SLOTS; i++)
                src_lcache_evict(s, &s->lcache[i]);
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

/* Hands J (and the run chained on it) to the client's thread. */
static void job_submit(struct source *s, struct job *j) {
        int r = src_job_start_async(s, j);
        if (r == -ECANCELED) {
                src_job_done(j, r, "shutting down", NULL, 0, NULL);
                return;
        }
        while (r < 0 && j) { /* the client's queue is full: the origin has every chunk */
                struct job *next = j->run_next;
                j->run_next = NULL;
                src_hand_to_origin(s, j);
                j = next;
        }
}

void source_fetch_run(struct source *s, const struct digest *digest, uint64_t size,
                      const char *source, uint32_t idx, unsigned n, size_t chunk_size,
                      uint64_t deadline_ms, origin_done_fn done, void *const *uds) {
        uint64_t off = (uint64_t)idx * chunk_size;
        uint64_t end =
                off + (uint64_t)n * chunk_size < size ? off + (uint64_t)n * chunk_size : size;
        if (!s->cfg.members) { /* alone: the whole run is one GET to the origin */
                src_stat_add(s, &s->stats.origin_chunks, n);
                origin_fetch_run(s->cfg.origin, source, digest, off, end, chunk_size, n,
                                 deadline_ms, done, uds);
                return;
        }
        /* With peers, the run's first chunk is located (or answered from the cache) and the
         * answer plans the whole run: consecutive chunks one peer holds go in one GET (see
         * src_run_plan), the others their own way. Runs longer than MAX_RUN are cut. */
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
                src_stat_add(s, &s->stats.origin_chunks, 1);
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

void source_get_stats(struct source *s, struct source_stats *ret) {
        pthread_mutex_lock(&s->lock);
        *ret = s->stats;
        pthread_mutex_unlock(&s->lock);
}
