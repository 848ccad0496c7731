"""fastnn._core: the compiled kernels of a fully-connected network.

Legend: N = rows (samples) in a batch, I = fan-in, O = fan-out, L = layers,
P = parameters. Every array is C-contiguous and row-major; samples are rows.

Flat parameter vector (the same layout as ``fastnn._layout``): for
l = 0 .. L-1, layer l's weights W_l (I_l, O_l) row-major, then its bias
b_l (O_l,).

Workspace for a batch of up to N rows (``fastnn._layout.workspace_size``):
the activations A_0 .. A_L (N rows each, A_0 is the input), two delta
buffers of N x max(O), the batch targets (N, O_L) and a column-sum buffer
of max(O).

Each kernel comes in two layers: a ``cdef ... noexcept nogil`` function that
trusts its arguments, and a ``def`` wrapper that checks shapes, codes and
indices and raises *before* releasing the GIL. Row-major arrays go to
column-major BLAS by swapping the operands: row-major C = A @ B is
column-major C^T = B^T @ A^T.
"""
from cython cimport floating
from libc.float cimport DBL_MIN, FLT_MIN
from libc.math cimport exp, expf, isfinite, log, logf, tanh, tanhf
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc
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

# What train_epoch returns as its status.
cpdef enum:
    DONE = 0
    DIVERGED = 1
    STOPPED = 2

# The control array shared with the caller while an epoch runs:
# control[STOP_REQUEST] != 0 asks the loop to stop before its next batch,
# control[ROWS_DONE] counts the rows trained so far (for progress displays).
cpdef enum:
    STOP_REQUEST = 0
    ROWS_DONE = 1

ctypedef fused input_t:
    uint8_t
    float
    double

cdef enum:
    N_ACTIVATIONS = 6
    N_LOSSES = 2

# BLAS takes 32-bit dimensions.
cdef Py_ssize_t INT_MAX = 2147483647


# --------------------------------------------------------------------------
# Layout: where each layer's parameters and activations live.
# --------------------------------------------------------------------------

cdef struct Layout:
    Py_ssize_t n_layers          # L
    Py_ssize_t max_out           # max(O_l)
    Py_ssize_t capacity          # N: rows the workspace holds
    Py_ssize_t* size             # size[l], l = 0..L (points into the caller's array)
    Py_ssize_t* w_off            # offset of W_l in params
    Py_ssize_t* b_off            # offset of b_l in params
    Py_ssize_t* a_off            # offset of A_l in the workspace, l = 0..L
    Py_ssize_t d0_off            # the two delta buffers
    Py_ssize_t d1_off
    Py_ssize_t y_off             # batch targets
    Py_ssize_t colsum_off        # bias-gradient buffer
    Py_ssize_t work_size         # floats the workspace needs


cdef int layout_init(Layout* lay, Py_ssize_t* sizes, Py_ssize_t n_layers,
                     Py_ssize_t capacity) noexcept nogil:
    """Fill lay from sizes; returns -1 if malloc failed."""
    cdef Py_ssize_t l, p = 0, a = 0
    lay.n_layers = n_layers
    lay.capacity = capacity
    lay.size = sizes
    lay.w_off = <Py_ssize_t*> malloc(3 * (n_layers + 1) * sizeof(Py_ssize_t))
    if lay.w_off == NULL:
        return -1
    lay.b_off = lay.w_off + (n_layers + 1)
    lay.a_off = lay.b_off + (n_layers + 1)
    lay.max_out = 0
    for l in range(n_layers):
        lay.w_off[l] = p
        p += sizes[l] * sizes[l + 1]
        lay.b_off[l] = p
        p += sizes[l + 1]
        if sizes[l + 1] > lay.max_out:
            lay.max_out = sizes[l + 1]
    for l in range(n_layers + 1):
        lay.a_off[l] = a
        a += capacity * sizes[l]
    lay.d0_off = a
    lay.d1_off = a + capacity * lay.max_out
    lay.y_off = lay.d1_off + capacity * lay.max_out
    lay.colsum_off = lay.y_off + capacity * sizes[n_layers]
    lay.work_size = lay.colsum_off + lay.max_out
    return 0


