"""Imported by configs (``custom_imports``): registers ldcache's components with mmengine/mmdet."""
from . import checkpoint_trust, runner  # noqa: F401  (import side effect: registration)
