/* Origin registry client. See origin.h for the contract.
 *
 * Threading: callers push jobs onto `incoming` under `lock` and wake the transfer thread with
 * curl_multi_wakeup(); everything else (the multi handle, the waiting list, tokens, health) is
 * owned by the transfer thread alone and needs no lock.
 *
 * A job's life: waiting (for a connection slot, or for its retry time) -> active (an easy
 * handle in the multi) -> done, or -> parked on a token fetch after a 401, then waiting again.
 * Every job ends in exactly one call of its done callback.
 *
 * Failure is classified in one place (classify()) into "retry later" or "fail now"; the
 * deadline bounds the retries, so a dead origin costs a reader at most its fetch timeout, and
 * the first failure of a registry is logged with its reason, the recovery once more. */
#include "peer/origin.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/evp.h>
#include <sys/random.h>

#include "peer/auth.h"
#include "peer/ref.h"
#include "util/log.h"

#define TOKEN_SLOTS 64  /* cached bearer tokens (one per repository) */
#define HEALTH_SLOTS 32 /* registries whose up/down state we remember */
#define TOKEN_BODY_MAX (64 << 10)
#define BACKOFF_BASE_MS 100
#define BACKOFF_MAX_MS 5000
#define MAX_REDIRECTS 5
#define CREDENTIALS_MAX 1024
#define URL_MAX 2048
#define ORIGIN_RECV_BUFFER (512 << 10) /* CURLOPT_BUFFERSIZE of blob GETs: see start_transfer() */

/* Manifests are asked for with every manifest and index type we know, and anything else last:
 * a registry then answers with the type it stored (artifacts, attestations, vendor types). */
#define MANIFEST_ACCEPT                                                                            \
        "Accept: application/vnd.oci.image.index.v1+json, "                                        \
        "application/vnd.oci.image.manifest.v1+json, "                                             \
        "application/vnd.docker.distribution.manifest.list.v2+json, "                              \
        "application/vnd.docker.distribution.manifest.v2+json, */*;q=0.1"
#define MANIFEST_REFERENCE_MAX 136 /* a 128-character tag, or "sha256:" and 64 hex */

enum job_kind { JOB_GET, JOB_HEAD, JOB_TOKEN, JOB_MANIFEST_GET, JOB_MANIFEST_HEAD };

struct token_slot;

struct job {
        struct job *next;
        enum job_kind kind;
        char registry[REF_REGISTRY_MAX];
        char repository[REF_REPOSITORY_MAX];
        struct digest blob;
        uint64_t off;
        size_t len;
        uint64_t deadline_ms;
        uint64_t not_before_ms; /* retry time */
        unsigned attempt;
        bool once; /* transient failures fail at once instead of being retried */
        char reference[MANIFEST_REFERENCE_MAX]; /* manifest jobs: tag or digest */
        bool auth_tried;                        /* a 401 already led to (re)authentication */

        CURL *easy;
        struct curl_slist *headers;
        uint8_t *buf; /* GET body (len bytes), manifest body (grows to cap) or token JSON */
        size_t got, cap, alloc;
        bool overflow; /* the server sent more than asked: it ignored Range */
        char www_authenticate[1024];
        char content_range[128];
        char content_type[ORIGIN_MEDIA_TYPE_MAX];
        char docker_digest[128];
        char curl_error[CURL_ERROR_SIZE];
        struct origin_manifest *mout; /* manifest jobs: filled on success, before done */

        struct token_slot *token; /* JOB_TOKEN: the slot it fills */
        origin_done_fn done;
        void *ud;

        /* A run (origin_fetch_run): RUN_N chunks of CHUNK_SIZE bytes from RUN_OFF, the last
         * one ending at RUN_END. RUN_DONE of them were delivered already; off/len are what is
         * left ([off, off + len) = the chunks not delivered yet), so a retry asks only for
         * those. buf holds the chunk being received (got bytes of it), never more than one
         * chunk: a run costs one chunk of memory whatever its length. UDS[i] is chunk i's. */
        unsigned run_n, run_done;
        size_t chunk_size;
        uint64_t run_off, run_end;
        void **uds;
        bool run_checked;   /* the answer's status and Content-Range were checked */
        bool run_ok;        /* ... and they are the bytes we asked for */
        uint64_t run_bytes; /* delivered, for the byte counter */
};

struct token_slot {
        char key[REF_REGISTRY_MAX + REF_REPOSITORY_MAX + 2]; /* "registry|repository" */
        char value[4096]; /* "Bearer ..." or "Basic ..." header value; "" when none */
        uint64_t expires_ms;
        uint64_t used_ms;
        bool fetching;
        struct job *parked; /* jobs waiting for this token */
};

