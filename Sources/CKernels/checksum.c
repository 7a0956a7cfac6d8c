// A fast 64-bit checksum for KV transfer frames, in the manner of XXH3's long-input loop: each 32-byte stripe is
// mixed into four 64-bit accumulators with one 32x32->64 multiply per lane (against a key that differs per stripe of
// a 1 KiB block, so that moved stripes change the sum), the accumulators are scrambled after every block, and the
// end folds them with the length and the tail. AVX2 and scalar paths give the same bits. It detects corruption on
// the wire; it is not a cryptographic hash. The streaming form copies while it hashes, so that data is read once on
// its way into a send buffer or out of a receive buffer.
#include "CKernels.h"

#include <immintrin.h>
#include <string.h>

static const uint64_t P1 = 0x9E3779B185EBCA87ULL;
static const uint64_t P2 = 0xC2B2AE3D27D4EB4FULL;
static const uint64_t P3 = 0x165667B19E3779F9ULL;
static const uint64_t P4 = 0x85EBCA77C2B2AE63ULL;
static const uint64_t P5 = 0x27D4EB2F165667C5ULL;
static const uint64_t PRIME32 = 0x9E3779B1ULL;

enum { STRIPE = 32, BLOCK_STRIPES = 32 };

// keys[j] for stripe j of a block; keys[BLOCK_STRIPES] for the scramble.
static uint64_t keys[BLOCK_STRIPES + 1][4] __attribute__((aligned(32)));

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;  // little-endian hosts (x86-64, arm64) read the same bytes the same way
}

static inline uint64_t avalanche(uint64_t h) {
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

__attribute__((constructor)) static void init_keys(void) {
    for (int j = 0; j <= BLOCK_STRIPES; j++)
        for (int l = 0; l < 4; l++) keys[j][l] = avalanche(P5 * (uint64_t)(4 * j + l + 1));
}

static inline void scramble_scalar(uint64_t *acc) {
    for (int l = 0; l < 4; l++) {
        uint64_t a = acc[l];
        a ^= a >> 47;
        a ^= keys[BLOCK_STRIPES][l];
        acc[l] = a * PRIME32;
    }
}

// Stripes of `src` (n a multiple of 32), copied to `dst` when it is not NULL, starting at stripe `*j` of a block.
static void stripes_scalar(uint64_t *acc, uint32_t *j, uint8_t *dst, const uint8_t *src, size_t n) {
    for (size_t i = 0; i < n; i += STRIPE) {
        uint64_t d[4];
        memcpy(d, src + i, STRIPE);
        if (dst) memcpy(dst + i, d, STRIPE);
        const uint64_t *k = keys[*j];
        for (int l = 0; l < 4; l++) {
            uint64_t dk = d[l] ^ k[l];
            acc[l] += (dk & 0xFFFFFFFFULL) * (dk >> 32);
            acc[l ^ 1] += d[l];
        }
        if (++*j == BLOCK_STRIPES) {
            scramble_scalar(acc);
            *j = 0;
        }
    }
}

__attribute__((target("avx2"))) static void stripes_avx2(
    uint64_t *acc, uint32_t *j, uint8_t *dst, const uint8_t *src, size_t n) {
    __m256i a = _mm256_loadu_si256((const __m256i *)acc);
    const __m256i skey = _mm256_load_si256((const __m256i *)keys[BLOCK_STRIPES]);
    const __m256i prime = _mm256_set1_epi64x((long long)PRIME32);
    uint32_t s = *j;
    for (size_t i = 0; i < n; i += STRIPE) {
        __m256i d = _mm256_loadu_si256((const __m256i *)(src + i));
        if (dst) _mm256_storeu_si256((__m256i *)(dst + i), d);
        __m256i dk = _mm256_xor_si256(d, _mm256_load_si256((const __m256i *)keys[s]));
        __m256i prod = _mm256_mul_epu32(dk, _mm256_srli_epi64(dk, 32));
        __m256i swapped = _mm256_shuffle_epi32(d, _MM_SHUFFLE(1, 0, 3, 2));  // lane l gets d[l ^ 1]
        a = _mm256_add_epi64(a, _mm256_add_epi64(prod, swapped));
        if (++s == BLOCK_STRIPES) {
            a = _mm256_xor_si256(a, _mm256_srli_epi64(a, 47));
            a = _mm256_xor_si256(a, skey);
            __m256i lo = _mm256_mul_epu32(a, prime);
            __m256i hi = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), prime);
            a = _mm256_add_epi64(lo, _mm256_slli_epi64(hi, 32));
            s = 0;
        }
    }
    _mm256_storeu_si256((__m256i *)acc, a);
    *j = s;
}

static void stripes(tk_hash_state *st, uint8_t *dst, const uint8_t *src, size_t n) {
    if (n == 0) return;
    if (tk_simd_level() >= 1)
        stripes_avx2(st->v, &st->block_stripe, dst, src, n);
    else
        stripes_scalar(st->v, &st->block_stripe, dst, src, n);
}

void tk_hash_init(tk_hash_state *s, uint64_t seed) {
    s->v[0] = seed ^ P1;
    s->v[1] = seed ^ P2;
    s->v[2] = seed ^ P3;
    s->v[3] = seed ^ P4;
    s->seed = seed;
    s->total = 0;
    s->pending = 0;
    s->block_stripe = 0;
}

void tk_hash_copy_update(tk_hash_state *s, void *dst, const void *src, size_t n) {
    const uint8_t *p = (const uint8_t *)src;
    uint8_t *q = (uint8_t *)dst;
    s->total += n;
    if (s->pending) {
        size_t take = STRIPE - s->pending < n ? STRIPE - s->pending : n;
        memcpy(s->stripe + s->pending, p, take);
        if (q) {
            memcpy(q, p, take);
            q += take;
        }
        p += take;
        n -= take;
        s->pending += (uint32_t)take;
        if (s->pending < STRIPE) return;
        stripes(s, NULL, s->stripe, STRIPE);
        s->pending = 0;
    }
    size_t whole = n - n % STRIPE;
    stripes(s, q, p, whole);
    if (whole < n) {
        memcpy(s->stripe, p + whole, n - whole);
        if (q) memcpy(q + whole, p + whole, n - whole);
        s->pending = (uint32_t)(n - whole);
    }
}

void tk_hash_update(tk_hash_state *s, const void *data, size_t n) { tk_hash_copy_update(s, NULL, data, n); }

uint64_t tk_hash_final(const tk_hash_state *s) {
    uint64_t h = (s->total * P1) ^ s->seed;
    for (int l = 0; l < 4; l++) h = rotl64(h ^ avalanche(s->v[l]), 27) * P1 + P4;
    const uint8_t *p = s->stripe, *end = s->stripe + s->pending;
    while (p + 8 <= end) {
        h = rotl64(h ^ (load64(p) * P2), 31) * P1 + P4;
        p += 8;
    }
    while (p < end) {
        h = rotl64(h ^ ((uint64_t)(*p) * P5), 11) * P1;
        p++;
    }
    return avalanche(h);
}

uint64_t tk_hash64(const void *data, size_t n, uint64_t seed) {
    tk_hash_state s;
    tk_hash_init(&s, seed);
    tk_hash_update(&s, data, n);
    return tk_hash_final(&s);
}
