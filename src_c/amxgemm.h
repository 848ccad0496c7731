/* amxgemm.h: the bfloat16 matrix product of a bfloat16 network on AMX tiles
 * (Intel Sapphire Rapids and later: AMX-TILE and AMX-BF16).
 *
 *   fastnn_amx_gemm_epi  column-major C (m, n) := alpha bf16(op(A)) bf16(op(B)) + beta C,
 *                        op(A) (m, k), op(B) (k, n), the products summed in float32;
 *                        what _core.gemm_bf16 emulates with sgemm, up to the order
 *                        of the sums; optionally a bias and ReLU as C is stored,
 *                        and B's columns read through a table of rows.
 *
 * Where the CPU has AVX512_BF16 but no AMX, the same packed tiles can be
 * multiplied with VDPBF16PS instead (amx_tiles_vdp; _core chooses it on AMD's
 * cores, fastnn_vdpbf16_preferred).
 *
 * The operands are rounded to bfloat16 (round to nearest, ties to even, as
 * fastnn_round_bf16) while they are packed into scratch, so that op(A) and
 * op(B) may be transposed or not at no cost:
 *
 *   R  op(B)^T in tiles of 16 rows (j) x 32 bfloat16 (p): TDPBF16PS's first
 *      operand, [jt][pt][16][32];
 *   V  op(A)^T in tiles of 16 pairs of p x 16 columns (i) x 2 (the pair, the
 *      VNNI order): its second operand, [it][pt][16][16][2].
 *
 * A tile of C^T (16 j x 16 i, float32) is then sum over pt of R[jt][pt] V[it][pt]:
 * each TDPBF16PS adds 16 x 16 dot products of 32 bfloat16 pairs (8,192
 * multiply-adds), against 16 for one AVX-512 FMA. The kernel holds 2 x 2 tiles
 * of C in tmm0..3, two tiles of R in tmm4..5 and two of V in tmm6..7; the
 * tile counts are padded to even with zero tiles, K to a multiple of 32 with
 * zeros, so every tile is whole. Each finished tile goes through a stack
 * buffer into C as alpha T + beta C (beta == 0: C is not read, as BLAS).
 *
 * Linux gives a process AMX's 8 KiB of tile state only once asked
 * (arch_prctl ARCH_REQ_XCOMP_PERM): fastnn_amx_available asks, once, and says
 * 0 where the CPU, the compiler or the kernel lacks it.
 */
#ifndef FASTNN_AMXGEMM_H
#define FASTNN_AMXGEMM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 \
    && defined(__linux__)
#define FASTNN_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include "transpose16.h"
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f")))

enum { AMX_T = 16, AMX_KP = 32 };   /* tile: 16 rows; 32 bfloat16 of K a row */
/* What the blocks' order counts on L2 holding of the packed operands: 1.5 of
   Sapphire/Emerald Rapids' 2 MiB a core (C and the stack need some). */
enum { AMX_L2_BYTES = 3 << 19 };

/* 1: AMX tiles usable in this process; 0: not (asked once). */
static int fastnn_amx_state = -1;

static int fastnn_amx_available(void) {
    unsigned a, b, c, d;
    if (fastnn_amx_state >= 0)
        return fastnn_amx_state;
    fastnn_amx_state = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    if (!(d & (1u << 22)) || !(d & (1u << 24)))      /* AMX-BF16, AMX-TILE */
        return 0;
    /* ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18) */
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0)
        return 0;
    fastnn_amx_state = 1;
    return 1;
}

/* 1: the CPU has AVX512_BF16's VDPBF16PS and the OS keeps AVX-512 state (AMD
   Zen 4 and 5, Intel Cooper Lake and Sapphire Rapids on); 0: not. */
