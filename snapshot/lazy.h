/* Which Prepare asks for a lazy layer, and for which layer: the labels containerd passes.
 *
 * containerd's unpacker prepares each layer with the label containerd.io/snapshot.ref = the
 * layer's chain id (the committed snapshot it wants) plus the layer descriptor's annotations
 * under containerd.io/snapshot/. Two clients put a layer's identity there:
 *   CRI (disable_snapshot_annotations = false):  containerd.io/snapshot/cri.image-ref
 *                                                 containerd.io/snapshot/cri.layer-digest
 *   ctr-remote image rpull (stargz's labels):     containerd.io/snapshot/remote/stargz.reference
 *                                                 containerd.io/snapshot/remote/stargz.digest
 * and eStargz layers carry containerd.io/snapshot/stargz/toc.digest. Pure parsing, no I/O. */
#pragma once
#include <stddef.h>

#include "index/snapshots.h"
#include "util/ref.h"
#include "util/digest.h"

#define LAZY_LABEL_TARGET "containerd.io/snapshot.ref"
#define LAZY_LABEL_REMOTE "containerd.io/snapshot/remote" /* on a remote snapshot, as stargz */
#define LAZY_REF_MAX (REF_REGISTRY_MAX + REF_REPOSITORY_MAX + 80)

struct lazy_layer {
        const char *target;             /* the chain id to commit as (points into the labels) */
        char ref[LAZY_REF_MAX];         /* "registry/repository@sha256:<hex>" for ltree_add */
        char layer[DIGEST_HEX_LEN + 8]; /* "sha256:<hex>" */
        struct digest digest;
        struct digest toc_digest; /* valid when has_toc */
        int has_toc;
};

/* Reads the labels of a Prepare. 0 and *RET: a layer that may be served lazily; -ENOENT: the
 * Prepare is not for a layer (no target or no layer labels): a normal snapshot; -EINVAL: the
 * labels are there but malformed (an image ref without a registry, a digest that is not
 * sha256:<hex>); -ENAMETOOLONG. LABELS must outlive *RET (target points into them). */
int lazy_parse(const struct snap_label *labels, size_t n, struct lazy_layer *ret);

/* The "registry/repository" of image reference IMAGE ("host[:port]/repo[:tag][@digest]").
 * The registry must be explicit (CRI and ctr-remote normalise docker.io names). 0, -EINVAL,
 * -ENAMETOOLONG. */
int lazy_image_repository(const char *image, char *out, size_t cap);
