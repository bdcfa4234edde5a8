# ESP crypto (RFC 4303 / 4106 / 3602 / 2404 / 4868): per-SA key material and the
# per-worker batch crypto over two backends (intel-ipsec-mb, OpenSSL EVP).
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.string cimport memcpy
from fastpath.core.includes.openssl cimport (EVP_CIPHER, EVP_CIPHER_CTX, SHA_CTX, SHA256_CTX,
                                            OSSL_PARAM)
from fastpath.core.includes.ipsecmb cimport fp_mb_mgr, fp_mb_gcm_one
from fastpath.core.includes.fpbytes cimport (fp_st_be32, fp_st_be64, fp_st_esp_hdr,
                                             fp_esp_trailer, fp_pad_ok, fp_icv_eq)
cimport cython

cdef enum:
    KIND_GCM = 1
    KIND_CBC_HMAC = 2
    KIND_NULL_HMAC = 3
    HASH_NONE = 0
    HASH_SHA1 = 1
    HASH_SHA256 = 2
    BACKEND_OPENSSL = 1
    BACKEND_IPSECMB = 2
    MB_BURST = 128          # intel-ipsec-mb's largest burst
    MB_SORT = 256           # jobs grouped by SA at a time
    MB_MIN_BURST = 8        # shorter runs of one SA go through the job manager
    # fewer CBC/NULL jobs than this in a call go one by one (OpenSSL, or
    # stitched): below it, half-empty SIMD lanes lose (measured at 1-8 jobs;
    # 1400-byte CBC+HMAC seals break even near 5, opens near 4)
    MB_FEW_SEAL = 5
    MB_FEW_OPEN = 4

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
    # stitched AES-CBC + HMAC (fp_cbc_hmac.h) for the ipsec-mb backend's
    # lone packets: AES round keys, 16-byte aligned (NULL when not used)
    uint8_t *ni_keys
    int ni_rounds
    uint32_t ni_min_ct      # shorter ciphertexts go to OpenSSL (where it is faster)
    uint32_t hmac_in[8]     # chaining words after the ipad / opad block
    uint32_t hmac_out[8]    # (SHA-1: the first 5)

# One SA's OpenSSL cipher context in one worker (SAs are one-directional).
cdef struct fp_ossl:
    EVP_CIPHER_CTX *c
    uint8_t last[16]    # CBC: the context's running IV (last ciphertext block)

# One packet's crypto work, filled by the framing stage of the engine: 192
# bytes, three cache lines in a 64-byte aligned array. GCM, either way, and
# the engine's bookkeeping of a tunnel packet use the first two lines only;
# the third holds what HMAC, ESN and transport mode add.
cdef struct fp_job:
    fp_keys *keys
    uint8_t *esp        # start of the ESP header: start of the ICV's coverage (CBC IV at esp + 8)
    uint8_t *ct         # ciphertext (in place)
    uint8_t *icv        # where the ICV is / goes on the wire
    const uint8_t *aad  # GCM AAD: the ESP header itself, or scratch with ESN
    const uint8_t *rx   # decap: the ICV as received (in place, or scratch with ESN)
    uint32_t ct_len
    uint32_t aad_len
    int ok              # 1 when sealed / when the ICV matched
    uint8_t nonce[12]   # GCM: salt | explicit IV
    # engine bookkeeping carried from framing to verdict (not used by crypto)
    int32_t slot        # batch index
    int32_t sa          # SA index (selects per-worker cipher contexts)
    int32_t plen        # payload length (encap: the inner packet)
    int32_t run         # encap: index in the batch's sequence-number reservations
    uint64_t seq        # decap
    uint8_t tag[32]     # ICV as computed (decap; encap with ESN)
    # -- third line: HMAC, ESN, transport mode
    uint8_t *tag_out    # encap, HMAC: where the ICV is computed (icv, or tag with ESN)
    uint32_t auth_len   # bytes the ICV covers from esp (includes ESN seq_hi)
    int32_t esp_off     # offset of the ESP header in the packet
    int32_t nh_pos      # offset of the next-header byte that names ESP
    const uint8_t *hoa  # Home Address option's address, if any
    uint8_t scratch[32] # with ESN: the GCM AAD (12 bytes) / the HMAC ICV as received

