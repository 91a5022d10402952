"""`perfpilot report` and `perfpilot profile --html/--speedscope/--collapsed`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from perfpilot.profilers import hotspots as hs
from perfpilot.profilers.profile import Profile
from perfpilot.profilers.renderers import html as html_renderer

ROOT = Path(__file__).resolve().parent.parent
HOT = ROOT / "examples" / "hotspot" / "hot_function.py"


def rich_profile() -> Profile:
    """A complete Profile as a GPU machine would record it (this machine has no GPU)."""
    times = [round(i * 0.1, 1) for i in range(21)]
    collapsed = {f"<module> (/app/train.py:40);step (/app/train.py:20);loss (/app/train.py:{ln})": n
                 for ln, n in ((11, 60), (12, 20))}
    collapsed["<module> (/app/train.py:40);load (/app/data.py:7)"] = 20
    profile = Profile(
        target={"command": ["python", "train.py"], "cwd": "/app", "pid": 42, "exit_code": 0, "signal": None,
                "attached": False},
        host={"cpu_model": "Test CPU", "cores_logical": 2, "memory_bytes": 8 << 30, "python": "3.11", "os": "Linux"},
        started_at="2024-01-01T00:00:00.000+00:00",
        duration_s=2.0,
        summary={"wall_s": 2.0, "cpu_user_s": 1.5, "cpu_system_s": 0.1, "peak_rss_bytes": 300 << 20,
                 "gpu_utilization_mean_pct": 70.0, "gpu_memory_peak_bytes": 2 << 30, "import_time_s": 0.25,
                 "energy": {"cpu": {"joules": 12.0, "source": "estimate"}, "gpu0": {"joules": 90.0, "source": "nvml_energy"}}},
        series={"t": times, "values": {
            "cpu.utilization_pct": [50 + (i % 5) * 10 for i in range(21)],
            "memory.rss_bytes": [(100 + i * 10) << 20 for i in range(21)],
            "gpu0.utilization_pct": [None] + [60 + i for i in range(20)],
            "gpu0.memory_used_bytes": [(1 << 30) + i * (50 << 20) for i in range(21)],
            "gpu0.power_w": [40.0 + i for i in range(21)],
            "power.cpu_estimate_w": [6.0] * 21,
        }},
        stacks={"rate_hz": 100, "samples": 100, "collapsed": collapsed},
        collectors={"cpu": {"available": True, "reason": "", "errors": [], "disabled": False},
                    "gpu": {"available": True, "reason": "", "errors": ["nvmlDeviceGetPowerUsage: NVML_ERROR_UNKNOWN"],
                            "disabled": False},
                    "power": {"available": False, "reason": "no RAPL", "errors": [], "disabled": False}},
        annotations={"imports": {"processes": 1, "count": 3, "total_us": 250000, "how": "-X importtime",
                                 "slowest": [{"module": "torch", "self_us": 90000, "cumulative_us": 240000, "depth": 0,
                                              "parent": None},
                                             {"module": "torch._C", "self_us": 150000, "cumulative_us": 150000,
                                              "depth": 1, "parent": "torch"}],
                                 "slowest_self": []}},
    )
    profile.hotspots = hs.aggregate(collapsed, with_source=False)
    for spot in profile.hotspots:  # as energy_attribution writes them
        spot.update({"energy_j": spot["samples"] * 1.02, "energy_total_j": spot["total_samples"] * 1.02,
                     "energy_estimated": True, "energy_by_domain": {}})
    profile.annotations["energy_attribution"] = {"method": "per py-spy window: test", "estimate": True,
                                                 "domains": {}, "caveats": ["cpu: estimate, not a measurement"]}
    return profile


def test_report_renders_a_saved_profile(perfpilot_cli, tmp_path) -> None:
    path = tmp_path / "run.json"
    rich_profile().save(path)
    page, ss, folded = tmp_path / "r.html", tmp_path / "r.speedscope.json", tmp_path / "r.txt"
    result = perfpilot_cli("report", str(path), "--html", str(page), "--speedscope", str(ss), "--collapsed", str(folded),
                           env={"COLUMNS": "160"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("perfpilot summary", "hot spots (100 samples at 100 Hz)", "loss", "train.py:11",
                     "slowest imports", "torch._C", "collectors", "NVML_ERROR_UNKNOWN", "est."):
        assert expected in out, expected
    assert out.index("loss") < out.index("load")  # hottest first
    assert hs.parse_collapsed(folded.read_text()) == rich_profile().stacks["collapsed"]
    assert json.loads(ss.read_text())["$schema"].startswith("https://www.speedscope.app/")
    text = page.read_text()
    assert "ts-gpu-util" in text and "ts-power" in text and 'id="flamegraph"' in text
    assert "estimate, not a measurement" in text and "How energy is attributed" in text
    assert "torch._C" in text


def test_html_has_no_external_references() -> None:
    text = html_renderer.render(rich_profile())
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<link" not in text


def test_html_handles_a_profile_with_nothing_in_it() -> None:
    text = html_renderer.render(Profile())
    assert "No time series were recorded" in text and "No hot spots" in text


def test_flame_tree_sums_and_prunes() -> None:
    tree = html_renderer.flame_tree({"a (x.py:1);b (x.py:2)": 9999, "a (x.py:1);c (x.py:3)": 1})
    assert tree["value"] == 10000
    (a,) = tree["children"]
    assert a["value"] == 10000 and [c["name"] for c in a["children"]] == ["b (x.py:2)"]


def test_report_without_stacks_cannot_export_speedscope(perfpilot_cli, tmp_path) -> None:
    path = tmp_path / "run.json"
    Profile(annotations={"stacks_note": "py-spy is not installed"}).save(path)
    result = perfpilot_cli("report", str(path), "--speedscope", str(tmp_path / "s.json"))
    assert result.returncode == 125
    assert result.stderr.strip() == ("perfpilot: error: this profile has no Python stacks to export: py-spy is not "
                                     "installed (record again with stacks on (the default) for a Python target)")


@pytest.mark.parametrize("content, message", [
    (None, "cannot read profile"),
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "not a perfpilot Profile"),
    ('{"schema_version": 99}', "schema_version 99 is not supported"),
])
def test_report_bad_input_is_one_line(perfpilot_cli, tmp_path, content, message) -> None:
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    result = perfpilot_cli("report", str(path))
    assert result.returncode == 125
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_report_unwritable_output_is_one_line(perfpilot_cli, tmp_path) -> None:
    path = tmp_path / "run.json"
    rich_profile().save(path)
    result = perfpilot_cli("report", str(path), "-q", "--html", str(tmp_path / "missing-dir" / "r.html"))
    assert result.returncode == 125
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_profile_writes_every_rendering(perfpilot_cli, python_exe, tmp_path) -> None:
    out, page, ss, folded = (tmp_path / n for n in ("run.json", "r.html", "r.speedscope.json", "r.txt"))
    result = perfpilot_cli("profile", "-o", str(out), "--html", str(page), "--speedscope", str(ss),
                           "--collapsed", str(folded), "--", python_exe, str(HOT), "--seconds", "0.8")
    assert result.returncode == 0, result.stderr
    profile = Profile.load(out)
    assert hs.parse_collapsed(folded.read_text()) == profile.stacks["collapsed"]
    assert "crunch" in page.read_text()
    # `report` renders the same Profile the same way
    again = tmp_path / "again.txt"
    result = perfpilot_cli("report", str(out), "-q", "--collapsed", str(again))
    assert result.returncode == 0 and result.stdout == ""
    assert again.read_text() == folded.read_text()


def test_profile_export_without_stacks_warns_and_keeps_exit_code(perfpilot_cli, python_exe, tmp_path) -> None:
    out = tmp_path / "run.json"
    result = perfpilot_cli("profile", "--no-stacks", "-o", str(out), "--speedscope", str(tmp_path / "s.json"),
                           "--", python_exe, "-c", "raise SystemExit(4)")
    assert result.returncode == 4
    assert out.exists() and not (tmp_path / "s.json").exists()
    assert "not written" in result.stderr and "no Python stacks" in result.stderr


@pytest.mark.parametrize("width", [80, 100])
def test_hotspot_percentages_survive_a_narrow_terminal(width) -> None:
    """Long paths and code lines once made rich shrink every column evenly at 80
    columns, which squeezed the self %/total % columns out of the table entirely."""
    import io

    from rich.console import Console

    from perfpilot.profilers.renderers import terminal

    profile = rich_profile()
    for spot in profile.hotspots:
        spot["file"] = "/usr/lib/python3.11/multiprocessing/" + "deeply/nested/" * 3 + "connection.py"
        spot["short_file"] = None
        spot["function"] = "Connection._recv_bytes_" + spot["function"]
        spot["code"] = "result = (True, func(*args, **kwds))  # " + "x" * 60
    out = io.StringIO()
    terminal.render(profile, Console(file=out, width=width, color_system=None))
    table = out.getvalue().split("hot spots", 1)[1].split("energy: estimate")[0]
    header = table.splitlines()[1]
    assert "self %" in header and "total %" in header, table
    first = table.splitlines()[2]
    top = profile.hotspots[0]
    assert f"{top['self_pct']:.1f}" in first and top["function"] in first, table
    # the function and its file:line are never cut (a path wider than the terminal folds);
    # energy stays, on the file:line row
    joined = "".join(line.strip() for line in table.splitlines())
    assert f"{top['file']}:{top['line']}" in joined and "est." in table.splitlines()[3] + table.splitlines()[4], table
    assert all(len(line) <= width for line in out.getvalue().splitlines())


def test_html_draws_storage_io_from_the_cumulative_counters() -> None:
    """The io collector records cumulative io.read_bytes/io.write_bytes; the chart once
    looked for *_per_s series no collector writes, so I/O was never drawn."""
    profile = rich_profile()
    times = profile.series["t"]
    profile.series["values"]["io.write_bytes"] = [None if i % 5 else float(i * (1 << 20)) for i in range(len(times))]
    profile.series["values"]["io.read_bytes"] = [None if i % 5 else 0.0 for i in range(len(times))]
    text = html_renderer.render(profile)
    assert 'id="ts-io"' in text and "Storage I/O" in text
    # 5 MiB every 0.5 s -> 10 MiB/s
    rates = html_renderer.rates(times, profile.series["values"]["io.write_bytes"])
    assert [round(r / (1 << 20), 6) for r in rates if r is not None] == [10.0, 10.0, 10.0, 10.0]
    assert html_renderer.rates([0, 1, 2], [5.0, 2.0, 4.0]) == [None, 0.0, 2.0]


def test_html_time_axes_span_the_whole_run() -> None:
    """A series sampled once a second (the power estimate) got an axis of its own few
    points: one point drew as a chart from 1.04 s to 1.16 s."""
    profile = rich_profile()
    profile.series["values"]["power.cpu_estimate_w"] = [None] * 20 + [6.0]
    text = html_renderer.render(profile)
    power = text[text.index('"ts-power"'):]
    assert '"min":0,"max":2.0' in power.replace(" ", "")[:3000]


def test_a_kill_by_timeout_is_not_reported_as_a_plain_signal() -> None:
    """--timeout kills with SIGKILL: the summary must say perfpilot did it, or it reads
    like the OOM killer."""
    import io

    from rich.console import Console

    from perfpilot.profilers.renderers import terminal

    profile = Profile(target={"command": ["python", "long.py"], "exit_code": 137, "signal": 9, "timed_out": True},
                      summary={"wall_s": 1.0})
    out = io.StringIO()
    terminal.render(profile, Console(file=out, width=120, color_system=None))
    assert "killed by signal 9 (perfpilot stopped it: --timeout reached)" in out.getvalue()
    assert "--timeout reached" in html_renderer.render(profile)
    profile.target["timed_out"] = False
    out = io.StringIO()
    terminal.render(profile, Console(file=out, width=120, color_system=None))
    assert "killed by signal 9" in out.getvalue() and "perfpilot stopped it" not in out.getvalue()


def test_summary_shows_bytes_moved_by_calls_next_to_storage_bytes() -> None:
    """`sort big.txt` on a cached file read "io 0 B read": true for storage, but it
    reads as if perfpilot missed the 20 MB the program read."""
    import io

    from rich.console import Console

    from perfpilot.profilers.renderers import terminal

    profile = Profile(summary={"wall_s": 1.0, "io_read_bytes": 0, "io_write_bytes": 0,
                               "io_read_chars": 20 << 20, "io_write_chars": 1 << 20})
    out = io.StringIO()
    terminal.render(profile, Console(file=out, width=100, color_system=None))
    text = out.getvalue()
    assert "io storage    0 B read, 0 B written" in text
    assert "io calls      20.0 MiB read, 1.0 MiB written" in text
    page = html_renderer.render(profile)
    assert "I/O (storage)" in page and "20.0 MiB read" in page
