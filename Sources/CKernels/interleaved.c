// Matrix kernels for Q4_1 and Q8_0 weights repacked into groups of 16 interleaved rows. See CKernels.h.
//
// Layout of one block (32 columns) of one group (16 rows):
//   Q4_1 (320 bytes): d[16] fp16 | m[16] fp16 | 4 chunks of 64 bytes; chunk c holds, for each row r, the row's packed
//                     bytes 4c..4c+3 (low nibbles: columns 4c..4c+3, high nibbles: columns 16+4c..16+4c+3).
//   Q8_0 (544 bytes): d[16] fp16 | 8 chunks of 64 bytes; chunk c holds, for each row r, the row's columns 4c..4c+3.
//   Q5_0 (352 bytes): d[16] fp16 | 8 high-bit masks of 64 bits; bit 4r+j of mask c is the fifth bit of row r's column
//                     4c+j | 4 nibble chunks of 64 bytes laid out as Q4_1's. Weight = 5-bit quant - 16.
// One 64-byte load then feeds 16 rows at once (AVX-512), or 32 bytes 8 rows (AVX2, two halves): lane r of an integer
// dot product against the broadcast activations of chunk c is row r's exact partial sum S_c over that chunk's 4
// (Q4_1: 4 + 4) columns.
//
// The float arithmetic is llama.cpp's (ggml's AVX2 vec_dot_q4_1_q8_1 and vec_dot_q8_0_q8_0), which keeps eight
// partial sums per row, one per chunk: acc_c = fma(d_w * d_x, S_c, acc_c) block after block, then
// ((acc_4 + acc_0) + (acc_6 + acc_2)) + ((acc_5 + acc_1) + (acc_7 + acc_3)) (Q5_0: vec_dot_q5_0_q8_0, the same
// order); Q4_1 adds mins = fma(m_w, s_x, mins)
// accumulated block after block. Here the eight partial sums are eight vectors (lanes = rows) instead of the eight
// lanes of one vector. The scalar path does exactly the same, so every path, batch size and thread split gives the
// same bits, and the same bits as ggml's kernel.
#include "CKernels.h"

#include "internal.h"

#include <stdlib.h>

#include <math.h>
#include <string.h>

static int block_bytes_of(int type) { return type == 3 ? 320 : type == 8 ? 544 : type == 6 ? 352 : 0; }

size_t tk_interleaved_group_bytes(int type, int n) { return (size_t)block_bytes_of(type) * (size_t)(n / 32); }

