"""Hot-spot aggregation and energy attribution (pure functions: no py-spy process)."""

from __future__ import annotations

import datetime as dt

import pytest

from perfpilot.profilers import energy_attribution, hotspots as hs
from perfpilot.profilers.profile import Profile
from perfpilot.profilers.stacks import Window


def test_parse_collapsed_skips_bad_lines_and_sums_duplicates() -> None:
    text = "a (x.py:1);b (x.py:2) 3\n\nnot a sample line\nbroken 12x\na (x.py:1);b (x.py:2) 2\nc (y.py:5) 1\n"
    counts = hs.parse_collapsed(text)
    assert counts == {"a (x.py:1);b (x.py:2)": 5, "c (y.py:5)": 1}


def test_process_command_with_semicolons_stays_one_frame() -> None:
    # multiprocessing's spawn command line is `python -c "...; spawn_main(...)"`
    text = ('process 10:"python app.py";process 11:"python -c from m import s; s(fd=5) --multiprocessing-fork";'
            "work (/w.py:3) 7\n")
    (stack, count), = hs.parse_collapsed(text).items()
    assert count == 7
    pid, frames = hs.split_stack(stack)
    assert pid == 11
    assert [f.name for f in frames] == ["work"]
    assert stack.split(";")[1] == 'process 11:"python -c from m import s, s(fd=5) --multiprocessing-fork"'


@pytest.mark.parametrize("text, name, file, line", [
    ("crunch (/a/b.py:17)", "crunch", "/a/b.py", 17),
    ("<lambda> (<string>:1)", "<lambda>", "<string>", 1),
    ("Thread._bootstrap (/usr/lib/python3.11/threading.py:995)", "Thread._bootstrap", "/usr/lib/python3.11/threading.py", 995),
    ("PyEval_EvalFrameDefault (libpython3.11.so.1.0)", "PyEval_EvalFrameDefault", "libpython3.11.so.1.0", None),
    ("weird frame", "weird frame", "", None),
])
def test_parse_frame(text: str, name: str, file: str, line: int | None) -> None:
    frame = hs.parse_frame(text)
    assert (frame.name, frame.file, frame.line) == (name, file, line)


def _source(tmp_path):
    src = tmp_path / "app.py"
    src.write_text("def main():\n    hot()\n    cold()\n\ndef hot():\n    x = 1  # the hot line\n    y = 2\n\n"
                   "def cold():\n    pass\n\ndef rec(n):\n    return rec(n - 1)\n")
    return str(src)


def test_aggregate_orders_by_self_and_points_at_the_hot_line(tmp_path) -> None:
    f = _source(tmp_path)
    collapsed = {
        f"main ({f}:2);hot ({f}:6)": 70,
        f"main ({f}:2);hot ({f}:7)": 10,
        f"main ({f}:3);cold ({f}:10)": 20,
    }
    spots = hs.aggregate(collapsed, cwd=str(tmp_path))
    assert [s["function"] for s in spots] == ["hot", "cold", "main"]
    hot = spots[0]
    assert hot["self_pct"] == 80.0 and hot["total_pct"] == 80.0 and hot["samples"] == 80
    assert hot["line"] == 6
    assert hot["code"] == "x = 1  # the hot line"
    assert hot["short_file"] == "app.py"
    assert [(ln["line"], ln["samples"]) for ln in hot["lines"]] == [(6, 70), (7, 10)]
    main = spots[2]
    # main never runs itself; its hottest line is the call that leads to the most samples
    assert main["samples"] == 0 and main["total_pct"] == 100.0 and main["line"] == 2
    assert main["code"] == "hot()"


def test_recursion_counts_a_function_once_per_sample(tmp_path) -> None:
    f = _source(tmp_path)
    spots = hs.aggregate({f"rec ({f}:13);rec ({f}:13);rec ({f}:13)": 10, f"main ({f}:2)": 10})
    rec = next(s for s in spots if s["function"] == "rec")
    assert rec["total_pct"] == 50.0 and rec["self_pct"] == 50.0
    assert rec["lines"][0]["total_samples"] == 10


def test_same_function_in_several_processes_is_merged() -> None:
    collapsed = {
        'process 1:"py main.py";process 2:"py worker";work (/w.py:3)': 40,
        'process 1:"py main.py";process 3:"py worker";work (/w.py:3)': 50,
        'process 1:"py main.py";wait (/m.py:9)': 10,
    }
    spots = hs.hotspots_from_pyspy("".join(f"{k} {v}\n" for k, v in collapsed.items()))
    assert spots[0]["function"] == "work" and spots[0]["self_pct"] == 90.0 and spots[0]["processes"] == 2


def test_empty_input_gives_no_hotspots() -> None:
    assert hs.aggregate({}) == []
    assert hs.hotspots_from_pyspy("") == []


def test_short_path() -> None:
    assert hs.short_path("/venv/lib/python3.11/site-packages/numpy/core/x.py") == "numpy/core/x.py"
    assert hs.short_path("/proj/src/app.py", "/proj") == "src/app.py"
    assert hs.short_path("<frozen importlib._bootstrap>") == "<frozen importlib._bootstrap>"


