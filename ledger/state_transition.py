"""The state transition: `apply_block(state, block) -> state`, pure and atomic (SPEC §3, §5.2).

Every transaction is checked completely before it writes anything, so a rejected transaction
changes nothing; a block is applied to a private working copy, so a rejected block leaves its
input untouched. `build_block` is the proposer's side of the same code: it leaves out what
fails and returns the block, the new state and the rejections. After every block, for each
batch it touched, the lots must partition the batch's serial range exactly and
`issued = circulating + retired + invalidated` (SPEC §3.4); a violation is a bug and raises
`AssertionError`.

Lots move lowest serial first. A lot is a maximal range of one batch with one owner and one
status; moving part of one splits it, and adjacent lots of one owner and status are merged
(retired lots only within one retirement, since each names the retirement that claims it).

A block's evidence (SPEC §5.4) is checked before its transactions, item by item, each refusal
a rule of its own (EVIDENCE_RULES): at most EVIDENCE_PER_BLOCK_MAX items (`evidence_count`);
of a height from H - EVIDENCE_AGE_HEIGHTS_MAX to H for block H (`evidence_future`,
`evidence_expired`: older sets are not remembered); at most one item per validator and height
in a block (`evidence_duplicate`) and none the state has recorded already
(`evidence_recorded`); and `ledger.evidence.verify_evidence` against the set that governed the
evidence's height (its codes: `evidence_signature`, `evidence_order`, ...). Each is recorded
under `evidence/<validator>/<height>` (docs/state.md). `build_block` leaves out what fails.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import regex

from ledger.blocks import (
    Block,
    Certificate,
    Header,
    Validator,
    compute_evidence_hash,
    compute_validators_hash,
    verify_certificate,
)
from ledger.crypto import ZERO_HASH_HEX, compute_account_id
from ledger.encoding import canonical_unchecked
from ledger.errors import InvalidBlockError, InvalidProofError, LedgerError, TransactionRejected
from ledger.evidence import EVIDENCE_CHECK_CODES, Evidence, verify_evidence
from ledger.limits import (
    EVIDENCE_AGE_HEIGHTS_MAX,
    EVIDENCE_PER_BLOCK_MAX,
    JSON_INTEGER_MAX,
    RETIREMENT_LOTS_MAX,
)
from ledger.state import BlockDelta, HoldingKey, State, holding_key, remember_validators
from ledger.transactions import AUTHORITY_TYPES, Envelope, verify_envelope_signatures

CIRCULATING = "circulating"
RETIRED = "retired"
INVALIDATED = "invalidated"

EVIDENCE_RULES = (
    "evidence_count",
    "evidence_future",
    "evidence_expired",
    "evidence_duplicate",
    "evidence_recorded",
    *EVIDENCE_CHECK_CODES,
)


def _reject(code: str, message: str) -> TransactionRejected:
    return TransactionRejected(code, message)


@dataclass(frozen=True, slots=True)
class ProposerRules:
    """What this implementation's proposer leaves out of a block it builds beyond the SPEC's
    validity rules (docs/decisions/0004): another proposer's block may hold what these
    refuse, and it applies here. Tests build such blocks with `VALIDITY_ONLY`."""

    # A retirement takes at most this many of its holder's lots (`_check_receipt_size`).
    retirement_lots_max: int = RETIREMENT_LOTS_MAX
    # An issuance's project id reads as what it is (`project_id_objection`).
    check_project_ids: bool = True


OWN_RULES: Final = ProposerRules()
VALIDITY_ONLY: Final = ProposerRules(retirement_lots_max=JSON_INTEGER_MAX, check_project_ids=False)


class _Work:
    """A block in progress: reads fall through to the base state; writes stay here."""

    def __init__(self, base: State, *, height: int, time: int) -> None:
        self.base = base
        self.height = height
        self.time = time
        self.changes: dict[str, Any] = {}
        self.batch_lots: dict[str, list[int]] = {}
        self.holdings: dict[HoldingKey, list[int]] = {}
        self.batch_count = base.batch_count
        self.next_serial = base.next_serial
        self.touched_batches: set[str] = set()
        self.next_validators: Any = None
        # The set that governed each height the block's evidence names, built once per height.
        self.governing: dict[int, tuple[Validator, ...] | None] = {}
        # A proposer's block (`build_block`), not one being validated: its own rules apply too.
        self.rules: ProposerRules | None = None

    def get(self, key: str) -> Any:
        if key in self.changes:
            return self.changes[key]
        return self.base.entries.get(key)

    def put(self, key: str, value: Any) -> None:
        self.changes[key] = value

    def delete(self, key: str) -> None:
        self.changes[key] = None

    def lots(self, batch_id: str) -> list[int]:
        starts = self.batch_lots.get(batch_id)
        if starts is None:
            starts = self.batch_lots[batch_id] = list(self.base.batch_lots.get(batch_id, ()))
        return starts

    def holding(self, batch_id: str, owner: str) -> list[int]:
        starts = self.holdings.get((batch_id, owner))
        if starts is None:
            key = holding_key(batch_id, owner)  # interned once, when first touched
            starts = self.holdings[key] = list(self.base.holdings.get(key, ()))
        return starts

    def circulating_quantity(self, batch_id: str, owner: str, *, enough: int | None = None) -> int:
        """What `owner` holds of the batch, circulating; or, given `enough`, a sum that stops
        once it reaches `enough` (a holder of many small lots is not summed whole to move a
        few units)."""
        held = 0
        for start in self.holding(batch_id, owner):
            held += self.get(f"lot/{batch_id}/{start}")["quantity"]
            if enough is not None and held >= enough:
                break
        return held


@dataclass(frozen=True, slots=True)
class _Context:
    envelope: Envelope
    work: _Work

    @property
    def tx(self) -> Any:
        return self.envelope.tx

    @property
    def payload(self) -> dict[str, Any]:
        return self.envelope.tx.payload


# --- lots -------------------------------------------------------------------------------------


def _add_lot(work: _Work, lot: dict[str, Any]) -> None:
    batch_id, start = lot["batch_id"], lot["first_serial"]
    work.put(f"lot/{batch_id}/{start}", lot)
    bisect.insort(work.lots(batch_id), start)
    if lot["status"] == CIRCULATING:
        bisect.insort(work.holding(batch_id, lot["owner"]), start)


def _remove_lot(work: _Work, batch_id: str, start: int) -> dict[str, Any]:
    lot: dict[str, Any] = work.get(f"lot/{batch_id}/{start}")
    work.delete(f"lot/{batch_id}/{start}")
    starts = work.lots(batch_id)
    del starts[bisect.bisect_left(starts, start)]
    if lot["status"] == CIRCULATING:
        holding = work.holding(batch_id, lot["owner"])
        del holding[bisect.bisect_left(holding, start)]
    return lot


def _lot(batch_id: str, start: int, quantity: int, owner: str, status: str) -> dict[str, Any]:
    return {
        "batch_id": sys.intern(batch_id),
        "first_serial": start,
        "quantity": quantity,
        "owner": sys.intern(owner),  # one copy of an account id however many lots it holds
        "status": status,
        "retirement_id": None,
    }


def _same_kind(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["owner"], a["status"], a["retirement_id"]) == (
        b["owner"],
        b["status"],
        b["retirement_id"],
    )


def _merge_lot(work: _Work, batch_id: str, start: int) -> None:
    """Merge the lot at `start` with adjacent lots of the same owner, status and retirement,
    so every lot stays a maximal range (SPEC §3.4). Lots of two retirements never merge:
    each keeps the id of the retirement that claims it."""
    lot = work.get(f"lot/{batch_id}/{start}")
    starts = work.lots(batch_id)
    index = bisect.bisect_left(starts, start)
    if index > 0:
        before = work.get(f"lot/{batch_id}/{starts[index - 1]}")
        if _same_kind(before, lot):
            _remove_lot(work, batch_id, start)
            _remove_lot(work, batch_id, before["first_serial"])
            lot = {**before, "quantity": before["quantity"] + lot["quantity"]}
            _add_lot(work, lot)
            start = lot["first_serial"]
            index -= 1
    if index + 1 < len(starts):
        after = work.get(f"lot/{batch_id}/{starts[index + 1]}")
        if _same_kind(after, lot):
            _remove_lot(work, batch_id, after["first_serial"])
            _remove_lot(work, batch_id, start)
            _add_lot(work, {**lot, "quantity": lot["quantity"] + after["quantity"]})


def _move(
    work: _Work,
    batch_id: str,
    owner: str,
    quantity: int,
    *,
    to: str,
    status: str,
    retirement_id: str | None = None,
) -> list[list[int]]:
    """Move `owner`'s lowest `quantity` circulating serials of the batch; returns the ranges
    moved as [first, last] pairs. The caller has checked that `owner` holds enough."""
    remaining = quantity
    moved: list[list[int]] = []
    for start in list(work.holding(batch_id, owner)):
        lot = _remove_lot(work, batch_id, start)
        take = min(lot["quantity"], remaining)
        if take < lot["quantity"]:
            _add_lot(
                work, {**lot, "first_serial": start + take, "quantity": lot["quantity"] - take}
            )
        new = _lot(batch_id, start, take, to, status)
        new["retirement_id"] = retirement_id
        _add_lot(work, new)
        _merge_lot(work, batch_id, start)
        moved.append([start, start + take - 1])
        remaining -= take
        if remaining == 0:
            break
    assert remaining == 0, "caller must check the holding first"
    work.touched_batches.add(batch_id)
    return moved


def _check_holding(work: _Work, batch_id: str, owner: str, quantity: int) -> None:
    # A sum that stops short of `enough` has summed the whole holding: the figure to show.
    held = work.circulating_quantity(batch_id, owner, enough=quantity)
    if held < quantity:
        raise _reject(
            "insufficient_credits",
            f"{owner} holds {held} circulating units of {batch_id}, {quantity} needed",
        )


def _ensure_account(work: _Work, account_id: str) -> None:
    """An account comes into existence when it first receives credits (SPEC §3.1)."""
    if work.get(f"account/{account_id}") is None:
        work.put(
            f"account/{account_id}", {"keys": [], "threshold": 0, "nonce": 0, "status": "active"}
        )


def _check_not_suspended(work: _Work, account_id: str, role: str) -> None:
    account = work.get(f"account/{account_id}")
    if account is not None and account["status"] == "suspended":
        raise _reject("account_suspended", f"{role} {account_id} is suspended")


def _batch(work: _Work, batch_id: str) -> dict[str, Any]:
    batch = work.get(f"batch/{batch_id}")
    if batch is None:
        raise _reject("unknown_batch", f"no batch {batch_id}")
    return dict(batch)


# --- the transaction types (SPEC §3.2, §3.3): every check first, then every write -------------


def _register_methodology(ctx: _Context) -> None:
    p, work = ctx.payload, ctx.work
    key = f"methodology/{p['methodology_id']}"
    if work.get(key) is not None:
        raise _reject("already_exists", f"methodology {p['methodology_id']} is registered")
    work.put(key, {**p, "height": work.height})


def _accredit_certifier(ctx: _Context) -> None:
    p, work = ctx.payload, ctx.work
    for methodology_id in p["methodologies"]:
        if work.get(f"methodology/{methodology_id}") is None:
            raise _reject("unknown_methodology", f"methodology {methodology_id} is not registered")
    work.put(
        f"certifier/{p['certifier']}",
        {**p, "height": work.height, "revoked_height": None, "revoke_reason": None},
    )


def _revoke_certifier(ctx: _Context) -> None:
    p, work = ctx.payload, ctx.work
    key = f"certifier/{p['certifier']}"
    certifier = work.get(key)
    if certifier is None:
        raise _reject("not_accredited", f"{p['certifier']} holds no accreditation to revoke")
    if certifier["revoked_height"] is not None:
        raise _reject(
            "not_accredited",
            f"{p['certifier']} holds no accreditation to revoke: it was revoked at height"
            f" {certifier['revoked_height']} already",
        )
    work.put(key, {**certifier, "revoked_height": work.height, "revoke_reason": p["reason"]})


def _create_program(ctx: _Context) -> None:
    p, work = ctx.payload, ctx.work
    key = f"program/{p['program_id']}"
    if work.get(key) is not None:
        raise _reject("already_exists", f"programme {p['program_id']} exists")
    if p["valid_until"] <= work.time:
        raise _reject("program_expired", f"valid_until {p['valid_until']} is not after {work.time}")
    work.put(key, {**p, "height": work.height, "retired": 0})


def _set_status(ctx: _Context, status: str) -> None:
    p, work = ctx.payload, ctx.work
    key = f"account/{p['account']}"
    account = work.get(key)
    if account is None:
        raise _reject("unknown_account", f"no account {p['account']}")
    if p["account"] == work.base.authority:
        raise _reject("not_authorized", "the authority cannot suspend or reinstate itself")
    if account["status"] == status:
        code = "account_suspended" if status == "suspended" else "account_not_suspended"
        raise _reject(code, f"account {p['account']} is already {status}")
    work.put(key, {**account, "status": status})


def _suspend_account(ctx: _Context) -> None:
    _set_status(ctx, "suspended")


def _reinstate_account(ctx: _Context) -> None:
    _set_status(ctx, "active")


def _set_validators(ctx: _Context) -> None:
    validators = sorted(ctx.payload["validators"], key=lambda v: v["public_key"])
    ctx.work.next_validators = validators  # governs H+2: written when the block is finished


def _overlaps(a_start: str, a_end: str, b_start: str, b_end: str) -> bool:
    return a_start < b_end and b_start < a_end  # ISO dates order as strings; ends exclusive


def _check_accredited(work: _Work, signer: str, methodology_id: str) -> None:
    """SPEC §3.3 for whatever a certifier signs as one (`issue`, `invalidate`): its
    accreditation unrevoked, the block time inside `[valid_from, valid_until)`, and the
    methodology registered and in its scope."""
    certifier = work.get(f"certifier/{signer}")
    if certifier is None or certifier["revoked_height"] is not None:
        raise _reject("not_accredited", f"{signer} is not an accredited certifier")
    if not certifier["valid_from"] <= work.time < certifier["valid_until"]:
        raise _reject(
            "not_accredited",
            f"block time {work.time} is outside the accreditation "
            f"[{certifier['valid_from']}, {certifier['valid_until']})",
        )
    if work.get(f"methodology/{methodology_id}") is None:
        raise _reject("unknown_methodology", f"methodology {methodology_id} is not registered")
    if methodology_id not in certifier["methodologies"]:
        raise _reject(
            "methodology_not_in_scope", f"{methodology_id} is not in {signer}'s accreditation"
        )


def _issue(ctx: _Context) -> None:
    p, work, signer = ctx.payload, ctx.work, ctx.tx.signer
    methodology_id = p["methodology_id"]
    _check_accredited(work, signer, methodology_id)
    if work.rules is not None and work.rules.check_project_ids:
        _check_project_id(p["project_id"])
    for recipient in p["recipients"]:
        _check_not_suspended(work, recipient["account"], "recipient")
    issuance_key = f"issuance/{methodology_id}/{p['project_id']}"
    earlier = work.get(issuance_key) or []
    for entry in earlier:
        if _overlaps(
            entry["period_start"], entry["period_end"], p["period_start"], p["period_end"]
        ):
            batch = work.get(f"batch/{entry['batch_id']}")
            if batch["issued"] > batch["invalidated"]:
                raise _reject(
                    "double_issuance",
                    f"{entry['batch_id']} already credits {p['project_id']} for "
                    f"{entry['period_start']}..{entry['period_end']}",
                )
    total = sum(recipient["quantity"] for recipient in p["recipients"])
    first = work.next_serial
    if first + total - 1 > JSON_INTEGER_MAX:
        raise _reject("limit_exceeded", "the chain's serial numbers would pass 2**53 - 1")

    work.batch_count += 1
    batch_id = f"B-{work.batch_count}"
    work.next_serial = first + total
    work.put(
        f"batch/{batch_id}",
        {
            "batch_id": batch_id,
            "methodology_id": methodology_id,
            "project_id": p["project_id"],
            "period_start": p["period_start"],
            "period_end": p["period_end"],
            "evidence_sha256": p["evidence_sha256"],
            "certifier": signer,
            "first_serial": first,
            "issued": total,
            "circulating": total,
            "retired": 0,
            "invalidated": 0,
            "memo": p.get("memo"),
            "tx_id": ctx.envelope.tx_id,
            "height": work.height,
            "time": work.time,
        },
    )
    work.put(
        issuance_key,
        [
            *earlier,
            {
                "batch_id": batch_id,
                "period_start": p["period_start"],
                "period_end": p["period_end"],
            },
        ],
    )
    start = first
    for recipient in p["recipients"]:
        _ensure_account(work, recipient["account"])
        _add_lot(
            work, _lot(batch_id, start, recipient["quantity"], recipient["account"], CIRCULATING)
        )
        _merge_lot(work, batch_id, start)
        start += recipient["quantity"]
    work.touched_batches.add(batch_id)


def _transfer(ctx: _Context) -> None:
    p, work, signer = ctx.payload, ctx.work, ctx.tx.signer
    if p["to"] == signer:
        raise _reject("self_transfer", "a transfer must go to another account")
    batch = _batch(work, p["batch_id"])
    _check_not_suspended(work, p["to"], "recipient")
    _check_holding(work, p["batch_id"], signer, p["quantity"])
    _ensure_account(work, p["to"])
    _move(work, batch["batch_id"], signer, p["quantity"], to=p["to"], status=CIRCULATING)


def _retire(ctx: _Context) -> None:
    p, work, signer = ctx.payload, ctx.work, ctx.tx.signer
    batch = _batch(work, p["batch_id"])
    program = None
    if "program_id" in p:
        program = work.get(f"program/{p['program_id']}")
        if program is None:
            raise _reject("unknown_program", f"no programme {p['program_id']}")
        if program["valid_until"] <= work.time:
            raise _reject("program_expired", f"programme {p['program_id']} has ended")
    _check_holding(work, p["batch_id"], signer, p["quantity"])
    if work.rules is not None:
        _check_receipt_size(work, p["batch_id"], signer, p["quantity"], work.rules)
    tx_id = ctx.envelope.tx_id
    serials = _move(
        work, p["batch_id"], signer, p["quantity"], to=signer, status=RETIRED, retirement_id=tx_id
    )
    work.put(
        f"batch/{p['batch_id']}",
        {
            **batch,
            "circulating": batch["circulating"] - p["quantity"],
            "retired": batch["retired"] + p["quantity"],
        },
    )
    if program is not None:
        work.put(
            f"program/{p['program_id']}", {**program, "retired": program["retired"] + p["quantity"]}
        )
    work.put(
        f"retirement/{tx_id}",
        {
            "retirement_id": tx_id,
            "holder": signer,
            "batch_id": p["batch_id"],
            "serials": serials,
            "quantity": p["quantity"],
            "beneficiary": p["beneficiary"],
            "purpose": p["purpose"],
            "program_id": p.get("program_id"),
            "jurisdiction": p.get("jurisdiction"),
            "memo": p.get("memo"),
            "height": work.height,
            "time": work.time,
        },
    )


# Characters that change no glyph, or none a reader can rely on: format (zero-width, bidi
# controls, BOM), private use, unassigned, and line or paragraph separators.
_INVISIBLE_CATEGORIES: Final = frozenset({"Cf", "Co", "Cn", "Zl", "Zp"})
# Those Unicode says a reader never sees though their categories are others' (the combining
# grapheme joiner, variation selectors, Hangul fillers, which count as Hangul letters), and
# the blank Braille pattern, a symbol drawn as nothing (found by review: each credited
# `meter-0001` again).
_INVISIBLE: Final = regex.compile(r"[\p{Default_Ignorable_Code_Point}\u2800]")
# Dashes drawn as the hyphen-minus `-` of most ids: every dash punctuation but the wave
# dashes (U+301C, U+3030, drawn as `~`), and the signs and lines drawn as a dash (minus
# signs, box drawing's horizontal lines). NFKC keeps them: they are not compatibility forms.
_WAVE_DASHES: Final = frozenset("\u301c\u3030")
_DASH_LIKE: Final = frozenset(
    "\u02d7\u2043\u2212\u2796\u23af\u2500\u2501\u2574\u2576\u2578\u257a\u257c\u257e"
)
# Letters that look alike across scripts (Latin `e`, Cyrillic `е`, Greek `ε`, Cherokee `Ꭼ`,
# mathematical `𝐞`...), told apart by Unicode's Script_Extensions property (the `regex`
# library's table): `_letter_script`.
_SCRIPT_LETTERS: Final = tuple(
    (name, regex.compile(rf"\p{{Script_Extensions={name}}}"))
    for name in ("Latin", "Greek", "Cyrillic")
)
# The scripts UTS #39's "highly restrictive" level lets Latin be written with: nothing in them
# looks like a Latin letter.
_WITH_LATIN: Final = regex.compile(
    r"[\p{Script_Extensions=Han}\p{Script_Extensions=Hiragana}\p{Script_Extensions=Katakana}"
    r"\p{Script_Extensions=Hangul}\p{Script_Extensions=Bopomofo}]"
)
_ANOTHER_SCRIPT: Final = "another script"
# Which scripts' letters may not stand beside a letter of this one.
_CLASHES: Final[dict[str, frozenset[str]]] = {
    "Latin": frozenset({"Greek", "Cyrillic", _ANOTHER_SCRIPT}),
    "Greek": frozenset({"Latin", "Cyrillic"}),
    "Cyrillic": frozenset({"Latin", "Greek"}),
    _ANOTHER_SCRIPT: frozenset({"Latin"}),
}


def _letter_script(char: str) -> str | None:
    """Latin, Greek or Cyrillic for a letter of exactly one of them; `_ANOTHER_SCRIPT` for a
    letter of none of them nor of `_WITH_LATIN`; None for the rest (shared letters, those
    that may sit beside Latin)."""
    used = [name for name, letters in _SCRIPT_LETTERS if letters.match(char)]
    if len(used) == 1:
        return used[0]
    if used or _WITH_LATIN.match(char):
        return None
    return _ANOTHER_SCRIPT


def _mixed_scripts(project_id: str) -> str | None:
    """Why `project_id`'s letters mix look-alike scripts, or None: Latin letters with letters
    of any script but Han, kana, Hangul and Bopomofo (UTS #39's "highly restrictive" level
    for them), or Greek with Cyrillic. Only letters count: digits, signs and combining marks
    are shared by design."""
    if project_id.isascii():
        return None
    first: dict[str, int] = {}  # script -> where its first letter is
    for position, char in enumerate(project_id):
        if not unicodedata.category(char).startswith("L"):
            continue
        script = _letter_script(char)
        if script is None:
            continue
        first.setdefault(script, position)
        clash = _CLASHES[script].intersection(first)
        if clash:
            earlier = min(clash, key=first.__getitem__)
            return (
                f"project_id mixes {_letters(earlier)} and U+{ord(char):04X}"
                f" {unicodedata.name(char, 'a letter')} ({script}) at {position}: look-alike"
                " letters a reader could not tell apart"
            )
    return None


def _letters(script: str) -> str:
    return "letters of another script" if script == _ANOTHER_SCRIPT else f"{script} letters"


def _check_project_id(project_id: str) -> None:
    """A proposer's rule, not a block's validity (docs/decisions/0004): a project id reads
    as what it is (`project_id_objection`)."""
    objection = project_id_objection(project_id)
    if objection is not None:
        raise _reject("invalid_field", objection)


def project_id_objection(project_id: str) -> str | None:
    """Why this implementation's proposer leaves out an issuance of `project_id`, or None.
    SPEC §3.3 keys "the same meter period can never be credited twice" on the id's exact
    text, and review credited one meter's January five times under `meter-0001` followed by
    a zero-width space, a word joiner or a BOM, or preceded by a right-to-left override.
    Refused: such characters and others drawn as nothing (a variation selector, a Hangul
    filler), dashes drawn as `-`, compatibility forms of ASCII letters and digits (fullwidth,
    mathematical, a Roman numeral `Ⅱ`), digits of two numbering systems or other than ASCII
    beside Latin letters, spaces other than U+0020, a space at either end, text not in
    Unicode NFC (an accented letter typed two ways), and letters of look-alike scripts mixed
    (`meter-0001` with a Cyrillic `е`, `_mixed_scripts`; an id wholly in one script, or Han
    with Latin, is taken). The auditor reports a committed one
    (`ledger.verification.proposer_notices`). The answers follow the Unicode version of
    Python's `unicodedata` and of `regex`: a letter newer than them is unassigned here."""
    for position, char in enumerate(project_id):
        category = unicodedata.category(char)
        if (
            category in _INVISIBLE_CATEGORIES
            or (category == "Zs" and char != " ")
            or _INVISIBLE.match(char)
        ):
            return (
                f"project_id holds U+{ord(char):04X} ({unicodedata.name(char, category)}) at"
                f" {position}: an id another could not tell from one without it"
            )
        if char != "-" and ((category == "Pd" and char not in _WAVE_DASHES) or char in _DASH_LIKE):
            return (
                f"project_id holds U+{ord(char):04X} ({unicodedata.name(char)}) at"
                f" {position}: a dash another could not tell from '-'"
            )
        reads_as = unicodedata.normalize("NFKC", char)
        if reads_as != char and any(c.isascii() and (c.isalnum() or c == "-") for c in reads_as):
            # A compatibility form of what most ids are written in (a fullwidth or
            # mathematical digit or letter, a Roman numeral, a superscript): one text read
            # two ways. Other scripts' compatibility forms (fullwidth punctuation) are kept.
            return (
                f"project_id holds U+{ord(char):04X} ({unicodedata.name(char)}) at"
                f" {position}, which reads as {reads_as!r}: write that instead"
            )
    mixed = _mixed_scripts(project_id) or _mixed_digits(project_id)
    if mixed is not None:
        return mixed
    if project_id != project_id.strip(" "):
        return "project_id begins or ends with a space"
    if not unicodedata.is_normalized("NFC", project_id):
        return "project_id is not in Unicode NFC: the same text can be written otherwise"
    return None


