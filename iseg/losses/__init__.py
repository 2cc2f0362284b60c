"""iseg.losses."""
