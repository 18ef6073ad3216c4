"""The class names a detector was trained on, and the one-line reason two class lists differ.

A teacher's class logits are indexed by its classes, in its order; a store keeps them so, and a
student learns from them only if its dataset has the same classes in the same order. The names
a checkpoint was trained on are in its metadata:

- mmengine (mmdet 3.x) checkpoints: ``meta['dataset_meta']['classes']`` (the train dataset's
  metainfo, saved by the Runner);
- mmdet 2.x checkpoints (the LD paper's model zoo): ``meta['CLASSES']``.

:func:`checkpoint_classes` reads them without loading the checkpoint: it unpickles the
checkpoint's object tree only (``data.pkl`` of a zip checkpoint, the leading pickles of a legacy
one), with an unpickler that imports nothing and calls nothing but plain containers, and never
reads the tensor data. A checkpoint written by ldcache's runner holds objects (mmengine's
``message_hub``) that ``torch.load(weights_only=True)`` refuses; this reader stands them in by
empty placeholders instead, so it reads any checkpoint's metadata as safely as weights-only
loading would read its weights, and at the cost of its small object tree whatever its size.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path

from ..errors import BadInputError

# Names shown before a list is cut ("person, bicycle, ..., (80)").
SHOWN_NAMES = 5


class _Placeholder(dict):
    """Stands for every object a checkpoint's pickle names (a class, a function, a tensor):
    nothing is imported or called. A dict, so that the items of a dict subclass (mmengine's
    ConfigDict) are kept; any other state given to it is dropped."""

    def __new__(cls, *args, **kwargs):
        return dict.__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass

    # Hashable, so that one may be a dict key or a set member, as the object it stands for may be.
    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other

    def __call__(self, *args, **kwargs):
        return _Placeholder()

    def append(self, item):
        pass

    def extend(self, items):
        pass


# The only globals built for real: plain containers, which run no code of the file's choosing.
_CONTAINERS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,  # protocol-2 pickles of Python 2
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds plain containers, strings and numbers; everything else (classes, functions, tensor
    storages) becomes a _Placeholder. It never imports a module."""

    def find_class(self, module, name):
        return _CONTAINERS.get((module, name), _Placeholder)

    def persistent_load(self, pid):
        return _Placeholder()  # a tensor's storage: its bytes are never read


def _object_tree(path: Path):
    """The unpickled object tree of a torch checkpoint, tensors left out."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if not names:
                raise ValueError("no data.pkl in the archive")
            return _MetadataUnpickler(io.BytesIO(archive.read(names[0]))).load()
    # torch's legacy format (before torch 1.6): magic number, protocol, system info, then the object.
    with open(path, "rb") as f:
        for _ in range(3):
            _MetadataUnpickler(f).load()
        return _MetadataUnpickler(f).load()


def _names(value) -> tuple[str, ...] | None:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def checkpoint_classes(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names `path` (a local torch checkpoint) was trained on, in the order of its class
    outputs; None when its metadata names none (weights re-saved bare, converted from elsewhere)
    or the file's object tree cannot be read."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise BadInputError(f"checkpoint {path} does not exist")
    try:
        tree = _object_tree(path)
    except Exception:  # a damaged or foreign file: no names; loading the weights reports it
        return None
    meta = tree.get("meta") if isinstance(tree, dict) else None
    if not isinstance(meta, dict):
        return None
    dataset_meta = meta.get("dataset_meta")
    if isinstance(dataset_meta, dict):
        names = _names(dataset_meta.get("classes", dataset_meta.get("CLASSES")))
        if names:
            return names
    return _names(meta.get("CLASSES"))


def listed_classes(classes) -> str:
    """'2 classes (cat, dog)'; a long list is cut after SHOWN_NAMES names."""
    shown = ", ".join(classes[:SHOWN_NAMES]) + (", ..." if len(classes) > SHOWN_NAMES else "")
    return f"{len(classes)} class{'es' if len(classes) != 1 else ''} ({shown})"


def _some(names: list[str]) -> str:
    return ", ".join(names[:SHOWN_NAMES]) + (f", ... ({len(names)})" if len(names) > SHOWN_NAMES else "")


def classes_difference(first, second, first_has: str = "the teacher was trained on",
                       second_has: str = "the dataset has", first_name: str = "the teacher",
                       second_name: str = "the dataset") -> str | None:
    """The one-line reason two class lists differ, by count, names or order; None when they are
    the same, or when either is None (not known).

    E.g. ``the teacher was trained on 80 classes (person, bicycle, car, motorcycle, airplane, ...)
    but the dataset has 2 classes (cat, dog): only the teacher has person, bicycle, car,
    motorcycle, airplane, ... (80); only the dataset has cat, dog``. A class's position decides
    which output it is, so the same names in another order differ too."""
    if first is None or second is None:
        return None
    first, second = tuple(str(c) for c in first), tuple(str(c) for c in second)
    if first == second:
        return None
    head = f"{first_has} {listed_classes(first)} but {second_has} {listed_classes(second)}"
    only_first = [c for c in first if c not in second]
    only_second = [c for c in second if c not in first]
    if not only_first and not only_second and len(first) == len(second):
        i = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
        return (f"{head}: the same names in another order, and a class's position decides which output it is "
                f"(class {i} is {first[i]} for {first_name}, {second[i]} for {second_name})")
    details = [f"only {name} has {_some(names)}" for name, names in ((first_name, only_first),
                                                                     (second_name, only_second)) if names]
    if not details:  # the same names, one of them listed twice
        details = ["a name is listed twice"]
    return f"{head}: {'; '.join(details)}"


def teacher_classes_problem(checkpoint: str | os.PathLike, dataset_classes) -> str | None:
    """Why a teacher checkpoint cannot be dumped over a dataset of `dataset_classes`: the one-line
    refusal when its metadata names other classes (count, names or order), None when they are the
    same or the checkpoint names none."""
    difference = classes_difference(checkpoint_classes(checkpoint), dataset_classes)
    if difference is None:
        return None
    return (f"teacher checkpoint {checkpoint}: {difference}. Its class logits are those classes, in that order: "
            "dump it over a dataset of its own classes (the teacher config's "
            "train_dataloader.dataset.metainfo.classes, and annotations with those category names), or train a "
            "teacher on this dataset first (ldcache train-teacher, docs/own-dataset.md)")
