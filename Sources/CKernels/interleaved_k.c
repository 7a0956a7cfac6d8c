// Matrix kernels for Q4_K and Q6_K weights repacked into groups of 16 interleaved rows, over Q8_K activations. See
// CKernels.h.
//
// Q4_K: layout of one super-block (256 columns) of one group (16 rows), 2368 bytes:
//   d[16] fp16 | dmin[16] fp16 | sc[8][16]: sub-block s's 6-bit scale of row r at 16s + r |
//   m[4][16][2]: for pair p, row r's mins of sub-blocks 2p and 2p+1 side by side |
//   32 chunks of 64 bytes: chunk 8j + k holds, for each row r, the row's packed bytes 32j + 4k .. 32j + 4k + 3 (low
//   nibbles: sub-block 2j, high nibbles: sub-block 2j + 1).
// One 64-byte load then gives 16 rows' quants of one 4-column lane of two sub-blocks.
//
// The arithmetic per row is tk_dot_k's (kquants.c, ggml's AVX2 vec_dot_q4_K_q8_K): per super-block eight integer
// lanes, lane k the scaled sum over columns 4k..4k+3 of every 32-column sub-block, turned into floats once and
// accumulated with one FMA each (d_x·d_w); the mins as four lanes (m_2p·s_2p + m_2p+1·s_2p+1, one FMA each with
// −d_x·dmin_w); at the end the eight lanes reduced as hsum8 and ((m0 + m2) + (m1 + m3)) added. Here the lanes are
// vectors whose elements are rows, so every path, batch size and split gives the same bits as tk_dot_k.
//
// Q5_K: Q4_K's layout with 8 chunks of 64 bytes of fifth bits before the nibbles (chunk k holds each row's qh bytes
// 4k..4k+3; bit s of a byte belongs to sub-block s), 2880 bytes; nibble chunks at 832. Its mins, as ggml's AVX2
// vec_dot_q5_K_q8_K has them, are summed in integers per super-block and accumulated by one FMA.
//
// Q6_K: one super-block of one group, 3360 bytes: d[16] fp16 | sc[16][16]: the int8 scale of 16-value sub-block s of
// row r at 16s + r | for each half of 128 values: 8 chunks of 64 bytes, chunk k holding each row's high-bit bytes
// qh[4k..4k+3] of the half, then 16 chunks, chunk 8p + k holding each row's low-nibble bytes ql[32p + 4k..+3] (low
// nibbles: group p of 32 values, high nibbles: group p + 2). Its arithmetic is tk_dot_k's too: eight integer lanes per
// super-block (lane k: columns 4k..4k+3 of every group of 32, times their sub-block scale), one FMA each with
// d_x·d_w, reduced as hsum8.
#include "CKernels.h"

#include "internal.h"

#include <math.h>
#include <string.h>

enum {
    Q4K_ROW_BYTES = 144,
    Q4K_GROUP_BYTES = 2368,
    Q5K_ROW_BYTES = 176,
    Q5K_GROUP_BYTES = 2880,
    Q6K_ROW_BYTES = 210,
    Q6K_GROUP_BYTES = 3360
};

static size_t group_block_bytes(int type) {
    return type == 12 ? Q4K_GROUP_BYTES : type == 13 ? Q5K_GROUP_BYTES : type == 14 ? Q6K_GROUP_BYTES : 0;
}

size_t tk_interleaved_k_group_bytes(int type, int n) { return group_block_bytes(type) * (size_t)(n / 256); }

static void repack_q6_k(const uint8_t *src, size_t row_bytes, int rows, int nsb, uint8_t *out) {
    const int groups = (rows + 15) / 16;
    for (int g = 0; g < groups; g++) {
        for (int r = 0; r < 16 && g * 16 + r < rows; r++) {
            const uint8_t *row = src + (size_t)(g * 16 + r) * row_bytes;
            for (int i = 0; i < nsb; i++) {
                const uint8_t *b = row + Q6K_ROW_BYTES * i;
                uint8_t *blk = out + ((size_t)g * nsb + i) * Q6K_GROUP_BYTES;
                memcpy(blk + 2 * r, b + 208, 2);
                for (int s = 0; s < 16; s++) blk[32 + 16 * s + r] = b[192 + s];
                for (int h = 0; h < 2; h++) {
                    uint8_t *base = blk + 288 + 1536 * h;
                    for (int k = 0; k < 8; k++) memcpy(base + 64 * k + 4 * r, b + 128 + 32 * h + 4 * k, 4);
                    for (int c = 0; c < 16; c++) memcpy(base + 512 + 64 * c + 4 * r, b + 64 * h + 4 * c, 4);
                }
            }
        }
    }
}

