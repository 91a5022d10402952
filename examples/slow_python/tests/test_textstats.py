from wordstats import analyze, frequencies, render, tokenize, top_words, unique_words


def test_tokenize_keeps_apostrophes_and_lowercases():
    assert tokenize("Don't panic.\nIt's 5 O'Clock!") == ["don't", "panic", "it's", "o'clock"]


def test_tokenize_strips_quotes_around_words():
    assert tokenize("'quoted' words''") == ["quoted", "words"]


def test_unique_words_keeps_first_appearance_order():
    assert unique_words(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_frequencies_count_and_order():
    assert list(frequencies(["b", "a", "b", "c", "b"]).items()) == [("b", 3), ("a", 1), ("c", 1)]


def test_top_words_ties_alphabetical():
    assert top_words({"x": 2, "b": 2, "a": 1, "c": 3}, 3) == ["c", "b", "x"]
    assert top_words({"a": 1}, 5) == ["a"]


def test_render_and_analyze():
    assert render({"a": 2, "b": 1}, ["a"]) == "words: 3\ndistinct: 2\na: 2\n"
    assert analyze("the cat and the hat. The end", n=2) == "words: 7\ndistinct: 5\nthe: 3\nand: 1\n"