int tk_repack_interleaved(int type, const void *src, size_t row_bytes, int rows, int n, void *dst) {
    const int bb = block_bytes_of(type);
    if (bb == 0) return -1;
    const int nb = n / 32;
    const int groups = (rows + 15) / 16;
    uint8_t *out = dst;
    memset(out, 0, (size_t)groups * (size_t)nb * (size_t)bb);
    for (int g = 0; g < groups; g++) {
        for (int r = 0; r < 16 && g * 16 + r < rows; r++) {
            const uint8_t *row = (const uint8_t *)src + (size_t)(g * 16 + r) * row_bytes;
            for (int i = 0; i < nb; i++) {
                uint8_t *blk = out + ((size_t)g * nb + i) * bb;
                if (type == 3) {
                    const uint8_t *b = row + 20 * i;
                    memcpy(blk + 2 * r, b, 2);
                    memcpy(blk + 32 + 2 * r, b + 2, 2);
                    for (int c = 0; c < 4; c++) memcpy(blk + 64 + 64 * c + 4 * r, b + 4 + 4 * c, 4);
                } else if (type == 6) {
                    const uint8_t *b = row + 22 * i;
                    uint32_t qh;
                    memcpy(blk + 2 * r, b, 2);
                    memcpy(&qh, b + 2, 4);
                    for (int c = 0; c < 8; c++) {
                        uint64_t m;
                        memcpy(&m, blk + 32 + 8 * c, 8);
                        m |= (uint64_t)((qh >> (4 * c)) & 0x0F) << (4 * r);
                        memcpy(blk + 32 + 8 * c, &m, 8);
                    }
                    for (int c = 0; c < 4; c++) memcpy(blk + 96 + 64 * c + 4 * r, b + 6 + 4 * c, 4);
                } else {
                    const uint8_t *b = row + 34 * i;
                    memcpy(blk + 2 * r, b, 2);
                    for (int c = 0; c < 8; c++) memcpy(blk + 32 + 64 * c + 4 * r, b + 2 + 4 * c, 4);
                }
            }
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------------
// Scalar path (the reference order).

// The fixed reduction of the eight partial sums (ggml's hsum_float_8).
static inline float reduce8(const float a[8]) { return ((a[4] + a[0]) + (a[6] + a[2])) + ((a[5] + a[1]) + (a[7] + a[3])); }

static void interleaved_scalar(int type, const uint8_t *g, int nb, const tk_block_q8 *x, float out[16]) {
    const int bb = block_bytes_of(type);
    for (int r = 0; r < 16; r++) {
        float acc[8] = {0}, mins = 0.0f;
        for (int i = 0; i < nb; i++) {
            const uint8_t *blk = g + (size_t)i * bb;
            uint16_t dh;
            memcpy(&dh, blk + 2 * r, 2);
            const float scale = tk_half_to_float(dh) * x[i].d;
            for (int c = 0; c < 8; c++) {
                int sum = 0;
                for (int j = 0; j < 4; j++) {
                    if (type == 3) {
                        const uint8_t q = blk[64 + 64 * (c & 3) + 4 * r + j];
                        sum += (c < 4 ? q & 0x0F : q >> 4) * x[i].qs[4 * c + j];
                    } else if (type == 6) {
                        const uint8_t q = blk[96 + 64 * (c & 3) + 4 * r + j];
                        uint64_t m;
                        memcpy(&m, blk + 32 + 8 * c, 8);
                        const int v = (c < 4 ? q & 0x0F : q >> 4) | (int)((m >> (4 * r + j)) & 1) << 4;
                        sum += (v - 16) * x[i].qs[4 * c + j];
                    } else {
                        sum += (int8_t)blk[32 + 64 * c + 4 * r + j] * x[i].qs[4 * c + j];
                    }
                }
                acc[c] = fmaf(scale, (float)sum, acc[c]);
            }
            if (type == 3) {
                uint16_t mh;
                memcpy(&mh, blk + 32 + 2 * r, 2);
                mins = fmaf(tk_half_to_float(mh), x[i].s, mins);
            }
        }
        out[r] = reduce8(acc) + mins;
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// AVX2 (8 rows at a time, two halves of a group) and AVX-512 VNNI (16 rows) paths: NA activation rows per pass, so each weight block is loaded and unpacked once for them.

#if TK_X86

// acc + (unsigned bytes of u) · (signed bytes of s), four at a time into 8 int32 lanes; exact.
TK_AVX2 static inline __m256i dp_avx2(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

static inline int32_t quad(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

// The eight partial-sum vectors of one activation row, reduced in ggml's order; lane r is row r's result.
#define TK_REDUCE8(A) \
    _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(A[4], A[0]), _mm256_add_ps(A[6], A[2])), \
                  _mm256_add_ps(_mm256_add_ps(A[5], A[1]), _mm256_add_ps(A[7], A[3])))

#define TK_X8_Q4_1(NAME, ATTR, DP, NA)                                                                 \
    ATTR static void NAME(const uint8_t *g0, int nb, const tk_block_q8 *x, size_t xstride, float *out, \
                          size_t os, int valid) {                                                      \
        for (int h = 0; h < 2 && 8 * h < valid; h++) {                                                 \
        const uint8_t *g = g0 + 16 * h;                                                                \
        __m256 acc[NA][8], mins[NA];                                                                   \
        for (int a = 0; a < NA; a++) {                                                                 \
            mins[a] = _mm256_setzero_ps();                                                             \
            for (int c = 0; c < 8; c++) acc[a][c] = _mm256_setzero_ps();                               \
        }                                                                                              \
        const __m256i mask = _mm256_set1_epi8(0x0F);                                                   \
        for (int i = 0; i < nb; i++, g += 320) {                                                       \
            const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));                    \
            const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 32)));             \
            __m256i w[8];                                                                              \
            for (int c = 0; c < 4; c++) {                                                              \
                const __m256i b = _mm256_loadu_si256((const __m256i *)(g + 64 + 64 * c + 16 * h));     \
                w[c] = _mm256_and_si256(b, mask);                                                      \
                w[c + 4] = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);                            \
            }                                                                                          \
            for (int a = 0; a < NA; a++) {                                                             \
                const tk_block_q8 *xa = x + a * xstride + i;                                           \
                const __m256 scale = _mm256_mul_ps(dv, _mm256_set1_ps(xa->d));                         \
                for (int c = 0; c < 8; c++) {                                                          \
                    const __m256i s = DP(_mm256_setzero_si256(), w[c], _mm256_set1_epi32(quad(xa->qs + 4 * c))); \
                    acc[a][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(s), acc[a][c]);              \
                }                                                                                      \
                mins[a] = _mm256_fmadd_ps(mv, _mm256_set1_ps(xa->s), mins[a]);                         \
            }                                                                                          \
        }                                                                                              \
        for (int a = 0; a < NA; a++) {                                                                 \
            float r[8];                                                                                \
            _mm256_storeu_ps(r, _mm256_add_ps(TK_REDUCE8(acc[a]), mins[a]));                           \
            for (int k = 0; k < 8 && 8 * h + k < valid; k++) out[a * os + 8 * h + k] = r[k];           \
        }                                                                                              \
        }                                                                                              \
    }

