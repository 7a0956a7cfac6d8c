// Dot products of Q5_0 and the K-quants (Q4_K, Q5_K, Q6_K) with 8-bit activations, scalar and AVX2, with run-time dispatch.
//
// Every path computes the same integer sums in the same eight lanes (lane k holds products 4k..4k+3 of each 32-value
// group, times their sub-block scale), turns them into floats once per block, accumulates them with one FMA per lane
// and block, and reduces the lanes as hsum8 does; so the SIMD results equal the scalar ones bit for bit, and an
// output never depends on the batch it is computed in. (These are the lanes ggml's AVX2 dot products use.)
#include "CKernels.h"

#include "internal.h"

#include <math.h>

static inline float tk_hsum8_scalar(const float l[8]) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// ---------------------------------------------------------------------------------------------------------------------
// Q8_K activations: blocks of 256 with a float scale, as ggml's quantize_row_q8_K: the value of largest magnitude maps
// to -127 (so the scale carries its sign), quants rounded to nearest even and capped at 127, 16 sums of 16 quants.

static void quantize_q8k_scalar(const float *xb, tk_block_q8k *y) {
    float max = 0.0f, amax = 0.0f;
    for (int j = 0; j < 256; j++) {
        const float a = fabsf(xb[j]);
        if (a > amax) {
            amax = a;
            max = xb[j];
        }
    }
    if (amax == 0.0f) {
        memset(y, 0, sizeof(*y));
        return;
    }
    const float iscale = -127.0f / max;
    for (int j = 0; j < 256; j++) {
        const int v = (int)nearbyintf(iscale * xb[j]);
        y->qs[j] = (int8_t)(v < 127 ? v : 127);
    }
    for (int j = 0; j < 16; j++) {
        int sum = 0;
        for (int k = 0; k < 16; k++) sum += y->qs[j * 16 + k];
        y->bsums[j] = (int16_t)sum;
    }
    y->d = 1.0f / iscale;
}

#if TK_X86
// The same block eight values at a time: the largest magnitude by vector maximum, then its first occurrence (whose
// sign the scale takes); products rounded to nearest even by cvtps (the default rounding, as nearbyintf).
TK_AVX2 static void quantize_q8k_avx2(const float *xb, tk_block_q8k *y) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < 256; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + j)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    if (!(amax > 0.0f)) {
        quantize_q8k_scalar(xb, y);
        return;
    }
    int first = 0;
    while (fabsf(xb[first]) != amax) first++;
    const float iscale = -127.0f / xb[first];
    const __m256 is = _mm256_set1_ps(iscale);
    const __m256i cap = _mm256_set1_epi32(127);
    for (int j = 0; j < 256; j += 32) {
        __m256i v[4];
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(is, _mm256_loadu_ps(xb + j + 8 * k))), cap);
        }
        // packs works within 128-bit lanes: the permute puts the 32 bytes back in order.
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(y->qs + j), _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
    for (int j = 0; j < 16; j++) {
        const __m128i q = _mm_loadu_si128((const __m128i *)(y->qs + 16 * j));
        const __m128i w = _mm_madd_epi16(_mm_maddubs_epi16(_mm_set1_epi8(1), q), _mm_set1_epi16(1));
        const __m128i s = _mm_add_epi32(w, _mm_shuffle_epi32(w, 0x4E));
        y->bsums[j] = (int16_t)_mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
    }
    y->d = 1.0f / iscale;
}
#endif

void tk_quantize_q8k(const float *x, tk_block_q8k *y, int n) {
    const int nb = n / 256;
#if TK_X86
    if (tk_simd_level() >= 1) {
        for (int i = 0; i < nb; i++) quantize_q8k_avx2(x + (size_t)i * 256, &y[i]);
        return;
    }
#endif
    for (int i = 0; i < nb; i++) quantize_q8k_scalar(x + (size_t)i * 256, &y[i]);
}

// ---------------------------------------------------------------------------------------------------------------------
// Q5_0: 22-byte blocks of 32 (fp16 scale, 32 high bits, 16 bytes of low nibbles); value = 5-bit quant - 16.

enum { Q5_0_BYTES = 22, Q4_K_BYTES = 144, Q5_K_BYTES = 176, Q6_K_BYTES = 210 };

static float tk_dot_q5_0_scalar(const uint8_t *w, const tk_block_q8 *x, int nb) {
    float acc[8] = {0};
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * Q5_0_BYTES;
        uint16_t dh;
        uint32_t qh;
        memcpy(&dh, b, 2);
        memcpy(&qh, b + 2, 4);
        const uint8_t *qs = b + 6;
        int lanes[8] = {0};
        for (int j = 0; j < 16; j++) {
            const int lo = ((qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) - 16;
            const int hi = ((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            lanes[j / 4] += lo * x[i].qs[j];
            lanes[(j + 16) / 4] += hi * x[i].qs[j + 16];
        }
        const float d = tk_half_to_float(dh) * x[i].d;
        for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)lanes[k], acc[k]);
    }
    return tk_hsum8_scalar(acc);
}

