"""`tanlian cluster`: four named parties run as one consortium; SIGTERM stops every child."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from api.cli_cluster import STOP_SECONDS, _last_error, _signal_name, _stop, party_names, prepare
from ledger.errors import LedgerError
from ledger.genesis import parse_genesis
from ledger.store import DATABASE_FILE, LOCK_FILE
from tests.api.test_cli import TANLIAN, assert_fails_cleanly, environment, free_port, tanlian

WAIT_S = 60.0  # four nodes started in 8 s on the loaded 2-core machine, once in over 30 s


def start_cluster(
    data: Path, base: int, *options: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`tanlian cluster --data DATA --base-port BASE OPTIONS...`, its output in one pipe."""
    return subprocess.Popen(
        [str(TANLIAN), "cluster", "--data", str(data), "--base-port", str(base), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment() if env is None else env,
    )


def test_party_names_follow_the_consortium_then_number() -> None:
    assert party_names(5) == [
        "city",
        "certification-centre",
        "platform-operator",
        "independent-party",
        "validator-5",
    ]


IDLE_S = 5.0  # with nothing to decide, no block for this long (the default waits up to 60 s)
COMMIT_S = 15.0  # a transaction submitted to an idle consortium is committed within this


def test_a_signal_that_ended_a_validator_is_named() -> None:
    assert _signal_name(signal.SIGKILL) == "SIGKILL"
    assert _signal_name(signal.SIGTERM) == "SIGTERM"
    unnamed = signal.SIGRTMIN + 1  # real-time signals have no name of their own
    assert _signal_name(unnamed) == f"signal {int(unnamed)}"


@pytest.mark.long(17)
def test_cluster_runs_four_validators_idles_commits_at_once_and_stops_them_all(
    tmp_path: Path,
) -> None:
    """Four named validators with an empty-block interval of 45 s (passed on to each; the
    default is 60): the first block, then no empty block while nothing happens (there had
    been one a second: ~340 MB a day), and a transaction to any of them wakes the consortium
    and is committed on all four at once."""
    base = free_port()
    while any(_taken(base + i) for i in range(1, 4)):
        base = free_port()
    process = start_cluster(tmp_path, base, "--empty-block-interval", "45")
    urls = [f"http://127.0.0.1:{base + i}" for i in range(4)]
    try:
        with httpx.Client(timeout=1, trust_env=False) as client:

            def heights() -> list[int]:
                found = []
                for url in urls:
                    try:
                        found.append(client.get(f"{url}/healthz").json()["height"])
                    except httpx.HTTPError:
                        return found
                return found

            deadline = time.monotonic() + WAIT_S
            # Idle: every validator at one height that stays put for IDLE_S.
            settled, since = heights(), time.monotonic()
            while len(settled) < 4 or min(settled) < 1 or time.monotonic() - since < IDLE_S:
                assert time.monotonic() < deadline, settled
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                time.sleep(0.2)
                now = heights()
                if now != settled or len(set(now)) != 1:
                    settled, since = now, time.monotonic()
            genesis = json.loads((tmp_path / "genesis.json").read_text())
            assert sorted(v["name"] for v in genesis["validators"]) == sorted(party_names(4))
            assert [_option(command, "--empty-block-interval") for command in _nodes(tmp_path)] == [
                "45.0"
            ] * 4
            # A transaction to one validator: committed in the next block, on every one.
            started = time.monotonic()
            submitted = tanlian(
                "tx", "register_methodology", "--node", urls[2],
                "--key", tmp_path / "authority.pem",
                "--signer", parse_genesis(genesis).authority_id,
                "--field", "methodology_id=rooftop-solar",
                "--field", "name=Rooftop solar",
                "--field", f"document_sha256={'ab' * 32}",
            )  # fmt: skip
            assert submitted.returncode == 0, submitted
            assert re.search(r"^status +committed$", submitted.stdout, re.MULTILINE), submitted
            while heights() != [settled[0] + 1] * 4:
                assert time.monotonic() - started < COMMIT_S, (settled, heights())
                time.sleep(0.1)
            for url in urls:
                answer = client.get(f"{url}/v1/blocks/{settled[0] + 1}").json()
                assert len(answer["block"]["transactions"]) == 1, answer
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        output = process.stdout.read().decode() if process.stdout else ""
        assert "stopped every validator" in output
        assert _node_processes(tmp_path) == {}
    finally:
        _stop_cluster(process, tmp_path)


def _nodes(data: Path) -> list[list[str]]:
    """The command lines of the `tanlian node` processes running on `data`'s parties."""
    return list(_node_processes(data).values())


def _node_processes(data: Path) -> dict[int, list[str]]:
    """The `tanlian node` processes running on `data`'s parties (the test's own directory),
    by pid."""
    found = {}
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = path.read_bytes().decode().split("\0")
        except OSError:
            continue  # ended meanwhile
        if "node" in command and any(part.startswith(str(data)) for part in command):
            found[int(path.parent.name)] = command
    return found


def _stop_cluster(process: subprocess.Popen[bytes], data: Path) -> None:
    """SIGTERM first: the supervisor stops its validators by their pids. If it does not
    end, SIGKILL it and then the validators it started on `data` (this test's directory),
    by their pids, whatever the code under test did (found by review)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    for pid in _node_processes(data):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _taken(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie waits only for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_a_validator_that_exits_is_named_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: only the log's path was given, and the log, kept across runs (and
    written by another run on the same directory), buried the reason."""
    monkeypatch.delenv("TANLIAN_PASSPHRASE", raising=False)
    prepare(tmp_path, ["city"])  # the consortium's keys and genesis, as a first run made them
    (tmp_path / "city" / "data").mkdir(parents=True)
    (tmp_path / "city" / "node.log").write_text("error (earlier): a line of an earlier run\n")
    # A store that is not one: the validator starts, then refuses it and exits. (A port
    # taken is refused by the cluster itself, before any validator starts.)
    (tmp_path / "city" / "data" / DATABASE_FILE).write_bytes(b"not a database" * 100)
    result = subprocess.run(
        [str(TANLIAN), "cluster", "--validators", "1", "--data", str(tmp_path),
         "--base-port", str(free_port())],
        check=False,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=WAIT_S,
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error (exited): city's validator process exited (1): error (")
    assert "earlier" not in line and "not a usable Tanlian database" in line, line
    assert line.endswith(f"see {tmp_path / 'city' / 'node.log'}")


def test_a_cluster_of_one_is_refused_an_empty_block_interval(tmp_path: Path) -> None:
    """One validator adds no empty blocks, so `cluster --validators 1` passes the option on to
    no node (a node refuses it there: found by review, every one-validator cluster had
    exited 2), and refuses it when given."""
    result = tanlian(
        "cluster", "--validators", 1, "--data", tmp_path / "one", "--empty-block-interval", 5
    )
    assert_fails_cleanly(result, "a single validator adds no empty blocks", code=2)
    assert not (tmp_path / "one").exists()  # refused before anything is made


def test_validators_end_with_a_cluster_that_is_killed(tmp_path: Path) -> None:
    """Found by review: a SIGKILLed `tanlian cluster` left its validators running, holding
    their ports and data directories."""
    base = free_port()
    process = start_cluster(tmp_path, base, "--validators", "1")
    pids: list[int] = []
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        pids = [int(found) for found in re.findall(r"\(pid (\d+)\)", line)]
        assert len(pids) == 1, line
        assert _running(pids[0])
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + WAIT_S
        while _running(pids[0]):
            assert time.monotonic() < deadline, "the validator outlived its cluster"
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_cluster_keeps_its_keys_encrypted_with_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: `cluster` wrote plain keys whatever $TANLIAN_PASSPHRASE said, and
    read its keys without it, while the validators it starts use it: with a passphrase set,
    every start failed ("the key file is not encrypted", or "is encrypted")."""
    base = free_port()
    while _taken(base + 1):
        base = free_port()
    process = start_cluster(
        tmp_path, base, "--validators", "2", env=environment(passphrase="cluster secret")
    )
    try:
        deadline = time.monotonic() + WAIT_S
        with httpx.Client(timeout=1, trust_env=False) as client:
            while True:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline
                try:
                    answers = [client.get(f"http://127.0.0.1:{base + i}/healthz") for i in (0, 1)]
                except httpx.HTTPError:
                    answers = []
                if answers and all(a.json()["height"] >= 1 for a in answers):
                    break
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert _node_processes(tmp_path) == {}
    finally:
        _stop_cluster(process, tmp_path)
    names = party_names(2)
    for path in [tmp_path / name / "validator.pem" for name in names] + [
        tmp_path / "authority.pem"
    ]:
        assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes(), path
    monkeypatch.setenv("TANLIAN_PASSPHRASE", "cluster secret")
    assert prepare(tmp_path, names) == tmp_path / "genesis.json"  # read back with it
    monkeypatch.delenv("TANLIAN_PASSPHRASE")
    with pytest.raises(LedgerError, match=r"validator\.pem: the key file is encrypted"):
        prepare(tmp_path, names)


def test_a_cluster_whose_port_is_taken_writes_nothing(tmp_path: Path) -> None:
    """Found by review: its keys, genesis and data directories were written first."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        refused = tanlian(
            "cluster", "--validators", "2", "--data", tmp_path / "c", "--base-port", busy
        )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"cannot listen on 127.0.0.1:{busy}" in refused.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.long(25)
def test_a_validator_killed_leaves_the_others_running_and_is_told_how_to_start_again(
    tmp_path: Path,
) -> None:
    """Found by an operator's run of the README: SIGKILL of one validator stopped the whole
    cluster, where the chain goes on with up to f down. The cluster names it, says how to
    start it again and whether the chain can go on (a review: with two of four down it said
    the others go on); started so, it catches up; stopped, the cluster says one had exited
    and exits 1."""
    base = free_port()
    while any(_taken(base + i) for i in range(1, 4)):
        base = free_port()
    process = start_cluster(tmp_path, base, "--empty-block-interval", "0")
    urls = [f"http://127.0.0.1:{base + i}" for i in range(4)]
    restarted: subprocess.Popen[bytes] | None = None
    lines: list[str] = []
    try:
        assert process.stdout is not None
        pids = [int(re.findall(r"\(pid (\d+)\)", process.stdout.readline().decode())[0])
                for _ in range(4)]  # fmt: skip
        with httpx.Client(timeout=1, trust_env=False) as client:

            def height(url: str) -> int:
                try:
                    return int(client.get(f"{url}/healthz").json()["height"])
                except httpx.HTTPError:
                    return -1

            def wait(condition: Callable[[], bool], what: str) -> None:
                deadline = time.monotonic() + WAIT_S
                while not condition():
                    assert time.monotonic() < deadline, what
                    time.sleep(0.2)

            def told(text: str) -> Callable[[], bool]:
                def seen() -> bool:
                    lines.extend(_lines(process))
                    return any(text in line for line in lines)

                return seen

            wait(lambda: min(height(url) for url in urls) >= 1, "the first block everywhere")
            os.kill(pids[2], signal.SIGKILL)
            wait(
                told("warning: 3 of the 4 validators this cluster started run; the chain decides"
                     " while 3 or more do"),
                "one down, told",
            )  # fmt: skip
            (exited,) = [line for line in lines if "validator process was ended by SIGKILL" in line]
            assert exited.startswith("warning: platform-operator's validator process was ended")
            assert process.poll() is None  # the cluster runs on
            top = max(height(url) for url in urls)
            wait(lambda: min(height(urls[i]) for i in (0, 1, 3)) >= top + 2, "the others go on")
            os.kill(pids[3], signal.SIGKILL)
            wait(told("warning: 2 of the 4 validators this cluster started run"), "two down, told")
            command = shlex.split(
                exited.split("start it again (apart from this cluster) with: ")[1]
            )
            assert command[1] == "node" and f"127.0.0.1:{base + 2}" in command
            with (tmp_path / "restarted.log").open("wb") as log:
                restarted = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=environment()
                )
            wait(lambda: min(height(urls[i]) for i in (0, 1, 2)) >= top + 3, "three again")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 1
        rest = process.stdout.read().decode()
        assert "platform-operator, independent-party had ended while the cluster ran" in rest, rest
    finally:
        if restarted is not None and restarted.poll() is None:
            restarted.terminate()
            restarted.wait(timeout=60)
        _stop_cluster(process, tmp_path)


