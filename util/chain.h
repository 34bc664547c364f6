/* Chain values: SHA-256 of a blob taken at its chunk boundaries, so that one hash of a chunk
 * both checks that chunk and advances the whole-blob verification (issue 15).
 *
 * SHA-256 reads its input in 64-byte blocks and carries 32 bytes of state from one block to
 * the next. A chunk size is a multiple of 64 (of 4096, fs/main.c), so the state after the
 * bytes [0, (i + 1) x chunk_size) of a blob is a 32-byte value, chunk i's chain value: the
 * eight state words, big-endian, as SHA-256 prints its digest. The last chunk's chain value
 * is the blob digest itself (the state finished with SHA-256's padding).
 *
 * Chunk i is checked from chain value i - 1 (the standard initial state for chunk 0): hashing
 * its bytes from there must give chain value i. When every chunk of a blob passed that check
 * against one consistent set of values, the blob's bytes hash to its digest: the checks are
 * exactly the steps of one SHA-256 over the whole blob. So a reader that checked each chunk
 * this way has verified the blob without hashing anything twice, whoever supplied the
 * values; values from a sender are only ever good for the whole-blob conclusion, never for
 * serving one chunk (peer/source_verify.c).
 *
 * Built on OpenSSL's low-level SHA256_CTX (deprecated in OpenSSL 3, kept there, and the only
 * way in to the state between blocks; EVP hides it). It runs the same SHA-extension code as
 * EVP does. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/digest.h"

/* Enough room for OpenSSL's SHA256_CTX (112 bytes in 3.0; checked at compile time in
 * chain.c), kept opaque so callers do not include OpenSSL's deprecated header. */
struct chain_hash {
        _Alignas(8) uint8_t opaque[128];
};

/* Starts hashing at byte OFF of a blob, from chain value PREV, or from SHA-256's initial state
 * when PREV is NULL (then OFF must be 0). OFF must be a multiple of 64. */
void chain_begin(struct chain_hash *c, const struct digest *prev, uint64_t off);
void chain_add(struct chain_hash *c, const void *buf, size_t len);

/* The chain value where the bytes added so far end. Their end must be a multiple of 64 from
 * the blob's start (a chunk boundary always is). The hash may go on afterwards. */
void chain_value(const struct chain_hash *c, struct digest *ret);

/* Finishes: the SHA-256 of the blob, when the bytes added so far ended the blob. */
void chain_finish(struct chain_hash *c, struct digest *ret);

/* Checks chunk bytes BUF (LEN) at OFF from PREV (NULL: OFF is 0). LAST: they end the blob and
 * WANT is the blob digest; otherwise WANT is the chain value where they end. */
bool chain_check(const struct digest *prev, uint64_t off, const void *buf, size_t len, bool last,
                 const struct digest *want);

/* What a source checked a chunk's bytes against, so that the engine does not hash them again
 * (one hash per chunk per path, issue 15): it passes one to the engine with the bytes.
 * HAS_SHA: SHA is the sha256 of exactly these bytes.
 * HAS_CHAIN: the bytes hash from CHAIN_PREV, chunk IDX - 1's chain value (unused for chunk 0),
 * to CHAIN, chunk IDX's chain value, which for the blob's last chunk is the blob digest
 * (above); the engine takes that for a step of the blob's verification when the two
 * values are the ones it has (or records them when it has none). A source says only what it
 * computed over these very bytes. */
struct chunk_check {
        bool has_sha;
        bool has_chain;
        struct digest sha;
        struct digest chain_prev;
        struct digest chain;
};
