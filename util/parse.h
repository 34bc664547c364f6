/* Checked parsers for the values operators type: sizes, durations, integers, booleans,
 * host:port. No atoi, no strtok: every parser rejects trailing junk and out-of-range values. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "4096", "512K", "512M", "10G", "1T" (binary units; optional "i"/"B": "1MiB", "1MB" both mean
 * 2^20). Rejects negatives, empty strings, overflow and junk. 0 or -EINVAL / -ERANGE. */
int parse_size(const char *s, uint64_t *ret);

/* "250ms", "30s", "5m", "1h"; a bare number is seconds. Result in milliseconds.
 * 0 or -EINVAL / -ERANGE. */
int parse_duration_ms(const char *s, uint64_t *ret);

/* Decimal unsigned integer within [MIN, MAX]. 0, -EINVAL or -ERANGE. */
int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret);

/* "1/0", "true/false", "yes/no", "on/off" (case-insensitive). 0 or -EINVAL. */
int parse_bool(const char *s, bool *ret);

/* "host:port", "[v6addr]:port". HOST gets the host without brackets. Port 1..65535.
 * 0, -EINVAL, or -ENAMETOOLONG when HOST_LEN is too small. */
int parse_hostport(const char *s, char *host, size_t host_len, uint16_t *ret_port);

/* Formats BYTES for people: "0 B", "512 B", "1.5 KiB", "10.0 GiB". Always NUL-terminates. */
void format_size(uint64_t bytes, char *out, size_t out_len);

/* An HTTP Range header value for a resource of SIZE bytes: "bytes=A-B", "bytes=A-" or the
 * suffix form "bytes=-N", one range only (peers and containerd never ask for several).
 * *RET_OFF and *RET_LEN get the satisfiable span, B clamped to the end.
 * 0; -EINVAL for a malformed or multi-range value (serve the whole resource or 400);
 * -ERANGE when it cannot be satisfied (A past the end, N = 0: answer 416). */
int parse_http_range(const char *s, uint64_t size, uint64_t *ret_off, uint64_t *ret_len);

/* A numeric IPv4 or IPv6 address ("10.0.0.2", "fd00::2", "[fd00::2]"). An IPv4-mapped IPv6
 * address (a dual-stack socket's IPv4 peer) comes back as the IPv4 address it is. *RET_FAMILY
 * is AF_INET or AF_INET6; RET_BYTES holds 4 or 16 bytes. 0 or -EINVAL (names included). */
int parse_ip_literal(const char *s, int *ret_family, uint8_t ret_bytes[16]);
