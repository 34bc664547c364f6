/* The control API's routes, in one table that the daemon (fs/api.c: parsing and dispatch) and
 * blobctl (building requests) both expand, so a route cannot mean one thing to one and another
 * to the other: a row is the route's name, its method, its path pattern, the query argument it
 * needs and the daemon's handler. Pure: no I/O, no allocation; tested and fuzzed without a
 * daemon (tests/fuzz/fuzz_api.c). The control server (peer/control.c) hands over method, path
 * and query arguments; requests carry no body (the server discards it).
 *
 * Path patterns are literal segments and two variables, each one whole segment:
 *   {digest}  sha256:<64 lowercase hex>        (struct api_request's digest)
 *   {action}  one of api_action's names below  (struct api_request's action)
 *
 * Adding a route: one X(...) row below, its handler in the daemon (a function of the
 * signature api_handler_fn in fs/api.h, declared before fs/api.c expands this table: a row
 * without a handler does not compile), and blobctl builds its request with
 * api_build_request(). A new variable kind needs a line in net/api_routes.c's matcher and
 * builder. */
#pragma once
#include <stddef.h>

#include "util/digest.h"

/* X(ROUTE, METHOD, PATH PATTERN, REQUIRED QUERY ARGUMENT or NULL, HANDLER) */
#define API_ROUTES(X)                                                                              \
        X(API_STAT, "GET", "/v1/stat", NULL, api_on_stat)    /* blobctl stat */                    \
        X(API_LIST, "GET", "/v1/blobs", NULL, api_on_list)   /* every blob */                      \
        X(API_ADD, "POST", "/v1/blobs", "ref", api_on_add)   /* register REG/REPO@DIGEST */        \
        X(API_PEERS, "GET", "/v1/peers", NULL, api_on_peers) /* the membership */                  \
        X(API_EVICT_ALL, "POST", "/v1/evict", NULL, api_on_evict_all) /* every blob's chunks */    \
        X(API_BLOB, "GET", "/v1/blobs/{digest}", NULL, api_on_blob)   /* one, prefetch progress */ \
        X(API_BLOB_ACTION, "POST", "/v1/blobs/{digest}/{action}", NULL, api_on_blob_action)        \
        X(API_SNAPSHOTS, "GET", "/v1/snapshots", NULL, api_on_snapshots) /* the snapshotter's */

enum api_route {
#define API_ROUTE_ENUM(route, method, path, query, handler) route,
        API_ROUTES(API_ROUTE_ENUM)
#undef API_ROUTE_ENUM
};
/* How many (a constant apart from the enum, so that switches need not name it). */
#define API_ROUTE_COUNT(route, method, path, query, handler) +1
enum { API_N_ROUTES = 0 API_ROUTES(API_ROUTE_COUNT) };
#undef API_ROUTE_COUNT

/* X(ACTION, NAME) for {action} */
#define API_ACTIONS(X)                                                                             \
        X(API_PREFETCH, "prefetch")                                                                \
        X(API_PIN, "pin")                                                                          \
        X(API_UNPIN, "unpin")                                                                      \
        X(API_EVICT, "evict")                                                                      \
        X(API_VERIFY, "verify")

enum api_action {
#define API_ACTION_ENUM(action, name) action,
        API_ACTIONS(API_ACTION_ENUM)
#undef API_ACTION_ENUM
};
#define API_ACTION_COUNT(action, name) +1
enum { API_N_ACTIONS = 0 API_ACTIONS(API_ACTION_COUNT) };
#undef API_ACTION_COUNT

struct api_route_def {
        const char *method;  /* "GET" or "POST" */
        const char *path;    /* the pattern */
        const char *query;   /* a query argument the route requires, or NULL */
        const char *handler; /* the daemon's handler, by name (for people, docs and tests) */
};

/* Indexed by enum api_route. */
extern const struct api_route_def api_routes[API_N_ROUTES];

/* "prefetch", ...; NULL for a value out of range. */
const char *api_action_name(enum api_action a);

/* The action named by NAME's first LEN bytes: 0 and *RET, or -ENOENT. */
int api_action_find(const char *name, size_t len, enum api_action *ret);

struct api_request {
        enum api_route route;
        struct digest digest;   /* routes with {digest} */
        enum api_action action; /* routes with {action} */
        const char *ref;        /* API_ADD: the "ref" argument as given (borrowed; ref_parse
                                 * checks it) */
};

/* The daemon's side. Routes a request. REF_ARG is the "ref" query argument or NULL. Fills RET
 * and returns 0; otherwise writes a reason (lowercase, what to do) to REASON and returns
 * -ENOENT (no such endpoint or action), -EOPNOTSUPP (method not allowed), -EINVAL (malformed
 * digest, missing ref), checked in that order: the path, the digest in it, the method, the
 * action or the argument. RET is written only on success. */
int api_parse_request(const char *method, const char *path, const char *ref_arg,
                      struct api_request *ret, char *reason, size_t reason_len);

/* blobctl's side. The method (a static string) and the path of request Q, its query argument
 * percent-encoded (everything but RFC 3986's unreserved characters), into PATH (PATH_LEN
 * bytes). 0; -EINVAL (route or action out of range, a required argument NULL); -ENAMETOOLONG.
 * What it builds, api_parse_request() routes back to Q. */
int api_build_request(const struct api_request *q, const char **ret_method, char *path,
                      size_t path_len);