#define TK_X8_Q8_0(NAME, ATTR, DP, NA)                                                                 \
    ATTR static void NAME(const uint8_t *g0, int nb, const tk_block_q8 *x, size_t xstride, float *out, \
                          size_t os, int valid) {                                                      \
        for (int h = 0; h < 2 && 8 * h < valid; h++) {                                                 \
        const uint8_t *g = g0 + 16 * h;                                                                \
        __m256 acc[NA][8];                                                                             \
        for (int a = 0; a < NA; a++)                                                                   \
            for (int c = 0; c < 8; c++) acc[a][c] = _mm256_setzero_ps();                               \
        for (int i = 0; i < nb; i++, g += 544) {                                                       \
            const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));                    \
            __m256i w[8], aw[8];                                                                       \
            for (int c = 0; c < 8; c++) {                                                              \
                w[c] = _mm256_loadu_si256((const __m256i *)(g + 32 + 64 * c + 16 * h));                \
                aw[c] = _mm256_sign_epi8(w[c], w[c]);                                                  \
            }                                                                                          \
            for (int a = 0; a < NA; a++) {                                                             \
                const tk_block_q8 *xa = x + a * xstride + i;                                           \
                const __m256 scale = _mm256_mul_ps(dv, _mm256_set1_ps(xa->d));                         \
                for (int c = 0; c < 8; c++) {                                                          \
                    const __m256i xs = _mm256_sign_epi8(_mm256_set1_epi32(quad(xa->qs + 4 * c)), w[c]); \
                    const __m256i s = DP(_mm256_setzero_si256(), aw[c], xs);                           \
                    acc[a][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(s), acc[a][c]);              \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int a = 0; a < NA; a++) {                                                                 \
            float r[8];                                                                                \
            _mm256_storeu_ps(r, TK_REDUCE8(acc[a]));                                                   \
            for (int k = 0; k < 8 && 8 * h + k < valid; k++) out[a * os + 8 * h + k] = r[k];           \
        }                                                                                              \
        }                                                                                              \
    }

// Q5_0's weights are 5-bit quants q in [0, 31], unsigned as vpdpbusd and vpmaddubsw want them, standing for q - 16:
// each lane's integer sum starts at -16 times the sum of the four activation bytes it meets (corr, from
// q8_corrections), so it is exactly Σ (q - 16)·x, the lane ggml's vec_dot_q5_0_q8_0 computes.

// Bytes 0x10 where the 32 mask bits at m are set (byte k for bit k), 0 elsewhere.
TK_AVX2 static inline __m256i q5_0_high_avx2(const uint8_t *m) {
    uint32_t bits;
    memcpy(&bits, m, 4);
    const __m256i spread = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL));
    return _mm256_and_si256(_mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}