int tk_repack_interleaved_k(int type, const void *src, size_t row_bytes, int rows, int n, void *dst) {
    if (type != 12 && type != 13 && type != 14) return -1;
    const int nsb = n / 256;
    const int groups = (rows + 15) / 16;
    uint8_t *out = dst;
    memset(out, 0, (size_t)groups * (size_t)nsb * group_block_bytes(type));
    if (type == 14) {
        repack_q6_k(src, row_bytes, rows, nsb, out);
        return 0;
    }
    const int five = type == 13;
    const size_t block_bytes = five ? Q5K_ROW_BYTES : Q4K_ROW_BYTES, group_bytes = group_block_bytes(type);
    for (int g = 0; g < groups; g++) {
        for (int r = 0; r < 16 && g * 16 + r < rows; r++) {
            const uint8_t *row = (const uint8_t *)src + (size_t)(g * 16 + r) * row_bytes;
            for (int i = 0; i < nsb; i++) {
                const uint8_t *b = row + block_bytes * i;
                uint8_t *blk = out + ((size_t)g * nsb + i) * group_bytes;
                uint8_t sc[8], m[8];
                tk_q4k_scales(b + 4, sc, m);
                memcpy(blk + 2 * r, b, 2);
                memcpy(blk + 32 + 2 * r, b + 2, 2);
                for (int s = 0; s < 8; s++) blk[64 + 16 * s + r] = sc[s];
                for (int p = 0; p < 4; p++) {
                    blk[192 + 32 * p + 2 * r] = m[2 * p];
                    blk[192 + 32 * p + 2 * r + 1] = m[2 * p + 1];
                }
                if (five) {
                    for (int k = 0; k < 8; k++) memcpy(blk + 320 + 64 * k + 4 * r, b + 16 + 4 * k, 4);
                    for (int c = 0; c < 32; c++) memcpy(blk + 832 + 64 * c + 4 * r, b + 48 + 4 * c, 4);
                } else {
                    for (int c = 0; c < 32; c++) memcpy(blk + 320 + 64 * c + 4 * r, b + 16 + 4 * c, 4);
                }
            }
        }
    }
    return 0;
}

// The scalar path: the reference order, row by row (`five`: Q5_K).
static void q45k_group_scalar(const uint8_t *g, int nsb, int five, int tiled, const tk_block_q8k *x, float out[16]) {
    const size_t group_bytes = five ? Q5K_GROUP_BYTES : Q4K_GROUP_BYTES;
    const int nibbles = five ? 832 : 320;
    for (int r = 0; r < 16; r++) {
        float acc[8] = {0}, acc_m[4] = {0}, mins = 0.0f, one = 0.0f;
        for (int i = 0; i < nsb; i++) {
            const uint8_t *b = g + (size_t)i * group_bytes;
            uint16_t dh, mh;
            memcpy(&dh, b + 2 * r, 2);
            memcpy(&mh, b + 32 + 2 * r, 2);
            const int8_t *y = x[i].qs;
            int lanes[8] = {0};
            for (int j = 0; j < 4; j++) {
                const int s0 = b[64 + 16 * (2 * j) + r], s1 = b[64 + 16 * (2 * j + 1) + r];
                for (int k = 0; k < 8; k++) {
                    for (int e = 0; e < 4; e++) {
                        const uint8_t q = b[nibbles + 64 * (8 * j + k) + 4 * r + e];
                        const uint8_t h = five ? b[320 + 64 * k + 4 * r + e] : 0;
                        const int lo = (q & 0x0F) | (((h >> (2 * j)) & 1) << 4);
                        const int hi = (q >> 4) | (((h >> (2 * j + 1)) & 1) << 4);
                        lanes[k] += s0 * (lo * y[64 * j + 4 * k + e]);
                        lanes[k] += s1 * (hi * y[64 * j + 32 + 4 * k + e]);
                    }
                }
            }
            const float d = x[i].d * tk_half_to_float(dh), dmin = -x[i].d * tk_half_to_float(mh);
            int min_sum = 0;
            for (int p = 0; p < 4; p++) {
                const int sum0 = x[i].bsums[4 * p] + x[i].bsums[4 * p + 1];
                const int sum1 = x[i].bsums[4 * p + 2] + x[i].bsums[4 * p + 3];
                const int m = b[192 + 32 * p + 2 * r] * sum0 + b[192 + 32 * p + 2 * r + 1] * sum1;
                acc_m[p] = fmaf(dmin, (float)m, acc_m[p]);
                min_sum += m;
            }
            mins = fmaf(dmin, (float)min_sum, mins);
            for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)lanes[k], acc[k]);
            if (tiled) {
                int sum = 0;
                for (int k = 0; k < 8; k++) sum += lanes[k];
                const float f = fmaf(-tk_half_to_float(mh), (float)min_sum, (float)sum * tk_half_to_float(dh));
                one = fmaf(f, x[i].d, one);
            }
        }
        out[r] = tiled ? one
                       : (((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))) +
                             (five ? mins : ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3])));
    }
}

// The repacked orders (tk_dot_q4_k_repacked) from the interleaved layout, row by row.
static void q4k_repacked_group_scalar(const uint8_t *g, int nsb, const tk_block_q8k *x, int per64, float out[16]) {
    for (int r = 0; r < 16; r++) {
        tk_q4k_repacked_state st = {0};
        for (int i = 0; i < nsb; i++) {
            const uint8_t *b = g + (size_t)i * Q4K_GROUP_BYTES;
            uint16_t dh, mh;
            memcpy(&dh, b + 2 * r, 2);
            memcpy(&mh, b + 32 + 2 * r, 2);
            const float d = tk_half_to_float(dh) * x[i].d, dmin = tk_half_to_float(mh) * x[i].d;
            for (int j = 0; j < 4; j++) {
                int sum = 0;
                for (int k = 0; k < 8; k++) {
                    for (int e = 0; e < 4; e++) {
                        const uint8_t q = b[320 + 64 * (8 * j + k) + 4 * r + e];
                        sum += b[64 + 16 * (2 * j) + r] * ((q & 0x0F) * x[i].qs[64 * j + 4 * k + e]);
                        sum += b[64 + 16 * (2 * j + 1) + r] * ((q >> 4) * x[i].qs[64 * j + 32 + 4 * k + e]);
                    }
                }
                const int mins = b[192 + 32 * j + 2 * r] * (x[i].bsums[4 * j] + x[i].bsums[4 * j + 1]) +
                                 b[192 + 32 * j + 2 * r + 1] * (x[i].bsums[4 * j + 2] + x[i].bsums[4 * j + 3]);
                tk_q4k_repacked_pair(&st, per64, sum, mins, d, dmin);
            }
            tk_q4k_repacked_end(&st, per64, d, dmin);
        }
        out[r] = st.acc - st.acc_min;
    }
}

