/* Origin registry client. See origin.h for the contract.
 *
 * Transport: every request is a job on the node's one HTTP client (net/http_client.h), tagged
 * with the origin's group, whose cap is max_connections; the client owns the queue (arrival
 * order), the connections, the deadline and the stall time. What stays here is the registry's
 * protocol: URLs, Range, bearer tokens, the answers' meaning, retries.
 *
 * A fetch's life: submitted (an attempt: one job on the client) -> done, or -> retried after a
 * backoff (a new attempt whose start time the client honours), or -> parked on a token fetch
 * after a 401, then submitted again. Every fetch ends in exactly one call of its done callback
 * (once per chunk for a run). Attempts complete on the client's thread, one at a time, so the
 * callbacks run there (they must not block, as before, when they ran on our own thread).
 *
 * Failure is classified in one place (attempt_done(), with net/fetch_err's classes) into
 * "retry later" or "fail now"; the deadline bounds the retries, so a dead origin costs a
 * reader at most its fetch timeout, and the first failure of a registry is logged with its
 * reason, the recovery once more.
 *
 * Credentials and tokens live in origin_token.c; the structures both files share in
 * origin_int.h.
 *
 * Locking: `lock` protects the stats, the token slots (with their parked fetches), the health
 * slots and `stopping`. It is taken by callers (submit: the token for the Authorization
 * header) and by completions, never across a call into the client or a done callback. */
#include "registry/origin.h"
#include "registry/origin_int.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "net/fetch_err.h"
#include "util/log.h"

static bool is_insecure(const struct origin *o, const char *registry) {
        for (size_t i = 0; i < o->cfg.n_insecure; i++)
                if (strcmp(o->insecure[i], registry) == 0)
                        return true;
        return false;
}

static uint64_t jitter(uint64_t ms) {
        uint32_t r = 0;
        if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
                r = (uint32_t)now_ms();
        return ms / 2 + (ms / 2 ? r % (ms / 2 + 1) : 0); /* "equal jitter": [ms/2, ms] */
}

void origin_job_free(struct job *j) {
        if (!j)
                return;
        free(j->buf);
        if (j->uds != &j->ud)
                free(j->uds);
        free(j->token_url);
        free(j);
}

void origin_job_finish(struct origin *o, struct job *j, int err, const char *reason) {
        if (j->kind == JOB_GET) {
                pthread_mutex_lock(&o->lock);
                o->stats.bytes += j->run_bytes;
                pthread_mutex_unlock(&o->lock);
                /* Delivered chunks were counted as they went; the rest end here, with ERR (a
                 * run that ended "well" without them was cut short: never a success). */
                for (unsigned i = j->run_done; i < j->run_n; i++)
                        j->done(j->uds[i], err < 0 ? err : -EPROTO,
                                err < 0 ? reason : "registry answer ended early", NULL, 0, NULL);
        } else if (j->done) {
                j->done(j->ud, err, reason, NULL, err == 0 ? j->len : 0, NULL);
        }
        origin_job_free(j);
}

/* ---- health and stats ------------------------------------------------------------------- */

static struct health_slot *health_of(struct origin *o, const char *registry) {
        struct health_slot *free_slot = NULL, *oldest = &o->health[0];
        for (size_t i = 0; i < HEALTH_SLOTS; i++) {
                struct health_slot *h = &o->health[i];
                if (strcmp(h->registry, registry) == 0)
                        return h;
                if (!h->registry[0] && !free_slot)
                        free_slot = h;
                if (h->failures < oldest->failures)
                        oldest = h;
        }
        struct health_slot *h = free_slot ? free_slot : oldest;
        memset(h, 0, sizeof(*h));
        snprintf(h->registry, sizeof(h->registry), "%s", registry);
        return h;
}

