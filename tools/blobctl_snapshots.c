/* blobctl snapshots and the snapshotter's lines of blobctl stat. Formatting only: the daemon
 * answers (GET /v1/snapshots); long keys and digests are printed whole, since an operator
 * copies them into ctr commands, and the table is one line a snapshot. */
#include "tools/blobctl_snapshots.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const char *str(json_t *o, const char *key, const char *dflt) {
        const char *v = json_string_value(json_object_get(o, key));
        return v && v[0] ? v : dflt;
}

void blobctl_print_snapshots(FILE *out, json_t *arr) {
        size_t i, remote = 0, starts = 0, n = json_array_size(arr);
        json_int_t fetched = 0, size = 0, start_bytes = 0;
        json_t *s;
        fprintf(out, "%-6s %-9s %-6s %-71s %-30s %-10s %s\n", "ID", "KIND", "REMOTE", "LAYER",
                "PARENT", "START", "KEY");
        json_array_foreach(arr, i, s) {
                bool rem = json_is_true(json_object_get(s, "remote"));
                remote += rem;
                fetched += json_integer_value(json_object_get(s, "fetched_bytes"));
                size += json_integer_value(json_object_get(s, "layer_bytes"));
                /* An active snapshot over layer trees: bytes fetched for its start ("*":
                 * counted since the daemon started, its Prepare came before). */
                char start[32] = "-";
                json_t *sf = json_object_get(s, "start_fetched_bytes");
                if (json_is_integer(sf)) {
                        snprintf(start, sizeof(start), "%" JSON_INTEGER_FORMAT "%s",
                                 json_integer_value(sf),
                                 strcmp(str(s, "start_counted_since", ""), "prepare") == 0 ? ""
                                                                                           : "*");
                        starts++;
                        start_bytes += json_integer_value(sf);
                }
                fprintf(out, "%-6" JSON_INTEGER_FORMAT " %-9s %-6s %-71s %-30s %-10s %s\n",
                        json_integer_value(json_object_get(s, "id")), str(s, "kind", "?"),
                        rem ? "yes" : "-", str(s, "layer", "-"), str(s, "parent", "-"), start,
                        str(s, "key", "?"));
        }
        fprintf(out,
                "%zu snapshots, %zu remote (layer trees, not unpacked): %" JSON_INTEGER_FORMAT
                " of their %" JSON_INTEGER_FORMAT " compressed bytes fetched\n",
                n, remote, fetched, size);
        if (starts)
                fprintf(out,
                        "%zu active over layer trees: %" JSON_INTEGER_FORMAT
                        " bytes fetched for their starts (START: per snapshot since its Prepare; "
                        "a layer shared by two counts for both)\n",
                        starts, start_bytes);
}

void blobctl_print_snapshotter_stat(FILE *out, json_t *s) {
        json_t *g = json_object_get(s, "snapshotter");
        if (!json_is_object(g))
                return;
        fprintf(out,
                "%-10s %" JSON_INTEGER_FORMAT " lazy layers, %" JSON_INTEGER_FORMAT
                " fallbacks to unpacking, %" JSON_INTEGER_FORMAT " mounts over layer trees\n",
                "snapshots", json_integer_value(json_object_get(g, "lazy_layers")),
                json_integer_value(json_object_get(g, "lazy_fallbacks")),
                json_integer_value(json_object_get(g, "remote_mounts")));
        fprintf(out,
                "%-10s %" JSON_INTEGER_FORMAT
                " container snapshots over lazy layers; %.1f MiB of lazy layers fetched from "
                "peers and origins (per start: blobctl snapshots)\n",
                "", json_integer_value(json_object_get(g, "starts")),
                (double)json_integer_value(json_object_get(g, "lazy_fetched_bytes")) / (1 << 20));
        json_t *p = json_object_get(g, "prefetch");
        if (json_is_object(p) && json_integer_value(json_object_get(p, "queued")))
                fprintf(out,
                        "%-10s prefetch: %" JSON_INTEGER_FORMAT
                        " layers queued, %" JSON_INTEGER_FORMAT " prefetched, %" JSON_INTEGER_FORMAT
                        " skipped, %" JSON_INTEGER_FORMAT " failed, %" JSON_INTEGER_FORMAT
                        " running\n",
                        "", json_integer_value(json_object_get(p, "queued")),
                        json_integer_value(json_object_get(p, "prefetched")),
                        json_integer_value(json_object_get(p, "skipped")),
                        json_integer_value(json_object_get(p, "failed")),
                        json_integer_value(json_object_get(p, "active")));
}
