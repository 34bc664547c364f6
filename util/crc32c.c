/* CRC-32C. See crc32c.h for the contract.
 *
 * Why CRC-32C and why this way: the store checks every 4 KiB block it reads against the
 * checksum recorded when the block was written (cache/store.c), on the path that serves cached
 * reads, so the checksum must cost a small fraction of copying the bytes. x86-64 CPUs since
 * 2008 compute CRC-32C in one instruction (SSE4.2 crc32) that takes 8 bytes a cycle in
 * throughput but 3 cycles of latency: one running CRC is latency-bound at a third of what the
 * unit can do. So a stride of 3 * LANE bytes is split into three lanes computed at once, and
 * the three CRCs are joined with the algebra of CRCs: the raw CRC register is linear over
 * GF(2), so crc(r, A || B) = shift(crc(r, A)) ^ crc(0, B), where shift() is "append LANE zero
 * bytes" — a fixed 32x32 bit matrix, applied through four 256-entry tables built once from the
 * images of the 32 basis vectors. With LANE = 1360 a 4 KiB block is one stride and 16 bytes.
 * Measured on the project's machine: see the commit that added this file.
 *
 * Without SSE4.2 (checked once at run time with __builtin_cpu_supports; also on other
 * architectures) a slicing-by-8 table implementation does the work at 1-2 GB/s. All tables are
 * built on first use under pthread_once; after that everything is read-only. */
#include "util/crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CRC32C_X86 1
#include <nmmintrin.h>
#else
#define CRC32C_X86 0
#endif

#define POLY 0x82F63B78u /* Castagnoli, bit-reflected */
#define LANE 1360u       /* bytes per lane of the 3-way stride; a multiple of 8 */

static uint32_t sw_table[8][256];
static uint32_t shift_table[4][256]; /* raw register -> register after LANE zero bytes */
static bool use_hw;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static uint32_t load32le(const uint8_t *p) {
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The raw register update (no pre- or post-inversion), portable. */
static uint32_t sw_update(uint32_t reg, const uint8_t *p, size_t len) {
        while (len && ((uintptr_t)p & 7)) {
                reg = sw_table[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
                len--;
        }
        while (len >= 8) {
                uint32_t lo = load32le(p) ^ reg, hi = load32le(p + 4);
                reg = sw_table[7][lo & 0xff] ^ sw_table[6][(lo >> 8) & 0xff] ^
                      sw_table[5][(lo >> 16) & 0xff] ^ sw_table[4][lo >> 24] ^
                      sw_table[3][hi & 0xff] ^ sw_table[2][(hi >> 8) & 0xff] ^
                      sw_table[1][(hi >> 16) & 0xff] ^ sw_table[0][hi >> 24];
                p += 8;
                len -= 8;
        }
        while (len--)
                reg = sw_table[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
        return reg;
}

static uint32_t shift_lane(uint32_t reg) {
        return shift_table[0][reg & 0xff] ^ shift_table[1][(reg >> 8) & 0xff] ^
               shift_table[2][(reg >> 16) & 0xff] ^ shift_table[3][reg >> 24];
}

#if CRC32C_X86
__attribute__((target("sse4.2"))) static uint32_t hw_update(uint32_t reg, const uint8_t *p,
                                                            size_t len) {
        while (len && ((uintptr_t)p & 7)) {
                reg = _mm_crc32_u8(reg, *p++);
                len--;
        }
        while (len >= 3 * LANE) {
                uint64_t a = reg, b = 0, c = 0;
                for (size_t i = 0; i < LANE; i += 8) {
                        uint64_t wa, wb, wc;
                        memcpy(&wa, p + i, 8);
                        memcpy(&wb, p + LANE + i, 8);
                        memcpy(&wc, p + 2 * LANE + i, 8);
                        a = _mm_crc32_u64(a, wa);
                        b = _mm_crc32_u64(b, wb);
                        c = _mm_crc32_u64(c, wc);
                }
                reg = shift_lane(shift_lane((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)c;
                p += 3 * LANE;
                len -= 3 * LANE;
        }
        uint64_t r64 = reg;
        while (len >= 8) {
                uint64_t w;
                memcpy(&w, p, 8);
                r64 = _mm_crc32_u64(r64, w);
                p += 8;
                len -= 8;
        }
        reg = (uint32_t)r64;
        while (len--)
                reg = _mm_crc32_u8(reg, *p++);
        return reg;
}
#endif

static void init(void) {
        for (uint32_t i = 0; i < 256; i++) {
                uint32_t c = i;
                for (int k = 0; k < 8; k++)
                        c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
                sw_table[0][i] = c;
        }
        for (int t = 1; t < 8; t++)
                for (uint32_t i = 0; i < 256; i++)
                        sw_table[t][i] =
                                (sw_table[t - 1][i] >> 8) ^ sw_table[0][sw_table[t - 1][i] & 0xff];
        /* shift() of each basis vector, then the tables as sums (XOR) of those images. */
        static const uint8_t zeros[LANE];
        uint32_t basis[32];
        for (int bit = 0; bit < 32; bit++)
                basis[bit] = sw_update(UINT32_C(1) << bit, zeros, LANE);
        for (int t = 0; t < 4; t++)
                for (uint32_t v = 0; v < 256; v++) {
                        uint32_t img = 0;
                        for (int bit = 0; bit < 8; bit++)
                                if (v & (1u << bit))
                                        img ^= basis[t * 8 + bit];
                        shift_table[t][v] = img;
                }
#if CRC32C_X86
        __builtin_cpu_init();
        use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len) {
        pthread_once(&init_once, init);
        return ~sw_update(~crc, buf, len);
}

uint32_t crc32c(uint32_t crc, const void *buf, size_t len) {
        pthread_once(&init_once, init);
#if CRC32C_X86
        if (use_hw)
                return ~hw_update(~crc, buf, len);
#endif
        return ~sw_update(~crc, buf, len);
}

bool crc32c_hw_available(void) {
        pthread_once(&init_once, init);
        return use_hw;
}
