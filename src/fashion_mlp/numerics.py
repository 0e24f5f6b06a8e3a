"""Numerics that give the same weights whatever the thread count (see threads.py for why).

Intel MKL, which computes torch's matrix products on x86 CPUs, splits a product differently for
different thread counts, so the rounding, and with it every trained weight, depends on how many
threads ran (measured: mlp1 after 3 epochs scored 0.8083 with 1 thread and 0.8090 with 2, same
seed; with strict mode both gave the 1-thread weights bit for bit). Its strict
conditional numerical reproducibility mode removes that dependence. The CLI sets `MKL_CBWR`
before torch loads (MKL reads it at its first computation, and child processes inherit it);
`reproducible_numerics` confirms the mode, or sets it where MKL has not computed yet.
"""

import ctypes
from pathlib import Path

NUMERICS_ENV = {"MKL_CBWR": "AUTO,STRICT"}
# MKL_CBWR_AUTO | MKL_CBWR_STRICT from mkl_cbwr.h: the best code path for this CPU, with results
# independent of the thread count.
MKL_AUTO_STRICT = 2 | 0x10000
MKL_CBWR_ALL = -1


def reproducible_numerics() -> str:
    """Put MKL in strict reproducible mode; a label for the run's `numerics` tag.

    MKL takes the mode only before its first computation: the CLI sets `MKL_CBWR` in the
    environment at start-up (inherited by every process it starts); this call confirms it, or
    sets it in a process where MKL has not computed yet.
    """
    import torch

    if not torch.backends.mkl.is_available():
        return "default (this torch has no MKL; results may depend on the thread count)"
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        get_mode, set_mode = library.mkl_serv_cbwr_get, library.mkl_serv_cbwr_set
    except (OSError, AttributeError):
        return "unknown (MKL's mode cannot be read; results may depend on the thread count)"
    get_mode.argtypes = set_mode.argtypes = [ctypes.c_int]
    get_mode.restype = set_mode.restype = ctypes.c_int
    if get_mode(MKL_CBWR_ALL) == MKL_AUTO_STRICT or set_mode(MKL_AUTO_STRICT) == 0:
        return "mkl-strict"
    return (
        "default (MKL computed before strict mode could be set: start Python with "
        "MKL_CBWR=AUTO,STRICT; results may depend on the thread count)"
    )