def _mixed_digits(project_id: str) -> str | None:
    """Why `project_id`'s digits could be read as others, or None: digits of two numbering
    systems (a Bengali `০` among ASCII digits reads as `0`), or other than ASCII digits
    beside Latin letters (`meter-০০০১`). Found by review: each credited `meter-0001` again."""
    zeros: dict[int, int] = {}  # a system's zero -> where its first digit is
    latin = any(c.isascii() and c.isalpha() for c in project_id)
    for position, char in enumerate(project_id):
        if unicodedata.category(char) != "Nd":
            continue
        zero = ord(char) - unicodedata.decimal(char)
        zeros.setdefault(zero, position)
        if len(zeros) > 1 or (latin and zero != ord("0")):
            others = "ASCII digits" if latin else "the digits beside them"
            return (
                f"project_id holds U+{ord(char):04X} ({unicodedata.name(char)}) at"
                f" {position}: a digit another could read as one of {others}"
            )
    return None


def _check_receipt_size(
    work: _Work, batch_id: str, owner: str, quantity: int, rules: ProposerRules
) -> None:
    """A proposer's rule, not a block's validity (docs/decisions/0004): a retirement takes at
    most `rules.retirement_lots_max` of the holder's lots (RETIREMENT_LOTS_MAX in this
    proposer's own rules), or its receipt, a state proof a lot, is
    one no verifier reads (found by review: a holding fragmented by transfers gave a
    retirement of 1,001 lots whose receipt `verify receipt` refused)."""
    lots_max = rules.retirement_lots_max
    taken = held = 0
    for start in work.holding(batch_id, owner):
        if held >= quantity or taken > lots_max:
            break
        taken += 1
        held += work.get(f"lot/{batch_id}/{start}")["quantity"]
    if taken > lots_max:
        raise _reject(
            "limit_exceeded",
            f"retiring {quantity} units of {batch_id} would take more than"
            f" {lots_max} lots of this holding, at most {lots_max} a"
            " retirement (a receipt proves each):"
            " retire fewer units at once",
        )


