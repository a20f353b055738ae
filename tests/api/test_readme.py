"""The README's five-minute walkthrough, run as it is written against a real `tanlian dev`.

The block between the walkthrough markers is given to bash (`set -euo pipefail`) with NODE and
DATA pointing at a node this test starts (with its live simulation, as `make run` has it): if
a command in the README breaks, or its output changes so that the next command cannot read
it, this test fails.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.api.test_cli import environment
from tests.api.test_client_monitor import running_dev_node

ROOT = Path(__file__).resolve().parents[2]
WALKTHROUGH_SECONDS_MAX = 120


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(
        r"<!-- walkthrough:begin -->\n```sh\n(.*?)```\n<!-- walkthrough:end -->", text, re.S
    )
    assert found, "README.md has no walkthrough block"
    return found.group(1)


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = walkthrough()
    assert "tx issue" in script and "tx retire" in script and "verify receipt" in script
    with running_dev_node(tmp_path, simulate=True) as node:
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            env={**environment(), "NODE": node.url, "DATA": str(node.data)},
            capture_output=True,
            text=True,
            timeout=WALKTHROUGH_SECONDS_MAX,
            check=False,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    # step 2: the envelope POSTed with curl committed
    assert re.search(r'"status":"committed","height":\d+,"log_index":\d+', run.stdout), run.stdout
    # step 5: the receipt of Bob's 40 kg verified offline
    assert re.search(r"receipt verified: retirement [0-9a-f]{64}, 40 kg CO2e", run.stdout), (
        run.stdout
    )
