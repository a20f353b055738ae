"""The ledger's hottest pure modules, compiled to C by mypyc, and the choice of which build runs.

Every validator decodes, checks and applies every transaction, and on one machine a
consortium's validators share its cores, so their CPU a transaction bounds the chain's rate
(docs/decisions/0006-consensus.md). `make` compiles NATIVE_MODULES with mypyc (the compiler
that ships with mypy, from the same strictly typed sources): each becomes a C extension beside
its source, which Python imports before the `.py`, and the SHA-256 of each source compiled is
recorded in MANIFEST.

`use_current_build` (run by `ledger/__init__.py`, before any of them is imported) keeps the
compiled build only if it is whole and made from these very sources; otherwise every one of
them runs from its source: the same code, slower, never a stale build. It is all or none, as
the modules are compiled together and a compiled module calls another's compiled functions
directly. `TANLIAN_PURE_PYTHON=1` asks for the sources (the tests measure their coverage so).

`make` builds with `python -c "import ledger.native as n; n.build()"`; a build that fails
says why and leaves the sources in use.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Final

NATIVE_MODULES: Final = ("ledger.encoding", "ledger.schema", "ledger.state_tree")
PURE_PYTHON_ENV: Final = "TANLIAN_PURE_PYTHON"
PACKAGE: Final = Path(__file__).resolve().parent
MANIFEST: Final = PACKAGE / "native.json"
# The shared library the compiled modules link to, inside the package: an editable install
# puts the package on the path, not the repository's root.
GROUP_NAME: Final = "ledger.compiled"
GROUP: Final = GROUP_NAME + "__mypyc"
_SETUP: Final = """
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="tanlian-native",
    script_args=["build_ext", "--inplace"],
    ext_modules=mypycify({sources!r}, group_name={group_name!r}),
)
"""


def source_path(module: str, root: Path = PACKAGE.parent) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def extension_paths(module: str, root: Path = PACKAGE.parent) -> list[Path]:
    """The compiled builds of `module` this interpreter would import, if any."""
    source = source_path(module, root)
    return [
        source.with_name(source.stem + suffix)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if source.with_name(source.stem + suffix).exists()
    ]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def current_build_reason(root: Path = PACKAGE.parent) -> str | None:
    """None if the compiled build under `root` is whole and made from the sources as they are
    now; otherwise why not, in a few words."""
    try:
        recorded = json.loads((root / MANIFEST.relative_to(PACKAGE.parent)).read_text("utf-8"))
    except (OSError, ValueError):
        return "not built"
    if not isinstance(recorded, dict):
        return "not built"
    for module in (*NATIVE_MODULES, GROUP):
        if not extension_paths(module, root):
            return f"{module} has no compiled build for this Python"
    for module in NATIVE_MODULES:
        if recorded.get(module) != _digest(source_path(module, root)):
            return f"{module} changed since it was compiled"
    return None


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds NATIVE_MODULES at their `.py` sources, ahead of the compiled extensions."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in NATIVE_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def use_current_build() -> bool:
    """Keep the compiled build if it is current and not refused by the environment, else
    make NATIVE_MODULES import from their sources. True if the compiled build is in use."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0") or current_build_reason():
        if not any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path):
            sys.meta_path.insert(0, _SourcesFirst())
        return False
    return True


def in_use() -> bool:
    """Whether the modules imported so far are the compiled ones."""
    return not any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path)


def describe() -> str:
    """Which build the modules imported so far are, for benchmarks' and reports' headers."""
    if in_use():
        return "compiled by mypyc"
    reason = current_build_reason()
    return "Python source" + (f" ({reason})" if reason else f" ({PURE_PYTHON_ENV} set)")


def build(root: Path = PACKAGE.parent) -> int:
    """Compile NATIVE_MODULES under `root` with mypyc in place, then record their sources'
    digests. On failure, say why in one line, remove any partial build, and return 1."""
    manifest = root / MANIFEST.relative_to(PACKAGE.parent)
    manifest.unlink(missing_ok=True)
    sources = [str(source_path(module, root).relative_to(root)) for module in NATIVE_MODULES]
    digests = {module: _digest(source_path(module, root)) for module in NATIVE_MODULES}
    done = subprocess.run(
        [sys.executable, "-c", _SETUP.format(sources=sources, group_name=GROUP_NAME)],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        for module in (*NATIVE_MODULES, GROUP):
            for path in extension_paths(module, root):
                path.unlink()
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        print(
            f"tanlian: the compiled ledger modules were not built ({last[:300]});"
            " they run as Python source, slower",
            file=sys.stderr,
        )
        return 1
    changed = [m for m in NATIVE_MODULES if _digest(source_path(m, root)) != digests[m]]
    if changed:
        names = ", ".join(changed)
        print(f"tanlian: {names} changed during the build; build again", file=sys.stderr)
        return 1
    manifest.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"compiled {', '.join(NATIVE_MODULES)} with mypyc")
    return 0
