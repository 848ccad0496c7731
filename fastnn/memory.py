"""What a network needs in memory, checked before anything is allocated.

``Network(...)`` and ``fit`` estimate the bytes they are about to allocate
(parameters; for training also the optimizer state, the snapshots taken at
each epoch start and the kernel's workspace) and refuse with a
``ResourceError`` when that exceeds the memory this process can still get:
the least of the memory the system has available, the cgroup's limit, and
the address-space and data limits (``ulimit -v``, ``ulimit -d``). Without
these checks an absurd size (``--hidden 10000000``) ends in a MemoryError
traceback, or in the system's out-of-memory killer.
"""
import resource

from fastnn.exceptions import ResourceError


def network_bytes(sizes, itemsize):
    """Bytes of the flat parameter vector of a network with these layer sizes."""
    return sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:])) * itemsize


def new_network_bytes(sizes, itemsize):
    """Bytes Network(sizes) needs at its peak: the parameters, and their
    initial values drawn in float64 (with one temporary of the same size)."""
    return network_bytes(sizes, itemsize) + 2 * network_bytes(sizes, 8)


def training_bytes(sizes, itemsize, state_rows, batch_rows, n_train):
    """Bytes fit allocates beyond the parameters: the optimizer state
    (state_rows rows as long as the parameters), the epoch-start copies of
    parameters and state, the workspace of a chunk of batch_rows rows
    (activations, deltas and dropout masks of every layer, a generous
    bound) and the order of the n_train rows."""
    params = network_bytes(sizes, itemsize)
    workspace = 4 * batch_rows * sum(sizes) * itemsize
    return params * (1 + 2 * state_rows) + workspace + 8 * n_train


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
            for line in f:
                key, _, value = line.partition(":")
                if key in names:
                    found[key] = int(value.split()[0]) * 1024
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
    status = _proc_fields("/proc/self/status", ("VmSize", "VmData"))
    for limit, used in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY and used in status:
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