def _invalidate(ctx: _Context) -> None:
    p, work, signer = ctx.payload, ctx.work, ctx.tx.signer
    batch = _batch(work, p["batch_id"])
    if signer not in (work.base.authority, batch["certifier"]):
        raise _reject(
            "not_authorized", "only the authority or the batch's certifier may invalidate it"
        )
    if signer != work.base.authority:  # the certifier, as one: revoked or expired, it may not
        _check_accredited(work, signer, batch["methodology_id"])
    _check_holding(work, p["batch_id"], p["holder"], p["quantity"])
    _move(work, p["batch_id"], p["holder"], p["quantity"], to=p["holder"], status=INVALIDATED)
    work.put(
        f"batch/{p['batch_id']}",
        {
            **batch,
            "circulating": batch["circulating"] - p["quantity"],
            "invalidated": batch["invalidated"] + p["quantity"],
        },
    )


def _set_keys(ctx: _Context) -> None:
    p, work = ctx.payload, ctx.work
    key = f"account/{ctx.tx.signer}"
    account = work.get(key) or {"nonce": 0, "status": "active"}
    work.put(key, {**account, "keys": sorted(p["keys"]), "threshold": p["threshold"]})


_HANDLERS: dict[str, Callable[[_Context], None]] = {
    "register_methodology": _register_methodology,
    "accredit_certifier": _accredit_certifier,
    "revoke_certifier": _revoke_certifier,
    "create_program": _create_program,
    "suspend_account": _suspend_account,
    "reinstate_account": _reinstate_account,
    "set_validators": _set_validators,
    "issue": _issue,
    "transfer": _transfer,
    "retire": _retire,
    "invalidate": _invalidate,
    "set_keys": _set_keys,
}


