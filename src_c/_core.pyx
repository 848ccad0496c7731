"""fastnn._core: the compiled kernels of a fully-connected network.

Legend: N = rows (samples) in a chunk, I = fan-in, O = fan-out, L = layers,
P = parameters, m = rows in a mini-batch. Every array is C-contiguous and
row-major; samples are rows.

Flat parameter vector (the layout of ``fastnn._kernels``): for
l = 0 .. L-1, layer l's weights W_l (I_l, O_l) row-major, then its bias
b_l (O_l,). Optimizer state is rows of the same length: ``state[0]`` is the
gradient, ``state[1:]`` the optimizer's own buffers (velocity, Adam's
moments, Rprop's previous gradient and step sizes).

A mini-batch is processed in chunks of at most ``capacity`` rows (the
workspace's size); their gradients accumulate in ``state[0]`` before one
optimizer step. When a batch fits in one chunk and the optimizer is plain
SGD without L1, the step is fused into the weight-gradient GEMM instead
(alpha = -lr/m, beta = 1 - lr*l2/n) and ``state[0]`` is not touched.

Workspace of a chunk (``workspace_size``): the activations A_0 .. A_L,
for each hidden layer with dropout its mask and masked activations, a
delta buffer and a bias-gradient (column-sum) buffer per layer, and the
targets and sample weights of the chunk.

Each kernel comes in two layers: a ``cdef ... noexcept nogil`` function that
trusts its arguments, and a ``def`` wrapper that checks shapes, codes and
indices and raises *before* releasing the GIL. Row-major arrays go to
column-major BLAS by swapping the operands: row-major C = A @ B is
column-major C^T = B^T @ A^T.
"""
from cython cimport floating
from libc.float cimport DBL_MIN, FLT_MIN
from libc.math cimport exp, isfinite, log, logf, pow, sqrt, sqrtf, tanh, tanhf
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc

from cython.parallel cimport parallel
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

# Rows of optimizer state each optimizer needs (the gradient included).
cdef int STATE_ROWS[5]
STATE_ROWS[:] = [1, 2, 2, 3, 3]

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
    N_HYPER = 11

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
# the epoch and a stream number (0 = augmentation, l = dropout on A_l).
cpdef enum:
    MAX_STREAMS = 1024

ctypedef fused input_t:
    uint8_t
    float
    double

cdef enum:
    N_ACTIVATIONS = 6
    N_LOSSES = 2
    N_OPTIMIZERS = 5

# BLAS takes 32-bit dimensions.
cdef Py_ssize_t INT_MAX = 2147483647


# --------------------------------------------------------------------------
# Layout: where each layer's parameters and buffers live.
# --------------------------------------------------------------------------

cdef struct Layout:
    Py_ssize_t n_layers          # L
    Py_ssize_t capacity          # N: rows the workspace holds
    Py_ssize_t n_params          # P
    Py_ssize_t* size             # size[l], l = 0..L (points into the caller's array)
    Py_ssize_t* w_off            # offset of W_l in params, l = 0..L-1
    Py_ssize_t* b_off            # offset of b_l in params
    Py_ssize_t* a_off            # offset of A_l in the workspace, l = 0..L
    Py_ssize_t* in_off           # what layer l reads: A_l, or its dropped-out copy
    Py_ssize_t* mask_off         # dropout mask of A_l (0 or 1/keep), -1 if none
    Py_ssize_t* d_off            # delta of A_l, l = 1..L (one buffer each)
    Py_ssize_t* colsum_off       # bias gradient of layer l (O_l entries)
    double* keep                 # keep probability of A_l (1 = no dropout)
    Py_ssize_t y_off             # chunk targets
    Py_ssize_t sw_off            # chunk sample weights
    Py_ssize_t work_size         # entries the workspace needs


