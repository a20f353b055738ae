"""Every bound the ledger keeps, in one place, with its unit last (SPEC §2.1, §3.2, §5.1, §7.2).

A limit that is a chain parameter (set in genesis) has its default here; the value in force is
the genesis one.
"""

from typing import Final

JSON_INTEGER_MAX: Final = 2**53 - 1
JSON_DEPTH_MAX: Final = 8
# A document over JSON_DENSE_CHARS_MIN characters must average at least JSON_TOKEN_CHARS_MIN
# characters for each object, array and string it holds, checked before it is parsed: each of
# those is a Python object of 50-70 bytes, so `[{},{},...]` cost 27 times its size in memory
# (4.4 GB for an export line within its bound, found by review), where a real block's
# transactions take 25-70 characters for each (ids, keys and signatures are 64-128 hex).
JSON_DENSE_CHARS_MIN: Final = 1024 * 1024
JSON_TOKEN_CHARS_MIN: Final = 8
HASH_HEX_CHARS: Final = 64
SIGNATURE_HEX_CHARS: Final = 128

SLUG_CHARS_MAX: Final = 63
TEXT_CHARS_MAX: Final = 200
LONG_TEXT_CHARS_MAX: Final = 500
PROJECT_ID_CHARS_MAX: Final = 128
CHAIN_ID_CHARS_MAX: Final = 64

ACCOUNT_KEYS_MAX: Final = 10
TRANSACTION_SIGNATURES_MAX: Final = ACCOUNT_KEYS_MAX
ACCREDITATION_METHODOLOGIES_MAX: Final = 64
ISSUE_RECIPIENTS_MAX: Final = 1000
# A retirement's receipt carries a state proof of each lot it retired (SPEC §6.3); verifiers
# bound how many they read. A proposer leaves out a retirement that would take more of the
# holder's lots (docs/decisions/0004): the rule is its own, not a block's validity.
RETIREMENT_LOTS_MAX: Final = 1000
VALIDATORS_MAX: Final = 100
VALIDATOR_POWER_MAX: Final = 1000
ISSUE_PERIOD_DAYS_MAX: Final = 366
GENESIS_METHODOLOGIES_MAX: Final = 1000
AUTHORITY_KEYS_MAX: Final = ACCOUNT_KEYS_MAX

BLOCK_INTERVAL_MS_DEFAULT: Final = 1000
BLOCK_TRANSACTIONS_MAX_DEFAULT: Final = 5000
TRANSACTION_BYTES_MAX_DEFAULT: Final = 16384
BLOCK_TRANSACTIONS_MAX_CEILING: Final = 100_000
TRANSACTION_BYTES_MAX_CEILING: Final = 1024 * 1024

# The node's pending pool (SPEC §7.2): bounded in total and in how far ahead of an account's
# committed nonce it holds transactions.
POOL_TRANSACTIONS_MAX: Final = 50_000
POOL_NONCE_GAP_MAX: Final = 64
# A transaction waiting behind a missing nonce of its signer leaves the pool (rejected
# bad_nonce) once it has waited POOL_GAP_WAIT_MS for that nonce: fresh keys cost nothing, and
# transactions that can never be proposed would otherwise fill the pool for good
# (mempool_full to everyone else). A client that sends nonces out of order fills its gap in
# well under a second.
POOL_GAP_WAIT_MS: Final = 30_000
# At most so many wait behind a missing nonce at once: one client refilled the pool with such
# transactions faster than they expired (found by review), keeping everyone else out.
POOL_GAPPED_MAX: Final = 5_000
# Room in the pool that transactions forwarded by peers may not take: this node's own clients
# keep it (docs/decisions/0006, pool forwarding).
POOL_LOCAL_RESERVED: Final = 10_000
OUTCOMES_REMEMBERED_MAX: Final = 10_000  # recent outcomes in memory; the store has the rest

assert ISSUE_RECIPIENTS_MAX * JSON_INTEGER_MAX > JSON_INTEGER_MAX, "sums must be checked"
assert POOL_NONCE_GAP_MAX < POOL_TRANSACTIONS_MAX
assert POOL_LOCAL_RESERVED < POOL_TRANSACTIONS_MAX
assert POOL_NONCE_GAP_MAX < POOL_GAPPED_MAX < POOL_TRANSACTIONS_MAX - POOL_LOCAL_RESERVED
assert BLOCK_TRANSACTIONS_MAX_DEFAULT <= BLOCK_TRANSACTIONS_MAX_CEILING
assert TRANSACTION_BYTES_MAX_DEFAULT <= TRANSACTION_BYTES_MAX_CEILING

