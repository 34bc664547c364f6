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
 * Files. This one holds node ids and the JSON helpers every message shares (wire_int.h
 * declares them, named wr_*); wire_announce.c, wire_locate.c and wire_index.c each parse,
 * build and compare one message family.
 *
 * Pure functions: no state, no locks, no logging; thread-safe.
 */
#include "peer/wire_int.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/ref.h"

int wr_fail(char *reason, size_t reason_len, const char *fmt, ...) {
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
bool wr_get_uint(json_t *obj, const char *key, uint64_t min, uint64_t max, uint64_t *ret) {
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

bool wr_get_node(json_t *obj, const char *key, char out[PEER_ID_MAX]) {
        return get_str(obj, key, out, PEER_ID_MAX) && wire_node_id_valid(out);
}

bool wr_source_valid(const char *s) {
        struct blob_ref ref;

        return strnlen(s, IDX_SOURCE_MAX) < IDX_SOURCE_MAX && ref_parse_source(s, &ref) == 0;
}

bool wr_get_source(json_t *obj, char out[IDX_SOURCE_MAX]) {
        return get_str(obj, "source", out, IDX_SOURCE_MAX) && wr_source_valid(out);
}

bool wr_get_digest_key(json_t *obj, const char *key, struct digest *ret) {
        char s[DIGEST_STR_LEN + 1];

        return get_str(obj, key, s, sizeof(s)) && digest_parse(s, ret) == 0;
}

bool wr_get_blob_digest(json_t *obj, struct digest *ret) {
        return wr_get_digest_key(obj, "digest", ret);
}

/* [idx, "<hex>"] with idx < LIMIT. */
bool wr_get_digest_pair(json_t *pair, uint32_t limit, uint32_t *ret_idx, struct digest *ret) {
        json_t *i = json_array_get(pair, 0), *h = json_array_get(pair, 1);
        json_int_t idx;

        if (!json_is_array(pair) || json_array_size(pair) != 2 || !json_is_integer(i) ||
            !json_is_string(h))
                return false;
        idx = json_integer_value(i);
        if (idx < 0 || idx >= (json_int_t)limit)
                return false;
        if (digest_from_hex(json_string_value(h), json_string_length(h), ret) < 0)
                return false;
        *ret_idx = (uint32_t)idx;
        return true;
}

const struct wr_pair_list wr_digests = {"digests", "chunk digest", false};
const struct wr_pair_list wr_chain = {"chain", "chain value", true};

void wr_pairs_free(struct wr_pairs *p) {
        free(p->idx);
        free(p->val);
        free(p->known);
        *p = (struct wr_pairs){0};
}

int wr_parse_pairs(json_t *obj, const struct wr_pair_list *k, uint32_t nchunks, bool dense,
                   struct wr_pairs *ret, const char *who, char *reason, size_t reason_len) {
        json_t *arr = json_object_get(obj, k->key), *pair;
        uint32_t limit = k->not_last && nchunks > 0 ? nchunks - 1 : nchunks, prev = 0;
        struct wr_pairs p = {0};
        size_t i, n;

        *ret = p;
        if (!arr)
                return 0; /* optional: any subset, including none */
        if (!json_is_array(arr))
                return wr_fail(reason, reason_len, "invalid %s in %s: not an array", k->key, who);
        n = json_array_size(arr);
        /* Indexes are unique and below LIMIT: a longer list is wrong before it is read, and
         * checking first keeps what is allocated from it honest. */
        if (n > limit)
                return wr_fail(reason, reason_len, "too many %ss in %s: %zu for %" PRIu32 " chunks",
                               k->what, who, n, nchunks);
        if (dense) {
                p.val = calloc(nchunks ? nchunks : 1, sizeof(*p.val));
                p.known = calloc(1, wr_bitmap_bytes(nchunks));
        } else if (n > 0) {
                p.idx = calloc(n, sizeof(*p.idx));
                p.val = calloc(n, sizeof(*p.val));
        }
        if ((dense || n > 0) && (!p.val || (dense ? !p.known : !p.idx))) {
                wr_pairs_free(&p);
                return -ENOMEM;
        }
        json_array_foreach(arr, i, pair) {
                struct digest d;
                uint32_t idx;

                if (!wr_get_digest_pair(pair, limit, &idx, &d) || (i > 0 && idx <= prev)) {
                        wr_pairs_free(&p);
                        return wr_fail(reason, reason_len,
                                       "invalid %s %zu in %s: want [index,\"<64 hex>\"], "
                                       "indexes increasing and < %" PRIu32,
                                       k->what, i, who, limit);
                }
                if (dense) {
                        p.val[idx] = d;
                        wire_set_bit(p.known, idx);
                } else {
                        p.idx[i] = idx;
                        p.val[i] = d;
                }
                prev = idx;
        }
        p.n = (uint32_t)n;
        *ret = p;
        return 0;
}

int wr_parse_subset(json_t *arr, uint32_t nchunks, const uint8_t *known, const char *of,
                    uint8_t **ret, const char *what, const char *who, char *reason,
                    size_t reason_len) {
        uint8_t *map;
        int r;

        *ret = NULL;
        if (!arr)
                return 0;
        r = wr_parse_ranges(arr, nchunks, &map, what, who, reason, reason_len);
        if (r < 0)
                return r;
        for (size_t b = 0; b < wr_bitmap_bytes(nchunks); b++)
                if (map[b] & ~(known ? known[b] : 0)) {
                        free(map);
                        return wr_fail(reason, reason_len, "invalid %s in %s: a chunk without a %s",
                                       what, who, of);
                }
        *ret = map;
        return 0;
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
int wr_parse_ranges(json_t *arr, uint32_t nchunks, uint8_t **ret, const char *what, const char *who,
                    char *reason, size_t reason_len) {
        uint32_t prev_end = 0;
        uint8_t *map;
        size_t i;
        json_t *r;

        if (!json_is_array(arr))
                return wr_fail(reason, reason_len, "missing or non-array %s in %s", what, who);
        /* Ranges are non-empty and disjoint: more of them than chunks is already wrong,
         * and checking first keeps the bitmap's size honest. */
        if (json_array_size(arr) > nchunks)
                return wr_fail(reason, reason_len,
                               "too many %s ranges in %s: %zu for %" PRIu32 " chunks", what, who,
                               json_array_size(arr), nchunks);
        map = calloc(1, wr_bitmap_bytes(nchunks));
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
        return wr_fail(reason, reason_len,
                       "invalid %s range %zu in %s: want [start,end) with start < end <= %" PRIu32
                       ", sorted and not overlapping",
                       what, i, who, nchunks);
}

json_t *wr_load(const char *body, size_t len, char *reason, size_t reason_len, int *ret_err) {
        json_error_t jerr;
        json_t *root;

        if (len > WIRE_MAX_BODY) {
                *ret_err = wr_fail(reason, reason_len, "body too large: %zu bytes, max %u", len,
                                   WIRE_MAX_BODY);
                return NULL;
        }
        root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
                *ret_err = wr_fail(reason, reason_len, "invalid json: %s at byte %d", jerr.text,
                                   jerr.position);
                return NULL;
        }
        if (!json_is_object(root)) {
                json_decref(root);
                *ret_err = wr_fail(reason, reason_len, "invalid body: not a json object");
                return NULL;
        }
        return root;
}

/* ---- building helpers ---------------------------------------------------------------- */

/* MAP's set bits (of NCHUNKS) as maximal [start, end) runs. NULL on allocation failure. */
json_t *wr_ranges_json(const uint8_t *map, uint32_t nchunks) {
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

json_t *wr_digest_pair_json(uint32_t idx, const struct digest *d) {
        char hex[DIGEST_HEX_LEN + 1];

        digest_to_hex(d, hex);
        return json_pack("[I,s]", (json_int_t)idx, hex);
}

json_t *wr_blob_digest_json(const struct digest *d) {
        char s[DIGEST_STR_LEN + 1], hex[DIGEST_HEX_LEN + 1];

        digest_to_hex(d, hex);
        snprintf(s, sizeof(s), "sha256:%s", hex);
        return json_string(s);
}

/* Serialises ROOT (consumed) compactly; -ENOMEM, or -EMSGSIZE beyond WIRE_MAX_BODY. */
int wr_dump(json_t *root, char **ret, size_t *ret_len) {
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

/* ---- comparison ---------------------------------------------------------------------- */

bool wr_bitmap_equal(const uint8_t *a, const uint8_t *b, uint32_t nchunks) {
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
