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
from ledger import encoding, native, schema, state_transition, state_tree, transactions

ROOT = Path(ledger.__file__).resolve().parent.parent


def test_the_suite_runs_the_build_make_chose() -> None:
    # `make test` runs the suite on the compiled build, then the ledger's tests on the
    # sources (TANLIAN_PURE_PYTHON=1), whose lines coverage can see: each pass must be what
    # it says, or a failed build would leave the compiled code untested.
    pure = native.pure_python_asked()
    assert native.in_use() is not pure
    for module in (encoding, schema, state_tree, transactions, state_transition):
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
    shutil.copy(ROOT / "pyproject.toml", tmp_path)  # mypyc reads mypy's settings there
    return tmp_path


def run_python(
    root: Path, script: str, *, environment: dict[str, str] | None = None, shell: bool = False
) -> subprocess.CompletedProcess[str]:
    """`script` in a fresh interpreter with `root` first on its path (in `sh -c` if `shell`),
    in this environment less what chooses or reports the build, plus `environment`."""
    chosen = (native.PURE_PYTHON_ENV, "_TANLIAN_SOURCES_SAID")
    env = {k: v for k, v in os.environ.items() if k not in chosen} | (environment or {})
    env["PYTHONPATH"] = str(root)
    command = ["sh", "-c", script] if shell else [sys.executable, "-c", script]
    return subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=60, cwd=root, env=env
    )


def imported_from(root: Path, *, environment: dict[str, str] | None = None) -> dict[str, str]:
    """Where a fresh interpreter with `root` first on its path finds the native modules."""
    script = (
        "import importlib, json, ledger.native as n;"
        "print(json.dumps({m: importlib.import_module(m).__file__ for m in n.NATIVE_MODULES}))"
    )
    done = run_python(root, script, environment=environment)
    files: dict[str, str] = json.loads(done.stdout)
    assert sorted(files) == sorted(native.NATIVE_MODULES)
    assert all(Path(path).is_relative_to(root) for path in files.values()), files
    return files


def suffixes(files: dict[str, str]) -> set[str]:
    return {Path(path).suffix for path in files.values()}


def test_a_current_build_is_imported(tmp_path: Path) -> None:
    root = copy_of_the_build(tmp_path)
    assert native.current_build_reason(root) is None
    assert suffixes(imported_from(root)) == {".so"}
    assert suffixes(imported_from(root, environment={native.PURE_PYTHON_ENV: "1"})) == {".py"}


@pytest.mark.parametrize("edited", ["ledger.schema", "ledger.limits", "ledger.receipts"])
def test_a_source_changed_since_the_build_runs_every_module_from_source(
    tmp_path: Path, edited: str
) -> None:
    # A compiled module: all or none, as the others' compiled code calls it directly. One
    # left as Python: a compiled module holds its constants (mypyc inlines a `Final`). Any
    # other: the build is judged on the whole package, simply.
    root = copy_of_the_build(tmp_path)
    source = native.source_path(edited, root)
    source.write_text(source.read_text("utf-8") + "\n# edited after the build\n", "utf-8")
    path = source.relative_to(root).as_posix()
    assert native.current_build_reason(root) == f"{path} changed since the build"
    assert suffixes(imported_from(root)) == {".py"}
    source.unlink()
    assert native.current_build_reason(root) == f"{path} changed since the build"


def test_a_build_missing_a_part_or_its_record_is_not_used(tmp_path: Path) -> None:
    root = copy_of_the_build(tmp_path)
    native.extension_path(native.GROUP, root).unlink()
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
    assert not list((root / "ledger").glob("*.so"))
    assert native.current_build_reason(root) == "not built"
    assert suffixes(imported_from(root)) == {".py"}


def test_an_extension_the_build_did_not_make_is_not_used(tmp_path: Path) -> None:
    # Another build's extension (a second Python's build left beside it, or an older build
    # finishing after a newer one) is told by its size and modification time.
    root = copy_of_the_build(tmp_path)
    path = native.extension_path("ledger.state_tree", root)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
    relative = path.relative_to(root).as_posix()
    assert native.current_build_reason(root) == f"{relative} is not the one the build made"
    assert suffixes(imported_from(root)) == {".py"}


def test_a_build_by_another_python_is_not_used(tmp_path: Path) -> None:
    root = copy_of_the_build(tmp_path)
    manifest = root / "ledger" / "native.json"
    record = json.loads(manifest.read_text("utf-8"))
    record["suffix"] = ".cpython-312-x86_64-linux-gnu.so"
    manifest.write_text(json.dumps(record), "utf-8")
    assert native.current_build_reason(root) == "not built for this Python"
    assert suffixes(imported_from(root)) == {".py"}


def test_falling_back_to_the_sources_says_why_unless_asked(tmp_path: Path) -> None:
    root = copy_of_the_build(tmp_path)
    (root / "ledger" / "native.json").unlink()
    script = "import ledger.state_tree; print(ledger.state_tree.__file__)"
    said = run_python(root, script)
    assert said.stdout == f"{root / 'ledger' / 'state_tree.py'}\n"
    assert said.stderr == (
        "tanlian: the ledger runs as Python source, slower (not built): `make` compiles it;"
        " TANLIAN_PURE_PYTHON=1 runs the sources without this line\n"
    )
    quiet = run_python(root, script, environment={native.PURE_PYTHON_ENV: "1"})
    assert quiet.stdout == said.stdout and quiet.stderr == ""


def test_another_builds_extension_of_a_module_compiled_no_more_is_not_imported(
    tmp_path: Path,
) -> None:
    # After a checkout of a commit that compiles fewer modules, say: the left-over
    # extension would start its own group's compiled modules, past the sources.
    root = copy_of_the_build(tmp_path)
    leftover = root / "ledger" / f"receipts{native.SUFFIX}"
    shutil.copy2(native.extension_path("ledger.state", root), leftover)
    relative = leftover.relative_to(root).as_posix()
    assert native.current_build_reason(root) == f"{relative} is not the build's"
    assert suffixes(imported_from(root)) == {".py"}
    script = "import ledger.receipts as r; print(r.__file__)"
    for environment in ({}, {native.PURE_PYTHON_ENV: "1"}):
        done = run_python(root, script, environment=environment)
        assert done.stdout == f"{root / 'ledger' / 'receipts.py'}\n"


def test_the_line_about_the_sources_is_said_once_a_process_tree_and_never_on_stdout(
    tmp_path: Path,
) -> None:
    root = copy_of_the_build(tmp_path)
    (root / "ledger" / "native.json").unlink()
    # A node's helper processes inherit its environment; their stdout may carry frames.
    script = (
        "import subprocess, sys, ledger.state_tree;"
        "subprocess.run([sys.executable, '-c', 'import ledger.state_tree'], check=True)"
    )
    done = run_python(root, script)
    assert done.stdout == "" and done.stderr.count("tanlian: the ledger runs as Python") == 1
    # With stderr closed, Python's sys.stderr is None, and print's default is stdout.
    closed = f"exec {sys.executable} -c 'import ledger.state_tree' 2>&-"
    assert run_python(root, closed, shell=True).stdout == ""
