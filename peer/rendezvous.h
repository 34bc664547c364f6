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
