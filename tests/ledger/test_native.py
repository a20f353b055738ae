"""The compiled build of the hottest ledger modules (ledger/native.py): the suite runs the
build `make` made, and a build that does not match its sources is never used."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ledger
from ledger import encoding, native, schema, state_tree

ROOT = Path(ledger.__file__).resolve().parent.parent


def test_the_suite_runs_the_build_make_chose() -> None:
    # `make test` runs the suite on the compiled build, then the ledger's tests on the
    # sources (TANLIAN_PURE_PYTHON=1), whose lines coverage can see: each pass must be what
    # it says, or a failed build would leave the compiled code untested.
    pure = os.environ.get(native.PURE_PYTHON_ENV, "") not in ("", "0")
    assert native.in_use() is not pure
    for module in (encoding, schema, state_tree):
        suffix = Path(str(module.__file__)).suffix
        assert suffix == (".py" if pure else ".so"), module.__name__
    if not pure:
        assert native.current_build_reason() is None


def copy_of_the_build(tmp_path: Path) -> Path:
    """The package's sources, compiled modules and manifest, copied under `tmp_path`."""
    if native.current_build_reason() is not None:
        pytest.fail(f"no current compiled build to copy: {native.current_build_reason()}")
    shutil.copytree(
        ROOT / "ledger", tmp_path / "ledger", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def imported_from(root: Path, *, environment: dict[str, str] | None = None) -> dict[str, str]:
    """Where a fresh interpreter with `root` first on its path finds the native modules."""
    script = (
        "import json, ledger.encoding, ledger.schema, ledger.state_tree, ledger.native;"
        "print(json.dumps({m.__name__: m.__file__ for m in"
        " (ledger.encoding, ledger.schema, ledger.state_tree)}))"
    )
    env = {k: v for k, v in os.environ.items() if k != native.PURE_PYTHON_ENV}
    env.update(environment or {})
    env["PYTHONPATH"] = str(root)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=root,
        env=env,
    )
    files: dict[str, str] = json.loads(done.stdout)
    assert all(Path(path).is_relative_to(root) for path in files.values()), files
    return files


def suffixes(files: dict[str, str]) -> set[str]:
    return {Path(path).suffix for path in files.values()}


def test_a_current_build_is_imported(tmp_path: Path) -> None:
    root = copy_of_the_build(tmp_path)
    assert native.current_build_reason(root) is None
    assert suffixes(imported_from(root)) == {".so"}
    assert suffixes(imported_from(root, environment={native.PURE_PYTHON_ENV: "1"})) == {".py"}


def test_a_source_changed_since_the_build_runs_every_module_from_source(tmp_path: Path) -> None:
    root = copy_of_the_build(tmp_path)
    source = native.source_path("ledger.schema", root)
    source.write_text(source.read_text("utf-8") + "\n# edited after the build\n", "utf-8")
    assert native.current_build_reason(root) == "ledger.schema changed since it was compiled"
    # All or none: the unchanged modules' compiled code would call the stale one's directly.
    assert suffixes(imported_from(root)) == {".py"}


def test_a_build_missing_a_part_or_its_record_is_not_used(tmp_path: Path) -> None:
    root = copy_of_the_build(tmp_path)
    for path in native.extension_paths(native.GROUP, root):
        path.unlink()
    assert native.current_build_reason(root) == (
        f"{native.GROUP} has no compiled build for this Python"
    )
    assert suffixes(imported_from(root)) == {".py"}
    root = copy_of_the_build(tmp_path / "again")
    (root / "ledger" / "native.json").write_text("[]", "utf-8")
    assert native.current_build_reason(root) == "not built"
    (root / "ledger" / "native.json").unlink()
    assert native.current_build_reason(root) == "not built"
    assert suffixes(imported_from(root)) == {".py"}


def test_a_build_that_fails_says_why_and_leaves_the_sources_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of_the_build(tmp_path)
    source = native.source_path("ledger.state_tree", root)
    source.write_text(source.read_text("utf-8") + '\nBROKEN: int = "not an int"\n', "utf-8")
    assert native.build(root) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("tanlian: the compiled ledger modules were not built (")
    assert "ledger/state_tree.py" in line and "incompatible types in assignment" in line.lower()
    assert line.endswith("they run as Python source, slower")
    # Nothing of the old build is left to be taken for the new one.
    assert all(not native.extension_paths(m, root) for m in (*native.NATIVE_MODULES, native.GROUP))
    assert native.current_build_reason(root) == "not built"
    assert suffixes(imported_from(root)) == {".py"}
