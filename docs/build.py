"""Build the API reference of slamjax with pdoc: ``python docs/build.py [--out DIR]``.

* Every public module is documented: each ``slamjax/**/*.py`` whose path has no part starting
  with ``_`` (the same rule as ``tests/test_docstrings.py``), one page each.
* The Markdown pages ``docs/*.md`` (design notes) become pages under ``guides``.
* Every warning is an error (``--allow-warnings`` to only print them), so a docstring that pdoc
  cannot render fails the build.

One adjustment is made before rendering, for pdoc and not for the library: the generated
``__new__`` of a ``typing.NamedTuple`` declared under ``from __future__ import annotations`` has
string (``ForwardRef``) annotations that pdoc evaluates in the wrong namespace ("name 'Any' is not defined");
they are replaced by the class's resolved type hints. The output directory (default
``docs/_build``) is not committed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pathlib
import sys
import time
import types
import typing
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def public_modules(package: str = "slamjax") -> list[str]:
    """Dotted names of the public modules of ``package`` (no path part starts with ``_``)."""
    base = ROOT / package
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        names.append(".".join(parts))
    return names


def _resolve_namedtuple_annotations(module: types.ModuleType) -> None:
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if not (issubclass(cls, tuple) and hasattr(cls, "_fields")):
            continue
        new = cls.__dict__.get("__new__")
        new = getattr(new, "__func__", new)  # the function under the staticmethod
        ann = getattr(new, "__annotations__", None)
        if not ann or not any(isinstance(v, (str, typing.ForwardRef)) for v in ann.values()):
            continue
        try:
            hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
        except Exception:  # unresolvable names stay strings: pdoc then warns, as it should
            continue
        new.__annotations__ = {k: hints.get(k, v) for k, v in ann.items()}


def _guides() -> list[types.ModuleType]:
    pages = sorted(DOCS.glob("*.md"))
    index = types.ModuleType("guides")
    index.__doc__ = ("Design notes and guides (Markdown pages under `docs/`).\n\n" + "\n".join(
        f"* `guides.{p.stem}`: {p.read_text().splitlines()[0].lstrip('# ')}" for p in pages))
    index.__path__ = []  # a package, so that pdoc lists the pages as its submodules
    mods = [index]
    for p in pages:
        m = types.ModuleType(f"guides.{p.stem}")
        m.__doc__ = p.read_text()
        setattr(index, p.stem, m)
        sys.modules[m.__name__] = m
        mods.append(m)
    sys.modules["guides"] = index
    return mods


def build(out: pathlib.Path) -> int:
    """Render every public module and guide into ``out``; return the number of pages."""
    import pdoc.doc
    import pdoc.render

    pdoc.render.configure(docformat="markdown", show_source=False,
                          footer_text="slamjax API reference")
    sys.path.insert(0, str(ROOT))
    all_modules: dict[str, pdoc.doc.Module] = {}
    for name in public_modules():
        mod = importlib.import_module(name)
        _resolve_namedtuple_annotations(mod)
        all_modules[name] = pdoc.doc.Module(mod)
    for mod in _guides():
        all_modules[mod.__name__] = pdoc.doc.Module(mod)
    out.mkdir(parents=True, exist_ok=True)
    for module in all_modules.values():
        html = pdoc.render.html_module(module, all_modules)
        path = out / f"{module.fullname.replace('.', '/')}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html)
    (out / "index.html").write_text(pdoc.render.html_index(all_modules))
    (out / "search.js").write_text(pdoc.render.search_index(all_modules))
    return len(all_modules)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=DOCS / "_build")
    ap.add_argument("--allow-warnings", action="store_true",
                    help="print pdoc's warnings instead of failing on them")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = build(args.out)
    # pdoc's own warnings, and every other warning raised while rendering (deprecations in
    # the documented modules included)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"docs: {n} pages in {args.out} ({time.perf_counter() - t0:.1f} s, "
          f"{len(caught)} warnings)")
    return 1 if caught and not args.allow_warnings else 0


if __name__ == "__main__":
    sys.exit(main())
