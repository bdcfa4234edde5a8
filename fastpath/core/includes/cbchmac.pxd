# C declarations of includes/fp_cbc_hmac.h: stitched AES-CBC + HMAC-SHA1/SHA-256 sealing.
from libc.stdint cimport uint8_t, uint32_t

cdef extern from "fp_cbc_hmac.h" nogil:
    int fp_ni_available()
    int fp_ni_aes_keys(const uint8_t *key, int key_len, void *out)
    void fp_cbc_hmac_seal(const void *round_keys, int rounds, const uint8_t *iv,
                          uint8_t *ct, size_t ct_len, const uint8_t *auth, size_t auth_len,
                          const uint32_t *ipad, const uint32_t *opad, uint8_t *mac, int sha256)