static void note_failure(struct origin *o, const struct job *j, const char *reason) {
        pthread_mutex_lock(&o->lock);
        struct health_slot *h = health_of(o, j->registry);
        h->failures++;
        bool first = !h->failing;
        h->failing = true;
        pthread_mutex_unlock(&o->lock);
        if (first)
                log_warning("origin failing registry=%s reason=\"%s\" hint=\"reads of missing "
                            "chunks retry until their fetch timeout, then fail with EIO\"",
                            j->registry, reason);
}

static void note_success(struct origin *o, const struct job *j) {
        pthread_mutex_lock(&o->lock);
        struct health_slot *h = health_of(o, j->registry);
        bool recovered = h->failing;
        uint64_t failures = h->failures;
        h->failing = false;
        h->failures = 0;
        pthread_mutex_unlock(&o->lock);
        if (recovered)
                log_notice("origin recovered registry=%s failures=%" PRIu64, j->registry, failures);
}

/* Counts one failed attempt under its cause. */
static void count_error(struct origin *o, int err) {
        pthread_mutex_lock(&o->lock);
        o->stats.errors++;
        switch (err) {
        case -ECONNREFUSED:
        case -EHOSTUNREACH:
                o->stats.err_connect++;
                break;
        case -ETIMEDOUT:
                o->stats.err_timeout++;
                break;
        case -EREMOTEIO:
                o->stats.err_http++;
                break;
        case -ENOENT:
                o->stats.err_not_found++;
                break;
        case -EACCES:
                o->stats.err_denied++;
                break;
        default:
                o->stats.err_protocol++;
                break;
        }
        pthread_mutex_unlock(&o->lock);
}

/* A failure no retry can fix: count it and finish the job now. */
static void fail_now(struct origin *o, struct job *j, int err, const char *reason) {
        count_error(o, err);
        origin_job_finish(o, j, err, reason);
}

/* Retries J after a backoff if its deadline allows, else fails it with ERR/REASON. */
static void retry_or_fail(struct origin *o, struct job *j, int err, const char *reason) {
        count_error(o, err);
        note_failure(o, j, reason);
        if (j->once) {
                origin_job_finish(o, j, err, reason);
                return;
        }
        uint64_t backoff = BACKOFF_BASE_MS << (j->attempt < 6 ? j->attempt : 6);
        if (backoff > BACKOFF_MAX_MS)
                backoff = BACKOFF_MAX_MS;
        backoff = jitter(backoff);
        uint64_t at = now_ms() + backoff;
        j->attempt++;
        if (at >= j->deadline_ms) {
                char why[512];
                snprintf(why, sizeof(why), "%s (gave up after %u attempts)", reason, j->attempt);
                origin_job_finish(o, j, err, why);
                return;
        }
        log_debug("origin retry registry=%s attempt=%u in_ms=%" PRIu64 " reason=\"%s\"",
                  j->registry, j->attempt, backoff, reason);
        origin_submit_attempt(o, j, at);
}

/* ---- attempts ---------------------------------------------------------------------------- */

/* Bytes of an answer that is not the range asked for are not read: the attempt ends and the
 * status decides (attempt_done). Whether the answer R for run J carries the bytes at J->off: a
 * 206 whose Content-Range starts there and ends where the run does, or a 200 (the whole blob)
 * for a run that starts at 0. */
static bool run_answer_ok(const struct job *j, const struct http_response *r) {
        if (r->status == 200)
                return j->off == 0;
        if (r->status != 206)
                return false;
        char got[128], want[96];
        if (http_response_header(r, "Content-Range", got, sizeof(got)) < 0)
                return false;
        int n = snprintf(want, sizeof(want), "bytes %" PRIu64 "-%" PRIu64 "/", j->off,
                         j->off + j->len - 1);
        return strncmp(got, want, (size_t)n) == 0;
}

/* A run's body: fills one chunk at a time and hands each to its reader the moment it is
 * whole, so the first chunk's readers do not wait for the rest of the run. */