#if TK_X86
// 32 signed bytes: low nibbles, then high nibbles, of 16 bytes.
TK_AVX2 static inline __m256i tk_nibbles32(const uint8_t *p) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)p);
    const __m256i both = _mm256_insertf128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// The 32 bits of `bits` as bytes: 0xFF where the bit is set.
TK_AVX2 static inline __m256i tk_bits32(uint32_t bits) {
    const __m256i shuffle = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuffle);
    v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7FBFDFEFF7FBFDFE));
    return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

// Eight int32 lanes: lane k = sum of x[4k..4k+3] * y[4k..4k+3] (x signed, |x| <= 127; no int16 overflow for the
// ranges used here).
TK_AVX2 static inline __m256i tk_dot_lanes(__m256i x, __m256i y) {
    const __m256i ax = _mm256_sign_epi8(x, x);
    const __m256i sy = _mm256_sign_epi8(y, x);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
}

// A Q5_0 block's 32 quants minus 16, as signed bytes, and its scale.
TK_AVX2 static inline __m256i tk_q5_0_quants(const uint8_t *b, float *d) {
    uint16_t dh;
    uint32_t qh;
    memcpy(&dh, b, 2);
    memcpy(&qh, b + 2, 4);
    *d = tk_half_to_float(dh);
    // quant - 16 = nibble | (bit set ? 0 : 0xF0) as a signed byte.
    const __m256i high = _mm256_andnot_si256(tk_bits32(qh), _mm256_set1_epi8((char)0xF0));
    return _mm256_or_si256(tk_nibbles32(b + 6), high);
}

TK_AVX2 static float dot_q5_0_avx2(const uint8_t *w, const tk_block_q8 *x, int nb) {
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        float dw;
        const __m256i q = tk_q5_0_quants(w + (size_t)i * Q5_0_BYTES, &dw);
        const __m256i lanes = tk_dot_lanes(q, _mm256_loadu_si256((const __m256i *)x[i].qs));
        const __m256 d = _mm256_set1_ps(dw * x[i].d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc);
    }
    return hsum8(acc);
}
#endif

#if TK_X86
// One Q5_0 weight row against four activation rows (`stride` blocks apart): the weights are decoded once for the
// four, and each row's arithmetic is dot_q5_0_avx2's (the same lanes, one FMA per block, the same reduction), so
// every output has the bits it has alone.
TK_AVX2 static void dot4_q5_0_avx2(const uint8_t *w, const tk_block_q8 *x, size_t stride, int nb, float out[4]) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int i = 0; i < nb; i++) {
        float dw;
        const __m256i q = tk_q5_0_quants(w + (size_t)i * Q5_0_BYTES, &dw);
        for (int a = 0; a < 4; a++) {
            const tk_block_q8 *y = x + (size_t)a * stride + i;
            const __m256i lanes = tk_dot_lanes(q, _mm256_loadu_si256((const __m256i *)y->qs));
            acc[a] = _mm256_fmadd_ps(_mm256_set1_ps(dw * y->d), _mm256_cvtepi32_ps(lanes), acc[a]);
        }
    }
    for (int a = 0; a < 4; a++) out[a] = hsum8(acc[a]);
}
#endif

int tk_matmul_q5_0_by4(const void *w, size_t row_bytes, int n, int row_begin, int row_end, const tk_block_q8 *x,
                       int n_act, float *out, int out_stride) {
#if TK_X86
    if (tk_simd_level() < 1) return -1;
    const int nb = n / 32;
    for (int r = row_begin; r < row_end; r++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)r * row_bytes;
        int b = 0;
        for (; b + 4 <= n_act; b += 4) {
            float four[4];
            dot4_q5_0_avx2(row, x + (size_t)b * nb, (size_t)nb, nb, four);
            for (int a = 0; a < 4; a++) out[(size_t)(b + a) * out_stride + r] = four[a];
        }
        for (; b < n_act; b++) out[(size_t)b * out_stride + r] = dot_q5_0_avx2(row, x + (size_t)b * nb, nb);
    }
    return 0;
#else
    (void)w, (void)row_bytes, (void)n, (void)row_begin, (void)row_end, (void)x, (void)n_act, (void)out;
    (void)out_stride;
    return -1;
#endif
}

