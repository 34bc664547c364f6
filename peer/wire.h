/* The peer protocol's JSON bodies: announces (a node tells a blob's homes what it holds) and
 * locate answers (a home tells a reader who holds which chunks). Build and parse, both
 * directions, with every size bounded; the parsers take untrusted bytes from the network and
 * have fuzz targets. jansson does the JSON.
 *
 * Announce (POST /p2p/v1/announce), from a holder to a home:
 *   {"node":"10.0.0.2:5001", "chunk_size":1048576, "boot":N,   boot: optional, see below
 *    "blobs":[{"digest":"sha256:<hex>", "size":N, "source":"registry/repository",
 *              "present":[[0,40],[42,43]],          chunk ranges [start, end), sorted
 *              "digests":[[0,"<hex>"], [1,"<hex>"]] sha256 of chunks (any subset)
 *              "chain":[[0,"<hex>"], [1,"<hex>"]]   optional: chain values of chunks, never
 *                                                    the last one's (util/chain.h)
 *              "verified":true                      optional: the sender verified the whole
 *             }, ...]}                               blob, so these digests are of its bytes
 *   "present" is the node's whole present set for that blob (not a delta), so an announce
 *   can be lost or reordered without lasting harm. An empty "present" means the node knows
 *   the blob (it was registered there) but holds none of it: the home keeps the blob's
 *   metadata alive, so every node can resolve the digest, but does not list the node as a
 *   holder.
 *   A blob a node forgets is simply not announced again; its record expires.
 *   Chunk digests are additive: a node sends those the home may not have (new chunks; all of
 *   them on a full refresh).
 *   "indexes" (optional, added with layer trees; older nodes ignore it, as every unknown key):
 *     [{"layer":"sha256:<hex>", "index":"sha256:<hex>", "size":N}, ...]
 *   the sender holds blob "index" (N bytes), the index of layer "layer" (layertree.h). It
 *   goes to the homes of the LAYER's digest, which keep it as soft state like holder
 *   records; the index blob itself is announced in "blobs" like any blob, to its own homes.
 *   "blobs" may then be empty.
 *   "boot" (1 .. 2^63-1) is drawn at random when the sender starts: a home that sees a new
 *   one knows the sender restarted (and lost the directory it keeps as a home), so it sends
 *   the sender everything it holds soon instead of at its next refresh.
 *
 * Locate answer (GET /p2p/v1/locate/sha256:<hex>[?chunk=I&node=ID]), from a home to a reader:
 *   {"digest":"sha256:<hex>", "size":N, "source":"registry/repository", "chunk_size":C,
 *    "digests":[[idx,"<hex>"], ...],
 *    "verified":[[0,40]],       optional: chunks whose digest came from a node that verified
 *                               the whole blob (a subset of "digests")
 *    "chain":[[idx,"<hex>"], ...], "chain_verified":[[0,40]],   optional, the same for chain
 *                               values (util/chain.h), never the last chunk's (the blob digest);
 *                               an answer about chunk I includes chunk I - 1's, which I is
 *                               checked from
 *    "holders":[{"node":"10.0.0.3:5001", "present":[[0,40]]}, ...],
 *    "fetching":[{"node":"10.0.0.4:5001", "chunks":[[41,42]]}, ...],  chunks claimed (below)
 *    "claim":{"chunk":I, "granted":true},                             only when ?chunk= asked
 *    "ttl_ms":T}   optional (issue 18): how long the reader may reuse this answer for the
 *                  chunks it names a holder and a digest of (never its claim), 1 ..
 *                  WIRE_MAX_LOCATE_TTL_MS; absent: the reader's own default. A home of a blob
 *                  many readers ask about says longer, so its locates stay near a target rate.
 *   A claim answers "who fetches chunk I from the origin?": the first reader to ask about a
 *   chunk that no node holds or fetches is granted it (and shows up under "fetching" for the
 *   others), so N readers of one blob make the origin serve it about once.
 *
 * Index answer (GET /p2p/v1/index/sha256:<layer hex>), from a home of the layer to a reader:
 *   {"layer":"sha256:<hex>", "index":"sha256:<hex>", "size":N}
 *   404 when the home knows no index of that layer — which is also what a home older than
 *   this route answers, so a mixed cluster degrades to "nobody published one" (the reader
 *   builds the index itself) and never to an error.
 *
 * Provenance. A chunk digest is only as good as whoever supplied it. "verified" says that
 * the digest describes bytes that hashed, whole blob, to the blob's own digest on the
 * announcing node; a home prefers such a digest over an unverified one that disagrees
 * (peer/directory.h). Readers never check a peer's bytes against what that same peer says
 * about them (a header on its answer, or its own locate answer when it is the home). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index/index.h"
#include "util/digest.h"

#define PEER_ID_MAX 64                 /* "255.255.255.255:65535", "[v6]:port" */
#define WIRE_MAX_BODY (8u << 20)       /* largest announce or answer accepted */
#define WIRE_MAX_CHUNKS (1u << 22)     /* 4 Mi chunks: 4 TiB blobs at 1 MiB */
#define WIRE_MAX_HOLDERS 64            /* holders listed in one answer */
#define WIRE_MAX_LOCATE_TTL_MS 600000u /* the longest reuse a locate answer may ask for */
#define WIRE_MAX_BLOBS 4096            /* blobs in one announce */
/* Chunks summed over an announce's blobs (32 Mi: 4 MiB of bitmaps): without it, 4096 tiny
 * blob entries each claiming a 4 TiB size would make an 8 MiB body cost 2 GiB of bitmaps.
 * A sender with more splits its announce. */
