"""`ldcache demo`: the embedded shapes dataset and the main job on it, end to end."""
