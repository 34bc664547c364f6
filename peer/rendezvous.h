/* Rendezvous (highest-random-weight) hashing: which nodes are the homes of a blob digest.
 *
 * Every node computes the same homes from the same membership without talking to anyone: the
 * k nodes with the highest score(node, digest) are the digest's homes. When a node joins or
 * leaves, only the digests for which it is (or becomes) one of the top k move: about k/n of
 * them. Pure functions, no state, no allocation. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "util/digest.h"

/* The weight of NODE_ID ("addr:port") for digest D: a 64-bit hash of both, uniformly
 * distributed and the same on every node and every run. */
uint64_t rdv_score(const char *node_id, const struct digest *d);

/* Writes into RET (K entries at most) the indexes into NODES (N ids) of D's homes, best first;
 * returns how many (min(K, N)). Ties (vanishingly rare) break by id order. O(n log k). */
size_t rdv_homes(const char *const *nodes, size_t n, const struct digest *d, size_t k, size_t *ret);

/* Which of a digest's N homes (0 .. N-1, in rdv_homes() order) reader READER_ID asks first
 * about chunks it lacks: rdv_score(READER_ID, D) mod N, so the readers of one blob spread
 * evenly over its homes (each home receives 1/N of their locates, not the first home all of
 * them) while one reader keeps asking the same home about one blob. Only questions any home
 * can answer go there ("who holds chunk I?"): claims ("who fetches chunk I from the
 * origin?") are decided by the first home alone (peer/source.c). 0 when N <= 1. Pure. */
size_t rdv_spread(const char *reader_id, const struct digest *d, size_t n);
