/* The source's two synchronous questions, asked on the caller's thread (FUSE lookups, the
 * layer tree): a blob's size and origin (source_lookup), and which blob holds a layer's index
 * (source_locate_index). Both ask the homes in rendezvous order, ourselves in memory, until
 * one answers (ask_homes); each GET is a request on the HTTP client (g_query, never held back
 * by chunk transfers) that the caller waits for, bounded by LOCATE_TIMEOUT_MS and the
 * caller's deadline. They touch nothing of the client thread's. */
#include "peer/source_int.h"

/* One kind of question to the homes of a digest. */
struct home_question {
        const char *path; /* PROTO_LOCATE_PATH or PROTO_INDEX_PATH */
        /* Our own directory's answer, as ANSWER would take it; 0 or -errno. */
        int (*self)(struct source *s, const struct digest *d, uint64_t now, void *out);
        /* A home's 200 body (LEN bytes); 0: the answer the caller wanted,
         * in OUT; -errno: none (the next home is asked). */
        int (*answer)(struct source *s, const struct digest *d, const char *home, const char *body,
                      size_t len, void *out);
        bool count_index; /* counted in index_locates */
};

/* Asks the homes of D, in order, Q until one gives the answer (0, in OUT). -ENOENT when every
 * home that answered knew none (a 404, or any status but 200, counts as knowing none);
 * -EHOSTUNREACH when none answered; -ENOTCONN without members. */
static int ask_homes(struct source *s, const struct digest *d, uint64_t deadline_ms,
                     const struct home_question *q, void *out) {
        if (!s->cfg.members)
                return -ENOTCONN;
        char homes[MAX_HOMES][PEER_ID_MAX], self[PEER_ID_MAX];
        unsigned n = src_homes_of(s, d, homes);
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        bool answered = false;
        char hex[DIGEST_HEX_LEN + 1], token[HTTPD_TOKEN_MAX + 32];
        digest_to_hex(d, hex);
        src_token_header(s, token, sizeof(token));
        for (unsigned i = 0; i < n; i++) {
                uint64_t now = now_ms();
                if (now >= deadline_ms)
                        break;
                if (q->count_index)
                        src_stat_add(s, &s->stats.index_locates, 1);
                if (self[0] && strcmp(homes[i], self) == 0) {
                        answered = true;
                        if (q->self(s, d, now, out) == 0)
                                return 0;
                        continue;
                }
                if (!members_usable(s->cfg.members, homes[i]))
                        continue;
                char url[URL_MAX];
                snprintf(url, sizeof(url), "http://%s%s%s", homes[i], q->path, hex);
                uint64_t budget = deadline_ms - now;
                if (budget > LOCATE_TIMEOUT_MS)
                        budget = LOCATE_TIMEOUT_MS;
                struct http_request rq = {
                        .url = url,
                        .headers = {token[0] ? token : NULL},
                        .protocols = "http",
                        .no_proxy = true,
                        .connect_timeout_ms = s->cfg.connect_timeout_ms,
                        .max_time_ms = budget,
                        .body_max = LOCATE_BODY_MAX,
                        .group = s->g_query,
                };
                struct http_response r;
                int rc = http_client_run(s->cfg.http, &rq, &r);
                if (rc == -ECANCELED || rc == -EDEADLK || rc == -ENOMEM) {
                        http_response_clear(&r); /* ours: stopping, or a caller's mistake */
                        return rc == -ENOMEM ? rc : -EHOSTUNREACH;
                }
                if (rc < 0) {
                        if (r.started && rc != -EFBIG)
                                members_report_failure(s->cfg.members, homes[i], r.reason);
                        http_response_clear(&r);
                        continue;
                }
                answered = true;
                int a = -ENOENT;
                if (r.status == 200)
                        a = q->answer(s, d, homes[i], r.body.data ? (const char *)r.body.data : "",
                                      r.body.len, out);
                http_response_clear(&r);
                if (a == 0)
                        return 0;
        }
        return answered ? -ENOENT : -EHOSTUNREACH;
}

/* ---- source_lookup: a blob's size and origin ------------------------------------------------ */

struct lookup_out {
        uint64_t size;
        char *source;
        size_t source_len;
};

/* Whether L describes D as we cut it; then its size and origin into OUT. L is freed. */
static int lookup_take(struct source *s, const struct digest *d, struct wire_locate *l,
                       struct lookup_out *out) {
        bool fits = l->chunk_size == s->cfg.chunk_size && digest_equal(&l->digest, d);
        if (fits) {
                out->size = l->size;
                snprintf(out->source, out->source_len, "%s", l->source);
        }
        wire_locate_free(l);
        return fits ? 0 : -ENOENT;
}

static int lookup_self(struct source *s, const struct digest *d, uint64_t now, void *out) {
        struct wire_locate l;
        if (dir_locate(s->cfg.dir, d, NULL, -1, now, &l) < 0)
                return -ENOENT;
        return lookup_take(s, d, &l, out);
}

static int lookup_answer(struct source *s, const struct digest *d, const char *home,
                         const char *body, size_t len, void *out) {
        (void)home;
        struct wire_locate l;
        char reason[128];
        if (wire_locate_parse(body, len, &l, reason, sizeof(reason)) < 0)
                return -ENOENT;
        return lookup_take(s, d, &l, out);
}

int source_lookup(struct source *s, const struct digest *digest, uint64_t deadline_ms,
                  uint64_t *ret_size, char *ret_source, size_t source_len) {
        static const struct home_question q = {
                .path = PROTO_LOCATE_PATH, .self = lookup_self, .answer = lookup_answer};
        struct lookup_out out = {.source = ret_source, .source_len = source_len};
        int r = ask_homes(s, digest, deadline_ms, &q, &out);
        if (r == 0)
                *ret_size = out.size;
        return r;
}

/* ---- source_locate_index: the blob that holds a layer's index ------------------------------- */

static int index_take(const struct digest *layer, const struct wire_index *x,
                      struct wire_index *out) {
        if (!digest_equal(&x->layer, layer))
                return -ENOENT;
        *out = *x;
        return 0;
}

static int index_self(struct source *s, const struct digest *d, uint64_t now, void *out) {
        struct wire_index x;
        if (dir_locate_index(s->cfg.dir, d, now, &x) < 0)
                return -ENOENT;
        return index_take(d, &x, out);
}

static int index_answer(struct source *s, const struct digest *d, const char *home,
                        const char *body, size_t len, void *out) {
        (void)s;
        struct wire_index x;
        char reason[128];
        if (wire_index_parse(body, len, &x, reason, sizeof(reason)) < 0) {
                log_debug("malformed index answer home=%s reason=\"%s\"", home, reason);
                return -ENOENT;
        }
        return index_take(d, &x, out);
}

int source_locate_index(struct source *s, const struct digest *layer, uint64_t deadline_ms,
                        struct digest *ret_index, uint64_t *ret_size) {
        /* 404: a home knows no index of the layer, or predates the route. Anything else but
         * 200 (401: another cluster token) is no answer either. */
        static const struct home_question q = {.path = PROTO_INDEX_PATH,
                                               .self = index_self,
                                               .answer = index_answer,
                                               .count_index = true};
        struct wire_index x;
        int r = ask_homes(s, layer, deadline_ms, &q, &x);
        if (r == 0) {
                *ret_index = x.index;
                *ret_size = x.size;
        }
        return r;
}
