/* CRC-32C (Castagnoli, the polynomial of iSCSI, ext4 and Btrfs): the store's per-block
 * checksum against bit rot (cache/store.c). Not a defence against anyone who can write the
 * store's files; the sha256 digests are that.
 *
 * crc32c(0, "123456789", 9) == 0xE3069283. CRC is the value so far (0 to start), so that
 * crc32c(crc32c(0, a, n), b, m) is the CRC of a followed by b. Thread-safe, never fails. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The fastest implementation this CPU has: SSE4.2's crc32 instruction over three interleaved
 * streams where the CPU has it (checked once at run time), else crc32c_sw(). */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/* The portable table implementation (slicing by 8, about 1-2 GB/s): the fallback, and what
 * the tests compare the fast path with. */
uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* Whether crc32c() uses the CPU instruction. */
bool crc32c_hw_available(void);
