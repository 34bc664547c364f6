/* The source's transport: every peer transfer and directory query (locates, chunk GETs, runs,
 * digest queries) is a request on the node's one HTTP client (net/http_client.h), and what a
 * finished one means for its job is decided in its done callback, on the client's thread. The
 * client enforces what the source's own loop did before: the caps of chunk transfers (the
 * g_chunks group: max_total at once, max_per_peer to one peer; a transfer over a cap waits in
 * the client's queue), the stall time, a transfer's time bound and the job's deadline.
 * Directory queries go in g_query, which has no cap, so chunk transfers never hold them back.
 *
 * Jobs reach the client's thread as calls (http_client_call, in g_query): a new job from
 * source_fetch(), a job pausing before it asks a busy peer again or the homes for a digest
 * again (a call with a start time), a chunk the verifiers refused. A group's close cancels
 * requests and calls alike: every done callback here ends its jobs with ECANCELED then, and
 * src_to_origin() does the same once the source is stopping, so nothing new starts. */
#include "peer/source_int.h"

/* ---- requests ------------------------------------------------------------------------------- */

bool src_cancelled(const struct http_response *r) {
        return r->err == -ECANCELED;
}

void src_xfer_free(struct xfer *x) {
        if (!x)
                return;
        EVP_MD_CTX_free(x->md);
        free(x->buf);
        free(x);
}

/* The cluster token header into OUT, or "" when the cluster has none. */
void src_token_header(const struct source *s, char *out, size_t len) {
        if (s->cfg.token)
                snprintf(out, len, PROTO_TOKEN_HEADER ": %s", s->cfg.token);
        else if (len)
                out[0] = '\0';
}

static void add_header(struct http_request *q, const char *h) {
        if (!h[0])
                return;
        for (size_t i = 0; i < HTTP_CLIENT_HEADERS_MAX - 1; i++)
                if (!q->headers[i]) {
                        q->headers[i] = h;
                        return;
                }
}

static void run_unlink(struct source *s, struct xfer *x) {
        if (x->prev_run)
                x->prev_run->next_run = x->next_run;
        else if (s->runs == x)
                s->runs = x->next_run;
        if (x->next_run)
                x->next_run->prev_run = x->prev_run;
        x->prev_run = x->next_run = NULL;
}

static void locate_done(struct source *s, struct xfer *x, const struct http_response *r);
static void chunk_done(struct source *s, struct xfer *x, const struct http_response *r);

static void xfer_done(void *ud, struct http_response *r) {
        struct xfer *x = ud;
        struct source *s = x->s;
        switch (x->kind) {
        case X_LOCATE:
                locate_done(s, x, r);
                break;
        case X_DIGEST:
                src_digest_done(s, x, r);
                break;
        case X_RUN:
                run_unlink(s, x);
                src_run_done(s, x, r);
                break;
        case X_CHUNK:
                chunk_done(s, x, r);
                break;
        }
        src_xfer_free(x);
}

/* A chunk transfer's last check when its turn comes (it may have waited for a slot in the
 * client's queue): the peer src_next_candidate chose is still usable and not distrusted for the
 * blob, and a run still has chunks of its own (src_abort_runs may have sent them on). */
static bool still_wanted(void *ud) {
        struct xfer *x = ud;
        if (x->kind == X_RUN && x->delivered == x->nrun)
                return false;
        const struct digest *blob = x->kind == X_RUN ? &x->blob : &x->job->digest;
        return members_usable(x->s->cfg.members, x->peer) && !src_distrusted(x->s, x->peer, blob);
}

/* Submits Q (its URL, headers and kind-specific limits set) for X: the peer settings every
 * request of the source shares, X as its ud. 0, or -errno with X freed. */
int src_xfer_submit(struct source *s, struct xfer *x, struct http_request *q) {
        if (x->kind == X_CHUNK || x->kind == X_RUN)
                q->may_start = still_wanted;
        q->protocols = "http";
        q->no_proxy = true; /* none between nodes of one cluster, whatever the environment says */
        q->connect_timeout_ms = s->cfg.connect_timeout_ms;
        q->done = xfer_done;
        q->ud = x;
        x->s = s;
        x->submitted_ms = now_ms();
        int r = http_client_submit(s->cfg.http, q);
        if (r < 0) {
                src_xfer_free(x);
                return r;
        }
        if (x->kind == X_RUN) { /* we are on the client's thread: X cannot end before this */
                x->next_run = s->runs;
                if (s->runs)
                        s->runs->prev_run = x;
                s->runs = x;
        }
        return 0;
}

/* A single chunk's bytes: at most the chunk, into its buffer. */
static int chunk_data(void *ud, struct http_response *r, const uint8_t *data, size_t n) {
        (void)r;
        struct xfer *x = ud;
        if (x->got + n > x->cap) {
                x->overflow = true;
                x->data_err = -EFBIG;
                return -EFBIG; /* more than asked for: ends the transfer */
        }
        memcpy(x->buf + x->got, data, n);
        x->got += n;
        src_hash_add(x, data, n);
        return 0;
}

