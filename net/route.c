/* See route.h. Pure string work over the request line: no allocation, no I/O.
 *
 * Query strings are parsed strictly, because what a route takes is a contract (the control
 * API's table): a key the route does not take, a key given twice (which of the two would a
 * server take? MHD answered "the first", a proxy might say "the last") and an escape that is
 * not one are refused with a reason rather than guessed at. A '+' is a space, as MHD's own
 * argument table decoded it before and as every form encoder (Python's urlencode, curl's
 * --data-urlencode, a browser) means it: scripts that worked against the control socket keep
 * working, and blobctl sends a plus as %2B. Keys are decoded into a small buffer on the stack
 * and looked up in the caller's table, values into the caller's route_query; the decoded
 * query is never longer than the raw one, so ROUTE_QUERY_MAX bounds both. */
#include "net/route.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "peer/proto.h"

/* "/v2/<name>/blobs/sha256:<hex>": the digest, or false. The name is not checked: a peer
 * serves by digest whatever repository the asker names. */
static bool blob_url(const char *url, struct digest *ret) {
        static const char pre[] = "/v2/", mid[] = "/blobs/";
        if (strncmp(url, pre, sizeof(pre) - 1) != 0)
                return false;
        const char *m = strstr(url + sizeof(pre) - 1, mid);
        if (!m || m == url + sizeof(pre) - 1)
                return false;
        const char *last = m + sizeof(mid) - 1;
        if (strchr(last, '/'))
                return false;
        return digest_parse(last, ret) == 0;
}

void route_peer(const char *method, const char *url, struct route_peer *ret) {
        static const char loc[] = PROTO_LOCATE_PREFIX, idx[] = PROTO_INDEX_PREFIX;
        memset(ret, 0, sizeof(*ret));
        bool get = strcmp(method, "GET") == 0, head = strcmp(method, "HEAD") == 0;
        ret->protocol = strncmp(url, "/v2/", 4) == 0 || strncmp(url, "/p2p/", 5) == 0;
        ret->head = head;
        if (strcmp(method, "POST") == 0 && strcmp(url, PROTO_ANNOUNCE_PATH) == 0)
                ret->kind = ROUTE_PEER_ANNOUNCE;
        else if (!get && !head)
                ret->kind = ROUTE_PEER_BAD_METHOD;
        else if (strcmp(url, PROTO_HEALTHZ_PATH) == 0)
                ret->kind = ROUTE_PEER_HEALTHZ;
        else if (strcmp(url, PROTO_READYZ_PATH) == 0)
                ret->kind = ROUTE_PEER_READYZ;
        else if (strcmp(url, "/metrics") == 0)
                ret->kind = ROUTE_PEER_METRICS;
        else if (strncmp(url, loc, sizeof(loc) - 1) == 0)
                ret->kind = digest_parse(url + sizeof(loc) - 1, &ret->digest) == 0
                                    ? ROUTE_PEER_LOCATE
                                    : ROUTE_PEER_NOT_FOUND;
        else if (strncmp(url, idx, sizeof(idx) - 1) == 0)
                ret->kind = digest_parse(url + sizeof(idx) - 1, &ret->digest) == 0
                                    ? ROUTE_PEER_INDEX
                                    : ROUTE_PEER_NOT_FOUND;
        else if (blob_url(url, &ret->digest))
                ret->kind = ROUTE_PEER_BLOB;
        else
                ret->kind = ROUTE_PEER_NOT_FOUND;
}

void route_mirror(const char *method, const char *url, struct route_mirror *ret) {
        memset(ret, 0, sizeof(*ret));
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
                ret->kind = ROUTE_MIRROR_BAD_METHOD;
                return;
        }
        if (strcmp(url, "/v2/") == 0 || strcmp(url, "/v2") == 0) {
                ret->kind = ROUTE_MIRROR_BASE;
                return;
        }
        ret->kind = ROUTE_MIRROR_NOT_FOUND;
        if (strncmp(url, "/v2/", 4) != 0)
                return;
        /* /v2/<name>/(blobs|manifests)/<ref>: the name may hold slashes, the ref never does. */
        const char *path = url + 4;
        const char *slash = strrchr(path, '/');
        if (!slash || slash == path)
                return;
        const char *ref = slash + 1;
        const char *kind_start = slash;
        while (kind_start > path && kind_start[-1] != '/')
                kind_start--;
        size_t kind_len = (size_t)(slash - kind_start);
        bool blobs = kind_len == 5 && strncmp(kind_start, "blobs", 5) == 0;
        bool manifests = kind_len == 9 && strncmp(kind_start, "manifests", 9) == 0;
        size_t ref_len = strlen(ref);
        if ((!blobs && !manifests) || kind_start - path < 2 || ref_len == 0 ||
            ref_len >= sizeof(ret->ref))
                return;
        size_t name_len = (size_t)(kind_start - 1 - path);
        if (name_len >= sizeof(ret->name)) {
                ret->kind = ROUTE_MIRROR_NAME_TOO_LONG;
                return;
        }
        memcpy(ret->name, path, name_len);
        ret->name[name_len] = '\0';
        memcpy(ret->ref, ref, ref_len + 1);
        ret->kind = blobs ? ROUTE_MIRROR_BLOB : ROUTE_MIRROR_MANIFEST;
}