def _lines(process: subprocess.Popen[bytes]) -> list[str]:
    """What `process` has written since the last call, without waiting (read from its pipe
    itself: a buffered reader can hold lines a select never shows), in lines."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    text = _PARTIAL.pop(process.pid, "") + b"".join(chunks).decode()
    *whole, _PARTIAL[process.pid] = text.split("\n")  # the last one may not be whole yet
    return whole


_PARTIAL: dict[int, str] = {}  # by pid: what `_lines` read of a line not yet ended


def test_stores_without_their_genesis_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """Found by review: with DIR/genesis.json gone and the parties' stores there, the cluster
    wrote a new genesis, a new chain, which every validator then refused as another chain
    than its store's; and the wrong genesis stayed, so every later run failed too."""
    store = tmp_path / "city" / "data" / DATABASE_FILE
    store.parent.mkdir(parents=True)
    store.write_bytes(b"a store of the consortium's chain")
    before = sorted(tmp_path.rglob("*"))
    refused = tanlian("cluster", "--validators", 2, "--data", tmp_path, "--base-port", free_port())
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error (missing_genesis): ")
    assert f"{tmp_path / 'genesis.json'} is missing" in line
    assert str(tmp_path / "city" / "data") in line
    assert sorted(tmp_path.rglob("*")) == before  # no genesis, key or log written


