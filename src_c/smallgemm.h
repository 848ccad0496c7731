/* smallgemm.h: float32 matrix products for the small chunks of small-batch
 * training, in registers, without BLAS's per-call cost.
 *
 * At batch 10 a dense layer's GEMMs are 10 x 784 x 30: OpenBLAS spends more
 * time deciding, packing and (with several threads) dispatching than
 * multiplying. These kernels do the same products straight from the
 * row-major operands, register-blocked for AVX2 + FMA (16 ymm registers):
 *
 *   fastnn_sg_gemm  C (M, Nc) := beta C + alpha Aop (M, K) @ B (K, Nc),
 *                   Aop[i, k] = A[i * sai + k * sak] (A or A^T, no copy),
 *                   B and C row-major with leading dimensions ldb, ldc.
 *                   A block of MR = 6 rows of C by 16 columns is 12 ymm
 *                   accumulators; each step k loads 16 entries of B's row k
 *                   and broadcasts MR entries of Aop's column k.
 *                   beta == 0 writes C without reading it (as BLAS does: C
 *                   may hold a NaN). A last panel narrower than 16 columns
 *                   goes in pieces of 8, 4, 2 and 1 columns with plain loads
 *                   and stores (sg_panel_tail): masked stores are microcoded
 *                   on AMD's Zen 1 and 2.
 *   fastnn_sg_gemm_unpacked
 *                   the same, B never packed (a convolution's weight
 *                   gradient: its B is a new block of rows each call).
 *   fastnn_sg_gemm_forward
 *                   the same with alpha 1, for a forward outside training:
 *                   from SG2_PACK_ROWS rows AVX2's packs B first (sg2_packed),
 *                   as AVX-512's fastnn_sg_gemm does from SG5_PACK_ROWS.
 *   fastnn_sg_nt    out (N, I) := D (N, O) @ W (I, O)^T, W's rows ldw apart and
 *                   out's ldo apart
 *                   (a block of columns of a wider matrix): dot products along
 *                   the contiguous O of D and W, 4 rows x 3 columns of out at
 *                   a time (12 ymm accumulators), reduced together at the end.
 *   fastnn_sg_maxpool
 *                   one sample's max-pooling: the maximum of each window and
 *                   its index, 8 channels at a time (compare and blend).
 *   fastnn_sg_transpose_bias
 *                   dst (C, R) := src (R, C)^T + bias (R,) along dst's rows:
 *                   a convolution's output block computed transposed (filters
 *                   x pixels) put back in NHWC order, 8 x 8 at a time.
 *   fastnn_sg_pack_bp, fastnn_sg_gemm_bp
 *                   B packed once (W, or W^T), then multiplied by many blocks
 *                   of rows: a convolution's im2col blocks.
 *   fastnn_sg_gemm_rows
 *                   the same product with each row of A read in place as a
 *                   few segments a stride apart: a convolution's windows in
 *                   the image itself, with no im2col copy.
 *
 * Used by the dense layers' forward (Z = A W + b), input delta (D W^T) and
 * weight step (W = beta W + alpha A^T D) when a chunk has few rows; the
 * choice (``small_rows`` in _core.pyx) is measured in benchmarks/README.md.
 * The sums are the same as BLAS's up to float32 rounding (FMA, another
 * order of the additions). Compiled for AVX2 + FMA whatever the compiler's
 * baseline, and used only where the CPU has both (fastnn_sg_available);
 * elsewhere the callers use BLAS. fastnn_sg_gemm has a second kernel for
 * AVX-512 (F + VL), chosen at run time where the CPU has it: 16 lanes a
 * vector, blocks of 12 rows x 32 columns, the same bits as the AVX2 kernel
 * (on an Emerald Rapids core, a batch of 10 through 784 x 30 took 4.6 us
 * against 7.4, the weight step of 784 x 30 from 10 rows 6.0 us against 11.1).
 */
#ifndef FASTNN_SMALLGEMM_H
#define FASTNN_SMALLGEMM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define FASTNN_SG 1
#include <immintrin.h>
#define SG_TARGET __attribute__((target("avx2,fma")))
#define SG_INLINE __attribute__((target("avx2,fma"), always_inline)) static inline

/* The first n (0..8) lanes set: loads and stores of a row's last columns. */
static const int32_t fastnn_sg_lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                            0, 0, 0, 0, 0, 0, 0, 0};

SG_INLINE __m256i sg_mask(ptrdiff_t n) {
    return _mm256_loadu_si256((const __m256i*) (fastnn_sg_lanes + 8 - n));
}

enum { SG_MR = 6, SG_NR = 16 };

/* C's columns [0, 8) (h = 0) or [8, 16) (h = 1) of a row, of which the first
   n are C's: whole halves with plain loads and stores, a part with masks. */
SG_INLINE __m256 sg_load_half(const float* c, ptrdiff_t n, __m256i mask) {
    return n >= 8 ? _mm256_loadu_ps(c) : _mm256_maskload_ps(c, mask);
}

SG_INLINE void sg_store_half(float* c, ptrdiff_t n, __m256i mask, __m256 v) {
    if (n >= 8)
        _mm256_storeu_ps(c, v);
    else if (n > 0)
        _mm256_maskstore_ps(c, mask, v);
}

/* One block: rows [0, mr) of C by columns [0, nc), nc <= 16, mr <= SG_MR.
   B's rows are read 16 entries at a time, past column nc too (what lies
   there, the next row's start, lands in lanes that are never stored):
   always where PADDED (the stack buffer has 16 columns), otherwise on the
   rows whose 16 entries end inside B, and the last rows with masks. DIRECT: alpha
   == 1, so the accumulators start from beta C and are stored as they are;
   otherwise they start from 0 and C := beta C + alpha acc at the end. mr,
   PADDED and DIRECT are constants at every call site. */
SG_INLINE void sg_block(const int mr, const int padded, const int direct, ptrdiff_t K,
                        const float* A, ptrdiff_t sai, ptrdiff_t sak, const float* B,
                        ptrdiff_t ldb, float* C, ptrdiff_t ldc, ptrdiff_t nc, float alpha,
                        float beta) {
    __m256 acc[SG_MR][2];
    const ptrdiff_t n0 = nc < 8 ? nc : 8, n1 = nc > 8 ? nc - 8 : 0;
    const __m256i m0 = sg_mask(n0), m1 = sg_mask(n1);
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    for (int r = 0; r < SG_MR; r++) {
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        if (direct && r < mr && beta != 0.0f) {
            const float* c = C + r * ldc;
            acc[r][0] = sg_load_half(c, n0, m0);
            acc[r][1] = sg_load_half(c + 8, n1, m1);
            if (beta != 1.0f) {
                acc[r][0] = _mm256_mul_ps(vb, acc[r][0]);
                acc[r][1] = _mm256_mul_ps(vb, acc[r][1]);
            }
        }
    }
    /* the rows whose 16 entries lie inside B: all but the last `over` */
    ptrdiff_t plain = K;
    if (!padded && nc < SG_NR) {
        const ptrdiff_t over = (SG_NR - nc + ldb - 1) / ldb;
        plain = K > over ? K - over : 0;
    }
    for (ptrdiff_t k = 0; k < K; k++) {
        const float* b = B + k * ldb;
        const float* a = A + k * sak;
        __m256 b0, b1;
        if (k < plain) {
            b0 = _mm256_loadu_ps(b);
            b1 = _mm256_loadu_ps(b + 8);
        } else {
            b0 = _mm256_maskload_ps(b, m0);
            b1 = _mm256_maskload_ps(b + 8, m1);
        }
        for (int r = 0; r < mr; r++) {
            const __m256 x = _mm256_broadcast_ss(a + r * sai);
            acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        float* c = C + r * ldc;
        __m256 c0 = acc[r][0], c1 = acc[r][1];
        if (!direct) {
            c0 = _mm256_mul_ps(va, c0);
            c1 = _mm256_mul_ps(va, c1);
            if (beta != 0.0f) {
                c0 = _mm256_fmadd_ps(vb, sg_load_half(c, n0, m0), c0);
                c1 = _mm256_fmadd_ps(vb, sg_load_half(c + 8, n1, m1), c1);
            }
        }
        sg_store_half(c, n0, m0, c0);
        sg_store_half(c + 8, n1, m1, c1);
    }
}

/* Rows [0, M) of C by columns [0, nc), nc <= 16: blocks of SG_MR rows. */
SG_INLINE void sg_panel(const int padded, const int direct, ptrdiff_t M, ptrdiff_t K,
                        const float* A, ptrdiff_t sai, ptrdiff_t sak, const float* B,
                        ptrdiff_t ldb, float* C, ptrdiff_t ldc, ptrdiff_t nc, float alpha,
                        float beta) {
    ptrdiff_t i = 0;
#define SG_BLOCK(mr) sg_block(mr, padded, direct, K, A + i * sai, sai, sak, B, ldb, \
                              C + i * ldc, ldc, nc, alpha, beta)
    for (; i + SG_MR <= M; i += SG_MR)
        SG_BLOCK(SG_MR);
    switch (M - i) {
        case 5: SG_BLOCK(5); break;
        case 4: SG_BLOCK(4); break;
        case 3: SG_BLOCK(3); break;
        case 2: SG_BLOCK(2); break;
        case 1: SG_BLOCK(1); break;
        default: break;
    }
#undef SG_BLOCK
}

