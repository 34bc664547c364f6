/* libFuzzer target for layer/tar.c. The input is fed in pieces whose size the first byte
 * picks (so header and record boundaries fall everywhere). Oracles: every reported path is
 * already normalised (no "..", no absolute or empty components), hard link targets too; data
 * offsets lie within what was fed; an error is sticky and described; and the same input fed
 * whole gives the same entries and the same result. */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "layer/tar.h"
#include "tests/fuzz/fuzz.h"

struct seen {
        unsigned n;
        uint64_t sum; /* of offsets and sizes: to compare two runs */
        uint64_t fed;
};

static int on_entry(void *ctx, const struct tar_entry *e) {
        struct seen *s = ctx;
        char norm[PATH_MAX];

        CHECK(tar_path_normalise(e->path, strlen(e->path), norm, sizeof(norm)) == 0);
        CHECK(strcmp(norm, e->path) == 0);
        CHECK(e->type >= TAR_REG && e->type <= TAR_OPAQUE);
        CHECK(e->mode <= 07777);
        if (e->type == TAR_HARDLINK) {
                CHECK(e->link && e->link[0]);
                CHECK(tar_path_normalise(e->link, strlen(e->link), norm, sizeof(norm)) == 0);
                CHECK(strcmp(norm, e->link) == 0);
        } else if (e->type == TAR_SYMLINK) {
                CHECK(e->link && e->link[0] && strlen(e->link) < PATH_MAX);
        } else {
                CHECK(e->link == NULL);
        }
        if (e->type != TAR_REG)
                CHECK(e->size == 0);
        CHECK(e->offset <= s->fed && e->header_offset + TAR_BLOCK <= e->offset);
        CHECK(e->nxattrs <= TAR_XATTRS_MAX);
        for (size_t i = 0; i < e->nxattrs; i++)
                CHECK(e->xattrs[i].name[0] && e->xattrs[i].len <= TAR_XATTR_VALUE_MAX);
        s->n++;
        s->sum += e->offset * 31 + e->size;
        return 0;
}

static int run(const uint8_t *data, size_t size, size_t piece, struct seen *s) {
        struct tar_parser *p = tar_parser_new(on_entry, s);
        int r = 0;

        if (!p)
                return -ENOMEM;
        for (size_t off = 0; off < size && r == 0; off += piece) {
                size_t n = size - off < piece ? size - off : piece;
                s->fed = off + n;
                r = tar_parser_feed(p, data + off, n);
        }
        if (r == 0)
                r = tar_parser_finish(p);
        if (r < 0) {
                CHECK(tar_parser_error(p)[0] != '\0');
                CHECK(tar_parser_feed(p, "x", 1) == r);
        } else {
                CHECK(tar_parser_offset(p) == size);
        }
        tar_parser_free(p);
        return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct seen a = {0}, b = {0};
        size_t piece;
        int r1, r2;

        if (size < 1)
                return 0;
        piece = 1 + data[0] * 7u;
        data++;
        size--;
        r1 = run(data, size, piece, &a);
        r2 = run(data, size, size ? size : 1, &b);
        CHECK(r1 == r2);
        CHECK(a.n == b.n && a.sum == b.sum);
        CHECK(r1 == 0 || r1 == -EBADMSG || r1 == -EINVAL || r1 == -ENAMETOOLONG || r1 == -E2BIG ||
              r1 == -EOPNOTSUPP || r1 == -ENOMEM);
        return 0;
}
