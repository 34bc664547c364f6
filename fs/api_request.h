/* The control API's request parsing (fs/api.c's routes), apart from the handlers so that it
 * can be tested and fuzzed without a daemon: method, path and the ref argument in, a route out.
 * The control server (peer/control.c) hands over method, path and query arguments; requests
 * carry no body (the server discards it). */
#pragma once
#include <stddef.h>

#include "util/digest.h"

enum api_route {
        API_STAT,        /* GET  /v1/stat */
        API_LIST,        /* GET  /v1/blobs */
        API_ADD,         /* POST /v1/blobs?ref=REG/REPO@DIGEST */
        API_PEERS,       /* GET  /v1/peers */
        API_EVICT_ALL,   /* POST /v1/evict */
        API_BLOB,        /* GET  /v1/blobs/sha256:<hex> */
        API_BLOB_ACTION, /* POST /v1/blobs/sha256:<hex>/ACTION */
};

enum api_action { API_PREFETCH, API_PIN, API_UNPIN, API_EVICT, API_VERIFY };

struct api_request {
        enum api_route route;
        struct digest digest;   /* API_BLOB, API_BLOB_ACTION */
        enum api_action action; /* API_BLOB_ACTION */
        const char *ref;        /* API_ADD: REF_ARG as given (borrowed; ref_parse checks it) */
};

/* Routes a request. REF_ARG is the "ref" query argument or NULL. Fills RET and returns 0;
 * otherwise writes a reason (lowercase, what to do) to REASON and returns -ENOENT (no such
 * endpoint or action), -EOPNOTSUPP (method not allowed), -EINVAL (malformed digest, missing
 * ref). RET is written only on success. Pure: no I/O, no allocation. */
int api_parse_request(const char *method, const char *path, const char *ref_arg,
                      struct api_request *ret, char *reason, size_t reason_len);
