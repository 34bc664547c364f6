/* The node's HTTP client. See http_client.h for the contract.
 *
 * Threading. Callers append jobs to `incoming` under `lock` and wake the loop with
 * curl_multi_wakeup(). Everything else — the multi handle, the waiting and running lists, the
 * per-host counts — belongs to the loop thread alone and needs no lock. The lock also
 * protects the queue count (the max_queued bound is checked at submit), the stats, and each
 * group's count of jobs not completed yet, so a group's close can wait for them on `cond`.
 *
 * A job's life: incoming -> waiting (in arrival order) -> running (an easy handle in the
 * multi) -> completed, or waiting -> completed (its deadline passed, its group closed, the
 * client stopped). Completion is one function, complete(), which classifies, calls done and
 * frees: a job cannot end twice because it is on exactly one list until complete() takes it.
 *
 * Timers. curl enforces the connect timeout and the deadline (CURLOPT_TIMEOUT_MS from the time
 * left at start); the loop enforces the stall time itself, from the time of the last byte the
 * callbacks saw, because curl's low-speed check counts in whole seconds and averages; and the
 * deadline of queued jobs and the start time of retries. The loop's poll waits for whichever
 * comes first (curl_multi_poll also honours curl's own timers).
 *
 * Per-host cap: a small table of hosts with running transfers (at most max_inflight rows,
 * searched linearly: tens of rows). A job whose host is at its cap is skipped, not blocking
 * the ones behind it; it starts when a transfer to its host ends, before later arrivals to
 * that host.
 *
 * Costs: one thread; a job is one allocation plus its copied strings and header list; a
 * running one adds an easy handle and curl's receive buffer. Easy handles are made per job and
 * connections are kept in the multi's cache, so keep-alive works across jobs. */
#include "net/http_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/log.h"

#define HOST_KEY_MAX 256
#define POLL_MAX_MS 1000

struct host_slot {
        char host[HOST_KEY_MAX];
        unsigned active; /* 0: free row */
};

struct http_group {
        struct http_client *c;
        atomic_bool closed;   /* written under c->lock; read by the loop without it */
        unsigned outstanding; /* c->lock: jobs submitted and not completed */
        unsigned cap;         /* jobs running at once; 0: none */
        atomic_uint active;   /* written by the loop; read by http_group_counts() */
        /* The group's own per-host cap (0: none) and its table of hosts with running jobs of
         * the group (nslots rows: as many as the group can run at once); loop thread only,
         * once set before the first submit. */
        unsigned per_host;
        struct host_slot *slots;
        unsigned nslots;
};

struct job {
        struct job *prev, *next;
        struct http_request req; /* strings point into the copies below */
        char *url, *range, *protocols, *redir_protocols, *ca_file, *userpwd, *method;
        struct curl_slist *hdrs;
        char host[HOST_KEY_MAX];

        bool call; /* http_client_call(): no transfer, done runs when due */
        CURL *easy;
        struct host_slot *slot, *gslot; /* the client's row of its host, its group's */
        struct http_response resp;
        char errbuf[CURL_ERROR_SIZE];
        uint64_t start_ms, last_byte_ms, start_us;
        bool stalled;
        int data_err; /* a body or header cap, or on_data's -errno */
};

struct jlist {
        struct job *head, *tail;
};

struct http_client {
        struct http_client_config cfg;
        CURLM *multi;
        pthread_t thread;

        pthread_mutex_t lock; /* incoming, nqueued, stopping, cancel_pending, stats, groups */
        pthread_cond_t cond;  /* a job of a group completed */
        struct jlist incoming;
        size_t nqueued; /* incoming + waiting */
        bool stopping;
        bool cancel_pending; /* a group was closed: the loop looks for its jobs */
        struct http_client_stats stats;

        /* loop thread only */
        struct jlist waiting, running;
        unsigned active;
        struct host_slot *slots; /* max_inflight rows */
};

/* ---- lists ---------------------------------------------------------------------------- */

