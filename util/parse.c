/* Checked parsers for the values operators type.
 *
 * Every value that comes from the config file, a flag or the environment passes through here,
 * so the rules are strict and the same everywhere:
 *
 *   - digits are scanned by hand, not with strtoull(), which would accept leading blanks,
 *     a '+' and even a '-' ("-1" silently becomes 2^64-1) and depends on the locale;
 *   - the whole string must be consumed: trailing junk is -EINVAL, never ignored;
 *   - overflow is -ERANGE and never wraps; a malformed string is -EINVAL even when it is also
 *     too large (the operator has a typo to fix first);
 *   - out-parameters are written only when the whole input was accepted.
 *
 * Two choices an operator may trip on: sizes are integers with binary units ("1.5G" is
 * refused rather than rounded), and parse_hostport() accepts an empty host (":5001", the
 * listen default, meaning every address), so callers that need a peer's address check host[0].
 *
 * Nothing here allocates, blocks or keeps state; every function is thread-safe and costs
 * O(length of the input).
 */
#include "util/parse.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Character classes by hand: <ctype.h> depends on the locale and is undefined for negative
 * chars, and these parsers must behave identically in every process that links them. */
static bool is_digit(char c) {
        return c >= '0' && c <= '9';
}

static bool is_alnum(char c) {
        return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static char to_upper(char c) {
        return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

/* Scans a non-empty run of decimal digits at S. *RET_END points past the run. Overflow does
 * not stop the scan (the caller wants to know about junk after the digits first); it is
 * reported in *RET_OVERFLOW. -EINVAL when S does not start with a digit. */
static int scan_digits(const char *s, const char **ret_end, uint64_t *ret, bool *ret_overflow) {
        uint64_t n = 0;
        bool overflow = false;
        const char *p = s;

        if (!is_digit(*p))
                return -EINVAL;
        for (; is_digit(*p); p++) {
                unsigned d = (unsigned)(*p - '0');
                if (n > (UINT64_MAX - d) / 10)
                        overflow = true;
                else
                        n = n * 10 + d;
        }
        *ret_end = p;
        *ret = n;
        *ret_overflow = overflow;
        return 0;
}

int parse_size(const char *s, uint64_t *ret) {
        const char *p;
        uint64_t n;
        bool overflow;
        unsigned shift = 0;
        int r;

        if (!s)
                return -EINVAL;
        r = scan_digits(s, &p, &n, &overflow);
        if (r < 0)
                return r;

        /* Suffix grammar: "" | "B" | U | U "i" | U "B" | U "iB", U one of KMGTPE; letters are
         * case-insensitive. Units are always binary: operators who write "MB" mean what the
         * kernel and every cgroup file mean by it. */
        switch (to_upper(*p)) {
        case '\0':
                break;
        case 'B':
                p++;
                break;
        case 'K':
                shift = 10;
                break;
        case 'M':
                shift = 20;
                break;
        case 'G':
                shift = 30;
                break;
        case 'T':
                shift = 40;
                break;
        case 'P':
                shift = 50;
                break;
        case 'E':
                shift = 60;
                break;
        default:
                return -EINVAL;
        }
        if (shift > 0) {
                p++;
                if (to_upper(*p) == 'I')
                        p++;
                if (to_upper(*p) == 'B')
                        p++;
        }
        if (*p != '\0')
                return -EINVAL;
        if (overflow || n > (UINT64_MAX >> shift))
                return -ERANGE;
        *ret = n << shift;
        return 0;
}

int parse_duration_ms(const char *s, uint64_t *ret) {
        const char *p;
        uint64_t n, mult;
        bool overflow;
        int r;

        if (!s)
                return -EINVAL;
        r = scan_digits(s, &p, &n, &overflow);
        if (r < 0)
                return r;

        /* Lowercase only: "M" would read as months to some people and minutes to others. */
        if (*p == '\0' || strcmp(p, "s") == 0)
                mult = 1000;
        else if (strcmp(p, "ms") == 0)
                mult = 1;
        else if (strcmp(p, "m") == 0)
                mult = 60u * 1000u;
        else if (strcmp(p, "h") == 0)
                mult = 3600u * 1000u;
        else
                return -EINVAL;
        if (overflow || n > UINT64_MAX / mult)
                return -ERANGE;
        *ret = n * mult;
        return 0;
}

int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret) {
        const char *p;
        uint64_t n;
        bool overflow;
        int r;

        if (!s || min > max)
                return -EINVAL;
        r = scan_digits(s, &p, &n, &overflow);
        if (r < 0)
                return r;
        if (*p != '\0')
                return -EINVAL;
        if (overflow || n < min || n > max)
                return -ERANGE;
        *ret = n;
        return 0;
}

int parse_bool(const char *s, bool *ret) {
        static const char *const yes[] = {"1", "true", "yes", "on"};
        static const char *const no[] = {"0", "false", "no", "off"};

        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

/* A DNS name or an IPv4 literal. Empty is allowed: ":5001" means every address (the listen
 * default); callers that need a real host check host[0]. */
static bool host_chars_ok(const char *h, size_t len) {
        for (size_t i = 0; i < len; i++)
                if (!is_alnum(h[i]) && h[i] != '.' && h[i] != '-' && h[i] != '_')
                        return false;
        return true;
}

/* An IPv6 literal, optionally with a zone ("fe80::1%eth0"). The address is checked by
 * inet_pton(), which does not know zones; the zone is checked as an interface name. */
static bool v6_literal_ok(const char *h, size_t len) {
        char addr[INET6_ADDRSTRLEN];
        struct in6_addr a6;
        const char *pct = memchr(h, '%', len);
        size_t alen = pct ? (size_t)(pct - h) : len;

        if (alen == 0 || alen >= sizeof(addr))
                return false;
        memcpy(addr, h, alen);
        addr[alen] = '\0';
        if (inet_pton(AF_INET6, addr, &a6) != 1)
                return false;
        if (pct) {
                size_t zlen = len - alen - 1;
                if (zlen == 0 || zlen >= IF_NAMESIZE)
                        return false;
                return host_chars_ok(pct + 1, zlen);
        }
        return true;
}

int parse_hostport(const char *s, char *host, size_t host_len, uint16_t *ret_port) {
        const char *h, *colon;
        size_t hlen;
        uint64_t port;

        if (!s)
                return -EINVAL;
        if (s[0] == '[') {
                const char *close = strchr(s, ']');
                if (!close)
                        return -EINVAL;
                h = s + 1;
                hlen = (size_t)(close - h);
                if (!v6_literal_ok(h, hlen))
                        return -EINVAL;
                colon = close + 1;
                if (*colon != ':')
                        return -EINVAL;
        } else {
                /* A second ':' lands in the port and fails there: an unbracketed IPv6 address
                 * is ambiguous and is refused. */
                colon = strchr(s, ':');
                if (!colon)
                        return -EINVAL;
                h = s;
                hlen = (size_t)(colon - s);
                if (!host_chars_ok(h, hlen))
                        return -EINVAL;
        }
        if (parse_u64(colon + 1, 1, 65535, &port) < 0)
                return -EINVAL;
        if (hlen >= host_len)
                return -ENAMETOOLONG;
        memcpy(host, h, hlen);
        host[hlen] = '\0';
        *ret_port = (uint16_t)port;
        return 0;
}

void format_size(uint64_t bytes, char *out, size_t out_len) {
        static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
        unsigned u = 0;
        uint64_t whole, tenths;

        if (!out || out_len == 0)
                return;
        if (bytes < 1024) {
                snprintf(out, out_len, "%" PRIu64 " B", bytes);
                return;
        }
        while (u + 1 < sizeof(units) / sizeof(units[0]) && bytes >> (10 * (u + 1)) > 0)
                u++;
        /* Integer arithmetic, rounded to the nearest tenth: rem < 2^60, so rem * 10 fits. */
        for (;;) {
                uint64_t unit = UINT64_C(1) << (10 * u);
                uint64_t rem = bytes & (unit - 1);
                whole = bytes >> (10 * u);
                tenths = (rem * 10 + unit / 2) >> (10 * u);
                if (tenths == 10) {
                        whole++;
                        tenths = 0;
                }
                /* 1023.96 KiB rounds to "1024.0 KiB": say "1.0 MiB" instead. */
                if (whole < 1024 || u + 1 >= sizeof(units) / sizeof(units[0]))
                        break;
                u++;
        }
        snprintf(out, out_len, "%" PRIu64 ".%" PRIu64 " %s", whole, tenths, units[u]);
}

int parse_http_range(const char *s, uint64_t size, uint64_t *ret_off, uint64_t *ret_len) {
        static const char unit[] = "bytes=";
        uint64_t a = 0, b = 0;
        bool overflow = false;
        const char *p;

        if (!s || strncmp(s, unit, sizeof(unit) - 1) != 0)
                return -EINVAL;
        p = s + sizeof(unit) - 1;
        if (*p == '-') { /* suffix: the last N bytes */
                if (scan_digits(p + 1, &p, &b, &overflow) < 0 || *p != '\0')
                        return -EINVAL;
                if (b == 0 || size == 0)
                        return -ERANGE;
                if (overflow || b > size)
                        b = size;
                *ret_off = size - b;
                *ret_len = b;
                return 0;
        }
        if (scan_digits(p, &p, &a, &overflow) < 0 || *p != '-')
                return -EINVAL;
        p++;
        bool open_end = *p == '\0';
        if (!open_end) {
                bool over_b = false;
                if (scan_digits(p, &p, &b, &over_b) < 0 || *p != '\0')
                        return -EINVAL;
                if (over_b)
                        b = UINT64_MAX;
                if (b < a)
                        return -EINVAL;
        }
        if (overflow || a >= size)
                return -ERANGE;
        if (open_end || b >= size)
                b = size - 1;
        *ret_off = a;
        *ret_len = b - a + 1;
        return 0;
}

int parse_ip_literal(const char *s, int *ret_family, uint8_t ret_bytes[16]) {
        char buf[INET6_ADDRSTRLEN + 2];
        if (!s)
                return -EINVAL;
        size_t len = strlen(s);
        if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
                s++;
                len -= 2;
        }
        if (len == 0 || len >= sizeof(buf))
                return -EINVAL;
        memcpy(buf, s, len);
        buf[len] = '\0';
        uint8_t bytes[16] = {0};
        static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (inet_pton(AF_INET, buf, bytes) == 1) {
                *ret_family = AF_INET;
        } else if (inet_pton(AF_INET6, buf, bytes) == 1) {
                *ret_family = AF_INET6;
                if (memcmp(bytes, v4mapped, sizeof(v4mapped)) == 0) {
                        memmove(bytes, bytes + 12, 4);
                        memset(bytes + 4, 0, 12);
                        *ret_family = AF_INET;
                }
        } else {
                return -EINVAL;
        }
        memcpy(ret_bytes, bytes, 16);
        return 0;
}
