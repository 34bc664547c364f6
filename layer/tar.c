/* Streaming tar parser.
 *
 * A tar stream is a sequence of 512-byte headers, each followed by its data padded to 512.
 * Three dialects extend the 100-byte name: ustar (a 155-byte prefix), GNU (an 'L'/'K' entry
 * whose data is the long name or link of the next entry) and PAX (an 'x' entry of
 * "LEN key=value\n" records that override the next entry's fields, and carry xattrs). This
 * parser keeps only the current header, the pending overrides and, while one is being read,
 * a long-name or PAX buffer; every one of those is bounded (tar.h), so a hostile archive costs
 * at most about TAR_PAX_MAX plus TAR_XATTRS_MAX * TAR_XATTR_VALUE_MAX bytes, whatever it claims.
 *
 * Invariants: P->pos counts every byte fed; an error is sticky; an entry's PATH is normalised
 * (tar_path_normalise), so nothing past the callback ever sees "..", an absolute name or an
 * empty component. Header-only types (links, directories, devices, FIFOs) carry no data even
 * when their size field says otherwise, as Go's archive/tar reads them (Go wrote most layers);
 * a size that lies shows up as a checksum failure at the next header, or as truncation.
 *
 * Cost: one memcpy of each header and extended header; file data is counted, not copied.
 */
#include "layer/tar.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum tar_state {
        S_HEADER, /* collecting a 512-byte header */
        S_META,   /* collecting an 'L', 'K' or 'x' entry's data */
        S_SKIP,   /* skipping file data and padding */
        S_END,    /* after the end-of-archive block */
};

struct tar_parser {
        tar_entry_fn fn;
        void *ctx;
        int err;
        char errmsg[256];
        uint64_t pos;
        enum tar_state state;

        uint8_t hdr[TAR_BLOCK];
        size_t hdr_have;

        char meta_type;
        uint8_t *meta;
        size_t meta_need, meta_have;
        uint64_t skip;

        /* Overrides pending for the next entry (GNU long names, PAX records). */
        unsigned chain;
        uint64_t entry_start;
        char *long_name, *long_link, *pax_path, *pax_link;
        bool has_size, has_mtime, has_uid, has_gid, has_major, has_minor;
        uint64_t pax_size, pax_uid, pax_gid, pax_major, pax_minor;
        int64_t pax_mtime;
        uint32_t pax_nsec;
        struct tar_xattr xattrs[TAR_XATTRS_MAX];
        size_t nxattrs;

        char path[PATH_MAX], link[PATH_MAX], raw[PATH_MAX + 160];
};