cdef int layout_init(Layout* lay, Py_ssize_t* sizes, Py_ssize_t n_layers,
                     Py_ssize_t capacity, const double* dropout) noexcept nogil:
    """Fill lay from the sizes and, for hidden layers, dropout rates
    (dropout[l - 1] for A_l; NULL for none). Returns -1 if malloc failed."""
    cdef Py_ssize_t l, p = 0, a = 0, L1 = n_layers + 1
    lay.n_layers = n_layers
    lay.capacity = capacity
    lay.size = sizes
    lay.w_off = <Py_ssize_t*> malloc(7 * L1 * sizeof(Py_ssize_t) + L1 * sizeof(double))
    if lay.w_off == NULL:
        return -1
    lay.b_off = lay.w_off + L1
    lay.a_off = lay.b_off + L1
    lay.in_off = lay.a_off + L1
    lay.mask_off = lay.in_off + L1
    lay.d_off = lay.mask_off + L1
    lay.colsum_off = lay.d_off + L1
    lay.keep = <double*> (lay.colsum_off + L1)
    for l in range(n_layers):
        lay.w_off[l] = p
        p += sizes[l] * sizes[l + 1]
        lay.b_off[l] = p
        p += sizes[l + 1]
    lay.n_params = p
    for l in range(n_layers + 1):
        lay.a_off[l] = a
        a += capacity * sizes[l]
    for l in range(n_layers + 1):
        lay.keep[l] = 1
        if dropout != NULL and 0 < l < n_layers:
            lay.keep[l] = 1 - dropout[l - 1]
        lay.in_off[l] = lay.a_off[l]
        lay.mask_off[l] = -1
        if lay.keep[l] < 1:
            lay.mask_off[l] = a
            lay.in_off[l] = a + capacity * sizes[l]
            a += 2 * capacity * sizes[l]
    lay.d_off[0] = -1
    lay.colsum_off[n_layers] = -1
    for l in range(1, n_layers + 1):
        lay.d_off[l] = a
        a += capacity * sizes[l]
        lay.colsum_off[l - 1] = a
        a += sizes[l]
    lay.y_off = a
    lay.sw_off = lay.y_off + capacity * sizes[n_layers]
    lay.work_size = lay.sw_off + capacity
    return 0


cdef void layout_free(Layout* lay) noexcept nogil:
    free(lay.w_off)
    lay.w_off = NULL


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
    #else
    static inline int fastnn_team_size(void) { return 1; }
    static inline int fastnn_thread_id(void) { return 0; }
    #endif
    """
    int team_size "fastnn_team_size"() noexcept nogil
    int thread_id "fastnn_thread_id"() noexcept nogil


cdef struct Team:
    int id          # this thread, 0 .. size - 1
    int size        # threads in the team


cdef Team SOLO      # a team of one
SOLO.id = 0
SOLO.size = 1


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
    """
    float fastnn_expf(float x) noexcept nogil


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


cdef inline void gemm(char transa, char transb, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb, floating beta,
                      floating* c, int ldc) noexcept nogil:
    """Column-major C := alpha op(A) op(B) + beta C (BLAS xGEMM)."""
    if floating is float:
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


cdef void prefetch_rows(const input_t* X, Py_ssize_t I, const int64_t* rows,
                        Py_ssize_t N) noexcept nogil:
    """Ask the CPU to start loading rows X[rows[0..N]] into cache. The rows of
    a shuffled epoch are scattered over X, so gathering them waits on memory
    unless they were requested a batch earlier. Only each row's first lines
    are requested (a burst of every line stalls on the CPU's few line-fill
    buffers); the hardware prefetcher streams the rest."""
    cdef Py_ssize_t r
    cdef const char* row
    for r in range(N):
        row = <const char*> (X + rows[r] * I)
        prefetch(row)
        prefetch(row + 64)


cdef void shift_offsets(uint64_t seed, int64_t position, int* dx, int* dy) noexcept nogil:
    """The random shift of the row at this position: dx, dy each in -2..2."""
    cdef uint64_t h = mix64(row_key(seed, position, 0))
    dx[0] = <int> ((h >> 32) % 5) - 2
    dy[0] = <int> ((h & <uint64_t> 0xFFFFFFFF) % 5) - 2


cdef void gather_shifted(const input_t* X, Py_ssize_t side, const int64_t* rows,
                         Py_ssize_t N, floating* out, uint64_t seed,
                         int64_t first) noexcept nogil:
    """out[r] := X[rows[r]], a side x side image, shifted by a random
    (dx, dy) in -2..2 (Nielsen's expanded training data); pixels shifted in
    from outside are 0. Row r is the epoch's row number first + r."""
    cdef Py_ssize_t r, y, x, sy, sx, I = side * side
    cdef int dx, dy
    cdef const input_t* src
    cdef floating* dst
    for r in range(N):
        shift_offsets(seed, first + r, &dx, &dy)
        src = X + rows[r] * I
        dst = out + r * I
        for y in range(side):
            sy = y - dy
            for x in range(side):
                sx = x - dx
                if 0 <= sy < side and 0 <= sx < side:
                    if input_t is uint8_t:
                        dst[y * side + x] = (<floating> src[sy * side + sx]) / (<floating> 255)
                    else:
                        dst[y * side + x] = <floating> src[sy * side + sx]
                else:
                    dst[y * side + x] = 0


