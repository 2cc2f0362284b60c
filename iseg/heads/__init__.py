"""iseg.heads."""