float tk_dot_q5_0(const void *w, const tk_block_q8 *x, int n) {
#if TK_X86
    if (tk_simd_level() >= 1) return dot_q5_0_avx2(w, x, n / 32);
#endif
    return tk_dot_q5_0_scalar(w, x, n / 32);
}

// ---------------------------------------------------------------------------------------------------------------------
// Q4_K: 144-byte blocks of 256: fp16 d and dmin, 12 bytes of 6-bit scales and mins for 8 sub-blocks of 32, then 128
// bytes of nibbles (each 32 bytes: low nibbles are sub-block 2j, high nibbles 2j + 1). value = d·sc·q - dmin·m.

// A Q4_K block's scales, read once for the dot kernels: d and -dmin already multiplied by the activation's scale
// `xd` (in ggml's order), the 6-bit sub-block scales and mins unpacked.
typedef struct {
    float d, dmin;
    uint8_t sc[8], m[8];
} q4k_header;

static inline q4k_header q4k_read_header(const uint8_t *b, float xd) {
    q4k_header h;
    uint16_t dh, mh;
    memcpy(&dh, b, 2);
    memcpy(&mh, b + 2, 2);
    h.d = xd * tk_half_to_float(dh);
    h.dmin = -xd * tk_half_to_float(mh);
    tk_q4k_scales(b + 4, h.sc, h.m);
    return h;
}

static float dot_q4_k_scalar(const uint8_t *w, const tk_block_q8k *x, int nb) {
    float acc[8] = {0}, acc_m[4] = {0};
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * Q4_K_BYTES;
        const q4k_header h = q4k_read_header(b, x[i].d);
        const uint8_t *sc = h.sc, *m = h.m;
        const uint8_t *qs = b + 16;
        int lanes[8] = {0};
        for (int j = 0; j < 4; j++) {
            for (int e = 0; e < 32; e++) {
                const int8_t *y = x[i].qs + 64 * j;
                lanes[e / 4] += sc[2 * j] * ((qs[32 * j + e] & 0x0F) * y[e]);
                lanes[e / 4] += sc[2 * j + 1] * ((qs[32 * j + e] >> 4) * y[32 + e]);
            }
        }
        int mins[4];
        for (int p = 0; p < 4; p++) {
            const int s0 = x[i].bsums[4 * p] + x[i].bsums[4 * p + 1];
            const int s1 = x[i].bsums[4 * p + 2] + x[i].bsums[4 * p + 3];
            mins[p] = m[2 * p] * s0 + m[2 * p + 1] * s1;
        }
        const float d = h.d, dmin = h.dmin;
        for (int p = 0; p < 4; p++) acc_m[p] = fmaf(dmin, (float)mins[p], acc_m[p]);
        for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)lanes[k], acc[k]);
    }
    return tk_hsum8_scalar(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]));
}

// Q4_K in the orders of llama.cpp's repacked kernels (q4_K_8x8, which it uses on AVX2 machines for every Q4_K matrix
// whose row count is a multiple of 8): per super-block the integer sums of each pair of sub-blocks (64 values),
// S_p = sc_2p·Σ q·y + sc_2p+1·Σ q·y, and M_p = m_2p·s_2p + m_2p+1·s_2p+1; its GEMM (prompt rows in fours, `per64`)
// accumulates acc = fma(S_p, d_w·d_x, acc) and acc_min = fma(M_p, dmin_w·d_x, acc_min) for each pair, its GEMV (the
// rows left over, and decode) once per super-block with the four sums added; out = acc − acc_min.
float tk_dot_q4_k_repacked(const void *w, const tk_block_q8k *x, int n, int per64) {
    tk_q4k_repacked_state st = {0};
    for (int i = 0; i < n / 256; i++) {
        const uint8_t *b = (const uint8_t *)w + (size_t)i * Q4_K_BYTES;
        uint8_t sc[8], m[8];
        tk_q4k_scales(b + 4, sc, m);
        uint16_t dh, mh;
        memcpy(&dh, b, 2);
        memcpy(&mh, b + 2, 2);
        const float d = tk_half_to_float(dh) * x[i].d, dmin = tk_half_to_float(mh) * x[i].d;
        const uint8_t *qs = b + 16;
        for (int p = 0; p < 4; p++) {
            int s0 = 0, s1 = 0;
            for (int e = 0; e < 32; e++) {
                s0 += (qs[32 * p + e] & 0x0F) * x[i].qs[64 * p + e];
                s1 += (qs[32 * p + e] >> 4) * x[i].qs[64 * p + 32 + e];
            }
            const int mins = m[2 * p] * (x[i].bsums[4 * p] + x[i].bsums[4 * p + 1]) +
                             m[2 * p + 1] * (x[i].bsums[4 * p + 2] + x[i].bsums[4 * p + 3]);
            tk_q4k_repacked_pair(&st, per64, sc[2 * p] * s0 + sc[2 * p + 1] * s1, mins, d, dmin);
        }
        tk_q4k_repacked_end(&st, per64, d, dmin);
    }
    return st.acc - st.acc_min;
}

