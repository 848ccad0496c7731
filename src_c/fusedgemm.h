/* fusedgemm.h: the first layer's products in _core.pyx's train_fused_impl,
 * for AVX-512 (F + VL), on a batch of at most SGK_ROWS rows held k-major;
 * and for AVX2 + FMA (fastnn_sgk2_forward, fastnn_sgk2_step, at the end),
 * on the batch's rows where they lie, to the padded width of W.
 *
 * The batch is put k-major, its rows read in place (no gather pass first),
 *
 *   XT (K, RS):  XT[k * RS + r] = x_r[k] for r < m, 0 for m <= r < RS,
 *                RS = sgk_stride(m), m rounded up to 16,
 *
 * so that the entries of step k of a block of rows lie in one or two 64-byte
 * lines, at constant offsets from one pointer:
 *
 *   fastnn_sgk_rows   XT := the rows X[rows[r]] (float32, or uint8 / 255),
 *                     read in place, 16 x 16 at a time, transposed in
 *                     registers (and, if asked, the rows as they are: A);
 *   fastnn_sgk_forward
 *                     Z (m, nc) := Z + X (m, K) @ W (K, nc): for each k,
 *                     acc_r := fma(x_r[k], W[k, :], acc_r), from acc_r = Z[r];
 *                     blocks of 12 rows by 32 columns (24 accumulators);
 *   fastnn_sgk_step   W (K, nc) := beta W + X^T (K, m) @ (alpha D) (m, nc):
 *                     alpha D rounded first and kept in registers (16 rows
 *                     at a time), then for each k acc := fma(x_r[k],
 *                     alpha D[r, :], acc) for r in order, from acc = beta
 *                     W[k, :] (W itself where beta is 1, 0 where it is 0),
 *                     and on from the W stored by the block of rows before;
 *                     eight steps k at a time, eight independent chains.
 *
 * The forward and the step also take a float32 X's rows where they lie
 * instead (SGK_X, direct: pointers to the batch's rows), with no k-major
 * copy: for a thread with few columns the copy cost more than it saved.
 *
 * Every entry is computed as fastnn_sg_gemm computes it (direct, one FMA for
 * each term in order; alpha B rounded first in a weight step), so the
 * results are the same bits as train_units_impl's, from XT or the rows.
 */
#ifndef FASTNN_FUSEDGEMM_H
#define FASTNN_FUSEDGEMM_H

#include <sched.h>
#include <string.h>
#include <time.h>
#include "smallgemm.h"
#include "transpose16.h"

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

/* Wait until *word holds value, spinning with pause, and yielding the core
   after about a millisecond as fastnn_spin_barrier does. */
static inline void fastnn_await(int64_t* word, int64_t value) {
    for (long spins = 0; __atomic_load_n(word, __ATOMIC_ACQUIRE) != value; spins++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (spins > 20000)
            sched_yield();
    }
}

enum { FASTNN_WARM_TRIPS = 8 };

/* How far apart a team's threads are: the mean time, in nanoseconds, for a
   value to go from thread 0 to thread u and back through the 64-byte line of
   *ball (zero when the team starts), over n round trips after
   FASTNN_WARM_TRIPS untimed ones, the largest over u = 1 .. T-1. Thread 0
   returns it, the others 0; every thread of the team calls it, all running
   (after a barrier). Two vCPUs of an AMD EPYC VM passed it back in 44-69 ns
   where the hypervisor had put them on one die, and in 342-416 ns where on
   two (a placement that came and went minute by minute), and then every line
   one thread writes and the other reads costs that much more
   (benchmarks/README.md). */
