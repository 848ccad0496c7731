"""fastnn._core: the compiled kernels of a feedforward network.

Legend: N = rows (samples) in a chunk, I = fan-in, O = fan-out, L = layers
(rows of the layer table), P = parameters, m = rows in a mini-batch. Images
are H x W x C, channels last (a batch is NHWC), so every sample is one
contiguous row of H*W*C entries and a layer's output is the next one's input
as it is. A convolution has a kh x kw window, strides (sh, sw), pt / pl rows
and columns of zeros at the top / left, F filters, an (OH, OW, F) output and
K = kh*kw*C entries per receptive field. Every array is C-contiguous and
row-major; samples are rows.

The layer table (``fastnn._kernels``; built by ``fastnn.plan.Plan``) has one
int64 row per layer: kind, activation, input and output shape, window,
stride, padding, and the offsets of the layer's weights and biases in the
flat parameter vector. ``keep[l]`` is the probability of keeping each unit
of layer l's input while training (inverted dropout; 1 = none). The epoch
walks the table.

Flat parameter vector: layer by layer, the weights in row-major order, then
the bias: a dense layer's W (I, O) and b (O,), a convolution's W (kh, kw,
C, F) (HWIO: as a (K, F) matrix it is the right operand of the im2col GEMM)
and b (F,). Optimizer state is rows of the same length: ``state[0]`` is the
gradient, ``state[1:]`` the optimizer's own buffers (velocity, Adam's
moments, Rprop's previous gradient and step sizes).

A mini-batch is processed in chunks of at most ``capacity`` rows (the
workspace's size); their gradients accumulate in ``state[0]`` before one
optimizer step. When a batch fits in one chunk and the optimizer is plain
SGD without L1, the step is fused into the weight-gradient GEMMs instead
(alpha = -lr/m, beta = 1 - lr*l2/n) and ``state[0]`` is not touched.

A convolution is im2col + GEMM: the rows of the im2col matrix are output
pixels (N*OH*OW of them, K entries each), so ``im2col(A) @ W + b`` is the
NHWC output itself. The rows are done in blocks of ``block`` rows sized so
that a block of the im2col matrix stays in the L2 cache; the backward pass
computes the input gradient (GEMM with W^T, then col2im) block by block
before any weight changes, then the weight gradient, rebuilding each
im2col block (cheaper than keeping the whole matrix: it would not fit in
the cache). The first layer's input gradient is never computed.

Workspace of a chunk (``workspace_size``): the activations A_0 .. A_L, for
each activation with dropout its mask and masked copy, a delta buffer per
activation but A_0, a bias-gradient (column-sum) buffer per layer with
parameters, the argmax indices of each max-pool, one im2col block, for a
bfloat16 network the rounded (or, on AMX, packed) operands of its largest
product (gemm_bf16, bf16_scratch), and the targets and sample weights of the
chunk.

A bfloat16 network (``bf16=True``: float32 parameters and activations) sends
every matrix product through gemm_bf16, which rounds both operands to
bfloat16 and accumulates in float32, on AMX tiles where the CPU has them
(amxgemm.h), else emulated with sgemm; it never takes smallgemm.h's float32
kernels (they would skip the rounding), nor train_units_impl.

Each kernel comes in two layers: a ``cdef ... noexcept nogil`` function that
trusts its arguments, and a ``def`` wrapper that checks shapes, codes and
indices and raises *before* releasing the GIL. Row-major arrays go to
column-major BLAS by swapping the operands: row-major C = A @ B is
column-major C^T = B^T @ A^T.
"""
from cython cimport floating
from libc.float cimport DBL_MIN, FLT_MIN
from libc.math cimport ceil, exp, isfinite, log, logf, pow, sqrt, sqrtf, tanh, tanhf
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from cython.parallel cimport parallel, prange
from scipy.linalg.cython_blas cimport dgemm, sgemm

# Activation codes; fastnn.activations.ACTIVATIONS holds the same numbers.
cpdef enum:
    IDENTITY = 0
    SIGMOID = 1
    TANH = 2
    RELU = 3
    LEAKY_RELU = 4
    SOFTMAX = 5

# Loss codes; fastnn.losses.LOSSES holds the same numbers.
cpdef enum:
    MSE = 0
    CROSS_ENTROPY = 1

# Optimizer codes; fastnn.optimizers.OPTIMIZERS holds the same numbers.
cpdef enum:
    SGD = 0
    MOMENTUM = 1
    NESTEROV = 2
    ADAM = 3
    RPROP = 4
    ADAMW = 5

# Rows of optimizer state each optimizer needs (the gradient included).
cdef int STATE_ROWS[6]
STATE_ROWS[:] = [1, 2, 2, 3, 3, 3]

# Slots of the hyper-parameter array (fastnn._kernels has the same names).
cpdef enum:
    H_LR = 0
    H_L2 = 1            # lambda2 / n_train
    H_L1 = 2            # lambda1 / n_train
    H_MOMENTUM = 3
    H_BETA1 = 4
    H_BETA2 = 5
    H_EPS = 6
    H_ETA_MINUS = 7
    H_ETA_PLUS = 8
    H_STEP_MIN = 9
    H_STEP_MAX = 10
    H_WEIGHT_DECAY = 11  # adamw's decoupled weight decay
    H_CLIP_NORM = 12    # the gradient's largest 2-norm (0: no clipping)
    N_HYPER = 13

# Added to the norm before dividing by it when clipping (as torch does).
cdef double CLIP_EPS = 1e-6

# Input augmentations done while gathering a batch.
cpdef enum:
    NO_AUGMENT = 0
    SHIFT = 1

# What train_epoch returns as its status.
cpdef enum:
    DONE = 0
    DIVERGED = 1
    STOPPED = 2

# The control array shared with the caller while an epoch runs:
# control[STOP_REQUEST] != 0 asks the loop to stop before its next batch,
# control[ROWS_DONE] counts the rows trained so far (for progress displays),
# control[STEPS] counts optimizer steps across epochs (Adam's t).
cpdef enum:
    STOP_REQUEST = 0
    ROWS_DONE = 1
    STEPS = 2
    N_CONTROL = 3

# Random streams: a row's key mixes the epoch seed, the row's position in
# the epoch and a stream number (0 = augmentation, l = dropout on A_l for
# l >= 1, INPUT_STREAM = dropout on the input A_0).
cpdef enum:
    MAX_STREAMS = 1024
    INPUT_STREAM = 1023

# Layer kinds; fastnn._kernels holds the same numbers.
cpdef enum:
    DENSE = 0
    CONV2D = 1
    MAXPOOL2D = 2
    L2POOL2D = 3
    N_KINDS = 4

# Columns of the layer table; fastnn._kernels holds the same numbers.
cpdef enum:
    T_KIND = 0
    T_ACT = 1
    T_IN_H = 2
    T_IN_W = 3
    T_IN_C = 4
    T_OUT_H = 5
    T_OUT_W = 6
    T_OUT_C = 7
    T_KH = 8
    T_KW = 9
    T_SH = 10
    T_SW = 11
    T_PT = 12
    T_PL = 13
    T_W_OFF = 14
    T_B_OFF = 15
    N_COLS = 16

ctypedef fused input_t:
    uint8_t
    float
    double

cdef enum:
    N_ACTIVATIONS = 6
    N_LOSSES = 2
    N_OPTIMIZERS = 6

# BLAS takes 32-bit dimensions; int32 argmax indices, too.
cdef Py_ssize_t INT_MAX = 2147483647

# Entries of one im2col block: 32768 floats are 128 kB, which stays in the
# L2 cache beside the GEMM's packed panels. A block has at least MIN_BLOCK
# rows, however long they are, so that its GEMM is not a sliver: BLAS packs
# W once per block, and at MNIST's second layer (K = 500) 65-row blocks
# spent 6-8 % more time than 128-row ones (benchmarks/README.md).
cdef Py_ssize_t COL_ENTRIES = 32768
cdef Py_ssize_t MIN_BLOCK = 128
# A convolution whose window rows hold fewer entries than this (kw*C: 5 for
# MNIST's first layer) builds its im2col matrix transposed, where a copy is
# a run of output pixels along a row of the image; it is only done where no
# input gradient is needed (the first layer), as col2im reads rows.
cdef Py_ssize_t SHORT_SPAN = 16
# Parameters a team thread sums and steps at a time (in cache between passes).
cdef Py_ssize_t STEP_BLOCK = 4096


# --------------------------------------------------------------------------
# Layout: each layer's geometry, and where its parameters and buffers live.
# --------------------------------------------------------------------------

cdef struct Geometry:
    # one row of the layer table, decoded, and the buffers of that layer
    int kind
    int act
    Py_ssize_t in_h, in_w, in_c, out_h, out_w, out_c
    Py_ssize_t kh, kw, sh, sw, pt, pl
    Py_ssize_t n_in              # entries of a sample's input, in_h*in_w*in_c
    Py_ssize_t n_out             # entries of a sample's output
    Py_ssize_t pixels            # out_h*out_w
    Py_ssize_t K                 # convolution: kh*kw*in_c
    Py_ssize_t block             # convolution: im2col rows per block
    bint col_t                   # convolution: im2col transposed (K, block), see im2col_t
    Py_ssize_t w_off, b_off      # offsets of W and b in params (-1: none)
    Py_ssize_t wp_off, ldw       # dense: W's offset in a padded copy (-1: none), its row stride
    Py_ssize_t colsum_off        # bias gradient (out_c entries), -1 if none
    Py_ssize_t idx_off           # max-pool: int32 argmax of each output entry, -1 if none
    bint deferred                # dense, in a team's SGD epoch: W stepped after the batch
                                 # by the team, rows split (team_defer); else False
    const float* wpack           # dense, in predict: W packed once for every chunk
                                 # (fastnn_sg_pack_bp; predict_packs), else NULL


cdef struct Layout:
    Py_ssize_t n_layers          # L
    Py_ssize_t capacity          # N: rows the workspace holds
    Py_ssize_t n_params          # P
    Geometry* layer              # layer[l], l = 0..L-1
    Py_ssize_t* a_off            # offset of A_l in the workspace, l = 0..L
    Py_ssize_t* in_off           # what layer l reads: A_l, or its dropped-out copy
    Py_ssize_t* mask_off         # dropout mask of A_l (0 or 1/keep), -1 if none
    Py_ssize_t* d_off            # delta of A_l, l = 1..L; -1 for A_0
    double* keep                 # keep probability of A_l (1 = no dropout)
    Py_ssize_t col_off           # the im2col block
    Py_ssize_t bf_off            # bfloat16 network: gemm_bf16's operand scratch; -1: float
    Py_ssize_t y_off             # chunk targets
    Py_ssize_t sw_off            # chunk sample weights
    Py_ssize_t work_size         # entries the workspace needs
    # A_0 read in place (a bfloat16 dense network's products in training,
    # train_epoch_impl): row r of the chunk is x_src + x_rows[r] * I_0, not
    # in the workspace; x_rows NULL: A_0 is in the workspace
    const float* x_src
    const int64_t* x_rows
    # the targets as class labels (n,): a chunk's rows of them are made
    # one-hot as they are gathered (gather_targets); NULL: Y's rows
    const int64_t* labels


cdef void geometry_init(Geometry* g, const int64_t* row, Py_ssize_t capacity) noexcept nogil:
    """Decode one table row (its buffer offsets are left to layout_init)."""
    g.deferred = False
    g.wpack = NULL
    g.kind = <int> row[T_KIND]
    g.act = <int> row[T_ACT]
    g.in_h = row[T_IN_H]
    g.in_w = row[T_IN_W]
    g.in_c = row[T_IN_C]
    g.out_h = row[T_OUT_H]
    g.out_w = row[T_OUT_W]
    g.out_c = row[T_OUT_C]
    g.kh = row[T_KH]
    g.kw = row[T_KW]
    g.sh = row[T_SH]
    g.sw = row[T_SW]
    g.pt = row[T_PT]
    g.pl = row[T_PL]
    g.w_off = row[T_W_OFF]
    g.b_off = row[T_B_OFF]
    g.n_in = g.in_h * g.in_w * g.in_c
    g.pixels = g.out_h * g.out_w
    g.n_out = g.pixels * g.out_c
    g.K = g.kh * g.kw * g.in_c
    g.block = 0
    g.col_t = False
    g.colsum_off = -1
    g.idx_off = -1
    g.wp_off = -1
    g.ldw = g.out_c
    if g.kind == CONV2D:
        g.block = COL_ENTRIES // g.K
        if g.block < MIN_BLOCK:
            g.block = MIN_BLOCK
        if g.block > capacity * g.pixels:
            g.block = capacity * g.pixels


cdef int layout_init(Layout* lay, const int64_t* table, Py_ssize_t n_layers,
                     Py_ssize_t capacity, const double* keep, bint bf16) noexcept nogil:
    """Fill lay from the layer table (n_layers rows of N_COLS) and the keep
    probability of each layer's input (NULL: no dropout); for a bfloat16
    network (bf16), room for gemm_bf16's rounded operands. Returns -1 if
    malloc failed."""
    cdef Py_ssize_t l, a = 0, col = 0, bf = 0, L1 = n_layers + 1
    cdef Geometry* g
    lay.n_layers = n_layers
    lay.capacity = capacity
    lay.layer = <Geometry*> malloc(n_layers * sizeof(Geometry)
                                   + 5 * L1 * sizeof(Py_ssize_t) + L1 * sizeof(double))
    if lay.layer == NULL:
        return -1
    lay.a_off = <Py_ssize_t*> (lay.layer + n_layers)
    lay.in_off = lay.a_off + L1
    lay.mask_off = lay.in_off + L1
    lay.d_off = lay.mask_off + L1
    lay.keep = <double*> (lay.d_off + L1)
    lay.n_params = 0
    for l in range(n_layers):
        g = &lay.layer[l]
        geometry_init(g, table + l * N_COLS, capacity)
        g.col_t = l == 0 and g.kind == CONV2D and g.kw * g.in_c < SHORT_SPAN
        if g.b_off >= 0:
            lay.n_params = g.b_off + g.out_c
        if g.kind == CONV2D and conv_scratch(g) > col:
            col = conv_scratch(g)
        if bf16 and bf16_scratch(g, capacity) > bf:
            bf = bf16_scratch(g, capacity)
    # A_0 .. A_L
    for l in range(n_layers + 1):
        lay.a_off[l] = a
        a += capacity * (lay.layer[0].n_in if l == 0 else lay.layer[l - 1].n_out)
    # dropout: a mask and the masked copy the next layer reads
    for l in range(n_layers + 1):
        lay.keep[l] = 1
        if keep != NULL and l < n_layers:
            lay.keep[l] = keep[l]
        lay.in_off[l] = lay.a_off[l]
        lay.mask_off[l] = -1
        if lay.keep[l] < 1:
            lay.mask_off[l] = a
            lay.in_off[l] = a + capacity * (lay.layer[0].n_in if l == 0 else lay.layer[l - 1].n_out)
            a = lay.in_off[l] + (lay.in_off[l] - lay.mask_off[l])
    # deltas, then each layer's bias gradient and argmax indices
    lay.d_off[0] = -1
    for l in range(1, n_layers + 1):
        g = &lay.layer[l - 1]
        lay.d_off[l] = a
        a += capacity * g.n_out
        if g.b_off >= 0:
            g.colsum_off = a
            a += g.out_c
        if g.kind == MAXPOOL2D:
            # int32 entries in a floating buffer: one entry holds one index
            g.idx_off = a
            a += capacity * g.n_out
    lay.col_off = a
    a += col
    lay.bf_off = a if bf16 else -1
    a += bf
    lay.y_off = a
    lay.sw_off = lay.y_off + capacity * lay.layer[n_layers - 1].n_out
    lay.work_size = lay.sw_off + capacity
    lay.x_src = NULL
    lay.x_rows = NULL
    lay.labels = NULL
    return 0


# Floats in 64 bytes: a padded W's rows start on a cache line (pad_layout).
cdef Py_ssize_t LINE_FLOATS = 16


cdef Py_ssize_t pad_layout(Layout* lay) noexcept nogil:
    """Place each dense layer's W (I, O) in a padded copy whose rows are
    ldw = O rounded up to 16 floats apart, each W starting on a 64-byte line
    of the copy; returns the copy's entries. A row of 30 or 100 floats
    straddles cache lines, and so does nearly every 64-byte load and store
    of it; padded, none does (smallgemm.h's products on [784, 100] ran 1.2x
    faster, benchmarks/README.md)."""
    cdef Py_ssize_t l, size = 0
    cdef Geometry* g
    for l in range(lay.n_layers):
        g = &lay.layer[l]
        if g.kind == DENSE:
            g.ldw = (g.out_c + LINE_FLOATS - 1) // LINE_FLOATS * LINE_FLOATS
            g.wp_off = size
            size += g.n_in * g.ldw
    return size


cdef void copy_padded(Layout* lay, float* params, float* padded, bint into) noexcept nogil:
    """into: each dense W of params into its place in padded (pad_layout;
    the columns past O are 0), else back from there into params."""
    cdef Py_ssize_t l, i, j, O
    cdef Geometry* g
    for l in range(lay.n_layers):
        g = &lay.layer[l]
        if g.wp_off < 0:
            continue
        O = g.out_c
        for i in range(g.n_in):
            if into:
                memcpy(padded + g.wp_off + i * g.ldw, params + g.w_off + i * O, O * sizeof(float))
                for j in range(O, g.ldw):
                    padded[g.wp_off + i * g.ldw + j] = 0
            else:
                memcpy(params + g.w_off + i * O, padded + g.wp_off + i * g.ldw, O * sizeof(float))


cdef void layout_free(Layout* lay) noexcept nogil:
    free(lay.layer)
    lay.layer = NULL


