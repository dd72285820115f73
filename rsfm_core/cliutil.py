"""What every ``rsfm`` command shares: one-line errors in the CLI's words, the
intra-op thread count of the commands that compute, and how ``rsfm embed`` has glibc
reuse freed memory.

Imports only the standard library at module level (``rsfm --help`` loads it); torch is
imported by :func:`setup_threads` only, which the computing handlers call.
"""

from __future__ import annotations

import logging
import os
import re
import sys

# ----------------------------------------------------------------------- one-line errors

# Exceptions that mean "the input, a flag or a file is wrong": printed as their message,
# like every exception class defined by rsfm (their messages say what to do). Anything
# else is likely a bug: its type is named and RSFM_TRACEBACK=1 shows the traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, OSError)
_OWN = ("rsfm_core", "rsfm_train", "rsfm_kernels")


def _is_user_error(e: BaseException) -> bool:
    return isinstance(e, USER_ERRORS) or type(e).__module__.split(".")[0] in _OWN


# Python argument names in library messages -> the flags that set them in `rsfm embed`.
_FLAG_WORDS = (
    (re.compile(r"\s*\(rsfm embed: --bands [^)]*\)"), ""),
    (re.compile(r"\(None skips a band\)"), "('-' skips a band)"),
    (re.compile(r"\b(dates|bands)=(\[\.\.\.\])?(?=$|[\s;,:)])"), r"--\1"),
)


def flag_words(message: str) -> str:
    """A library message in the CLI's words: ``pass bands=[...]`` -> ``pass --bands``,
    ``fix dates=`` -> ``fix --dates``."""
    for pattern, repl in _FLAG_WORDS:
        message = pattern.sub(repl, message)
    if "--bands" in message and "skips" not in message:
        message += " ('-' in --bands skips a file band)"
    return message


def error_line(e: BaseException) -> str:
    """One line saying what went wrong (and, from the library's message, what to do)."""
    if isinstance(e, KeyError) and len(e.args) == 1:
        msg = str(e.args[0])  # str(KeyError) quotes its message
    else:
        msg = str(e) or type(e).__name__
    msg = " ".join(part.strip() for part in msg.splitlines() if part.strip())
    if not _is_user_error(e):
        msg = f"{type(e).__name__}: {msg} (RSFM_TRACEBACK=1 shows the traceback)"
    return flag_words(msg)