static int fastnn_vdpbf16_available(void) {
    unsigned a, b, c, d, lo, hi;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & (1u << 16)))   /* AVX512F */
        return 0;
    if (!(b & (1u << 30)))                                                 /* AVX512BW */
        return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))              /* OSXSAVE */
        return 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0xE6) != 0xE6)                                 /* XMM, YMM, opmask, ZMM state */
        return 0;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d))
        return 0;
    return (a >> 5) & 1;                                                   /* AVX512_BF16 */
}

/* 1: VDPBF16PS is the bfloat16 kernel to take here, where there are no AMX
   tiles: AMD's cores with AVX512_BF16 (Zen 4 and 5), whose FMA pipes issue it
   at twice float32's FMA rate. On a Zen 5 (2026-12-06) it trained
   [784, 1024, 1024, 10] at 1.62x the emulation's float32 SGEMM and the two-conv
   net at 1.37x. The one Intel core measured, an Emerald Rapids, issued it at
   float32's FMA rate (0.77x and 0.72x the emulation), so an Intel CPU without
   AMX (Cooper Lake, not measured) keeps the emulation. */
static int fastnn_vdpbf16_preferred(void) {
    unsigned a, b, c, d;
    if (!fastnn_vdpbf16_available() || !__get_cpuid(0, &a, &b, &c, &d))
        return 0;
    return b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;   /* "AuthenticAMD" */
}

/* Two 16 x 16 tiles of C^T from the same packed tiles TDPBF16PS takes, on
   AVX512_BF16's VDPBF16PS: T0[j][i] (T1) = sum over the pairs h of R's row j
   and V0's (V1's) pair h at i (16 lanes of i, each a dot product of one pair,
   summed in float32), over pt 32-wide slices of K; R's pair a broadcast that
   serves both V tiles. Eight rows j at a time: 16 accumulators, and per pair
   h two loads of V and eight broadcasts for 16 VDPBF16PS (one tile at a
   time took a load for each one, and the loads bounded it). VDPBF16PS
   treats subnormal inputs and results as zero. */
__attribute__((target("avx512f,avx512bw,avx512bf16")))
static void amx_tiles_vdp(const uint16_t* r, const uint16_t* v0, const uint16_t* v1,
                          ptrdiff_t pt, float T0[AMX_T][AMX_T], float T1[AMX_T][AMX_T]) {
    enum { J = 8 };
    const ptrdiff_t tile = AMX_T * AMX_KP;
    for (int j0 = 0; j0 < AMX_T; j0 += J) {
        __m512 acc0[J], acc1[J];
        for (int j = 0; j < J; j++)
            acc0[j] = acc1[j] = _mm512_setzero_ps();
        for (ptrdiff_t s = 0; s < pt; s++) {
            const uint32_t* rs = (const uint32_t*) (r + s * tile) + j0 * AMX_T;  /* [j][16 h] */
            const uint16_t* vs0 = v0 + s * tile;                         /* [16 h][16 i] pairs */
            const uint16_t* vs1 = v1 + s * tile;
            for (int h = 0; h < AMX_T; h++) {
                const __m512bh a = (__m512bh) _mm512_load_si512(vs0 + h * 2 * AMX_T);
                const __m512bh b = (__m512bh) _mm512_load_si512(vs1 + h * 2 * AMX_T);
                for (int j = 0; j < J; j++) {
                    const __m512bh x = (__m512bh) _mm512_set1_epi32((int) rs[j * AMX_T + h]);
                    acc0[j] = _mm512_dpbf16_ps(acc0[j], x, a);
                    acc1[j] = _mm512_dpbf16_ps(acc1[j], x, b);
                }
            }
        }
        for (int j = 0; j < J; j++) {
            _mm512_store_ps(T0[j0 + j], acc0[j]);
            _mm512_store_ps(T1[j0 + j], acc1[j]);
        }
    }
}