def test_a_directory_another_cluster_runs_on_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a second cluster on one DIR started its validators, which failed
    after ~10 s waiting for the stores' locks, and their errors were appended to the running
    validators' logs. It is refused before it starts any, and touches no log."""
    monkeypatch.delenv("TANLIAN_PASSPHRASE", raising=False)
    names = party_names(2)
    prepare(tmp_path, names)  # a consortium's DIR, as its first run made it
    lock = tmp_path / names[1] / "data" / LOCK_FILE
    lock.parent.mkdir(parents=True)
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running validator holds it
        before = sorted(tmp_path.rglob("*"))
        refused = tanlian(
            "cluster", "--validators", 2, "--data", tmp_path, "--base-port", free_port()
        )
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"error (in_use): {lock.parent} is in use"), line
    # Refused before any validator started (each would have waited ~10 s for the lock, and
    # written its error to its log): no log, no store, and no validator named on stdout.
    assert sorted(tmp_path.rglob("*")) == before
    assert "pid" not in refused.stdout


def test_a_validators_reason_is_only_what_it_wrote_last(tmp_path: Path) -> None:
    """What `_last_error` reads: from the log's end at the child's start to just after the
    child's last bytes, and of that the child's last line."""
    log = tmp_path / "node.log"
    earlier = b"error (earlier): a line of an earlier run\n"
    own = b"2026-01-01T00:00:00.000Z INFO tanlian: validator running\n"
    foreign = b"error (foreign): a line another process appended\n"
    final = b"error (store_unavailable): the child's own last word\n"
    log.write_bytes(earlier + own + foreign + final + foreign)
    start = len(earlier)
    end = start + len(own)
    assert _last_error(log, start, end) == ""  # the foreign line after its last write
    assert _last_error(log, start, end + len(foreign) + len(final)) == (
        ": error (store_unavailable): the child's own last word"
    )
    # a foreign line before the child's last line is not its reason
    log.write_bytes(earlier + foreign + own)
    assert _last_error(log, start, len(earlier + foreign + own)) == ""


