// Quantized dot-product kernels with run-time SIMD dispatch. See CKernels.h.
#include "CKernels.h"

#include "internal.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

static inline float tk_round_half(float x) { return tk_half_to_float(tk_float_to_half(x)); }

// ---------------------------------------------------------------------------------------------------------------------
// SIMD level selection

static int tk_level = -1;
// A per-thread override set by tk_set_simd_level, so tests can pin a level without affecting other threads.
static _Thread_local int tk_thread_level = -1;

static int tk_detect_level(void) {
#if TK_X86
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c")) {
        return 0;
    }
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw")) {
        return 2;
    }
    return 1;
#endif
    return 0;
}

int tk_simd_level(void) {
    if (tk_thread_level >= 0) return tk_thread_level;
    if (tk_level < 0) tk_level = tk_detect_level();
    return tk_level;
}

int tk_set_simd_level(int level) {
    int best = tk_detect_level();
    tk_thread_level = level < best ? (level < 0 ? 0 : level) : best;
    return tk_thread_level;
}

// ---------------------------------------------------------------------------------------------------------------------
// Activation quantization (shared by every path; its result does not depend on the SIMD level)

#if TK_X86
// The same block quantization with AVX2: max|x|, x·(127/max) rounded half to even, the integer sum. Every step is
// exact or the same single rounding as the scalar loop, so the blocks are bitwise equal.
__attribute__((target("avx2,f16c"))) static void quantize_q8_avx2(const float *x, tk_block_q8 *y, int nb) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < nb; i++) {
        const float *xb = x + i * 32;
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float max = _mm_cvtss_f32(m4);
        const float d = max / 127.0f;
        const __m256 id = _mm256_set1_ps(max != 0.0f ? 127.0f / max : 0.0f);
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
        const __m256i sum32 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_extracti128_si256(sum32, 1), _mm256_castsi256_si128(sum32));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        const int sum = _mm_cvtsi128_si32(s4);
        // int32 -> int16 -> int8 with saturation (values are within ±127), then undo the lane interleaving of packs.
        const __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
        const __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
        const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        const __m256i ordered = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[i].qs, ordered);
        y[i].d = tk_round_half(d);
        y[i].s = tk_round_half((float)sum * d);
    }
}
#endif

void tk_quantize_q8(const float *x, tk_block_q8 *y, int n) {
#if TK_X86
    if (tk_simd_level() >= 1) {
        quantize_q8_avx2(x, y, n / 32);
        return;
    }
#endif
    const int nb = n / 32;
    for (int i = 0; i < nb; i++) {
        const float *xb = x + i * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = (int)nearbyintf(xb[j] * id);
            y[i].qs[j] = (int8_t)q;
            sum += q;
        }
        y[i].d = tk_round_half(d);
        y[i].s = tk_round_half((float)sum * d);
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Scalar paths

static float dot_q4_0_scalar(const uint8_t *w, const tk_block_q8 *x, int nb) {
    float acc = 0.0f;
    for (int i = 0; i < nb; i++, w += 18) {
        uint16_t dh;
        memcpy(&dh, w, 2);
        const uint8_t *qs = w + 2;
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            sum += ((qs[j] & 0x0F) - 8) * x[i].qs[j] + ((qs[j] >> 4) - 8) * x[i].qs[j + 16];
        }
        acc += tk_half_to_float(dh) * x[i].d * (float)sum;
    }
    return acc;
}

// Q4_1 and Q8_0 in llama.cpp's order, as the interleaved kernels compute them (interleaved.c): eight partial sums,
// partial c taking columns 4c..4c+3 (Q4_1: the low nibbles of bytes 4c..4c+3 for c < 4, their high nibbles for c >= 4)
// of every block, reduced ((4+0) + (6+2)) + ((5+1) + (7+3)); Q4_1's minimums accumulate apart and are added last.
static inline float reduce8_lanes(const float a[8]) {
    return ((a[4] + a[0]) + (a[6] + a[2])) + ((a[5] + a[1]) + (a[7] + a[3]));
}

