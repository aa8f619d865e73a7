"""The package's import structure (docs/architecture.md): layers import only downward, no
import cycle, and no project import hidden inside a function (optional dependencies, such as
anndata, may be imported where they are used). Read from the source with ``ast``; the layer
table is read from docs/architecture.md, so the document states the rules this test enforces."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def read_layers(text: str) -> dict[str, int]:
    """The table of "## The layers": ``| layer | modules | ... |`` rows, each module a
    backquoted name (a package with a trailing slash) -> its layer; lower numbers sit lower."""
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for row in re.findall(r"^\| *(\d+) *\|([^|]*)\|", section, flags=re.M):
        for module in re.findall(r"`([A-Za-z_]\w*)/?`", row[1]):
            assert module not in layers, f"docs/architecture.md places {module} in two layers"
            layers[module] = int(row[0])
    return layers


# a module imports its own layer or lower ones only
LAYERS = read_layers(ARCHITECTURE.read_text())


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text(), str(path))


def _target(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement names (empty for other packages)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "pyro_vae"]
    if node.level == 0:
        if (node.module or "").split(".")[0] != "pyro_vae":
            return []
        return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    stem = ".".join(base + (node.module.split(".") if node.module else []))
    return [stem, *(f"{stem}.{a.name}" for a in node.names)]  # from .x import y: y may be a module


def _type_checking(node) -> bool:
    return isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"


def _imports():
    """(module, imported module, line, at module level) for every project import."""
    known = {name for name, _, _ in _modules()}
    for module, path, tree in _modules():
        hidden = {id(n) for t in ast.walk(tree) if _type_checking(t) for n in ast.walk(t)}
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in hidden:
                candidates = _target(module, path, node)
                submodules = [t for t in candidates[1:] if t in known]  # from .x import y, y a module
                for target in submodules or candidates[:1]:
                    while target not in known and "." in target:
                        target = target.rsplit(".", 1)[0]
                    yield module, target, node.lineno, id(node) in top


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_the_layer_table_is_read_and_places_every_module():
    """Every module and subpackage of pyro_vae has a layer in docs/architecture.md (a module
    left out would escape the layer check), the table keeps the order the README states
    (cli -> workflows -> runs -> spec -> analysis -> infer -> model, data -> utilities),
    and the document names every module file of the package."""
    top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert not top - set(LAYERS), f"give these a layer in docs/architecture.md: {sorted(top - set(LAYERS))}"
    assert not set(LAYERS) - top, f"docs/architecture.md places modules that do not exist: {sorted(set(LAYERS) - top)}"
    order = ["cli", "workflows", "runs", "spec", "analysis", "infer", "model", "errors"]
    assert [LAYERS[m] for m in order] == sorted((LAYERS[m] for m in order), reverse=True)
    assert LAYERS["data"] == LAYERS["model"] and LAYERS["registry"] == LAYERS["errors"] == 0
    text = ARCHITECTURE.read_text()
    files = [p.relative_to(PACKAGE).as_posix() for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__init__.py"]
    unnamed = [f for f in files if f"`{f}`" not in text]
    assert not unnamed, f"docs/architecture.md does not say what these hold: {unnamed}"


def test_a_table_of_layers_is_read_as_written():
    table = ("## The layers\n\n| layer | modules | what |\n| --- | --- | --- |\n"
             "| 0 | `errors`, `params` | a |\n| 3 | `infer/` | b |\n\n## Next\n| 9 | `ignored` | c |\n")
    assert read_layers(table) == {"errors": 0, "params": 0, "infer": 3}
    with pytest.raises(AssertionError, match="infer in two layers"):
        read_layers(table.replace("| 0 | `errors`", "| 0 | `infer`"))


def test_no_project_import_inside_a_function():
    """Imports are at the top, where the layer order shows, except in the CLI: the top layer,
    which nothing imports (so a local import there hides no cycle), imports each command's
    workflow when it runs, so that `--help`, the refusals and `train` start without ArviZ and
    the comparison statistics (the layer test above still checks those imports)."""
    local = [f"{m}:{line} imports {t}" for m, t, line, top in _imports() if not top and m != "pyro_vae.cli"]
    assert not local, "\n".join(local)


def test_layers_import_only_downward():
    upward = [f"{m} imports {t}" for m, t, _, _ in _imports()
              if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for module, target, _, _ in _imports():
        if target != module and not module.startswith(target + "."):  # a package's own __init__ is not a cycle
            graph.setdefault(module, set()).add(target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch):
    """A planted local import, upward import and cycle are each found."""
    fake = tmp_path / "pyro_vae"
    (fake / "infer").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "infer" / "__init__.py").write_text("")
    (fake / "runs.py").write_text("from .infer import a\n")
    (fake / "infer" / "a.py").write_text("from ..runs import x\n\ndef f():\n    from . import b\n")
    (fake / "infer" / "b.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="infer.a:4 imports pyro_vae.infer.b"):
        test_no_project_import_inside_a_function()
    with pytest.raises(AssertionError, match="pyro_vae.infer.a imports pyro_vae.runs"):
        test_layers_import_only_downward()
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle()


def test_every_subpackage_is_installed():
    """pyproject.toml lists the packages by name: a subpackage left out is missing from a
    regular (non-editable) install, though an editable one finds it (pyro_vae.workflows was)."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {', '.join(sorted(found - listed))}"


# the Trainer and the workflows stay readable: no function longer than this (issue 32)
MAX_FUNCTION_LINES = 50
SHORT = [PACKAGE / "infer" / "train.py", *sorted((PACKAGE / "workflows").glob("*.py"))]


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in ``source`` longer than ``limit`` lines,
    counted from its ``def`` (decorators aside) to its last line, docstring included."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


def test_long_functions_are_counted():
    body = "".join(f"    x = {i}\n" for i in range(49))
    assert long_functions(f"def f():\n{body}") == []  # 50 lines
    assert long_functions(f"class A:\n    def g(self):\n    {body.replace(chr(10), chr(10) + '    ')}    y = 1\n") == [("g", 51)]


def test_no_function_over_50_lines_in_the_trainer_and_the_workflows():
    long = [f"{path.relative_to(PACKAGE.parent)}: {name} ({lines} lines)"
            for path in SHORT for name, lines in long_functions(path.read_text())]
    assert not long, "split these into functions of one job each:\n" + "\n".join(long)

