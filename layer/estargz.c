/* eStargz: a gzip layer that carries its own index.
 *
 * An eStargz blob is an ordinary tar+gzip layer (any gzip reader gets the same tar) written
 * so that every regular file's data (or every chunk of a large file) starts a gzip member of
 * its own, followed by a TOC member (a gzip'ed tar holding "stargz.index.json") and a 51-byte
 * footer: an empty gzip member whose extra field says "%016x" of the TOC's offset then
 * "STARGZ" (the legacy stargz footer is 47 bytes, the same without the subfield header). The
 * TOC lists every entry with its attributes and, for file data, the blob offset of the member
 * that holds it. So a node needs only the footer and the TOC to serve the tree: no pass, lazy
 * from the very first node.
 *
 * The TOC comes from the blob, which is verified against its digest by the engine; its JSON is
 * still treated as hostile: its size is bounded before inflating, names are normalised like
 * tar names (".." refused), every chunk's member must lie before the TOC, chunks must follow
 * each other and cover their file exactly, and the table rules of the pass apply (layer_builder:
 * later entries replace earlier ones, parents must be directories, hard links resolve).
 *
 * Cost: inflating the TOC (a few hundred bytes per file) and one jansson tree of it.
 */
#include "layer/internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <zlib.h>

#define TOC_NAME "stargz.index.json"

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* "%016xSTARGZ" */
static int parse_payload(const uint8_t *p, uint64_t *ret) {
        uint64_t v = 0;

        if (memcmp(p + 16, "STARGZ", 6) != 0)
                return -EPROTONOSUPPORT;
        for (int i = 0; i < 16; i++) {
                int d = hexval((char)p[i]);
                if (d < 0)
                        return -EPROTONOSUPPORT;
                v = v << 4 | (uint64_t)d;
        }
        *ret = v;
        return 0;
}

int layer_estargz_footer(const void *footer, size_t len, uint64_t blob_size, uint64_t *ret_toc_off,
                         uint64_t *ret_toc_end) {
        static const uint8_t tail[] = {0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0};
        const uint8_t *p = footer;
        uint64_t off;
        size_t flen;

        if (len >= 51 && blob_size >= 51 && p[len - 51] == 0x1f && p[len - 50] == 0x8b &&
            p[len - 49] == 8 && (p[len - 48] & 4) && p[len - 41] == 26 && p[len - 40] == 0 &&
            p[len - 39] == 'S' && p[len - 38] == 'G' && p[len - 37] == 22 && p[len - 36] == 0 &&
            memcmp(p + len - 13, tail, sizeof(tail)) == 0 &&
            parse_payload(p + len - 35, &off) == 0) {
                flen = 51;
        } else if (len >= 47 && blob_size >= 47 && p[len - 47] == 0x1f && p[len - 46] == 0x8b &&
                   p[len - 45] == 8 && (p[len - 44] & 4) && p[len - 37] == 22 && p[len - 36] == 0 &&
                   memcmp(p + len - 13, tail, sizeof(tail)) == 0 &&
                   parse_payload(p + len - 35, &off) == 0) {
                flen = 47;
        } else {
                return -EPROTONOSUPPORT;
        }
        if (off >= blob_size - flen)
                return -EBADMSG;
        *ret_toc_off = off;
        *ret_toc_end = blob_size - flen;
        return 0;
}

struct toc_find {
        uint64_t off, size;
        bool found;
};

static int find_toc(void *ctx, const struct tar_entry *e) {
        struct toc_find *t = ctx;

        if (e->type == TAR_REG && strcmp(e->path, TOC_NAME) == 0) {
                t->off = e->offset;
                t->size = e->size;
                t->found = true;
        }
        return 0;
}

