"""iseg: semantic segmentation models (CAR, CAA, KSAC and baselines) for Keras 3."""

__version__ = "0.1.0"