static float dot_q4_1_scalar(const uint8_t *w, const tk_block_q8 *x, int nb) {
    float acc[8] = {0}, mins = 0.0f;
    for (int i = 0; i < nb; i++, w += 20) {
        uint16_t dh, mh;
        memcpy(&dh, w, 2);
        memcpy(&mh, w + 2, 2);
        const uint8_t *qs = w + 4;
        const float scale = tk_half_to_float(dh) * x[i].d;
        for (int c = 0; c < 8; c++) {
            int sum = 0;
            for (int j = 0; j < 4; j++) {
                const uint8_t q = qs[4 * (c & 3) + j];
                sum += (c < 4 ? q & 0x0F : q >> 4) * x[i].qs[4 * c + j];
            }
            acc[c] = fmaf(scale, (float)sum, acc[c]);
        }
        mins = fmaf(tk_half_to_float(mh), x[i].s, mins);
    }
    return reduce8_lanes(acc) + mins;
}

static float dot_q8_0_scalar(const uint8_t *w, const tk_block_q8 *x, int nb) {
    float acc[8] = {0};
    for (int i = 0; i < nb; i++, w += 34) {
        uint16_t dh;
        memcpy(&dh, w, 2);
        const int8_t *qs = (const int8_t *)(w + 2);
        const float scale = tk_half_to_float(dh) * x[i].d;
        for (int c = 0; c < 8; c++) {
            int sum = 0;
            for (int j = 0; j < 4; j++) sum += qs[4 * c + j] * x[i].qs[4 * c + j];
            acc[c] = fmaf(scale, (float)sum, acc[c]);
        }
    }
    return reduce8_lanes(acc);
}

// ---------------------------------------------------------------------------------------------------------------------
// AVX2 and AVX-512 VNNI paths. Each block's integer sum is exact, so every path returns the same per-block terms;
// only the float accumulation order differs (8 lanes, then a horizontal sum).

#if TK_X86
#define TK_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

