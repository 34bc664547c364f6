/* Content digests: parsing, printing and computing the sha256 that names every blob and chunk.
 *
 * A digest is the identity of a blob, so there is exactly one accepted spelling of it: 64
 * lowercase hex characters, after "sha256:" where a prefix is expected. Uppercase hex is
 * refused rather than folded, so a digest printed by us, typed into a path or compared as a
 * string always matches the one stored in the index. Algorithms other than sha256 that are
 * well formed by the OCI grammar (algorithm ::= [a-z0-9]+ ([+._-][a-z0-9]+)*) are
 * -EPROTONOSUPPORT, not -EINVAL, so callers can tell an operator "unsupported" rather than
 * "malformed".
 *
 * Hashing goes through OpenSSL's EVP interface, which picks the CPU's SHA extensions. It is
 * stateless here (no context is kept), thread-safe, and costs one pass over the bytes.
 */
#include "util/digest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

static int hex_value(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

int digest_from_hex(const char *hex, size_t len, struct digest *ret) {
        struct digest d;

        if (!hex || len != DIGEST_HEX_LEN)
                return -EINVAL;
        for (size_t i = 0; i < DIGEST_LEN; i++) {
                int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return -EINVAL;
                d.bytes[i] = (uint8_t)(hi << 4 | lo);
        }
        *ret = d;
        return 0;
}

static bool algo_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* OCI: algorithm-component (algorithm-separator algorithm-component)*, separator [+._-]. */
static bool algorithm_valid(const char *a, size_t len) {
        bool need_component = true;

        for (size_t i = 0; i < len; i++) {
                if (algo_char(a[i])) {
                        need_component = false;
                } else if (!need_component &&
                           (a[i] == '+' || a[i] == '.' || a[i] == '_' || a[i] == '-')) {
                        need_component = true;
                } else {
                        return false;
                }
        }
        return len > 0 && !need_component;
}

/* OCI: encoded ::= [a-zA-Z0-9=_-]+. Empty is accepted too: "sha512:" still names an
 * algorithm we do not support, which is the more useful thing to report. */
static bool encoded_chars_ok(const char *e) {
        for (; *e; e++) {
                char c = *e;
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '=' || c == '_' || c == '-'))
                        return false;
        }
        return true;
}

int digest_parse(const char *s, struct digest *ret) {
        const char *colon;
        size_t alen;

        if (!s)
                return -EINVAL;
        colon = strchr(s, ':');
        if (!colon)
                return -EINVAL;
        alen = (size_t)(colon - s);
        if (alen == 6 && memcmp(s, "sha256", 6) == 0)
                return digest_from_hex(colon + 1, strlen(colon + 1), ret);
        if (algorithm_valid(s, alen) && encoded_chars_ok(colon + 1))
                return -EPROTONOSUPPORT;
        return -EINVAL;
}

void digest_to_hex(const struct digest *d, char out[DIGEST_HEX_LEN + 1]) {
        static const char xd[] = "0123456789abcdef";

        for (size_t i = 0; i < DIGEST_LEN; i++) {
                out[2 * i] = xd[d->bytes[i] >> 4];
                out[2 * i + 1] = xd[d->bytes[i] & 0xf];
        }
        out[DIGEST_HEX_LEN] = '\0';
}

bool digest_equal(const struct digest *a, const struct digest *b) {
        return memcmp(a->bytes, b->bytes, DIGEST_LEN) == 0;
}

void digest_sha256(const void *buf, size_t len, struct digest *ret) {
        unsigned int mdlen = 0;

        /* EVP_Digest() fails only when OpenSSL cannot allocate a context or load its default
         * provider. The signature has no error path, and returning a made-up digest for a
         * content-addressed store would be far worse than stopping, so stop. */
        if (EVP_Digest(buf, len, ret->bytes, &mdlen, EVP_sha256(), NULL) != 1 ||
            mdlen != DIGEST_LEN)
                abort();
}
