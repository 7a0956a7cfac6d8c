// Attention kernels over the fp16 paged KV cache, in the arithmetic of llama.cpp's CPU flash attention. See
// CKernels.h.
#include "CKernels.h"

#include "internal.h"

#include <math.h>
#include <stdlib.h>

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

// One KV head's keys and values in the paged cache: position t at table[t / block_size] * block_stride +
// (t % block_size) * slot_stride from k (and v).
typedef struct {
    const uint16_t *k, *v;
    const int32_t *table;
    int block_size;
    size_t block_stride, slot_stride;
} tk_kv_view;

static inline size_t kv_offset(const tk_kv_view *kv, int t) {
    return (size_t)kv->table[t / kv->block_size] * kv->block_stride + (size_t)(t % kv->block_size) * kv->slot_stride;
}

// One step of the online softmax for score s: a new maximum gives the factor ms = expf(m_old - s) for the accumulator
// (and the value weight vs = 1); otherwise ms = 1 and vs = expf(s - m). Rescaling by ms = 1 changes nothing, so the
// callers skip it.
static inline void softmax_step(float s, float *m, float *ms, float *vs) {
    *ms = 1.0f;
    *vs = 1.0f;
    if (s > *m) {
        *ms = expf(*m - s);
        *m = s;
    } else {
        *vs = expf(s - *m);
    }
}

// The online softmax over positions [begin, end), with ggml's steps: the query already rounded to fp16; each score
// scaled; a new maximum rescales the accumulator by expf(old - new), otherwise the value is weighted by expf(s - max);
// the accumulator of V kept in fp16 (every update rounded to fp16); the sum updated as fma(S, ms, vs), as ggml's build
// contracts S*ms + vs. Leaves the running maximum, the sum and the unnormalized accumulator (fp16 values as floats).
// The scalar path is the portable fallback; the SIMD paths take the same steps bit for bit.
static void chunk_f16_scalar(const float *qr, int head_dim, int begin, int end, const tk_kv_view *kv, float scale,
                             float *m_out, float *s_out, float *out) {
    uint16_t acc[512];
    for (int i = 0; i < head_dim; i++) acc[i] = 0;
    float m = -INFINITY;
    float s_sum = 0.0f;
    for (int t = begin; t < end; t++) {
        const size_t offset = kv_offset(kv, t);
        float ms, vs;
        softmax_step(tk_dot_f16_f32(kv->k + offset, qr, head_dim) * scale, &m, &ms, &vs);
        if (ms != 1.0f) {
            for (int i = 0; i < head_dim; i++) acc[i] = tk_float_to_half(tk_half_to_float(acc[i]) * ms);
        }
        const uint16_t *v = kv->v + offset;
        for (int i = 0; i < head_dim; i++) {
            acc[i] = tk_float_to_half(fmaf(tk_half_to_float(v[i]), vs, tk_half_to_float(acc[i])));
        }
        s_sum = fmaf(s_sum, ms, vs);
    }
    *m_out = m;
    *s_out = s_sum;
    for (int i = 0; i < head_dim; i++) out[i] = tk_half_to_float(acc[i]);
}

#if TK_X86
// The same steps with the accumulator in vectors; head_dim must be a multiple of 8.
TK_AVX2 static void chunk_f16_avx2(const float *qr, int head_dim, int begin, int end, const tk_kv_view *kv,
                                   float scale, float *m_out, float *s_out, float *acc) {
    for (int i = 0; i < head_dim; i++) acc[i] = 0.0f;
    float m = -INFINITY;
    float s_sum = 0.0f;
    for (int t = begin; t < end; t++) {
        const size_t offset = kv_offset(kv, t);
        float ms, vs;
        softmax_step(dot_f16_avx2(kv->k + offset, qr, head_dim) * scale, &m, &ms, &vs);
        if (ms != 1.0f) {
            const __m256 vms = _mm256_set1_ps(ms);
            for (int i = 0; i < head_dim; i += 8) {
                const __m256 a = _mm256_mul_ps(_mm256_loadu_ps(acc + i), vms);
                _mm256_storeu_ps(acc + i, _mm256_cvtph_ps(_mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)));
            }
        }
        const uint16_t *v = kv->v + offset;
        const __m256 vvs = _mm256_set1_ps(vs);
        for (int i = 0; i < head_dim; i += 8) {
            const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i)));
            const __m256 a = _mm256_fmadd_ps(x, vvs, _mm256_loadu_ps(acc + i));
            _mm256_storeu_ps(acc + i, _mm256_cvtph_ps(_mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)));
        }
        s_sum = fmaf(s_sum, ms, vs);
    }
    *m_out = m;
    *s_out = s_sum;
}