// Expands 16 bytes of packed nibbles into 32 bytes: low nibbles first, then high nibbles (ggml's element order).
TK_AVX2 static inline __m256i unpack_nibbles(const uint8_t *qs) {
    const __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(packed, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    return _mm256_set_m128i(hi, lo);
}

// Sum of products of 32 unsigned bytes with 32 signed bytes, as 8 int32 lanes.
TK_AVX2 static inline __m256i dot_u8_s8_avx2(__m256i u, __m256i s) {
    const __m256i p16 = _mm256_maddubs_epi16(u, s);
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

TK_VNNI static inline __m256i dot_u8_s8_vnni(__m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}

#define TK_DEFINE_Q4_0(NAME, ATTR, DOT)                                                                \
    ATTR static float NAME(const uint8_t *w, const tk_block_q8 *x, int nb) {                           \
        __m256 acc = _mm256_setzero_ps();                                                              \
        const __m256i eight = _mm256_set1_epi8(8);                                                     \
        for (int i = 0; i < nb; i++, w += 18) {                                                        \
            uint16_t dh;                                                                               \
            memcpy(&dh, w, 2);                                                                         \
            const __m256i q = _mm256_sub_epi8(unpack_nibbles(w + 2), eight);                           \
            const __m256i y = _mm256_loadu_si256((const __m256i *)x[i].qs);                            \
            const __m256i aq = _mm256_sign_epi8(q, q);                                                 \
            const __m256i sy = _mm256_sign_epi8(y, q);                                                 \
            const __m256 sum = _mm256_cvtepi32_ps(DOT(aq, sy));                                        \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(tk_half_to_float(dh) * x[i].d), sum, acc);            \
        }                                                                                              \
        return hsum8(acc);                                                                             \
    }

TK_DEFINE_Q4_0(dot_q4_0_avx2, TK_AVX2, dot_u8_s8_avx2)
TK_DEFINE_Q4_0(dot_q4_0_vnni, TK_VNNI, dot_u8_s8_vnni)
#endif

typedef float (*tk_dot_fn)(const uint8_t *, const tk_block_q8 *, int);
tk_dot_fn tk_dot_q5_0_pick(void);
int tk_matmul_q5_0_by4(const void *w, size_t row_bytes, int n, int row_begin, int row_end, const tk_block_q8 *x,
                       int n_act, float *out, int out_stride);

static tk_dot_fn tk_pick(int type) {
    const int level = tk_simd_level();
    switch (type) {
    case 2:
#if TK_X86
        if (level == 2) return dot_q4_0_vnni;
        if (level == 1) return dot_q4_0_avx2;
#endif
        return dot_q4_0_scalar;
    case 3: return dot_q4_1_scalar;  // SIMD: the interleaved kernels
    case 6: return tk_dot_q5_0_pick();
    case 8: return dot_q8_0_scalar;
    default:
        return 0;
    }
}

float tk_dot_q4_0(const void *w, const tk_block_q8 *x, int n) { return tk_pick(2)(w, x, n / 32); }
float tk_dot_q4_1(const void *w, const tk_block_q8 *x, int n) { return tk_pick(3)(w, x, n / 32); }
float tk_dot_q8_0(const void *w, const tk_block_q8 *x, int n) { return tk_pick(8)(w, x, n / 32); }

int tk_matmul_q(int type, const void *w, size_t row_bytes, int n, int row_begin, int row_end,
                const tk_block_q8 *x, int n_act, float *out, int out_stride) {
    tk_dot_fn dot = tk_pick(type);
    if (!dot) return -1;
    if (type == 6 && n_act >= 4 && tk_matmul_q5_0_by4(w, row_bytes, n, row_begin, row_end, x, n_act, out, out_stride) == 0)
        return 0;
    const int nb = n / 32;
    for (int r = row_begin; r < row_end; r++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)r * row_bytes;
        for (int b = 0; b < n_act; b++) {
            out[(size_t)b * out_stride + r] = dot(row, x + (size_t)b * nb, nb);
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------------
// fp16 helpers for the KV cache. The SIMD versions convert with F16C; sums use 8 lanes then a fixed reduction.

#if TK_X86
__attribute__((target("avx2,fma,f16c"))) static void axpy_f16_avx2(float alpha, const uint16_t *a, float *y, int n) {
    const __m256 va = _mm256_set1_ps(alpha);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, x, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] += alpha * tk_half_to_float(a[i]);
}

__attribute__((target("avx2,f16c"))) static void f32_to_f16_avx2(const float *x, uint16_t *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++) y[i] = tk_float_to_half(x[i]);
}

__attribute__((target("avx2,f16c"))) static void f16_to_f32_avx2(const uint16_t *x, float *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = tk_half_to_float(x[i]);
}
#endif

void tk_axpy_f16(float alpha, const uint16_t *a, float *y, int n) {
#if TK_X86
    if (tk_simd_level() >= 1) {
        axpy_f16_avx2(alpha, a, y, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) y[i] += alpha * tk_half_to_float(a[i]);
}

void tk_f32_to_f16(const float *x, uint16_t *y, int n) {
#if TK_X86
    if (tk_simd_level() >= 1) {
        f32_to_f16_avx2(x, y, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) y[i] = tk_float_to_half(x[i]);
}

void tk_f16_to_f32(const uint16_t *x, float *y, int n) {
#if TK_X86
    if (tk_simd_level() >= 1) {
        f16_to_f32_avx2(x, y, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) y[i] = tk_half_to_float(x[i]);
}

// ---------------------------------------------------------------------------------------------------------------------
// exp and SwiGLU

float tk_expf(float x) {
    const float r = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                         fmaf(0x1.ffffecp-1f, b, 1.0f));
    return ldexpf(j, (int)n);
}

static void swiglu_scalar(float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) {
        const float g = gate[i];
        gate[i] = g / (1.0f + tk_expf(-g)) * up[i];
    }
}

#if TK_X86
// Eight lanes of tk_expf's exact steps; ldexpf becomes a multiply by 2^n, exact when n is in [-126, 127] (else the
// caller falls back to the scalar path for those eight elements).
TK_AVX2 static void swiglu_avx2(float *gate, const float *up, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        int ok;
        const __m256 e = tk_expf8(_mm256_xor_ps(g, sign), &ok);
        if (!ok) {
            swiglu_scalar(gate + i, up + i, 8);
            continue;
        }
        const __m256 out = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)),
                                         _mm256_loadu_ps(up + i));
        _mm256_storeu_ps(gate + i, out);
    }
    swiglu_scalar(gate + i, up + i, n - i);
}
#endif

