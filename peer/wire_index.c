/* The index answer (wire.h) and the index record an announce carries, which have one shape:
 * read, written and compared here. */
#include "peer/wire_int.h"

/* {"layer":"sha256:..", "index":"sha256:..", "size":N}: an announce's index record and the
 * index answer have the same shape. */
bool wr_get_index(json_t *o, struct wire_index *ret) {
        return json_is_object(o) && wr_get_digest_key(o, "layer", &ret->layer) &&
               wr_get_digest_key(o, "index", &ret->index) &&
               wr_get_uint(o, "size", 1, INT64_MAX, &ret->size);
}

json_t *wr_index_json(const struct wire_index *x) {
        json_t *o = json_object();

        if (!o)
                return NULL;
        if (json_object_set_new(o, "layer", wr_blob_digest_json(&x->layer)) < 0 ||
            json_object_set_new(o, "index", wr_blob_digest_json(&x->index)) < 0 ||
            json_object_set_new(o, "size", json_integer((json_int_t)x->size)) < 0) {
                json_decref(o);
                return NULL;
        }
        return o;
}

int wire_index_build(const struct wire_index *x, char **ret, size_t *ret_len) {
        if (x->size == 0 || x->size > INT64_MAX)
                return -EINVAL;
        return wr_dump(wr_index_json(x), ret, ret_len);
}

int wire_index_parse(const char *body, size_t len, struct wire_index *ret, char *reason,
                     size_t reason_len) {
        struct wire_index x;
        json_t *root;
        int r = 0;

        root = wr_load(body, len, reason, reason_len, &r);
        if (!root)
                return r;
        if (!wr_get_index(root, &x))
                r = wr_fail(
                        reason, reason_len,
                        "invalid index answer: want layer and index digests and a size 1..%" PRId64,
                        INT64_MAX);
        json_decref(root);
        if (r == 0)
                *ret = x;
        return r;
}

bool wire_index_equal(const struct wire_index *a, const struct wire_index *b) {
        return digest_equal(&a->layer, &b->layer) && digest_equal(&a->index, &b->index) &&
               a->size == b->size;
}
