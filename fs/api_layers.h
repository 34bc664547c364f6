/* The control API's layer routes, rows of net/api_routes.h's table (fs/api.c dispatches):
 *   GET  /v1/layers                                   every layer (blobctl layers)
 *   POST /v1/layers?ref=REG/REPO@DIGEST[&diff_id=sha256:..][&toc_digest=sha256:..]
 *                  [&media_type=..][&wait=SECONDS]    register a layer (blobctl layer add)
 *   GET  /v1/layers/sha256:<hex>                      one layer
 *   GET  /v1/layers/sha256:<hex>/files[?path=P]       the entries of directory P, or entry P
 *                                                     (blobctl layer ls)
 * Each is an api_handler_fn (fs/api.h): -ENOENT with a reason when the layer trees are not
 * running. */
#pragma once
#include <jansson.h>
#include <stddef.h>

struct daemon;
struct api_request;

/* API_LAYERS: a JSON array of every layer. */
int api_on_layers(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                  size_t reason_len);

/* API_LAYER_ADD: registers the layer (and with wait= waits for its index, at most an hour);
 * the layer's JSON. -EINVAL for a missing or empty ref, a malformed digest or wait. */
int api_on_layer_add(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                     size_t reason_len);

/* API_LAYER: one layer's JSON; -ENOENT when this node has no such layer. */
int api_on_layer(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                 size_t reason_len);

/* API_LAYER_FILES: the entries under path= (default: the root), or that one entry. -EBUSY
 * while the layer's index is being built, -ENOENT for no such layer or path. */
int api_on_layer_files(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                       size_t reason_len);