# --------------------------------------------------------------------------
# Teams: threads that share one call of predict, each taking whole chunks
# (chunks are independent, so the threads never wait for each other). A
# team of one is the serial code.
# --------------------------------------------------------------------------

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static inline int fastnn_team_size(void) { return omp_get_num_threads(); }
    static inline int fastnn_thread_id(void) { return omp_get_thread_num(); }
    /* an orphaned barrier: it binds to the parallel region of the caller */
    static void fastnn_barrier(void) {
        #pragma omp barrier
    }
    #else
    static inline int fastnn_team_size(void) { return 1; }
    static inline int fastnn_thread_id(void) { return 0; }
    static void fastnn_barrier(void) { }
    #endif
    """
    int team_size "fastnn_team_size"() noexcept nogil
    int thread_id "fastnn_thread_id"() noexcept nogil
    void barrier "fastnn_barrier"() noexcept nogil


cdef extern from *:
    """
    /* *counter += 1, atomically; returns the value before */
    static inline int64_t fastnn_take(int64_t* counter) {
        return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
    }
    """
    int64_t take "fastnn_take"(int64_t* counter) noexcept nogil


cdef extern from *:
    """
    /* Denormals (|x| < 1.2e-38 in float32) flushed to zero on this thread:
       MXCSR's FTZ (results) and DAZ (inputs) bits, SSE's, so on any x86-64.
       Returns the previous MXCSR for fastnn_restore_fp; elsewhere nothing. */
    #if defined(__x86_64__) || defined(_M_X64)
    #include <xmmintrin.h>
    static inline unsigned int fastnn_flush_denormals(void) {
        unsigned int old = _mm_getcsr();
        _mm_setcsr(old | 0x8040);
        return old;
    }
    static inline void fastnn_restore_fp(unsigned int old) { _mm_setcsr(old); }
    #else
    static inline unsigned int fastnn_flush_denormals(void) { return 0; }
    static inline void fastnn_restore_fp(unsigned int old) { (void) old; }
    #endif
    """
    unsigned int flush_denormals "fastnn_flush_denormals"() noexcept nogil
    void restore_fp "fastnn_restore_fp"(unsigned int old) noexcept nogil


cdef struct Team:
    int id          # this thread, 0 .. size - 1
    int size        # threads in the team


cdef Team SOLO      # a team of one
SOLO.id = 0
SOLO.size = 1


cdef extern from *:
    """
    #include <pthread.h>
    #include <sched.h>
    #include <stdint.h>
    #include <time.h>
    /* Move the calling thread to the n-th of the CPUs it may run on other
       than `skip` (-1: none skipped), then let it run on all of them again:
       a busy thread stays where it is. With `wrap`, n counts round those
       CPUs; without, a thread with no n-th CPU stays. (_GNU_SOURCE:
       Python's pyconfig.h.) */
    static void fastnn_move_to(int n, int skip, int wrap) {
    #if defined(__linux__) && defined(CPU_SETSIZE)
        cpu_set_t mask, one;
        int count = 0;
        if (pthread_getaffinity_np(pthread_self(), sizeof mask, &mask) != 0)
            return;
        for (int c = 0; c < CPU_SETSIZE; c++)
            count += CPU_ISSET(c, &mask) && c != skip;
        if (count == 0 || (!wrap && n >= count))
            return;
        n %= count;
        for (int c = 0, seen = 0; c < CPU_SETSIZE; c++) {
            if (CPU_ISSET(c, &mask) && c != skip && seen++ == n) {
                CPU_ZERO(&one);
                CPU_SET(c, &one);
                if (pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0)
                    pthread_setaffinity_np(pthread_self(), sizeof mask, &mask);
                return;
            }
        }
    #endif
    }

    /* Thread t of a team to the t-th CPU it may run on (team_join). */
    static void fastnn_spread(int t) {
        fastnn_move_to(t, -1, 0);
    }

    /* The CPU the calling thread runs on now, or -1 where that is unknown. */
    static int fastnn_current_cpu(void) {
    #if defined(__linux__)
        return sched_getcpu();
    #else
        return -1;
    #endif
    }

    /* The start of a parallel region whose threads take work in turn
       (team_settle): thread t > 0 of `size`, if it finds itself on
       thread 0's CPU (master_cpu, read before the region), moves off it,
       then counts itself in `arrived`; thread 0 waits up to `seconds` for
       the others to have done so, and if they have not, yields its CPU
       once. */
    static void fastnn_settle(int t, int size, int master_cpu, int64_t* arrived,
                              double seconds) {
        struct timespec t0, now;
        if (size <= 1)
            return;
        if (t != 0) {
            if (master_cpu >= 0 && fastnn_current_cpu() == master_cpu)
                fastnn_move_to(t - 1, master_cpu, 1);   /* off thread 0's CPU */
            __atomic_fetch_add(arrived, 1, __ATOMIC_RELEASE);
            return;
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        while (__atomic_load_n(arrived, __ATOMIC_ACQUIRE) < size - 1) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((now.tv_sec - t0.tv_sec) + 1e-9 * (now.tv_nsec - t0.tv_nsec) > seconds) {
                sched_yield();
                return;
            }
    #if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
    #endif
        }
    }
    """
    void spread "fastnn_spread"(int t) noexcept nogil
    void settle "fastnn_settle"(int t, int size, int master_cpu, int64_t* arrived,
                                double seconds) noexcept nogil
    int current_cpu "fastnn_current_cpu"() noexcept nogil


cdef void team_join(Team* team) noexcept nogil:
    """This thread's place in the current OpenMP team of a training epoch,
    whose threads meet at a barrier every batch. A thread starts on the CPU
    of the one that created it, and the kernel moves it to an idle one only
    later: two threads on one CPU of two took the first 500 batches of 10
    rows of [784, 30, 10] at turns, and the epoch ran at half the speed of
    one thread (benchmarks/README.md). So each thread moves itself to a CPU
    of its own once (`spread`), and is free to move again from there. (A
    new team's threads start only once libgomp's creating thread stops
    spinning for them: fastnn/_openmp.py sets how long.)"""
    team.id = thread_id()
    team.size = team_size()
    if team.size > 1:
        spread(team.id)


# How long thread 0 of a forward's or a scan's team waits for the others to
# start before it yields its CPU once (team_settle), in seconds.
cdef double SETTLE_SECONDS = 20e-6
cdef bint settle_on = True


def set_team_settle(bint on):
    """Whether the teams of predict and of a check for NaN settle as they
    start (team_settle; the default), or start as libgomp places them;
    returns the previous setting. The results are the same bits either
    way."""
    global settle_on
    previous = settle_on
    settle_on = on
    return previous


cdef void team_settle(Team* team, int master_cpu, int64_t* arrived) noexcept nogil:
    """The start of a team whose threads take chunks of work in turn
    (predict's, a check of X for NaN): a thread that finds itself on the
    CPU of thread 0 (master_cpu, current_cpu() before the region) moves
    off it, and thread 0 waits up to SETTLE_SECONDS for the others to
    start, then yields its CPU once if they have not. A thread on a CPU of
    its own stays there, where its caches are.

    libgomp wakes a thread of the team that has slept (0.5 s after the last
    forward) with a futex, and Linux may queue it on thread 0's CPU, where
    it waits behind thread 0 until the kernel moves it. On 2 vCPUs of an
    AMD EPYC (Zen 5), forwards of [784, 256, 128, 10] on 10,000 rows 0.5 s
    apart: in 5 of 25 the second thread started on the first's CPU, 2.2-4.4
    ms after it, and those forwards took 17.6-18.1 ms, where 16 others took
    12.4-14.0. A queued thread runs as soon as thread 0 yields, and moves
    off (benchmarks/README.md)."""
    if settle_on:
        settle(team.id, team.size, master_cpu, arrived, SETTLE_SECONDS)


cdef void settle_this_thread(int master_cpu, int64_t* arrived) noexcept nogil:
    """team_settle for the calling thread of the current OpenMP team."""
    cdef Team team
    team.id = thread_id()
    team.size = team_size()
    team_settle(&team, master_cpu, arrived)


# --------------------------------------------------------------------------
# Scalar helpers: one source for float and double.
# --------------------------------------------------------------------------

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* exp(x) for float32 in plain arithmetic, so GCC vectorises the loops that
       call it (libm's expf is a function call per element). Cody-Waite range
       reduction x = n ln2 + r, |r| <= ln2/2, then Cephes' degree-6 polynomial
       for exp(r), scaled by 2^n built in the exponent bits: within 1 ulp of
       the exact value on [-87.33, 88.37]. Above, +inf (as expf); below, 0
       (where expf gives denormals under 1.2e-38, then 0). */
    static inline float fastnn_expf(float x) {
        /* written as straight-line selects, without branches, so that the
           loops calling it vectorise */
        float c = x < -87.3365f ? -87.3365f : x;
        c = c > 88.3762626647949f ? 88.3762626647949f : c;
        float t = c * 1.44269504088896341f;
        float n = (t + 12582912.0f) - 12582912.0f;   /* round to nearest: 1.5 * 2^23 */
        float r = c - n * 0.693359375f;
        r = r - n * -2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        int32_t bits = ((int32_t)n + 127) << 23;
        float scale;
        memcpy(&scale, &bits, sizeof scale);
        float e = p * scale;
        e = x > 88.3762626647949f ? __builtin_inff() : e;
        e = x < -87.3365f ? 0.0f : e;
        return e;
    }

    /* The float32 sigmoid loop, compiled for AVX-512, AVX2 and the baseline,
       the best chosen when the module loads (GCC's function multiversioning;
       other compilers get the baseline). The same operations in the same
       order on every path (built with -ffp-contract=off), so the results
       do not depend on the CPU. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    #define FASTNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define FASTNN_CLONES
    #endif
    FASTNN_CLONES static void fastnn_sigmoid_f(float* a, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++)
            a[i] = 1.0f / (1.0f + fastnn_expf(-a[i]));
    }

    /* One row of float32 inverted dropout: entry j is kept where its uniform
       u_j = (mix64(key + (j + 1) G) >> 11) / 2^53 (`uniform` in _core.pyx) is
       below keep, which for these 53-bit integers is exactly
       (mix64(...) >> 11) < below, below = ceil(keep 2^53); so the same masks
       as the scalar loop, in 64-bit integer arithmetic that AVX-512's
       vpmullq (x86-64-v4) and AVX2 vectorise. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    #define FASTNN_CLONES_DQ __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
    #else
    #define FASTNN_CLONES_DQ
    #endif
    FASTNN_CLONES_DQ static void fastnn_dropout_row_f(const float* a, float* mask, float* out,
                                                      Py_ssize_t n, uint64_t key,
                                                      uint64_t below, float scale) {
        for (Py_ssize_t j = 0; j < n; j++) {
            uint64_t z = key + ((uint64_t) j + 1) * 0x9E3779B97F4A7C15ULL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
            z = z ^ (z >> 31);
            float m = (z >> 11) < below ? scale : 0.0f;
            mask[j] = m;
            out[j] = a[j] * m;
        }
    }

    /* Adam's float32 step (optimizer_step_impl), compiled for AVX-512, AVX2
       and the baseline: the square root and two divisions per parameter
       took 1.2 ns a parameter on SSE2, in L2 too. The moments are updated in
       double and rounded once, as the Cython loop it replaces computed them
       (its constant 1 - b1 is a double there), so the bits are the same:
         m := m + (1 - b1)(g - m);  v := b2 v + (1 - b2) g g;
         p := p - step (m / (sqrt(v) / bc2 + eps)). */
    FASTNN_CLONES static void fastnn_adam_f(float* p, const float* g, float* m, float* v,
                                            Py_ssize_t n, float b1, float b2, float step,
                                            float bc2, float eps) {
        const double c1 = 1.0 - b1, c2 = 1.0 - b2;
        for (Py_ssize_t i = 0; i < n; i++) {
            m[i] = (float) (m[i] + c1 * (g[i] - m[i]));
            v[i] = (float) (b2 * v[i] + (c2 * g[i]) * g[i]);
            const float denom = sqrtf(v[i]) / bc2 + eps;
            p[i] = p[i] - step * (m[i] / denom);
        }
    }

    /* The bias gradient's column sums of a float32 D (N, O), columns [j0, j1):
       each column summed over the rows in order, as the Cython loop did,
       16 columns a vector on AVX-512 (4 on the baseline's SSE2). */
    FASTNN_CLONES static void fastnn_colsum_f(const float* __restrict D, Py_ssize_t N,
                                              Py_ssize_t O, Py_ssize_t j0, Py_ssize_t j1,
                                              float* __restrict colsum) {
        for (Py_ssize_t j = j0; j < j1; j++)
            colsum[j] = 0.0f;
        for (Py_ssize_t r = 0; r < N; r++) {
            const float* d = D + r * O;
            for (Py_ssize_t j = j0; j < j1; j++)
                colsum[j] += d[j];
        }
    }

    /* D := D * relu'(z) for float32, relu' = [a > 0] from the stored a. */
    FASTNN_CLONES static void fastnn_relu_grad_f(const float* __restrict a,
                                                 float* __restrict d, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++)
            d[i] = a[i] > 0.0f ? d[i] : 0.0f;
    }
    """
    float fastnn_expf(float x) noexcept nogil
    void colsum_f "fastnn_colsum_f"(const float* D, Py_ssize_t N, Py_ssize_t O, Py_ssize_t j0,
                                    Py_ssize_t j1, float* colsum) noexcept nogil
    void relu_grad_f "fastnn_relu_grad_f"(const float* a, float* d, Py_ssize_t n) noexcept nogil
    void sigmoid_f "fastnn_sigmoid_f"(float* a, Py_ssize_t n) noexcept nogil
    void dropout_row_f "fastnn_dropout_row_f"(const float* a, float* mask, float* out,
                                               Py_ssize_t n, uint64_t key, uint64_t below,
                                               float scale) noexcept nogil
    void adam_f "fastnn_adam_f"(float* p, const float* g, float* m, float* v, Py_ssize_t n,
                                float b1, float b2, float step, float bc2,
                                float eps) noexcept nogil


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return fastnn_expf(x)
    else:
        return exp(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline double _safe_log(floating x) noexcept nogil:
    # log clipped at the smallest normal number, so a saturated unit costs a
    # large finite loss instead of inf (its delta a - y is unaffected). A NaN
    # stays NaN (the test is written so that it fails for NaN), so a
    # diverging run is caught by the loss check.
    if floating is float:
        return logf(FLT_MIN if x < FLT_MIN else x)
    else:
        return log(DBL_MIN if x < DBL_MIN else x)


cdef inline floating _sign(floating x) noexcept nogil:
    return (x > 0) - (x < 0)


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    """splitmix64's finaliser: a bijective hash with good avalanche."""
    z = (z ^ (z >> 30)) * <uint64_t> 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t> 0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline uint64_t row_key(uint64_t seed, int64_t position, Py_ssize_t stream) noexcept nogil:
    """The random key of one row of the epoch for one stream (counter-based,
    so a row's randomness does not depend on how batches are chunked)."""
    return mix64(seed ^ mix64(<uint64_t> position * MAX_STREAMS + <uint64_t> stream))


cdef inline double uniform(uint64_t key, Py_ssize_t j) noexcept nogil:
    """The j-th uniform number in [0, 1) of a row key (53 random bits)."""
    return (mix64(key + (<uint64_t> j + 1) * <uint64_t> 0x9E3779B97F4A7C15) >> 11) * (1.0 / 9007199254740992.0)


cdef extern from "smallgemm.h":
    int sg_available "fastnn_sg_available"() noexcept nogil
    int sg_set_isa "fastnn_sg_set_isa"(int isa) noexcept nogil
    int sg_get_isa "fastnn_sg_get_isa"() noexcept nogil
    Py_ssize_t sg_set_block_bytes "fastnn_sg_set_block_bytes"(Py_ssize_t bytes) noexcept nogil
    void sg_gemm "fastnn_sg_gemm"(Py_ssize_t M, Py_ssize_t Nc, Py_ssize_t K, float alpha,
                                  const float* A, Py_ssize_t sai, Py_ssize_t sak,
                                  const float* B, Py_ssize_t ldb, float beta,
                                  float* C, Py_ssize_t ldc) noexcept nogil
    void sg_gemm_unpacked "fastnn_sg_gemm_unpacked"(Py_ssize_t M, Py_ssize_t Nc, Py_ssize_t K,
                                                    float alpha, const float* A,
                                                    Py_ssize_t sai, Py_ssize_t sak,
                                                    const float* B, Py_ssize_t ldb, float beta,
                                                    float* C, Py_ssize_t ldc) noexcept nogil
    void sg_gemm_forward "fastnn_sg_gemm_forward"(Py_ssize_t M, Py_ssize_t Nc, Py_ssize_t K,
                                                  const float* A, Py_ssize_t sai, Py_ssize_t sak,
                                                  const float* B, Py_ssize_t ldb, float beta,
                                                  float* C, Py_ssize_t ldc) noexcept nogil
    void sg_nt "fastnn_sg_nt"(Py_ssize_t N, Py_ssize_t I, Py_ssize_t O, const float* D,
                              const float* W, Py_ssize_t ldw, float* out,
                              Py_ssize_t ldo) noexcept nogil
    void sg_maxpool "fastnn_sg_maxpool"(
        const float* src, float* out, int32_t* idx, Py_ssize_t C, Py_ssize_t OH,
        Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
        Py_ssize_t W) noexcept nogil
    Py_ssize_t sg_bp_size "fastnn_sg_bp_size"(Py_ssize_t Nc, Py_ssize_t K) noexcept nogil
    void sg_pack_bp "fastnn_sg_pack_bp"(Py_ssize_t Nc, Py_ssize_t K, const float* B,
                                        Py_ssize_t sbk, Py_ssize_t sbj, float* Bp) noexcept nogil
    void sg_gemm_bp "fastnn_sg_gemm_bp"(Py_ssize_t M, Py_ssize_t Nc, Py_ssize_t K,
                                        const float* A, Py_ssize_t sai, Py_ssize_t sak,
                                        const float* Bp, float beta, float* C,
                                        Py_ssize_t ldc) noexcept nogil
    void sg_gemm_rows "fastnn_sg_gemm_rows"(Py_ssize_t M, Py_ssize_t Nc, const float** rows,
                                            Py_ssize_t nseg, Py_ssize_t seglen,
                                            Py_ssize_t sstride, const float* Bp, float beta,
                                            float* C, Py_ssize_t ldc) noexcept nogil
    void sg_transpose_bias "fastnn_sg_transpose_bias"(
        Py_ssize_t R, Py_ssize_t C, const float* src, Py_ssize_t lds, const float* bias,
        float* dst, Py_ssize_t ldd) noexcept nogil


# Chunks of at most small_rows rows take the register-blocked float32 kernels
# of smallgemm.h for their dense layers (when the CPU has AVX2 and FMA), larger
# ones BLAS: the crossovers measured in benchmarks/README.md ("Small batches").
# With the AVX2 kernels (Zen 1): at 10 rows they win on every dense config, at
# 16 they lose on [784, 256, 128, 10], at 32 on all but [784, 30, 10]. With the
# AVX-512 ones (Emerald Rapids): up to 32 rows they win where each layer's W
# has at most SMALL_WEIGHTS entries (2 MiB: [784, 256, 128, 10] at batch 24
# 1.42x, at 32 1.08x, at 48 0.97x; [784, 100, 10] at 32 1.27x), and lose on a
# 1024 x 1024 layer from 16 rows on (0.71x), which keeps the kernels up to
# SMALL_ROWS_ANY rows there.
cdef Py_ssize_t SMALL_ROWS_ANY = 12
cdef Py_ssize_t SMALL_WEIGHTS = 1 << 19
cdef bint SMALL_GEMM = sg_available() != 0
cdef Py_ssize_t SMALL_ROWS_DEFAULT = 32 if sg_get_isa() == 2 else SMALL_ROWS_ANY
cdef Py_ssize_t small_rows = SMALL_ROWS_DEFAULT if SMALL_GEMM else 0


# A first convolution layer (col_t) in float32 takes smallgemm.h's kernels
# for its two products instead of BLAS, whose packing dominates at its short
# K (25 for 5x5 on one channel): see conv_forward_impl, conv_backward_impl.
cdef bint small_conv = SMALL_GEMM
# A later convolution layer (not col_t) in float32 takes them too, where its
# W (K, F) has at most CONV_SG_WEIGHTS entries: BLAS packed each im2col
# block again for each of its three products (9 % of conv2-relu's profile
# at batch 64, K = 500, F = 40), where smallgemm.h reads the block in place
# and packs W once per batch (conv_forward_impl). Fits on two threads
# (Emerald Rapids, AVX-512): K x F of 20,000 1.07x, 18,432 1.19x, 73,728
# 1.09x, 294,912 1.01x. With AVX2 (Zen 3), conv2-relu's second layer on 32
# samples: forward 1.35x (windows in place), backward 1.2x; with the weight
# gradients' forms of conv_backward_impl, run.py's conv2-relu at batch 10
# 1.27-1.78x, at 64 1.09-1.31x (benchmarks/README.md).
cdef Py_ssize_t CONV_SG_WEIGHTS = 1 << 17


cdef inline bint conv_kernels(const Geometry* g) noexcept nogil:
    """Whether a convolution layer's W is small enough for smallgemm.h's
    packed kernels (AVX-512 or AVX2), and they are on (conv_sg,
    conv_in_place; the caller checks the dtype and that the network is not
    bfloat16)."""
    return small_conv and sg_get_isa() >= 1 and g.K * g.out_c <= CONV_SG_WEIGHTS


cdef inline bint conv_sg(const Geometry* g) noexcept nogil:
    """Whether a float32 convolution layer other than a col_t one takes
    smallgemm.h's kernels for its products."""
    return conv_kernels(g) and not g.col_t


# Windows a call of sg_gemm_rows takes (10 of its 12-row blocks), from a
# stack array of their starts.
cdef enum:
    WINDOW_ROWS = 120


cdef bint conv_in_place_on = True     # set_conv_in_place


cdef inline bint conv_in_place(const Geometry* g) noexcept nogil:
    """Whether a float32 convolution layer's forward reads each window in
    place (sg_gemm_rows) rather than copy it (im2col, im2col_t) first: on
    smallgemm.h's packed kernels (conv_kernels), where every window lies
    inside the image (no padding reaches it)."""
    return (conv_in_place_on and conv_kernels(g)
            and g.pt == 0 and g.pl == 0 and (g.out_h - 1) * g.sh + g.kh <= g.in_h
            and (g.out_w - 1) * g.sw + g.kw <= g.in_w)


cdef extern from "fusedgemm.h":
    Py_ssize_t SGK_ROWS
    Py_ssize_t sgk_stride(Py_ssize_t m) noexcept nogil
    void sgk_rows "fastnn_sgk_rows"(const void* X, int u8, Py_ssize_t K, const int64_t* rows,
                                    Py_ssize_t m, const int64_t* next, Py_ssize_t n_next,
                                    float* XT, float* A) noexcept nogil
    void spin_barrier "fastnn_spin_barrier"(int64_t* arrived, int64_t* generation,
                                            int64_t T) noexcept nogil
    double team_round_trip_ns "fastnn_team_round_trip"(int64_t* ball, int t, int T,
                                                       int n) noexcept nogil
    void sgk_forward "fastnn_sgk_forward"(Py_ssize_t m, Py_ssize_t nc, Py_ssize_t K,
                                          const float* XT, const float* const* xr,
                                          const float* const* next, Py_ssize_t n_next,
                                          const float* W, Py_ssize_t ldw,
                                          float* Z, Py_ssize_t ldz) noexcept nogil
    void sgk_step "fastnn_sgk_step"(Py_ssize_t m, Py_ssize_t nc, Py_ssize_t K, float alpha,
                                    const float* XT, const float* const* xr, const float* D,
                                    Py_ssize_t ldd, float beta, float* W,
                                    Py_ssize_t ldw) noexcept nogil
    void sgk2_forward "fastnn_sgk2_forward"(Py_ssize_t m, Py_ssize_t ncp, Py_ssize_t K,
                                            const float* const* xr, const float* const* next,
                                            Py_ssize_t n_next, const float* W, Py_ssize_t ldw,
                                            float* Z, Py_ssize_t ldz) noexcept nogil
    void sgk2_step "fastnn_sgk2_step"(Py_ssize_t m, Py_ssize_t nc, Py_ssize_t ncp, Py_ssize_t K,
                                      float alpha, const float* const* xr, const float* D,
                                      Py_ssize_t ldd, float beta, float* W,
                                      Py_ssize_t ldw) noexcept nogil


cdef inline Py_ssize_t conv_scratch(const Geometry* g) noexcept nogil:
    """Entries of a convolution's scratch: its im2col block, and for a layer
    with col_t (which may take the small-GEMM path) also its output block
    transposed (out_c, block) and its weight gradient (K, out_c),
    or W packed at its start (conv_in_place); for another, W packed
    (conv_sg, conv_in_place) after the block, where its weight gradient
    transposed (out_c, K) goes too once W is no longer needed (a panel
    of the packing holds at least as many entries)."""
    if g.col_t:
        # or W packed for a forward reading the windows in place (conv_in_place)
        return max(g.block * g.K + g.block * g.out_c + g.out_c * g.K,
                   sg_bp_size(g.out_c, g.K))
    # and W packed for smallgemm.h's kernels (conv_sg, conv_in_place), as
    # itself or transposed, or the weight gradient transposed, where they
    # take the layer
    if not conv_kernels(g):
        return g.block * g.K
    return g.block * g.K + max(sg_bp_size(g.out_c, g.K), sg_bp_size(g.K, g.out_c))


cdef extern from *:
    """
    /* bfloat16 rounding of float32 values, kept in float32: round to nearest,
       ties to even, on the bit pattern (add 0x7FFF plus the lowest kept bit,
       clear the low 16 bits): past the largest bfloat16 it gives inf, and
       subnormals round on their own grid. A NaN stays a NaN: its sign and
       upper payload, made quiet. fastnn._reference.round_bf16 is the same,
       bit for bit. Straight-line integer code, so the loop vectorises. */
    static inline float fastnn_round_bf16(float x) {
        uint32_t u, r;
        memcpy(&u, &x, sizeof u);
        r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
        r = (u & 0x7FFFFFFFu) > 0x7F800000u ? ((u & 0xFFFF0000u) | 0x00400000u) : r;
        memcpy(&x, &r, sizeof x);
        return x;
    }

    /* dst (rows x cols, column-major, leading dimension rows) := the
       bfloat16 rounding of src (column-major, leading dimension ld), whose
       column j is src + j * ld, or src + col[j] * ld through a table (col
       not NULL: a batch's rows read in place). */
    static void fastnn_bf16_copy(const float* src, Py_ssize_t ld, Py_ssize_t rows,
                                 Py_ssize_t cols, float* dst, const int64_t* col) {
        for (Py_ssize_t j = 0; j < cols; j++) {
            const float* s = src + (col != NULL ? (Py_ssize_t) col[j] : j) * ld;
            for (Py_ssize_t i = 0; i < rows; i++)
                dst[j * rows + i] = fastnn_round_bf16(s[i]);
        }
    }
    """
    float bf16_round "fastnn_round_bf16"(float x) noexcept nogil
    void bf16_copy "fastnn_bf16_copy"(const float* src, Py_ssize_t ld, Py_ssize_t rows,
                                      Py_ssize_t cols, float* dst,
                                      const int64_t* col) noexcept nogil


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fastnn_default_threads(void) { return omp_get_max_threads(); }
    #else
    static int fastnn_default_threads(void) { return 1; }
    #endif
    """
    int default_threads "fastnn_default_threads"() noexcept nogil


cdef extern from "amxgemm.h":
    int amx_ok "fastnn_amx_available"() noexcept nogil
    int vdp_ok "fastnn_vdpbf16_available"() noexcept nogil
    int vdp_preferred "fastnn_vdpbf16_preferred"() noexcept nogil
    Py_ssize_t amx_scratch "fastnn_amx_scratch"(Py_ssize_t m, Py_ssize_t n,
                                                Py_ssize_t k) noexcept nogil
    void amx_gemm_epi "fastnn_amx_gemm_epi"(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                            float alpha, const float* A, Py_ssize_t sai,
                                            Py_ssize_t sap, const float* B, Py_ssize_t sbp,
                                            Py_ssize_t sbj, float beta, float* C,
                                            Py_ssize_t ldc, float* scratch, int threads,
                                            const float* bias, int relu,
                                            const int64_t* b_rows, int b_rows_j,
                                            int vdp) noexcept nogil


# How gemm_bf16 multiplies: on AMX tiles (amxgemm.h) where the CPU and the
# OS have them; else on AVX512_BF16's VDPBF16PS on the same packed tiles
# (amx_tiles_vdp) where the CPU issues it at twice float32's FMA rate (AMD's
# Zen 4 and 5: vdp_preferred; a Zen 5 trained [784, 1024, 1024, 10] at 1.62x
# the emulation and the two-conv net at 1.37x); else emulated with float32
# sgemm (Intel's cores without AMX, not measured: on an Emerald Rapids, where
# VDPBF16PS issued at float32's rate, it ran at 0.77x and 0.72x the emulation).
# set_bf16_kernel picks any of them the CPU has (the tests run each).
cdef enum:
    BF16_EMULATED = 0
    BF16_AMX = 1
    BF16_VDP = 2

BF16_KERNELS = {"emulated": BF16_EMULATED, "amx": BF16_AMX, "avx512_bf16": BF16_VDP}


cdef int bf16_kernel = (BF16_AMX if amx_ok() else
                       BF16_VDP if vdp_preferred() else BF16_EMULATED)
# The threads amxgemm.h's product may take: the BLAS's thread count, which
# fastnn.blas passes on whenever it changes it (set_bf16_threads): 1 while
# the BLAS is held to one thread (a team, whose threads each run their own).
cdef int bf16_threads = default_threads()


# A VDPBF16PS product of fewer multiply-adds than this runs on one thread
# (bf16_product_threads): on a Zen 5 (2026-12-06, two threads), a team for
# every product trained [784, 100, 10] at batch 10 at 0.18x the emulation
# and [784, 256, 128, 10] at batch 64 at 0.60x, where one thread ran them at
# 1.04x and 2.08x; wide's products (205 million multiply-adds and more) and
# the two-conv net's largest gain from the team. AMX's products keep the
# team at every size (not measured at small batches).
cdef Py_ssize_t VDP_TEAM_WORK = 1 << 25
cdef Py_ssize_t vdp_team_work = VDP_TEAM_WORK


cdef inline int bf16_product_threads(int m, int n, int k) noexcept nogil:
    """The threads amxgemm.h's product of m x k by k x n takes: bf16_threads,
    or one for a VDPBF16PS product below vdp_team_work multiply-adds."""
    if bf16_kernel == BF16_VDP and <Py_ssize_t> m * n * k < vdp_team_work:
        return 1
    return bf16_threads


# A bfloat16 network's passes between its products (activation, its
# derivative, the bias gradient) split over those same threads from this many
# entries on: the products alone ran on the team, and these passes on one
# thread while libgomp's other thread spun (9.5 % of a profile of wide's fit).
cdef Py_ssize_t EW_SPLIT = 1 << 15


cdef inline int ew_threads(const floating* bf, Py_ssize_t entries) noexcept nogil:
    """The threads a pass of `entries` entries between a bfloat16 network's
    products takes (bf: its scratch, else NULL): amxgemm.h's team, where its
    products run natively on more than one thread; else 1. Each thread takes
    whole rows (or columns) and computes them as one thread does: the same
    bits on any count."""
    if floating is float:
        if bf != NULL and bf16_kernel != BF16_EMULATED and bf16_threads > 1 and entries >= EW_SPLIT:
            return bf16_threads
    return 1


cdef inline Py_ssize_t max3(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c) noexcept nogil:
    if b > a:
        a = b
    return c if c > a else a


cdef Py_ssize_t bf16_scratch(const Geometry* g, Py_ssize_t N) noexcept nogil:
    """Entries of gemm_bf16's scratch for the products of one layer over a
    chunk of N rows: the most that one product's two operands hold (m*k +
    k*n), among the forward, input-gradient and weight-gradient products.
    Dense: A (N, I), W (I, O), D (N, O); convolution: W (K, F), an im2col
    block (block, K) and a block of D (block, F). Pooling has no product."""
    cdef Py_ssize_t I = g.n_in, O = g.n_out, K = g.K, F = g.out_c, B = g.block
    if g.kind == DENSE:
        return max(max3(N * I + I * O, N * O + I * O, N * I + N * O), bf16_packed(N, I, O))
    if g.kind == CONV2D:
        return max(max3(B * K + K * F, B * F + K * F, B * F + B * K), bf16_packed(B, K, F))
    return 0


cdef Py_ssize_t bf16_packed(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c) noexcept nogil:
    """The most scratch amxgemm.h's packed operands need for a product of
    these three sizes, whichever is summed over; 0 where neither AMX nor
    AVX512_BF16 can multiply them."""
    if not amx_ok() and not vdp_ok():
        return 0
    return max3(amx_scratch(a, b, c), amx_scratch(a, c, b), amx_scratch(b, c, a))


# A forward outside training (predict) in float32 takes smallgemm.h's kernels
# for a dense layer of at most SMALL_WEIGHTS weights at any chunk size: with
# B packed, a chunk of 1,024 rows runs at 0.87-0.95x OpenBLAS's
# single-thread speed with AVX-512 (Emerald Rapids) and 1.02-1.05x with AVX2
# (Zen 3), and each row's outputs are then computed the same whatever the
# chunk, the thread count or the calling thread (a team of fastnn's threads
# takes whole chunks, with no BLAS call to share): [784, 256, 128, 10] 1.12x
# the BLAS path (AVX-512), 1.11x (AVX2, Zen 3). A larger W stays on BLAS,
# whose threaded kernels won there: [784, 1024, 1024, 10] 0.94x (see
# benchmarks/README.md). AVX2's unpacked kernel lost to OpenBLAS at these
# sizes (Zen 1; 0.78x on Zen 3).
cdef bint small_predict_on = True


cdef inline bint small_predict(Py_ssize_t weights) noexcept nogil:
    """Whether predict takes smallgemm.h at any chunk size for a dense layer
    of `weights` entries in W."""
    return small_predict_on and sg_get_isa() >= 1 and weights <= SMALL_WEIGHTS


cdef inline bint small(Py_ssize_t rows, Py_ssize_t weights) noexcept nogil:
    """Whether a dense layer's products over a chunk of `rows` rows use
    smallgemm.h; `weights`: the entries of its W (I x O)."""
    return rows <= small_rows and (rows <= SMALL_ROWS_ANY or weights <= SMALL_WEIGHTS)


cdef void gemm_bf16(char transa, char transb, int m, int n, int k, float alpha,
                    const float* a, int lda, const float* b, int ldb, float beta,
                    float* c, int ldc, float* scratch, const int64_t* b_cols) noexcept nogil:
    """Column-major C := alpha bf16(op(A)) bf16(op(B)) + beta C, accumulated
    in float32: every matrix product of a bfloat16 network, here and only
    here. C, alpha and beta stay float32.

    Emulated: A and B are rounded to bfloat16 (round_bf16, still float32)
    into scratch (m*k + k*n entries, sized by bf16_scratch), then multiplied
    by sgemm; products of bfloat16 values are exact in float32, so this is
    what a bf16 dot-product instruction computes, up to the order of the
    sums. Native (bf16_kernel AMX or VDP): amxgemm.h packs the operands to 16 bits
    and multiplies them on AMX tiles, 16 x 16 x 32 multiply-adds an
    instruction (op(A)[i, p] = A[i*sai + p*sap], op(B)[p, j] = B[p*sbp + j*sbj]).

    b_cols: NULL, or B's columns (as B is stored) read through a table:
    column c at b + b_cols[c] * ldb. B is then a training batch's rows read
    in place from the training set rather than gathered first."""
    if bf16_kernel != BF16_EMULATED:
        amx_gemm_epi(m, n, k, alpha, a, 1 if transa == c'N' else lda,
                     lda if transa == c'N' else 1, b, 1 if transb == c'N' else ldb,
                     ldb if transb == c'N' else 1, beta, c, ldc, scratch,
                     bf16_product_threads(m, n, k), NULL, 0, b_cols, transb == c'N',
                     bf16_kernel == BF16_VDP)
        return
    cdef int ar = m if transa == c'N' else k        # op(A) is m x k: A is ar x ac
    cdef int ac = k if transa == c'N' else m
    cdef int br = k if transb == c'N' else n        # op(B) is k x n: B is br x bc
    cdef int bc = n if transb == c'N' else k
    cdef float* a16 = scratch
    cdef float* b16 = scratch + <Py_ssize_t> ar * ac
    bf16_copy(a, lda, ar, ac, a16, NULL)
    bf16_copy(b, ldb, br, bc, b16, b_cols)
    if ar < 1:
        ar = 1
    if br < 1:
        br = 1
    sgemm(&transa, &transb, &m, &n, &k, &alpha, a16, &ar, b16, &br, &beta, c, &ldc)


cdef void gemm_bf16_bias(int m, int n, int k, const float* a, int lda, const float* b,
                         int ldb, const float* bias, bint relu, float* c, int ldc,
                         float* scratch, const int64_t* b_cols) noexcept nogil:
    """Column-major C := bf16(A) bf16(B) + bias (the same (m,) in each
    column), then max(., 0) if relu: a bfloat16 dense layer's forward, A
    (m, k), B (k, n), neither transposed. Natively the bias and ReLU are
    applied as each tile of C is stored (amxgemm.h's epilogue); emulated, C
    is prefilled with the bias for gemm_bf16's beta = 1 and ReLU is a pass
    (a if a > 0 else 0, as activate_flat): the same bits either way as a
    prefilled product and an activation pass. b_cols: B's columns through a
    table, as in gemm_bf16."""
    cdef Py_ssize_t i, j
    cdef float* col
    if bf16_kernel != BF16_EMULATED:
        amx_gemm_epi(m, n, k, 1, a, 1, lda, b, 1, ldb, 0, c, ldc, scratch,
                     bf16_product_threads(m, n, k), bias, relu, b_cols, 1,
                     bf16_kernel == BF16_VDP)
        return
    for j in range(n):
        for i in range(m):
            c[j * ldc + i] = bias[i]
    gemm_bf16(c'N', c'N', m, n, k, 1, a, lda, b, ldb, 1, c, ldc, scratch, b_cols)
    if relu:
        for j in range(n):
            col = c + j * ldc
            for i in range(m):
                col[i] = col[i] if col[i] > 0 else 0


cdef inline void gemm(char transa, char transb, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb, floating beta,
                      floating* c, int ldc, floating* bf) noexcept nogil:
    """Column-major C := alpha op(A) op(B) + beta C (BLAS xGEMM); with bf
    (not NULL: a bfloat16 network's scratch), gemm_bf16."""
    if floating is float:
        if bf != NULL:
            gemm_bf16(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bf, NULL)
            return
        sgemm(&transa, &transb, &m, &n, &k, &alpha, <float*> a, &lda,
              <float*> b, &ldb, &beta, c, &ldc)
    else:
        dgemm(&transa, &transb, &m, &n, &k, &alpha, <double*> a, &lda,
              <double*> b, &ldb, &beta, c, &ldc)


# --------------------------------------------------------------------------
# Kernels (nogil, unchecked).
# --------------------------------------------------------------------------

cdef void gather_rows(const input_t* X, Py_ssize_t I, const int64_t* rows,
                      Py_ssize_t N, floating* out) noexcept nogil:
    """out[r] := X[rows[r]] as floating; uint8 pixels are divided by 255."""
    cdef Py_ssize_t r, j
    cdef const input_t* src
    cdef floating* dst
    for r in range(N):
        src = X + rows[r] * I
        dst = out + r * I
        if input_t is uint8_t:
            for j in range(I):
                dst[j] = (<floating> src[j]) / (<floating> 255)
        else:
            for j in range(I):
                dst[j] = <floating> src[j]


cdef extern from *:
    """
    static inline void fastnn_prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }
    """
    void prefetch "fastnn_prefetch"(const void* p) noexcept nogil


cdef void prefetch_rows(const void* X, Py_ssize_t row_bytes, const int64_t* rows,
                        Py_ssize_t N) noexcept nogil:
    """Ask the CPU to start loading rows X[rows[0..N]] (row_bytes each) into
    cache, a batch before they are gathered. The rows of a shuffled epoch
    are scattered over X, so gathering them waits on memory unless they were
    requested a batch earlier. Only each row's first two lines are requested
    (a burst of every line stalls on the CPU's few line-fill buffers; the
    hardware prefetcher streams the rest), or its first and last byte for a
    row shorter than that: the targets, whose one-hot rows for 60,000 MNIST
    labels take 2.4 MB, out of L2 (their gather's load was 3 % of a
    two-thread epoch of [784, 30, 10] at batch 10 before they were
    requested too)."""
    cdef Py_ssize_t r
    cdef Py_ssize_t second = 64 if row_bytes > 64 else row_bytes - 1
    cdef const char* row
    for r in range(N):
        row = <const char*> X + rows[r] * row_bytes
        prefetch(row)
        prefetch(row + second)


cdef void shift_offsets(uint64_t seed, int64_t position, int* dx, int* dy) noexcept nogil:
    """The random shift of the row at this position: dx, dy each in -2..2."""
    cdef uint64_t h = mix64(row_key(seed, position, 0))
    dx[0] = <int> ((h >> 32) % 5) - 2
    dy[0] = <int> ((h & <uint64_t> 0xFFFFFFFF) % 5) - 2




cdef void gather_shifted(const input_t* X, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                         const int64_t* rows, Py_ssize_t N, floating* out, uint64_t seed,
                         int64_t first) noexcept nogil:
    """out[r] := X[rows[r]], an H x W x C image, shifted by a random (dx, dy)
    in -2..2 (Nielsen's expanded training data), every channel alike;
    pixels shifted in from outside are 0. Row r is the epoch's row number
    first + r."""
    cdef Py_ssize_t r, y, x, c, sy, sx, I = H * W * C
    cdef int dx, dy
    cdef const input_t* src
    cdef floating* dst
    for r in range(N):
        shift_offsets(seed, first + r, &dx, &dy)
        src = X + rows[r] * I
        dst = out + r * I
        for y in range(H):
            sy = y - dy
            for x in range(W):
                sx = x - dx
                if 0 <= sy < H and 0 <= sx < W:
                    for c in range(C):
                        if input_t is uint8_t:
                            dst[(y * W + x) * C + c] = (
                                (<floating> src[(sy * W + sx) * C + c]) / (<floating> 255))
                        else:
                            dst[(y * W + x) * C + c] = <floating> src[(sy * W + sx) * C + c]
                else:
                    for c in range(C):
                        dst[(y * W + x) * C + c] = 0


cdef void gather_targets(const floating* Y, const int64_t* labels, Py_ssize_t n_out,
                         const int64_t* rows, Py_ssize_t n, floating* Yb) noexcept nogil:
    """Yb := the targets of rows: Y[rows], or with labels (Y unused) one-hot
    rows, Yb[r, j] = 1 if j == labels[rows[r]] else 0 (labels checked in
    [0, n_out) by train_epoch). rows (n,), Y (., n_out), labels (.,), Yb (n, n_out)."""
    cdef Py_ssize_t r
    if labels == NULL:
        gather_rows(Y, n_out, rows, n, Yb)
        return
    memset(Yb, 0, n * n_out * sizeof(floating))
    for r in range(n):
        Yb[r * n_out + labels[rows[r]]] = 1


cdef void gather_chunk(const input_t* X, const floating* Y, const int64_t* labels,
                       const floating* sample_weight,
                       const int64_t* rows, Py_ssize_t n, Geometry* g0, Py_ssize_t n_out,
                       int augment, uint64_t seed, int64_t first, floating* A0, floating* Yb,
                       floating* swb) noexcept nogil:
    """A chunk's rows: A0 := X[rows] (shifted when augment == SHIFT; row r is
    the epoch's row first + r), Yb := their targets (gather_targets: Y[rows],
    or labels one-hot), swb := sample_weight[rows] (swb NULL: no weights; A0
    NULL: the rows are read in place, x_in_place).
    rows (n,), A0 (n, I), Yb (n, O), swb (n,)."""
    cdef Py_ssize_t r
    if A0 == NULL:
        pass
    elif augment == SHIFT:
        gather_shifted(X, g0.in_h, g0.in_w, g0.in_c, rows, n, A0, seed, first)
    else:
        gather_rows(X, g0.n_in, rows, n, A0)
    gather_targets(Y, labels, n_out, rows, n, Yb)
    if swb != NULL:
        for r in range(n):
            swb[r] = sample_weight[rows[r]]


cdef bint linear_forward_impl(const floating* A, const floating* W,
                              const floating* b, floating* Z, Py_ssize_t N,
                              Py_ssize_t I, Py_ssize_t O, int act, floating* bf,
                              bint predicting, const int64_t* a_rows,
                              const float* Wp) noexcept nogil:
    """Z := A @ W + b, and act(Z) where it returns True.  A (N, I),
    W (I, O), b (O,), Z (N, O).

    The bias is folded into the GEMM: Z's rows are prefilled with b and
    GEMM runs with beta = 1; a bfloat16 network's product (gemm_bf16_bias)
    adds b, and applies act if it is ReLU (or the identity), itself.
    Otherwise the caller applies act (the function returns False). bf: a
    bfloat16 network's scratch (gemm_bf16), else NULL; a bfloat16 network
    never takes smallgemm.h's kernels. predicting: a forward outside
    training, which takes smallgemm.h's kernels at any N where
    small_predict() says so. a_rows: NULL, or (with bf) A's rows read in
    place through a table, row r at A + a_rows[r] * I (train_epoch_impl's
    batch, not gathered). Wp: NULL, or (predicting, float32) W packed by
    fastnn_sg_pack_bp, which the product then reads (the same bits).
    """
    cdef Py_ssize_t r, j
    if floating is float:
        if bf != NULL:
            # column-major Z^T (O, N) := W^T (O, I) @ A^T (I, N) + b
            gemm_bf16_bias(<int> O, <int> N, <int> I, W, <int> O, A, <int> I, b,
                           act == RELU, Z, <int> O, bf, a_rows)
            return act == RELU or act == IDENTITY
    for r in range(N):
        for j in range(O):
            Z[r * O + j] = b[j]
    if floating is float:
        if bf == NULL and predicting and Wp != NULL:
            sg_gemm_bp(N, O, I, A, I, 1, Wp, 1, Z, O)             # W packed once (predict)
            return False
        if bf == NULL and predicting and small_predict(I * O):
            sg_gemm_forward(N, O, I, A, I, 1, W, O, 1, Z, O)     # B packed for many rows
            return False
        if bf == NULL and small(N, I * O):
            sg_gemm(N, O, I, 1, A, I, 1, W, O, 1, Z, O)
            return False
    # column-major Z^T (O, N) += W^T (O, I) @ A^T (I, N)
    gemm(c'N', c'N', <int> O, <int> N, <int> I, 1, W, <int> O, A, <int> I,
         1, Z, <int> O, bf)
    return False


cdef void activate_flat(int act, floating slope, floating* a, Py_ssize_t n) noexcept nogil:
    """a := act(a) for an elementwise activation, in place. a (n,)."""
    cdef Py_ssize_t i
    cdef floating one = 1       # typed, or Cython computes 1 / (1 + e) in double
    if act == SIGMOID:
        if floating is float:
            sigmoid_f(a, n)
        else:
            for i in range(n):
                a[i] = one / (one + _exp(-a[i]))
    elif act == TANH:
        for i in range(n):
            a[i] = _tanh(a[i])
    elif act == RELU:
        for i in range(n):
            a[i] = a[i] if a[i] > 0 else 0
    elif act == LEAKY_RELU:
        for i in range(n):
            a[i] = a[i] if a[i] > 0 else slope * a[i]
    # IDENTITY: nothing to do


cdef void softmax_rows(floating* A, Py_ssize_t O, Py_ssize_t r0,
                       Py_ssize_t r1) noexcept nogil:
    """softmax(z)_j = exp(z_j - max z) / sum_k exp(z_k - max z), rows r0..r1 of A (N, O)."""
    cdef Py_ssize_t r, j
    cdef floating mx, s
    cdef floating* row
    for r in range(r0, r1):
        row = A + r * O
        mx = row[0]
        for j in range(1, O):
            if row[j] > mx:
                mx = row[j]
        s = 0
        for j in range(O):
            row[j] = _exp(row[j] - mx)
            s += row[j]
        for j in range(O):
            row[j] = row[j] / s


cdef void activate_impl(int act, floating slope, floating* A, Py_ssize_t N,
                        Py_ssize_t O) noexcept nogil:
    """A := act(A), in place, row by row. A (N, O)."""
    if act == SOFTMAX:
        softmax_rows(A, O, 0, N)
    else:
        activate_flat(act, slope, A, N * O)


cdef void dropout_impl(const floating* A, floating* mask, floating* out,
                       Py_ssize_t N, Py_ssize_t O, double keep, uint64_t seed,
                       int64_t first, Py_ssize_t stream) noexcept nogil:
    """Inverted dropout: mask := [u < keep] / keep, out := A * mask.

    Each unit is kept with probability keep and scaled by 1/keep, so the
    expected activation is unchanged; row r is the epoch's row first + r.
    """
    cdef Py_ssize_t r, j
    cdef uint64_t key
    cdef floating scale = <floating> (1 / keep)
    # u < keep for u = h / 2^53, h < 2^53 an integer: h < ceil(keep 2^53)
    cdef uint64_t below = <uint64_t> ceil(keep * 9007199254740992.0)
    for r in range(N):
        key = row_key(seed, first + r, stream)
        if floating is float:
            dropout_row_f(A + r * O, mask + r * O, out + r * O, O, key, below, scale)
            continue
        for j in range(O):
            mask[r * O + j] = scale if uniform(key, j) < keep else 0
            out[r * O + j] = A[r * O + j] * mask[r * O + j]


cdef void activate_rows(int act, floating slope, floating* A, Py_ssize_t N, Py_ssize_t O,
                        int T) noexcept nogil:
    """activate_impl on T threads (ew_threads), each its share of the rows."""
    cdef Py_ssize_t r0, r1
    if T <= 1:
        activate_impl(act, slope, A, N, O)
        return
    with parallel(num_threads=T):
        r0 = share(N, thread_id(), team_size(), 1)
        r1 = share(N, thread_id() + 1, team_size(), 1)
        activate_impl(act, slope, A + r0 * O, r1 - r0, O)


cdef void activation_grad_rows(int act, floating slope, const floating* A, floating* D,
                               Py_ssize_t N, Py_ssize_t O, int T) noexcept nogil:
    """activation_grad_impl on T threads (ew_threads), each its share of the
    rows.  A, D (N, O)."""
    cdef Py_ssize_t r0, r1
    if T <= 1:
        activation_grad_impl(act, slope, A, D, N * O)
        return
    with parallel(num_threads=T):
        r0 = share(N, thread_id(), team_size(), 1)
        r1 = share(N, thread_id() + 1, team_size(), 1)
        activation_grad_impl(act, slope, A + r0 * O, D + r0 * O, (r1 - r0) * O)


cdef inline floating act_grad(int act, floating slope, floating a, floating d) noexcept nogil:
    """d * act'(z) for one entry, with act' written in terms of the stored
    a = act(z): sigmoid' = a (1 - a), tanh' = 1 - a^2, relu' = [a > 0],
    leaky_relu' = 1 if a > 0 else slope (slope >= 0 keeps the sign of z).
    Softmax is an output-only activation; its Jacobian is applied in
    output_delta_impl."""
    if act == SIGMOID:
        return d * (a * (1 - a))
    if act == TANH:
        return d * (1 - a * a)
    if act == RELU:
        return d if a > 0 else 0
    if act == LEAKY_RELU:
        return d if a > 0 else slope * d
    return d


cdef void activation_grad_impl(int act, floating slope, const floating* A,
                               floating* D, Py_ssize_t n) noexcept nogil:
    """D := D * act'(z) elementwise (act_grad), one loop per activation so
    that each is compiled, and vectorised, for its own formula."""
    cdef Py_ssize_t i
    if act == SIGMOID:
        for i in range(n):
            D[i] = act_grad(SIGMOID, slope, A[i], D[i])
    elif act == TANH:
        for i in range(n):
            D[i] = act_grad(TANH, slope, A[i], D[i])
    elif act == RELU:
        if floating is float:
            relu_grad_f(A, D, n)
            return
        for i in range(n):
            D[i] = act_grad(RELU, slope, A[i], D[i])
    elif act == LEAKY_RELU:
        for i in range(n):
            D[i] = act_grad(LEAKY_RELU, slope, A[i], D[i])


cdef double output_delta_impl(int loss, int act, floating slope,
                              const floating* A, const floating* Y,
                              const floating* sw, floating* D, Py_ssize_t N,
                              Py_ssize_t O) noexcept nogil:
    """D := w_x dC_x/dz^L for each row x; returns sum_x w_x C_x.

    w_x is the sample weight (sw NULL: all 1).
    mse:            C_x = 1/2 ||a - y||^2,   delta = (a - y) * act'(z)
    cross_entropy:  delta = a - y, exactly, for the two pairings allowed:
      sigmoid output, C_x = -sum_j y_j log a_j + (1 - y_j) log(1 - a_j)
      softmax output, C_x = -sum_j y_j log a_j
    For mse on a softmax output the softmax Jacobian gives
      delta_j = a_j ((a - y)_j - sum_k (a - y)_k a_k).
    """
    cdef Py_ssize_t r, j
    cdef double total = 0, cost
    cdef floating diff, dot, w
    cdef const floating* a
    cdef const floating* y
    cdef floating* d
    for r in range(N):
        a = A + r * O
        y = Y + r * O
        d = D + r * O
        cost = 0
        if loss == MSE:
            for j in range(O):
                diff = a[j] - y[j]
                cost += 0.5 * (<double> diff) * diff
                d[j] = diff
            if act == SOFTMAX:
                dot = 0
                for j in range(O):
                    dot += d[j] * a[j]
                for j in range(O):
                    d[j] = a[j] * (d[j] - dot)
            else:
                activation_grad_impl(act, slope, a, d, O)
        elif act == SIGMOID:        # binary cross-entropy
            for j in range(O):
                cost -= y[j] * _safe_log(a[j]) + (1 - y[j]) * _safe_log(1 - a[j])
                d[j] = a[j] - y[j]
        else:                       # categorical cross-entropy, softmax output
            for j in range(O):
                if y[j] != 0:
                    cost -= y[j] * _safe_log(a[j])
                d[j] = a[j] - y[j]
        if sw != NULL:
            w = sw[r]
            cost *= w
            for j in range(O):
                d[j] = d[j] * w
        total += cost
    return total


cdef Py_ssize_t count_correct(const floating* A, const floating* Y,
                              Py_ssize_t N, Py_ssize_t O) noexcept nogil:
    """Rows whose predicted class is the target's: argmax (first maximum)
    for several outputs, a threshold at 0.5 for one."""
    cdef Py_ssize_t r, j, ka, ky, hits = 0
    cdef const floating* a
    cdef const floating* y
    for r in range(N):
        a = A + r * O
        y = Y + r * O
        if O == 1:
            hits += (a[0] > 0.5) == (y[0] > 0.5)
            continue
        ka = 0
        ky = 0
        for j in range(1, O):
            if a[j] > a[ka]:
                ka = j
            if y[j] > y[ky]:
                ky = j
        hits += ka == ky
    return hits


cdef void hidden_delta_impl(const floating* D_next, const floating* W_next,
                            int act, floating slope, const floating* A,
                            const floating* mask, floating* out, Py_ssize_t N,
                            Py_ssize_t I, Py_ssize_t O, floating* bf) noexcept nogil:
    """out := (D_next @ W_next^T) * act'(z) [* mask].  delta^l = (delta^{l+1} W^{l+1 T}) . act'(z^l)

    D_next (N, O), W_next (I, O), A, mask and out (N, I); mask is the
    dropout mask of A (NULL: none); bf as in linear_forward_impl.
    """
    cdef Py_ssize_t i
    if floating is float and small(N, I * O) and bf == NULL:
        sg_nt(N, I, O, D_next, W_next, O, out, I)
    else:
        # column-major out^T (I, N) = W_next (I, O) @ D_next^T (O, N)
        gemm(c'T', c'N', <int> I, <int> N, <int> O, 1, W_next, <int> O, D_next,
             <int> O, 0, out, <int> I, bf)
    activation_grad_rows(act, slope, A, out, N, I, ew_threads(bf, N * I))
    if mask != NULL:
        for i in range(N * I):
            out[i] = out[i] * mask[i]




cdef void bias_update_impl(const floating* D, floating alpha, floating beta_b,
                           floating* b, floating* colsum, Py_ssize_t N,
                           Py_ssize_t O) noexcept nogil:
    """b := beta_b b + alpha sum_rows(D).  D (N, O), b and colsum (O,)."""
    bias_range_impl(D, alpha, beta_b, b, colsum, N, O, 0, O)


cdef void bias_range_impl(const floating* D, floating alpha, floating beta_b,
                          floating* b, floating* colsum, Py_ssize_t N, Py_ssize_t O,
                          Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """b_j := beta_b b_j + alpha sum_r D_rj for j in [j0, j1).  D (N, O), b and colsum (O,)."""
    cdef Py_ssize_t r, j
    if floating is float:
        colsum_f(D, N, O, j0, j1, colsum)
    else:
        for j in range(j0, j1):
            colsum[j] = 0
        for r in range(N):
            for j in range(j0, j1):
                colsum[j] += D[r * O + j]
    if beta_b == 0:
        # overwrite without reading b, as GEMM does with beta 0: b may hold
        # a NaN from a diverged step, and 0 * NaN is NaN
        for j in range(j0, j1):
            b[j] = alpha * colsum[j]
    else:
        for j in range(j0, j1):
            b[j] = beta_b * b[j] + alpha * colsum[j]


cdef void param_update_impl(const floating* A, const floating* D,
                            floating alpha, floating beta_w, floating beta_b,
                            floating* W, floating* b, floating* colsum,
                            Py_ssize_t N, Py_ssize_t I,
                            Py_ssize_t O, floating* bf, const int64_t* a_rows) noexcept nogil:
    """W := beta_w W + alpha A^T @ D;  b := beta_b b + alpha sum_rows(D).

    dC/dW = A^{l-1 T} delta^l and dC/db = sum_x delta^l, so with
    alpha = -lr/m and beta_w = 1 - lr*l2/n this is the SGD step with L2
    weight decay, done by the GEMM itself; with alpha = 1/m and betas 0 or
    1 it writes or accumulates the mean gradient.  A (N, I), D (N, O), W (I, O);
    bf and a_rows as in linear_forward_impl (the bias gradient sums D as it is).
    """
    if floating is float and bf != NULL:
        # column-major W^T (O, I) = alpha D^T (O, N) @ A (N, I) + beta_w W^T
        gemm_bf16(c'N', c'T', <int> O, <int> I, <int> N, alpha, D, <int> O, A, <int> I,
                  beta_w, W, <int> O, bf, a_rows)
    elif floating is float and small(N, I * O):
        # W (I, O) = beta_w W + alpha A^T (I, N) @ D (N, O)
        sg_gemm(I, O, N, alpha, A, 1, I, D, O, beta_w, W, O)
    else:
        # column-major W^T (O, I) = alpha D^T (O, N) @ A (N, I) + beta_w W^T
        gemm(c'N', c'T', <int> O, <int> I, <int> N, alpha, D, <int> O, A, <int> I,
             beta_w, W, <int> O, bf)
    cdef Py_ssize_t j0, j1
    cdef Py_ssize_t skew = (<size_t> colsum // sizeof(floating)) % LINE_FLOATS
    cdef int T = ew_threads(bf, N * O)
    if T > 1:
        # each thread whole columns, each summed over the rows in order; the
        # shares split where colsum's 64-byte lines do (each row adds to them)
        with parallel(num_threads=T):
            j0 = max(share(O + skew, thread_id(), team_size(), LINE_FLOATS) - skew, 0)
            j1 = max(share(O + skew, thread_id() + 1, team_size(), LINE_FLOATS) - skew, 0)
            bias_range_impl(D, alpha, beta_b, b, colsum, N, O, j0, j1)
        return
    bias_update_impl(D, alpha, beta_b, b, colsum, N, O)


# --------------------------------------------------------------------------
# Convolution: im2col + GEMM, rows are output pixels.
# --------------------------------------------------------------------------

cdef struct Pixel:
    # an output pixel (n, oy, ox) of a chunk, walked in row order
    Py_ssize_t n, oy, ox


cdef inline void pixel_at(Pixel* q, const Geometry* g, Py_ssize_t r) noexcept nogil:
    """q := output pixel r = (n*OH + oy)*OW + ox of the chunk."""
    q.n = r // g.pixels
    r -= q.n * g.pixels
    q.oy = r // g.out_w
    q.ox = r - q.oy * g.out_w


cdef inline void pixel_next(Pixel* q, const Geometry* g) noexcept nogil:
    q.ox += 1
    if q.ox == g.out_w:
        q.ox = 0
        q.oy += 1
        if q.oy == g.out_h:
            q.oy = 0
            q.n += 1


cdef void im2col(const floating* A, const Geometry* g, Py_ssize_t r0, Py_ssize_t nr,
                 floating* col) noexcept nogil:
    """col[r - r0] := the receptive field of output pixel r of the chunk, in
    (ky, kx, c) order (the order of W's rows), zeros outside the image.
    Pixel r is (n, oy, ox) with r = (n*OH + oy)*OW + ox.  A (N, H*W*C),
    col (nr, K).

    Each window row (ky) is kw*C contiguous entries of A: a window inside
    the image is kh straight copies; one on the border is clipped."""
    cdef Py_ssize_t r, ky, iy0, ix0, lo, hi, j
    cdef Py_ssize_t C = g.in_c, W = g.in_w, span = g.kw * g.in_c, line = g.in_w * g.in_c
    cdef Pixel q
    cdef const floating* s
    cdef floating* d
    pixel_at(&q, g, r0)
    for r in range(nr):
        d = col + r * g.K
        iy0 = q.oy * g.sh - g.pt
        ix0 = q.ox * g.sw - g.pl
        s = A + q.n * g.n_in + (iy0 * W + ix0) * C
        if iy0 >= 0 and iy0 + g.kh <= g.in_h and ix0 >= 0 and ix0 + g.kw <= W:
            for ky in range(g.kh):
                for j in range(span):
                    d[j] = s[j]
                d += span
                s += line
        else:
            # the window's columns kx in [lo, hi) are inside the image
            lo = -ix0 if ix0 < 0 else 0
            hi = W - ix0 if W - ix0 < g.kw else g.kw
            for ky in range(g.kh):
                if iy0 + ky < 0 or iy0 + ky >= g.in_h or lo >= hi:
                    for j in range(span):
                        d[j] = 0
                else:
                    for j in range(lo * C):
                        d[j] = 0
                    for j in range(lo * C, hi * C):
                        d[j] = s[j]
                    for j in range(hi * C, span):
                        d[j] = 0
                d += span
                s += line
        pixel_next(&q, g)


cdef void im2col_t(const floating* A, const Geometry* g, Py_ssize_t r0, Py_ssize_t nr,
                   floating* colT) noexcept nogil:
    """colT[k, r - r0] := entry k = (ky*kw + kx)*C + c of the receptive field
    of output pixel r: im2col's matrix transposed, (K, nr) row-major, zeros
    outside the image. A (N, H*W*C).

    Along a run of output pixels of one image row (fixed n, oy), entry k
    reads input row oy*sh - pt + ky at columns ox*sw - pl + kx: a strided
    (for sw*C = 1, contiguous) run of the input, copied at once."""
    cdef Py_ssize_t j0, run, ky, kx, c, k, iy, ox, a, b, step = g.sw * g.in_c
    cdef Py_ssize_t C = g.in_c, W = g.in_w
    cdef Pixel q
    cdef const floating* s
    cdef floating* d
    pixel_at(&q, g, r0)
    j0 = 0
    while j0 < nr:
        run = g.out_w - q.ox if g.out_w - q.ox < nr - j0 else nr - j0
        for kx in range(g.kw):
            # the output columns ox in [a, b) of this run read inside the image
            a = q.ox
            while a < q.ox + run and a * g.sw - g.pl + kx < 0:
                a += 1
            b = q.ox + run
            while b > a and (b - 1) * g.sw - g.pl + kx >= W:
                b -= 1
            for ky in range(g.kh):
                iy = q.oy * g.sh - g.pt + ky
                s = A + q.n * g.n_in + (iy * W - g.pl + kx) * C
                for c in range(C):
                    k = (ky * g.kw + kx) * C + c
                    d = colT + k * nr + j0 - q.ox
                    if iy < 0 or iy >= g.in_h:
                        for ox in range(q.ox, q.ox + run):
                            d[ox] = 0
                        continue
                    for ox in range(q.ox, a):
                        d[ox] = 0
                    if step == 1:
                        for ox in range(a, b):
                            d[ox] = s[ox]
                    else:
                        for ox in range(a, b):
                            d[ox] = s[ox * step + c]
                    for ox in range(b, q.ox + run):
                        d[ox] = 0
        j0 += run
        q.ox += run
        if q.ox == g.out_w:
            q.ox = 0
            q.oy += 1
            if q.oy == g.out_h:
                q.oy = 0
                q.n += 1


cdef void col2im_add(const floating* col, const Geometry* g, Py_ssize_t r0, Py_ssize_t nr,
                     floating* dA) noexcept nogil:
    """dA += col2im(col): each entry of the receptive field of output pixel r
    (row r - r0 of col) is added to the input entry it was read from (the
    adjoint of im2col).  col (nr, K), dA (N, H*W*C)."""
    cdef Py_ssize_t r, ky, iy0, ix0, lo, hi, j
    cdef Py_ssize_t C = g.in_c, W = g.in_w, span = g.kw * g.in_c, line = g.in_w * g.in_c
    cdef Pixel q
    cdef const floating* s
    cdef floating* d
    pixel_at(&q, g, r0)
    for r in range(nr):
        s = col + r * g.K
        iy0 = q.oy * g.sh - g.pt
        ix0 = q.ox * g.sw - g.pl
        d = dA + q.n * g.n_in + (iy0 * W + ix0) * C
        lo = -ix0 if ix0 < 0 else 0
        hi = W - ix0 if W - ix0 < g.kw else g.kw
        for ky in range(g.kh):
            if 0 <= iy0 + ky < g.in_h:
                for j in range(lo * C, hi * C):
                    d[j] += s[j]
            s += span
            d += line
        pixel_next(&q, g)


cdef void conv_forward_impl(const floating* A, const floating* W, const floating* b,
                            floating* Z, floating* col, const Geometry* g, Py_ssize_t N,
                            floating slope, floating* bf) noexcept nogil:
    """Z := act(im2col(A) @ W + b), block by block of output pixels.
    A (N, H*W*C), W (K, F), b (F,), Z (N*OH*OW, F) = (N, OH*OW*F), col (block, K).

    The bias is folded into the GEMM (rows prefilled, beta = 1), and an
    elementwise activation is applied to each block while it is in cache.
    A first layer in float32 (g.col_t and small_conv) computes the block
    transposed instead, Z^T (F, nr) = W^T (F, K) @ colT (K, nr), with
    smallgemm.h (F rows in blocks of 6, nr columns in panels of 16: every
    lane used, where Z's own F = 20 columns would leave 12 of 32 idle), then
    transposes it into Z adding b. col then holds colT (K, block) and the
    transposed block (F, block) after it. Another layer in float32 on
    smallgemm.h (conv_sg) packs W once, after the block in col, and
    computes Z (nr, F) += col (nr, K) @ W (K, F) from each block in place;
    where every window lies inside the image, any float32 layer on the
    packed kernels (conv_in_place, a col_t one too) multiplies the windows
    themselves, with no im2col copy (sg_gemm_rows: for a layer that would
    take conv_sg, the same bits), W packed at the start of col (col_t) or
    after the block.
    bf: a bfloat16 network's scratch (gemm_bf16), which takes the BLAS
    path, else NULL.
    """
    cdef Py_ssize_t blk, r0, nr, r, j, F = g.out_c, rows = N * g.pixels
    cdef floating* z
    cdef floating* Wp = col + g.block * g.K      # W packed (conv_sg)
    cdef const float* windows[WINDOW_ROWS]      # each window's start (sg_gemm_rows)
    cdef Py_ssize_t i0, ni
    cdef Pixel q
    cdef bint sg = False, in_place = False
    if floating is float:
        in_place = bf == NULL and conv_in_place(g)
        sg = bf == NULL and conv_sg(g)
        if in_place or sg:
            if g.col_t:
                Wp = col
            sg_pack_bp(F, g.K, W, F, 1, Wp)
    for blk in range((rows + g.block - 1) // g.block):
        r0 = blk * g.block
        nr = g.block if r0 + g.block <= rows else rows - r0
        z = Z + r0 * F
        if floating is float:
            if g.col_t and small_conv and bf == NULL and not in_place:
                im2col_t(A, g, r0, nr, col)
                sg_gemm(F, nr, g.K, 1, W, 1, F, col, nr, 0, col + g.block * g.K, nr)
                sg_transpose_bias(F, nr, col + g.block * g.K, nr, b, z, F)
                if g.act != SOFTMAX:
                    activate_flat(g.act, slope, z, nr * F)
                continue
        if not (in_place and g.col_t):
            for r in range(nr):
                for j in range(F):
                    z[r * F + j] = b[j]
        if in_place:
            # Z (nr, F) += im2col(A) (nr, K) @ W (K, F), each window read in
            # place: kh rows of kw*C entries, an image row apart. A col_t
            # layer's Z starts from 0 and b is added last, as its transposed
            # product adds it (the same bits on either path, and on AVX2's)
            if floating is float:
                pixel_at(&q, g, r0)
                i0 = 0
                while i0 < nr:
                    ni = min(nr - i0, <Py_ssize_t> WINDOW_ROWS)
                    for r in range(ni):
                        windows[r] = (A + q.n * g.n_in
                                      + (q.oy * g.sh * g.in_w + q.ox * g.sw) * g.in_c)
                        pixel_next(&q, g)
                    sg_gemm_rows(ni, F, windows, g.kh, g.kw * g.in_c, g.in_w * g.in_c, Wp,
                                 0 if g.col_t else 1, z + i0 * F, F)
                    i0 += ni
                if g.col_t:
                    for r in range(nr):
                        for j in range(F):
                            z[r * F + j] = z[r * F + j] + b[j]
        elif sg:
            # Z (nr, F) += col (nr, K) @ W (K, F)
            im2col(A, g, r0, nr, col)
            if floating is float:
                sg_gemm_bp(nr, F, g.K, col, g.K, 1, Wp, 1, z, F)
        elif g.col_t:
            # column-major Z^T (F, nr) += W^T (F, K) @ colT (K, nr)
            im2col_t(A, g, r0, nr, col)
            gemm(c'N', c'T', <int> F, <int> nr, <int> g.K, 1, W, <int> F, col, <int> nr,
                 1, z, <int> F, bf)
        else:
            # column-major Z^T (F, nr) += W^T (F, K) @ col^T (K, nr)
            im2col(A, g, r0, nr, col)
            gemm(c'N', c'N', <int> F, <int> nr, <int> g.K, 1, W, <int> F, col, <int> g.K,
                 1, z, <int> F, bf)
        if g.act != SOFTMAX:
            activate_flat(g.act, slope, z, nr * F)
    if g.act == SOFTMAX:
        softmax_rows(Z, g.n_out, 0, N)


cdef void conv_backward_impl(const floating* A, const floating* W, const floating* D,
                             floating* dA, floating* col, const Geometry* g, Py_ssize_t N,
                             floating alpha, floating beta_w, floating beta_b,
                             floating* W_out, floating* b_out,
                             floating* colsum, floating* bf) noexcept nogil:
    """dA := col2im(D @ W^T) (unless dA is NULL), then
    W_out := beta_w W_out + alpha im2col(A)^T @ D and
    b_out := beta_b b_out + alpha sum_rows(D).

    From Z = im2col(A) @ W + b: dC/dW = im2col(A)^T delta, dC/db = sum of
    delta over pixels and samples, dC/dA = col2im(delta W^T). W_out may be
    W itself (a fused SGD step): dA is complete before W changes. In
    float32 on smallgemm.h the weight gradient is summed block by block
    into the scratch, each entry one FMA chain over all the rows, and W_out
    is stepped with it at the end:
    - a first layer (g.col_t and small_conv), which has no dA, as
      dW (K, F) = colT (K, nr) @ D (nr, F), colT from im2col_t (runs of
      output pixels along an image row, where im2col copies 5-entry window
      rows: the layer's backward 1.09x on Zen 3), after the im2col block
      and the transposed output block;
    - another (conv_sg) transposed, dW^T (F, K) = D^T (F, nr) @ col (nr, K)
      (F rows in blocks of 6 with AVX2, 12 with AVX-512, K columns in
      panels of 16 or 32: where W's own F = 40 columns would leave 8 of 48
      lanes idle with AVX2; the product 1.35x at conv2-relu's 128-row
      blocks on Zen 3), where W^T was packed for dcol (nr, K) = D (nr, F) @
      W^T (F, K) before.
    Both products take sg_gemm_unpacked: B is a new block each call, which
    AVX-512's sg_gemm would pack from 48 rows of C (F or K) on.
    bf as in conv_forward_impl.
    A, dA (N, H*W*C), W, W_out (K, F), D (N*OH*OW, F), col (block, K).
    """
    cdef Py_ssize_t blk, r0, nr, i, k, F = g.out_c, rows = N * g.pixels
    cdef floating* WT
    cdef floating* dWs
    cdef floating* Wp = col + g.block * g.K      # W^T packed (conv_sg)
    cdef bint sg = False, small = False
    if floating is float:
        sg = bf == NULL and conv_sg(g)
        small = sg or (g.col_t and small_conv and bf == NULL)
    if dA != NULL:
        for i in range(N * g.n_in):
            dA[i] = 0
        if floating is float:
            if sg:
                sg_pack_bp(g.K, F, W, 1, F, Wp)
        for blk in range((rows + g.block - 1) // g.block):
            r0 = blk * g.block
            nr = g.block if r0 + g.block <= rows else rows - r0
            if floating is float:
                if sg:
                    # dcol (nr, K) = D (nr, F) @ W^T (F, K)
                    sg_gemm_bp(nr, g.K, F, D + r0 * F, F, 1, Wp, 0, col, g.K)
                    col2im_add(col, g, r0, nr, dA)
                    continue
            # column-major dcol^T (K, nr) = W (K, F) @ D^T (F, nr)
            gemm(c'T', c'N', <int> g.K, <int> nr, <int> F, 1, W, <int> F, D + r0 * F,
                 <int> F, 0, col, <int> g.K, bf)
            col2im_add(col, g, r0, nr, dA)
    if floating is float:
        if small and g.col_t:
            dWs = col + g.block * g.K + g.block * F
            for blk in range((rows + g.block - 1) // g.block):
                r0 = blk * g.block
                nr = g.block if r0 + g.block <= rows else rows - r0
                # dW (K, F) += colT (K, nr) @ D (nr, F)
                im2col_t(A, g, r0, nr, col)
                sg_gemm_unpacked(g.K, F, nr, 1, col, nr, 1, D + r0 * F, F, 0 if r0 == 0 else 1,
                                 dWs, F)
            for k in range(g.K * F):
                if beta_w == 0:
                    W_out[k] = alpha * dWs[k]
                else:
                    W_out[k] = beta_w * W_out[k] + alpha * dWs[k]
            bias_update_impl(D, alpha, beta_b, b_out, colsum, rows, F)
            return
        if small:
            WT = Wp
            for blk in range((rows + g.block - 1) // g.block):
                r0 = blk * g.block
                nr = g.block if r0 + g.block <= rows else rows - r0
                # dW^T (F, K) += D^T (F, nr) @ col (nr, K)
                im2col(A, g, r0, nr, col)
                sg_gemm_unpacked(F, g.K, nr, 1, D + r0 * F, 1, F, col, g.K, 0 if r0 == 0 else 1,
                                 WT, g.K)
            for k in range(g.K):
                for i in range(F):
                    if beta_w == 0:
                        W_out[k * F + i] = alpha * WT[i * g.K + k]
                    else:
                        W_out[k * F + i] = beta_w * W_out[k * F + i] + alpha * WT[i * g.K + k]
            bias_update_impl(D, alpha, beta_b, b_out, colsum, rows, F)
            return
    for blk in range((rows + g.block - 1) // g.block):
        r0 = blk * g.block
        nr = g.block if r0 + g.block <= rows else rows - r0
        if g.col_t:
            # column-major W^T (F, K) = alpha D^T (F, nr) @ colT^T (nr, K) + beta W^T
            im2col_t(A, g, r0, nr, col)
            gemm(c'N', c'N', <int> F, <int> g.K, <int> nr, alpha, D + r0 * F, <int> F, col,
                 <int> nr, beta_w if r0 == 0 else 1, W_out, <int> F, bf)
        else:
            # column-major W^T (F, K) = alpha D^T (F, nr) @ col (nr, K) + beta W^T
            im2col(A, g, r0, nr, col)
            gemm(c'N', c'T', <int> F, <int> g.K, <int> nr, alpha, D + r0 * F, <int> F, col,
                 <int> g.K, beta_w if r0 == 0 else 1, W_out, <int> F, bf)
    bias_update_impl(D, alpha, beta_b, b_out, colsum, rows, F)


# --------------------------------------------------------------------------
# Pooling: windows of kh x kw, strides (sh, sw), channel by channel.
# --------------------------------------------------------------------------

cdef void maxpool_forward_impl(const floating* A, floating* out, int32_t* argmax,
                               const Geometry* g, Py_ssize_t N) noexcept nogil:
    """out := the maximum of each window, argmax := its index (y*W + x)*C + c
    in the sample's row.  A (N, H*W*C), out and argmax (N, OH*OW*C).

    The first maximum in row-major window order wins a tie; a NaN wins, and
    a later NaN over an earlier one (PyTorch's v > max or isnan(v)).
    """
    cdef Py_ssize_t n, oy, ox, ky, kx, c, off, C = g.in_c
    cdef const floating* src
    cdef const floating* s
    cdef floating* dst
    cdef int32_t* idx
    cdef floating v
    cdef bint take
    for n in range(N):
        src = A + n * g.n_in
        dst = out + n * g.n_out
        idx = argmax + n * g.n_out
        if floating is float:
            if SMALL_GEMM:
                # the same, 8 channels at a time (smallgemm.h)
                sg_maxpool(src, dst, idx, C, g.out_h, g.out_w, g.kh, g.kw, g.sh, g.sw, g.in_w)
                continue
        for oy in range(g.out_h):
            for ox in range(g.out_w):
                off = (oy * g.sh * g.in_w + ox * g.sw) * C
                s = src + off
                for c in range(C):
                    dst[c] = s[c]
                    idx[c] = <int32_t> (off + c)
                for ky in range(g.kh):
                    for kx in range(g.kw):
                        if ky == 0 and kx == 0:
                            continue
                        off = ((oy * g.sh + ky) * g.in_w + ox * g.sw + kx) * C
                        s = src + off
                        for c in range(C):
                            v = s[c]
                            take = (v > dst[c]) | (v != v)
                            dst[c] = v if take else dst[c]
                            idx[c] = <int32_t> (off + c) if take else idx[c]
                dst += C
                idx += C


cdef void maxpool_backward_impl(const floating* D, const int32_t* argmax, floating* dA,
                                const Geometry* g, Py_ssize_t N) noexcept nogil:
    """dA := D routed to where each maximum was (added up where windows
    overlap).  D, argmax (N, OH*OW*C), dA (N, H*W*C).

    dA is cleared, then each gradient added where its maximum was: a
    branch-free scatter. (Writing each entry of dA once, the gradient where
    idx matched else 0, was a data-dependent branch per entry that missed
    on a quarter of them: 8x slower for 2x2 pooling.)"""
    cdef Py_ssize_t n, i
    cdef floating* d
    memset(dA, 0, N * g.n_in * sizeof(floating))
    for n in range(N):
        d = dA + n * g.n_in
        for i in range(n * g.n_out, (n + 1) * g.n_out):
            d[argmax[i]] += D[i]


cdef void maxpool_backward_act(const floating* D, const int32_t* argmax, floating* dA,
                               int act, floating slope, const floating* A,
                               const Geometry* g, Py_ssize_t N) noexcept nogil:
    """dA := (D routed to where each maximum was) * act'(z), A = act(z) the
    pool's input: maxpool_backward_impl, then activation_grad_impl, in one
    pass. act' multiplies only the routed entries (a quarter of dA for 2x2
    pooling; the rest are 0 either way), each as it is added.
    D, argmax (N, OH*OW*C), A, dA (N, H*W*C)."""
    cdef Py_ssize_t n, i
    cdef floating* d
    cdef const floating* a
    memset(dA, 0, N * g.n_in * sizeof(floating))
    for n in range(N):
        d = dA + n * g.n_in
        a = A + n * g.n_in
        for i in range(n * g.n_out, (n + 1) * g.n_out):
            d[argmax[i]] += act_grad(act, slope, a[argmax[i]], D[i])


cdef void l2pool_forward_impl(const floating* A, floating* out, const Geometry* g,
                              Py_ssize_t N) noexcept nogil:
    """out := sqrt(sum x^2) over each window.  A (N, H*W*C), out (N, OH*OW*C)."""
    cdef Py_ssize_t n, oy, ox, ky, kx, c, C = g.in_c
    cdef const floating* src
    cdef const floating* s
    cdef floating* dst
    for n in range(N):
        src = A + n * g.n_in
        dst = out + n * g.n_out
        for oy in range(g.out_h):
            for ox in range(g.out_w):
                for c in range(C):
                    dst[c] = 0
                for ky in range(g.kh):
                    for kx in range(g.kw):
                        s = src + ((oy * g.sh + ky) * g.in_w + ox * g.sw + kx) * C
                        for c in range(C):
                            dst[c] += s[c] * s[c]
                for c in range(C):
                    dst[c] = _sqrt(dst[c])
                dst += C


cdef void l2pool_backward_impl(const floating* A, const floating* Y, const floating* D,
                               floating* dA, const Geometry* g, Py_ssize_t N) noexcept nogil:
    """dA := sum over the windows holding x of x / y * dy, 0 where y = 0
    (from y = sqrt(sum x^2): dy/dx = x / y).  A, dA (N, H*W*C), Y, D (N, OH*OW*C)."""
    cdef Py_ssize_t n, oy, ox, ky, kx, c, o, off, i, C = g.in_c
    cdef const floating* src
    cdef floating* d
    cdef floating y
    for i in range(N * g.n_in):
        dA[i] = 0
    for n in range(N):
        src = A + n * g.n_in
        d = dA + n * g.n_in
        for oy in range(g.out_h):
            for ox in range(g.out_w):
                o = n * g.n_out + (oy * g.out_w + ox) * C
                for ky in range(g.kh):
                    for kx in range(g.kw):
                        off = ((oy * g.sh + ky) * g.in_w + ox * g.sw + kx) * C
                        for c in range(C):
                            y = Y[o + c]
                            if y > 0:
                                d[off + c] += src[off + c] / y * D[o + c]


# --------------------------------------------------------------------------
# The network: forward and backward passes over the layer table.
# --------------------------------------------------------------------------

cdef void forward_impl(const floating* params, Layout* lay, floating slope,
                       const floating* A0, floating* work, floating* A_out, Py_ssize_t N,
                       bint training, uint64_t seed, int64_t first) noexcept nogil:
    """A_{l+1} := layer_l(in_l) for l = 0..L-1, from the inputs A0 (N, I_0)
    into A_out (N, O_L); the other activations live in the workspace.

    in_l is A_l, or in training its dropped-out copy where layer l's input
    has dropout; first is the epoch's row number of the chunk's first row.
    A bfloat16 network's products round their operands in the workspace's
    scratch (gemm_bf16).
    """
    cdef Py_ssize_t l, L = lay.n_layers
    cdef floating* bf = work + lay.bf_off if lay.bf_off >= 0 else NULL
    cdef Geometry* g
    cdef const floating* src
    cdef floating* dst
    cdef const int64_t* rows
    for l in range(L):
        g = &lay.layer[l]
        rows = NULL
        if l > 0:
            src = work + (lay.in_off[l] if training else lay.a_off[l])
        elif lay.x_rows != NULL:
            # the chunk's rows read in place (x_in_place): float32 only
            src = <const floating*> lay.x_src
            rows = lay.x_rows
        elif training and lay.mask_off[0] >= 0:
            dropout_impl(A0, work + lay.mask_off[0], work + lay.in_off[0], N, g.n_in,
                         lay.keep[0], seed, first, INPUT_STREAM)
            src = work + lay.in_off[0]
        else:
            src = A0
        dst = A_out if l == L - 1 else work + lay.a_off[l + 1]
        if g.kind == DENSE:
            if not linear_forward_impl(src, params + g.w_off, params + g.b_off, dst, N,
                                       g.n_in, g.n_out, g.act, bf, not training, rows,
                                       NULL if training else g.wpack):
                activate_rows(g.act, slope, dst, N, g.n_out, ew_threads(bf, N * g.n_out))
        elif g.kind == CONV2D:
            conv_forward_impl(src, params + g.w_off, params + g.b_off, dst,
                              work + lay.col_off, g, N, slope, bf)
        elif g.kind == MAXPOOL2D:
            maxpool_forward_impl(src, dst, <int32_t*> (work + g.idx_off), g, N)
        else:
            l2pool_forward_impl(src, dst, g, N)
        if training and lay.mask_off[l + 1] >= 0:
            dropout_impl(dst, work + lay.mask_off[l + 1], work + lay.in_off[l + 1], N,
                         g.n_out, lay.keep[l + 1], seed, first, l + 1)


cdef void backward_impl(const floating* params, Layout* lay, floating slope,
                        floating* work, Py_ssize_t N, floating alpha, floating beta_w,
                        floating beta_b, floating* target) noexcept nogil:
    """Backpropagate the output delta (in the workspace's delta of A_L) and
    apply target := beta target + alpha grad layer by layer.

    target is params itself for a fused SGD step, or a gradient buffer of
    the same layout. The delta of a layer's input, (input gradient) *
    act'(z) [* mask], is computed from its weights before they change.
    A bfloat16 network's products round their operands as in forward_impl.
    """
    cdef Py_ssize_t l
    cdef floating* bf = work + lay.bf_off if lay.bf_off >= 0 else NULL
    cdef Geometry* g
    cdef int act_in
    cdef floating* D
    cdef floating* dA
    cdef const floating* src
    cdef const floating* mask
    cdef const int64_t* rows
    for l in range(lay.n_layers - 1, -1, -1):
        g = &lay.layer[l]
        D = work + lay.d_off[l + 1]
        src = work + lay.in_off[l]
        rows = NULL
        if l == 0 and lay.x_rows != NULL:
            # the chunk's rows read in place (x_in_place): float32 only
            src = <const floating*> lay.x_src
            rows = lay.x_rows
        dA = work + lay.d_off[l] if l > 0 else NULL
        mask = work + lay.mask_off[l] if l > 0 and lay.mask_off[l] >= 0 else NULL
        act_in = lay.layer[l - 1].act if l > 0 else IDENTITY
        if g.kind == DENSE:
            if l > 0:
                hidden_delta_impl(D, params + g.w_off, act_in, slope, work + lay.a_off[l],
                                  mask, dA, N, g.n_in, g.n_out, bf)
            if g.deferred:      # W: train_team_impl's deferred_steps, after the batch
                bias_update_impl(D, alpha, beta_b, target + g.b_off, work + g.colsum_off, N,
                                 g.n_out)
            else:
                param_update_impl(src, D, alpha, beta_w, beta_b, target + g.w_off,
                                  target + g.b_off, work + g.colsum_off, N, g.n_in, g.n_out, bf,
                                  rows)
            continue
        if g.kind == CONV2D:
            conv_backward_impl(src, params + g.w_off, D, dA, work + lay.col_off, g, N,
                               alpha, beta_w, beta_b, target + g.w_off, target + g.b_off,
                               work + g.colsum_off, bf)
        elif l == 0:
            continue
        elif g.kind == MAXPOOL2D and mask == NULL and act_in != IDENTITY:
            maxpool_backward_act(D, <int32_t*> (work + g.idx_off), dA, act_in, slope,
                                 work + lay.a_off[l], g, N)
            continue
        elif g.kind == MAXPOOL2D:
            maxpool_backward_impl(D, <int32_t*> (work + g.idx_off), dA, g, N)
        else:
            l2pool_backward_impl(src, work + lay.a_off[l + 1], D, dA, g, N)
        if l > 0:
            activation_grad_impl(act_in, slope, work + lay.a_off[l], dA, N * g.n_in)
            if mask != NULL:
                multiply_impl(dA, mask, N * g.n_in)


cdef void multiply_impl(floating* D, const floating* mask, Py_ssize_t n) noexcept nogil:
    """D := D * mask, elementwise. D, mask (n,)."""
    cdef Py_ssize_t i
    for i in range(n):
        D[i] = D[i] * mask[i]


cdef void penalty_grad_impl(const floating* params, floating* grad, Layout* lay,
                            floating l2, floating l1) noexcept nogil:
    """grad_W += l2 W + l1 sign(W) for every layer's weights (not biases):
    the gradient of (lambda2/2n) sum w^2 + (lambda1/n) sum |w|."""
    cdef Py_ssize_t l, i
    cdef Geometry* g
    for l in range(lay.n_layers):
        g = &lay.layer[l]
        if g.w_off < 0:
            continue
        if l1 == 0:
            for i in range(g.w_off, g.b_off):
                grad[i] = grad[i] + l2 * params[i]
        else:
            for i in range(g.w_off, g.b_off):
                grad[i] = grad[i] + l2 * params[i] + l1 * _sign(params[i])


cdef void penalty_range_impl(const floating* params, floating* grad, Layout* lay,
                             floating l2, floating l1, Py_ssize_t p0,
                             Py_ssize_t p1) noexcept nogil:
    """penalty_grad_impl on the parameters p0 <= i < p1 only (a thread's share)."""
    cdef Py_ssize_t l, i, lo, hi
    cdef Geometry* g
    for l in range(lay.n_layers):
        g = &lay.layer[l]
        if g.w_off < 0:
            continue
        lo = g.w_off if g.w_off > p0 else p0
        hi = g.b_off if g.b_off < p1 else p1
        for i in range(lo, hi):
            grad[i] = grad[i] + l2 * params[i] + l1 * _sign(params[i])


cdef void optimizer_step_impl(int opt, floating* p, floating* state,
                              Py_ssize_t P, Py_ssize_t n, const double* hyper,
                              int64_t t) noexcept nogil:
    """One step of the optimizer on p (n,) from the gradient g = state[0];
    the rules of torch.optim.SGD (dampening 0), Adam, AdamW and Rprop. state holds
    rows P entries apart (p and state may point into the middle of the
    parameters and their rows: a thread's share); t counts steps from 1.

    sgd:       p -= lr g
    momentum:  v = mu v + g;  p -= lr v
    nesterov:  v = mu v + g;  p -= lr (g + mu v)
    adam:      m = m + (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2;
               p -= lr/(1 - b1^t) m / (sqrt(v)/sqrt(1 - b2^t) + eps)
    adamw:     p *= 1 - lr wd (decoupled weight decay); then adam's step
    rprop:     iRPROP-: each step size grows by eta+ while g keeps its sign,
               shrinks by eta- when it flips (and that g counts as 0);
               p -= sign(g) step
    """
    cdef Py_ssize_t i
    cdef floating* g = state
    cdef floating* s1 = state + P
    cdef floating* s2 = state + 2 * P
    cdef floating lr = <floating> hyper[H_LR]
    cdef floating mu = <floating> hyper[H_MOMENTUM]
    cdef floating b1 = <floating> hyper[H_BETA1]
    cdef floating b2 = <floating> hyper[H_BETA2]
    cdef floating eps = <floating> hyper[H_EPS]
    cdef floating step_size, bc2_sqrt, denom, gi, prod
    cdef floating eta_minus = <floating> hyper[H_ETA_MINUS]
    cdef floating eta_plus = <floating> hyper[H_ETA_PLUS]
    cdef floating step_min = <floating> hyper[H_STEP_MIN]
    cdef floating step_max = <floating> hyper[H_STEP_MAX]
    cdef floating decay = <floating> (1 - hyper[H_LR] * hyper[H_WEIGHT_DECAY])
    if opt == ADAMW:
        for i in range(n):
            p[i] = p[i] * decay
    if opt == SGD:
        for i in range(n):
            p[i] = p[i] - lr * g[i]
    elif opt == MOMENTUM:
        for i in range(n):
            s1[i] = mu * s1[i] + g[i]
            p[i] = p[i] - lr * s1[i]
    elif opt == NESTEROV:
        for i in range(n):
            s1[i] = mu * s1[i] + g[i]
            p[i] = p[i] - lr * (g[i] + mu * s1[i])
    elif opt == ADAM or opt == ADAMW:
        step_size = <floating> (hyper[H_LR] / (1 - pow(hyper[H_BETA1], <double> t)))
        bc2_sqrt = <floating> sqrt(1 - pow(hyper[H_BETA2], <double> t))
        if floating is float:
            adam_f(p, g, s1, s2, n, b1, b2, step_size, bc2_sqrt, eps)
            return
        for i in range(n):
            s1[i] = s1[i] + (1 - b1) * (g[i] - s1[i])
            s2[i] = b2 * s2[i] + (1 - b2) * g[i] * g[i]
            denom = _sqrt(s2[i]) / bc2_sqrt + eps
            p[i] = p[i] - step_size * (s1[i] / denom)
    elif opt == RPROP:
        # s1: previous gradient (0 after a sign flip), s2: step sizes
        for i in range(n):
            gi = g[i]
            prod = gi * s1[i]
            if prod > 0:
                s2[i] = s2[i] * eta_plus
            elif prod < 0:
                s2[i] = s2[i] * eta_minus
                gi = 0
            s2[i] = s2[i] if s2[i] > step_min else step_min
            s2[i] = s2[i] if s2[i] < step_max else step_max
            p[i] = p[i] - _sign(gi) * s2[i]
            s1[i] = gi


cdef double sum_squares(const floating* g, Py_ssize_t n) noexcept nogil:
    """sum g_i^2, in double. g (n,)."""
    cdef Py_ssize_t i
    cdef double s = 0
    for i in range(n):
        s += <double> g[i] * g[i]
    return s


cdef double clip_scale(double max_norm, double squares) noexcept nogil:
    """The factor clip_grad_norm_ applies to a gradient whose squares sum to
    `squares`: max_norm / (norm + 1e-6), or 1 when that is not below 1."""
    cdef double scale = max_norm / (sqrt(squares) + CLIP_EPS)
    return scale if scale < 1 else 1


cdef void scale_impl(floating* g, Py_ssize_t n, double scale) noexcept nogil:
    """g *= scale, unless scale is 1. g (n,)."""
    cdef Py_ssize_t i
    cdef floating f = <floating> scale
    if scale == 1:
        return
    for i in range(n):
        g[i] = g[i] * f


# Whether a bfloat16 dense network's first layer reads a chunk's rows of X
# in place in training (x_in_place), its products taking them through the
# epoch's row order, rather than from a gathered copy: the gather was a
# serial pass over the batch while the products' other threads waited.
# For the tests and benchmarks (set_x_in_place): the same bits either way.
cdef bint x_in_place_on = True
cdef Py_ssize_t x_in_place_epochs = 0    # epochs that read X in place, for the tests


cdef bint x_in_place(const Layout* lay, int augment) noexcept nogil:
    """Whether train_epoch_impl's chunks read X's rows in place: a bfloat16
    network (gemm_bf16 takes a table of rows) whose first layer is dense,
    with no input dropout and no augmentation (the rows as X holds them),
    where x_in_place_on. The caller checks that X is float32 (a uint8 row
    is scaled by the gather)."""
    return (x_in_place_on and lay.bf_off >= 0 and lay.layer[0].kind == DENSE
            and lay.mask_off[0] < 0 and augment == NO_AUGMENT)


cdef int train_epoch_impl(const input_t* X, const floating* Y,
                          const floating* sample_weight, const int64_t* order,
                          Py_ssize_t n, floating* params, floating* state,
                          Layout* lay, floating slope, int loss, Py_ssize_t batch_size,
                          int opt, const double* hyper, int augment,
                          uint64_t seed, floating* work, int64_t* control,
                          double* loss_sum, int64_t* n_correct) noexcept nogil:
    """One epoch of mini-batch training over the rows X[order].

    For each batch of m rows, chunk by chunk: gather (and augment) the rows,
    forward (with dropout), output delta (with sample weights), backward
    into the gradient; then add the penalty gradient, clip the gradient's
    norm (with hyper[H_CLIP_NORM] > 0) and take one optimizer step. Plain
    SGD on a one-chunk batch without L1 or clipping fuses the step into the
    backward GEMMs instead. Stops before a batch when the caller sets
    control[STOP_REQUEST], and returns DIVERGED, without applying that
    batch, as soon as a chunk's loss is not finite. Where x_in_place allows
    (a bfloat16 dense network), the first layer's products read the chunk's
    rows of X in place through the order, and only the targets and the sample
    weights are gathered.
    """
    cdef Py_ssize_t k, c, start, m, first, cm, r, L = lay.n_layers
    cdef Geometry* g0 = &lay.layer[0]
    cdef Py_ssize_t cap = lay.capacity, n_in = g0.n_in, n_out = lay.layer[L - 1].n_out
    cdef int out_act = lay.layer[L - 1].act
    cdef floating* A0 = work + lay.a_off[0]
    cdef floating* A_out = work + lay.a_off[L]
    cdef floating* Yb = work + lay.y_off
    cdef floating* swb = work + lay.sw_off if sample_weight != NULL else NULL
    cdef double chunk_loss
    cdef floating lr = <floating> hyper[H_LR]
    cdef double clip = hyper[H_CLIP_NORM]
    cdef bint fused = opt == SGD and hyper[H_L1] == 0 and clip == 0 and batch_size <= cap
    cdef bint in_place = input_t is float and floating is float and x_in_place(lay, augment)
    if in_place:
        lay.x_src = <const float*> X
    for k in range((n + batch_size - 1) // batch_size):
        if control[STOP_REQUEST] != 0:
            return STOPPED
        start = k * batch_size
        m = batch_size if start + batch_size <= n else n - start
        for c in range((m + cap - 1) // cap):
            first = start + c * cap
            cm = cap if first + cap <= start + m else start + m - first
            gather_chunk(X, Y, lay.labels, sample_weight, order + first, cm, g0, n_out, augment,
                         seed, first, NULL if in_place else A0, Yb, swb)
            if in_place:
                lay.x_rows = order + first
            # the next chunk's rows start loading while this one computes
            if first + cm < n:
                prefetch_rows(X, n_in * sizeof(input_t), order + first + cm,
                              min(cap, n - first - cm))
                if lay.labels == NULL:
                    prefetch_rows(Y, n_out * sizeof(floating), order + first + cm,
                                  min(cap, n - first - cm))
            forward_impl(params, lay, slope, A0, work, A_out, cm, True, seed, first)
            chunk_loss = output_delta_impl(loss, out_act, slope, A_out, Yb, swb,
                                           work + lay.d_off[L], cm, n_out)
            if not isfinite(chunk_loss):
                return DIVERGED
            loss_sum[0] += chunk_loss
            n_correct[0] += count_correct(A_out, Yb, cm, n_out)
            if fused:
                backward_impl(params, lay, slope, work, cm, -lr / m,
                              <floating> (1 - hyper[H_LR] * hyper[H_L2]), 1, params)
            else:
                backward_impl(params, lay, slope, work, cm, (<floating> 1) / m,
                              0 if c == 0 else 1, 0 if c == 0 else 1, state)
        control[STEPS] += 1
        if not fused:
            if hyper[H_L2] != 0 or hyper[H_L1] != 0:
                penalty_grad_impl(params, state, lay, <floating> hyper[H_L2],
                                  <floating> hyper[H_L1])
            if clip > 0:
                scale_impl(state, lay.n_params,
                           clip_scale(clip, sum_squares(state, lay.n_params)))
            optimizer_step_impl(opt, params, state, lay.n_params, lay.n_params, hyper,
                                control[STEPS])
        control[ROWS_DONE] += m
    return DONE


cdef void predict_impl(const input_t* X, Py_ssize_t n, const floating* params,
                       Layout* lay, floating slope, floating* work, Py_ssize_t work_size,
                       const int64_t* rows, floating* out, Team* team,
                       int64_t* next_chunk) noexcept nogil:
    """out := network(X), chunk by chunk of lay.capacity rows, no dropout.

    The threads of a team take whole chunks, each the next one not taken
    (*next_chunk, counted atomically from 0), each in its own workspace of
    work_size entries: chunks are independent (no barriers), and a thread
    that runs slower (a vCPU that the host takes away for a while) takes
    fewer of them. Rows of X already in the network's dtype are read in
    place; others are converted into the workspace. Outputs go straight
    into out.
    """
    cdef Py_ssize_t j, start, m, I = lay.layer[0].n_in
    cdef Py_ssize_t n_out = lay.layer[lay.n_layers - 1].n_out
    cdef Py_ssize_t n_chunks = (n + lay.capacity - 1) // lay.capacity
    cdef floating* mine = work + team.id * work_size
    cdef const floating* A0
    j = take(next_chunk)
    while j < n_chunks:
        start = j * lay.capacity
        m = lay.capacity if start + lay.capacity <= n else n - start
        if (input_t is float and floating is float) or (input_t is double and floating is double):
            A0 = <const floating*> (X + start * I)
        else:
            gather_rows(X, I, rows + start, m, mine + lay.a_off[0])
            A0 = mine + lay.a_off[0]
        forward_impl(params, lay, slope, A0, mine, out + start * n_out, m, False, 0, 0)
        j = take(next_chunk)


cdef void predict_team(const input_t* X, Py_ssize_t n, const floating* params,
                       Layout* lay, floating slope, floating* work, Py_ssize_t work_size,
                       const int64_t* rows, floating* out, int64_t* next_chunk,
                       int master_cpu, int64_t* arrived) noexcept nogil:
    """predict_impl as this thread's part of the current OpenMP team, once
    it has settled (team_settle: master_cpu, the caller's CPU before the
    region; arrived, the team's count of its threads started, from 0);
    denormals flushed to zero (see train_epoch)."""
    cdef Team team
    cdef unsigned int fp = flush_denormals()
    team.id = thread_id()
    team.size = team_size()
    team_settle(&team, master_cpu, arrived)
    predict_impl(X, n, params, lay, slope, work, work_size, rows, out, &team, next_chunk)
    restore_fp(fp)


cdef struct Shared:
    # what the threads of a training team share besides params and state
    bint stop                    # control[STOP_REQUEST] as thread 0 last read it
    bint diverged                # a thread's chunk had a loss that is not finite
    bint stop_at[2]              # train_fused_impl: stop before batch k's step (k % 2)
    int placement                # team_placement as the epoch began (team_far)
    bint far                     # the team's threads are far apart (team_far)
    double round_trip            # their round trip in ns, as team_far measured it (or -1)
    double* loss                 # each thread's sum of costs
    double* squares              # each thread's sum of squared gradients (clipping)
    int64_t* correct             # each thread's count of correct rows


# A team's SGD epoch steps a dense layer of at least this many weights after
# each batch, its rows of W split among the threads (team_defer), rather
# than summing every thread's whole gradient of W first: conv20's
# 2,880 x 100 layer at batch 10 read and wrote 1.2 MB three times a batch.
cdef Py_ssize_t DEFER_WEIGHTS = 1 << 14
cdef Py_ssize_t defer_weights = DEFER_WEIGHTS
cdef Py_ssize_t deferred_epochs = 0    # team epochs with a deferred layer, for the tests


cdef bint team_defer(Layout* lay, int opt, const double* hyper, Py_ssize_t batch_size,
                     Py_ssize_t n_threads) noexcept nogil:
    """Mark the dense layers whose W a team steps after each batch
    (Geometry.deferred, read by backward_impl and train_team_impl): in a
    float32 network's plain SGD epoch (no L1, no clipping: the step is
    fused) on smallgemm.h's kernels, where each of the team's n_threads
    slices of a batch (train_team_impl) fits one chunk, a dense layer of defer_weights (DEFER_WEIGHTS;
    set_defer_weights) to SMALL_WEIGHTS weights whose W has room for a
    batch's inputs and deltas (deferred_rows keeps them in thread 0's
    gradient of W, which the team no longer uses). Returns whether it
    marked any."""
    cdef Py_ssize_t l
    cdef Geometry* g
    cdef bint any_deferred = False
    if not (SMALL_GEMM and lay.bf_off < 0 and n_threads > 1 and opt == SGD
            and hyper[H_L1] == 0 and hyper[H_CLIP_NORM] == 0
            and (batch_size + n_threads - 1) // n_threads <= lay.capacity):
        return False
    for l in range(lay.n_layers):
        g = &lay.layer[l]
        g.deferred = (g.kind == DENSE
                      and defer_weights <= g.n_in * g.n_out <= SMALL_WEIGHTS
                      and batch_size * (g.n_in + g.n_out) <= g.n_in * g.n_out)
        any_deferred = any_deferred or g.deferred
    return any_deferred


cdef Py_ssize_t not_deferred(Layout* lay, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """Where the run of parameters from b0 outside every deferred layer's W
    ends (at most b1); or -(the end of that W) if b0 is inside one."""
    cdef Py_ssize_t l, e = b1
    cdef Geometry* g
    for l in range(lay.n_layers):
        g = &lay.layer[l]
        if not g.deferred:
            continue
        if g.w_off <= b0 < g.b_off:
            return -g.b_off
        if b0 < g.w_off < e:
            e = g.w_off
    return e


cdef void copy_not_deferred(Layout* lay, floating* dst, const floating* src) noexcept nogil:
    """dst := src (zeros where src is NULL) for every parameter outside the
    deferred layers' Ws (team_defer): P entries, those Ws left as they are."""
    cdef Py_ssize_t b0 = 0, e, P = lay.n_params
    while b0 < P:
        e = not_deferred(lay, b0, P)
        if e < 0:
            b0 = -e
        else:
            if src == NULL:
                memset(dst + b0, 0, (e - b0) * sizeof(floating))
            else:
                memcpy(dst + b0, src + b0, (e - b0) * sizeof(floating))
            b0 = e


cdef void deferred_rows(Layout* lay, floating* work, floating* G0, Py_ssize_t r0,
                        Py_ssize_t cm, Py_ssize_t batch_size) noexcept nogil:
    """Before the batch's first barrier: this thread's cm rows of the batch
    (from row r0 of it), their input A and delta D at each deferred layer
    (team_defer), copied from its workspace into thread 0's gradient of
    that layer's W (G0 + w_off), which holds the batch's A (batch_size, I)
    then its D (batch_size, O) for deferred_steps."""
    cdef Py_ssize_t l
    cdef Geometry* g
    for l in range(lay.n_layers):
        g = &lay.layer[l]
        if g.deferred and cm > 0:
            memcpy(G0 + g.w_off + r0 * g.n_in, work + lay.in_off[l],
                   cm * g.n_in * sizeof(floating))
            memcpy(G0 + g.w_off + batch_size * g.n_in + r0 * g.n_out, work + lay.d_off[l + 1],
                   cm * g.n_out * sizeof(floating))


cdef void deferred_steps(floating* params, Layout* lay, floating* G0, Py_ssize_t m,
                         Py_ssize_t batch_size, const double* hyper, Team* team,
                         bint whole) noexcept nogil:
    """The SGD step of each deferred dense layer (team_defer) for a batch of
    m rows, this thread's share of W's rows [i0, i1), or all of them where
    each thread keeps its own W (whole: train_team's replicas):

      W[i0:i1] := (1 - lr l2) W[i0:i1] - lr/m A[:, i0:i1]^T D

    from the batch's A and D that the team gathered (deferred_rows): the
    product train_epoch_impl's fused step takes, the same bits. After the
    batch's first barrier, when every thread has used W."""
    cdef Py_ssize_t l, i0, i1
    cdef Geometry* g
    cdef float alpha = <float> (-hyper[H_LR] / m)
    cdef float beta = <float> (1 - hyper[H_LR] * hyper[H_L2])
    if floating is float:
        for l in range(lay.n_layers):
            g = &lay.layer[l]
            if not g.deferred:
                continue
            i0 = 0 if whole else share(g.n_in, team.id, team.size, 1)
            i1 = g.n_in if whole else share(g.n_in, team.id + 1, team.size, 1)
            if i1 > i0:
                sg_gemm(i1 - i0, g.n_out, m, alpha, G0 + g.w_off + i0, 1, g.n_in,
                        G0 + g.w_off + batch_size * g.n_in, g.n_out, beta,
                        params + g.w_off + i0 * g.n_out, g.n_out)


cdef int train_team_impl(const input_t* X, const floating* Y,
                         const floating* sample_weight, const int64_t* order,
                         Py_ssize_t n, floating* params, floating* state,
                         Layout* lay, floating slope, int loss, Py_ssize_t batch_size,
                         int opt, const double* hyper, int augment,
                         uint64_t seed, floating* work, Py_ssize_t stride,
                         int64_t* control, Shared* shared, Team* team,
                         floating* own, bint whole, Py_ssize_t S) noexcept nogil:
    """train_epoch_impl as one thread of a team that shares each batch.

    Each batch of m rows is cut into S slices, whatever the team's size T
    (1 <= T <= S): slice j is rows [j*m/S, (j+1)*m/S), done in chunks of
    lay.capacity rows into its own gradient buffer G_j (P entries after the
    workspace of region j: work + j*stride + lay.work_size). Thread t does
    slices [t*S/T, (t+1)*S/T) with its own workspace (work + t*stride). At a
    barrier the threads then sum G_0 + G_1 + ... + G_{S-1} in that order,
    add the penalty gradient and take the optimizer step, each on its
    share of the parameters (the parameters' slices [t*S/T, (t+1)*S/T) of
    S, each slice on its own), and meet at a second barrier. With
    clipping, the squares of the gradient are summed by those S slices of
    the parameters, and after a barrier between the two every thread
    scales each of its slices by the factor the total of the S sums (in
    order) gives, then steps it. So the weights,
    the loss and the count of correct rows depend on S, never on T: a team
    that forms on however many cores are idle gives the bits of the whole
    team (shared.loss and shared.correct have S entries, by slice). Every BLAS call is single-threaded (the caller limits
    the BLAS). There is no fused SGD step: the gradients must be summed
    first; except for the dense layers team_defer marks, whose W each
    thread steps for its share of W's rows after the first barrier, from
    the batch's activations and deltas that every thread copied
    (deferred_rows, deferred_steps). Where the threads are far apart
    (train_team; whole), each keeps its own copy of every W it steps so
    (own: P entries, params for thread 0), steps all of its rows, and after
    the batch copies the other parameters from params: no line of W is then
    written by one thread and read by the other. A thread whose rows give
    a loss that is not finite marks the batch, and after the first barrier
    every thread returns DIVERGED before the step; thread 0 alone reads the
    stop request, and the team acts on what it read.
    """
    cdef Py_ssize_t k, c, start, m, first, lo, hi, cm, r, u, i, blk, b0, b1, e
    cdef Py_ssize_t L = lay.n_layers
    cdef Py_ssize_t T = team.size, P = lay.n_params, j, q0, q1
    cdef Py_ssize_t j0 = S * team.id // T, j1 = S * (team.id + 1) // T   # this thread's slices
    cdef Geometry* g0 = &lay.layer[0]
    cdef Py_ssize_t cap = lay.capacity, n_in = g0.n_in, n_out = lay.layer[L - 1].n_out
    cdef int out_act = lay.layer[L - 1].act
    cdef floating* mine = work + team.id * stride
    cdef floating* G                # (P,) slice j's gradient
    cdef floating* G0 = work + lay.work_size
    cdef floating* Gu
    cdef floating* A0 = mine + lay.a_off[0]
    cdef floating* A_out = mine + lay.a_off[L]
    cdef floating* Yb = mine + lay.y_off
    cdef floating* swb = mine + lay.sw_off if sample_weight != NULL else NULL
    cdef double chunk_loss
    cdef int64_t steps = control[STEPS]
    cdef bint penalty = hyper[H_L2] != 0 or hyper[H_L1] != 0
    cdef double clip = hyper[H_CLIP_NORM], squares
    cdef bint bad = False           # a chunk of this thread's had a loss not finite
    if team.id == 0:
        shared.stop = control[STOP_REQUEST] != 0
        shared.diverged = False
    barrier()
    for k in range((n + batch_size - 1) // batch_size):
        if shared.stop:
            return STOPPED
        start = k * batch_size
        m = batch_size if start + batch_size <= n else n - start
        for j in range(j0, j1):
            lo = start + m * j // S
            hi = start + m * (j + 1) // S
            G = work + j * stride + lay.work_size
            c = 0
            first = lo
            while first < hi:
                cm = cap if first + cap <= hi else hi - first
                gather_chunk(X, Y, lay.labels, sample_weight, order + first, cm, g0, n_out,
                             augment, seed, first, A0, Yb, swb)
                forward_impl(own, lay, slope, A0, mine, A_out, cm, True, seed, first)
                chunk_loss = output_delta_impl(loss, out_act, slope, A_out, Yb, swb,
                                               mine + lay.d_off[L], cm, n_out)
                if not isfinite(chunk_loss):
                    shared.diverged = bad = True
                    break
                shared.loss[j] += chunk_loss
                shared.correct[j] += count_correct(A_out, Yb, cm, n_out)
                backward_impl(own, lay, slope, mine, cm, (<floating> 1) / m,
                              0 if c == 0 else 1, 0 if c == 0 else 1, G)
                deferred_rows(lay, mine, G0, first - start, cm, batch_size)
                c += 1
                first += cm
            if c == 0:              # (a deferred W of G0 holds the batch's rows)
                copy_not_deferred(lay, G, NULL)
            if bad:
                break
        barrier()
        if shared.diverged:
            return DIVERGED
        deferred_steps(own, lay, G0, m, batch_size, hyper, team, whole)
        # sum the gradients, add the penalty and step, a cache-sized block of
        # each of this thread's slices of the parameters at a time (a
        # deferred layer's W left out: done)
        for j in range(j0, j1):
            q0 = P * j // S
            q1 = P * (j + 1) // S
            squares = 0
            for blk in range((q1 - q0 + STEP_BLOCK - 1) // STEP_BLOCK):
                b0 = q0 + blk * STEP_BLOCK
                b1 = b0 + STEP_BLOCK if b0 + STEP_BLOCK < q1 else q1
                while b0 < b1:
                    e = not_deferred(lay, b0, b1)
                    if e < 0:       # b0 in a deferred W: on past it
                        b0 = min(-e, b1)
                        continue
                    for i in range(b0, e):
                        state[i] = G0[i]
                    for u in range(1, S):
                        Gu = work + u * stride + lay.work_size
                        for i in range(b0, e):
                            state[i] = state[i] + Gu[i]
                    if penalty:
                        penalty_range_impl(params, state, lay, <floating> hyper[H_L2],
                                           <floating> hyper[H_L1], b0, e)
                    if clip > 0:
                        squares += sum_squares(state + b0, e - b0)
                    else:
                        optimizer_step_impl(opt, params + b0, state + b0, P, e - b0, hyper,
                                            steps + k + 1)
                    b0 = e
            shared.squares[j] = squares
        if clip > 0:
            # the whole gradient's norm: the S slices' sums added in order
            barrier()
            squares = 0
            for u in range(S):
                squares += shared.squares[u]
            # scaled and stepped by the same slices of the parameters
            for j in range(j0, j1):
                q0 = P * j // S
                q1 = P * (j + 1) // S
                scale_impl(state + q0, q1 - q0, clip_scale(clip, squares))
                optimizer_step_impl(opt, params + q0, state + q0, P, q1 - q0, hyper,
                                    steps + k + 1)
        if team.id == 0:
            control[STEPS] += 1
            control[ROWS_DONE] += m
            shared.stop = control[STOP_REQUEST] != 0
        barrier()
        if whole and team.id > 0:   # the parameters the team stepped in params
            copy_not_deferred(lay, own, params)
    return DONE


cdef void train_team(const input_t* X, const floating* Y,
                     const floating* sample_weight, const int64_t* order,
                     Py_ssize_t n, floating* params, floating* state,
                     Layout* lay, floating slope, int loss, Py_ssize_t batch_size,
                     int opt, const double* hyper, int augment,
                     uint64_t seed, floating* work, Py_ssize_t stride,
                     int64_t* control, Shared* shared, int64_t* sync, floating* replicas,
                     Py_ssize_t replica_width, Py_ssize_t slices, int* status) noexcept nogil:
    """train_team_impl as this thread's part of the current OpenMP team
    (denormals flushed to zero: see train_epoch). With a deferred layer
    (team_defer; replicas not NULL) the team first asks team_far whether
    its threads are far apart, and if so thread t > 0 trains on its own
    copy of params (replicas + (t - 1) * replica_width), which
    train_team_impl keeps in step. sync: the team's sync words
    (_team_sync)."""
    cdef Team team
    cdef int mine
    cdef unsigned int fp = flush_denormals()
    cdef floating* own = params
    cdef bint whole
    team_join(&team)
    whole = replicas != NULL and team.size > 1 and team_far(sync, shared, &team)
    if whole and team.id > 0:
        own = replicas + (team.id - 1) * replica_width
        memcpy(own, params, lay.n_params * sizeof(floating))
    mine = train_team_impl(X, Y, sample_weight, order, n, params, state, lay, slope, loss,
                           batch_size, opt, hyper, augment, seed, work, stride, control,
                           shared, &team, own, whole, slices)
    restore_fp(fp)
    if team.id == 0:
        status[0] = mine


cdef inline Py_ssize_t share(Py_ssize_t n, Py_ssize_t t, Py_ssize_t T,
                             Py_ssize_t align) noexcept nogil:
    """Where thread t's share of n items starts when T threads split them:
    t*n/T rounded to a multiple of align (share(n, T, T, .) = n)."""
    cdef Py_ssize_t s
    if t >= T:
        return n
    s = (n * t // T + align // 2) // align * align
    return s if s < n else n


cdef int train_units_impl(const input_t* X, const float* Y, const float* sample_weight,
                          const int64_t* order, Py_ssize_t n, float* params, float* padded,
                          Layout* lay,
                          float slope, int loss, Py_ssize_t batch_size, const double* hyper,
                          int augment, uint64_t seed, float* work, int64_t* control,
                          Shared* shared, Team* team) noexcept nogil:
    """train_epoch_impl's fused SGD for a dense network, one thread of a team
    that shares one workspace: the rows of each batch for the forward pass,
    the units of each layer for the backward pass.

    The weights are those of padded (pad_layout: each W's rows on 64-byte
    lines), the biases those of params; the caller copies W in and out.

    One chunk a batch (m <= lay.capacity rows). With [a, b) thread t's share
    of a range (`share`):
      forward  rows [r0, r1) of the batch through every layer: gather (and
               shift), dropout, Z = in W + b, act, output delta, loss;
      backward for l = L-1 .. 0, the input units [i0, i1) of layer l:
               delta_{l-1}[:, i0:i1] = (delta_l W_l[i0:i1, :]^T) * act'(z) [* mask],
               W_l[i0:i1, :] := (1 - lr l2/n) W_l[i0:i1, :] - lr/m in_l[:, i0:i1]^T delta_l,
               each row of W_l read and then written by the thread that owns it
               (so each thread's rows stay in its core's cache), and
               b_l[j0:j1] := b_l[j0:j1] - lr/m sum_rows delta_l[:, j0:j1].
    A barrier after the forward pass and after each layer's backward (L + 1
    a batch). Every entry is computed by smallgemm.h's kernels, whose result
    does not depend on the block it falls in, so the parameters are
    bit-identical for any team size, one thread included (the loss, summed
    per thread, rounds differently). Stops and divergence as train_team_impl.
    """
    cdef Py_ssize_t k, l, r, q, start, m, r0, r1, j0, j1, i0, i1, I, O, L = lay.n_layers
    cdef Py_ssize_t t = team.id, T = team.size
    cdef Geometry* g = &lay.layer[0]
    cdef Py_ssize_t n_in = g.n_in, n_out = lay.layer[L - 1].n_out
    cdef int out_act = lay.layer[L - 1].act, act_in
    cdef float* A0 = work + lay.a_off[0]
    cdef float* A_out = work + lay.a_off[L]
    cdef float* Yb = work + lay.y_off
    cdef float* swb = work + lay.sw_off if sample_weight != NULL else NULL
    cdef float* src
    cdef float* dst
    cdef float* D
    cdef float* dA
    cdef float* W
    cdef const float* mask
    cdef float lr = <float> hyper[H_LR], alpha
    cdef float beta_w = <float> (1 - hyper[H_LR] * hyper[H_L2])
    cdef double chunk_loss
    if t == 0:
        shared.stop = control[STOP_REQUEST] != 0
        shared.diverged = False
    barrier()
    for k in range((n + batch_size - 1) // batch_size):
        if shared.stop:
            return STOPPED
        start = k * batch_size
        m = batch_size if start + batch_size <= n else n - start
        alpha = -lr / m
        r0 = share(m, t, T, 1)
        r1 = share(m, t + 1, T, 1)
        # forward: this thread's rows, through every layer
        if r1 > r0:
            gather_chunk(X, Y, lay.labels, sample_weight, order + start + r0, r1 - r0, g, n_out,
                         augment, seed, start + r0, A0 + r0 * n_in, Yb + r0 * n_out,
                         swb + r0 if swb != NULL else NULL)
            if lay.mask_off[0] >= 0:
                dropout_impl(A0 + r0 * n_in, work + lay.mask_off[0] + r0 * n_in,
                             work + lay.in_off[0] + r0 * n_in, r1 - r0, n_in, lay.keep[0],
                             seed, start + r0, INPUT_STREAM)
            for l in range(L):
                g = &lay.layer[l]
                I = g.n_in
                O = g.n_out
                src = work + lay.in_off[l] + r0 * I
                dst = work + lay.a_off[l + 1] + r0 * O
                for r in range(r1 - r0):
                    for q in range(O):
                        dst[r * O + q] = params[g.b_off + q]
                sg_gemm(r1 - r0, O, I, 1, src, I, 1, padded + g.wp_off, g.ldw, 1, dst, O)
                activate_impl(g.act, slope, dst, r1 - r0, O)
                if l + 1 < L and lay.mask_off[l + 1] >= 0:
                    dropout_impl(dst, work + lay.mask_off[l + 1] + r0 * O,
                                 work + lay.in_off[l + 1] + r0 * O, r1 - r0, O,
                                 lay.keep[l + 1], seed, start + r0, l + 1)
            g = &lay.layer[0]
            chunk_loss = output_delta_impl(loss, out_act, slope, A_out + r0 * n_out,
                                           Yb + r0 * n_out, swb + r0 if swb != NULL else NULL,
                                           work + lay.d_off[L] + r0 * n_out, r1 - r0, n_out)
            if not isfinite(chunk_loss):
                shared.diverged = True
            shared.loss[t] += chunk_loss
            shared.correct[t] += count_correct(A_out + r0 * n_out, Yb + r0 * n_out,
                                               r1 - r0, n_out)
        barrier()
        if shared.diverged:
            return DIVERGED
        # backward: this thread's rows of each layer's W (its input units)
        for l in range(L - 1, -1, -1):
            g = &lay.layer[l]
            I = g.n_in
            O = g.n_out
            D = work + lay.d_off[l + 1]
            W = padded + g.wp_off
            i0 = share(I, t, T, 1)
            i1 = share(I, t + 1, T, 1)
            if i1 > i0:
                if l > 0:
                    dA = work + lay.d_off[l]
                    act_in = lay.layer[l - 1].act
                    mask = work + lay.mask_off[l] if lay.mask_off[l] >= 0 else NULL
                    sg_nt(m, i1 - i0, O, D, W + i0 * g.ldw, g.ldw, dA + i0, I)
                    for r in range(m):
                        activation_grad_impl(act_in, slope, work + lay.a_off[l] + r * I + i0,
                                             dA + r * I + i0, i1 - i0)
                        if mask != NULL:
                            multiply_impl(dA + r * I + i0, mask + r * I + i0, i1 - i0)
                sg_gemm(i1 - i0, O, m, alpha, work + lay.in_off[l] + i0, 1, I, D, O, beta_w,
                        W + i0 * g.ldw, g.ldw)
            j0 = share(O, t, T, 1)
            j1 = share(O, t + 1, T, 1)
            bias_range_impl(D, alpha, <float> 1, params + g.b_off, work + g.colsum_off, m, O,
                            j0, j1)
            if l > 0:
                barrier()
        if t == 0:
            control[STEPS] += 1
            control[ROWS_DONE] += m
            shared.stop = control[STOP_REQUEST] != 0
        barrier()
    return DONE


cdef void train_units(const input_t* X, const float* Y, const float* sample_weight,
                      const int64_t* order, Py_ssize_t n, float* params, float* padded,
                      Layout* lay,
                      float slope, int loss, Py_ssize_t batch_size, const double* hyper,
                      int augment, uint64_t seed, float* work, int64_t* control,
                      Shared* shared, int* status) noexcept nogil:
    """train_units_impl as this thread's part of the current OpenMP team
    (denormals flushed to zero: see train_epoch)."""
    cdef Team team
    cdef int mine
    cdef unsigned int fp = flush_denormals()
    team_join(&team)
    mine = train_units_impl(X, Y, sample_weight, order, n, params, padded, lay, slope, loss,
                            batch_size, hyper, augment, seed, work, control, shared, &team)
    restore_fp(fp)
    if team.id == 0:
        status[0] = mine


cdef bint units_apply(Layout* lay, int optimizer, const double* hyper,
                      Py_ssize_t batch_size) noexcept nogil:
    """Whether train_units_impl runs an epoch: a dense network's fused SGD
    step on one-chunk batches whose every layer's products take smallgemm.h
    (`small`: at most small_rows rows, and SMALL_ROWS_ANY for a layer with
    more than SMALL_WEIGHTS weights; float32, on a CPU with the kernels)."""
    cdef Py_ssize_t l
    if lay.bf_off >= 0:
        return False        # a bfloat16 network's products go through gemm_bf16
    if not (SMALL_GEMM and optimizer == SGD and hyper[H_L1] == 0 and hyper[H_CLIP_NORM] == 0
            and batch_size <= lay.capacity and batch_size <= small_rows):
        return False
    for l in range(lay.n_layers):
        if lay.layer[l].kind != DENSE or not small(batch_size,
                                                   lay.layer[l].n_in * lay.layer[l].n_out):
            return False
    return True


cdef bint fused_on = True
# Batches of more rows than this take their first layer's weight step on
# smallgemm.h's kernel (12 rows of W by 32 columns, the batch's rows
# row-major: W read and written once), not fusedgemm.h's (alpha D in
# registers 16 rows at a time: W read and written once per 16 rows). In one
# process, teams forced, medians of 5 paired epochs (2026-12-06, Emerald
# Rapids), smallgemm.h's / fusedgemm.h's: mid b64 1.10x, b32 1.10x, b10
# 0.96x; [784, 100, 10] b32 1.04x; [784, 30, 10] b10 0.84x.
cdef Py_ssize_t FUSED_STEP_ROWS = 16

# train_fused_impl reads a float32 X's rows where they lie (fusedgemm.h's
# direct kernels) rather than putting them k-major first (fastnn_sgk_rows),
# for a thread with at most FUSED_IN_PLACE_COLUMNS columns of the first layer:
# its forward and step each read the batch's rows once per 32 columns, where
# the k-major copy costs one transposition of 16 rows (10 of them the batch's
# at batch 10) whatever the columns. Epochs of 60,000 rows at batch 10, in
# place / k-major, medians of 6-8 pairs in one process (AMD EPYC Zen 5, 2
# vCPUs, 2026-12-07): [784, 30, 10] one thread (30 columns) 1.137x, two (16
# each) 1.243x; [784, 100, 10] two (about 50 each) 1.054x, one (100) 0.980x.
# Without AVX-512 the same limit chooses fusedgemm.h's AVX2 kernels (whole
# panels of 16 to W's padded width) over smallgemm.h's (the batch gathered
# first; a last panel of 14 columns in pieces of 8, 4 and 2): on the rows in
# place, or on a gathered copy (a uint8 X, batches of more than
# FUSED_STEP_ROWS, or in-place reads turned off) where the thread's pads are
# fewer than FUSED_AVX2_PADS. A
# batch's first-layer forward and step, 10 rows of 60,000, against
# smallgemm.h's after a gather (AMD EPYC Zen 3, 2 vCPUs, 2026-12-07,
# interleaved in one process, medians of 20 chunks of 300 batches): in place
# 30 columns 0.74x, 16 0.77x, the last 14 of 30 (a team's second thread)
# 0.55x, 32 0.86x, 48 0.90x, 64 0.93x and 1.02x (two runs); gathered, 2 pads
# or none: 30 0.76x, the last 14 0.69x, 16 0.97x, 32 0.99x; gathered, 8 pads
# or more: 20 columns 1.08x, 40 1.05x, 100 1.04x.
# set_fused_in_place turns it off (the tests, measuring): the same bits.
cdef Py_ssize_t FUSED_IN_PLACE_COLUMNS = 64
cdef Py_ssize_t FUSED_AVX2_PADS = 8
cdef bint fused_in_place = True
cdef int64_t in_place_epochs = 0      # threads' epochs with a batch read in place (tests)


def set_fused_in_place(bint on):
    """Whether a fused epoch reads a float32 X's rows in place (the
    default), or copies them first as it does other inputs' (k-major with
    AVX-512, gathered row-major without); returns the previous setting. The
    parameters are the same bits either way."""
    global fused_in_place
    previous = fused_in_place
    fused_in_place = on
    return previous
# Batches of up to fused_rows rows take train_fused_impl (SGK_ROWS at most):
# measured in benchmarks/README.md.
cdef Py_ssize_t fused_rows = 64
cdef Py_ssize_t fused_epochs = 0     # epochs train_fused_impl ran, for the tests


cdef inline Py_ssize_t fused_columns(const Geometry* g0, Py_ssize_t t,
                                     Py_ssize_t T) noexcept nogil:
    """Where thread t's columns of the first layer start in train_fused_impl:
    whole groups of LINE_FLOATS floats of its padded rows (share), at most
    O. fused_columns(g0, T, T) = O."""
    cdef Py_ssize_t c = share(g0.ldw // LINE_FLOATS, t, T, 1) * LINE_FLOATS
    return c if c < g0.out_c else g0.out_c


cdef int train_fused_impl(const input_t* X, const float* Y, const float* sample_weight,
                          const int64_t* order, Py_ssize_t n, float* params, float* padded,
                          float* work, float* XT, float* S, int64_t* sync,
                          float* shared_work, bint split, float* team_params,
                          float* team_padded, Layout* lay, float slope, int loss,
                          Py_ssize_t batch_size, const double* hyper, int64_t* control,
                          Shared* shared, Team* team,
                          Py_ssize_t* read_in_place) noexcept nogil:
    """train_units_impl's SGD epoch, with the first layer's columns split
    among the team and every thread's parameters its own (*read_in_place
    counts this thread's batches read in place).

    params, padded, work and XT are this thread's own (train_fused): a copy
    of params, of the padded Ws (pad_layout), a workspace with lay's offsets,
    and the batch's rows k-major (I_0, sgk_stride(batch_size)) for
    fusedgemm.h. S (2, batch_size, ldw_0) is shared: A_1 of even and odd
    batches; sync holds the team's spin barrier (fastnn_spin_barrier:
    sync[0] and sync[8]).

    With [c0, c1) this thread's columns of the first layer (fused_columns),
    one batch of m rows:
      XT := X[rows]^T, read in place (every thread puts all of them), and
        for more than FUSED_STEP_ROWS rows A0 := X[rows] too (without
        AVX-512, A0 only); or, for a float32 X, a batch of at most
        FUSED_STEP_ROWS rows and a thread of at most FUSED_IN_PLACE_COLUMNS
        columns, no copy: the kernels read X[rows] where they lie (xrows);
      A_1[:, c0:c1] = act(X[rows] W_0[:, c0:c1] + b_0[c0:c1]), into S
        (without AVX-512: fusedgemm.h's AVX2 kernels on the rows in place
        or A0's, to W_0's padded width, for a thread of at most
        FUSED_IN_PLACE_COLUMNS columns; smallgemm.h's from A0 for more
        columns, or for A0 where the thread has FUSED_AVX2_PADS pads or
        more);
      one barrier: every thread now reads all of A_1;
      layers 1 .. L-1 forward, the output delta and the loss, every thread
        alike on its own copies (these layers are small: fused_apply);
      backward l = L-1 .. 1 alike, but delta_1 only for columns [c0, c1):
        delta_l = (delta_{l+1} W_l^T) * act'(z_l),
        W_l := (1 - lr l2/n) W_l - lr/m A_l^T delta_{l+1},
        b_l := b_l - lr/m sum_rows delta_{l+1};
      W_0[:, c0:c1] and b_0[c0:c1] the same way from delta_1[:, c0:c1]
        (from XT, or from A0 on smallgemm.h's kernel; without AVX-512 as
        the forward).
    With split (a team whose later layers have enough work a batch:
    fused_split), each thread takes only its share of the batch's rows
    through the later layers' forward pass and deltas (delta_1 for all
    columns), into shared_work (lay's offsets; rows of their own); then a
    second barrier, and each thread steps its share of every later layer's
    columns (fused_columns), reading every row. The later layers are then
    the team's one copy, team_params and team_padded (the epoch's own):
    no thread reads W_l while another steps it (the deltas come before the
    second barrier, the next batch's forward after the next first one).
    Without split, every thread keeps its own copy of the later layers and
    steps all of it (no second barrier).
    Each thread keeps its columns of W_0 in its own cache, and any copies of
    the rest agree with the other threads' bit for bit: the same products
    (smallgemm.h's, whose entries do not depend on the block they fall in)
    on the same operands. So the parameters are those of train_units_impl,
    bit for bit, for any team size; only the loss sums in another order.
    One barrier a batch (two with split); a stop (read by thread 0 before the
    first) or a loss that is not finite (seen by every thread, or shared
    before the second) ends the epoch before the step.
    """
    cdef Py_ssize_t k, l, r, j, j0, j1, start, m, nxt, I, O, ldi, i0, i1, q0, q1, mq
    cdef Py_ssize_t L = lay.n_layers
    cdef Py_ssize_t t = team.id, T = team.size
    cdef Geometry* g0 = &lay.layer[0]
    cdef Geometry* g
    cdef Py_ssize_t I0 = g0.n_in, O0 = g0.out_c, lds = g0.ldw
    cdef Py_ssize_t n_out = lay.layer[L - 1].n_out
    cdef Py_ssize_t c0 = fused_columns(g0, t, T), c1 = fused_columns(g0, t + 1, T)
    cdef int out_act = lay.layer[L - 1].act
    cdef float* W0 = padded + g0.wp_off             # (I0, lds)
    cdef float* A0 = work + lay.a_off[0]            # (m, I0): the batch's rows, row-major
    cdef float* lw = shared_work if split else work  # the later layers' A_l and D_l
    cdef float* lpar = team_params if split else params    # the later layers' b_l
    cdef float* lpad = team_padded if split else padded    # and W_l (padded)
    cdef float* Yb = work + lay.y_off               # (m, n_out)
    cdef float* swb = work + lay.sw_off if sample_weight != NULL else NULL
    cdef float* Z                                   # (m, lds): A_1, this batch's half of S
    cdef float* src
    cdef float* dst
    cdef float* D
    cdef float* dA
    cdef float* W
    cdef float lr = <float> hyper[H_LR], alpha
    cdef float beta_w = <float> (1 - hyper[H_LR] * hyper[H_L2])
    cdef double chunk_loss
    cdef bint k_major = sg_get_isa() == 2     # fusedgemm.h's kernels: AVX-512
    # AVX2's (see FUSED_IN_PLACE_COLUMNS): fusedgemm.h's padded kernels for
    # a thread with few columns, on the rows in place, or on a gathered copy
    # where the pads are few; smallgemm.h's otherwise
    cdef Py_ssize_t cw = (g0.ldw if c1 == O0 else c1) - c0
    cdef bint padded_avx2 = (not k_major and 0 < c1 - c0 <= FUSED_IN_PLACE_COLUMNS
                             and cw - (c1 - c0) < FUSED_AVX2_PADS)
    cdef bint direct, panels16
    cdef const float* xrows[64]                 # SGK_ROWS: the batch's rows in X
    cdef const float* xnext[64]                 # and the next batch's
    for k in range((n + batch_size - 1) // batch_size):
        start = k * batch_size
        m = batch_size if start + batch_size <= n else n - start
        alpha = -lr / m
        Z = S + (k % 2) * batch_size * lds
        # forward, first layer: this thread's columns
        nxt = n - start - m if n - start - m < batch_size else batch_size
        # a float32 X is read where it lies (xrows; the next batch's rows
        # requested meanwhile by the first layer's forward) by a thread with
        # few columns of the first layer; other inputs, larger batches and
        # more columns put k-major into XT first (see FUSED_IN_PLACE_COLUMNS),
        # or without AVX-512 gathered into A0, whose rows xrows then points to
        direct = (input_t is float and fused_in_place
                  and m <= FUSED_STEP_ROWS and 0 < c1 - c0 <= FUSED_IN_PLACE_COLUMNS)
        panels16 = not k_major and (direct or padded_avx2)
        if direct:
            read_in_place[0] += 1
            if input_t is float:
                for r in range(m):
                    xrows[r] = X + order[start + r] * I0
                for r in range(nxt):
                    xnext[r] = X + order[start + m + r] * I0
        elif k_major:
            sgk_rows(X, input_t is uint8_t, I0, order + start, m, order + start + m, nxt, XT,
                     A0 if m > FUSED_STEP_ROWS else NULL)
        else:
            gather_rows(X, I0, order + start, m, A0)
            prefetch_rows(X, I0 * sizeof(input_t), order + start + m, nxt)
            if panels16:
                for r in range(m):
                    xrows[r] = A0 + r * I0
        if c1 > c0:
            for r in range(m):
                for j in range(c0, c1):
                    Z[r * lds + j] = params[g0.b_off + j]
            if k_major:
                sgk_forward(m, c1 - c0, I0, XT, xrows if direct else NULL, xnext,
                            nxt if direct else 0, W0 + c0, lds, Z + c0, lds)
            elif panels16:
                sgk2_forward(m, cw, I0, xrows, xnext, nxt if direct else 0, W0 + c0, lds,
                             Z + c0, lds)
            else:
                sg_gemm(m, c1 - c0, I0, 1, A0, I0, 1, W0 + c0, lds, 1, Z + c0, lds)
            # whole vectors: the last group of 16 columns with its pads (S
            # starts zeroed: act of a pad, again each batch, is finite and
            # never read), not a tail the vector loop takes piecemeal (a
            # team's thread with nielsen30's last 14 columns took them as
            # 8 + 4 + 2 while the other waited at the barrier); and where
            # that is whole rows (one thread), all of them in one call (the
            # sigmoid was 5 % of a one-thread nielsen30 epoch, a call a row)
            if cw == lds:
                activate_flat(g0.act, slope, Z, m * lds)
            else:
                for r in range(m):
                    activate_flat(g0.act, slope, Z + r * lds + c0, cw)
        gather_targets(Y, lay.labels, n_out, order + start, m, Yb)
        if lay.labels == NULL:
            prefetch_rows(Y, n_out * sizeof(float), order + start + m, nxt)
        if swb != NULL:
            for r in range(m):
                swb[r] = sample_weight[order[start + r]]
        if t == 0:
            shared.stop_at[k % 2] = control[STOP_REQUEST] != 0
        if T > 1:
            spin_barrier(sync, sync + 8, T)
        if shared.stop_at[k % 2]:
            return STOPPED
        # later layers: rows [q0, q1) of the batch, this thread's share where the
        # team splits them (split), all of them otherwise; lw holds their A_l
        # and D_l (the team's shared workspace, or this thread's own)
        q0 = share(m, t, T, 1) if split else 0
        q1 = share(m, t + 1, T, 1) if split else m
        mq = q1 - q0
        for l in range(1, L):
            g = &lay.layer[l]
            I = g.n_in
            O = g.n_out
            src = Z if l == 1 else lw + lay.a_off[l]
            ldi = lds if l == 1 else I
            dst = lw + lay.a_off[l + 1]
            for r in range(q0, q1):
                for j in range(O):
                    dst[r * O + j] = lpar[g.b_off + j]
            if mq > 0:
                sg_gemm(mq, O, I, 1, src + q0 * ldi, ldi, 1, lpad + g.wp_off, g.ldw, 1,
                        dst + q0 * O, O)
                activate_impl(g.act, slope, dst + q0 * O, mq, O)
        chunk_loss = 0
        if mq > 0:
            chunk_loss = output_delta_impl(loss, out_act, slope, lw + lay.a_off[L] + q0 * n_out,
                                           Yb + q0 * n_out, swb + q0 if swb != NULL else NULL,
                                           lw + lay.d_off[L] + q0 * n_out, mq, n_out)
        if not isfinite(chunk_loss):
            if not split:
                return DIVERGED
            shared.diverged = True
        if split or t == 0:
            shared.loss[t] += chunk_loss
            shared.correct[t] += count_correct(lw + lay.a_off[L] + q0 * n_out, Yb + q0 * n_out,
                                               mq, n_out)
        # backward, layers L-1 .. 1: the deltas of rows [q0, q1) (delta_1 only
        # this thread's columns when every thread has every row), each before
        # its layer's step (W_l as it was in the forward pass)
        for l in range(L - 1, 0, -1):
            g = &lay.layer[l]
            I = g.n_in
            O = g.n_out
            D = lw + lay.d_off[l + 1]
            W = lpad + g.wp_off
            dA = lw + lay.d_off[l]
            src = Z if l == 1 else lw + lay.a_off[l]
            ldi = lds if l == 1 else I
            i0 = c0 if l == 1 and not split else 0
            i1 = c1 if l == 1 and not split else I
            if i1 > i0 and mq > 0:
                sg_nt(mq, i1 - i0, O, D + q0 * O, W + i0 * g.ldw, g.ldw, dA + q0 * I + i0, I)
                for r in range(q0, q1):
                    activation_grad_impl(lay.layer[l - 1].act, slope, src + r * ldi + i0,
                                         dA + r * I + i0, i1 - i0)
            if not split:
                sg_gemm(I, O, m, alpha, src, 1, ldi, D, O, beta_w, W, g.ldw)
                bias_range_impl(D, alpha, <float> 1, params + g.b_off, work + g.colsum_off, m,
                                O, 0, O)
        if split:
            # every row's deltas in: each thread's steps take all of them
            spin_barrier(sync, sync + 8, T)
            if shared.diverged:
                return DIVERGED
            for l in range(L - 1, 0, -1):
                g = &lay.layer[l]
                src = Z if l == 1 else lw + lay.a_off[l]
                ldi = lds if l == 1 else g.n_in
                D = lw + lay.d_off[l + 1]
                j0 = fused_columns(g, t, T)
                j1 = fused_columns(g, t + 1, T)
                if j1 > j0:
                    sg_gemm(g.n_in, j1 - j0, m, alpha, src, 1, ldi, D + j0, g.n_out, beta_w,
                            lpad + g.wp_off + j0, g.ldw)
                    bias_range_impl(D, alpha, <float> 1, lpar + g.b_off, work + g.colsum_off,
                                    m, g.n_out, j0, j1)
        # backward, first layer: this thread's columns
        if c1 > c0:
            D = lw + lay.d_off[1]
            if panels16:
                sgk2_step(m, c1 - c0, cw, I0, alpha, xrows, D + c0, O0, beta_w, W0 + c0, lds)
            elif m > FUSED_STEP_ROWS or not k_major:
                sg_gemm(I0, c1 - c0, m, alpha, A0, 1, I0, D + c0, O0, beta_w, W0 + c0, lds)
            else:
                sgk_step(m, c1 - c0, I0, alpha, XT, xrows if direct else NULL, D + c0, O0,
                         beta_w, W0 + c0, lds)
            bias_range_impl(D, alpha, <float> 1, params + g0.b_off, work + g0.colsum_off, m,
                            O0, c0, c1)
        if t == 0:
            control[STEPS] += 1
            control[ROWS_DONE] += m
    return DONE


cdef void train_fused(const input_t* X, const float* Y, const float* sample_weight,
                      const int64_t* order, Py_ssize_t n, float* params, float* padded,
                      float* region, Py_ssize_t stride, Py_ssize_t w_size, float* S,
                      int64_t* sync, float* shared_work, bint split, Layout* lay, float slope,
                      int loss, Py_ssize_t batch_size, const double* hyper,
                      int64_t* control, Shared* shared, int* status) noexcept nogil:
    """train_fused_impl as this thread's part of the current OpenMP team:
    its region (stride floats from thread to thread; fused_region) starts
    as a copy of params and of padded (w_size floats); afterwards its
    columns of the first layer, and thread 0's copy of the other layers, go
    back there (with split the team steps the other layers in params and
    padded themselves). A team that would split first asks team_far
    whether its threads are far apart, and then does not. Denormals are
    flushed to zero (see train_epoch)."""
    cdef Team team
    cdef int mine
    cdef Py_ssize_t read_in_place = 0
    cdef unsigned int fp = flush_denormals()
    cdef Py_ssize_t l, i, c0, c1, P = lay.n_params
    cdef Py_ssize_t w_off = (P + LINE_FLOATS - 1) // LINE_FLOATS * LINE_FLOATS
    cdef Py_ssize_t x_off = (fused_region(lay, w_size)
                             - lay.layer[0].n_in * sgk_stride(lay.capacity))
    cdef Geometry* g
    cdef float* own
    team_join(&team)
    own = region + team.id * stride
    memcpy(own, params, P * sizeof(float))
    memcpy(own + w_off, padded, w_size * sizeof(float))
    if split and team_far(sync, shared, &team):
        split = False       # each thread its own copy of the later layers
    mine = train_fused_impl(X, Y, sample_weight, order, n, own, own + w_off,
                            own + w_off + w_size, own + x_off, S, sync, shared_work, split,
                            params, padded, lay, slope, loss,
                            batch_size, hyper, control, shared, &team, &read_in_place)
    if read_in_place > 0:       # counted once an epoch: no shared line written a batch
        take(&in_place_epochs)
    barrier()
    g = &lay.layer[0]
    c0 = fused_columns(g, team.id, team.size)
    c1 = fused_columns(g, team.id + 1, team.size)
    if c1 > c0:
        for i in range(g.n_in):
            memcpy(padded + g.wp_off + i * g.ldw + c0, own + w_off + g.wp_off + i * g.ldw + c0,
                   (c1 - c0) * sizeof(float))
        memcpy(params + g.b_off + c0, own + g.b_off + c0, (c1 - c0) * sizeof(float))
    if team.id == 0:
        status[0] = mine
    if team.id == 0 and not split:       # with split the team stepped them in place
        for l in range(1, lay.n_layers):
            g = &lay.layer[l]
            memcpy(padded + g.wp_off, own + w_off + g.wp_off, g.n_in * g.ldw * sizeof(float))
            memcpy(params + g.b_off, own + g.b_off, g.out_c * sizeof(float))
    restore_fp(fp)


cdef Py_ssize_t fused_region(Layout* lay, Py_ssize_t w_size) noexcept nogil:
    """Floats of one thread's region in train_fused: params, the padded Ws
    (w_size floats), a workspace, then the rows k-major (I_0, capacity
    rounded up to 16),
    each on a 64-byte line; a multiple of two lines, so that two threads'
    regions never share one."""
    cdef Py_ssize_t w_off = (lay.n_params + LINE_FLOATS - 1) // LINE_FLOATS * LINE_FLOATS
    cdef Py_ssize_t size = w_off + w_size + lay.work_size
    size = (size + 2 * LINE_FLOATS - 1) // (2 * LINE_FLOATS) * (2 * LINE_FLOATS)
    return size + lay.layer[0].n_in * sgk_stride(lay.capacity)


# A fused team splits the rows of its later layers (train_fused_impl's
# split) where they take at least this many multiply-adds a batch:
# measured in benchmarks/README.md.
cdef Py_ssize_t FUSED_SPLIT_WORK = 1 << 20
cdef Py_ssize_t fused_split_work = FUSED_SPLIT_WORK


# A team that would split its later layers' rows (fused_split) first
# measures how far apart its threads are (team_far): from FAR_ROUND_TRIP ns
# for a value to go from thread 0 to another and back, each thread keeps its
# own copy of the later layers instead, and computes them all (no second
# barrier, and no line of them written by one thread and read by the
# other). mid ([784, 256, 128, 10], batch 64) on the two vCPUs of an AMD
# EPYC (Zen 5) VM, which the hypervisor put on one die or on two, a minute
# or less at a time: this round trip 44-69 ns or 342-416 ns. Epochs of each
# in turn in one process, unsplit / split: far apart 1.16, 1.05, 1.14,
# 1.03x; near 0.93, 0.91, 0.90, 0.90, 0.89x (benchmarks/README.md). A team
# with a deferred dense layer (team_defer) asks the same, and where far each
# thread keeps its own copy of params (train_team): conv20-sigmoid's
# 2,880 x 100 W, one-epoch fits in turn, medians: far 1.28x the shared W
# (1.25x one thread, which the shared W had trailed), near 0.94x.
cdef double FAR_ROUND_TRIP = 200.0
cdef int ROUND_TRIPS = 64
cpdef enum:
    PLACEMENT_MEASURED = 0      # team_far measures (the default)
    PLACEMENT_NEAR = 1          # taken as near: split where fused_split says
    PLACEMENT_FAR = 2           # taken as far: never split
cdef int team_placement = PLACEMENT_MEASURED
cdef Py_ssize_t far_epochs = 0          # split teams that ran unsplit, for the tests
cdef Py_ssize_t replicated_epochs = 0     # deferring teams that kept replicas (train_team)
cdef double last_round_trip = -1        # the last team_far's measure, in ns


cdef double measure_round_trip(int64_t* sync, Team* team) noexcept nogil:
    """fastnn_team_round_trip once every thread of the team is running (a
    barrier first): on thread 0 the round trip in ns, 0 on the others.
    sync: the team's barrier (sync[0], sync[8]) and the line of the round
    trips (sync[16], zero); see _team_sync."""
    spin_barrier(sync, sync + 8, team.size)
    return team_round_trip_ns(sync + 16, team.id, team.size, ROUND_TRIPS)


cdef _team_sync():
    """A team's sync words, zero: its spin barrier's two (sync[0], sync[8])
    and the line of the round trips (sync[16]), each on a 64-byte line of
    its own."""
    import numpy as np
    raw = np.zeros(32, dtype=np.int64)
    return raw[(-raw.ctypes.data) % 64 // 8:][:24]


cdef bint team_far(int64_t* sync, Shared* shared, Team* team) noexcept nogil:
    """Whether this team's threads are far apart (FAR_ROUND_TRIP, or the
    placement set_team_placement forces, as shared.placement holds it for
    the epoch: every thread reads that one value, or they would not meet at
    the same barriers): every thread calls it and gets thread 0's answer.
    sync: as measure_round_trip."""
    cdef double ns
    if shared.placement == PLACEMENT_NEAR:
        return False
    ns = measure_round_trip(sync, team)
    if team.id == 0:
        shared.round_trip = ns
        shared.far = shared.placement == PLACEMENT_FAR or ns >= FAR_ROUND_TRIP
    spin_barrier(sync, sync + 8, team.size)
    return shared.far


cdef bint fused_split(Layout* lay, Py_ssize_t batch_size, Py_ssize_t n_threads) noexcept nogil:
    """Whether a team of n_threads splits the rows of the layers after the
    first (train_fused_impl's split): their multiply-adds in a batch, at
    least fused_split_work, against a second barrier a batch."""
    cdef Py_ssize_t l, rest = 0
    for l in range(1, lay.n_layers):
        rest += lay.layer[l].n_in * lay.layer[l].n_out
    return n_threads > 1 and rest * batch_size >= fused_split_work


cdef bint fused_apply(Layout* lay, int optimizer, const double* hyper, Py_ssize_t batch_size,
                      int augment, Py_ssize_t n_threads) noexcept nogil:
    """Whether train_fused_impl runs an epoch (rather than train_units_impl
    or BLAS): a float32 dense network's fused SGD step (no L1, no clipping)
    on one-chunk batches of at most fused_rows rows (fusedgemm.h's and
    smallgemm.h's kernels, AVX-512's or AVX2's), without dropout
    or shifted images, for a network of two layers or more and at most SMALL_WEIGHTS parameters (each thread copies
    them all), whose layers after the first are small beside it (each
    thread of a team computes them all: at most a quarter of the first
    layer's weights between them). Measured in benchmarks/README.md."""
    cdef Py_ssize_t l, rest = 0
    if not (fused_on and SMALL_GEMM and lay.bf_off < 0
            and optimizer == SGD and hyper[H_L1] == 0 and hyper[H_CLIP_NORM] == 0
            and batch_size <= lay.capacity
            and batch_size <= fused_rows
            and lay.n_params <= SMALL_WEIGHTS
            and augment == NO_AUGMENT and lay.n_layers >= 2):
        return False
    for l in range(lay.n_layers):
        if lay.layer[l].kind != DENSE or lay.mask_off[l] >= 0:
            return False
        if l > 0:
            rest += lay.layer[l].n_in * lay.layer[l].n_out
    return n_threads == 1 or 4 * rest <= lay.layer[0].n_in * lay.layer[0].n_out


# --------------------------------------------------------------------------
# Checked Python entry points.
# --------------------------------------------------------------------------

cdef _check(bint ok, str message):
    if not ok:
        raise ValueError(message)


cdef Py_ssize_t _check_table(const int64_t[:, ::1] table, const double[::1] keep) except -1:
    """Raise ValueError unless the table describes a network the kernels can
    run safely: known codes, positive shapes, each layer's input the
    previous one's output, windows within the (padded) input, sizes that
    fit BLAS's 32-bit ints, and parameters laid out one layer after the
    other. Returns the number of parameters. Sizes are Python ints here,
    so nothing overflows while they are checked."""
    cdef Py_ssize_t l, j, L = table.shape[0]
    _check(table.shape[1] == N_COLS,
           f"the layer table needs {N_COLS} columns, not {table.shape[1]}")
    _check(1 <= L <= MAX_STREAMS - 2,
           f"the layer table needs 1 to {MAX_STREAMS - 2} rows, not {L}")
    _check(keep.shape[0] == 0 or keep.shape[0] == L,
           f"{keep.shape[0]} keep probabilities for {L} layers")
    for l in range(keep.shape[0]):
        _check(0 < keep[l] <= 1, f"keep probability {keep[l]} of layer {l} is outside (0, 1]")
    p = 0
    previous = None
    for l in range(L):
        kind, act, ih, iw, ic, oh, ow, oc, kh, kw, sh, sw, pt, pl, w_off, b_off = [
            int(table[l, j]) for j in range(N_COLS)]
        name = f"layer {l}"
        _check(0 <= kind < N_KINDS, f"{name}: unknown layer kind {kind}")
        _check(0 <= act < N_ACTIVATIONS, f"{name}: unknown activation code {act}")
        _check(act != SOFTMAX or l == L - 1, "softmax is only allowed on the output layer")
        _check(min(ih, iw, ic, oh, ow, oc, kh, kw, sh, sw) >= 1 and min(pt, pl) >= 0,
               f"{name}: shapes, windows and strides must be >= 1 and padding >= 0")
        _check(ih * iw * ic <= INT_MAX and oh * ow * oc <= INT_MAX,
               f"{name}: a sample has more than {INT_MAX} entries")
        _check(previous is None or previous == (ih, iw, ic),
               f"{name} takes {ih}x{iw}x{ic} inputs, but the layer before gives {previous}")
        previous = (oh, ow, oc)
        if kind == DENSE:
            _check(oh == ow == kh == kw == sh == sw == 1 and pt == pl == 0,
                   f"{name}: a dense layer's output is 1x1xO, without a window")
            w_size = ih * iw * ic * oc
        elif kind == CONV2D:
            _check(pt < kh and pl < kw, f"{name}: padding must be smaller than the window")
            _check((oh - 1) * sh - pt < ih and (ow - 1) * sw - pl < iw,
                   f"{name}: {oh}x{ow} outputs need windows beyond the padded input")
            _check(kh * kw * ic <= INT_MAX, f"{name}: a window has more than {INT_MAX} entries")
            w_size = kh * kw * ic * oc
        else:
            _check(act == IDENTITY, f"{name}: pooling layers have no activation")
            _check(pt == 0 and pl == 0 and oc == ic and (oh - 1) * sh + kh <= ih
                   and (ow - 1) * sw + kw <= iw,
                   f"{name}: pooling windows must lie inside the input, channels unchanged")
            _check(w_off == -1 and b_off == -1, f"{name}: pooling layers have no parameters")
            continue
        _check(w_off == p and b_off == p + w_size,
               f"{name}: its weights must be at offset {p} and its biases at {p + w_size}, "
               f"not {w_off} and {b_off}")
        p += w_size + oc
    return p


cdef _check_loss(int loss, int output):
    _check(0 <= loss < N_LOSSES, f"unknown loss code {loss}")
    _check(loss != CROSS_ENTROPY or output in (SIGMOID, SOFTMAX),
           "cross_entropy needs a sigmoid or softmax output layer")


cdef _check_problem(Layout* lay, double slope, int loss, Py_ssize_t x_rows,
                    Py_ssize_t x_cols, Py_ssize_t y_rows, Py_ssize_t y_cols):
    """The loss fits the output layer and X (x_rows, x_cols), Y (y_rows,
    y_cols) fit the network."""
    cdef Py_ssize_t n_in = lay.layer[0].n_in, n_out = lay.layer[lay.n_layers - 1].n_out
    # leaky_relu' is read off the sign of the stored activation
    _check(slope >= 0, "slope must be >= 0")
    _check_loss(loss, lay.layer[lay.n_layers - 1].act)
    _check(x_cols == n_in, f"X has {x_cols} columns; the network takes {n_in}")
    _check(y_rows == x_rows and y_cols == n_out,
           f"Y has shape ({y_rows}, {y_cols}); expected ({x_rows}, {n_out})")


cdef Layout _new_layout(const int64_t[:, ::1] table, Py_ssize_t capacity,
                        const double[::1] keep, Py_ssize_t* n_params, bint bf16=False) except *:
    cdef Layout lay
    cdef Py_ssize_t l
    n_params[0] = _check_table(table, keep)
    _check(capacity >= 1, "the batch must hold at least one row")
    _check(capacity <= INT_MAX, "batch too large")
    for l in range(table.shape[0]):
        _check(capacity * max(table[l, T_IN_H] * table[l, T_IN_W] * table[l, T_IN_C],
                              table[l, T_OUT_H] * table[l, T_OUT_W] * table[l, T_OUT_C])
               <= INT_MAX, f"batch too large: a chunk of {capacity} rows of layer {l} has "
                           f"more than {INT_MAX} entries")
    if layout_init(&lay, &table[0, 0], table.shape[0], capacity,
                   &keep[0] if keep.shape[0] > 0 else NULL, bf16) != 0:
        raise MemoryError()
    return lay


cdef Layout _layout(const int64_t[:, ::1] table, Py_ssize_t capacity,
                    const double[::1] keep, Py_ssize_t n_params,
                    Py_ssize_t work_size, bint bf16=False) except *:
    cdef Py_ssize_t needed
    cdef Layout lay = _new_layout(table, capacity, keep, &needed, bf16)
    if n_params != needed:
        layout_free(&lay)
        raise ValueError(f"params has {n_params} entries; these layers need {needed}")
    if work_size < lay.work_size:
        layout_free(&lay)
        raise ValueError(f"workspace has {work_size} entries; {lay.work_size} needed")
    return lay


cdef _check_labels(const int64_t[::1] labels, Py_ssize_t n_out):
    cdef Py_ssize_t i
    for i in range(labels.shape[0]):
        if labels[i] < 0 or labels[i] >= n_out:
            raise ValueError(f"label {labels[i]} (labels[{i}]) is outside [0, {n_out})")


cdef _check_rows(const int64_t[::1] rows, Py_ssize_t n):
    cdef Py_ssize_t i
    for i in range(rows.shape[0]):
        if rows[i] < 0 or rows[i] >= n:
            raise ValueError(f"row index {rows[i]} is outside [0, {n})")


cdef float[::1] _aligned_floats(Py_ssize_t n):
    """n float32 entries whose first starts on a 64-byte line."""
    import numpy as np
    raw = np.empty(n + LINE_FLOATS, dtype=np.float32)
    skip = (-raw.ctypes.data) % 64 // 4
    return raw[skip:skip + n]


cdef double[::1] _ones():
    import numpy as np
    return np.empty(0)


def workspace_size(const int64_t[:, ::1] table, Py_ssize_t capacity, keep=(),
                   int n_threads=1, bint bf16=False):
    """Entries the workspace of a chunk of `capacity` rows needs, for this
    layer table and these keep probabilities of each layer's input (empty:
    no dropout); for train_epoch with n_threads > 1 (a team's slices:
    train_epoch's `slices`), the workspaces of the slices, each followed by
    a gradient buffer of P entries, then room for n_threads - 1 copies of
    the parameters, each on 64-byte lines (a team whose threads are far
    apart: train_team). A bfloat16 network (bf16) also
    needs gemm_bf16's scratch (bf16_scratch)."""
    import numpy as np
    cdef Py_ssize_t n_params
    _check(1 <= n_threads <= 1024, f"n_threads must be in [1, 1024], not {n_threads}")
    cdef Layout lay = _new_layout(table, capacity,
                                  np.ascontiguousarray(keep, dtype=np.float64).reshape(-1),
                                  &n_params, bf16)
    n = lay.work_size
    layout_free(&lay)
    return n if n_threads == 1 else n_threads * (n + n_params) + replicas_size(n_params, n_threads)


cdef Py_ssize_t replicas_size(Py_ssize_t n_params, Py_ssize_t n_threads) noexcept nogil:
    """Entries a team's workspace keeps, after its threads' regions, for
    train_team's n_threads - 1 copies of the parameters: each rounded up to
    64-byte lines (of float32), and a line to align the first."""
    return (n_threads - 1) * replica_stride(n_params) + LINE_FLOATS


cdef inline Py_ssize_t replica_stride(Py_ssize_t n_params) noexcept nogil:
    return (n_params + LINE_FLOATS - 1) // LINE_FLOATS * LINE_FLOATS


def train_epoch(const input_t[:, ::1] X, const floating[:, ::1] Y,
                const int64_t[::1] order, floating[::1] params,
                floating[:, ::1] state, const int64_t[:, ::1] table,
                const double[::1] keep, double slope, int loss,
                Py_ssize_t batch_size, Py_ssize_t capacity, int optimizer,
                const double[::1] hyper, const floating[::1] sample_weight, int augment,
                uint64_t seed, floating[::1] work, int64_t[::1] control, int n_threads=1,
                bint bf16=False, const int64_t[::1] labels=None, int slices=0):
    """One epoch of mini-batch training over the rows X[order], in place on
    params and state.

    Parameters
    ----------
    X : (n, I) uint8, float32 or float64
        Inputs, one row per sample (images in HWC order); uint8 is divided
        by 255 as rows are gathered.
    Y : (n, O) float, the dtype of params
        Targets; (0, O) with `labels`.
    order : (k,) int64
        The rows to visit, in order; batches are consecutive slices of it.
    params : (P,) float32 or float64
        Flat parameters, updated in place.
    state : (STATE_ROWS[optimizer], P) float
        state[0] receives gradients; the other rows are the optimizer's.
    table : (L, N_COLS) int64
        The layer table (see fastnn._kernels).
    keep : (L,) or (0,) float64
        Probability of keeping each unit of each layer's input (empty: 1).
    slope : float
        Negative-side slope of leaky_relu.
    loss : int
    batch_size : int
        m; each step averages the gradient over m rows.
    capacity : int
        Rows per chunk, the workspace's size.
    optimizer : int
    hyper : (N_HYPER,) float64
        Learning rate, lambda2/n, lambda1/n, the optimizer's constants, the
        gradient's largest norm (0: no clipping).
    sample_weight : (n,) or (0,) float
        Weight of each row's loss and gradient (empty: all 1).
    augment : int
        NO_AUGMENT, or SHIFT for rows that are images: the first layer's
        input shape (table[0, T_IN_H:T_IN_C + 1]) says which.
    seed : uint64
        This epoch's seed for dropout masks and shifts.
    work : (workspace_size(table, capacity, keep, n_threads, bf16),) float
    control : (N_CONTROL,) int64
        Stop request, rows done, optimizer steps taken.
    n_threads : int, default 1
        With more than one, a team of threads shares each batch (each takes
        a slice of its rows in chunks of `capacity`, then a share of the
        parameters for the step; see train_team_impl), and the BLAS must run
        single-threaded (the caller limits it).
    slices : int, default 0 (n_threads)
        Where a team splits each batch's rows (see train_team_impl): the
        slices they are cut into, whatever the number of threads that does
        them (1 <= n_threads <= slices). The weights depend on the slices,
        never on n_threads, so a team that forms on fewer cores than asked
        for (the others busy) trains the same bits. With one slice, the
        epoch runs on one thread as its own (train_epoch_impl); a team's
        result differs from that only in round-off. The workspace holds
        `slices` regions (workspace_size(..., slices)).
    bf16 : bool, default False
        A bfloat16 network (float32 params): every matrix product rounds
        its operands to bfloat16 (gemm_bf16), and no smallgemm.h path runs.
    labels : (n,) int64, optional
        The targets as class labels in [0, O), O >= 2, instead of Y's rows
        (Y then has no rows): each chunk's target rows are made one-hot as
        they are gathered, the same bits as Y = one-hot(labels), and no
        (n, O) array of targets is built.

    Returns
    -------
    (status, loss_sum, n_correct) : (int, float, int)
        status is DONE, DIVERGED or STOPPED; loss_sum is the weighted sum of
        the rows' costs; the rows trained are in control[ROWS_DONE].

    Every thread of the epoch (and of `predict`) computes with denormals
    flushed to zero (x86-64's FTZ and DAZ, set for the call and put back):
    below 1.2e-38 in float32 each operation took the CPU a slow microcode
    path. Adam's moments of MNIST's always-blank pixels decay into that range
    within two epochs, and [784, 256, 128, 10] then trained 1.4-1.7 times
    slower an epoch (benchmarks/README.md). XLA does the same on the CPU.
    """
    import numpy as np
    cdef Py_ssize_t n = X.shape[0], stride = 0
    cdef unsigned int fp
    _check(1 <= n_threads <= 1024, f"n_threads must be in [1, 1024], not {n_threads}")
    if slices == 0:
        slices = n_threads
    _check(n_threads <= slices <= 1024,
           f"slices must be in [n_threads, 1024] = [{n_threads}, 1024], not {slices}")
    _check(not bf16 or floating is float, "a bfloat16 network's parameters are float32")
    cdef Layout lay = _layout(table, capacity, keep, params.shape[0],
                              work.shape[0] if slices == 1
                              else ((work.shape[0] - replicas_size(params.shape[0], slices))
                                    // slices - params.shape[0]), bf16)
    cdef double loss_sum = 0
    cdef int64_t n_correct = 0
    cdef int status = DONE
    cdef const floating* sw = NULL
    cdef Shared shared
    cdef double[::1] team_loss
    cdef double[::1] team_squares
    cdef int64_t[::1] team_correct
    cdef float[::1] padded
    cdef float[::1] region
    cdef float[::1] S
    cdef int64_t[::1] sync
    cdef float[::1] shared_work
    cdef bint split
    cdef floating* replicas
    cdef Py_ssize_t replica_width = 0
    cdef const floating* Yp = NULL     # Y's rows; NULL with labels
    try:
        if labels is not None:
            _check(Y.shape[0] == 0, f"Y must have no rows when labels are given, not {Y.shape[0]}")
            _check(labels.shape[0] == n, f"labels has {labels.shape[0]} entries; X has {n} rows")
            _check(Y.shape[1] >= 2, "labels take an output layer of two or more units; give "
                                    "Y's rows for one")
            _check_labels(labels, Y.shape[1])
            if n > 0:
                lay.labels = &labels[0]
        elif Y.shape[0] > 0:
            Yp = &Y[0, 0]
        _check_problem(&lay, slope, loss, X.shape[0], X.shape[1],
                       n if labels is not None else Y.shape[0], Y.shape[1])
        _check(control.shape[0] >= N_CONTROL, f"control needs {N_CONTROL} entries")
        _check(batch_size >= 1, "batch_size must be >= 1")
        _check(0 <= optimizer < N_OPTIMIZERS, f"unknown optimizer code {optimizer}")
        _check(state.shape[0] >= STATE_ROWS[optimizer] and state.shape[1] == params.shape[0],
               f"state needs shape ({STATE_ROWS[optimizer]}, {params.shape[0]})")
        _check(hyper.shape[0] == N_HYPER, f"hyper needs {N_HYPER} entries")
        _check(sample_weight.shape[0] in (0, n), f"sample_weight needs 0 or {n} entries")
        _check(augment in (NO_AUGMENT, SHIFT), f"unknown augmentation {augment}")
        if augment == SHIFT:
            _check(lay.layer[0].in_h > 1 and lay.layer[0].in_w > 1,
                   f"shift needs images; the first layer's input is "
                   f"{lay.layer[0].in_h}x{lay.layer[0].in_w}x{lay.layer[0].in_c}")
        _check_rows(order, n)
        if sample_weight.shape[0] > 0:
            sw = &sample_weight[0]
        if order.shape[0] == 0:
            return DONE, 0.0, 0
        if (floating is float and input_t is not double
                and fused_apply(&lay, optimizer, &hyper[0], batch_size, augment, n_threads)):
            team_loss = np.zeros(n_threads)
            team_correct = np.zeros(n_threads, dtype=np.int64)
            shared.loss = &team_loss[0]
            shared.correct = &team_correct[0]
            shared.diverged = False
            split = fused_split(&lay, batch_size, n_threads)
            shared_work = _aligned_floats(lay.work_size if split else 1)
            padded = _aligned_floats(pad_layout(&lay))
            stride = fused_region(&lay, padded.shape[0])
            region = _aligned_floats(n_threads * stride)
            S = _aligned_floats(2 * batch_size * lay.layer[0].ldw)
            S[:] = 0        # the pads of A_1's rows (train_fused_impl)
            sync = _team_sync()
            shared.placement = team_placement
            shared.far = False
            shared.round_trip = -1
            global fused_epochs
            fused_epochs += 1
            with nogil:
                copy_padded(&lay, <float*> &params[0], &padded[0], True)
            with nogil, parallel(num_threads=n_threads):
                train_fused(&X[0, 0], Yp, sw, &order[0], order.shape[0], &params[0],
                            &padded[0], &region[0], stride, padded.shape[0], &S[0], &sync[0],
                            &shared_work[0], split, &lay,
                            <float> slope, loss,
                            batch_size, &hyper[0], &control[0], &shared, &status)
            with nogil:
                copy_padded(&lay, <float*> &params[0], &padded[0], False)
            if split and shared.round_trip >= 0:
                global far_epochs, last_round_trip
                last_round_trip = shared.round_trip
                far_epochs += shared.far
            loss_sum = float(np.sum(team_loss))
            n_correct = int(np.sum(team_correct))
        elif floating is float and units_apply(&lay, optimizer, &hyper[0], batch_size):
            team_loss = np.zeros(n_threads)
            team_correct = np.zeros(n_threads, dtype=np.int64)
            shared.loss = &team_loss[0]
            shared.correct = &team_correct[0]
            padded = _aligned_floats(pad_layout(&lay))
            with nogil:
                copy_padded(&lay, <float*> &params[0], &padded[0], True)
            with nogil, parallel(num_threads=n_threads):
                train_units(&X[0, 0], Yp, sw, &order[0], order.shape[0], &params[0],
                            &padded[0], &lay, <float> slope, loss, batch_size, &hyper[0],
                            augment, seed, &work[0], &control[0], &shared, &status)
            with nogil:
                copy_padded(&lay, <float*> &params[0], &padded[0], False)
            loss_sum = float(np.sum(team_loss))
            n_correct = int(np.sum(team_correct))
        elif slices == 1:
            if input_t is float and floating is float and x_in_place(&lay, augment):
                global x_in_place_epochs
                x_in_place_epochs += 1
            with nogil:
                fp = flush_denormals()
                status = train_epoch_impl(&X[0, 0], Yp, sw, &order[0], order.shape[0],
                                          &params[0], &state[0, 0], &lay, <floating> slope,
                                          loss, batch_size, optimizer, &hyper[0], augment,
                                          seed, &work[0], &control[0], &loss_sum, &n_correct)
                restore_fp(fp)
        else:
            stride = lay.work_size + lay.n_params
            team_loss = np.zeros(slices)
            team_correct = np.zeros(slices, dtype=np.int64)
            shared.loss = &team_loss[0]
            team_squares = np.zeros(slices)
            shared.squares = &team_squares[0]
            shared.correct = &team_correct[0]
            sync = _team_sync()
            shared.placement = team_placement
            shared.far = False
            shared.round_trip = -1
            replicas = NULL
            # float32 only: deferred_steps runs smallgemm.h's kernel
            if floating is float and team_defer(&lay, optimizer, &hyper[0], batch_size,
                                                slices):
                global deferred_epochs
                deferred_epochs += 1
                # after the slices' regions, in the workspace (workspace_size),
                # from a 64-byte line
                replicas = &work[slices * stride]
                replicas += (-<uintptr_t> replicas) % 64 // sizeof(floating)
                replica_width = replica_stride(lay.n_params)
            with nogil, parallel(num_threads=n_threads):
                train_team(&X[0, 0], Yp, sw, &order[0], order.shape[0], &params[0],
                           &state[0, 0], &lay, <floating> slope, loss, batch_size, optimizer,
                           &hyper[0], augment, seed, &work[0], stride, &control[0], &shared,
                           &sync[0], replicas, replica_width, slices, &status)
            if replicas != NULL and shared.round_trip >= 0:
                global replicated_epochs
                last_round_trip = shared.round_trip
                replicated_epochs += shared.far
            loss_sum = float(np.sum(team_loss))
            n_correct = int(np.sum(team_correct))
    finally:
        layout_free(&lay)
    return status, loss_sum, n_correct


def predict(const input_t[:, ::1] X, const floating[::1] params,
            const int64_t[:, ::1] table, double slope, floating[::1] work,
            Py_ssize_t chunk, floating[:, ::1] out, int n_threads=1, bint bf16=False):
    """out := the network's output activations for every row of X.

    Works through X `chunk` rows at a time; `work` holds n_threads
    workspaces of workspace_size(table, chunk, bf16=bf16) entries, one per
    thread. With n_threads > 1 the threads take whole chunks, and the BLAS
    must run single-threaded (the caller limits it) unless
    predicts_without_blas(table). bf16: a
    bfloat16 network (see train_epoch).
    """
    cdef Py_ssize_t n = X.shape[0], per_thread, n_out
    cdef Layout lay
    cdef int64_t[::1] rows
    cdef int64_t next_chunk = 0     # the team's next chunk (predict_impl)
    cdef int64_t arrived = 0        # its threads started (team_settle)
    cdef int master_cpu             # the caller's CPU as the team starts (team_settle)
    cdef unsigned int fp
    _check(1 <= n_threads <= 1024, f"n_threads must be in [1, 1024], not {n_threads}")
    _check(not bf16 or floating is float, "a bfloat16 network's parameters are float32")
    per_thread = work.shape[0] // n_threads
    lay = _layout(table, chunk, _ones(), params.shape[0], per_thread, bf16)
    try:
        n_out = lay.layer[lay.n_layers - 1].n_out
        _check(slope >= 0, "slope must be >= 0")
        _check(X.shape[1] == lay.layer[0].n_in,
               f"X has {X.shape[1]} columns; the network takes {lay.layer[0].n_in}")
        _check(out.shape[0] == n and out.shape[1] == n_out,
               f"out has shape ({out.shape[0]}, {out.shape[1]}); expected ({n}, {n_out})")
        if n == 0:
            return
        rows = _arange(n)
        if floating is float:
            packed = predict_packs(&lay, &params[0], n)
        if n_threads == 1:
            with nogil:
                fp = flush_denormals()
                predict_impl(&X[0, 0], n, &params[0], &lay, <floating> slope, &work[0],
                             per_thread, &rows[0], &out[0, 0], &SOLO, &next_chunk)
                restore_fp(fp)
        else:
            master_cpu = current_cpu()
            with nogil, parallel(num_threads=n_threads):
                predict_team(&X[0, 0], n, &params[0], &lay, <floating> slope, &work[0],
                             per_thread, &rows[0], &out[0, 0], &next_chunk, master_cpu,
                             &arrived)
    finally:
        layout_free(&lay)


# predict packs each dense layer's W once for all its chunks and threads
# (fastnn_sg_pack_bp) when X has at least this many rows: a chunk of
# hundreds of rows had packed it again for each chunk, on every thread
# (AVX2's sg2_gemm from SG2_PACK_ROWS rows; AVX-512's from 48).
cdef Py_ssize_t PREDICT_PACK_ROWS = 128
cdef Py_ssize_t packed_predicts = 0     # predict calls that packed a W, for the tests


cdef object predict_packs(Layout* lay, const float* params, Py_ssize_t n):
    """Pack the W of each of predict's dense layers that runs on smallgemm.h
    (small_predict; a float32 network: lay.bf_off < 0) once, for X of n
    rows (at least PREDICT_PACK_ROWS), and point its Geometry.wpack there.
    Returns the buffer that holds them (keep it until predict returns), or
    None. The products read the packed W with the same bits as the
    unpacked one (fastnn_sg_gemm_bp)."""
    cdef Py_ssize_t l, total = 0, at = 0
    cdef Geometry* g
    cdef float[::1] buffer
    if lay.bf_off >= 0 or n < PREDICT_PACK_ROWS:
        return None
    for l in range(lay.n_layers):
        g = &lay.layer[l]
        if g.kind == DENSE and small_predict(g.n_in * g.n_out):
            total += sg_bp_size(g.n_out, g.n_in)
    if total == 0:
        return None
    buffer = _aligned_floats(total)
    global packed_predicts
    packed_predicts += 1
    with nogil:
        for l in range(lay.n_layers):
            g = &lay.layer[l]
            if g.kind == DENSE and small_predict(g.n_in * g.n_out):
                sg_pack_bp(g.n_out, g.n_in, params + g.w_off, g.n_out, 1, &buffer[at])
                g.wpack = &buffer[at]
                at += sg_bp_size(g.n_out, g.n_in)
    return buffer


cdef int64_t[::1] _arange(Py_ssize_t n):
    import numpy as np
    return np.arange(n, dtype=np.int64)


def gradient(const input_t[:, ::1] X, const floating[:, ::1] Y,
             const floating[::1] params, const int64_t[:, ::1] table, double slope,
             int loss, floating[::1] work, floating[::1] grad, bint bf16=False):
    """grad := dC/dparams, C the mean loss over the rows of X; returns sum_x C_x.

    The same forward and backward code as train_epoch, with the update
    written to grad (alpha = 1/n, betas 0) instead of fused into params.
    work holds workspace_size(table, len(X), bf16=bf16) entries; bf16: a
    bfloat16 network (see train_epoch).
    """
    cdef Py_ssize_t n = X.shape[0], L = table.shape[0]
    _check(not bf16 or floating is float, "a bfloat16 network's parameters are float32")
    cdef Layout lay = _layout(table, n, _ones(), params.shape[0], work.shape[0], bf16)
    cdef Py_ssize_t n_in, n_out
    cdef int64_t[::1] rows
    cdef double total
    try:
        _check_problem(&lay, slope, loss, X.shape[0], X.shape[1], Y.shape[0], Y.shape[1])
        _check(grad.shape[0] == params.shape[0], "grad must have the shape of params")
        n_in, n_out = lay.layer[0].n_in, lay.layer[L - 1].n_out
        rows = _arange(n)
        with nogil:
            gather_rows(&X[0, 0], n_in, &rows[0], n, &work[lay.a_off[0]])
            gather_rows(&Y[0, 0], n_out, &rows[0], n, &work[lay.y_off])
            forward_impl(&params[0], &lay, <floating> slope, &work[lay.a_off[0]], &work[0],
                         &work[lay.a_off[L]], n, False, 0, 0)
            total = output_delta_impl(loss, lay.layer[L - 1].act, <floating> slope,
                                      &work[lay.a_off[L]], &work[lay.y_off], NULL,
                                      &work[lay.d_off[L]], n, n_out)
            backward_impl(&params[0], &lay, <floating> slope, &work[0], n, <floating> 1 / n,
                          0, 0, &grad[0])
    finally:
        layout_free(&lay)
    return total


# --------------------------------------------------------------------------
# Single kernels, exposed for the tests that compare them with the NumPy
# reference (fastnn._reference has the same functions).
# --------------------------------------------------------------------------


def linear_forward(const floating[:, ::1] A, const floating[:, ::1] W,
                   const floating[::1] b, floating[:, ::1] out):
    """out := A @ W + b.  A (N, I), W (I, O), b (O,), out (N, O)."""
    cdef Py_ssize_t N = A.shape[0], I = A.shape[1], O = W.shape[1]
    _check(W.shape[0] == I and b.shape[0] == O and out.shape[0] == N
           and out.shape[1] == O, "linear_forward: shapes do not match")
    _check(0 < I <= INT_MAX and 0 < O <= INT_MAX and N <= INT_MAX,
           "linear_forward: each dimension must be in [1, 2**31)")
    if N == 0:
        return
    with nogil:
        linear_forward_impl(&A[0, 0], &W[0, 0], &b[0], &out[0, 0], N, I, O, IDENTITY, NULL,
                            False, NULL, NULL)


def round_bf16(const float[::1] x, float[::1] out):
    """out := x rounded to bfloat16 (ties to even), as float32: the rounding
    gemm_bf16 applies to every operand (fastnn._reference.round_bf16 is its
    twin)."""
    cdef Py_ssize_t n = x.shape[0]
    _check(out.shape[0] == n, "round_bf16: out must have the shape of x")
    if n == 0:
        return
    with nogil:
        bf16_copy(&x[0], n, n, 1, &out[0], NULL)


def native_bf16():
    """Whether a bfloat16 network's products run natively (amxgemm.h: on AMX
    tiles or AVX512_BF16) rather than emulated with float32 sgemm."""
    return bf16_kernel != BF16_EMULATED


def bf16_kernel_name():
    """What a bfloat16 network's products run on: "amx", "avx512_bf16" or
    "emulated"."""
    return next(name for name, code in BF16_KERNELS.items() if code == bf16_kernel)


def vdpbf16_available():
    """Whether this CPU has AVX512_BF16 (VDPBF16PS) and the OS keeps the
    AVX-512 state."""
    return vdp_ok() != 0


def set_bf16_kernel(str name):
    """Run a bfloat16 network's products on `name` ("amx", "avx512_bf16" or
    "emulated", where this CPU has it); returns the previous name. For tests
    and benchmarks: it applies to the whole process, so call it while no
    kernel runs."""
    global bf16_kernel
    _check(name in BF16_KERNELS, f"unknown bfloat16 kernel {name!r}; choose one of "
           + ", ".join(BF16_KERNELS))
    _check(name != "amx" or amx_ok(), "this CPU or OS gives no AMX tiles")
    _check(name != "avx512_bf16" or vdp_ok(), "this CPU has no AVX512_BF16")
    previous = bf16_kernel_name()
    bf16_kernel = BF16_KERNELS[name]
    return previous


def amx_available():
    """Whether this CPU and OS give the process AMX tiles (AMX-TILE and
    AMX-BF16, and Linux's permission for their state)."""
    return amx_ok() != 0


def set_x_in_place(bint on):
    """Let a bfloat16 dense network's training read its batches' rows of X
    in place (on: the default, where x_in_place allows) or gather them
    first; returns the previous setting. For tests and benchmarks: the same
    bits either way; call it while no kernel runs."""
    global x_in_place_on
    previous = x_in_place_on
    x_in_place_on = on
    return previous


def set_bf16_threads(int n):
    """The threads a bfloat16 product on AMX tiles may take (fastnn.blas
    sets it with the BLAS's thread count); returns the previous count."""
    global bf16_threads
    _check(1 <= n <= 1024, f"bf16 threads must be in [1, 1024], not {n}")
    previous = bf16_threads
    bf16_threads = n
    return previous


def gemm_bf16_matmul(const float[:, ::1] A, const float[:, ::1] B, float[:, ::1] C,
                     float alpha=1, float beta=0, bint transpose_a=False,
                     bint transpose_b=False, const int64_t[::1] a_rows=None):
    """C := alpha bf16(op(A)) @ bf16(op(B)) + beta C through gemm_bf16 (on
    AMX tiles where native_bf16(), else emulated), row-major: op(A) (M, K),
    op(B) (K, N), C (M, N). a_rows: A's rows read through this table (A[a_rows]
    in place of A, as training reads a batch's rows: gemm_bf16's b_cols).
    For tests of the kernel."""
    import numpy as np
    cdef Py_ssize_t RA = A.shape[0] if a_rows is None else a_rows.shape[0]
    cdef Py_ssize_t M = A.shape[1] if transpose_a else RA
    cdef Py_ssize_t K = RA if transpose_a else A.shape[1]
    cdef const int64_t* table = NULL
    if a_rows is not None:
        _check_rows(a_rows, A.shape[0])
        if RA:
            table = &a_rows[0]
    cdef Py_ssize_t N = B.shape[0] if transpose_b else B.shape[1]
    _check((B.shape[1] if transpose_b else B.shape[0]) == K and C.shape[0] == M
           and C.shape[1] == N, "gemm_bf16_matmul: shapes do not match")
    _check(max(M, N, K, 1) <= INT_MAX, "gemm_bf16_matmul: too large")
    if M == 0 or N == 0:
        return
    scratch = np.empty(max(M * K + K * N, bf16_packed(M, N, K), 1), dtype=np.float32)
    cdef float[::1] s = scratch
    cdef float zero = 0
    # row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T
    with nogil:
        gemm_bf16(c'T' if transpose_b else c'N', c'T' if transpose_a else c'N',
                  <int> N, <int> M, <int> K, alpha, &B[0, 0] if K else &zero,
                  <int> (B.shape[1] if B.shape[1] else 1),
                  &A[0, 0] if K and A.shape[0] else &zero,
                  <int> (A.shape[1] if A.shape[1] else 1), beta, &C[0, 0], <int> N, &s[0],
                  table)


def units_threads(const int64_t[:, ::1] table, Py_ssize_t capacity, int optimizer,
                  const double[::1] hyper, Py_ssize_t batch_size):
    """Whether train_epoch's team splits each dense layer's units
    (train_units_impl) rather than each batch's rows, for a float32
    network: fused SGD, one-chunk batches of at most small_rows rows."""
    cdef Py_ssize_t n_params
    cdef Layout lay = _new_layout(table, capacity, _ones(), &n_params)
    try:
        _check(hyper.shape[0] == N_HYPER, f"hyper needs {N_HYPER} entries")
        return bool(units_apply(&lay, optimizer, &hyper[0], batch_size))
    finally:
        layout_free(&lay)


def fused_team(const int64_t[:, ::1] table, Py_ssize_t capacity, const double[::1] keep,
               int optimizer, const double[::1] hyper, Py_ssize_t batch_size, int augment):
    """The most threads among which train_epoch's fused epoch
    (train_fused_impl) splits a batch of a float32 network: one per 16
    columns of the first layer; 0 if a team of two would not take it (it
    may still run on one thread: train_units_impl's team, where small_rows
    allows, is the other choice, with the same weights)."""
    cdef Py_ssize_t n_params
    cdef Layout lay = _new_layout(table, capacity, keep, &n_params)
    try:
        _check(hyper.shape[0] == N_HYPER, f"hyper needs {N_HYPER} entries")
        pad_layout(&lay)
        if not fused_apply(&lay, optimizer, &hyper[0], batch_size, augment, 2):
            return 0
        return int(lay.layer[0].ldw // LINE_FLOATS)
    finally:
        layout_free(&lay)


# A product big enough that OpenBLAS packs it in more than one block of rows,
# so that it fills its packing buffer's pages past those a small product uses
# (see prime_blas). Column-major C (M, N) := A (M, K) @ B (K, N).
cdef int PRIME_M = 2048, PRIME_N = 96, PRIME_K = 384


cdef void prime_thread(const void* A, const void* B, void* C, bint f64) noexcept nogil:
    """One thread's product for prime_blas, begun with the others'."""
    cdef char n = c'N'
    cdef int m = PRIME_M, cols = PRIME_N, k = PRIME_K
    cdef float one_f = 1, zero_f = 0
    cdef double one_d = 1, zero_d = 0
    cdef Py_ssize_t t = thread_id()
    barrier()
    if f64:
        dgemm(&n, &n, &m, &cols, &k, &one_d, <double*> A, &m, <double*> B, &k, &zero_d,
              (<double*> C) + t * m * cols, &m)
    else:
        sgemm(&n, &n, &m, &cols, &k, &one_f, <float*> A, &m, <float*> B, &k, &zero_f,
              (<float*> C) + t * m * cols, &m)


def prime_blas(int threads, bint f64):
    """Run one product on `threads` threads at once (the BLAS single-threaded),
    so that each of the OpenBLAS buffers they hold has its pages in place.

    OpenBLAS packs the operands of a product into a buffer taken from a pool,
    one buffer per concurrent caller. A product whose rows fit one block
    (most of fastnn's, whose rows are a layer's units or a conv's filters)
    packs into the start of the buffer only; on an AMD EPYC (Zen 1, 2 vCPUs)
    such products ran at 11 GFLOP/s on one thread until a product of more
    rows had used the buffer, and at 34 after, for the life of the process
    (benchmarks/README.md). A product of PRIME_M rows on each buffer a team
    will use puts it in the fast state; the result is thrown away."""
    import numpy as np

    _check(1 <= threads <= 1024, "prime_blas: threads must be in [1, 1024]")
    dtype = np.float64 if f64 else np.float32
    A = np.ones((PRIME_K, PRIME_M), dtype=dtype)
    B = np.ones((PRIME_N, PRIME_K), dtype=dtype)
    C = np.empty((threads, PRIME_N, PRIME_M), dtype=dtype)
    cdef char[:, ::1] a = A.view(np.int8), b = B.view(np.int8)
    cdef char[:, :, ::1] c = C.view(np.int8)
    with nogil, parallel(num_threads=threads):
        prime_thread(&a[0, 0], &b[0, 0], &c[0, 0, 0], f64)


def get_small_rows():
    """The largest chunk whose dense layers use smallgemm.h (0: none)."""
    return small_rows


def set_conv_blocking(Py_ssize_t entries, Py_ssize_t min_rows):
    """A convolution's product is done a block of rows (output pixels) at a
    time: COL_ENTRIES // K rows, at least MIN_BLOCK. Sets both; returns the
    previous pair. For benchmarks: it applies to the layouts made after the
    call, process-wide."""
    global COL_ENTRIES, MIN_BLOCK
    _check(entries >= 1 and min_rows >= 1, "set_conv_blocking: values must be >= 1")
    previous = (COL_ENTRIES, MIN_BLOCK)
    COL_ENTRIES, MIN_BLOCK = entries, min_rows
    return previous


def set_small_conv(bint on):
    """Whether convolution layers in float32 use smallgemm.h's kernels (the
    default where the CPU has AVX2 and FMA: a first layer's col_t products,
    and the others' up to CONV_SG_WEIGHTS, conv_sg) or BLAS;
    returns the previous setting. For tests and benchmarks: it applies to the whole process, so
    call it while no kernel runs."""
    global small_conv
    previous = small_conv
    small_conv = on and SMALL_GEMM
    return bool(previous)


def set_conv_sg_weights(Py_ssize_t weights):
    """The most entries of W (K x F) for which a later convolution layer
    takes smallgemm.h's kernels (conv_sg; 0: never); returns the value
    before. For tests and benchmarks (the crossover), while no kernel runs."""
    global CONV_SG_WEIGHTS
    _check(weights >= 0, f"set_conv_sg_weights: weights must be >= 0, not {weights}")
    previous = CONV_SG_WEIGHTS
    CONV_SG_WEIGHTS = weights
    return previous


def set_conv_in_place(bint on):
    """Whether a float32 convolution layer's forward on the packed kernels
    reads each window in place where all lie inside the image (the default:
    conv_in_place) or copies them (im2col, im2col_t) first; returns the
    setting before. The same bits either way (a col_t layer adds its bias
    last on both). For tests and benchmarks, while no kernel runs."""
    global conv_in_place_on
    previous = conv_in_place_on
    conv_in_place_on = on
    return previous


def small_gemm_available():
    """Whether this CPU runs smallgemm.h's kernels (AVX2 and FMA; see
    small_gemm_isa for which)."""
    return bool(SMALL_GEMM)


SMALL_GEMM_ISAS = ("none", "avx2", "avx512")


def small_gemm_isa():
    """The instruction set of the kernels sg_gemm runs: "avx512" (AVX-512 F
    and VL), "avx2" (AVX2 and FMA) or "none" (the callers use BLAS)."""
    return SMALL_GEMM_ISAS[sg_get_isa()]


def set_small_gemm_isa(str isa):
    """Run sg_gemm's kernels for `isa` ("avx2" or "avx512"; the CPU's best if
    it lacks that one); returns the previous choice. Both give the same bits
    (smallgemm.h): for tests, which run each kernel on a CPU that has both.
    It applies to the whole process, so call it while no kernel runs."""
    _check(isa in SMALL_GEMM_ISAS[1:],
           f"set_small_gemm_isa: isa must be one of {', '.join(SMALL_GEMM_ISAS[1:])}")
    previous = SMALL_GEMM_ISAS[sg_get_isa()]
    sg_set_isa(SMALL_GEMM_ISAS.index(isa))
    return previous


def set_small_gemm_block(Py_ssize_t nbytes=0):
    """Bytes of the rows of A that the packed kernels' blocks of rows read
    (AVX-512's and AVX2's; 0: the default, smallgemm.h's SG5_BLOCK_BYTES); returns the value in
    effect. The blocking changes the order of the work, not its results."""
    _check(nbytes >= 0, f"nbytes must be >= 0, not {nbytes}")
    return sg_set_block_bytes(nbytes)


def predicts_without_blas(const int64_t[:, ::1] table):
    """Whether predict() computes this network (a layer table, as
    train_epoch's) in float32 without BLAS: every layer dense, each on
    smallgemm.h's kernels (small_predict). Its outputs are then the same bits on any
    team and any thread, and a team of threads needs no single-threaded
    BLAS. (Not for a bfloat16 network, whose products are gemm_bf16's.)"""
    cdef Py_ssize_t l
    cdef Geometry g
    _check(table.shape[1] == N_COLS, f"the layer table has {table.shape[1]} columns, not {N_COLS}")
    for l in range(table.shape[0]):
        geometry_init(&g, &table[l, 0], 1)
        if g.kind != DENSE or not small_predict(g.n_in * g.n_out):
            return False
    return table.shape[0] > 0


def set_fused_rows(Py_ssize_t rows):
    """Batches of at most `rows` rows (up to the kernels' 64) may take the
    fused epoch; returns the limit before (benchmarks measure the crossover)."""
    global fused_rows
    _check(0 <= rows <= SGK_ROWS, f"set_fused_rows: rows must be in [0, {SGK_ROWS}]")
    previous = fused_rows
    fused_rows = rows
    return previous


def set_vdp_team_work(Py_ssize_t work=-1):
    """A VDPBF16PS product takes the BLAS's thread count from `work`
    multiply-adds on, one thread below (-1: the default; 0: always the
    team); returns the setting before. The same bits either way: each tile of
    C is one thread's."""
    global vdp_team_work
    previous = vdp_team_work
    vdp_team_work = VDP_TEAM_WORK if work < 0 else work
    return previous


def set_fused_split(Py_ssize_t work=-1):
    """A fused team splits its later layers' rows from `work` multiply-adds a
    batch on (-1: the default; 0: always); returns the setting before."""
    global fused_split_work
    previous = fused_split_work
    fused_split_work = FUSED_SPLIT_WORK if work < 0 else work
    return previous


def set_fused(bint on):
    """Whether train_epoch may take train_fused_impl (the default) or
    always train_units_impl where that applies (tests compare the two, which
    give the same parameters); returns the setting before."""
    global fused_on
    previous = fused_on
    fused_on = on
    return previous


def set_defer_weights(Py_ssize_t weights=-1):
    """A team's SGD epoch steps a dense layer's W after each batch, its rows
    split among the threads (team_defer), from `weights` weights on (-1:
    the default, DEFER_WEIGHTS); returns the setting before."""
    global defer_weights
    previous = defer_weights
    defer_weights = DEFER_WEIGHTS if weights < 0 else weights
    return previous


def packed_predicts_run():
    """predict calls in this process that packed their dense layers' W once
    for all chunks (predict_packs)."""
    return packed_predicts


def deferred_epochs_run():
    """Team epochs in this process that deferred a dense layer's steps."""
    return deferred_epochs


def x_in_place_epochs_run():
    """Epochs in this process whose chunks read X's rows in place
    (x_in_place; the tests check which path an epoch took)."""
    return x_in_place_epochs


PLACEMENTS = {"measured": PLACEMENT_MEASURED, "near": PLACEMENT_NEAR, "far": PLACEMENT_FAR}


def set_team_placement(str placement="measured"):
    """How a fused team that would split its later layers' rows judges how
    far apart its threads are (team_far): "measured" (the default), or taken
    as "near" or "far" (the tests); returns the setting before."""
    global team_placement
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
    previous = next(k for k, v in PLACEMENTS.items() if v == team_placement)
    team_placement = PLACEMENTS[placement]
    return previous


def far_epochs_run():
    """Epochs of a fused team that would have split its later layers' rows
    and did not, its threads far apart (team_far), in this process."""
    return far_epochs


def replicated_epochs_run():
    """Epochs of a team with a deferred layer (team_defer) whose threads
    were far apart (team_far), and so each kept its own copy of the
    parameters (train_team), in this process."""
    return replicated_epochs


def last_team_round_trip():
    """The round trip between a team's threads that the last epoch to
    measure it (team_far: a fused team that would split, or a team with a
    deferred layer) found, in nanoseconds; -1 before any."""
    return last_round_trip


cdef void probe_team(int64_t* sync, double* ns) noexcept nogil:
    """team_far's measure, as this thread's part of the current OpenMP team
    (its threads placed as a training team's: team_join)."""
    cdef Team team
    team_join(&team)
    cdef double mine = measure_round_trip(sync, &team)
    if team.id == 0:
        ns[0] = mine


def team_round_trip(int threads=2):
    """The time, in nanoseconds, for a value to go from one thread of a team
    of `threads` (placed as a training team's) to another and back, the
    largest over the pairs with thread 0: what a fused team measures before
    splitting (team_far). 0 for one thread. benchmarks/run.py reports it: on
    a VM it tells a placement of the vCPUs on one die from one across two."""
    _check(1 <= threads <= 1024, f"threads must be in [1, 1024], not {threads}")
    cdef int64_t[::1] sync = _team_sync()
    cdef double ns = 0
    with nogil, parallel(num_threads=threads):
        probe_team(&sync[0], &ns)
    return ns


def in_place_epochs_run():
    """Epochs of train_fused_impl, each thread's counted, that read a batch
    in place in this process (the tests check which path ran)."""
    return in_place_epochs


def fused_epochs_run():
    """Epochs that train_fused_impl ran in this process (the tests check
    which path an epoch took)."""
    return fused_epochs


def set_small_predict(bint on):
    """Whether predict's dense layers may take smallgemm.h at any chunk
    size (the default; tests compare with BLAS by turning it off)."""
    global small_predict_on
    small_predict_on = on


def set_small_rows(Py_ssize_t rows):
    """Chunks of at most `rows` rows use smallgemm.h for their dense layers
    (0: never); returns the previous limit. For tests and benchmarks: it
    applies to the whole process, so call it while no kernel runs. On a CPU
    without AVX2 and FMA the limit stays 0."""
    global small_rows
    _check(rows >= 0, "set_small_rows: rows must be >= 0")
    previous = small_rows
    small_rows = rows if SMALL_GEMM else 0
    return previous


def small_gemm(const float[:, ::1] A, const float[:, ::1] B, float[:, ::1] C,
               float alpha=1, float beta=0, bint transpose_a=False, bint forward=False):
    """C := beta C + alpha op(A) @ B with smallgemm.h's kernel, op(A) = A or
    A^T.  op(A) (M, K), B (K, Nc), C (M, Nc). beta == 0 does not read C.
    forward: the kernel predict's forward takes (fastnn_sg_gemm_forward,
    alpha 1), which packs B for many rows with AVX2 too."""
    cdef Py_ssize_t M = A.shape[1] if transpose_a else A.shape[0]
    cdef Py_ssize_t K = A.shape[0] if transpose_a else A.shape[1]
    cdef Py_ssize_t Nc = B.shape[1]
    _check(SMALL_GEMM, "small_gemm: this CPU lacks AVX2 or FMA")
    _check(B.shape[0] == K and C.shape[0] == M and C.shape[1] == Nc,
           "small_gemm: shapes do not match")
    _check(not forward or alpha == 1, "small_gemm: forward=True takes alpha 1")
    if M == 0 or Nc == 0:
        return
    with nogil:
        if forward and K > 0:
            if transpose_a:
                sg_gemm_forward(M, Nc, K, &A[0, 0], 1, M, &B[0, 0], Nc, beta, &C[0, 0], Nc)
            else:
                sg_gemm_forward(M, Nc, K, &A[0, 0], K, 1, &B[0, 0], Nc, beta, &C[0, 0], Nc)
        elif transpose_a:
            sg_gemm(M, Nc, K, alpha, &A[0, 0], 1, M, &B[0, 0] if K else NULL, Nc, beta,
                    &C[0, 0], Nc)
        else:
            sg_gemm(M, Nc, K, alpha, &A[0, 0] if K else NULL, K, 1,
                    &B[0, 0] if K else NULL, Nc, beta, &C[0, 0], Nc)


def small_nt(const float[:, ::1] D, const float[:, ::1] W, float[:, ::1] out):
    """out := D @ W^T with smallgemm.h's kernel.  D (N, O), W (I, O), out (N, I)."""
    cdef Py_ssize_t N = D.shape[0], O = D.shape[1], I = W.shape[0]
    _check(SMALL_GEMM, "small_nt: this CPU lacks AVX2 or FMA")
    _check(W.shape[1] == O and out.shape[0] == N and out.shape[1] == I and O > 0,
           "small_nt: shapes do not match")
    if N == 0 or I == 0:
        return
    with nogil:
        sg_nt(N, I, O, &D[0, 0], &W[0, 0], O, &out[0, 0], I)


def activate(int act, floating[:, ::1] A, double slope=0.01):
    """A := act(A), in place. A (N, O)."""
    _check(0 <= act < N_ACTIVATIONS, f"unknown activation code {act}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        return
    with nogil:
        activate_impl(act, <floating> slope, &A[0, 0], A.shape[0], A.shape[1])


def activation_grad(int act, const floating[:, ::1] A, floating[:, ::1] D,
                    double slope=0.01):
    """D := D * act'(z) from the stored a = act(z), in place. A, D (N, O)."""
    _check(0 <= act < N_ACTIVATIONS and act != SOFTMAX,
           f"activation code {act} has no elementwise derivative")
    _check(A.shape[0] == D.shape[0] and A.shape[1] == D.shape[1],
           "activation_grad: A and D differ in shape")
    if A.shape[0] == 0 or A.shape[1] == 0:
        return
    with nogil:
        activation_grad_impl(act, <floating> slope, &A[0, 0], &D[0, 0],
                             A.shape[0] * A.shape[1])


def output_delta(int loss, int act, const floating[:, ::1] A,
                 const floating[:, ::1] Y, floating[:, ::1] D,
                 double slope=0.01):
    """D := dC_x/dz^L row by row; returns sum_x C_x. A, Y, D (N, O)."""
    cdef double total
    _check(0 <= act < N_ACTIVATIONS, f"unknown activation code {act}")
    _check_loss(loss, act)
    _check(A.shape[0] == Y.shape[0] == D.shape[0]
           and A.shape[1] == Y.shape[1] == D.shape[1],
           "output_delta: A, Y and D differ in shape")
    if A.shape[0] == 0 or A.shape[1] == 0:
        return 0.0
    with nogil:
        total = output_delta_impl(loss, act, <floating> slope, &A[0, 0],
                                  &Y[0, 0], NULL, &D[0, 0], A.shape[0], A.shape[1])
    return total


def hidden_delta(const floating[:, ::1] D_next, const floating[:, ::1] W_next,
                 int act, const floating[:, ::1] A, floating[:, ::1] out,
                 double slope=0.01):
    """out := (D_next @ W_next.T) * act'(z).  D_next (N, O), W_next (I, O), A, out (N, I)."""
    cdef Py_ssize_t N = D_next.shape[0], O = D_next.shape[1], I = W_next.shape[0]
    _check(0 <= act < N_ACTIVATIONS and act != SOFTMAX,
           f"activation code {act} has no elementwise derivative")
    _check(W_next.shape[1] == O and A.shape[0] == N and A.shape[1] == I
           and out.shape[0] == N and out.shape[1] == I,
           "hidden_delta: shapes do not match")
    _check(0 < I <= INT_MAX and 0 < O <= INT_MAX and N <= INT_MAX,
           "hidden_delta: each dimension must be in [1, 2**31)")
    if N == 0:
        return
    with nogil:
        hidden_delta_impl(&D_next[0, 0], &W_next[0, 0], act, <floating> slope,
                          &A[0, 0], NULL, &out[0, 0], N, I, O, NULL)


def optimizer_step(int optimizer, floating[::1] params, floating[:, ::1] state,
                   const double[::1] hyper, int64_t t):
    """One optimizer step on params from the gradient in state[0] (t counts
    steps from 1, for Adam's bias correction)."""
    _check(0 <= optimizer < N_OPTIMIZERS, f"unknown optimizer code {optimizer}")
    _check(state.shape[0] >= STATE_ROWS[optimizer] and state.shape[1] == params.shape[0],
           f"state needs shape ({STATE_ROWS[optimizer]}, {params.shape[0]})")
    _check(hyper.shape[0] == N_HYPER, f"hyper needs {N_HYPER} entries")
    _check(t >= 1, "t counts steps from 1")
    if params.shape[0] == 0:
        return
    with nogil:
        optimizer_step_impl(optimizer, &params[0], &state[0, 0], params.shape[0], params.shape[0],
                            &hyper[0], t)


cdef extern from *:
    """
    /* The first row of X (n rows of m) with a NaN or an infinity, or -1: a value
       is one exactly when its bits without the sign are at least those of +inf,
       so each row is one pass of unsigned maxima over those bits, which GCC
       vectorises (16 lanes a step with AVX-512, 8 with AVX2, chosen at run
       time: the SSE2 baseline ran at half the speed of a cold 63 MB read). */
    typedef uint32_t __attribute__((may_alias)) fastnn_u32;
    typedef uint64_t __attribute__((may_alias)) fastnn_u64;
    #define FASTNN_SCAN(name, target, T, U, MASK, INF)                              \
        target static Py_ssize_t name(const T* X, Py_ssize_t n, Py_ssize_t m) {     \
            for (Py_ssize_t i = 0; i < n; i++) {                                    \
                const U* row = (const U*) (X + i * m);                              \
                U top = 0;                                                          \
                for (Py_ssize_t j = 0; j < m; j++) {                                \
                    const U a = row[j] & MASK;                                      \
                    top = a > top ? a : top;                                        \
                }                                                                   \
                if (top >= INF)                                                     \
                    return i;                                                       \
            }                                                                       \
            return -1;                                                              \
        }
    #define FASTNN_SCAN_OF(...) FASTNN_SCAN(__VA_ARGS__)   /* expands FASTNN_F32 first */
    #define FASTNN_F32 fastnn_u32, 0x7FFFFFFFu, 0x7F800000u
    #define FASTNN_F64 fastnn_u64, 0x7FFFFFFFFFFFFFFFull, 0x7FF0000000000000ull
    #if defined(__x86_64__) && defined(__GNUC__)
    /* the scan of T in three builds, and fastnn_first_nonfinite_SUFFIX, which
       runs the best one this CPU has */
    #define FASTNN_SCANS(T, suffix, BITS)                                            \
        FASTNN_SCAN_OF(fastnn_scan_##suffix##_avx512, __attribute__((target("avx512f"))), \
                       T, BITS)                                                      \
        FASTNN_SCAN_OF(fastnn_scan_##suffix##_avx2, __attribute__((target("avx2"))), \
                       T, BITS)                                                      \
        FASTNN_SCAN_OF(fastnn_scan_##suffix##_base, , T, BITS)                      \
        static Py_ssize_t fastnn_first_nonfinite_##suffix(const T* X, Py_ssize_t n,  \
                                                          Py_ssize_t m) {            \
            __builtin_cpu_init();                                                   \
            if (__builtin_cpu_supports("avx512f"))                                  \
                return fastnn_scan_##suffix##_avx512(X, n, m);                      \
            if (__builtin_cpu_supports("avx2"))                                     \
                return fastnn_scan_##suffix##_avx2(X, n, m);                        \
            return fastnn_scan_##suffix##_base(X, n, m);                            \
        }
    #else
    #define FASTNN_SCANS(T, suffix, BITS)                                            \
        FASTNN_SCAN_OF(fastnn_first_nonfinite_##suffix, , T, BITS)
    #endif
    FASTNN_SCANS(float, f32, FASTNN_F32)
    FASTNN_SCANS(double, f64, FASTNN_F64)
    """
    Py_ssize_t first_nonfinite_f32 "fastnn_first_nonfinite_f32"(
        const float* X, Py_ssize_t n, Py_ssize_t m) noexcept nogil
    Py_ssize_t first_nonfinite_f64 "fastnn_first_nonfinite_f64"(
        const double* X, Py_ssize_t n, Py_ssize_t m) noexcept nogil


cdef extern from *:
    """
    /* Block b (of block_rows rows) of a float64 (f64) or float32 X (n, m):
       its first row with a NaN or an infinity, or -1 (the passes of
       first_nonfinite_row's team and of BackgroundScan). */
    static Py_ssize_t fastnn_block_nonfinite(const void* X, Py_ssize_t n, Py_ssize_t m,
                                             int f64, Py_ssize_t block_rows, int64_t b) {
        const Py_ssize_t r0 = b * block_rows;
        const Py_ssize_t rows = n - r0 < block_rows ? n - r0 : block_rows;
        const Py_ssize_t r = f64
            ? fastnn_first_nonfinite_f64((const double*) X + r0 * m, rows, m)
            : fastnn_first_nonfinite_f32((const float*) X + r0 * m, rows, m);
        return r >= 0 ? r0 + r : -1;
    }

    /* fastnn_block_nonfinite, unless a block before b has a bad row
       (*first_bad, the least such block so far, lowered atomically), when b
       is not read. */
    static Py_ssize_t fastnn_first_nonfinite_block(const void* X, Py_ssize_t n, Py_ssize_t m,
                                                   int f64, Py_ssize_t block_rows,
                                                   Py_ssize_t b, Py_ssize_t* first_bad) {
        if (b > __atomic_load_n(first_bad, __ATOMIC_RELAXED))
            return -1;
        const Py_ssize_t r = fastnn_block_nonfinite(X, n, m, f64, block_rows, b);
        if (r < 0)
            return -1;
        Py_ssize_t seen = __atomic_load_n(first_bad, __ATOMIC_RELAXED);
        while (b < seen && !__atomic_compare_exchange_n(first_bad, &seen, b, 0,
                                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            ;
        return r;
    }
    """
    Py_ssize_t first_nonfinite_block "fastnn_first_nonfinite_block"(
        const void* X, Py_ssize_t n, Py_ssize_t m, int f64, Py_ssize_t block_rows,
        Py_ssize_t b, Py_ssize_t* first_bad) noexcept nogil


def first_nonfinite_row(const floating[:, ::1] X, int n_threads=1):
    """The first row of X (n, m) that holds a NaN or an infinity, or -1.

    One vectorised pass over each row (see fastnn_first_nonfinite_f32),
    without the GIL and without the (n, m) boolean temporary of
    np.isfinite, so fit's input check costs a fraction of an epoch. With
    n_threads above 1, an OpenMP team takes blocks of SCAN_BLOCK_ENTRIES
    entries in turn: the team a forward then runs on (the calling thread's
    pool), whose threads are already up and spinning after the last one,
    where a thread started for the pass (BackgroundScan) waited on 3 of
    20 forwards for a CPU that such a thread held (3.4-4.5 ms for 10,000
    MNIST-sized rows, against 0.78-1.05 ms on one thread). The team
    settles first (team_settle): one woken onto the caller's CPU made the
    pass wait for it at its end."""
    cdef Py_ssize_t n = X.shape[0], m = X.shape[1], found = -1, b, blocks, block_rows
    cdef Py_ssize_t first_bad
    cdef Py_ssize_t* first_bad_at = &first_bad
    cdef int64_t arrived = 0        # the team's threads started (team_settle)
    cdef int master_cpu             # the caller's CPU as the team starts (team_settle)
    cdef Py_ssize_t[::1] rows
    cdef const void* data
    if n == 0 or m == 0:
        return -1
    block_rows = max(1, SCAN_BLOCK_ENTRIES // m)
    blocks = (n + block_rows - 1) // block_rows
    if n_threads <= 1 or blocks <= 1:
        with nogil:
            if floating is float:
                found = first_nonfinite_f32(&X[0, 0], n, m)
            else:
                found = first_nonfinite_f64(&X[0, 0], n, m)
        return found
    import numpy as np
    rows = np.empty(blocks, dtype=np.intp)
    first_bad = blocks
    data = <const void*> &X[0, 0]
    master_cpu = current_cpu()
    with nogil, parallel(num_threads=n_threads):
        settle_this_thread(master_cpu, &arrived)
        for b in prange(blocks, schedule="dynamic", chunksize=1):
            rows[b] = first_nonfinite_block(data, n, m, floating is double, block_rows, b,
                                            first_bad_at)
    return rows[first_bad] if first_bad < blocks else -1


cdef extern from *:
    """
    #include <pthread.h>
    #include <stdlib.h>
    #include <time.h>
    #include <unistd.h>
    /* A pass of fastnn_first_nonfinite_f32/_f64 over X (n, m) in blocks of
       block_rows rows, which the threads that take part claim in order
       (next, atomically); see BackgroundScan. The job is shared by the
       BackgroundScan and its started thread, and freed by whichever lets go
       of it last (refs): the caller never waits for a thread that has not
       claimed a block, only for one reading a block it has claimed
       (inflight), so a thread that has yet to run costs it nothing. */
    typedef struct {
        const void* X;
        Py_ssize_t n, m, block_rows;
        int f64;
        int64_t next;           /* the next block to take */
        int64_t inflight;       /* started threads inside a block they claimed */
        int64_t refs;           /* the BackgroundScan, and the thread until it ends */
        Py_ssize_t found;       /* the started thread's answer */
        int started;            /* whether that thread was started */
        int placed;             /* whether it started on a CPU of its own (mask) */
        pid_t pid;              /* the process that started it */
    #if defined(__linux__) && defined(CPU_SETSIZE)
        cpu_set_t mask;         /* the CPUs the caller may run on */
    #endif
    } fastnn_scan_job;

    /* Blocks being read by some started thread, in this process: 0 whenever
       no BackgroundScan is alive (tests check it after a dropped one). */
    static int64_t fastnn_scans_reading = 0;

    static int64_t fastnn_scans_reading_now(void) {
        return __atomic_load_n(&fastnn_scans_reading, __ATOMIC_SEQ_CST);
    }

    static Py_ssize_t fastnn_scan_block_count(const fastnn_scan_job* job) {
        return (job->n + job->block_rows - 1) / job->block_rows;
    }

    /* Block b's first row with a NaN or an infinity, or -1. */
    static Py_ssize_t fastnn_scan_block(const fastnn_scan_job* job, int64_t b) {
        return fastnn_block_nonfinite(job->X, job->n, job->m, job->f64, job->block_rows, b);
    }

    /* The caller's part: the first row with a NaN or an infinity in the
       blocks it takes, up to the first such block, or -1. A thread's blocks
       come in order, and each block it claims it reads to the end, so the
       first bad row of X is the least of the threads' answers. */
    static Py_ssize_t fastnn_scan_blocks(fastnn_scan_job* job) {
        const Py_ssize_t blocks = fastnn_scan_block_count(job);
        for (;;) {
            const int64_t b = __atomic_fetch_add(&job->next, 1, __ATOMIC_SEQ_CST);
            if (b >= blocks)
                return -1;
            const Py_ssize_t r = fastnn_scan_block(job, b);
            if (r >= 0)
                return r;
        }
    }

    static void fastnn_scan_release(fastnn_scan_job* job) {
        if (__atomic_sub_fetch(&job->refs, 1, __ATOMIC_ACQ_REL) == 0)
            free(job);
    }

    /* The started thread: off its creator's CPU (which goes on with Python),
       then blocks until none is left. It counts itself in inflight before
       it claims a block (both sequentially consistent), so a caller that
       has stopped the handing out (next) and then sees inflight at 0 knows
       that no block will be read after that. */
    static void* fastnn_scan_thread(void* arg) {
        fastnn_scan_job* job = (fastnn_scan_job*) arg;
        const Py_ssize_t blocks = fastnn_scan_block_count(job);
    #if defined(__linux__) && defined(CPU_SETSIZE)
        if (job->placed)        /* free to move again from there */
            pthread_setaffinity_np(pthread_self(), sizeof job->mask, &job->mask);
    #endif
        for (;;) {
            __atomic_fetch_add(&job->inflight, 1, __ATOMIC_SEQ_CST);
            const int64_t b = __atomic_fetch_add(&job->next, 1, __ATOMIC_SEQ_CST);
            Py_ssize_t r = -1;
            if (b < blocks) {
                __atomic_fetch_add(&fastnn_scans_reading, 1, __ATOMIC_RELAXED);
                r = fastnn_scan_block(job, b);
                if (r >= 0)
                    job->found = r;     /* published by the release below */
                __atomic_fetch_sub(&fastnn_scans_reading, 1, __ATOMIC_RELAXED);
            }
            __atomic_fetch_sub(&job->inflight, 1, __ATOMIC_RELEASE);
            if (b >= blocks || r >= 0)
                break;
        }
        fastnn_scan_release(job);
        return NULL;
    }

    /* A new job over X (n, m) for the caller (refs 1), or NULL. */
    static fastnn_scan_job* fastnn_scan_new(const void* X, Py_ssize_t n, Py_ssize_t m,
                                            int f64, Py_ssize_t block_rows) {
        fastnn_scan_job* job = (fastnn_scan_job*) calloc(1, sizeof(fastnn_scan_job));
        if (job == NULL)
            return NULL;
        job->X = X;
        job->n = n;
        job->m = m;
        job->f64 = f64;
        job->block_rows = block_rows;
        job->found = -1;
        job->refs = 1;
        job->pid = getpid();
        return job;
    }

    /* Start the scan on a thread of its own (a detached POSIX thread, which
       never takes the GIL), on a CPU the caller may use other than its own
       where there is one: a new thread starts on its creator's CPU
       otherwise, and runs only when the creator stops (the kernel moves it
       to an idle CPU later: a C test here found it waiting 1.0 ms on 7 of 8
       starts, the time its creator kept busy). That CPU may be busy too (an
       OpenMP thread of the last forward, still spinning: 3.4-4.5 ms on 3 of
       20 scans when the caller waited for the thread). job->started says
       whether it could start it. */
    static void fastnn_scan_start(fastnn_scan_job* job) {
        pthread_attr_t attr;
        pthread_t thread;
        if (pthread_attr_init(&attr) != 0)
            return;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    #if defined(__linux__) && defined(CPU_SETSIZE)
        const int here = sched_getcpu();
        if (here >= 0
                && pthread_getaffinity_np(pthread_self(), sizeof job->mask, &job->mask) == 0) {
            for (int c = 0; c < CPU_SETSIZE && !job->placed; c++) {
                if (c != here && CPU_ISSET(c, &job->mask)) {
                    cpu_set_t one;
                    CPU_ZERO(&one);
                    CPU_SET(c, &one);
                    job->placed = pthread_attr_setaffinity_np(&attr, sizeof one, &one) == 0;
                }
            }
        }
    #endif
        job->refs = 2;
        job->started = pthread_create(&thread, &attr, fastnn_scan_thread, job) == 0;
        if (!job->started)
            job->refs = 1;
        pthread_attr_destroy(&attr);
    }

    /* Stop handing out blocks, then wait until no started thread reads one
       (it reads a block of a few MB to its end: tens of microseconds, unless
       its CPU is taken from it meanwhile). After this, X is never read. */
    static void fastnn_scan_stop(fastnn_scan_job* job) {
        __atomic_store_n(&job->next, (int64_t) 1 << 62, __ATOMIC_SEQ_CST);
        for (int spins = 0; __atomic_load_n(&job->inflight, __ATOMIC_SEQ_CST) != 0; spins++) {
            if (spins < 4096) {
    #if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
    #endif
            } else {
                struct timespec pause = {0, 20000};
                nanosleep(&pause, NULL);
            }
        }
    }

    /* In a child forked while the scan ran, its thread is not there (only
       the thread that forked is): the child's copy forgets it and starts the
       pass again, all of it on the caller (blocks the parent's thread had
       taken are not done in the child's copy of X). */
    static void fastnn_scan_after_fork(fastnn_scan_job* job) {
        if (job->pid != getpid()) {
            job->started = 0;
            job->next = 0;
            job->inflight = 0;
            job->refs = 1;
            job->found = -1;
            job->pid = getpid();
        }
    }
    """
    ctypedef struct scan_job "fastnn_scan_job":
        Py_ssize_t found
        int started
    int64_t scans_reading_now "fastnn_scans_reading_now"() noexcept nogil
    scan_job* scan_new "fastnn_scan_new"(const void* X, Py_ssize_t n, Py_ssize_t m, int f64,
                                         Py_ssize_t block_rows) noexcept nogil
    Py_ssize_t scan_blocks "fastnn_scan_blocks"(scan_job* job) noexcept nogil
    void scan_start "fastnn_scan_start"(scan_job* job) noexcept nogil
    void scan_stop "fastnn_scan_stop"(scan_job* job) noexcept nogil
    void scan_release "fastnn_scan_release"(scan_job* job) noexcept nogil
    void scan_after_fork "fastnn_scan_after_fork"(scan_job* job) noexcept nogil


#: Rows of X (at least) a block of a BackgroundScan: a few MB of MNIST.
SCAN_BLOCK_ENTRIES = 1 << 19


cdef class BackgroundScan:
    """first_nonfinite_row of a C-contiguous float32 or float64 X (n, m),
    started on a thread of its own so that the caller goes on meanwhile (fit
    prepares its targets and its trainer while X is read): `row()` takes the
    blocks not yet started on the calling thread, waits only for a block
    the other is reading (never for a thread that has yet to run: its CPU
    may be busy for milliseconds) and returns the first row that holds a NaN
    or an infinity, or -1. The started thread is a POSIX thread that never
    takes the GIL, so it reads X while the caller runs Python; X is held
    until `row()` has returned, and a scan dropped before that stops handing
    out blocks and waits for the one being read (no block of X is read
    after). In a child process forked meanwhile, `row()` reads the child's X
    anew on the caller."""
    cdef scan_job* job
    cdef object X
    cdef bint done
    cdef Py_ssize_t answer

    def __cinit__(self, X):
        import numpy as np
        X = np.asarray(X)
        _check(X.ndim == 2 and X.flags.c_contiguous and X.dtype in (np.float32, np.float64),
               "BackgroundScan takes a C-contiguous 2-D float32 or float64 array")
        self.X = X
        self.done = True
        self.answer = -1
        if X.size == 0:
            return
        self.job = scan_new(<const void*> <size_t> X.ctypes.data, X.shape[0], X.shape[1],
                            X.dtype == np.float64,
                            max(1, SCAN_BLOCK_ENTRIES // max(1, X.shape[1])))
        if self.job == NULL:
            raise MemoryError("no memory for a BackgroundScan")
        self.done = False
        scan_start(self.job)

    def row(self):
        """The first row of X with a NaN or an infinity, or -1 (the pass
        finished on this thread and the started one)."""
        cdef Py_ssize_t mine
        if not self.done:
            with nogil:
                scan_after_fork(self.job)
                mine = scan_blocks(self.job)
                scan_stop(self.job)
            self.done = True
            found = [r for r in (mine, self.job.found) if r >= 0]
            self.answer = min(found) if found else -1
        return self.answer

    def __dealloc__(self):
        if self.job == NULL:
            return
        with nogil:
            scan_after_fork(self.job)
            scan_stop(self.job)
            scan_release(self.job)
        self.job = NULL


def scans_reading():
    """Blocks of an X that a BackgroundScan's thread is reading now, in this
    process (0 once every scan has answered or gone)."""
    return scans_reading_now()


def random_uniform(uint64_t seed, const int64_t[::1] positions, Py_ssize_t stream,
                   Py_ssize_t n):
    """The (len(positions), n) uniform numbers the kernels draw for these rows
    of an epoch in this stream (what decides dropout masks)."""
    import numpy as np
    out = np.empty((positions.shape[0], n))
    cdef double[:, ::1] u = out
    cdef Py_ssize_t r, j
    for r in range(positions.shape[0]):
        for j in range(n):
            u[r, j] = uniform(row_key(seed, positions[r], stream), j)
    return out


def random_shifts(uint64_t seed, const int64_t[::1] positions):
    """The (dx, dy) shifts the kernels apply to these rows of an epoch."""
    import numpy as np
    out = np.empty((positions.shape[0], 2), dtype=np.int64)
    cdef int64_t[:, ::1] s = out
    cdef int dx, dy
    cdef Py_ssize_t r
    for r in range(positions.shape[0]):
        shift_offsets(seed, positions[r], &dx, &dy)
        s[r, 0] = dx
        s[r, 1] = dy
    return out


def dropout(const floating[:, ::1] A, double rate, uint64_t seed, int64_t first,
            Py_ssize_t stream, floating[:, ::1] mask, floating[:, ::1] out):
    """mask := [u < 1 - rate] / (1 - rate), out := A * mask: the inverted
    dropout train_epoch applies to a hidden layer (stream = its index) for
    the rows first, first + 1, ... of an epoch."""
    cdef Py_ssize_t N = A.shape[0], O = A.shape[1]
    _check(0 <= rate < 1, f"dropout rate {rate} is outside [0, 1)")
    _check(mask.shape[0] == N and mask.shape[1] == O and out.shape[0] == N
           and out.shape[1] == O, "dropout: A, mask and out differ in shape")
    _check(0 <= stream < MAX_STREAMS, f"stream must be in [0, {MAX_STREAMS})")
    if N == 0 or O == 0:
        return
    with nogil:
        dropout_impl(&A[0, 0], &mask[0, 0], &out[0, 0], N, O, 1 - rate, seed, first, stream)


cdef tuple _shape4(Py_ssize_t* shape):
    return (shape[0], shape[1], shape[2], shape[3])


cdef Geometry _geometry(int kind, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                        Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t F, window, stride,
                        padding) except *:
    """The geometry of one layer, checked as train_epoch checks a table row."""
    import numpy as np
    cdef Geometry g
    cdef int64_t[:, ::1] row
    try:
        (kh, kw), (sh, sw), (pt, pl) = window, stride, padding
    except (TypeError, ValueError):
        raise ValueError("window, stride and padding are pairs of ints") from None
    K = kh * kw * C if kind == CONV2D else 0
    row = np.array([[kind, IDENTITY, H, W, C, OH, OW, F, kh, kw, sh, sw, pt, pl,
                     0 if K else -1, K * F if K else -1]], dtype=np.int64)
    _check_table(row, np.empty(0))
    _check(N * max(H * W * C, OH * OW * F) <= INT_MAX, "batch too large")
    geometry_init(&g, &row[0, 0], max(N, 1))
    return g


cdef floating[::1] _scratch(Py_ssize_t n, floating x):
    import numpy as np
    return np.empty(max(n, 1), dtype=np.float32 if floating is float else np.float64)


def conv2d_forward(const floating[:, :, :, ::1] X, const floating[:, :, :, ::1] W,
                   const floating[::1] b, stride, padding, floating[:, :, :, ::1] out):
    """out := im2col(X) @ W + b, the convolution (cross-correlation) without
    activation. X (N, H, W, C), W (kh, kw, C, F), b (F,), out (N, OH, OW, F);
    stride (sh, sw); padding (top, left)."""
    cdef Py_ssize_t N = X.shape[0]
    _check(W.shape[2] == X.shape[3] and b.shape[0] == W.shape[3] and out.shape[0] == N
           and out.shape[3] == W.shape[3], "conv2d_forward: shapes do not match")
    cdef Geometry g = _geometry(CONV2D, N, X.shape[1], X.shape[2], X.shape[3], out.shape[1],
                                out.shape[2], out.shape[3], (W.shape[0], W.shape[1]), stride,
                                padding)
    g.col_t = g.kw * g.in_c < SHORT_SPAN
    cdef floating[::1] col = _scratch(conv_scratch(&g), <floating> 0)
    if N == 0:
        return
    with nogil:
        conv_forward_impl(&X[0, 0, 0, 0], &W[0, 0, 0, 0], &b[0], &out[0, 0, 0, 0], &col[0],
                          &g, N, 0, NULL)


def conv2d_backward(const floating[:, :, :, ::1] X, const floating[:, :, :, ::1] W,
                    const floating[:, :, :, ::1] D, stride, padding,
                    floating[:, :, :, ::1] dW, floating[::1] db,
                    floating[:, :, :, ::1] dX=None):
    """dW := im2col(X)^T @ D, db := sum of D over samples and pixels, and
    unless dX is None, dX := col2im(D @ W^T). X, dX (N, H, W, C), W, dW
    (kh, kw, C, F), D (N, OH, OW, F)."""
    cdef Py_ssize_t N = X.shape[0]
    _check(W.shape[2] == X.shape[3] and D.shape[0] == N and D.shape[3] == W.shape[3]
           and _shape4(dW.shape) == _shape4(W.shape) and db.shape[0] == W.shape[3],
           "conv2d_backward: shapes do not match")
    _check(dX is None or _shape4(dX.shape) == _shape4(X.shape),
           "conv2d_backward: dX must have the shape of X")
    cdef Geometry g = _geometry(CONV2D, N, X.shape[1], X.shape[2], X.shape[3], D.shape[1],
                                D.shape[2], D.shape[3], (W.shape[0], W.shape[1]), stride,
                                padding)
    g.col_t = dX is None and g.kw * g.in_c < SHORT_SPAN
    cdef floating[::1] col = _scratch(conv_scratch(&g), <floating> 0)
    cdef floating[::1] colsum = _scratch(g.out_c, <floating> 0)
    cdef floating* dA = NULL
    if dX is not None and N > 0:
        dA = &dX[0, 0, 0, 0]
    if N == 0:
        dW[...] = 0
        db[...] = 0
        return
    with nogil:
        conv_backward_impl(&X[0, 0, 0, 0], &W[0, 0, 0, 0], &D[0, 0, 0, 0], dA, &col[0], &g, N,
                           1, 0, 0, &dW[0, 0, 0, 0], &db[0], &colsum[0], NULL)


def maxpool_forward(const floating[:, :, :, ::1] X, size, stride, floating[:, :, :, ::1] out,
                    int32_t[:, :, :, ::1] argmax):
    """out := the maximum of each size window, argmax := its index
    (y * W + x) * C + c in the sample. X (N, H, W, C), out and argmax
    (N, OH, OW, C)."""
    cdef Py_ssize_t N = X.shape[0]
    _check(out.shape[0] == N and out.shape[3] == X.shape[3]
           and _shape4(argmax.shape) == _shape4(out.shape),
           "maxpool_forward: shapes do not match")
    cdef Geometry g = _geometry(MAXPOOL2D, N, X.shape[1], X.shape[2], X.shape[3], out.shape[1],
                                out.shape[2], out.shape[3], size, stride, (0, 0))
    if N == 0:
        return
    with nogil:
        maxpool_forward_impl(&X[0, 0, 0, 0], &out[0, 0, 0, 0], &argmax[0, 0, 0, 0], &g, N)


def maxpool_backward(const floating[:, :, :, ::1] D, const int32_t[:, :, :, ::1] argmax,
                     floating[:, :, :, ::1] dX):
    """dX := D routed to where each maximum was. D, argmax (N, OH, OW, C),
    dX (N, H, W, C)."""
    cdef Py_ssize_t N = D.shape[0], i, j, n_in = dX.shape[1] * dX.shape[2] * dX.shape[3]
    cdef Geometry g
    _check(_shape4(argmax.shape) == _shape4(D.shape) and dX.shape[0] == N,
           "maxpool_backward: shapes do not match")
    _check(N * max(n_in, D.shape[1] * D.shape[2] * D.shape[3]) <= INT_MAX, "batch too large")
    g.n_in = n_in
    g.n_out = D.shape[1] * D.shape[2] * D.shape[3]
    for i in range(N):
        for j in range(g.n_out):
            _check(0 <= argmax[i, j // (D.shape[2] * D.shape[3]),
                               (j // D.shape[3]) % D.shape[2], j % D.shape[3]] < n_in,
                   "maxpool_backward: argmax holds an index outside the sample")
    if N == 0:
        return
    with nogil:
        maxpool_backward_impl(&D[0, 0, 0, 0], &argmax[0, 0, 0, 0], &dX[0, 0, 0, 0], &g, N)


def l2pool_forward(const floating[:, :, :, ::1] X, size, stride, floating[:, :, :, ::1] out):
    """out := sqrt(sum x^2) over each size window. X (N, H, W, C), out (N, OH, OW, C)."""
    cdef Py_ssize_t N = X.shape[0]
    _check(out.shape[0] == N and out.shape[3] == X.shape[3],
           "l2pool_forward: shapes do not match")
    cdef Geometry g = _geometry(L2POOL2D, N, X.shape[1], X.shape[2], X.shape[3], out.shape[1],
                                out.shape[2], out.shape[3], size, stride, (0, 0))
    if N == 0:
        return
    with nogil:
        l2pool_forward_impl(&X[0, 0, 0, 0], &out[0, 0, 0, 0], &g, N)


def l2pool_backward(const floating[:, :, :, ::1] X, const floating[:, :, :, ::1] Y,
                    const floating[:, :, :, ::1] D, size, stride, floating[:, :, :, ::1] dX):
    """dX := sum over the windows holding x of x / y * dy (0 where y = 0).
    X, dX (N, H, W, C), Y, D (N, OH, OW, C)."""
    cdef Py_ssize_t N = X.shape[0]
    _check(Y.shape[0] == N and Y.shape[3] == X.shape[3]
           and _shape4(D.shape) == _shape4(Y.shape)
           and _shape4(dX.shape) == _shape4(X.shape),
           "l2pool_backward: shapes do not match")
    cdef Geometry g = _geometry(L2POOL2D, N, X.shape[1], X.shape[2], X.shape[3], Y.shape[1],
                                Y.shape[2], Y.shape[3], size, stride, (0, 0))
    if N == 0:
        return
    with nogil:
        l2pool_backward_impl(&X[0, 0, 0, 0], &Y[0, 0, 0, 0], &D[0, 0, 0, 0], &dX[0, 0, 0, 0],
                             &g, N)