int tk_matmul_q4_k_repacked(const void *w, size_t row_bytes, int n, int row_begin, int row_end, const tk_block_q8k *x,
                            int n_act, const uint8_t *per64, float *out, int out_stride) {
    const int nb = n / 256;
    for (int r = row_begin; r < row_end; r++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)r * row_bytes;
        for (int b = 0; b < n_act; b++) {
            out[(size_t)b * out_stride + r] = tk_dot_q4_k_repacked(row, x + (size_t)b * nb, n, per64[b] & TK_ORDER_Q4K_GEMM);
        }
    }
    return 0;
}

#if TK_X86
TK_AVX2 static float dot_q4_k_avx2(const uint8_t *w, const tk_block_q8k *x, int nb) {
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * Q4_K_BYTES;
        const q4k_header h = q4k_read_header(b, x[i].d);
        const uint8_t *sc = h.sc, *m = h.m;
        const uint8_t *qs = b + 16;
        const int8_t *y = x[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            const __m256i lo = _mm256_and_si256(bits, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            const __m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y + 64 * j)));
            const __m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y + 64 * j + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j]), pl));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j + 1]), ph));
        }
        const __m128i b0 = _mm_loadu_si128((const __m128i *)x[i].bsums);
        const __m128i b1 = _mm_loadu_si128((const __m128i *)(x[i].bsums + 8));
        const __m128i sums = _mm_hadd_epi16(b0, b1);
        const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)m));
        const __m128i prod = _mm_madd_epi16(mins, sums);
        const float d = h.d, dmin = h.dmin;
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
    return hsum8(acc) + _mm_cvtss_f32(acc_m);
}
// One Q4_K weight row against four activation rows (`stride` blocks apart): the nibbles and scales are read once
// for the four, and each row's arithmetic is dot_q4_k_avx2's (the same integer lanes, the same FMAs per block, the
// same reduction), so every output has the bits it has alone.
TK_AVX2 static void dot4_q4_k_avx2(const uint8_t *w, const tk_block_q8k *x, size_t stride, int nb, float out[4]) {
    __m256 acc[4];
    __m128 acc_m[4];
    for (int a = 0; a < 4; a++) {
        acc[a] = _mm256_setzero_ps();
        acc_m[a] = _mm_setzero_ps();
    }
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * Q4_K_BYTES;
        const q4k_header h = q4k_read_header(b, 1.0f);
        uint16_t dh, mh;
        memcpy(&dh, b, 2);
        memcpy(&mh, b + 2, 2);
        const float dw = tk_half_to_float(dh), mw = tk_half_to_float(mh);
        const uint8_t *qs = b + 16;
        __m256i sumi[4];
        for (int a = 0; a < 4; a++) sumi[a] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            const __m256i lo = _mm256_and_si256(bits, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            const __m256i s0 = _mm256_set1_epi16(h.sc[2 * j]), s1 = _mm256_set1_epi16(h.sc[2 * j + 1]);
            for (int a = 0; a < 4; a++) {
                const int8_t *y = x[(size_t)a * stride + i].qs;
                const __m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y + 64 * j)));
                const __m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y + 64 * j + 32)));
                sumi[a] = _mm256_add_epi32(sumi[a], _mm256_madd_epi16(s0, pl));
                sumi[a] = _mm256_add_epi32(sumi[a], _mm256_madd_epi16(s1, ph));
            }
        }
        const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)h.m));
        for (int a = 0; a < 4; a++) {
            const tk_block_q8k *y = x + (size_t)a * stride + i;
            const __m128i b0 = _mm_loadu_si128((const __m128i *)y->bsums);
            const __m128i b1 = _mm_loadu_si128((const __m128i *)(y->bsums + 8));
            const __m128i prod = _mm_madd_epi16(mins, _mm_hadd_epi16(b0, b1));
            // As q4k_read_header: d = xd·d_w, dmin = −xd·dmin_w.
            const float d = y->d * dw, dmin = -y->d * mw;
            acc_m[a] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[a]);
            acc[a] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[a]), acc[a]);
        }
    }
    for (int a = 0; a < 4; a++) {
        __m128 m = _mm_add_ps(acc_m[a], _mm_movehl_ps(acc_m[a], acc_m[a]));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        out[a] = hsum8(acc[a]) + _mm_cvtss_f32(m);
    }
}
#endif


