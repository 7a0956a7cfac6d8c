// Matrix kernels for Q4_K weights repacked into groups of 16 interleaved rows, over Q8_K activations. See CKernels.h.
//
// Layout of one super-block (256 columns) of one group (16 rows), 2368 bytes:
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
#include "CKernels.h"

#include "internal.h"

#include <math.h>
#include <string.h>

enum { Q4K_ROW_BYTES = 144, Q4K_GROUP_BYTES = 2368 };

size_t tk_interleaved_k_group_bytes(int type, int n) {
    return type == 12 ? (size_t)Q4K_GROUP_BYTES * (size_t)(n / 256) : 0;
}

int tk_repack_interleaved_k(int type, const void *src, size_t row_bytes, int rows, int n, void *dst) {
    if (type != 12) return -1;
    const int nsb = n / 256;
    const int groups = (rows + 15) / 16;
    uint8_t *out = dst;
    memset(out, 0, (size_t)groups * (size_t)nsb * Q4K_GROUP_BYTES);
    for (int g = 0; g < groups; g++) {
        for (int r = 0; r < 16 && g * 16 + r < rows; r++) {
            const uint8_t *row = (const uint8_t *)src + (size_t)(g * 16 + r) * row_bytes;
            for (int i = 0; i < nsb; i++) {
                const uint8_t *b = row + Q4K_ROW_BYTES * i;
                uint8_t *blk = out + ((size_t)g * nsb + i) * Q4K_GROUP_BYTES;
                uint8_t sc[8], m[8];
                tk_q4k_scales(b + 4, sc, m);
                memcpy(blk + 2 * r, b, 2);
                memcpy(blk + 32 + 2 * r, b + 2, 2);
                for (int s = 0; s < 8; s++) blk[64 + 16 * s + r] = sc[s];
                for (int p = 0; p < 4; p++) {
                    blk[192 + 32 * p + 2 * r] = m[2 * p];
                    blk[192 + 32 * p + 2 * r + 1] = m[2 * p + 1];
                }
                for (int c = 0; c < 32; c++) memcpy(blk + 320 + 64 * c + 4 * r, b + 16 + 4 * c, 4);
            }
        }
    }
    return 0;
}

// The scalar path: the reference order, row by row.
static void q4k_group_scalar(const uint8_t *g, int nsb, const tk_block_q8k *x, float out[16]) {
    for (int r = 0; r < 16; r++) {
        float acc[8] = {0}, acc_m[4] = {0};
        for (int i = 0; i < nsb; i++) {
            const uint8_t *b = g + (size_t)i * Q4K_GROUP_BYTES;
            uint16_t dh, mh;
            memcpy(&dh, b + 2 * r, 2);
            memcpy(&mh, b + 32 + 2 * r, 2);
            const int8_t *y = x[i].qs;
            int lanes[8] = {0};
            for (int j = 0; j < 4; j++) {
                const int s0 = b[64 + 16 * (2 * j) + r], s1 = b[64 + 16 * (2 * j + 1) + r];
                for (int k = 0; k < 8; k++) {
                    for (int e = 0; e < 4; e++) {
                        const uint8_t q = b[320 + 64 * (8 * j + k) + 4 * r + e];
                        lanes[k] += s0 * ((q & 0x0F) * y[64 * j + 4 * k + e]);
                        lanes[k] += s1 * ((q >> 4) * y[64 * j + 32 + 4 * k + e]);
                    }
                }
            }
            const float d = x[i].d * tk_half_to_float(dh), dmin = -x[i].d * tk_half_to_float(mh);
            for (int p = 0; p < 4; p++) {
                const int sum0 = x[i].bsums[4 * p] + x[i].bsums[4 * p + 1];
                const int sum1 = x[i].bsums[4 * p + 2] + x[i].bsums[4 * p + 3];
                const int mins = b[192 + 32 * p + 2 * r] * sum0 + b[192 + 32 * p + 2 * r + 1] * sum1;
                acc_m[p] = fmaf(dmin, (float)mins, acc_m[p]);
            }
            for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)lanes[k], acc[k]);
        }
        out[r] = (((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))) +
                 ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]));
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

// Sub-block scales of 16 rows as int16 pairs (sc, sc) per row: vpdpwssd then adds sc · (both pair sums).
TK_V512K static inline __m512i scale_pairs(const uint8_t *sc16) {
    const __m512i s = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)sc16));
    return _mm512_or_si512(s, _mm512_slli_epi32(s, 16));
}

