"""Word statistics for a text: a deliberately slow implementation for perfpilot to improve."""

from wordstats.textstats import analyze, frequencies, render, tokenize, top_words, unique_words

__all__ = ["analyze", "frequencies", "render", "tokenize", "top_words", "unique_words"]
