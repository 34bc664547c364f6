/* The source's transport: one libcurl multi handle on the source's thread for every peer
 * transfer and directory query (locates, chunk GETs, digest queries), the stall checks, the
 * queue of jobs waiting for a transfer slot (max_total at once, max_per_peer to one peer), and
 * what a finished chunk or locate transfer means for its job. The thread's loop also starts
 * incoming jobs and takes back chunks the verifiers refused. */
#include "peer/source_int.h"

static size_t on_locate_body(char *data, size_t size, size_t nmemb, void *ud);

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

void src_xfer_free(struct xfer *x) {
        if (!x)
                return;
        if (x->easy)
                curl_easy_cleanup(x->easy);
        curl_slist_free_all(x->headers);
        free(x->buf);
        free(x);
}

/* The cluster token header, when the cluster has one. */
void src_add_token(const struct source *s, struct curl_slist **headers) {
        if (!s->cfg.token)
                return;
        char h[HTTPD_TOKEN_MAX + 32];
        snprintf(h, sizeof(h), PROTO_TOKEN_HEADER ": %s", s->cfg.token);
        *headers = curl_slist_append(*headers, h);
}

unsigned src_active_to(const struct source *s, const char *peer) {
        unsigned n = 0;
        for (const struct xfer *x = s->running; x; x = x->next)
                n += strcmp(x->peer, peer) == 0;
        return n;
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
        char hex[DIGEST_HEX_LEN + 1], url[URL_MAX], range[96], wait[64];
        digest_to_hex(&j->digest, hex);
        if (kind == X_LOCATE || kind == X_DIGEST) {
                src_add_token(s, &x->headers);
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
                src_add_token(s, &x->headers);
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
                src_xfer_free(x);
                return -ENOMEM;
        }
        return src_xfer_launch(s, x, url, kind == X_CHUNK ? on_body : on_locate_body);
}

/* Starts X (its headers, buffer and limits set) as a GET of URL whose body goes to WRITE.
 * 0, or -errno with X freed. */
int src_xfer_launch(struct source *s, struct xfer *x, const char *url, curl_write_callback write) {
        x->easy = curl_easy_init();
        if (!x->easy) {
                src_xfer_free(x);
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
                src_xfer_free(x);
                return -EIO;
        }
        x->next = s->running;
        s->running = x;
        s->active++;
        return 0;
}

void src_xfer_detach(struct source *s, struct xfer *x) {
        curl_multi_remove_handle(s->multi, x->easy);
        for (struct xfer **pp = &s->running; *pp; pp = &(*pp)->next)
                if (*pp == x) {
                        *pp = x->next;
                        break;
                }
        s->active--;
}

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
                if (src_checkable(j, x->peer)) {
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
                  j->idx, why, now - x->started_ms);
        src_next_candidate(s, j);
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
                log_debug("malformed locate answer home=%s reason=\"%s\"", x->peer, reason);
        }
        if (cc != CURLE_OK || x->stalled) {
                src_stat_add(s, &s->stats.locate_failures, 1);
                /* Our own deadline or an answer too large to take is not the home's fault. */
                bool ours = now_ms() >= j->deadline_ms || cc == CURLE_WRITE_ERROR;
                if (!ours)
                        members_report_failure(s->cfg.members, x->peer,
                                               x->stalled ? "stalled" : curl_easy_strerror(cc));
        }
        j->spread = false;
        src_next_home(s, j); /* 404: this home does not know it; another may */
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
                src_xfer_detach(s, x);
                if (x->kind == X_LOCATE)
                        locate_done(s, x, cc, status);
                else if (x->kind == X_DIGEST)
                        src_digest_done(s, x, cc, status);
                else if (x->kind == X_RUN)
                        src_run_done(s, x, cc, status);
                else
                        chunk_done(s, x, cc, status);
                src_xfer_free(x);
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
                        src_xfer_detach(s, x);
                        if (x->kind == X_LOCATE)
                                locate_done(s, x, CURLE_OPERATION_TIMEDOUT, 0);
                        else if (x->kind == X_DIGEST)
                                src_digest_done(s, x, CURLE_OPERATION_TIMEDOUT, 0);
                        else if (x->kind == X_RUN)
                                src_run_done(s, x, CURLE_OPERATION_TIMEDOUT, 0);
                        else
                                chunk_done(s, x, CURLE_OPERATION_TIMEDOUT, 0);
                        src_xfer_free(x);
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
                        src_next_confirm(s, q);
                else
                        src_next_candidate(s, q);
                q = next;
        }
}

/* Verifier thread: checks received chunks. A good one finishes its job here (the done
 * callback may run on any of our threads); a bad one goes back to the transfer thread, which
 * owns the distrust table and the next-source logic. */
void *source_main(void *arg) {
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
                                src_job_done(in, -ECANCELED, "shutting down", NULL, 0, NULL);
                                in = next;
                        }
                        break;
                }
                while (back) {
                        struct job *next = back->next;
                        src_corrupt_returned(s, back);
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
                        src_start_job(s, rev);
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
                src_xfer_detach(s, x);
                if (x->kind == X_RUN)
                        for (unsigned i = x->delivered; i < x->nrun; i++)
                                src_job_done(x->run[i], -ECANCELED, "shutting down", NULL, 0, NULL);
                else
                        src_job_done(x->job, -ECANCELED, "shutting down", NULL, 0, NULL);
                src_xfer_free(x);
        }
        while (s->queued) {
                struct job *j = s->queued;
                s->queued = j->next;
                src_job_done(j, -ECANCELED, "shutting down", NULL, 0, NULL);
        }
        return NULL;
}
