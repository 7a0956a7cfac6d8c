// Row operations of the forward pass: RMS normalization and rotary position embedding. See CKernels.h.
//
// RMS normalization keeps ggml's arithmetic: each row's squares, rounded as floats, summed in double one after the
// other in column order, then scale = 1 / sqrt(float(sum / width) + eps) and y = (x · scale) · w. That sum is one long
// dependency chain per row, so eight rows' chains run interleaved (each still in its own order).
//
// RoPE rotates each pair (x0, x1) by the row's angle: x0' = x0·c − x1·s and x1' = x0·s + x1·c, each with the product
// of x1 rounded and the other fused, as ggml's contracted C computes them.
#include "CKernels.h"

#include "internal.h"

#include <math.h>

static void rms_scale_rows(const float *x, const float *w, float *y, int rows, int width, const double *sums,
                           float eps) {
    for (int r = 0; r < rows; r++) {
        const float mean = (float)(sums[r] / (double)width);
        const float scale = 1.0f / sqrtf(mean + eps);
        const float *xr = x + (size_t)r * width;
        float *yr = y + (size_t)r * width;
        for (int i = 0; i < width; i++) yr[i] = (xr[i] * scale) * w[i];
    }
}

void tk_rms_norm(const float *x, const float *w, float *y, int rows, int width, float eps) {
    int r = 0;
    for (; r + 8 <= rows; r += 8) {
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const float *xr = x + (size_t)r * width;
        for (int i = 0; i < width; i++) {
            for (int k = 0; k < 8; k++) {
                const float v = xr[(size_t)k * width + i];
                s[k] += (double)(v * v);
            }
        }
        rms_scale_rows(xr, w, y + (size_t)r * width, 8, width, s, eps);
    }
    for (; r < rows; r++) {
        double s = 0;
        const float *xr = x + (size_t)r * width;
        for (int i = 0; i < width; i++) s += (double)(xr[i] * xr[i]);
        rms_scale_rows(xr, w, y + (size_t)r * width, 1, width, &s, eps);
    }
}

static void rope_scalar(float *x, int heads, int pairs, int neox, const float *cos, const float *sin) {
    for (int h = 0; h < heads; h++) {
        float *v = x + (size_t)h * 2 * pairs;
        for (int i = 0; i < pairs; i++) {
            const int a = neox ? i : 2 * i, b = neox ? i + pairs : 2 * i + 1;
            const float x0 = v[a], x1 = v[b];
            v[a] = fmaf(x0, cos[i], -(x1 * sin[i]));
            v[b] = fmaf(x0, sin[i], x1 * cos[i]);
        }
    }
}

#if TK_X86
TK_AVX2 static void rope_neox_avx2(float *x, int heads, int pairs, const float *cos, const float *sin) {
    for (int h = 0; h < heads; h++) {
        float *v = x + (size_t)h * 2 * pairs;
        int i = 0;
        for (; i + 8 <= pairs; i += 8) {
            const __m256 x0 = _mm256_loadu_ps(v + i), x1 = _mm256_loadu_ps(v + i + pairs);
            const __m256 c = _mm256_loadu_ps(cos + i), s = _mm256_loadu_ps(sin + i);
            _mm256_storeu_ps(v + i, _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
            _mm256_storeu_ps(v + i + pairs, _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
        }
        for (; i < pairs; i++) {
            const float x0 = v[i], x1 = v[i + pairs];
            v[i] = fmaf(x0, cos[i], -(x1 * sin[i]));
            v[i + pairs] = fmaf(x0, sin[i], x1 * cos[i]);
        }
    }
}
#endif

void tk_rope(float *x, int heads, int pairs, int neox, const float *cos, const float *sin) {
#if TK_X86
    if (neox && tk_simd_level() >= 1) {
        rope_neox_avx2(x, heads, pairs, cos, sin);
        return;
    }
#endif
    rope_scalar(x, heads, pairs, neox, cos, sin);
}