bool route_tag_valid(const char *tag) {
        size_t n = strlen(tag);
        if (n == 0 || n > 128)
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = tag[i];
                bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                             (c >= '0' && c <= '9') || c == '_';
                if (!alnum && (i == 0 || (c != '.' && c != '-')))
                        return false;
        }
        return true;
}

static int hex_value(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Percent-decodes the N bytes at S into OUT (CAP bytes, no NUL added), a '+' to a space.
 * Returns the decoded length, which may exceed CAP (then only CAP bytes were written), or
 * -EINVAL for a '%' not followed by two hex digits or one that decodes to NUL (values are C
 * strings). */
static long pct_decode(const char *s, size_t n, char *out, size_t cap) {
        size_t len = 0;
        for (size_t i = 0; i < n; i++, len++) {
                char c = s[i];
                if (c == '+') {
                        c = ' ';
                } else if (c == '%') {
                        if (n - i < 3 || hex_value(s[i + 1]) < 0 || hex_value(s[i + 2]) < 0)
                                return -EINVAL;
                        c = (char)(hex_value(s[i + 1]) << 4 | hex_value(s[i + 2]));
                        if (c == '\0')
                                return -EINVAL;
                        i += 2;
                }
                if (len < cap)
                        out[len] = c;
        }
        return (long)len;
}

/* KEY (N raw bytes) for a reason: printable ASCII only (the reason goes into JSON and onto a
 * terminal), at most ROUTE_QUERY_KEY_MAX bytes. */
static void key_for_reason(const char *key, size_t n, char out[ROUTE_QUERY_KEY_MAX + 1]) {
        size_t i = 0;
        for (; i < n && i < ROUTE_QUERY_KEY_MAX; i++)
                out[i] = key[i] > ' ' && key[i] < 0x7f && key[i] != '"' ? key[i] : '?';
        out[i] = '\0';
}

int route_query_parse(const char *query, const char *const *keys, size_t nkeys, uint32_t allowed,
                      struct route_query *ret, char *reason, size_t reason_len) {
        memset(ret->value, 0, sizeof(ret->value));
        if (nkeys > ROUTE_QUERY_KEYS_MAX) {
                snprintf(reason, reason_len, "too many query keys in the route table");
                return -EINVAL;
        }
        if (!query)
                return 0;
        size_t qlen = strnlen(query, ROUTE_QUERY_MAX);
        if (qlen >= ROUTE_QUERY_MAX) {
                snprintf(reason, reason_len, "query string too long (%d bytes or more)",
                         ROUTE_QUERY_MAX);
                return -ENAMETOOLONG;
        }
        size_t at = 0; /* used bytes of RET->buf */
        for (const char *p = query; *p;) {
                size_t plen = strcspn(p, "&");
                const char *eq = memchr(p, '=', plen);
                size_t klen = eq ? (size_t)(eq - p) : plen;
                char key[ROUTE_QUERY_KEY_MAX], shown[ROUTE_QUERY_KEY_MAX + 1];
                if (plen == 0) { /* "a=1&&b=2", a trailing '&' */
                        p++;
                        continue;
                }
                long kd = pct_decode(p, klen, key, sizeof(key));
                if (kd < 0 || kd == 0) {
                        snprintf(reason, reason_len,
                                 "%s in the query string; escape "
                                 "reserved bytes as %%XX",
                                 kd == 0 ? "an empty argument name" : "a malformed %-escape");
                        return -EINVAL;
                }
                size_t ki = nkeys;
                for (size_t i = 0; (size_t)kd <= sizeof(key) && i < nkeys; i++)
                        if (strlen(keys[i]) == (size_t)kd && memcmp(keys[i], key, (size_t)kd) == 0)
                                ki = i;
                key_for_reason(p, klen, shown);
                if (ki == nkeys || !(allowed & (1u << ki))) {
                        snprintf(reason, reason_len,
                                 "this endpoint takes no query argument \"%s\"; see blobctl "
                                 "--help",
                                 shown);
                        return -EINVAL;
                }
                if (ret->value[ki]) {
                        snprintf(reason, reason_len,
                                 "query argument \"%s\" given twice; give it once", shown);
                        return -EINVAL;
                }
                const char *v = eq ? eq + 1 : p + plen;
                size_t vlen = (size_t)(p + plen - v);
                /* Decoded, a value is no longer than raw, and raw holds its key too: it fits. */
                long vd = pct_decode(v, vlen, ret->buf + at, sizeof(ret->buf) - at);
                if (vd < 0) {
                        snprintf(reason, reason_len,
                                 "a malformed %%-escape in query argument \"%s\"; escape "
                                 "reserved bytes as %%XX",
                                 shown);
                        return -EINVAL;
                }
                if ((size_t)vd >= sizeof(ret->buf) - at) { /* not reached, by the above */
                        snprintf(reason, reason_len, "query string too long");
                        return -ENAMETOOLONG;
                }
                ret->value[ki] = ret->buf + at;
                at += (size_t)vd;
                ret->buf[at++] = '\0';
                p += plen;
                if (*p == '&')
                        p++;
        }
        return 0;
}
