"""One rule for tests that need something the machine may lack (real data, PostgreSQL, a
browser, a GPU): skip with the reason on a developer's machine, fail under CI (`CI=true`), where
`make test` installs all of it, so CI never silently skips what it must run."""

import os

import pytest


def require(available: bool, reason: str) -> None:
    """Call at the top of a test or fixture that needs something: skip or fail if absent."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)
