/* Byte-level helpers of the ESP fast path: big-endian stores/loads with one
 * instruction, the default padding pattern (RFC 4303 §2.4: 1, 2, 3, ...)
 * written and checked a word at a time, and a constant-time ICV compare. */
#ifndef FP_BYTES_H
#define FP_BYTES_H
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define FP_BE16(x) ((uint16_t)(x))
#define FP_BE32(x) ((uint32_t)(x))
#define FP_BE64(x) ((uint64_t)(x))
#else
#define FP_BE16(x) __builtin_bswap16((uint16_t)(x))
#define FP_BE32(x) __builtin_bswap32((uint32_t)(x))
#define FP_BE64(x) __builtin_bswap64((uint64_t)(x))
#endif

static inline void fp_st_be16(uint8_t *p, uint32_t v) { uint16_t w = FP_BE16(v); memcpy(p, &w, 2); }
static inline void fp_st_be32(uint8_t *p, uint32_t v) { v = FP_BE32(v); memcpy(p, &v, 4); }
static inline void fp_st_be64(uint8_t *p, uint64_t v) { v = FP_BE64(v); memcpy(p, &v, 8); }
static inline uint32_t fp_ld_be32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return FP_BE32(v); }
static inline uint16_t fp_ld_be16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return FP_BE16(v); }
/* ESP header: SPI and the low half of the sequence number, in one store. */
static inline void fp_st_esp_hdr(uint8_t *p, uint32_t spi, uint32_t seq) {
    uint32_t w[2] = { FP_BE32(spi), FP_BE32(seq) };
    memcpy(p, w, 8);
}
static inline uint64_t fp_ld_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
/* Two 8-byte halves of a 16-byte address, equal to (hi, lo)? */
static inline int fp_eq128(const uint8_t *p, uint64_t hi, uint64_t lo) {
    return ((fp_ld_u64(p) ^ hi) | (fp_ld_u64(p + 8) ^ lo)) == 0;
}
static inline void fp_copy40(uint8_t *dst, const uint8_t *src) { memcpy(dst, src, 40); }

/* fp_pad_seq[i] = i + 1: the padding bytes, and 8 spare bytes for word reads. */
static const uint8_t fp_pad_seq[264] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 173, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0 };

/* ESP trailer after an n-byte payload at p: padding 1..pad (pad <= 15),
 * pad length, next header. Writes 16 bytes from p + n (the slot's tailroom
 * holds them; bytes past the trailer are then overwritten by the ICV or
 * lie outside the packet). */
/* The whole trailer for next header 41 (tunnel mode) in 16 bytes, one row per
 * pad length 0..14 (pad 15 needs 17 bytes: the generic path). */
static const uint8_t fp_trailer41[15][16] = {
    { 0, 41, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
    { 1, 1, 41, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
    { 1, 2, 2, 41, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
    { 1, 2, 3, 3, 41, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
    { 1, 2, 3, 4, 4, 41, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
    { 1, 2, 3, 4, 5, 5, 41, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
    { 1, 2, 3, 4, 5, 6, 6, 41, 9, 10, 11, 12, 13, 14, 15, 16 },
    { 1, 2, 3, 4, 5, 6, 7, 7, 41, 10, 11, 12, 13, 14, 15, 16 },
    { 1, 2, 3, 4, 5, 6, 7, 8, 8, 41, 11, 12, 13, 14, 15, 16 },
    { 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 41, 12, 13, 14, 15, 16 },
    { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 41, 13, 14, 15, 16 },
    { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 41, 14, 15, 16 },
    { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 12, 41, 15, 16 },
    { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 13, 41, 16 },
    { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 14, 41 },
};
static inline void fp_esp_trailer(uint8_t *p, int32_t n, int32_t pad, uint8_t nh) {
    if (nh == 41 && pad < 15) {
        memcpy(p + n, fp_trailer41[pad], 16);
        return;
    }
    memcpy(p + n, fp_pad_seq, 16);
    p[n + pad] = (uint8_t)pad;
    p[n + pad + 1] = nh;
}

/* p[0 .. padlen) == 1, 2, ..., padlen? (padlen <= 255). Reads up to 7 bytes
 * past p + padlen (the pad length, next header and ICV follow). */
static inline int fp_pad_ok(const uint8_t *p, int32_t padlen) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t d = 0;
    int32_t x = 0;
    for (; x + 8 <= padlen; x += 8)
        d |= fp_ld_u64(p + x) ^ fp_ld_u64(fp_pad_seq + x);
    if (x < padlen)
        d |= (fp_ld_u64(p + x) ^ fp_ld_u64(fp_pad_seq + x)) & (~(uint64_t)0 >> (8 * (8 - (padlen - x))));
    return d == 0;
#else
    int32_t x;
    for (x = 0; x < padlen; x++)
        if (p[x] != (uint8_t)(x + 1)) return 0;
    return 1;
#endif
}

/* Constant-time equality of two ICVs (n = 4..32, a public length): no
 * branch or early exit depends on their bytes. */
static inline int fp_icv_eq(const uint8_t *a, const uint8_t *b, int n) {
    uint64_t d = 0;
    int i = 0;
    uint32_t a4, b4;
    /* the empty asm after each step keeps the compiler from turning the
     * accumulation into early exits */
    for (; i + 8 <= n; i += 8) {
        d |= fp_ld_u64(a + i) ^ fp_ld_u64(b + i);
        __asm__ volatile("" : "+r"(d));
    }
    for (; i + 4 <= n; i += 4) {
        memcpy(&a4, a + i, 4);
        memcpy(&b4, b + i, 4);
        d |= a4 ^ b4;
        __asm__ volatile("" : "+r"(d));
    }
    for (; i < n; i++) {
        d |= (uint64_t)(a[i] ^ b[i]);
        __asm__ volatile("" : "+r"(d));
    }
    return d == 0;
}
#endif