# --- envelope rules (SPEC §3.1) ---------------------------------------------------------------


@functools.lru_cache(maxsize=16_384)
def _single_key_account(public_key: str) -> str:
    """The id of the single-key account of `public_key`: a hash of canonical JSON, asked for
    each transaction of an account whose keys the ledger does not hold (most households'),
    on admission and again in the block; a few MiB remember the active ones."""
    return compute_account_id([public_key], 1)


def check_authorization(account: Mapping[str, Any] | None, envelope: Envelope) -> None:
    """Every listed key belongs to the signer's key set (`account`: its `account/` record, or
    None) and together they reach its threshold (SPEC §3.1); whether the signatures verify is
    another check. The pool makes it on admission too, so that nobody can hold another
    account's nonce with a transaction that account did not sign."""
    signer = envelope.tx.signer
    listed = [signature.public_key for signature in envelope.signatures]
    if account is not None and account["keys"]:
        keys, threshold = set(account["keys"]), account["threshold"]
    else:
        # Keys not known yet: a single-key account whose id is derived from its key.
        own = [key for key in listed if _single_key_account(key) == signer]
        if listed and not own:
            raise _reject(
                "unknown_key",
                f"signer {signer} has no keys on the ledger, and no listed key derives it",
            )
        keys, threshold = set(own), 1
    for key in listed:
        if key not in keys:
            raise _reject("unknown_key", f"key {key} is not in the key set of {signer}")
    distinct = len(set(listed))  # M-of-N means M different keys, however the list was built
    if distinct < threshold:
        raise _reject(
            "insufficient_signatures", f"{distinct} distinct signing keys, threshold {threshold}"
        )


