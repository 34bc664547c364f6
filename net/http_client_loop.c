/* The HTTP client's loop thread: the curl callbacks, starting waiting jobs under the client's,
 * its groups' and the hosts' caps, the stall sweep, finished transfers and the cancels of
 * closed groups. Part of the HTTP client (http_client.c's essay; http_client_int.h). */
#include "net/http_client_int.h"

/* ---- curl callbacks (loop thread) --------------------------------------------------------- */

static void saw_bytes(struct job *j) {
        j->last_byte_ms = now_ms();
        if (!j->resp.ttfb_us) {
                j->resp.ttfb_us = now_us() - j->start_us;
                if (!j->resp.ttfb_us)
                        j->resp.ttfb_us = 1;
        }
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
        struct job *j = ud;
        size_t n = size * nmemb;
        saw_bytes(j);
        if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
                /* A new response (after a redirect, a 100, a 401 being followed): keep only
                 * the last one's headers. */
                dynbuf_reset(&j->resp.headers);
                const char *sp = memchr(data, ' ', n);
                long st = 0;
                for (const char *p = sp ? sp + 1 : data + n; p < data + n && *p >= '0' && *p <= '9';
                     p++)
                        st = st * 10 + (*p - '0');
                j->resp.status = st;
                return n;
        }
        if (n <= 2 && (data[0] == '\r' || data[0] == '\n'))
                return n; /* the blank line that ends the block */
        if (dynbuf_add(&j->resp.headers, data, n) < 0) {
                j->data_err = -EFBIG;
                return 0; /* CURLE_WRITE_ERROR ends the transfer */
        }
        return n;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
        struct job *j = ud;
        size_t n = size * nmemb;
        saw_bytes(j);
        bool ok_status = j->resp.status >= 200 && j->resp.status < 300;
        if (j->req.on_data && ok_status) {
                int r = j->req.on_data(j->req.data_ud ? j->req.data_ud : j->req.ud, &j->resp,
                                       (const uint8_t *)data, n);
                if (r < 0) {
                        j->data_err = r;
                        return 0;
                }
                return n;
        }
        if (!j->req.body_max)
                return n; /* not kept */
        int r = dynbuf_add(&j->resp.body, data, n);
        if (r == -EFBIG && !ok_status)
                return n; /* an error page past the cap: its status says enough */
        if (r < 0) {
                j->data_err = r;
                return 0;
        }
        return n;
}

/* ---- the loop ------------------------------------------------------------------------------ */

/* HOST's row in the table ROWS (N rows), or with MAKE a free one named HOST (NULL: full). */
static struct host_slot *slot_of(struct host_slot *rows, unsigned n, const char *host, bool make) {
        struct host_slot *free_row = NULL;
        for (unsigned i = 0; i < n; i++) {
                struct host_slot *s = &rows[i];
                if (s->active && strcmp(s->host, host) == 0)
                        return s;
                if (!s->active && !free_row)
                        free_row = s;
        }
        if (make && free_row)
                snprintf(free_row->host, sizeof(free_row->host), "%s", host);
        return make ? free_row : NULL;
}

static int start(struct http_client *c, struct job *j) {
        uint64_t now = now_ms();
        CURL *e = curl_easy_init();
        if (!e)
                return -ENOMEM;
        j->easy = e;
        const struct http_request *q = &j->req;
        const char *protocols = q->protocols ? q->protocols : "http,https";
        curl_easy_setopt(e, CURLOPT_URL, q->url);
        curl_easy_setopt(e, CURLOPT_PRIVATE, j);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_USERAGENT,
                         c->cfg.user_agent ? c->cfg.user_agent : "p2pblobs/0.1");
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->errbuf);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, protocols);
        curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR,
                         q->redir_protocols ? q->redir_protocols : protocols);
        if (q->max_redirects) {
                curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
                curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)q->max_redirects);
        }
        if (q->no_proxy)
                curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
        if (q->fresh_connection) {
                curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
                curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
        }
        if (q->ca_file)
                curl_easy_setopt(e, CURLOPT_CAINFO, q->ca_file);
        if (q->userpwd) {
                curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
                curl_easy_setopt(e, CURLOPT_USERPWD, q->userpwd);
        }
        uint64_t connect =
                q->connect_timeout_ms ? q->connect_timeout_ms : c->cfg.connect_timeout_ms;
        uint64_t left = 0; /* the transfer's whole time: to the deadline, max_time at most */
        if (q->deadline_ms)
                left = q->deadline_ms > now ? q->deadline_ms - now : 1;
        if (q->max_time_ms && (!left || q->max_time_ms < left))
                left = q->max_time_ms;
        if (left) {
                if (left < connect)
                        connect = left;
                curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)left);
        }
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)connect);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
        if (q->recv_buffer)
                curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)q->recv_buffer);
        if (q->range)
                curl_easy_setopt(e, CURLOPT_RANGE, q->range);
        if (strcmp(q->method, "HEAD") == 0) {
                curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        } else if (strcmp(q->method, "POST") == 0) {
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->post_body ? q->post_body : "");
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->post_len);
        }
        if (j->hdrs)
                curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->hdrs);
        if (curl_multi_add_handle(c->multi, e) != CURLM_OK)
                return -EIO;
        j->start_ms = j->last_byte_ms = now;
        j->start_us = now_us();
        return 0;
}

