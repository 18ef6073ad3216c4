from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def shapes_root() -> Path:
    """The small kwcoco shapes dataset, built once and cached in $LDCACHE_HOME between runs."""
    from ldcache.shapes_dataset import ShapesSpec, ensure_shapes_dataset

    root = ensure_shapes_dataset(ShapesSpec())
    os.environ["LDCACHE_DATA_ROOT"] = str(root) + "/"
    return root


@pytest.fixture
def private_home(tmp_path, monkeypatch) -> Path:
    """A fresh $LDCACHE_HOME (signing key included) for tests that must not touch the user's."""
    home = tmp_path / "ldcache-home"
    monkeypatch.setenv("LDCACHE_HOME", str(home))
    return home
