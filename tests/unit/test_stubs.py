"""The .pyi stubs of the compiled modules name only what the modules have, and every
public name the modules have is in their stub."""
from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "fastrpc"


def stub_names(path: pathlib.Path) -> dict[str, set[str]]:
    """Top-level names of the stub, and for each class the names in its body."""
    tree = ast.parse(path.read_text())
    out: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[""].add(node.name)
            members = out.setdefault(node.name, set())
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[""].add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[""].add(node.target.id)
        # plain assignments are stub-only type aliases (Buffer = bytes | ...): skipped
    return out


@pytest.mark.parametrize("module", ["_fastcall", "_core", "_clientcall"])
def test_stub_matches_module(module):
    mod = importlib.import_module(f"fastrpc.{module}")
    names = stub_names(PKG / f"{module}.pyi")
    aliases = {t.id for node in ast.parse((PKG / f"{module}.pyi").read_text()).body
               if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    for name in names[""]:
        assert hasattr(mod, name), f"{module}.pyi names {name}, the module has no such thing"
    # The module's own public names: not those it imports (classes, functions and
    # modules defined elsewhere, constants it re-binds from other modules).
    imported = {"RPCError", "CallTimeout", "NO_ID", "NO_PARAMS", "PARSE_ERROR_REPLY", "NOT_AN_OBJECT_REPLY", "error"}
    public = {
        n for n, obj in vars(mod).items()
        if not n.startswith("_") and n not in imported and not inspect.ismodule(obj)
        and getattr(obj, "__module__", mod.__name__) == mod.__name__
    }
    assert public <= names[""] | aliases, f"not in {module}.pyi: {sorted(public - names[''])}"
    for cls, members in names.items():
        if cls:
            for m in members:
                assert hasattr(getattr(mod, cls), m), f"{module}.pyi: {cls}.{m} does not exist"
