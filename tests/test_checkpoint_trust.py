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

    import ldcache.checkpoint_trust  # noqa: F401  (installs the loader)

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
