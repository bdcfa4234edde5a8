/* A thin shim over Intel's multi-buffer IPsec library (intel-ipsec-mb 1.x).
 * It hides the job struct's nested unions from Cython and lets the build work
 * without the library: with FP_HAVE_IPSECMB undefined every call fails cleanly
 * and fp_mb_available() is 0, so the OpenSSL backend is used.
 * Rules we follow (../shared/notes/ipsec-mb.md): one manager per thread; key
 * data prepared by a manager of the same architecture; 64-byte aligned keys;
 * flush after every batch; decryption does not verify (we compare tags). */
#ifndef FP_MB_H
#define FP_MB_H
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#ifdef FP_HAVE_IPSECMB
#define NO_COMPAT_IMB_API_053
#include <intel-ipsec-mb.h>
typedef IMB_MGR fp_mb_mgr;
typedef IMB_JOB fp_mb_job;

static inline int fp_mb_available(void) { return 1; }

static inline fp_mb_mgr *fp_mb_new(int *arch_out) {
    IMB_ARCH arch = IMB_ARCH_NONE;
    IMB_MGR *m = alloc_mb_mgr(0);
    if (!m) return NULL;
    init_mb_mgr_auto(m, &arch);
    if (imb_get_errno(m) != 0 || arch == IMB_ARCH_NONE) { free_mb_mgr(m); return NULL; }
    if (arch_out) *arch_out = (int)arch;
    return m;
}
static inline void fp_mb_free(fp_mb_mgr *m) { if (m) free_mb_mgr(m); }
static inline const char *fp_mb_arch_name(int arch) {
    switch (arch) {
    case IMB_ARCH_NOAESNI: return "noaesni";
    case IMB_ARCH_SSE: return "sse";
    case IMB_ARCH_AVX: return "avx";
    case IMB_ARCH_AVX2: return "avx2";
    case IMB_ARCH_AVX512: return "avx512";
    default: return "none";
    }
}
static inline size_t fp_mb_gcm_key_size(void) { return sizeof(struct gcm_key_data); }

static inline void fp_mb_aes_keyexp(fp_mb_mgr *m, const uint8_t *key, int key_len, void *enc, void *dec) {
    if (key_len == 16) IMB_AES_KEYEXP_128(m, key, enc, dec);
    else IMB_AES_KEYEXP_256(m, key, enc, dec);
}
static inline void fp_mb_gcm_pre(fp_mb_mgr *m, const uint8_t *key, int key_len, void *gkd) {
    if (key_len == 16) IMB_AES128_GCM_PRE(m, key, (struct gcm_key_data *)gkd);
    else IMB_AES256_GCM_PRE(m, key, (struct gcm_key_data *)gkd);
}
/* HMAC ipad/opad: the hash state after one block of key^0x36 / key^0x5c. */
static inline void fp_mb_hmac_pads(fp_mb_mgr *m, int sha256, const uint8_t *key, int key_len,
                                   uint8_t *ipad_state, uint8_t *opad_state) {
    uint8_t blk[64];
    int i;
    for (i = 0; i < 64; i++) blk[i] = (i < key_len ? key[i] : 0) ^ 0x36;
    if (sha256) IMB_SHA256_ONE_BLOCK(m, blk, ipad_state); else IMB_SHA1_ONE_BLOCK(m, blk, ipad_state);
    for (i = 0; i < 64; i++) blk[i] = (i < key_len ? key[i] : 0) ^ 0x5c;
    if (sha256) IMB_SHA256_ONE_BLOCK(m, blk, opad_state); else IMB_SHA1_ONE_BLOCK(m, blk, opad_state);
    memset(blk, 0, sizeof blk);
}

static inline fp_mb_job *fp_mb_next(fp_mb_mgr *m) { return IMB_GET_NEXT_JOB(m); }
/* The engine validates every length before it builds a job (CBC lengths are
 * whole blocks, pointers inside the slot), so the unchecked submit is safe;
 * define FP_MB_CHECK_JOBS to have the library validate each job again. */
#ifdef FP_MB_CHECK_JOBS
static inline fp_mb_job *fp_mb_submit(fp_mb_mgr *m) { return IMB_SUBMIT_JOB(m); }
#else
static inline fp_mb_job *fp_mb_submit(fp_mb_mgr *m) { return IMB_SUBMIT_JOB_NOCHECK(m); }
#endif
static inline fp_mb_job *fp_mb_completed(fp_mb_mgr *m) { return IMB_GET_COMPLETED_JOB(m); }
static inline fp_mb_job *fp_mb_flush(fp_mb_mgr *m) { return IMB_FLUSH_JOB(m); }
static inline int fp_mb_job_ok(const fp_mb_job *j) { return j->status == IMB_STATUS_COMPLETED; }
static inline void *fp_mb_job_user(const fp_mb_job *j) { return j->user_data; }