@pytest.mark.long(15)
def test_a_validator_stopped_from_outside_is_told_apart_and_never_given_anothers_reason(
    tmp_path: Path,
) -> None:
    """Found by review: a validator SIGKILLed was given, as its reason, an error line another
    process had appended to its log meanwhile; and one stopped by a plain `kill` (SIGTERM,
    which a validator takes as a request to stop, exit 0) was reported as "exited (0)"."""
    base = free_port()
    while _taken(base + 1):
        base = free_port()
    process = start_cluster(tmp_path, base, "--validators", "2")
    urls = [f"http://127.0.0.1:{base + i}" for i in range(2)]
    names = party_names(2)
    try:
        assert process.stdout is not None
        pids = [int(re.findall(r"\(pid (\d+)\)", process.stdout.readline().decode())[0])
                for _ in range(2)]  # fmt: skip
        _wait_serving(process, urls)
        with (tmp_path / names[0] / "node.log").open("ab") as log:
            log.write(b"error (foreign): a line another process appended\n")
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + WAIT_S
        lines: list[str] = []
        while not any("warning: 1 of the 2 validators" in line for line in lines):
            assert time.monotonic() < deadline, lines
            assert process.poll() is None, lines
            lines.extend(_lines(process))
            time.sleep(0.1)
        (killed,) = [line for line in lines if "process was ended by SIGKILL" in line]
        assert killed.startswith(
            f"warning: {names[0]}'s validator process was ended by SIGKILL: see"
            f" {tmp_path / names[0] / 'node.log'}; start it again"
        ), killed
        os.kill(pids[1], signal.SIGTERM)  # the last one: the cluster ends
        assert process.wait(timeout=60) == 1
        rest = "\n".join([*lines, *_lines(process)])
        (ended,) = [line for line in rest.splitlines() if line.startswith("error (exited)")]
        assert f"{names[1]}'s validator process stopped on its own (exit 0, as after a `kill`" in (
            ended
        )
        assert "foreign" not in rest and "exited (0)" not in rest, rest
    finally:
        _stop_cluster(process, tmp_path)


