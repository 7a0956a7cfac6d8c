// Internal helpers shared by the CKernels C files (not part of the public header).
#ifndef TANDEM_CKERNELS_INTERNAL_H
#define TANDEM_CKERNELS_INTERNAL_H

#include <stdint.h>
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

#endif
