"""Numerics that give the same weights on every x86-64 CPU with AVX2, Intel or AMD, at any
thread count: what pins each library torch computes with (docs/numerics.md has the evidence).

1. **Matrix products** (every Linear layer, forward and backward): MKL's sgemm picks its code
   by CPU vendor and model, and splits its sums by thread count, so Intel and AMD machines, and
   different thread counts, trained different weights. `layers.Linear` computes them with
   `linalg.matmul` instead: each element one fused multiply-add chain in a fixed order, the
   same bits on every CPU whatever its vector width (the `gemm-…` part of the tag says which
   kernel ran: a speed, never a result).
2. **ATen's own kernels** (softmax, cross-entropy, activations, the optimizers' updates) are
   compiled once per instruction set and chosen at start-up: AVX-512 code rounds differently
   from AVX2 code. `ATEN_CPU_CAPABILITY=avx2` makes every machine run the AVX2 code.
3. **MKL's vector math** still computes tanh (and exp, log) for torch: `MKL_CBWR=COMPATIBLE,
   STRICT` makes it take one code path on every vendor. (Its square root is not the same across
   CPUs even then, so nothing here calls `torch.sqrt`: see layers.py and optimizers.py.)
4. **oneDNN**, which torch uses for GELU on float32, generates code per CPU at run time:
   `linalg.pin_numerics` switches it off, and GELU runs on ATen's own kernel.
5. **Random draws** come from torch's generator only (`layers.Dropout`): torch's dropout draws
   from MKL's generator on Intel CPUs and from its own elsewhere.

The CLI sets NUMERICS_ENV before torch loads (`apply_numerics_env`: torch and MKL read them
once, and child processes inherit them). A value the caller set is honoured, never replaced:
`linalg.pin_numerics` names it in the run's `numerics` tag, and `overridden_numerics` lets
the caller say so, since such a run's outputs may differ from the committed ones. This module
loads no torch: the CLI imports it for every command.
"""

import os
from pathlib import Path

NUMERICS_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT"}


def apply_numerics_env() -> None:
    """Set NUMERICS_ENV in this process's environment where the caller has not set a value:
    call it before torch loads (torch and MKL read the variables once); child processes
    inherit them."""
    for variable, value in NUMERICS_ENV.items():
        os.environ.setdefault(variable, value)


def effective_numerics_env() -> dict[str, str]:
    """NUMERICS_ENV with the caller's values where set: what a child process (a Ray trial) must
    get to compute as this one does."""
    return {variable: os.environ.get(variable, value) for variable, value in NUMERICS_ENV.items()}


def overridden_note() -> str | None:
    """One line for a command that computes with numerics the caller set, or None."""
    overrides = overridden_numerics()
    if not overrides:
        return None
    given = " ".join(f"{name}={value}" for name, value in overrides.items())
    return (
        f"note: {given} (set by the caller) is honoured; outputs may differ from the committed "
        "ones (docs/numerics.md)"
    )


def overridden_numerics() -> dict[str, str]:
    """The numerics variables the caller set to other values than ours (honoured as given)."""
    return {
        variable: os.environ[variable]
        for variable, value in NUMERICS_ENV.items()
        if os.environ.get(variable, value) != value
    }


def cpu_description() -> str:
    """The CPU's model name and its widest vector extensions, e.g. 'AMD EPYC (avx2, avx512f)':
    recorded on every run."""
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