cdef void linear_forward_impl(const floating* A, const floating* W,
                              const floating* b, floating* Z, Py_ssize_t N,
                              Py_ssize_t I, Py_ssize_t O) noexcept nogil:
    """Z := A @ W + b.  A (N, I), W (I, O), b (O,), Z (N, O).

    The bias is folded into the GEMM: Z's rows are prefilled with b and
    GEMM runs with beta = 1.
    """
    cdef Py_ssize_t r, j
    for r in range(N):
        for j in range(O):
            Z[r * O + j] = b[j]
    # column-major Z^T (O, N) += W^T (O, I) @ A^T (I, N)
    gemm(c'N', c'N', <int> O, <int> N, <int> I, 1, W, <int> O, A, <int> I,
         1, Z, <int> O)


cdef void activate_flat(int act, floating slope, floating* a, Py_ssize_t n) noexcept nogil:
    """a := act(a) for an elementwise activation, in place. a (n,)."""
    cdef Py_ssize_t i
    cdef floating one = 1       # typed, or Cython computes 1 / (1 + e) in double
    if act == SIGMOID:
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
    for r in range(N):
        key = row_key(seed, first + r, stream)
        for j in range(O):
            mask[r * O + j] = scale if uniform(key, j) < keep else 0
            out[r * O + j] = A[r * O + j] * mask[r * O + j]


cdef void activation_grad_impl(int act, floating slope, const floating* A,
                               floating* D, Py_ssize_t n) noexcept nogil:
    """D := D * act'(z), with act' written in terms of the stored a = act(z).

    sigmoid' = a (1 - a), tanh' = 1 - a^2, relu' = [a > 0],
    leaky_relu' = 1 if a > 0 else slope (slope >= 0 keeps the sign of z).
    Softmax is an output-only activation; its Jacobian is applied in
    output_delta_impl.
    """
    cdef Py_ssize_t i
    if act == SIGMOID:
        for i in range(n):
            D[i] = D[i] * (A[i] * (1 - A[i]))
    elif act == TANH:
        for i in range(n):
            D[i] = D[i] * (1 - A[i] * A[i])
    elif act == RELU:
        for i in range(n):
            D[i] = D[i] if A[i] > 0 else 0
    elif act == LEAKY_RELU:
        for i in range(n):
            D[i] = D[i] if A[i] > 0 else slope * D[i]


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
                            Py_ssize_t I, Py_ssize_t O) noexcept nogil:
    """out := (D_next @ W_next^T) * act'(z) [* mask].  delta^l = (delta^{l+1} W^{l+1 T}) . act'(z^l)

    D_next (N, O), W_next (I, O), A, mask and out (N, I); mask is the
    dropout mask of A (NULL: none).
    """
    cdef Py_ssize_t i
    # column-major out^T (I, N) = W_next (I, O) @ D_next^T (O, N)
    gemm(c'T', c'N', <int> I, <int> N, <int> O, 1, W_next, <int> O, D_next,
         <int> O, 0, out, <int> I)
    activation_grad_impl(act, slope, A, out, N * I)
    if mask != NULL:
        for i in range(N * I):
            out[i] = out[i] * mask[i]


cdef void param_update_impl(const floating* A, const floating* D,
                            floating alpha, floating beta_w, floating beta_b,
                            floating* W, floating* b, floating* colsum,
                            Py_ssize_t N, Py_ssize_t I,
                            Py_ssize_t O) noexcept nogil:
    """W := beta_w W + alpha A^T @ D;  b := beta_b b + alpha sum_rows(D).

    dC/dW = A^{l-1 T} delta^l and dC/db = sum_x delta^l, so with
    alpha = -lr/m and beta_w = 1 - lr*l2/n this is the SGD step with L2
    weight decay, done by the GEMM itself; with alpha = 1/m and betas 0 or
    1 it writes or accumulates the mean gradient.  A (N, I), D (N, O), W (I, O).
    """
    cdef Py_ssize_t r, j
    # column-major W^T (O, I) = alpha D^T (O, N) @ A (N, I) + beta_w W^T
    gemm(c'N', c'T', <int> O, <int> I, <int> N, alpha, D, <int> O, A, <int> I,
         beta_w, W, <int> O)
    for j in range(O):
        colsum[j] = 0
    for r in range(N):
        for j in range(O):
            colsum[j] += D[r * O + j]
    if beta_b == 0:
        # overwrite without reading b, as GEMM does with beta 0: b may hold
        # a NaN from a diverged step, and 0 * NaN is NaN
        for j in range(O):
            b[j] = alpha * colsum[j]
    else:
        for j in range(O):
            b[j] = beta_b * b[j] + alpha * colsum[j]


