"""Nothing that comes from a request or an agent is unpickled, evaluated or loaded as unsafe
YAML: a scan of the package's source for the calls that would do it."""

from __future__ import annotations

import ast
from pathlib import Path

import edgetune

PACKAGE = Path(edgetune.__file__).parent
#: The one unpickler, for CIFAR-10 batches a user keeps on local disk (never an upload): it
#: refuses every global (`find_class`), so it builds only dicts, lists, bytes and numbers.
ALLOWED = {("trainers/datasets.py", "_CifarUnpickler")}


def calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            found.append((name, node))
    return found


def keywords(call: ast.Call) -> dict[str, str]:
    return {k.arg or "": ast.unparse(k.value) for k in call.keywords}


def test_no_eval_exec_pickle_or_unsafe_yaml_in_the_package() -> None:
    problems = []
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 50
    for path in sources:
        relative = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(), filename=relative)
        for name, call in calls(tree):
            where = f"{relative}:{call.lineno} {name}"
            if name in ("eval", "exec", "compile", "__import__", "marshal.loads", "marshal.load",
                        "shelve.open", "yaml.unsafe_load", "yaml.full_load", "dill.loads",
                        "cloudpickle.loads", "pickle.load", "pickle.loads", "joblib.load") or (name == "yaml.load" and "SafeLoader" not in keywords(call).get("Loader", "")):
                problems.append(where)
            elif name == "torch.load" and keywords(call).get("weights_only") != "True":
                problems.append(where + " without weights_only=True")
            elif name in ("np.load", "numpy.load") and keywords(call).get(
                    "allow_pickle") not in (None, "False"):
                problems.append(where + " with allow_pickle")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(b) == "pickle.Unpickler" for b in node.bases
            ) and (relative, node.name) not in ALLOWED:
                problems.append(f"{relative}:{node.lineno} unpickler {node.name}")
    assert problems == []


def test_the_allowed_unpickler_refuses_every_global() -> None:
    import io
    import pickle

    import pytest

    from edgetune.trainers.datasets import _CifarUnpickler

    class Evil:
        def __reduce__(self):  # what a hostile file would hold: a call on load
            return (print, ("owned",))

    with pytest.raises(pickle.UnpicklingError):
        _CifarUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
    assert _CifarUnpickler(io.BytesIO(pickle.dumps({b"data": [1, 2]}))).load() == {b"data": [1, 2]}
