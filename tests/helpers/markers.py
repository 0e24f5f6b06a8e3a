"""One rule for tests that need something the machine may lack (real data, PostgreSQL, a
browser, a GPU): skip with the reason on a developer's machine, fail under CI (`CI=true`), where
`make test` installs all of it, so CI never silently skips what it must run.

A GPU is the exception: CI machines have none, so a GPU test fails only where the machine says
it has one (`FASHION_MLP_GPU=1`, set by whoever runs the suite on a GPU machine).
"""

import os

import pytest


def require(available: bool, reason: str) -> None:
    """Call at the top of a test or fixture that needs something: skip or fail if absent."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


def require_gpu() -> None:
    """Skip without a CUDA GPU, unless the machine declares one (then fail)."""
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get("FASHION_MLP_GPU") == "1":
        pytest.fail("FASHION_MLP_GPU=1 says this machine has a GPU, but torch sees none")
    pytest.skip("needs a CUDA GPU (set FASHION_MLP_GPU=1 where there is one)")
