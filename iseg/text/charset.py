"""Character sets: words <-> token ids.

Token ids: 0 is the end-of-word symbol of the attention decoder and the blank of CTC,
characters are 1..K, and -1 pads a label after its end-of-word symbol. A label of a word
of n <= max_length characters is `[c1, ..., cn, 0, -1, ...]` of length max_length + 1.
"""

import string

import numpy as np

#: The default: case-insensitive alphanumeric, as the text-recognition benchmarks score.
ALPHANUMERIC = string.digits + string.ascii_lowercase
EOS = 0
PAD = -1


class Charset:
    """An ordered set of characters. With `case_sensitive=False` words are lower-cased
    before encoding (the characters must then be lower case)."""

    def __init__(self, chars=ALPHANUMERIC, case_sensitive=False):
        chars = str(chars)
        if not chars:
            raise ValueError("charset: no characters given")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"charset: repeated characters {''.join(dup)!r}")
        if not case_sensitive and chars != chars.lower():
            raise ValueError(f"charset {chars!r}: upper-case characters in a "
                             "case-insensitive charset")
        self.chars = chars
        self.case_sensitive = bool(case_sensitive)
        self._index = {c: i + 1 for i, c in enumerate(chars)}

    @property
    def num_classes(self):
        """Characters plus the end-of-word / blank symbol."""
        return len(self.chars) + 1

    def normalize(self, word):
        """The word as the charset reads it: lower-cased (case-insensitive charsets)."""
        return word if self.case_sensitive else word.lower()

    def unknown(self, word):
        """The characters of `word` (normalised) that are not in the charset."""
        return sorted({c for c in self.normalize(word) if c not in self._index})

    def encode(self, word, max_length):
        """Label of `word`: int32 `[max_length + 1]` (characters, end-of-word, padding).

        Raises ValueError naming the word when it is too long or has unknown characters."""
        word = self.normalize(word)
        bad = self.unknown(word)
        if bad:
            raise ValueError(f"word {word!r}: characters {''.join(bad)!r} are not in the "
                             f"charset {self.chars!r}")
        if len(word) > max_length:
            raise ValueError(f"word {word!r} has {len(word)} characters, more than "
                             f"max_length={max_length}")
        out = np.full(max_length + 1, PAD, np.int32)
        out[:len(word)] = [self._index[c] for c in word]
        out[len(word)] = EOS
        return out

    def decode(self, ids):
        """The word of a token sequence, up to its first end-of-word symbol (padding and
        out-of-range ids are skipped)."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS:
                break
            if 1 <= i <= len(self.chars):
                out.append(self.chars[i - 1])
        return "".join(out)

    def get_config(self):
        return dict(chars=self.chars, case_sensitive=self.case_sensitive)