#define WIRE_MAX_ANNOUNCE_CHUNKS (1u << 25)
#define WIRE_MAX_INDEXES 1024 /* layer index records in one announce */

/* Node ids are "ipv4:port" or "[ipv6]:port": a numeric address exactly as inet_ntop()
 * prints it (so one node has one id: rendezvous scores and directory records are keyed by
 * it), no IPv4-mapped IPv6, and a port 1..65535 without leading zeros. Shorter than
 * PEER_ID_MAX. Whether ID (NULL-safe) is one. */
bool wire_node_id_valid(const char *id);

/* One blob of an announce. PRESENT is a bitmap of NCHUNKS bits ((nchunks + 7) / 8 bytes).
 * SHA/SHA_IDX: NDIGESTS chunk digests, SHA[i] for chunk SHA_IDX[i]. */
struct wire_blob {
        struct digest digest;
        uint64_t size;
        uint32_t nchunks; /* ceil(size / chunk_size) */
        char source[IDX_SOURCE_MAX];
        uint8_t *present;
        uint32_t ndigests;
        uint32_t *sha_idx;
        struct digest *sha;
        /* "chain":[[idx,"<hex>"], ...]: chain values (util/chain.h) of chunks CHAIN_IDX[i],
         * NCHAIN of them, any subset but never the last chunk's (that one is the blob digest).
         * Optional; older nodes ignore the key. */
        uint32_t nchain;
        uint32_t *chain_idx;
        struct digest *chain;
        bool verified; /* the sender verified the whole blob: its digests are of those bytes */
};

/* "The index of layer LAYER is blob INDEX, SIZE bytes" (1 .. 2^63-1). */
struct wire_index {
        struct digest layer;
        struct digest index;
        uint64_t size;
};

struct wire_announce {
        char node[PEER_ID_MAX];
        uint32_t chunk_size;
        uint64_t boot; /* the sender's boot id, 0: not sent */
        uint32_t nblobs;
        struct wire_blob *blobs;
        uint32_t nindexes; /* at most WIRE_MAX_INDEXES; 0: "indexes" not sent */
        struct wire_index *indexes;
};

/* Serialises A into a malloc'd NUL-terminated JSON text (free()); RET_LEN may be NULL.
 * 0; -EINVAL when A breaks a rule the parser checks (so what is built always parses);
 * -EMSGSIZE when it exceeds WIRE_MAX_BODY or WIRE_MAX_ANNOUNCE_CHUNKS (split it); -ENOMEM.
 * Present sets are written as maximal runs. */
int wire_announce_build(const struct wire_announce *a, char **ret, size_t *ret_len);

/* Parses an announce. Checks everything: digest syntax, sizes, ranges within nchunks and
 * sorted, at most WIRE_MAX_BLOBS blobs, nchunks <= WIRE_MAX_CHUNKS, node id syntax. On error
 * -EINVAL and a lowercase REASON for the log (or -ENOMEM); *RET is left alone and there is
 * nothing to free. On success *RET is allocated; free with wire_announce_free(). Keys this
 * version does not know are ignored; "digests" and "indexes" may be absent. */
int wire_announce_parse(const char *body, size_t len, struct wire_announce *ret, char *reason,
                        size_t reason_len);
void wire_announce_free(struct wire_announce *a); /* frees the contents; NULL-safe */

struct wire_holder {
        char node[PEER_ID_MAX];
        uint8_t *present; /* bitmap of nchunks bits */
        bool fetching;    /* these are claimed chunks being fetched, not present ones */
};

