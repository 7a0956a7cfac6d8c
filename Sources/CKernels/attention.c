// Attention kernels over the fp16 paged KV cache, in the arithmetic of llama.cpp's CPU flash attention. See
// CKernels.h.
#include "CKernels.h"

#include "internal.h"

#include <math.h>

// ---------------------------------------------------------------------------------------------------------------------
// q·k

// ggml's fp16 dot product as its AVX-512 build computes it (ggml_vec_dot_f16, the attention's q·k): four accumulators
// of 16 lanes over steps of 64 elements, lane j of the step an FMA chain; accumulators reduced (0+2) + (1+3), then
// across the 16 lanes as GCC's _mm512_reduce_add_ps does (upper half + lower half, twice, then (0+2) + (1+3));
// elements past the last full step added one product at a time in double.
static float dot_f16_scalar(const uint16_t *a, const float *b, int n) {
    float acc[64] = {0};
    const int np = n & ~63;
    for (int i = 0; i < np; i += 64) {
        for (int j = 0; j < 64; j++) acc[j] = fmaf(tk_half_to_float(a[i + j]), b[i + j], acc[j]);
    }
    float x[16], t3[8], t6[4];
    for (int l = 0; l < 16; l++) x[l] = (acc[l] + acc[32 + l]) + (acc[16 + l] + acc[48 + l]);
    for (int l = 0; l < 8; l++) t3[l] = x[l + 8] + x[l];
    for (int l = 0; l < 4; l++) t6[l] = t3[l + 4] + t3[l];
    double sum = (t6[0] + t6[2]) + (t6[1] + t6[3]);
    for (int i = np; i < n; i++) sum += (double)(tk_half_to_float(a[i]) * b[i]);
    return (float)sum;
}

#if TK_X86
// The same sums with eight 8-lane accumulators: accumulator c holds lanes 8c..8c+7 of the 64-element step.
TK_AVX2 static inline float reduce_f16_steps(const __m256 acc[8]) {
    const __m256 lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
    const __m256 hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
    return hsum8(_mm256_add_ps(hi, lo));
}

TK_AVX2 static float dot_f16_avx2(const uint16_t *a, const float *b, int n) {
    __m256 acc[8];
    for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
    const int np = n & ~63;
    for (int i = 0; i < np; i += 64) {
        for (int c = 0; c < 8; c++) {
            const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8 * c)));
            acc[c] = _mm256_fmadd_ps(x, _mm256_loadu_ps(b + i + 8 * c), acc[c]);
        }
    }
    double sum = reduce_f16_steps(acc);
    for (int i = np; i < n; i++) sum += (double)(tk_half_to_float(a[i]) * b[i]);
    return (float)sum;
}
#endif

float tk_dot_f16_f32(const uint16_t *a, const float *b, int n) {
#if TK_X86
    if (tk_simd_level() >= 1) return dot_f16_avx2(a, b, n);
#endif
    return dot_f16_scalar(a, b, n);
}

// ---------------------------------------------------------------------------------------------------------------------
// Attention, one key at a time (ggml's flash_attn_ext_f16_one_chunk)

// The accumulator of V is kept in fp16 (each update rounded to fp16), as ggml's flash attention does with an F16 cache.
// The two paths take the same rounding steps; they differ only in the q·k dot products (tk_dot_f16_f32 sums in order
// at the scalar level, in eight lanes otherwise). The scalar path is the portable fallback and the tests' reference.
static void attend_f16_scalar(const float *qr, int head_dim, int length, const uint16_t *k_base,
                              const uint16_t *v_base, const int32_t *table, int block_size, size_t block_stride,
                              size_t slot_stride, float scale, float *out) {
    uint16_t acc[512];
    for (int i = 0; i < head_dim; i++) acc[i] = 0;
    float m = -INFINITY;
    float s_sum = 0.0f;
    for (int t = 0; t < length; t++) {
        const size_t offset = (size_t)table[t / block_size] * block_stride + (size_t)(t % block_size) * slot_stride;
        const float s = tk_dot_f16_f32(k_base + offset, qr, head_dim) * scale;
        float ms = 1.0f, vs = 1.0f;
        if (s > m) {
            const float old = m;
            m = s;
            ms = expf(old - m);
            for (int i = 0; i < head_dim; i++) acc[i] = tk_float_to_half(tk_half_to_float(acc[i]) * ms);
        } else {
            vs = expf(s - m);
        }
        const uint16_t *v = v_base + offset;
        for (int i = 0; i < head_dim; i++) {
            acc[i] = tk_float_to_half(fmaf(tk_half_to_float(v[i]), vs, tk_half_to_float(acc[i])));
        }
        // One fused multiply-add, as ggml's build contracts S*ms + vs.
        s_sum = fmaf(s_sum, ms, vs);
        
    }
    const float inv = s_sum == 0.0f ? 0.0f : 1.0f / s_sum;
    for (int i = 0; i < head_dim; i++) out[i] = tk_half_to_float(acc[i]) * inv;
}

