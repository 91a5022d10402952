"""Linux copies the launcher's RSS high-water mark into a child's rusage maxrss; a
small target launched from a big process must not be charged for the launcher."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def test_small_child_of_a_big_launcher_is_not_charged_for_the_launcher():
    script = textwrap.dedent('''
        import json
        from perfpilot.config import Settings
        from perfpilot.profilers.session import profile_command
        ballast = bytearray(300 * 2**20)
        ballast[::4096] = b"1" * len(ballast[::4096])
        small = profile_command([__import__("sys").executable, "-c", "import time; b = bytearray(40 * 2**20); b[::4096] = b'1' * len(b[::4096]); time.sleep(1.2)"], Settings(stacks=False))
        big = profile_command([__import__("sys").executable, "-c", "b = bytearray(500 * 2**20); b[::4096] = b'1' * len(b[::4096])"], Settings(stacks=False))
        print(json.dumps([small.summary["peak_rss_bytes"], small.summary["peak_rss_source"],
                          big.summary["peak_rss_bytes"], big.summary["peak_rss_source"]]))
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    small, small_source, big, big_source = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    assert small_source == "sampled"
    assert 40 * mib <= small < 120 * mib, small / mib  # not the launcher's 300+ MiB
    assert big_source == "rusage"
    assert 500 * mib <= big < 560 * mib, big / mib