cdef void layout_free(Layout* lay) noexcept nogil:
    free(lay.w_off)
    lay.w_off = NULL


# --------------------------------------------------------------------------
# Scalar helpers: one source for float and double.
# --------------------------------------------------------------------------

cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline double _safe_log(floating x) noexcept nogil:
    # log clipped at the smallest normal number, so a saturated unit costs a
    # large finite loss instead of inf/nan (its delta a - y is unaffected).
    if floating is float:
        return logf(x if x > FLT_MIN else FLT_MIN)
    else:
        return log(x if x > DBL_MIN else DBL_MIN)


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


cdef void activate_impl(int act, floating slope, floating* A, Py_ssize_t N,
                        Py_ssize_t O) noexcept nogil:
    """A := act(A), in place, row by row. A (N, O)."""
    cdef Py_ssize_t i, r, j, n = N * O
    cdef floating mx, s
    cdef floating* row
    if act == SIGMOID:
        for i in range(n):
            A[i] = 1 / (1 + _exp(-A[i]))
    elif act == TANH:
        for i in range(n):
            A[i] = _tanh(A[i])
    elif act == RELU:
        for i in range(n):
            A[i] = A[i] if A[i] > 0 else 0
    elif act == LEAKY_RELU:
        for i in range(n):
            A[i] = A[i] if A[i] > 0 else slope * A[i]
    elif act == SOFTMAX:
        # softmax(z)_j = exp(z_j - max z) / sum_k exp(z_k - max z)
        for r in range(N):
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
    # IDENTITY: nothing to do


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
                              floating* D, Py_ssize_t N,
                              Py_ssize_t O) noexcept nogil:
    """D := dC_x/dz^L for each row x; returns sum_x C_x.

    mse:            C_x = 1/2 ||a - y||^2,   delta = (a - y) * act'(z)
    cross_entropy:  delta = a - y, exactly, for the two pairings allowed:
      sigmoid output, C_x = -sum_j y_j log a_j + (1 - y_j) log(1 - a_j)
      softmax output, C_x = -sum_j y_j log a_j
    For mse on a softmax output the softmax Jacobian gives
      delta_j = a_j ((a - y)_j - sum_k (a - y)_k a_k).
    """
    cdef Py_ssize_t i, r, j, n = N * O
    cdef double total = 0
    cdef floating diff, dot
    cdef const floating* a
    cdef floating* d
    if loss == MSE:
        for i in range(n):
            diff = A[i] - Y[i]
            total += 0.5 * (<double> diff) * diff
            D[i] = diff
        if act == SOFTMAX:
            for r in range(N):
                a = A + r * O
                d = D + r * O
                dot = 0
                for j in range(O):
                    dot += d[j] * a[j]
                for j in range(O):
                    d[j] = a[j] * (d[j] - dot)
        else:
            activation_grad_impl(act, slope, A, D, n)
    elif loss == CROSS_ENTROPY:
        if act == SIGMOID:
            for i in range(n):
                total -= Y[i] * _safe_log(A[i]) + (1 - Y[i]) * _safe_log(1 - A[i])
                D[i] = A[i] - Y[i]
        else:
            for i in range(n):
                if Y[i] != 0:
                    total -= Y[i] * _safe_log(A[i])
                D[i] = A[i] - Y[i]
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
                            floating* out, Py_ssize_t N, Py_ssize_t I,
                            Py_ssize_t O) noexcept nogil:
    """out := (D_next @ W_next^T) * act'(z).  delta^l = (delta^{l+1} W^{l+1 T}) . act'(z^l)

    D_next (N, O), W_next (I, O), A and out (N, I).
    """
    # column-major out^T (I, N) = W_next (I, O) @ D_next^T (O, N)
    gemm(c'T', c'N', <int> I, <int> N, <int> O, 1, W_next, <int> O, D_next,
         <int> O, 0, out, <int> I)
    activation_grad_impl(act, slope, A, out, N * I)


