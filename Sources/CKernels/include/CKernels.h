// CKernels: the innermost loops of Tandem's engine (quantized dot products and their activation quantizers).
//
// Everything here has a plain Swift reference in the Kernels target, and KernelsTests compares the two on random
// data. Each entry point picks the widest SIMD path the CPU supports at run time (AVX-512 VNNI, AVX2, or scalar).
#ifndef TANDEM_CKERNELS_H
#define TANDEM_CKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Activations quantized to 8 bits in blocks of 32: scale `d`, `s` = d * sum(qs) (both rounded through fp16, as
/// llama.cpp's Q8_1 stores them), and the 32 signed quants.
typedef struct {
    float d;
    float s;
    int8_t qs[32];
} tk_block_q8;

/// Activations quantized to 8 bits in blocks of 256 for the K-quants, as ggml's Q8_K: scale `d` (signed: the value
/// of largest magnitude becomes -127), the quants, and the sums of each 16.
typedef struct {
    float d;
    int8_t qs[256];
    int16_t bsums[16];
} tk_block_q8k;

/// Quantizes n floats (a multiple of 256) to Q8_K blocks.
void tk_quantize_q8k(const float *x, tk_block_q8k *y, int n);
/// Dot product of one Q5_0 row of n values with quantized activations (as tk_dot_q8_0).
float tk_dot_q5_0(const void *w, const tk_block_q8 *x, int n);
/// Dot product of one K-quant row (ggml type 12 Q4_K, 13 Q5_K or 14 Q6_K) of n values with Q8_K activations; NaN for another
/// type.
float tk_dot_k(int type, const void *w, const tk_block_q8k *x, int n);
/// Per-activation-row order flags of the K-quant matrix kernels (`orders`, `per64`): TK_ORDER_Q4K_GEMM puts a Q4_K
/// row of a repacked matrix in the order of llama.cpp's repacked GEMM; TK_ORDER_TILED puts a Q6_K or Q5_K row (or
/// Q4_K of a matrix llama.cpp does not repack) in the order of its tiled K-quant matmul (ggml-cpu/tiled, which
/// llama.cpp takes for batches of 8 rows or more).
enum { TK_ORDER_Q4K_GEMM = 1, TK_ORDER_TILED = 2 };
/// A K-quant row's dot product (type 12 Q4_K, 13 Q5_K, 14 Q6_K) in llama.cpp's tiled order: per super-block the
/// exact integer sums, then acc = fma(float(sum)·d_w, d_x, acc) (Q4_K and Q5_K: fma(fma(−dmin_w, float(min sum),
/// float(sum)·d_w), d_x, acc)). NaN for another type.
float tk_dot_k_tiled(int type, const void *w, const tk_block_q8k *x, int n);
/// tk_matmul_k with activation row b in the tiled order when orders[b] has TK_ORDER_TILED (else tk_dot_k's).
int tk_matmul_k_ordered(int type, const void *w, size_t row_bytes, int n, int row_begin, int row_end,
                        const tk_block_q8k *x, int n_act, const uint8_t *orders, float *out, int out_stride);
/// tk_matmul_interleaved_k with activation row b's order as orders[b] (NULL: all in tk_dot_k's).
int tk_matmul_interleaved_k_ordered(int type, const void *packed, int n, int group_begin, int group_end, int rows,
                                    const tk_block_q8k *x, int n_act, const uint8_t *orders, float *out,
                                    int out_stride);
/// A Q4_K row's dot product in the order of llama.cpp's repacked Q4_K kernels: `per64` its GEMM's (one FMA per 64
/// values), else its GEMV's (one per 256); out = acc − acc_min (kquants.c).
float tk_dot_q4_k_repacked(const void *w, const tk_block_q8k *x, int n, int per64);
/// tk_matmul_k for Q4_K in the repacked orders, activation row b's order given by per64[b] & TK_ORDER_Q4K_GEMM.
int tk_matmul_q4_k_repacked(const void *w, size_t row_bytes, int n, int row_begin, int row_end, const tk_block_q8k *x,
                            int n_act, const uint8_t *per64, float *out, int out_stride);