/* The last panel of a product whose columns are not a multiple of 16 (a
   layer of 100 or 30 units), for the direct forms (alpha == 1, or alpha
   already in B): its nc < 16 columns in pieces of 8, 4, 2 and 1, each with
   plain loads and stores of exactly its width, so that nothing is masked. A
   masked store is microcoded on AMD's Zen 1 and 2: through sg_block, a
   weight step's panel of 4 columns took twice the time of one of 16. Each
   entry is computed as sg_block computes it (beta C, then one FMA for each
   k in order), so the results are the same bit for bit. */
#define SG_TAIL_PIECE(name, vec, set1, setzero, load, store, bcast, fmadd, mul)        \
SG_INLINE void name(const int mr, ptrdiff_t K, const float* A, ptrdiff_t sai,          \
                    ptrdiff_t sak, const float* B, ptrdiff_t ldb, float* C,             \
                    ptrdiff_t ldc, float beta) {                                        \
    vec acc[SG_MR];                                                                     \
    const vec vb = set1(beta);                                                          \
    for (int r = 0; r < SG_MR; r++) {                                                   \
        acc[r] = setzero();                                                             \
        if (r < mr && beta != 0.0f) {                                                   \
            acc[r] = load(C + r * ldc);                                                 \
            if (beta != 1.0f)                                                           \
                acc[r] = mul(vb, acc[r]);                                               \
        }                                                                               \
    }                                                                                   \
    for (ptrdiff_t k = 0; k < K; k++) {                                                 \
        const vec b = load(B + k * ldb);                                                \
        const float* a = A + k * sak;                                                   \
        for (int r = 0; r < mr; r++)                                                    \
            acc[r] = fmadd(bcast(a + r * sai), b, acc[r]);                              \
    }                                                                                   \
    for (int r = 0; r < mr; r++)                                                        \
        store(C + r * ldc, acc[r]);                                                     \
}

SG_INLINE __m128 sg_load2(const float* p) { return _mm_castpd_ps(_mm_load_sd((const double*) p)); }
SG_INLINE void sg_store2(float* p, __m128 v) { _mm_store_sd((double*) p, _mm_castps_pd(v)); }

SG_TAIL_PIECE(sg_tail8, __m256, _mm256_set1_ps, _mm256_setzero_ps, _mm256_loadu_ps,
              _mm256_storeu_ps, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_mul_ps)
SG_TAIL_PIECE(sg_tail4, __m128, _mm_set1_ps, _mm_setzero_ps, _mm_loadu_ps, _mm_storeu_ps,
              _mm_broadcast_ss, _mm_fmadd_ps, _mm_mul_ps)
SG_TAIL_PIECE(sg_tail2, __m128, _mm_set1_ps, _mm_setzero_ps, sg_load2, sg_store2,
              _mm_broadcast_ss, _mm_fmadd_ps, _mm_mul_ps)
SG_TAIL_PIECE(sg_tail1, __m128, _mm_set1_ps, _mm_setzero_ps, _mm_load_ss, _mm_store_ss,
              _mm_broadcast_ss, _mm_fmadd_ps, _mm_mul_ps)
#undef SG_TAIL_PIECE

/* Rows [0, M) of C by columns [0, nc), nc < 16, direct: the pieces above,
   each over the rows in blocks of SG_MR. */
SG_INLINE void sg_panel_tail(ptrdiff_t M, ptrdiff_t K, const float* A, ptrdiff_t sai,
                             ptrdiff_t sak, const float* B, ptrdiff_t ldb, float* C,
                             ptrdiff_t ldc, ptrdiff_t nc, float beta) {
    ptrdiff_t q = 0;
#define SG_AT(piece, mr) piece(mr, K, A + i * sai, sai, sak, B + q, ldb, C + i * ldc + q, ldc, beta)
#define SG_PIECE(piece, w)                                                  \
    if (nc - q >= w) {                                                      \
        ptrdiff_t i = 0;                                                    \
        for (; i + SG_MR <= M; i += SG_MR)                                  \
            SG_AT(piece, SG_MR);                                            \
        switch (M - i) {                                                    \
            case 5: SG_AT(piece, 5); break;                                 \
            case 4: SG_AT(piece, 4); break;                                 \
            case 3: SG_AT(piece, 3); break;                                 \
            case 2: SG_AT(piece, 2); break;                                 \
            case 1: SG_AT(piece, 1); break;                                 \
            default: break;                                                 \
        }                                                                   \
        q += w;                                                             \
    }
    SG_PIECE(sg_tail8, 8)
    SG_PIECE(sg_tail4, 4)
    SG_PIECE(sg_tail2, 2)
    SG_PIECE(sg_tail1, 1)
#undef SG_PIECE
#undef SG_AT
}

/* A K this short (a weight step's: the chunk's rows) has its 16 columns of
   alpha B copied into a buffer on the stack first, so the accumulators can
   start from beta C (no pass over C at the end). */
enum { SG_KMAX = 64 };

/* A K this long (a forward's inputs: 784) goes in equal steps of at most
   SG2_KC k, where C has more than one block of rows: a panel's step of B
   (at most 384 lines of 64 bytes, 24 KiB) then stays in L1 while every
   block of rows passes over it, where the whole panel (784 lines, 49 KiB)
   came from L2 again for each block. A step after the first starts from
   the sums the one before stored in C (float32 stored and loaded again,
   exactly): the same FMAs in the same order, the same bits. 64 x 784 x 128
   (a fused team's share of mid's first layer at batch 64) took 166.8 us in
   two steps against 185.8 in one on a Zen 3. */
enum { SG2_KC = 384 };

/* The steps of a K of SG2_KC or less each, all but the last equal: k0 = 0,
   the others kstep apart. */
SG_INLINE ptrdiff_t sg2_kstep(ptrdiff_t K) {
    const ptrdiff_t steps = (K + SG2_KC - 1) / SG2_KC;
    return (K + steps - 1) / steps;
}

/* C (M, Nc) := beta C + alpha Aop (M, K) @ B (K, Nc); Aop[i, k] = A[i*sai + k*sak].
   Columns in panels of 16, each panel's rows in blocks of SG_MR. */
SG_TARGET static void fastnn_sg_gemm_avx2(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, float alpha,
                                          const float* A, ptrdiff_t sai, ptrdiff_t sak,
                                          const float* B, ptrdiff_t ldb, float beta,
                                          float* C, ptrdiff_t ldc) {
    float Bs[SG_KMAX * SG_NR] __attribute__((aligned(32)));
    for (ptrdiff_t j = 0; j < Nc; j += SG_NR) {
        const ptrdiff_t nc = Nc - j < SG_NR ? Nc - j : SG_NR;
        if (alpha == 1.0f) {
            /* a long K (a forward's inputs) and few rows: the masked stores
               are few, and a tail of more than 8 columns in pieces would
               broadcast A's entries again for each piece */
            const ptrdiff_t kstep = M > SG_MR && K > SG2_KC ? sg2_kstep(K) : K;
            ptrdiff_t k = 0;
            do {    /* once at least: with K == 0, C := beta C */
                const ptrdiff_t kc = K - k < kstep ? K - k : kstep;
                const float* a = A + k * sak;
                const float* b = B + k * ldb + j;
                const float bt = k == 0 ? beta : 1.0f;
                if (nc <= 8)
                    sg_panel_tail(M, kc, a, sai, sak, b, ldb, C + j, ldc, nc, bt);
                else
                    sg_panel(0, 1, M, kc, a, sai, sak, b, ldb, C + j, ldc, nc, 1.0f, bt);
                k += kstep;
            } while (k < K);
        } else if (K <= SG_KMAX) {
            for (ptrdiff_t k = 0; k < K; k++)
                for (ptrdiff_t q = 0; q < SG_NR; q++)
                    Bs[k * SG_NR + q] = q < nc ? alpha * B[k * ldb + j + q] : 0.0f;
            if (nc == SG_NR)
                sg_panel(1, 1, M, K, A, sai, sak, Bs, SG_NR, C + j, ldc, nc, 1.0f, beta);
            else
                sg_panel_tail(M, K, A, sai, sak, Bs, SG_NR, C + j, ldc, nc, beta);
        } else {
            sg_panel(0, 0, M, K, A, sai, sak, B + j, ldb, C + j, ldc, nc, alpha, beta);
        }
    }
}