int src_xfer_start(struct source *s, struct job *j, enum xfer_kind kind, const char *peer,
                   bool claimed, const char *self) {
        struct xfer *x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->job = j;
        x->kind = kind;
        x->claimed = claimed;
        snprintf(x->peer, sizeof(x->peer), "%s", peer);
        char hex[DIGEST_HEX_LEN + 1], url[URL_MAX], range[64], wait[64];
        char token[HTTPD_TOKEN_MAX + 32];
        digest_to_hex(&j->digest, hex);
        struct http_request q = {.url = url, .deadline_ms = j->deadline_ms};
        src_token_header(s, token, sizeof(token));
        add_header(&q, token);
        if (kind == X_LOCATE || kind == X_DIGEST) {
                if (j->probing || j->spread || kind == X_DIGEST) /* no claim: only asking */
                        snprintf(url, sizeof(url),
                                 "http://%s" PROTO_LOCATE_PATH "%s?" PROTO_ARG_CHUNK "=%" PRIu32,
                                 peer, hex, j->idx);
                else
                        snprintf(url, sizeof(url),
                                 "http://%s" PROTO_LOCATE_PATH "%s?" PROTO_ARG_CHUNK "=%" PRIu32
                                 "&" PROTO_ARG_NODE "=%s",
                                 peer, hex, j->idx, self);
                q.group = s->g_query;
                q.max_time_ms = LOCATE_TIMEOUT_MS; /* a home that has not answered is skipped */
                q.body_max = LOCATE_BODY_MAX;
                if (kind == X_DIGEST && j->confirm_wait_ms) {
                        /* The home holds it until the digest is known (httpd.h, locate). */
                        snprintf(wait, sizeof(wait), PROTO_WAIT_HEADER ": %" PRIu64,
                                 j->confirm_wait_ms);
                        add_header(&q, wait);
                        q.group = s->g_wait;
                        q.max_time_ms += j->confirm_wait_ms;
                        if (q.stall_ms)
                                q.stall_ms += j->confirm_wait_ms;
                }
                return src_xfer_submit(s, x, &q);
        }
        x->cap = j->len;
        x->buf = malloc(x->cap ? x->cap : 1);
        if (!x->buf) {
                src_xfer_free(x);
                return -ENOMEM;
        }
        src_hash_begin(x, j);
        snprintf(url, sizeof(url), "http://%s" PROTO_BLOB_PATH "%s", peer, hex);
        snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, j->off, j->off + j->len - 1);
        q.range = range;
        q.group = s->g_chunks;
        q.recv_buffer = XFER_RECV_BUFFER;
        q.on_data = chunk_data;
        q.stall_ms = s->cfg.stall_timeout_ms;
        /* A chunk on a peer's disk crosses a cluster network in milliseconds; one that
         * trickles for twice the stall time goes to the next source instead. */
        q.max_time_ms = 2 * s->cfg.stall_timeout_ms;
        if (claimed) {
                /* It answers once the chunk lands: silence is expected that long. */
                snprintf(wait, sizeof(wait), PROTO_WAIT_HEADER ": %" PRIu64, s->cfg.claim_wait_ms);
                add_header(&q, wait);
                q.stall_ms += s->cfg.claim_wait_ms;
                q.max_time_ms += s->cfg.claim_wait_ms;
        }
        return src_xfer_submit(s, x, &q);
}

/* ---- what a finished request means ---------------------------------------------------------- */

static void chunk_done(struct source *s, struct xfer *x, const struct http_response *r) {
        struct job *j = x->job;
        if (src_cancelled(r)) {
                src_job_done(j, -ECANCELED, "shutting down", NULL, 0, NULL);
                return;
        }
        if (r->err == -ESTALE) { /* dropped unsent (still_wanted): the next candidate */
                src_next_candidate(s, j);
                return;
        }
        uint64_t now = now_ms();
        const char *why = NULL;
        char status_why[48];
        bool peer_fault = false;
        long status = r->status;
        if (r->err && !x->overflow) {
                /* No answer in full: refused, cut, stalled, too slow. A job whose deadline
                 * passed in the client's queue never reached the peer. */
                why = r->reason[0] ? r->reason : strerror(-r->err);
                peer_fault = r->started;
        } else if (status == 503 && j->busy_retries < BUSY_RETRIES) {
                /* Busy serving others: it holds the chunk, so ask it again shortly rather
                 * than move on (the next source may be the origin). */
                j->busy_retries++;
                j->cand_next--;
                uint64_t pause = BUSY_PAUSE_MS * j->busy_retries;
                j->not_before_ms = now + (pause < BUSY_PAUSE_MAX_MS ? pause : BUSY_PAUSE_MAX_MS);
                src_job_later(s, j);
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
                /* A claimant's wait is not its latency. */
                uint64_t ttfb_us = x->claimed ? 0 : r->ttfb_us;
                uint8_t *buf = x->buf;
                x->buf = NULL;
                if (src_checkable(j, x->peer)) {
                        if (x->got == j->len && src_hash_accept(s, x, j, buf, ttfb_us))
                                return; /* hashed as it came: checked already */
                        if (src_verify_submit(s, j, buf, x->peer, ttfb_us) == 0)
                                return; /* the verifier finishes the job, or hands it back */
                        why = "out of memory";
                } else {
                        /* Only the sender's word for these bytes so far: hold them and ask
                         * the other homes for the chunk's digest. */
                        free(j->held);
                        j->held = buf;
                        snprintf(j->held_peer, sizeof(j->held_peer), "%s", x->peer);
                        j->held_ttfb_us = ttfb_us;
                        src_confirm_start(s, j);
                        return;
                }
        }
        src_stat_add(s, &s->stats.peer_failures, 1);
        src_lcache_drop(s, &j->digest);
        if (peer_fault)
                members_report_failure(s->cfg.members, x->peer, why);
        log_debug("peer transfer failed peer=%s chunk=%" PRIu32 " why=\"%s\" ms=%" PRIu64, x->peer,
                  j->idx, why, now - x->submitted_ms);
        src_next_candidate(s, j);
}

