"""`ldcache inspect`: summaries, per-location reports, pictures and dataset-wide statistics of a store."""
