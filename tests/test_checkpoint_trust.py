import os
import pickle

import pytest
import torch

from ldcache.errors import UntrustedCheckpointError

# A planted file is a plain pickle, which torch's weights-only reader warns about before refusing it.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
from ldcache.checkpoint_trust import (is_trusted_checkpoint,
                                      load_checkpoint_file, sign_checkpoint)


class _Payload:
    """Unpickling this runs a shell command: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_malicious(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "meta": _Payload(marker)}, f)


def test_malicious_checkpoint_is_refused_not_executed(tmp_path, private_home):
    ckpt, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    _write_malicious(ckpt, marker)
    with pytest.raises(UntrustedCheckpointError, match="not written by ldcache"):
        load_checkpoint_file(ckpt)
    assert not marker.exists()


def test_mmengine_loader_goes_through_the_safe_path(tmp_path, private_home):
    from mmengine.runner.checkpoint import CheckpointLoader

    from ldcache.checkpoint_trust import install

    install()
    ckpt, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    _write_malicious(ckpt, marker)
    with pytest.raises(UntrustedCheckpointError):
        CheckpointLoader.load_checkpoint(str(ckpt))
    assert not marker.exists()


def test_plain_weights_from_elsewhere_load_weights_only(tmp_path, private_home):
    ckpt = tmp_path / "zoo.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"CLASSES": ("a", "b")}}, ckpt)
    assert not is_trusted_checkpoint(ckpt)
    assert torch.equal(load_checkpoint_file(ckpt)["state_dict"]["w"], torch.ones(2))


def test_signed_checkpoint_loads_fully_until_it_is_changed(tmp_path, private_home):
    import numpy as np

    ckpt = tmp_path / "own.pth"
    torch.save({"meta": {"seed": np.int64(3)}, "state_dict": {}}, ckpt)
    with pytest.raises(UntrustedCheckpointError):
        load_checkpoint_file(ckpt)  # numpy objects need full unpickling
    sign_checkpoint(ckpt)
    assert load_checkpoint_file(ckpt)["meta"]["seed"] == 3
    with open(ckpt, "ab") as f:
        f.write(b"tampered")
    assert not is_trusted_checkpoint(ckpt)
    with pytest.raises(UntrustedCheckpointError):
        load_checkpoint_file(ckpt)


def test_signature_from_another_users_key_is_not_trusted(tmp_path, monkeypatch):
    ckpt = tmp_path / "own.pth"
    torch.save({"state_dict": {}}, ckpt)
    monkeypatch.setenv("LDCACHE_HOME", str(tmp_path / "alice"))
    sign_checkpoint(ckpt)
    assert is_trusted_checkpoint(ckpt)
    monkeypatch.setenv("LDCACHE_HOME", str(tmp_path / "mallory"))
    assert not is_trusted_checkpoint(ckpt)


# The functions of other libraries that ldcache may replace, by name, printed as a JSON list of
# the names whose function is not the one `before` holds.
_IDENTITIES = """
import json, sys
import mmcv.ops, torch
from mmengine.runner import checkpoint

def functions():
    return {"mmcv.ops.nms": mmcv.ops.nms, "mmcv.ops.nms.nms": sys.modules["mmcv.ops.nms"].nms,
            "torch.load": torch.load, "mmengine.runner.checkpoint.load_from_local": checkpoint.load_from_local,
            **{f"CheckpointLoader scheme {p!r}": f for p, f in checkpoint.CheckpointLoader._schemes.items()}}

def changed(before):
    after = functions()
    return sorted(k for k in before.keys() | after.keys() if before.get(k) is not after.get(k))

before = functions()
"""


def _run(code: str) -> list:
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _IDENTITIES + code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_ldcache_changes_no_other_library_until_installed():
    from ldcache.train.nms import mmcv_has_cuda_ops

    imported, installed = _run("""
import importlib, pkgutil
import ldcache
for module in pkgutil.walk_packages(ldcache.__path__, "ldcache."):
    importlib.import_module(module.name)
imported = changed(before)
import ldcache.train
ldcache.train.install()
print(json.dumps([imported, changed(before)]))
""")
    assert imported == []
    nms = ["mmcv.ops.nms", "mmcv.ops.nms.nms"] if not mmcv_has_cuda_ops() else []
    assert installed == sorted(["CheckpointLoader scheme ''", *nms])


def test_building_the_ldcache_runner_installs_the_loader_and_the_nms_routing(shapes_root, tmp_path, private_home):
    from conftest import CONFIGS
    from ldcache.train.nms import mmcv_has_cuda_ops

    installed, loader = _run(f"""
from ldcache.train.runner import LDCacheRunner, runner_from_config
runner = runner_from_config({str(CONFIGS / "tiny/gfl_r18_tiny.py")!r}, {str(tmp_path)!r})
assert isinstance(runner, LDCacheRunner)
print(json.dumps([changed(before), checkpoint.CheckpointLoader._schemes[""].__name__]))
""")
    nms = ["mmcv.ops.nms", "mmcv.ops.nms.nms"] if not mmcv_has_cuda_ops() else []
    assert installed == sorted(["CheckpointLoader scheme ''", *nms])
    assert loader == "load_from_local_signed"
