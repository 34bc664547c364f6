/* The node's HTTP client. See http_client.h for the contract. This file: the interface, the
 * jobs and their completion; http_client_loop.c the loop thread; http_client_int.h the
 * structures both share.
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
#include "net/http_client_int.h"

/* ---- jobs ----------------------------------------------------------------------------- */

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

void hc_complete(struct http_client *c, struct job *j, int err, enum fetch_err cls,
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

void hc_cancel(struct http_client *c, struct job *j, const char *reason) {
        hc_complete(c, j, -ECANCELED, FETCH_ERR_CANCELED, reason);
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
        r = -pthread_create(&c->thread, NULL, hc_loop_main, c);
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
         * again (hc_loop_main), so a wakeup would only cost it a poll and two reads. */
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