struct health_slot {
        char registry[REF_REGISTRY_MAX];
        bool failing;
        uint64_t failures;
};

struct origin {
        struct origin_config cfg;
        char **insecure;        /* owned copies */
        char *credentials_json; /* NULL when none */
        char *ca_file;
        CURLM *multi;
        pthread_t thread;

        pthread_mutex_t lock; /* protects incoming, stopping and stats */
        struct job *incoming;
        bool stopping;
        struct origin_stats stats;

        /* transfer thread only */
        struct job *waiting;
        struct job *running; /* jobs with an easy handle in the multi */
        unsigned active;
        struct token_slot tokens[TOKEN_SLOTS];
        struct health_slot health[HEALTH_SLOTS];
};

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

static void job_free(struct job *j) {
        if (!j)
                return;
        if (j->easy)
                curl_easy_cleanup(j->easy);
        curl_slist_free_all(j->headers);
        free(j->buf);
        free(j->uds);
        free(j);
}

static void job_finish(struct origin *o, struct job *j, int err, const char *reason) {
        if (j->run_n) {
                pthread_mutex_lock(&o->lock);
                o->stats.bytes += j->run_bytes;
                pthread_mutex_unlock(&o->lock);
                /* Delivered chunks were counted as they went; the rest end here, with ERR (a
                 * run that ended "well" without them was cut short: never a success). */
                for (unsigned i = j->run_done; i < j->run_n; i++)
                        j->done(j->uds[i], err < 0 ? err : -EPROTO,
                                err < 0 ? reason : "registry answer ended early", NULL, 0, NULL);
                job_free(j);
                return;
        }
        if (j->kind == JOB_GET) {
                pthread_mutex_lock(&o->lock);
                if (err == 0)
                        o->stats.bytes += j->len;
                pthread_mutex_unlock(&o->lock);
        }
        uint8_t *buf = NULL;
        if (err == 0 && j->kind == JOB_GET) {
                buf = j->buf;
                j->buf = NULL;
        }
        if (j->done)
                j->done(j->ud, err, reason, buf, err == 0 ? j->len : 0, NULL);
        job_free(j);
}

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
        struct health_slot *h = health_of(o, j->registry);
        h->failures++;
        if (!h->failing) {
                h->failing = true;
                log_warning("origin failing registry=%s reason=\"%s\" hint=\"reads of missing "
                            "chunks retry until their fetch timeout, then fail with EIO\"",
                            j->registry, reason);
        }
}

static void note_success(struct origin *o, const struct job *j) {
        struct health_slot *h = health_of(o, j->registry);
        if (h->failing) {
                log_notice("origin recovered registry=%s failures=%" PRIu64, j->registry,
                           h->failures);
                h->failing = false;
                h->failures = 0;
        }
}

/* ---- tokens ---------------------------------------------------------------------------- */

static struct token_slot *token_slot(struct origin *o, const struct job *j, bool create) {
        char key[sizeof(o->tokens[0].key)];
        snprintf(key, sizeof(key), "%s|%s", j->registry, j->repository);
        struct token_slot *victim = NULL;
        for (size_t i = 0; i < TOKEN_SLOTS; i++) {
                struct token_slot *t = &o->tokens[i];
                if (strcmp(t->key, key) == 0)
                        return t;
                if (t->fetching)
                        continue;
                if (!victim || t->used_ms < victim->used_ms)
                        victim = t;
        }
        if (!create || !victim)
                return NULL;
        memset(victim, 0, sizeof(*victim));
        memcpy(victim->key, key, sizeof(victim->key));
        return victim;
}

static const char *token_for(struct origin *o, const struct job *j) {
        struct token_slot *t = token_slot(o, j, false);
        if (!t || !t->value[0] || t->fetching)
                return NULL;
        uint64_t now = now_ms();
        if (t->expires_ms && now >= t->expires_ms)
                return NULL;
        t->used_ms = now;
        return t->value;
}

/* Looks up config.json credentials for the job's registry into OUT ("user:pass"). */
static bool credentials_for(struct origin *o, const char *registry, char *out, size_t len) {
        return o->credentials_json &&
               auth_find_credentials(o->credentials_json, registry, out, len) == 0;
}

/* ---- transfers ------------------------------------------------------------------------- */

/* Bytes of an answer that is not the range asked for (a 401's or 404's body) are read and
 * dropped, up to this much; the status decides what happens next (transfer_done). */
#define RUN_DISCARD_MAX (64 << 10)

/* Whether the answer now arriving for run J carries the bytes at J->off: a 206 whose
 * Content-Range starts there and ends where the run does, or a 200 (the whole blob) for a run
 * that starts at 0. Anything else delivers nothing. */
