"""Code under test: word frequencies, one fast and one deliberately slow version.

``TEXTSTATS_SLOW=1`` swaps in the slow version, to see a comparison catch it.
"""

from __future__ import annotations

import collections
import os
import re

WORD = re.compile(r"[a-z']+")


def _top_words_fast(text: str, n: int = 10) -> list[tuple[str, int]]:
    return collections.Counter(WORD.findall(text.lower())).most_common(n)


def _top_words_slow(text: str, n: int = 10) -> list[tuple[str, int]]:
    words = WORD.findall(text.lower())
    counts = {w: words.count(w) for w in set(words)}  # quadratic on purpose
    return sorted(counts.items(), key=lambda kv: (-kv[1], words.index(kv[0])))[:n]


top_words = _top_words_slow if os.environ.get("TEXTSTATS_SLOW") == "1" else _top_words_fast


def corpus(words: int = 20000) -> str:
    vocabulary = "the quick brown fox jumps over lazy dog while perfpilot measures every test run".split()
    return " ".join(vocabulary[(i * 7 + i // 3) % len(vocabulary)] for i in range(words))
