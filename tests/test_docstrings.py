"""Every public name has a docstring (the API reference, ``make docs``, is built from them).

Public modules: every ``slamjax/**/*.py`` whose path has no part starting with ``_``. Public
names: a module's ``__all__`` (without one: the names it defines that do not start with
``_``), and ``slamjax.__all__``. What is checked:

* modules and classes have a docstring of their own (not inherited, not the signature line
  that ``namedtuple`` / ``dataclass`` generate), and so do the public methods and properties a
  class defines (e.g. every params class's ``create``);
* functions and other callables have a non-empty docstring; one with at least one parameter
  besides ``self`` has at least a full sentence (a simple check, no per-parameter format);
* other values (constants, registries) have a variable docstring — a string literal right
  after the assignment, which is what pdoc shows.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from build import public_modules  # noqa: E402  (docs/build.py: the same module list)

# Modules whose docstrings are being written by their owners while this test lands. A missing
# docstring there is reported as xfail (with the list) instead of failing; remove a module from
# this set once its docstrings are complete, so that it is held to the rule.
IN_PROGRESS: set[str] = set()
IN_PROGRESS_PREFIXES: tuple[str, ...] = ()

SENTENCE = re.compile(r"\w[^.!?:]*\w.*?[.!?:](\s|$)", re.S)


def _in_progress(name: str) -> bool:
    return name in IN_PROGRESS or name.startswith(IN_PROGRESS_PREFIXES)


def _own_doc(cls) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    if re.fullmatch(rf"{re.escape(cls.__name__)}\(.*\)", doc.strip(), re.S):
        return ""  # namedtuple's / dataclass's generated "Name(field, ...)"
    return doc.strip()


def _n_params(obj) -> int:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return 0
    return sum(1 for p in sig.parameters.values() if p.name not in ("self", "cls"))


def _var_docstrings(module) -> dict[str, str]:
    import pdoc.doc_ast

    out: dict[str, str] = {}
    try:
        out.update(pdoc.doc_ast.walk_tree(module).var_docstrings)
    except Exception:  # a module without source: nothing to read
        pass
    return out


def _defining_modules():
    for name in public_modules():
        try:
            yield importlib.import_module(name)
        except ImportError:
            continue


def _value_doc(module, name: str) -> str:
    """The variable docstring of ``name`` in ``module`` or in the module it was imported from."""
    doc = _var_docstrings(module).get(name, "")
    if doc:
        return doc
    obj = getattr(module, name)
    for other in _defining_modules():  # re-exported: documented where it is assigned
        if other is not module and getattr(other, name, None) is obj:
            doc = _var_docstrings(other).get(name, "")
            if doc:
                return doc
    return ""


def _undocumented_methods(cls) -> list[str]:
    """Public methods and properties defined in ``cls`` itself (e.g. ``SLAMParams.create``)
    without a docstring."""
    out = []
    for name, attr in vars(cls).items():
        if name.startswith("_") or name in ("tree_flatten", "tree_unflatten"):  # pytree protocol
            continue
        fn = getattr(attr, "__func__", attr)  # classmethod / staticmethod
        if isinstance(attr, property):
            fn = attr.fget
        if not (inspect.isfunction(fn) or isinstance(attr, property)):
            continue
        if not (inspect.getdoc(fn) or "").strip():
            out.append(name)
    return out


def _public_names(module) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, v in vars(module).items() if not n.startswith("_")
            and getattr(v, "__module__", None) == module.__name__
            and (inspect.isclass(v) or callable(v))]


def missing_docstrings(module) -> list[str]:
    """``name: problem`` for every public name of ``module`` that breaks the rule."""
    problems = []
    if not (module.__doc__ or "").strip():
        problems.append("(module docstring)")
    for name in _public_names(module):
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            if not (obj.__doc__ or "").strip():
                problems.append(f"{name}: no module docstring")
        elif inspect.isclass(obj):
            doc = _own_doc(obj)
            if not doc:
                problems.append(f"{name}: no class docstring")
            elif _n_params(obj) and not dataclasses.is_dataclass(obj) \
                    and not SENTENCE.search(doc) and not issubclass(obj, tuple):
                problems.append(f"{name}: class docstring is not a sentence")
            if obj.__module__ == module.__name__:  # methods: where the class is defined
                problems += [f"{name}.{m}: no docstring" for m in _undocumented_methods(obj)]
        elif callable(obj):
            doc = (inspect.getdoc(obj) or "").strip()
            if not doc:
                problems.append(f"{name}: no docstring")
            elif _n_params(obj) and not SENTENCE.search(doc):
                problems.append(f"{name}: takes parameters but its docstring is not a sentence")
        else:
            if not _value_doc(module, name).strip():
                problems.append(f"{name}: no variable docstring (a string literal after the "
                                f"assignment)")
    return problems


MODULES = public_modules()


@pytest.mark.parametrize("name", MODULES)
def test_public_names_have_docstrings(name):
    try:
        module = importlib.import_module(name)
    except ImportError as e:  # an optional dependency missing: documented as an extra
        pytest.skip(f"{name} needs an optional dependency: {e}")
    problems = missing_docstrings(module)
    if problems and _in_progress(name):
        pytest.xfail(f"{name}: {len(problems)} missing — " + "; ".join(problems))
    assert not problems, f"{name}: " + "; ".join(problems)


def test_the_module_list_covers_the_package():
    assert "slamjax" in MODULES and "slamjax.problems.quadratic" in MODULES
    assert not any(part.startswith("_") for m in MODULES for part in m.split("."))


def test_the_checker_catches_what_it_should():
    import types

    mod = types.ModuleType("fake", "A module.")

    def documented(x):
        """Scale ``x``."""

    def bare(x):
        pass

    def terse(x):
        """x"""

    class NoDoc:
        pass

    mod.__all__ = ["documented", "bare", "terse", "NoDoc", "VALUE"]
    mod.documented, mod.bare, mod.terse, mod.NoDoc, mod.VALUE = documented, bare, terse, NoDoc, 3
    problems = missing_docstrings(mod)
    assert not any(p.startswith("documented") for p in problems)
    for name in ("bare", "terse", "NoDoc", "VALUE"):
        assert any(p.startswith(name) for p in problems), (name, problems)
