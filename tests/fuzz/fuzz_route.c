/* libFuzzer target for the peer server's and the mirror's request dispatch without sockets
 * (net/route.c), the Range header as the peer server reads it (util/parse.c) and the listen
 * address parser (net/http_server.c), and query strings (route_query_parse). The input is
 * lines: METHOD, URL, RANGE, then a byte for the blob size, a byte for the keys a route
 * allows and the rest a query string. The oracles: every route is what its URL says it is,
 * rebuilt from its parts (a mirror route prints back to the URL exactly; a blob route's digest
 * is the URL's last segment); nothing is routed under a method it does not take; a valid tag
 * has only the spec's characters; an accepted Range lies inside the blob; an accepted query
 * has one value per non-empty pair (none twice, none unknown, none not allowed), each the
 * percent-decoding of its pair's value ('+' a space), and what it decoded to, encoded again,
 * parses back to the same values. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/http_server.h"
#include "net/route.h"
#include "tests/fuzz/fuzz.h"
#include "util/digest.h"
#include "util/parse.h"

static char *next_line(char **p) {
        char *s = *p;
        if (!s)
                return (char *)"";
        char *nl = strchr(s, '\n');
        if (nl) {
                *nl = '\0';
                *p = nl + 1;
        } else {
                *p = NULL;
        }
        return s;
}

static bool ends_with_digest(const char *url, const struct digest *d) {
        char want[DIGEST_HEX_LEN + 8];
        memcpy(want, "sha256:", 7);
        digest_to_hex(d, want + 7);
        size_t ul = strlen(url), wl = strlen(want);
        return ul >= wl && strcmp(url + ul - wl, want) == 0;
}

static const char *const query_keys[] = {"ref", "wait", "path", "diff_id",
                                         "a",   "%",    "",     "toc_digest"};
#define QUERY_NKEYS (sizeof(query_keys) / sizeof(query_keys[0]))

static int unhex(char c) {
        return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c - 'A' + 10;
}

/* Q's pairs, decoded by a second, naive decoder (the parser's answer must agree with it). */
static void check_query(const char *query, uint32_t allowed) {
        static struct route_query q, back;
        static char enc[3 * ROUTE_QUERY_MAX + 64];
        char reason[160] = "";
        int r = route_query_parse(query, query_keys, QUERY_NKEYS, allowed, &q, reason,
                                  sizeof(reason));
        CHECK(r == 0 || r == -EINVAL || r == -ENAMETOOLONG);
        if (r < 0) {
                CHECK(reason[0] != '\0');
                CHECK(r != -ENAMETOOLONG || strlen(query) >= ROUTE_QUERY_MAX);
                return;
        }
        size_t pairs = 0, present = 0;
        for (const char *p = query ? query : ""; *p;) {
                size_t n = strcspn(p, "&");
                if (n) {
                        pairs++;
                        /* The key decoded names an allowed key whose value is this pair's. */
                        char key[64], val[ROUTE_QUERY_MAX];
                        size_t kl = 0, vl = 0;
                        const char *c = p, *end = p + n;
                        for (; c < end && *c != '='; c += *c == '%' ? 3 : 1) {
                                CHECK(*c != '%' || c + 2 < end);
                                char ch = *c == '%'   ? (char)(unhex(c[1]) << 4 | unhex(c[2]))
                                          : *c == '+' ? ' '
                                                      : *c;
                                if (kl < sizeof(key))
                                        key[kl++] = ch;
                        }
                        if (c < end)
                                c++; /* '=' */
                        for (; c < end; c += *c == '%' ? 3 : 1) {
                                CHECK(*c != '%' || c + 2 < end);
                                val[vl++] = *c == '%'   ? (char)(unhex(c[1]) << 4 | unhex(c[2]))
                                            : *c == '+' ? ' '
                                                        : *c;
                        }
                        size_t ki = QUERY_NKEYS;
                        for (size_t i = 0; i < QUERY_NKEYS; i++)
                                if (strlen(query_keys[i]) == kl &&
                                    memcmp(query_keys[i], key, kl) == 0)
                                        ki = i;
                        CHECK(ki < QUERY_NKEYS && kl > 0 && (allowed & (1u << ki)));
                        CHECK(q.value[ki] && strlen(q.value[ki]) == vl &&
                              memcmp(q.value[ki], val, vl) == 0);
                }
                p += n + (p[n] == '&');
        }
        /* Encoded again (every byte escaped), the values parse back to themselves. */
        size_t at = 0;
        enc[0] = '\0';
        for (size_t i = 0; i < QUERY_NKEYS; i++) {
                if (!q.value[i])
                        continue;
                CHECK(allowed & (1u << i));
                present++;
                at += (size_t)snprintf(enc + at, sizeof(enc) - at, "%s", at ? "&" : "");
                for (const char *k = query_keys[i]; *k; k++)
                        at += (size_t)snprintf(enc + at, sizeof(enc) - at, "%%%02X",
                                               (unsigned char)*k);
                at += (size_t)snprintf(enc + at, sizeof(enc) - at, "=");
                for (const char *v = q.value[i]; *v; v++)
                        at += (size_t)snprintf(enc + at, sizeof(enc) - at, "%%%02X",
                                               (unsigned char)*v);
        }
        CHECK(present == pairs);
        r = route_query_parse(enc, query_keys, QUERY_NKEYS, allowed, &back, reason, sizeof(reason));
        CHECK(r == 0 || (r == -ENAMETOOLONG && at >= ROUTE_QUERY_MAX));
        for (size_t i = 0; r == 0 && i < QUERY_NKEYS; i++)
                CHECK((q.value[i] == NULL) == (back.value[i] == NULL) &&
                      (!q.value[i] || strcmp(q.value[i], back.value[i]) == 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *buf = malloc(size + 1);
        if (!buf)
                return 0;
        memcpy(buf, data, size);
        buf[size] = '\0';
        char *p = buf;
        const char *method = next_line(&p);
        const char *url = next_line(&p);
        const char *range = next_line(&p);
        uint64_t blob_size = p && *p ? (uint64_t)(unsigned char)*p << 16 : 0;
        uint32_t allowed = p && p[0] && p[1] ? (unsigned char)p[1] : 0;
        const char *query = p && p[0] && p[1] ? p + 2 : NULL;
        bool get = strcmp(method, "GET") == 0, head = strcmp(method, "HEAD") == 0;

        struct route_peer rp;
        route_peer(method, url, &rp);
        CHECK(rp.protocol == (strncmp(url, "/v2/", 4) == 0 || strncmp(url, "/p2p/", 5) == 0));
        switch (rp.kind) {
        case ROUTE_PEER_ANNOUNCE:
                CHECK(strcmp(method, "POST") == 0 && strcmp(url, "/p2p/v1/announce") == 0);
                break;
        case ROUTE_PEER_BAD_METHOD:
                CHECK(!get && !head);
                break;
        case ROUTE_PEER_HEALTHZ:
                CHECK((get || head) && strcmp(url, "/healthz") == 0);
                break;
        case ROUTE_PEER_READYZ:
                CHECK((get || head) && strcmp(url, "/readyz") == 0);
                break;
        case ROUTE_PEER_METRICS:
                CHECK((get || head) && strcmp(url, "/metrics") == 0);
                break;
        case ROUTE_PEER_LOCATE:
                CHECK((get || head) && strncmp(url, "/p2p/v1/locate/sha256:", 22) == 0);
                CHECK(ends_with_digest(url, &rp.digest) && strlen(url) == 22 + DIGEST_HEX_LEN);
                break;
        case ROUTE_PEER_INDEX:
                CHECK((get || head) && strncmp(url, "/p2p/v1/index/sha256:", 21) == 0);
                CHECK(ends_with_digest(url, &rp.digest) && strlen(url) == 21 + DIGEST_HEX_LEN);
                break;
        case ROUTE_PEER_BLOB:
                CHECK((get || head) && rp.head == head && rp.protocol);
                CHECK(ends_with_digest(url, &rp.digest));
                CHECK(strstr(url, "/blobs/sha256:") != NULL && strncmp(url, "/v2/", 4) == 0);
                CHECK(strstr(url, "/v2//blobs/") != url);
                break;
        case ROUTE_PEER_NOT_FOUND:
                break;
        }

        uint64_t off = 0, len = 0;
        int r = parse_http_range(range, blob_size, &off, &len);
        CHECK(r == 0 || r == -EINVAL || r == -ERANGE);
        if (r == 0)
                CHECK(len >= 1 && off < blob_size && len <= blob_size - off);

        struct route_mirror rm;
        route_mirror(method, url, &rm);
        switch (rm.kind) {
        case ROUTE_MIRROR_BAD_METHOD:
                CHECK(!get && !head);
                break;
        case ROUTE_MIRROR_BASE:
                CHECK(strcmp(url, "/v2/") == 0 || strcmp(url, "/v2") == 0);
                break;
        case ROUTE_MIRROR_BLOB:
        case ROUTE_MIRROR_MANIFEST: {
                CHECK(get || head);
                size_t nl = strlen(rm.name), rl = strlen(rm.ref);
                CHECK(nl > 0 && nl < sizeof(rm.name) && rl > 0 && rl < sizeof(rm.ref));
                CHECK(strchr(rm.ref, '/') == NULL);
                char back[600];
                snprintf(back, sizeof(back), "/v2/%s/%s/%s", rm.name,
                         rm.kind == ROUTE_MIRROR_BLOB ? "blobs" : "manifests", rm.ref);
                CHECK(strcmp(back, url) == 0);
                if (route_tag_valid(rm.ref))
                        for (const char *c = rm.ref; *c; c++)
                                CHECK((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                                      (*c >= '0' && *c <= '9') || *c == '_' ||
                                      ((*c == '.' || *c == '-') && c != rm.ref));
                break;
        }
        case ROUTE_MIRROR_NAME_TOO_LONG:
                CHECK(strlen(url) >= 4 + ROUTE_NAME_MAX);
                break;
        case ROUTE_MIRROR_NOT_FOUND:
                break;
        }
        if (route_tag_valid(url))
                CHECK(strlen(url) <= 128 && strchr(url, '/') == NULL);

        struct sockaddr_storage ss;
        if (http_listen_parse(url, &ss) == 0)
                CHECK(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
        check_query(query, allowed);
        free(buf);
        return 0;
}
