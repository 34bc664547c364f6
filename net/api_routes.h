/* The control API's routes, in one table that the daemon (fs/api.c: parsing and dispatch) and
 * blobctl (building requests) both expand, so a route cannot mean one thing to one and another
 * to the other: a row is the route's name, its method, its path pattern, the query arguments
 * it requires and those it also takes, and the daemon's handler. Pure: no I/O, no allocation;
 * tested and fuzzed without a daemon (tests/fuzz/fuzz_api.c). The control server
 * (control/control.c) hands over method, path and raw query string; requests carry no body (the
 * server discards it).
 *
 * Path patterns are literal segments and two variables, each one whole segment:
 *   {digest}  sha256:<64 lowercase hex>        (struct api_request's digest)
 *   {action}  one of api_action's names below  (struct api_request's action)
 * Query arguments are named by API_ARGS below, and a row names its own with API_A(): a key
 * the route does not take, or one given twice, is refused (400) before any handler runs, and
 * blobctl cannot build a request with one (api_build_request fails).
 *
 * Adding a route: one X(...) row below, its handler in the daemon (a function of the
 * signature api_handler_fn in fs/api.h, declared before fs/api.c expands this table: a row
 * without a handler does not compile), and blobctl builds its request with
 * api_build_request(). A new argument: one row in API_ARGS. A new variable kind needs a line
 * in net/api_routes.c's matcher and builder. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "net/route.h"
#include "util/digest.h"

/* X(ARGUMENT, KEY) for the query strings of every route */
#define API_ARGS(X)                                                                                \
        X(API_ARG_REF, "ref")               /* REGISTRY/REPOSITORY@sha256:<hex> */                 \
        X(API_ARG_DIFF_ID, "diff_id")       /* a layer's uncompressed digest */                    \
        X(API_ARG_TOC_DIGEST, "toc_digest") /* an eStargz layer's TOC digest */                    \
        X(API_ARG_MEDIA_TYPE, "media_type") /* a layer's media type */                             \
        X(API_ARG_WAIT, "wait")             /* seconds to wait for a layer's index */              \
        X(API_ARG_PATH, "path")             /* a path inside a layer */

enum api_arg {
#define API_ARG_ENUM(arg, key) arg,
        API_ARGS(API_ARG_ENUM)
#undef API_ARG_ENUM
};
#define API_ARG_COUNT(arg, key) +1
enum { API_N_ARGS = 0 API_ARGS(API_ARG_COUNT) };
#undef API_ARG_COUNT
_Static_assert(API_N_ARGS <= ROUTE_QUERY_KEYS_MAX, "a route's arguments are bits of a uint32_t");

/* The bit of argument ARG in a row's REQUIRED and OPTIONAL columns. */
#define API_A(arg) (1u << (arg))
#define API_LAYER_ADD_ARGS                                                                         \
        (API_A(API_ARG_DIFF_ID) | API_A(API_ARG_TOC_DIGEST) | API_A(API_ARG_MEDIA_TYPE) |          \
         API_A(API_ARG_WAIT))

/* X(ROUTE, METHOD, PATH PATTERN, REQUIRED ARGUMENTS, OPTIONAL ARGUMENTS, HANDLER) */
#define API_ROUTES(X)                                                                              \
        X(API_STAT, "GET", "/v1/stat", 0, 0, api_on_stat)                  /* blobctl stat */      \
        X(API_LIST, "GET", "/v1/blobs", 0, 0, api_on_list)                 /* every blob */        \
        X(API_ADD, "POST", "/v1/blobs", API_A(API_ARG_REF), 0, api_on_add) /* register one */      \
        X(API_PEERS, "GET", "/v1/peers", 0, 0, api_on_peers)               /* the membership */    \
        X(API_EVICT_ALL, "POST", "/v1/evict", 0, 0, api_on_evict_all)      /* every blob's */      \
        X(API_BLOB, "GET", "/v1/blobs/{digest}", 0, 0, api_on_blob)        /* one, prefetch */     \
        X(API_BLOB_ACTION, "POST", "/v1/blobs/{digest}/{action}", 0, 0, api_on_blob_action)        \
        X(API_SNAPSHOTS, "GET", "/v1/snapshots", 0, 0, api_on_snapshots) /* the snapshotter's */   \
        X(API_LAYERS, "GET", "/v1/layers", 0, 0, api_on_layers)          /* every layer tree */    \
        X(API_LAYER_ADD, "POST", "/v1/layers", API_A(API_ARG_REF), API_LAYER_ADD_ARGS,             \
          api_on_layer_add)                                            /* index one */             \
        X(API_LAYER, "GET", "/v1/layers/{digest}", 0, 0, api_on_layer) /* one */                   \
        X(API_LAYER_FILES, "GET", "/v1/layers/{digest}/files", 0, API_A(API_ARG_PATH),             \
          api_on_layer_files) /* a directory's entries, or one file's */

