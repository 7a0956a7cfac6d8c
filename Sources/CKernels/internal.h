// Internal helpers shared by the CKernels C files (not part of the public header).
#ifndef TANDEM_CKERNELS_INTERNAL_H
#define TANDEM_CKERNELS_INTERNAL_H

#include "CKernels.h"

#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TK_X86 1
#else
#define TK_X86 0
#endif

static inline float tk_half_to_float(uint16_t h) {
    _Float16 f;
    memcpy(&f, &h, 2);
    return (float)f;
}

static inline uint16_t tk_float_to_half(float x) {
    _Float16 f = (_Float16)x;
    uint16_t h;
    memcpy(&h, &f, 2);
    return h;
}

// A Q4_K block's 6-bit sub-block scales and mins, from its 12 packed bytes `s`.
static inline void tk_q4k_scales(const uint8_t *s, uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
    }
    for (int j = 4; j < 8; j++) {
        sc[j] = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// One pair of sub-blocks' integer sums of a Q4_K row in llama.cpp's repacked orders (tk_dot_q4_k_repacked): folded
// into the floats at once for its GEMM (`per64`), else added up for the super-block, which `tk_q4k_repacked_end`
// folds in (its GEMV).
typedef struct {
    float acc, acc_min;
    int total, total_min;
} tk_q4k_repacked_state;

static inline void tk_q4k_repacked_pair(tk_q4k_repacked_state *st, int per64, int sum, int mins, float d, float dmin) {
    if (per64) {
        st->acc = fmaf((float)sum, d, st->acc);
        st->acc_min = fmaf((float)mins, dmin, st->acc_min);
    } else {
        st->total += sum;
        st->total_min += mins;
    }
}

static inline void tk_q4k_repacked_end(tk_q4k_repacked_state *st, int per64, float d, float dmin) {
    if (!per64) {
        st->acc = fmaf((float)st->total, d, st->acc);
        st->acc_min = fmaf((float)st->total_min, dmin, st->acc_min);
    }
    st->total = st->total_min = 0;
}

// Whether activation row b is in llama.cpp's tiled order (TK_ORDER_TILED in orders[b]; none when orders is NULL).
static inline int tk_row_tiled(const uint8_t *orders, int b) { return orders && (orders[b] & TK_ORDER_TILED); }

// The end of the run of activation rows from b that share row b's tiled flag (at most n).
static inline int tk_tiled_run_end(const uint8_t *orders, int b, int n) {
    const int tiled = tk_row_tiled(orders, b);
    int e = b + 1;
    while (e < n && tk_row_tiled(orders, e) == tiled) e++;
    return e;
}

// A thread's reusable scratch buffer `slot` (0..3), 64-byte aligned, of at least `bytes`; valid until the thread's
// next call for the same slot. Kernels called hundreds of times per forward pass would otherwise map and fault in
// fresh pages from malloc at every call. NULL if memory runs out. Never freed (one per thread and slot).
static inline void *tk_scratch(int slot, size_t bytes) {
    static __thread void *buffers[4];
    static __thread size_t sizes[4];
    if (bytes > sizes[slot]) {
        free(buffers[slot]);
        const size_t size = (bytes + 65535) & ~(size_t)65535;
        buffers[slot] = aligned_alloc(64, size);
        sizes[slot] = buffers[slot] ? size : 0;
    }
    return buffers[slot];
}

#if TK_X86
#define TK_AVX2 __attribute__((target("avx2,fma,f16c")))

// Horizontal sum in the order ggml uses (its hsum_float_8, and GCC's reduction of the last 8 lanes):
// (v0+v4, v1+v5, ...), then (0+2, 1+3), then 0+1.
TK_AVX2 static inline float hsum8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// Eight lanes of tk_expf's exact steps (ggml's vector expf); the final scaling by 2^n is a multiply, exact while n
// stays in [-126, 127]. Returns 0 in *ok (and garbage) when some lane's n is outside: the caller then takes tk_expf
// lane by lane.
TK_AVX2 static inline __m256 tk_expf8(__m256 x, int *ok) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 nn = _mm256_sub_ps(z, r);
    const __m256 lo = _mm256_cmp_ps(nn, _mm256_set1_ps(-126.0f), _CMP_NGE_UQ);
    const __m256 hi = _mm256_cmp_ps(nn, _mm256_set1_ps(127.0f), _CMP_NLE_UQ);
    *ok = !_mm256_movemask_ps(_mm256_or_ps(lo, hi));
    const __m256 negn = _mm256_xor_ps(nn, sign);
    const __m256 b =
        _mm256_fmadd_ps(negn, _mm256_set1_ps(0x1.7f7d1cp-20f), _mm256_fmadd_ps(negn, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 p1 = _mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f));
    const __m256 p2 = _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f));
    const __m256 p3 = _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f));
    const __m256 j = _mm256_fmadd_ps(_mm256_fmadd_ps(p1, u, p2), u, p3);
    const __m256i ni = _mm256_cvtps_epi32(nn);
    const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(j, scale);
}
#endif

#endif
