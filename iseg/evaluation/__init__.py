"""iseg.evaluation."""