// ---------------------------------------------------------------------------------------------------------------------
// Q5_K: 176-byte blocks of 256: fp16 d and dmin, 12 bytes of 6-bit scales and mins (as Q4_K), 32 bytes of fifth bits
// (bit s of byte l: value l of sub-block s), 128 bytes of nibbles as Q4_K's. The lanes are Q4_K's; the mins, as
// ggml's AVX2 vec_dot_q5_K_q8_K takes them, are summed in integers per block and accumulated by one FMA.

static float dot_q5_k_scalar(const uint8_t *w, const tk_block_q8k *x, int nb) {
    float acc[8] = {0}, mins = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * Q5_K_BYTES;
        const q4k_header h = q4k_read_header(b, x[i].d);
        const uint8_t *qh = b + 16, *qs = b + 48;
        int lanes[8] = {0};
        for (int s = 0; s < 8; s++) {
            for (int l = 0; l < 32; l++) {
                const uint8_t packed = qs[32 * (s / 2) + l];
                const int q = ((s & 1) ? packed >> 4 : packed & 0x0F) | (((qh[l] >> s) & 1) << 4);
                lanes[l / 4] += h.sc[s] * (q * x[i].qs[32 * s + l]);
            }
        }
        int min_sum = 0;
        for (int s = 0; s < 8; s++) min_sum += h.m[s] * (x[i].bsums[2 * s] + x[i].bsums[2 * s + 1]);
        mins = fmaf(h.dmin, (float)min_sum, mins);
        for (int k = 0; k < 8; k++) acc[k] = fmaf(h.d, (float)lanes[k], acc[k]);
    }
    return tk_hsum8_scalar(acc) + mins;
}

#if TK_X86
TK_AVX2 static float dot_q5_k_avx2(const uint8_t *w, const tk_block_q8k *x, int nb) {
    __m256 acc = _mm256_setzero_ps();
    float mins = 0.0f;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * Q5_K_BYTES;
        const q4k_header h = q4k_read_header(b, x[i].d);
        const uint8_t *qs = b + 48;
        const int8_t *y = x[i].qs;
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)(b + 16));
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            const __m256i hl = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j), one), 4);
            const __m256i hh = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j + 1), one), 4);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(bits, m4), hl);
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), hh);
            const __m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y + 64 * j)));
            const __m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y + 64 * j + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16(h.sc[2 * j]), pl));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16(h.sc[2 * j + 1]), ph));
        }
        const __m128i b0 = _mm_loadu_si128((const __m128i *)x[i].bsums);
        const __m128i b1 = _mm_loadu_si128((const __m128i *)(x[i].bsums + 8));
        const __m128i prod = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)h.m)), _mm_hadd_epi16(b0, b1));
        const __m128i sum = _mm_hadd_epi32(_mm_hadd_epi32(prod, _mm_setzero_si128()), _mm_setzero_si128());
        mins = fmaf(h.dmin, (float)_mm_cvtsi128_si32(sum), mins);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h.d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc) + mins;
}
#endif

// ---------------------------------------------------------------------------------------------------------------------
// Q6_K: 210-byte blocks of 256: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales (one per 16
// values), fp16 d. value = d·scale·(6-bit quant - 32). As ggml's AVX2 vec_dot_q6_K_q8_K (llama.cpp 11434) has it, lane
// k sums scale·q·y over the unsigned quants and then loses 32·(bsum_2k·sc_2k + bsum_2k+1·sc_2k+1): the −32 goes by
// sub-block, not by lane, so its integers per lane are not (q − 32)·y's.

static inline int q6k_value(const uint8_t *ql, const uint8_t *qh, int e) {
    // Within a half of 128: e = 32·g + l (g = 0..3).
    const int g = e / 32, l = e % 32;
    const int low = g & 1 ? ql[l + 32] : ql[l];
    const int nib = g < 2 ? (low & 0x0F) : (low >> 4);
    return nib | (((qh[l] >> (2 * g)) & 3) << 4);
}

// 32·(bsum_2k·sc_2k + bsum_2k+1·sc_2k+1) for lane k: the quants' offset, taken from the lanes by sub-block.
static inline int q6k_lane_offset(const int8_t *scales, const int16_t *bsums, int k) {
    return 32 * (bsums[2 * k] * scales[2 * k] + bsums[2 * k + 1] * scales[2 * k + 1]);
}

