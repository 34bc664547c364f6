/* libFuzzer target for util/parse.c and util/digest.c's parsers: every parser sees every
 * input, and what they accept is checked against what they promise (no trailing junk, values
 * in range, outputs NUL-terminated and within their buffers, hex round trips). */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "util/digest.h"
#include "util/parse.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *s, host[64], small[4], fmt[32];
        uint64_t v, lo, hi;
        uint16_t port;
        bool b;
        struct digest d;
        int r;

        s = malloc(size + 1);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = '\0';

        if (parse_size(s, &v) == 0)
                CHECK(s[0] >= '0' && s[0] <= '9');
        if (parse_duration_ms(s, &v) == 0)
                CHECK(s[0] >= '0' && s[0] <= '9');
        lo = size > 0 ? data[0] : 0;
        hi = size > 1 ? (uint64_t)data[1] << 8 : UINT64_MAX;
        r = parse_u64(s, lo, hi, &v);
        if (r == 0)
                CHECK(v >= lo && v <= hi);
        if (parse_bool(s, &b) == 0)
                CHECK(strlen(s) <= 5);

        if (parse_hostport(s, host, sizeof(host), &port) == 0) {
                CHECK(strlen(host) < sizeof(host));
                CHECK(port >= 1);
        }
        memset(small, 'x', sizeof(small));
        r = parse_hostport(s, small, sizeof(small), &port);
        CHECK(r == 0 || r == -EINVAL || r == -ENAMETOOLONG);
        if (r == 0)
                CHECK(strlen(small) < sizeof(small));

        {
                uint64_t rsize = size > 2 ? (uint64_t)data[size - 1] << 20 | data[size - 2] : 0;
                uint64_t off = 0, len = 0;
                r = parse_http_range(s, rsize, &off, &len);
                CHECK(r == 0 || r == -EINVAL || r == -ERANGE);
                if (r == 0)
                        CHECK(len >= 1 && off < rsize && len <= rsize - off);
        }

        {
                int fam = 0;
                uint8_t ip[16];
                if (parse_ip_literal(s, &fam, ip) == 0)
                        CHECK(fam == AF_INET || fam == AF_INET6);
        }

        if (size >= 8) {
                uint64_t bytes;
                memcpy(&bytes, data, 8);
                format_size(bytes, fmt, sizeof(fmt));
                CHECK(memchr(fmt, '\0', sizeof(fmt)) != NULL);
                format_size(bytes, small, 1 + data[0] % sizeof(small));
                CHECK(memchr(small, '\0', sizeof(small)) != NULL);
        }

        if (digest_parse(s, &d) == 0) {
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(&d, hex);
                CHECK(strcmp(s + 7, hex) == 0 && memcmp(s, "sha256:", 7) == 0);
        }
        if (digest_from_hex(s, size, &d) == 0) {
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(&d, hex);
                CHECK(size == DIGEST_HEX_LEN && memcmp(hex, data, DIGEST_HEX_LEN) == 0);
        }
        free(s);
        return 0;
}