#define TK_X8_Q5_0(NAME, NA)                                                                           \
    TK_AVX2 static void NAME(const uint8_t *g0, int nb, const tk_block_q8 *x, size_t xstride,          \
                             const int32_t *corr, float *out, size_t os, int valid) {                  \
        for (int h = 0; h < 2 && 8 * h < valid; h++) {                                                 \
        __m256 acc[NA][8];                                                                             \
        for (int a = 0; a < NA; a++)                                                                   \
            for (int c = 0; c < 8; c++) acc[a][c] = _mm256_setzero_ps();                               \
        const __m256i mask = _mm256_set1_epi8(0x0F);                                                   \
        const uint8_t *g = g0;                                                                         \
        for (int i = 0; i < nb; i++, g += 352) {                                                       \
            const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 16 * h)));         \
            __m256i w[8];                                                                              \
            for (int c = 0; c < 4; c++) {                                                              \
                const __m256i b = _mm256_loadu_si256((const __m256i *)(g + 96 + 64 * c + 32 * h));     \
                w[c] = _mm256_or_si256(_mm256_and_si256(b, mask), q5_0_high_avx2(g + 32 + 8 * c + 4 * h)); \
                w[c + 4] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), mask),            \
                                           q5_0_high_avx2(g + 32 + 8 * (c + 4) + 4 * h));              \
            }                                                                                          \
            for (int a = 0; a < NA; a++) {                                                             \
                const tk_block_q8 *xa = x + a * xstride + i;                                           \
                const int32_t *ca = corr + (a * xstride + i) * 8;                                      \
                const __m256 scale = _mm256_mul_ps(dv, _mm256_set1_ps(xa->d));                         \
                for (int c = 0; c < 8; c++) {                                                          \
                    const __m256i s = dp_avx2(_mm256_set1_epi32(ca[c]), w[c], _mm256_set1_epi32(quad(xa->qs + 4 * c))); \
                    acc[a][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(s), acc[a][c]);              \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int a = 0; a < NA; a++) {                                                                 \
            float r[8];                                                                                \
            _mm256_storeu_ps(r, TK_REDUCE8(acc[a]));                                                   \
            for (int k = 0; k < 8 && 8 * h + k < valid; k++) out[a * os + 8 * h + k] = r[k];           \
        }                                                                                              \
        }                                                                                              \
    }

// AVX-512: all 16 rows of a group in one register. Same operations per lane as the AVX2 kernels.
// How far ahead of the block being computed the AVX-512 kernels ask for weight bytes. The hardware prefetcher alone
// leaves decode about 25 % short of this machine's streaming bandwidth; 4-8 KiB ahead measured best (6 KiB).
#ifndef TK_PF
#define TK_PF 6144
#endif
#define TK_V512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define TK_REDUCE16(A) \
    _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(A[4], A[0]), _mm512_add_ps(A[6], A[2])), \
                  _mm512_add_ps(_mm512_add_ps(A[5], A[1]), _mm512_add_ps(A[7], A[3])))

#define TK_X16_Q4_1(NAME, NA)                                                                          \
    TK_V512 static void NAME(const uint8_t *g, int nb, const tk_block_q8 *x, size_t xstride, float *out, \
                             size_t os, int valid) {                                                   \
        __m512 acc[NA][8], mins[NA];                                                                   \
        for (int a = 0; a < NA; a++) {                                                                 \
            mins[a] = _mm512_setzero_ps();                                                             \
            for (int c = 0; c < 8; c++) acc[a][c] = _mm512_setzero_ps();                               \
        }                                                                                              \
        const __m512i mask = _mm512_set1_epi8(0x0F);                                                   \
        for (int i = 0; i < nb; i++, g += 320) {                                                       \
            for (int l = 0; l < 320; l += 64) _mm_prefetch((const char *)(g + TK_PF + l), _MM_HINT_T0);   \
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g));                 \
            const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + 32)));          \
            __m512i w[8];                                                                              \
            for (int c = 0; c < 4; c++) {                                                              \
                const __m512i b = _mm512_loadu_si512((const void *)(g + 64 + 64 * c));                 \
                w[c] = _mm512_and_si512(b, mask);                                                      \
                w[c + 4] = _mm512_and_si512(_mm512_srli_epi16(b, 4), mask);                            \
            }                                                                                          \
            for (int a = 0; a < NA; a++) {                                                             \
                const tk_block_q8 *xa = x + a * xstride + i;                                           \
                const __m512 scale = _mm512_mul_ps(dv, _mm512_set1_ps(xa->d));                         \
                for (int c = 0; c < 8; c++) {                                                          \
                    const __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[c],                \
                                                          _mm512_set1_epi32(quad(xa->qs + 4 * c)));    \
                    acc[a][c] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(s), acc[a][c]);              \
                }                                                                                      \
                mins[a] = _mm512_fmadd_ps(mv, _mm512_set1_ps(xa->s), mins[a]);                         \
            }                                                                                          \
        }                                                                                              \
        for (int a = 0; a < NA; a++) {                                                                 \
            _mm512_mask_storeu_ps(out + a * os, (__mmask16)((1u << valid) - 1), _mm512_add_ps(TK_REDUCE16(acc[a]), mins[a]));                                    \
        }                                                                                              \
    }

