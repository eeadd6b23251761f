"""CPU settings chosen for training speed, applied before TensorFlow starts.

Measured with `albert-bench` (albert_small pretraining, 32 x 64, 2 AVX2 cores without AVX-512),
examples/s: 24.5-28.7 with TensorFlow's defaults, 33.4-35.4 with the malloc thresholds below,
51.5 with oneDNN, 62.3 with both. TensorFlow turns oneDNN on by itself only on CPUs with
AVX-512 VNNI/BF16 or AMX; glibc's default thresholds hand TensorFlow's large, short-lived
buffers back to the kernel after each step, so every step page-faults them in again (a third of
the process's CPU time went to the kernel). A setting the user made in the environment wins.
"""

import ctypes
import os

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
# mallopt(3) parameters and the values set: allocations below 32 MiB (glibc's largest mmap
# threshold on 64-bit) come from the heap, and up to 1 GiB of free heap is kept, not trimmed.
MALLOPT = {"M_TRIM_THRESHOLD": (-1, 1 << 30), "M_TOP_PAD": (-2, 256 << 20),
           "M_MMAP_THRESHOLD": (-3, 32 << 20)}
MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_",
              "GLIBC_TUNABLES")
# What tune_cpu set in this process (recorded in each run's env.json).
APPLIED: dict[str, object] = {}


def tune_cpu() -> dict[str, object]:
    """Turn oneDNN on unless `TF_ENABLE_ONEDNN_OPTS` is set, and set glibc's malloc thresholds
    unless a `MALLOC_*_` variable or `GLIBC_TUNABLES` is set (or the C library is not glibc);
    returns what was set (also kept in APPLIED). Call before TensorFlow is imported."""
    applied = APPLIED
    if ONEDNN not in os.environ:
        os.environ[ONEDNN] = applied[ONEDNN] = "1"
    if any(name in os.environ for name in MALLOC_ENV):
        return applied
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return applied
    for name, (parameter, value) in MALLOPT.items():
        if mallopt(parameter, value) == 1:
            applied[name] = value
    return applied