static void q6k_group_scalar(const uint8_t *g, int nsb, const tk_block_q8k *x, float out[16]) {
    for (int r = 0; r < 16; r++) {
        float acc[8] = {0};
        for (int i = 0; i < nsb; i++) {
            const uint8_t *blk = g + (size_t)i * Q6K_GROUP_BYTES;
            uint16_t dh;
            memcpy(&dh, blk + 2 * r, 2);
            int lanes[8] = {0};
            for (int h = 0; h < 2; h++) {
                const uint8_t *base = blk + 288 + 1536 * h;
                for (int grp = 0; grp < 4; grp++) {
                    const int e0 = 128 * h + 32 * grp;
                    for (int k = 0; k < 8; k++) {
                        for (int b = 0; b < 4; b++) {
                            const uint8_t ql = base[512 + 64 * (8 * (grp & 1) + k) + 4 * r + b];
                            const uint8_t qh = base[64 * k + 4 * r + b];
                            const int q = (grp >> 1 ? ql >> 4 : ql & 0x0F) | (((qh >> (2 * grp)) & 3) << 4);
                            const int l = 4 * k + b;
                            lanes[k] += (int8_t)blk[32 + 16 * ((e0 + l) / 16) + r] * (q * x[i].qs[e0 + l]);
                        }
                    }
                }
            }
            for (int k = 0; k < 8; k++) {
                const int sc0 = (int8_t)blk[32 + 16 * (2 * k) + r], sc1 = (int8_t)blk[32 + 16 * (2 * k + 1) + r];
                lanes[k] -= 32 * (x[i].bsums[2 * k] * sc0 + x[i].bsums[2 * k + 1] * sc1);
            }
            const float d = x[i].d * tk_half_to_float(dh);
            for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)lanes[k], acc[k]);
        }
        out[r] = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    }
}

#if TK_X86
#define TK_V512K __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#ifndef TK_PF
#define TK_PF 6144
#endif

static inline int32_t quad_k(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

// The eight lane vectors of one activation row reduced in hsum8's order: ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)).
TK_V512K static inline __m512 reduce_lanes(const __m512 acc[8]) {
    return _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[4]), _mm512_add_ps(acc[2], acc[6])),
                         _mm512_add_ps(_mm512_add_ps(acc[1], acc[5]), _mm512_add_ps(acc[3], acc[7])));
}

// Sub-block scales of 16 rows as int16 pairs (sc, sc) per row: vpdpwssd then adds sc · (both pair sums).
TK_V512K static inline __m512i scale_pairs(const uint8_t *sc16) {
    const __m512i s = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)sc16));
    return _mm512_or_si512(s, _mm512_slli_epi32(s, 16));
}

