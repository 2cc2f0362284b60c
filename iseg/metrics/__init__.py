"""iseg.metrics."""
