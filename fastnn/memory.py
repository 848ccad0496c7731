"""What a network needs in memory, checked before anything is allocated.

``Network(...)`` and ``fit`` estimate the bytes they are about to allocate
(parameters; for training also the optimizer state, the snapshots taken at
each epoch start and the kernel's workspace, a convolutional net's im2col
buffers included) and refuse with a
``ResourceError`` when that exceeds the memory this process can still get:
the least of the memory the system has available, the cgroup's limit, and
the address-space and data limits (``ulimit -v``, ``ulimit -d``). Without
these checks an absurd size (``--hidden 10000000``) ends in a MemoryError
traceback, or in the system's out-of-memory killer.
"""
import resource

from fastnn.exceptions import ResourceError


def network_bytes(plan, itemsize):
    """Bytes of the flat parameter vector of a network with this plan."""
    return plan.n_params * itemsize


def new_network_bytes(plan, itemsize):
    """Bytes Network(...) needs at its peak: the parameters, and their
    initial values drawn in float64 (with one temporary of the same size)."""
    return network_bytes(plan, itemsize) + 2 * network_bytes(plan, 8)


def training_bytes(plan, itemsize, state_rows, work_entries, chunk_rows, n_train):
    """Bytes fit allocates beyond the parameters: the optimizer state
    (state_rows rows as long as the parameters), the epoch-start copies of
    parameters and state, the kernel's workspace (work_entries, what the
    compiled kernels' workspace_size says: activations, deltas, dropout
    masks, im2col buffers and the team's gradients) or, where that is 0
    (the NumPy reference, which allocates as it goes), a generous bound of
    chunk_rows rows of every layer's activations and im2col windows; and
    the order of the n_train rows."""
    params = network_bytes(plan, itemsize)
    bound = 4 * chunk_rows * (sum(plan.widths()) + plan.window_entries())
    workspace = max(work_entries, bound) * itemsize
    return params * (1 + 2 * state_rows) + workspace + 8 * n_train


def describe(plan):
    """A network in a few words, for messages: 'a network of sizes [784, 30,
    10]' or 'a network of input shape (28, 28, 1) and 7 layers'."""
    if plan.plain_dense:
        return f"a network of sizes {list(plan.sizes)}"
    return f"a network of input shape {plan.input_shape} and {len(plan.layers)} layers"


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _proc_fields(path, names):
    """{name: bytes} of 'Name: N kB' lines of a /proc file."""
    found = {}
    try:
        with open(path) as f:
            text = "\n" + f.read()
        for name in names:      # (a search, not a loop over its 50-odd lines)
            at = text.find(f"\n{name}:")
            if at >= 0:
                end = text.find("\n", at + 1)
                line = text[at + len(name) + 2:end if end >= 0 else None]
                found[name] = int(line.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found


def available_bytes():
    """The memory this process can still allocate, as far as it can tell
    (None when it cannot tell, e.g. off Linux)."""
    limits = []
    meminfo = _proc_fields("/proc/meminfo", ("MemAvailable",))
    if "MemAvailable" in meminfo:
        limits.append(meminfo["MemAvailable"])
    cgroup_max = _read_int("/sys/fs/cgroup/memory.max")
    cgroup_now = _read_int("/sys/fs/cgroup/memory.current")
    if cgroup_max is None:  # cgroup v1
        cgroup_max = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        cgroup_now = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if cgroup_max is not None and cgroup_now is not None and cgroup_max < 1 << 60:
        limits.append(max(cgroup_max - cgroup_now, 0))
    # the process's own size only under a limit (a read of /proc/self/status
    # otherwise spent for nothing, once per network made and per fit)
    rlimits = [(used, soft) for limit, used in ((resource.RLIMIT_AS, "VmSize"),
                                                (resource.RLIMIT_DATA, "VmData"))
               for soft in [resource.getrlimit(limit)[0]] if soft != resource.RLIM_INFINITY]
    status = _proc_fields("/proc/self/status", ("VmSize", "VmData")) if rlimits else {}
    for used, soft in rlimits:
        if used in status:
            limits.append(max(soft - status[used], 0))
    return min(limits) if limits else None


def size_text(n):
    """Bytes for people: '29.6 GiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def check_fits(need, what, hint):
    """Raise ResourceError if `need` bytes exceed what is available.

    The message reads: '{what} needs 29.6 GiB, but only 3.1 GiB of memory is
    available; {hint}'.
    """
    available = available_bytes()
    if available is not None and need > available:
        raise ResourceError(f"{what} needs {size_text(need)}, but only {size_text(available)} "
                            f"of memory is available; {hint}")

