"""The package's shape: one top-level package, no import cycles, a light reader, one attribute model."""
import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "ldcache"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The ldcache modules a file imports, anywhere in it (module level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        found |= {t for t in targets if t in modules}
    return found - {name}


def _import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imported_modules(f, modules) for f in files}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle_inside_the_package():
    graph = _import_graph()
    assert "ldcache.store.reader" in graph and graph["ldcache.cli"], "the walk found the package's modules"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


@pytest.mark.parametrize("stage", ["train", "inspect", "domain", "store"])
def test_stages_after_the_dump_import_nothing_from_it(stage):
    graph = _import_graph()
    stage_modules = [m for m in graph if m == f"ldcache.{stage}" or m.startswith(f"ldcache.{stage}.")]
    assert stage_modules
    from_dump = {m: sorted(t for t in graph[m] if t.startswith("ldcache.dump")) for m in stage_modules}
    assert not any(from_dump.values()), from_dump


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_reading_a_store_imports_neither_mmdet_nor_mmcv_nor_torch(shapes_store):
    code = (f"import sys; from ldcache.store.reader import StoreReader; "
            f"t = StoreReader({str(shapes_store)!r}).read_record(0); assert t.levels(); "
            "print(sorted(m for m in ('mmdet', 'mmcv', 'mmengine', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_one_top_level_package_is_installed():
    dist = metadata.distribution("ldcache")
    assert dist.read_text("top_level.txt").split() == ["ldcache"]
    # An editable install maps top-level names to folders in a finder module.
    finders = [f for f in dist.files or [] if f.name.startswith("__editable__") and f.suffix == ".py"]
    for finder in finders:
        mapping = re.search(r"MAPPING[^=]*= (\{.*?\})", Path(finder.locate()).read_text()).group(1)
        assert list(ast.literal_eval(mapping)) == ["ldcache"]
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"ldcache": "ldcache.cli:app"}
    # The design's top-level entries are a checkout's, not installed: cli.py runs the one app, and
    # pipelines/ holds scripts, not a package.
    assert (REPO / "cli.py").is_file() and "from ldcache.cli import app" in (REPO / "cli.py").read_text()
    assert (REPO / "pipelines").is_dir() and not list((REPO / "pipelines").glob("*.py"))


def _documented_attributes() -> set[str]:
    text = (REPO / "docs" / "store-format.md").read_text()
    section = text.split("## Attributes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_.]+)` \|", section, flags=re.M))


def test_the_attribute_model_and_docs_store_format_list_the_same_fields():
    from ldcache.store.attrs import StoreAttrs

    documented, modelled = _documented_attributes(), set(StoreAttrs.field_paths())
    assert len(modelled) > 30
    assert documented == modelled, (f"only in the docs: {sorted(documented - modelled)}; "
                                    f"only in the model: {sorted(modelled - documented)}")


def test_the_format_version_in_the_docs_is_the_code_s():
    from ldcache.store.format import FORMAT_VERSION

    assert f"# ldcache store format, version {FORMAT_VERSION}\n" in (REPO / "docs" / "store-format.md").read_text()


@pytest.mark.parametrize("edit,field", [
    (lambda a: a["region"].update(gamma="high"), "region.gamma"),
    (lambda a: a["values"].pop("vlr_class_logits"), "values.vlr_class_logits"),
    (lambda a: a["head"].update(strides=[8, "16"]), "head.strides[1]"),
    (lambda a: a["region"].update(mode="sparse"), "region.mode"),
    (lambda a: a.update(colour="blue"), "colour"),
    (lambda a: a["views"][0].update(scale=[320]), "views[0].scale"),
])
def test_a_bad_attribute_is_refused_naming_the_field(shapes_store, edit, field):
    from ldcache.errors import StoreFormatError
    from ldcache.store.attrs import StoreAttrs
    from ldcache.store.reader import StoreReader

    good = StoreReader(shapes_store).attrs.to_dict()
    assert StoreAttrs.from_dict(good).to_dict() == good
    edit(good)
    with pytest.raises(StoreFormatError, match=re.escape(f"'{field}'")):
        StoreAttrs.from_dict(good)


def test_every_error_is_an_ldcache_error():
    import ldcache.errors as errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(classes) >= 8 and all(issubclass(c, errors.LDCacheError) for c in classes)