static int on_run_data(void *ud, struct http_response *r, const uint8_t *data, size_t n) {
        struct job *j = ud;
        if (!j->answer)
                j->answer = run_answer_ok(j, r) ? 1 : -1;
        if (j->answer < 0) {
                j->overflow = true; /* stop reading; the status says what went wrong */
                return -EPROTO;
        }
        size_t used = 0;
        while (used < n) {
                if (j->run_done == j->run_n) {
                        j->overflow = true; /* a 200 of the whole blob: we have our part */
                        return -EPROTO;
                }
                uint64_t cstart = j->run_off + (uint64_t)j->run_done * j->chunk_size;
                uint64_t cend =
                        cstart + j->chunk_size < j->run_end ? cstart + j->chunk_size : j->run_end;
                size_t clen = (size_t)(cend - cstart);
                if (!j->buf) {
                        j->buf = malloc(clen);
                        if (!j->buf)
                                return -ENOMEM;
                        j->got = 0;
                }
                size_t take = clen - j->got < n - used ? clen - j->got : n - used;
                memcpy(j->buf + j->got, data + used, take);
                j->got += take;
                used += take;
                if (j->got == clen) {
                        uint8_t *buf = j->buf;
                        j->buf = NULL;
                        j->got = 0;
                        j->off += clen;
                        j->len -= clen;
                        j->run_bytes += clen;
                        void *cud = j->uds[j->run_done++];
                        j->done(cud, 0, NULL, buf, clen, NULL);
                }
        }
        return 0;
}

static void attempt_done(void *ud, struct http_response *r);

static int build_url(struct origin *o, const struct job *j, char *url, size_t len) {
        const char *scheme = is_insecure(o, j->registry) ? "http" : "https";
        int n;
        if (j->kind == JOB_MANIFEST_GET || j->kind == JOB_MANIFEST_HEAD) {
                n = snprintf(url, len, "%s://%s/v2/%s/manifests/%s", scheme, j->registry,
                             j->repository, j->reference);
        } else {
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(&j->blob, hex);
                n = snprintf(url, len, "%s://%s/v2/%s/blobs/sha256:%s", scheme, j->registry,
                             j->repository, hex);
        }
        return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Submits one attempt of J, to start no earlier than NOT_BEFORE; a refusal ends J. */
void origin_submit_attempt(struct origin *o, struct job *j, uint64_t not_before) {
        char url[URL_MAX], range[64], auth[sizeof(o->tokens[0].value) + 32];
        char cred[CREDENTIALS_MAX];
        bool token = j->kind == JOB_TOKEN;
        bool insecure = !token && is_insecure(o, j->registry);
        bool manifest = j->kind == JOB_MANIFEST_GET || j->kind == JOB_MANIFEST_HEAD;
        struct http_request q = {
                .method = j->kind == JOB_HEAD || j->kind == JOB_MANIFEST_HEAD ? "HEAD" : "GET",
                .url = url,
                /* the realm may be http for an insecure registry */
                .protocols = token || insecure ? "http,https" : "https",
                .redir_protocols = insecure ? "http,https" : "https",
                .max_redirects = MAX_REDIRECTS,
                .ca_file = o->ca_file,
                .deadline_ms = j->deadline_ms,
                .not_before_ms = not_before,
                .connect_timeout_ms = o->cfg.connect_timeout_ms,
                .stall_ms = o->cfg.stall_timeout_ms,
                .done = attempt_done,
                .ud = j,
                .group = o->group,
        };
        int r = 0;
        if (token)
                snprintf(url, sizeof(url), "%s", j->token_url);
        else
                r = build_url(o, j, url, sizeof(url));
        size_t h = 0;
        if (manifest)
                q.headers[h++] = MANIFEST_ACCEPT;
        if (!token && origin_auth_header(o, j, auth, sizeof(auth)))
                q.headers[h++] = auth;
        if (j->kind == JOB_GET) {
                snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, j->off, j->off + j->len - 1);
                q.range = range;
                q.recv_buffer = ORIGIN_RECV_BUFFER;
                q.on_data = on_run_data;
                free(j->buf); /* a chunk begun by an earlier attempt starts over */
                j->buf = NULL;
                j->got = 0;
                j->answer = 0;
                j->overflow = false;
        } else if (j->kind == JOB_MANIFEST_GET) {
                q.body_max = j->max_len;
        } else if (token) {
                q.body_max = TOKEN_BODY_MAX - 1;
                if (origin_credentials_for(o, j->registry, cred, sizeof(cred)))
                        q.userpwd = cred;
        }
        bool get = j->kind == JOB_GET; /* J may be completed and freed once submitted */
        if (r == 0)
                r = http_client_submit(o->http, &q); /* -EAGAIN: the client's queue is full */
        if (r < 0) {
                origin_job_abort(o, j, r,
                                 r == -ECANCELED ? "shutting down"
                                 : token         ? "could not start token request"
                                                 : "could not start request");
                return;
        }
        if (get) {
                pthread_mutex_lock(&o->lock);
                o->stats.requests++;
                pthread_mutex_unlock(&o->lock);
        }
}