static void list_push(struct jlist *l, struct job *j) {
        j->next = NULL;
        j->prev = l->tail;
        if (l->tail)
                l->tail->next = j;
        else
                l->head = j;
        l->tail = j;
}

static void list_remove(struct jlist *l, struct job *j) {
        if (j->prev)
                j->prev->next = j->next;
        else
                l->head = j->next;
        if (j->next)
                j->next->prev = j->prev;
        else
                l->tail = j->prev;
        j->prev = j->next = NULL;
}

static void list_splice(struct jlist *to, struct jlist *from) {
        if (!from->head)
                return;
        if (to->tail) {
                to->tail->next = from->head;
                from->head->prev = to->tail;
        } else {
                to->head = from->head;
        }
        to->tail = from->tail;
        from->head = from->tail = NULL;
}

/* ---- jobs ----------------------------------------------------------------------------- */

static uint64_t now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void http_response_clear(struct http_response *resp) {
        dynbuf_free(&resp->headers);
        dynbuf_free(&resp->body);
        *resp = (struct http_response){.content_length = -1};
}

static void job_free(struct job *j) {
        if (!j)
                return;
        if (j->easy)
                curl_easy_cleanup(j->easy);
        curl_slist_free_all(j->hdrs);
        free(j->url);
        free(j->range);
        free(j->protocols);
        free(j->redir_protocols);
        free(j->ca_file);
        free(j->userpwd);
        free(j->method);
        http_response_clear(&j->resp);
        free(j);
}

/* "host:port" of URL (what follows "scheme://" up to the path, without user info). */
static void host_of(const char *url, char out[HOST_KEY_MAX]) {
        const char *p = strstr(url, "://");
        p = p ? p + 3 : url;
        size_t n = strcspn(p, "/?#");
        const char *at = memchr(p, '@', n);
        if (at) {
                n -= (size_t)(at + 1 - p);
                p = at + 1;
        }
        if (n >= HOST_KEY_MAX)
                n = HOST_KEY_MAX - 1;
        memcpy(out, p, n);
        out[n] = '\0';
}

static int dup_opt(const char *s, char **ret) {
        *ret = NULL;
        if (s && !(*ret = strdup(s)))
                return -ENOMEM;
        return 0;
}

static struct job *job_new(const struct http_request *req, int *ret_err) {
        *ret_err = -EINVAL;
        if (!req->url || !req->url[0] || strlen(req->url) >= HTTP_CLIENT_URL_MAX)
                return NULL;
        const char *m = req->method ? req->method : "GET";
        if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0 && strcmp(m, "POST") != 0)
                return NULL;
        *ret_err = -ENOMEM;
        struct job *j = calloc(1, sizeof(*j));
        if (!j)
                return NULL;
        j->req = *req;
        j->resp.content_length = -1;
        if (dup_opt(req->url, &j->url) < 0 || dup_opt(req->range, &j->range) < 0 ||
            dup_opt(req->protocols, &j->protocols) < 0 ||
            dup_opt(req->redir_protocols, &j->redir_protocols) < 0 ||
            dup_opt(req->ca_file, &j->ca_file) < 0 || dup_opt(req->userpwd, &j->userpwd) < 0 ||
            dup_opt(m, &j->method) < 0)
                goto out_free;
        for (size_t i = 0; i < HTTP_CLIENT_HEADERS_MAX && req->headers[i]; i++) {
                struct curl_slist *l = curl_slist_append(j->hdrs, req->headers[i]);
                if (!l)
                        goto out_free;
                j->hdrs = l;
        }
        memset(j->req.headers, 0, sizeof(j->req.headers)); /* the list above holds them */
        j->req.url = j->url;
        j->req.range = j->range;
        j->req.protocols = j->protocols;
        j->req.redir_protocols = j->redir_protocols;
        j->req.ca_file = j->ca_file;
        j->req.userpwd = j->userpwd;
        j->req.method = j->method;
        host_of(j->url, j->host);
        *ret_err = 0;
        dynbuf_init(&j->resp.headers, req->header_max ? req->header_max : HTTP_CLIENT_HEADER_MAX);
        dynbuf_init(&j->resp.body, req->body_max);
        return j;
