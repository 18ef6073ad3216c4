"""Which priors a head family distils: its Main rule (the head's own assignment) and its VLR rule.

Three families of rules cover the LD paper's heads (docs/families.md):

- ``band`` (GFL, ATSS, GFLv2): Main = ATSSAssigner's positives; VLR = the band
  ``gamma * thr <= d < thr`` over all anchors, positives kept (ldcache/domain/regions.py).
- ``band_without_main`` (RetinaNet): Main = MaxIoUAssigner's positives; VLR = the same band, with
  ATSS's threshold at topk 9 as the official code hard-codes it, positives excluded.
- ``inside_gt`` (FCOS): Main = FCOS's centre sampling and regress ranges; VLR = every point strictly
  inside a GT box that is not positive. There is no VLR metric: such a point is VLR at any gamma,
  with weight 1, and the student's confidence weighs it at train time.

The Main rule is the student head's own code (mmdet's assigners, FCOSHead's target rule), so the
stored Main rows are its positives exactly: ldcache/domain/family_regions.py computes them. This
module imports no torch, so that reading a store's rules stays fast.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import BadInputError
from ..store.format import MAIN_RULES

# The Main rule of point heads: FCOSHead's target rule, named like an assigner.
FCOS_RULE = MAIN_RULES[2]
DEFAULT_TOPK = 9  # mmdet's ATSSAssigner default, every GFL config's, and the official RetinaNet VLR's


@dataclass(frozen=True)
class RegionRule:
    """A head family's region rules.

    Attributes:
        main (dict): The Main assignment as plain JSON: an mmdet assigner config (``ATSSAssigner``,
            ``MaxIoUAssigner``) or FCOS's rule (``type='FCOSCenterSampling'``, ``center_sampling``,
            ``center_sample_radius``, ``regress_ranges``).
        vlr (str): One of ``VLR_RULES``.
        topk (int): The k nearest anchors per level whose IoUs make the VLR band's threshold.
    """

    main: dict
    vlr: str
    topk: int

    def describe(self) -> str:
        """One line: the Main assignment and the VLR rule."""
        params = ", ".join(f"{k}={v}" for k, v in self.main.items() if k != "type")
        return f"Main {self.main['type']}({params}), VLR {self.vlr}"


def atss_rule(topk: int = DEFAULT_TOPK) -> RegionRule:
    """GFL's rules: Main = ATSSAssigner's positives at `topk`, VLR = the band, positives kept."""
    return RegionRule(dict(type="ATSSAssigner", topk=topk), "band", topk)


def region_rule(head) -> RegionRule:
    """The region rules of an mmdet dense head: FCOS's for a point head with centre sampling, else
    the assigner of its ``train_cfg`` (ATSS when it has none) and its family's VLR rule (a head
    class's ``ld_vlr_rule``, ``'band'`` by default)."""
    vlr = getattr(head, "ld_vlr_rule", "band")
    if hasattr(head, "center_sample_radius") and hasattr(head, "regress_ranges"):
        main = dict(type=FCOS_RULE, center_sampling=bool(head.center_sampling),
                    center_sample_radius=float(head.center_sample_radius),
                    regress_ranges=[[float(lo), float(hi)] for lo, hi in head.regress_ranges])
        return RegionRule(main, vlr, DEFAULT_TOPK)
    assigner = (getattr(head, "train_cfg", None) or {}).get("assigner") or dict(type="ATSSAssigner")
    main = json.loads(json.dumps(dict(assigner)))  # plain JSON: tuples become lists, as in the store
    if main.get("type") not in MAIN_RULES[:2]:
        raise BadInputError(f"{type(head).__name__}'s assigner {main.get('type')!r} has no region rule in ldcache; "
                            f"the Main region comes from {', '.join(MAIN_RULES)}")
    if main["type"] == "ATSSAssigner":
        main.setdefault("topk", DEFAULT_TOPK)
        return RegionRule(main, vlr, int(main["topk"]))
    return RegionRule(main, vlr, DEFAULT_TOPK)


def stored_rule(region) -> RegionRule:
    """The region rules a store's ``region`` attributes (RegionAttrs) hold."""
    return RegionRule(dict(region.main), region.vlr, region.topk)


def rule_mismatch(store: RegionRule, student: RegionRule) -> str | None:
    """What differs between the store's region rules and the student's, or None."""
    different = []
    if store.main != student.main:
        different.append(f"Main assignment: store {store.main} vs student {student.main}, set by "
                         "model.train_cfg.assigner (FCOS: the head's center_sampling, center_sample_radius and "
                         "regress_ranges)")
    if store.vlr != student.vlr:
        different.append(f"VLR rule: store {store.vlr!r} vs student {student.vlr!r}, the head family's")
    if store.topk != student.topk:
        different.append(f"VLR band topk: store {store.topk} vs student {student.topk}")
    return "; ".join(different) or None