static int fail(struct tar_parser *p, int err, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static int fail(struct tar_parser *p, int err, const char *fmt, ...) {
        va_list ap;
        int n;

        if (p->err)
                return p->err;
        va_start(ap, fmt);
        n = vsnprintf(p->errmsg, sizeof(p->errmsg), fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < sizeof(p->errmsg))
                snprintf(p->errmsg + n, sizeof(p->errmsg) - (size_t)n, " at offset %llu",
                         (unsigned long long)p->entry_start);
        p->err = err;
        return err;
}

static void pending_reset(struct tar_parser *p) {
        free(p->long_name);
        free(p->long_link);
        free(p->pax_path);
        free(p->pax_link);
        p->long_name = p->long_link = p->pax_path = p->pax_link = NULL;
        p->has_size = p->has_mtime = p->has_uid = p->has_gid = false;
        p->has_major = p->has_minor = false;
        p->pax_nsec = 0;
        for (size_t i = 0; i < p->nxattrs; i++) {
                free((char *)p->xattrs[i].name);
                free((uint8_t *)p->xattrs[i].value);
        }
        p->nxattrs = 0;
        p->chain = 0;
}

struct tar_parser *tar_parser_new(tar_entry_fn fn, void *ctx) {
        struct tar_parser *p = calloc(1, sizeof(*p));

        if (!p)
                return NULL;
        p->fn = fn;
        p->ctx = ctx;
        p->state = S_HEADER;
        return p;
}

void tar_parser_free(struct tar_parser *p) {
        if (!p)
                return;
        pending_reset(p);
        free(p->meta);
        free(p);
}

const char *tar_parser_error(const struct tar_parser *p) {
        return p->err ? p->errmsg : "";
}

uint64_t tar_parser_offset(const struct tar_parser *p) {
        return p->pos;
}

int tar_path_normalise(const char *in, size_t len, char *out, size_t out_len) {
        size_t o = 0, i = 0;

        if (out_len == 0)
                return -ENAMETOOLONG;
        if (memchr(in, '\0', len))
                return -EINVAL;
        while (i < len) {
                size_t start, clen;

                while (i < len && in[i] == '/')
                        i++;
                start = i;
                while (i < len && in[i] != '/')
                        i++;
                clen = i - start;
                if (clen == 0 || (clen == 1 && in[start] == '.'))
                        continue;
                if (clen == 2 && in[start] == '.' && in[start + 1] == '.')
                        return -EINVAL;
                if (clen > NAME_MAX)
                        return -ENAMETOOLONG;
                if (o + (o ? 1 : 0) + clen >= out_len || o + (o ? 1 : 0) + clen >= PATH_MAX)
                        return -ENAMETOOLONG;
                if (o)
                        out[o++] = '/';
                memcpy(out + o, in + start, clen);
                o += clen;
        }
        out[o] = '\0';
        return 0;
}

/* A numeric header field: octal (space/NUL padded; empty is 0) or GNU base-256 for
 * non-negative values. */
static int tar_num(const uint8_t *f, size_t len, uint64_t *ret) {
        uint64_t v = 0;
        size_t i = 0;

        if (f[0] & 0x80) {
                if (f[0] != 0x80)
                        return -EBADMSG; /* negative, or beyond 64 bits */
                for (i = 1; i < len; i++) {
                        if (v >> 56)
                                return -EBADMSG;
                        v = v << 8 | f[i];
                }
                *ret = v;
                return 0;
        }
        while (i < len && f[i] == ' ')
                i++;
        for (; i < len && f[i] >= '0' && f[i] <= '7'; i++) {
                if (v >> 60)
                        return -EBADMSG;
                v = v * 8 + (uint64_t)(f[i] - '0');
        }
        for (; i < len; i++)
                if (f[i] != ' ' && f[i] != '\0')
                        return -EBADMSG;
        *ret = v;
        return 0;
}

static int parse_dec(const char *s, size_t len, uint64_t max, uint64_t *ret) {
        uint64_t v = 0;

        if (len == 0)
                return -EBADMSG;
        for (size_t i = 0; i < len; i++) {
                unsigned d;
                if (s[i] < '0' || s[i] > '9')
                        return -EBADMSG;
                d = (unsigned)(s[i] - '0');
                if (v > (max - d) / 10)
                        return -EBADMSG;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

/* PAX mtime: [-]SECONDS[.FRACTION]. */
static int parse_pax_time(const char *s, size_t len, int64_t *ret_sec, uint32_t *ret_nsec) {
        bool neg = len > 0 && s[0] == '-';
        size_t i = neg ? 1 : 0, dot = i;
        uint64_t sec, nsec = 0;
        unsigned digits = 0;

        while (dot < len && s[dot] != '.')
                dot++;
        if (parse_dec(s + i, dot - i, INT64_MAX, &sec) < 0)
                return -EBADMSG;
        if (dot < len) {
                if (dot + 1 == len)
                        return -EBADMSG;
                for (size_t j = dot + 1; j < len; j++) {
                        if (s[j] < '0' || s[j] > '9')
                                return -EBADMSG;
                        if (digits < 9) {
                                nsec = nsec * 10 + (uint64_t)(s[j] - '0');
                                digits++;
                        }
                }
                for (; digits < 9; digits++)
                        nsec *= 10;
        }
        if (neg && nsec) {
                /* -1.25 is 1.25 s before the epoch: -2 s + 0.75 s. */
                *ret_sec = -(int64_t)sec - 1;
                *ret_nsec = (uint32_t)(1000000000u - nsec);
        } else {
                *ret_sec = neg ? -(int64_t)sec : (int64_t)sec;
                *ret_nsec = (uint32_t)nsec;
        }
        return 0;
}

static char *dup_str(const void *s, size_t len) {
        char *d = malloc(len + 1);

        if (!d)
                return NULL;
        memcpy(d, s, len);
        d[len] = '\0';
        return d;
}

#define XATTR_PREFIX "SCHILY.xattr."

static int pax_record(struct tar_parser *p, const char *k, size_t klen, const char *v,
                      size_t vlen) {
#define KEY(lit) (klen == sizeof(lit) - 1 && memcmp(k, lit, klen) == 0)
        uint64_t n;

        if (KEY("path") || KEY("linkpath")) {
                char **dst = KEY("path") ? &p->pax_path : &p->pax_link;
                if (vlen >= PATH_MAX)
                        return fail(p, -ENAMETOOLONG, "pax %.*s of %zu bytes is over PATH_MAX",
                                    (int)klen, k, vlen);
                if (memchr(v, '\0', vlen))
                        return fail(p, -EINVAL, "pax %.*s contains a NUL", (int)klen, k);
                free(*dst);
                *dst = dup_str(v, vlen);
                if (!*dst)
                        return fail(p, -ENOMEM, "out of memory");
                return 0;
        }
        if (KEY("size")) {
                if (parse_dec(v, vlen, INT64_MAX, &p->pax_size) < 0)
                        return fail(p, -EBADMSG, "bad pax size");
                p->has_size = true;
                return 0;
        }
        if (KEY("mtime")) {
                if (parse_pax_time(v, vlen, &p->pax_mtime, &p->pax_nsec) < 0)
                        return fail(p, -EBADMSG, "bad pax mtime");
                p->has_mtime = true;
                return 0;
        }
        if (KEY("uid") || KEY("gid") || KEY("SCHILY.devmajor") || KEY("SCHILY.devminor")) {
                if (parse_dec(v, vlen, UINT32_MAX, &n) < 0)
                        return fail(p, -EBADMSG, "bad pax %.*s", (int)klen, k);
                if (KEY("uid")) {
                        p->pax_uid = n;
                        p->has_uid = true;
                } else if (KEY("gid")) {
                        p->pax_gid = n;
                        p->has_gid = true;
                } else if (KEY("SCHILY.devmajor")) {
                        p->pax_major = n;
                        p->has_major = true;
                } else {
                        p->pax_minor = n;
                        p->has_minor = true;
                }
                return 0;
        }
        if (klen > sizeof(XATTR_PREFIX) - 1 &&
            memcmp(k, XATTR_PREFIX, sizeof(XATTR_PREFIX) - 1) == 0) {
                const char *name = k + sizeof(XATTR_PREFIX) - 1;
                size_t nlen = klen - (sizeof(XATTR_PREFIX) - 1), i;
                char *nd;
                uint8_t *vd;

                if (nlen > TAR_XATTR_NAME_MAX || vlen > TAR_XATTR_VALUE_MAX)
                        return fail(p, -E2BIG, "xattr %.*s too large", (int)(nlen > 64 ? 64 : nlen),
                                    name);
                if (memchr(name, '\0', nlen))
                        return fail(p, -EINVAL, "xattr name contains a NUL");
                for (i = 0; i < p->nxattrs; i++)
                        if (strlen(p->xattrs[i].name) == nlen &&
                            memcmp(p->xattrs[i].name, name, nlen) == 0)
                                break;
                if (i == TAR_XATTRS_MAX)
                        return fail(p, -E2BIG, "more than %d xattrs on one entry", TAR_XATTRS_MAX);
                nd = dup_str(name, nlen);
                vd = malloc(vlen ? vlen : 1);
                if (!nd || !vd) {
                        free(nd);
                        free(vd);
                        return fail(p, -ENOMEM, "out of memory");
                }
                memcpy(vd, v, vlen);
                if (i < p->nxattrs) {
                        free((char *)p->xattrs[i].name);
                        free((uint8_t *)p->xattrs[i].value);
                } else {
                        p->nxattrs++;
                }
                p->xattrs[i] = (struct tar_xattr){.name = nd, .value = vd, .len = vlen};
                return 0;
        }
        if (klen >= 11 && memcmp(k, "GNU.sparse.", 11) == 0)
                return fail(p, -EOPNOTSUPP, "sparse files are not supported");
        return 0; /* atime, ctime, uname, gname, comment, charset...: not served */
#undef KEY
}

static int pax_parse(struct tar_parser *p, const char *buf, size_t n) {
        size_t off = 0;

        while (off < n) {
                size_t i = off, rec_end;
                uint64_t reclen = 0;
                const char *key, *eq;
                int r;

                while (i < n && buf[i] >= '0' && buf[i] <= '9') {
                        reclen = reclen * 10 + (uint64_t)(buf[i] - '0');
                        if (reclen > n)
                                return fail(p, -EBADMSG, "pax record longer than its header");
                        i++;
                }
                if (i == off || i >= n || buf[i] != ' ')
                        return fail(p, -EBADMSG, "malformed pax record");
                if (reclen < i - off + 4 || reclen > n - off)
                        return fail(p, -EBADMSG, "pax record length out of bounds");
                rec_end = off + (size_t)reclen;
                if (buf[rec_end - 1] != '\n')
                        return fail(p, -EBADMSG, "pax record not newline-terminated");
                key = buf + i + 1;
                eq = memchr(key, '=', (size_t)(buf + rec_end - 1 - key));
                if (!eq || eq == key)
                        return fail(p, -EBADMSG, "pax record without a key");
                r = pax_record(p, key, (size_t)(eq - key), eq + 1,
                               (size_t)(buf + rec_end - 1 - (eq + 1)));
                if (r < 0)
                        return r;
                off = rec_end;
        }
        return 0;
}

static uint64_t padded(uint64_t n) {
        return (TAR_BLOCK - n % TAR_BLOCK) % TAR_BLOCK;
}

static int meta_done(struct tar_parser *p) {
        size_t n = p->meta_need;
        int r = 0;

        if (p->meta_type == 'L' || p->meta_type == 'K') {
                char **dst = p->meta_type == 'L' ? &p->long_name : &p->long_link;
                size_t len = strnlen((const char *)p->meta, n);
                free(*dst);
                *dst = dup_str(p->meta, len);
                if (!*dst)
                        r = fail(p, -ENOMEM, "out of memory");
        } else {
                r = pax_parse(p, (const char *)p->meta, n);
        }
        free(p->meta);
        p->meta = NULL;
        return r;
}

static bool all_zero(const uint8_t *b, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (b[i])
                        return false;
        return true;
}

int tar_whiteout(char *path, enum tar_type *type) {
        char *slash = strrchr(path, '/');
        const char *base = slash ? slash + 1 : path, *name = base + 4;
        size_t dlen = slash ? (size_t)(slash - path) : 0;

        if (strncmp(base, ".wh.", 4) != 0)
                return 0;
        if (strcmp(base, ".wh..wh..opq") == 0) {
                path[dlen] = '\0';
                *type = TAR_OPAQUE;
                return 0;
        }
        if (strncmp(base, ".wh..wh.", 8) == 0)
                return 1;
        if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
                return -EINVAL;
        memmove(path + dlen + (dlen ? 1 : 0), name, strlen(name) + 1);
        *type = TAR_WHITEOUT;
        return 0;
}

static int emit_entry(struct tar_parser *p, char t, uint64_t data_size) {
        const uint8_t *h = p->hdr;
        struct tar_entry e = {0};
        bool ustar = h[262] == '\0'; /* "ustar\0": POSIX, has a prefix; "ustar " is GNU */
        uint64_t v;
        size_t rawlen;
        int r;

        /* The name: PAX path, else GNU long name, else ustar prefix/name. */
        if (p->pax_path || p->long_name) {
                const char *s = p->pax_path ? p->pax_path : p->long_name;
                rawlen = strlen(s);
                if (rawlen >= PATH_MAX)
                        return fail(p, -ENAMETOOLONG, "name of %zu bytes is over PATH_MAX", rawlen);
                memcpy(p->raw, s, rawlen + 1);
        } else {
                size_t nl = strnlen((const char *)h, 100), pl = 0;
                if (ustar)
                        pl = strnlen((const char *)h + 345, 155);
                rawlen = 0;
                if (pl) {
                        memcpy(p->raw, h + 345, pl);
                        p->raw[pl] = '/';
                        rawlen = pl + 1;
                }
                memcpy(p->raw + rawlen, h, nl);
                rawlen += nl;
                p->raw[rawlen] = '\0';
        }
        if (rawlen == 0)
                return fail(p, -EBADMSG, "entry with an empty name");
        r = tar_path_normalise(p->raw, rawlen, p->path, sizeof(p->path));
        if (r < 0)
                return fail(p, r, "bad name \"%.*s\"", (int)(rawlen > 80 ? 80 : rawlen), p->raw);

        switch (t) {
        case '0':
        case '\0':
        case '7':
                e.type = p->raw[rawlen - 1] == '/' ? TAR_DIR : TAR_REG;
                break;
        case '1':
                e.type = TAR_HARDLINK;
                break;
        case '2':
                e.type = TAR_SYMLINK;
                break;
        case '3':
                e.type = TAR_CHR;
                break;
        case '4':
                e.type = TAR_BLK;
                break;
        case '5':
                e.type = TAR_DIR;
                break;
        case '6':
                e.type = TAR_FIFO;
                break;
        default:
                return fail(p, -EOPNOTSUPP, "unsupported entry type '%c'",
                            t >= 32 && t < 127 ? t : '?');
        }

        if (e.type == TAR_HARDLINK || e.type == TAR_SYMLINK) {
                const char *s = p->pax_link ? p->pax_link : p->long_link;
                size_t ll;
                char tmp[101];
                if (!s) {
                        ll = strnlen((const char *)h + 157, 100);
                        memcpy(tmp, h + 157, ll);
                        tmp[ll] = '\0';
                        s = tmp;
                }
                ll = strlen(s);
                if (ll == 0)
                        return fail(p, -EINVAL, "link without a target");
                if (ll >= PATH_MAX)
                        return fail(p, -ENAMETOOLONG, "link target over PATH_MAX");
                if (e.type == TAR_HARDLINK) {
                        r = tar_path_normalise(s, ll, p->link, sizeof(p->link));
                        if (r < 0)
                                return fail(p, r, "bad hard link target");
                        if (p->link[0] == '\0')
                                return fail(p, -EINVAL, "hard link to the root");
                } else {
                        memcpy(p->link, s, ll + 1);
                }
                e.link = p->link;
        }

        if (tar_num(h + 100, 8, &v) < 0)
                return fail(p, -EBADMSG, "bad mode field");
        e.mode = (uint32_t)(v & 07777);
        if (p->has_uid)
                v = p->pax_uid;
        else if (tar_num(h + 108, 8, &v) < 0 || v > UINT32_MAX)
                return fail(p, -EBADMSG, "bad uid field");
        e.uid = (uint32_t)v;
        if (p->has_gid)
                v = p->pax_gid;
        else if (tar_num(h + 116, 8, &v) < 0 || v > UINT32_MAX)
                return fail(p, -EBADMSG, "bad gid field");
        e.gid = (uint32_t)v;
        if (p->has_mtime) {
                e.mtime = p->pax_mtime;
                e.mtime_nsec = p->pax_nsec;
        } else {
                if (tar_num(h + 136, 12, &v) < 0 || v > INT64_MAX)
                        return fail(p, -EBADMSG, "bad mtime field");
                e.mtime = (int64_t)v;
        }
        if (e.type == TAR_CHR || e.type == TAR_BLK) {
                if (p->has_major)
                        v = p->pax_major;
                else if (tar_num(h + 329, 8, &v) < 0 || v > UINT32_MAX)
                        return fail(p, -EBADMSG, "bad devmajor field");
                e.devmajor = (uint32_t)v;
                if (p->has_minor)
                        v = p->pax_minor;
                else if (tar_num(h + 337, 8, &v) < 0 || v > UINT32_MAX)
                        return fail(p, -EBADMSG, "bad devminor field");
                e.devminor = (uint32_t)v;
        }
        e.size = e.type == TAR_REG ? data_size : 0;
        e.offset = p->pos;
        e.header_offset = p->entry_start;
        e.xattrs = p->xattrs;
        e.nxattrs = p->nxattrs;

        r = tar_whiteout(p->path, &e.type);
        if (r < 0)
                return fail(p, r, "bad whiteout \"%s\"", p->path);
        if (r > 0)
                return 0;
        if (e.type == TAR_WHITEOUT || e.type == TAR_OPAQUE) {
                e.size = 0;
                e.link = NULL;
        } else if (p->path[0] == '\0' && e.type != TAR_DIR) {
                return fail(p, -EINVAL, "root entry is not a directory");
        }
        e.path = p->path;
        r = p->fn(p->ctx, &e);
        if (r < 0)
                return fail(p, r, "entry \"%.*s\" refused", 80, p->path);
        return 0;
}

static int header_done(struct tar_parser *p) {
        const uint8_t *h = p->hdr;
        uint64_t chk, size;
        unsigned long sum = 0;
        long ssum = 0;
        char t;
        int r;

        if (p->chain == 0)
                p->entry_start = p->pos - TAR_BLOCK;
        if (all_zero(h, TAR_BLOCK)) {
                if (p->chain)
                        return fail(p, -EBADMSG, "extended header without an entry");
                p->state = S_END;
                return 0;
        }
        if (tar_num(h + 148, 8, &chk) < 0)
                return fail(p, -EBADMSG, "bad header checksum field");
        for (size_t i = 0; i < TAR_BLOCK; i++) {
                uint8_t c = (i >= 148 && i < 156) ? ' ' : h[i];
                sum += c;
                ssum += (signed char)c;
        }
        if (chk != sum && (long long)chk != (long long)ssum)
                return fail(p, -EBADMSG, "header checksum mismatch (not a tar, or a size lied)");
        if (memcmp(h + 257, "ustar", 5) != 0)
                return fail(p, -EBADMSG, "not a ustar/gnu/pax header");
        t = (char)h[156];
        if (tar_num(h + 124, 12, &size) < 0 || size > INT64_MAX)
                return fail(p, -EBADMSG, "bad size field");

        switch (t) {
        case 'L':
        case 'K':
        case 'x':
                if (++p->chain > TAR_META_CHAIN_MAX)
                        return fail(p, -EBADMSG, "more than %d extended headers for one entry",
                                    TAR_META_CHAIN_MAX);
                if (t != 'x' && size > PATH_MAX)
                        return fail(p, -ENAMETOOLONG, "gnu long name of %llu bytes",
                                    (unsigned long long)size);
                if (t == 'x' && size > TAR_PAX_MAX)
                        return fail(p, -E2BIG, "pax header of %llu bytes (limit %u)",
                                    (unsigned long long)size, TAR_PAX_MAX);
                p->meta_type = t;
                p->meta_need = (size_t)size;
                p->meta_have = 0;
                p->meta = malloc(size ? (size_t)size : 1);
                if (!p->meta)
                        return fail(p, -ENOMEM, "out of memory");
                p->skip = padded(size);
                if (size == 0) {
                        r = meta_done(p);
                        if (r < 0)
                                return r;
                        p->state = p->skip ? S_SKIP : S_HEADER;
                } else {
                        p->state = S_META;
                }
                return 0;
        case 'g':
                /* A global header applies to every later entry; nothing we serve depends on one,
                 * so it is skipped (bounded like a PAX header). */
                if (size > TAR_PAX_MAX)
                        return fail(p, -E2BIG, "pax global header of %llu bytes",
                                    (unsigned long long)size);
                p->skip = size + padded(size);
                p->state = p->skip ? S_SKIP : S_HEADER;
                return 0;
        case 'S':
                return fail(p, -EOPNOTSUPP, "sparse files are not supported");
        default:
                break;
        }

        if (p->has_size)
                size = p->pax_size; /* PAX overrides the entry's size, not its own header's */
        if (t == '1' || t == '2' || t == '3' || t == '4' || t == '5' || t == '6')
                size = 0; /* header-only types */
        r = emit_entry(p, t, size);
        if (r < 0)
                return r;
        pending_reset(p);
        p->skip = size + padded(size);
        p->state = p->skip ? S_SKIP : S_HEADER;
        return 0;
}

int tar_parser_feed(struct tar_parser *p, const void *buf, size_t len) {
        const uint8_t *b = buf;
        int r;

        if (p->err)
                return p->err;
        while (len > 0) {
                size_t n;

                switch (p->state) {
                case S_END:
                        p->pos += len;
                        return 0;
                case S_SKIP:
                        n = p->skip < len ? (size_t)p->skip : len;
                        p->skip -= n;
                        if (p->skip == 0)
                                p->state = S_HEADER;
                        break;
                case S_META:
                        n = p->meta_need - p->meta_have;
                        if (n > len)
                                n = len;
                        memcpy(p->meta + p->meta_have, b, n);
                        p->meta_have += n;
                        if (p->meta_have == p->meta_need) {
                                p->pos += n;
                                b += n;
                                len -= n;
                                r = meta_done(p);
                                if (r < 0)
                                        return r;
                                p->state = p->skip ? S_SKIP : S_HEADER;
                                continue;
                        }
                        break;
                case S_HEADER:
                default:
                        n = TAR_BLOCK - p->hdr_have;
                        if (n > len)
                                n = len;
                        memcpy(p->hdr + p->hdr_have, b, n);
                        p->hdr_have += n;
                        if (p->hdr_have == TAR_BLOCK) {
                                p->hdr_have = 0;
                                p->pos += n;
                                b += n;
                                len -= n;
                                r = header_done(p);
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        break;
                }
                p->pos += n;
                b += n;
                len -= n;
        }
        return 0;
}

int tar_parser_finish(struct tar_parser *p) {
        if (p->err)
                return p->err;
        if (p->state == S_END)
                return 0;
        if (p->chain == 0 && p->state == S_HEADER)
                p->entry_start = p->pos - p->hdr_have;
        if (p->state == S_HEADER && p->hdr_have == 0 && p->chain == 0)
                return fail(p, -EBADMSG, "truncated archive: no end-of-archive block");
        return fail(p, -EBADMSG, "truncated archive: stream ended inside an entry");
}
