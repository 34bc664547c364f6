/* libFuzzer target for the control API's route table (net/api_routes.c): what blobctl (or
 * anyone who can reach the socket) sends is a method, a path and a ref argument — the input is
 * those three, separated by newlines. The oracle: only the documented errors; a reason on every
 * error, NUL-terminated within even a tiny buffer; RET untouched on failure; an accepted
 * request prints back to exactly its path (the method one the route allows, the digest and the
 * action round-trip, the ref is the argument given); and what blobctl would build for it
 * (api_build_request) is that method and path again, its argument routed back to the same ref,
 * so the daemon and blobctl cannot disagree on a route. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/api_routes.h"
#include "tests/fuzz/fuzz.h"

static const char *const action_names[] = {
        [API_PREFETCH] = "prefetch", [API_PIN] = "pin",       [API_UNPIN] = "unpin",
        [API_EVICT] = "evict",       [API_VERIFY] = "verify",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *buf = malloc(size + 1);
        if (!buf)
                return 0;
        memcpy(buf, data, size);
        buf[size] = '\0';
        char *method = buf, *path = "", *ref = NULL;
        char *nl = strchr(method, '\n');
        if (nl) {
                *nl = '\0';
                path = nl + 1;
                if ((nl = strchr(path, '\n'))) {
                        *nl = '\0';
                        ref = nl + 1;
                }
        }

        struct api_request q, orig;
        memset(&orig, 0xa5, sizeof(orig));
        q = orig;
        char reason[256] = "";
        int r = api_parse_request(method, path, ref, &q, reason, sizeof(reason));
        CHECK(r == 0 || r == -ENOENT || r == -EOPNOTSUPP || r == -EINVAL);
        if (r < 0) {
                CHECK(memcmp(&q, &orig, sizeof(q)) == 0);
                CHECK(reason[0] != '\0' && memchr(reason, '\0', sizeof(reason)));
        } else {
                bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
                char want[512], hex[DIGEST_HEX_LEN + 1];
                switch (q.route) {
                case API_STAT:
                        CHECK(get && strcmp(path, "/v1/stat") == 0);
                        break;
                case API_LIST:
                        CHECK(get && strcmp(path, "/v1/blobs") == 0);
                        break;
                case API_ADD:
                        CHECK(post && strcmp(path, "/v1/blobs") == 0 && q.ref == ref && ref);
                        break;
                case API_PEERS:
                        CHECK(get && strcmp(path, "/v1/peers") == 0);
                        break;
                case API_EVICT_ALL:
                        CHECK(post && strcmp(path, "/v1/evict") == 0);
                        break;
                case API_SNAPSHOTS:
                        CHECK(get && strcmp(path, "/v1/snapshots") == 0);
                        break;
                case API_BLOB:
                        CHECK(get);
                        digest_to_hex(&q.digest, hex);
                        snprintf(want, sizeof(want), "/v1/blobs/sha256:%s", hex);
                        CHECK(strcmp(path, want) == 0);
                        break;
                case API_BLOB_ACTION:
                        CHECK(post && (unsigned)q.action < sizeof(action_names) / sizeof(char *));
                        digest_to_hex(&q.digest, hex);
                        snprintf(want, sizeof(want), "/v1/blobs/sha256:%s/%s", hex,
                                 action_names[q.action]);
                        CHECK(strcmp(path, want) == 0);
                        break;
                default:
                        CHECK(0);
                }
                /* blobctl's side of the same table builds this request back. */
                static char built[3 * 4096 + 64];
                const char *bm = NULL;
                CHECK(api_build_request(&q, &bm, built, sizeof(built)) == 0);
                CHECK(strcmp(bm, method) == 0);
                char *query = strchr(built, '?');
                CHECK((query != NULL) == (q.route == API_ADD));
                if (query) {
                        *query = '\0';
                        CHECK(strncmp(query + 1, "ref=", 4) == 0);
                        size_t n = 0, rl = strlen(ref);
                        for (const char *c = query + 5; *c; n++) { /* decodes to REF */
                                unsigned v;
                                CHECK(*c != '%' || sscanf(c + 1, "%2X", &v) == 1);
                                char ch = *c == '%' ? (char)v : *c;
                                c += *c == '%' ? 3 : 1;
                                CHECK(n < rl && ch == ref[n]);
                        }
                        CHECK(n == rl);
                }
                CHECK(strcmp(built, path) == 0);
        }
        /* A reason buffer of 1..4 bytes is written within its bounds (ASan checks). */
        char tiny[4];
        size_t n = 1 + (size ? data[0] % sizeof(tiny) : 0);
        memset(tiny, 'x', sizeof(tiny));
        struct api_request q2;
        int r2 = api_parse_request(method, path, ref, &q2, tiny, n);
        CHECK(r2 == r);
        if (r2 < 0)
                CHECK(memchr(tiny, '\0', n) != NULL);
        free(buf);
        return 0;
}