// NA activation rows against one group: the integer lanes per super-block with vpmaddubsw (quant pairs times
// activation pairs, within int16) and vpdpwssd (times the sub-block scale, into the lane's int32).
#define TK_X16_Q45_K(NAME, NA, FIVE, TILED)                                                                        \
    TK_V512K static void NAME(const uint8_t *g, int nsb, const tk_block_q8k *x, size_t xstride, float *out,      \
                              size_t os, int valid) {                                                            \
        enum { GB = FIVE ? Q5K_GROUP_BYTES : Q4K_GROUP_BYTES, NIB = FIVE ? 832 : 320 };                          \
        __m512 acc[NA][8], accm[NA][4];                                                                          \
        for (int a = 0; a < NA; a++) {                                                                           \
            for (int k = 0; k < 8; k++) acc[a][k] = _mm512_setzero_ps();                                         \
            for (int p = 0; p < 4; p++) accm[a][p] = _mm512_setzero_ps();                                        \
        }                                                                                                        \
        const __m512i m4 = _mm512_set1_epi8(0x0F), one = _mm512_set1_epi8(1);                                    \
        for (int i = 0; i < nsb; i++, g += GB) {                                                                 \
            for (int l = 0; l < GB; l += 64) _mm_prefetch((const char *)(g + TK_PF + l), _MM_HINT_T0);           \
            __m512i sumi[NA][8];                                                                                 \
            for (int a = 0; a < NA; a++)                                                                         \
                for (int k = 0; k < 8; k++) sumi[a][k] = _mm512_setzero_si512();                                 \
            for (int j = 0; j < 4; j++) {                                                                        \
                const __m512i s0 = scale_pairs(g + 64 + 16 * (2 * j)), s1 = scale_pairs(g + 64 + 16 * (2 * j + 1)); \
                for (int k = 0; k < 8; k++) {                                                                    \
                    const __m512i b = _mm512_loadu_si512((const void *)(g + NIB + 64 * (8 * j + k)));            \
                    __m512i lo = _mm512_and_si512(b, m4);                                                        \
                    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), m4);                                  \
                    if (FIVE) {                                                                                  \
                        const __m512i hb = _mm512_loadu_si512((const void *)(g + 320 + 64 * k));                 \
                        lo = _mm512_or_si512(lo, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 2 * j), one), 4)); \
                        hi = _mm512_or_si512(                                                                    \
                            hi, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(hb, 2 * j + 1), one), 4));  \
                    }                                                                                            \
                    for (int a = 0; a < NA; a++) {                                                               \
                        const int8_t *y = x[a * xstride + i].qs + 64 * j + 4 * k;                                \
                        const __m512i pl = _mm512_maddubs_epi16(lo, _mm512_set1_epi32(quad_k(y)));               \
                        const __m512i ph = _mm512_maddubs_epi16(hi, _mm512_set1_epi32(quad_k(y + 32)));          \
                        sumi[a][k] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(sumi[a][k], pl, s0), ph, s1);       \
                    }                                                                                            \
                }                                                                                                \
            }                                                                                                    \
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g));                           \
            const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + 32)));                    \
            for (int a = 0; a < NA; a++) {                                                                       \
                const tk_block_q8k *xa = x + a * xstride + i;                                                    \
                const __m512 d = _mm512_mul_ps(_mm512_set1_ps(xa->d), dv);                                       \
                const __m512 dm = _mm512_mul_ps(_mm512_set1_ps(-xa->d), mv);                                     \
                if (!TILED)                                                                                      \
                    for (int k = 0; k < 8; k++)                                                                  \
                        acc[a][k] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi[a][k]), acc[a][k]);               \
                __m512i min_sum = _mm512_setzero_si512();                                                        \
                for (int p = 0; p < 4; p++) {                                                                    \
                    const __m512i mp = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(g + 192 + 32 * p))); \
                    const int sum0 = xa->bsums[4 * p] + xa->bsums[4 * p + 1];                                    \
                    const int sum1 = xa->bsums[4 * p + 2] + xa->bsums[4 * p + 3];                                \
                    const __m512i sums = _mm512_set1_epi32((int)(((uint32_t)sum1 << 16) | (uint16_t)sum0));      \
                    const __m512i m = _mm512_madd_epi16(mp, sums);                                               \
                    if (FIVE || TILED) {                                                                         \
                        min_sum = _mm512_add_epi32(min_sum, m);                                                  \
                    } else {                                                                                     \
                        accm[a][p] = _mm512_fmadd_ps(dm, _mm512_cvtepi32_ps(m), accm[a][p]);                     \
                    }                                                                                            \
                }                                                                                                \
                if (TILED) {                                                                                     \
                    /* llama.cpp's tiled order: one exact sum each, fma(−dmin, s2, s1·d_w), then fma(·, d_x). */ \
                    __m512i total = sumi[a][0];                                                                  \
                    for (int k = 1; k < 8; k++) total = _mm512_add_epi32(total, sumi[a][k]);                     \
                    const __m512 f = _mm512_fnmadd_ps(mv, _mm512_cvtepi32_ps(min_sum),                           \
                                                      _mm512_mul_ps(_mm512_cvtepi32_ps(total), dv));             \
                    acc[a][0] = _mm512_fmadd_ps(f, _mm512_set1_ps(xa->d), acc[a][0]);                            \
                } else if (FIVE) {                                                                               \
                    accm[a][0] = _mm512_fmadd_ps(dm, _mm512_cvtepi32_ps(min_sum), accm[a][0]);                   \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
        for (int a = 0; a < NA; a++) {                                                                           \
            if (TILED) {                                                                                         \
                _mm512_mask_storeu_ps(out + a * os, (__mmask16)((1u << valid) - 1), acc[a][0]);                 \
                continue;                                                                                        \
            }                                                                                                    \
            const __m512 lanes = reduce_lanes(acc[a]);                                                           \
            const __m512 mins = FIVE ? accm[a][0]                                                                \
                                     : _mm512_add_ps(_mm512_add_ps(accm[a][0], accm[a][2]),                      \
                                                     _mm512_add_ps(accm[a][1], accm[a][3]));                     \
            _mm512_mask_storeu_ps(out + a * os, (__mmask16)((1u << valid) - 1), _mm512_add_ps(lanes, mins));                                              \
        }                                                                                                        \
    }