static double fastnn_team_round_trip(int64_t* ball, int t, int T, int n) {
    double worst = 0;
    const int64_t trips = n + FASTNN_WARM_TRIPS;
    for (int u = 1; u < T; u++) {
        const int64_t base = (int64_t) (u - 1) * 2 * trips;
        if (t == 0) {
            struct timespec a, b;
            for (int64_t i = 0; i < trips; i++) {
                if (i == FASTNN_WARM_TRIPS)
                    clock_gettime(CLOCK_MONOTONIC, &a);
                __atomic_store_n(ball, base + 2 * i + 1, __ATOMIC_RELEASE);
                fastnn_await(ball, base + 2 * i + 2);
            }
            clock_gettime(CLOCK_MONOTONIC, &b);
            const double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
            worst = ns > worst ? ns : worst;
        } else if (t == u) {
            for (int64_t i = 0; i < trips; i++) {
                fastnn_await(ball, base + 2 * i + 1);
                __atomic_store_n(ball, base + 2 * i + 2, __ATOMIC_RELEASE);
            }
        }
    }
    return worst;
}

enum { SGK_ROWS = 64, SGK_STEPS = 8, SGK_MR = 12, SGK_DR = 16, SGK_DR2 = 10, SGK_STEPS2 = 4 };

/* XT's row stride for a batch of m rows: m rounded up to 16. */
static inline ptrdiff_t sgk_stride(ptrdiff_t m) { return (m + 15) / 16 * 16; }

#if FASTNN_SG

/* XT (K, sgk_stride(m)), 64-byte aligned := rows rows[0..m) of X (K entries a
   row; u8: uint8 pixels divided by 255, as _core's gather_rows, else
   float32), m <= SGK_ROWS, 16 rows by 16 columns at a time; and A (m, K)
   := those rows unless A is NULL.
   Past K the last block's lanes are not stored. The rows next[0..n_next)
   (the next batch's) are requested from memory as this batch's are read,
   the same span of each, so that they are in cache when their turn comes
   (a shuffled epoch's rows are scattered over X: each one a wait on memory). */
SG5_TARGET static void fastnn_sgk_rows(const void* X, int u8, ptrdiff_t K, const int64_t* rows,
                                       ptrdiff_t m, const int64_t* next, ptrdiff_t n_next,
                                       float* XT, float* A) {
    float tail[16 * 16] __attribute__((aligned(64)));
    const __m512 v255 = _mm512_set1_ps(255.0f);
    const ptrdiff_t size = u8 ? 1 : 4, RS = sgk_stride(m);
    for (ptrdiff_t k = 0; k < K; k += 16) {
        const ptrdiff_t kc = K - k < 16 ? K - k : 16;
        const __mmask16 mask = sg5_mask(kc);
        if ((k * size) % 64 == 0)
            for (ptrdiff_t r = 0; r < n_next; r++)
                _mm_prefetch((const char*) X + (next[r] * K + k) * size, _MM_HINT_T0);
        for (ptrdiff_t r0 = 0; r0 < m; r0 += 16) {
            __m512 v[16];
            __m512i w[16];
            for (ptrdiff_t r = 0; r < 16; r++) {
                const ptrdiff_t row = r0 + r;
                if (row >= m) {
                    v[r] = _mm512_setzero_ps();
                } else if (u8) {
                    const uint8_t* p = (const uint8_t*) X + rows[row] * K + k;
                    uint8_t part[16] = {0};
                    if (kc < 16)
                        memcpy(part, p, (size_t) kc);
                    const __m128i b = _mm_loadu_si128((const __m128i*) (kc < 16 ? part : p));
                    v[r] = _mm512_div_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)), v255);
                } else {
                    v[r] = _mm512_maskz_loadu_ps(mask, (const float*) X + rows[row] * K + k);
                }
                if (A != NULL && row < m)
                    _mm512_mask_storeu_ps(A + row * K + k, mask, v[r]);
            }
            for (ptrdiff_t r = 0; r < 16; r++)
                w[r] = _mm512_castps_si512(v[r]);
            if (kc == 16) {
                fastnn_transpose16(w, XT + k * RS + r0, RS);
            } else {
                fastnn_transpose16(w, tail, 16);
                for (ptrdiff_t c = 0; c < kc; c++)
                    _mm512_store_ps(XT + (k + c) * RS + r0, _mm512_load_ps(tail + c * 16));
            }
        }
    }
}