static bool run_answer_ok(struct job *j) {
        long status = 0;
        curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status == 200)
                return j->off == 0;
        if (status != 206)
                return false;
        char want[96];
        int n = snprintf(want, sizeof(want), "bytes %" PRIu64 "-%" PRIu64 "/", j->off,
                         j->off + j->len - 1);
        return strncmp(j->content_range, want, (size_t)n) == 0;
}

/* A run's body: fills one chunk at a time and hands each to its reader the moment it is
 * whole, so the first chunk's readers do not wait for the rest of the run. */
static size_t on_run_body(struct job *j, const char *data, size_t n) {
        if (!j->run_checked) {
                j->run_checked = true;
                j->run_ok = run_answer_ok(j);
        }
        if (!j->run_ok) {
                j->got += n;
                if (j->got <= RUN_DISCARD_MAX)
                        return n;
                j->overflow = true; /* stop reading; the status says what went wrong */
                return 0;
        }
        size_t used = 0;
        while (used < n) {
                if (j->run_done == j->run_n) {
                        j->overflow = true; /* a 200 of the whole blob: we have our part */
                        return 0;
                }
                uint64_t cstart = j->run_off + (uint64_t)j->run_done * j->chunk_size;
                uint64_t cend =
                        cstart + j->chunk_size < j->run_end ? cstart + j->chunk_size : j->run_end;
                size_t clen = (size_t)(cend - cstart);
                if (!j->buf) {
                        j->buf = malloc(clen);
                        if (!j->buf)
                                return 0;
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
                        void *ud = j->uds[j->run_done++];
                        j->done(ud, 0, NULL, buf, clen, NULL);
                }
        }
        return n;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
        struct job *j = ud;
        size_t n = size * nmemb;
        if (j->run_n)
                return on_run_body(j, data, n);
        if (j->got + n > j->cap) {
                j->overflow = true;
                return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
        }
        if (j->got + n > j->alloc) { /* manifests: grow by doubling, up to cap */
                size_t want = j->alloc ? j->alloc : 16384;
                while (want < j->got + n)
                        want *= 2;
                if (want > j->cap)
                        want = j->cap;
                uint8_t *nb = realloc(j->buf, want);
                if (!nb)
                        return 0;
                j->buf = nb;
                j->alloc = want;
        }
        memcpy(j->buf + j->got, data, n);
        j->got += n;
        return n;
}

static void header_value(const char *line, size_t n, const char *name, char *out, size_t len) {
        size_t nl = strlen(name);
        if (n <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
                return;
        const char *v = line + nl + 1;
        const char *end = line + n;
        while (v < end && (*v == ' ' || *v == '\t'))
                v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
                end--;
        size_t vl = (size_t)(end - v);
        if (vl >= len)
                vl = len - 1;
        memcpy(out, v, vl);
        out[vl] = '\0';
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
        struct job *j = ud;
        size_t n = size * nmemb;
        if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) /* a new response: forget the last one's */
                j->content_type[0] = j->docker_digest[0] = j->content_range[0] = '\0';
        /* A redirect or 401 response's headers arrive before the final one's: keep the last. */
        header_value(data, n, "WWW-Authenticate", j->www_authenticate, sizeof(j->www_authenticate));
        header_value(data, n, "Content-Range", j->content_range, sizeof(j->content_range));
        header_value(data, n, "Content-Type", j->content_type, sizeof(j->content_type));
        header_value(data, n, "Docker-Content-Digest", j->docker_digest, sizeof(j->docker_digest));
        return n;
}