def check_envelope(
    state_get: Callable[[str], Any],
    envelope: Envelope,
    *,
    chain_id: str,
    transaction_bytes_max: int,
    signatures_verified: bool,
) -> None:
    """Size, chain id, the signer's keys and threshold, every signature, and the nonce."""
    tx = envelope.tx
    if len(envelope.leaf) > transaction_bytes_max:
        raise _reject(
            "payload_too_large",
            f"transaction is {len(envelope.leaf)} bytes, the chain allows {transaction_bytes_max}",
        )
    if tx.chain_id != chain_id:
        raise _reject("wrong_chain", f"transaction is for chain {tx.chain_id!r}, not {chain_id!r}")
    account = state_get(f"account/{tx.signer}")
    check_authorization(account, envelope)
    if not signatures_verified:
        try:
            verify_envelope_signatures(envelope)
        except LedgerError as error:
            raise _reject("bad_signature", error.message) from error
    expected = (account["nonce"] if account is not None else 0) + 1
    if tx.nonce != expected:
        raise _reject("bad_nonce", f"nonce {tx.nonce}, expected {expected}")


def _apply_transaction(work: _Work, envelope: Envelope, *, signatures_verified: bool) -> None:
    tx = envelope.tx
    check_envelope(
        work.get,
        envelope,
        chain_id=work.base.chain_id,
        transaction_bytes_max=work.base.params.transaction_bytes_max,
        signatures_verified=signatures_verified,
    )
    if tx.type in AUTHORITY_TYPES and tx.signer != work.base.authority:
        raise _reject("not_authorized", f"{tx.type} is for the registry authority only")
    if tx.type != "set_keys":
        _check_not_suspended(work, tx.signer, "signer")
    _HANDLERS[tx.type](_Context(envelope, work))
    key = f"account/{tx.signer}"
    account = work.get(key)
    if account is None:
        only_key = envelope.signatures[0].public_key
        account = {"keys": [only_key], "threshold": 1, "nonce": 0, "status": "active"}
    elif not account["keys"]:
        account = {**account, "keys": [envelope.signatures[0].public_key], "threshold": 1}
    work.put(key, {**account, "nonce": tx.nonce})


