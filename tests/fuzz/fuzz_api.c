/* libFuzzer target for the control API's route table (net/api_routes.c): what blobctl (or
 * anyone who can reach the socket) sends is a method, a path and a raw query string — the
 * input is those three, separated by newlines. The oracle: only the documented errors; a
 * reason on every error, NUL-terminated within even a tiny buffer; RET untouched on failure;
 * an accepted request prints back to exactly its path (the method one the route allows, the
 * digest and the action round-trip), carries every argument the route requires and none it
 * does not take; and what blobctl would build for it (api_build_request) is that method and
 * path again, with a query that routes back to the same arguments, byte for byte, so the
 * daemon and blobctl cannot disagree on a route or a key. */
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
        char *method = buf, *path = "", *query = NULL;
        char *nl = strchr(method, '\n');
        if (nl) {
                *nl = '\0';
                path = nl + 1;
                if ((nl = strchr(path, '\n'))) {
                        *nl = '\0';
                        query = nl + 1;
                }
        }

        static struct route_query args, args2, args3;
        struct api_request q, orig;
        memset(&orig, 0xa5, sizeof(orig));
        q = orig;
        char reason[256] = "";
        int r = api_parse_request(method, path, query, &args, &q, reason, sizeof(reason));
        CHECK(r == 0 || r == -ENOENT || r == -EOPNOTSUPP || r == -EINVAL || r == -ENAMETOOLONG);
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
                        CHECK(post && strcmp(path, "/v1/blobs") == 0 && q.arg[API_ARG_REF]);
                        break;
                case API_LAYERS:
                        CHECK(get && strcmp(path, "/v1/layers") == 0);
                        break;
                case API_LAYER_ADD:
                        CHECK(post && strcmp(path, "/v1/layers") == 0 && q.arg[API_ARG_REF]);
                        break;
                case API_LAYER:
                case API_LAYER_FILES:
                        CHECK(get);
                        digest_to_hex(&q.digest, hex);
                        snprintf(want, sizeof(want), "/v1/layers/sha256:%s%s", hex,
                                 q.route == API_LAYER ? "" : "/files");
                        CHECK(strcmp(path, want) == 0);
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
                /* The arguments: those the route takes, its required ones among them. */
                const struct api_route_def *def = &api_routes[q.route];
                for (unsigned i = 0; i < API_N_ARGS; i++) {
                        CHECK(!q.arg[i] || ((def->required | def->optional) & API_A(i)));
                        CHECK(q.arg[i] || !(def->required & API_A(i)));
                        CHECK(!q.arg[i] ||
                              (q.arg[i] >= args.buf && q.arg[i] < args.buf + sizeof(args.buf)));
                }
                /* blobctl's side of the same table builds this request back. */
                static char built[ROUTE_QUERY_MAX * 4];
                const char *bm = NULL;
                int b = api_build_request(&q, &bm, built, sizeof(built));
                /* Escaped, a value may grow three times past what the daemon takes. */
                CHECK(b == 0 || b == -ENAMETOOLONG);
                if (b == 0) {
                        CHECK(strcmp(bm, method) == 0);
                        char *bq = strchr(built, '?');
                        if (bq)
                                *bq++ = '\0';
                        CHECK(strcmp(built, path) == 0);
                        struct api_request back;
                        CHECK(api_parse_request(bm, built, bq, &args2, &back, reason,
                                                sizeof(reason)) == 0);
                        CHECK(back.route == q.route && back.action == q.action &&
                              digest_equal(&back.digest, &q.digest));
                        for (unsigned i = 0; i < API_N_ARGS; i++)
                                CHECK((back.arg[i] == NULL) == (q.arg[i] == NULL) &&
                                      (!q.arg[i] || strcmp(back.arg[i], q.arg[i]) == 0));
                        /* Unreserved bytes only: nothing in it needs a second thought. */
                        for (const char *c = bq ? bq : ""; *c; c++)
                                CHECK(strchr("-._~%&=", *c) || (*c >= 'a' && *c <= 'z') ||
                                      (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9'));
                }
        }
        /* A reason buffer of 1..4 bytes is written within its bounds (ASan checks). */
        char tiny[4];
        size_t n = 1 + (size ? data[0] % sizeof(tiny) : 0);
        memset(tiny, 'x', sizeof(tiny));
        struct api_request q2;
        int r2 = api_parse_request(method, path, query, &args3, &q2, tiny, n);
        CHECK(r2 == r);
        if (r2 < 0)
                CHECK(memchr(tiny, '\0', n) != NULL);
        free(buf);
        return 0;
}
