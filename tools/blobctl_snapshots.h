/* blobctl snapshots: how the snapshotter's snapshots are shown. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

/* Prints ARR (the answer of GET /v1/snapshots) to OUT as a table: key, kind, parent, remote
 * or not, layer digest, bytes fetched for an active snapshot's start; then a summary. */
void blobctl_print_snapshots(FILE *out, json_t *arr);

/* Prints the snapshotter lines of blobctl stat from S (GET /v1/stat): lazy layers, bytes
 * fetched for them, prefetch once a layer was queued; nothing when S has no snapshotter
 * group. */
void blobctl_print_snapshotter_stat(FILE *out, json_t *s);
