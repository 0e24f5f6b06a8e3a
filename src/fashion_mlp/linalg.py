"""Matrix products with the same bits on every x86-64 CPU (layers.Linear is built on them).

torch's own products (MKL's sgemm on x86) split each sum over k across vector lanes, cache
blocks and threads in ways that depend on the CPU model and the thread count, so an Intel and an
AMD machine train different weights from the same inputs. Here every element of a product is
one fused multiply-add chain over k, in order (`_sequential_gemm.c` says why that fixes the
bits); the kernel runs as many chains side by side as the CPU's vectors hold, AVX-512 or AVX2,
on torch's threads. docs/numerics.md has the evidence and the speed.

`pin_numerics` completes what numerics.py's environment starts, once torch is loaded, and names
the numerics that run for the run's `numerics` tag.
"""

import ctypes
from pathlib import Path

import torch

from fashion_mlp import _sequential_gemm
from fashion_mlp.numerics import overridden_numerics

# MKL's conditional-numerical-reproducibility branches (mkl_cbwr.h), as MKL_CBWR names them.
MKL_BRANCHES = {
    0: "OFF",
    1: "BRANCH_OFF",
    2: "AUTO",
    3: "COMPATIBLE",
    4: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    12: "AVX512",
    14: "AVX512_E1",
}
MKL_CBWR_STRICT = 0x10000
MKL_CBWR_ALL = -1
MKL_CBWR_AUTO = 2


def kernel_name() -> str:
    """The kernel this CPU runs ('avx512', 'avx2' or 'portable'): a speed, never a result."""
    return _sequential_gemm.kernel_name()


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`a @ b (+ bias)` for 2-D float32 CPU tensors, any strides (transposed views are free)."""
    (m, k), (k_b, n) = a.shape, b.shape
    if k != k_b:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not chain")
    for tensor in (a, b) if bias is None else (a, b, bias):
        if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
            raise TypeError(f"matmul: float32 CPU tensors only, got {tensor.dtype} {tensor.device}")
    if bias is not None:
        bias = bias.contiguous()
    out = torch.empty((m, n), dtype=torch.float32)
    _sequential_gemm.gemm(
        m,
        n,
        k,
        a.data_ptr(),
        a.stride(0),
        a.stride(1),
        b.data_ptr(),
        b.stride(0),
        b.stride(1),
        out.data_ptr(),
        n,
        0 if bias is None else bias.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def column_sums(x: torch.Tensor) -> torch.Tensor:
    """The sum of each column of a 2-D float32 CPU tensor, row by row in order."""
    out = torch.empty(x.shape[1], dtype=torch.float32)
    _sequential_gemm.column_sums(
        x.shape[0],
        x.shape[1],
        x.data_ptr(),
        x.stride(0),
        x.stride(1),
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def pin_numerics(numerics: str = "portable") -> str:
    """Set up `train.numerics` before the first product, then name the numerics that run, for
    the run's `numerics` tag.

    portable (model.LAYERS: layers.py): torch's oneDNN off; e.g. 'gemm-avx512 aten-avx2
    mkl-COMPATIBLE,STRICT'. native (torch's layers): oneDNN on and MKL back in its AUTO mode,
    the fastest for this CPU, unless the caller set MKL_CBWR; e.g. 'native gemm-torch aten-avx2
    mkl-AUTO'. Call it before anything uses MKL: MKL takes a new mode only before its first
    call.
    """
    native = numerics == "native"
    torch.backends.mkldnn.enabled = native
    if native and "MKL_CBWR" not in overridden_numerics():
        _set_mkl_mode(MKL_CBWR_AUTO)
    parts = [
        *(["native", "gemm-torch"] if native else [f"gemm-{kernel_name()}"]),
        f"aten-{torch.backends.cpu.get_cpu_capability().lower()}",
        _mkl_mode(),
    ]
    overrides = overridden_numerics()
    if overrides:
        given = ", ".join(f"{name}={value}" for name, value in overrides.items())
        parts.append(f"(caller set {given}: outputs may differ from the committed ones)")
    return " ".join(parts)


def _mkl_function(name: str):
    """One of MKL's reproducibility functions inside torch, or None (no MKL, or not exported)."""
    if not torch.backends.mkl.is_available():
        return None
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        function = getattr(library, name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


def _set_mkl_mode(mode: int) -> None:
    """Ask MKL for `mode`; `_mkl_mode` then says what it took (nothing, after MKL's first
    call)."""
    if set_mode := _mkl_function("mkl_serv_cbwr_set"):
        set_mode(mode)


def _mkl_mode() -> str:
    """MKL's reproducibility mode as it runs, e.g. 'mkl-COMPATIBLE,STRICT'."""
    if not torch.backends.mkl.is_available():
        return "no-mkl"
    get_mode = _mkl_function("mkl_serv_cbwr_get")
    if get_mode is None:
        return "mkl-unknown"
    mode = get_mode(MKL_CBWR_ALL)
    branch = MKL_BRANCHES.get(mode & ~MKL_CBWR_STRICT, str(mode & ~MKL_CBWR_STRICT))
    return f"mkl-{branch}" + (",STRICT" if mode & MKL_CBWR_STRICT else "")
