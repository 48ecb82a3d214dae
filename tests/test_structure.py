"""The shape of the code: acyclic imports inside slamjax/, no private name used across
modules, files and functions of a readable size, tests that never import experiment scripts,
and every compiled-program cache bounded and emptied by ``slamjax.clear_caches()``."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "slamjax"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(mod: str, path: Path, mods: dict) -> list[tuple[str, str]]:
    """(target module, imported name) for every ``import``/``from ... import`` of slamjax
    anywhere in the file (a function-level import is still a dependency)."""
    is_pkg = path.name == "__init__.py"
    base = mod if is_pkg else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                src = ".".join(parts[:len(parts) - node.level + 1]
                               + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if src != "slamjax" and not src.startswith("slamjax."):
                continue
            for alias in node.names:
                sub = f"{src}.{alias.name}"
                out.append((sub if sub in mods else src, alias.name))
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.startswith("slamjax")]
    return out


def _graph():
    mods = _modules()
    edges = {m: set() for m in mods}
    private = []
    for m, path in mods.items():
        for target, name in _imports(m, path, mods):
            if target in mods and target != m:
                # a package importing its own submodules is the normal direction
                if not (mods[m].name == "__init__.py" and target.startswith(m + ".")):
                    edges[m].add(target)
            own_pkg_module = target.startswith(m.rsplit(".", 1)[0] + "._") and name == \
                target.rsplit(".", 1)[-1]
            if name.startswith("_") and not name.startswith("__") and target != m \
                    and not own_pkg_module:
                private.append(f"{m} imports {name} from {target}")
    return edges, private


def _cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_imports_inside_slamjax_are_acyclic():
    edges, _ = _graph()
    assert _cycles(edges) == []
    # the check can fail: a made-up back edge is found
    fake = {k: set(v) for k, v in edges.items()}
    fake["slamjax.problem"].add("slamjax.slam")
    assert _cycles(fake)


def test_no_private_name_is_imported_across_modules():
    assert _graph()[1] == []


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_files_and_functions_have_a_readable_size():
    long_files, long_functions = [], []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{rel}: {len(text.splitlines())} lines")
        for fn in _functions(ast.parse(text)):
            size = fn.end_lineno - fn.lineno + 1
            if size > MAX_FUNCTION_LINES:
                long_functions.append(f"{rel}:{fn.lineno} {fn.name}: {size} lines")
    assert long_files == [] and long_functions == []


def test_tests_never_import_experiment_scripts():
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in (
                    "spec_from_file_location", "run_path"):
                bad.append(f"{path.name}:{node.lineno} loads a file as a module")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                scripts = {p.stem for p in (ROOT / "experiments").glob("*.py")}
                hit = [n for n in names if n.split(".")[0] in scripts]
                if hit:
                    bad.append(f"{path.name}:{node.lineno} imports {hit}")
    assert bad == []


def test_every_module_level_cache_is_bounded_and_cleared():
    """Module-level dicts named like caches are not allowed in slamjax/ (use
    slamjax.caches.LRUCache / ProgramCache, which clear_caches() empties), and lru_cache
    always has a maxsize."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            value = getattr(node, "value", None)
            for t in targets:
                name = getattr(t, "id", "")
                if isinstance(value, (ast.Dict, ast.Call)) and any(
                        w in name.upper() for w in ("CACHE", "PROGRAMS", "PLANS", "COMPILED")):
                    call = getattr(getattr(value, "func", None), "id", "") or \
                        getattr(getattr(value, "func", None), "attr", "")
                    if call not in ("LRUCache", "ProgramCache"):
                        bad.append(f"{path.name}: {name}")
        for fn in _functions(tree):
            for dec in fn.decorator_list:
                if isinstance(dec, ast.Attribute) and dec.attr == "lru_cache" or \
                        isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == \
                        "lru_cache" and not dec.keywords and not dec.args:
                    bad.append(f"{path.name}: {fn.name} (unbounded lru_cache)")
    assert bad == []


@pytest.mark.parametrize("cache", ["slamjax.driver._PROGRAMS", "slamjax.checks._CURVATURE",
                                   "slamjax.operators._FACTS"])
def test_clear_caches_empties_the_library_caches(cache):
    import importlib

    import slamjax

    mod, name = cache.rsplit(".", 1)
    obj = getattr(importlib.import_module(mod), name)
    obj.get(("test-key",), lambda: "value")
    assert len(obj) >= 1
    slamjax.clear_caches()
    assert len(obj) == 0