cdef void param_update_impl(const floating* A, const floating* D,
                            floating alpha, floating beta_w, floating beta_b,
                            floating* W, floating* b, floating* colsum,
                            Py_ssize_t N, Py_ssize_t I,
                            Py_ssize_t O) noexcept nogil:
    """W := beta_w W + alpha A^T @ D;  b := beta_b b + alpha sum_rows(D).

    dC/dW = A^{l-1 T} delta^l and dC/db = sum_x delta^l, so with
    alpha = -lr/N and beta_w = 1 - lr*l2/n this is the SGD step with L2
    weight decay, done by the GEMM itself; with alpha = 1/N and betas 0 it
    writes the mean gradient into (W, b).  A (N, I), D (N, O), W (I, O).
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
    for j in range(O):
        b[j] = beta_b * b[j] + alpha * colsum[j]


cdef void forward_impl(const floating* params, Layout* lay,
                       const int32_t* acts, floating slope, floating* work,
                       Py_ssize_t N) noexcept nogil:
    """A_{l+1} := act_l(A_l @ W_l + b_l) for l = 0..L-1; A_0 already filled."""
    cdef Py_ssize_t l
    cdef Py_ssize_t* size = lay.size
    for l in range(lay.n_layers):
        linear_forward_impl(work + lay.a_off[l], params + lay.w_off[l],
                            params + lay.b_off[l], work + lay.a_off[l + 1],
                            N, size[l], size[l + 1])
        activate_impl(acts[l], slope, work + lay.a_off[l + 1], N, size[l + 1])


cdef void backward_impl(const floating* params, Layout* lay,
                        const int32_t* acts, floating slope, floating* work,
                        Py_ssize_t N, floating alpha, floating beta_w,
                        floating beta_b, floating* target) noexcept nogil:
    """Backpropagate the output delta (in the workspace's first delta buffer)
    and apply target := beta target + alpha grad layer by layer.

    target is params itself for a fused SGD step, or a gradient buffer of
    the same layout. delta^{l-1} is computed from W_l before W_l changes.
    """
    cdef Py_ssize_t l
    cdef Py_ssize_t* size = lay.size
    cdef floating* D = work + lay.d0_off
    cdef floating* D_prev = work + lay.d1_off
    cdef floating* swap
    for l in range(lay.n_layers - 1, -1, -1):
        if l > 0:
            hidden_delta_impl(D, params + lay.w_off[l], acts[l - 1], slope,
                              work + lay.a_off[l], D_prev, N, size[l],
                              size[l + 1])
        param_update_impl(work + lay.a_off[l], D, alpha, beta_w, beta_b,
                          target + lay.w_off[l], target + lay.b_off[l],
                          work + lay.colsum_off, N, size[l], size[l + 1])
        swap = D
        D = D_prev
        D_prev = swap


cdef int train_epoch_impl(const input_t* X, const floating* Y,
                          const int64_t* order, Py_ssize_t n,
                          floating* params, Layout* lay, const int32_t* acts,
                          floating slope, int loss, Py_ssize_t batch_size,
                          floating lr, floating decay, floating* work,
                          int64_t* control, double* loss_sum,
                          int64_t* n_correct) noexcept nogil:
    """One epoch of mini-batch SGD over the rows X[order], batch by batch:
    gather, forward, output delta, backward with the update fused in.

    decay = 1 - lr*l2/n_train multiplies W before each step (L2 weight
    decay); biases are not decayed. Stops early, before a batch, when the
    caller sets control[STOP_REQUEST], and returns DIVERGED as soon as a
    batch's loss is not finite (that batch's update is not applied).
    """
    cdef Py_ssize_t k, start, m, L = lay.n_layers
    cdef Py_ssize_t n_in = lay.size[0], n_out = lay.size[L]
    cdef floating* A_out = work + lay.a_off[L]
    cdef floating* Yb = work + lay.y_off
    cdef double batch_loss
    for k in range((n + batch_size - 1) // batch_size):
        start = k * batch_size
        if control[STOP_REQUEST] != 0:
            return STOPPED
        m = batch_size if start + batch_size <= n else n - start
        gather_rows(X, n_in, order + start, m, work + lay.a_off[0])
        gather_rows(Y, n_out, order + start, m, Yb)
        forward_impl(params, lay, acts, slope, work, m)
        batch_loss = output_delta_impl(loss, acts[L - 1], slope, A_out, Yb,
                                       work + lay.d0_off, m, n_out)
        if not isfinite(batch_loss):
            return DIVERGED
        loss_sum[0] += batch_loss
        n_correct[0] += count_correct(A_out, Yb, m, n_out)
        backward_impl(params, lay, acts, slope, work, m, -lr / m, decay, 1,
                      params)
        control[ROWS_DONE] += m
    return DONE


cdef void predict_impl(const input_t* X, Py_ssize_t n, const floating* params,
                       Layout* lay, const int32_t* acts, floating slope,
                       floating* work, const int64_t* rows,
                       floating* out) noexcept nogil:
    """out := network(X), chunk by chunk of lay.capacity rows."""
    cdef Py_ssize_t k, start, m, r, j, L = lay.n_layers, n_out = lay.size[L]
    cdef floating* A_out = work + lay.a_off[L]
    for k in range((n + lay.capacity - 1) // lay.capacity):
        start = k * lay.capacity
        m = lay.capacity if start + lay.capacity <= n else n - start
        gather_rows(X, lay.size[0], rows + start, m, work + lay.a_off[0])
        forward_impl(params, lay, acts, slope, work, m)
        for r in range(m):
            for j in range(n_out):
                out[(start + r) * n_out + j] = A_out[r * n_out + j]


# --------------------------------------------------------------------------
# Checked Python entry points.
# --------------------------------------------------------------------------

cdef _check(bint ok, str message):
    if not ok:
        raise ValueError(message)


cdef _check_dims(Py_ssize_t[::1] sizes):
    cdef Py_ssize_t l
    _check(sizes.shape[0] >= 2, "sizes needs at least an input and an output layer")
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


cdef Layout _layout(Py_ssize_t[::1] sizes, Py_ssize_t capacity, Py_ssize_t n_params,
                    Py_ssize_t work_size) except *:
    cdef Layout lay
    _check_dims(sizes)
    _check(capacity >= 1, "the batch must hold at least one row")
    _check(capacity <= INT_MAX, "batch too large")
    if layout_init(&lay, &sizes[0], sizes.shape[0] - 1, capacity) != 0:
        raise MemoryError()
    if n_params != lay.b_off[lay.n_layers - 1] + sizes[lay.n_layers]:
        layout_free(&lay)
        raise ValueError(f"params has {n_params} entries; these sizes need "
                         f"{lay.b_off[lay.n_layers - 1] + sizes[lay.n_layers]}")
    if work_size < lay.work_size:
        layout_free(&lay)
        raise ValueError(f"workspace has {work_size} entries; {lay.work_size} needed")
    return lay


cdef _check_rows(const int64_t[::1] rows, Py_ssize_t n):
    cdef Py_ssize_t i
    for i in range(rows.shape[0]):
        if rows[i] < 0 or rows[i] >= n:
            raise ValueError(f"row index {rows[i]} is outside [0, {n})")


def workspace_size(Py_ssize_t[::1] sizes, Py_ssize_t capacity):
    """Entries the workspace of a batch of `capacity` rows needs."""
    cdef Layout lay
    _check_dims(sizes)
    if layout_init(&lay, &sizes[0], sizes.shape[0] - 1, capacity) != 0:
        raise MemoryError()
    n = lay.work_size
    layout_free(&lay)
    return n


def train_epoch(const input_t[:, ::1] X, const floating[:, ::1] Y,
                const int64_t[::1] order, floating[::1] params,
                Py_ssize_t[::1] sizes, const int32_t[::1] activations,
                double slope, int loss, Py_ssize_t batch_size, double lr,
                double decay, floating[::1] work, int64_t[::1] control):
    """One epoch of mini-batch SGD over the rows X[order], in place on params.

    Parameters
    ----------
    X : (n, I) uint8, float32 or float64
        Inputs; uint8 is divided by 255 as rows are gathered.
    Y : (n, O) float, the same dtype as params
        Targets.
    order : (k,) int64
        The rows to visit, in order; batches are consecutive slices of it.
    params : (P,) float32 or float64
        Flat parameters, updated in place.
    sizes : (L + 1,) intp
        Layer widths.
    activations : (L,) int32
        Activation code of each layer.
    slope : float
        Negative-side slope of leaky_relu.
    loss : int
        Loss code.
    batch_size : int
    lr : float
        Learning rate eta; each step subtracts (eta / m) sum of gradients.
    decay : float
        Factor applied to every weight before each step (1 - eta*l2/n).
    work : (workspace_size(sizes, batch_size),) float
        Workspace, the dtype of params.
    control : (2,) int64
        control[0] != 0 stops before the next batch; control[1] counts rows.

    Returns
    -------
    (status, loss_sum, n_correct) : (int, float, int)
        status is DONE, DIVERGED or STOPPED; the rows trained are in control[1].
    """
    cdef Py_ssize_t n = X.shape[0], L = sizes.shape[0] - 1
    cdef Layout lay = _layout(sizes, batch_size, params.shape[0], work.shape[0])
    cdef double loss_sum = 0
    cdef int64_t n_correct = 0
    cdef int status
    try:
        _check_problem(sizes, activations, slope, loss, X.shape[0], X.shape[1],
                       Y.shape[0], Y.shape[1])
        _check(control.shape[0] >= 2, "control needs 2 entries")
        _check_rows(order, n)
        if order.shape[0] == 0:
            return DONE, 0.0, 0
        with nogil:
            status = train_epoch_impl(&X[0, 0], &Y[0, 0], &order[0],
                                      order.shape[0], &params[0], &lay,
                                      &activations[0], <floating> slope, loss,
                                      batch_size, <floating> lr,
                                      <floating> decay, &work[0], &control[0],
                                      &loss_sum, &n_correct)
    finally:
        layout_free(&lay)
    return status, loss_sum, n_correct


def predict(const input_t[:, ::1] X, const floating[::1] params,
            Py_ssize_t[::1] sizes, const int32_t[::1] activations,
            double slope, floating[::1] work, Py_ssize_t chunk,
            floating[:, ::1] out):
    """out := the network's output activations for every row of X.

    Works through X `chunk` rows at a time in `work`
    (workspace_size(sizes, chunk) entries).
    """
    cdef Py_ssize_t n = X.shape[0], L = sizes.shape[0] - 1
    cdef Layout lay = _layout(sizes, chunk, params.shape[0], work.shape[0])
    cdef int64_t[::1] rows
    try:
        _check_activations(activations, L, slope)
        _check(X.shape[1] == sizes[0], f"X has {X.shape[1]} columns; the network takes {sizes[0]}")
        _check(out.shape[0] == n and out.shape[1] == sizes[L],
               f"out has shape ({out.shape[0]}, {out.shape[1]}); expected ({n}, {sizes[L]})")
        if n == 0:
            return
        rows = _arange(n)
        with nogil:
            predict_impl(&X[0, 0], n, &params[0], &lay, &activations[0],
                         <floating> slope, &work[0], &rows[0], &out[0, 0])
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
    cdef Layout lay = _layout(sizes, n, params.shape[0], work.shape[0])
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
                         &work[0], n)
            total = output_delta_impl(loss, activations[L - 1], <floating> slope,
                                      &work[lay.a_off[L]], &work[lay.y_off],
                                      &work[lay.d0_off], n, sizes[L])
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
                                  &Y[0, 0], &D[0, 0], A.shape[0], A.shape[1])
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
                          &A[0, 0], &out[0, 0], N, I, O)
