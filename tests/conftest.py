"""Shared test configuration: hypothesis profiles, and how tests share the machine.

Profiles: `dev` (default, quick), `ci` (what .ci/run uses), `nightly` (long; see README):
    HYPOTHESIS_PROFILE=nightly make test

`make test` runs the suite in two pytest-xdist workers (one per core of the CI machine;
`PYTEST_WORKERS` changes it), each taking tests as it frees up. The tests that run a
consortium or kill nodes again and again run beside anything else, each other included: their
deadlines are written for a loaded machine. (They were meant to share one worker through
`xdist_group` and `--dist loadgroup`, but with pytest 9.2 xdist no longer sees the group,
pytest-dev/pytest-xdist#1386: every CI run so far ran them in both workers, and the grouping
is gone.) tests/api/test_schemathesis.py runs apart in one process (`make test`): under xdist
its per-operation tests were collected and never run, and its last test checks what the
earlier ones did.
"""

import os
from collections.abc import Iterator

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
