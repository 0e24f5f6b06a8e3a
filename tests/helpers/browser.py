"""The README's MLflow journey in a real browser: Debian's Chromium driven by Playwright.

Open the experiment's training runs, select two runs, press Compare, read a metric for both.
Used by tests/test_dvc_pipeline.py on the store `dvc repro` filled, and run as a script to take
the README's screenshots of the project's own store:

    python tests/helpers/browser.py --store mlflow.db --out docs/images
"""

import argparse
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `helpers` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.process import VENV_BIN, free_port, responds, wait_until

CHROMIUM = Path("/usr/bin/chromium")
# As Debian's Chromium needs it here: no sandbox as root, and no background connections (the
# machine's network is closed; Chromium would retry them all the time).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def mlflow_ui(store: Path) -> Iterator[str]:
    """`mlflow ui` on a SQLite store, on 127.0.0.1; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "ui",
            "--backend-store-uri",
            f"sqlite:///{Path(store).resolve()}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: responds(f"{url}/health"), "mlflow ui", None, process=process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


# The compare view's metrics are a virtualised grid: names in one column, values in another
# grid whose cells sit at the same height (style.top) as their name, one per run, left to right.
METRIC_CELLS = """(metric) => {
  const link = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === metric);
  const nameCell = link.parentElement, top = nameCell.style.top;
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer')];
  const values = grids[grids.indexOf(nameCell.parentElement) + 1];
  return [...values.children].filter(cell => cell.style.top === top)
    .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
    .map(cell => cell.textContent.trim());
}"""


def compare_runs(
    url: str, experiment_id: str, runs: list[str], metric: str, screenshots: Path
) -> dict[str, str]:
    """Walk the README's journey; return the compare view's `metric` cell for each run name.

    Saves `runs.png` (the training runs, both selected) and `compare.png` (the compare view
    at the metric's row) in `screenshots`.
    """
    from playwright.sync_api import sync_playwright

    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # The link README and `make ui` give: the training runs, not the GenAI overview.
        page.goto(f"{url}/#/experiments/{experiment_id}?workflowType=machine_learning")
        for name in runs:
            link = page.get_by_role("link", name=name, exact=True).first
            link.wait_for(timeout=60_000)
            row = page.locator("[role=row]", has=link).first
            row.get_by_label("Press Space to toggle row selection", exact=False).check()
        close = page.get_by_role("button", name="Close")
        if close.count():
            close.first.click()  # the assistant panel, to see the whole table
        page.screenshot(path=str(screenshots / "runs.png"))
        page.get_by_role("button", name="Compare", exact=True).click()
        metric_name = page.get_by_text(metric, exact=True).first
        metric_name.wait_for(timeout=60_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        # Scroll the page to the metrics table, not inside it: its name and value columns are
        # separate grids that MLflow 3.17 scrolls independently (a wheel over the values moves
        # them alone), which would misalign the picture.
        page.get_by_text("Metrics", exact=True).first.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshots / "compare.png"))
        names = page.locator("tr", has=page.get_by_text("Run Name:", exact=True)).first
        name_cells = [cell.strip() for cell in names.locator("td").all_inner_texts()]
        value_cells = page.evaluate(METRIC_CELLS, metric)
        browser.close()
    return dict(zip(name_cells, value_cells, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=Path("mlflow.db"))
    parser.add_argument("--experiment", default="fashion-mlp")
    parser.add_argument("--runs", default="mlp1,mlp2")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{args.store.resolve()}")
    experiment = client.get_experiment_by_name(args.experiment)
    with mlflow_ui(args.store) as url:
        values = compare_runs(
            url, experiment.experiment_id, args.runs.split(","), "test_acc", args.out
        )
    print(values)


if __name__ == "__main__":
    main()