/* ---- AVX-512 (F + VL): the same products, 16 lanes a vector ----------------

   fastnn_sg_gemm_avx512 computes every entry of C exactly as
   fastnn_sg_gemm_avx2 does (beta C or 0, then one FMA for each k in order;
   or 0, the FMAs, alpha times that, plus beta C; alpha B rounded first where
   K is short), so the two give the same bits and a network trains to the
   same weights on either kind of CPU. Only the blocking differs: blocks of
   SG5_MR = 12 rows by 32 columns (24 zmm accumulators of the 32), so that a
   batch of 10 rows reads each row of B once, and masked loads and stores at
   the edges (a mask register costs nothing on these CPUs). */
#define SG5_TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define SG5_INLINE __attribute__((target("avx512f,avx512vl,avx2,fma"), always_inline)) static inline

enum { SG5_MR = 12, SG5_NR = 32 };

/* The first n lanes (n <= 0: none, n >= 16: all 16). */
SG5_INLINE __mmask16 sg5_mask(ptrdiff_t n) {
    return n >= 16 ? (__mmask16) 0xFFFF : n <= 0 ? (__mmask16) 0 : (__mmask16) ((1u << n) - 1);
}

/* Rows [0, mr) of C by columns [0, nc), nc <= 16 * halves; mr, halves and
   DIRECT are constants at every call site. DIRECT: alpha == 1 (or alpha is
   already in B): the accumulators start from beta C; otherwise from 0, and
   C := alpha acc + beta C at the end. */
SG5_INLINE void sg5_block(const int mr, const int halves, const int direct, ptrdiff_t K,
                          const float* A, ptrdiff_t sai, ptrdiff_t sak, const float* B,
                          ptrdiff_t ldb, float* C, ptrdiff_t ldc, ptrdiff_t nc, float alpha,
                          float beta) {
    __m512 acc[SG5_MR][2];
    const __mmask16 m0 = sg5_mask(nc), m1 = sg5_mask(nc - 16);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < mr; r++) {
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        if (direct && beta != 0.0f) {
            const float* c = C + r * ldc;
            acc[r][0] = _mm512_maskz_loadu_ps(m0, c);
            if (halves == 2)
                acc[r][1] = _mm512_maskz_loadu_ps(m1, c + 16);
            if (beta != 1.0f) {
                acc[r][0] = _mm512_mul_ps(vb, acc[r][0]);
                if (halves == 2)
                    acc[r][1] = _mm512_mul_ps(vb, acc[r][1]);
            }
        }
    }
    for (ptrdiff_t k = 0; k < K; k++) {
        const float* b = B + k * ldb;
        const float* a = A + k * sak;
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
        const __m512 b1 = halves == 2 ? _mm512_maskz_loadu_ps(m1, b + 16) : b0;
        for (int r = 0; r < mr; r++) {
            const __m512 x = _mm512_set1_ps(a[r * sai]);
            acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
            if (halves == 2)
                acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        float* c = C + r * ldc;
        for (int h = 0; h < halves; h++) {
            const __mmask16 m = h ? m1 : m0;
            __m512 v = acc[r][h];
            if (!direct) {
                v = _mm512_mul_ps(va, v);
                if (beta != 0.0f)
                    v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, c + 16 * h), v);
            }
            _mm512_mask_storeu_ps(c + 16 * h, m, v);
        }
    }
}

/* Rows [0, M) of C by columns [0, nc): blocks of SG5_MR rows. */
SG5_INLINE void sg5_panel(const int halves, const int direct, ptrdiff_t M, ptrdiff_t K,
                          const float* A, ptrdiff_t sai, ptrdiff_t sak, const float* B,
                          ptrdiff_t ldb, float* C, ptrdiff_t ldc, ptrdiff_t nc, float alpha,
                          float beta) {
    ptrdiff_t i = 0;
#define SG5_BLOCK(mr) sg5_block(mr, halves, direct, K, A + i * sai, sai, sak, B, ldb, \
                                C + i * ldc, ldc, nc, alpha, beta)
    for (; i + SG5_MR <= M; i += SG5_MR)
        SG5_BLOCK(SG5_MR);
    switch (M - i) {
        case 11: SG5_BLOCK(11); break;
        case 10: SG5_BLOCK(10); break;
        case 9: SG5_BLOCK(9); break;
        case 8: SG5_BLOCK(8); break;
        case 7: SG5_BLOCK(7); break;
        case 6: SG5_BLOCK(6); break;
        case 5: SG5_BLOCK(5); break;
        case 4: SG5_BLOCK(4); break;
        case 3: SG5_BLOCK(3); break;
        case 2: SG5_BLOCK(2); break;
        case 1: SG5_BLOCK(1); break;
        default: break;
    }
#undef SG5_BLOCK
}

/* Rows [0, M) of C, every panel of SG5_NR columns in turn. */
SG5_TARGET static void sg5_columns(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, float alpha,
                                   const float* A, ptrdiff_t sai, ptrdiff_t sak,
                                   const float* B, ptrdiff_t ldb, float beta, float* C,
                                   ptrdiff_t ldc) {
    float Bs[SG_KMAX * SG5_NR] __attribute__((aligned(64)));
    for (ptrdiff_t j = 0; j < Nc; j += SG5_NR) {
        const ptrdiff_t nc = Nc - j < SG5_NR ? Nc - j : SG5_NR;
        const float* b = B + j;
        ptrdiff_t ld = ldb;
        float al = alpha;
        int direct = alpha == 1.0f;
        if (!direct && K <= SG_KMAX) {
            /* alpha B, rounded, as fastnn_sg_gemm_avx2's stack copy */
            for (ptrdiff_t k = 0; k < K; k++)
                for (ptrdiff_t q = 0; q < nc; q++)
                    Bs[k * SG5_NR + q] = alpha * B[k * ldb + j + q];
            b = Bs;
            ld = SG5_NR;
            al = 1.0f;
            direct = 1;
        }
        if (direct) {
            if (nc <= 16)
                sg5_panel(1, 1, M, K, A, sai, sak, b, ld, C + j, ldc, nc, al, beta);
            else
                sg5_panel(2, 1, M, K, A, sai, sak, b, ld, C + j, ldc, nc, al, beta);
        } else if (nc <= 16) {
            sg5_panel(1, 0, M, K, A, sai, sak, b, ld, C + j, ldc, nc, al, beta);
        } else {
            sg5_panel(2, 0, M, K, A, sai, sak, b, ld, C + j, ldc, nc, al, beta);
        }
    }
}

/* Many rows (a forward chunk of hundreds): B is packed (once per call, or
   once for many: fastnn_sg_pack_bp), panel by panel (SG5_NR columns, zero
   past Nc, K rows 128 bytes apart), so that the kernel reads it in order;
   unpacked, each step k of a panel loaded from another row of B (4 KiB
   apart for a 1,024-wide W: a new page each time, which the prefetchers do
   not follow). Then C's rows go in blocks
   whose rows of Aop fit fastnn_sg5_block_bytes (kept in L2), each block by
   every panel, SG5_KC steps of k at a time (32 KiB of the packed panel, kept
   in L1 while the block's rows pass over it). A step after the first starts
   from the sums that the one before stored in C: float32 stored and loaded
   again, exactly; so every entry is computed as sg5_columns computes it,
   the same FMAs in the same order, and the results are the same bits.
   (Packing A too, in k-major groups of SG5_MR rows, was slower: 110 against
   145 GFLOP/s at 1,024 x 784 x 256 on an Emerald Rapids core, its scalar
   gather costing more than the broadcasts it saved.) */