# --- blocks -----------------------------------------------------------------------------------


STATUSES = (CIRCULATING, RETIRED, INVALIDATED)


def _check_conservation(work: _Work) -> None:
    """SPEC §3.4 on every touched batch: its lots partition its serial range exactly, and
    `issued = circulating + retired + invalidated`, the counters matching the lots.

    Checked by induction, in time proportional to the lots this block changed (not to all
    of a batch's lots): the partition held after the previous block, so it holds now if
    (a) every lot written in this block abuts its neighbours (or the batch's ends) exactly,
    (b) the first serial of every lot removed in this block lies inside a lot now, and
    (c) the status totals moved exactly as the batch's counters did. Two lots left next to
    each other unchanged were neighbours before: a removed lot between them would have to be
    covered by the left one, which ended before it. A new batch's lots are all written in
    this block, so (a) checks it whole.
    """
    changed: dict[str, list[int]] = {}
    for key in work.changes:
        if key.startswith("lot/"):
            batch_id, _, start = key[4:].partition("/")
            changed.setdefault(batch_id, []).append(int(start))
    for batch_id in sorted(work.touched_batches | changed.keys()):
        _check_batch(work, batch_id, changed.get(batch_id, []))


def _check_batch(work: _Work, batch_id: str, changed: list[int]) -> None:
    batch = work.get(f"batch/{batch_id}")
    before = work.base.get(f"batch/{batch_id}")
    first, end = batch["first_serial"], batch["first_serial"] + batch["issued"]
    if before is not None and (before["first_serial"], before["issued"]) != (
        first,
        batch["issued"],
    ):
        raise AssertionError(f"{batch_id}: its serial range changed")
    starts = work.lots(batch_id)
    moved = dict.fromkeys(STATUSES, 0)
    for start in changed:
        old = work.base.get(f"lot/{batch_id}/{start}")
        new = work.get(f"lot/{batch_id}/{start}")
        if old is not None:
            moved[old["status"]] -= old["quantity"]
        if new is None:  # (b)
            index = bisect.bisect_right(starts, start) - 1
            cover = None if index < 0 else work.get(f"lot/{batch_id}/{starts[index]}")
            if cover is None or not start < cover["first_serial"] + cover["quantity"]:
                raise AssertionError(f"{batch_id}: serial {start} is in no lot after this block")
            continue
        moved[new["status"]] += new["quantity"]
        index = bisect.bisect_left(starts, start)  # (a)
        if (
            index == len(starts)
            or starts[index] != start
            or new["first_serial"] != start
            or new["batch_id"] != batch_id
            or new["quantity"] < 1
        ):
            raise AssertionError(f"{batch_id}: lot {start} is not where the index says")
        if index == 0:
            previous_end = first
        else:
            previous = work.get(f"lot/{batch_id}/{starts[index - 1]}")
            previous_end = previous["first_serial"] + previous["quantity"]
        following = end if index + 1 == len(starts) else starts[index + 1]
        if previous_end != start or start + new["quantity"] != following:
            raise AssertionError(f"{batch_id}: lots do not partition around serial {start}")
    for status in STATUSES:  # (c)
        was = 0 if before is None else before[status]
        if batch[status] - was != moved[status]:
            raise AssertionError(
                f"{batch_id}: {status} counter moved by {batch[status] - was}, "
                f"its lots by {moved[status]}"
            )
    if sum(batch[status] for status in STATUSES) != batch["issued"]:
        raise AssertionError(f"{batch_id}: issued {batch['issued']} is not the sum of its units")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Finished:
    state: State
    log_size: int
    log_root: str
    state_root: str


def _finish(
    work: _Work, applied: Sequence[Envelope], header_hash_and_time: tuple[str, int]
) -> _Finished:
    base = work.base
    _check_conservation(work)
    current = base.entries["validators/current"]
    upcoming = base.entries["validators/next"]
    # After block H, `current` governs H+1 and `next` governs H+2 (the H+2 rule, SPEC §3.2):
    # the set that was next moves up, and a set_validators in this block becomes the next one.
    if upcoming != current:
        work.put("validators/current", upcoming)
    if work.next_validators is not None and work.next_validators != upcoming:
        work.put("validators/next", work.next_validators)
    changes = work.changes
    entries = base.entries.mutate()
    for key, value in changes.items():
        if value is None:
            if key in entries:
                del entries[key]
        else:
            entries[key] = value
    batch_lots = base.batch_lots.mutate()
    for batch_id, starts in work.batch_lots.items():
        batch_lots[batch_id] = tuple(starts)
    holdings = base.holdings.mutate()
    for holding, starts in work.holdings.items():
        if starts:
            holdings[holding] = tuple(starts)
        elif holding in holdings:
            del holdings[holding]
    log, nodes = base.log.append([envelope.leaf_hash for envelope in applied])
    encoded = {
        key: None if value is None else canonical_unchecked(value) for key, value in changes.items()
    }
    tree = base.tree.update_encoded(encoded.items())
    head_hash, head_time = header_hash_and_time
    state = State(
        chain_id=base.chain_id,
        genesis_hash=base.genesis_hash,
        authority=base.authority,
        params=base.params,
        height=work.height,
        head_hash=head_hash,
        head_time=head_time,
        recent_validators=remember_validators(
            base.recent_validators, height=work.height, validators=base.current_validators()
        ),
        entries=entries.finish(),
        tree=tree,
        log=log,
        batch_lots=batch_lots.finish(),
        holdings=holdings.finish(),
        batch_count=work.batch_count,
        next_serial=work.next_serial,
        delta=BlockDelta(changes=dict(changes), encoded=encoded, log_nodes=tuple(nodes)),
    )
    return _Finished(
        state=state, log_size=log.size, log_root=log.root().hex(), state_root=tree.root.hex()
    )


