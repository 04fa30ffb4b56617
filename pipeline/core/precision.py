"""Compute precision of the models a stage builds: float32, or mixed bfloat16 where it pays.

Under Keras's `mixed_bfloat16` policy layers compute in bfloat16 while weights, optimizer state
and losses stay float32. It pays only where bfloat16 matrix products run natively: CPUs with
AVX512-BF16 or AMX (measured here, `benchmarks/matmul_peak.py`: 1.9x the float32 throughput on
large products, 1.2x on an LSTM step's small ones and on whole training runs). Elsewhere they
are emulated (slower than float32), and cuDNN's recurrent kernels take no bfloat16, so `auto`
resolves to float32 on a GPU or a CPU without those instructions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def resolve_precision(requested: str, flags: frozenset[str], gpus: int) -> str:
    """The policy to build with: `auto` is mixed_bfloat16 on a CPU with native bfloat16 only."""
    if requested != "auto":
        return requested
    native = bool(NATIVE_BF16_FLAGS & flags)
    return "mixed_bfloat16" if native and gpus == 0 else "float32"


def this_machine(requested: str) -> str:
    """`resolve_precision` for the machine this process runs on."""
    import tensorflow as tf

    return resolve_precision(requested, cpu_flags(), len(tf.config.list_physical_devices("GPU")))


@contextmanager
def compute_precision(policy: str) -> Iterator[None]:
    """Build models under a Keras dtype policy, then restore the previous one.

    Layers keep the policy they were built with (it is saved in the model's config), so the
    global setting is only needed while building; restoring it keeps it out of other code.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