/* The batch's rows, as the kernels below read x_r[k]: k-major in XT (rows
   RS apart in it: XT[k * RS + r], fastnn_sgk_rows), or, with direct, each
   row where it lies (xr[r][k]: a float32 X read in place, with no copy at
   all). direct is a constant at each call site, so each is its own code. */
#define SGK_X(direct, XT, RS, xr, r, k) ((direct) ? (xr)[r][k] : (XT)[(k) * (RS) + (r)])

/* Columns [0, 16 * halves) (at most nc) of Z (mr, .) += X @ W for mr rows
   (SGK_X); mr, halves and direct constants at the call site. The rows
   next[0..n_next) (the next batch's, read in place) are requested from
   memory a line of each every 16 steps k, so that they are in cache when
   their turn comes, as fastnn_sgk_rows requests them. */
SG5_INLINE void sgk_forward_block(const int mr, const int halves, const int direct, ptrdiff_t K,
                                  const float* XT, ptrdiff_t RS, const float* const* xr,
                                  const float* const* next, ptrdiff_t n_next,
                                  const float* W, ptrdiff_t ldw, float* Z,
                                  ptrdiff_t ldz, ptrdiff_t nc) {
    __m512 acc[SGK_MR][2];
    const __mmask16 m0 = sg5_mask(nc), m1 = sg5_mask(nc - 16);
    for (int r = 0; r < mr; r++) {
        acc[r][0] = _mm512_maskz_loadu_ps(m0, Z + r * ldz);
        acc[r][1] = halves == 2 ? _mm512_maskz_loadu_ps(m1, Z + r * ldz + 16) : acc[r][0];
    }
    for (ptrdiff_t k = 0; k < K; k++) {
        if (n_next > 0 && (k & 15) == 0)
            for (ptrdiff_t i = 0; i < n_next; i++)
                _mm_prefetch((const char*) (next[i] + k), _MM_HINT_T0);
        const __m512 w0 = _mm512_maskz_loadu_ps(m0, W + k * ldw);
        const __m512 w1 = halves == 2 ? _mm512_maskz_loadu_ps(m1, W + k * ldw + 16) : w0;
        for (int r = 0; r < mr; r++) {
            const __m512 x = _mm512_set1_ps(SGK_X(direct, XT, RS, xr, r, k));
            acc[r][0] = _mm512_fmadd_ps(x, w0, acc[r][0]);
            if (halves == 2)
                acc[r][1] = _mm512_fmadd_ps(x, w1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm512_mask_storeu_ps(Z + r * ldz, m0, acc[r][0]);
        if (halves == 2)
            _mm512_mask_storeu_ps(Z + r * ldz + 16, m1, acc[r][1]);
    }
}

/* All of Z's columns for mr <= SGK_MR rows, 32 at a time (the next rows
   requested in the first block only). */
SG5_INLINE void sgk_forward_rows(const int mr, const int direct, ptrdiff_t nc, ptrdiff_t K,
                                 const float* XT, ptrdiff_t RS, const float* const* xr,
                                 const float* const* next, ptrdiff_t n_next,
                                 const float* W, ptrdiff_t ldw, float* Z, ptrdiff_t ldz) {
    ptrdiff_t j = 0;
    for (; j + 16 < nc; j += 32, n_next = 0)
        sgk_forward_block(mr, 2, direct, K, XT, RS, xr, next, n_next, W + j, ldw, Z + j, ldz,
                          nc - j);
    if (j < nc)
        sgk_forward_block(mr, 1, direct, K, XT, RS, xr, next, n_next, W + j, ldw, Z + j, ldz,
                          nc - j);
}

/* Z (m, nc) := Z + X (m, K) @ W (K, nc), m <= SGK_ROWS; X given as XT
   (fastnn_sgk_rows), or, where xr is not NULL, as its rows in place xr[r]
   (K floats each), when the next batch's rows next[0..n_next) are
   requested meanwhile: blocks of SGK_MR rows, each over all of W's columns. */
SG5_TARGET static void fastnn_sgk_forward(ptrdiff_t m, ptrdiff_t nc, ptrdiff_t K,
                                          const float* XT, const float* const* xr,
                                          const float* const* next, ptrdiff_t n_next,
                                          const float* W, ptrdiff_t ldw,
                                          float* Z, ptrdiff_t ldz) {
    const ptrdiff_t RS = sgk_stride(m);
    for (ptrdiff_t r0 = 0; r0 < m; r0 += SGK_MR, n_next = 0) {
        const float* x = XT + r0;
        const float* const* rows = xr != NULL ? xr + r0 : NULL;
        float* z = Z + r0 * ldz;
        const ptrdiff_t mr = m - r0 < SGK_MR ? m - r0 : SGK_MR;
        if (xr != NULL) {
            switch (mr) {
#define SGK_CASE(mr) case mr: sgk_forward_rows(mr, 1, nc, K, x, RS, rows, next, n_next, W, \
                                               ldw, z, ldz); break;
                SGK_CASE(1) SGK_CASE(2) SGK_CASE(3) SGK_CASE(4) SGK_CASE(5) SGK_CASE(6)
                SGK_CASE(7) SGK_CASE(8) SGK_CASE(9) SGK_CASE(10) SGK_CASE(11) SGK_CASE(12)
#undef SGK_CASE
                default: break;
            }
        } else {
            switch (mr) {
#define SGK_CASE(mr) case mr: sgk_forward_rows(mr, 0, nc, K, x, RS, rows, NULL, 0, W, ldw, \
                                               z, ldz); break;
                SGK_CASE(1) SGK_CASE(2) SGK_CASE(3) SGK_CASE(4) SGK_CASE(5) SGK_CASE(6)
                SGK_CASE(7) SGK_CASE(8) SGK_CASE(9) SGK_CASE(10) SGK_CASE(11) SGK_CASE(12)
#undef SGK_CASE
                default: break;
            }
        }
    }
}