def _check_header_links(state: State, block: Block) -> None:
    header, height = block.header, block.header.height

    def fail(rule: str, message: str) -> InvalidBlockError:
        return InvalidBlockError(height, rule, message)

    if header.chain_id != state.chain_id:
        raise fail("chain_id", f"{header.chain_id!r} is not {state.chain_id!r}")
    if height != state.height + 1:
        raise fail("height", f"expected height {state.height + 1}")
    if header.time <= state.head_time:
        raise fail("time", f"{header.time} is not after the parent's {state.head_time}")
    if header.parent_hash != state.head_hash:
        raise fail("parent_hash", f"{header.parent_hash} is not the parent {state.head_hash}")
    validators = state.current_validators()
    if header.validators_hash != compute_validators_hash(validators):
        raise fail("validators_hash", "does not match the set governing this height")
    if header.next_validators_hash != compute_validators_hash(state.next_validators()):
        raise fail("next_validators_hash", "does not match the set governing the next height")
    if header.proposer not in {v.public_key for v in validators}:
        raise fail("proposer", f"{header.proposer} is not a validator at this height")
    if len(block.evidence) > EVIDENCE_PER_BLOCK_MAX:
        raise fail(
            "evidence_count", f"{len(block.evidence)} items, at most {EVIDENCE_PER_BLOCK_MAX}"
        )
    if header.evidence_hash != compute_evidence_hash(block.evidence):
        raise fail("evidence_hash", "does not match the block's evidence")
    if len(block.transactions) > state.params.block_transactions_max:
        raise fail("block_transactions_max", f"{len(block.transactions)} transactions")
    if height == 1:
        if block.last_commit is not None or header.last_commit_hash != ZERO_HASH_HEX:
            raise fail("last_commit", "block 1 has no last commit")
        return
    if block.last_commit is None:
        raise fail("last_commit", "missing the certificate of the parent")
    if header.last_commit_hash != block.last_commit.certificate_hash():
        raise fail("last_commit_hash", "does not match the carried certificate")
    try:
        verify_certificate(
            block.last_commit,
            chain_id=state.chain_id,
            height=height - 1,
            block_hash=state.head_hash,
            validators=state.last_validators,
        )
    except InvalidProofError as error:
        raise fail("last_commit", error.message) from error


def check_block_body(
    state: State, block: Block, *, leaf_hashes: Sequence[bytes] | None = None
) -> None:
    """The block's body is the one its header commits to, on top of `state` (its parent):
    the transactions give the header's `log_size` and `log_root` when their leaves are
    appended to the parent's log (RFC 9162, as `apply_block` appends them), the evidence
    gives `evidence_hash`, and `last_commit` gives `last_commit_hash`; raises
    `InvalidBlockError` naming the first field that differs.

    A proposal's signature covers only its block hash, the hash of the header: this is what
    binds the rest to it, so a signature replayed with other transactions is refused here,
    at a few hashes a transaction and before any rule is checked (docs/decisions/0006). It
    says nothing about whether the block applies: that is `apply_block`'s question.
    `leaf_hashes`, for a block sent by reference, stand for its transactions.
    """
    header, height = block.header, block.header.height
    if leaf_hashes is None:
        leaf_hashes = [envelope.leaf_hash for envelope in block.transactions]

    def fail(rule: str, message: str) -> InvalidBlockError:
        return InvalidBlockError(height, rule, message)

    if height != state.height + 1:
        raise fail("height", f"expected height {state.height + 1}")
    if len(leaf_hashes) > state.params.block_transactions_max:
        raise fail("block_transactions_max", f"{len(leaf_hashes)} transactions")
    if len(block.evidence) > EVIDENCE_PER_BLOCK_MAX:
        raise fail(
            "evidence_count", f"{len(block.evidence)} items, at most {EVIDENCE_PER_BLOCK_MAX}"
        )
    if header.evidence_hash != compute_evidence_hash(block.evidence):
        raise fail("evidence_hash", "does not match the block's evidence")
    last_commit_hash = (
        ZERO_HASH_HEX if block.last_commit is None else block.last_commit.certificate_hash()
    )
    if header.last_commit_hash != last_commit_hash:
        raise fail("last_commit_hash", "does not match the carried certificate")
    size = state.log.size + len(leaf_hashes)
    if header.log_size != size:
        raise fail("log_size", f"header says {header.log_size}, the transactions give {size}")
    if header.log_root != state.log.extended(leaf_hashes).root().hex():
        raise fail("log_root", "does not match the block's transactions")


# --- evidence (SPEC §5.4) ---------------------------------------------------------------------


def _record_evidence(work: _Work, evidence: Evidence) -> None:
    """Check one piece of evidence of the block in `work` and record it, or raise
    `InvalidBlockError` naming the rule (EVIDENCE_RULES) with nothing written."""
    height, state = work.height, work.base

    def fail(rule: str, message: str) -> InvalidBlockError:
        assert rule in EVIDENCE_RULES, rule
        return InvalidBlockError(height, rule, f"evidence of {evidence.public_key}: {message}")

    if evidence.height > height:
        raise fail("evidence_future", f"height {evidence.height} is after this block")
    if evidence.height not in work.governing:
        work.governing[evidence.height] = state.governing_validators(evidence.height)
    validators = work.governing[evidence.height]
    if evidence.height < height - EVIDENCE_AGE_HEIGHTS_MAX or validators is None:
        raise fail(
            "evidence_expired",
            f"height {evidence.height} is more than {EVIDENCE_AGE_HEIGHTS_MAX} heights back",
        )
    key = evidence.state_key()
    if key in work.changes:
        raise fail("evidence_duplicate", f"this block already holds evidence for {key}")
    if state.get(key) is not None:
        raise fail("evidence_recorded", f"the state already records {key}")
    try:
        verify_evidence(evidence, chain_id=state.chain_id, validators=validators)
    except InvalidProofError as error:
        raise fail(error.code, error.message) from error
    work.put(
        key,
        {
            "validator": evidence.public_key,
            "height": evidence.height,
            "round": evidence.round,
            "evidence": evidence.to_json(),
            "recorded_height": height,
        },
    )


