"""NMS for CUDA tensors with an mmcv built without CUDA ops: torchvision keeps what mmcv keeps."""
import pytest
import torch

from ldcache.train.nms import mmcv_has_cuda_ops, route_cuda_nms_to_torchvision, torchvision_nms


def _scene(seed: int, count: int = 300):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=gen) * 200
    wh = torch.rand(count, 2, generator=gen) * 60 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(count, generator=gen)  # distinct: no ties whose order the two ops may break apart
    return boxes, scores


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("iou,score_threshold,max_num", [(0.5, 0, -1), (0.6, 0.05, -1), (0.3, 0.2, 40)])
def test_torchvision_nms_keeps_what_mmcvs_op_keeps(seed, iou, score_threshold, max_num):
    from mmcv.ops.nms import NMSop

    boxes, scores = _scene(seed)
    # mmcv's own op, as its nms calls it (the function itself may already be routed).
    mmcv_inds = NMSop.apply(boxes, scores, iou, 0, score_threshold, max_num)
    dets, inds = torchvision_nms(boxes, scores, iou, score_threshold, max_num)
    assert len(inds) > 5 and torch.equal(inds, mmcv_inds)
    assert torch.equal(dets, torch.cat([boxes[mmcv_inds], scores[mmcv_inds, None]], dim=1))


def test_batched_nms_is_routed_only_for_cuda_tensors():
    import mmcv.ops

    route_cuda_nms_to_torchvision()
    route_cuda_nms_to_torchvision()  # idempotent
    routed = getattr(mmcv.ops.nms, "routes_cuda_to_torchvision", False)
    assert routed == (not mmcv_has_cuda_ops())
    boxes, scores = _scene(7)
    labels = torch.randint(0, 3, (len(scores),), generator=torch.Generator().manual_seed(7))
    dets, keep = mmcv.ops.batched_nms(boxes, scores, labels, dict(type="nms", iou_threshold=0.5))
    assert len(keep) > 5 and torch.equal(dets[:, -1], scores[keep])
    if torch.cuda.is_available():
        cuda_dets, cuda_keep = mmcv.ops.batched_nms(boxes.cuda(), scores.cuda(), labels.cuda(),
                                                    dict(type="nms", iou_threshold=0.5))
        assert torch.equal(cuda_keep.cpu(), keep) and torch.allclose(cuda_dets.cpu(), dets)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_student_predicts_on_cuda(shapes_root):
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate

    import ldcache.train
    from conftest import CONFIGS

    ldcache.train.install()  # no runner here to install the NMS of CUDA tensors
    register_all_modules()
    cfg = Config.fromfile(str(CONFIGS / "tiny/gfl_r18_tiny.py"))
    model = MODELS.build(cfg.model).cuda().eval()
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    with torch.no_grad():
        results = model.test_step(pseudo_collate([dataset[0], dataset[1]]))
    assert len(results) == 2 and results[0].pred_instances.bboxes.is_cuda
