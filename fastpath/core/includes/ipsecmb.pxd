# C declarations of includes/fp_mb.h, our shim over intel-ipsec-mb.
from libc.stdint cimport uint8_t, uint64_t

cdef extern from "fp_mb.h" nogil:
    ctypedef struct fp_mb_mgr
    ctypedef struct fp_mb_job
    int fp_mb_available()
    fp_mb_mgr *fp_mb_new(int *arch_out)
    void fp_mb_free(fp_mb_mgr *m)
    const char *fp_mb_arch_name(int arch)
    size_t fp_mb_gcm_key_size()
    void fp_mb_aes_keyexp(fp_mb_mgr *m, const uint8_t *key, int key_len, void *enc, void *dec)
    void fp_mb_gcm_pre(fp_mb_mgr *m, const uint8_t *key, int key_len, void *gkd)
    void fp_mb_hmac_pads(fp_mb_mgr *m, int sha256, const uint8_t *key, int key_len,
                         uint8_t *ipad_state, uint8_t *opad_state)
    fp_mb_job *fp_mb_next(fp_mb_mgr *m)
    fp_mb_job *fp_mb_submit(fp_mb_mgr *m)
    fp_mb_job *fp_mb_completed(fp_mb_mgr *m)
    fp_mb_job *fp_mb_flush(fp_mb_mgr *m)
    int fp_mb_job_ok(const fp_mb_job *j)
    void *fp_mb_job_user(const fp_mb_job *j)
    void fp_mb_job_gcm(fp_mb_job *j, int encrypt, const void *gkd, int key_len,
                       uint8_t *data, uint64_t len, const uint8_t *iv12,
                       const uint8_t *aad, uint64_t aad_len, uint8_t *tag, void *user)
    void fp_mb_job_cbc_hmac(fp_mb_job *j, int encrypt, int sha256,
                            const void *enc_keys, const void *dec_keys, int key_len,
                            uint8_t *start, uint64_t ct_off, uint64_t ct_len,
                            uint64_t hash_len, const uint8_t *iv,
                            const uint8_t *ipad, const uint8_t *opad,
                            uint8_t *tag, int tag_len, void *user)
    size_t fp_mb_gcm_ctx_size()
    void fp_mb_gcm_one(fp_mb_mgr *m, int encrypt, const void *gkd, int key_len, void *ctx,
                       uint8_t *data, uint64_t len, const uint8_t *iv12,
                       const uint8_t *aad, uint64_t aad_len, uint8_t *tag)
    size_t fp_mb_job_size()
    fp_mb_job *fp_mb_burst_at(void *arr, int i)
    int fp_mb_cipher_burst(fp_mb_mgr *m, void *arr, int n, int encrypt, int key_len)
    int fp_mb_hash_burst(fp_mb_mgr *m, void *arr, int n, int sha256)