// Q8_0 weights are signed, but vpdpbusd wants one unsigned operand. The kernel flips each weight byte's top bit,
// which gives w + 128 in [0, 255], and starts each lane's integer sum at -128 times the sum of the four activation
// bytes it meets (corr, from q8_corrections), so the sum is exactly Σ w·x as ggml's kernel computes it.
#define TK_X16_Q8_0(NAME, NA)                                                                          \
    TK_V512 static void NAME(const uint8_t *g, int nb, const tk_block_q8 *x, size_t xstride, const int32_t *corr, \
                             float *out, size_t os, int valid) {                                       \
        __m512 acc[NA][8];                                                                             \
        for (int a = 0; a < NA; a++)                                                                   \
            for (int c = 0; c < 8; c++) acc[a][c] = _mm512_setzero_ps();                               \
        const __m512i flip = _mm512_set1_epi8((char)0x80);                                             \
        for (int i = 0; i < nb; i++, g += 544) {                                                       \
            for (int l = 0; l < 544; l += 64) _mm_prefetch((const char *)(g + TK_PF + l), _MM_HINT_T0);   \
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g));                 \
            __m512i uw[8];                                                                             \
            for (int c = 0; c < 8; c++) {                                                              \
                uw[c] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(g + 32 + 64 * c)), flip);   \
            }                                                                                          \
            for (int a = 0; a < NA; a++) {                                                             \
                const tk_block_q8 *xa = x + a * xstride + i;                                           \
                const int32_t *ca = corr + (a * (size_t)nb + i) * 8;                                   \
                const __m512 scale = _mm512_mul_ps(dv, _mm512_set1_ps(xa->d));                         \
                for (int c = 0; c < 8; c++) {                                                          \
                    const __m512i s = _mm512_dpbusd_epi32(_mm512_set1_epi32(ca[c]), uw[c],             \
                                                          _mm512_set1_epi32(quad(xa->qs + 4 * c)));    \
                    acc[a][c] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(s), acc[a][c]);              \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int a = 0; a < NA; a++) {                                                                 \
            _mm512_mask_storeu_ps(out + a * os, (__mmask16)((1u << valid) - 1), TK_REDUCE16(acc[a]));                                    \
        }                                                                                              \
    }

// Q5_0 on AVX-512: a block's fifth bits are one 64-bit mask per chunk, which adds 16 to the bytes it selects
// (`q5_0_unpack_group`: per block its 16 rows' scales as floats, then the eight chunks' bytes with their fifth bits).
TK_V512 static inline void q5_0_unpack_group(const uint8_t *g, int nb, __m512 *scales, __m512i *w) {
    const __m512i mask = _mm512_set1_epi8(0x0F);
    const __m512i sixteen = _mm512_set1_epi8(0x10);
    for (int i = 0; i < nb; i++, g += 352) {
        scales[i] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g));
        for (int c = 0; c < 4; c++) {
            const __m512i b = _mm512_loadu_si512((const void *)(g + 96 + 64 * c));
            __mmask64 kl, kh;
            memcpy(&kl, g + 32 + 8 * c, 8);
            memcpy(&kh, g + 32 + 8 * (c + 4), 8);
            const __m512i lo = _mm512_and_si512(b, mask);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), mask);
            w[8 * i + c] = _mm512_mask_add_epi8(lo, kl, lo, sixteen);
            w[8 * i + c + 4] = _mm512_mask_add_epi8(hi, kh, hi, sixteen);
        }
    }
}

// Block i of NA activation rows against one group's unpacked block (`dv`, `w`): eight partial sums per row.
#define TK_Q5_0_BLOCK(NA, dv, w, i)                                                                    \
    for (int a = 0; a < NA; a++) {                                                                     \
        const tk_block_q8 *xa = x + a * xstride + (i);                                                 \
        const int32_t *ca = corr + (a * xstride + (i)) * 8;                                            \
        const __m512 scale = _mm512_mul_ps(dv, _mm512_set1_ps(xa->d));                                 \
        for (int c = 0; c < 8; c++) {                                                                  \
            const __m512i s = _mm512_dpbusd_epi32(_mm512_set1_epi32(ca[c]), (w)[c],                    \
                                                  _mm512_set1_epi32(quad(xa->qs + 4 * c)));            \
            acc[a][c] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(s), acc[a][c]);                      \
        }                                                                                              \
    }

