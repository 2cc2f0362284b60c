"""iseg.training."""