/// tk_matmul_interleaved_k for Q4_K (type 12 packed) in the repacked orders, per activation row as per64.
int tk_matmul_interleaved_q4_k_repacked(const void *packed, int n, int group_begin, int group_end, int rows,
                                        const tk_block_q8k *x, int n_act, const uint8_t *per64, float *out,
                                        int out_stride);
/// tk_matmul_q for the K-quants, over Q8_K activations.
int tk_matmul_k(int type, const void *w, size_t row_bytes, int n, int row_begin, int row_end, const tk_block_q8k *x,
                int n_act, float *out, int out_stride);

/// SIMD level in use: 0 scalar, 1 AVX2, 2 AVX-512 VNNI.
int tk_simd_level(void);
/// Pins the calling thread to a SIMD level no higher than the CPU supports (for tests); returns the level in use.
int tk_set_simd_level(int level);

/// A 64-bit checksum of `n` bytes (XXH3-style: 32-byte stripes into four accumulators, AVX2 where it runs), chained
/// by `seed`; for KV transfer frames. Detects corruption, not tampering.
uint64_t tk_hash64(const void *data, size_t n, uint64_t seed);

/// The same checksum taken piece by piece: init, any number of updates, final gives `tk_hash64` of the pieces
/// joined. `tk_hash_copy_update` also copies the piece to `dst` in the same pass (the data is read once).
typedef struct {
    uint64_t v[4];
    uint64_t seed;
    uint64_t total;
    uint8_t stripe[32];
    uint32_t pending;
    uint32_t block_stripe;
} tk_hash_state;
void tk_hash_init(tk_hash_state *s, uint64_t seed);
void tk_hash_update(tk_hash_state *s, const void *data, size_t n);
void tk_hash_copy_update(tk_hash_state *s, void *dst, const void *src, size_t n);
uint64_t tk_hash_final(const tk_hash_state *s);

/// Quantizes `n` floats (a multiple of 32) into n/32 blocks.
void tk_quantize_q8(const float *x, tk_block_q8 *y, int n);

/// Dot product of one weight row (n elements, ggml block layout) with quantized activations.
float tk_dot_q4_0(const void *w, const tk_block_q8 *x, int n);
float tk_dot_q4_1(const void *w, const tk_block_q8 *x, int n);
float tk_dot_q8_0(const void *w, const tk_block_q8 *x, int n);

/// Matrix times activation rows: for each weight row r in [row_begin, row_end) and each activation row b in
/// [0, n_act), out[b * out_stride + r] = dot(w row r, x row b). `type` is the ggml type id (2 Q4_0, 3 Q4_1, 8 Q8_0).
/// Returns 0, or -1 for an unsupported type.
int tk_matmul_q(int type, const void *w, size_t row_bytes, int n, int row_begin, int row_end,
                const tk_block_q8 *x, int n_act, float *out, int out_stride);

/// Bytes of one group of 16 interleaved rows of n columns (Q4_1, Q5_0 or Q8_0; `type` is the ggml type id, 3, 6 or
/// 8).
size_t tk_interleaved_group_bytes(int type, int n);
/// Repacks `rows` rows of n columns of a Q4_1, Q5_0 or Q8_0 matrix into groups of 16 interleaved rows (the last group padded
/// with zero rows); dst holds ceil(rows / 16) groups. Returns 0, or -1 for another type.
int tk_repack_interleaved(int type, const void *src, size_t row_bytes, int rows, int n, void *dst);
/// Matrix times activation rows on a repacked matrix: for the rows of groups [group_begin, group_end) (below `rows`)
/// and each activation row b, out[b * out_stride + r] = dot(row r, x row b), with the arithmetic of tk_dot_q4_1 /
/// tk_dot_q5_0 / tk_dot_q8_0. Returns 0, or -1 for another type.
int tk_matmul_interleaved(int type, const void *packed, int n, int group_begin, int group_end, int rows,
                          const tk_block_q8 *x, int n_act, float *out, int out_stride);
