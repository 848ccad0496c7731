/* transpose16.h: a 16 x 16 matrix of 32-bit words transposed in AVX-512
 * registers, for amxgemm.h's packing (bfloat16 pairs) and fusedgemm.h's
 * k-major rows (float32): pairs of rows interleaved by words, then by double
 * words (b[4k + c] holds, in its 128-bit lane l, rows 4k .. 4k+3 of column
 * 4l + c), then the lanes gathered. Pure moves: the bits of every word are
 * kept. */
#ifndef FASTNN_TRANSPOSE16_H
#define FASTNN_TRANSPOSE16_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>

/* out[c * ld + r] := v[r][c] for r, c < 16; out and ld 64-byte aligned rows. */
__attribute__((target("avx512f"), always_inline)) static inline void
fastnn_transpose16(const __m512i v[16], void* out, ptrdiff_t ld) {
    uint32_t* o = (uint32_t*) out;
    __m512i a[16], b[16];
    for (int q = 0; q < 8; q++) {
        a[2 * q] = _mm512_unpacklo_epi32(v[2 * q], v[2 * q + 1]);
        a[2 * q + 1] = _mm512_unpackhi_epi32(v[2 * q], v[2 * q + 1]);
    }
    for (int q = 0; q < 4; q++) {
        b[4 * q] = _mm512_unpacklo_epi64(a[4 * q], a[4 * q + 2]);
        b[4 * q + 1] = _mm512_unpackhi_epi64(a[4 * q], a[4 * q + 2]);
        b[4 * q + 2] = _mm512_unpacklo_epi64(a[4 * q + 1], a[4 * q + 3]);
        b[4 * q + 3] = _mm512_unpackhi_epi64(a[4 * q + 1], a[4 * q + 3]);
    }
    for (int c = 0; c < 4; c++) {
        const __m512i t0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44);
        const __m512i t1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);
        const __m512i t2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44);
        const __m512i t3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
        _mm512_store_si512(o + (0 + c) * ld, _mm512_shuffle_i32x4(t0, t2, 0x88));
        _mm512_store_si512(o + (4 + c) * ld, _mm512_shuffle_i32x4(t0, t2, 0xDD));
        _mm512_store_si512(o + (8 + c) * ld, _mm512_shuffle_i32x4(t1, t3, 0x88));
        _mm512_store_si512(o + (12 + c) * ld, _mm512_shuffle_i32x4(t1, t3, 0xDD));
    }
}
#endif

#endif
