/* Strict UTF-8 validation. See utf8.h for the contract.
 *
 * The lead byte says how many continuation bytes follow; the second byte's range is the one
 * place where the strict rules live (table 3-7 of the Unicode standard): after E0 it must be
 * A0-BF (no overlong three-byte form), after ED 80-9F (no surrogate), after F0 90-BF (no
 * overlong four-byte form), after F4 80-8F (nothing above U+10FFFF); every other continuation
 * is 80-BF. C0, C1 (overlong two-byte forms) and F5-FF never start a sequence. One pass, no
 * table, a byte at a time: the strings it checks are request keys and labels, short. */
#include "util/utf8.h"

#include <stdint.h>

size_t utf8_valid_prefix(const void *s, size_t len) {
        const uint8_t *p = s;
        size_t i = 0;
        while (i < len) {
                uint8_t c = p[i];
                if (c < 0x80) {
                        i++;
                        continue;
                }
                size_t n;       /* continuation bytes */
                uint8_t lo, hi; /* the second byte's range */
                if (c >= 0xc2 && c <= 0xdf) {
                        n = 1;
                        lo = 0x80;
                        hi = 0xbf;
                } else if (c >= 0xe0 && c <= 0xef) {
                        n = 2;
                        lo = c == 0xe0 ? 0xa0 : 0x80;
                        hi = c == 0xed ? 0x9f : 0xbf;
                } else if (c >= 0xf0 && c <= 0xf4) {
                        n = 3;
                        lo = c == 0xf0 ? 0x90 : 0x80;
                        hi = c == 0xf4 ? 0x8f : 0xbf;
                } else {
                        return i; /* a continuation byte as a lead, C0, C1, F5-FF */
                }
                if (len - i <= n)
                        return i; /* cut short by the end */
                if (p[i + 1] < lo || p[i + 1] > hi)
                        return i;
                for (size_t k = 2; k <= n; k++)
                        if (p[i + k] < 0x80 || p[i + k] > 0xbf)
                                return i;
                i += n + 1;
        }
        return len;
}

bool utf8_valid(const void *s, size_t len) {
        return utf8_valid_prefix(s, len) == len;
}
