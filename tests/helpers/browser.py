"""The README's MLflow journey in a real browser: Debian's Chromium driven by Playwright.

Open the experiment's training runs, select two runs, press Compare, read a metric for both
beside its name, then the Models tab; and DVC's plot page with the network cut off.
Used by tests/test_dvc_pipeline.py on the store `dvc repro` filled, and run as a script to take
the README's screenshots of the project's own store:

    python tests/helpers/browser.py --store mlflow.db --out docs/images
"""

import argparse
import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
# The name and the values must also be on screen at the same height: MLflow 3.17 scrolls the
# two grids apart, so a metric far down the list shows beside the wrong name.
METRIC_CELLS = """(metric) => {
  const link = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === metric);
  const nameCell = link.parentElement, top = nameCell.style.top;
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer')];
  const values = grids[grids.indexOf(nameCell.parentElement) + 1];
  const middle = (cell) => {
    const box = cell.getBoundingClientRect();
    return box.top + box.height / 2;
  };
  const visible = (cell) => {
    const box = cell.getBoundingClientRect();
    const grid = cell.closest('.ReactVirtualized__Grid').getBoundingClientRect();
    return box.top >= grid.top - 1 && box.bottom <= grid.bottom + 1 && box.bottom <= innerHeight;
  };
  return [...values.children].filter(cell => cell.style.top === top)
    .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
    .map(cell => ({
      value: cell.textContent.trim(),
      beside: Math.abs(middle(cell) - middle(nameCell)) < 2 && visible(cell) && visible(nameCell),
    }));
}"""
# The Models tab is an ag-grid: each row's cells by column id (pinned and scrolled parts).
MODEL_ROWS = """() => {
  const rows = {};
  for (const row of document.querySelectorAll('.ag-row')) {
    const index = row.getAttribute('row-index');
    const cells = [...row.querySelectorAll('[role=gridcell]')];
    rows[index] = Object.assign(rows[index] || {},
      Object.fromEntries(cells.map(c => [c.getAttribute('col-id'), c.textContent.trim()])));
  }
  return Object.values(rows);
}"""


@dataclass
class Journey:
    compared: dict[str, str]  # run name -> the compare view's cell of the metric
    beside_its_name: bool  # every one of those cells on screen, level with the metric's name
    models: dict[str, str]  # LoggedModel name -> its metric in the Models tab


def walk_the_readme(
    url: str, experiment_id: str, runs: list[str], metric: str, screenshots: Path
) -> Journey:
    """Walk the README's journey: the training runs, two ticked, Compare, then the Models tab.

    Saves `runs.png` (the training runs, both selected), `compare.png` (the compare view at the
    metrics) and `models.png` (the Models tab) in `screenshots`.
    """
    from playwright.sync_api import sync_playwright

    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        # The link README and `make ui` give: the training runs, not the GenAI overview.
        training = f"{url}/#/experiments/{experiment_id}?workflowType=machine_learning"
        page.goto(training)
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
        page.get_by_text(metric, exact=True).first.wait_for(timeout=60_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        # Scroll the page so the metrics table is in view, not the table itself.
        page.get_by_text("Metrics", exact=True).first.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshots / "compare.png"))
        names = page.locator("tr", has=page.get_by_text("Run Name:", exact=True)).first
        name_cells = [cell.strip() for cell in names.locator("td").all_inner_texts()]
        cells = page.evaluate(METRIC_CELLS, metric)

        page.goto(training)
        page.get_by_role("link", name="Models", exact=True).first.click()
        page.locator(".ag-row").first.wait_for(timeout=60_000)
        page.get_by_text(metric, exact=True).first.wait_for(timeout=60_000)
        page.screenshot(path=str(screenshots / "models.png"))
        models = {}
        for row in page.evaluate(MODEL_ROWS):
            name = next(
                (re.sub(r"^#[0-9a-f]{6}", "", v) for k, v in row.items() if k == "name"), ""
            )
            value = next(
                (
                    v
                    for k, v in row.items()
                    if f'"metricKey":"{metric}"' in k.replace("&quot;", '"')
                ),
                "",
            )
            if name:
                models[name] = value
        browser.close()
    return Journey(
        compared=dict(zip(name_cells, [cell["value"] for cell in cells], strict=True)),
        beside_its_name=bool(cells) and all(cell["beside"] for cell in cells),
        models=models,
    )


def charts_drawn_offline(page_file: Path, screenshot: Path, patience_ms: int = 30_000) -> int:
    """Open an HTML file with every network request refused; how many Vega charts it drew
    (waiting up to `patience_ms` for the first)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith("file:") else route.abort()
            ),
        )
        page = context.new_page()
        page.goto(page_file.resolve().as_uri())
        # Nothing drawn is a result too: the count below says so.
        with contextlib.suppress(PlaywrightTimeout):
            page.locator(".vega-embed .marks").first.wait_for(timeout=patience_ms)
        page.screenshot(path=str(screenshot), full_page=False)
        drawn = page.locator(".vega-embed .marks").count()
        browser.close()
    return drawn


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
        journey = walk_the_readme(
            url, experiment.experiment_id, args.runs.split(","), "test_acc", args.out
        )
    print(journey)


if __name__ == "__main__":
    main()
