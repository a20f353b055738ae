"""The ledger's hottest pure modules, compiled to C by mypyc, and the choice of which build runs.

Every validator decodes, checks and applies every transaction, and on one machine a
consortium's validators share its cores, so their CPU a transaction bounds the chain's rate
(docs/decisions/0006-consensus.md). `make` compiles NATIVE_MODULES with mypyc (the compiler
that ships with mypy, from the same strictly typed sources): each becomes a C extension beside
its source, which Python imports before the `.py`. MANIFEST records what the build was made
from and what it made: the SHA-256 of every source of the package (a compiled module also
holds constants and types of the modules it imports, compiled or not), the extension suffix
of the Python that built it, and each extension's size and modification time.

`use_current_build` (run by `ledger/__init__.py`, before any of them is imported) keeps the
compiled build only if all of that still holds; otherwise every one of them runs from its
source, the same code, slower, never a stale build, and a line on stderr says why. It is all
or none, as the modules are compiled together and a compiled module calls another's compiled
functions directly. `TANLIAN_PURE_PYTHON=1` asks for the sources, silently (the tests measure
their coverage so).

`make` builds with `python -c "import ledger.native as n; n.build()"`, one build at a time
(a lock); a build that fails says why, removes what it made, and leaves the sources in use.
"""

from __future__ import annotations

import fcntl
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
from typing import Any, Final

NATIVE_MODULES: Final = (
    "ledger.encoding",
    "ledger.schema",
    "ledger.transactions",
    "ledger.state",
    "ledger.state_tree",
    "ledger.evidence",
    "ledger.blocks",
    "ledger.state_transition",
)
PURE_PYTHON_ENV: Final = "TANLIAN_PURE_PYTHON"
_SAID: Final = "_TANLIAN_SOURCES_SAID"  # not TANLIAN_*: the node refuses unknown settings
PACKAGE: Final = Path(__file__).resolve().parent
MANIFEST: Final = PACKAGE / "native.json"
# The shared library the compiled modules link to, inside the package: an editable install
# puts the package on the path, not the repository's root.
GROUP_NAME: Final = "ledger.compiled"
GROUP: Final = GROUP_NAME + "__mypyc"
SUFFIX: Final = importlib.machinery.EXTENSION_SUFFIXES[0]  # this Python's, e.g. .cpython-311-…so
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


def extension_path(module: str, root: Path = PACKAGE.parent) -> Path:
    """Where this Python finds `module`'s compiled build under `root`."""
    return source_path(module, root).with_suffix(SUFFIX)


def source_digests(root: Path = PACKAGE.parent) -> dict[str, str]:
    """The SHA-256 of every source of the package under `root`, by path."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((root / PACKAGE.name).glob("*.py"))
    }


def _built(root: Path) -> dict[str, list[int]]:
    """Size and modification time of each of the package's extensions for this Python."""
    built: dict[str, list[int]] = {}
    for path in sorted((root / PACKAGE.name).glob(f"*{SUFFIX}")):
        status = path.stat()
        built[path.relative_to(root).as_posix()] = [status.st_size, status.st_mtime_ns]
    return built


def _manifest(root: Path) -> Path:
    return root / MANIFEST.relative_to(PACKAGE.parent)


def current_build_reason(root: Path = PACKAGE.parent) -> str | None:
    """None if the compiled build under `root` is whole, this Python's, and made from the
    sources as they are now; otherwise why not, in a few words."""
    try:
        recorded: Any = json.loads(_manifest(root).read_text("utf-8"))
    except (OSError, ValueError):
        return "not built"
    if not isinstance(recorded, dict) or not all(
        isinstance(recorded.get(part), dict) for part in ("built", "sources")
    ):
        return "not built"
    if recorded.get("suffix") != SUFFIX:
        return "not built for this Python"
    built = _built(root)
    for module in (*NATIVE_MODULES, GROUP):
        path = extension_path(module, root).relative_to(root).as_posix()
        if path not in built:
            return f"{module} has no compiled build for this Python"
        if recorded["built"].get(path) != built[path]:
            return f"{path} is not the one the build made"
    extras = sorted(built.keys() - recorded["built"].keys())
    if extras:  # another build's module (one compiled no more) would start its own group's
        return f"{extras[0]} is not the build's"
    sources = recorded["sources"]
    current = source_digests(root)
    for path in sorted(set(sources) | current.keys()):
        if sources.get(path) != current.get(path):
            return f"{path} changed since the build"
    return None


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds each of the package's modules at its `.py` source, ahead of any extension: not
    only NATIVE_MODULES, as another build's extension of a module compiled no more (after a
    checkout of an older commit, say) would start its own group's compiled modules."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith(PACKAGE.name + "."):
            return None
        source = source_path(fullname)
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def pure_python_asked() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def use_current_build() -> bool:
    """Keep the compiled build if it is current and not refused by the environment, else
    make every module of the package import from its source (saying why on stderr unless
    the environment asked). True if the compiled build is in use."""
    asked = pure_python_asked()
    reason = None if asked else current_build_reason()
    if reason is None and not asked:
        return True
    if in_use():
        sys.meta_path.insert(0, _SourcesFirst())
        # Once a process tree: a node's helper processes inherit the environment, and their
        # stdout may be a pipe of frames (where print sends a line when stderr is closed).
        if reason is not None and sys.stderr is not None and not os.environ.get(_SAID):
            os.environ[_SAID] = "1"
            print(
                f"tanlian: the ledger runs as Python source, slower ({reason}): `make`"
                f" compiles it; {PURE_PYTHON_ENV}=1 runs the sources without this line",
                file=sys.stderr,
            )
    return False


def in_use() -> bool:
    """Whether the modules imported so far are the compiled ones."""
    return not any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path)


def describe() -> str:
    """Which build the modules imported so far are, for benchmarks' and reports' headers."""
    if in_use():
        return "compiled by mypyc"
    if pure_python_asked():
        return f"Python source ({PURE_PYTHON_ENV} set)"
    return f"Python source ({current_build_reason()})"


def _remove_extensions(root: Path) -> None:
    """Every extension in the package under `root`, of any Python's build."""
    for path in (root / PACKAGE.name).glob("*.so"):
        path.unlink()


def build(root: Path = PACKAGE.parent) -> int:
    """Compile NATIVE_MODULES under `root` with mypyc in place, then record what the build was
    made from and made. One build at a time. On failure, say why in one line, remove what
    was made, and return 1."""
    lock_path = root / "build" / "native.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = _manifest(root)
        manifest.unlink(missing_ok=True)
        _remove_extensions(root)  # no other build's part is kept
        sources = [str(source_path(module, root).relative_to(root)) for module in NATIVE_MODULES]
        digests = source_digests(root)
        done = subprocess.run(
            [sys.executable, "-c", _SETUP.format(sources=sources, group_name=GROUP_NAME)],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        reason = None
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines() or ["no output"]
            reason = next((line for line in lines if ": error:" in line), lines[-1])[:300]
        elif source_digests(root) != digests:
            reason = "the ledger's sources changed during the build; build again"
        if reason is not None:
            _remove_extensions(root)
            print(
                f"tanlian: the compiled ledger modules were not built ({reason});"
                " they run as Python source, slower",
                file=sys.stderr,
            )
            return 1
        record = {"suffix": SUFFIX, "sources": digests, "built": _built(root)}
        manifest.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", "utf-8")
    print(f"compiled {', '.join(NATIVE_MODULES)} with mypyc")
    return 0
