"""Where ldcache keeps what it builds for itself."""
from __future__ import annotations

import os
from pathlib import Path


def ldcache_home() -> Path:
    """$LDCACHE_HOME, or ~/.cache/ldcache: generated datasets, the checkpoint signing key."""
    return Path(os.environ.get("LDCACHE_HOME", Path.home() / ".cache" / "ldcache"))
