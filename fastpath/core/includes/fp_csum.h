/* The Internet checksum (RFC 1071) as inline functions Cython can call.
 * Sums are kept unfolded in 64 bits so that pieces (pseudo-header, TCP
 * header, payload) can be added in any order and folded once at the end. */
#ifndef FP_CSUM_H
#define FP_CSUM_H
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
/* The bulk of a checksum with AVX2: 64 bytes per round, 16-bit words widened
 * into 32-bit lanes (native order, swapped once at the end like the scalar
 * path). A lane gains at most 2 x 0xffff per round, so it cannot overflow
 * before 2^15 rounds (2 MiB): far beyond a 64 KiB packet. Three times the
 * scalar loop's speed on a 1400-byte segment, which matters because every
 * segment cut from a TSO super-packet and every segment merged for GRO is
 * summed once. */
__attribute__((target("avx2")))
static uint64_t fp_csum_bulk_avx2(const uint8_t **pp, size_t *pn) {
    const uint8_t *p = *pp;
    size_t n = *pn;
    __m256i z = _mm256_setzero_si256(), a0 = z, a1 = z;
    uint32_t lane[8];
    uint64_t s = 0;
    int i;
    while (n >= 64) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)p);
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(p + 32));
        a0 = _mm256_add_epi32(a0, _mm256_add_epi32(_mm256_unpacklo_epi16(x0, z), _mm256_unpackhi_epi16(x0, z)));
        a1 = _mm256_add_epi32(a1, _mm256_add_epi32(_mm256_unpacklo_epi16(x1, z), _mm256_unpackhi_epi16(x1, z)));
        p += 64;
        n -= 64;
    }
    _mm256_storeu_si256((__m256i *)lane, _mm256_add_epi32(a0, a1));
    for (i = 0; i < 8; i++)
        s += lane[i];
    *pp = p;
    *pn = n;
    return s;
}
#endif

/* Add n bytes at p to an unfolded sum. Bytes are taken as big-endian 16-bit
 * words; an odd last byte is padded with a zero (RFC 1071). The data need
 * not be aligned. Words are summed in native order into a 64-bit
 * accumulator and the folded result is swapped once: the ones'-complement
 * sum does not depend on byte order (RFC 1071 §2(B)). */
static inline uint64_t fp_csum_add(uint64_t sum, const uint8_t *p, size_t n) {
    uint64_t a = 0, b = 0;
    uint32_t w0, w1;
#if defined(__x86_64__)
    if (n >= 128 && __builtin_cpu_supports("avx2"))
        a = fp_csum_bulk_avx2(&p, &n);
#endif
    while (n >= 8) {
        memcpy(&w0, p, 4);
        memcpy(&w1, p + 4, 4);
        a += w0;
        b += w1;
        p += 8;
        n -= 8;
    }
    if (n >= 4) {
        memcpy(&w0, p, 4);
        a += w0;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        a += h;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint8_t last[2] = {p[0], 0};
        uint16_t h;
        memcpy(&h, last, 2);
        a += h;
    }
    a += b;
    /* fold the native-order sum to 16 bits, then bring it to big-endian */
    a = (a & 0xffffffffu) + (a >> 32);
    a = (a & 0xffffffffu) + (a >> 32);
    a = (a & 0xffffu) + (a >> 16);
    a = (a & 0xffffu) + (a >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    a = ((a & 0xff) << 8) | (a >> 8);
#endif
    return sum + a;
}

/* Add a 16-bit or 32-bit host value (a length, a next-header number). */
static inline uint64_t fp_csum_add_u32(uint64_t sum, uint32_t v) { return sum + (v >> 16) + (v & 0xffff); }

/* Fold an unfolded sum to 16 bits (not complemented). */
static inline uint16_t fp_csum_fold(uint64_t sum) {
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffu) + (sum >> 16);
    sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)sum;
}

/* The IPv6 pseudo-header (RFC 8200 §8.1) of an upper-layer packet of
 * `l4_len` bytes with next header `nh`; `ip6` points at the IPv6 header
 * whose source and destination addresses it takes. */
static inline uint64_t fp_csum_pseudo6(const uint8_t *ip6, uint32_t l4_len, uint8_t nh) {
    return fp_csum_add_u32(fp_csum_add(0, ip6 + 8, 32), l4_len) + nh;
}

#endif