// The same steps for a head dimension known at compile time: the query and the accumulator stay in registers, and
// the keys are walked block by block (no division per key).
#define TK_CHUNK_FIXED(NAME, HD)                                                                               \
    TK_AVX2 static void NAME(const float *qr, int begin, int end, const tk_kv_view *kv, float scale, float *m_out, \
                             float *s_out, float *out) {                                                       \
        __m256 q[HD / 8], acc[HD / 8];                                                                         \
        for (int j = 0; j < HD / 8; j++) {                                                                     \
            q[j] = _mm256_loadu_ps(qr + 8 * j);                                                                \
            acc[j] = _mm256_setzero_ps();                                                                      \
        }                                                                                                      \
        float m = -INFINITY;                                                                                   \
        float s_sum = 0.0f;                                                                                    \
        for (int t = begin; t < end;) {                                                                        \
            const size_t block = (size_t)kv->table[t / kv->block_size] * kv->block_stride;                     \
            const int first = t % kv->block_size;                                                              \
            const int last = end - t + first < kv->block_size ? end - t + first : kv->block_size;              \
            for (int slot = first; slot < last; slot++) {                                                      \
                const uint16_t *k = kv->k + block + (size_t)slot * kv->slot_stride;                            \
                const uint16_t *v = kv->v + block + (size_t)slot * kv->slot_stride;                            \
                __m256 d[8];                                                                                   \
                for (int j = 0; j < 8; j++) {                                                                  \
                    d[j] = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + 8 * j))), q[j]); \
                }                                                                                              \
                for (int j = 8; j < HD / 8; j++) {                                                             \
                    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + 8 * j)));           \
                    d[j % 8] = _mm256_fmadd_ps(x, q[j], d[j % 8]);                                             \
                }                                                                                              \
                float ms, vs;                                                                                  \
                softmax_step(reduce_f16_steps(d) * scale, &m, &ms, &vs);                                       \
                if (ms != 1.0f) {                                                                              \
                    const __m256 vms = _mm256_set1_ps(ms);                                                     \
                    for (int j = 0; j < HD / 8; j++) {                                                         \
                        acc[j] = _mm256_cvtph_ps(                                                              \
                            _mm256_cvtps_ph(_mm256_mul_ps(acc[j], vms), _MM_FROUND_TO_NEAREST_INT));           \
                    }                                                                                          \
                }                                                                                              \
                const __m256 vvs = _mm256_set1_ps(vs);                                                         \
                for (int j = 0; j < HD / 8; j++) {                                                             \
                    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8 * j)));           \
                    acc[j] = _mm256_cvtph_ps(                                                                  \
                        _mm256_cvtps_ph(_mm256_fmadd_ps(x, vvs, acc[j]), _MM_FROUND_TO_NEAREST_INT));          \
                }                                                                                              \
                s_sum = fmaf(s_sum, ms, vs);                                                                   \
            }                                                                                                  \
            t += last - first;                                                                                 \
        }                                                                                                      \
        *m_out = m;                                                                                            \
        *s_out = s_sum;                                                                                        \
        for (int j = 0; j < HD / 8; j++) _mm256_storeu_ps(out + 8 * j, acc[j]);                                \
    }

TK_CHUNK_FIXED(chunk_f16_avx2_64, 64)
TK_CHUNK_FIXED(chunk_f16_avx2_128, 128)
#endif

// One chunk of positions for the query qr (already rounded to fp16), by the best path for this machine.
static void chunk_f16(const float *qr, int head_dim, int begin, int end, const tk_kv_view *kv, float scale, float *m,
                      float *s, float *acc) {
#if TK_X86
    if (tk_simd_level() >= 1 && (head_dim == 64 || head_dim == 128)) {
        (head_dim == 64 ? chunk_f16_avx2_64 : chunk_f16_avx2_128)(qr, begin, end, kv, scale, m, s, acc);
        return;
    }
    if (tk_simd_level() >= 1 && head_dim % 8 == 0) {
        chunk_f16_avx2(qr, head_dim, begin, end, kv, scale, m, s, acc);
        return;
    }
#endif
    chunk_f16_scalar(qr, head_dim, begin, end, kv, scale, m, s, acc);
}

