/* libFuzzer target for util/log.c's log_escape(). The first input byte picks the context
 * (bit 0: the value sits between quotes) and a small output capacity (the rest of the byte);
 * the rest is the value. The oracle: the output never holds a byte a log line must not carry
 * (control bytes, DEL, non-ASCII); inside quotes it never holds an unescaped quote; outside, a
 * quote appears only as the wrapping pair; decoding the output gives the input back exactly
 * when it was not truncated, and a prefix of it when it was; the output fits its buffer. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "util/log.h"

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* Decodes OUT (N bytes) into DEC; returns the decoded length, or -1 if OUT is malformed. */
static long decode(const char *out, size_t n, bool in_quotes, char *dec) {
        size_t i = 0, d = 0;
        bool wrapped = !in_quotes && n > 0 && out[0] == '"';
        if (wrapped) {
                if (n < 2 || out[n - 1] != '"')
                        return -1;
                i = 1;
                n--;
        }
        bool escapes_quotes = wrapped || in_quotes;
        while (i < n) {
                char c = out[i];
                if (c == '"')
                        return -1; /* an unescaped quote inside the value */
                if (c != '\\') {
                        dec[d++] = c;
                        i++;
                        continue;
                }
                if (i + 1 >= n)
                        return -1;
                char e = out[i + 1];
                if (e == 'x') {
                        if (i + 3 >= n)
                                return -1;
                        int h = hexval(out[i + 2]), l = hexval(out[i + 3]);
                        if (h < 0 || l < 0)
                                return -1;
                        dec[d++] = (char)(h * 16 + l);
                        i += 4;
                } else if (escapes_quotes && (e == '"' || e == '\\')) {
                        dec[d++] = e;
                        i += 2;
                } else {
                        return -1;
                }
        }
        return (long)d;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        bool in_quotes = data[0] & 1;
        size_t small_cap = data[0] >> 1; /* 0..127 */
        const char *in = (const char *)data + 1;
        size_t len = size - 1;
        size_t big_cap = 4 * len + 3;
        char *out = malloc(big_cap), *dec = malloc(len + 1);
        if (!out || !dec)
                goto done;
        for (int pass = 0; pass < 2; pass++) {
                size_t cap = pass == 0 ? big_cap : small_cap;
                if (cap > big_cap)
                        cap = big_cap;
                size_t n = log_escape(in, len, in_quotes, out, cap);
                if (cap == 0) {
                        CHECK(n == 0);
                        continue;
                }
                CHECK(n < cap && out[n] == '\0');
                for (size_t i = 0; i < n; i++) {
                        unsigned char c = (unsigned char)out[i];
                        CHECK(c >= 0x20 && c < 0x7f);
                }
                if (!in_quotes && n > 0 && out[0] != '"') /* bare: nothing that splits a key */
                        for (size_t i = 0; i < n; i++)
                                CHECK(out[i] != ' ' && out[i] != '=' && out[i] != '"');
                long d = decode(out, n, in_quotes, dec);
                if (pass == 0) {
                        CHECK(d == (long)len);
                        CHECK(memcmp(dec, in, len) == 0);
                } else if (n > 0) {
                        CHECK(d >= 0 && (size_t)d <= len);
                        CHECK(memcmp(dec, in, (size_t)d) == 0);
                }
        }
done:
        free(out);
        free(dec);
        return 0;
}