out_free:
        job_free(j);
        return NULL;
}

enum fetch_err http_classify(int curl_code, long status) {
        return curl_code != CURLE_OK ? fetch_err_from_curl(curl_code) : fetch_err_from_http(status);
}

/* Ends J: settles err, class and reason unless ERR already did (a stall, a cancel), calls
 * done, and frees J. J is on no list. */
static void complete(struct http_client *c, struct job *j, int err, enum fetch_err cls,
                     const char *reason) {
        struct http_response *r = &j->resp;
        r->err = err;
        r->fclass = cls;
        if (cls != FETCH_OK)
                snprintf(r->reason, sizeof(r->reason), "%s", reason ? reason : "");
        else
                r->reason[0] = '\0';
        if (!j->call) { /* counted before done: a waiter woken sees it */
                pthread_mutex_lock(&c->lock);
                c->stats.jobs++;
                c->stats.failures += cls != FETCH_OK;
                c->stats.connects += r->new_connections > 0 ? (uint64_t)r->new_connections : 0;
                pthread_mutex_unlock(&c->lock);
        }
        j->req.done(j->req.ud, r);
        struct http_group *g = j->req.group;
        if (g) { /* after done: a closed group's owner may go once this reaches 0 */
                pthread_mutex_lock(&c->lock);
                if (--g->outstanding == 0)
                        pthread_cond_broadcast(&c->cond);
                pthread_mutex_unlock(&c->lock);
        }
        job_free(j);
}

static void cancel(struct http_client *c, struct job *j, const char *reason) {
        complete(c, j, -ECANCELED, FETCH_ERR_CANCELED, reason);
}

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
                        complete(c, j, -ETIMEDOUT, FETCH_ERR_TIMEOUT,
                                 "deadline passed while queued");
                } else if (j->req.not_before_ms > now) {
                        if (j->req.not_before_ms - now < next)
                                next = j->req.not_before_ms - now;
                } else if (j->call) { /* due: runs now, takes no slot */
                        list_remove(&c->waiting, j);
                        pthread_mutex_lock(&c->lock);
                        c->nqueued--;
                        pthread_mutex_unlock(&c->lock);
                        complete(c, j, 0, FETCH_OK, NULL);
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
                                        complete(c, j, r, FETCH_ERR_LOCAL,
                                                 "not wanted any more when its turn came");
                                } else if (r < 0) {
                                        complete(c, j, r, FETCH_ERR_LOCAL,
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
                complete(c, j, err, cls, reason);
                return;
        }
        if (cc != CURLE_OK) {
                enum fetch_err cls = fetch_err_from_curl((int)cc);
                snprintf(reason, sizeof(reason), "%s",
                         j->errbuf[0] ? j->errbuf : curl_easy_strerror(cc));
                complete(c, j, fetch_err_to_errno(cls), cls, reason);
                return;
        }
        snprintf(reason, sizeof(reason), "HTTP %ld", status);
        complete(c, j, 0, fetch_err_from_http(status), reason);
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
                        complete(c, j, -ETIMEDOUT, FETCH_ERR_TIMEOUT, reason);
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
                        cancel(c, j, "canceled");
                }
        }
        for (struct job *j = c->running.head, *nx; j; j = nx) {
                nx = j->next;
                if (j->req.group && atomic_load(&j->req.group->closed)) {
                        detach(c, j);
                        cancel(c, j, "canceled");
                }
        }
}

static void *client_main(void *arg) {
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
                cancel(c, j, "shutting down");
        }
        while (c->running.head) {
                struct job *j = c->running.head;
                detach(c, j);
                cancel(c, j, "shutting down");
        }
        return NULL;
}

/* ---- the interface ----------------------------------------------------------------------- */

