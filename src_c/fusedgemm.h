/* fusedgemm.h: the first layer's products in _core.pyx's train_fused_impl,
 * for AVX-512 (F + VL), on a batch of at most SGK_ROWS rows held k-major.
 *
 * smallgemm.h's sg5_block broadcasts entry k of each of a batch's m rows
 * from m pointers, m rows apart: more pointers than a core has registers,
 * and the spills and reloads in its inner loop took a third of its time at
 * [784, 30] (perf). Here the batch is first put k-major,
 *
 *   XT (K, 16):  XT[k * 16 + r] = x_r[k] for r < m, 0 for m <= r < 16,
 *
 * so that the m entries of step k lie in one 64-byte line, at constant
 * offsets from one pointer:
 *
 *   fastnn_sgk_rows   XT := the rows X[rows[r]] (float32, or uint8 / 255),
 *                     read in place, 16 x 16 at a time, transposed in
 *                     registers;
 *   fastnn_sgk_forward
 *                     Z (m, nc) := Z + X (m, K) @ W (K, nc): for each k,
 *                     acc_r := fma(x_r[k], W[k, :], acc_r), from acc_r = Z[r];
 *   fastnn_sgk_step   W (K, nc) := beta W + X^T (K, m) @ (alpha D) (m, nc):
 *                     alpha D rounded first and kept in registers, then for
 *                     each k acc := fma(x_r[k], alpha D[r, :], acc) for r in
 *                     order, from acc = beta W[k, :] (W itself where beta is
 *                     1, 0 where it is 0); eight steps k at a time, eight
 *                     independent chains.
 *
 * Every entry is computed as fastnn_sg_gemm computes it (direct, one FMA for
 * each term in order; alpha B rounded first in a weight step), so the
 * results are the same bits as train_units_impl's.
 */
#ifndef FASTNN_FUSEDGEMM_H
#define FASTNN_FUSEDGEMM_H

#include <sched.h>
#include <string.h>
#include "smallgemm.h"

/* A barrier for the T threads of a team, by spinning: arrived counts the
   threads in, and the last one resets it and moves generation on, which the
   others wait for. The two words on lines of their own (64 bytes apart).
   libgomp's barrier puts a waiting thread to sleep in the kernel after a
   while, and the wake-up cost microseconds at every batch of 10 rows; this
   one spins with pause, and yields the core only after about a millisecond
   (a thread of the team descheduled by a busy or virtualised machine). */
static inline void fastnn_spin_barrier(int64_t* arrived, int64_t* generation, int64_t T) {
    const int64_t gen = __atomic_load_n(generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(arrived, 1, __ATOMIC_ACQ_REL) == T) {
        __atomic_store_n(arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(generation, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    for (long spins = 0; __atomic_load_n(generation, __ATOMIC_ACQUIRE) == gen; spins++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (spins > 20000)
            sched_yield();
    }
}

enum { SGK_ROWS = 16, SGK_STEPS = 8 };

#if FASTNN_SG

/* The 16 x 16 block v (rows r, 32-bit lanes c) transposed: out[c * 16 + r]. */
SG5_INLINE void sgk_transpose16(__m512 v[16], float* out) {
    __m512 a[16], b[16];
    for (int q = 0; q < 8; q++) {
        a[2 * q] = _mm512_unpacklo_ps(v[2 * q], v[2 * q + 1]);
        a[2 * q + 1] = _mm512_unpackhi_ps(v[2 * q], v[2 * q + 1]);
    }
    for (int q = 0; q < 4; q++) {
        b[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a[4 * q]),
                                                       _mm512_castps_pd(a[4 * q + 2])));
        b[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a[4 * q]),
                                                           _mm512_castps_pd(a[4 * q + 2])));
        b[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a[4 * q + 1]),
                                                           _mm512_castps_pd(a[4 * q + 3])));
        b[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a[4 * q + 1]),
                                                           _mm512_castps_pd(a[4 * q + 3])));
    }
    for (int c = 0; c < 4; c++) {
        const __m512 t0 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0x44);
        const __m512 t1 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0xEE);
        const __m512 t2 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0x44);
        const __m512 t3 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0xEE);
        _mm512_store_ps(out + (0 + c) * 16, _mm512_shuffle_f32x4(t0, t2, 0x88));
        _mm512_store_ps(out + (4 + c) * 16, _mm512_shuffle_f32x4(t0, t2, 0xDD));
        _mm512_store_ps(out + (8 + c) * 16, _mm512_shuffle_f32x4(t1, t3, 0x88));
        _mm512_store_ps(out + (12 + c) * 16, _mm512_shuffle_f32x4(t1, t3, 0xDD));
    }
}

