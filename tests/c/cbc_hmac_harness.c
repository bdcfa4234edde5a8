/* fp_cbc_hmac_seal (fastpath/core/includes/fp_cbc_hmac.h) against OpenSSL's
 * EVP AES-CBC + HMAC(SHA-1 / SHA-256), over every layout the routine promises to
 * handle, not only those ESP produces: ESP spans (8-byte header, 16-byte IV,
 * ciphertext, with ESN 4 bytes of seq_hi), and generic spans where the
 * hashed length mod 64 takes every value (one or two final hash blocks).
 * Each span ends at the end of its malloc block, so an AddressSanitizer
 * build catches any read past it. Run by tests/test_cbc_hmac.py; any
 * argument = quick mode. Exit 0 = all equal, 1 = a mismatch, 2 = no CPU
 * support. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include "fp_cbc_hmac.h"

static uint64_t rs = 0x1234567;
static uint8_t rb(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (uint8_t)(rs >> 24); }
static void rfill(uint8_t *p, size_t n) { for (size_t i = 0; i < n; i++) p[i] = rb(); }

static long fails = 0, runs = 0;

static int sha256 = 0;        /* the hash under test */

static void pads(const uint8_t *key, int klen, uint32_t in[8], uint32_t out[8]) {
    uint8_t blk[64];
    for (int pass = 0; pass < 2; pass++) {
        uint32_t *h = pass ? out : in;
        for (int i = 0; i < 64; i++) blk[i] = (i < klen ? key[i] : 0) ^ (pass ? 0x5c : 0x36);
        if (sha256) {
            SHA256_CTX c;
            SHA256_Init(&c); SHA256_Update(&c, blk, 64);
            memcpy(h, c.h, 32);
        } else {
            SHA_CTX c;
            SHA1_Init(&c); SHA1_Update(&c, blk, 64);
            h[0] = c.h0; h[1] = c.h1; h[2] = c.h2; h[3] = c.h3; h[4] = c.h4;
        }
    }
}

/* One case: span of `total` bytes; ciphertext at `before`, ct_len bytes; iv
 * at iv_off (or separate). Packet placed at the very end of a malloc'd block. */
static void one(int keylen, size_t before, size_t ct_len, size_t after, int iv_inside) {
    size_t total = before + ct_len + after;
    uint8_t key[32], akey[32], iv[16];
    uint8_t *blk = malloc(total ? total : 1);
    uint8_t *ref = malloc(total ? total : 1);
    uint8_t *auth = blk;             /* whole block = span: ends at the block's end */
    uint8_t mac[32], want[32];
    unsigned int ml = 0;
    uint32_t ip[8], op[8];
    int alen = sha256 ? 32 : 20;
    void *rk = aligned_alloc(16, 16 * 15);
    int outl, rounds;
    rfill(key, keylen); rfill(akey, alen); rfill(iv, 16);
    rfill(blk, total);
    if (iv_inside && before >= 24) memcpy(blk + 8, iv, 16);
    memcpy(ref, blk, total);
    pads(akey, alen, ip, op);
    rounds = fp_ni_aes_keys(key, keylen, rk);
    if (rounds != (keylen == 16 ? 10 : 14)) { printf("rounds %d\n", rounds); exit(1); }
    fp_cbc_hmac_seal(rk, rounds, iv_inside && before >= 24 ? blk + 8 : iv, blk + before, ct_len,
                     auth, total, ip, op, mac, sha256);
    /* reference */
    if (ct_len) {
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        EVP_EncryptInit_ex(c, keylen == 16 ? EVP_aes_128_cbc() : EVP_aes_256_cbc(), NULL, key, iv);
        EVP_CIPHER_CTX_set_padding(c, 0);
        if (!EVP_EncryptUpdate(c, ref + before, &outl, ref + before, (int)ct_len) || outl != (int)ct_len) {
            printf("evp fail\n"); exit(1);
        }
        EVP_CIPHER_CTX_free(c);
    }
    HMAC(sha256 ? EVP_sha256() : EVP_sha1(), akey, alen, ref, total, want, &ml);
    runs++;
    if (memcmp(blk, ref, total) != 0 || memcmp(mac, want, (size_t)alen) != 0) {
        if (fails++ < 20)
            printf("MISMATCH sha256=%d key=%d before=%zu ct=%zu after=%zu total=%zu (ct %s, mac %s)\n", sha256, keylen, before,
                   ct_len, after, total, memcmp(blk, ref, total) ? "bad" : "ok",
                   memcmp(mac, want, (size_t)alen) ? "bad" : "ok");
    }
    free(blk); free(ref); free(rk);
}

int main(int argc, char **argv) {
    if (!fp_ni_available()) { printf("no AES-NI/SHA-NI\n"); return 2; }
    int quick = argc > 1;
    for (sha256 = 0; sha256 < 2; sha256++) {
    for (int ks = 16; ks <= 32; ks += 16) {
        /* ESP layouts: 8 + 16 IV + ct [+ 4 seq_hi] */
        for (size_t ct = 16; ct <= 4096; ct += 16)
            for (int esn = 0; esn < 2; esn++)
                for (int rep = 0; rep < (quick ? 1 : 4); rep++)
                    one(ks, 24, ct, esn ? 4 : 0, 1);
        /* jumbo */
        one(ks, 24, 9008, 0, 1); one(ks, 24, 9008, 4, 1); one(ks, 24, 65520, 4, 1);
        /* generic: every auth_len mod 64, several prefix sizes */
        for (size_t before = 0; before <= 80; before += (before < 32 ? 1 : 7))
            for (size_t ct = 0; ct <= 640; ct += 16)
                for (size_t after = 0; after < 64; after++)
                    if (quick ? ((before + ct + after) % 64 == 55 || (before + ct + after) % 64 == 56 ||
                                 (before + ct + after) % 64 == 63 || (before + ct + after) % 64 == 0)
                              : 1)
                        one(ks, before, ct, after, 0);
    }
    /* the hash's padding alone: ct_len 0, auth_len 0..300 */
    for (size_t n = 0; n < 300; n++) one(16, n, 0, 0, 0);
    }
    printf("%ld runs, %ld failures\n", runs, fails);
    return fails != 0;
}