// Q4_K in the repacked orders, NA activation rows, each with its own order (per64[a]): per pair of sub-blocks one
// integer sum per row (vpmaddubsw, vpdpwssd by the scale), folded in per pair (GEMM) or per super-block (GEMV).
#define TK_X16_Q4_KR(NAME, NA)                                                                                     \
    TK_V512K static void NAME(const uint8_t *g, int nsb, const tk_block_q8k *x, size_t xstride,                  \
                              const uint8_t *per64, float *out, size_t os, int valid) {                          \
        __m512 acc[NA], accm[NA];                                                                                \
        for (int a = 0; a < NA; a++) acc[a] = accm[a] = _mm512_setzero_ps();                                     \
        const __m512i m4 = _mm512_set1_epi8(0x0F);                                                               \
        for (int i = 0; i < nsb; i++, g += Q4K_GROUP_BYTES) {                                                    \
            for (int l = 0; l < Q4K_GROUP_BYTES; l += 64) _mm_prefetch((const char *)(g + TK_PF + l), _MM_HINT_T0); \
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g));                           \
            const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + 32)));                    \
            __m512 d[NA], dm[NA];                                                                                \
            __m512i tot[NA], totm[NA];                                                                           \
            for (int a = 0; a < NA; a++) {                                                                       \
                d[a] = _mm512_mul_ps(dv, _mm512_set1_ps(x[a * xstride + i].d));                                  \
                dm[a] = _mm512_mul_ps(mv, _mm512_set1_ps(x[a * xstride + i].d));                                \
                tot[a] = totm[a] = _mm512_setzero_si512();                                                       \
            }                                                                                                    \
            for (int j = 0; j < 4; j++) {                                                                        \
                /* Each sub-block's sum by vpdpbusd (at most 32·15·128 in int32), then times its scale. */     \
                __m512i sl[NA], sh[NA];                                                                          \
                for (int a = 0; a < NA; a++) sl[a] = sh[a] = _mm512_setzero_si512();                            \
                for (int k = 0; k < 8; k++) {                                                                    \
                    const __m512i b = _mm512_loadu_si512((const void *)(g + 320 + 64 * (8 * j + k)));            \
                    const __m512i lo = _mm512_and_si512(b, m4);                                                  \
                    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), m4);                            \
                    for (int a = 0; a < NA; a++) {                                                               \
                        const int8_t *y = x[a * xstride + i].qs + 64 * j + 4 * k;                                \
                        sl[a] = _mm512_dpbusd_epi32(sl[a], lo, _mm512_set1_epi32(quad_k(y)));                    \
                        sh[a] = _mm512_dpbusd_epi32(sh[a], hi, _mm512_set1_epi32(quad_k(y + 32)));               \
                    }                                                                                            \
                }                                                                                                \
                const __m512i s0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(g + 64 + 16 * (2 * j)))); \
                const __m512i s1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(g + 64 + 16 * (2 * j + 1)))); \
                __m512i sj[NA];                                                                                  \
                for (int a = 0; a < NA; a++)                                                                     \
                    sj[a] = _mm512_add_epi32(_mm512_mullo_epi32(sl[a], s0), _mm512_mullo_epi32(sh[a], s1));      \
                const __m512i mp = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(g + 192 + 32 * j))); \
                for (int a = 0; a < NA; a++) {                                                                   \
                    const int16_t *bs = x[a * xstride + i].bsums + 4 * j;                                        \
                    const int sum0 = bs[0] + bs[1], sum1 = bs[2] + bs[3];                                        \
                    const __m512i sums = _mm512_set1_epi32((int)(((uint32_t)sum1 << 16) | (uint16_t)sum0));      \
                    const __m512i mj = _mm512_madd_epi16(mp, sums);                                              \
                    if (per64[a] & TK_ORDER_Q4K_GEMM) {                                                                              \
                        acc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sj[a]), d[a], acc[a]);                       \
                        accm[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mj), dm[a], accm[a]);                       \
                    } else {                                                                                     \
                        tot[a] = _mm512_add_epi32(tot[a], sj[a]);                                                \
                        totm[a] = _mm512_add_epi32(totm[a], mj);                                                 \
                    }                                                                                            \
                }                                                                                                \
            }                                                                                                    \
            for (int a = 0; a < NA; a++) {                                                                       \
                if (!(per64[a] & TK_ORDER_Q4K_GEMM)) {                                                                                 \
                    acc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[a]), d[a], acc[a]);                          \
                    accm[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(totm[a]), dm[a], accm[a]);                      \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
        for (int a = 0; a < NA; a++) {                                                                           \
            _mm512_mask_storeu_ps(out + a * os, (__mmask16)((1u << valid) - 1), _mm512_sub_ps(acc[a], accm[a]));                                              \
        }                                                                                                        \
    }

TK_X16_Q4_KR(x16_q4_kr_1, 1)
TK_X16_Q4_KR(x16_q4_kr_2, 2)
TK_X16_Q4_KR(x16_q4_kr_4, 4)

TK_X16_Q45_K(x16_q4_k_1, 1, 0, 0)
TK_X16_Q45_K(x16_q4_k_2, 2, 0, 0)
TK_X16_Q45_K(x16_q5_k_1, 1, 1, 0)
TK_X16_Q45_K(x16_q5_k_2, 2, 1, 0)
TK_X16_Q45_K(x16_q4_k_tiled_1, 1, 0, 1)
TK_X16_Q45_K(x16_q4_k_tiled_2, 2, 0, 1)
TK_X16_Q45_K(x16_q5_k_tiled_1, 1, 1, 1)
TK_X16_Q45_K(x16_q5_k_tiled_2, 2, 1, 1)

// 16 rows' int8 scales as int16 pairs (s, s) per row.
TK_V512K static inline __m512i signed_scale_pairs(const uint8_t *sc16) {
    const __m512i s = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)sc16));
    return _mm512_or_si512(_mm512_and_si512(s, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(s, 16));
}

// The six-bit quants of lane k of 16 rows, groups p (lo) and p + 2 (hi) of one half of a super-block (`base`).
TK_V512K static inline void q6k_quants(const uint8_t *base, int p, int k, __m512i *lo, __m512i *hi) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(3);
    const __m512i ql = _mm512_loadu_si512((const void *)(base + 512 + 64 * (8 * p + k)));
    const __m512i qh = _mm512_loadu_si512((const void *)(base + 64 * k));
    *lo = _mm512_or_si512(_mm512_and_si512(ql, m4),
                          _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 2 * p), m2), 4));
    *hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                          _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 2 * p + 4), m2), 4));
}

// 16 rows' int8 scales of Q6_K sub-blocks 2k (low half) and 2k + 1 (high half) of one super-block, as int16 pairs.
TK_V512K static inline __m512i q6k_scale_pair(const uint8_t *g, int k) {
    const __m512i s0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(g + 32 + 16 * (2 * k))));
    const __m512i s1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(g + 32 + 16 * (2 * k + 1))));
    return _mm512_or_si512(_mm512_and_si512(s0, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(s1, 16));
}

// 32·(bsum_2k·sc_2k + bsum_2k+1·sc_2k+1) for 16 rows: what lane k loses for the quants' offset of 32.
TK_V512K static inline __m512i q6k_offset(__m512i pair, const int16_t *bsums, int k) {
    const int16_t *bs = bsums + 2 * k;
    const __m512i sums = _mm512_set1_epi32((int)(((uint32_t)(uint16_t)bs[1] << 16) | (uint16_t)bs[0]));
    return _mm512_slli_epi32(_mm512_madd_epi16(pair, sums), 5);
}