int src_answer_take(struct source *s, struct xfer *x, const struct http_response *r,
                    struct wire_locate *l) {
        struct job *j = x->job;
        if (src_cancelled(r)) {
                src_job_done(j, -ECANCELED, "shutting down", NULL, 0, NULL);
                return -ECANCELED;
        }
        if (r->err == 0 && r->status == 200) {
                char reason[128];
                const char *body = r->body.data ? (const char *)r->body.data : "";
                if (wire_locate_parse(body, r->body.len, l, reason, sizeof(reason)) == 0)
                        return 0;
                log_debug("malformed directory answer home=%s reason=\"%s\"", x->peer, reason);
        } else if (r->err) {
                src_stat_add(s, &s->stats.locate_failures, 1);
                /* Our own deadline, a question that never left the queue or an answer too
                 * large to take is not the home's fault. */
                bool ours = !r->started || now_ms() >= j->deadline_ms || r->err == -EFBIG;
                if (!ours)
                        members_report_failure(s->cfg.members, x->peer, r->reason);
        }
        return 1;
}

static void locate_done(struct source *s, struct xfer *x, const struct http_response *r) {
        struct job *j = x->job;
        struct wire_locate l;
        int took = src_answer_take(s, x, r, &l);
        if (took < 0)
                return;
        if (took == 0) {
                char self[PEER_ID_MAX];
                if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                        self[0] = '\0';
                bool spread = j->spread;
                j->spread = false;
                if (!spread || src_answer_has_source(s, j, &l, self)) {
                        src_use_answer(s, j, &l, x->peer, self);
                        wire_locate_free(&l);
                        return;
                }
                /* Nobody holds it: the first home decides who fetches it. */
                wire_locate_free(&l);
                src_stat_add(s, &s->stats.spread_misses, 1);
                src_next_home(s, j);
                return;
        }
        j->spread = false;
        src_next_home(s, j); /* 404: this home does not know it; another may */
}

/* ---- jobs handed to the client's thread ------------------------------------------------------- */

static void job_called(void *ud, struct http_response *r) {
        struct job *j = ud;
        if (src_cancelled(r))
                src_job_done(j, -ECANCELED, "shutting down", NULL, 0, NULL);
        else
                j->resume(j->s, j);
}

/* Any thread: J goes on with NEXT(S, J) on the client's thread, no earlier than AT (0: at
 * once); a close of the group before then ends J with ECANCELED. 0, or -errno: J is still the
 * caller's. A job waits for one call at most, so one field holds what comes next. */
static int job_call(struct source *s, struct job *j, uint64_t at,
                    void (*next)(struct source *, struct job *)) {
        j->resume = next;
        return http_client_call(s->cfg.http, s->g_query, at, job_called, j);
}

/* Where a paused job left off: CONFIRM's next round, or PEERS' candidate asked again. */
static void job_continue(struct source *s, struct job *j) {
        if (j->phase == PH_CONFIRM)
                src_next_confirm(s, j);
        else
                src_next_candidate(s, j);
}

/* J (PEERS or CONFIRM) goes on at J->not_before_ms, where it left off. */
void src_job_later(struct source *s, struct job *j) {
        int r = job_call(s, j, j->not_before_ms, job_continue);
        if (r == -ECANCELED)
                src_job_done(j, r, "shutting down", NULL, 0, NULL);
        else if (r < 0)
                src_to_origin(s, j); /* no room to wait in: the origin has the chunk */
}

/* Any thread: J (and the run chained on it) starts on the client's thread. 0, or -errno: J is
 * still the caller's. */
int src_job_start_async(struct source *s, struct job *j) {
        return job_call(s, j, 0, src_start_job);
}

/* A verifier's thread: J's chunk did not match (J->bad_peer sent it); the client's thread,
 * which owns the distrust table, takes J on. 0, or -errno: J is still the caller's. */
int src_return_corrupt(struct source *s, struct job *j) {
        return job_call(s, j, 0, src_corrupt_returned);
}
