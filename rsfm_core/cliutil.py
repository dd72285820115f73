"""What every ``rsfm`` command shares: one-line errors in the CLI's words, and the
intra-op thread count of the commands that compute.

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


def run_command(prog: str, func, args) -> int:
    """``func(args)`` as an exit code: exceptions become one line on stderr and exit
    code 2 (130 on Ctrl-C); ``RSFM_TRACEBACK=1`` re-raises them instead."""
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


def choose_threads(workers: int = 0, environ=None) -> tuple[int, str]:
    """Intra-op threads for this process and why: ``RSFM_THREADS`` if set, else
    ``OMP_NUM_THREADS`` if set, else the available cores minus ``workers`` data-loader
    processes (one thread each), at least 1."""
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
    n = max(1, cores - max(0, workers))
    return n, f"{cores} cores available ({how}) - {max(0, workers)} data workers"


def setup_threads(workers: int = 0, quiet: bool = False) -> int:
    """Set torch's intra-op threads for a computing command (see :func:`choose_threads`),
    make OpenMP wait passively (unless ``OMP_WAIT_POLICY`` is set: busy-waiting threads
    fight data workers and other jobs for the cores), log the choice; returns it.
    Override with ``RSFM_THREADS=N`` (or ``OMP_NUM_THREADS``)."""
    n, why = choose_threads(workers)
    # Read by OpenMP when its runtime starts (torch's first parallel region): set it
    # before any computation. An already-running pool keeps its policy.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(n)
    msg = f"threads: {n} intra-op ({why}; RSFM_THREADS=N overrides)"
    if quiet:
        log.debug(msg)
    else:
        log.info(msg)
    return n
