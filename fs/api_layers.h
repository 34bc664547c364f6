/* The control API's layer routes (fs/api.c hands over every path under /v1/layers):
 *   GET  /v1/layers                                   every layer (blobctl layers)
 *   POST /v1/layers?ref=REG/REPO@DIGEST[&diff_id=sha256:..][&toc_digest=sha256:..]
 *                  [&media_type=..][&wait=SECONDS]    register a layer (blobctl layer add)
 *   GET  /v1/layers/sha256:<hex>                      one layer
 *   GET  /v1/layers/sha256:<hex>/files[?path=P]       the entries of directory P, or entry P
 *                                                     (blobctl layer ls) */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "peer/control.h"

struct daemon;

/* Whether PATH is one of these routes. */
bool api_layers_route(const char *path);

/* Answers REQ (a path api_layers_route accepted), as control_ops.handle. */
int api_layers_handle(struct daemon *d, const struct control_req *req, json_t **ret, char *reason,
                      size_t reason_len);