#if TK_X86
// head_dim must be a multiple of 8 here. acc holds fp16-rounded values widened to float.
TK_AVX2 static void attend_f16_avx2(const float *qr, int head_dim, int length, const uint16_t *k_base,
                                    const uint16_t *v_base, const int32_t *table, int block_size,
                                    size_t block_stride, size_t slot_stride, float scale, float *out) {
    float acc[512];
    for (int i = 0; i < head_dim; i++) acc[i] = 0.0f;
    float m = -INFINITY;
    float s_sum = 0.0f;
    for (int t = 0; t < length; t++) {
        const size_t offset = (size_t)table[t / block_size] * block_stride + (size_t)(t % block_size) * slot_stride;
        const float s = dot_f16_avx2(k_base + offset, qr, head_dim) * scale;
        float ms = 1.0f, vs = 1.0f;
        if (s > m) {
            const float old = m;
            m = s;
            ms = expf(old - m);
            const __m256 vms = _mm256_set1_ps(ms);
            for (int i = 0; i < head_dim; i += 8) {
                const __m256 a = _mm256_mul_ps(_mm256_loadu_ps(acc + i), vms);
                _mm256_storeu_ps(acc + i, _mm256_cvtph_ps(_mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)));
            }
        } else {
            vs = expf(s - m);
        }
        const uint16_t *v = v_base + offset;
        const __m256 vvs = _mm256_set1_ps(vs);
        for (int i = 0; i < head_dim; i += 8) {
            const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i)));
            const __m256 a = _mm256_fmadd_ps(x, vvs, _mm256_loadu_ps(acc + i));
            _mm256_storeu_ps(acc + i, _mm256_cvtph_ps(_mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)));
        }
        // One fused multiply-add, as ggml's build contracts S*ms + vs.
        s_sum = fmaf(s_sum, ms, vs);
        
    }
    const float inv = s_sum == 0.0f ? 0.0f : 1.0f / s_sum;
    for (int i = 0; i < head_dim; i++) out[i] = acc[i] * inv;
}

