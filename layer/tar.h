/* A streaming tar parser: bytes in, one callback per entry out, bounded memory.
 *
 * Reads ustar, GNU (long names 'L', long links 'K') and PAX ('x' extended headers: path,
 * linkpath, size, mtime, uid, gid, SCHILY.xattr.*, SCHILY.devmajor/devminor). It is push-style
 * (tar_parser_feed() takes whatever the decompressor produced) so the same parser serves plain
 * tar, gzip and, later, zstd streams. It never sees file data beyond counting it: an entry's
 * data is skipped and its offset in the stream recorded. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TAR_BLOCK 512
/* Bounds on what one entry may carry; larger claims are refused, not truncated. */
#define TAR_PAX_MAX (1u << 20)    /* bytes of one PAX extended header */
#define TAR_XATTRS_MAX 128        /* xattrs of one entry */
#define TAR_XATTR_NAME_MAX 255    /* as XATTR_NAME_MAX */
#define TAR_XATTR_VALUE_MAX 65536 /* as XATTR_SIZE_MAX */
#define TAR_META_CHAIN_MAX 8      /* extended/long-name headers before one entry */

enum tar_type {
        TAR_REG = 1,
        TAR_DIR,
        TAR_SYMLINK,
        TAR_HARDLINK,
        TAR_CHR,
        TAR_BLK,
        TAR_FIFO,
        TAR_WHITEOUT, /* ".wh.NAME": PATH names the removed D/NAME */
        TAR_OPAQUE,   /* ".wh..wh..opq": PATH names the opaque directory D */
};

struct tar_xattr {
        const char *name; /* NUL-terminated, without the "SCHILY.xattr." prefix */
        const uint8_t *value;
        size_t len;
};

/* One entry, valid only during the callback. */
struct tar_entry {
        const char *path; /* normalised: relative, no "", "." or ".." components, no trailing
                           * '/'; "" is the root directory */
        const char *link; /* symlink: the target as stored; hard link: the target normalised
                           * like PATH; NULL for other types */
        enum tar_type type;
        uint32_t mode; /* permission bits only (07777) */
        uint32_t uid, gid;
        uint32_t devmajor, devminor;
        int64_t mtime;          /* seconds */
        uint32_t mtime_nsec;    /* from a PAX mtime with a fraction, else 0 */
        uint64_t size;          /* data bytes (regular files; 0 for every other type) */
        uint64_t offset;        /* offset of the data in the (uncompressed) tar stream */
        uint64_t header_offset; /* offset of the entry's first header (PAX/GNU or ustar) */
        const struct tar_xattr *xattrs;
        size_t nxattrs;
};

/* Called once per entry in stream order; a negative return stops the parse with that error. */
typedef int (*tar_entry_fn)(void *ctx, const struct tar_entry *e);

struct tar_parser;

/* NULL on allocation failure. */
struct tar_parser *tar_parser_new(tar_entry_fn fn, void *ctx);
void tar_parser_free(struct tar_parser *p); /* NULL-safe */

/* Feeds the next LEN bytes of the stream. Returns 0, or -errno once the input is refused
 * (then every later call returns the same error): -EBADMSG malformed or lying headers,
 * -EINVAL a ".." path or an empty whiteout, -ENAMETOOLONG names over PATH_MAX/NAME_MAX,
 * -E2BIG a PAX header or xattr over the bounds above, -EOPNOTSUPP sparse files and other
 * entry types we cannot serve, -ENOMEM, or the callback's error. Bytes after the
 * end-of-archive marker are counted and ignored. */
int tar_parser_feed(struct tar_parser *p, const void *buf, size_t len);

/* The stream ended. 0 when it ended after a complete archive (an end-of-archive block),
 * -EBADMSG ("truncated") otherwise, or the earlier error. */
int tar_parser_finish(struct tar_parser *p);

/* A lowercase description of the first error with its stream offset, "" when none. */
const char *tar_parser_error(const struct tar_parser *p);

/* Bytes fed so far. */
uint64_t tar_parser_offset(const struct tar_parser *p);

/* Whiteouts: PATH (normalised, modified in place) ".../.wh.NAME" becomes ".../NAME" with
 * *TYPE = TAR_WHITEOUT; ".../.wh..wh..opq" becomes its directory with TAR_OPAQUE; other
 * ".wh..wh." names (aufs bookkeeping) return 1: not a file of the layer. Other paths: 0,
 * nothing changed. -EINVAL for ".wh.", ".wh..", ".wh...". Shared with the eStargz TOC. */
int tar_whiteout(char *path, enum tar_type *type);

/* Normalises a tar member name of LEN bytes into OUT (OUT_LEN bytes, PATH_MAX is enough):
 * leading '/' and "./" dropped, empty and "." components dropped, trailing '/' dropped.
 * 0, -EINVAL for a ".." component or an embedded NUL, -ENAMETOOLONG for a result of PATH_MAX
 * bytes or more or a component over NAME_MAX. Shared with the index decoder, which accepts
 * only names this function leaves unchanged. */
int tar_path_normalise(const char *in, size_t len, char *out, size_t out_len);