enum { SG5_PACK_ROWS = 4 * SG5_MR, SG5_KC = 256, SG5_BLOCK_BYTES = 1 << 18 };
static ptrdiff_t fastnn_sg5_block_bytes = SG5_BLOCK_BYTES;   /* tests may change it */

/* Set the bytes of a block of rows of A (0: the default); returns the value in effect. */
static ptrdiff_t fastnn_sg_set_block_bytes(ptrdiff_t bytes) {
    fastnn_sg5_block_bytes = bytes > 0 ? bytes : SG5_BLOCK_BYTES;
    return fastnn_sg5_block_bytes;
}

/* Floats of B (K, Nc) packed for fastnn_sg_gemm_bp: panels of SG5_NR columns. */
static ptrdiff_t fastnn_sg_bp_size(ptrdiff_t Nc, ptrdiff_t K) {
    return (Nc + SG5_NR - 1) / SG5_NR * K * SG5_NR;
}

/* Bp := B (K, Nc) in panels (panels x K x SG5_NR floats, zero past Nc), B[k, j]
   = B[k * sbk + j * sbj]: a W (sbj == 1) or its transpose (sbk == 1) packed
   once for the products of many blocks of rows (fastnn_sg_gemm_bp). The
   layout is the same for AVX2's kernels (sg2_gemm_bp, sg2_gemm_rows), which
   take each panel as two halves of 16 columns; compiled for AVX2, so that
   both call it. */
SG_TARGET static void fastnn_sg_pack_bp(ptrdiff_t Nc, ptrdiff_t K, const float* B,
                                         ptrdiff_t sbk, ptrdiff_t sbj, float* Bp) {
    for (ptrdiff_t j = 0; j < Nc; j += SG5_NR) {
        const ptrdiff_t nc = Nc - j < SG5_NR ? Nc - j : SG5_NR;
        float* p = Bp + j * K;
        for (ptrdiff_t k = 0; k < K; k++)
            for (ptrdiff_t q = 0; q < SG5_NR; q++)
                p[k * SG5_NR + q] = q < nc ? B[k * sbk + (j + q) * sbj] : 0.0f;
    }
}

/* C (M, Nc) := beta C + Aop (M, K) @ B (K, Nc) (alpha == 1), B packed in Bp
   (fastnn_sg_pack_bp), in the blocks said above: every entry the same FMAs
   in the same order as sg5_columns, so the same bits whatever M and
   whatever the rows around it. */
SG5_TARGET static void sg5_gemm_bp(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, const float* A,
                                   ptrdiff_t sai, ptrdiff_t sak, const float* Bp, float beta,
                                   float* C, ptrdiff_t ldc) {
    ptrdiff_t rows = fastnn_sg5_block_bytes / (ptrdiff_t) sizeof(float) / (K > 0 ? K : 1);
    rows = rows < SG5_MR ? SG5_MR : rows / SG5_MR * SG5_MR;
    for (ptrdiff_t i = 0; i < M; i += rows) {
        const ptrdiff_t mb = M - i < rows ? M - i : rows;
        for (ptrdiff_t j = 0; j < Nc; j += SG5_NR) {
            const ptrdiff_t nc = Nc - j < SG5_NR ? Nc - j : SG5_NR;
            for (ptrdiff_t k = 0; k < K; k += SG5_KC) {
                const ptrdiff_t kc = K - k < SG5_KC ? K - k : SG5_KC;
                const float* a = A + i * sai + k * sak;
                const float* b = Bp + j * K + k * SG5_NR;
                const float bt = k == 0 ? beta : 1.0f;
                if (nc <= 16)
                    sg5_panel(1, 1, mb, kc, a, sai, sak, b, SG5_NR, C + i * ldc + j, ldc, nc,
                              1.0f, bt);
                else
                    sg5_panel(2, 1, mb, kc, a, sai, sak, b, SG5_NR, C + i * ldc + j, ldc, nc,
                              1.0f, bt);
            }
        }
    }
}

/* A convolution's forward without its im2col copy: row r of Aop (M, K) is
   output pixel r's window, K = nseg x seglen entries read where they lie,
   segment s (a window row: kw x C contiguous entries) at rows[r] + s *
   sstride (a row of the image). Rows [0, mr) of C by columns [0, nc), nc <=
   16 * halves, from C (FROM_C: C may hold the bias) or 0, plus one FMA for
   each k in order: the entries sg5_block computes from the im2col rows with
   beta 1 or 0, the same bits. mr, halves and FROM_C are constants at every
   call site: with beta a run-time value GCC kept B's vector on the stack
   (1.6x slower). */
SG5_INLINE void sg5_block_rows(const int mr, const int halves, const int from_c,
                               const float* const* rows, ptrdiff_t s0, ptrdiff_t s1,
                               ptrdiff_t seglen, ptrdiff_t sstride, const float* B, float* C,
                               ptrdiff_t ldc, ptrdiff_t nc) {
    __m512 acc[SG5_MR][2];
    const __mmask16 m0 = sg5_mask(nc), m1 = sg5_mask(nc - 16);
    for (int r = 0; r < mr; r++) {
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        if (from_c) {
            const float* c = C + r * ldc;
            acc[r][0] = _mm512_maskz_loadu_ps(m0, c);
            if (halves == 2)
                acc[r][1] = _mm512_maskz_loadu_ps(m1, c + 16);
        }
    }
    for (ptrdiff_t s = s0; s < s1; s++) {
        const float* a[SG5_MR];
        for (int r = 0; r < mr; r++)
            a[r] = rows[r] + s * sstride;
        for (ptrdiff_t j = 0; j < seglen; j++) {
            const float* b = B + ((s - s0) * seglen + j) * SG5_NR;
            const __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
            const __m512 b1 = halves == 2 ? _mm512_maskz_loadu_ps(m1, b + 16) : b0;
            for (int r = 0; r < mr; r++) {
                const __m512 x = _mm512_set1_ps(a[r][j]);
                acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
                if (halves == 2)
                    acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
            }
        }
    }
    for (int r = 0; r < mr; r++) {
        float* c = C + r * ldc;
        _mm512_mask_storeu_ps(c, m0, acc[r][0]);
        if (halves == 2)
            _mm512_mask_storeu_ps(c + 16, m1, acc[r][1]);
    }
}

SG5_INLINE void sg5_panel_rows(const int halves, const int from_c, ptrdiff_t M,
                               const float* const* rows, ptrdiff_t s0, ptrdiff_t s1,
                               ptrdiff_t seglen, ptrdiff_t sstride, const float* B, float* C,
                               ptrdiff_t ldc, ptrdiff_t nc) {
    ptrdiff_t i = 0;
#define SG5_ROWS(mr) sg5_block_rows(mr, halves, from_c, rows + i, s0, s1, seglen, sstride, B, \
                                    C + i * ldc, ldc, nc)
    for (; i + SG5_MR <= M; i += SG5_MR)
        SG5_ROWS(SG5_MR);
    switch (M - i) {
        case 11: SG5_ROWS(11); break;
        case 10: SG5_ROWS(10); break;
        case 9: SG5_ROWS(9); break;
        case 8: SG5_ROWS(8); break;
        case 7: SG5_ROWS(7); break;
        case 6: SG5_ROWS(6); break;
        case 5: SG5_ROWS(5); break;
        case 4: SG5_ROWS(4); break;
        case 3: SG5_ROWS(3); break;
        case 2: SG5_ROWS(2); break;
        case 1: SG5_ROWS(1); break;
        default: break;
    }
#undef SG5_ROWS
}

/* C (M, Nc) := beta C + Aop (M, K) @ B (K, Nc), beta 0 or 1, K = nseg x seglen,
   Aop's row r read in place as nseg segments rows[r] + s * sstride
   (sg5_block_rows), B packed in Bp (fastnn_sg_pack_bp): each panel whole
   segments at a time, up to SG5_KC steps of k (kept in L1 while the rows
   pass over it). */
