/* blobctl's layer commands (tools/blobctl_layers.c):
 *   layer add REGISTRY/REPO@sha256:<hex> [--diff-id sha256:..] [--toc-digest sha256:..]
 *             [--media-type TYPE] [--wait [SECONDS]] [--json]
 *   layers [--json]
 *   layer ls DIGEST [PATH] [--json]
 * blobctl.c hands over the command's arguments and a way to talk to the daemon. */
#pragma once
#include <jansson.h>
#include <stdbool.h>

struct api_request;

/* Performs request Q (net/api_routes.h) on the daemon: an exit code, and on success *RET (the
 * caller's). */
typedef int (*blobctl_request_fn)(void *ud, const struct api_request *q, json_t **ret);

/* Runs "layer ..." or "layers" (CMD) with ARGV[0..ARGC) after the command. An exit code. */
int blobctl_layers(const char *cmd, int argc, char **argv, blobctl_request_fn call, void *ud);