/* Inflates the TOC member (one gzip member of a tar) into a buffer of at most MAX bytes. */
static int inflate_toc(const void *toc, size_t len, size_t max, uint8_t **ret, size_t *ret_len,
                       char *err, size_t err_len) {
        z_stream zs = {0};
        size_t cap = 65536, n = 0;
        uint8_t *out = malloc(cap);
        int zr = Z_OK;

        if (!out || inflateInit2(&zs, 16 + 15) != Z_OK) {
                free(out);
                return -ENOMEM;
        }
        zs.next_in = (Bytef *)toc;
        zs.avail_in = (uInt)len;
        while (zr != Z_STREAM_END) {
                if (n == cap) {
                        uint8_t *q;
                        if (cap >= max) {
                                snprintf(err, err_len, "toc over %zu bytes", max);
                                zr = -EFBIG;
                                break;
                        }
                        cap = cap * 2 > max ? max : cap * 2;
                        q = realloc(out, cap);
                        if (!q) {
                                zr = -ENOMEM;
                                break;
                        }
                        out = q;
                }
                zs.next_out = out + n;
                zs.avail_out = (uInt)(cap - n);
                zr = inflate(&zs, Z_NO_FLUSH);
                n = cap - zs.avail_out;
                if (zr == Z_BUF_ERROR && zs.avail_in == 0) {
                        snprintf(err, err_len, "toc member truncated");
                        zr = -EBADMSG;
                        break;
                }
                if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR) {
                        snprintf(err, err_len, "toc member does not inflate: %s",
                                 zs.msg ? zs.msg : "corrupt");
                        zr = -EBADMSG;
                        break;
                }
        }
        inflateEnd(&zs);
        if (zr != Z_STREAM_END) {
                free(out);
                return zr < 0 ? zr : -EBADMSG;
        }
        *ret = out;
        *ret_len = n;
        return 0;
}

/* An integer member KEY of OBJ within [0, MAX]; absent is 0. */
static int get_uint(json_t *obj, const char *key, uint64_t max, uint64_t *ret) {
        json_t *v = json_object_get(obj, key);

        if (!v) {
                *ret = 0;
                return 0;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            (uint64_t)json_integer_value(v) > max)
                return -EBADMSG;
        *ret = (uint64_t)json_integer_value(v);
        return 0;
}