/* XT (K, 16), 64-byte aligned := rows rows[0..m) of X (K entries a row; u8:
   uint8 pixels divided by 255, as _core's gather_rows, else float32), m <= 16.
   Past K the last block's lanes are not stored. The rows next[0..n_next)
   (the next batch's) are requested from memory as this batch's are read,
   the same span of each, so that they are in cache when their turn comes
   (a shuffled epoch's rows are scattered over X: each one a wait on memory). */
SG5_TARGET static void fastnn_sgk_rows(const void* X, int u8, ptrdiff_t K, const int64_t* rows,
                                       ptrdiff_t m, const int64_t* next, ptrdiff_t n_next,
                                       float* XT) {
    float tail[16 * 16] __attribute__((aligned(64)));
    const __m512 v255 = _mm512_set1_ps(255.0f);
    const ptrdiff_t size = u8 ? 1 : 4;
    for (ptrdiff_t k = 0; k < K; k += 16) {
        const ptrdiff_t kc = K - k < 16 ? K - k : 16;
        const __mmask16 mask = sg5_mask(kc);
        __m512 v[16];
        if ((k * size) % 64 == 0)
            for (ptrdiff_t r = 0; r < n_next; r++)
                _mm_prefetch((const char*) X + (next[r] * K + k) * size, _MM_HINT_T0);
        for (ptrdiff_t r = 0; r < 16; r++) {
            if (r >= m) {
                v[r] = _mm512_setzero_ps();
            } else if (u8) {
                const uint8_t* p = (const uint8_t*) X + rows[r] * K + k;
                uint8_t part[16] = {0};
                if (kc < 16)
                    memcpy(part, p, (size_t) kc);
                const __m128i b = _mm_loadu_si128((const __m128i*) (kc < 16 ? part : p));
                v[r] = _mm512_div_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)), v255);
            } else {
                v[r] = _mm512_maskz_loadu_ps(mask, (const float*) X + rows[r] * K + k);
            }
        }
        if (kc == 16) {
            sgk_transpose16(v, XT + k * 16);
        } else {
            sgk_transpose16(v, tail);
            for (ptrdiff_t c = 0; c < kc; c++)
                _mm512_store_ps(XT + (k + c) * 16, _mm512_load_ps(tail + c * 16));
        }
    }
}

/* Columns [0, 16 * halves) (at most nc) of Z (mr, .) += X @ W, mr and halves
   constants at the call site. */
SG5_INLINE void sgk_forward_block(const int mr, const int halves, ptrdiff_t K, const float* XT,
                                  const float* W, ptrdiff_t ldw, float* Z, ptrdiff_t ldz,
                                  ptrdiff_t nc) {
    __m512 acc[SGK_ROWS][2];
    const __mmask16 m0 = sg5_mask(nc), m1 = sg5_mask(nc - 16);
    for (int r = 0; r < mr; r++) {
        acc[r][0] = _mm512_maskz_loadu_ps(m0, Z + r * ldz);
        acc[r][1] = halves == 2 ? _mm512_maskz_loadu_ps(m1, Z + r * ldz + 16) : acc[r][0];
    }
    for (ptrdiff_t k = 0; k < K; k++) {
        const float* x = XT + k * 16;
        const __m512 w0 = _mm512_maskz_loadu_ps(m0, W + k * ldw);
        const __m512 w1 = halves == 2 ? _mm512_maskz_loadu_ps(m1, W + k * ldw + 16) : w0;
        for (int r = 0; r < mr; r++) {
            const __m512 xr = _mm512_set1_ps(x[r]);
            acc[r][0] = _mm512_fmadd_ps(xr, w0, acc[r][0]);
            if (halves == 2)
                acc[r][1] = _mm512_fmadd_ps(xr, w1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm512_mask_storeu_ps(Z + r * ldz, m0, acc[r][0]);
        if (halves == 2)
            _mm512_mask_storeu_ps(Z + r * ldz + 16, m1, acc[r][1]);
    }
}

/* All of Z's columns for mr rows: 32 at a time where 2 x mr accumulators
   fit in the registers, else 16. */
SG5_INLINE void sgk_forward_rows(const int mr, ptrdiff_t nc, ptrdiff_t K, const float* XT,
                                 const float* W, ptrdiff_t ldw, float* Z, ptrdiff_t ldz) {
    ptrdiff_t j = 0;
    if (mr <= 12)
        for (; j + 16 < nc; j += 32)
            sgk_forward_block(mr, 2, K, XT, W + j, ldw, Z + j, ldz, nc - j);
    for (; j < nc; j += 16)
        sgk_forward_block(mr, 1, K, XT, W + j, ldw, Z + j, ldz, nc - j);
}

/* Z (m, nc) := Z + X (m, K) @ W (K, nc); X given as XT (fastnn_sgk_rows), m <= 16. */
SG5_TARGET static void fastnn_sgk_forward(ptrdiff_t m, ptrdiff_t nc, ptrdiff_t K,
                                          const float* XT, const float* W, ptrdiff_t ldw,
                                          float* Z, ptrdiff_t ldz) {
    switch (m) {
#define SGK_CASE(mr) case mr: sgk_forward_rows(mr, nc, K, XT, W, ldw, Z, ldz); break;
        SGK_CASE(1) SGK_CASE(2) SGK_CASE(3) SGK_CASE(4) SGK_CASE(5) SGK_CASE(6)
        SGK_CASE(7) SGK_CASE(8) SGK_CASE(9) SGK_CASE(10) SGK_CASE(11) SGK_CASE(12)
        SGK_CASE(13) SGK_CASE(14) SGK_CASE(15) SGK_CASE(16)
#undef SGK_CASE
        default: break;
    }
}

/* Columns [0, min(16, nc)) of W (K, .) := beta W + X^T @ (alpha D), mr a
   constant at the call site. */
SG5_INLINE void sgk_step_block(const int mr, ptrdiff_t K, float alpha, const float* XT,
                               const float* D, ptrdiff_t ldd, float beta, float* W,
                               ptrdiff_t ldw, ptrdiff_t nc) {
    __m512 d[SGK_ROWS];
    const __mmask16 mask = sg5_mask(nc);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < mr; r++)
        d[r] = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(mask, D + r * ldd));
#define SGK_START(w) (beta == 0.0f ? _mm512_setzero_ps()                                    \
                      : beta == 1.0f ? _mm512_maskz_loadu_ps(mask, w)                       \
                      : _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(mask, w)))
    ptrdiff_t k = 0;
    for (; k + SGK_STEPS <= K; k += SGK_STEPS) {
        __m512 acc[SGK_STEPS];
        for (int q = 0; q < SGK_STEPS; q++)
            acc[q] = SGK_START(W + (k + q) * ldw);
        for (int r = 0; r < mr; r++)
            for (int q = 0; q < SGK_STEPS; q++)
                acc[q] = _mm512_fmadd_ps(_mm512_set1_ps(XT[(k + q) * 16 + r]), d[r], acc[q]);
        for (int q = 0; q < SGK_STEPS; q++)
            _mm512_mask_storeu_ps(W + (k + q) * ldw, mask, acc[q]);
    }
    for (; k < K; k++) {
        __m512 acc = SGK_START(W + k * ldw);
        for (int r = 0; r < mr; r++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(XT[k * 16 + r]), d[r], acc);
        _mm512_mask_storeu_ps(W + k * ldw, mask, acc);
    }