// The same steps for a head dimension known at compile time: the query and the accumulator stay in registers, and
// the keys are walked block by block (no division per key). Same operations in the same order as attend_f16_avx2.
#define TK_ATTEND_FIXED(NAME, HD)                                                                      \
    TK_AVX2 static void NAME(const float *qr, int length, const uint16_t *k_base, const uint16_t *v_base, \
                             const int32_t *table, int block_size, size_t block_stride, size_t slot_stride, \
                             float scale, float *out) {                                                \
        __m256 q[HD / 8], acc[HD / 8];                                                                 \
        for (int j = 0; j < HD / 8; j++) {                                                             \
            q[j] = _mm256_loadu_ps(qr + 8 * j);                                                        \
            acc[j] = _mm256_setzero_ps();                                                              \
        }                                                                                              \
        float m = -INFINITY;                                                                           \
        float s_sum = 0.0f;                                                                            \
        for (int start = 0; start < length; start += block_size) {                                     \
            const size_t block = (size_t)table[start / block_size] * block_stride;                     \
            const int end = length - start < block_size ? length - start : block_size;                 \
            for (int slot = 0; slot < end; slot++) {                                                   \
                const uint16_t *k = k_base + block + (size_t)slot * slot_stride;                       \
                const uint16_t *v = v_base + block + (size_t)slot * slot_stride;                       \
                __m256 d[8];                                                                           \
                for (int j = 0; j < 8; j++) {                                                          \
                    d[j] = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + 8 * j))), q[j]); \
                }                                                                                      \
                for (int j = 8; j < HD / 8; j++) {                                                     \
                    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + 8 * j)));   \
                    d[j % 8] = _mm256_fmadd_ps(x, q[j], d[j % 8]);                                     \
                }                                                                                      \
                const float s = reduce_f16_steps(d) * scale;                                           \
                float ms = 1.0f, vs = 1.0f;                                                            \
                if (s > m) {                                                                           \
                    const float old = m;                                                               \
                    m = s;                                                                             \
                    ms = expf(old - m);                                                                \
                    const __m256 vms = _mm256_set1_ps(ms);                                             \
                    for (int j = 0; j < HD / 8; j++) {                                                 \
                        acc[j] = _mm256_cvtph_ps(                                                      \
                            _mm256_cvtps_ph(_mm256_mul_ps(acc[j], vms), _MM_FROUND_TO_NEAREST_INT));   \
                    }                                                                                  \
                } else {                                                                               \
                    vs = expf(s - m);                                                                  \
                }                                                                                      \
                const __m256 vvs = _mm256_set1_ps(vs);                                                 \
                for (int j = 0; j < HD / 8; j++) {                                                     \
                    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8 * j)));   \
                    acc[j] = _mm256_cvtph_ps(                                                          \
                        _mm256_cvtps_ph(_mm256_fmadd_ps(x, vvs, acc[j]), _MM_FROUND_TO_NEAREST_INT));  \
                }                                                                                      \
                s_sum = fmaf(s_sum, ms, vs);                                                           \
            }                                                                                          \
        }                                                                                              \
        const float inv = s_sum == 0.0f ? 0.0f : 1.0f / s_sum;                                         \
        const __m256 vinv = _mm256_set1_ps(inv);                                                       \
        for (int j = 0; j < HD / 8; j++) _mm256_storeu_ps(out + 8 * j, _mm256_mul_ps(acc[j], vinv));   \
    }

TK_ATTEND_FIXED(attend_f16_avx2_64, 64)
TK_ATTEND_FIXED(attend_f16_avx2_128, 128)
#endif

void tk_attend_f16(const float *q, int head_dim, int length, const uint16_t *k_base, const uint16_t *v_base,
                   const int32_t *table, int block_size, size_t block_stride, size_t slot_stride, float scale,
                   float *out) {
    uint16_t q16[512];
    float qr[512];
    if (head_dim > 512) return;
    tk_f32_to_f16(q, q16, head_dim);
    tk_f16_to_f32(q16, qr, head_dim);
#if TK_X86
    if (tk_simd_level() >= 1 && (head_dim == 64 || head_dim == 128)) {
        (head_dim == 64 ? attend_f16_avx2_64 : attend_f16_avx2_128)(
            qr, length, k_base, v_base, table, block_size, block_stride, slot_stride, scale, out);
        return;
    }
    if (tk_simd_level() >= 1 && head_dim % 8 == 0) {
        attend_f16_avx2(qr, head_dim, length, k_base, v_base, table, block_size, block_stride, slot_stride, scale,
                        out);
        return;
    }
#endif
    attend_f16_scalar(qr, head_dim, length, k_base, v_base, table, block_size, block_stride, slot_stride, scale, out);
}

// ---------------------------------------------------------------------------------------------------------------------
// Attention in tiles of 64 keys (ggml's flash_attn_ext_tiled, which llama.cpp runs for micro-batches of 64 query rows
// or more). For one query row it computes: the query in fp32; per tile of 64 positions (from position 0), each score
// an FMA chain over the head dimension in ascending order, times the scale; the running maximum m, and when the tile
// raises it, the accumulator and the sum S multiplied by expf(m_old - m_new); the tile's exponentials by ggml's vector
// expf (tk_expf), summed 16 lanes at a time in GCC's _mm512_reduce_add_ps order into a double, which is added to S in
// double; V accumulated per output lane as an FMA chain over the tile's keys in order, in fp32; finally times 1/S.
// The result of a row depends only on its query and keys, never on which rows share its tile in ggml.

#define TK_TILE 64

static const uint16_t *tk_slot(const uint16_t *base, const int32_t *table, int t, int block_size,
                               size_t block_stride, size_t slot_stride) {
    return base + (size_t)table[t / block_size] * block_stride + (size_t)(t % block_size) * slot_stride;
}

