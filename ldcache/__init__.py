"""ldcache: offline Localization Distillation caches for mmdetection."""

__version__ = "0.1.0"
