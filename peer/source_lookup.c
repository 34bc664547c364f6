/* The source's two synchronous questions, asked on the caller's thread (FUSE lookups, the
 * layer tree): a blob's size and origin (source_lookup), and which blob holds a layer's index
 * (source_locate_index). Each asks the homes in rendezvous order, ourselves in memory, until
 * one answers; each GET is bounded by LOCATE_TIMEOUT_MS and the caller's deadline. They touch
 * nothing of the source's thread. */
#include "peer/source_int.h"

struct grow_buf {
        char *p;
        size_t len, cap;
};

static size_t on_sync_body(char *data, size_t size, size_t nmemb, void *ud) {
        struct grow_buf *g = ud;
        size_t n = size * nmemb;
        if (g->len + n + 1 > g->cap) {
                size_t cap = g->cap ? g->cap : 16384;
                while (cap < g->len + n + 1)
                        cap *= 2;
                if (cap > LOCATE_BODY_MAX)
                        return 0;
                char *p = realloc(g->p, cap);
                if (!p)
                        return 0;
                g->p = p;
                g->cap = cap;
        }
        memcpy(g->p + g->len, data, n);
        g->len += n;
        return n;
}

int source_lookup(struct source *s, const struct digest *digest, uint64_t deadline_ms,
                  uint64_t *ret_size, char *ret_source, size_t source_len) {
        if (!s->cfg.members)
                return -ENOTCONN;
        char homes[MAX_HOMES][PEER_ID_MAX], self[PEER_ID_MAX];
        unsigned n = src_homes_of(s, digest, homes);
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        bool answered = false;
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(digest, hex);
        for (unsigned i = 0; i < n; i++) {
                uint64_t now = now_ms();
                if (now >= deadline_ms)
                        break;
                struct wire_locate l;
                int r;
                if (self[0] && strcmp(homes[i], self) == 0) {
                        r = dir_locate(s->cfg.dir, digest, NULL, -1, now, &l);
                        answered = true;
                } else {
                        if (!members_usable(s->cfg.members, homes[i]))
                                continue;
                        char url[URL_MAX];
                        snprintf(url, sizeof(url), "http://%s" PROTO_LOCATE_PATH "%s", homes[i],
                                 hex);
                        struct grow_buf g = {0};
                        struct curl_slist *hdr = NULL;
                        src_add_token(s, &hdr);
                        CURL *h = curl_easy_init();
                        if (!h) {
                                curl_slist_free_all(hdr);
                                return -ENOMEM;
                        }
                        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
                        uint64_t budget = deadline_ms - now;
                        if (budget > LOCATE_TIMEOUT_MS)
                                budget = LOCATE_TIMEOUT_MS;
                        curl_easy_setopt(h, CURLOPT_URL, url);
                        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
                        curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
                        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
                        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                                         (long)s->cfg.connect_timeout_ms);
                        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)budget);
                        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_sync_body);
                        curl_easy_setopt(h, CURLOPT_WRITEDATA, &g);
                        CURLcode cc = curl_easy_perform(h);
                        long status = 0;
                        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
                        curl_easy_cleanup(h);
                        curl_slist_free_all(hdr);
                        if (cc != CURLE_OK) {
                                members_report_failure(s->cfg.members, homes[i],
                                                       curl_easy_strerror(cc));
                                free(g.p);
                                continue;
                        }
                        answered = true;
                        char reason[128];
                        r = status == 200 ? wire_locate_parse(g.p ? g.p : "", g.len, &l, reason,
                                                              sizeof(reason))
                                          : -ENOENT;
                        free(g.p);
                }
                if (r < 0)
                        continue;
                bool fits = l.chunk_size == s->cfg.chunk_size && digest_equal(&l.digest, digest);
                if (fits) {
                        *ret_size = l.size;
                        snprintf(ret_source, source_len, "%s", l.source);
                }
                wire_locate_free(&l);
                if (fits)
                        return 0;
        }
        return answered ? -ENOENT : -EHOSTUNREACH;
}

/* One GET of URL into a malloc'd body (*RET, *RET_LEN; free()), within BUDGET_MS. 0 and the
 * status in *RET_STATUS, or -EHOSTUNREACH (reported to the membership as a failure of HOME). */
static int sync_get(struct source *s, const char *home, const char *url, uint64_t budget_ms,
                    long *ret_status, char **ret, size_t *ret_len) {
        struct grow_buf g = {0};
        struct curl_slist *hdr = NULL;
        src_add_token(s, &hdr);
        CURL *h = curl_easy_init();
        if (!h) {
                curl_slist_free_all(hdr);
                return -ENOMEM;
        }
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
        curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)s->cfg.connect_timeout_ms);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)budget_ms);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_sync_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &g);
        CURLcode cc = curl_easy_perform(h);
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(h);
        curl_slist_free_all(hdr);
        if (cc != CURLE_OK) {
                members_report_failure(s->cfg.members, home, curl_easy_strerror(cc));
                free(g.p);
                return -EHOSTUNREACH;
        }
        *ret_status = status;
        *ret = g.p;
        *ret_len = g.len;
        return 0;
}

int source_locate_index(struct source *s, const struct digest *layer, uint64_t deadline_ms,
                        struct digest *ret_index, uint64_t *ret_size) {
        if (!s->cfg.members)
                return -ENOTCONN;
        char homes[MAX_HOMES][PEER_ID_MAX], self[PEER_ID_MAX];
        unsigned n = src_homes_of(s, layer, homes);
        if (members_self(s->cfg.members, self, sizeof(self)) < 0)
                self[0] = '\0';
        bool answered = false;
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(layer, hex);
        for (unsigned i = 0; i < n; i++) {
                uint64_t now = now_ms();
                if (now >= deadline_ms)
                        break;
                struct wire_index x;
                int r;
                src_stat_add(s, &s->stats.index_locates, 1);
                if (self[0] && strcmp(homes[i], self) == 0) {
                        r = dir_locate_index(s->cfg.dir, layer, now, &x);
                        answered = true;
                } else {
                        if (!members_usable(s->cfg.members, homes[i]))
                                continue;
                        char url[URL_MAX], *body = NULL, reason[128];
                        snprintf(url, sizeof(url), "http://%s" PROTO_INDEX_PATH "%s", homes[i],
                                 hex);
                        uint64_t budget = deadline_ms - now;
                        if (budget > LOCATE_TIMEOUT_MS)
                                budget = LOCATE_TIMEOUT_MS;
                        long status = 0;
                        size_t len = 0;
                        r = sync_get(s, homes[i], url, budget, &status, &body, &len);
                        if (r == -ENOMEM)
                                return r;
                        if (r < 0)
                                continue;
                        answered = true;
                        /* 404: this home knows no index of the layer, or predates the route.
                         * Anything else but 200 (401: another cluster token) is no answer. */
                        r = status == 200 ? wire_index_parse(body ? body : "", len, &x, reason,
                                                             sizeof(reason))
                                          : -ENOENT;
                        if (status == 200 && r < 0)
                                log_debug("malformed index answer home=%s reason=\"%s\"", homes[i],
                                          reason);
                        free(body);
                }
                if (r == 0 && digest_equal(&x.layer, layer)) {
                        *ret_index = x.index;
                        *ret_size = x.size;
                        return 0;
                }
        }
        return answered ? -ENOENT : -EHOSTUNREACH;
}
