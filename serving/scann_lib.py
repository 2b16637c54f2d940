"""ScaNN (`scann_ops_pybind`), with the SIMD kernels this CPU can run switched on. Import ScaNN from here.

scann 1.4.2's wheel is built with its CPU check (`research_scann::port::TestCPUFeature`) compiled to answer
no to every feature, so on any machine ScaNN searches with its AVX1 kernels, although the wheel carries
AVX2 and AVX-512 ones as well and chooses among them at search time by flags it exports. This module sets
those flags from the CPU's features as the Linux kernel reports them (/proc/cpuinfo lists only what the OS
has enabled), by ScaNN's own rules (scann/utils/intrinsics/flags.cc): AVX2 and FMA for the AVX2 kernels;
AVX-512 F, DQ and BW for the AVX-512 ones; VNNI on top of those for the int8 ones. AMX stays off: using it
needs a permission request from the OS that ScaNN makes only when its own check succeeds. A flag ScaNN
set itself is never turned off, so a wheel with a working check is left as it is.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform

import scann
from scann.scann_ops.py import scann_ops_pybind

__all__ = ["KERNELS", "scann_ops_pybind"]

X86_64 = platform.machine() in ("x86_64", "AMD64")  # ScaNN has AVX kernels (and these flags) only there

# ScaNN's flag (research_scann::flags_internal::should_use_<name>) -> the CPU features it needs
RULES = {
    "avx2": {"avx2", "fma"},
    "avx512": {"avx2", "fma", "avx512f", "avx512dq", "avx512bw"},
    "avx512_vnni": {"avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512_vnni"},
}


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the OS reports (empty where there is no such file)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def flags() -> dict[str, ctypes.c_bool]:
    """ScaNN's kernel flags, as writable views of the loaded library's globals (none off x86-64)."""
    found = glob.glob(os.path.join(os.path.dirname(scann.__file__), "scann_ops", "cc", "python", "scann_pybind*.so"))
    if not X86_64 or not found:
        return {}
    lib = ctypes.CDLL(found[0])  # the module scann_ops_pybind loaded: the same handle and globals
    out = {}
    for name in RULES:
        symbol = f"should_use_{name}"
        try:
            out[name] = ctypes.c_bool.in_dll(lib, f"_ZN14research_scann14flags_internal{len(symbol)}{symbol}E")
        except ValueError:  # another ScaNN build without this flag
            continue
    return out


def enable(have: set[str] | None = None) -> dict[str, bool]:
    """Switches on each kernel family whose features the CPU has (`have`: its flags, default the OS's);
    returns every flag's value afterwards."""
    have = cpu_flags() if have is None else have
    out = {}
    for name, flag in flags().items():
        flag.value = flag.value or RULES[name] <= have
        out[name] = flag.value
    return out


KERNELS = enable()  # before any searcher is built or loaded
