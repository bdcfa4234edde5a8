# C declarations of includes/fp_bytes.h: byte-order stores, ESP padding, ICV compare.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

cdef extern from "fp_bytes.h" nogil:
    void fp_st_be32(uint8_t *p, uint32_t v)
    void fp_st_be16(uint8_t *p, uint32_t v)
    void fp_st_esp_hdr(uint8_t *p, uint32_t spi, uint32_t seq)
    void fp_st_be64(uint8_t *p, uint64_t v)
    uint32_t fp_ld_be32(const uint8_t *p)
    uint16_t fp_ld_be16(const uint8_t *p)
    uint64_t fp_ld_u64(const uint8_t *p)
    bint fp_eq128(const uint8_t *p, uint64_t hi, uint64_t lo)
    void fp_copy40(uint8_t *dst, const uint8_t *src)
    void fp_esp_trailer(uint8_t *p, int32_t n, int32_t pad, uint8_t nh)
    bint fp_pad_ok(const uint8_t *p, int32_t padlen)
    bint fp_icv_eq(const uint8_t *a, const uint8_t *b, int n)
