/* The peer protocol's JSON bodies, built and parsed with every size bounded.
 *
 * The parsers (announce, locate answer, index answer) take bytes from the network, so they
 * trust nothing: the body is capped at WIRE_MAX_BODY before jansson sees it, duplicate keys
 * are refused, and every number is checked against its range before anything is allocated
 * from it. What a parse allocates is then bounded twice over: by the limits in wire.h
 * (nchunks <= WIRE_MAX_CHUNKS per blob, WIRE_MAX_ANNOUNCE_CHUNKS across an announce,
 * WIRE_MAX_BLOBS, WIRE_MAX_HOLDERS per list, WIRE_MAX_INDEXES), and, for every list, by the
 * number of JSON elements actually sent (a range or a digest pair is at least a few bytes of
 * body). Unknown keys are ignored so that a newer node can
 * add fields during a rolling upgrade; everything this version reads is checked strictly.
 *
 * Canonical forms. A node id is its numeric address exactly as inet_ntop() prints it, then
 * a port without leading zeros: one node has one id, so rendezvous scores and directory
 * records never split over two spellings of the same address (an IPv4-mapped IPv6 address
 * is refused for the same reason). The builders emit present sets as maximal runs, so
 * build(parse(x)) is a canonical form of x and build(parse(build(y))) == build(y), which is
 * what the fuzz target checks. The parsers accept adjacent ranges ([0,2],[2,4]); they
 * refuse empty, unsorted, overlapping and out-of-range ones.
 *
 * Costs. A locate answer's chunk digests are kept densely (nchunks x 32 bytes, from
 * calloc, so untouched pages of a large blob cost address space rather than memory) and
 * each holder carries an nchunks-bit map: at the limits an answer is ~128 MiB of digests
 * plus 128 maps of 512 KiB, which is why WIRE_MAX_CHUNKS is not larger. Building walks each
 * bitmap once, skipping whole bytes of zeros or ones.
 *
 * Pure functions: no state, no locks, no logging; thread-safe.
 */
#include "peer/wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/ref.h"

#define DIGEST_STR_LEN (7 + DIGEST_HEX_LEN) /* "sha256:<hex>" */

static size_t bitmap_bytes(uint32_t nchunks) {
        return nchunks == 0 ? 1 : ((size_t)nchunks + 7) / 8; /* never malloc(0) */
}

static uint32_t nchunks_of(uint64_t size, uint32_t chunk_size) {
        uint64_t n = size / chunk_size + (size % chunk_size != 0);

        return n > WIRE_MAX_CHUNKS ? WIRE_MAX_CHUNKS + 1 : (uint32_t)n;
}

