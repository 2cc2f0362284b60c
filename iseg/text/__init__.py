"""Scene-text recognition: FACLSTM (focused-attention ConvLSTM) and the CRNN baseline,
their layers, decoding, metrics, synthetic data and readers.

Importing this package imports neither Keras nor TensorFlow (the synthetic renderer runs in
light worker processes); the model names below are loaded on first use.
"""

import importlib

_LAZY = {
    "ALPHANUMERIC": "iseg.text.charset", "Charset": "iseg.text.charset",
    "CentreMaskBranch": "iseg.text.layers", "ConvLSTMCell": "iseg.text.layers",
    "FocusedAttention": "iseg.text.layers", "FocusedAttentionDecoder": "iseg.text.layers",
    "CRNN": "iseg.text.models", "FACLSTM": "iseg.text.models",
    "build_text_model": "iseg.text.models",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'iseg.text' has no attribute {name!r}")
