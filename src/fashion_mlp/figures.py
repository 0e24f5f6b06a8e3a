"""matplotlib, set up once: the non-interactive backend, and one way to save a figure.

Every figure is written atomically and without a timestamp (matplotlib's PNG metadata names
only its version), so the same data gives the same image bytes.
"""

from pathlib import Path
from typing import Any

from fashion_mlp.atomic import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, dpi: int = 100) -> None:
    """Write `figure` as a PNG to `path` (atomically) and free it."""
    try:
        with atomic_path(Path(path)) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi)
    finally:
        pyplot().close(figure)