cdef int keys_init(fp_keys *k, int kind, int hash, int icv_len, int iv_len, int align,
                   const uint8_t *enc_key, int enc_key_len, const uint8_t *auth_key,
                   int auth_key_len, const uint8_t *salt, fp_mb_mgr *mb) noexcept nogil
cdef void keys_free(fp_keys *k) noexcept nogil

@cython.final
cdef class CryptoWorker:
    cdef int backend
    cdef int capacity
    cdef fp_ossl *ctx              # per SA, lazily keyed, this worker only
    cdef OSSL_PARAM gcm_in[3]      # per-packet GCM parameters: IV (and tag on open)
    cdef OSSL_PARAM gcm_tag[2]
    cdef fp_mb_mgr *mb
    cdef void *gcm_ctx             # ipsec-mb GCM scratch (struct gcm_context_data)
    cdef void *burst               # ipsec-mb job array for bursts (MB_BURST jobs)
    cdef int seal(self, fp_job *jobs, int n) noexcept nogil
    cdef int open(self, fp_job *jobs, int n) noexcept nogil
    cdef int open_batched(self, fp_job *jobs, int n) noexcept nogil
    cdef fp_ossl *_ctx(self, fp_job *j, int enc) noexcept nogil
    cdef bint _cbc(self, fp_ossl *o, fp_job *j, int enc) noexcept nogil
    cdef bint _gcm(self, fp_job *j, int enc) noexcept nogil
    cdef int _ossl_seal(self, fp_job *jobs, int n) noexcept nogil
    cdef int _ossl_open(self, fp_job *jobs, int n) noexcept nogil
    cdef int _mb_run(self, fp_job *jobs, int n, int encrypt, bint defer_gcm) noexcept nogil
    cdef int _mb_burst(self, fp_job **jobs, int n, int encrypt) noexcept nogil
    cdef int _mb_jobs(self, fp_job **jobs, int n, int encrypt) noexcept nogil


cdef inline bint opens_alone(int backend, const fp_keys *k) noexcept nogil:
    """True for the jobs of an SA with these keys that a CryptoWorker of this
    backend leaves unopened in open_batched(), for mb_gcm_open(): AES-GCM on
    intel-ipsec-mb, a direct call per packet with no SIMD lanes to fill."""
    return backend == BACKEND_IPSECMB and k.kind == KIND_GCM


cdef inline void mb_gcm_open(fp_mb_mgr *mb, void *gcm_ctx, fp_job *j) noexcept nogil:
    """Open one AES-GCM job on intel-ipsec-mb: decrypt in place, then
    compare the tags in constant time (the library does not verify; the
    plaintext is not released unless j.ok)."""
    fp_mb_gcm_one(mb, 0, j.keys.mb_gcm, j.keys.enc_key_len, gcm_ctx, j.ct, j.ct_len,
                  j.nonce, j.aad, j.aad_len, j.tag)
    j.ok = fp_icv_eq(j.tag, j.rx, 16)   # (fp_mb_gcm_one computes 16-byte tags)


cdef inline int32_t esp_frame_gcm(fp_job *j, fp_keys *k, uint8_t *p, int32_t n,
                                  uint32_t spi, uint64_t seq, bint esn, uint8_t next_header,
                                  const uint8_t *iv) noexcept nogil:
    """esp_frame_out() for an AES-GCM SA (RFC 4106): explicit IV = the
    sequence number unless `iv` (8 bytes) overrides it; the AAD is the ESP
    header itself without ESN."""
    cdef int32_t padded = (n + 2 + 3) & ~3
    cdef uint8_t *esp = p - 16
    j.keys = k
    j.esp = esp
    j.ct = p
    j.ct_len = padded
    j.icv = p + padded
    fp_st_esp_hdr(esp, spi, <uint32_t>seq)
    memcpy(j.nonce, k.salt, 4)
    if iv != NULL:
        memcpy(esp + 8, iv, 8)
        memcpy(j.nonce + 4, iv, 8)
    else:                                # explicit IV = sequence number: unique under the key
        fp_st_be64(esp + 8, seq)
        fp_st_be64(j.nonce + 4, seq)
    fp_esp_trailer(p, n, padded - n - 2, next_header)     # padding 1, 2, 3, ...
    if esn:
        fp_st_be32(j.scratch, spi)
        fp_st_be64(j.scratch + 4, seq)
        j.aad = j.scratch
        j.aad_len = 12
    else:
        j.aad = esp                      # SPI | sequence number, as on the wire
        j.aad_len = 8
    return 16 + padded + 16