static int build_url(struct origin *o, const struct job *j, char *url, size_t len) {
        const char *scheme = is_insecure(o, j->registry) ? "http" : "https";
        if (j->kind == JOB_MANIFEST_GET || j->kind == JOB_MANIFEST_HEAD) {
                int n = snprintf(url, len, "%s://%s/v2/%s/manifests/%s", scheme, j->registry,
                                 j->repository, j->reference);
                return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
        }
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&j->blob, hex);
        int n = snprintf(url, len, "%s://%s/v2/%s/blobs/sha256:%s",
                         is_insecure(o, j->registry) ? "http" : "https", j->registry, j->repository,
                         hex);
        return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int start_transfer(struct origin *o, struct job *j) {
        char url[URL_MAX];
        uint64_t now = now_ms();
        int r = 0;
        if (j->kind != JOB_TOKEN) {
                r = build_url(o, j, url, sizeof(url));
                if (r < 0)
                        return r;
        } else {
                snprintf(url, sizeof(url), "%s", (const char *)j->buf); /* stashed by caller */
                free(j->buf);
                j->buf = NULL;
        }
        j->easy = curl_easy_init();
        if (!j->easy)
                return -ENOMEM;
        CURL *e = j->easy;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_PRIVATE, j);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_USERAGENT, "p2pblobs/0.1");
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->curl_error);
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)MAX_REDIRECTS);
        bool insecure = j->kind != JOB_TOKEN && is_insecure(o, j->registry);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, insecure ? "http,https" : "https");
        curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, insecure ? "http,https" : "https");
        if (j->kind == JOB_TOKEN) /* the realm may be http for an insecure registry */
                curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        if (o->ca_file)
                curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
        uint64_t left = j->deadline_ms > now ? j->deadline_ms - now : 1;
        curl_easy_setopt(
                e, CURLOPT_CONNECTTIMEOUT_MS,
                (long)(left < o->cfg.connect_timeout_ms ? left : o->cfg.connect_timeout_ms));
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)left);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)(o->cfg.stall_timeout_ms + 999) / 1000);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
        j->got = 0;
        j->overflow = false;
        j->run_checked = j->run_ok = false;
        j->www_authenticate[0] = j->content_range[0] = j->curl_error[0] = '\0';
        j->content_type[0] = j->docker_digest[0] = '\0';

        if (j->kind == JOB_GET) {
                char range[64];
                snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, j->off, j->off + j->len - 1);
                curl_easy_setopt(e, CURLOPT_RANGE, range);
                /* curl's default 16 KiB receive buffer costs a recvfrom and a callback per
                 * 16 KiB (34k of each per 512 MiB); 512 KiB measured +7% on a cold read. The
                 * memory: ORIGIN_RECV_BUFFER per transfer, at most max_connections of them. */
                curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)ORIGIN_RECV_BUFFER);
                if (!j->buf && !j->run_n) /* a run allocates one chunk at a time */
                        j->buf = malloc(j->len ? j->len : 1);
                if (!j->buf && !j->run_n)
                        return -ENOMEM;
                j->cap = j->len;
        } else if (j->kind == JOB_HEAD || j->kind == JOB_MANIFEST_HEAD) {
                curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
                j->cap = 0;
        } else if (j->kind == JOB_MANIFEST_GET) {
                j->cap = j->len; /* the caller's size limit; the buffer grows in on_body */
        } else {
                j->buf = malloc(TOKEN_BODY_MAX);
                if (!j->buf)
                        return -ENOMEM;
                j->cap = TOKEN_BODY_MAX - 1;
                char cred[CREDENTIALS_MAX];
                if (credentials_for(o, j->registry, cred, sizeof(cred))) {
                        curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
                        curl_easy_setopt(e, CURLOPT_USERPWD, cred);
                }
        }
        if (j->kind == JOB_MANIFEST_GET || j->kind == JOB_MANIFEST_HEAD) {
                j->headers = curl_slist_append(j->headers, MANIFEST_ACCEPT);
                if (!j->headers)
                        return -ENOMEM;
        }
        if (j->kind != JOB_TOKEN) {
                const char *tok = token_for(o, j);
                if (tok) {
                        char h[sizeof(o->tokens[0].value) + 32];
                        snprintf(h, sizeof(h), "Authorization: %s", tok);
                        struct curl_slist *l = curl_slist_append(j->headers, h);
                        if (!l)
                                return -ENOMEM;
                        j->headers = l;
                }
        }
        if (j->headers)
                curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->headers);
        if (curl_multi_add_handle(o->multi, e) != CURLM_OK)
                return -EIO;
        j->next = o->running;
        o->running = j;
        o->active++;
        if (j->kind == JOB_GET) {
                pthread_mutex_lock(&o->lock);
                o->stats.requests++;
                pthread_mutex_unlock(&o->lock);
        }
        return 0;
}

static void detach(struct origin *o, struct job *j) {
        for (struct job **pp = &o->running; *pp; pp = &(*pp)->next)
                if (*pp == j) {
                        *pp = j->next;
                        break;
                }
        j->next = NULL;
        curl_multi_remove_handle(o->multi, j->easy);
        curl_easy_cleanup(j->easy);
        j->easy = NULL;
        curl_slist_free_all(j->headers);
        j->headers = NULL;
        o->active--;
}

static void make_waiting(struct origin *o, struct job *j, uint64_t not_before) {
        j->not_before_ms = not_before;
        j->next = o->waiting;
        o->waiting = j;
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
        job_finish(o, j, err, reason);
}

