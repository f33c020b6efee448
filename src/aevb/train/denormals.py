"""Flushing subnormal floats to zero on every CPU thread that computes, not only the calling one.

`torch.set_flush_denormal` sets the flush-to-zero and denormals-are-zero flags of the calling thread's MXCSR
register. The worker threads of torch's OpenMP pool have registers of their own: a thread inherits the flags of the
thread that creates it, and the pool is created at the first parallel operation of the process, usually long
before training begins. With `torch.set_flush_denormal` alone, a run on two or more threads flushed subnormals in the
main thread's share of each operation only: the workers' share kept them (x86 CPUs process them many times
slower), and a result depended on how an operation was split between the threads.

`flush_denormals(on)` sets the flags on the calling thread and then, through libgomp's `GOMP_parallel` (the OpenMP
runtime of torch's Linux x86 builds, shared with MKL), on every thread of a parallel region of torch's current
size, which are the threads the pool reuses for torch's own parallel regions. Where torch does not run on libgomp
the workers are left as they are and `workers_flushed()` says so.
"""
from __future__ import annotations

import ctypes
import functools

import torch


@functools.lru_cache(maxsize=1)
def _gomp_parallel():
    """libgomp's GOMP_parallel as loaded in this process (the copy torch uses), or None."""
    if torch.__config__.parallel_info().find("ATen parallel backend: OpenMP") < 0:
        return None
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            fn = ctypes.CDLL(path).GOMP_parallel
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        fn.restype = None
        return fn
    return None


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def workers_flushed() -> bool:
    """Whether `flush_denormals` reaches torch's OpenMP worker threads in this process."""
    return _gomp_parallel() is not None


def flush_denormals(on: bool) -> bool:
    """Set flush-to-zero / denormals-are-zero to `on` on this thread and on every thread of torch's OpenMP pool.
    Returns what `torch.set_flush_denormal` returns: False where the CPU has no such mode (then nothing changes)."""
    supported = torch.set_flush_denormal(on)
    gomp = _gomp_parallel()
    if supported and gomp is not None and torch.get_num_threads() > 1:
        callback = _CALLBACK(lambda _: torch.set_flush_denormal(on))
        gomp(ctypes.cast(callback, ctypes.c_void_p), None, torch.get_num_threads(), 0)
    return supported
