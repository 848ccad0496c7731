/* The machine's arithmetic peak: independent FMA chains, per core and on all threads.
 *
 *     python benchmarks/peak.py            (compiles this with cc -O2 -pthread, runs it)
 *     cc -O2 -pthread benchmarks/peak.c -o /tmp/peak && /tmp/peak [threads]
 *
 * Each kernel keeps independent accumulators (24 zmm, 12 ymm) in registers and runs
 * acc := acc * b + c on all of them in turn, so the FMA units never wait for a
 * previous result (an FMA's latency is 4 cycles on recent x86 cores and there
 * are up to 2 units: at least 8 chains are needed, more to be safe). The
 * kernels are compiled for their instruction sets with target attributes and
 * chosen at run time, so the program runs on any x86-64 and reports what the
 * CPU lacks. Output, one line per kernel: "name GFLOP/s-per-core GFLOP/s-all".
 *
 * FLOPs per instruction: AVX-512 vfmadd231ps 16 lanes x 2 = 32; AVX2 8 x 2 =
 * 16; AVX512_BF16 vdpbf16ps 16 lanes x 2 products x 2 = 64.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ACC 24     /* chains of the AVX-512 kernels (32 zmm registers) */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static volatile float sink;

#define REP12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define REP24(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) \
    X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)

__attribute__((target("avx512f")))
static double fma512(long iters)
{
#define DECL(i) __m512 a##i = _mm512_set1_ps(1.0f + (i) * 1e-3f);
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, b, c);
#define SUM(i) s = _mm512_add_ps(s, a##i);
    __m512 b = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f), s = _mm512_setzero_ps();
    REP24(DECL)
    for (long k = 0; k < iters; k++) {
        REP24(STEP)
        __asm__ volatile("" ::: "memory");
    }
    REP24(SUM)
    sink = _mm512_reduce_add_ps(s);
    return (double)iters * ACC * 32;
#undef DECL
#undef STEP
#undef SUM
}

__attribute__((target("avx2,fma")))
static double fma256(long iters)
{
    /* 12 chains: AVX2 has 16 ymm registers, and 24 accumulators would spill */
#define DECL(i) __m256 a##i = _mm256_set1_ps(1.0f + (i) * 1e-3f);
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, b, c);
#define SUM(i) s = _mm256_add_ps(s, a##i);
    __m256 b = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f), s = _mm256_setzero_ps();
    REP12(DECL)
    for (long k = 0; k < iters; k++) {
        REP12(STEP)
        __asm__ volatile("" ::: "memory");
    }
    REP12(SUM)
    float out[8];
    _mm256_storeu_ps(out, s);
    sink = out[0];
    return (double)iters * 12 * 16;
#undef DECL
#undef STEP
#undef SUM
}

__attribute__((target("avx512f,avx512bf16")))
static double dpbf16(long iters)
{
#define DECL(i) __m512 a##i = _mm512_set1_ps((i) * 1e-3f);
#define STEP(i) a##i = _mm512_dpbf16_ps(a##i, x, y);
#define SUM(i) s = _mm512_add_ps(s, a##i);
    /* tiny products keep the accumulators finite */
    __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-4f), _mm512_set1_ps(1e-4f));
    __m512bh y = x;
    __m512 s = _mm512_setzero_ps();
    REP24(DECL)
    for (long k = 0; k < iters; k++) {
        REP24(STEP)
        __asm__ volatile("" ::: "memory");
    }
    REP24(SUM)
    sink = _mm512_reduce_add_ps(s);
    return (double)iters * ACC * 64;
#undef DECL
#undef STEP
#undef SUM
}

typedef double (*kernel_fn)(long);

struct job {
    kernel_fn fn;
    long iters;
    pthread_barrier_t *start;
    double gflops;
};

static void *worker(void *arg)
{
    struct job *j = arg;
    pthread_barrier_wait(j->start);
    double t = now();
    double flops = j->fn(j->iters);
    j->gflops = flops / (now() - t) / 1e9;
    return NULL;
}

/* Best of 10 runs of the kernel on n threads at once: the sum of their rates. */
static double run(kernel_fn fn, long iters, int n)
{
    double best = 0;
    for (int r = 0; r < 10; r++) {
        pthread_t tid[256];
        struct job jobs[256];
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, n);
        for (int i = 0; i < n; i++) {
            jobs[i] = (struct job){fn, iters, &start, 0};
            pthread_create(&tid[i], NULL, worker, &jobs[i]);
        }
        double total = 0;
        for (int i = 0; i < n; i++) {
            pthread_join(tid[i], NULL);
            total += jobs[i].gflops;
        }
        pthread_barrier_destroy(&start);
        if (total > best)
            best = total;
    }
    return best;
}

/* Iterations that take about 0.05 s on one core. */
static long calibrate(kernel_fn fn)
{
    long iters = 1000;
    for (;;) {
        double t = now();
        fn(iters);
        double dt = now() - t;
        if (dt > 0.02)
            return (long)(iters * 0.05 / dt) + 1;
        iters *= 4;
    }
}

static void report(const char *name, const char *feature, int ok, kernel_fn fn, int threads)
{
    if (!ok) {
        printf("%-14s unsupported (no %s)\n", name, feature);
        return;
    }
    long iters = calibrate(fn);
    printf("%-14s %8.1f %8.1f\n", name, run(fn, iters, 1), run(fn, iters, threads));
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "threads must be 1..256\n");
        return 2;
    }
    __builtin_cpu_init();
    printf("# kernel       GFLOP/s: 1 core, %d thread(s)\n", threads);
    report("fp32-avx512", "avx512f", __builtin_cpu_supports("avx512f"), fma512, threads);
    report("fp32-avx2", "avx2/fma",
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"), fma256, threads);
    report("bf16-avx512", "avx512bf16", __builtin_cpu_supports("avx512bf16"), dpbf16, threads);
    return 0;
}
