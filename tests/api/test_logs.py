"""The node's log lines carry their time, level and source (`api.logs`)."""

from __future__ import annotations

import logging
import re

import pytest

from api.logs import configure_logging

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) [\w.]+: .+$")


def test_lines_carry_a_utc_time_a_level_and_a_source_once_however_often_configured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found by review: the node configured no handler, so its warnings were bare lines with
    no time (an operator could not line one validator's up with another's) and its INFO
    lines were lost."""
    configure_logging()
    configure_logging()
    logging.getLogger("tanlian.consensus.transport").warning("peer %s unreachable", "x")
    logging.getLogger("tanlian.node").info("caught up to height %d", 7)
    logging.getLogger("uvicorn.error").info("not the node's: below uvicorn's level")
    logging.getLogger("uvicorn.error").warning("a server warning")
    logging.getLogger("asyncio").info("not the node's: below the root's level")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4, lines  # each once: the second call added no second handler
    assert all(LINE.match(line) for line in lines), lines
    assert lines[0].endswith("WARNING tanlian.consensus.transport: peer x unreachable")
    assert lines[1].endswith("INFO tanlian.node: caught up to height 7")
    assert lines[2].endswith("WARNING uvicorn.error: a server warning")
    assert lines[3].endswith("ERROR asyncio: Task exception was never retrieved")
