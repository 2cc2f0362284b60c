"""Segmentation models: `SegmentationModel`, `build_model` and the named model zoo."""

from iseg.models.builder import MODELS, build_model, build_model_from_name, parse_model_name
from iseg.models.segmentation_model import SegmentationModel