struct wire_locate {
        struct digest digest;
        uint64_t size;
        uint32_t chunk_size;
        uint32_t nchunks;
        char source[IDX_SOURCE_MAX];
        struct digest *sha; /* nchunks entries; valid where sha_known has the bit */
        uint8_t *sha_known; /* bitmap */
        /* Bitmap, may be NULL (none): the digest came from a whole-blob verification. Only
         * meaningful where sha_known has the bit too (the builder ignores it elsewhere, the
         * parser refuses it). */
        uint8_t *sha_verified;
        /* Chain values (util/chain.h), "chain":[[idx,"<hex>"], ...] and "chain_verified":
         * [[a,b], ...] as for digests: CHAIN has nchunks entries, valid where CHAIN_KNOWN has
         * the bit (never the last chunk); CHAIN_VERIFIED (may be NULL) within CHAIN_KNOWN. A
         * home answering for chunk I includes chunk I - 1's value, the one I is checked from.
         * Unlike the digests' arrays, the parser leaves CHAIN and CHAIN_KNOWN NULL when the
         * answer has no "chain" (an older home: nothing to allocate) and CHAIN_VERIFIED NULL
         * without "chain_verified"; the builder takes NULL for none. */
        struct digest *chain;
        uint8_t *chain_known;
        uint8_t *chain_verified;
        uint32_t nholders;
        struct wire_holder *holders; /* present holders first, then fetching ones */
        bool has_claim;
        uint32_t claim_chunk;
        bool claim_granted;
        uint32_t ttl_ms; /* "ttl_ms": 0 when not said, else 1 .. WIRE_MAX_LOCATE_TTL_MS */
};

/* Like the announce's. Builds the present holders under "holders" and the fetching ones
 * under "fetching" whatever their order in L; SHA_KNOWN may be NULL (no digest known); at
 * most WIRE_MAX_HOLDERS of each kind, no node twice in one kind. */
int wire_locate_build(const struct wire_locate *l, char **ret, size_t *ret_len);
/* Like the announce's; "digests", "verified", "holders", "fetching" and "claim" may be
 * absent. On success RET->sha has nchunks entries, RET->sha_known and RET->sha_verified are
 * allocated (nchunks bits) and RET->holders has room for 2 x WIRE_MAX_HOLDERS. */
int wire_locate_parse(const char *body, size_t len, struct wire_locate *ret, char *reason,
                      size_t reason_len);
void wire_locate_free(struct wire_locate *l); /* frees the contents; NULL-safe */

/* The index answer: built into a malloc'd NUL-terminated JSON text (free()), RET_LEN may be
 * NULL; 0, -EINVAL (a size of 0 or past INT64_MAX), -ENOMEM. Parsed strictly, like the
 * others (unknown keys ignored): 0 and *RET, or -EINVAL and REASON. Nothing to free. */
int wire_index_build(const struct wire_index *x, char **ret, size_t *ret_len);
int wire_index_parse(const char *body, size_t len, struct wire_index *ret, char *reason,
                     size_t reason_len);

/* Whether A and B say the same thing: bitmaps compared over nchunks bits, chunk digests
 * and their verified bits only where known, holders in order. For tests, fuzz targets and change detection. */
bool wire_announce_equal(const struct wire_announce *a, const struct wire_announce *b);
bool wire_locate_equal(const struct wire_locate *a, const struct wire_locate *b);
bool wire_index_equal(const struct wire_index *a, const struct wire_index *b);

/* Bitmap helpers shared by the peer modules. */
static inline bool wire_bit(const uint8_t *map, uint32_t i) {
        return map[i / 8] & (1u << (i % 8));
}
static inline void wire_set_bit(uint8_t *map, uint32_t i) {
        map[i / 8] |= (uint8_t)(1u << (i % 8));
}
/* Whether none / all of the first NCHUNKS bits of MAP are set (whole bytes at a time). */
static inline bool wire_bits_none(const uint8_t *map, uint32_t nchunks) {
        for (uint32_t k = 0; k < nchunks / 8; k++)
                if (map[k])
                        return false;
        uint8_t tail = (uint8_t)((1u << (nchunks % 8)) - 1);
        return nchunks % 8 == 0 || (map[nchunks / 8] & tail) == 0;
}
static inline bool wire_bits_all(const uint8_t *map, uint32_t nchunks) {
        for (uint32_t k = 0; k < nchunks / 8; k++)
                if (map[k] != 0xff)
                        return false;
        uint8_t tail = (uint8_t)((1u << (nchunks % 8)) - 1);
        return nchunks % 8 == 0 || (map[nchunks / 8] & tail) == tail;
}
