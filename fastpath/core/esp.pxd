# ESP crypto (RFC 4303 / 4106 / 3602 / 2404 / 4868): per-SA key material and the
# per-worker batch crypto over two backends (intel-ipsec-mb, OpenSSL EVP).
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from fastpath.core.includes.openssl cimport EVP_CIPHER, EVP_CIPHER_CTX, SHA_CTX, SHA256_CTX
from fastpath.core.includes.ipsecmb cimport fp_mb_mgr

cdef enum:
    KIND_GCM = 1
    KIND_CBC_HMAC = 2
    KIND_NULL_HMAC = 3
    HASH_NONE = 0
    HASH_SHA1 = 1
    HASH_SHA256 = 2
    BACKEND_OPENSSL = 1
    BACKEND_IPSECMB = 2

# Key material of one SA: set up once, read-only afterwards, shared by workers.
cdef struct fp_keys:
    int kind
    int hash
    int icv_len
    int iv_len
    int align
    int enc_key_len
    uint8_t enc_key[32]
    uint8_t salt[4]
    const EVP_CIPHER *cipher
    SHA_CTX sha1_ipad
    SHA_CTX sha1_opad
    SHA256_CTX sha256_ipad
    SHA256_CTX sha256_opad
    # intel-ipsec-mb material, 64-byte aligned (NULL when that backend is off)
    uint8_t *mb_enc
    uint8_t *mb_dec
    void *mb_gcm
    uint8_t *mb_ipad
    uint8_t *mb_opad

# One packet's crypto work, filled by the framing stage of the engine.
cdef struct fp_job:
    int32_t slot        # batch index
    int32_t sa          # SA index (selects per-worker cipher contexts)
    fp_keys *keys
    uint8_t *esp        # start of the ESP header: start of the ICV's coverage
    uint32_t auth_len   # bytes the ICV covers from esp (includes ESN seq_hi)
    uint8_t *ct         # ciphertext (in place)
    uint32_t ct_len
    uint8_t *icv        # where the ICV is / goes on the wire
    uint8_t *iv         # CBC IV on the wire
    uint8_t nonce[12]   # GCM: salt | explicit IV
    uint8_t aad[12]
    uint32_t aad_len
    uint8_t rx_icv[32]  # ICV as received (decap)
    uint8_t tag[32]     # ICV as computed
    int ok              # decap: 1 when the ICV matched
    # engine bookkeeping carried from framing to verdict (not used by crypto)
    uint64_t seq
    int32_t esp_off     # offset of the ESP header in the packet
    int32_t nh_pos      # offset of the next-header byte that names ESP
    const uint8_t *hoa  # Home Address option's address, if any

cdef int keys_init(fp_keys *k, int kind, int hash, int icv_len, int iv_len, int align,
                   const uint8_t *enc_key, int enc_key_len, const uint8_t *auth_key,
                   int auth_key_len, const uint8_t *salt, fp_mb_mgr *mb) noexcept nogil
cdef void keys_free(fp_keys *k) noexcept nogil

cdef class CryptoWorker:
    cdef int backend
    cdef int capacity
    cdef EVP_CIPHER_CTX **ctx      # per SA, lazily keyed, this worker only
    cdef fp_mb_mgr *mb
    cdef void seal(self, fp_job *jobs, int n) noexcept nogil
    cdef void open(self, fp_job *jobs, int n) noexcept nogil
    cdef EVP_CIPHER_CTX *_ctx(self, fp_job *j, int enc) noexcept nogil
    cdef void _ossl_seal(self, fp_job *jobs, int n) noexcept nogil
    cdef void _ossl_open(self, fp_job *jobs, int n) noexcept nogil
    cdef void _mb_run(self, fp_job *jobs, int n, int encrypt) noexcept nogil
