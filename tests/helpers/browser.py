"""The README's MLflow journey in a real browser: Debian's Chromium driven by Playwright.

From the link `make ui` prints: the chart view of the training runs, two runs compared, the
Models tab, the registry's champion, and back by the experiment's name; and DVC's plot page
with the network cut off. Used by tests/test_dvc_pipeline.py on the store `dvc repro` filled,
and run as a script in the project to take the README's screenshots of its own store:

    python tests/helpers/browser.py --out docs/images
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
from helpers.process import VENV_BIN, free_port

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
def project_ui(folder: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`fashion-mlp ui` (what `make ui` runs) in a project folder; yields the link it printed."""
    process = subprocess.Popen(
        [str(VENV_BIN / "fashion-mlp"), "ui", "--port", str(free_port())],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = process.stdout.readline()
        assert first.startswith("open http://"), first + process.stdout.read()
        yield first.split()[1]
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


# How far each element of interest reaches, in the viewport (1600 x 900 in the tests).
BOX = """(element) => {
  const b = element.getBoundingClientRect();
  return [b.left, b.top, b.right, b.bottom];
}"""


# What README "Comparing runs in MLflow" tells a user to look at: the metric to compare, the
# word to type in the chart view's search box, and the per-epoch charts it leaves.
README_WALK = ("test_acc", "acc", ["test_acc", "train_acc"])


@dataclass
class Journey:
    landed: str  # the URL the link printed by `make ui` opened
    charts_in_view: dict[str, bool]  # per-epoch chart title -> fully on screen, with every run
    compared: dict[str, str]  # run name -> the compare view's cell of the metric
    beside_its_name: bool  # every one of those cells on screen, level with the metric's name
    models: dict[str, str]  # LoggedModel name -> its metric in the Models tab
    metric_column_in_view: bool  # the Models tab's metric column fully on screen
    champion: str  # what the registry page says of the alias `champion`
    reopened: str  # the URL the experiment's name opened, after the README's switch


def in_view(page, locator) -> bool:
    left, top, right, bottom = locator.evaluate(BOX)
    size = page.viewport_size
    return left >= 0 and top >= 0 and right <= size["width"] and bottom <= size["height"]


def close_assistant(page) -> None:
    """MLflow's Assistant panel opens on a browser's first visit, over a quarter of the page."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def walk_the_readme(
    link: str,
    runs: list[str],
    metric: str,
    chart_filter: str,
    charts: list[str],
    screenshots: Path,
) -> Journey:
    """Walk README "Comparing runs in MLflow" from the link `make ui` printed: the training
    runs; the chart view (per-epoch charts of every run side by side); two runs ticked and
    compared; the Models tab with its columns narrowed as the README says; the registry's
    champion; and back to the experiment by its name in the experiment list.

    Saves runs.png, charts.png, compare.png, models.png and registry.png in `screenshots`.
    """
    from playwright.sync_api import sync_playwright

    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(link)
        for name in runs:
            page.get_by_role("link", name=name, exact=True).first.wait_for(timeout=60_000)
        close_assistant(page)
        landed = page.url
        page.screenshot(path=str(screenshots / "runs.png"))

        # The chart view (the second button left of the search box), its charts narrowed by the
        # README's word in their search box.
        page.locator("label", has=page.locator("input[value=CHART]")).first.click()
        page.get_by_placeholder("Search metric charts").fill(chart_filter)
        charts_in_view = {}
        for title in charts:
            card = page.locator(
                "[data-testid=experiment-view-compare-runs-card]",
                has=page.get_by_text(title, exact=True),
            ).first
            card.wait_for(timeout=60_000)
            card.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            legend = card.text_content() or ""  # the legend is SVG text
            charts_in_view[title] = in_view(page, card) and all(run in legend for run in runs)
        page.screenshot(path=str(screenshots / "charts.png"))

        page.locator("label", has=page.locator("input[value=TABLE]")).first.click()
        for name in runs:
            link_ = page.get_by_role("link", name=name, exact=True).first
            link_.wait_for(timeout=60_000)
            row = page.locator("[role=row]", has=link_).first
            row.get_by_label("Press Space to toggle row selection", exact=False).check()
        page.get_by_role("button", name="Compare", exact=True).click()
        page.get_by_text(metric, exact=True).first.wait_for(timeout=60_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        page.get_by_text("Metrics", exact=True).first.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshots / "compare.png"))
        names = page.locator("tr", has=page.get_by_text("Run Name:", exact=True)).first
        name_cells = [cell.strip() for cell in names.locator("td").all_inner_texts()]
        cells = page.evaluate(METRIC_CELLS, metric)

        page.goto(link)
        page.get_by_role("link", name="Models", exact=True).first.click()
        page.locator(".ag-row").first.wait_for(timeout=60_000)
        close_assistant(page)
        page.get_by_role("button", name="Columns").click()
        for column in ("Status", "Logged from", "Dataset"):
            page.get_by_text(column, exact=True).last.click()
        page.keyboard.press("Escape")
        header = page.locator(".ag-header-cell", has_text=metric).first
        header.wait_for(timeout=60_000)
        metric_column_in_view = in_view(page, header)
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

        page.get_by_role("link", name="Model registry", exact=True).first.click()
        offer = page.get_by_role("button", name="Try it now")  # the new registry UI, offered once
        offer.first.wait_for(timeout=10_000) if offer.count() else None
        if offer.count():
            offer.first.click()
        page.locator("a[href$='/models/fashion-mlp']").first.click()
        alias = page.get_by_text("champion", exact=False).first
        alias.wait_for(timeout=60_000)
        champion = page.locator("tr, [role=row]", has=alias).first.inner_text()
        page.screenshot(path=str(screenshots / "registry.png"))

        # Back by the experiment's name, the way README says: the switch, then the name.
        page.goto(link.split("#")[0] + "#/experiments")
        page.get_by_text("Model training", exact=True).first.click()
        page.locator("a[href*='#/experiments/']", has_text="fashion-mlp").first.click()
        page.get_by_role("link", name=runs[0], exact=True).first.wait_for(timeout=60_000)
        reopened = page.url
        browser.close()
    return Journey(
        landed=landed,
        charts_in_view=charts_in_view,
        compared=dict(zip(name_cells, [cell["value"] for cell in cells], strict=True)),
        beside_its_name=bool(cells) and all(cell["beside"] for cell in cells),
        models=models,
        metric_column_in_view=metric_column_in_view,
        champion=" ".join(champion.split()),
        reopened=reopened,
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
    parser.add_argument("--runs", default="mlp1,mlp2")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    with project_ui(Path.cwd()) as link:
        journey = walk_the_readme(link, args.runs.split(","), *README_WALK, args.out)
    print(journey)


if __name__ == "__main__":
    main()