// Q6_K: q·x pair sums by vpmaddubsw, then vpdpwssd by the sub-block scale into the lane; per super-block, lane k
// loses 32·(bsum_2k·sc_2k + bsum_2k+1·sc_2k+1) (vpmaddwd of the rows' scale pairs with the activation's sums).
#define TK_X16_Q6_K(NAME, NA)                                                                                      \
    TK_V512K static void NAME(const uint8_t *g, int nsb, const tk_block_q8k *x, size_t xstride, float *out,      \
                              size_t os, int valid) {                                                            \
        __m512 acc[NA][8];                                                                                       \
        for (int a = 0; a < NA; a++)                                                                             \
            for (int k = 0; k < 8; k++) acc[a][k] = _mm512_setzero_ps();                                         \
        for (int i = 0; i < nsb; i++, g += Q6K_GROUP_BYTES) {                                                    \
            for (int l = 0; l < Q6K_GROUP_BYTES; l += 64) _mm_prefetch((const char *)(g + TK_PF + l), _MM_HINT_T0); \
            __m512i sumi[NA][8];                                                                                 \
            for (int a = 0; a < NA; a++)                                                                         \
                for (int k = 0; k < 8; k++) sumi[a][k] = _mm512_setzero_si512();                                 \
            for (int h = 0; h < 2; h++) {                                                                        \
                const uint8_t *base = g + 288 + 1536 * h;                                                        \
                for (int p = 0; p < 2; p++) {                                                                    \
                    const __m512i sl[2] = {signed_scale_pairs(g + 32 + 16 * (8 * h + 2 * p)),                    \
                                           signed_scale_pairs(g + 32 + 16 * (8 * h + 2 * p + 1))};               \
                    const __m512i sh[2] = {signed_scale_pairs(g + 32 + 16 * (8 * h + 2 * p + 4)),                \
                                           signed_scale_pairs(g + 32 + 16 * (8 * h + 2 * p + 5))};               \
                    for (int k = 0; k < 8; k++) {                                                                \
                        __m512i lo, hi;                                                                          \
                        q6k_quants(base, p, k, &lo, &hi);                                                        \
                        for (int a = 0; a < NA; a++) {                                                           \
                            const int8_t *y = x[a * xstride + i].qs + 128 * h + 32 * p + 4 * k;                  \
                            const __m512i pl = _mm512_maddubs_epi16(lo, _mm512_set1_epi32(quad_k(y)));           \
                            const __m512i ph = _mm512_maddubs_epi16(hi, _mm512_set1_epi32(quad_k(y + 64)));      \
                            sumi[a][k] = _mm512_dpwssd_epi32(                                                    \
                                _mm512_dpwssd_epi32(sumi[a][k], pl, sl[k >> 2]), ph, sh[k >> 2]);                \
                        }                                                                                        \
                    }                                                                                            \
                }                                                                                                \
            }                                                                                                    \
            for (int k = 0; k < 8; k++) {                                                                        \
                const __m512i pair = q6k_scale_pair(g, k);                                                       \
                for (int a = 0; a < NA; a++)                                                                     \
                    sumi[a][k] = _mm512_sub_epi32(sumi[a][k], q6k_offset(pair, x[a * xstride + i].bsums, k));    \
            }                                                                                                    \
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g));                           \
            for (int a = 0; a < NA; a++) {                                                                       \
                const __m512 d = _mm512_mul_ps(_mm512_set1_ps(x[a * xstride + i].d), dv);                        \
                for (int k = 0; k < 8; k++) acc[a][k] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi[a][k]), acc[a][k]); \
            }                                                                                                    \
        }                                                                                                        \
        for (int a = 0; a < NA; a++) {                                                                           \
            const __m512 lanes = reduce_lanes(acc[a]);                                                           \
            _mm512_mask_storeu_ps(out + a * os, (__mmask16)((1u << valid) - 1), lanes);                                              \
        }                                                                                                        \
    }

TK_X16_Q6_K(x16_q6_k_1, 1)
TK_X16_Q6_K(x16_q6_k_2, 2)