cdef void forward_impl(const floating* params, Layout* lay,
                       const int32_t* acts, floating slope, const floating* A0,
                       floating* work, floating* A_out, Py_ssize_t N,
                       bint training, uint64_t seed, int64_t first) noexcept nogil:
    """A_{l+1} := act_l(in_l @ W_l + b_l) for l = 0..L-1, from the inputs A0
    (N, I_0) into A_out (N, O_L); the hidden layers live in the workspace.

    in_l is A_l, or in training its dropped-out copy where layer l has
    dropout; first is the epoch's row number of the chunk's first row.
    """
    cdef Py_ssize_t l, L = lay.n_layers
    cdef Py_ssize_t* size = lay.size
    cdef const floating* src
    cdef floating* dst
    for l in range(L):
        if l == 0:
            src = A0
        else:
            src = work + (lay.in_off[l] if training else lay.a_off[l])
        dst = A_out if l == L - 1 else work + lay.a_off[l + 1]
        linear_forward_impl(src, params + lay.w_off[l], params + lay.b_off[l], dst,
                            N, size[l], size[l + 1])
        activate_impl(acts[l], slope, dst, N, size[l + 1])
        if training and lay.mask_off[l + 1] >= 0:
            dropout_impl(dst, work + lay.mask_off[l + 1], work + lay.in_off[l + 1], N,
                         size[l + 1], lay.keep[l + 1], seed, first, l + 1)


cdef void backward_impl(const floating* params, Layout* lay,
                        const int32_t* acts, floating slope, floating* work,
                        Py_ssize_t N, floating alpha, floating beta_w,
                        floating beta_b, floating* target) noexcept nogil:
    """Backpropagate the output delta (in the workspace's delta of A_L) and
    apply target := beta target + alpha grad layer by layer.

    target is params itself for a fused SGD step, or a gradient buffer of
    the same layout. delta^{l-1} is computed from W_l before W_l changes.
    """
    cdef Py_ssize_t l
    cdef Py_ssize_t* size = lay.size
    cdef const floating* mask
    for l in range(lay.n_layers - 1, -1, -1):
        if l > 0:
            mask = work + lay.mask_off[l] if lay.mask_off[l] >= 0 else NULL
            hidden_delta_impl(work + lay.d_off[l + 1], params + lay.w_off[l], acts[l - 1],
                              slope, work + lay.a_off[l], mask, work + lay.d_off[l], N,
                              size[l], size[l + 1])
        param_update_impl(work + lay.in_off[l], work + lay.d_off[l + 1], alpha, beta_w,
                          beta_b, target + lay.w_off[l], target + lay.b_off[l],
                          work + lay.colsum_off[l], N, size[l], size[l + 1])


cdef void penalty_grad_impl(const floating* params, floating* grad, Layout* lay,
                            floating l2, floating l1) noexcept nogil:
    """grad_W += l2 W + l1 sign(W) for every layer's weights (not biases):
    the gradient of (lambda2/2n) sum w^2 + (lambda1/n) sum |w|."""
    cdef Py_ssize_t l, i
    for l in range(lay.n_layers):
        if l1 == 0:
            for i in range(lay.w_off[l], lay.b_off[l]):
                grad[i] = grad[i] + l2 * params[i]
        else:
            for i in range(lay.w_off[l], lay.b_off[l]):
                grad[i] = grad[i] + l2 * params[i] + l1 * _sign(params[i])