enum api_route {
#define API_ROUTE_ENUM(route, method, path, required, optional, handler) route,
        API_ROUTES(API_ROUTE_ENUM)
#undef API_ROUTE_ENUM
};
/* How many (a constant apart from the enum, so that switches need not name it). */
#define API_ROUTE_COUNT(route, method, path, required, optional, handler) +1
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
        uint32_t required;   /* API_A() bits: arguments the route must be given */
        uint32_t optional;   /* and those it takes besides */
        const char *handler; /* the daemon's handler, by name (for people, docs and tests) */
};

/* Indexed by enum api_route. */
extern const struct api_route_def api_routes[API_N_ROUTES];

/* "ref", ...: the query key of each enum api_arg, indexed by it. */
extern const char *const api_arg_keys[API_N_ARGS];

/* "prefetch", ...; NULL for a value out of range. */
const char *api_action_name(enum api_action a);

/* The action named by NAME's first LEN bytes: 0 and *RET, or -ENOENT. */
int api_action_find(const char *name, size_t len, enum api_action *ret);

struct api_request {
        enum api_route route;
        struct digest digest;   /* routes with {digest} */
        enum api_action action; /* routes with {action} */
        /* The query arguments, by enum api_arg: NULL when not given. The daemon's side: as
         * decoded, pointing into the route_query api_parse_request was given ("" for a key
         * without a value); values are not checked beyond that (the handler does: ref_parse,
         * digest_parse, ...). blobctl's side: the caller's strings, sent percent-encoded. */
        const char *arg[API_N_ARGS];
};

/* The daemon's side. Routes a request: METHOD, PATH (percent-decoded, as MHD gives it) and
 * QUERY (the raw query string, or NULL). Fills RET and returns 0; otherwise writes a reason
 * (lowercase, what to do) to REASON and returns -ENOENT (no such endpoint or action),
 * -EOPNOTSUPP (method not allowed), -EINVAL (malformed digest; a malformed query, a key the
 * route does not take or given twice; a required argument missing), -ENAMETOOLONG (a query of
 * ROUTE_QUERY_MAX bytes or more), checked in that order: the path, the digest in it, the
 * method, the action, the query, the required arguments. ARGS holds the decoded arguments
 * RET's point to (scratch on failure, so it must outlive RET's use). RET is written only on
 * success. */
int api_parse_request(const char *method, const char *path, const char *query,
                      struct route_query *args, struct api_request *ret, char *reason,
                      size_t reason_len);

/* blobctl's side. The method (a static string) and the path of request Q, its query arguments
 * (in enum api_arg order) percent-encoded (everything but RFC 3986's unreserved characters),
 * into PATH (PATH_LEN bytes). 0; -EINVAL (route or action out of range, a required argument
 * NULL, an argument the route does not take); -ENAMETOOLONG (PATH too small, or a query of
 * ROUTE_QUERY_MAX bytes or more, which the daemon would refuse). What it builds,
 * api_parse_request() routes back to Q. */
int api_build_request(const struct api_request *q, const char **ret_method, char *path,
                      size_t path_len);