/// The factor of the activation corrections the interleaved kernels of `type` take at this SIMD level: -128 for
/// Q8_0 (AVX-512), -16 for Q5_0 (AVX2 and AVX-512), 0 when they take none.
int tk_interleaved_correction_factor(int type);
/// For each of n_act activation rows of nb blocks, `factor` times the sum of each block's eight 4-byte chunks
/// (n_act · nb · 8 ints): what the Q8_0 and Q5_0 interleaved kernels start their integer sums from, so that their
/// unsigned-by-signed products give Σ w·x exactly.
void tk_q8_corrections(const tk_block_q8 *x, int n_act, int nb, int factor, int32_t *corr);
/// tk_matmul_interleaved with the corrections computed once beforehand (tk_q8_corrections with the type's factor;
/// NULL when the factor is 0), for a product split over threads.
int tk_matmul_interleaved_corrected(int type, const void *packed, int n, int group_begin, int group_end, int rows,
                                    const tk_block_q8 *x, const int32_t *corr, int n_act, float *out,
                                    int out_stride);

/// Bytes of one group of 16 interleaved K-quant rows (`type` 12 Q4_K, 13 Q5_K, 14 Q6_K) of n columns (a multiple of
/// 256); 0 for another type.
size_t tk_interleaved_k_group_bytes(int type, int n);
/// Repacks `rows` K-quant rows of n columns into groups of 16 interleaved rows (see interleaved_k.c; the last group
/// padded with zero rows). Returns 0, or -1 for another type.
int tk_repack_interleaved_k(int type, const void *src, size_t row_bytes, int rows, int n, void *dst);
/// tk_matmul_interleaved for repacked K-quant matrices over Q8_K activations, with tk_dot_k's arithmetic.
int tk_matmul_interleaved_k(int type, const void *packed, int n, int group_begin, int group_end, int rows,
                            const tk_block_q8k *x, int n_act, float *out, int out_stride);

/// Dot product of n fp16 values with n floats.
float tk_dot_f16_f32(const uint16_t *a, const float *b, int n);
/// y[i] += alpha * (float)a[i] for n fp16 values.
void tk_axpy_f16(float alpha, const uint16_t *a, float *y, int n);
/// Converts n floats to fp16 (round to nearest even).
void tk_f32_to_f16(const float *x, uint16_t *y, int n);
/// Converts n fp16 values to floats.
void tk_f16_to_f32(const uint16_t *x, float *y, int n);

#ifdef __cplusplus
}
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif
/// Attention of one query head over `length` cached positions, with the arithmetic of llama.cpp's CPU flash
/// attention: the query rounded to fp16, scores in fp32, an online softmax, and the weighted sum of V accumulated in
/// fp16. Position t's key is at k_base + table[t / block_size] * block_stride + (t % block_size) * slot_stride
/// (likewise V). Writes head_dim floats to out.
void tk_attend_f16(const float *q, int head_dim, int length, const uint16_t *k_base, const uint16_t *v_base,
                   const int32_t *table, int block_size, size_t block_stride, size_t slot_stride, float scale,
                   float *out);
/// Attention of one query row as llama.cpp's split-KV decode computes it (one query row over 512 or more KV cells):
/// the `cells` cells cut into `parts` chunks (llama.cpp's thread count), each attended as tk_attend_f16 does over its
/// positions below `length`, the partial results merged in order. Other arguments as tk_attend_f16.
void tk_attend_split(const float *q, int head_dim, int length, int cells, int parts, const uint16_t *k_base,
                     const uint16_t *v_base, const int32_t *table, int block_size, size_t block_stride,
                     size_t slot_stride, float scale, float *out);
