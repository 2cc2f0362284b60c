"""Word accuracy and normalised edit distance, as the text-recognition benchmarks score:
both strings lower-cased and reduced to ASCII letters and digits first."""

import re

_NOT_ALNUM = re.compile(r"[^0-9a-z]")


def normalize_word(word):
    """Lower case, only ASCII letters and digits ("Hello, World!" -> "helloworld")."""
    return _NOT_ALNUM.sub("", word.lower())


def edit_distance(a, b):
    """Levenshtein distance (insertions, deletions, substitutions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalized_edit_distance(prediction, truth):
    """edit distance / max(len) of the normalised strings (0 when both are empty)."""
    p, t = normalize_word(prediction), normalize_word(truth)
    longest = max(len(p), len(t))
    return edit_distance(p, t) / longest if longest else 0.0


class WordMetrics:
    """Streaming word accuracy and mean normalised edit distance."""

    def __init__(self):
        self.count = 0
        self.correct = 0
        self.ned_sum = 0.0

    def update(self, predictions, truths):
        for p, t in zip(predictions, truths, strict=True):
            self.count += 1
            self.correct += normalize_word(p) == normalize_word(t)
            self.ned_sum += normalized_edit_distance(p, t)

    def result(self):
        n = max(self.count, 1)
        return {"num_images": self.count, "word_accuracy": self.correct / n,
                "normalized_edit_distance": self.ned_sum / n}
