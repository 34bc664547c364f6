/* The labels of a lazy Prepare. See lazy.h for the contract.
 *
 * CRI's labels win over stargz's when both are there (CRI sets them from the image it pulls;
 * a stargz handler wrapper run under CRI would name the same layer). The repository is checked
 * with the same rules as every ref the daemon registers (util/ref.c), so what reaches ltree_add
 * is a ref the engine accepts, and a malformed label falls back to a normal snapshot rather
 * than to an error the pull would see. */
#include "snapshot/lazy.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define CRI_IMAGE "containerd.io/snapshot/cri.image-ref"
#define CRI_LAYER "containerd.io/snapshot/cri.layer-digest"
#define STARGZ_IMAGE "containerd.io/snapshot/remote/stargz.reference"
#define STARGZ_LAYER "containerd.io/snapshot/remote/stargz.digest"
#define STARGZ_TOC "containerd.io/snapshot/stargz/toc.digest"

static const char *value_of(const struct snap_label *labels, size_t n, const char *name) {
        for (size_t i = 0; i < n; i++)
                if (labels[i].name && strcmp(labels[i].name, name) == 0)
                        return labels[i].value && labels[i].value[0] ? labels[i].value : NULL;
        return NULL;
}

int lazy_image_repository(const char *image, char *out, size_t cap) {
        size_t len = strcspn(image, "@"); /* a digest ends the name */
        const char *slash = memchr(image, '/', len);
        if (!slash || slash == image)
                return -EINVAL;
        /* A ':' after the last '/' is a tag; one before it is the registry's port. */
        const char *last_slash = slash;
        for (const char *p = slash; p < image + len; p++)
                if (*p == '/')
                        last_slash = p;
        const char *colon = memchr(last_slash, ':', (size_t)(image + len - last_slash));
        if (colon)
                len = (size_t)(colon - image);
        if (len >= cap)
                return -ENAMETOOLONG;
        memcpy(out, image, len);
        out[len] = 0;
        struct blob_ref br;
        int r = ref_parse_source(out, &br);
        return r == -ENAMETOOLONG ? r : r < 0 ? -EINVAL : 0;
}

int lazy_parse(const struct snap_label *labels, size_t n, struct lazy_layer *ret) {
        const char *target = value_of(labels, n, LAZY_LABEL_TARGET);
        const char *image = value_of(labels, n, CRI_IMAGE);
        const char *layer = value_of(labels, n, CRI_LAYER);
        if (!image || !layer) {
                image = value_of(labels, n, STARGZ_IMAGE);
                layer = value_of(labels, n, STARGZ_LAYER);
        }
        if (!target || !image || !layer)
                return -ENOENT;
        struct lazy_layer l = {.target = target};
        if (digest_parse(layer, &l.digest) < 0)
                return -EINVAL;
        const char *toc = value_of(labels, n, STARGZ_TOC);
        if (toc) {
                if (digest_parse(toc, &l.toc_digest) < 0)
                        return -EINVAL;
                l.has_toc = 1;
        }
        char repo[REF_REGISTRY_MAX + REF_REPOSITORY_MAX];
        int r = lazy_image_repository(image, repo, sizeof(repo));
        if (r < 0)
                return r;
        snprintf(l.layer, sizeof(l.layer), "%s", layer);
        if ((size_t)snprintf(l.ref, sizeof(l.ref), "%s@%s", repo, layer) >= sizeof(l.ref))
                return -ENAMETOOLONG;
        *ret = l;
        return 0;
}