/* A manifest answer that is neither an error status nor a retry: hands what the registry said
 * to the waiting caller. The body is not checked here; the caller knows which digest it
 * wanted. */
static void manifest_done(struct origin *o, struct job *j, struct http_response *r) {
        char reason[512];
        if (r->status != 200) {
                snprintf(reason, sizeof(reason), "unexpected manifest answer (HTTP %ld)",
                         r->status);
                fail_now(o, j, -EPROTO, reason);
                return;
        }
        struct origin_manifest *m = j->mout;
        memset(m, 0, sizeof(*m));
        http_response_header(r, "Content-Type", m->media_type, sizeof(m->media_type));
        char d[128] = "";
        http_response_header(r, "Docker-Content-Digest", d, sizeof(d));
        m->has_digest = digest_parse(d, &m->digest) == 0;
        if (j->kind == JOB_MANIFEST_GET) {
                size_t n = 0;
                m->body = dynbuf_take(&r->body, &n);
                m->size = n;
                if (!m->body) {
                        fail_now(o, j, -ENOMEM, "out of memory");
                        return;
                }
        } else {
                m->size = r->content_length >= 0 ? (uint64_t)r->content_length : 0;
        }
        note_success(o, j);
        origin_job_finish(o, j, 0, NULL);
}

/* Classifies a finished attempt: succeed, retry later, or fail now. */
static void attempt_done(void *ud, struct http_response *r) {
        struct job *j = ud;
        struct origin *o = j->o;
        if (j->kind == JOB_TOKEN) {
                origin_token_done(o, j, r);
                return;
        }
        char reason[512];
        bool manifest = j->kind == JOB_MANIFEST_GET || j->kind == JOB_MANIFEST_HEAD;
        if (r->err == -ECANCELED) {
                origin_job_finish(o, j, -ECANCELED, "shutting down");
                return;
        }
        if (r->err == -ETIMEDOUT && !r->started) {
                origin_job_finish(o, j, -ETIMEDOUT, "deadline passed while queued");
                return;
        }
        if (r->err == -EFBIG && j->kind == JOB_MANIFEST_GET && r->status == 200) {
                snprintf(reason, sizeof(reason), "manifest larger than %zu bytes", j->max_len);
                fail_now(o, j, -EFBIG, reason);
                return;
        }
        if (r->err < 0 && !j->overflow) {
                /* No answer came in full: curl's class decides (fetch_err.h). */
                enum fetch_err cls = r->fclass;
                snprintf(reason, sizeof(reason), "%s", r->reason);
                if (fetch_err_is_transient(cls) || cls == FETCH_ERR_LOCAL) {
                        retry_or_fail(o, j,
                                      fetch_err_to_errno(cls == FETCH_ERR_LOCAL ? FETCH_ERR_TRANSFER
                                                                                : cls),
                                      reason);
                } else {
                        note_failure(o, j, reason); /* TLS, scheme, redirects */
                        fail_now(o, j, fetch_err_to_errno(cls), reason);
                }
                return;
        }
        long status = r->status;
        enum fetch_err cls = fetch_err_from_http(status);
        if (status == 401 && !j->auth_tried) {
                char www[1024] = "";
                struct auth_challenge ch;
                http_response_header(r, "WWW-Authenticate", www, sizeof(www));
                if (auth_parse_challenge(www, &ch) == 0 && ch.scheme != AUTH_NONE) {
                        origin_authenticate(o, j, &ch);
                        return;
                }
                fail_now(o, j, -EACCES, "registry answered 401 without a usable challenge");
                return;
        }
        if (cls == FETCH_ERR_DENIED) {
                snprintf(reason, sizeof(reason), "registry denied access (HTTP %ld)", status);
                fail_now(o, j, -EACCES, reason);
                return;
        }
        if (status == 404) {
                fail_now(o, j, -ENOENT,
                         manifest ? "manifest not found at the registry (HTTP 404)"
                                  : "blob not found at the registry (HTTP 404)");
                return;
        }
        if (cls == FETCH_ERR_BUSY || cls == FETCH_ERR_SERVER) { /* 429, 5xx: try again */
                snprintf(reason, sizeof(reason), "registry answered HTTP %ld", status);
                retry_or_fail(o, j, -EREMOTEIO, reason);
                return;
        }
        if (manifest) {
                manifest_done(o, j, r);
                return;
        }
        if (j->kind == JOB_HEAD) {
                if (status != 200 || r->content_length < 0) {
                        snprintf(reason, sizeof(reason), "unexpected HEAD answer (HTTP %ld)",
                                 status);
                        fail_now(o, j, -EPROTO, reason);
                        return;
                }
                note_success(o, j);
                j->len = (size_t)r->content_length;
                origin_job_finish(o, j, 0, NULL);
                return;
        }
        /* Every chunk delivered (a 200 of the whole blob stops after our part). */
        if (j->run_done == j->run_n) {
                note_success(o, j);
                origin_job_finish(o, j, 0, NULL);
                return;
        }
        snprintf(reason, sizeof(reason),
                 "registry did not honour the byte range (HTTP %ld, %u of %u chunks)", status,
                 j->run_done, j->run_n);
        note_failure(o, j, reason);
        fail_now(o, j, -EPROTO, reason);
}

