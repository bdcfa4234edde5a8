/* The Internet checksum (RFC 1071) as inline functions Cython can call.
 * Sums are kept unfolded in 64 bits so that pieces (pseudo-header, TCP
 * header, payload) can be added in any order and folded once at the end. */
#ifndef FP_CSUM_H
#define FP_CSUM_H
#include <stdint.h>
#include <string.h>

/* Add n bytes at p to an unfolded sum. Bytes are taken as big-endian 16-bit
 * words; an odd last byte is padded with a zero (RFC 1071). The data need
 * not be aligned. 32-bit loads into a 64-bit accumulator: no carry is lost
 * before 2^32 additions, far beyond any packet. */
static inline uint64_t fp_csum_add(uint64_t sum, const uint8_t *p, size_t n) {
    uint64_t a = 0, b = 0;
    uint32_t w0, w1;
    /* Summing native-endian words and swapping the folded result once gives
     * the same ones'-complement sum as summing big-endian words (RFC 1071
     * §2(B), byte-order independence). */
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
