/* libFuzzer target for peer/wire_reply.c, the body a home answers an announce with: what the
 * parser accepts must build again and parse back to the same entries; what it refuses is
 * -EINVAL (or -ENOMEM) with nothing left to free. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "peer/wire_reply.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct wire_reply r, back;
        char *text;
        size_t len;
        int e = wire_reply_parse((const char *)data, size, &r);

        if (e < 0) {
                CHECK(e == -EINVAL || e == -ENOMEM);
                CHECK(r.nfull == 0 && r.full == NULL);
                return 0;
        }
        CHECK(r.nfull <= WIRE_REPLY_MAX_FULL && (r.nfull == 0 || r.full));
        CHECK(wire_reply_build(&r, &text, &len) == 0);
        CHECK(len == strlen(text));
        CHECK(wire_reply_parse(text, len, &back) == 0);
        CHECK(back.nfull == r.nfull);
        for (uint32_t i = 0; i < r.nfull; i++) {
                CHECK(digest_equal(&back.full[i].digest, &r.full[i].digest) &&
                      back.full[i].retry_ms == r.full[i].retry_ms);
                CHECK(!back.full[i].covered == !r.full[i].covered);
                CHECK(!r.full[i].covered || (back.full[i].nchunks == r.full[i].nchunks &&
                                             memcmp(back.full[i].covered, r.full[i].covered,
                                                    (r.full[i].nchunks + 7) / 8) == 0));
        }
        free(text);
        wire_reply_free(&back);
        wire_reply_free(&r);
        return 0;
}
