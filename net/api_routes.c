/* The control API's routes: matching a request against the table, and building one from it.
 * See api_routes.h.
 *
 * Matching walks the pattern and the path segment by segment (no copy, no allocation); a
 * variable matches one whole segment, possibly empty, and is checked after the path has
 * matched, so the checks run in the order the API has always answered them: the path first
 * (unknown: 404), then the digest in it (400), then the method (405), then the action or the
 * query (net/route.c's parser, given the row's keys: any other is refused, none twice), then
 * the required arguments. Several rows may share a path (GET and POST /v1/blobs): the method
 * picks one. */
#include "net/api_routes.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

const struct api_route_def api_routes[API_N_ROUTES] = {
#define API_ROUTE_ROW(route, method, path, required, optional, handler)                            \
        [route] = {method, path, required, optional, #handler},
        API_ROUTES(API_ROUTE_ROW)
#undef API_ROUTE_ROW
};

const char *const api_arg_keys[API_N_ARGS] = {
#define API_ARG_ROW(arg, key) [arg] = key,
        API_ARGS(API_ARG_ROW)
#undef API_ARG_ROW
};

static const char *const action_names[API_N_ACTIONS] = {
#define API_ACTION_ROW(action, name) [action] = name,
        API_ACTIONS(API_ACTION_ROW)
#undef API_ACTION_ROW
};

const char *api_action_name(enum api_action a) {
        return (unsigned)a < API_N_ACTIONS ? action_names[a] : NULL;
}

int api_action_find(const char *name, size_t len, enum api_action *ret) {
        for (unsigned i = 0; i < API_N_ACTIONS; i++)
                if (strlen(action_names[i]) == len && strncmp(action_names[i], name, len) == 0) {
                        *ret = (enum api_action)i;
                        return 0;
                }
        return -ENOENT;
}

/* The variables a path matched: where each segment starts and how long it is. */
struct api_vars {
        const char *digest, *action;
        size_t digest_len, action_len;
};

/* True when PATH has PATTERN's shape: as many segments, the literal ones equal. Fills VARS. */
static bool match_path(const char *pattern, const char *path, struct api_vars *vars) {
        *vars = (struct api_vars){0};
        const char *p = pattern, *s = path;
        for (;;) {
                size_t pl = strcspn(p, "/"), sl = strcspn(s, "/");
                if (pl == sizeof("{digest}") - 1 && strncmp(p, "{digest}", pl) == 0) {
                        vars->digest = s;
                        vars->digest_len = sl;
                } else if (pl == sizeof("{action}") - 1 && strncmp(p, "{action}", pl) == 0) {
                        vars->action = s;
                        vars->action_len = sl;
                } else if (pl != sl || strncmp(p, s, pl) != 0) {
                        return false;
                }
                p += pl;
                s += sl;
                if (*p != *s) /* one has more segments */
                        return false;
                if (!*p)
                        return true;
                p++;
                s++;
        }
}

/* "sha256:<hex>" from a path segment; -EINVAL otherwise. */
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

int api_parse_request(const char *method, const char *path, const char *query,
                      struct route_query *args, struct api_request *ret, char *reason,
                      size_t reason_len) {
        struct api_request q = {0};
        struct api_vars v = {0};
        bool path_known = false;
        int route = -1;
        for (int i = 0; i < API_N_ROUTES; i++) {
                struct api_vars vi;
                if (!match_path(api_routes[i].path, path, &vi))
                        continue;
                if (!path_known) { /* rows sharing a path share its variables */
                        path_known = true;
                        v = vi;
                }
                if (route < 0 && strcmp(method, api_routes[i].method) == 0)
                        route = i;
        }
        if (!path_known) {
                snprintf(reason, reason_len, "no such endpoint");
                return -ENOENT;
        }
        if (v.digest) {
                int r = parse_digest_arg(v.digest, v.digest_len, &q.digest, reason, reason_len);
                if (r < 0)
                        return r;
        }
        if (route < 0) {
                snprintf(reason, reason_len, "method not allowed");
                return -EOPNOTSUPP;
        }
        q.route = (enum api_route)route;
        if (v.action && api_action_find(v.action, v.action_len, &q.action) < 0) {
                snprintf(reason, reason_len, "no such action \"%.*s\"", (int)v.action_len,
                         v.action);
                return -ENOENT;
        }
        const struct api_route_def *def = &api_routes[route];
        int r = route_query_parse(query, api_arg_keys, API_N_ARGS, def->required | def->optional,
                                  args, reason, reason_len);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < API_N_ARGS; i++) {
                if ((def->required & API_A(i)) && !args->value[i]) {
                        snprintf(reason, reason_len, "missing %s parameter", api_arg_keys[i]);
                        return -EINVAL;
                }
                q.arg[i] = args->value[i];
        }
        *ret = q;
        return 0;
}

