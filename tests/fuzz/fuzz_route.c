/* libFuzzer target for the peer server's and the mirror's request dispatch without sockets
 * (net/route.c), the Range header as the peer server reads it (util/parse.c) and the listen
 * address parser (net/http_server.c). The input is lines: METHOD, URL, RANGE, then a byte
 * for the blob size. The oracles: every route is what its URL says it is, rebuilt from its
 * parts (a mirror route prints back to the URL exactly; a blob route's digest is the URL's
 * last segment); nothing is routed under a method it does not take; a valid tag has only the
 * spec's characters; an accepted Range lies inside the blob. */
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
        free(buf);
        return 0;
}
