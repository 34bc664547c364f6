/* GET /v1/snapshots on the control socket: the snapshotter's snapshots for blobctl snapshots. */
#pragma once
#include <jansson.h>
#include <stddef.h>

struct daemon;
struct api_request;

/* The handler of API_SNAPSHOTS (net/api_routes.h). *RET: a JSON array, one object per snapshot in id order: id, key, kind ("view", "active",
 * "committed"), parent ("" for none), remote (bool), layer (the layer digest: a remote
 * snapshot's own, else the cri.layer-digest or stargz.digest label, else null), ref (a remote
 * snapshot's registered ref, else null); for a remote snapshot also tree ("ready", "pending",
 * "failed", "unknown"), fetched_bytes and layer_bytes (the compressed bytes read for its layer
 * so far, and the layer's size). -ENOENT with REASON when the snapshotter is off. */
int api_on_snapshots(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                     size_t reason_len);
