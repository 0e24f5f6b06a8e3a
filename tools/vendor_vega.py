"""Build `.dvc/plots/offline.html`: DVC's plot page with Vega inlined, so it renders offline.

`dvc plots show` writes a page that loads Vega, Vega-Lite and vega-embed from a CDN: with no
network it is blank. `.dvc/config` points DVC at this template instead (plots.html_template);
DVC fills in `{plot_divs}` and, since the template has no `{scripts}` placeholder, adds no CDN
tags. The three libraries (BSD-3-Clause, https://vega.github.io) come from the npm registry:

    python tools/vendor_vega.py     # needs npm; rewrites .dvc/plots/offline.html

Versions: the newest of the majors DVC's own page uses (vega 5, vega-lite 5, vega-embed 6).
"""

import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
TEMPLATE = Path(__file__).resolve().parents[1] / ".dvc/plots/offline.html"
# DVC replaces these placeholders with str.replace: the libraries must not contain them.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


def library(folder: Path, name: str, version: str) -> str:
    subprocess.run(["npm", "pack", f"{name}@{version}", "-q"], cwd=folder, check=True)
    with tarfile.open(folder / f"{name}-{version}.tgz") as archive:
        package = json.load(archive.extractfile("package/package.json"))
        code = archive.extractfile(f"package/build/{name}.min.js").read().decode()
    if "</script" in code or any(placeholder in code for placeholder in PLACEHOLDERS):
        raise SystemExit(f"{name} {version} cannot be inlined into an HTML template")
    return f"<!-- {name} {version}, {package['license']} -->\n<script>{code}</script>"


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scripts = [library(Path(scratch), n, v) for n, v in PACKAGES.items()]
    TEMPLATE.write_text(
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>DVC Plot</title>\n'
        "<!-- Written by tools/vendor_vega.py: Vega inlined, so the page needs no network. -->\n"
        + "\n".join(scripts)
        + "\n<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n"
        "</body>\n</html>\n",
        encoding="utf-8",
    )
    print(f"{TEMPLATE}: {TEMPLATE.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
