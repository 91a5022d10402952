"""Self-contained HTML pages: vendored chart libraries inlined, no network requests.

Vendored (see ``profilers/assets/LICENSE-*``): Chart.js 4.6.1 (time series, bars,
distributions), d3 7.9.2 and d3-flame-graph 4.1.3 (flame graphs). Every HTML output of
perfpilot (profile report, compare, optimise report, pytest report) is built with
:func:`page` so it opens offline from a file.
"""

from __future__ import annotations

import html
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

ASSETS = {
    "chart": ("chart.umd.min.js",),
    "d3": ("d3.min.js",),
    "flamegraph": ("d3.min.js", "d3-flamegraph.min.js", "d3-flamegraph.css"),
}

BASE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #f0f2f4}
th{background:#f6f8fa} .num{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#6a737d}
.estimate{color:#9a6700} .bad{color:#cf222e} .good{color:#1a7f37} code,pre{font-family:ui-monospace,Menlo,monospace;font-size:12px}
pre{background:#f6f8fa;padding:8px;overflow:auto} .chart{position:relative;height:220px;max-width:1000px;margin-bottom:12px}
"""


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    return resources.files("perfpilot.profilers").joinpath("assets", name).read_text(encoding="utf-8")


def asset_tags(names: Iterable[str]) -> str:
    """Inline <script>/<style> tags for the named asset groups (deduplicated)."""
    seen: list[str] = []
    for group in names:
        for filename in ASSETS[group]:
            if filename not in seen:
                seen.append(filename)
    tags = []
    for filename in seen:
        text = _asset(filename)
        if filename.endswith(".css"):
            tags.append(f"<style>{text}</style>")
        else:
            # A literal "</script" inside a library would end the tag early.
            tags.append("<script>" + text.replace("</script", "<\\/script") + "</script>")
    return "\n".join(tags)


def json_for_script(data: Any) -> str:
    """JSON safe to embed inside a <script> element."""
    return json.dumps(data, allow_nan=False).replace("</", "<\\/")


def page(title: str, body: str, *, assets: Iterable[str] = ("chart",), extra_css: str = "") -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<style>{BASE_CSS}{extra_css}</style>\n{asset_tags(assets)}\n</head>\n<body>\n{body}\n</body></html>\n"
    )
