"""What the distribution heads share: edge distributions decoded to distances."""
from __future__ import annotations

from torch import Tensor


class EdgeDistributions:
    """Mixin of a dense head whose box branch predicts GFL's edge distributions, decoded by its
    ``integral`` (mmdet's ``Integral`` over ``reg_max + 1`` bins)."""

    def decode_distances(self, bbox_pred: Tensor) -> Tensor:
        """The distances from a prior's centre to its box's edges that distribution logits predict.

        Args:
            bbox_pred (Tensor): Logits of shape (..., 4 * (reg_max + 1)), edge-major (left, top,
                right, bottom), each edge's ``reg_max + 1`` bins contiguous.

        Returns:
            Tensor: The expectation of each edge's softmax over {0, ..., reg_max}, in units of the
            level's stride, shape (..., 4).
        """
        return self.integral(bbox_pred).reshape(*bbox_pred.shape[:-1], 4)