// One group's blocks unpacked as they are read (decode: few activation rows).
#define TK_X16_Q5_0(NAME, NA)                                                                          \
    TK_V512 static void NAME(const uint8_t *g, int nb, const tk_block_q8 *x, size_t xstride, const int32_t *corr, \
                             float *out, size_t os, int valid) {                                       \
        __m512 acc[NA][8];                                                                             \
        for (int a = 0; a < NA; a++)                                                                   \
            for (int c = 0; c < 8; c++) acc[a][c] = _mm512_setzero_ps();                               \
        for (int i = 0; i < nb; i++, g += 352) {                                                       \
            for (int l = 0; l < 352; l += 64) _mm_prefetch((const char *)(g + TK_PF + l), _MM_HINT_T0);   \
            __m512 dv;                                                                                 \
            __m512i w[8];                                                                              \
            q5_0_unpack_group(g, 1, &dv, w);                                                           \
            TK_Q5_0_BLOCK(NA, dv, w, i)                                                                \
        }                                                                                              \
        for (int a = 0; a < NA; a++)                                                                   \
            _mm512_mask_storeu_ps(out + a * os, (__mmask16)((1u << valid) - 1), TK_REDUCE16(acc[a]));  \
    }

// The same over a group unpacked once beforehand (prefill: the unpacking is shared by every pass over the rows).
#define TK_X16_Q5_0_UNPACKED(NAME, NA)                                                                 \
    TK_V512 static void NAME(const __m512 *scales, const __m512i *w, int nb, const tk_block_q8 *x, size_t xstride, \
                             const int32_t *corr, float *out, size_t os, int valid) {                  \
        __m512 acc[NA][8];                                                                             \
        for (int a = 0; a < NA; a++)                                                                   \
            for (int c = 0; c < 8; c++) acc[a][c] = _mm512_setzero_ps();                               \
        for (int i = 0; i < nb; i++) TK_Q5_0_BLOCK(NA, scales[i], w + 8 * i, i)                        \
        for (int a = 0; a < NA; a++)                                                                   \
            _mm512_mask_storeu_ps(out + a * os, (__mmask16)((1u << valid) - 1), TK_REDUCE16(acc[a]));  \
    }

// Three activation rows per pass: each chunk's weights are unpacked once for all three, and the minimums term is
// summed in a second, short pass over the group's m values (the same FMA chain, block by block), which frees the
// registers three rows' 24 partial sums need.
TK_V512 static void x16_q4_1_3(const uint8_t *g0, int nb, const tk_block_q8 *x, size_t xstride, float *out,
                               size_t os, int valid) {
    __m512 acc[3][8];
    for (int a = 0; a < 3; a++)
        for (int c = 0; c < 8; c++) acc[a][c] = _mm512_setzero_ps();
    const __m512i mask = _mm512_set1_epi8(0x0F);
    const uint8_t *g = g0;
    for (int i = 0; i < nb; i++, g += 320) {
        for (int l = 0; l < 320; l += 64) _mm_prefetch((const char *)(g + TK_PF + l), _MM_HINT_T0);
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g));
        const tk_block_q8 *xa[3] = {x + i, x + xstride + i, x + 2 * xstride + i};
        __m512 scale[3];
        for (int a = 0; a < 3; a++) scale[a] = _mm512_mul_ps(dv, _mm512_set1_ps(xa[a]->d));
        for (int c = 0; c < 4; c++) {
            const __m512i b = _mm512_loadu_si512((const void *)(g + 64 + 64 * c));
            const __m512i lo = _mm512_and_si512(b, mask);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), mask);
            for (int a = 0; a < 3; a++) {
                const __m512i sl =
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_set1_epi32(quad(xa[a]->qs + 4 * c)));
                acc[a][c] = _mm512_fmadd_ps(scale[a], _mm512_cvtepi32_ps(sl), acc[a][c]);
                const __m512i sh = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi,
                                                       _mm512_set1_epi32(quad(xa[a]->qs + 4 * (c + 4))));
                acc[a][c + 4] = _mm512_fmadd_ps(scale[a], _mm512_cvtepi32_ps(sh), acc[a][c + 4]);
            }
        }
    }
    for (int a = 0; a < 3; a++) {
        __m512 mins = _mm512_setzero_ps();
        g = g0;
        for (int i = 0; i < nb; i++, g += 320) {
            const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + 32)));
            mins = _mm512_fmadd_ps(mv, _mm512_set1_ps(x[a * xstride + i].s), mins);
        }
        _mm512_mask_storeu_ps(out + a * os, (__mmask16)((1u << valid) - 1), _mm512_add_ps(TK_REDUCE16(acc[a]), mins));
    }
}