/* ---- the interface ----------------------------------------------------------------------- */

static char *read_file_text(const char *path, size_t max) {
        FILE *f = fopen(path, "re");
        if (!f)
                return NULL;
        char *buf = malloc(max + 1);
        size_t n = buf ? fread(buf, 1, max, f) : 0;
        fclose(f);
        if (buf)
                buf[n] = '\0';
        return buf;
}

static void origin_destroy(struct origin *o) {
        http_group_free(o->group);
        if (o->own_http)
                http_client_free(o->http);
        for (size_t i = 0; o->insecure && o->insecure[i]; i++)
                free(o->insecure[i]);
        free(o->insecure);
        free(o->ca_file);
        free(o->credentials_json);
        pthread_mutex_destroy(&o->lock);
        free(o);
}

int origin_new(const struct origin_config *cfg, struct origin **ret) {
        struct origin *o = calloc(1, sizeof(*o));
        if (!o)
                return -ENOMEM;
        pthread_mutex_init(&o->lock, NULL);
        o->cfg = *cfg;
        if (o->cfg.max_connections == 0)
                o->cfg.max_connections = 16;
        if (o->cfg.connect_timeout_ms == 0)
                o->cfg.connect_timeout_ms = 5000;
        if (o->cfg.stall_timeout_ms == 0)
                o->cfg.stall_timeout_ms = 10000;
        int r = -ENOMEM;
        o->insecure = calloc(cfg->n_insecure + 1, sizeof(char *));
        if (!o->insecure)
                goto out_destroy;
        for (size_t i = 0; i < cfg->n_insecure; i++)
                if (!(o->insecure[i] = strdup(cfg->insecure[i])))
                        goto out_destroy;
        if (cfg->ca_file && !(o->ca_file = strdup(cfg->ca_file)))
                goto out_destroy;
        if (cfg->credentials_path) {
                o->credentials_json = read_file_text(cfg->credentials_path, 1 << 20);
                if (!o->credentials_json)
                        log_notice("origin credentials file unreadable path=%s err=\"%m\" "
                                   "hint=\"pulling anonymously\"",
                                   cfg->credentials_path);
        }
        o->http = cfg->http;
        if (!o->http) {
                struct http_client_config hc = {.max_inflight = o->cfg.max_connections};
                r = http_client_new(&hc, &o->http);
                if (r < 0)
                        goto out_destroy;
                o->own_http = true;
        }
        r = http_group_new(o->http, o->cfg.max_connections, &o->group);
        if (r < 0)
                goto out_destroy;
        *ret = o;
        return 0;
out_destroy:
        origin_destroy(o);
        return r;
}