/* The entries of float32 scratch fastnn_amx_gemm_epi needs for m, n, k. */
static ptrdiff_t fastnn_amx_scratch(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k) {
    const ptrdiff_t it = ((m + AMX_T - 1) / AMX_T + 1) / 2 * 2;
    const ptrdiff_t jt = ((n + AMX_T - 1) / AMX_T + 1) / 2 * 2;
    const ptrdiff_t pt = (k + AMX_KP - 1) / AMX_KP;
    /* tiles of 16 x 32 bfloat16 (256 floats' room), and 64 bytes to align */
    return (it + jt) * (pt > 0 ? pt : 1) * 256 + 16;
}

/* Both packed operands are tiles of 16 x 16 pairs of bfloat16 (32 bits: p
   even in the low half, p + 1 in the high), indexed [x][h] for R (x = j) and
   [h][x] for V (x = i), h = the pair of p. A vector of 16 pairs comes from X
   one of two ways, whichever of X's strides is 1:
     along h, for one x, where p is contiguous: 32 floats, converted in order;
     along x, for one h, where x is contiguous: 16 floats of p and 16 of p + 1,
       converted and interleaved.
   Vectors along the other index than the tile's rows are transposed in
   registers (transpose16.h). */
#define AMX_VEC __attribute__((target("avx512f,avx512bw"), always_inline)) static inline

/* 16 floats rounded to bfloat16, as 16 x 16 bits: the upper half of each lane's
   fastnn_round_bf16 (round to nearest, ties to even; a NaN stays a quiet NaN). */
AMX_VEC __m256i amx_bf16x16(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x0040));
    return _mm512_cvtepi32_epi16(r);
}

AMX_VEC __mmask16 amx_mask(ptrdiff_t n) {
    return n >= 16 ? (__mmask16) 0xFFFF : n <= 0 ? (__mmask16) 0 : (__mmask16) ((1u << n) - 1);
}

/* Row r of an operand whose rows are read through a table (rows[r], a batch's
   rows read in place from the training set), or r itself (rows NULL). */
AMX_VEC ptrdiff_t amx_row(const int64_t* rows, ptrdiff_t r) {
    return rows != NULL ? (ptrdiff_t) rows[r] : r;
}

/* The 16 pairs of p0 .. p0 + 31 at x (X + row(x) * sx, p contiguous), 0 past k or nx. */
AMX_VEC __m512i amx_along_h(const float* X, ptrdiff_t sx, ptrdiff_t x, ptrdiff_t nx,
                            ptrdiff_t p0, ptrdiff_t k, const int64_t* rows) {
    if (x >= nx || p0 >= k)
        return _mm512_setzero_si512();
    const float* row = X + amx_row(rows, x) * sx + p0;
    const __m256i lo = amx_bf16x16(_mm512_maskz_loadu_ps(amx_mask(k - p0), row));
    const __m256i hi = amx_bf16x16(_mm512_maskz_loadu_ps(amx_mask(k - p0 - 16), row + 16));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* The pairs (p, p + 1) of x0 .. x0 + 15 (X + row(p) * sp, x contiguous), 0 past k or nx. */
AMX_VEC __m512i amx_along_x(const float* X, ptrdiff_t sp, ptrdiff_t x0, ptrdiff_t nx,
                            ptrdiff_t p, ptrdiff_t k, const int64_t* rows) {
    const __mmask16 m = amx_mask(nx - x0);
    const __m256i a = p < k
        ? amx_bf16x16(_mm512_maskz_loadu_ps(m, X + amx_row(rows, p) * sp + x0))
        : _mm256_setzero_si256();
    const __m256i b = p + 1 < k
        ? amx_bf16x16(_mm512_maskz_loadu_ps(m, X + amx_row(rows, p + 1) * sp + x0))
        : _mm256_setzero_si256();
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                         24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17,
                                         1, 16, 0);
    return _mm512_permutexvar_epi16(idx, _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1));
}

/* One tile of pairs of X (x0 .. x0+15, p0 .. p0+31; x along sx, p along sp; 0
   past nx or k): rows along h (by_x = 0: tile[x][h], R) or along x (by_x = 1:
   tile[h][x], V). One of sx and sp is 1 (X is a column-major matrix). rows:
   NULL, or the table of the index whose stride is not 1 (rows_on_x: x's,
   else p's): X's entry (x, p) is then X[rows[x] * sx + p] or X[x + rows[p] * sp]. */