TK_X16_Q4_1(x16_q4_1_1, 1)
TK_X16_Q4_1(x16_q4_1_2, 2)
TK_X16_Q8_0(x16_q8_0_1, 1)
TK_X16_Q8_0(x16_q8_0_2, 2)
TK_X16_Q5_0(x16_q5_0_1, 1)
TK_X16_Q5_0(x16_q5_0_2, 2)

TK_X16_Q5_0_UNPACKED(x16_q5_0_unpacked_1, 1)
TK_X16_Q5_0_UNPACKED(x16_q5_0_unpacked_2, 2)
TK_X8_Q5_0(x8_q5_0_avx2_1, 1)
TK_X8_Q5_0(x8_q5_0_avx2_2, 2)

TK_X8_Q4_1(x8_q4_1_avx2_1, TK_AVX2, dp_avx2, 1)
TK_X8_Q4_1(x8_q4_1_avx2_2, TK_AVX2, dp_avx2, 2)
TK_X8_Q8_0(x8_q8_0_avx2_1, TK_AVX2, dp_avx2, 1)
TK_X8_Q8_0(x8_q8_0_avx2_2, TK_AVX2, dp_avx2, 2)
#endif

typedef void (*interleaved_fn)(const uint8_t *, int, const tk_block_q8 *, size_t, float *, size_t, int);

void tk_q8_corrections(const tk_block_q8 *x, int n_act, int nb, int factor, int32_t *corr) {
    for (int r = 0; r < n_act * nb; r++) {
        for (int c = 0; c < 8; c++) {
            const int8_t *q = x[r].qs + 4 * c;
            corr[r * 8 + c] = factor * (q[0] + q[1] + q[2] + q[3]);
        }
    }
}

#if TK_X86

typedef void (*corrected_fn)(const uint8_t *, int, const tk_block_q8 *, size_t, const int32_t *, float *, size_t, int);

// Q8_0 on AVX-512, Q5_0 on AVX2 or AVX-512: every group against the activation rows, two at a time.
static void matmul_corrected(corrected_fn one, corrected_fn two, const uint8_t *packed, size_t group_bytes, int nb,
                             int group_begin, int group_end, int rows, const tk_block_q8 *x, const int32_t *corr,
                             int n_act, float *out, int out_stride) {
    for (int g = group_begin; g < group_end; g++) {
        const uint8_t *gp = packed + (size_t)g * group_bytes;
        const int first = g * 16;
        const int valid = rows - first < 16 ? rows - first : 16;
        int b = 0;
        for (; b + 2 <= n_act; b += 2) {
            two(gp, nb, x + (size_t)b * nb, nb, corr + (size_t)b * nb * 8, out + (size_t)b * out_stride + first,
                out_stride, valid);
        }
        for (; b < n_act; b++) {
            one(gp, nb, x + (size_t)b * nb, nb, corr + (size_t)b * nb * 8, out + (size_t)b * out_stride + first,
                out_stride, valid);
        }
    }
}

// Q5_0 on AVX-512 for many activation rows: each group unpacked once (q5_0_unpack_group), then the rows in pairs.
static int matmul_q5_0_unpacked(const uint8_t *packed, size_t group_bytes, int nb, int group_begin, int group_end,
                                int rows, const tk_block_q8 *x, const int32_t *corr, int n_act, float *out,
                                int out_stride) {
    void *buffer = tk_scratch(1, (size_t)nb * 9 * 64);
    if (!buffer) return -1;
    __m512 *scales = buffer;
    __m512i *w = (__m512i *)(scales + nb);
    for (int g = group_begin; g < group_end; g++) {
        q5_0_unpack_group(packed + (size_t)g * group_bytes, nb, scales, w);
        const int first = g * 16;
        const int valid = rows - first < 16 ? rows - first : 16;
        int b = 0;
        for (; b + 2 <= n_act; b += 2) {
            x16_q5_0_unpacked_2(scales, w, nb, x + (size_t)b * nb, nb, corr + (size_t)b * nb * 8,
                                out + (size_t)b * out_stride + first, out_stride, valid);
        }
        for (; b < n_act; b++) {
            x16_q5_0_unpacked_1(scales, w, nb, x + (size_t)b * nb, nb, corr + (size_t)b * nb * 8,
                                out + (size_t)b * out_stride + first, out_stride, valid);
        }
    }
    return 0;
}
#endif