/// One chunk of tk_attend_split: chunk `part` of the `parts`, computed into result = [running max, sum, head_dim
/// unnormalized outputs] (an empty chunk gives max -inf and sum 0). Chunks can run on different threads.
void tk_attend_part(const float *q, int head_dim, int length, int cells, int parts, int part,
                    const uint16_t *k_base, const uint16_t *v_base, const int32_t *table, int block_size,
                    size_t block_stride, size_t slot_stride, float scale, float *result);
/// tk_attend_f16 over positions first..<length only (a sliding window): the earlier positions are masked out.
void tk_attend_f16_window(const float *q, int head_dim, int first, int length, const uint16_t *k_base,
                          const uint16_t *v_base, const int32_t *table, int block_size, size_t block_stride,
                          size_t slot_stride, float scale, float *out);
/// tk_attend_part with positions below `first` masked out (a sliding window).
void tk_attend_part_window(const float *q, int head_dim, int first, int length, int cells, int parts, int part,
                           const uint16_t *k_base, const uint16_t *v_base, const int32_t *table, int block_size,
                           size_t block_stride, size_t slot_stride, float scale, float *result);
/// Merges `parts` results of tk_attend_part (each 2 + head_dim floats, in chunk order) as tk_attend_split does.
void tk_merge_parts(const float *partials, int parts, int head_dim, float *out);
/// Gathers one KV head's first `length` positions for tk_attend_tiled: keys in fp32 tiles of 64 positions, each tile
/// stored dimension-major (kt[tile][i][t], zero past `length`: ceil(length/64) * 64 * head_dim floats), values in fp32
/// rows (v[t][i]: length * head_dim floats). Addressing as in tk_attend_f16.
void tk_tile_kv(const uint16_t *k_base, const uint16_t *v_base, const int32_t *table, int block_size,
                size_t block_stride, size_t slot_stride, int length, int head_dim, float *kt, float *v);
/// Attention of one query row as llama.cpp's tiled CPU flash attention computes it (its kernel for prompt rows in
/// micro-batches of 64 rows or more): the query in fp32, keys in tiles of 64 positions, scores and the weighted sum
/// of V as fp32 FMA chains, each tile's softmax sum added in double. `kt` and `v` come from tk_tile_kv.
void tk_attend_tiled(const float *q, int head_dim, int length, const float *kt, const float *v, float scale,
                     float *out);
/// tk_attend_tiled for `heads` query heads that share the keys (grouped-query attention), their rows consecutive in
/// q and in out: each head's result has tk_attend_tiled's bits, and the keys are read once for up to four of them.
void tk_attend_tiled_heads(const float *q, int heads, int head_dim, int length, const float *kt, const float *v,
                           float scale, float *out);
#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
extern "C" {
#endif
/// gate[i] = silu(gate[i]) * up[i], with exp computed by the same polynomial as ggml's vectorized expf, so the
/// result does not depend on the SIMD width.
void tk_swiglu(float *gate, const float *up, int n);
/// gate[i] = gelu(gate[i]) * up[i], GELU's tanh approximation looked up in an fp16 table as ggml's CPU backend does.
void tk_geglu(float *gate, const float *up, int n);
/// y = x / sqrt(mean(x²) + eps) · w for `rows` rows of `width` (y may be x), in ggml's order: the float squares summed
/// in double column after column (rows.c).
void tk_rms_norm(const float *x, const float *w, float *y, int rows, int width, float eps);
/// Rotates `heads` heads of 2·`pairs` values in place by one row's angles (`cos`, `sin`: `pairs` each); `neox` pairs
/// value i with i + pairs, else 2i with 2i + 1.
void tk_rope(float *x, int heads, int pairs, int neox, const float *cos, const float *sin);
/// ggml's vectorized expf polynomial, evaluated one value at a time.
float tk_expf(float x);
#ifdef __cplusplus
}
#endif
