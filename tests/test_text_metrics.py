"""Word accuracy and normalised edit distance against hand-computed cases."""

import pytest

from iseg.text.metrics import WordMetrics, edit_distance, normalize_word, normalized_edit_distance


def test_normalize_word():
    assert normalize_word("Hello, World!") == "helloworld"
    assert normalize_word("A-1 b_2") == "a1b2"
    assert normalize_word("") == ""


@pytest.mark.parametrize("a,b,d", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3),
                                   ("abc", "abc", 0), ("abc", "acb", 2), ("flaw", "lawn", 2)])
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == d


def test_normalized_edit_distance():
    assert normalized_edit_distance("abd", "ABC") == pytest.approx(1 / 3)
    assert normalized_edit_distance("Sitting!", "kitten") == pytest.approx(3 / 7)
    assert normalized_edit_distance("", "") == 0.0
    assert normalized_edit_distance("--", "x") == 1.0


def test_word_metrics_stream():
    m = WordMetrics()
    m.update(["Hello", "w0rld"], ["hello!", "world"])
    m.update(["abc"], ["ABC"])
    r = m.result()
    assert r["num_images"] == 3
    assert r["word_accuracy"] == pytest.approx(2 / 3)
    assert r["normalized_edit_distance"] == pytest.approx((0 + 1 / 5 + 0) / 3)
    with pytest.raises(ValueError):
        m.update(["a"], ["a", "b"])
