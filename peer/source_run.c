/* Coalesced runs (issue 18): consecutive chunks of a source_fetch_run() that one peer holds go
 * in one ranged GET, planned from one locate answer. Each chunk is hashed as its bytes come and
 * checked with its last one, so the first chunk's reader does not wait for the run; a run that
 * breaks sends the chunks not yet in on, each on its own, exactly as a failed single transfer
 * would. Trust is the single path's: every chunk is checked against a digest from a home that
 * is not the sender. The HTTP client's thread only (the body callback too); a run costs one
 * transfer (a slot of g_chunks, like a single chunk's), one chunk buffer and one hash context. */
#include "peer/source_int.h"

static int run_start(struct source *s, struct job **jobs, unsigned n, const char *peer);

/* Whether J is ready to go to its first candidate as part of a run: a holder (not a
 * claimant, whose answer waits), usable, whose bytes we can check without its word. */
static bool run_ready(struct source *s, const struct job *j) {
        if (j->phase != PH_PEERS || j->ncand == 0 || j->cand[0].claimed)
                return false;
        const char *p = j->cand[0].id;
        return src_checkable(j, p) && members_usable(s->cfg.members, p) &&
               !src_distrusted(s, p, &j->digest);
}

/* HEAD's answer L (from HOME) is in: plan HEAD and the rest of its run (HEAD->run_next) from
 * it. Chunks some peer holds are grouped, consecutive chunks of one best peer into one ranged
 * GET; chunks the answer names no source for are asked of the homes on their own (their
 * claims are decided there). L is only read before anything starts: starting a job may
 * replace the cache entry L lives in. */
void src_run_plan(struct source *s, struct job *head, const struct wire_locate *l, const char *home,
                  const char *self) {
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
                planned[i] = i == 0 ? src_answer_fits(s, a[i], l)
                                    : src_answer_has_source(s, a[i], l, self);
                if (!planned[i])
                        continue;
                src_plan_job(s, a[i], l, h, self);
                need_own |= a[i]->ncand > 0 && !src_checkable(a[i], a[i]->cand[0].id);
        }
        /* The home that answered is the holder (two nodes, each the other's home): its
         * digests and chain values are no check of its bytes, but our own directory's are,
         * when we are a home. */
        bool self_home = false;
        for (unsigned i = 0; i < head->nhomes; i++)
                self_home |= strcmp(head->homes[i], self) == 0;
        struct wire_locate own;
        if (need_own && self_home && strcmp(h, self) != 0 &&
            dir_locate(s->cfg.dir, &head->digest, NULL, -1, now_ms(), &own) == 0) {
                for (unsigned i = 0; i < n; i++) {
                        struct job *j = a[i];
                        if (planned[i] && j->ncand > 0 && !src_checkable(j, j->cand[0].id) &&
                            src_answer_fits(s, j, &own))
                                src_take_checks(j, &own, self);
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
                if (k - i >= 2 && run_start(s, a + i, k - i, a[i]->cand[0].id) == 0) {
                        i = k;
                        continue;
                }
                for (; i < k; i++) {
                        if (planned[i])
                                src_next_candidate(s, a[i]);
                        else
                                src_start_job(s, a[i]);
                }
        }
}

/* ---- coalesced runs ------------------------------------------------------------------------ */

/* Ends the run's transfer from its body callback: ERR says why (-EPROTO: the peer sent what
 * was not asked for). */
static int run_refuse(struct xfer *x, int err, bool overflow) {
        x->overflow |= overflow;
        x->data_err = err;
        return err;
}

/* The body of a run: bytes fill the chunk being received, hashed as they come; a full chunk is
 * checked at once against its own digest from a home (its readers do not wait for the rest of
 * the run), or, when it could not be hashed on the way, goes to a verifier. */
