# C declarations of the parts of OpenSSL 3 libcrypto the engine uses.
from libc.stdint cimport uint8_t

cdef extern from "openssl/params.h" nogil:
    ctypedef struct OSSL_PARAM:
        const char *key
        unsigned int data_type
        void *data
        size_t data_size
        size_t return_size
    OSSL_PARAM OSSL_PARAM_construct_octet_string(const char *key, void *buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_uint(const char *key, unsigned int *buf)
    OSSL_PARAM OSSL_PARAM_construct_end()

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER
    ctypedef struct EVP_CIPHER_CTX
    EVP_CIPHER *EVP_CIPHER_fetch(void *libctx, const char *algorithm, const char *properties)
    int EVP_CipherInit_ex2(EVP_CIPHER_CTX *c, const EVP_CIPHER *cipher, const uint8_t *key,
                           const uint8_t *iv, int enc, const OSSL_PARAM *params)
    int EVP_CIPHER_CTX_set_params(EVP_CIPHER_CTX *c, const OSSL_PARAM *params)
    int EVP_CIPHER_CTX_get_params(EVP_CIPHER_CTX *c, OSSL_PARAM *params)
    int EVP_Cipher(EVP_CIPHER_CTX *c, uint8_t *out, const uint8_t *inp, unsigned int inl)
    const EVP_CIPHER *EVP_aes_128_gcm()
    const EVP_CIPHER *EVP_aes_256_gcm()
    const EVP_CIPHER *EVP_aes_128_cbc()
    const EVP_CIPHER *EVP_aes_256_cbc()
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *c)
    int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *c, int pad)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *c, int type, int arg, void *ptr)
    int EVP_CipherInit_ex(EVP_CIPHER_CTX *c, const EVP_CIPHER *cipher, void *impl,
                          const uint8_t *key, const uint8_t *iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX *c, uint8_t *out, int *outl, const uint8_t *inp, int inl)
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX *c, uint8_t *out, int *outl)
    int EVP_CTRL_GCM_GET_TAG
    int EVP_CTRL_GCM_SET_TAG

cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(uint8_t *buf, int num)

cdef extern from "openssl/crypto.h" nogil:
    int CRYPTO_memcmp(const void *a, const void *b, size_t n)

# The low-level SHA API is deprecated in OpenSSL 3 but is the only way to keep
# a precomputed HMAC ipad/opad state and copy it per packet as a plain struct
# (EVP_MD_CTX_copy costs an allocation-heavy provider call per packet).
cdef extern from "openssl/sha.h" nogil:
    ctypedef struct SHA_CTX:
        unsigned int h0, h1, h2, h3, h4     # the chaining words (read after a whole block)
    ctypedef struct SHA256_CTX:
        unsigned int h[8]                   # the chaining words (read after a whole block)
    int SHA1_Init(SHA_CTX *c)
    int SHA1_Update(SHA_CTX *c, const void *data, size_t len)
    int SHA1_Final(uint8_t *md, SHA_CTX *c)
    int SHA256_Init(SHA256_CTX *c)
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t len)
    int SHA256_Final(uint8_t *md, SHA256_CTX *c)