__attribute__((target("avx512f,avx512bw")))
static void amx_pack_tile(const float* X, ptrdiff_t sx, ptrdiff_t sp, ptrdiff_t x0,
                          ptrdiff_t nx, ptrdiff_t p0, ptrdiff_t k, int by_x, uint16_t* tile,
                          const int64_t* rows, int rows_on_x) {
    uint32_t* t = (uint32_t*) tile;
    const int64_t* rx = rows_on_x ? rows : NULL;
    const int64_t* rp = rows_on_x ? NULL : rows;
    if (rows != NULL ? rows_on_x : sp == 1) {       /* vectors along h, one a column x */
        if (!by_x) {
            for (ptrdiff_t r = 0; r < AMX_T; r++)
                _mm512_store_si512(t + r * AMX_T, amx_along_h(X, sx, x0 + r, nx, p0, k, rx));
            return;
        }
        __m512i v[AMX_T];
        for (ptrdiff_t c = 0; c < AMX_T; c++)
            v[c] = amx_along_h(X, sx, x0 + c, nx, p0, k, rx);
        fastnn_transpose16(v, t, AMX_T);
        return;
    }
    /* sx == 1, x contiguous: vectors along x, one a pair h */
    if (by_x) {
        for (ptrdiff_t h = 0; h < AMX_T; h++)
            _mm512_store_si512(t + h * AMX_T, amx_along_x(X, sp, x0, nx, p0 + 2 * h, k, rp));
        return;
    }
    __m512i v[AMX_T];
    for (ptrdiff_t h = 0; h < AMX_T; h++)
        v[h] = amx_along_x(X, sp, x0, nx, p0 + 2 * h, k, rp);
    fastnn_transpose16(v, t, AMX_T);
}

/* C[i + j*ldc] := alpha T[j][i] + beta C[i + j*ldc] for the tile at (i0, j0):
   alpha T and beta C each rounded, then their sum, as the scalar loop this
   replaced computed them (beta == 0: C is not read); a row of the tile a
   vector, masked at C's edge. With bias (beta 0): alpha T + bias[i] instead,
   what a C prefilled with the bias and beta 1 gave for alpha 1; relu: then
   max(., 0), 0 for a NaN as fastnn's ReLU gives. */
__attribute__((target("avx512f,avx512bw")))
static void amx_store(const float T[AMX_T][AMX_T], float* C, ptrdiff_t ldc, ptrdiff_t i0,
                      ptrdiff_t j0, ptrdiff_t m, ptrdiff_t n, float alpha, float beta,
                      const float* bias, int relu) {
    const ptrdiff_t nj = n - j0 < AMX_T ? n - j0 : AMX_T;
    const __mmask16 mask = amx_mask(m - i0);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    const __m512 b = bias != NULL ? _mm512_maskz_loadu_ps(mask, bias + i0) : _mm512_setzero_ps();
    for (ptrdiff_t r = 0; r < nj; r++) {
        float* c = C + (j0 + r) * ldc + i0;
        __m512 v = _mm512_mul_ps(va, _mm512_load_ps(T[r]));
        if (bias != NULL)
            v = _mm512_add_ps(v, b);
        else if (beta != 0.0f)
            v = _mm512_add_ps(v, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(mask, c)));
        if (relu)       /* MAXPS gives its second operand, +0, for a NaN or -0 */
            v = _mm512_max_ps(v, _mm512_setzero_ps());
        _mm512_mask_storeu_ps(c, mask, v);
    }
}