static void round_query(const float *q, float *qr, int head_dim) {
    uint16_t q16[512];
    tk_f32_to_f16(q, q16, head_dim);
    tk_f16_to_f32(q16, qr, head_dim);
}

void tk_attend_f16(const float *q, int head_dim, int length, const uint16_t *k_base, const uint16_t *v_base,
                   const int32_t *table, int block_size, size_t block_stride, size_t slot_stride, float scale,
                   float *out) {
    tk_attend_f16_window(q, head_dim, 0, length, k_base, v_base, table, block_size, block_stride, slot_stride, scale,
                         out);
}

// Masked positions are skipped, as ggml's kernel skips cells whose mask is -inf: the arithmetic over the others is
// unchanged.
void tk_attend_f16_window(const float *q, int head_dim, int first, int length, const uint16_t *k_base,
                          const uint16_t *v_base, const int32_t *table, int block_size, size_t block_stride,
                          size_t slot_stride, float scale, float *out) {
    if (head_dim > 512) return;
    float qr[512], m, s;
    round_query(q, qr, head_dim);
    const tk_kv_view kv = {k_base, v_base, table, block_size, block_stride, slot_stride};
    chunk_f16(qr, head_dim, first < 0 ? 0 : first, length, &kv, scale, &m, &s, out);
    const float inv = s == 0.0f ? 0.0f : 1.0f / s;
    for (int i = 0; i < head_dim; i++) out[i] *= inv;
}

// ggml's split-KV decode (ggml_compute_forward_flash_attn_ext_f16 with one query row and 512 or more KV cells): the
// cells are cut into `parts` chunks of ceil(cells / parts), one per llama.cpp thread, each an online softmax as above
// over its visible positions; the partial results are merged in chunk order (chunks with a zero sum skipped):
// m = max, both sides scaled by expf(m_side - m), the accumulator and the sum as fma(a, scale_old, b * scale_new), as
// ggml's build contracts a*scale_old + b*scale_new; finally times 1/S.
void tk_attend_part(const float *q, int head_dim, int length, int cells, int parts, int part,
                    const uint16_t *k_base, const uint16_t *v_base, const int32_t *table, int block_size,
                    size_t block_stride, size_t slot_stride, float scale, float *result) {
    tk_attend_part_window(q, head_dim, 0, length, cells, parts, part, k_base, v_base, table, block_size, block_stride,
                          slot_stride, scale, result);
}

void tk_attend_part_window(const float *q, int head_dim, int first, int length, int cells, int parts, int part,
                           const uint16_t *k_base, const uint16_t *v_base, const int32_t *table, int block_size,
                           size_t block_stride, size_t slot_stride, float scale, float *result) {
    if (head_dim > 512 || parts < 1) return;
    const int size = (cells + parts - 1) / parts;
    int begin = part * size;
    begin = begin < first ? first : begin;
    int end = begin + size < cells ? begin + size : cells;
    end = end < length ? end : length;
    if (begin >= end) {
        // No visible position: an empty partial, skipped by the merge.
        result[0] = -INFINITY;
        result[1] = 0.0f;
        return;
    }
    float qr[512];
    round_query(q, qr, head_dim);
    const tk_kv_view kv = {k_base, v_base, table, block_size, block_stride, slot_stride};
    chunk_f16(qr, head_dim, begin, end, &kv, scale, &result[0], &result[1], result + 2);
}

void tk_merge_parts(const float *partials, int parts, int head_dim, float *out) {
    float m = -INFINITY, s = 0.0f;
    for (int i = 0; i < head_dim; i++) out[i] = 0.0f;
    for (int p = 0; p < parts; p++) {
        const float *part = partials + (size_t)p * (2 + head_dim);
        const float pm = part[0], ps = part[1];
        if (ps == 0.0f) continue;
        const float m_new = fmaxf(m, pm);
        const float scale_old = expf(m - m_new);
        const float scale_new = expf(pm - m_new);
        for (int i = 0; i < head_dim; i++) out[i] = fmaf(out[i], scale_old, part[2 + i] * scale_new);
        s = fmaf(s, scale_old, ps * scale_new);
        m = m_new;
    }
    if (s != 0.0f) {
        const float inv = 1.0f / s;
        for (int i = 0; i < head_dim; i++) out[i] *= inv;
    }
}

