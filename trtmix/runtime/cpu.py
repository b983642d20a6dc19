"""What this CPU can do, read from /proc/cpuinfo: settings that depend on it are chosen by detection, not constants.

Our machines differ between sessions (DESIGN.md §9): int8 dot products need VNNI (AVX512-VNNI or AVX-VNNI) or AMX
not to saturate in OpenVINO's and ONNX Runtime's u8×s8 kernels, and a native 16-bit float type (AVX512-BF16 or AMX)
is what makes a 16-bit baseline fast.  Every benchmark table prints ``describe()``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU model and the instruction-set features trtmix's settings depend on."""

    model: str
    vnni: bool
    bf16: bool
    amx: bool

    @property
    def native_16bit(self) -> bool:
        """True when the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
        return self.bf16 or self.amx

    @property
    def int8_exact(self) -> bool:
        """True when 8-bit dot products cannot saturate their accumulators (VNNI or AMX)."""
        return self.vnni or self.amx

    def describe(self) -> str:
        """``CPU: <model>; VNNI yes, BF16 yes, AMX no``."""
        flag = {True: "yes", False: "no"}
        return f"CPU: {self.model}; VNNI {flag[self.vnni]}, BF16 {flag[self.bf16]}, AMX {flag[self.amx]}"


@functools.cache
def cpu_features() -> CpuFeatures:
    """The features of the CPU this process runs on (unknown model and no features where /proc is unreadable)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return CpuFeatures(model, vnni=bool({"avx512_vnni", "avx_vnni"} & flags), bf16="avx512_bf16" in flags,
                       amx=bool({"amx_int8", "amx_bf16", "amx_tile"} & flags))  # fmt: skip
