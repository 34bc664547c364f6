/* blobctl snapshots and the snapshotter's line of blobctl stat. Formatting only: the daemon
 * answers (GET /v1/snapshots); long keys and digests are printed whole, since an operator
 * copies them into ctr commands, and the table is one line a snapshot. */
#include "tools/blobctl_snapshots.h"

#include <inttypes.h>
#include <string.h>

static const char *str(json_t *o, const char *key, const char *dflt) {
        const char *v = json_string_value(json_object_get(o, key));
        return v && v[0] ? v : dflt;
}

void blobctl_print_snapshots(FILE *out, json_t *arr) {
        size_t i, remote = 0, n = json_array_size(arr);
        json_int_t fetched = 0, size = 0;
        json_t *s;
        fprintf(out, "%-6s %-9s %-6s %-71s %-30s %s\n", "ID", "KIND", "REMOTE", "LAYER", "PARENT",
                "KEY");
        json_array_foreach(arr, i, s) {
                bool rem = json_is_true(json_object_get(s, "remote"));
                remote += rem;
                fetched += json_integer_value(json_object_get(s, "fetched_bytes"));
                size += json_integer_value(json_object_get(s, "layer_bytes"));
                fprintf(out, "%-6" JSON_INTEGER_FORMAT " %-9s %-6s %-71s %-30s %s\n",
                        json_integer_value(json_object_get(s, "id")), str(s, "kind", "?"),
                        rem ? "yes" : "-", str(s, "layer", "-"), str(s, "parent", "-"),
                        str(s, "key", "?"));
        }
        fprintf(out,
                "%zu snapshots, %zu remote (layer trees, not unpacked): %" JSON_INTEGER_FORMAT
                " of their %" JSON_INTEGER_FORMAT " compressed bytes fetched\n",
                n, remote, fetched, size);
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
}