// Q6_K in llama.cpp's tiled order: per super-block one exact integer sum per row (the lanes above added up), then
// acc = fma(float(sum)·d_w, d_x, acc).
#define TK_X16_Q6_K_TILED(NAME, NA)                                                                                \
    TK_V512K static void NAME(const uint8_t *g, int nsb, const tk_block_q8k *x, size_t xstride, float *out,      \
                              size_t os, int valid) {                                                            \
        __m512 acc[NA];                                                                                          \
        for (int a = 0; a < NA; a++) acc[a] = _mm512_setzero_ps();                                               \
        for (int i = 0; i < nsb; i++, g += Q6K_GROUP_BYTES) {                                                    \
            for (int l = 0; l < Q6K_GROUP_BYTES; l += 64) _mm_prefetch((const char *)(g + TK_PF + l), _MM_HINT_T0); \
            __m512i sumi[NA];                                                                                    \
            for (int a = 0; a < NA; a++) sumi[a] = _mm512_setzero_si512();                                       \
            for (int h = 0; h < 2; h++) {                                                                        \
                const uint8_t *base = g + 288 + 1536 * h;                                                        \
                for (int p = 0; p < 2; p++) {                                                                    \
                    /* Each 16-value sub-block's sum by vpdpbusd (at most 16·63·128), then times its scale. */ \
                    for (int half = 0; half < 2; half++) {                                                       \
                        __m512i sl[NA], sh[NA];                                                                  \
                        for (int a = 0; a < NA; a++) sl[a] = sh[a] = _mm512_setzero_si512();                    \
                        for (int k = 4 * half; k < 4 * half + 4; k++) {                                          \
                            __m512i lo, hi;                                                                      \
                            q6k_quants(base, p, k, &lo, &hi);                                                    \
                            for (int a = 0; a < NA; a++) {                                                       \
                                const int8_t *y = x[a * xstride + i].qs + 128 * h + 32 * p + 4 * k;              \
                                sl[a] = _mm512_dpbusd_epi32(sl[a], lo, _mm512_set1_epi32(quad_k(y)));            \
                                sh[a] = _mm512_dpbusd_epi32(sh[a], hi, _mm512_set1_epi32(quad_k(y + 64)));       \
                            }                                                                                    \
                        }                                                                                        \
                        const __m512i cl = _mm512_cvtepi8_epi32(                                                 \
                            _mm_loadu_si128((const __m128i *)(g + 32 + 16 * (8 * h + 2 * p + half))));           \
                        const __m512i ch = _mm512_cvtepi8_epi32(                                                 \
                            _mm_loadu_si128((const __m128i *)(g + 32 + 16 * (8 * h + 2 * p + 4 + half))));       \
                        for (int a = 0; a < NA; a++)                                                             \
                            sumi[a] = _mm512_add_epi32(                                                          \
                                sumi[a], _mm512_add_epi32(_mm512_mullo_epi32(sl[a], cl), _mm512_mullo_epi32(sh[a], ch))); \
                    }                                                                                            \
                }                                                                                                \
            }                                                                                                    \
            for (int k = 0; k < 8; k++) {                                                                        \
                const __m512i pair = q6k_scale_pair(g, k);                                                       \
                for (int a = 0; a < NA; a++)                                                                     \
                    sumi[a] = _mm512_sub_epi32(sumi[a], q6k_offset(pair, x[a * xstride + i].bsums, k));          \
            }                                                                                                    \
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g));                           \
            for (int a = 0; a < NA; a++) {                                                                       \
                const __m512 r = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi[a]), dv);                                 \
                acc[a] = _mm512_fmadd_ps(r, _mm512_set1_ps(x[a * xstride + i].d), acc[a]);                       \
            }                                                                                                    \
        }                                                                                                        \
        for (int a = 0; a < NA; a++) {                                                                           \
            _mm512_mask_storeu_ps(out + a * os, (__mmask16)((1u << valid) - 1), acc[a]);                                              \
        }                                                                                                        \
    }

TK_X16_Q6_K_TILED(x16_q6_k_tiled_1, 1)
TK_X16_Q6_K_TILED(x16_q6_k_tiled_2, 2)
TK_X16_Q6_K_TILED(x16_q6_k_tiled_4, 4)
#endif

// q6k_group_scalar in the tiled order.
static void q6k_group_tiled_scalar(const uint8_t *g, int nsb, const tk_block_q8k *x, float out[16]) {
    for (int r = 0; r < 16; r++) {
        float acc = 0;
        for (int i = 0; i < nsb; i++) {
            const uint8_t *blk = g + (size_t)i * Q6K_GROUP_BYTES;
            uint16_t dh;
            memcpy(&dh, blk + 2 * r, 2);
            int sum = 0;
            for (int h = 0; h < 2; h++) {
                const uint8_t *base = blk + 288 + 1536 * h;
                for (int grp = 0; grp < 4; grp++) {
                    const int e0 = 128 * h + 32 * grp;
                    for (int l = 0; l < 32; l++) {
                        const uint8_t ql = base[512 + 64 * (8 * (grp & 1) + l / 4) + 4 * r + l % 4];
                        const uint8_t qh = base[64 * (l / 4) + 4 * r + l % 4];
                        const int q = (grp >> 1 ? ql >> 4 : ql & 0x0F) | (((qh >> (2 * grp)) & 3) << 4);
                        sum += (int8_t)blk[32 + 16 * ((e0 + l) / 16) + r] * ((q - 32) * x[i].qs[e0 + l]);
                    }
                }
            }
            acc = fmaf((float)sum * tk_half_to_float(dh), x[i].d, acc);
        }
        out[r] = acc;
    }
}

// Activation rows [b, e) of one group, all in one order (`tiled` or tk_dot_k's).
static void q6k_group_run(const uint8_t *gp, int nsb, const tk_block_q8k *x, int b, int e, int tiled, float *out,
                          int out_stride, int first, int valid, int level) {
    (void)level;
#if TK_X86
    if (level == 2) {
        if (tiled) {
            for (; b + 4 <= e; b += 4)
                x16_q6_k_tiled_4(gp, nsb, x + (size_t)b * nsb, nsb, out + (size_t)b * out_stride + first, out_stride, valid);
            for (; b + 2 <= e; b += 2)
                x16_q6_k_tiled_2(gp, nsb, x + (size_t)b * nsb, nsb, out + (size_t)b * out_stride + first, out_stride, valid);
            for (; b < e; b++)
                x16_q6_k_tiled_1(gp, nsb, x + (size_t)b * nsb, nsb, out + (size_t)b * out_stride + first, out_stride, valid);
        } else {
            for (; b + 2 <= e; b += 2)
                x16_q6_k_2(gp, nsb, x + (size_t)b * nsb, nsb, out + (size_t)b * out_stride + first, out_stride, valid);
            for (; b < e; b++)
                x16_q6_k_1(gp, nsb, x + (size_t)b * nsb, nsb, out + (size_t)b * out_stride + first, out_stride, valid);
        }
    }
#endif
    for (; b < e; b++) {
        float r[16];
        if (tiled) {
            q6k_group_tiled_scalar(gp, nsb, x + (size_t)b * nsb, r);
        } else {
            q6k_group_scalar(gp, nsb, x + (size_t)b * nsb, r);
        }
        for (int k = 0; k < valid; k++) out[(size_t)b * out_stride + first + k] = r[k];
    }
}