/* The 64-byte tile configuration: palette 1, every tile 16 rows of 64 bytes. */
struct amx_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* C (m, n) := alpha bf16(op(A)) bf16(op(B)) + beta C, column-major, op(A)[i, p] =
   A[i * sai + p * sap], op(B)[p, j] = B[p * sbp + j * sbj] (one stride of each
   is 1); scratch holds fastnn_amx_scratch(m, n, k) floats. On `threads`
   OpenMP threads (one inside another team's region), which share the packing
   (tile by tile) and then the 32 x 32 blocks of C, each on its own tiles.
   bias (m,), with beta 0: C := alpha bf16(op(A)) bf16(op(B)) + bias[i] for
   each column, and relu: max(., 0) after (a dense layer's forward, its
   bias and ReLU in the store: amx_store); NULL and 0: neither.
   b_rows: NULL, or B's columns (column-major, the stride of 1 along the
   other index) read through a table: column c at B + b_rows[c] * (sbp or
   sbj, whichever is not along the column), a training batch's rows read in
   place from the training set; b_rows_j: the table is op(B)'s j (B not
   transposed), else its p.
   vdp: the tiles multiplied with AVX512_BF16's VDPBF16PS rather than on AMX
   (amx_tiles_vdp; the same packing and blocks, the sums in another order).
   Only where fastnn_amx_available(), or with vdp where fastnn_vdpbf16_available(). */