// The eight integer lanes of one Q6_K block against one Q8_K block, as dot_q6_k_scalar sums them.
static void q6k_block_lanes_scalar(const uint8_t *b, const tk_block_q8k *x, int lanes[8]) {
    const int8_t *scales = (const int8_t *)(b + 192);
    for (int k = 0; k < 8; k++) lanes[k] = 0;
    for (int e = 0; e < 256; e++) {
        const int half = e / 128;
        const int q = q6k_value(b + 64 * half, b + 128 + 32 * half, e % 128);
        lanes[(e % 32) / 4] += scales[e / 16] * (q * x->qs[e]);
    }
    for (int k = 0; k < 8; k++) lanes[k] -= q6k_lane_offset(scales, x->bsums, k);
}

// Both of llama.cpp's orders from the same lanes: vec_dot's (`tiled` 0: one FMA per lane and block with d_x·d_w,
// reduced as hsum8) or its tiled matmul's (the block's lanes added up exactly, then fma(float(sum)·d_w, d_x, acc)).
static float dot_q6_k_scalar_in(const uint8_t *w, const tk_block_q8k *x, int nb, int tiled) {
    float acc[8] = {0};
    float one = 0;
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * Q6_K_BYTES;
        uint16_t dh;
        memcpy(&dh, b + 208, 2);
        int lanes[8];
        q6k_block_lanes_scalar(b, x + i, lanes);
        if (tiled) {
            int sum = 0;
            for (int k = 0; k < 8; k++) sum += lanes[k];
            one = fmaf((float)sum * tk_half_to_float(dh), x[i].d, one);
        } else {
            const float d = x[i].d * tk_half_to_float(dh);
            for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)lanes[k], acc[k]);
        }
    }
    return tiled ? one : tk_hsum8_scalar(acc);
}

static float dot_q6_k_scalar(const uint8_t *w, const tk_block_q8k *x, int nb) { return dot_q6_k_scalar_in(w, x, nb, 0); }

static float dot_q6_k_tiled_scalar(const uint8_t *w, const tk_block_q8k *x, int nb) {
    return dot_q6_k_scalar_in(w, x, nb, 1);
}

#if TK_X86
// q6k_lane_offset for the eight lanes at once (ggml's q8sclsub).
TK_AVX2 static inline __m256i q6k_offsets_avx2(const int8_t *scales, const int16_t *bsums) {
    const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)scales));
    return _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsums), sc), 5);
}

// The eight integer lanes of one Q6_K block against one Q8_K block (ggml's AVX2 vec_dot_q6_K_q8_K).
TK_AVX2 static inline __m256i q6k_block_lanes_avx2(const uint8_t *b, const tk_block_q8k *xi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2 = _mm256_set1_epi8(3);
    const int8_t *scales = (const int8_t *)(b + 192);
    __m256i sumi = _mm256_setzero_si256();
    for (int half = 0; half < 2; half++) {
        const uint8_t *ql = b + 64 * half;
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * half));
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hbits, m2), 4));
        q[1] = _mm256_or_si256(
            _mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2), m2), 4));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 4), m2), 4));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 6), m2), 4));
        for (int g = 0; g < 4; g++) {
            const int e0 = 128 * half + 32 * g;
            const __m256i y = _mm256_loadu_si256((const __m256i *)(xi->qs + e0));
            const __m256i p = _mm256_maddubs_epi16(q[g], y);
            const __m256i s = _mm256_setr_epi16(
                scales[e0 / 16], scales[e0 / 16], scales[e0 / 16], scales[e0 / 16], scales[e0 / 16],
                scales[e0 / 16], scales[e0 / 16], scales[e0 / 16], scales[e0 / 16 + 1], scales[e0 / 16 + 1],
                scales[e0 / 16 + 1], scales[e0 / 16 + 1], scales[e0 / 16 + 1], scales[e0 / 16 + 1],
                scales[e0 / 16 + 1], scales[e0 / 16 + 1]);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s, p));
        }
    }
    return _mm256_sub_epi32(sumi, q6k_offsets_avx2(scales, xi->bsums));
}

TK_AVX2 static float dot_q6_k_avx2(const uint8_t *w, const tk_block_q8k *x, int nb) {
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * Q6_K_BYTES;
        uint16_t dh;
        memcpy(&dh, b + 208, 2);
        const __m256i sumi = q6k_block_lanes_avx2(b, x + i);
        const float d = x[i].d * tk_half_to_float(dh);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc);
}

TK_AVX2 static float dot_q6_k_tiled_avx2(const uint8_t *w, const tk_block_q8k *x, int nb) {
    float acc = 0;
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * Q6_K_BYTES;
        uint16_t dh;
        memcpy(&dh, b + 208, 2);
        const __m256i lanes = q6k_block_lanes_avx2(b, x + i);
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(lanes), _mm256_extracti128_si256(lanes, 1));
        s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
        acc = fmaf((float)_mm_cvtsi128_si32(s) * tk_half_to_float(dh), x[i].d, acc);
    }
    return acc;
}
#endif