static int matmul_q6_k(const uint8_t *packed, int nsb, int group_begin, int group_end, int rows,
                       const tk_block_q8k *x, int n_act, const uint8_t *orders, float *out, int out_stride) {
    const size_t group_bytes = (size_t)Q6K_GROUP_BYTES * (size_t)nsb;
    const int level = tk_simd_level();
    for (int g = group_begin; g < group_end; g++) {
        const uint8_t *gp = packed + (size_t)g * group_bytes;
        const int first = g * 16;
        const int valid = rows - first < 16 ? rows - first : 16;
        for (int b = 0; b < n_act;) {
            const int tiled = tk_row_tiled(orders, b), e = tk_tiled_run_end(orders, b, n_act);
            q6k_group_run(gp, nsb, x, b, e, tiled, out, out_stride, first, valid, level);
            b = e;
        }
    }
    return 0;
}

int tk_matmul_interleaved_k_ordered(int type, const void *packed, int n, int group_begin, int group_end, int rows,
                                    const tk_block_q8k *x, int n_act, const uint8_t *orders, float *out,
                                    int out_stride) {
    if (type == 14) return matmul_q6_k(packed, n / 256, group_begin, group_end, rows, x, n_act, orders, out, out_stride);
    if (type != 12 && type != 13) return -1;
    const int nsb = n / 256, five = type == 13;
    const size_t group_bytes = group_block_bytes(type) * (size_t)nsb;
    const int level = tk_simd_level();
    (void)level;
    for (int g = group_begin; g < group_end; g++) {
        const uint8_t *gp = (const uint8_t *)packed + (size_t)g * group_bytes;
        const int first = g * 16;
        const int valid = rows - first < 16 ? rows - first : 16;
        for (int b = 0; b < n_act;) {
            const int tiled = tk_row_tiled(orders, b), e = tk_tiled_run_end(orders, b, n_act);
#if TK_X86
            if (level == 2) {
                void (*one)(const uint8_t *, int, const tk_block_q8k *, size_t, float *, size_t, int) =
                    tiled ? (five ? x16_q5_k_tiled_1 : x16_q4_k_tiled_1) : (five ? x16_q5_k_1 : x16_q4_k_1);
                void (*two)(const uint8_t *, int, const tk_block_q8k *, size_t, float *, size_t, int) =
                    tiled ? (five ? x16_q5_k_tiled_2 : x16_q4_k_tiled_2) : (five ? x16_q5_k_2 : x16_q4_k_2);
                for (; b + 2 <= e; b += 2)
                    two(gp, nsb, x + (size_t)b * nsb, nsb, out + (size_t)b * out_stride + first, out_stride, valid);
                for (; b < e; b++)
                    one(gp, nsb, x + (size_t)b * nsb, nsb, out + (size_t)b * out_stride + first, out_stride, valid);
            }
#endif
            for (; b < e; b++) {
                float r[16];
                q45k_group_scalar(gp, nsb, five, tiled, x + (size_t)b * nsb, r);
                for (int k = 0; k < valid; k++) out[(size_t)b * out_stride + first + k] = r[k];
            }
        }
    }
    return 0;
}

int tk_matmul_interleaved_k(int type, const void *packed, int n, int group_begin, int group_end, int rows,
                            const tk_block_q8k *x, int n_act, float *out, int out_stride) {
    return tk_matmul_interleaved_k_ordered(type, packed, n, group_begin, group_end, rows, x, n_act, 0, out,
                                           out_stride);
}

int tk_matmul_interleaved_q4_k_repacked(const void *packed, int n, int group_begin, int group_end, int rows,
                                        const tk_block_q8k *x, int n_act, const uint8_t *per64, float *out,
                                        int out_stride) {
    const int nsb = n / 256;
    const size_t group_bytes = (size_t)Q4K_GROUP_BYTES * (size_t)nsb;
    const int level = tk_simd_level();
    (void)level;
    for (int g = group_begin; g < group_end; g++) {
        const uint8_t *gp = (const uint8_t *)packed + (size_t)g * group_bytes;
        const int first = g * 16;
        const int valid = rows - first < 16 ? rows - first : 16;
        int b = 0;
#if TK_X86
        if (level == 2) {
            for (; b + 4 <= n_act; b += 4) {
                x16_q4_kr_4(gp, nsb, x + (size_t)b * nsb, nsb, per64 + b, out + (size_t)b * out_stride + first,
                            out_stride, valid);
            }
            for (; b + 2 <= n_act; b += 2) {
                x16_q4_kr_2(gp, nsb, x + (size_t)b * nsb, nsb, per64 + b, out + (size_t)b * out_stride + first,
                            out_stride, valid);
            }
            for (; b < n_act; b++) {
                x16_q4_kr_1(gp, nsb, x + (size_t)b * nsb, nsb, per64 + b, out + (size_t)b * out_stride + first,
                            out_stride, valid);
            }
        }
#endif
        for (; b < n_act; b++) {
            float r[16];
            q4k_repacked_group_scalar(gp, nsb, x + (size_t)b * nsb, per64[b] & TK_ORDER_Q4K_GEMM, r);
            for (int k = 0; k < valid; k++) out[(size_t)b * out_stride + first + k] = r[k];
        }
    }
    return 0;
}