#undef SGK_START
}

SG5_INLINE void sgk_step_rows(const int mr, ptrdiff_t nc, ptrdiff_t K, float alpha,
                              const float* XT, const float* D, ptrdiff_t ldd, float beta,
                              float* W, ptrdiff_t ldw) {
    for (ptrdiff_t j = 0; j < nc; j += 16)
        sgk_step_block(mr, K, alpha, XT, D + j, ldd, beta, W + j, ldw, nc - j);
}

/* W (K, nc) := beta W + alpha X^T (K, m) @ D (m, nc); X given as XT, m <= 16. */
SG5_TARGET static void fastnn_sgk_step(ptrdiff_t m, ptrdiff_t nc, ptrdiff_t K, float alpha,
                                       const float* XT, const float* D, ptrdiff_t ldd,
                                       float beta, float* W, ptrdiff_t ldw) {
    switch (m) {
#define SGK_CASE(mr) case mr: sgk_step_rows(mr, nc, K, alpha, XT, D, ldd, beta, W, ldw); break;
        SGK_CASE(1) SGK_CASE(2) SGK_CASE(3) SGK_CASE(4) SGK_CASE(5) SGK_CASE(6)
        SGK_CASE(7) SGK_CASE(8) SGK_CASE(9) SGK_CASE(10) SGK_CASE(11) SGK_CASE(12)
        SGK_CASE(13) SGK_CASE(14) SGK_CASE(15) SGK_CASE(16)
#undef SGK_CASE
        default: break;
    }
}

#else   /* no kernels: train_fused_impl never runs (fused_apply) */
static void fastnn_sgk_rows(const void* X, int u8, ptrdiff_t K, const int64_t* rows,
                            ptrdiff_t m, const int64_t* next, ptrdiff_t n_next, float* XT) { }
static void fastnn_sgk_forward(ptrdiff_t m, ptrdiff_t nc, ptrdiff_t K, const float* XT,
                               const float* W, ptrdiff_t ldw, float* Z, ptrdiff_t ldz) { }
static void fastnn_sgk_step(ptrdiff_t m, ptrdiff_t nc, ptrdiff_t K, float alpha,
                            const float* XT, const float* D, ptrdiff_t ldd, float beta,
                            float* W, ptrdiff_t ldw) { }
#endif

#endif