SG5_TARGET static void sg5_gemm_rows(ptrdiff_t M, ptrdiff_t Nc, const float* const* rows,
                                     ptrdiff_t nseg, ptrdiff_t seglen, ptrdiff_t sstride,
                                     const float* Bp, float beta, float* C, ptrdiff_t ldc) {
    const ptrdiff_t K = nseg * seglen;
    const ptrdiff_t step = seglen >= SG5_KC ? 1 : SG5_KC / (seglen > 0 ? seglen : 1);
    for (ptrdiff_t j = 0; j < Nc; j += SG5_NR) {
        const ptrdiff_t nc = Nc - j < SG5_NR ? Nc - j : SG5_NR;
        for (ptrdiff_t s = 0; s < nseg; s += step) {
            const ptrdiff_t s1 = nseg - s < step ? nseg : s + step;
            const float* b = Bp + j * K + s * seglen * SG5_NR;
            const int from_c = s > 0 || beta != 0.0f;
#define SG5_RUN(h, f) sg5_panel_rows(h, f, M, rows, s, s1, seglen, sstride, b, C + j, ldc, nc)
            if (nc <= 16) {
                if (from_c) SG5_RUN(1, 1); else SG5_RUN(1, 0);
            } else {
                if (from_c) SG5_RUN(2, 1); else SG5_RUN(2, 0);
            }
#undef SG5_RUN
        }
    }
}

/* C (M, Nc) := beta C + Aop (M, K) @ B (K, Nc) (alpha == 1), B packed into
   Bp first (panels x K x SG5_NR floats). */
SG5_TARGET static void sg5_packed(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, const float* A,
                                  ptrdiff_t sai, ptrdiff_t sak, const float* B, ptrdiff_t ldb,
                                  float beta, float* C, ptrdiff_t ldc, float* Bp) {
    fastnn_sg_pack_bp(Nc, K, B, ldb, 1, Bp);
    sg5_gemm_bp(M, Nc, K, A, sai, sak, Bp, beta, C, ldc);
}

/* C (M, Nc) := beta C + alpha Aop (M, K) @ B (K, Nc): sg5_columns, or with
   many rows and alpha == 1, sg5_packed (the same bits). */
SG5_TARGET static void fastnn_sg_gemm_avx512(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K,
                                            float alpha, const float* A, ptrdiff_t sai,
                                            ptrdiff_t sak, const float* B, ptrdiff_t ldb,
                                            float beta, float* C, ptrdiff_t ldc) {
    if (M >= SG5_PACK_ROWS && alpha == 1.0f && K > 0) {
        const ptrdiff_t panels = (Nc + SG5_NR - 1) / SG5_NR;
        float* Bp = (float*) aligned_alloc(64, (size_t) (panels * K * SG5_NR) * sizeof(float));
        if (Bp != NULL) {
            sg5_packed(M, Nc, K, A, sai, sak, B, ldb, beta, C, ldc, Bp);
            free(Bp);
            return;
        }
    }
    sg5_columns(M, Nc, K, alpha, A, sai, sak, B, ldb, beta, C, ldc);
}

/* ---- AVX2, many rows: B packed ----------------------------------------------

   A forward chunk of hundreds of rows (predict's) on AVX2: B packed first in
   panels of SG_NR columns (zero past Nc, K rows 64 bytes apart), so that each
   step k reads the next line of the panel, not a line of another row of B;
   C's rows in blocks whose rows of Aop fit fastnn_sg5_block_bytes (kept in
   L2), each block by every panel, equal steps of at most SG2_KC k at a time
   (at most 24 KiB of the panel, kept in L1 while the block's rows pass over it). A step after the
   first starts from the sums the one before stored in C (float32 stored and
   loaded again, exactly), so every entry is computed as sg_block computes it
   unpacked: beta C (or 0), then one FMA for each k in order; the same bits,
   whatever M. Only for a forward outside training (fastnn_sg_gemm_forward),
   from SG2_PACK_ROWS rows: training's products read their B once or a few
   times (a batch's rows against W), and would pay for the packing and its
   allocation. (A convolution's W is packed once a batch by its caller,
   fastnn_sg_pack_bp, for many blocks of rows: sg2_gemm_bp below.) */
enum { SG2_PACK_ROWS = 128 };

/* C (M, Nc) := beta C + Aop (M, K) @ B (K, Nc) (alpha == 1), B packed in Bp
   in panels of LDP columns (SG_NR: sg2_packed's; SG5_NR: fastnn_sg_pack_bp's,
   taken as two halves of 16), K rows each, zero past Nc: C's rows in blocks
   of fastnn_sg5_block_bytes, 16 columns at a time, K in equal steps of at
   most SG2_KC (no short last step, which would load and store its block of
   C for a few FMAs); 8 columns or fewer in sg_panel_tail's pieces. */
SG_INLINE void sg2_blocks(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, const float* A,
                          ptrdiff_t sai, ptrdiff_t sak, const float* Bp, ptrdiff_t ldp,
                          float beta, float* C, ptrdiff_t ldc) {
    if (K <= 0)
        return;     /* as sg5_gemm_bp: no step of k (callers have K > 0) */
    ptrdiff_t rows = fastnn_sg5_block_bytes / (ptrdiff_t) sizeof(float) / K;
    rows = rows < SG_MR ? SG_MR : rows / SG_MR * SG_MR;
    const ptrdiff_t kstep = sg2_kstep(K);
    for (ptrdiff_t i = 0; i < M; i += rows) {
        const ptrdiff_t mb = M - i < rows ? M - i : rows;
        for (ptrdiff_t j = 0; j < Nc; j += SG_NR) {
            /* columns [j, j + nc) of C: offset j % ldp in panel j / ldp */
            const ptrdiff_t nc = Nc - j < SG_NR ? Nc - j : SG_NR;
            const float* panel = Bp + (j - j % ldp) * K + j % ldp;
            for (ptrdiff_t k = 0; k < K; k += kstep) {
                const ptrdiff_t kc = K - k < kstep ? K - k : kstep;
                const float* a = A + i * sai + k * sak;
                const float* b = panel + k * ldp;
                float* c = C + i * ldc + j;
                const float bt = k == 0 ? beta : 1.0f;
                if (nc <= 8)
                    sg_panel_tail(mb, kc, a, sai, sak, b, ldp, c, ldc, nc, bt);
                else
                    sg_panel(1, 1, mb, kc, a, sai, sak, b, ldp, c, ldc, nc, 1.0f, bt);
            }
        }
    }
}

/* C (M, Nc) := beta C + Aop (M, K) @ B (K, Nc) (alpha == 1), B packed into
   Bp (ceil(Nc / SG_NR) x K x SG_NR floats) first. */
SG_TARGET static void sg2_packed(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, const float* A,
                                 ptrdiff_t sai, ptrdiff_t sak, const float* B, ptrdiff_t ldb,
                                 float beta, float* C, ptrdiff_t ldc, float* Bp) {
    for (ptrdiff_t j = 0; j < Nc; j += SG_NR) {
        const ptrdiff_t nc = Nc - j < SG_NR ? Nc - j : SG_NR;
        float* p = Bp + j * K;
        for (ptrdiff_t k = 0; k < K; k++)
            for (ptrdiff_t q = 0; q < SG_NR; q++)
                p[k * SG_NR + q] = q < nc ? B[k * ldb + j + q] : 0.0f;
    }
    sg2_blocks(M, Nc, K, A, sai, sak, Bp, SG_NR, beta, C, ldc);
}

/* fastnn_sg_gemm_avx2, or with SG2_PACK_ROWS rows or more and alpha == 1,
   sg2_packed (the same bits). */
SG_TARGET static void sg2_gemm(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, float alpha,
                               const float* A, ptrdiff_t sai, ptrdiff_t sak, const float* B,
                               ptrdiff_t ldb, float beta, float* C, ptrdiff_t ldc) {
    if (M >= SG2_PACK_ROWS && alpha == 1.0f && K > 0) {
        const ptrdiff_t panels = (Nc + SG_NR - 1) / SG_NR;
        float* Bp = (float*) aligned_alloc(64, (size_t) (panels * K * SG_NR) * sizeof(float));
        if (Bp != NULL) {
            sg2_packed(M, Nc, K, A, sai, sak, B, ldb, beta, C, ldc, Bp);
            free(Bp);
            return;
        }
    }
    fastnn_sg_gemm_avx2(M, Nc, K, alpha, A, sai, sak, B, ldb, beta, C, ldc);
}

