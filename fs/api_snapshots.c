/* The control API's view of the snapshotter: which snapshots there are and which of them are
 * remote (their tree a layer tree, not a dir containerd unpacked into). One metadata walk per
 * request, so the answer is as large as the snapshot table (a few hundred bytes a snapshot);
 * containerd keeps that table bounded by its own garbage collection. A remote snapshot also
 * shows its layer tree's state and the compressed bytes fetched for that layer so far (the
 * index pass, if this node ran it, and the reads of the containers on it): what lazy starts
 * cost in origin or peer traffic, layer by layer. An active snapshot over remote layers shows
 * the bytes fetched for its start (snapshotter_start_fetched: what its remote lowers fetched
 * from peers and the origin since its Prepare, per layer and summed), looked up after the
 * walk, one metadata read each. */
#include "fs/api_snapshots.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/api.h"
#include "index/snapshots.h"
#include "layertree/layertree.h"
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

struct walk {
        json_t *arr;
        struct ltree *layers; /* NULL: no layer trees */
        /* Active snapshots, for the start figures after the walk (objects owned by arr) */
        struct active {
                json_t *o;
                char *key;
        } * active;
        size_t nactive, cap;
};

/* The tree's state and the compressed bytes fetched for it so far, for a remote snapshot. */
static void add_tree(json_t *o, struct ltree *lt, const char *layer) {
        struct digest dg;
        struct ltree_layer_info li;
        if (!lt || digest_parse(layer, &dg) < 0 || ltree_find(lt, &dg, &li) < 0) {
                json_object_set_new(o, "tree", json_string("unknown"));
                return;
        }
        json_object_set_new(o, "tree",
                            json_string(li.state == LTREE_READY     ? "ready"
                                        : li.state == LTREE_PENDING ? "pending"
                                                                    : "failed"));
        json_object_set_new(o, "fetched_bytes", json_integer((json_int_t)li.bytes_fetched));
        json_object_set_new(o, "layer_bytes", json_integer((json_int_t)li.blob_size));
}

static int add_one(void *ud, const struct snap_info *info) {
        struct walk *w = ud;
        json_t *arr = w->arr;
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
        if (!o)
                return -ENOMEM;
        if (remote)
                add_tree(o, w->layers, info->remote_layer);
        if (json_array_append_new(arr, o) < 0)
                return -ENOMEM;
        if (info->kind == SNAP_ACTIVE) {
                if (w->nactive == w->cap) {
                        size_t ncap = w->cap ? 2 * w->cap : 16;
                        struct active *nv = realloc(w->active, ncap * sizeof(*nv));
                        if (!nv)
                                return -ENOMEM;
                        w->active = nv;
                        w->cap = ncap;
                }
                char *key = strdup(info->key);
                if (!key)
                        return -ENOMEM;
                w->active[w->nactive++] = (struct active){o, key};
        }
        return 0;
}

/* The bytes fetched for each active snapshot's start, when it has remote lowers. */
static void add_starts(struct snapshotter *sn, struct walk *w) {
        for (size_t i = 0; i < w->nactive; i++) {
                struct snapshotter_start st;
                if (snapshotter_start_fetched(sn, w->active[i].key, &st) < 0 ||
                    st.remote_lowers == 0)
                        continue;
                json_t *o = w->active[i].o;
                json_object_set_new(o, "remote_lowers", json_integer(st.remote_lowers));
                json_object_set_new(o, "start_fetched_bytes",
                                    json_integer((json_int_t)st.fetched_bytes));
                json_object_set_new(o, "start_counted_since",
                                    json_string(st.since_prepare ? "prepare" : "daemon start"));
        }
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
        struct walk w = {.arr = arr, .layers = d->layers};
        int r = snapshotter_for_each(sn, add_one, &w);
        if (r == 0)
                add_starts(sn, &w);
        for (size_t i = 0; i < w.nactive; i++)
                free(w.active[i].key);
        free(w.active);
        if (r < 0) {
                json_decref(arr);
                snprintf(reason, reason_len, "cannot list the snapshots: %s", strerror(-r));
                return r;
        }
        *ret = arr;
        return 0;
}