// NA activation rows against one group: the integer lanes per super-block with vpmaddubsw (quant pairs times
// activation pairs, within int16) and vpdpwssd (times the sub-block scale, into the lane's int32).
#define TK_X16_Q4_K(NAME, NA)                                                                                      \
    TK_V512K static void NAME(const uint8_t *g, int nsb, const tk_block_q8k *x, size_t xstride, float *out,      \
                              size_t os, int valid) {                                                            \
        __m512 acc[NA][8], accm[NA][4];                                                                          \
        for (int a = 0; a < NA; a++) {                                                                           \
            for (int k = 0; k < 8; k++) acc[a][k] = _mm512_setzero_ps();                                         \
            for (int p = 0; p < 4; p++) accm[a][p] = _mm512_setzero_ps();                                        \
        }                                                                                                        \
        const __m512i m4 = _mm512_set1_epi8(0x0F);                                                               \
        for (int i = 0; i < nsb; i++, g += Q4K_GROUP_BYTES) {                                                    \
            for (int l = 0; l < Q4K_GROUP_BYTES; l += 64) _mm_prefetch((const char *)(g + TK_PF + l), _MM_HINT_T0); \
            __m512i sumi[NA][8];                                                                                 \
            for (int a = 0; a < NA; a++)                                                                         \
                for (int k = 0; k < 8; k++) sumi[a][k] = _mm512_setzero_si512();                                 \
            for (int j = 0; j < 4; j++) {                                                                        \
                const __m512i s0 = scale_pairs(g + 64 + 16 * (2 * j)), s1 = scale_pairs(g + 64 + 16 * (2 * j + 1)); \
                for (int k = 0; k < 8; k++) {                                                                    \
                    const __m512i b = _mm512_loadu_si512((const void *)(g + 320 + 64 * (8 * j + k)));            \
                    const __m512i lo = _mm512_and_si512(b, m4);                                                  \
                    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), m4);                            \
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
                for (int k = 0; k < 8; k++) acc[a][k] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi[a][k]), acc[a][k]); \
                for (int p = 0; p < 4; p++) {                                                                    \
                    const __m512i mp = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(g + 192 + 32 * p))); \
                    const int sum0 = xa->bsums[4 * p] + xa->bsums[4 * p + 1];                                    \
                    const int sum1 = xa->bsums[4 * p + 2] + xa->bsums[4 * p + 3];                                \
                    const __m512i sums = _mm512_set1_epi32((int)(((uint32_t)sum1 << 16) | (uint16_t)sum0));      \
                    accm[a][p] = _mm512_fmadd_ps(dm, _mm512_cvtepi32_ps(_mm512_madd_epi16(mp, sums)), accm[a][p]); \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
        for (int a = 0; a < NA; a++) {                                                                           \
            const __m512 lanes = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(acc[a][0], acc[a][4]),                \
                                                             _mm512_add_ps(acc[a][2], acc[a][6])),               \
                                               _mm512_add_ps(_mm512_add_ps(acc[a][1], acc[a][5]),                \
                                                             _mm512_add_ps(acc[a][3], acc[a][7])));              \
            const __m512 mins = _mm512_add_ps(_mm512_add_ps(accm[a][0], accm[a][2]),                             \
                                              _mm512_add_ps(accm[a][1], accm[a][3]));                            \
            float r[16];                                                                                         \
            _mm512_storeu_ps(r, _mm512_add_ps(lanes, mins));                                                     \
            for (int k = 0; k < valid; k++) out[a * os + k] = r[k];                                              \
        }                                                                                                        \
    }

TK_X16_Q4_K(x16_q4_k_1, 1)
TK_X16_Q4_K(x16_q4_k_2, 2)
#endif

int tk_matmul_interleaved_k(int type, const void *packed, int n, int group_begin, int group_end, int rows,
                            const tk_block_q8k *x, int n_act, float *out, int out_stride) {
    if (type != 12) return -1;
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
            for (; b + 2 <= n_act; b += 2) {
                x16_q4_k_2(gp, nsb, x + (size_t)b * nsb, nsb, out + (size_t)b * out_stride + first, out_stride, valid);
            }
            for (; b < n_act; b++) {
                x16_q4_k_1(gp, nsb, x + (size_t)b * nsb, nsb, out + (size_t)b * out_stride + first, out_stride, valid);
            }
        }
#endif
        for (; b < n_act; b++) {
            float r[16];
            q4k_group_scalar(gp, nsb, x + (size_t)b * nsb, r);
            for (int k = 0; k < valid; k++) out[(size_t)b * out_stride + first + k] = r[k];
        }
    }
    return 0;
}