/* AES-GCM (RFC 4106): cipher and GMAC over the same region, AAD apart. */
static inline void fp_mb_job_gcm(fp_mb_job *j, int encrypt, const void *gkd, int key_len,
                                 uint8_t *data, uint64_t len, const uint8_t *iv12,
                                 const uint8_t *aad, uint64_t aad_len, uint8_t *tag, void *user) {
    j->cipher_mode = IMB_CIPHER_GCM;
    j->hash_alg = IMB_AUTH_AES_GMAC;
    j->cipher_direction = encrypt ? IMB_DIR_ENCRYPT : IMB_DIR_DECRYPT;
    j->chain_order = encrypt ? IMB_ORDER_CIPHER_HASH : IMB_ORDER_HASH_CIPHER;
    j->enc_keys = gkd;
    j->dec_keys = gkd;
    j->key_len_in_bytes = (uint64_t)key_len;
    j->src = data;
    j->dst = data;
    j->cipher_start_src_offset_in_bytes = 0;
    j->msg_len_to_cipher_in_bytes = len;
    j->hash_start_src_offset_in_bytes = 0;
    j->msg_len_to_hash_in_bytes = len;
    j->iv = iv12;
    j->iv_len_in_bytes = 12;
    j->u.GCM.aad = aad;
    j->u.GCM.aad_len_in_bytes = aad_len;
    j->auth_tag_output = tag;
    j->auth_tag_output_len_in_bytes = 16;
    j->user_data = user;
}

/* AES-CBC + HMAC (or NULL cipher + HMAC when key_len == 0). The hash covers
 * [start, start+hash_len); the cipher covers [start+ct_off, +ct_len), in place. */
static inline void fp_mb_job_cbc_hmac(fp_mb_job *j, int encrypt, int sha256,
                                      const void *enc_keys, const void *dec_keys, int key_len,
                                      uint8_t *start, uint64_t ct_off, uint64_t ct_len,
                                      uint64_t hash_len, const uint8_t *iv,
                                      const uint8_t *ipad, const uint8_t *opad,
                                      uint8_t *tag, int tag_len, void *user) {
    j->cipher_mode = key_len ? IMB_CIPHER_CBC : IMB_CIPHER_NULL;
    j->hash_alg = sha256 ? IMB_AUTH_HMAC_SHA_256 : IMB_AUTH_HMAC_SHA_1;
    j->cipher_direction = encrypt ? IMB_DIR_ENCRYPT : IMB_DIR_DECRYPT;
    j->chain_order = encrypt ? IMB_ORDER_CIPHER_HASH : IMB_ORDER_HASH_CIPHER;
    j->enc_keys = enc_keys;
    j->dec_keys = dec_keys;
    j->key_len_in_bytes = key_len ? (uint64_t)key_len : 0;
    j->src = start;
    j->dst = start + ct_off;
    j->cipher_start_src_offset_in_bytes = ct_off;
    j->msg_len_to_cipher_in_bytes = key_len ? ct_len : 0;
    j->hash_start_src_offset_in_bytes = 0;
    j->msg_len_to_hash_in_bytes = hash_len;
    j->iv = iv;
    j->iv_len_in_bytes = key_len ? 16 : 0;
    j->u.HMAC._hashed_auth_key_xor_ipad = ipad;
    j->u.HMAC._hashed_auth_key_xor_opad = opad;
    j->auth_tag_output = tag;
    j->auth_tag_output_len_in_bytes = (uint64_t)tag_len;
    j->user_data = user;
}

/* -- direct AES-GCM calls: faster than the job manager for GCM (no lanes to fill) */
static inline size_t fp_mb_gcm_ctx_size(void) { return sizeof(struct gcm_context_data); }
static inline void fp_mb_gcm_one(fp_mb_mgr *m, int encrypt, const void *gkd, int key_len, void *ctx,
                                 uint8_t *data, uint64_t len, const uint8_t *iv12,
                                 const uint8_t *aad, uint64_t aad_len, uint8_t *tag) {
    const struct gcm_key_data *k = (const struct gcm_key_data *)gkd;
    struct gcm_context_data *c = (struct gcm_context_data *)ctx;
    if (key_len == 16) {
        if (encrypt) IMB_AES128_GCM_ENC(m, k, c, data, data, len, iv12, aad, aad_len, tag, 16);
        else IMB_AES128_GCM_DEC(m, k, c, data, data, len, iv12, aad, aad_len, tag, 16);
    } else {
        if (encrypt) IMB_AES256_GCM_ENC(m, k, c, data, data, len, iv12, aad, aad_len, tag, 16);
        else IMB_AES256_GCM_DEC(m, k, c, data, data, len, iv12, aad, aad_len, tag, 16);
    }
}

/* -- CBC + HMAC as bursts: one cipher burst, one hash burst over an array of
 * jobs that share key size and hash (the lanes stay full; no job queue). */