/* ---- AVX2, B packed once: a convolution's blocks ---------------------------

   A later convolution layer multiplies every block of its rows (im2col's, or
   its windows in place) by the same W (K, F), or W^T: packed once per batch
   by fastnn_sg_pack_bp, in AVX-512's panels of SG5_NR = 32 columns, so that
   a layer's scratch is the same on either CPU. AVX2 takes each panel as two
   halves of 16 columns (a step k reads one 64-byte line of the panel's 128),
   C's rows in blocks of fastnn_sg5_block_bytes as sg2_packed's, K in equal
   steps of at most SG2_KC. Every entry: beta C (or 0), then one FMA for each
   k in order, as sg_block and sg5_block compute it; the same bits as
   AVX-512's sg5_gemm_bp and sg5_gemm_rows, and as the unpacked kernels. */

/* C (M, Nc) := beta C + Aop (M, K) @ B (K, Nc) (alpha == 1), B packed in Bp
   (fastnn_sg_pack_bp). A half of 8 columns or fewer (F = 40's last) goes in
   sg_panel_tail's pieces, as fastnn_sg_gemm_avx2's does. */
SG_TARGET static void sg2_gemm_bp(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, const float* A,
                                  ptrdiff_t sai, ptrdiff_t sak, const float* Bp, float beta,
                                  float* C, ptrdiff_t ldc) {
    sg2_blocks(M, Nc, K, A, sai, sak, Bp, SG5_NR, beta, C, ldc);
}

/* sg5_block_rows on AVX2: rows [0, mr) of C by columns [0, nc), nc <= W (8
   or 16: one or two ymm a row), Aop's row r read in place as segments
   rows[r] + s * sstride, from C (FROM_C) or 0, then one FMA for each k in
   order. B: the half panel, rows SG5_NR apart. mr, W and FROM_C are
   constants at every call site. */
SG_INLINE void sg2_block_rows(const int mr, const int w, const int from_c,
                              const float* const* rows, ptrdiff_t s0, ptrdiff_t s1,
                              ptrdiff_t seglen, ptrdiff_t sstride, const float* B, float* C,
                              ptrdiff_t ldc, ptrdiff_t nc) {
    __m256 acc[SG_MR][2];
    const ptrdiff_t n0 = nc < 8 ? nc : 8, n1 = nc > 8 ? nc - 8 : 0;
    for (int r = 0; r < mr; r++) {
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        if (from_c) {
            acc[r][0] = sg_load_half(C + r * ldc, n0, sg_mask(n0));
            if (w == 16)
                acc[r][1] = sg_load_half(C + r * ldc + 8, n1, sg_mask(n1));
        }
    }
    for (ptrdiff_t s = s0; s < s1; s++) {
        const float* a[SG_MR];
        for (int r = 0; r < mr; r++)
            a[r] = rows[r] + s * sstride;
        const float* b = B + (s - s0) * seglen * SG5_NR;
        for (ptrdiff_t j = 0; j < seglen; j++, b += SG5_NR) {
            const __m256 b0 = _mm256_loadu_ps(b);
            const __m256 b1 = w == 16 ? _mm256_loadu_ps(b + 8) : b0;
            for (int r = 0; r < mr; r++) {
                const __m256 x = _mm256_broadcast_ss(a[r] + j);
                acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
                if (w == 16)
                    acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
            }
        }
    }
    /* the masks made here, not kept in registers through the loop above:
       12 accumulators, B's two vectors and a broadcast take 15 of the 16 */
    for (int r = 0; r < mr; r++) {
        sg_store_half(C + r * ldc, n0, sg_mask(n0), acc[r][0]);
        if (w == 16)
            sg_store_half(C + r * ldc + 8, n1, sg_mask(n1), acc[r][1]);
    }
}

SG_INLINE void sg2_panel_rows(const int w, const int from_c, ptrdiff_t M,
                              const float* const* rows, ptrdiff_t s0, ptrdiff_t s1,
                              ptrdiff_t seglen, ptrdiff_t sstride, const float* B, float* C,
                              ptrdiff_t ldc, ptrdiff_t nc) {
    ptrdiff_t i = 0;
#define SG2_ROWS(mr) sg2_block_rows(mr, w, from_c, rows + i, s0, s1, seglen, sstride, B, \
                                    C + i * ldc, ldc, nc)
    for (; i + SG_MR <= M; i += SG_MR)
        SG2_ROWS(SG_MR);
    switch (M - i) {
        case 5: SG2_ROWS(5); break;
        case 4: SG2_ROWS(4); break;
        case 3: SG2_ROWS(3); break;
        case 2: SG2_ROWS(2); break;
        case 1: SG2_ROWS(1); break;
        default: break;
    }
#undef SG2_ROWS
}

/* sg5_gemm_rows on AVX2: C (M, Nc) := beta C + Aop (M, K) @ B (K, Nc), beta 0
   or 1, K = nseg x seglen, Aop's rows read in place; each half panel whole
   segments at a time, up to SG2_KC steps of k. */
SG_TARGET static void sg2_gemm_rows(ptrdiff_t M, ptrdiff_t Nc, const float* const* rows,
                                    ptrdiff_t nseg, ptrdiff_t seglen, ptrdiff_t sstride,
                                    const float* Bp, float beta, float* C, ptrdiff_t ldc) {
    const ptrdiff_t K = nseg * seglen;
    const ptrdiff_t step = seglen >= SG2_KC ? 1 : SG2_KC / (seglen > 0 ? seglen : 1);
    for (ptrdiff_t j = 0; j < Nc; j += SG_NR) {
        const ptrdiff_t nc = Nc - j < SG_NR ? Nc - j : SG_NR;
        const float* panel = Bp + (j - j % SG5_NR) * K + j % SG5_NR;
        for (ptrdiff_t s = 0; s < nseg; s += step) {
            const ptrdiff_t s1 = nseg - s < step ? nseg : s + step;
            const float* b = panel + s * seglen * SG5_NR;
            const int from_c = s > 0 || beta != 0.0f;
#define SG2_RUN(w, f) sg2_panel_rows(w, f, M, rows, s, s1, seglen, sstride, b, C + j, ldc, nc)
            if (nc <= 8) {
                if (from_c) SG2_RUN(8, 1); else SG2_RUN(8, 0);
            } else {
                if (from_c) SG2_RUN(16, 1); else SG2_RUN(16, 0);
            }
#undef SG2_RUN
        }
    }
}

/* Which kernels fastnn_sg_gemm runs: FASTNN_SG_AVX512 where the CPU has
   AVX-512 F and VL, FASTNN_SG_AVX2 where it has AVX2 and FMA, else none
   (set by fastnn_sg_available; tests choose with fastnn_sg_set_isa). */
enum { FASTNN_SG_NONE = 0, FASTNN_SG_AVX2 = 1, FASTNN_SG_AVX512 = 2 };
static int fastnn_sg_isa = FASTNN_SG_NONE;

static int fastnn_sg_best_isa(void) {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return FASTNN_SG_NONE;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
        return FASTNN_SG_AVX512;
    return FASTNN_SG_AVX2;
}

/* Use the kernels of isa if the CPU has them, else the best it has; returns
   the isa in effect. */
static int fastnn_sg_set_isa(int isa) {
    const int best = fastnn_sg_best_isa();
    fastnn_sg_isa = isa < FASTNN_SG_AVX2 || isa > best ? best : isa;
    return fastnn_sg_isa;
}

/* The isa fastnn_sg_gemm runs now. */
static int fastnn_sg_get_isa(void) { return fastnn_sg_isa; }

/* 1 if this CPU runs the kernels (AVX2 and FMA), else 0; chooses the best. */
static int fastnn_sg_available(void) {
    return fastnn_sg_set_isa(FASTNN_SG_AVX512) != FASTNN_SG_NONE;
}

/* C (M, Nc) := beta C + alpha Aop (M, K) @ B (K, Nc) with the chosen kernels. */
static void fastnn_sg_gemm(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, float alpha, const float* A,
                           ptrdiff_t sai, ptrdiff_t sak, const float* B, ptrdiff_t ldb,
                           float beta, float* C, ptrdiff_t ldc) {
    if (fastnn_sg_isa == FASTNN_SG_AVX512)
        fastnn_sg_gemm_avx512(M, Nc, K, alpha, A, sai, sak, B, ldb, beta, C, ldc);
    else
        fastnn_sg_gemm_avx2(M, Nc, K, alpha, A, sai, sak, B, ldb, beta, C, ldc);
}