/* Columns [0, 16 * halves) (at most nc) of W (K, .) := (first ? beta W : W) +
   X^T @ (alpha D) for mr rows of XT (RS apart) and of D; mr and halves
   constants at the call site. One half: mr <= SGK_DR, eight steps k at a
   time. Two (nc > 16): mr <= SGK_DR2, both halves' alpha D in registers, so
   that each broadcast x_r[k] feeds two FMAs and XT is read once (784 x 30 at
   10 rows on a Zen 5 core: 2.72-2.87 us as two 16-column blocks, 2.00-2.02 as
   one), four steps at a time. Eight chains either way; each entry the same
   FMAs in the same order. */
SG5_INLINE void sgk_step_block(const int mr, const int halves, const int direct, int first,
                               ptrdiff_t K, float alpha, const float* XT, ptrdiff_t RS,
                               const float* const* xr, const float* D,
                               ptrdiff_t ldd, float beta, float* W, ptrdiff_t ldw,
                               ptrdiff_t nc) {
    const int steps = halves == 2 ? SGK_STEPS2 : SGK_STEPS;
    __m512 d[SGK_DR][2];
    const __mmask16 m0 = sg5_mask(nc), m1 = sg5_mask(nc - 16);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < mr; r++) {
        d[r][0] = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m0, D + r * ldd));
        if (halves == 2)
            d[r][1] = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m1, D + r * ldd + 16));
    }