/* Retries J after a backoff if its deadline allows, else fails it with ERR/REASON. */
static void retry_or_fail(struct origin *o, struct job *j, int err, const char *reason) {
        count_error(o, err);
        note_failure(o, j, reason);
        if (j->once) {
                job_finish(o, j, err, reason);
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
                job_finish(o, j, err, why);
                return;
        }
        log_debug("origin retry registry=%s attempt=%u in_ms=%" PRIu64 " reason=\"%s\"",
                  j->registry, j->attempt, backoff, reason);
        make_waiting(o, j, at);
}

/* Starts or joins a token fetch for J after a 401 carrying CHALLENGE. */
static void authenticate(struct origin *o, struct job *j, const struct auth_challenge *ch) {
        struct token_slot *t = token_slot(o, j, true);
        if (!t) {
                job_finish(o, j, -EAGAIN, "too many token fetches at once");
                return;
        }
        j->auth_tried = true;
        if (ch->scheme == AUTH_BASIC) {
                char cred[CREDENTIALS_MAX];
                if (!credentials_for(o, j->registry, cred, sizeof(cred))) {
                        job_finish(o, j, -EACCES,
                                   "registry wants basic auth and no credentials "
                                   "are configured for it");
                        return;
                }
                unsigned char enc[((CREDENTIALS_MAX + 2) / 3) * 4 + 1];
                EVP_EncodeBlock(enc, (const unsigned char *)cred, (int)strlen(cred));
                snprintf(t->value, sizeof(t->value), "Basic %s", enc);
                t->expires_ms = 0;
                make_waiting(o, j, 0);
                return;
        }
        j->next = t->parked;
        t->parked = j;
        if (t->fetching)
                return;
        struct job *tj = calloc(1, sizeof(*tj));
        char *url = malloc(URL_MAX);
        if (!tj || !url) {
                free(tj);
                free(url);
                t->parked = j->next;
                job_finish(o, j, -ENOMEM, "out of memory");
                return;
        }
        char *svc = curl_easy_escape(NULL, ch->service, 0);
        char *scope_default = NULL;
        char scope_buf[600];
        if (!ch->scope[0]) {
                snprintf(scope_buf, sizeof(scope_buf), "repository:%s:pull", j->repository);
                scope_default = scope_buf;
        }
        char *scope = curl_easy_escape(NULL, ch->scope[0] ? ch->scope : scope_default, 0);
        snprintf(url, URL_MAX, "%s%sservice=%s&scope=%s", ch->realm,
                 strchr(ch->realm, '?') ? "&" : "?", svc ? svc : "", scope ? scope : "");
        curl_free(svc);
        curl_free(scope);
        tj->kind = JOB_TOKEN;
        memcpy(tj->registry, j->registry, sizeof(tj->registry));
        memcpy(tj->repository, j->repository, sizeof(tj->repository));
        tj->deadline_ms = j->deadline_ms;
        tj->token = t;
        tj->buf = (uint8_t *)url; /* start_transfer takes the URL from here */
        t->fetching = true;
        make_waiting(o, tj, 0);
}

static void release_parked(struct origin *o, struct token_slot *t, int err, const char *reason) {
        struct job *p = t->parked;
        t->parked = NULL;
        t->fetching = false;
        while (p) {
                struct job *next = p->next;
                if (err == 0)
                        make_waiting(o, p, 0);
                else
                        job_finish(o, p, err, reason);
                p = next;
        }
}

/* Ends J with ERR whatever its kind: a token job takes its parked jobs down with it. */
static void job_abort(struct origin *o, struct job *j, int err, const char *reason) {
        if (j->kind == JOB_TOKEN) {
                release_parked(o, j->token, err, reason);
                job_free(j);
        } else {
                job_finish(o, j, err, reason);
        }
}

static void token_done(struct origin *o, struct job *tj, CURLcode cc, long status) {
        struct token_slot *t = tj->token;
        char reason[512];
        if (cc != CURLE_OK || status != 200) {
                snprintf(reason, sizeof(reason), "token request failed: %s",
                         cc != CURLE_OK
                                 ? (tj->curl_error[0] ? tj->curl_error : curl_easy_strerror(cc))
                                 : (status == 401 || status == 403 ? "credentials refused"
                                                                   : "unexpected status"));
                int err = cc != CURLE_OK ? -ECONNREFUSED : -EACCES;
                release_parked(o, t, err, reason);
                job_free(tj);
                return;
        }
        tj->buf[tj->got] = '\0';
        char token[sizeof(t->value) - 8];
        unsigned expires_in = 60;
        if (auth_parse_token_response((const char *)tj->buf, token, sizeof(token), &expires_in) <
            0) {
                release_parked(o, t, -EPROTO, "token endpoint answered without a token");
                job_free(tj);
                return;
        }
        snprintf(t->value, sizeof(t->value), "Bearer %s", token);
        /* Renew a little early so a token never expires mid-request. */
        uint64_t life = (uint64_t)expires_in * 1000u;
        t->expires_ms = now_ms() + (life > 10000 ? life - 5000 : life);
        release_parked(o, t, 0, NULL);
        job_free(tj);
}