void tk_swiglu(float *gate, const float *up, int n) {
#if TK_X86
    if (tk_simd_level() >= 1) {
        swiglu_avx2(gate, up, n);
        return;
    }
#endif
    swiglu_scalar(gate, up, n);
}

// ---------------------------------------------------------------------------------------------------------------------
// GELU (tanh approximation), as ggml's CPU backend computes it: the input rounded to fp16 indexes a table of
// gelu(x) rounded to fp16, with gelu(x) = 0 below -10 and x above 10.

// Two spare entries: the AVX2 path gathers 32 bits at each entry.
static uint16_t tk_gelu_table[(1 << 16) + 2];
static pthread_once_t tk_gelu_once = PTHREAD_ONCE_INIT;

static void tk_gelu_build(void) {
    for (int i = 0; i < (1 << 16); i++) {
        const float x = tk_half_to_float((uint16_t)i);
        // ggml builds its table with FMA contraction (-march=native): 1 + 0.044715·x·x is fma(0.044715·x, x, 1).
        // Without it 3-4 % of the entries differ by an fp16 ulp, which moved Gemma 3's logits by up to 0.3.
        const float y =
            0.5f * x * (1.0f + tanhf(0.79788456080286535587989211986876f * x * fmaf(0.044715f * x, x, 1.0f)));
        tk_gelu_table[i] = tk_float_to_half(y);
    }
}

static void geglu_scalar(float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) {
        const float x = gate[i];
        if (x <= -10.0f) {
            gate[i] = 0.0f;
        } else if (x >= 10.0f) {
            gate[i] = x * up[i];
        } else {
            gate[i] = tk_half_to_float(tk_gelu_table[tk_float_to_half(x)]) * up[i];
        }
    }
}

#if TK_X86
// Eight at a time: the same fp16 rounding (round to nearest even, as the scalar cast), the same table entries.
TK_AVX2 static void geglu_avx2(float *gate, const float *up, int n) {
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(gate + i);
        const __m256i h = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        const __m256i t = _mm256_and_si256(_mm256_i32gather_epi32((const int *)tk_gelu_table, h, 2),
                                           _mm256_set1_epi32(0xFFFF));
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(t, t), 0x08);
        __m256 g = _mm256_cvtph_ps(_mm256_castsi256_si128(packed));
        g = _mm256_blendv_ps(g, x, _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
        const __m256 y = _mm256_mul_ps(g, _mm256_loadu_ps(up + i));
        _mm256_storeu_ps(gate + i, _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LE_OQ)));
    }
    geglu_scalar(gate + i, up + i, n - i);
}
#endif

void tk_geglu(float *gate, const float *up, int n) {
    pthread_once(&tk_gelu_once, tk_gelu_build);
#if TK_X86
    if (tk_simd_level() >= 1) {
        geglu_avx2(gate, up, n);
        return;
    }
#endif
    geglu_scalar(gate, up, n);
}