/* Appends S (N bytes) to BUF at *AT; false when it does not fit (NUL included). */
static bool append(char *buf, size_t len, size_t *at, const char *s, size_t n) {
        if (n >= len - *at)
                return false;
        memcpy(buf + *at, s, n);
        *at += n;
        buf[*at] = '\0';
        return true;
}

static bool unreserved(unsigned char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '.' || c == '_' || c == '~';
}

int api_build_request(const struct api_request *q, const char **ret_method, char *path,
                      size_t path_len) {
        if ((unsigned)q->route >= API_N_ROUTES || path_len == 0)
                return -EINVAL;
        const struct api_route_def *def = &api_routes[q->route];
        size_t at = 0;
        path[0] = '\0';
        for (const char *p = def->path; *p;) {
                size_t n = strcspn(p + 1, "/") + 1; /* one "/segment" */
                bool ok;
                if (n == sizeof("/{digest}") - 1 && strncmp(p, "/{digest}", n) == 0) {
                        char hex[DIGEST_HEX_LEN + 1];
                        digest_to_hex(&q->digest, hex);
                        ok = append(path, path_len, &at, "/sha256:", 8) &&
                             append(path, path_len, &at, hex, DIGEST_HEX_LEN);
                } else if (n == sizeof("/{action}") - 1 && strncmp(p, "/{action}", n) == 0) {
                        const char *a = api_action_name(q->action);
                        if (!a)
                                return -EINVAL;
                        ok = append(path, path_len, &at, "/", 1) &&
                             append(path, path_len, &at, a, strlen(a));
                } else {
                        ok = append(path, path_len, &at, p, n);
                }
                if (!ok)
                        return -ENAMETOOLONG;
                p += n;
        }
        size_t query_start = at;
        for (unsigned i = 0; i < API_N_ARGS; i++) {
                bool takes = (def->required | def->optional) & API_A(i);
                if (!q->arg[i] && (def->required & API_A(i)))
                        return -EINVAL;
                if (!q->arg[i])
                        continue;
                if (!takes)
                        return -EINVAL;
                const char *key = api_arg_keys[i];
                if (!append(path, path_len, &at, at == query_start ? "?" : "&", 1) ||
                    !append(path, path_len, &at, key, strlen(key)) ||
                    !append(path, path_len, &at, "=", 1))
                        return -ENAMETOOLONG;
                for (const unsigned char *c = (const unsigned char *)q->arg[i]; *c; c++) {
                        char esc[4];
                        size_t n = 1;
                        if (unreserved(*c))
                                esc[0] = (char)*c;
                        else
                                n = (size_t)snprintf(esc, sizeof(esc), "%%%02X", *c);
                        if (!append(path, path_len, &at, esc, n))
                                return -ENAMETOOLONG;
                }
        }
        if (at > query_start && at - query_start - 1 >= ROUTE_QUERY_MAX)
                return -ENAMETOOLONG; /* the daemon would refuse it */
        *ret_method = def->method;
        return 0;
}
