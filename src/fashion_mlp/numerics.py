"""Numerics that give the same weights on every x86-64 machine with AVX2, at any thread count.

Two things in torch make trained weights depend on the machine rather than on the inputs:

1. **The thread count.** Intel MKL, which computes torch's matrix products on x86 CPUs, splits a
   product differently for different thread counts, so the rounding, and with it every trained
   weight, depended on how many threads ran (measured: mlp1 after 3 epochs scored 0.8083 with 1
   thread and 0.8090 with 2, same seed). MKL's strict conditional numerical reproducibility
   (`MKL_CBWR=AUTO,STRICT`) removes that dependence.
2. **The instruction set.** ATen, torch's own kernels (softmax, cross-entropy, reductions,
   batch norm, the optimizers' updates), dispatches at start-up to code for the widest vector
   unit the CPU has: AVX-512 code rounds differently from AVX2 code (measured: 10 epochs of
   mlp1 end at train loss 0.38282777 with AVX-512 kernels, 0.38274877 with AVX2 ones).
   `ATEN_CPU_CAPABILITY=avx2` makes every machine with AVX-512 run the AVX2 kernels that an
   AVX2-only machine runs; it costs no speed here (README "Performance").

MKL itself took the same code path on AMD CPUs with and without AVX-512 in every probe
(docs/numerics.md has the evidence: forced instruction sets, and AVX2-only AMD EPYC CPUs
emulated under QEMU). Intel CPUs take other MKL paths: numbers from them differ in the last
bits, and so do GPU runs.

The CLI sets these variables before torch loads (`apply_numerics_env`: they are read once, at
the first computation, and child processes inherit them); `reproducible_numerics` confirms them
and names what runs.
"""

import ctypes
import os
from pathlib import Path

NUMERICS_ENV = {"MKL_CBWR": "AUTO,STRICT", "ATEN_CPU_CAPABILITY": "avx2"}
# MKL_CBWR_AUTO | MKL_CBWR_STRICT from mkl_cbwr.h.
MKL_AUTO_STRICT = 2 | 0x10000
MKL_CBWR_ALL = -1


def apply_numerics_env() -> None:
    """Set NUMERICS_ENV in this process's environment, unless set already: call it before torch
    loads (torch and MKL read the variables once); child processes inherit them."""
    for variable, value in NUMERICS_ENV.items():
        os.environ.setdefault(variable, value)


def reproducible_numerics() -> str:
    """Confirm the numerics (setting MKL's mode where MKL has not computed yet); a label for the
    run's `numerics` tag, e.g. 'aten-avx2 mkl-strict'."""
    import torch

    parts = [f"aten-{torch.backends.cpu.get_cpu_capability().lower()}"]
    if not torch.backends.mkl.is_available():
        return " ".join([*parts, "no-mkl (results may depend on the thread count)"])
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        get_mode, set_mode = library.mkl_serv_cbwr_get, library.mkl_serv_cbwr_set
    except (OSError, AttributeError):
        return " ".join([*parts, "mkl-unknown (results may depend on the thread count)"])
    get_mode.argtypes = set_mode.argtypes = [ctypes.c_int]
    get_mode.restype = set_mode.restype = ctypes.c_int
    if get_mode(MKL_CBWR_ALL) == MKL_AUTO_STRICT or set_mode(MKL_AUTO_STRICT) == 0:
        return " ".join([*parts, "mkl-strict"])
    return " ".join(
        [
            *parts,
            "mkl-default (MKL computed before strict mode was set: start Python with "
            "MKL_CBWR=AUTO,STRICT; results may depend on the thread count)",
        ]
    )


def cpu_description() -> str:
    """The CPU's model name and its widest vector extensions, e.g. 'AMD EPYC (avx2, avx512f)':
    recorded on every run, since numbers from other CPU families may differ."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    vector = [flag for flag in ("avx2", "avx512f") if flag in flags]
    return f"{model} ({', '.join(vector) or 'no avx2'}, {os.cpu_count()} cores)"
