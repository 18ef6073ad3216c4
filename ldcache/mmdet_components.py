"""Imported by configs (``custom_imports``): registers ldcache's components with mmengine/mmdet."""
from . import (cached_ld_head, checkpoint_trust, ld_cache_check_hook, load_ld_targets,  # noqa: F401
               online_ld_gfl, runner)
