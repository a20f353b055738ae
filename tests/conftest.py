"""Shared test configuration: hypothesis profiles, and how tests share the machine.

Profiles: `dev` (default, quick), `ci` (what .ci/run uses), `nightly` (long; see README):
    HYPOTHESIS_PROFILE=nightly make test

`make test` runs the suite in two pytest-xdist workers (one per core of the CI machine;
`PYTEST_WORKERS` changes it). The tests that run a consortium or kill nodes again and again
poll real processes against deadlines, so they go to one worker, one at a time
(`--dist loadgroup`), while the other worker takes the rest. tests/api/test_schemathesis.py
runs after them in one process: under xdist its per-operation tests were collected and never
run, and its last test checks what the earlier ones did.
"""

import os
from collections.abc import Iterator
from typing import Final

import coverage
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "nightly", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Modules whose tests start several node processes each and time them.
PROCESS_HEAVY: Final = frozenset(
    {
        "tests/api/test_cli_cluster.py",
        "tests/api/test_overload.py",
        "tests/consensus/test_processes.py",
        "tests/consensus/test_processes_proposer.py",
        "tests/consensus/test_processes_twins.py",
        "tests/consensus/test_sync_processes.py",
        "tests/reliability/test_consortium_crash.py",
        "tests/reliability/test_crash.py",
        "tests/reliability/test_resync.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        if item.path.relative_to(root).as_posix() in PROCESS_HEAVY:
            item.add_marker(pytest.mark.xdist_group("processes"))


@pytest.fixture
def untraced() -> Iterator[None]:
    """Runs a test with every coverage measurement of its process paused, for a test that
    repeats, many times over, paths that other tests measure. pytest-cov's `no_cover` marker
    pauses only the measurement on top: an xdist worker runs two (pytest-cov starts one as it
    loads, another at the session's start), and the one below then measured the test alone."""
    paused: list[coverage.Coverage] = []
    while (running := coverage.Coverage.current()) is not None:
        running.stop()
        paused.append(running)
    try:
        yield
    finally:
        for measurement in reversed(paused):
            measurement.start()