/* fastnn_sg_gemm, B never packed: for a product that reads its B once
   (a convolution's weight gradient, whose B is another block of rows each
   call), where AVX-512's fastnn_sg_gemm would pack it from SG5_PACK_ROWS
   rows of C and then free it. The same bits. */
static void fastnn_sg_gemm_unpacked(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, float alpha,
                                    const float* A, ptrdiff_t sai, ptrdiff_t sak,
                                    const float* B, ptrdiff_t ldb, float beta, float* C,
                                    ptrdiff_t ldc) {
    if (fastnn_sg_isa == FASTNN_SG_AVX512)
        sg5_columns(M, Nc, K, alpha, A, sai, sak, B, ldb, beta, C, ldc);
    else
        fastnn_sg_gemm_avx2(M, Nc, K, alpha, A, sai, sak, B, ldb, beta, C, ldc);
}

/* C (M, Nc) := beta C + Aop (M, K) @ B (K, Nc) for a forward outside
   training (predict's chunks): fastnn_sg_gemm, except that AVX2's packs B
   from SG2_PACK_ROWS rows (sg2_gemm). The same bits as fastnn_sg_gemm. */
static void fastnn_sg_gemm_forward(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, const float* A,
                                   ptrdiff_t sai, ptrdiff_t sak, const float* B,
                                   ptrdiff_t ldb, float beta, float* C, ptrdiff_t ldc) {
    if (fastnn_sg_isa == FASTNN_SG_AVX512)
        fastnn_sg_gemm_avx512(M, Nc, K, 1.0f, A, sai, sak, B, ldb, beta, C, ldc);
    else
        sg2_gemm(M, Nc, K, 1.0f, A, sai, sak, B, ldb, beta, C, ldc);
}

/* C (M, Nc) := beta C + Aop (M, K) @ B (K, Nc) (alpha == 1), B packed in Bp
   (fastnn_sg_pack_bp): sg5_gemm_bp or sg2_gemm_bp, the same bits. */
static void fastnn_sg_gemm_bp(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, const float* A,
                              ptrdiff_t sai, ptrdiff_t sak, const float* Bp, float beta,
                              float* C, ptrdiff_t ldc) {
    if (fastnn_sg_isa == FASTNN_SG_AVX512)
        sg5_gemm_bp(M, Nc, K, A, sai, sak, Bp, beta, C, ldc);
    else
        sg2_gemm_bp(M, Nc, K, A, sai, sak, Bp, beta, C, ldc);
}

/* The same product, Aop's rows read in place as segments (a convolution's
   windows): sg5_gemm_rows or sg2_gemm_rows, the same bits. */
static void fastnn_sg_gemm_rows(ptrdiff_t M, ptrdiff_t Nc, const float* const* rows,
                                ptrdiff_t nseg, ptrdiff_t seglen, ptrdiff_t sstride,
                                const float* Bp, float beta, float* C, ptrdiff_t ldc) {
    if (fastnn_sg_isa == FASTNN_SG_AVX512)
        sg5_gemm_rows(M, Nc, rows, nseg, seglen, sstride, Bp, beta, C, ldc);
    else
        sg2_gemm_rows(M, Nc, rows, nseg, seglen, sstride, Bp, beta, C, ldc);
}

/* The 8 sums of v[0..7], in order. */
SG_INLINE __m256 sg_sum8(const __m256 v[8]) {
    __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20),
                         _mm256_permute2f128_ps(t0, t1, 0x31));
}

/* Rows of D and of W in a block of fastnn_sg_nt: 4 x 3 dot products are 12
   ymm accumulators; each step of 8 along O loads 4 + 3 vectors for 12 FMAs. */
enum { SG_NT_R = 4, SG_NT_W = 3 };

/* out[r, c] := D[r, :] . W[c, :] for r < mr, c < nw (constants at every call
   site, so the accumulators stay in registers: with a run-time bound GCC
   keeps them on the stack, and each FMA waits on a store, 6x slower).
   Each sum is 8 lanes (k = lane mod 8) reduced by sg_sum8, whatever the
   entry's place in the block: the same sum, in the same order, for any
   split of W's rows between threads. */
SG_INLINE void sg_nt_block(const int mr, const int nw, ptrdiff_t O, const float* D,
                           const float* W, ptrdiff_t ldw, float* out, ptrdiff_t ldo) {
    __m256 acc[SG_NT_R * SG_NT_W];
    for (int q = 0; q < SG_NT_R * SG_NT_W; q++)
        acc[q] = _mm256_setzero_ps();
    const ptrdiff_t O8 = O & ~(ptrdiff_t) 7;
    for (ptrdiff_t k = 0; k < O8; k += 8) {
        __m256 w[SG_NT_W];
        for (int c = 0; c < nw; c++)
            w[c] = _mm256_loadu_ps(W + c * ldw + k);
        for (int r = 0; r < mr; r++) {
            const __m256 d = _mm256_loadu_ps(D + r * O + k);
            for (int c = 0; c < nw; c++)
                acc[r * SG_NT_W + c] = _mm256_fmadd_ps(d, w[c], acc[r * SG_NT_W + c]);
        }
    }
    if (O8 < O) {
        const __m256i m = sg_mask(O - O8);
        __m256 w[SG_NT_W];
        for (int c = 0; c < nw; c++)
            w[c] = _mm256_maskload_ps(W + c * ldw + O8, m);
        for (int r = 0; r < mr; r++) {
            const __m256 d = _mm256_maskload_ps(D + r * O + O8, m);
            for (int c = 0; c < nw; c++)
                acc[r * SG_NT_W + c] = _mm256_fmadd_ps(d, w[c], acc[r * SG_NT_W + c]);
        }
    }
    /* 12 sums: acc[0..7] and acc[8..11] (with 4 zeros) through sg_sum8 */
    float sums[16];
    const __m256 z = _mm256_setzero_ps();
    const __m256 rest[8] = {acc[8], acc[9], acc[10], acc[11], z, z, z, z};
    _mm256_storeu_ps(sums, sg_sum8(acc));
    _mm256_storeu_ps(sums + 8, sg_sum8(rest));
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nw; c++)
            out[r * ldo + c] = sums[r * SG_NT_W + c];
}

/* Rows [0, N) of out for W's rows [0, nw): blocks of SG_NT_R rows of D. */
SG_INLINE void sg_nt_rows(const int nw, ptrdiff_t N, ptrdiff_t O, const float* D,
                          const float* W, ptrdiff_t ldw, float* out, ptrdiff_t ldo) {
    ptrdiff_t r = 0;
    for (; r + SG_NT_R <= N; r += SG_NT_R)
        sg_nt_block(SG_NT_R, nw, O, D + r * O, W, ldw, out + r * ldo, ldo);
    switch (N - r) {
        case 3: sg_nt_block(3, nw, O, D + r * O, W, ldw, out + r * ldo, ldo); break;
        case 2: sg_nt_block(2, nw, O, D + r * O, W, ldw, out + r * ldo, ldo); break;
        case 1: sg_nt_block(1, nw, O, D + r * O, W, ldw, out + r * ldo, ldo); break;
        default: break;
    }
}

/* A W this narrow (O <= SG_NT_NARROW) has too few entries per row for dot
   products to pay for their reduction: its rows are transposed, SG_NT_CHUNK
   at a time, into a stack buffer Wt (O, chunk), and out = D @ Wt goes through
   fastnn_sg_gemm (each entry one FMA chain along O, in order). */
enum { SG_NT_NARROW = 16, SG_NT_CHUNK = 256 };

/* out (N, I) := D (N, O) @ W (I, O)^T; W's rows are ldw apart (ldw >= O), out's
   ldo apart. W's rows in
   groups of SG_NT_W, outermost: a group is read from memory once and used
   by every row of D (D, N x O, stays in L1). Either way an entry's sum does
   not depend on where I is cut, so threads may split W's rows. */