#define SGK_START(w, mask) (!first || beta == 1.0f ? _mm512_maskz_loadu_ps(mask, w)          \
                            : beta == 0.0f ? _mm512_setzero_ps()                            \
                            : _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(mask, w)))
    ptrdiff_t k = 0;
    for (; k + steps <= K; k += steps) {
        __m512 acc[SGK_STEPS][2];
        for (int q = 0; q < steps; q++) {
            acc[q][0] = SGK_START(W + (k + q) * ldw, m0);
            if (halves == 2)
                acc[q][1] = SGK_START(W + (k + q) * ldw + 16, m1);
        }
        /* unrolled: a loop over r kept alpha D on the stack, a load for every
           eight FMAs (the step of 784 x 16 at 10 rows: 1.35-1.39 -> 1.11-1.26 us
           on a Zen 5 core) */
        #pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
            #pragma GCC unroll 8
            for (int q = 0; q < steps; q++) {
                const __m512 x = _mm512_set1_ps(SGK_X(direct, XT, RS, xr, r, k + q));
                acc[q][0] = _mm512_fmadd_ps(x, d[r][0], acc[q][0]);
                if (halves == 2)
                    acc[q][1] = _mm512_fmadd_ps(x, d[r][1], acc[q][1]);
            }
        for (int q = 0; q < steps; q++) {
            _mm512_mask_storeu_ps(W + (k + q) * ldw, m0, acc[q][0]);
            if (halves == 2)
                _mm512_mask_storeu_ps(W + (k + q) * ldw + 16, m1, acc[q][1]);
        }
    }
    for (; k < K; k++) {
        __m512 a0 = SGK_START(W + k * ldw, m0);
        __m512 a1 = halves == 2 ? SGK_START(W + k * ldw + 16, m1) : a0;
        for (int r = 0; r < mr; r++) {
            const __m512 x = _mm512_set1_ps(SGK_X(direct, XT, RS, xr, r, k));
            a0 = _mm512_fmadd_ps(x, d[r][0], a0);
            if (halves == 2)
                a1 = _mm512_fmadd_ps(x, d[r][1], a1);
        }
        _mm512_mask_storeu_ps(W + k * ldw, m0, a0);
        if (halves == 2)
            _mm512_mask_storeu_ps(W + k * ldw + 16, m1, a1);
    }
#undef SGK_START
}

/* W (K, nc) := beta W + alpha X^T (K, m) @ D (m, nc), m <= SGK_ROWS; X given
   as XT, or where xr is not NULL as its rows in place (see fastnn_sgk_forward):
   for each 16 columns, blocks of SGK_DR rows in order, each going on from
   the W the one before stored (float32 stored and loaded: exact). */
#define SGK_STEP(direct)                                                                  \
    do {                                                                                  \
        ptrdiff_t j0 = 0;                                                                 \
        if (m <= SGK_DR2)                /* 32 columns at a time */                       \
            for (; j0 + 16 < nc; j0 += 32)                                                \
                switch (m) {                                                              \
                    SGK_CASES10(SGK_WIDE, direct)                                         \
                    default: break;                                                       \
                }                                                                         \
        for (ptrdiff_t j = j0; j < nc; j += 16)                                           \
            for (ptrdiff_t r0 = 0; r0 < m; r0 += SGK_DR) {                                \
                const float* x = XT + r0;                                                 \
                const float* const* rows = xr != NULL ? xr + r0 : NULL;                   \
                const float* d = D + r0 * ldd + j;                                        \
                switch (m - r0 < SGK_DR ? m - r0 : SGK_DR) {                              \
                    SGK_CASES16(SGK_NARROW, direct)                                       \
                    default: break;                                                       \
                }                                                                         \
            }                                                                             \
    } while (0)
#define SGK_WIDE(mr, direct) case mr: sgk_step_block(mr, 2, direct, 1, K, alpha, XT, RS, xr, \
                                                     D + j0, ldd, beta, W + j0, ldw, nc - j0); \
                                      break;
#define SGK_NARROW(mr, direct) case mr: sgk_step_block(mr, 1, direct, r0 == 0, K, alpha, x, RS, \
                                                       rows, d, ldd, beta, W + j, ldw, nc - j); \
                                        break;
