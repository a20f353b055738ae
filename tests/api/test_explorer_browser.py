"""The explorer in a real browser: Debian's Chromium, driven by Playwright, against a real
`tanlian dev` node this module starts (one node and one browser for the module).

It searches and navigates with the keyboard, verifies a genuine retirement receipt (✔) and a
tampered one (✘) and a transaction's inclusion proof, checks that the JavaScript verifier
(api/static/verify.js) agrees with the Python one (ledger.receipts.verify_receipt and the pure
checks it uses) on hypothesis-made tamperings, that the dashboard draws its charts, that pages
fit a phone's width, and that no page logs a console error. A screenshot of each page is saved
under test-artifacts/explorer/ (git-ignored) and checked to be a real, non-trivial PNG.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from ledger import schema as s
from ledger.blocks import (
    compute_validators_hash,
    parse_certificate,
    parse_header,
    parse_validators,
    verify_certificate,
)
from ledger.crypto import GROUP_L, SMALL_ORDER_Y, is_public_key
from ledger.encoding import canonical, decode
from ledger.errors import InvalidProofError, LedgerError
from ledger.genesis import Genesis, parse_genesis
from ledger.limits import TRANSACTION_BYTES_MAX_CEILING
from ledger.merkle import leaf_hash, verify_inclusion
from ledger.receipts import verify_receipt
from ledger.transactions import parse_envelope, verify_envelope_signatures
from tests.api.test_client_monitor import RunningNode, running_dev_node

ROOT: Final = Path(__file__).resolve().parents[2]
ARTIFACTS: Final = ROOT / "test-artifacts" / "explorer"
CHROMIUM: Final = "/usr/bin/chromium"
# Headless, and nothing that reaches for the network (closed here) on its own.
CHROMIUM_ARGS: Final = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS: Final = 20_000
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
SCREENSHOT_BYTES_MIN: Final = 10_000


class Explorer:
    """The node, its chain's genesis, and one browser page with its console log."""

    def __init__(self, node: RunningNode, page: Page, genesis: Genesis) -> None:
        self.node = node
        self.page = page
        self.genesis = genesis
        self.trusted = compute_validators_hash(genesis.validators)
        self.errors: list[str] = []

    def url(self, path: str) -> str:
        return self.node.url + path

    def goto(self, path: str, status: int = 200) -> None:
        response = self.page.goto(self.url(path))
        assert response is not None and response.status == status, (path, response)
        if status != 200:  # the browser logs the page's own status as a console error
            self.errors[:] = [e for e in self.errors if f"status of {status}" not in e]

    def load_verifier(self) -> None:
        """Be on a page that has loaded verify.js."""
        if not self.page.evaluate("typeof TanlianVerify === 'object'"):
            self.goto("/verify")

    def get(self, path: str) -> Any:
        response = httpx.get(self.url(path), timeout=30)
        assert response.status_code == 200, (path, response.text)
        return response.json()

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with running_dev_node(tmp_path_factory.mktemp("explorer"), simulate=False) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def explorer(node: RunningNode, browser: Browser) -> Iterator[Explorer]:
    context = browser.new_context(viewport={"width": 1200, "height": 900}, locale="zh-CN")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    genesis = parse_genesis(json.loads((node.data / "genesis.json").read_text()))
    opened = Explorer(node, page, genesis)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            opened.errors.append(f"{page.url}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: opened.errors.append(f"{page.url}: {error}"))
    try:
        yield opened
    finally:
        context.close()


@pytest.fixture(autouse=True)
def no_console_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test here ends with no error in the browser's console."""
    yield
    if "explorer" in request.fixturenames:
        opened: Explorer = request.getfixturevalue("explorer")
        errors, opened.errors[:] = list(opened.errors), []
        assert not errors, errors


def a_retirement(explorer: Explorer, purpose: str | None = None) -> dict[str, Any]:
    for record in explorer.get("/v1/retirements?limit=100")["items"]:
        if purpose is None or record["purpose"] == purpose:
            found: dict[str, Any] = record
            return found
    raise AssertionError(f"the demo chain has no {purpose} retirement")


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 300, (path, width, height)
    assert len(data) >= SCREENSHOT_BYTES_MIN, (path, len(data))


# --- navigating ---------------------------------------------------------------------------------


def test_dev_prints_the_explorer_url(node: RunningNode) -> None:
    out = (node.data.parent / "dev.out").read_text()
    assert f"explorer {node.url}/" in out and f"{node.url}/dashboard" in out


def test_search_and_navigate_with_the_keyboard(explorer: Explorer) -> None:
    page = explorer.page
    explorer.goto("/")
    page.keyboard.press("Tab")  # the first stop is the skip link
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.focus("#q")
    page.keyboard.type("B-2")
    page.keyboard.press("Enter")
    page.wait_for_url("**/batches/B-2")
    assert "B-2" in page.title()
    certifier = page.locator("dl.details a.id").first
    certifier.focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/accounts/*")
    assert "Certifier" in page.inner_text("main")
    record = a_retirement(explorer, "incentive")
    page.fill("#q", record["retirement_id"].upper())
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/retirements/{record['retirement_id']}")
    page.click(f"a[href='/transactions/{record['retirement_id']}']")
    page.wait_for_url(f"**/transactions/{record['retirement_id']}")
    page.click(f"a[href='/programmes/{record['program_id']}']")
    page.wait_for_url(f"**/programmes/{record['program_id']}")
    explorer.goto("/search?q=no-such-thing-anywhere", status=404)


def test_unknown_ids_and_bad_addresses_are_pages_a_person_can_read(explorer: Explorer) -> None:
    explorer.goto("/batches/B-999999", status=404)
    assert "not_found" in explorer.page.inner_text("main")
    check_png(explorer.screenshot("error-404"))
    explorer.goto("/blocks/not-a-height", status=400)
    assert "bad_query" in explorer.page.inner_text("main")


# --- verifying in the browser -------------------------------------------------------------------


def test_a_genuine_receipt_verifies_on_its_certificate(explorer: Explorer) -> None:
    record = a_retirement(explorer, "incentive")
    explorer.goto(f"/retirements/{record['retirement_id']}")
    page = explorer.page
    seal = page.locator("[data-seal][data-verified]")
    seal.wait_for()
    assert seal.get_attribute("data-verified") == "verified", page.inner_text(".result")
    assert "✔" in seal.inner_text()
    steps = page.locator(".steps li")
    assert steps.count() == 6
    assert page.locator(".steps li.step-passed").count() == 6
    report = page.evaluate("window.tanlianLastReport.signatures")
    assert report is True, "this Chromium checks Ed25519 in WebCrypto"
    # and the Python verifier agrees on the very receipt the page embeds
    embedded = page.evaluate("document.getElementById('receipt-data').textContent")
    verify_receipt(
        decode(embedded),
        validators_hash=explorer.trusted,
        genesis_hash=explorer.genesis.genesis_hash(),
    )
    explorer.screenshot("certificate")
    page.emulate_media(media="print")
    explorer.screenshot("certificate-print")
    assert not page.locator("header.site nav").is_visible()
    page.emulate_media(media="screen")


def test_a_tampered_receipt_fails_on_the_verify_page(explorer: Explorer, tmp_path: Path) -> None:
    record = a_retirement(explorer)
    receipt = explorer.get(f"/v1/retirements/{record['retirement_id']}/receipt")
    tampered = copy.deepcopy(receipt)
    tampered["retirement"]["quantity"] += 1000  # a bigger retirement than the ledger's
    with pytest.raises(InvalidProofError):
        verify_receipt(tampered, validators_hash=explorer.trusted)
    page = explorer.page
    for document, expected, mark in ((receipt, "verified", "✔"), (tampered, "failed", "✘")):
        path = tmp_path / f"{expected}.json"
        path.write_text(json.dumps(document, ensure_ascii=False, indent=2))
        explorer.goto("/verify")
        page.set_input_files("#receipt-file", str(path))
        page.click("button.verify-button")
        result = page.locator(".result[data-verified]")
        result.wait_for()
        assert result.get_attribute("data-verified") == expected, result.inner_text()
        assert mark in result.inner_text()
        explorer.screenshot(f"verify-{expected}")
    failed = page.locator(".steps li.step-failed")
    assert failed.count() == 1 and "differs from the transaction" in failed.inner_text()
    # pasted text that is not strict JSON (a float) fails at the first step
    explorer.goto("/verify")
    page.fill("#receipt-text", '{"log_index": 1.0}')
    page.click("button.verify-button")
    result = page.locator(".result[data-verified]")
    result.wait_for()
    assert result.get_attribute("data-verified") == "failed"
    assert "not an integer" in result.inner_text()


def test_a_transaction_verifies_with_its_button(explorer: Explorer) -> None:
    record = a_retirement(explorer)
    explorer.goto(f"/transactions/{record['retirement_id']}")
    page = explorer.page
    assert page.locator(".result[data-verified]").count() == 0  # nothing until asked
    page.click("button.verify-button")
    result = page.locator(".result[data-verified]")
    result.wait_for()
    assert result.get_attribute("data-verified") == "verified", result.inner_text()
    explorer.screenshot("transaction")
    # a validator set nobody trusts: the same proof fails at step 2
    page.fill("#trusted", "ab" * 32)
    page.click("button.verify-button")
    page.wait_for_function("document.querySelector('.result').dataset.verified === 'failed'")
    assert "not the trusted" in page.inner_text(".result")


# --- the JavaScript verifier agrees with the Python one -----------------------------------------


def python_verifies_receipt(text: str, explorer: Explorer, chain_id: str | None = None) -> bool:
    try:
        verify_receipt(
            decode(text, max_depth=8),
            validators_hash=explorer.trusted,
            genesis_hash=explorer.genesis.genesis_hash(),
            chain_id=chain_id or explorer.genesis.chain_id,
        )
    except LedgerError:
        return False
    return True


def js_verifies_receipt(text: str, explorer: Explorer, chain_id: str | None = None) -> Any:
    explorer.load_verifier()
    return explorer.page.evaluate(
        "async ([text, trusted, genesis, chainId]) => (await TanlianVerify.verifyReceiptText("
        "text, {validatorsHash: trusted, genesisHash: genesis, chainId})).verified",
        [
            text,
            explorer.trusted,
            explorer.genesis.genesis_hash(),
            chain_id or explorer.genesis.chain_id,
        ],
    )


Path_ = tuple[str | int, ...]


def leaf_paths(value: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every path to a value inside `value` (objects' keys and arrays' indexes)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += leaf_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += leaf_paths(item, (*prefix, index))
    return found


def replace_at(value: Any, path: Path_, new: Any) -> Any:
    if not path:
        return new
    copied = copy.copy(value)
    copied[path[0]] = replace_at(value[path[0]], path[1:], new)
    return copied


def remove_at(value: Any, path: Path_) -> Any:
    copied = copy.deepcopy(value)
    del get_at(copied, path[:-1])[path[-1]]
    return copied


def get_at(value: Any, path: Path_) -> Any:
    for step in path:
        value = value[step]
    return value


@st.composite
def tamperings(draw: st.DrawFn, document: Any) -> str:
    """`document` with one change somewhere, as JSON text."""
    paths = leaf_paths(document)[1:]
    path = draw(st.sampled_from(paths))
    old = get_at(document, path)
    kind = draw(st.sampled_from(["value", "remove", "text"]))
    if kind == "remove":
        return json.dumps(remove_at(document, path), ensure_ascii=False)
    if kind == "text":  # spellings strict JSON refuses, whatever the value means
        text = json.dumps(replace_at(document, path, "\x00MARK"), ensure_ascii=False)
        spelling = draw(st.sampled_from(["1.0", "1e3", "-1", "9007199254740992", '"\\ud800"']))
        return text.replace('"\\u0000MARK"', spelling)
    if isinstance(old, bool) or old is None:
        new: Any = draw(st.sampled_from([True, False, None, 0, ""]))
    elif isinstance(old, int):
        new = draw(st.sampled_from([old + 1, max(0, old - 1), str(old), 0, 2**53 - 1]))
    elif isinstance(old, str):
        if old and all(c in "0123456789abcdef" for c in old):
            at = draw(st.integers(0, len(old) - 1))
            new = old[:at] + ("0" if old[at] != "0" else "1") + old[at + 1 :]
        else:
            new = draw(st.sampled_from([old + "x", "", old.upper(), 1]))
    elif isinstance(old, list):
        new = draw(st.sampled_from([[], old + old[:1], old[::-1], old[1:]]))
    else:
        new = draw(st.sampled_from([{}, {**old, "extra": 1}, None]))
    return json.dumps(replace_at(document, path, new), ensure_ascii=False)


@pytest.fixture(scope="module")
def genuine_receipt(explorer: Explorer) -> Any:
    record = a_retirement(explorer, "incentive")
    receipt = explorer.get(f"/v1/retirements/{record['retirement_id']}/receipt")
    explorer.goto("/verify")  # a page that loads verify.js
    return receipt


def test_the_genuine_receipt_verifies_in_both(explorer: Explorer, genuine_receipt: Any) -> None:
    text = json.dumps(genuine_receipt, ensure_ascii=False)
    assert python_verifies_receipt(text, explorer)
    assert js_verifies_receipt(text, explorer) is True
    # Trusted for another chain (one run by the same validators), it fails in both.
    assert not python_verifies_receipt(text, explorer, chain_id="zibo-prod")
    assert js_verifies_receipt(text, explorer, chain_id="zibo-prod") is False


def scaled(ci_examples: int) -> int:
    """Examples for a browser-driven property: `ci_examples` under the `ci` profile, scaled
    with the profile in use (dev fewer, nightly more: tests/conftest.py), each a page load."""
    ci = settings.get_profile("ci").max_examples
    current = settings.default
    assert current is not None  # tests/conftest.py loads a profile
    return max(1, ci_examples * current.max_examples // ci)


@settings(max_examples=scaled(60), deadline=None)
@given(data=st.data())
def test_javascript_and_python_agree_on_tampered_receipts(
    explorer: Explorer, genuine_receipt: Any, data: st.DataObject
) -> None:
    text = data.draw(tamperings(genuine_receipt))
    expected = python_verifies_receipt(text, explorer)
    assert js_verifies_receipt(text, explorer) is expected, text[:2000]


def python_verifies_proof(proof: Any, tx_id: str, trusted: str) -> bool:
    """The transaction page's checks, from the pure modules (what verify.js mirrors)."""
    try:
        s.obj(
            {
                "transaction": lambda p, v: v,
                "height": s.integer(1),
                "log_index": s.integer(0),
                "log_size": s.integer(0),
                "path": s.array(s.HASH_HEX, low=0, high=64),
                "checkpoint": s.obj({"header": lambda p, v: v, "certificate": lambda p, v: v}),
                "validators": lambda p, v: v,
            }
        )("proof", proof)
        header = parse_header(proof["checkpoint"]["header"])
        certificate = parse_certificate(proof["checkpoint"]["certificate"])
        validators = parse_validators(proof["validators"])
        envelope = parse_envelope(
            proof["transaction"], transaction_bytes_max=TRANSACTION_BYTES_MAX_CEILING
        )
        if proof["log_size"] != header.log_size or proof["height"] > header.height:
            return False
        computed = compute_validators_hash(validators)
        if computed != trusted or header.validators_hash != computed:
            return False
        verify_certificate(
            certificate,
            chain_id=header.chain_id,
            height=header.height,
            block_hash=header.block_hash(),
            validators=validators,
        )
        if envelope.tx_id != tx_id or envelope.tx.chain_id != header.chain_id:
            return False
        verify_envelope_signatures(envelope)
        verify_inclusion(
            leaf_hash=leaf_hash(envelope.leaf),
            index=proof["log_index"],
            size=header.log_size,
            path=[bytes.fromhex(node) for node in proof["path"]],
            root=bytes.fromhex(header.log_root),
        )
    except LedgerError:
        return False
    return True


@pytest.fixture(scope="module")
def genuine_proof(explorer: Explorer) -> tuple[str, Any]:
    record = a_retirement(explorer)
    tx_id = record["retirement_id"]
    explorer.goto(f"/transactions/{tx_id}")
    proof = decode(explorer.page.evaluate("document.getElementById('proof-data').textContent"))
    return tx_id, proof


@settings(max_examples=scaled(40), deadline=None)
@given(data=st.data())
def test_javascript_and_python_agree_on_tampered_transaction_proofs(
    explorer: Explorer, genuine_proof: tuple[str, Any], data: st.DataObject
) -> None:
    tx_id, proof = genuine_proof
    assert python_verifies_proof(proof, tx_id, explorer.trusted)
    text = data.draw(tamperings(proof))
    try:
        value = decode(text)
    except LedgerError:
        expected = False
    else:
        expected = python_verifies_proof(value, tx_id, explorer.trusted)
    explorer.load_verifier()
    verified = explorer.page.evaluate(
        "async ([text, txId, trusted]) => { let proof; try { proof = "
        "TanlianVerify.parseStrict(text); } catch (e) { return false; } return (await "
        "TanlianVerify.verifyTransactionProof(proof, {txId, validatorsHash: trusted})).verified }",
        [text, tx_id, explorer.trusted],
    )
    assert verified is expected, text[:2000]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(0, 2**53 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=scaled(80), deadline=None)
@given(value=json_values)
def test_javascript_canonical_json_is_pythons(explorer: Explorer, value: Any) -> None:
    explorer.load_verifier()
    text = json.dumps(value, ensure_ascii=False)
    encoded = explorer.page.evaluate(
        "text => TanlianVerify.canonical(TanlianVerify.parseStrict(text))", text
    )
    assert encoded.encode("utf-8") == canonical(value)


def test_javascript_ed25519_is_as_strict_as_pythons(
    explorer: Explorer, genuine_receipt: Any
) -> None:
    explorer.load_verifier()
    small_order = explorer.page.evaluate(
        "[...TanlianVerify.SMALL_ORDER_Y].map(y => y.toString(16))"
    )
    assert {int(y, 16) for y in small_order} == set(SMALL_ORDER_Y)
    certificate = genuine_receipt["checkpoint"]["certificate"]
    key = certificate["signatures"][0]["public_key"]
    signature = bytes.fromhex(certificate["signatures"][0]["signature"])
    s_value = int.from_bytes(signature[32:], "little")
    malleable = (signature[:32] + (s_value + GROUP_L).to_bytes(32, "little")).hex()
    identity = (1).to_bytes(32, "little").hex()  # y = 1: the neutral point, order 1
    explorer.load_verifier()
    off_curve = (2).to_bytes(32, "little").hex()  # y = 2: no point of the curve
    samples = [key, off_curve] + [(y).to_bytes(32, "little").hex() for y in range(3, 43)]
    verdicts = explorer.page.evaluate(
        "keys => keys.map(k => TanlianVerify.isPublicKey(TanlianVerify.fromHex(k)))", samples
    )
    assert verdicts == [is_public_key(bytes.fromhex(k)) for k in samples]
    assert verdicts[:2] == [True, False] and len(set(verdicts[2:])) == 2  # both kinds seen
    for public_key, sig, refusal in (
        (key, malleable, "S >= L"),
        (identity, certificate["signatures"][0]["signature"], "large order"),
        (off_curve, certificate["signatures"][0]["signature"], "curve point"),
    ):
        refused = explorer.page.evaluate(
            "async ([key, sig]) => { try { await TanlianVerify.verifySignature(key, "
            "new Uint8Array([1, 2, 3]), sig); return 'accepted'; } "
            "catch (e) { return e.message; } }",
            [public_key, sig],
        )
        assert refusal in refused, refused


# --- the dashboard, phones, screenshots ---------------------------------------------------------


def test_the_dashboard_draws_its_charts(explorer: Explorer) -> None:
    explorer.goto("/dashboard")
    page = explorer.page
    charts = page.locator("svg.chart")
    assert charts.count() >= 6
    for index in range(charts.count()):
        chart = charts.nth(index)
        box = chart.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 30
        assert chart.get_attribute("role") == "img"
        labelled = chart.get_attribute("aria-labelledby") or ""
        assert page.locator(f"#{labelled.split()[0]}").count() == 1
        assert chart.locator("rect.bar").count() >= 1, index
    drawn = page.evaluate(
        "[...document.querySelectorAll('svg.chart rect.bar')]"
        ".filter(r => r.getBoundingClientRect().height > 0).length"
    )
    assert drawn >= 10
    assert page.locator("svg#progress-zibo-green-home").count() == 1  # the demo's target
    assert "t CO2e" in page.inner_text("main")
    explorer.screenshot("dashboard")


PAGES: Final = (
    ("home", "/"),
    ("blocks", "/blocks"),
    ("block", "/blocks/2"),
    ("batches", "/batches"),
    ("batch", "/batches/B-1"),
    ("retirements", "/retirements"),
    ("programmes", "/programmes"),
    ("programme", "/programmes/zibo-green-home"),
    ("certifiers", "/certifiers"),
    ("methodologies", "/methodologies"),
    ("verify", "/verify"),
)


def test_a_screenshot_of_every_page(explorer: Explorer) -> None:
    record = a_retirement(explorer, "incentive")
    pages = [*PAGES, ("account", f"/accounts/{record['holder']}")]
    for name, path in pages:
        explorer.goto(path)
        assert explorer.page.locator("main h1").count() == 1, path
        check_png(explorer.screenshot(name))
    names = {path.stem for path in ARTIFACTS.glob("*.png")}
    assert {name for name, _ in pages} <= names


def test_pages_fit_a_phone(browser: Browser, explorer: Explorer) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        record = a_retirement(explorer, "incentive")
        for name, path in (
            ("phone-home", "/"),
            ("phone-dashboard", "/dashboard"),
            ("phone-certificate", f"/retirements/{record['retirement_id']}"),
            ("phone-batch", "/batches/B-1"),
        ):
            page.goto(explorer.url(path))
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, (path, overflow)  # wide tables scroll inside their box
            target = ARTIFACTS / f"{name}.png"
            page.screenshot(path=str(target), full_page=True)
            check_png(target)
    finally:
        context.close()
    assert not errors, errors