def apply_block(state: State, block: Block, *, signatures_verified: bool = False) -> State:
    """The state after `block`, or `InvalidBlockError` naming the height and the rule.

    Pure: `state` is never modified. `signatures_verified` says the caller has already checked
    every transaction signature (in parallel); every other rule is checked here, the
    signatures of the block's evidence included.
    """
    _check_header_links(state, block)
    header = block.header
    work = _Work(state, height=header.height, time=header.time)
    for evidence in block.evidence:
        _record_evidence(work, evidence)
    for envelope in block.transactions:
        try:
            _apply_transaction(work, envelope, signatures_verified=signatures_verified)
        except TransactionRejected as error:
            raise InvalidBlockError(
                header.height,
                error.code,
                f"transaction {envelope.tx_id}: {error.message}",
                tx_id=envelope.tx_id,
            ) from error
    finished = _finish(work, block.transactions, (header.block_hash(), header.time))
    for rule, expected in (
        ("log_size", finished.log_size),
        ("log_root", finished.log_root),
        ("state_root", finished.state_root),
    ):
        if getattr(header, rule) != expected:
            raise InvalidBlockError(
                header.height, rule, f"header says {getattr(header, rule)}, replay gives {expected}"
            )
    return finished.state


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltBlock:
    block: Block
    state: State
    rejected: tuple[tuple[Envelope, TransactionRejected], ...]
    deferred: tuple[Envelope, ...] = ()
    evidence_left_out: tuple[tuple[Evidence, InvalidBlockError], ...] = ()


def first_that_applies(
    state: State,
    candidates: Iterable[Envelope],
    *,
    time: int,
    rules: ProposerRules = OWN_RULES,
) -> tuple[Envelope | None, tuple[tuple[Envelope, TransactionRejected], ...]]:
    """Whether a block built now on `state` from `candidates` would hold a transaction: the
    first candidate that applies to `state` on its own, as `build_block` would try it
    (signatures taken as checked), and the rejections of those before it. A signer's
    candidates after one of its own that failed are passed over (`build_block` defers them).
    Each is tried on `state` itself: until one applies, nothing has changed it."""
    height = state.height + 1
    time = max(time, state.head_time + 1)
    rejected: list[tuple[Envelope, TransactionRejected]] = []
    failed_signers: set[str] = set()
    for envelope in candidates:
        if envelope.tx.signer in failed_signers:
            continue
        work = _Work(state, height=height, time=time)
        work.rules = rules
        if _tried(work, envelope, True, rejected, failed_signers):
            return envelope, tuple(rejected)
    return None, tuple(rejected)


def _tried(
    work: _Work,
    envelope: Envelope,
    signatures_verified: bool,
    rejected: list[tuple[Envelope, TransactionRejected]],
    failed_signers: set[str],
) -> bool:
    """`envelope` applied to `work`; False, its rejection and its signer noted, if it fails."""
    try:
        _apply_transaction(work, envelope, signatures_verified=signatures_verified)
    except TransactionRejected as error:
        error.tx_id = envelope.tx_id
        rejected.append((envelope, error))
        failed_signers.add(envelope.tx.signer)
        return False
    return True


def build_block(
    state: State,
    candidates: Iterable[Envelope],
    *,
    time: int,
    proposer: str,
    last_commit: Certificate | None,
    evidence: Iterable[Evidence] = (),
    signatures_verified: bool = False,
    rules: ProposerRules = OWN_RULES,
) -> BuiltBlock:
    """The proposer's side: apply what is valid, in order, and leave out what fails, and
    what the proposer's own `rules` refuse.

    Evidence first: each piece that holds (`_record_evidence`) is included, in order, up to
    EVIDENCE_PER_BLOCK_MAX; the rest is left out with its reason (`evidence_left_out`, which
    never counts a piece beyond the limit). Once a signer's transaction fails, its later
    candidates are deferred, not rejected: their nonces no longer follow on, but they may once
    the signer fills the gap.
    """
    height = state.height + 1
    time = max(time, state.head_time + 1)
    work = _Work(state, height=height, time=time)
    work.rules = rules
    included: list[Evidence] = []
    left_out: list[tuple[Evidence, InvalidBlockError]] = []
    for item in evidence:
        if len(included) == EVIDENCE_PER_BLOCK_MAX:
            break
        try:
            _record_evidence(work, item)
        except InvalidBlockError as error:
            left_out.append((item, error))
            continue
        included.append(item)
    applied: list[Envelope] = []
    rejected: list[tuple[Envelope, TransactionRejected]] = []
    deferred: list[Envelope] = []
    failed_signers: set[str] = set()
    for envelope in candidates:
        if len(applied) == state.params.block_transactions_max:
            break
        if envelope.tx.signer in failed_signers:
            deferred.append(envelope)
            continue
        if _tried(work, envelope, signatures_verified, rejected, failed_signers):
            applied.append(envelope)
    partial = Header(
        chain_id=state.chain_id,
        height=height,
        time=time,
        parent_hash=state.head_hash,
        last_commit_hash=ZERO_HASH_HEX if last_commit is None else last_commit.certificate_hash(),
        log_size=0,
        log_root=ZERO_HASH_HEX,
        state_root=ZERO_HASH_HEX,
        evidence_hash=compute_evidence_hash(included),
        validators_hash=compute_validators_hash(state.current_validators()),
        next_validators_hash=compute_validators_hash(state.next_validators()),
        proposer=proposer,
    )
    # The header hash depends on the roots, and the state records the header hash: finish
    # once with a placeholder, then fill in the roots and fix the head hash.
    finished = _finish(work, applied, ("", time))
    header = dataclasses.replace(
        partial,
        log_size=finished.log_size,
        log_root=finished.log_root,
        state_root=finished.state_root,
    )
    block = Block(
        header=header,
        transactions=tuple(applied),
        last_commit=last_commit,
        evidence=tuple(included),
    )
    new_state = dataclasses.replace(finished.state, head_hash=header.block_hash())
    return BuiltBlock(
        block=block,
        state=new_state,
        rejected=tuple(rejected),
        deferred=tuple(deferred),
        evidence_left_out=tuple(left_out),
    )