# Consensus (SPEC §5.4; docs/decisions/0006-consensus.md). Each of the three step timeouts of
# round r lasts min(ROUND_TIMEOUT_MS_BASE + r * ROUND_TIMEOUT_MS_DELTA, ROUND_TIMEOUT_MS_MAX):
# it grows with the round, so it outgrows any unknown network delay, and starts again from
# round 0 at each height. A replica re-sends what it signed at its height every
# REBROADCAST_INTERVAL_MS (messages may be lost), and answers a lagging validator with the
# decided block it lacks at most once per CATCH_UP_INTERVAL_MS.
ROUND_TIMEOUT_MS_BASE: Final = 1000
ROUND_TIMEOUT_MS_DELTA: Final = 500
ROUND_TIMEOUT_MS_MAX: Final = 60_000
# A node's propose step waits this much more (the simulation's replicas do not): before a
# validator prevotes, the proposer of a round must have written the last block, built the
# next and sent it, and the validator must have received it. On a loaded 2-core machine
# running four validators, a block of 3,000 transactions took longer than 1 s
# (docs/decisions/0006); Tendermint's own default is 3 s. A prevote or precommit timeout only
# starts once more than 2/3 have voted, so only this one is on the path of every block.
PROPOSE_TIMEOUT_MS_EXTRA: Final = 2000
# A node's proposals hold at most this many transactions in round 0, half as many in each
# later round (`Replica.proposal_limit`): the proposer builds its block, sends it, and every
# validator applies it within the propose step (3 s in round 0). Four validators sharing a
# loaded 2-core machine took ~0.3 ms a transaction for each of those (docs/decisions/0006),
# and blocks of ~3,000 missed round after round, each miss making the next block larger.
PROPOSAL_TRANSACTIONS_MAX: Final = 2000
# A validator with nothing to decide after a block looks for something this often (a
# transaction, evidence), and so does a proposer woken with nothing to propose, before it
# proposes an empty block.
PROPOSER_WAIT_POLL_MS: Final = 50
# A waiting transaction that no block built now would hold (it fails on the state) starts no
# height; an idle validator rejects it once it has failed this long, time for one it depends
# on to be forwarded from another validator (consensus.replica).
IDLE_REJECT_WAIT_MS: Final = 2000
# An idle consortium adds an empty block at most this often by default (`tanlian node
# --empty-block-interval`): after a block, a validator starts the next height only once it
# has something to decide (a transaction, evidence, a validator set changing) or another
# validator has begun it, or after this long. Each empty block costs every validator
# ~4 KB of store and every auditor a certificate to check, for nothing (docs/decisions/0006).
EMPTY_BLOCK_INTERVAL_MS_DEFAULT: Final = 60_000
# At most an hour: a validator no peer reaches waits two of these before it asks them for
# their heads (SYNC_PROBE_MS), and a chain this quiet says nothing to a monitor for as long.
EMPTY_BLOCK_INTERVAL_MS_MAX: Final = 3_600_000
REBROADCAST_INTERVAL_MS: Final = 1000
CATCH_UP_INTERVAL_MS: Final = 1000
# A node answering a lagging validator sends the decisions of up to this many heights from
# the one it lags at (and at most block_transactions_max transactions in them beyond the
# first), so one answer a CATCH_UP_INTERVAL_MS moves it that many heights; a vote older than
# its validator's latest it answers so only if it is at most this many heights back (a
# validator restarted lower), and otherwise with its latest decision alone, whose
# certificate starts the validator's block sync. The answer goes to every peer (the
# transport knows peers by address, not key): a validator further behind is block sync's
# (SYNC_LAG_HEIGHTS_MIN), which brings the blocks to it alone. At 16, old votes replayed had
# made every correct validator send MBs a second to every peer (review, docs/decisions/0006).
CATCH_UP_HEIGHTS_MAX: Final = 2
# A validator prevotes for a block only if its time is at most this far ahead of its own clock.
BLOCK_TIME_DRIFT_MS_MAX: Final = 10_000
# What a replica holds of messages not yet useful: rounds up to ROUNDS_AHEAD_MAX past its own,
# and the next height (round 0 .. ROUNDS_AHEAD_MAX) only; anything further is refused, so a
# flood of future messages cannot grow its memory.
ROUNDS_AHEAD_MAX: Final = 8
HEIGHTS_AHEAD_MAX: Final = 1
CONSENSUS_MESSAGES_BATCH_MAX: Final = 1000  # messages in one POST /v1/consensus/messages
# Evidence of equivocation in blocks (SPEC §5.4; docs/decisions/0006). A block carries at most
# EVIDENCE_PER_BLOCK_MAX items (each about 1 KB: two signed messages), and block H accepts
# evidence of heights H - EVIDENCE_AGE_HEIGHTS_MAX .. H only: the state remembers the validator
# sets that governed that many heights back (`State.recent_validators`), which is what
# evidence is verified against, so older evidence could not be checked. A replica holds at most
# EVIDENCE_PENDING_MAX pieces waiting for a block.
EVIDENCE_PER_BLOCK_MAX: Final = VALIDATORS_MAX
EVIDENCE_AGE_HEIGHTS_MAX: Final = 100
EVIDENCE_PENDING_MAX: Final = 4 * EVIDENCE_PER_BLOCK_MAX
# The HTTP transport to each peer: one batch is at most this many bytes (the API's request body
# limit; a single larger message travels alone), a request waits at most PEER_REQUEST_MS_MAX,
# and at most PEER_QUEUE_MESSAGES_MAX messages wait per peer (the oldest are dropped: the
# replica re-sends what still matters every REBROADCAST_INTERVAL_MS).
CONSENSUS_BATCH_BYTES_MAX: Final = 4 * 1024 * 1024
# A receiver holds the transactions that peers sent it (forwarded, or of a block sent by
# reference) for this many blocks' worth (block_transactions_max each), beside its pool, to
# complete blocks sent by reference (consensus.relay).
RELAY_BLOCKS_HELD: Final = 2
PEER_REQUEST_MS_MAX: Final = 2000
PEER_ANSWER_BYTES_MAX: Final = 4096  # of a peer's answer to a batch: a count, or a problem
# Our HTTP clients reuse an idle connection for at most this long: below a node's keep-alive
# (5 s by default, api.settings), so a request never goes out on a connection the server is
# closing at that moment (it would meet a reset). httpx's own default is 5 s, the race itself.
HTTP_IDLE_REUSE_SECONDS_MAX: Final = 1.0
PEER_QUEUE_MESSAGES_MAX: Final = 10_000
# Peers' proposals and decisions waiting for a validator's replica are bounded in bytes too (a
# message counts its block's encoding, a decision's certificate and PEER_MESSAGE_BYTES_BASE):
# while a block sync runs the replica reads none, and a Byzantine validator could otherwise
# queue 10,000 whole blocks (its signed proposals of many rounds). The newest always stays.
PEER_QUEUE_BYTES_MAX: Final = 64 * 1024 * 1024
PEER_MESSAGE_BYTES_BASE: Final = 4096  # a vote; what a message holds beside its encoding