int http_client_new(const struct http_client_config *cfg, struct http_client **ret) {
        struct http_client *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        if (cfg)
                c->cfg = *cfg;
        if (!c->cfg.max_inflight)
                c->cfg.max_inflight = HTTP_CLIENT_MAX_INFLIGHT;
        if (!c->cfg.per_host || c->cfg.per_host > c->cfg.max_inflight)
                c->cfg.per_host = c->cfg.max_inflight;
        if (!c->cfg.max_queued)
                c->cfg.max_queued = HTTP_CLIENT_MAX_QUEUED;
        if (!c->cfg.connect_timeout_ms)
                c->cfg.connect_timeout_ms = HTTP_CLIENT_CONNECT_TIMEOUT_MS;
        int r = -ENOMEM;
        c->slots = calloc(c->cfg.max_inflight, sizeof(*c->slots));
        c->multi = curl_multi_init();
        if (!c->slots || !c->multi)
                goto out_free;
        /* Connections kept for reuse: enough for every transfer that may run at once. */
        curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)c->cfg.max_inflight);
        pthread_mutex_init(&c->lock, NULL);
        pthread_cond_init(&c->cond, NULL);
        r = -pthread_create(&c->thread, NULL, client_main, c);
        if (r < 0) {
                pthread_mutex_destroy(&c->lock);
                pthread_cond_destroy(&c->cond);
                goto out_free;
        }
        *ret = c;
        return 0;
out_free:
        if (c->multi)
                curl_multi_cleanup(c->multi);
        free(c->slots);
        free(c);
        return r;
}

void http_client_free(struct http_client *c) {
        if (!c)
                return;
        pthread_mutex_lock(&c->lock);
        c->stopping = true;
        pthread_mutex_unlock(&c->lock);
        curl_multi_wakeup(c->multi);
        pthread_join(c->thread, NULL);
        curl_multi_cleanup(c->multi);
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->cond);
        free(c->slots);
        free(c);
}

/* Queues J (made by job_new, or a call); on a refusal J is freed. 0 or -errno. */
static int enqueue(struct http_client *c, struct job *j) {
        int r = 0;
        struct http_group *g = j->req.group;
        pthread_mutex_lock(&c->lock);
        if (c->stopping || (g && atomic_load(&g->closed))) {
                r = -ECANCELED;
        } else if (c->nqueued >= c->cfg.max_queued) {
                c->stats.refused++;
                r = -EAGAIN;
        } else {
                c->nqueued++;
                if (g)
                        g->outstanding++;
                list_push(&c->incoming, j);
        }
        pthread_mutex_unlock(&c->lock);
        if (r < 0) {
                job_free(j);
                return r;
        }
        /* From a callback the loop is awake already: it looks at `incoming` before it polls
         * again (client_main), so a wakeup would only cost it a poll and two reads. */
        if (!pthread_equal(pthread_self(), c->thread))
                curl_multi_wakeup(c->multi);
        return 0;
}

int http_client_submit(struct http_client *c, const struct http_request *req) {
        if (!req->done)
                return -EINVAL;
        int r = 0;
        struct job *j = job_new(req, &r);
        if (!j)
                return r;
        return enqueue(c, j);
}

int http_client_call(struct http_client *c, struct http_group *g, uint64_t not_before_ms,
                     http_done_fn fn, void *ud) {
        if (!fn)
                return -EINVAL;
        struct job *j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        j->call = true;
        j->req = (struct http_request){
                .not_before_ms = not_before_ms, .done = fn, .ud = ud, .group = g};
        j->resp.content_length = -1;
        return enqueue(c, j);
}

struct run_wait {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool finished;
        struct http_response *out;
};

static void run_done(void *ud, struct http_response *resp) {
        struct run_wait *w = ud;
        pthread_mutex_lock(&w->lock);
        *w->out = *resp; /* the buffers move to the waiter */
        dynbuf_init(&resp->headers, resp->headers.max);
        dynbuf_init(&resp->body, resp->body.max);
        w->finished = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
}