#define SGK_CASES10(C, a) C(1, a) C(2, a) C(3, a) C(4, a) C(5, a) C(6, a) C(7, a) C(8, a) \
                          C(9, a) C(10, a)
#define SGK_CASES16(C, a) SGK_CASES10(C, a) C(11, a) C(12, a) C(13, a) C(14, a) C(15, a) \
                          C(16, a)
SG5_TARGET static void fastnn_sgk_step(ptrdiff_t m, ptrdiff_t nc, ptrdiff_t K, float alpha,
                                       const float* XT, const float* const* xr,
                                       const float* D, ptrdiff_t ldd,
                                       float beta, float* W, ptrdiff_t ldw) {
    const ptrdiff_t RS = sgk_stride(m);
    if (xr != NULL)
        SGK_STEP(1);
    else
        SGK_STEP(0);
}
#undef SGK_STEP
#undef SGK_WIDE
#undef SGK_NARROW
#undef SGK_CASES10
#undef SGK_CASES16

/* ---- AVX2 + FMA: the first layer's products on a batch's rows in place ----

   Where the CPU has no AVX-512, train_fused_impl's first layer runs on
   these, not on smallgemm.h's fastnn_sg_gemm: the same entries, bit for
   bit, but
   - the batch's rows read where they lie, xr[r] (a float32 X in place, or
     the rows of a gathered copy), so that no pass copies them first;
   - whole panels of 16 columns to the padded width ncp of W and Z (their
     rows ldw and ldz floats apart, pad_layout; the pads of W zero), so
     that a last panel of 14 columns (nielsen30's, or a team thread's) is
     not done in pieces of 8, 4 and 2: in the step that took a 14-column
     panel 5.6-5.8 us against 3.0-3.1 us for 16 (784 weights a column, 10
     rows, a Zen 3 core, quiet-bench). A pad column of W stays beta * 0 + sum x * 0 = 0 (fit
     checks X finite; whatever a pad holds, no real entry reads it), a pad
     of Z gains nothing and is never read.
   The forward's blocks are up to SGK2_MR = 6 rows by 16 columns (12 ymm
   accumulators; two loads of W and mr broadcasts for 2 mr FMAs), as
   sg_block's; the step's SGK2_STEP_MR = 4 rows of W (8 accumulators): with
   5, GCC spilled alpha D to the stack in the extension's build (no
   constant propagation there), and the step ran 1.6x slower. */
enum { SGK2_MR = 6, SGK2_STEP_MR = 4, SGK2_NR = 16 };
/* fastnn_sgk2_step rounds alpha D first for up to SGK_ROWS rows, as
   fastnn_sg_gemm_avx2's weight step does for K <= SG_KMAX: the same bits */
_Static_assert(SGK_ROWS <= SG_KMAX, "the fused batch must fit smallgemm.h's short-K step");

/* Z[0:mr, 0:16] += X[rows] @ W[:, 0:16]: acc_r := Z[r], then for k in
   order acc_r := fma(x_r[k], W[k, :], acc_r); mr a constant at the call
   site. The rows next[0..n_next) are requested a line of each every 16
   steps k (the next batch's, so that they are in cache when their turn
   comes: a shuffled epoch's rows are scattered over X). */