cdef void optimizer_step_impl(int opt, floating* p, floating* state,
                              Py_ssize_t P, const double* hyper,
                              int64_t t) noexcept nogil:
    """One step of the optimizer on p (P,) from the gradient g = state[0];
    the rules of torch.optim.SGD (dampening 0), Adam and Rprop. state holds
    rows of P entries; t counts steps from 1.

    sgd:       p -= lr g
    momentum:  v = mu v + g;  p -= lr v
    nesterov:  v = mu v + g;  p -= lr (g + mu v)
    adam:      m = m + (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2;
               p -= lr/(1 - b1^t) m / (sqrt(v)/sqrt(1 - b2^t) + eps)
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
    if opt == SGD:
        for i in range(P):
            p[i] = p[i] - lr * g[i]
    elif opt == MOMENTUM:
        for i in range(P):
            s1[i] = mu * s1[i] + g[i]
            p[i] = p[i] - lr * s1[i]
    elif opt == NESTEROV:
        for i in range(P):
            s1[i] = mu * s1[i] + g[i]
            p[i] = p[i] - lr * (g[i] + mu * s1[i])
    elif opt == ADAM:
        step_size = <floating> (hyper[H_LR] / (1 - pow(hyper[H_BETA1], <double> t)))
        bc2_sqrt = <floating> sqrt(1 - pow(hyper[H_BETA2], <double> t))
        for i in range(P):
            s1[i] = s1[i] + (1 - b1) * (g[i] - s1[i])
            s2[i] = b2 * s2[i] + (1 - b2) * g[i] * g[i]
            denom = _sqrt(s2[i]) / bc2_sqrt + eps
            p[i] = p[i] - step_size * (s1[i] / denom)
    elif opt == RPROP:
        # s1: previous gradient (0 after a sign flip), s2: step sizes
        for i in range(P):
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


cdef int train_epoch_impl(const input_t* X, const floating* Y,
                          const floating* sample_weight, const int64_t* order,
                          Py_ssize_t n, floating* params, floating* state,
                          Layout* lay, const int32_t* acts, floating slope,
                          int loss, Py_ssize_t batch_size, int opt,
                          const double* hyper, int augment, Py_ssize_t side,
                          uint64_t seed, floating* work, int64_t* control,
                          double* loss_sum, int64_t* n_correct) noexcept nogil:
    """One epoch of mini-batch training over the rows X[order].

    For each batch of m rows, chunk by chunk: gather (and augment) the rows,
    forward (with dropout), output delta (with sample weights), backward
    into the gradient; then add the penalty gradient and take one optimizer
    step. Plain SGD on a one-chunk batch without L1 fuses the step into the
    backward GEMMs instead. Stops before a batch when the caller sets
    control[STOP_REQUEST], and returns DIVERGED, without applying that
    batch, as soon as a chunk's loss is not finite.
    """
    cdef Py_ssize_t k, c, start, m, first, cm, r, L = lay.n_layers
    cdef Py_ssize_t cap = lay.capacity, n_in = lay.size[0], n_out = lay.size[L]
    cdef floating* A0 = work + lay.a_off[0]
    cdef floating* A_out = work + lay.a_off[L]
    cdef floating* Yb = work + lay.y_off
    cdef floating* swb = work + lay.sw_off if sample_weight != NULL else NULL
    cdef double chunk_loss
    cdef floating lr = <floating> hyper[H_LR]
    cdef bint fused = opt == SGD and hyper[H_L1] == 0 and batch_size <= cap
    for k in range((n + batch_size - 1) // batch_size):
        if control[STOP_REQUEST] != 0:
            return STOPPED
        start = k * batch_size
        m = batch_size if start + batch_size <= n else n - start
        for c in range((m + cap - 1) // cap):
            first = start + c * cap
            cm = cap if first + cap <= start + m else start + m - first
            if augment == SHIFT:
                gather_shifted(X, side, order + first, cm, A0, seed, first)
            else:
                gather_rows(X, n_in, order + first, cm, A0)
            gather_rows(Y, n_out, order + first, cm, Yb)
            if swb != NULL:
                for r in range(cm):
                    swb[r] = sample_weight[order[first + r]]
            # the next chunk's rows start loading while this one computes
            if first + cm < n:
                prefetch_rows(X, n_in, order + first + cm, min(cap, n - first - cm))
            forward_impl(params, lay, acts, slope, A0, work, A_out, cm, True, seed, first)
            chunk_loss = output_delta_impl(loss, acts[L - 1], slope, A_out, Yb, swb,
                                           work + lay.d_off[L], cm, n_out)
            if not isfinite(chunk_loss):
                return DIVERGED
            loss_sum[0] += chunk_loss
            n_correct[0] += count_correct(A_out, Yb, cm, n_out)
            if fused:
                backward_impl(params, lay, acts, slope, work, cm, -lr / m,
                              <floating> (1 - hyper[H_LR] * hyper[H_L2]), 1, params)
            else:
                backward_impl(params, lay, acts, slope, work, cm, (<floating> 1) / m,
                              0 if c == 0 else 1, 0 if c == 0 else 1, state)
        control[STEPS] += 1
        if not fused:
            if hyper[H_L2] != 0 or hyper[H_L1] != 0:
                penalty_grad_impl(params, state, lay, <floating> hyper[H_L2],
                                  <floating> hyper[H_L1])
            optimizer_step_impl(opt, params, state, lay.n_params, hyper, control[STEPS])
        control[ROWS_DONE] += m
    return DONE


cdef void predict_impl(const input_t* X, Py_ssize_t n, const floating* params,
                       Layout* lay, const int32_t* acts, floating slope,
                       floating* work, Py_ssize_t work_size, const int64_t* rows,
                       floating* out, Team* team) noexcept nogil:
    """out := network(X), chunk by chunk of lay.capacity rows, no dropout.

    The threads of a team take whole chunks in turn, each in its own
    workspace of work_size entries (chunks are independent: no barriers).
    Rows of X already in the network's dtype are read in place; others are
    converted into the workspace. Outputs go straight into out.
    """
    cdef Py_ssize_t j, start, m, I = lay.size[0], n_out = lay.size[lay.n_layers]
    cdef Py_ssize_t n_chunks = (n + lay.capacity - 1) // lay.capacity
    cdef floating* mine = work + team.id * work_size
    cdef const floating* A0
    for j in range((n_chunks - team.id + team.size - 1) // team.size):
        start = (team.id + j * team.size) * lay.capacity
        m = lay.capacity if start + lay.capacity <= n else n - start
        if (input_t is float and floating is float) or (input_t is double and floating is double):
            A0 = <const floating*> (X + start * I)
        else:
            gather_rows(X, I, rows + start, m, mine + lay.a_off[0])
            A0 = mine + lay.a_off[0]
        forward_impl(params, lay, acts, slope, A0, mine, out + start * n_out, m, False, 0, 0)


cdef void predict_team(const input_t* X, Py_ssize_t n, const floating* params,
                       Layout* lay, const int32_t* acts, floating slope,
                       floating* work, Py_ssize_t work_size, const int64_t* rows,
                       floating* out) noexcept nogil:
    """predict_impl as this thread's part of the current OpenMP team."""
    cdef Team team
    team.id = thread_id()
    team.size = team_size()
    predict_impl(X, n, params, lay, acts, slope, work, work_size, rows, out, &team)