# Block sync (consensus.sync): a validator that peers' messages show at least
# SYNC_LAG_HEIGHTS_MIN heights behind, or a follower, fetches the blocks it lacks from other
# nodes' public API, at most SYNC_RANGE_BLOCKS_MAX per request. Each request has its whole
# answer within SYNC_REQUEST_MS_MAX, waiting at most SYNC_READ_MS_MAX for the next bytes; an
# attempt (each source asked for its head at most once, one range read from the first that
# has more) starts no request and reads no line after SYNC_ATTEMPT_MS_MAX. A source refused
# (unreachable, or serving what fails a check) is not asked again for SYNC_RETRY_MS_MIN,
# doubling while it keeps failing, up to SYNC_RETRY_MS_MAX; after an attempt that brought
# nothing the next waits SYNC_RETRY_MS_MIN. A follower asks for new blocks every FOLLOW_POLL_MS.
SYNC_LAG_HEIGHTS_MIN: Final = 2
SYNC_RANGE_BLOCKS_MAX: Final = 100
SYNC_REQUEST_MS_MAX: Final = 30_000
SYNC_READ_MS_MAX: Final = 5000
SYNC_ATTEMPT_MS_MAX: Final = 60_000
SYNC_RETRY_MS_MIN: Final = 500
SYNC_RETRY_MS_MAX: Final = 30_000
FOLLOW_POLL_MS: Final = 500
# A validator's pool is rid of stale transactions (a nonce used, or a gap waited out) this
# often, besides at each committed block: an idle consortium commits none for a while.
STALE_CHECK_MS: Final = 1000
# A validator no peer has sent anything for SYNC_PROBE_MS (plus two empty-block intervals,
# at least two block intervals) asks its peers for their heads (one sync attempt), and again
# as long while none does: peers that do not know its address (restarted on another port)
# send it nothing, and nothing else would tell it the chain went on. Peers that reach it
# re-send their messages every REBROADCAST_INTERVAL_MS while a height is under way, and
# decide a block every empty-block interval.
SYNC_PROBE_MS: Final = 15_000

assert ROUND_TIMEOUT_MS_BASE <= ROUND_TIMEOUT_MS_MAX
assert REBROADCAST_INTERVAL_MS <= ROUND_TIMEOUT_MS_MAX
assert PEER_QUEUE_MESSAGES_MAX >= CONSENSUS_MESSAGES_BATCH_MAX
assert HEIGHTS_AHEAD_MAX == 1, "only the next height's validator set is known (the H+2 rule)"
assert SYNC_LAG_HEIGHTS_MIN >= 2, "a lag of one height is the Decision message's to close"
assert CATCH_UP_HEIGHTS_MAX >= SYNC_LAG_HEIGHTS_MIN, "a lag below block sync's is one answer's"
assert SYNC_READ_MS_MAX <= SYNC_REQUEST_MS_MAX <= SYNC_ATTEMPT_MS_MAX
assert 0 < SYNC_RETRY_MS_MIN <= SYNC_RETRY_MS_MAX
assert EVIDENCE_PENDING_MAX >= EVIDENCE_PER_BLOCK_MAX >= 1
assert EVIDENCE_AGE_HEIGHTS_MAX >= 1