SG_INLINE void sgk2_forward_block(const int mr, ptrdiff_t K, const float* const* xr,
                                  const float* const* next, ptrdiff_t n_next,
                                  const float* W, ptrdiff_t ldw, float* Z, ptrdiff_t ldz) {
    __m256 acc[SGK2_MR][2];
    for (int r = 0; r < mr; r++) {
        acc[r][0] = _mm256_loadu_ps(Z + r * ldz);
        acc[r][1] = _mm256_loadu_ps(Z + r * ldz + 8);
    }
    for (ptrdiff_t k = 0; k < K; k++) {
        if (n_next > 0 && (k & 15) == 0)
            for (ptrdiff_t i = 0; i < n_next; i++)
                _mm_prefetch((const char*) (next[i] + k), _MM_HINT_T0);
        const __m256 w0 = _mm256_loadu_ps(W + k * ldw);
        const __m256 w1 = _mm256_loadu_ps(W + k * ldw + 8);
        for (int r = 0; r < mr; r++) {
            const __m256 x = _mm256_broadcast_ss(xr[r] + k);
            acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm256_storeu_ps(Z + r * ldz, acc[r][0]);
        _mm256_storeu_ps(Z + r * ldz + 8, acc[r][1]);
    }
}

/* Z (m, ncp) := Z + X (m, K) @ W (K, ncp), ncp a multiple of 16, m <= 64,
   X's rows xr[r]; the rows next[0..n_next) requested meanwhile (by the
   first block of rows of the first panel). For each 16 columns, the rows in blocks as even as
   SGK2_MR allows (10 rows as 5 + 5: ten accumulators, where 6 + 4 left
   the second block eight, the fewest that keep both FMA pipes busy). */
SG_TARGET static void fastnn_sgk2_forward(ptrdiff_t m, ptrdiff_t ncp, ptrdiff_t K,
                                          const float* const* xr, const float* const* next,
                                          ptrdiff_t n_next, const float* W, ptrdiff_t ldw,
                                          float* Z, ptrdiff_t ldz) {
    const ptrdiff_t blocks = (m + SGK2_MR - 1) / SGK2_MR;
    for (ptrdiff_t j = 0; j < ncp; j += SGK2_NR)
        for (ptrdiff_t b = 0, r0 = 0; b < blocks; b++, n_next = 0) {
            const ptrdiff_t r1 = m * (b + 1) / blocks;
            const float* const* x = xr + r0;
            const float* w = W + j;
            float* z = Z + r0 * ldz + j;
            switch (r1 - r0) {
#define SGK2_CASE(mr) case mr: sgk2_forward_block(mr, K, x, next, n_next, w, ldw, z, ldz); break;
                SGK2_CASE(1) SGK2_CASE(2) SGK2_CASE(3) SGK2_CASE(4) SGK2_CASE(5) SGK2_CASE(6)
#undef SGK2_CASE
                default: break;
            }
            r0 = r1;
        }
}

/* W[0:mr, 0:16] := beta W + X^T @ (alpha D) for rows [0, mr) of this block
   of W (entries k0 .. k0 + mr of each of X's m rows): acc_q := beta W[q]
   (W itself where beta is 1, 0 where it is 0), then for r in order acc_q
   := fma(x_r[k0 + q], aD[r, :], acc_q); aD (m, 16) is alpha D rounded
   first, its pad columns 0; mr a constant at the call site. */
SG_INLINE void sgk2_step_block(const int mr, ptrdiff_t m, const float* const* xr, ptrdiff_t k0,
                               const float* aD, float beta, float* W, ptrdiff_t ldw) {
    __m256 acc[SGK2_MR][2];
    const __m256 vb = _mm256_set1_ps(beta);
    for (int q = 0; q < mr; q++) {
        if (beta == 0.0f) {
            acc[q][0] = acc[q][1] = _mm256_setzero_ps();
        } else {
            acc[q][0] = _mm256_loadu_ps(W + q * ldw);
            acc[q][1] = _mm256_loadu_ps(W + q * ldw + 8);
            if (beta != 1.0f) {
                acc[q][0] = _mm256_mul_ps(vb, acc[q][0]);
                acc[q][1] = _mm256_mul_ps(vb, acc[q][1]);
            }
        }
    }
    for (ptrdiff_t r = 0; r < m; r++) {
        const __m256 d0 = _mm256_load_ps(aD + r * SGK2_NR);
        const __m256 d1 = _mm256_load_ps(aD + r * SGK2_NR + 8);
        const float* x = xr[r] + k0;
        for (int q = 0; q < mr; q++) {
            const __m256 xq = _mm256_broadcast_ss(x + q);
            acc[q][0] = _mm256_fmadd_ps(xq, d0, acc[q][0]);
            acc[q][1] = _mm256_fmadd_ps(xq, d1, acc[q][1]);
        }
    }
    for (int q = 0; q < mr; q++) {
        _mm256_storeu_ps(W + q * ldw, acc[q][0]);
        _mm256_storeu_ps(W + q * ldw + 8, acc[q][1]);
    }
}

/* W (K, ncp) := beta W + alpha X^T (K, m) @ D (m, nc), m <= SGK_ROWS, X's
   rows xr[r]; W's columns [nc, ncp) are its pads (ncp a multiple of 16 at
   most ldw), taken as columns of zeros in D. For each 16 columns alpha D
   is rounded into a buffer of 16 columns (as fastnn_sg_gemm's weight step
   does), then W's rows go in blocks of SGK2_MR. */
SG_TARGET static void fastnn_sgk2_step(ptrdiff_t m, ptrdiff_t nc, ptrdiff_t ncp, ptrdiff_t K,
                                       float alpha, const float* const* xr, const float* D,
                                       ptrdiff_t ldd, float beta, float* W, ptrdiff_t ldw) {
    float aD[SGK_ROWS * SGK2_NR] __attribute__((aligned(32)));
    for (ptrdiff_t j = 0; j < ncp; j += SGK2_NR) {
        for (ptrdiff_t r = 0; r < m; r++)
            for (ptrdiff_t q = 0; q < SGK2_NR; q++)
                aD[r * SGK2_NR + q] = j + q < nc ? alpha * D[r * ldd + j + q] : 0.0f;
        ptrdiff_t k = 0;
        for (; k + SGK2_STEP_MR <= K; k += SGK2_STEP_MR)
            sgk2_step_block(SGK2_STEP_MR, m, xr, k, aD, beta, W + k * ldw + j, ldw);
        switch (K - k) {
#define SGK2_CASE(mr) case mr: sgk2_step_block(mr, m, xr, k, aD, beta, W + k * ldw + j, ldw); break;
            SGK2_CASE(1) SGK2_CASE(2) SGK2_CASE(3) SGK2_CASE(4)
#undef SGK2_CASE
            default: break;
        }
    }
}

#else   /* no kernels: train_fused_impl never runs (fused_apply) */
static void fastnn_sgk_rows(const void* X, int u8, ptrdiff_t K, const int64_t* rows,
                            ptrdiff_t m, const int64_t* next, ptrdiff_t n_next, float* XT,
                            float* A) { }
static void fastnn_sgk_forward(ptrdiff_t m, ptrdiff_t nc, ptrdiff_t K, const float* XT,
                               const float* const* xr, const float* const* next,
                               ptrdiff_t n_next, const float* W, ptrdiff_t ldw, float* Z,
                               ptrdiff_t ldz) { }
static void fastnn_sgk_step(ptrdiff_t m, ptrdiff_t nc, ptrdiff_t K, float alpha,
                            const float* XT, const float* const* xr, const float* D,
                            ptrdiff_t ldd, float beta, float* W, ptrdiff_t ldw) { }
static void fastnn_sgk2_forward(ptrdiff_t m, ptrdiff_t ncp, ptrdiff_t K,
                                const float* const* xr, const float* const* next,
                                ptrdiff_t n_next, const float* W, ptrdiff_t ldw, float* Z,
                                ptrdiff_t ldz) { }
static void fastnn_sgk2_step(ptrdiff_t m, ptrdiff_t nc, ptrdiff_t ncp, ptrdiff_t K, float alpha,
                             const float* const* xr, const float* D, ptrdiff_t ldd, float beta,
                             float* W, ptrdiff_t ldw) { }
#endif

#endif
