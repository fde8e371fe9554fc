"""The machine a stage ran on, as result.json records it: the CPU model.

CPU results depend on the instruction set (oneDNN and MKL choose their kernels by it), so two
machines can read different accuracies from the same code, seeds and thread count (issue 22):
a result says which CPU computed it. Torch-free: the compute plane writes it, the report reads it.
"""
from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The first `model name` of /proc/cpuinfo (Linux, x86), else platform.processor(), else the
    architecture (platform.machine()), else "unknown"."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass  # not Linux, or /proc not mounted: the platform's own answer
    return platform.processor() or platform.machine() or "unknown"