# --------------------------------------------------------------------------
# Checked Python entry points.
# --------------------------------------------------------------------------

cdef _check(bint ok, str message):
    if not ok:
        raise ValueError(message)


cdef _check_dims(Py_ssize_t[::1] sizes):
    cdef Py_ssize_t l
    _check(sizes.shape[0] >= 2, "sizes needs at least an input and an output layer")
    _check(sizes.shape[0] <= MAX_STREAMS, f"at most {MAX_STREAMS - 1} layers")
    for l in range(sizes.shape[0]):
        _check(0 < sizes[l] <= INT_MAX, f"layer size {sizes[l]} is outside [1, {INT_MAX}]")


cdef _check_activations(const int32_t[::1] acts, Py_ssize_t n_layers, double slope):
    _check(acts.shape[0] == n_layers,
           f"{acts.shape[0]} activation codes for {n_layers} layers")
    for l in range(n_layers):
        _check(0 <= acts[l] < N_ACTIVATIONS, f"unknown activation code {acts[l]}")
        _check(acts[l] != SOFTMAX or l == n_layers - 1,
               "softmax is only allowed on the output layer")
    # leaky_relu' is read off the sign of the stored activation
    _check(slope >= 0, "slope must be >= 0")


cdef _check_loss(int loss, int output):
    _check(0 <= loss < N_LOSSES, f"unknown loss code {loss}")
    _check(loss != CROSS_ENTROPY or output in (SIGMOID, SOFTMAX),
           "cross_entropy needs a sigmoid or softmax output layer")


cdef _check_problem(Py_ssize_t[::1] sizes, const int32_t[::1] acts, double slope,
                    int loss, Py_ssize_t x_rows, Py_ssize_t x_cols, Py_ssize_t y_rows,
                    Py_ssize_t y_cols):
    """The codes fit the layers and X (x_rows, x_cols), Y (y_rows, y_cols) fit the sizes."""
    cdef Py_ssize_t L = sizes.shape[0] - 1
    _check_activations(acts, L, slope)
    _check_loss(loss, acts[L - 1])
    _check(x_cols == sizes[0], f"X has {x_cols} columns; the network takes {sizes[0]}")
    _check(y_rows == x_rows and y_cols == sizes[L],
           f"Y has shape ({y_rows}, {y_cols}); expected ({x_rows}, {sizes[L]})")


cdef _check_dropout(const double[::1] dropout, Py_ssize_t n_layers):
    cdef Py_ssize_t l
    _check(dropout.shape[0] == 0 or dropout.shape[0] == n_layers - 1,
           f"{dropout.shape[0]} dropout rates for {n_layers - 1} hidden layers")
    for l in range(dropout.shape[0]):
        _check(0 <= dropout[l] < 1, f"dropout rate {dropout[l]} is outside [0, 1)")


cdef Layout _new_layout(Py_ssize_t[::1] sizes, Py_ssize_t capacity,
                        const double[::1] dropout) except *:
    cdef Layout lay
    _check_dims(sizes)
    _check_dropout(dropout, sizes.shape[0] - 1)
    _check(capacity >= 1, "the batch must hold at least one row")
    _check(capacity <= INT_MAX, "batch too large")
    if layout_init(&lay, &sizes[0], sizes.shape[0] - 1, capacity,
                   &dropout[0] if dropout.shape[0] > 0 else NULL) != 0:
        raise MemoryError()
    return lay


cdef Layout _layout(Py_ssize_t[::1] sizes, Py_ssize_t capacity,
                    const double[::1] dropout, Py_ssize_t n_params,
                    Py_ssize_t work_size) except *:
    cdef Layout lay = _new_layout(sizes, capacity, dropout)
    if n_params != lay.n_params:
        layout_free(&lay)
        raise ValueError(f"params has {n_params} entries; these sizes need {lay.n_params}")
    if work_size < lay.work_size:
        layout_free(&lay)
        raise ValueError(f"workspace has {work_size} entries; {lay.work_size} needed")
    return lay


