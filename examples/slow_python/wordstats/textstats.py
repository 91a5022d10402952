"""Word statistics. Correct, tested, and slow in ways a profiler shows and a reviewer
would flag (this file is the example's target; keep the tests green)."""

from __future__ import annotations

import re


def tokenize(text: str) -> list[str]:
    """Lower-case words (letters and apostrophes), in order of appearance."""
    words = []
    for line in text.splitlines():
        pattern = re.compile(r"[a-z']+")
        for word in pattern.findall(line.lower()):
            word = word.strip("'")
            if word:
                words.append(word)
    return words


def unique_words(words: list[str]) -> list[str]:
    """Distinct words, in order of first appearance."""
    seen = []
    for word in words:
        if word not in seen:
            seen.append(word)
    return seen


def frequencies(words: list[str]) -> dict[str, int]:
    """How often each word occurs, in order of first appearance."""
    return {word: words.count(word) for word in unique_words(words)}


def top_words(freqs: dict[str, int], n: int) -> list[str]:
    """The ``n`` most frequent words; ties broken alphabetically."""
    result: list[str] = []
    for _ in range(min(n, len(freqs))):
        best = min((w for w in freqs if w not in result), key=lambda w: (-freqs[w], w))
        result.append(best)
    return result


def render(freqs: dict[str, int], top: list[str]) -> str:
    """A small text report: totals, then one line per top word."""
    out = ""
    out += f"words: {sum(freqs.values())}\n"
    out += f"distinct: {len(freqs)}\n"
    for word in top:
        out += f"{word}: {freqs[word]}\n"
    return out


def analyze(text: str, n: int = 10) -> str:
    words = tokenize(text)
    freqs = frequencies(words)
    return render(freqs, top_words(freqs, n))