int http_client_run(struct http_client *c, const struct http_request *req,
                    struct http_response *resp) {
        *resp = (struct http_response){.content_length = -1};
        int r = -EDEADLK;
        if (!pthread_equal(pthread_self(), c->thread)) {
                struct run_wait w = {.lock = PTHREAD_MUTEX_INITIALIZER,
                                     .cond = PTHREAD_COND_INITIALIZER,
                                     .out = resp};
                struct http_request q = *req;
                q.data_ud = req->data_ud ? req->data_ud : req->ud;
                q.done = run_done;
                q.ud = &w;
                r = http_client_submit(c, &q);
                if (r == 0) {
                        pthread_mutex_lock(&w.lock);
                        while (!w.finished)
                                pthread_cond_wait(&w.cond, &w.lock);
                        pthread_mutex_unlock(&w.lock);
                        pthread_cond_destroy(&w.cond);
                        pthread_mutex_destroy(&w.lock);
                        return resp->err;
                }
        }
        resp->err = r;
        resp->fclass = r == -ECANCELED ? FETCH_ERR_CANCELED : FETCH_ERR_LOCAL;
        snprintf(resp->reason, sizeof(resp->reason), "request not queued: %s", strerror(-r));
        return r;
}

int http_response_header(const struct http_response *resp, const char *name, char *out,
                         size_t len) {
        const char *p = (const char *)resp->headers.data;
        size_t nl = strlen(name);
        while (p && *p) {
                const char *eol = strchr(p, '\n');
                const char *end = eol ? eol : p + strlen(p);
                if ((size_t)(end - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
                        const char *v = p + nl + 1;
                        while (v < end && (*v == ' ' || *v == '\t'))
                                v++;
                        while (end > v && (end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t'))
                                end--;
                        size_t vl = (size_t)(end - v);
                        if (len) {
                                if (vl >= len)
                                        vl = len - 1;
                                memcpy(out, v, vl);
                                out[vl] = '\0';
                        }
                        return 0;
                }
                p = eol ? eol + 1 : end;
        }
        return -ENOENT;
}

int http_group_new(struct http_client *c, unsigned max_inflight, struct http_group **ret) {
        return http_group_new_per_host(c, max_inflight, 0, ret);
}

int http_group_new_per_host(struct http_client *c, unsigned max_inflight, unsigned per_host,
                            struct http_group **ret) {
        struct http_group *g = calloc(1, sizeof(*g));
        if (!g)
                return -ENOMEM;
        g->c = c;
        g->cap = max_inflight;
        atomic_init(&g->closed, false);
        atomic_init(&g->active, 0);
        if (per_host) {
                /* A row per job the group may run at once: the table never fills up first. */
                g->nslots = max_inflight && max_inflight < c->cfg.max_inflight
                                    ? max_inflight
                                    : c->cfg.max_inflight;
                g->per_host = per_host;
                g->slots = calloc(g->nslots, sizeof(*g->slots));
                if (!g->slots) {
                        free(g);
                        return -ENOMEM;
                }
        }
        *ret = g;
        return 0;
}

void http_group_close(struct http_group *g) {
        if (!g)
                return;
        struct http_client *c = g->c;
        pthread_mutex_lock(&c->lock);
        atomic_store(&g->closed, true);
        c->cancel_pending = true;
        pthread_mutex_unlock(&c->lock);
        curl_multi_wakeup(c->multi);
        pthread_mutex_lock(&c->lock);
        while (g->outstanding > 0)
                pthread_cond_wait(&c->cond, &c->lock);
        pthread_mutex_unlock(&c->lock);
}

void http_group_counts(struct http_group *g, unsigned *ret_active, unsigned *ret_waiting) {
        pthread_mutex_lock(&g->c->lock);
        unsigned active = atomic_load(&g->active);
        unsigned out = g->outstanding;
        pthread_mutex_unlock(&g->c->lock);
        *ret_active = active;
        *ret_waiting = out > active ? out - active : 0;
}

void http_group_free(struct http_group *g) {
        if (!g)
                return;
        http_group_close(g);
        free(g->slots);
        free(g);
}

void http_client_get_stats(struct http_client *c, struct http_client_stats *ret) {
        pthread_mutex_lock(&c->lock);
        *ret = c->stats;
        pthread_mutex_unlock(&c->lock);
}
