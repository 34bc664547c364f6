/* Content digests: the sha256 that names every blob and every chunk. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DIGEST_LEN 32
#define DIGEST_HEX_LEN 64

struct digest {
        uint8_t bytes[DIGEST_LEN];
};

/* Parses exactly DIGEST_HEX_LEN lowercase hex characters (no prefix, LEN must be 64).
 * Returns 0, or -EINVAL for anything else (uppercase, short, long, non-hex). */
int digest_from_hex(const char *hex, size_t len, struct digest *ret);

/* Parses "sha256:<64 lowercase hex>" (NUL-terminated). 0 or -EINVAL; other algorithms are
 * -EPROTONOSUPPORT so callers can say "unsupported" rather than "malformed". */
int digest_parse(const char *s, struct digest *ret);

/* Writes 64 hex characters and a NUL into OUT. */
void digest_to_hex(const struct digest *d, char out[DIGEST_HEX_LEN + 1]);

bool digest_equal(const struct digest *a, const struct digest *b);

/* sha256 of LEN bytes at BUF (OpenSSL; uses the CPU's SHA extensions). */
void digest_sha256(const void *buf, size_t len, struct digest *ret);
