"""Evaluation: inference modes (whole, sliding window, multi-scale, flip) and scoring."""

from iseg.evaluation.evaluator import Evaluator, make_evaluator, write_results
from iseg.evaluation.inference import predict_logits, sliding_window_logits