__attribute__((format(printf, 3, 4))) static int fail(char *reason, size_t reason_len,
                                                      const char *fmt, ...) {
        va_list ap;

        if (reason && reason_len > 0) {
                va_start(ap, fmt);
                vsnprintf(reason, reason_len, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

/* ---- node ids ---------------------------------------------------------------------- */

static bool port_valid(const char *p) {
        unsigned v = 0;
        size_t n = 0;

        if (p[0] < '1' || p[0] > '9') /* no sign, no leading zero, not empty */
                return false;
        for (; p[n]; n++) {
                if (p[n] < '0' || p[n] > '9' || n >= 5)
                        return false;
                v = v * 10 + (unsigned)(p[n] - '0');
        }
        return v <= 65535;
}

bool wire_node_id_valid(const char *id) {
        char host[INET6_ADDRSTRLEN], canon[INET6_ADDRSTRLEN];
        const char *end, *port;
        union {
                struct in_addr v4;
                struct in6_addr v6;
        } addr;
        size_t len, hlen;
        int af;

        if (!id)
                return false;
        len = strnlen(id, PEER_ID_MAX);
        if (len == 0 || len >= PEER_ID_MAX)
                return false;
        if (id[0] == '[') {
                end = strchr(id, ']');
                if (!end || end[1] != ':')
                        return false;
                af = AF_INET6;
                hlen = (size_t)(end - id - 1);
                port = end + 2;
                id++;
        } else {
                end = strchr(id, ':');
                if (!end)
                        return false;
                af = AF_INET;
                hlen = (size_t)(end - id);
                port = end + 1;
        }
        if (hlen == 0 || hlen >= sizeof(host) || !port_valid(port))
                return false;
        memcpy(host, id, hlen);
        host[hlen] = '\0';
        if (inet_pton(af, host, &addr) != 1)
                return false;
        if (af == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&addr.v6))
                return false;
        if (!inet_ntop(af, &addr, canon, sizeof(canon)))
                return false;
        return strcmp(canon, host) == 0;
}

/* ---- parsing helpers ---------------------------------------------------------------- */

/* OBJ[KEY] as an integer in [MIN, MAX]. */
static bool get_uint(json_t *obj, const char *key, uint64_t min, uint64_t max, uint64_t *ret) {
        json_t *v = json_object_get(obj, key);
        json_int_t i;

        if (!json_is_integer(v))
                return false;
        i = json_integer_value(v);
        if (i < 0 || (uint64_t)i < min || (uint64_t)i > max)
                return false;
        *ret = (uint64_t)i;
        return true;
}

/* OBJ[KEY] as a string of 1..MAX - 1 bytes, copied into OUT (MAX bytes). */
static bool get_str(json_t *obj, const char *key, char *out, size_t max) {
        json_t *v = json_object_get(obj, key);
        size_t len;

        if (!json_is_string(v))
                return false;
        len = json_string_length(v);
        if (len == 0 || len >= max || memchr(json_string_value(v), '\0', len))
                return false;
        memcpy(out, json_string_value(v), len + 1);
        return true;
}

static bool get_node(json_t *obj, const char *key, char out[PEER_ID_MAX]) {
        return get_str(obj, key, out, PEER_ID_MAX) && wire_node_id_valid(out);
}

static bool source_valid(const char *s) {
        struct blob_ref ref;

        return strnlen(s, IDX_SOURCE_MAX) < IDX_SOURCE_MAX && ref_parse_source(s, &ref) == 0;
}

static bool get_source(json_t *obj, char out[IDX_SOURCE_MAX]) {
        return get_str(obj, "source", out, IDX_SOURCE_MAX) && source_valid(out);
}

static bool get_digest_key(json_t *obj, const char *key, struct digest *ret) {
        char s[DIGEST_STR_LEN + 1];

        return get_str(obj, key, s, sizeof(s)) && digest_parse(s, ret) == 0;
}

static bool get_blob_digest(json_t *obj, struct digest *ret) {
        return get_digest_key(obj, "digest", ret);
}

/* {"layer":"sha256:..", "index":"sha256:..", "size":N}: an announce's index record and the
 * index answer have the same shape. */
static bool get_index(json_t *o, struct wire_index *ret) {
        return json_is_object(o) && get_digest_key(o, "layer", &ret->layer) &&
               get_digest_key(o, "index", &ret->index) &&
               get_uint(o, "size", 1, INT64_MAX, &ret->size);
}

/* [idx, "<hex>"] with idx < NCHUNKS. */
static bool get_digest_pair(json_t *pair, uint32_t nchunks, uint32_t *ret_idx, struct digest *ret) {
        json_t *i = json_array_get(pair, 0), *h = json_array_get(pair, 1);
        json_int_t idx;

        if (!json_is_array(pair) || json_array_size(pair) != 2 || !json_is_integer(i) ||
            !json_is_string(h))
                return false;
        idx = json_integer_value(i);
        if (idx < 0 || idx >= (json_int_t)nchunks)
                return false;
        if (digest_from_hex(json_string_value(h), json_string_length(h), ret) < 0)
                return false;
        *ret_idx = (uint32_t)idx;
        return true;
}

static void set_range(uint8_t *map, uint32_t start, uint32_t end) {
        while (start < end && start % 8 != 0)
                wire_set_bit(map, start++);
        if (end - start >= 8) {
                memset(map + start / 8, 0xff, (end - start) / 8);
                start += (end - start) / 8 * 8;
        }
        while (start < end)
                wire_set_bit(map, start++);
}

/* A list of [start, end) ranges within NCHUNKS into a fresh bitmap in *RET. WHAT and WHO
 * name the list in REASON. */
static int parse_ranges(json_t *arr, uint32_t nchunks, uint8_t **ret, const char *what,
                        const char *who, char *reason, size_t reason_len) {
        uint32_t prev_end = 0;
        uint8_t *map;
        size_t i;
        json_t *r;

        if (!json_is_array(arr))
                return fail(reason, reason_len, "missing or non-array %s in %s", what, who);
        /* Ranges are non-empty and disjoint: more of them than chunks is already wrong,
         * and checking first keeps the bitmap's size honest. */
        if (json_array_size(arr) > nchunks)
                return fail(reason, reason_len,
                            "too many %s ranges in %s: %zu for %" PRIu32 " chunks", what, who,
                            json_array_size(arr), nchunks);
        map = calloc(1, bitmap_bytes(nchunks));
        if (!map)
                return -ENOMEM;
        json_array_foreach(arr, i, r) {
                json_t *s = json_array_get(r, 0), *e = json_array_get(r, 1);
                json_int_t start, end;

                if (!json_is_array(r) || json_array_size(r) != 2 || !json_is_integer(s) ||
                    !json_is_integer(e))
                        goto bad;
                start = json_integer_value(s);
                end = json_integer_value(e);
                if (start < (json_int_t)prev_end || end <= start || end > (json_int_t)nchunks)
                        goto bad;
                set_range(map, (uint32_t)start, (uint32_t)end);
                prev_end = (uint32_t)end;
        }
        *ret = map;
        return 0;
bad:
        free(map);
        return fail(reason, reason_len,
                    "invalid %s range %zu in %s: want [start,end) with start < end <= %" PRIu32
                    ", sorted and not overlapping",
                    what, i, who, nchunks);
}

/* ---- announce ------------------------------------------------------------------------ */

static int parse_blob(json_t *o, uint32_t chunk_size, size_t bi, uint64_t *total_chunks,
                      struct wire_blob *b, char *reason, size_t reason_len) {
        json_t *digests, *pair;
        char who[32];
        uint64_t size;
        size_t i;
        int r;

        snprintf(who, sizeof(who), "blob %zu", bi);
        if (!json_is_object(o))
                return fail(reason, reason_len, "invalid %s: not an object", who);
        if (!get_blob_digest(o, &b->digest))
                return fail(reason, reason_len,
                            "invalid digest in %s: want \"sha256:<64 lowercase hex>\"", who);
        if (!get_uint(o, "size", 0, INT64_MAX, &size))
                return fail(reason, reason_len, "missing or invalid size in %s", who);
        b->size = size;
        b->nchunks = nchunks_of(size, chunk_size);
        if (b->nchunks > WIRE_MAX_CHUNKS)
                return fail(reason, reason_len, "too many chunks in %s: more than %u", who,
                            WIRE_MAX_CHUNKS);
        *total_chunks += b->nchunks;
        if (*total_chunks > WIRE_MAX_ANNOUNCE_CHUNKS)
                return fail(reason, reason_len, "too many chunks in announce: more than %u",
                            WIRE_MAX_ANNOUNCE_CHUNKS);
        if (!get_source(o, b->source))
                return fail(reason, reason_len,
                            "missing or invalid source in %s: want \"registry/repository\"", who);
        r = parse_ranges(json_object_get(o, "present"), b->nchunks, &b->present, "present", who,
                         reason, reason_len);
        if (r < 0)
                return r;
        json_t *verified = json_object_get(o, "verified");
        if (verified && !json_is_boolean(verified))
                return fail(reason, reason_len, "invalid verified in %s: not a boolean", who);
        b->verified = json_is_true(verified);

        digests = json_object_get(o, "digests");
        if (!digests)
                return 0; /* optional: any subset, including none */
        if (!json_is_array(digests))
                return fail(reason, reason_len, "invalid digests in %s: not an array", who);
        if (json_array_size(digests) > b->nchunks)
                return fail(reason, reason_len, "too many chunk digests in %s", who);
        if (json_array_size(digests) == 0)
                return 0;
        b->sha_idx = calloc(json_array_size(digests), sizeof(*b->sha_idx));
        b->sha = calloc(json_array_size(digests), sizeof(*b->sha));
        if (!b->sha_idx || !b->sha)
                return -ENOMEM;
        json_array_foreach(digests, i, pair) {
                uint32_t idx;

                if (!get_digest_pair(pair, b->nchunks, &idx, &b->sha[i]) ||
                    (i > 0 && idx <= b->sha_idx[i - 1]))
                        return fail(reason, reason_len,
                                    "invalid chunk digest %zu in %s: want [index,\"<64 hex>\"], "
                                    "indexes increasing and < %" PRIu32,
                                    i, who, b->nchunks);
                b->sha_idx[i] = idx;
                b->ndigests = (uint32_t)i + 1;
        }
        return 0;
}

static json_t *load(const char *body, size_t len, char *reason, size_t reason_len, int *ret_err) {
        json_error_t jerr;
        json_t *root;

        if (len > WIRE_MAX_BODY) {
                *ret_err = fail(reason, reason_len, "body too large: %zu bytes, max %u", len,
                                WIRE_MAX_BODY);
                return NULL;
        }
        root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
                *ret_err = fail(reason, reason_len, "invalid json: %s at byte %d", jerr.text,
                                jerr.position);
                return NULL;
        }
        if (!json_is_object(root)) {
                json_decref(root);
                *ret_err = fail(reason, reason_len, "invalid body: not a json object");
                return NULL;
        }
        return root;
}

/* An announce's optional "indexes" (ARR may be NULL: none) into A. */
static int parse_indexes(json_t *arr, struct wire_announce *a, char *reason, size_t reason_len) {
        json_t *o;
        size_t i, n;

        if (!arr)
                return 0;
        if (!json_is_array(arr))
                return fail(reason, reason_len, "invalid indexes: not an array");
        n = json_array_size(arr);
        if (n > WIRE_MAX_INDEXES)
                return fail(reason, reason_len, "too many indexes: %zu, max %u", n,
                            WIRE_MAX_INDEXES);
        if (n == 0)
                return 0;
        a->indexes = calloc(n, sizeof(*a->indexes));
        if (!a->indexes)
                return -ENOMEM;
        a->nindexes = (uint32_t)n;
        json_array_foreach(arr, i, o) {
                if (!get_index(o, &a->indexes[i]))
                        return fail(reason, reason_len,
                                    "invalid index %zu: want layer and index digests and a size "
                                    "1..%" PRId64,
                                    i, INT64_MAX);
        }
        return 0;
}

int wire_announce_parse(const char *body, size_t len, struct wire_announce *ret, char *reason,
                        size_t reason_len) {
        struct wire_announce a;
        uint64_t cs, total = 0;
        json_t *root, *blobs, *o;
        size_t i, n;
        int r = 0;

        memset(&a, 0, sizeof(a));
        root = load(body, len, reason, reason_len, &r);
        if (!root)
                return r;
        if (!get_node(root, "node", a.node)) {
                r = fail(reason, reason_len,
                         "missing or invalid node: want numeric \"ipv4:port\" or \"[ipv6]:port\"");
                goto out_free;
        }
        if (!get_uint(root, "chunk_size", 1, UINT32_MAX, &cs)) {
                r = fail(reason, reason_len, "missing or invalid chunk_size: want 1..%" PRIu32,
                         UINT32_MAX);
                goto out_free;
        }
        a.chunk_size = (uint32_t)cs;
        if (json_object_get(root, "boot") && !get_uint(root, "boot", 1, INT64_MAX, &a.boot)) {
                r = fail(reason, reason_len, "invalid boot: want 1..%" PRId64, INT64_MAX);
                goto out_free;
        }
        blobs = json_object_get(root, "blobs");
        if (!json_is_array(blobs)) {
                r = fail(reason, reason_len, "missing or non-array blobs");
                goto out_free;
        }
        n = json_array_size(blobs);
        if (n > WIRE_MAX_BLOBS) {
                r = fail(reason, reason_len, "too many blobs: %zu, max %u", n, WIRE_MAX_BLOBS);
                goto out_free;
        }
        a.blobs = calloc(n ? n : 1, sizeof(*a.blobs));
        if (!a.blobs) {
                r = -ENOMEM;
                goto out_free;
        }
        json_array_foreach(blobs, i, o) {
                a.nblobs = (uint32_t)i + 1; /* so that out_free frees a half-parsed blob */
                r = parse_blob(o, a.chunk_size, i, &total, &a.blobs[i], reason, reason_len);
                if (r < 0)
                        goto out_free;
        }
        r = parse_indexes(json_object_get(root, "indexes"), &a, reason, reason_len);
        if (r < 0)
                goto out_free;
        json_decref(root);
        *ret = a;
        return 0;

out_free:
        wire_announce_free(&a);
        json_decref(root);
        return r;
}

void wire_announce_free(struct wire_announce *a) {
        if (!a)
                return;
        for (uint32_t i = 0; a->blobs && i < a->nblobs; i++) {
                free(a->blobs[i].present);
                free(a->blobs[i].sha_idx);
                free(a->blobs[i].sha);
        }
        free(a->blobs);
        a->blobs = NULL;
        a->nblobs = 0;
        free(a->indexes);
        a->indexes = NULL;
        a->nindexes = 0;
}

/* ---- building helpers ---------------------------------------------------------------- */

/* MAP's set bits (of NCHUNKS) as maximal [start, end) runs. NULL on allocation failure. */
static json_t *ranges_json(const uint8_t *map, uint32_t nchunks) {
        json_t *arr = json_array();
        uint32_t i = 0, start = 0;
        bool in_run = false;

        if (!arr)
                return NULL;
        while (i < nchunks) {
                /* Whole bytes that do not end or start a run are skipped. */
                if (i % 8 == 0 && nchunks - i >= 8 && map[i / 8] == (in_run ? 0xff : 0x00)) {
                        i += 8;
                        continue;
                }
                if (wire_bit(map, i) != in_run) {
                        if (in_run &&
                            json_array_append_new(
                                    arr, json_pack("[I,I]", (json_int_t)start, (json_int_t)i)) < 0)
                                goto fail;
                        in_run = !in_run;
                        start = i;
                }
                i++;
        }
        if (in_run && json_array_append_new(
                              arr, json_pack("[I,I]", (json_int_t)start, (json_int_t)nchunks)) < 0)
                goto fail;
        return arr;
fail:
        json_decref(arr);
        return NULL;
}

static json_t *digest_pair_json(uint32_t idx, const struct digest *d) {
        char hex[DIGEST_HEX_LEN + 1];

        digest_to_hex(d, hex);
        return json_pack("[I,s]", (json_int_t)idx, hex);
}

static json_t *blob_digest_json(const struct digest *d) {
        char s[DIGEST_STR_LEN + 1], hex[DIGEST_HEX_LEN + 1];

        digest_to_hex(d, hex);
        snprintf(s, sizeof(s), "sha256:%s", hex);
        return json_string(s);
}

/* Serialises ROOT (consumed) compactly; -ENOMEM, or -EMSGSIZE beyond WIRE_MAX_BODY. */
static int dump(json_t *root, char **ret, size_t *ret_len) {
        char *s;
        size_t len;

        if (!root)
                return -ENOMEM;
        s = json_dumps(root, JSON_COMPACT);
        json_decref(root);
        if (!s)
                return -ENOMEM;
        len = strlen(s);
        if (len > WIRE_MAX_BODY) {
                free(s);
                return -EMSGSIZE;
        }
        *ret = s;
        if (ret_len)
                *ret_len = len;
        return 0;
}

/* ---- announce building ------------------------------------------------------------------ */

static json_t *index_json(const struct wire_index *x) {
        json_t *o = json_object();

        if (!o)
                return NULL;
        if (json_object_set_new(o, "layer", blob_digest_json(&x->layer)) < 0 ||
            json_object_set_new(o, "index", blob_digest_json(&x->index)) < 0 ||
            json_object_set_new(o, "size", json_integer((json_int_t)x->size)) < 0) {
                json_decref(o);
                return NULL;
        }
        return o;
}

static int check_blob(const struct wire_blob *b, uint32_t chunk_size) {
        if (b->size > INT64_MAX || nchunks_of(b->size, chunk_size) != b->nchunks ||
            b->nchunks > WIRE_MAX_CHUNKS || (b->nchunks > 0 && !b->present) ||
            !source_valid(b->source) || b->ndigests > b->nchunks ||
            (b->ndigests > 0 && (!b->sha_idx || !b->sha)))
                return -EINVAL;
        for (uint32_t i = 0; i < b->ndigests; i++)
                if (b->sha_idx[i] >= b->nchunks || (i > 0 && b->sha_idx[i] <= b->sha_idx[i - 1]))
                        return -EINVAL;
        return 0;
}

static json_t *blob_json(const struct wire_blob *b) {
        json_t *o = json_object(), *digests = json_array();
        bool ok = o && digests;

        for (uint32_t i = 0; ok && i < b->ndigests; i++)
                ok = json_array_append_new(digests, digest_pair_json(b->sha_idx[i], &b->sha[i])) ==
                     0;
        if (!ok) {
                json_decref(digests);
                json_decref(o);
                return NULL;
        }
        ok = json_object_set_new(o, "digest", blob_digest_json(&b->digest)) == 0 &&
             json_object_set_new(o, "size", json_integer((json_int_t)b->size)) == 0 &&
             json_object_set_new(o, "source", json_string(b->source)) == 0 &&
             json_object_set_new(o, "present", ranges_json(b->present, b->nchunks)) == 0 &&
             json_object_set_new(o, "digests", digests) == 0 &&
             (!b->verified || json_object_set_new(o, "verified", json_true()) == 0);
        if (!ok) {
                json_decref(o);
                return NULL;
        }
        return o;
}

int wire_announce_build(const struct wire_announce *a, char **ret, size_t *ret_len) {
        json_t *root, *blobs;
        uint64_t total = 0;
        bool ok;

        if (!wire_node_id_valid(a->node) || a->chunk_size == 0 || a->nblobs > WIRE_MAX_BLOBS ||
            (a->nblobs > 0 && !a->blobs) || a->boot > INT64_MAX || a->nindexes > WIRE_MAX_INDEXES ||
            (a->nindexes > 0 && !a->indexes))
                return -EINVAL;
        for (uint32_t i = 0; i < a->nindexes; i++)
                if (a->indexes[i].size == 0 || a->indexes[i].size > INT64_MAX)
                        return -EINVAL;
        for (uint32_t i = 0; i < a->nblobs; i++) {
                if (check_blob(&a->blobs[i], a->chunk_size) < 0)
                        return -EINVAL;
                total += a->blobs[i].nchunks;
        }
        if (total > WIRE_MAX_ANNOUNCE_CHUNKS)
                return -EMSGSIZE;

        root = json_object();
        blobs = json_array();
        ok = root && blobs;
        for (uint32_t i = 0; ok && i < a->nblobs; i++)
                ok = json_array_append_new(blobs, blob_json(&a->blobs[i])) == 0;
        if (!ok) {
                json_decref(blobs);
                json_decref(root);
                return -ENOMEM;
        }
        ok = json_object_set_new(root, "node", json_string(a->node)) == 0 &&
             json_object_set_new(root, "chunk_size", json_integer(a->chunk_size)) == 0 &&
             (!a->boot ||
              json_object_set_new(root, "boot", json_integer((json_int_t)a->boot)) == 0) &&
             json_object_set_new(root, "blobs", blobs) == 0;
        if (ok && a->nindexes > 0) {
                json_t *ix = json_array();

                ok = ix && json_object_set_new(root, "indexes", ix) == 0;
                for (uint32_t i = 0; ok && i < a->nindexes; i++)
                        ok = json_array_append_new(ix, index_json(&a->indexes[i])) == 0;
        }
        if (!ok) {
                json_decref(root);
                return -ENOMEM;
        }
        return dump(root, ret, ret_len);
}

/* ---- index answer ----------------------------------------------------------------------- */

int wire_index_build(const struct wire_index *x, char **ret, size_t *ret_len) {
        if (x->size == 0 || x->size > INT64_MAX)
                return -EINVAL;
        return dump(index_json(x), ret, ret_len);
}

int wire_index_parse(const char *body, size_t len, struct wire_index *ret, char *reason,
                     size_t reason_len) {
        struct wire_index x;
        json_t *root;
        int r = 0;

        root = load(body, len, reason, reason_len, &r);
        if (!root)
                return r;
        if (!get_index(root, &x))
                r = fail(
                        reason, reason_len,
                        "invalid index answer: want layer and index digests and a size 1..%" PRId64,
                        INT64_MAX);
        json_decref(root);
        if (r == 0)
                *ret = x;
        return r;
}

/* ---- locate ---------------------------------------------------------------------------- */

/* One list of the answer ("holders" or "fetching") appended to L->holders. */
static int parse_holders(json_t *arr, bool fetching, struct wire_locate *l, char *reason,
                         size_t reason_len) {
        const char *list = fetching ? "fetching" : "holders";
        size_t first = l->nholders, i;
        json_t *o;
        int r;

        if (!arr)
                return 0; /* optional: none */
        if (!json_is_array(arr))
                return fail(reason, reason_len, "invalid %s: not an array", list);
        if (json_array_size(arr) > WIRE_MAX_HOLDERS)
                return fail(reason, reason_len, "too many %s: %zu, max %u", list,
                            json_array_size(arr), WIRE_MAX_HOLDERS);
        json_array_foreach(arr, i, o) {
                struct wire_holder *h = &l->holders[l->nholders];
                char who[48];

                snprintf(who, sizeof(who), "%s %zu", list, i);
                if (!json_is_object(o))
                        return fail(reason, reason_len, "invalid %s: not an object", who);
                if (!get_node(o, "node", h->node))
                        return fail(reason, reason_len, "missing or invalid node in %s", who);
                for (size_t j = first; j < l->nholders; j++)
                        if (strcmp(l->holders[j].node, h->node) == 0)
                                return fail(reason, reason_len, "duplicate node in %s", who);
                h->fetching = fetching;
                r = parse_ranges(json_object_get(o, fetching ? "chunks" : "present"), l->nchunks,
                                 &h->present, fetching ? "chunks" : "present", who, reason,
                                 reason_len);
                if (r < 0)
                        return r;
                l->nholders++;
        }
        return 0;
}

static int parse_locate(json_t *root, struct wire_locate *l, char *reason, size_t reason_len) {
        json_t *digests, *pair, *holders, *fetching, *claim, *verified;
        uint32_t prev = 0;
        uint64_t v;
        size_t i;
        int r;

        if (!get_blob_digest(root, &l->digest))
                return fail(reason, reason_len,
                            "missing or invalid digest: want \"sha256:<64 lowercase hex>\"");
        if (!get_uint(root, "size", 0, INT64_MAX, &l->size))
                return fail(reason, reason_len, "missing or invalid size");
        if (!get_uint(root, "chunk_size", 1, UINT32_MAX, &v))
                return fail(reason, reason_len, "missing or invalid chunk_size: want 1..%" PRIu32,
                            UINT32_MAX);
        l->chunk_size = (uint32_t)v;
        l->nchunks = nchunks_of(l->size, l->chunk_size);
        if (l->nchunks > WIRE_MAX_CHUNKS)
                return fail(reason, reason_len, "too many chunks: more than %u", WIRE_MAX_CHUNKS);
        if (!get_source(root, l->source))
                return fail(reason, reason_len,
                            "missing or invalid source: want \"registry/repository\"");

        holders = json_object_get(root, "holders");
        fetching = json_object_get(root, "fetching");
        digests = json_object_get(root, "digests");
        claim = json_object_get(root, "claim");
        verified = json_object_get(root, "verified");
        /* Shapes and counts first, so nothing below is sized by an unchecked number. */
        if (digests && !json_is_array(digests))
                return fail(reason, reason_len, "invalid digests: not an array");
        if (digests && json_array_size(digests) > l->nchunks)
                return fail(reason, reason_len,
                            "too many chunk digests: %zu for %" PRIu32 " chunks",
                            json_array_size(digests), l->nchunks);

        l->sha = calloc(l->nchunks ? l->nchunks : 1, sizeof(*l->sha));
        l->sha_known = calloc(1, bitmap_bytes(l->nchunks));
        l->holders = calloc(2 * WIRE_MAX_HOLDERS, sizeof(*l->holders));
        if (!l->sha || !l->sha_known || !l->holders)
                return -ENOMEM;
        json_array_foreach(digests, i, pair) {
                struct digest d;
                uint32_t idx;

                if (!get_digest_pair(pair, l->nchunks, &idx, &d) || (i > 0 && idx <= prev))
                        return fail(reason, reason_len,
                                    "invalid chunk digest %zu: want [index,\"<64 hex>\"], "
                                    "indexes increasing and < %" PRIu32,
                                    i, l->nchunks);
                l->sha[idx] = d;
                wire_set_bit(l->sha_known, idx);
                prev = idx;
        }
        if (verified) {
                r = parse_ranges(verified, l->nchunks, &l->sha_verified, "verified", "answer",
                                 reason, reason_len);
                if (r < 0)
                        return r;
                for (size_t b = 0; b < bitmap_bytes(l->nchunks); b++)
                        if (l->sha_verified[b] & ~l->sha_known[b])
                                return fail(reason, reason_len,
                                            "invalid verified: a chunk without a digest");
        } else {
                l->sha_verified = calloc(1, bitmap_bytes(l->nchunks));
                if (!l->sha_verified)
                        return -ENOMEM;
        }

        r = parse_holders(holders, false, l, reason, reason_len);
        if (r < 0)
                return r;
        r = parse_holders(fetching, true, l, reason, reason_len);
        if (r < 0)
                return r;

        if (claim) {
                json_t *granted = json_object_get(claim, "granted");

                if (!json_is_object(claim) || !get_uint(claim, "chunk", 0, UINT32_MAX, &v) ||
                    v >= l->nchunks || !json_is_boolean(granted))
                        return fail(reason, reason_len,
                                    "invalid claim: want {\"chunk\":<index < %" PRIu32
                                    ">,\"granted\":<bool>}",
                                    l->nchunks);
                l->has_claim = true;
                l->claim_chunk = (uint32_t)v;
                l->claim_granted = json_is_true(granted);
        }
        return 0;
}

int wire_locate_parse(const char *body, size_t len, struct wire_locate *ret, char *reason,
                      size_t reason_len) {
        struct wire_locate l;
        json_t *root;
        int r = 0;

        memset(&l, 0, sizeof(l));
        root = load(body, len, reason, reason_len, &r);
        if (!root)
                return r;
        r = parse_locate(root, &l, reason, reason_len);
        json_decref(root);
        if (r < 0) {
                wire_locate_free(&l);
                return r;
        }
        *ret = l;
        return 0;
}

void wire_locate_free(struct wire_locate *l) {
        if (!l)
                return;
        for (uint32_t i = 0; l->holders && i < l->nholders; i++)
                free(l->holders[i].present);
        free(l->holders);
        free(l->sha);
        free(l->sha_known);
        free(l->sha_verified);
        l->holders = NULL;
        l->sha = NULL;
        l->sha_known = NULL;
        l->sha_verified = NULL;
        l->nholders = 0;
}

static int check_locate(const struct wire_locate *l) {
        uint32_t n[2] = {0, 0};

        if (l->chunk_size == 0 || l->size > INT64_MAX ||
            nchunks_of(l->size, l->chunk_size) != l->nchunks || l->nchunks > WIRE_MAX_CHUNKS ||
            !source_valid(l->source) || (l->sha_known && !l->sha) ||
            (l->nholders > 0 && !l->holders) || (l->has_claim && l->claim_chunk >= l->nchunks))
                return -EINVAL;
        for (uint32_t i = 0; i < l->nholders; i++) {
                const struct wire_holder *h = &l->holders[i];

                if (!wire_node_id_valid(h->node) || (l->nchunks > 0 && !h->present) ||
                    ++n[h->fetching] > WIRE_MAX_HOLDERS)
                        return -EINVAL;
                for (uint32_t j = 0; j < i; j++)
                        if (l->holders[j].fetching == h->fetching &&
                            strcmp(l->holders[j].node, h->node) == 0)
                                return -EINVAL;
        }
        return 0;
}

/* The holders of L that are (FETCHING) or are not fetching, as JSON. */
static json_t *holders_json(const struct wire_locate *l, bool fetching) {
        json_t *arr = json_array();

        if (!arr)
                return NULL;
        for (uint32_t i = 0; i < l->nholders; i++) {
                const struct wire_holder *h = &l->holders[i];
                json_t *o;

                if (h->fetching != fetching)
                        continue;
                o = json_object();
                if (!o || json_object_set_new(o, "node", json_string(h->node)) < 0 ||
                    json_object_set_new(o, fetching ? "chunks" : "present",
                                        ranges_json(h->present, l->nchunks)) < 0 ||
                    json_array_append_new(arr, o) < 0) {
                        json_decref(arr);
                        return NULL;
                }
        }
        return arr;
}

static json_t *sha_json(const struct wire_locate *l) {
        json_t *arr = json_array();

        if (!arr)
                return NULL;
        for (uint32_t i = 0; l->sha_known && i < l->nchunks; i++) {
                if (i % 8 == 0 && l->sha_known[i / 8] == 0) {
                        i += 7;
                        continue;
                }
                if (wire_bit(l->sha_known, i) &&
                    json_array_append_new(arr, digest_pair_json(i, &l->sha[i])) < 0) {
                        json_decref(arr);
                        return NULL;
                }
        }
        return arr;
}

/* The chunks of L whose digest is known and verified, as ranges in *RET: NULL when there are
 * none (the key is then left out). 0 or -ENOMEM. */
static int verified_json(const struct wire_locate *l, json_t **ret) {
        uint8_t *map;
        bool any = false;

        *ret = NULL;
        if (!l->sha_known || !l->sha_verified)
                return 0;
        map = calloc(1, bitmap_bytes(l->nchunks));
        if (!map)
                return -ENOMEM;
        for (size_t i = 0; i < bitmap_bytes(l->nchunks); i++) {
                map[i] = l->sha_verified[i] & l->sha_known[i];
                any |= map[i] != 0;
        }
        if (l->nchunks % 8) /* bits past the end are not chunks */
                map[l->nchunks / 8] &= (uint8_t)((1u << (l->nchunks % 8)) - 1);
        if (any)
                *ret = ranges_json(map, l->nchunks);
        free(map);
        return any && !*ret ? -ENOMEM : 0;
}

int wire_locate_build(const struct wire_locate *l, char **ret, size_t *ret_len) {
        json_t *root, *verified;
        bool ok;

        if (check_locate(l) < 0)
                return -EINVAL;
        if (verified_json(l, &verified) < 0)
                return -ENOMEM;
        root = json_object();
        if (!root) {
                json_decref(verified);
                return -ENOMEM;
        }
        ok = json_object_set_new(root, "digest", blob_digest_json(&l->digest)) == 0 &&
             json_object_set_new(root, "size", json_integer((json_int_t)l->size)) == 0 &&
             json_object_set_new(root, "source", json_string(l->source)) == 0 &&
             json_object_set_new(root, "chunk_size", json_integer(l->chunk_size)) == 0 &&
             json_object_set_new(root, "digests", sha_json(l)) == 0 &&
             json_object_set_new(root, "holders", holders_json(l, false)) == 0 &&
             json_object_set_new(root, "fetching", holders_json(l, true)) == 0;
        if (verified && ok)
                ok = json_object_set_new(root, "verified", verified) == 0;
        else if (verified)
                json_decref(verified);
        if (ok && l->has_claim)
                ok = json_object_set_new(root, "claim",
                                         json_pack("{s:I,s:b}", "chunk", (json_int_t)l->claim_chunk,
                                                   "granted", (int)l->claim_granted)) == 0;
        if (!ok) {
                json_decref(root);
                return -ENOMEM;
        }
        return dump(root, ret, ret_len);
}

/* ---- comparison ---------------------------------------------------------------------- */

static bool bitmap_equal(const uint8_t *a, const uint8_t *b, uint32_t nchunks) {
        uint8_t mask;

        if (nchunks == 0)
                return true;
        if (memcmp(a, b, nchunks / 8) != 0)
                return false;
        if (nchunks % 8 == 0)
                return true;
        mask = (uint8_t)((1u << (nchunks % 8)) - 1);
        return ((a[nchunks / 8] ^ b[nchunks / 8]) & mask) == 0;
}

bool wire_index_equal(const struct wire_index *a, const struct wire_index *b) {
        return digest_equal(&a->layer, &b->layer) && digest_equal(&a->index, &b->index) &&
               a->size == b->size;
}

bool wire_announce_equal(const struct wire_announce *a, const struct wire_announce *b) {
        if (strcmp(a->node, b->node) != 0 || a->chunk_size != b->chunk_size ||
            a->nblobs != b->nblobs || a->boot != b->boot || a->nindexes != b->nindexes)
                return false;
        for (uint32_t i = 0; i < a->nindexes; i++)
                if (!wire_index_equal(&a->indexes[i], &b->indexes[i]))
                        return false;
        for (uint32_t i = 0; i < a->nblobs; i++) {
                const struct wire_blob *x = &a->blobs[i], *y = &b->blobs[i];

                if (!digest_equal(&x->digest, &y->digest) || x->size != y->size ||
                    x->nchunks != y->nchunks || strcmp(x->source, y->source) != 0 ||
                    !bitmap_equal(x->present, y->present, x->nchunks) ||
                    x->ndigests != y->ndigests || x->verified != y->verified)
                        return false;
                for (uint32_t j = 0; j < x->ndigests; j++)
                        if (x->sha_idx[j] != y->sha_idx[j] || !digest_equal(&x->sha[j], &y->sha[j]))
                                return false;
        }
        return true;
}

/* Byte I of L's sha_known, bits past nchunks cleared; NULL means none known. */
static uint8_t known_byte(const struct wire_locate *l, uint32_t i) {
        uint32_t rest = l->nchunks - i * 8;
        uint8_t b = l->sha_known ? l->sha_known[i] : 0;

        return rest >= 8 ? b : (uint8_t)(b & ((1u << rest) - 1));
}

/* Byte I of L's sha_verified where known. */
static uint8_t verified_byte(const struct wire_locate *l, uint32_t i) {
        return l->sha_verified ? (uint8_t)(l->sha_verified[i] & known_byte(l, i)) : 0;
}

bool wire_locate_equal(const struct wire_locate *a, const struct wire_locate *b) {
        if (!digest_equal(&a->digest, &b->digest) || a->size != b->size ||
            a->chunk_size != b->chunk_size || a->nchunks != b->nchunks ||
            strcmp(a->source, b->source) != 0 || a->nholders != b->nholders ||
            a->has_claim != b->has_claim)
                return false;
        if (a->has_claim &&
            (a->claim_chunk != b->claim_chunk || a->claim_granted != b->claim_granted))
                return false;
        for (uint32_t i = 0; i < (a->nchunks + 7) / 8; i++) {
                uint8_t k = known_byte(a, i);

                if (k != known_byte(b, i) || verified_byte(a, i) != verified_byte(b, i))
                        return false;
                for (uint32_t j = 0; k && j < 8; j++)
                        if ((k & (1u << j)) &&
                            !digest_equal(&a->sha[i * 8 + j], &b->sha[i * 8 + j]))
                                return false;
        }
        for (uint32_t i = 0; i < a->nholders; i++) {
                const struct wire_holder *x = &a->holders[i], *y = &b->holders[i];

                if (strcmp(x->node, y->node) != 0 || x->fetching != y->fetching ||
                    !bitmap_equal(x->present, y->present, a->nchunks))
                        return false;
        }
        return true;
}
