"""iseg.models."""