void origin_free(struct origin *o) {
        if (!o)
                return;
        pthread_mutex_lock(&o->lock);
        o->stopping = true;
        pthread_mutex_unlock(&o->lock);
        /* Attempts queued or running end with -ECANCELED; their fetches (and those parked on
         * a token fetch) are failed "shutting down"; retries are refused from now on. */
        http_group_close(o->group);
        origin_destroy(o);
}

static struct job *job_new(struct origin *o, enum job_kind kind, const char *source,
                           const struct digest *blob, uint64_t deadline_ms, origin_done_fn done,
                           void *ud, int *ret_err) {
        struct blob_ref ref;
        int r = ref_parse_source(source, &ref);
        if (r < 0) {
                *ret_err = r;
                return NULL;
        }
        struct job *j = calloc(1, sizeof(*j));
        if (!j) {
                *ret_err = -ENOMEM;
                return NULL;
        }
        j->o = o;
        j->kind = kind;
        memcpy(j->registry, ref.registry, sizeof(j->registry));
        memcpy(j->repository, ref.repository, sizeof(j->repository));
        j->blob = *blob;
        j->deadline_ms = deadline_ms;
        j->done = done;
        j->ud = ud;
        return j;
}

static void submit(struct origin *o, struct job *j) {
        pthread_mutex_lock(&o->lock);
        bool stopping = o->stopping;
        pthread_mutex_unlock(&o->lock);
        if (stopping) {
                origin_job_finish(o, j, -ECANCELED, "shutting down");
                return;
        }
        origin_submit_attempt(o, j, 0);
}

void origin_fetch(struct origin *o, const char *source, const struct digest *blob, uint64_t off,
                  size_t len, uint64_t deadline_ms, origin_done_fn done, void *ud) {
        int err = 0;
        struct job *j = job_new(o, JOB_GET, source, blob, deadline_ms, done, ud, &err);
        if (!j) {
                done(ud, err, "malformed source reference", NULL, 0, NULL);
                return;
        }
        /* A run of one chunk: the same answer checks, the same single buffer. */
        j->uds = &j->ud;
        j->run_n = 1;
        j->chunk_size = len;
        j->run_off = j->off = off;
        j->run_end = off + len;
        j->len = len;
        submit(o, j);
}

void origin_fetch_run(struct origin *o, const char *source, const struct digest *blob, uint64_t off,
                      uint64_t end, size_t chunk_size, unsigned n, uint64_t deadline_ms,
                      origin_done_fn done, void *const *uds) {
        int err = 0;
        struct job *j = n && end > off && (end - off + chunk_size - 1) / chunk_size == n
                                ? job_new(o, JOB_GET, source, blob, deadline_ms, done, NULL, &err)
                                : NULL;
        void **copy = j ? malloc(n * sizeof(*copy)) : NULL;
        if (!copy) {
                free(j);
                const char *why = err ? "malformed source reference" : "bad run or out of memory";
                for (unsigned i = 0; i < n; i++)
                        done(uds[i], err ? err : -ENOMEM, why, NULL, 0, NULL);
                return;
        }
        memcpy(copy, uds, n * sizeof(*copy));
        j->uds = copy;
        j->run_n = n;
        j->chunk_size = chunk_size;
        j->run_off = j->off = off;
        j->run_end = end;
        j->len = (size_t)(end - off);
        submit(o, j);
}

