/* The control API's request parsing. See api_request.h; the handlers are in api.c.
 *
 * The checks run in the order the API has always answered them: the path first (unknown:
 * 404), then the digest in it (400), then the method (405), then the action or the ref
 * argument. */
#include "fs/api_request.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* "sha256:<hex>" from a path component; -EINVAL otherwise. */
static int parse_digest_arg(const char *s, size_t len, struct digest *ret, char *reason,
                            size_t reason_len) {
        char buf[DIGEST_HEX_LEN + 8];
        if (len >= sizeof(buf) ||
            (memcpy(buf, s, len), buf[len] = '\0', digest_parse(buf, ret) < 0)) {
                snprintf(reason, reason_len, "malformed digest: want sha256:<64 lowercase hex>");
                return -EINVAL;
        }
        return 0;
}

static const struct {
        const char *name;
        enum api_action action;
} actions[] = {
        {"prefetch", API_PREFETCH}, {"pin", API_PIN},       {"unpin", API_UNPIN},
        {"evict", API_EVICT},       {"verify", API_VERIFY},
};

static int not_allowed(char *reason, size_t reason_len) {
        snprintf(reason, reason_len, "method not allowed");
        return -EOPNOTSUPP;
}

int api_parse_request(const char *method, const char *path, const char *ref_arg,
                      struct api_request *ret, char *reason, size_t reason_len) {
        bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
        struct api_request q = {0};
        static const char prefix[] = "/v1/blobs/";
        if (strcmp(path, "/v1/stat") == 0) {
                if (!get)
                        return not_allowed(reason, reason_len);
                q.route = API_STAT;
        } else if (strcmp(path, "/v1/blobs") == 0) {
                if (get) {
                        q.route = API_LIST;
                } else if (!post) {
                        return not_allowed(reason, reason_len);
                } else if (!ref_arg) {
                        snprintf(reason, reason_len, "missing ref parameter");
                        return -EINVAL;
                } else {
                        q.route = API_ADD;
                        q.ref = ref_arg;
                }
        } else if (strcmp(path, "/v1/peers") == 0) {
                if (!get)
                        return not_allowed(reason, reason_len);
                q.route = API_PEERS;
        } else if (strcmp(path, "/v1/evict") == 0) {
                if (!post)
                        return not_allowed(reason, reason_len);
                q.route = API_EVICT_ALL;
        } else if (strncmp(path, prefix, sizeof(prefix) - 1) == 0) {
                const char *rest = path + sizeof(prefix) - 1;
                const char *slash = strchr(rest, '/');
                int r = parse_digest_arg(rest, slash ? (size_t)(slash - rest) : strlen(rest),
                                         &q.digest, reason, reason_len);
                if (r < 0)
                        return r;
                if (!slash) {
                        if (!get)
                                return not_allowed(reason, reason_len);
                        q.route = API_BLOB;
                } else {
                        if (!post)
                                return not_allowed(reason, reason_len);
                        size_t i, n = sizeof(actions) / sizeof(actions[0]);
                        for (i = 0; i < n && strcmp(actions[i].name, slash + 1) != 0; i++)
                                ;
                        if (i == n) {
                                snprintf(reason, reason_len, "no such action \"%s\"", slash + 1);
                                return -ENOENT;
                        }
                        q.route = API_BLOB_ACTION;
                        q.action = actions[i].action;
                }
        } else {
                snprintf(reason, reason_len, "no such endpoint");
                return -ENOENT;
        }
        *ret = q;
        return 0;
}