cdef inline int32_t esp_frame_out(fp_job *j, fp_keys *k, uint8_t *p, int32_t n,
                                  uint32_t spi, uint64_t seq, bint esn, uint8_t next_header,
                                  const uint8_t *iv) noexcept nogil:
    """Frame the payload p[0:n] as ESP in place (RFC 4303 §2): header and IV
    before p, trailer and ICV room after it (16 bytes after p + n are
    written); fill the job for seal(). `iv` is the CBC IV (16 bytes), or for
    GCM an explicit-IV override (8 bytes; NULL: the sequence number).
    Returns the ESP length (header .. ICV)."""
    cdef int32_t padded = (n + 2 + k.align - 1) & ~(k.align - 1)
    cdef int32_t hl = 8 + k.iv_len
    cdef uint8_t *esp = p - hl
    if k.kind == KIND_GCM:
        return esp_frame_gcm(j, k, p, n, spi, seq, esn, next_header, iv)
    j.keys = k
    j.ct = p
    j.ct_len = padded
    j.icv = p + padded
    j.esp = esp
    j.tag_out = j.icv
    j.auth_len = hl + padded
    fp_st_esp_hdr(esp, spi, <uint32_t>seq)
    fp_esp_trailer(p, n, padded - n - 2, next_header)     # padding 1, 2, 3, ...
    if k.kind == KIND_CBC_HMAC:
        memcpy(esp + 8, iv, 16)
    if esn:                              # the ICV covers seq_hi, placed where the ICV goes
        fp_st_be32(j.icv, <uint32_t>(seq >> 32))
        j.auth_len += 4
        j.tag_out = j.tag                # computed apart, then copied over seq_hi
    return hl + padded + k.icv_len


cdef inline int32_t esp_ct_len(const fp_keys *k, int32_t esp_len) noexcept nogil:
    """Ciphertext length of a received ESP packet, or -1 when it cannot be one."""
    cdef int32_t ct_len = esp_len - 8 - k.iv_len - k.icv_len
    if ct_len < 2 or (ct_len & (k.align - 1)) != 0:
        return -1
    return ct_len


cdef inline void esp_frame_in(fp_job *j, fp_keys *k, uint8_t *esp, int32_t ct_len,
                              uint64_t seq, bint esn) noexcept nogil:
    """Fill the job for open() from a received ESP packet (ct_len from esp_ct_len)."""
    j.keys = k
    j.ok = 0                             # fails closed until a backend opens it
    j.seq = seq
    j.esp = esp
    j.ct = esp + 8 + k.iv_len
    j.ct_len = ct_len
    j.rx = j.ct + ct_len                 # the ICV as received
    if k.kind == KIND_GCM:              # (GCM needs no iv, icv, auth_len)
        memcpy(j.nonce, k.salt, 4)
        memcpy(j.nonce + 4, esp + 8, 8)
        if esn:
            memcpy(j.scratch, esp, 4)
            fp_st_be32(j.scratch + 4, <uint32_t>(seq >> 32))
            memcpy(j.scratch + 8, esp + 4, 4)
            j.aad = j.scratch
            j.aad_len = 12
        else:
            j.aad = esp
            j.aad_len = 8
        return
    j.icv = j.ct + ct_len
    j.auth_len = 8 + k.iv_len + ct_len
    if esn:
        memcpy(j.scratch, j.icv, k.icv_len)
        j.rx = j.scratch
        fp_st_be32(j.icv, <uint32_t>(seq >> 32))
        j.auth_len += 4


cdef inline int32_t esp_trailer(const fp_job *j, uint8_t *next_header) noexcept nogil:
    """After a successful open(): check the padding (1, 2, 3, ...) and return
    the payload length, or -1 for bad padding."""
    cdef int32_t padlen = j.ct[j.ct_len - 2]
    cdef int32_t plen
    if padlen + 2 > <int32_t>j.ct_len:
        return -1
    plen = j.ct_len - 2 - padlen
    if not fp_pad_ok(j.ct + plen, padlen):
        return -1
    next_header[0] = j.ct[j.ct_len - 1]
    return plen