// Sum of the tile's 64 exponentials: four groups of 16, each reduced as (upper 8 + lower 8), then (i+4 + i), then
// (0+2) + (1+3); the four group sums added in double.
static double tile_sum(const float e[TK_TILE]) {
    double sum = 0;
    for (int g = 0; g < TK_TILE; g += 16) {
        float t3[8], t6[4];
        for (int l = 0; l < 8; l++) t3[l] = e[g + l + 8] + e[g + l];
        for (int l = 0; l < 4; l++) t6[l] = t3[l + 4] + t3[l];
        sum += (double)((t6[0] + t6[2]) + (t6[1] + t6[3]));
    }
    return sum;
}

// The softmax step of one tile, given its n scores in e: raises the running maximum m (returning the factor
// expf(m_old - m_new) by which the caller multiplies its accumulator; 1 when m did not grow) and adds the tile's
// exponentials, left in e (zero past n), to the sum. `exps` computes e[t] = tk_expf(e[t] - max) for t < n.
static float tile_update(float e[TK_TILE], int n, float *m, float *s_sum, void (*exps)(float *, int, float)) {
    float tile_max = -INFINITY;
    for (int t = 0; t < n; t++) tile_max = e[t] > tile_max ? e[t] : tile_max;
    const float m_new = fmaxf(*m, tile_max);
    float ms = 1.0f;
    if (m_new > *m) {
        ms = expf(*m - m_new);
        *s_sum *= ms;
    }
    *m = m_new;
    exps(e, n, m_new);
    for (int t = n; t < TK_TILE; t++) e[t] = 0.0f;
    *s_sum = (float)((double)*s_sum + tile_sum(e));
    return ms;
}

static void exps_scalar(float *e, int n, float max) {
    for (int t = 0; t < n; t++) e[t] = tk_expf(e[t] - max);
}

#if TK_X86
TK_AVX2 static void exps_avx2(float *e, int n, float max) {
    const __m256 vmax = _mm256_set1_ps(max);
    int t = 0;
    for (; t + 8 <= n; t += 8) {
        int ok;
        const __m256 x = _mm256_sub_ps(_mm256_loadu_ps(e + t), vmax);
        const __m256 y = tk_expf8(x, &ok);
        if (ok) {
            _mm256_storeu_ps(e + t, y);
        } else {
            exps_scalar(e + t, 8, max);
        }
    }
    exps_scalar(e + t, n - t, max);
}
#endif

void tk_tile_kv(const uint16_t *k_base, const uint16_t *v_base, const int32_t *table, int block_size,
                size_t block_stride, size_t slot_stride, int length, int head_dim, float *kt, float *v) {
    const int tiles = (length + TK_TILE - 1) / TK_TILE;
    for (int tile = 0; tile < tiles; tile++) {
        float *block = kt + (size_t)tile * head_dim * TK_TILE;
        for (int t = 0; t < TK_TILE; t++) {
            const int position = tile * TK_TILE + t;
            if (position < length) {
                const uint16_t *k = tk_slot(k_base, table, position, block_size, block_stride, slot_stride);
                for (int i = 0; i < head_dim; i++) block[i * TK_TILE + t] = tk_half_to_float(k[i]);
            } else {
                for (int i = 0; i < head_dim; i++) block[i * TK_TILE + t] = 0.0f;
            }
        }
    }
    for (int t = 0; t < length; t++) {
        tk_f16_to_f32(tk_slot(v_base, table, t, block_size, block_stride, slot_stride), v + (size_t)t * head_dim,
                      head_dim);
    }
}