/* Takes J (running) out of the multi and releases its slot. */
static void detach(struct http_client *c, struct job *j) {
        list_remove(&c->running, j);
        curl_multi_remove_handle(c->multi, j->easy);
        curl_easy_cleanup(j->easy);
        j->easy = NULL;
        if (j->slot)
                j->slot->active--;
        if (j->gslot)
                j->gslot->active--;
        j->slot = j->gslot = NULL;
        if (j->req.group)
                atomic_fetch_sub(&j->req.group->active, 1);
        c->active--;
}

/* Starts due waiting jobs, in arrival order, while the caps allow; completes those whose
 * deadline passed. Returns ms until the next start time (POLL_MAX_MS at most). */
static uint64_t start_due(struct http_client *c) {
        uint64_t now = now_ms(), next = POLL_MAX_MS;
        struct job *j = c->waiting.head;
        while (j) {
                struct job *nx = j->next;
                struct http_group *g = j->req.group;
                if (j->req.deadline_ms && now >= j->req.deadline_ms) {
                        list_remove(&c->waiting, j);
                        pthread_mutex_lock(&c->lock);
                        c->nqueued--;
                        pthread_mutex_unlock(&c->lock);
                        hc_complete(c, j, -ETIMEDOUT, FETCH_ERR_TIMEOUT,
                                    "deadline passed while queued");
                } else if (j->req.not_before_ms > now) {
                        if (j->req.not_before_ms - now < next)
                                next = j->req.not_before_ms - now;
                } else if (j->call) { /* due: runs now, takes no slot */
                        list_remove(&c->waiting, j);
                        pthread_mutex_lock(&c->lock);
                        c->nqueued--;
                        pthread_mutex_unlock(&c->lock);
                        hc_complete(c, j, 0, FETCH_OK, NULL);
                } else if (c->active < c->cfg.max_inflight &&
                           !(g && g->cap && atomic_load(&g->active) >= g->cap)) {
                        struct host_slot *s = slot_of(c->slots, c->cfg.max_inflight, j->host, true);
                        struct host_slot *gs = g && g->per_host
                                                       ? slot_of(g->slots, g->nslots, j->host, true)
                                                       : NULL;
                        if (s && s->active < c->cfg.per_host &&
                            !(g && g->per_host && (!gs || gs->active >= g->per_host))) {
                                list_remove(&c->waiting, j);
                                pthread_mutex_lock(&c->lock);
                                c->nqueued--;
                                pthread_mutex_unlock(&c->lock);
                                void *ud = j->req.data_ud ? j->req.data_ud : j->req.ud;
                                int r = j->req.may_start && !j->req.may_start(ud) ? -ESTALE
                                                                                  : start(c, j);
                                if (r == -ESTALE) {
                                        hc_complete(c, j, r, FETCH_ERR_LOCAL,
                                                    "not wanted any more when its turn came");
                                } else if (r < 0) {
                                        hc_complete(c, j, r, FETCH_ERR_LOCAL,
                                                    "could not start the request");
                                } else {
                                        s->active++;
                                        j->slot = s;
                                        if (gs) {
                                                gs->active++;
                                                j->gslot = gs;
                                        }
                                        j->resp.started = true;
                                        if (j->req.group)
                                                atomic_fetch_add(&j->req.group->active, 1);
                                        c->active++;
                                        list_push(&c->running, j);
                                }
                        }
                }
                j = nx;
        }
        return next;
}