int src_run_data(void *ud, struct http_response *r, const uint8_t *data, size_t n) {
        struct xfer *x = ud;
        size_t left = n;
        if (x->delivered == 0 && x->got == 0) {
                /* A 200 is the whole blob: bytes only when the run was the whole blob (a
                 * short last chunk could look whole otherwise). 2xx only reach here. */
                if (r->status != 206 &&
                    !(r->status == 200 && x->run[0]->off == 0 &&
                      x->run[x->nrun - 1]->off + x->run[x->nrun - 1]->len == x->run[0]->size))
                        return run_refuse(x, -EPROTO, false);
                x->ttfb_us = r->ttfb_us;
        }
        while (left) {
                if (x->delivered >= x->nrun || !x->buf)
                        return run_refuse(x, -EPROTO, true);
                struct job *j = x->run[x->delivered];
                size_t take = j->len - x->got < left ? j->len - x->got : left;
                if (x->got == 0)
                        src_hash_begin(x, j);
                memcpy(x->buf + x->got, data, take);
                x->got += take;
                src_hash_add(x, data, take);
                data += take;
                left -= take;
                if (x->got < j->len)
                        break;
                uint8_t *buf = x->buf;
                x->buf = NULL;
                x->got = 0;
                x->delivered++; /* J is not the run's any more, whatever its check finds */
                int checked = src_hash_accept(j->s, x, j, buf, x->ttfb_us);
                if (checked < 0) /* the sender's other chunks went on (src_abort_runs) */
                        return run_refuse(x, checked, false);
                if (checked == 0 && src_verify_submit(j->s, j, buf, x->peer, x->ttfb_us) < 0) {
                        x->delivered--;
                        return run_refuse(x, -ENOMEM, false); /* J is still ours: run_done */
                }
                if (x->delivered < x->nrun) {
                        x->buf = malloc(x->run[x->delivered]->len);
                        if (!x->buf)
                                return run_refuse(x, -ENOMEM, false);
                }
        }
        return 0;
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
        snprintf(x->peer, sizeof(x->peer), "%s", peer);
        char hex[DIGEST_HEX_LEN + 1], url[URL_MAX], range[64], token[HTTPD_TOKEN_MAX + 32];
        digest_to_hex(&x->blob, hex);
        snprintf(url, sizeof(url), "http://%s" PROTO_BLOB_PATH "%s", peer, hex);
        snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, jobs[0]->off,
                 jobs[n - 1]->off + jobs[n - 1]->len - 1);
        src_token_header(s, token, sizeof(token));
        struct http_request q = {
                .url = url,
                .range = range,
                .headers = {token[0] ? token : NULL},
                .group = s->g_chunks,
                .deadline_ms = jobs[0]->deadline_ms, /* a run's jobs share one */
                .stall_ms = s->cfg.stall_timeout_ms,
                .max_time_ms = 2 * s->cfg.stall_timeout_ms * n, /* as a chunk's, per chunk */
                .recv_buffer = XFER_RECV_BUFFER,
                .on_data = src_run_data,
        };
        x->cap = jobs[0]->len;
        x->buf = malloc(x->cap);
        if (!x->buf) {
                src_xfer_free(x);
                return -ENOMEM;
        }
        int r = src_xfer_submit(s, x, &q);
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
void src_run_done(struct source *s, struct xfer *x, const struct http_response *r) {
        if (x->delivered == x->nrun)
                return; /* every chunk is with a verifier (or src_abort_runs sent them on) */
        if (src_cancelled(r)) {
                for (unsigned i = x->delivered; i < x->nrun; i++)
                        src_job_done(x->run[i], -ECANCELED, "shutting down", NULL, 0, NULL);
                x->delivered = x->nrun;
                return;
        }
        if (r->err == -ESTALE) { /* dropped unsent (still_wanted): each chunk its own way */
                for (unsigned i = x->delivered; i < x->nrun; i++)
                        src_next_candidate(s, x->run[i]);
                x->delivered = x->nrun;
                return;
        }
        uint64_t now = now_ms();
        const char *why;
        bool peer_fault = false, busy = false, restart = false;
        long status = r->status;
        if (r->err && !x->data_err) {
                /* No answer in full: refused, cut, stalled, too slow (a run whose deadline
                 * passed in the client's queue never reached the peer). */
                why = r->reason[0] ? r->reason : strerror(-r->err);
                peer_fault = r->started;
        } else if (status == 503) {
                why = "busy";
                busy = true;
        } else if (status != 206 && status != 200) {
                why = status == 416 ? "does not hold the run (http 416)" : "refused";
                restart = status == 416; /* our picture of it was stale: ask again */
        } else if (x->overflow) {
                why = "sent more than asked for";
                peer_fault = true;
        } else if (x->data_err) {
                why = x->data_err == -ENOMEM ? "out of memory" : "not the range asked for";
        } else {
                why = "short or long answer";
                peer_fault = true;
        }
        src_lcache_drop(s, &x->blob);
        if (!busy) {
                src_stat_add(s, &s->stats.peer_failures, 1);
                if (peer_fault)
                        members_report_failure(s->cfg.members, x->peer, why);
                log_debug("peer run failed peer=%s chunk=%" PRIu32 " chunks=%u delivered=%u"
                          " why=\"%s\" ms=%" PRIu64,
                          x->peer, x->run[x->delivered]->idx, x->nrun, x->delivered, why,
                          now - x->submitted_ms);
        }
        for (unsigned i = x->delivered; i < x->nrun; i++) {
                struct job *j = x->run[i];
                if (busy && j->busy_retries < BUSY_RETRIES) {
                        j->busy_retries++;
                        j->cand_next = 0;
                        uint64_t pause = BUSY_PAUSE_MS * j->busy_retries;
                        j->not_before_ms =
                                now + (pause < BUSY_PAUSE_MAX_MS ? pause : BUSY_PAUSE_MAX_MS);
                        src_job_later(s, j);
                } else if (restart) {
                        j->ncand = j->cand_next = 0;
                        j->sha_known = false;
                        j->chain_known = false;
                        src_start_job(s, j);
                } else {
                        src_next_candidate(s, j);
                }
        }
        x->delivered = x->nrun;
}

/* The runs from PEER of BLOB stop here (it sent a chunk that failed its digest): their
 * remaining chunks go to their next sources now. The transfer itself ends at its next bytes
 * (src_run_data finds no chunk left to fill) or its stall time, and its end only frees it. */
void src_abort_runs(struct source *s, const char *peer, const struct digest *blob) {
        for (struct xfer *x = s->runs; x; x = x->next_run) {
                if (strcmp(x->peer, peer) != 0 || !digest_equal(&x->blob, blob) ||
                    x->delivered == x->nrun)
                        continue;
                unsigned from = x->delivered;
                x->delivered = x->nrun;
                free(x->buf);
                x->buf = NULL;
                for (unsigned i = from; i < x->nrun; i++)
                        src_next_candidate(s, x->run[i]);
        }
}
