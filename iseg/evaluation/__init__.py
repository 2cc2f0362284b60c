"""Evaluation: inference modes (whole, sliding window, multi-scale, flip) and scoring.

`iseg.evaluation.results` (writing results files) does not import TensorFlow; the names
below are imported on first use.
"""

from iseg.evaluation.results import results_name, write_results

_LAZY = {"Evaluator": "evaluator", "make_evaluator": "evaluator",
         "predict_logits": "inference", "sliding_window_logits": "inference"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'iseg.evaluation' has no attribute {name!r}")
    import importlib  # pylint: disable=import-outside-toplevel

    return getattr(importlib.import_module(f"iseg.evaluation.{_LAZY[name]}"), name)


__all__ = ["Evaluator", "make_evaluator", "predict_logits", "results_name",
           "sliding_window_logits", "write_results"]