static inline size_t fp_mb_job_size(void) { return sizeof(IMB_JOB); }
static inline fp_mb_job *fp_mb_burst_at(void *arr, int i) { return ((IMB_JOB *)arr) + i; }
static inline int fp_mb_cipher_burst(fp_mb_mgr *m, void *arr, int n, int encrypt, int key_len) {
    return (int)IMB_SUBMIT_CIPHER_BURST_NOCHECK(m, (IMB_JOB *)arr, (uint32_t)n, IMB_CIPHER_CBC,
                                                encrypt ? IMB_DIR_ENCRYPT : IMB_DIR_DECRYPT,
                                                key_len == 16 ? IMB_KEY_128_BYTES : IMB_KEY_256_BYTES);
}
static inline int fp_mb_hash_burst(fp_mb_mgr *m, void *arr, int n, int sha256) {
    return (int)IMB_SUBMIT_HASH_BURST_NOCHECK(m, (IMB_JOB *)arr, (uint32_t)n,
                                              sha256 ? IMB_AUTH_HMAC_SHA_256 : IMB_AUTH_HMAC_SHA_1);
}

#else  /* built without intel-ipsec-mb: the backend reports itself missing */
typedef struct fp_mb_mgr fp_mb_mgr;
typedef struct fp_mb_job fp_mb_job;
static inline int fp_mb_available(void) { return 0; }
static inline fp_mb_mgr *fp_mb_new(int *arch_out) { (void)arch_out; return NULL; }
static inline void fp_mb_free(fp_mb_mgr *m) { (void)m; }
static inline const char *fp_mb_arch_name(int arch) { (void)arch; return "none"; }
static inline size_t fp_mb_gcm_key_size(void) { return 0; }
static inline void fp_mb_aes_keyexp(fp_mb_mgr *m, const uint8_t *k, int l, void *e, void *d) { (void)m; (void)k; (void)l; (void)e; (void)d; }
static inline void fp_mb_gcm_pre(fp_mb_mgr *m, const uint8_t *k, int l, void *g) { (void)m; (void)k; (void)l; (void)g; }
static inline void fp_mb_hmac_pads(fp_mb_mgr *m, int s, const uint8_t *k, int l, uint8_t *i, uint8_t *o) { (void)m; (void)s; (void)k; (void)l; (void)i; (void)o; }
static inline fp_mb_job *fp_mb_next(fp_mb_mgr *m) { (void)m; return NULL; }
static inline fp_mb_job *fp_mb_submit(fp_mb_mgr *m) { (void)m; return NULL; }
static inline fp_mb_job *fp_mb_completed(fp_mb_mgr *m) { (void)m; return NULL; }
static inline fp_mb_job *fp_mb_flush(fp_mb_mgr *m) { (void)m; return NULL; }
static inline int fp_mb_job_ok(const fp_mb_job *j) { (void)j; return 0; }
static inline void *fp_mb_job_user(const fp_mb_job *j) { (void)j; return NULL; }
static inline void fp_mb_job_gcm(fp_mb_job *j, int e, const void *g, int l, uint8_t *d, uint64_t n, const uint8_t *iv, const uint8_t *a, uint64_t al, uint8_t *t, void *u) { (void)j; (void)e; (void)g; (void)l; (void)d; (void)n; (void)iv; (void)a; (void)al; (void)t; (void)u; }
static inline void fp_mb_job_cbc_hmac(fp_mb_job *j, int e, int s, const void *ek, const void *dk, int l, uint8_t *st, uint64_t co, uint64_t cl, uint64_t hl, const uint8_t *iv, const uint8_t *ip, const uint8_t *op, uint8_t *t, int tl, void *u) { (void)j; (void)e; (void)s; (void)ek; (void)dk; (void)l; (void)st; (void)co; (void)cl; (void)hl; (void)iv; (void)ip; (void)op; (void)t; (void)tl; (void)u; }
static inline size_t fp_mb_gcm_ctx_size(void) { return 0; }
static inline void fp_mb_gcm_one(fp_mb_mgr *m, int e, const void *g, int l, void *c, uint8_t *d, uint64_t n, const uint8_t *iv, const uint8_t *a, uint64_t al, uint8_t *t) { (void)m; (void)e; (void)g; (void)l; (void)c; (void)d; (void)n; (void)iv; (void)a; (void)al; (void)t; }
static inline size_t fp_mb_job_size(void) { return 0; }
static inline fp_mb_job *fp_mb_burst_at(void *arr, int i) { (void)arr; (void)i; return NULL; }
static inline int fp_mb_cipher_burst(fp_mb_mgr *m, void *a, int n, int e, int l) { (void)m; (void)a; (void)n; (void)e; (void)l; return 0; }
static inline int fp_mb_hash_burst(fp_mb_mgr *m, void *a, int n, int s) { (void)m; (void)a; (void)n; (void)s; return 0; }
#endif
#endif