cdef _check_rows(const int64_t[::1] rows, Py_ssize_t n):
    cdef Py_ssize_t i
    for i in range(rows.shape[0]):
        if rows[i] < 0 or rows[i] >= n:
            raise ValueError(f"row index {rows[i]} is outside [0, {n})")


def workspace_size(Py_ssize_t[::1] sizes, Py_ssize_t capacity, dropout=()):
    """Entries the workspace of a chunk of `capacity` rows needs, with these
    dropout rates on the hidden layers (empty: none)."""
    cdef Layout lay = _new_layout(sizes, capacity, _rates(dropout))
    n = lay.work_size
    layout_free(&lay)
    return n


cdef double[::1] _rates(dropout):
    import numpy as np
    return np.ascontiguousarray(dropout, dtype=np.float64).reshape(-1)


def train_epoch(const input_t[:, ::1] X, const floating[:, ::1] Y,
                const int64_t[::1] order, floating[::1] params,
                floating[:, ::1] state, Py_ssize_t[::1] sizes,
                const int32_t[::1] activations, double slope, int loss,
                Py_ssize_t batch_size, Py_ssize_t capacity, int optimizer,
                const double[::1] hyper, const double[::1] dropout,
                const floating[::1] sample_weight, int augment,
                uint64_t seed, floating[::1] work, int64_t[::1] control):
    """One epoch of mini-batch training over the rows X[order], in place on
    params and state.

    Parameters
    ----------
    X : (n, I) uint8, float32 or float64
        Inputs; uint8 is divided by 255 as rows are gathered.
    Y : (n, O) float, the dtype of params
        Targets.
    order : (k,) int64
        The rows to visit, in order; batches are consecutive slices of it.
    params : (P,) float32 or float64
        Flat parameters, updated in place.
    state : (STATE_ROWS[optimizer], P) float
        state[0] receives gradients; the other rows are the optimizer's.
    sizes : (L + 1,) intp
    activations : (L,) int32
    slope : float
        Negative-side slope of leaky_relu.
    loss : int
    batch_size : int
        m; each step averages the gradient over m rows.
    capacity : int
        Rows per chunk, the workspace's size.
    optimizer : int
    hyper : (N_HYPER,) float64
        Learning rate, lambda2/n, lambda1/n and the optimizer's constants.
    dropout : (L - 1,) or (0,) float64
        Dropout rate of each hidden layer (empty: none).
    sample_weight : (n,) or (0,) float
        Weight of each row's loss and gradient (empty: all 1).
    augment : int
        NO_AUGMENT, or SHIFT for square images.
    seed : uint64
        This epoch's seed for dropout masks and shifts.
    work : (workspace_size(sizes, capacity, dropout),) float
    control : (N_CONTROL,) int64
        Stop request, rows done, optimizer steps taken.

    Returns
    -------
    (status, loss_sum, n_correct) : (int, float, int)
        status is DONE, DIVERGED or STOPPED; loss_sum is the weighted sum of
        the rows' costs; the rows trained are in control[ROWS_DONE].
    """
    cdef Py_ssize_t n = X.shape[0], side = 0
    cdef Layout lay = _layout(sizes, capacity, dropout, params.shape[0], work.shape[0])
    cdef double loss_sum = 0
    cdef int64_t n_correct = 0
    cdef int status
    cdef const floating* sw = NULL
    try:
        _check_problem(sizes, activations, slope, loss, X.shape[0], X.shape[1],
                       Y.shape[0], Y.shape[1])
        _check(control.shape[0] >= N_CONTROL, f"control needs {N_CONTROL} entries")
        _check(batch_size >= 1, "batch_size must be >= 1")
        _check(0 <= optimizer < N_OPTIMIZERS, f"unknown optimizer code {optimizer}")
        _check(state.shape[0] >= STATE_ROWS[optimizer] and state.shape[1] == params.shape[0],
               f"state needs shape ({STATE_ROWS[optimizer]}, {params.shape[0]})")
        _check(hyper.shape[0] == N_HYPER, f"hyper needs {N_HYPER} entries")
        _check(sample_weight.shape[0] in (0, n), f"sample_weight needs 0 or {n} entries")
        _check(augment in (NO_AUGMENT, SHIFT), f"unknown augmentation {augment}")
        if augment == SHIFT:
            side = <Py_ssize_t> (sizes[0] ** 0.5 + 0.5)
            _check(side * side == sizes[0], f"shift needs square images; {sizes[0]} inputs")
        _check_rows(order, n)
        if sample_weight.shape[0] > 0:
            sw = &sample_weight[0]
        if order.shape[0] == 0:
            return DONE, 0.0, 0
        with nogil:
            status = train_epoch_impl(&X[0, 0], &Y[0, 0], sw, &order[0],
                                      order.shape[0], &params[0], &state[0, 0],
                                      &lay, &activations[0], <floating> slope,
                                      loss, batch_size, optimizer, &hyper[0],
                                      augment, side, seed, &work[0], &control[0],
                                      &loss_sum, &n_correct)
    finally:
        layout_free(&lay)
    return status, loss_sum, n_correct


