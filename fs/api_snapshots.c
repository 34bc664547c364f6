/* The control API's view of the snapshotter: which snapshots there are and which of them are
 * remote (their tree a layer tree, not a dir containerd unpacked into). One metadata walk per
 * request, so the answer is as large as the snapshot table (a few hundred bytes a snapshot);
 * containerd keeps that table bounded by its own garbage collection. */
#include "fs/api_snapshots.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "fs/api.h"
#include "index/snapshots.h"
#include "snapshot/snapshotter.h"

static const char *kind_name(enum snap_kind k) {
        switch (k) {
        case SNAP_VIEW:
                return "view";
        case SNAP_ACTIVE:
                return "active";
        case SNAP_COMMITTED:
                return "committed";
        }
        return "unknown";
}

static const char *label(const struct snap_info *info, const char *name) {
        for (size_t i = 0; i < info->nlabels; i++)
                if (strcmp(info->labels[i].name, name) == 0)
                        return info->labels[i].value;
        return NULL;
}

static int add_one(void *ud, const struct snap_info *info) {
        json_t *arr = ud;
        bool remote = info->remote_layer[0] != 0;
        const char *layer = remote ? info->remote_layer : NULL;
        if (!layer)
                layer = label(info, "containerd.io/snapshot/cri.layer-digest");
        if (!layer)
                layer = label(info, "containerd.io/snapshot/remote/stargz.digest");
        json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:b, s:s?, s:s?}", "id", (json_int_t)info->id,
                              "key", info->key, "kind", kind_name(info->kind), "parent",
                              info->parent, "remote", remote, "layer", layer, "ref",
                              remote ? info->remote_ref : NULL);
        if (!o || json_array_append_new(arr, o) < 0)
                return -ENOMEM;
        return 0;
}

int api_on_snapshots(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                     size_t reason_len) {
        (void)q;
        struct snapshotter *sn = __atomic_load_n(&d->snapshotter, __ATOMIC_ACQUIRE);
        if (!sn) {
                snprintf(reason, reason_len,
                         "the snapshotter is off; start p2pblobsd with --snapshotter-socket");
                return -ENOENT;
        }
        json_t *arr = json_array();
        if (!arr)
                return -ENOMEM;
        int r = snapshotter_for_each(sn, add_one, arr);
        if (r < 0) {
                json_decref(arr);
                snprintf(reason, reason_len, "cannot list the snapshots: %s", strerror(-r));
                return r;
        }
        *ret = arr;
        return 0;
}
