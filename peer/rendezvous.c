/* Rendezvous hashing: the homes of a blob digest, computed alike by every node.
 *
 * The score. rdv_score() hashes the node id and the digest with a chain of splitmix64
 * finalizers (Vigna's; the mixer of java.util.SplittableRandom), absorbing the input eight
 * bytes at a time. Each step is a bijection on 64 bits with full avalanche, so the scores of
 * two ids for one digest behave as independent uniform draws, which is all highest-random-
 * weight hashing asks for. We did not use SHA-256: a lookup scores every member, a reader
 * looks up on chunk misses, and a few 64-bit mixes cost an order of magnitude less than an
 * OpenSSL call over two SHA-256 blocks. Cryptographic strength buys nothing here: a node
 * cannot choose its id (it is its address), and a hostile member has easier ways to
 * misbehave than grinding digests. Determinism across nodes, runs and architectures comes
 * from assembling the words from bytes explicitly (little-endian whatever the CPU) and from
 * fixed constants. The score is part of the protocol: changing this function moves every
 * home at once, so it changes on all nodes in one rollout or not at all.
 *
 * The id's length is absorbed before the digest, so no two (id, digest) pairs feed the
 * mixer the same word stream.
 *
 * Selecting the homes keeps the best K seen so far as a min-heap in RET (worst at the root).
 * Scores are not stored: the header promises no allocation and K is the caller's, so a sift
 * recomputes the scores it compares. The root's score is cached and a new node usually loses
 * to it, so a lookup costs about N scores plus O(K log(N/K) log K) recomputed ones.
 */
#include "peer/rendezvous.h"

#include <stdbool.h>
#include <string.h>

#define RDV_SEED 0x703270626c6f6273ull /* "p2pblobs": bump to move every home at once */

static uint64_t mix(uint64_t h, uint64_t w) {
        uint64_t z = (h ^ w) + 0x9e3779b97f4a7c15ull;

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* Up to eight bytes at P as a little-endian word, the same on every
 * architecture. */
static uint64_t load_le(const uint8_t *p, size_t n) {
        uint64_t w = 0;

        for (size_t i = 0; i < n; i++)
                w |= (uint64_t)p[i] << (8 * i);
        return w;
}

uint64_t rdv_score(const char *node_id, const struct digest *d) {
        const uint8_t *id = (const uint8_t *)node_id;
        size_t len = strlen(node_id), i;
        uint64_t h = RDV_SEED;

        for (i = 0; i + 8 <= len; i += 8)
                h = mix(h, load_le(id + i, 8));
        if (i < len)
                h = mix(h, load_le(id + i, len - i));
        h = mix(h, (uint64_t)len);
        for (i = 0; i < DIGEST_LEN; i += 8)
                h = mix(h, load_le(d->bytes + i, 8));
        return h;
}

/* Whether node A (score SA) ranks before node B (score SB): higher score, then
 * the smaller id, then the smaller index (a list with a duplicate id still gets
 * a total order). */
static bool ranks_before(const char *const *nodes, size_t a, uint64_t sa, size_t b, uint64_t sb) {
        int c;

        if (sa != sb)
                return sa > sb;
        c = strcmp(nodes[a], nodes[b]);
        if (c != 0)
                return c < 0;
        return a < b;
}

/* Restores the min-heap (worst-ranked at the root) of the LEN entries of HEAP
 * below POS. */
static void sift_down(const char *const *nodes, const struct digest *d, size_t *heap, size_t len,
                      size_t pos) {
        uint64_t sp = rdv_score(nodes[heap[pos]], d);

        for (;;) {
                size_t l = 2 * pos + 1, r = l + 1, worst = pos;
                uint64_t sw = sp, sl, sr;

                if (l >= len)
                        return;
                sl = rdv_score(nodes[heap[l]], d);
                if (ranks_before(nodes, heap[worst], sw, heap[l], sl)) {
                        worst = l;
                        sw = sl;
                }
                if (r < len) {
                        sr = rdv_score(nodes[heap[r]], d);
                        if (ranks_before(nodes, heap[worst], sw, heap[r], sr)) {
                                worst = r;
                                sw = sr;
                        }
                }
                if (worst == pos)
                        return;
                size_t tmp = heap[pos];
                heap[pos] = heap[worst];
                heap[worst] = tmp;
                pos = worst;
        }
}

size_t rdv_homes(const char *const *nodes, size_t n, const struct digest *d, size_t k,
                 size_t *ret) {
        size_t m = k < n ? k : n;
        uint64_t root_score;

        if (m == 0)
                return 0;
        for (size_t i = 0; i < m; i++)
                ret[i] = i;
        for (size_t i = m / 2; i-- > 0;)
                sift_down(nodes, d, ret, m, i);
        root_score = rdv_score(nodes[ret[0]], d);

        for (size_t i = m; i < n; i++) {
                uint64_t s = rdv_score(nodes[i], d);

                if (!ranks_before(nodes, i, s, ret[0], root_score))
                        continue;
                ret[0] = i;
                sift_down(nodes, d, ret, m, 0);
                root_score = rdv_score(nodes[ret[0]], d);
        }

        /* Heap sort in place: moving the worst to the end each time leaves best
   * first. */
        for (size_t end = m; end-- > 1;) {
                size_t tmp = ret[0];
                ret[0] = ret[end];
                ret[end] = tmp;
                sift_down(nodes, d, ret, end, 0);
        }
        return m;
}

size_t rdv_spread(const char *reader_id, const struct digest *d, size_t n) {
        /* The reader's own score for the digest: uniform and independent of the homes' scores,
         * so the reader population splits evenly whoever the homes are. */
        return n <= 1 ? 0 : (size_t)(rdv_score(reader_id, d) % n);
}