/* RFC 3339 "2006-01-02T15:04:05Z" (fraction and offset accepted); absent or empty is 0. */
static int get_time(json_t *obj, int64_t *ret_sec, uint32_t *ret_nsec) {
        json_t *v = json_object_get(obj, "modtime");
        const char *s;
        struct tm tm = {0};
        int y, mo, d, h, mi, sec, n = 0, sign = 0, oh = 0, om = 0;
        uint32_t nsec = 0;

        *ret_sec = 0;
        *ret_nsec = 0;
        if (!v)
                return 0;
        if (!json_is_string(v))
                return -EBADMSG;
        s = json_string_value(v);
        if (s[0] == '\0')
                return 0;
        if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
                return -EBADMSG;
        s += n;
        if (*s == '.') {
                unsigned digits = 0;
                for (s++; *s >= '0' && *s <= '9'; s++)
                        if (digits < 9) {
                                nsec = nsec * 10 + (uint32_t)(*s - '0');
                                digits++;
                        }
                if (digits == 0)
                        return -EBADMSG;
                for (; digits < 9; digits++)
                        nsec *= 10;
        }
        if (*s == 'Z') {
                s++;
        } else if (*s == '+' || *s == '-') {
                sign = *s == '+' ? 1 : -1;
                if (sscanf(s + 1, "%2d:%2d%n", &oh, &om, &n) != 2 || n != 5)
                        return -EBADMSG;
                s += 6;
        } else {
                return -EBADMSG;
        }
        if (*s || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
                return -EBADMSG;
        tm.tm_year = y - 1900;
        tm.tm_mon = mo - 1;
        tm.tm_mday = d;
        tm.tm_hour = h;
        tm.tm_min = mi;
        tm.tm_sec = sec;
        *ret_sec = (int64_t)timegm(&tm) - sign * (oh * 3600 + om * 60);
        *ret_nsec = nsec;
        return 0;
}

/* Go's []byte in JSON: standard base64 with padding. */
static int base64_decode(const char *s, uint8_t *out, size_t out_cap, size_t *ret_len) {
        size_t n = strlen(s), pad = 0;
        int got;

        if (n % 4 || n / 4 * 3 > out_cap)
                return -EBADMSG;
        if (n == 0) {
                *ret_len = 0;
                return 0;
        }
        pad = (s[n - 1] == '=') + (s[n - 2] == '=');
        got = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
        if (got < 0 || (size_t)got < pad)
                return -EBADMSG;
        *ret_len = (size_t)got - pad;
        return 0;
}

struct toc_state {
        struct layer_builder *b;
        uint64_t toc_off;
        char path[PATH_MAX], link[PATH_MAX];
        struct tar_xattr xattrs[TAR_XATTRS_MAX];
        uint8_t *xvals;
        /* the last regular file: chunks must cover it */
        char reg_path[PATH_MAX];
        uint64_t reg_size, reg_have;
        bool in_reg;
};

static int close_reg(struct toc_state *st) {
        if (st->in_reg && st->reg_have != st->reg_size)
                return layer_builder_fail(st->b, -EBADMSG,
                                          "toc: chunks of \"%.200s\" cover %llu of %llu bytes",
                                          st->reg_path, (unsigned long long)st->reg_have,
                                          (unsigned long long)st->reg_size);
        st->in_reg = false;
        return 0;
}

static int add_chunk(struct toc_state *st, json_t *ent, bool first, uint64_t size) {
        uint64_t off, coff, csize, inner;
        struct layer_chunk c;

        if (get_uint(ent, "offset", INT64_MAX, &off) < 0 ||
            get_uint(ent, "chunkOffset", INT64_MAX, &coff) < 0 ||
            get_uint(ent, "chunkSize", INT64_MAX, &csize) < 0 ||
            get_uint(ent, "innerOffset", INT64_MAX, &inner) < 0)
                return layer_builder_fail(st->b, -EBADMSG, "toc: bad chunk numbers for \"%.200s\"",
                                          st->reg_path);
        if (first && coff != 0)
                return layer_builder_fail(st->b, -EBADMSG, "toc: \"%.200s\" starts at chunk %llu",
                                          st->reg_path, (unsigned long long)coff);
        if (csize == 0)
                csize = size - coff; /* the last (or only) chunk runs to the end */
        if (off >= st->toc_off)
                return layer_builder_fail(st->b, -EBADMSG,
                                          "toc: chunk of \"%.200s\" at %llu is not before the toc",
                                          st->reg_path, (unsigned long long)off);
        c = (struct layer_chunk){.file_off = coff, .size = csize, .in = off, .inner = inner};
        if (layer_builder_add_chunk(st->b, &c) < 0)
                return -EBADMSG;
        st->reg_have = coff + csize;
        return 0;
}

static int toc_entry(struct toc_state *st, json_t *ent) {
        const char *name, *type, *link = NULL;
        struct tar_entry e = {0};
        uint64_t v, size = 0;
        json_t *xa;
        int r;

        if (!json_is_object(ent) || !json_is_string(json_object_get(ent, "name")) ||
            !json_is_string(json_object_get(ent, "type")))
                return layer_builder_fail(st->b, -EBADMSG, "toc: an entry without name or type");
        name = json_string_value(json_object_get(ent, "name"));
        type = json_string_value(json_object_get(ent, "type"));
        r = tar_path_normalise(name, strlen(name), st->path, sizeof(st->path));
        if (r < 0)
                return layer_builder_fail(st->b, r, "toc: bad name \"%.200s\"", name);

        if (strcmp(type, "chunk") == 0) {
                if (!st->in_reg || strcmp(st->path, st->reg_path) != 0)
                        return layer_builder_fail(st->b, -EBADMSG,
                                                  "toc: chunk of \"%.200s\" not after its file",
                                                  name);
                return add_chunk(st, ent, false, st->reg_size);
        }
        r = close_reg(st);
        if (r < 0)
                return r;

        if (strcmp(type, "dir") == 0)
                e.type = TAR_DIR;
        else if (strcmp(type, "reg") == 0)
                e.type = TAR_REG;
        else if (strcmp(type, "symlink") == 0)
                e.type = TAR_SYMLINK;
        else if (strcmp(type, "hardlink") == 0)
                e.type = TAR_HARDLINK;
        else if (strcmp(type, "char") == 0)
                e.type = TAR_CHR;
        else if (strcmp(type, "block") == 0)
                e.type = TAR_BLK;
        else if (strcmp(type, "fifo") == 0)
                e.type = TAR_FIFO;
        else
                return layer_builder_fail(st->b, -EOPNOTSUPP, "toc: entry type \"%.40s\"", type);

        if (get_uint(ent, "mode", UINT32_MAX, &v) < 0)
                return layer_builder_fail(st->b, -EBADMSG, "toc: bad mode of \"%.200s\"", name);
        e.mode = (uint32_t)(v & 07777);
        if (get_uint(ent, "uid", UINT32_MAX, &v) < 0)
                return layer_builder_fail(st->b, -EBADMSG, "toc: bad uid of \"%.200s\"", name);
        e.uid = (uint32_t)v;
        if (get_uint(ent, "gid", UINT32_MAX, &v) < 0)
                return layer_builder_fail(st->b, -EBADMSG, "toc: bad gid of \"%.200s\"", name);
        e.gid = (uint32_t)v;
        if (get_uint(ent, "devMajor", UINT32_MAX, &v) < 0)
                return layer_builder_fail(st->b, -EBADMSG, "toc: bad devMajor");
        e.devmajor = (uint32_t)v;
        if (get_uint(ent, "devMinor", UINT32_MAX, &v) < 0)
                return layer_builder_fail(st->b, -EBADMSG, "toc: bad devMinor");
        e.devminor = (uint32_t)v;
        if (get_time(ent, &e.mtime, &e.mtime_nsec) < 0)
                return layer_builder_fail(st->b, -EBADMSG, "toc: bad modtime of \"%.200s\"", name);
        if (e.type == TAR_REG && get_uint(ent, "size", INT64_MAX, &size) < 0)
                return layer_builder_fail(st->b, -EBADMSG, "toc: bad size of \"%.200s\"", name);
        e.size = size;
        if (e.type == TAR_SYMLINK || e.type == TAR_HARDLINK) {
                json_t *l = json_object_get(ent, "linkName");
                if (!json_is_string(l) || json_string_value(l)[0] == '\0' ||
                    strlen(json_string_value(l)) >= PATH_MAX)
                        return layer_builder_fail(st->b, -EINVAL,
                                                  "toc: link \"%.200s\" without a target", name);
                link = json_string_value(l);
                if (e.type == TAR_HARDLINK) {
                        r = tar_path_normalise(link, strlen(link), st->link, sizeof(st->link));
                        if (r < 0 || st->link[0] == '\0')
                                return layer_builder_fail(st->b, r < 0 ? r : -EINVAL,
                                                          "toc: bad hard link target");
                } else {
                        snprintf(st->link, sizeof(st->link), "%s", link);
                }
                e.link = st->link;
        }
        xa = json_object_get(ent, "xattrs");
        if (xa) {
                const char *k;
                json_t *val;
                size_t used = 0;
                if (!json_is_object(xa) || json_object_size(xa) > TAR_XATTRS_MAX)
                        return layer_builder_fail(st->b, -E2BIG, "toc: bad xattrs of \"%.200s\"",
                                                  name);
                json_object_foreach(xa, k, val) {
                        size_t n;
                        if (!json_is_string(val) || k[0] == '\0' ||
                            strlen(k) > TAR_XATTR_NAME_MAX ||
                            base64_decode(json_string_value(val), st->xvals + used,
                                          TAR_XATTR_VALUE_MAX, &n) < 0)
                                return layer_builder_fail(st->b, -EBADMSG,
                                                          "toc: bad xattr of \"%.200s\"", name);
                        st->xattrs[e.nxattrs++] =
                                (struct tar_xattr){.name = k, .value = st->xvals + used, .len = n};
                        used += n;
                }
                e.xattrs = st->xattrs;
        }
        r = tar_whiteout(st->path, &e.type);
        if (r < 0)
                return layer_builder_fail(st->b, r, "toc: bad whiteout \"%.200s\"", name);
        if (r > 0)
                return 0;
        if (e.type == TAR_WHITEOUT || e.type == TAR_OPAQUE) {
                e.size = 0;
                e.link = NULL;
        } else if (st->path[0] == '\0' && e.type != TAR_DIR) {
                return layer_builder_fail(st->b, -EINVAL, "toc: root entry is not a directory");
        }
        e.path = st->path;
        r = layer_builder_add(st->b, &e);
        if (r < 0)
                return r;
        if (e.type == TAR_REG && size > 0) {
                snprintf(st->reg_path, sizeof(st->reg_path), "%s", st->path);
                st->reg_size = size;
                st->reg_have = 0;
                st->in_reg = true;
                return add_chunk(st, ent, true, size);
        }
        return 0;
}

int layer_estargz_index(const void *toc, size_t len, uint64_t toc_off,
                        const struct layer_estargz_opts *o, struct layer_index **ret, char *err,
                        size_t err_len) {
        struct layer_build_opts bo = {.max_files = o->max_files};
        struct toc_find tf = {0};
        struct toc_state *st = NULL;
        struct tar_parser *tp = NULL;
        struct layer_builder *b = NULL;
        uint8_t *tar = NULL;
        size_t tar_len = 0, max = o->max_toc ? o->max_toc : LAYER_ESTARGZ_TOC_MAX;
        json_t *root = NULL, *entries;
        json_error_t jerr;
        char dummy[1];
        int r;

        if (!err) {
                err = dummy;
                err_len = sizeof(dummy);
        }
        err[0] = '\0';
        if (toc_off >= o->blob_size || len > o->blob_size - toc_off) {
                snprintf(err, err_len, "toc outside the blob");
                return -EBADMSG;
        }
        r = inflate_toc(toc, len, max, &tar, &tar_len, err, err_len);
        if (r < 0)
                return r;
        tp = tar_parser_new(find_toc, &tf);
        if (!tp) {
                r = -ENOMEM;
                goto out;
        }
        r = tar_parser_feed(tp, tar, tar_len);
        if (r == 0)
                r = tar_parser_finish(tp);
        if (r < 0 || !tf.found || tf.off > tar_len || tf.size > tar_len - tf.off) {
                snprintf(err, err_len, "toc member is not a tar with %s: %s", TOC_NAME,
                         tar_parser_error(tp));
                r = -EBADMSG;
                goto out;
        }
        if (o->toc_digest) {
                struct digest d;
                digest_sha256(tar + tf.off, tf.size, &d);
                if (!digest_equal(&d, o->toc_digest)) {
                        snprintf(err, err_len, "toc digest mismatch: not the toc the image names");
                        r = -EBADMSG;
                        goto out;
                }
        }
        root = json_loadb((const char *)tar + tf.off, tf.size, JSON_REJECT_DUPLICATES, &jerr);
        entries = root ? json_object_get(root, "entries") : NULL;
        if (!root || !json_is_integer(json_object_get(root, "version")) ||
            json_integer_value(json_object_get(root, "version")) != 1 || !json_is_array(entries)) {
                snprintf(err, err_len, "toc is not version 1 eStargz json: %s",
                         root ? "missing version or entries" : jerr.text);
                r = -EBADMSG;
                goto out;
        }
        b = layer_builder_new(&bo);
        st = calloc(1, sizeof(*st));
        if (!b || !st || !(st->xvals = malloc(TAR_XATTRS_MAX * (size_t)TAR_XATTR_VALUE_MAX))) {
                r = -ENOMEM;
                goto out;
        }
        st->b = b;
        st->toc_off = toc_off;
        for (size_t i = 0; i < json_array_size(entries); i++) {
                r = toc_entry(st, json_array_get(entries, i));
                if (r < 0)
                        break;
        }
        if (r == 0)
                r = close_reg(st);
        if (r == 0)
                r = layer_builder_finish_toc(b, o->blob_size, o->blob_digest, ret);
        if (r < 0)
                snprintf(err, err_len, "%s", layer_builder_error(b));
out:
        if (st)
                free(st->xvals);
        free(st);
        layer_builder_free(b);
        json_decref(root);
        tar_parser_free(tp);
        free(tar);
        return r;
}