int tk_interleaved_correction_factor(int type) {
#if TK_X86
    const int level = tk_simd_level();
    if (level == 2 && type == 8) return -128;
    if (level >= 1 && type == 6) return -16;
#endif
    (void)type;
    return 0;
}

int tk_matmul_interleaved(int type, const void *packed, int n, int group_begin, int group_end, int rows,
                          const tk_block_q8 *x, int n_act, float *out, int out_stride) {
    const int factor = tk_interleaved_correction_factor(type);
    int32_t *corr = 0;
    if (factor != 0) {
        corr = tk_scratch(0, (size_t)n_act * (size_t)(n / 32) * 8 * sizeof(int32_t));
        if (!corr) return -1;
        tk_q8_corrections(x, n_act, n / 32, factor, corr);
    }
    return tk_matmul_interleaved_corrected(type, packed, n, group_begin, group_end, rows, x, corr, n_act, out,
                                           out_stride);
}

int tk_matmul_interleaved_corrected(int type, const void *packed, int n, int group_begin, int group_end, int rows,
                                    const tk_block_q8 *x, const int32_t *corr, int n_act, float *out,
                                    int out_stride) {
    const int bb = block_bytes_of(type);
    if (bb == 0) return -1;
    const int nb = n / 32;
    const size_t group_bytes = (size_t)bb * (size_t)nb;
    const int level = tk_simd_level();
#if TK_X86
    // Corrections made for another SIMD level (a thread pinned by tk_set_simd_level) are not these kernels'.
    if (tk_interleaved_correction_factor(type) != 0 && !corr)
        return tk_matmul_interleaved(type, packed, n, group_begin, group_end, rows, x, n_act, out, out_stride);
    if (level == 2 && type == 8) {
        matmul_corrected(x16_q8_0_1, x16_q8_0_2, (const uint8_t *)packed, group_bytes, nb, group_begin, group_end,
                         rows, x, corr, n_act, out, out_stride);
        return 0;
    }
    if (level == 2 && type == 6 && n_act >= 8 &&
        matmul_q5_0_unpacked((const uint8_t *)packed, group_bytes, nb, group_begin, group_end, rows, x, corr, n_act,
                             out, out_stride) == 0) {
        return 0;
    }
    if (level >= 1 && type == 6) {
        matmul_corrected(level == 2 ? x16_q5_0_1 : x8_q5_0_avx2_1, level == 2 ? x16_q5_0_2 : x8_q5_0_avx2_2,
                         (const uint8_t *)packed, group_bytes, nb, group_begin, group_end, rows, x, corr, n_act, out,
                         out_stride);
        return 0;
    }
#else
    (void)corr;
#endif
    for (int g = group_begin; g < group_end; g++) {
        const uint8_t *gp = (const uint8_t *)packed + (size_t)g * group_bytes;
        const int first = g * 16;
        const int valid = rows - first < 16 ? rows - first : 16;
        int b = 0;
#if TK_X86
        if (level >= 1) {
            // Two activation rows per pass: with eight partial sums each, more would not fit in the registers.
            interleaved_fn one, two;
            if (level == 2) {
                one = x16_q4_1_1;
                two = x16_q4_1_2;
            } else {
                one = type == 3 ? x8_q4_1_avx2_1 : x8_q8_0_avx2_1;
                two = type == 3 ? x8_q4_1_avx2_2 : x8_q8_0_avx2_2;
            }
            if (level == 2 && n_act <= 16) {
                // Decode batches: threes while they leave pairs behind (4 rows go as two pairs: a lone row is the
                // slowest pass). Prefill's hundreds of rows measured faster in pairs.
                for (; n_act - b >= 3 && n_act - b != 4; b += 3) {
                    x16_q4_1_3(gp, nb, x + (size_t)b * nb, nb, out + (size_t)b * out_stride + first, out_stride,
                               valid);
                }
            }
            for (; b + 2 <= n_act; b += 2) {
                two(gp, nb, x + (size_t)b * nb, nb, out + (size_t)b * out_stride + first, out_stride, valid);
            }
            for (; b < n_act; b++) {
                one(gp, nb, x + (size_t)b * nb, nb, out + (size_t)b * out_stride + first, out_stride, valid);
            }
        }
#endif
        for (; b < n_act; b++) {
            float r[16];
            interleaved_scalar(type, gp, nb, x + (size_t)b * nb, r);
            for (int k = 0; k < valid; k++) out[(size_t)b * out_stride + first + k] = r[k];
        }
    }
    return 0;
}