def predict(const input_t[:, ::1] X, const floating[::1] params,
            Py_ssize_t[::1] sizes, const int32_t[::1] activations,
            double slope, floating[::1] work, Py_ssize_t chunk,
            floating[:, ::1] out, int n_threads=1):
    """out := the network's output activations for every row of X.

    Works through X `chunk` rows at a time; `work` holds n_threads
    workspaces of workspace_size(sizes, chunk) entries, one per thread. With
    n_threads > 1 the threads take whole chunks in turn, and the BLAS must
    run single-threaded (the caller limits it).
    """
    cdef Py_ssize_t n = X.shape[0], L = sizes.shape[0] - 1, per_thread
    cdef Layout lay
    cdef int64_t[::1] rows
    _check(1 <= n_threads <= 1024, f"n_threads must be in [1, 1024], not {n_threads}")
    per_thread = work.shape[0] // n_threads
    lay = _layout(sizes, chunk, _rates(()), params.shape[0], per_thread)
    try:
        _check_activations(activations, L, slope)
        _check(X.shape[1] == sizes[0], f"X has {X.shape[1]} columns; the network takes {sizes[0]}")
        _check(out.shape[0] == n and out.shape[1] == sizes[L],
               f"out has shape ({out.shape[0]}, {out.shape[1]}); expected ({n}, {sizes[L]})")
        if n == 0:
            return
        rows = _arange(n)
        if n_threads == 1:
            with nogil:
                predict_impl(&X[0, 0], n, &params[0], &lay, &activations[0], <floating> slope,
                             &work[0], per_thread, &rows[0], &out[0, 0], &SOLO)
        else:
            with nogil, parallel(num_threads=n_threads):
                predict_team(&X[0, 0], n, &params[0], &lay, &activations[0], <floating> slope,
                             &work[0], per_thread, &rows[0], &out[0, 0])
    finally:
        layout_free(&lay)


cdef int64_t[::1] _arange(Py_ssize_t n):
    import numpy as np
    return np.arange(n, dtype=np.int64)


def gradient(const input_t[:, ::1] X, const floating[:, ::1] Y,
             const floating[::1] params, Py_ssize_t[::1] sizes,
             const int32_t[::1] activations, double slope, int loss,
             floating[::1] work, floating[::1] grad):
    """grad := dC/dparams, C the mean loss over the rows of X; returns sum_x C_x.

    The same forward and backward code as train_epoch, with the update
    written to grad (alpha = 1/n, betas 0) instead of fused into params.
    work holds workspace_size(sizes, len(X)) entries.
    """
    cdef Py_ssize_t n = X.shape[0], L = sizes.shape[0] - 1
    cdef Layout lay = _layout(sizes, n, _rates(()), params.shape[0], work.shape[0])
    cdef int64_t[::1] rows
    cdef double total
    try:
        _check_problem(sizes, activations, slope, loss, X.shape[0], X.shape[1],
                       Y.shape[0], Y.shape[1])
        _check(grad.shape[0] == params.shape[0], "grad must have the shape of params")
        rows = _arange(n)
        with nogil:
            gather_rows(&X[0, 0], sizes[0], &rows[0], n, &work[lay.a_off[0]])
            gather_rows(&Y[0, 0], sizes[L], &rows[0], n, &work[lay.y_off])
            forward_impl(&params[0], &lay, &activations[0], <floating> slope,
                         &work[lay.a_off[0]], &work[0], &work[lay.a_off[L]], n, False, 0, 0)
            total = output_delta_impl(loss, activations[L - 1], <floating> slope,
                                      &work[lay.a_off[L]], &work[lay.y_off], NULL,
                                      &work[lay.d_off[L]], n, sizes[L])
            backward_impl(&params[0], &lay, &activations[0], <floating> slope,
                          &work[0], n, <floating> 1 / n, 0, 0, &grad[0])
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
        linear_forward_impl(&A[0, 0], &W[0, 0], &b[0], &out[0, 0], N, I, O)


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
                          &A[0, 0], NULL, &out[0, 0], N, I, O)


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
        optimizer_step_impl(optimizer, &params[0], &state[0, 0], params.shape[0],
                            &hyper[0], t)


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