struct sync_wait {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool finished;
        int err;
        size_t len;
        char reason[256];
};

static void sync_done(void *ud, int err, const char *reason, uint8_t *buf, size_t len,
                      const struct chunk_check *chk) {
        (void)chk;
        struct sync_wait *w = ud;
        free(buf);
        pthread_mutex_lock(&w->lock);
        w->err = err;
        w->len = len;
        snprintf(w->reason, sizeof(w->reason), "%s", reason ? reason : "");
        w->finished = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
}

/* Runs J (whose callback is sync_done on W) and waits for its end. 0, or its -errno with
 * REASON. */
static int submit_and_wait(struct origin *o, struct job *j, struct sync_wait *w, char *reason,
                           size_t reason_len) {
        submit(o, j);
        pthread_mutex_lock(&w->lock);
        while (!w->finished)
                pthread_cond_wait(&w->cond, &w->lock);
        pthread_mutex_unlock(&w->lock);
        if (w->err < 0)
                snprintf(reason, reason_len, "%s", w->reason);
        return w->err < 0 ? w->err : 0;
}

int origin_blob_size(struct origin *o, const char *source, const struct digest *blob,
                     uint64_t deadline_ms, uint64_t *ret_size, char *reason, size_t reason_len) {
        struct sync_wait w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
        int err = 0;
        struct job *j = job_new(o, JOB_HEAD, source, blob, deadline_ms, sync_done, &w, &err);
        if (!j) {
                snprintf(reason, reason_len, "malformed source reference");
                return err;
        }
        int r = submit_and_wait(o, j, &w, reason, reason_len);
        if (r < 0)
                return r;
        *ret_size = w.len;
        return 0;
}

static bool reference_valid(const char *s) {
        struct digest d;
        if (strncmp(s, "sha256:", 7) == 0)
                return digest_parse(s, &d) == 0;
        size_t n = strlen(s); /* a tag: [A-Za-z0-9_][A-Za-z0-9._-]{0,127} */
        if (n == 0 || n > 128 || s[0] == '.' || s[0] == '-')
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = s[i];
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '.' || c == '-'))
                        return false;
        }
        return true;
}

int origin_manifest(struct origin *o, const char *source, const char *reference, bool head,
                    size_t max_len, uint64_t deadline_ms, struct origin_manifest *ret, char *reason,
                    size_t reason_len) {
        if (!reference_valid(reference)) {
                snprintf(reason, reason_len, "malformed manifest reference");
                return -EINVAL;
        }
        struct sync_wait w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
        struct origin_manifest m = {0};
        struct digest none = {0};
        int err = 0;
        struct job *j = job_new(o, head ? JOB_MANIFEST_HEAD : JOB_MANIFEST_GET, source, &none,
                                deadline_ms, sync_done, &w, &err);
        if (!j) {
                snprintf(reason, reason_len, "malformed source reference");
                return err;
        }
        snprintf(j->reference, sizeof(j->reference), "%s", reference);
        j->max_len = max_len;
        j->once = true;
        j->mout = &m;
        int r = submit_and_wait(o, j, &w, reason, reason_len);
        if (r < 0)
                return r;
        *ret = m;
        return 0;
}

void origin_get_stats(struct origin *o, struct origin_stats *ret) {
        unsigned active = 0, waiting = 0;
        http_group_counts(o->group, &active, &waiting);
        pthread_mutex_lock(&o->lock);
        *ret = o->stats;
        pthread_mutex_unlock(&o->lock);
        ret->active = active;
        ret->queued = waiting;
}