#if TK_X86
// The 32 six-bit quants of group g (0..3) of one half of a Q6_K block, as dot_q6_k_avx2 builds them.
TK_AVX2 static inline __m256i q6k_group(const uint8_t *ql, __m256i hbits, int g) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    const __m256i l = _mm256_loadu_si256((const __m256i *)(ql + 32 * (g & 1)));
    const __m256i nib = g < 2 ? _mm256_and_si256(l, m4) : _mm256_and_si256(_mm256_srli_epi16(l, 4), m4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * g), m2);
    return _mm256_or_si256(nib, _mm256_slli_epi16(hi, 4));
}

// One Q6_K weight row against four activation rows (`stride` blocks apart): each group's quants and scales are built
// once for the four, and each row's arithmetic is dot_q6_k_avx2's (the same integer lanes, one FMA per block, the
// same reduction), so every output has the bits it has alone.
TK_AVX2 static void dot4_q6_k_avx2(const uint8_t *w, const tk_block_q8k *x, size_t stride, int nb, float out[4]) {
    __m256 acc[4];
    for (int a = 0; a < 4; a++) acc[a] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * Q6_K_BYTES;
        const int8_t *scales = (const int8_t *)(b + 192);
        uint16_t dh;
        memcpy(&dh, b + 208, 2);
        const float dw = tk_half_to_float(dh);
        __m256i sumi[4];
        for (int a = 0; a < 4; a++) sumi[a] = _mm256_setzero_si256();
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = b + 64 * half;
            const __m256i hbits = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * half));
            for (int g = 0; g < 4; g++) {
                const int e0 = 128 * half + 32 * g;
                const __m256i q = q6k_group(ql, hbits, g);
                const __m256i s =
                    _mm256_set_m128i(_mm_set1_epi16(scales[e0 / 16 + 1]), _mm_set1_epi16(scales[e0 / 16]));
                for (int a = 0; a < 4; a++) {
                    const __m256i y = _mm256_loadu_si256((const __m256i *)(x[(size_t)a * stride + i].qs + e0));
                    sumi[a] = _mm256_add_epi32(sumi[a], _mm256_madd_epi16(s, _mm256_maddubs_epi16(q, y)));
                }
            }
        }
        for (int a = 0; a < 4; a++) {
            // As dot_q6_k_avx2: the offsets by sub-block, d = xd·d_w.
            sumi[a] = _mm256_sub_epi32(sumi[a], q6k_offsets_avx2(scales, x[(size_t)a * stride + i].bsums));
            const float d = x[(size_t)a * stride + i].d * dw;
            acc[a] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[a]), acc[a]);
        }
    }
    for (int a = 0; a < 4; a++) out[a] = hsum8(acc[a]);
}
#endif

typedef float (*tk_dot_k_fn)(const uint8_t *, const tk_block_q8k *, int);

static tk_dot_k_fn tk_pick_k(int type) {
    const int level = tk_simd_level();
    (void)level;
    switch (type) {
    case 12:
#if TK_X86
        if (level >= 1) return dot_q4_k_avx2;
#endif
        return dot_q4_k_scalar;
    case 13:
#if TK_X86
        if (level >= 1) return dot_q5_k_avx2;
#endif
        return dot_q5_k_scalar;
    case 14:
#if TK_X86
        if (level >= 1) return dot_q6_k_avx2;
#endif
        return dot_q6_k_scalar;
    default:
        return 0;
    }
}

float tk_dot_k(int type, const void *w, const tk_block_q8k *x, int n) {
    tk_dot_k_fn dot = tk_pick_k(type);
    return dot ? dot(w, x, n / 256) : NAN;
}

int tk_matmul_k(int type, const void *w, size_t row_bytes, int n, int row_begin, int row_end, const tk_block_q8k *x,
                int n_act, float *out, int out_stride) {
    tk_dot_k_fn dot = tk_pick_k(type);
    if (!dot) return -1;
    const int nb = n / 256;
    for (int r = row_begin; r < row_end; r++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)r * row_bytes;
        int b = 0;
#if TK_X86
        void (*four_rows)(const uint8_t *, const tk_block_q8k *, size_t, int, float *) =
            dot == dot_q4_k_avx2 ? dot4_q4_k_avx2 : dot == dot_q6_k_avx2 ? dot4_q6_k_avx2 : 0;
        if (four_rows) {
            for (; b + 4 <= n_act; b += 4) {
                float four[4];
                four_rows(row, x + (size_t)b * nb, (size_t)nb, nb, four);
                for (int a = 0; a < 4; a++) out[(size_t)(b + a) * out_stride + r] = four[a];
            }
        }
#endif
        for (; b < n_act; b++) out[(size_t)b * out_stride + r] = dot(row, x + (size_t)b * nb, nb);
    }
    return 0;
}

