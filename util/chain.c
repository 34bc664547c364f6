/* Chain values: the SHA-256 state at chunk boundaries (util/chain.h). The state words are
 * SHA256_CTX's h[], its byte count is Nl/Nh (bits, low and high words); between blocks
 * nothing else is pending (num is 0), so setting those resumes a hash exactly where another
 * one stopped. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "util/chain.h"

#include <assert.h>
#include <string.h>

#include <openssl/sha.h>

_Static_assert(sizeof(SHA256_CTX) <= sizeof(((struct chain_hash *)0)->opaque),
               "struct chain_hash too small for SHA256_CTX");

static SHA256_CTX *ctx_of(struct chain_hash *c) {
        return (SHA256_CTX *)(void *)c->opaque;
}

static const SHA256_CTX *cctx_of(const struct chain_hash *c) {
        return (const SHA256_CTX *)(const void *)c->opaque;
}

void chain_begin(struct chain_hash *c, const struct digest *prev, uint64_t off) {
        SHA256_CTX *x = ctx_of(c);
        SHA256_Init(x);
        if (!prev) {
                assert(off == 0);
                return;
        }
        assert(off % 64 == 0);
        for (int i = 0; i < 8; i++) {
                const uint8_t *p = prev->bytes + 4 * i;
                x->h[i] = (SHA_LONG)p[0] << 24 | (SHA_LONG)p[1] << 16 | (SHA_LONG)p[2] << 8 | p[3];
        }
        uint64_t bits = off * 8;
        x->Nl = (SHA_LONG)(bits & 0xffffffffu);
        x->Nh = (SHA_LONG)(bits >> 32);
}

void chain_add(struct chain_hash *c, const void *buf, size_t len) {
        SHA256_Update(ctx_of(c), buf, len);
}

void chain_value(const struct chain_hash *c, struct digest *ret) {
        const SHA256_CTX *x = cctx_of(c);
        assert(x->num == 0); /* a block boundary: the state is all there is */
        for (int i = 0; i < 8; i++) {
                ret->bytes[4 * i] = (uint8_t)(x->h[i] >> 24);
                ret->bytes[4 * i + 1] = (uint8_t)(x->h[i] >> 16);
                ret->bytes[4 * i + 2] = (uint8_t)(x->h[i] >> 8);
                ret->bytes[4 * i + 3] = (uint8_t)x->h[i];
        }
}

void chain_finish(struct chain_hash *c, struct digest *ret) {
        SHA256_Final(ret->bytes, ctx_of(c));
}

bool chain_check(const struct digest *prev, uint64_t off, const void *buf, size_t len, bool last,
                 const struct digest *want) {
        if (!last && len % 64)
                return false; /* no chunk but the last ends off a block boundary */
        struct chain_hash c;
        struct digest got;
        chain_begin(&c, prev, off);
        chain_add(&c, buf, len);
        if (last)
                chain_finish(&c, &got);
        else
                chain_value(&c, &got);
        return digest_equal(&got, want);
}
