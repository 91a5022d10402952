"""The HTML report in a real headless Chromium: loads with no console errors and no
network requests, every chart draws, and a screenshot is saved.

Needs Debian's chromium and chromium-driver (installed by .ci/run) and selenium (the
``test`` extra). Set PERFPILOT_SCREENSHOT_DIR to keep a copy of the screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers import html as html_renderer

ROOT = Path(__file__).resolve().parent.parent
HOT = ROOT / "examples" / "hotspot" / "hot_function.py"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="chromium/chromedriver not installed (apt-get install chromium chromium-driver)"),
]

# Counts the painted pixels of every canvas; Chart.js draws synchronously with animation off.
CANVAS_PIXELS = """
return Array.from(document.querySelectorAll('canvas')).map(function(c){
  var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = 0;
  for (var i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; }
  return {id: c.id, width: c.width, height: c.height, painted: n};
});
"""


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--window-size=1400,2200"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def gpu_machine_series(profile: Profile) -> None:
    """This machine has no GPU: add the series the gpu collector records on one, so the
    GPU charts are exercised too (values shaped like a training run)."""
    n = len(profile.series["t"])
    values = profile.series["values"]
    values["gpu0.utilization_pct"] = [min(100.0, 20.0 + 7.0 * i) for i in range(n)]
    values["gpu0.memory_used_bytes"] = [float((1 << 30) + i * (20 << 20)) for i in range(n)]
    values["gpu0.power_w"] = [60.0 + 3.0 * (i % 10) for i in range(n)]


def test_html_report_in_headless_chromium(perfpilot_cli, python_exe, tmp_path, browser) -> None:
    out = tmp_path / "run.json"
    result = perfpilot_cli("profile", "--imports", "-o", str(out), "--", python_exe, str(HOT), "--seconds", "1.2")
    assert result.returncode == 0, result.stderr
    profile = Profile.load(out)
    assert profile.hotspots, profile.annotations
    gpu_machine_series(profile)
    page = tmp_path / "report.html"
    html_renderer.write(profile, page)

    browser.get(page.as_uri())
    deadline = time.monotonic() + 15
    charts = browser.execute_script(CANVAS_PIXELS)
    while any(c["painted"] == 0 for c in charts) and time.monotonic() < deadline:
        time.sleep(0.2)
        charts = browser.execute_script(CANVAS_PIXELS)

    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    requests = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    external = [u for u in requests if not u.startswith(("file:", "data:", "about:", "blob:"))]
    assert external == [], external

    ids = {c["id"] for c in charts}
    assert {"ts-cpu", "ts-mem", "ts-gpu-util", "ts-gpu-mem", "ts-power", "imports-chart"} <= ids, ids
    for chart in charts:
        assert chart["width"] > 100 and chart["painted"] > 500, chart
    frames = browser.execute_script("return document.querySelectorAll('#flamegraph svg g rect').length")
    assert frames >= 4
    labels = browser.execute_script("return Array.from(document.querySelectorAll('#flamegraph svg g')).map("
                                    "function(g){return g.textContent}).join('|')")
    assert "crunch" in labels
    table = browser.execute_script("return document.querySelector('table.hotspots').innerText")
    assert table.splitlines()[1].split("\t")[1] == "crunch"

    shot = tmp_path / "report.png"
    browser.set_window_size(1400, min(6000, browser.execute_script("return document.body.scrollHeight") + 40))
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    keep = os.environ.get("PERFPILOT_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "perfpilot-report.png")
        shutil.copy(page, Path(keep) / "perfpilot-report.html")


def with_estimated_power_per_tick(profile: Profile) -> Profile:
    """A run with only estimated power, as the power collector records it: the estimate
    per tick under the series name a RAPL reading has (``power.cpu_w``), the summary's
    energy marked ``source: estimate`` (this VM has no RAPL)."""
    values = profile.series["values"]
    assert profile.summary["energy"]["cpu"]["source"] == "estimate", profile.summary["energy"]
    assert sum(v is not None for v in values["power.cpu_w"]) >= 5, values.get("power.cpu_w")
    return profile


def test_estimated_power_is_a_series_labelled_estimate(perfpilot_cli, python_exe, tmp_path, browser) -> None:
    out = tmp_path / "run.json"
    result = perfpilot_cli("profile", "-o", str(out), "--", python_exe, str(HOT), "--seconds", "1.0")
    assert result.returncode == 0, result.stderr
    profile = with_estimated_power_per_tick(Profile.load(out))
    page = tmp_path / "report.html"
    html_renderer.write(profile, page)
    browser.get(page.as_uri())
    charts = {c["id"]: c for c in browser.execute_script(CANVAS_PIXELS)}
    assert charts["ts-power"]["painted"] > 500, charts
    drawn = browser.execute_script(
        "return ['ts-cpu','ts-power'].map(function(id){var c=Chart.getChart(id);"
        "return {legend: c.options.plugins.legend.display, sets: c.data.datasets.map(function(d){"
        "return {label: d.label, points: d.data.length}})}})")
    cpu, power = drawn
    assert len(power["sets"]) == 1 and power["legend"] is True, power
    assert "estimate" in power["sets"][0]["label"], power
    assert power["sets"][0]["points"] == cpu["sets"][0]["points"] >= 5, drawn
    legend = browser.execute_script("return Chart.getChart('ts-power').legend.legendItems.map(function(i){return i.text})")
    assert legend == ["cpu (estimate)"], legend