// Q4_K and Q5_K in llama.cpp's tiled order (ggml-cpu/tiled, with mins): per block s1 = Σ_s sc_s·Σ q·y and
// s2 = Σ_s m_s·(bsum_2s + bsum_2s+1), both exact; then f = fma(−dmin_w, float(s2), float(s1)·d_w) and
// acc = fma(f, d_x, acc).
static float dot_q45_k_tiled_scalar(const uint8_t *w, const tk_block_q8k *x, int nb, int five) {
    float acc = 0;
    for (int i = 0; i < nb; i++) {
        const uint8_t *b = w + (size_t)i * (five ? Q5_K_BYTES : Q4_K_BYTES);
        uint8_t sc[8], m[8];
        tk_q4k_scales(b + 4, sc, m);
        uint16_t dh, mh;
        memcpy(&dh, b, 2);
        memcpy(&mh, b + 2, 2);
        const uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16);
        int s1 = 0, s2 = 0;
        for (int s = 0; s < 8; s++) {
            int raw = 0;
            for (int l = 0; l < 32; l++) {
                const uint8_t packed = qs[32 * (s / 2) + l];
                const int high = five ? ((qh[l] >> s) & 1) << 4 : 0;
                raw += (((s & 1) ? packed >> 4 : packed & 0x0F) | high) * x[i].qs[32 * s + l];
            }
            s1 += sc[s] * raw;
            s2 += m[s] * (x[i].bsums[2 * s] + x[i].bsums[2 * s + 1]);
        }
        const float f = fmaf(-tk_half_to_float(mh), (float)s2, (float)s1 * tk_half_to_float(dh));
        acc = fmaf(f, x[i].d, acc);
    }
    return acc;
}

static float dot_q4_k_tiled_scalar(const uint8_t *w, const tk_block_q8k *x, int nb) {
    return dot_q45_k_tiled_scalar(w, x, nb, 0);
}

static float dot_q5_k_tiled_scalar(const uint8_t *w, const tk_block_q8k *x, int nb) {
    return dot_q45_k_tiled_scalar(w, x, nb, 1);
}

static tk_dot_k_fn tk_pick_k_tiled(int type) {
    switch (type) {
    case 12: return dot_q4_k_tiled_scalar;
    case 13: return dot_q5_k_tiled_scalar;
    case 14:
#if TK_X86
        if (tk_simd_level() >= 1) return dot_q6_k_tiled_avx2;
#endif
        return dot_q6_k_tiled_scalar;
    default: return 0;
    }
}

float tk_dot_k_tiled(int type, const void *w, const tk_block_q8k *x, int n) {
    tk_dot_k_fn dot = tk_pick_k_tiled(type);
    return dot ? dot(w, x, n / 256) : NAN;
}

int tk_matmul_k_ordered(int type, const void *w, size_t row_bytes, int n, int row_begin, int row_end,
                        const tk_block_q8k *x, int n_act, const uint8_t *orders, float *out, int out_stride) {
    tk_dot_k_fn tiled = tk_pick_k_tiled(type);
    if (!tiled) return -1;
    const int nb = n / 256;
    // Runs of rows in tk_dot_k's order go through tk_matmul_k (with its four-row kernels); the others one by one.
    int b = 0;
    while (b < n_act) {
        const int is_tiled = tk_row_tiled(orders, b), e = tk_tiled_run_end(orders, b, n_act);
        if (is_tiled) {
            for (int r = row_begin; r < row_end; r++) {
                const uint8_t *row = (const uint8_t *)w + (size_t)r * row_bytes;
                for (int a = b; a < e; a++) out[(size_t)a * out_stride + r] = tiled(row, x + (size_t)a * nb, nb);
            }
        } else {
            tk_matmul_k(type, w, row_bytes, n, row_begin, row_end, x + (size_t)b * nb, e - b,
                        out + (size_t)b * out_stride, out_stride);
        }
        b = e;
    }
    return 0;
}

typedef float (*tk_dot_fn)(const uint8_t *, const tk_block_q8 *, int);
tk_dot_fn tk_dot_q5_0_pick(void);
tk_dot_fn tk_dot_q5_0_pick(void) {
#if TK_X86
    if (tk_simd_level() >= 1) return dot_q5_0_avx2;
#endif
    return tk_dot_q5_0_scalar;
}
