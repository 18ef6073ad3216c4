"""mmdet's own LD configs as they are: dumped, trained cached and online, equal to mmdet's LDHead."""
import copy
import json
import os
import subprocess

import pytest
import torch

from conftest import BIN, CONFIGS, LDCACHE, REPO, TEACHER_CONFIG, unreachable_port

LD_CONFIG = CONFIGS / "tiny" / "ld_r18_tiny_mmdet.py"
# LDHead's four losses, each a list over the FPN levels.
LD_HEAD_LOSSES = ("loss_cls", "loss_bbox", "loss_dfl", "loss_ld")


def _teacher_options(teacher) -> list[str]:
    """--cfg-options giving the tiny LD config the tests' random teacher (its config and checkpoint)."""
    return ["--cfg-options", f"model.teacher_config={TEACHER_CONFIG}", "--cfg-options", f"model.teacher_ckpt={teacher}"]


def _ldcache(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([LDCACHE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def ld_store(shapes_root, random_teacher, tmp_path_factory):
    """mmdet's LD config (the tiny one inheriting it) dumped, in fp32: every value exactly the teacher's."""
    out = tmp_path_factory.mktemp("ld") / "teacher.zarr"
    result = _ldcache("dump-teacher", LD_CONFIG, *_teacher_options(random_teacher), "--out", out, "--workers", "0",
                      "--device", "cpu", "--dtype", "fp32", "--block-size", "16")
    assert result.returncode == 0, result.stderr[-3000:]
    # Where each input came from, said in a few lines.
    said = " ".join((result.stdout + result.stderr).split())
    assert f"teacher {TEACHER_CONFIG}" in said and "Main ATSSAssigner(topk=9), VLR band" in said
    assert "its student has no VLR term: --region main would store its Main rows alone" in said  # LDHead's
    return out


def _ld_config(teacher, **options):
    from ldcache.domain.ld_config import load_config

    return load_config(LD_CONFIG, {"model.teacher_config": str(TEACHER_CONFIG), "model.teacher_ckpt": str(teacher),
                                   **options})


def test_the_tiny_config_is_mmdet_s_ld_config_with_sizes_and_data_changed(random_teacher):
    from ldcache.domain.ld_config import config_file, load_config

    mmdet_cfg = load_config("mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py")
    tiny = _ld_config(random_teacher)
    assert config_file("mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py").is_file()
    for cfg in (mmdet_cfg, tiny):
        assert cfg.model.type == "KnowledgeDistillationSingleStageDetector" and cfg.model.bbox_head.type == "LDHead"
    assert tiny.model.bbox_head.loss_ld == mmdet_cfg.model.bbox_head.loss_ld
    assert tiny.model.train_cfg == mmdet_cfg.model.train_cfg


def test_cached_losses_equal_mmdet_s_ld_detector_on_the_same_batch(ld_store, random_teacher, shapes_root):
    """mmdet's KnowledgeDistillationSingleStageDetector with LDHead (its teacher run live) and the
    student ldcache makes of the same config (its teacher's outputs from the store), with the same
    weights on the same batch: the same four losses, level by level."""
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.dataset import pseudo_collate

    from ldcache.train import install
    from ldcache.train.mmdet_ld import as_cached_student, as_online_student

    register_all_modules()
    install()
    cfg = _ld_config(random_teacher, **{"train_dataloader.dataset.pipeline.3.prob": 0.0})
    torch.manual_seed(1)
    mmdet_model = MODELS.build(cfg.model)
    mmdet_model.init_weights()
    cached_cfg, online_cfg = copy.deepcopy(cfg), copy.deepcopy(cfg)
    as_cached_student(cached_cfg, str(ld_store))
    as_online_student(online_cfg)
    cached, online = MODELS.build(cached_cfg.model), MODELS.build(online_cfg.model)
    for model in (cached, online):
        model.load_state_dict(mmdet_model.state_dict())  # the student's weights (the teacher is not a submodule)
    # Images of one size: the batch adds no padding, so the live teacher sees each image as the dump did.
    dataset = DATASETS.build(cached_cfg.train_dataloader.dataset)
    sizes = [(dataset.get_data_info(i)["height"], dataset.get_data_info(i)["width"]) for i in range(len(dataset))]
    batch = mmdet_model.data_preprocessor(pseudo_collate([dataset[i] for i, s in enumerate(sizes)
                                                          if s == sizes[0]][:4]), True)
    losses = {}
    for name, model in (("mmdet", mmdet_model), ("cached", cached), ("online", online)):
        model.train()
        with torch.no_grad():
            losses[name] = model.loss(batch["inputs"], copy.deepcopy(batch["data_samples"]))
    assert float(sum(losses["mmdet"]["loss_ld"])) > 0
    for term in LD_HEAD_LOSSES:
        for level, expected in enumerate(losses["mmdet"][term]):
            for name in ("cached", "online"):
                assert float(losses[name][term][level]) == pytest.approx(float(expected), rel=1e-5, abs=1e-8), \
                    f"{name} {term} level {level}"
    assert set(losses["cached"]) >= set(LD_HEAD_LOSSES) and "loss_kd" not in losses["cached"]


def test_ld_head_s_box_normalisation_differs_from_gfl_s_below_a_weight_sum_of_one():
    """The switch that makes the box losses LDHead's: a confidence sum of 0.3 divides them by 0.3
    (LDHead) instead of 1 (GFLHead)."""
    from types import SimpleNamespace

    from ldcache.train.cached_ld_head import CachedLDHead

    level = SimpleNamespace(ld_weight={"loss_ld": torch.tensor([0.1, 0.2, 0.0])})
    losses = {"loss_bbox": [torch.tensor(3.0)], "loss_dfl": [torch.tensor(0.6)], "loss_cls": [torch.tensor(1.0)]}
    CachedLDHead._divide_box_losses_as_ld_head(losses, [level])
    assert float(losses["loss_bbox"][0]) == pytest.approx(3.0 / 0.3, rel=1e-5)
    assert float(losses["loss_dfl"][0]) == pytest.approx(0.6 / 0.3, rel=1e-5)
    assert float(losses["loss_cls"][0]) == 1.0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mmdet_ld_config_trains_cached_and_online_then_evaluates(ld_store, random_teacher, shapes_root, tmp_path):
    small = ["--cfg-options", "train_dataloader.dataset.indices=8", "--cfg-options", "val_dataloader.dataset.indices=4"]
    cached = _ldcache("train-student", LD_CONFIG, "--cache", ld_store, "--work-dir", tmp_path / "cached",
                      *_teacher_options(random_teacher), *small)
    assert cached.returncode == 0, cached.stderr[-3000:]
    said = cached.stdout + cached.stderr
    assert "KnowledgeDistillationSingleStageDetector -> GFL" in said and "LDHead -> CachedLDHead" in said
    assert "LoadLDTargets" in said and (tmp_path / "cached" / "epoch_1.pth").is_file()
    online = _ldcache("train-student", LD_CONFIG, "--online", "--teacher-ckpt", random_teacher,
                      "--work-dir", tmp_path / "online", "--cfg-options", f"model.teacher_config={TEACHER_CONFIG}",
                      *small)
    assert online.returncode == 0, online.stderr[-3000:]
    assert "-> OnlineLDGFL" in online.stdout + online.stderr and (tmp_path / "online" / "epoch_1.pth").is_file()
    evaluated = _ldcache("evaluate", LD_CONFIG, tmp_path / "cached" / "epoch_1.pth", "--json",
                         "--work-dir", tmp_path / "eval", *_teacher_options(random_teacher))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert set(json.loads(evaluated.stdout)) >= {"bbox_mAP", "bbox_mAP_50", "bbox_mAP_75"}  # stdout: the JSON alone


def _refusal(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


def test_a_teacher_checkpoint_url_that_cannot_be_fetched_asks_for_teacher_ckpt(shapes_root, tmp_path):
    with unreachable_port() as port:
        url = f"http://127.0.0.1:{port}/gfl_teacher.pth"
        result = _ldcache("dump-teacher", LD_CONFIG, "--cfg-options", f"model.teacher_config={TEACHER_CONFIG}",
                          "--cfg-options", f"model.teacher_ckpt={url}", "--out", tmp_path / "s.zarr",
                          env={"TORCH_HOME": str(tmp_path / "torch")}, timeout=120)
    said = _refusal(result)
    assert f"cannot fetch the teacher checkpoint {url}" in said and "--teacher-ckpt" in said
    assert not (tmp_path / "s.zarr").exists()


def test_a_fetched_checkpoint_is_kept_only_when_its_sha256_matches_its_name(tmp_path, monkeypatch):
    import hashlib
    import http.server
    import threading
    from functools import partial

    from ldcache.domain.ld_config import fetched_checkpoint
    from ldcache.errors import BadInputError

    served = tmp_path / "served"
    served.mkdir()
    content = b"teacher weights"
    digest = hashlib.sha256(content).hexdigest()
    (served / f"teacher-{digest[:8]}.pth").write_bytes(content)
    (served / "teacher-00000000.pth").write_bytes(content)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert fetched_checkpoint(f"{url}/teacher-{digest[:8]}.pth").read_bytes() == content
        with pytest.raises(BadInputError, match="cannot fetch the teacher checkpoint .*teacher-00000000.pth"):
            fetched_checkpoint(f"{url}/teacher-00000000.pth")
    finally:
        server.shutdown()
    assert not list((tmp_path / "torch").rglob("teacher-00000000.pth"))


def test_a_checkpoint_cache_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch):
    """A hub cache where the download cannot go (here a file stands where its folder should be)
    says where and how to fix it, before any request."""
    from ldcache.domain.ld_config import fetched_checkpoint
    from ldcache.errors import BadInputError

    (tmp_path / "torch").write_text("not a folder")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(BadInputError, match="cannot download the teacher checkpoint .* set TORCH_HOME"):
        fetched_checkpoint("http://127.0.0.1:9/teacher.pth")


def test_ranks_fetching_one_checkpoint_url_download_it_once(tmp_path, monkeypatch):
    """torchrun ranks resolve a URL checkpoint at once: one download, every rank gets the file."""
    import http.server
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    from ldcache.domain.ld_config import fetched_checkpoint

    served = tmp_path / "served"
    served.mkdir()
    (served / "teacher.pth").write_bytes(b"teacher weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    requests = []

    class SlowHandler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            time.sleep(0.5)  # long enough for every rank to ask while the first download runs
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(SlowHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/teacher.pth"
        with ThreadPoolExecutor(4) as ranks:
            paths = list(ranks.map(lambda _: fetched_checkpoint(url), range(4)))
    finally:
        server.shutdown()
    assert requests == ["/teacher.pth"]
    assert len(set(paths)) == 1 and paths[0].read_bytes() == b"teacher weights"


@pytest.mark.parametrize("option,expected", [
    ("model.bbox_head.reg_max=8", "reg_max: teacher 16 vs student 8, set by model.bbox_head.reg_max"),
    ("model.bbox_head.anchor_generator.octave_base_scale=4",
     "octave_base_scale: teacher 8.0 vs student 4.0"),
    ("model.bbox_head.type=RetinaHead", "cannot build the student's head RetinaHead"),
])
def test_a_student_that_cannot_learn_from_the_teacher_s_cache_is_refused(option, expected, random_teacher,
                                                                         shapes_root, tmp_path):
    result = _ldcache("dump-teacher", LD_CONFIG, random_teacher, "--cfg-options", option,
                      "--cfg-options", f"model.teacher_config={TEACHER_CONFIG}", "--out", tmp_path / "s.zarr")
    assert expected in _refusal(result)
    assert not (tmp_path / "s.zarr").exists()


def test_a_teacher_without_edge_distributions_is_refused(random_teacher, shapes_root, tmp_path):
    result = _ldcache("dump-teacher", LD_CONFIG, random_teacher, "--out", tmp_path / "s.zarr", "--cfg-options",
                      "model.teacher_config=mmdet::retinanet/retinanet_r18_fpn_1x_coco.py")
    assert "RetinaHead predicts no edge distributions" in _refusal(result)


def test_train_student_says_what_an_ld_config_needs(random_teacher, shapes_root):
    result = _ldcache("train-student", LD_CONFIG, *_teacher_options(random_teacher))
    assert "give --cache STORE (cached LD) or --online" in _refusal(result)


def test_python_cli_py_is_the_ldcache_app():
    from_checkout = subprocess.run(["python", "cli.py", "--help"], cwd=REPO, capture_output=True, text=True,
                                   env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    installed = subprocess.run([LDCACHE, "--help"], capture_output=True, text=True)
    assert from_checkout.returncode == 0 and from_checkout.stdout == installed.stdout
    assert "dump-teacher" in installed.stdout and "Usage: ldcache" in " ".join(installed.stdout.split())