void tk_attend_split(const float *q, int head_dim, int length, int cells, int parts, const uint16_t *k_base,
                     const uint16_t *v_base, const int32_t *table, int block_size, size_t block_stride,
                     size_t slot_stride, float scale, float *out) {
    if (head_dim > 512 || parts < 1 || parts > 64) return;
    float partials[64 * (2 + 64)];
    float *buffer = (size_t)parts * (2 + head_dim) <= sizeof(partials) / sizeof(partials[0])
                        ? partials
                        : (float *)malloc((size_t)parts * (2 + head_dim) * sizeof(float));
    if (!buffer) return;
    for (int p = 0; p < parts; p++) {
        tk_attend_part(q, head_dim, length, cells, parts, p, k_base, v_base, table, block_size, block_stride,
                       slot_stride, scale, buffer + (size_t)p * (2 + head_dim));
    }
    tk_merge_parts(buffer, parts, head_dim, out);
    if (buffer != partials) free(buffer);
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
TK_TILED_FIXED(attend_tiled_avx2_256, 256)
#endif

#if TK_X86
// AVX-512, up to four query heads of one KV head at once (grouped-query attention): each key tile is read once for
// all of them, and V in quarters of 64 dimensions whose accumulators (four per head) stay in registers for the
// tile's keys. Per head and lane the steps are the AVX2 kernel's (each key's score an FMA chain over the head
// dimension, each output dimension an FMA chain over the keys, the same rescaling), so the bits are the same.
#define TK_V512A __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))
#define TK_TILED_HEADS_512(NAME, HD, NH)                                                                       \
    TK_V512A static void NAME(const float *q, int length, const float *kt, const float *v, float scale, float *out) { \
        enum { heads = NH };                                                                                   \
        float acc[NH][HD] __attribute__((aligned(64)));                                                        \
        float m[NH], s_sum[NH];                                                                                \
        for (int h = 0; h < heads; h++) {                                                                      \
            for (int i = 0; i < HD; i++) acc[h][i] = 0.0f;                                                     \
            m[h] = -INFINITY;                                                                                  \
            s_sum[h] = 0.0f;                                                                                   \
        }                                                                                                      \
        const __m512 vscale = _mm512_set1_ps(scale);                                                           \
        for (int start = 0; start < length; start += TK_TILE) {                                                \
            const int n = length - start < TK_TILE ? length - start : TK_TILE;                                 \
            const float *block = kt + (size_t)start * HD;                                                      \
            /* Whole tiles (tk_tile_kv pads them with zero keys): the scores past n are never used. */      \
            enum { groups = TK_TILE / 16 };                                                                    \
            __m512 d[NH][TK_TILE / 16];                                                                        \
            for (int h = 0; h < NH; h++)                                                                       \
                for (int g = 0; g < TK_TILE / 16; g++) d[h][g] = _mm512_setzero_ps();                          \
            for (int i = 0; i < HD; i++) {                                                                     \
                const float *row = block + i * TK_TILE;                                                        \
                __m512 k[TK_TILE / 16];                                                                        \
                for (int g = 0; g < groups; g++) k[g] = _mm512_loadu_ps(row + 16 * g);                         \
                for (int h = 0; h < heads; h++) {                                                              \
                    const __m512 qi = _mm512_set1_ps(q[h * HD + i]);                                           \
                    for (int g = 0; g < groups; g++) d[h][g] = _mm512_fmadd_ps(k[g], qi, d[h][g]);             \
                }                                                                                              \
            }                                                                                                  \
            float e[NH][TK_TILE], ms[NH];                                                                      \
            for (int h = 0; h < heads; h++) {                                                                  \
                for (int g = 0; g < groups; g++) _mm512_storeu_ps(e[h] + 16 * g, _mm512_mul_ps(d[h][g], vscale)); \
                ms[h] = tile_update(e[h], n, &m[h], &s_sum[h], exps_avx2);                                     \
            }                                                                                                  \
            for (int c = 0; c < HD; c += 64) {                                                                 \
                __m512 a[NH][4];                                                                               \
                for (int h = 0; h < heads; h++) {                                                              \
                    for (int j = 0; j < 4; j++) {                                                              \
                        a[h][j] = _mm512_load_ps(acc[h] + c + 16 * j);                                         \
                        if (ms[h] != 1.0f) a[h][j] = _mm512_mul_ps(a[h][j], _mm512_set1_ps(ms[h]));            \
                    }                                                                                          \
                }                                                                                              \
                const float *vr = v + (size_t)start * HD + c;                                                  \
                for (int t = 0; t < n; t++, vr += HD) {                                                        \
                    __m512 vv[4];                                                                              \
                    for (int j = 0; j < 4; j++) vv[j] = _mm512_loadu_ps(vr + 16 * j);                          \
                    for (int h = 0; h < heads; h++) {                                                          \
                        const __m512 et = _mm512_set1_ps(e[h][t]);                                             \
                        for (int j = 0; j < 4; j++) a[h][j] = _mm512_fmadd_ps(vv[j], et, a[h][j]);             \
                    }                                                                                          \
                }                                                                                              \
                for (int h = 0; h < heads; h++)                                                                \
                    for (int j = 0; j < 4; j++) _mm512_store_ps(acc[h] + c + 16 * j, a[h][j]);                 \
            }                                                                                                  \
        }                                                                                                      \
        for (int h = 0; h < heads; h++) {                                                                      \
            const __m512 vinv = _mm512_set1_ps(s_sum[h] == 0.0f ? 0.0f : 1.0f / s_sum[h]);                     \
            for (int i = 0; i < HD; i += 16)                                                                   \
                _mm512_storeu_ps(out + h * HD + i, _mm512_mul_ps(_mm512_load_ps(acc[h] + i), vinv));           \
        }                                                                                                      \
    }

#define TK_TILED_HEADS_SIZES(HD)                                                                               \
    TK_TILED_HEADS_512(attend_tiled_heads_512_##HD##_1, HD, 1)                                                 \
    TK_TILED_HEADS_512(attend_tiled_heads_512_##HD##_2, HD, 2)                                                 \
    TK_TILED_HEADS_512(attend_tiled_heads_512_##HD##_3, HD, 3)                                                 \
    TK_TILED_HEADS_512(attend_tiled_heads_512_##HD##_4, HD, 4)                                                 \
    static void (*const attend_tiled_heads_512_##HD[4])(const float *, int, const float *, const float *, float, \
                                                        float *) = {                                          \
        attend_tiled_heads_512_##HD##_1, attend_tiled_heads_512_##HD##_2, attend_tiled_heads_512_##HD##_3,    \
        attend_tiled_heads_512_##HD##_4};

TK_TILED_HEADS_SIZES(64)
TK_TILED_HEADS_SIZES(128)
TK_TILED_HEADS_SIZES(256)
#endif

void tk_attend_tiled_heads(const float *q, int heads, int head_dim, int length, const float *kt, const float *v,
                           float scale, float *out) {
    if (head_dim > 512) return;
#if TK_X86
    if (tk_simd_level() == 2 && (head_dim == 64 || head_dim == 128 || head_dim == 256)) {
        for (int h = 0; h < heads; h += 4) {
            const int group = heads - h < 4 ? heads - h : 4;
            (head_dim == 64    ? attend_tiled_heads_512_64
             : head_dim == 128 ? attend_tiled_heads_512_128
                               : attend_tiled_heads_512_256)[group - 1](q + (size_t)h * head_dim, length, kt, v, scale,
                                                                        out + (size_t)h * head_dim);
        }
        return;
    }
    if (tk_simd_level() >= 1 && (head_dim == 64 || head_dim == 128 || head_dim == 256)) {
        for (int h = 0; h < heads; h++) {
            (head_dim == 64    ? attend_tiled_avx2_64
             : head_dim == 128 ? attend_tiled_avx2_128
                               : attend_tiled_avx2_256)(q + (size_t)h * head_dim, length, kt, v, scale,
                                                        out + (size_t)h * head_dim);
        }
        return;
    }
#endif
    for (int h = 0; h < heads; h++) {
        attend_tiled_scalar(q + (size_t)h * head_dim, head_dim, length, kt, v, scale, out + (size_t)h * head_dim);
    }
}

void tk_attend_tiled(const float *q, int head_dim, int length, const float *kt, const float *v, float scale,
                     float *out) {
    tk_attend_tiled_heads(q, 1, head_dim, length, kt, v, scale, out);
}