@pytest.mark.long(30)
def test_a_validator_killed_after_the_stop_timeout_is_named_and_the_exit_is_1(
    tmp_path: Path,
) -> None:
    """Found by review: stopped (Ctrl-C) with a validator paused (SIGSTOP), the cluster
    SIGKILLed it after its stop timeout, then said "stopped every validator" and exited 0."""
    base = free_port()
    process = start_cluster(tmp_path, base, "--validators", "1")
    pid: int | None = None
    try:
        assert process.stdout is not None
        (pid,) = [
            int(found) for found in re.findall(r"\(pid (\d+)\)", process.stdout.readline().decode())
        ]
        _wait_serving(process, [f"http://127.0.0.1:{base}"])
        os.kill(pid, signal.SIGSTOP)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=STOP_SECONDS + 40) == 1
        output = process.stdout.read().decode()
        (line,) = [line for line in output.splitlines() if line.startswith("error (")]
        assert line == (
            "error (exited): stopped the validators still running; city did not stop within"
            f" {STOP_SECONDS:g} s and was killed (SIGKILL)"
        ), output
        assert "stopped every validator" not in output
        assert not _running(pid)
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        _stop_cluster(process, tmp_path)


def test_stop_names_the_children_it_had_to_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_stop`: SIGTERM to each child, then SIGKILL to one still there after STOP_SECONDS;
    it says which."""
    monkeypatch.setattr("api.cli_cluster.STOP_SECONDS", 0.5)
    # A paused validator, whose SIGTERM handler cannot run: a process that ignores SIGTERM.
    ignoring = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print()"
    children = [
        subprocess.Popen(["sleep", "60"]),
        subprocess.Popen(
            [sys.executable, "-c", f"{ignoring}; time.sleep(60)"], stdout=subprocess.PIPE
        ),
    ]
    try:
        assert children[1].stdout is not None
        children[1].stdout.readline()  # SIGTERM is ignored from now on
        assert _stop(children) == [1]
        assert children[0].returncode == -signal.SIGTERM
        assert children[1].returncode == -signal.SIGKILL
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)


def _wait_serving(process: subprocess.Popen[bytes], urls: list[str]) -> None:
    """Every validator at `urls` answers /healthz (its signal handlers are set by then)."""
    deadline = time.monotonic() + WAIT_S
    with httpx.Client(timeout=1, trust_env=False) as client:
        while True:
            assert process.poll() is None, process.returncode
            assert time.monotonic() < deadline, "the validators did not start"
            try:
                if all(client.get(f"{url}/healthz").status_code == 200 for url in urls):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