/* A manifest answer that is neither an error status nor a retry: hands what the registry said
 * to the waiting caller. The body is not checked here; the caller knows which digest it
 * wanted. */
static void manifest_done(struct origin *o, struct job *j, long status, curl_off_t length) {
        char reason[512];
        if (status != 200) {
                snprintf(reason, sizeof(reason), "unexpected manifest answer (HTTP %ld)", status);
                fail_now(o, j, -EPROTO, reason);
                return;
        }
        if (j->overflow) {
                snprintf(reason, sizeof(reason), "manifest larger than %zu bytes", j->cap);
                fail_now(o, j, -EFBIG, reason);
                return;
        }
        struct origin_manifest *m = j->mout;
        memset(m, 0, sizeof(*m));
        snprintf(m->media_type, sizeof(m->media_type), "%s", j->content_type);
        const char *d = j->docker_digest;
        m->has_digest = digest_parse(d, &m->digest) == 0;
        if (j->kind == JOB_MANIFEST_GET) {
                m->size = j->got;
                m->body = j->buf ? j->buf : malloc(1);
                j->buf = NULL;
                if (!m->body) {
                        fail_now(o, j, -ENOMEM, "out of memory");
                        return;
                }
        } else {
                m->size = length >= 0 ? (uint64_t)length : 0;
        }
        note_success(o, j);
        job_finish(o, j, 0, NULL);
}

/* Classifies a finished transfer: succeed, retry later, or fail now. */
static void transfer_done(struct origin *o, struct job *j, CURLcode cc) {
        long status = 0;
        curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_off_t content_length = -1;
        curl_easy_getinfo(j->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &content_length);
        detach(o, j);

        if (j->kind == JOB_TOKEN) {
                token_done(o, j, cc, status);
                return;
        }
        char reason[512];
        if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && j->overflow)) {
                snprintf(reason, sizeof(reason), "%s",
                         j->curl_error[0] ? j->curl_error : curl_easy_strerror(cc));
                switch (cc) {
                case CURLE_COULDNT_CONNECT:
                case CURLE_COULDNT_RESOLVE_HOST:
                        retry_or_fail(o, j, -ECONNREFUSED, reason);
                        return;
                case CURLE_OPERATION_TIMEDOUT:
                        retry_or_fail(o, j, -ETIMEDOUT, reason);
                        return;
                case CURLE_PEER_FAILED_VERIFICATION:
                case CURLE_SSL_CONNECT_ERROR:
                case CURLE_SSL_CERTPROBLEM:
                case CURLE_SSL_CACERT_BADFILE:
                case CURLE_UNSUPPORTED_PROTOCOL:
                case CURLE_TOO_MANY_REDIRECTS:
                        note_failure(o, j, reason);
                        fail_now(o, j, -EPROTO, reason);
                        return;
                default:
                        retry_or_fail(o, j, -EIO, reason);
                        return;
                }
        }
        if (status == 401 && !j->auth_tried) {
                struct auth_challenge ch;
                if (auth_parse_challenge(j->www_authenticate, &ch) == 0 && ch.scheme != AUTH_NONE) {
                        authenticate(o, j, &ch);
                        return;
                }
                fail_now(o, j, -EACCES, "registry answered 401 without a usable challenge");
                return;
        }
        if (status == 401 || status == 403) {
                snprintf(reason, sizeof(reason), "registry denied access (HTTP %ld)", status);
                fail_now(o, j, -EACCES, reason);
                return;
        }
        bool manifest = j->kind == JOB_MANIFEST_GET || j->kind == JOB_MANIFEST_HEAD;
        if (status == 404) {
                fail_now(o, j, -ENOENT,
                         manifest ? "manifest not found at the registry (HTTP 404)"
                                  : "blob not found at the registry (HTTP 404)");
                return;
        }
        if (status == 429 || status >= 500) {
                snprintf(reason, sizeof(reason), "registry answered HTTP %ld", status);
                retry_or_fail(o, j, -EREMOTEIO, reason);
                return;
        }
        if (manifest) {
                manifest_done(o, j, status, content_length);
                return;
        }
        if (j->kind == JOB_HEAD) {
                if (status != 200 || content_length < 0) {
                        snprintf(reason, sizeof(reason), "unexpected HEAD answer (HTTP %ld)",
                                 status);
                        fail_now(o, j, -EPROTO, reason);
                        return;
                }
                note_success(o, j);
                j->len = (size_t)content_length;
                job_finish(o, j, 0, NULL);
                return;
        }
        if (j->run_n) {
                /* Every chunk delivered (a 200 of the whole blob stops after our part). */
                if (j->run_done == j->run_n) {
                        note_success(o, j);
                        job_finish(o, j, 0, NULL);
                        return;
                }
                snprintf(reason, sizeof(reason),
                         "registry did not honour the byte range (HTTP %ld, %u of %u chunks)",
                         status, j->run_done, j->run_n);
                note_failure(o, j, reason);
                fail_now(o, j, -EPROTO, reason);
                return;
        }
        /* GET: a 206 for exactly our range, or a 200 that happens to be exactly our range. */
        bool whole = status == 200 && j->off == 0 && !j->overflow && j->got == j->len;
        bool ranged = status == 206 && !j->overflow && j->got == j->len;
        if (ranged) {
                char want[64];
                int n = snprintf(want, sizeof(want), "bytes %" PRIu64 "-%" PRIu64 "/", j->off,
                                 j->off + j->len - 1);
                ranged = strncmp(j->content_range, want, (size_t)n) == 0;
        }
        if (!whole && !ranged) {
                snprintf(reason, sizeof(reason),
                         "registry did not honour the byte range (HTTP %ld, %zu bytes%s)", status,
                         j->got, j->overflow ? ", more than asked" : "");
                note_failure(o, j, reason);
                fail_now(o, j, -EPROTO, reason);
                return;
        }
        note_success(o, j);
        job_finish(o, j, 0, NULL);
}