AMX_TARGET static void fastnn_amx_gemm_epi(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                                           const float* A, ptrdiff_t sai, ptrdiff_t sap,
                                           const float* B, ptrdiff_t sbp, ptrdiff_t sbj,
                                           float beta, float* C, ptrdiff_t ldc, float* scratch,
                                           int threads, const float* bias, int relu,
                                           const int64_t* b_rows, int b_rows_j, int vdp) {
    const ptrdiff_t it = ((m + AMX_T - 1) / AMX_T + 1) / 2 * 2;
    const ptrdiff_t jt = ((n + AMX_T - 1) / AMX_T + 1) / 2 * 2;
    const ptrdiff_t pt = (k + AMX_KP - 1) / AMX_KP;
    const ptrdiff_t tile = AMX_T * AMX_KP;      /* bfloat16 entries of a tile */
    if (m <= 0 || n <= 0)
        return;
    if (pt == 0) {               /* k == 0: C := beta C */
        float Z[AMX_T][AMX_T] __attribute__((aligned(64)));
        memset(Z, 0, sizeof Z);
        for (ptrdiff_t j0 = 0; j0 < n; j0 += AMX_T)
            for (ptrdiff_t i0 = 0; i0 < m; i0 += AMX_T)
                amx_store(Z, C, ldc, i0, j0, m, n, alpha, beta, bias, relu);
        return;
    }
    uint16_t* R = (uint16_t*) (((uintptr_t) scratch + 63) & ~(uintptr_t) 63);
    uint16_t* V = R + jt * pt * tile;
    const ptrdiff_t blocks = (jt / 2) * (it / 2);
    /* The blocks of C go R's pair by pair, V's pairs within (C's columns
       written in order), unless the packed operands are more than L2 holds
       and V is the larger: then V's pair by pair, so that V is read once and
       R, the smaller, stays in L2 (wide's forward: V is W, 2 MiB; R the
       batch's 256 rows, 0.5 MiB). Walking V from L3 once for each pair of R
       ran at a seventh of the tiles' peak. */
    const int v_outer = (it + jt) * pt * tile * 2 > AMX_L2_BYTES && it > jt;
    if (threads < 1)
        threads = 1;
    #pragma omp parallel num_threads(threads) if (threads > 1 && blocks > 1)
    {
        /* R[j][h] (tiles [jt][pt]), then V[h][i] (tiles [it][pt]), each
           operand split among the threads on its own (no barrier between:
           the one below waits for both). One static split of R and V
           together gave one thread all of the smaller, R, and its tiles can
           cost more: in wide's first layer R is the batch's rows read
           through the table, from memory, and the other thread waited
           (forward 291 against 237 thousand cycles, weight step 169 against
           106: benchmarks/README.md). */
        for (int in_r = 1; in_r >= 0; in_r--) {
            const ptrdiff_t nt = in_r ? jt : it;
            const int by_rows = in_r ? (b_rows != NULL ? b_rows_j : sbj != 1)
                                     : sai != 1;     /* p contiguous */
            #pragma omp for schedule(static) nowait
            for (ptrdiff_t u = 0; u < nt * pt; u++) {
                /* tile (x, s) of R or V, taken in the order of the operand's
                   storage: where p is contiguous, x by x (each of a tile's rows
                   goes on where the tile before left it); where x is, s by s
                   (the same 32 rows, the next 64 bytes of each). Down the
                   columns of a row-major W, each tile's 32 rows were 32 new
                   pages (wide's products 9 % faster in order) */
                const ptrdiff_t xt = by_rows ? u / pt : u % nt, s = by_rows ? u % pt : u / nt;
                if (in_r)
                    amx_pack_tile(B, sbj, sbp, xt * AMX_T, n, s * AMX_KP, k, 0,
                                  R + (xt * pt + s) * tile, b_rows, b_rows_j);
                else
                    amx_pack_tile(A, sai, sap, xt * AMX_T, m, s * AMX_KP, k, 1,
                                  V + (xt * pt + s) * tile, NULL, 0);
            }
        }
        #pragma omp barrier
        struct amx_config cfg;
        float T[4][AMX_T][AMX_T] __attribute__((aligned(64)));
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int t = 0; t < 8; t++) {
            cfg.rows[t] = AMX_T;
            cfg.colsb[t] = 64;
        }
        if (!vdp)
            _tile_loadconfig(&cfg);
        #pragma omp for schedule(static)
        for (ptrdiff_t bq = 0; bq < blocks; bq++) {
            const ptrdiff_t tj = v_outer ? bq % (jt / 2) * 2 : bq / (it / 2) * 2;
            const ptrdiff_t ti = v_outer ? bq / (jt / 2) * 2 : bq % (it / 2) * 2;
            const uint16_t* r0 = R + tj * pt * tile;
            const uint16_t* r1 = r0 + pt * tile;
            const uint16_t* v0 = V + ti * pt * tile;
            const uint16_t* v1 = v0 + pt * tile;
            if (vdp) {
                amx_tiles_vdp(r0, v0, v1, pt, T[0], T[1]);
                amx_tiles_vdp(r1, v0, v1, pt, T[2], T[3]);
            } else {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (ptrdiff_t s = 0; s < pt; s++) {
                    _tile_loadd(4, r0 + s * tile, 64);
                    _tile_loadd(5, r1 + s * tile, 64);
                    _tile_loadd(6, v0 + s * tile, 64);
                    _tile_loadd(7, v1 + s * tile, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
                _tile_stored(0, T[0], 64);
                _tile_stored(1, T[1], 64);
                _tile_stored(2, T[2], 64);
                _tile_stored(3, T[3], 64);
            }
            for (int q = 0; q < 4; q++) {
                const ptrdiff_t i0 = (ti + (q & 1)) * AMX_T, j0 = (tj + (q >> 1)) * AMX_T;
                if (i0 < m && j0 < n)
                    amx_store(T[q], C, ldc, i0, j0, m, n, alpha, beta, bias, relu);
            }
        }
        if (!vdp)
            _tile_release();
    }
}

#else
#define FASTNN_AMX 0
static int fastnn_amx_available(void) { return 0; }
static int fastnn_vdpbf16_available(void) { return 0; }
static int fastnn_vdpbf16_preferred(void) { return 0; }
static ptrdiff_t fastnn_amx_scratch(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k) { return 0; }
static void fastnn_amx_gemm_epi(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                                const float* A, ptrdiff_t sai, ptrdiff_t sap, const float* B,
                                ptrdiff_t sbp, ptrdiff_t sbj, float beta, float* C,
                                ptrdiff_t ldc, float* scratch, int threads, const float* bias,
                                int relu, const int64_t* b_rows, int b_rows_j, int vdp) { }
#endif

#endif
