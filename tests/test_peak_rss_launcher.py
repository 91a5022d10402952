"""Linux copies the launcher's RSS high-water mark into a child's rusage maxrss; a
small target launched from a big process must not be charged for the launcher, and
its own peak (VmHWM, read every tick for the root) must still be right."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def test_small_child_of_a_big_launcher_is_not_charged_for_the_launcher(tmp_path):
    hwm_file = tmp_path / "hwm"
    script = textwrap.dedent(f'''
        import json, sys
        from perfpilot.config import Settings
        from perfpilot.profilers.session import RunOptions, profile_command
        from perfpilot.registry import build_plugin_manager
        options = RunOptions(plugin_set=build_plugin_manager())
        ballast = bytearray(300 * 2**20)
        ballast[::4096] = b"1" * len(ballast[::4096])
        child = (
            "import time\\n"
            "b = bytearray(40 * 2**20); b[::4096] = b'1' * len(b[::4096]); del b\\n"
            "t = time.time()\\n"
            "while time.time() - t < 0.3: pass\\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\\n"
            "open({str(hwm_file)!r}, 'w').write(hwm)\\n"
        )
        small = profile_command([sys.executable, "-c", child], Settings(stacks=False), options)
        big = profile_command([sys.executable, "-c", "b = bytearray(500 * 2**20); b[::4096] = b'1' * len(b[::4096])"],
                              Settings(stacks=False), options)
        print(json.dumps([small.summary["peak_rss_bytes"], small.summary["peak_rss_source"],
                          big.summary["peak_rss_bytes"], big.summary["peak_rss_source"]]))
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    small, small_source, big, big_source = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    own_peak = int(hwm_file.read_text()) * 1024  # what the child itself saw as its peak
    assert small_source == "sampled"
    assert 40 * mib <= small < 120 * mib, small / mib  # not the launcher's 300+ MiB
    assert abs(small - own_peak) <= 0.05 * own_peak, (small / mib, own_peak / mib)
    assert big_source == "rusage"
    assert 500 * mib <= big < 560 * mib, big / mib


def test_a_short_program_under_a_big_launcher_gets_its_own_peak(tmp_path):
    """A program that allocates 64 MiB and exits at once (~30 ms, well inside one 100 ms
    tick), launched from a process with a 300 MiB high-water mark: its rusage maxrss is the
    launcher's, so the peak is its own VmHWM, read every 5 ms in its first second."""
    script = textwrap.dedent('''
        import json, sys
        from perfpilot.config import Settings
        from perfpilot.profilers.session import RunOptions, profile_command
        from perfpilot.registry import build_plugin_manager
        options = RunOptions(plugin_set=build_plugin_manager())
        ballast = bytearray(300 * 2**20)
        ballast[::4096] = b"1" * len(ballast[::4096])
        child = "b = bytearray(64 * 2**20); b[::4096] = b'1' * len(b[::4096])"
        runs = [profile_command([sys.executable, "-S", "-c", child], Settings(stacks=False), options) for _ in range(5)]
        print(json.dumps([[r.summary["peak_rss_bytes"], r.summary["peak_rss_source"], r.duration_s] for r in runs]))
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    for peak, source, duration in runs:
        assert source == "sampled"
        assert 64 * mib <= peak < 120 * mib, (peak / mib, duration, runs)