/* Moves due waiting jobs into the multi while slots are free; returns ms until the next due
 * job (or 1000). */
static long start_due(struct origin *o) {
        uint64_t now = now_ms();
        long next = 1000;
        struct job **pp = &o->waiting;
        while (*pp) {
                struct job *j = *pp;
                if (now >= j->deadline_ms) {
                        *pp = j->next;
                        job_abort(o, j, -ETIMEDOUT,
                                  j->kind == JOB_TOKEN ? "token fetch timed out"
                                                       : "deadline passed while queued");
                        continue;
                }
                if (j->not_before_ms > now) {
                        long d = (long)(j->not_before_ms - now);
                        if (d < next)
                                next = d;
                        pp = &j->next;
                        continue;
                }
                if (o->active >= o->cfg.max_connections) {
                        pp = &j->next;
                        continue;
                }
                *pp = j->next;
                int r = start_transfer(o, j);
                if (r < 0) {
                        if (j->easy) {
                                curl_easy_cleanup(j->easy);
                                j->easy = NULL;
                        }
                        job_abort(o, j, r,
                                  j->kind == JOB_TOKEN ? "could not start token request"
                                                       : "could not start request");
                }
        }
        return next;
}

static void fail_all(struct origin *o, struct job *list) {
        while (list) {
                struct job *next = list->next;
                job_abort(o, list, -ECANCELED, "shutting down");
                list = next;
        }
}

static void *origin_main(void *arg) {
        struct origin *o = arg;
        for (;;) {
                pthread_mutex_lock(&o->lock);
                struct job *in = o->incoming;
                o->incoming = NULL;
                bool stopping = o->stopping;
                pthread_mutex_unlock(&o->lock);
                while (in) {
                        struct job *next = in->next;
                        make_waiting(o, in, 0);
                        in = next;
                }
                if (stopping)
                        break;
                long timeout = start_due(o);
                int running = 0;
                curl_multi_perform(o->multi, &running);
                CURLMsg *m;
                int left;
                while ((m = curl_multi_info_read(o->multi, &left))) {
                        if (m->msg != CURLMSG_DONE)
                                continue;
                        struct job *j = NULL;
                        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
                        transfer_done(o, j, m->data.result);
                }
                timeout = start_due(o) < timeout ? start_due(o) : timeout;
                pthread_mutex_lock(&o->lock);
                o->stats.active = o->active;
                unsigned q = 0;
                for (struct job *j = o->waiting; j; j = j->next)
                        q++;
                o->stats.queued = q;
                bool more = o->incoming != NULL || o->stopping;
                pthread_mutex_unlock(&o->lock);
                if (!more)
                        curl_multi_poll(o->multi, NULL, 0, (int)(timeout > 0 ? timeout : 1), NULL);
        }
        /* Shutdown: fail everything still queued, running or parked. */
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(o->multi, &left)))
                ;
        for (size_t i = 0; i < TOKEN_SLOTS; i++)
                if (o->tokens[i].parked)
                        release_parked(o, &o->tokens[i], -ECANCELED, "shutting down");
        struct job *w = o->waiting;
        o->waiting = NULL;
        fail_all(o, w);
        while (o->running) {
                struct job *j = o->running;
                detach(o, j);
                job_abort(o, j, -ECANCELED, "shutting down");
        }
        return NULL;
}

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

