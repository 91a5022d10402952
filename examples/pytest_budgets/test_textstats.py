"""Budgets as markers, and a distribution measured with the perfpilot_measure fixture."""

from __future__ import annotations

import subprocess
import sys

import pytest

from textstats import corpus, top_words

TEXT = corpus()


@pytest.mark.perf_budget(cpu="200 ms", peak_rss="50 MB")
def test_top_words_within_budget():
    assert top_words(TEXT, 3)[0][1] > 1000


@pytest.mark.perf_budget(wall="2 s", cpu="1 s")
def test_cli_in_a_subprocess_is_counted():
    # the child's CPU time counts towards the cpu budget (it is waited for)
    out = subprocess.run([sys.executable, "-c", "import textstats; print(textstats.top_words(textstats.corpus(), 1))"],
                         capture_output=True, text=True, check=True)
    assert "the" in out.stdout or "," in out.stdout


def test_top_words_distribution(perfpilot_measure):
    dist = perfpilot_measure(top_words, TEXT, 5)
    assert dist.result == top_words(TEXT, 5)
    print(f"top_words: median {dist.median * 1e3:.2f} ms per call over {dist.rounds} rounds")
