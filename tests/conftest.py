"""Shared test configuration: hypothesis profiles, and how tests share the machine.

Profiles: `dev` (default, quick), `ci` (what .ci/run uses), `nightly` (long; see README):
    HYPOTHESIS_PROFILE=nightly make test

`make test` runs the suite in two pytest-xdist workers (one per core of the CI machine;
`PYTEST_WORKERS` changes it) with `--dist worksteal`: each worker is given half of the
tests in collection order, and one that runs out takes half of what the other still has
queued, from the end of its queue. Tests marked `long(seconds)` (about what one took in a CI
run) are collected first, longest first, so they sit at the head of one worker's queue and
run there one after another, while the other worker takes everything else; both end
together (the default `--dist load` left one worker running a 200 s crash test alone at the
end). The tests that run a consortium or kill nodes may still run beside each other: their
deadlines are written for a loaded machine. (They were once meant to share one worker
through `xdist_group` and `--dist loadgroup`, but with pytest 9.2 xdist no longer sees the
group, pytest-dev/pytest-xdist#1386.) tests/api/test_schemathesis.py runs apart in one
process (`make test`): under xdist its per-operation tests were collected and never run, and
its last test checks what the earlier ones did.
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `long` tests first, longest first; the rest in collection order."""

    def seconds(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long")
        return float(marker.args[0]) if marker is not None else 0.0

    items.sort(key=seconds, reverse=True)


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