int origin_new(const struct origin_config *cfg, struct origin **ret) {
        struct origin *o = calloc(1, sizeof(*o));
        if (!o)
                return -ENOMEM;
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
                goto out_free;
        for (size_t i = 0; i < cfg->n_insecure; i++)
                if (!(o->insecure[i] = strdup(cfg->insecure[i])))
                        goto out_free;
        if (cfg->ca_file && !(o->ca_file = strdup(cfg->ca_file)))
                goto out_free;
        if (cfg->credentials_path) {
                o->credentials_json = read_file_text(cfg->credentials_path, 1 << 20);
                if (!o->credentials_json)
                        log_notice("origin credentials file unreadable path=%s err=\"%m\" "
                                   "hint=\"pulling anonymously\"",
                                   cfg->credentials_path);
        }
        pthread_mutex_init(&o->lock, NULL);
        o->multi = curl_multi_init();
        if (!o->multi)
                goto out_free;
        curl_multi_setopt(o->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)o->cfg.max_connections);
        r = -pthread_create(&o->thread, NULL, origin_main, o);
        if (r < 0)
                goto out_free;
        *ret = o;
        return 0;
out_free:
        if (o->multi)
                curl_multi_cleanup(o->multi);
        for (size_t i = 0; o->insecure && o->insecure[i]; i++)
                free(o->insecure[i]);
        free(o->insecure);
        free(o->ca_file);
        free(o->credentials_json);
        free(o);
        return r;
}

void origin_free(struct origin *o) {
        if (!o)
                return;
        pthread_mutex_lock(&o->lock);
        o->stopping = true;
        pthread_mutex_unlock(&o->lock);
        curl_multi_wakeup(o->multi);
        pthread_join(o->thread, NULL);
        fail_all(o, o->incoming);
        curl_multi_cleanup(o->multi);
        for (size_t i = 0; o->insecure[i]; i++)
                free(o->insecure[i]);
        free(o->insecure);
        free(o->ca_file);
        free(o->credentials_json);
        pthread_mutex_destroy(&o->lock);
        free(o);
}

static struct job *job_new(enum job_kind kind, const char *source, const struct digest *blob,
                           uint64_t deadline_ms, origin_done_fn done, void *ud, int *ret_err) {
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
        if (!stopping) {
                j->next = o->incoming;
                o->incoming = j;
        }
        pthread_mutex_unlock(&o->lock);
        if (stopping) {
                job_finish(o, j, -ECANCELED, "shutting down");
                return;
        }
        curl_multi_wakeup(o->multi);
}

void origin_fetch(struct origin *o, const char *source, const struct digest *blob, uint64_t off,
                  size_t len, uint64_t deadline_ms, origin_done_fn done, void *ud) {
        int err = 0;
        struct job *j = job_new(JOB_GET, source, blob, deadline_ms, done, ud, &err);
        if (!j) {
                done(ud, err, "malformed source reference", NULL, 0, NULL);
                return;
        }
        j->off = off;
        j->len = len;
        submit(o, j);
}

void origin_fetch_run(struct origin *o, const char *source, const struct digest *blob, uint64_t off,
                      uint64_t end, size_t chunk_size, unsigned n, uint64_t deadline_ms,
                      origin_done_fn done, void *const *uds) {
        int err = 0;
        struct job *j = n && end > off && (end - off + chunk_size - 1) / chunk_size == n
                                ? job_new(JOB_GET, source, blob, deadline_ms, done, NULL, &err)
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
                      const struct digest *sha) {
        (void)sha;
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
        struct job *j = job_new(JOB_HEAD, source, blob, deadline_ms, sync_done, &w, &err);
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
        struct job *j = job_new(head ? JOB_MANIFEST_HEAD : JOB_MANIFEST_GET, source, &none,
                                deadline_ms, sync_done, &w, &err);
        if (!j) {
                snprintf(reason, reason_len, "malformed source reference");
                return err;
        }
        snprintf(j->reference, sizeof(j->reference), "%s", reference);
        j->len = max_len;
        j->once = true;
        j->mout = &m;
        int r = submit_and_wait(o, j, &w, reason, reason_len);
        if (r < 0)
                return r;
        *ret = m;
        return 0;
}

void origin_get_stats(struct origin *o, struct origin_stats *ret) {
        pthread_mutex_lock(&o->lock);
        *ret = o->stats;
        pthread_mutex_unlock(&o->lock);
}