/* A transfer curl reports finished. */
static void finished(struct http_client *c, struct job *j, CURLcode cc) {
        struct http_response *r = &j->resp;
        long status = 0, conns = 0;
        curl_off_t cl = -1;
        curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(j->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        curl_easy_getinfo(j->easy, CURLINFO_NUM_CONNECTS, &conns);
        r->status = status;
        r->content_length = cl;
        r->new_connections = conns;
        r->curl_code = (int)cc;
        detach(c, j);
        char reason[HTTP_CLIENT_REASON_MAX];
        if (j->data_err) {
                int err = j->data_err;
                enum fetch_err cls = err == -EFBIG ? FETCH_ERR_PROTOCOL : fetch_err_from_errno(err);
                if (err == -EFBIG)
                        snprintf(reason, sizeof(reason), "answer larger than allowed (HTTP %ld)",
                                 status);
                else
                        snprintf(reason, sizeof(reason), "receiver refused the body (%s)",
                                 strerror(-err));
                hc_complete(c, j, err, cls, reason);
                return;
        }
        if (cc != CURLE_OK) {
                enum fetch_err cls = fetch_err_from_curl((int)cc);
                snprintf(reason, sizeof(reason), "%s",
                         j->errbuf[0] ? j->errbuf : curl_easy_strerror(cc));
                hc_complete(c, j, fetch_err_to_errno(cls), cls, reason);
                return;
        }
        snprintf(reason, sizeof(reason), "HTTP %ld", status);
        hc_complete(c, j, 0, fetch_err_from_http(status), reason);
}

/* Ends running transfers that stalled or outlived their deadline; returns ms until the next
 * such check is due (at most CAP). */
static uint64_t sweep_running(struct http_client *c, uint64_t cap) {
        uint64_t now = now_ms(), next = cap;
        struct job *j = c->running.head;
        while (j) {
                struct job *nx = j->next;
                uint64_t stall = j->req.stall_ms;
                if (stall && now - j->last_byte_ms >= stall) {
                        char reason[HTTP_CLIENT_REASON_MAX];
                        snprintf(reason, sizeof(reason), "no data for %" PRIu64 " ms", stall);
                        detach(c, j);
                        pthread_mutex_lock(&c->lock);
                        c->stats.stalls++;
                        pthread_mutex_unlock(&c->lock);
                        hc_complete(c, j, -ETIMEDOUT, FETCH_ERR_TIMEOUT, reason);
                } else if (stall && j->last_byte_ms + stall - now < next) {
                        next = j->last_byte_ms + stall - now;
                }
                j = nx;
        }
        return next;
}

/* Cancels the jobs of closed groups, waiting or running. */
static void cancel_closed(struct http_client *c) {
        for (struct job *j = c->waiting.head, *nx; j; j = nx) {
                nx = j->next;
                if (j->req.group && atomic_load(&j->req.group->closed)) {
                        list_remove(&c->waiting, j);
                        pthread_mutex_lock(&c->lock);
                        c->nqueued--;
                        pthread_mutex_unlock(&c->lock);
                        hc_cancel(c, j, "canceled");
                }
        }
        for (struct job *j = c->running.head, *nx; j; j = nx) {
                nx = j->next;
                if (j->req.group && atomic_load(&j->req.group->closed)) {
                        detach(c, j);
                        hc_cancel(c, j, "canceled");
                }
        }
}

void *hc_loop_main(void *arg) {
        struct http_client *c = arg;
        for (;;) {
                pthread_mutex_lock(&c->lock);
                list_splice(&c->waiting, &c->incoming);
                bool stopping = c->stopping, cancels = c->cancel_pending;
                c->cancel_pending = false;
                pthread_mutex_unlock(&c->lock);
                if (stopping)
                        break;
                if (cancels)
                        cancel_closed(c);
                uint64_t timeout = start_due(c);
                int running = 0;
                curl_multi_perform(c->multi, &running);
                CURLMsg *m;
                int left;
                while ((m = curl_multi_info_read(c->multi, &left))) {
                        if (m->msg != CURLMSG_DONE)
                                continue;
                        struct job *j = NULL;
                        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
                        finished(c, j, m->data.result);
                }
                timeout = sweep_running(c, timeout);
                uint64_t t2 = start_due(c); /* slots freed by what just finished */
                if (t2 < timeout)
                        timeout = t2;
                pthread_mutex_lock(&c->lock);
                c->stats.active = c->active;
                c->stats.queued = (unsigned)c->nqueued;
                bool more = c->incoming.head || c->stopping || c->cancel_pending;
                pthread_mutex_unlock(&c->lock);
                if (!more)
                        curl_multi_poll(c->multi, NULL, 0, (int)(timeout ? timeout : 1), NULL);
        }
        /* Stopping: everything not completed completes now. */
        while (c->waiting.head) {
                struct job *j = c->waiting.head;
                list_remove(&c->waiting, j);
                hc_cancel(c, j, "shutting down");
        }
        while (c->running.head) {
                struct job *j = c->running.head;
                detach(c, j);
                hc_cancel(c, j, "shutting down");
        }
        return NULL;
}