# ------------------------------------------------------------------ energy per hot spot

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _profile(energy: dict, series: dict, duration: float = 2.0) -> Profile:
    times = [i * 0.1 for i in range(int(duration * 10) + 1)]
    values = {name: [fn(t) for t in times] for name, fn in series.items()}
    return Profile(started_at=T0.isoformat(timespec="milliseconds"), duration_s=duration,
                   summary={"energy": energy}, series={"t": times, "values": values})


def _windows() -> list[Window]:
    t0 = T0.timestamp()
    from collections import Counter
    return [
        Window.from_collapsed(t0 + 0.0, t0 + 1.0, Counter({"main (/a.py:1);f (/a.py:5)": 30,
                                                          "main (/a.py:1);g (/a.py:9)": 10})),
        Window.from_collapsed(t0 + 1.0, t0 + 2.0, Counter({"main (/a.py:1);g (/a.py:9)": 50})),
    ]


def _attribute(profile: Profile) -> dict[str, dict]:
    windows = _windows()
    profile.hotspots = hs.aggregate({"main (/a.py:1);f (/a.py:5)": 30, "main (/a.py:1);g (/a.py:9)": 60})
    energy_attribution.attribute(profile, windows, T0.timestamp())
    return {s["function"]: s for s in profile.hotspots}


def test_energy_follows_power_over_time() -> None:
    # 10 W in the first second, 30 W in the second: 10 J then 30 J (40 J measured).
    profile = _profile({"cpu": {"joules": 40.0, "source": "rapl"}},
                       {"power.cpu_w": lambda t: 10.0 if t < 1.0 else 30.0})
    spots = _attribute(profile)
    # trapezoids blur the step over one 0.1 s tick; f only ran in the first window
    f, g = spots["f"], spots["g"]
    assert f["energy_j"] == pytest.approx(0.75 * 10.5, rel=0.05)
    assert f["energy_j"] + g["energy_j"] == pytest.approx(40.0, rel=1e-6)
    assert g["energy_j"] > 3 * f["energy_j"]
    assert spots["main"]["energy_j"] == 0 and spots["main"]["energy_total_j"] == pytest.approx(40.0)
    assert f["energy_estimated"] is False
    info = profile.annotations["energy_attribution"]
    assert info["domains"]["cpu"]["shape"] == "series power.cpu_w"
    assert info["domains"]["cpu"]["unattributed_j"] == pytest.approx(0.0, abs=1e-6)
    assert "share of the window's samples" in info["method"]


def test_energy_without_power_series_is_spread_evenly_and_estimates_are_labelled() -> None:
    profile = _profile({"cpu": {"joules": 20.0, "source": "estimate"}}, {})
    spots = _attribute(profile)
    assert spots["f"]["energy_j"] == pytest.approx(7.5)      # 10 J x 30/40
    assert spots["g"]["energy_j"] == pytest.approx(12.5)     # 10 J x 10/40 + 10 J
    assert spots["f"]["energy_estimated"] is True
    info = profile.annotations["energy_attribution"]
    assert info["estimate"] is True
    assert info["domains"]["cpu"]["shape"].startswith("uniform")
    assert any("estimate" in c for c in info["caveats"])


def test_energy_outside_sampled_windows_stays_unattributed() -> None:
    profile = _profile({"gpu0": {"joules": 30.0, "source": "nvml_energy"}},
                       {"gpu0.power_w": lambda t: 10.0}, duration=3.0)
    spots = _attribute(profile)
    info = profile.annotations["energy_attribution"]["domains"]["gpu0"]
    assert info["attributed_j"] == pytest.approx(20.0, rel=0.02)
    assert info["unattributed_j"] == pytest.approx(10.0, rel=0.05)
    assert spots["f"]["energy_by_domain"]["gpu0"] == pytest.approx(7.5, rel=0.02)


def test_no_energy_figures_says_so() -> None:
    profile = _profile({}, {})
    spots = _attribute(profile)
    assert "energy_j" not in spots["f"]
    assert "no energy figures" in profile.annotations["energy_attribution"]["note"]


def test_power_series_name() -> None:
    assert energy_attribution.power_series_name("cpu", ["power.cpu_w", "cpu.utilization_pct"]) == "power.cpu_w"
    assert energy_attribution.power_series_name("gpu0", ["gpu0.power_w"]) == "gpu0.power_w"
    assert energy_attribution.power_series_name("package0", ["power.rapl_package0_w"]) == "power.rapl_package0_w"
    assert energy_attribution.power_series_name("dram", ["cpu.utilization_pct"]) is None


def test_stacks_without_code_frames_are_dropped() -> None:
    counts = hs.parse_collapsed('process 5:"python x.py" 3\nprocess 5:"python x.py";f (x.py:1) 2\n')
    assert counts == {'process 5:"python x.py";f (x.py:1)': 2}


def test_command_line_with_newlines_stays_one_stack() -> None:
    # python -c "...multi-line..." puts newlines into py-spy's process frame
    text = 'process 12:"python -c \nimport time\nwhile 1: pass";<module> (<string>:3) 7\nmain (/a.py:1) 2\n'
    counts = hs.parse_collapsed(text)
    assert sum(counts.values()) == 9 and len(counts) == 2
    spots = hs.aggregate(counts)
    assert {s["function"] for s in spots} == {"<module>", "main"}
