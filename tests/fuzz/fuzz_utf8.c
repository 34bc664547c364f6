/* libFuzzer target for util/utf8.c's strict UTF-8 validator. The oracle is a second decoder
 * written the other way round: it assembles each code point from the lead's bit pattern and
 * its continuations, then refuses what is overlong (encoded in more bytes than the code point
 * needs), a surrogate or above U+10FFFF. Both must agree on the valid prefix of every input;
 * utf8_valid() must be that prefix being the whole; the prefix must itself be valid, and
 * utf8_valid_prefix() must never read past the length it is given (ASan sees the copy's
 * end). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "util/utf8.h"

static size_t ref_prefix(const uint8_t *s, size_t len) {
        size_t i = 0;
        while (i < len) {
                uint8_t c = s[i];
                size_t n;
                uint32_t cp;
                if (c < 0x80) {
                        i++;
                        continue;
                } else if ((c & 0xe0) == 0xc0) {
                        n = 2;
                        cp = c & 0x1f;
                } else if ((c & 0xf0) == 0xe0) {
                        n = 3;
                        cp = c & 0x0f;
                } else if ((c & 0xf8) == 0xf0) {
                        n = 4;
                        cp = c & 0x07;
                } else {
                        return i;
                }
                if (len - i < n)
                        return i;
                for (size_t k = 1; k < n; k++) {
                        if ((s[i + k] & 0xc0) != 0x80)
                                return i;
                        cp = cp << 6 | (s[i + k] & 0x3f);
                }
                size_t need = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
                if (need != n || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
                        return i;
                i += n;
        }
        return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        /* An exact-size copy, so that a read past SIZE is a heap overflow ASan reports. */
        uint8_t *s = malloc(size ? size : 1);
        if (!s)
                return 0;
        memcpy(s, data, size);
        size_t got = utf8_valid_prefix(s, size);
        CHECK(got <= size);
        CHECK(got == ref_prefix(s, size));
        CHECK(utf8_valid(s, size) == (got == size));
        CHECK(utf8_valid(s, got));
        free(s);
        return 0;
}