def one_line_warnings(prog: str):
    """A ``warnings.showwarning`` printing ``PROG: warning: MESSAGE`` (no file:line, the
    CLI's flag names), each distinct message once."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = flag_words(" ".join(str(message).split()))
        if text in seen:
            return
        seen.add(text)
        print(f"{prog}: warning: {text}", file=sys.stderr if file is None else file)

    return show


def run_command(prog: str, func, args) -> int:
    """``func(args)`` as an exit code: exceptions become one line on stderr and exit
    code 2 (130 on Ctrl-C); ``RSFM_TRACEBACK=1`` re-raises them instead. Warnings are
    printed as one line each, once (:func:`one_line_warnings`)."""
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = one_line_warnings(prog)
        return _run(prog, func, args)


def _run(prog: str, func, args) -> int:
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("RSFM_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------ threads

log = logging.getLogger("rsfm_core")


def available_cores() -> tuple[int, str]:
    """Cores this process may use, and how that was found: the CPU affinity mask, capped
    by a cgroup (v2 ``cpu.max`` or v1 ``cfs_quota_us``) CPU quota."""
    try:
        n, how = len(os.sched_getaffinity(0)), "affinity"
    except (AttributeError, OSError):
        n, how = os.cpu_count() or 1, "cpu_count"
    quota = _cgroup_quota()
    if quota is not None and quota < n:
        n, how = max(1, int(quota)), f"cgroup quota {quota:g}"
    return n, how


def _cgroup_quota() -> float | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            q, period = f.read().split()[:2]
        return None if q == "max" else int(q) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            q = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        return None if q <= 0 else q / period
    except (OSError, ValueError):
        return None


def choose_threads(workers: int = 0, environ=None, load: int | None = None) -> tuple[int, str]:
    """Intra-op threads for this process and why: ``RSFM_THREADS`` if set, else
    ``OMP_NUM_THREADS`` if set, else the available cores (:func:`available_cores`) less
    those other processes keep busy (``load``; default from the load average,
    :func:`_busy_cores`), shared by the ``LOCAL_WORLD_SIZE`` processes of this machine
    (torchrun sets it), minus this process's ``workers`` data-loader processes (one
    thread each); at least 1.

    Why: a parallel region ends when its slowest thread does. With more threads than free
    cores, one thread waits for the scheduler and the others wait for it; measured in
    docs/performance.md ("Threads under load")."""
    env = os.environ if environ is None else environ
    for var in ("RSFM_THREADS", "OMP_NUM_THREADS"):
        value = env.get(var, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                raise ValueError(f"{var}={value!r}: expected a whole number of threads") from None
            if n < 1:
                raise ValueError(f"{var}={value!r}: expected at least 1 thread")
            return n, f"{var}={n}"
    cores, how = available_cores()
    busy = _busy_cores(cores) if load is None else load
    local = max(1, int(env.get("LOCAL_WORLD_SIZE", "1") or 1))
    workers = max(0, workers)
    n = max(1, (cores - busy) // local - workers)
    why = f"{cores} cores available ({how})"
    if busy:
        why += f" - {busy} busy with other processes (load average)"
    if local > 1:
        why += f" / {local} processes"
    return n, f"{why} - {workers} data workers"


def _busy_cores(cores: int) -> int:
    """Cores kept busy by other processes, from the 1-minute load average: only when this
    process sees the whole machine (no affinity mask or quota: then the host's load is
    not ours to count), and never all of them."""
    if cores != (os.cpu_count() or cores):
        return 0
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 0
    return min(cores - 1, int(load + 0.5))


def passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``)
    unless the user set a policy. GNU OpenMP reads it when torch loads it: call before
    ``import torch`` (``rsfm`` does, before any command runs; subprocesses inherit it)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def setup_threads(workers: int = 0) -> int:
    """Set torch's intra-op threads for a computing command (see :func:`choose_threads`),
    log the choice and the OpenMP wait policy; returns the thread count. Override with
    ``RSFM_THREADS=N`` (or ``OMP_NUM_THREADS``)."""
    n, why = choose_threads(workers)
    late = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
    passive_openmp()
    import torch

    torch.set_num_threads(n)
    policy = "default (torch was loaded first)" if late else os.environ["OMP_WAIT_POLICY"]
    log.info(
        "threads: %d intra-op (%s; RSFM_THREADS=N overrides), OpenMP wait policy %s",
        n, why, policy,
    )  # fmt: skip
    return n


# ------------------------------------------------------------------ freed memory (glibc)

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, <malloc.h>
_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
               "GLIBC_TUNABLES")  # fmt: skip


def glibc():
    """The C library when it is glibc, with ``mallopt``/``malloc``/``free`` typed (None
    elsewhere: macOS, musl, Windows)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> str:
    """Have glibc serve every allocation from its heap and keep freed memory for reuse
    (``mallopt``: no mmap'ed chunks, no trimming), for the rest of this process; returns
    what was done (also logged). ``rsfm embed`` calls it on CPU.

    Why: glibc gives each buffer above 32 MB (its largest mmap threshold) fresh pages
    from the kernel and returns them on free. An rsfm_tiny batch of eight 256 px tiles
    allocates MLP activations of 67 MB, so every batch page-faults and zeroes hundreds
    of MB: 15 % of the CPU time went to the kernel in the 20,000 px benchmark. Reused
    memory removes that; the arithmetic is unchanged, so outputs are bit-identical.
    Cost: memory freed is kept by the process (its peak RSS stays reserved), which is
    what a long embedding run does anyway. ``RSFM_MALLOC=system`` keeps glibc's defaults;
    glibc's own ``MALLOC_*_`` or ``GLIBC_TUNABLES`` settings in the environment are left
    in charge. Measured in docs/inference.md ("CPU speed")."""
    if os.environ.get("RSFM_MALLOC", "").strip().lower() == "system":
        why = "glibc defaults (RSFM_MALLOC=system)"
    elif set_by_user := [v for v in _MALLOC_ENV if v in os.environ]:
        why = f"glibc settings from the environment ({', '.join(set_by_user)})"
    elif (libc := glibc()) is None:
        why = "not glibc: the C library's defaults"
    else:
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
        why = "freed memory kept for reuse (RSFM_MALLOC=system: glibc defaults)"
        if not ok:
            why = "glibc refused mallopt: its defaults"
    log.info("memory: %s", why)
    return why