static void attend_tiled_scalar(const float *q, int head_dim, int length, const float *kt, const float *v,
                                float scale, float *out) {
    float acc[512];
    for (int i = 0; i < head_dim; i++) acc[i] = 0.0f;
    float m = -INFINITY, s_sum = 0.0f;
    for (int start = 0; start < length; start += TK_TILE) {
        const int n = length - start < TK_TILE ? length - start : TK_TILE;
        const float *block = kt + (size_t)start * head_dim;
        float e[TK_TILE];
        for (int t = 0; t < n; t++) {
            float d = 0.0f;
            for (int i = 0; i < head_dim; i++) d = fmaf(block[i * TK_TILE + t], q[i], d);
            e[t] = d * scale;
        }
        const float ms = tile_update(e, n, &m, &s_sum, exps_scalar);
        if (ms != 1.0f) {
            for (int i = 0; i < head_dim; i++) acc[i] *= ms;
        }
        for (int t = 0; t < n; t++) {
            const float *vr = v + (size_t)(start + t) * head_dim;
            for (int i = 0; i < head_dim; i++) acc[i] = fmaf(vr[i], e[t], acc[i]);
        }
    }
    const float inv = s_sum == 0.0f ? 0.0f : 1.0f / s_sum;
    for (int i = 0; i < head_dim; i++) out[i] = acc[i] * inv;
}

#if TK_X86
// The same steps with eight keys' scores in the lanes of a vector (the 64 of a tile in eight vectors, each an FMA chain
// over the head dimension) and the accumulator in registers over the head dimension, updated key by key.
#define TK_TILED_FIXED(NAME, HD)                                                                               \
    TK_AVX2 static void NAME(const float *q, int length, const float *kt, const float *v, float scale, float *out) { \
        __m256 acc[HD / 8];                                                                                    \
        for (int j = 0; j < HD / 8; j++) acc[j] = _mm256_setzero_ps();                                        \
        float m = -INFINITY, s_sum = 0.0f;                                                                     \
        const __m256 vscale = _mm256_set1_ps(scale);                                                           \
        for (int start = 0; start < length; start += TK_TILE) {                                                \
            const int n = length - start < TK_TILE ? length - start : TK_TILE;                                 \
            const float *block = kt + (size_t)start * HD;                                                      \
            const int groups = (n + 7) / 8;                                                                    \
            __m256 d[8];                                                                                       \
            for (int g = 0; g < 8; g++) d[g] = _mm256_setzero_ps();                                            \
            for (int i = 0; i < HD; i++) {                                                                     \
                const __m256 qi = _mm256_set1_ps(q[i]);                                                        \
                const float *row = block + i * TK_TILE;                                                        \
                for (int g = 0; g < groups; g++) d[g] = _mm256_fmadd_ps(_mm256_loadu_ps(row + 8 * g), qi, d[g]); \
            }                                                                                                  \
            float e[TK_TILE];                                                                                  \
            for (int g = 0; g < groups; g++) _mm256_storeu_ps(e + 8 * g, _mm256_mul_ps(d[g], vscale));         \
            const float ms = tile_update(e, n, &m, &s_sum, exps_avx2);                                         \
            if (ms != 1.0f) {                                                                                  \
                const __m256 vms = _mm256_set1_ps(ms);                                                         \
                for (int j = 0; j < HD / 8; j++) acc[j] = _mm256_mul_ps(acc[j], vms);                          \
            }                                                                                                  \
            const float *vr = v + (size_t)start * HD;                                                          \
            for (int t = 0; t < n; t++, vr += HD) {                                                            \
                const __m256 et = _mm256_set1_ps(e[t]);                                                        \
                for (int j = 0; j < HD / 8; j++) acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(vr + 8 * j), et, acc[j]); \
            }                                                                                                  \
        }                                                                                                      \
        const float inv = s_sum == 0.0f ? 0.0f : 1.0f / s_sum;                                                 \
        const __m256 vinv = _mm256_set1_ps(inv);                                                               \
        for (int j = 0; j < HD / 8; j++) _mm256_storeu_ps(out + 8 * j, _mm256_mul_ps(acc[j], vinv));           \
    }

TK_TILED_FIXED(attend_tiled_avx2_64, 64)
TK_TILED_FIXED(attend_tiled_avx2_128, 128)
#endif

void tk_attend_tiled(const float *q, int head_dim, int length, const float *kt, const float *v, float scale,
                     float *out) {
    if (head_dim > 512) return;
#if TK_X86
    if (tk_simd_level() >= 1 && (head_dim == 64 || head_dim == 128)) {
        (head_dim == 64 ? attend_tiled_avx2_64 : attend_tiled_avx2_128)(q, length, kt, v, scale, out);
        return;
    }
#endif
    attend_tiled_scalar(q, head_dim, length, kt, v, scale, out);
}
