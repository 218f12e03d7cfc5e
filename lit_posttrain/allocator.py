"""The C allocator's settings for training on a CPU, and its free pages handed back on demand.

glibc's malloc serves a block of 32 MiB or more (and, until a freed one has raised its threshold,
any block from 128 KiB) with its own `mmap`, and unmaps it when it is freed: the next block of that
size faults every page in again and the kernel zeroes each. A training step allocates and frees
the same large activations in every layer, forward and backward, so at real sizes the step spends
much of its time in the kernel: Qwen2-0.5B's shape with LoRA, one forward and backward over 7 rows
of 576 tokens (MLP activations of 40 MB), on a 2-core Intel Xeon with AMX, took 19.8 s, 12.1 of
its 37 CPU-seconds in the kernel (1.75 million page faults); served from the heap, 11.9 s and
0.4 (28 thousand), the peak resident memory 7.50 -> 7.54 GiB (`benchmarks/README.md`).

`keep_freed_memory` serves every block from the heap (`M_MMAP_MAX` 0) and never shrinks it
(`M_TRIM_THRESHOLD` at its largest): the process keeps its high-water mark, which a training loop
reaches again every step, and reuses those pages instead of asking the kernel for new ones. What
PyTorch's CPU tuning guides get by preloading jemalloc or tcmalloc, without a library to install.
Runs of one process on a CPU take it at setup (`PostTrainingModule.setup`); runs of several do
not (under FSDP2 over two processes the heaps it keeps took a 0.5B full fine-tune past the
machine's 24 GiB, which fits with glibc's defaults). A `MALLOC_*` variable in the
environment (glibc's own way to set these, read at start-up) or a malloc setting in `GLIBC_TUNABLES`
means the user chose, and wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has `mallopt` and `malloc_trim`), else None (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version, libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc's own symbols)
    except (OSError, AttributeError, TypeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's heap and never trim it (see the module docstring).
    Returns whether the settings were made: False where the C library is not glibc or where the
    environment sets any of glibc's `MALLOC_*` variables or malloc tunables."""
    libc = _glibc()
    chosen = any(name.startswith("MALLOC_") for name in os.environ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    if libc is None or chosen:
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)) and bool(libc.mallopt(_M_MMAP_MAX, 0))


def release_freed_memory() -> bool:
    """Return the C allocator's free pages to the system (glibc `malloc_trim(0)`); False where
    that is not available. It changes resident memory, never tensors; the pages it returns are
    faulted back in when next used, which slowed a step by about half when called every step."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
