"""The benchmark perfpilot runs: a deterministic synthetic text, analysed once."""

from __future__ import annotations

import random
import sys

from wordstats import analyze


def make_text(n_words: int, vocabulary: int, seed: int = 42) -> str:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(vocabulary)]
    vocab += ["don't", "it's", "o'clock"]
    # Zipf-like: a few words are very common, most are rare.
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    words = rng.choices(vocab, weights=weights, k=n_words)
    lines = [" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, len(words), 12)]
    return "\n".join(lines)


if __name__ == "__main__":
    n_words = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(analyze(make_text(n_words, vocabulary=1500)), end="")
