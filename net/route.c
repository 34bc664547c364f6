/* See route.h. Pure string work over the request line: no allocation, no I/O. */
#include "net/route.h"

#include <string.h>

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
        static const char loc[] = "/p2p/v1/locate/", idx[] = "/p2p/v1/index/";
        memset(ret, 0, sizeof(*ret));
        bool get = strcmp(method, "GET") == 0, head = strcmp(method, "HEAD") == 0;
        ret->protocol = strncmp(url, "/v2/", 4) == 0 || strncmp(url, "/p2p/", 5) == 0;
        ret->head = head;
        if (strcmp(method, "POST") == 0 && strcmp(url, "/p2p/v1/announce") == 0)
                ret->kind = ROUTE_PEER_ANNOUNCE;
        else if (!get && !head)
                ret->kind = ROUTE_PEER_BAD_METHOD;
        else if (strcmp(url, "/healthz") == 0)
                ret->kind = ROUTE_PEER_HEALTHZ;
        else if (strcmp(url, "/readyz") == 0)
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