SG_TARGET static void fastnn_sg_nt(ptrdiff_t N, ptrdiff_t I, ptrdiff_t O, const float* D,
                                   const float* W, ptrdiff_t ldw, float* out, ptrdiff_t ldo) {
    if (O <= SG_NT_NARROW) {
        float Wt[SG_NT_NARROW * SG_NT_CHUNK] __attribute__((aligned(32)));
        for (ptrdiff_t c0 = 0; c0 < I; c0 += SG_NT_CHUNK) {
            const ptrdiff_t nc = I - c0 < SG_NT_CHUNK ? I - c0 : SG_NT_CHUNK;
            for (ptrdiff_t c = 0; c < nc; c++)
                for (ptrdiff_t k = 0; k < O; k++)
                    Wt[k * nc + c] = W[(c0 + c) * ldw + k];
            fastnn_sg_gemm(N, nc, O, 1.0f, D, O, 1, Wt, nc, 0.0f, out + c0, ldo);
        }
        return;
    }
    ptrdiff_t c = 0;
    for (; c + SG_NT_W <= I; c += SG_NT_W)
        sg_nt_rows(SG_NT_W, N, O, D, W + c * ldw, ldw, out + c, ldo);
    switch (I - c) {
        case 2: sg_nt_rows(2, N, O, D, W + c * ldw, ldw, out + c, ldo); break;
        case 1: sg_nt_rows(1, N, O, D, W + c * ldw, ldw, out + c, ldo); break;
        default: break;
    }
}

/* dst[c * ldd + r] := src[r * lds + c] + bias[r] for r < R, c < C: 8 x 8
   blocks transposed in registers (unpack, shuffle, swap of 128-bit halves),
   the edges one entry at a time. */
SG_TARGET static void fastnn_sg_transpose_bias(ptrdiff_t R, ptrdiff_t C, const float* src,
                                               ptrdiff_t lds, const float* bias,
                                               float* dst, ptrdiff_t ldd) {
    const ptrdiff_t R8 = R & ~(ptrdiff_t) 7, C8 = C & ~(ptrdiff_t) 7;
    for (ptrdiff_t r = 0; r < R8; r += 8) {
        const __m256 b = _mm256_loadu_ps(bias + r);
        for (ptrdiff_t c = 0; c < C8; c += 8) {
            const float* s = src + r * lds + c;
            __m256 v[8], t[8], u[8];
            for (int i = 0; i < 8; i++)
                v[i] = _mm256_loadu_ps(s + i * lds);
            for (int i = 0; i < 8; i += 2) {
                t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
                t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
            }
            for (int i = 0; i < 8; i += 4) {
                u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
                u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
                u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
                u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
            }
            /* u[j] (j < 4) holds column j of rows 0..3 in its low half and
               column j + 4 of those rows in its high half; u[j + 4] rows 4..7 */
            float* d = dst + c * ldd + r;
            for (int j = 0; j < 4; j++) {
                _mm256_storeu_ps(d + j * ldd,
                                 _mm256_add_ps(_mm256_permute2f128_ps(u[j], u[j + 4], 0x20), b));
                _mm256_storeu_ps(d + (j + 4) * ldd,
                                 _mm256_add_ps(_mm256_permute2f128_ps(u[j], u[j + 4], 0x31), b));
            }
        }
        for (ptrdiff_t c = C8; c < C; c++)
            for (ptrdiff_t i = 0; i < 8; i++)
                dst[c * ldd + r + i] = src[(r + i) * lds + c] + bias[r + i];
    }
    for (ptrdiff_t c = 0; c < C; c++)
        for (ptrdiff_t r = R8; r < R; r++)
            dst[c * ldd + r] = src[r * lds + c] + bias[r];
}

/* One sample of max-pooling, NHWC: out[(oy*OW + ox)*C + c] := the maximum of
   src over the window at (oy*sh, ox*sw) of kh x kw pixels, channel c, and
   idx := its index (y*W + x)*C + c in the sample. The first maximum in
   row-major window order wins a tie; a NaN wins, and a later NaN over an
   earlier one (PyTorch's v > max or isnan(v)): take = (v > best) | (v != v). */
SG_TARGET static void fastnn_sg_maxpool(const float* src, float* out, int32_t* idx,
                                        ptrdiff_t C, ptrdiff_t OH, ptrdiff_t OW,
                                        ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                        ptrdiff_t sw, ptrdiff_t W) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (ptrdiff_t oy = 0; oy < OH; oy++)
        for (ptrdiff_t ox = 0; ox < OW; ox++) {
            float* o = out + (oy * OW + ox) * C;
            int32_t* q = idx + (oy * OW + ox) * C;
            for (ptrdiff_t c = 0; c < C; c += 8) {
                const ptrdiff_t n = C - c < 8 ? C - c : 8;
                const __m256i m = sg_mask(n);
                const int32_t off0 = (int32_t) ((oy * sh * W + ox * sw) * C + c);
                __m256 best = _mm256_maskload_ps(src + off0, m);
                __m256i at = _mm256_add_epi32(_mm256_set1_epi32(off0), lane);
                for (ptrdiff_t ky = 0; ky < kh; ky++)
                    for (ptrdiff_t kx = 0; kx < kw; kx++) {
                        if (ky == 0 && kx == 0)
                            continue;
                        const int32_t off =
                            (int32_t) (((oy * sh + ky) * W + ox * sw + kx) * C + c);
                        const __m256 v = _mm256_maskload_ps(src + off, m);
                        const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ),
                                                         _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                        best = _mm256_blendv_ps(best, v, take);
                        at = _mm256_castps_si256(_mm256_blendv_ps(
                            _mm256_castsi256_ps(at),
                            _mm256_castsi256_ps(_mm256_add_epi32(_mm256_set1_epi32(off), lane)),
                            take));
                    }
                _mm256_maskstore_ps(o + c, m, best);
                _mm256_maskstore_epi32(q + c, m, at);
            }
        }
}

#else   /* not GCC on x86: no kernels; fastnn_sg_available() says so */
#define FASTNN_SG 0
static int fastnn_sg_available(void) { return 0; }
static int fastnn_sg_set_isa(int isa) { return 0; }
static int fastnn_sg_get_isa(void) { return 0; }
static ptrdiff_t fastnn_sg_set_block_bytes(ptrdiff_t bytes) { return 0; }
static void fastnn_sg_gemm(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, float alpha,
                           const float* A, ptrdiff_t sai, ptrdiff_t sak,
                           const float* B, ptrdiff_t ldb, float beta,
                           float* C, ptrdiff_t ldc) { }
static void fastnn_sg_gemm_forward(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, const float* A,
                                   ptrdiff_t sai, ptrdiff_t sak, const float* B,
                                   ptrdiff_t ldb, float beta, float* C, ptrdiff_t ldc) { }
static void fastnn_sg_gemm_unpacked(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, float alpha,
                                    const float* A, ptrdiff_t sai, ptrdiff_t sak,
                                    const float* B, ptrdiff_t ldb, float beta, float* C,
                                    ptrdiff_t ldc) { }
static void fastnn_sg_nt(ptrdiff_t N, ptrdiff_t I, ptrdiff_t O, const float* D,
                         const float* W, ptrdiff_t ldw, float* out, ptrdiff_t ldo) { }
static void fastnn_sg_transpose_bias(ptrdiff_t R, ptrdiff_t C, const float* src,
                                     ptrdiff_t lds, const float* bias, float* dst,
                                     ptrdiff_t ldd) { }
static void fastnn_sg_maxpool(const float* src, float* out, int32_t* idx, ptrdiff_t C,
                              ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t kh, ptrdiff_t kw,
                              ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t W) { }
static ptrdiff_t fastnn_sg_bp_size(ptrdiff_t Nc, ptrdiff_t K) { return 0; }
static void fastnn_sg_pack_bp(ptrdiff_t Nc, ptrdiff_t K, const float* B, ptrdiff_t sbk,
                              ptrdiff_t sbj, float* Bp) { }
static void fastnn_sg_gemm_bp(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K, const float* A,
                              ptrdiff_t sai, ptrdiff_t sak, const float* Bp, float beta,
                              float* C, ptrdiff_t ldc) { }
static void fastnn_sg_gemm_rows(ptrdiff_t M, ptrdiff_t Nc, const float* const* rows,
                                ptrdiff_t nseg, ptrdiff_t seglen, ptrdiff_t sstride,
                                const float* Bp, float beta, float* C, ptrdiff_t ldc) { }
#endif

#endif
