/*
 * Tanlian (碳链) verification in the browser: the same checks as the pure Python verifier
 * (ledger/receipts.py verify_receipt, ledger/merkle.py verify_inclusion, ledger/state_tree.py
 * verify_state_proof, ledger/blocks.py verify_certificate), so that a page served by a node can
 * be checked without trusting that node.
 *
 * - Strict JSON (SPEC §2.1): no duplicate keys, no floats or exponents, integers in
 *   [0, 2**53 - 1], nesting at most 8, no lone surrogates, valid UTF-8.
 * - Canonical JSON (RFC 8785) over that value space: keys [a-z][a-z0-9_]* sorted, strings as
 *   ECMAScript's JSON.stringify writes them (RFC 8785 §3.2.2.2 is defined that way).
 * - SHA-256 through WebCrypto; Ed25519 through WebCrypto where the browser has it, after the
 *   strict checks of SPEC §2.3 done here (canonical point encodings of the key and of R, no
 *   small-order points, S < L), so every node and this page refuse the same signatures.
 * - RFC 9162 inclusion paths (leaf hash sha256(0x00 + leaf), node hash sha256(0x01 + l + r)),
 *   the sparse Merkle tree of SPEC §4, commit certificates (more than 2/3 of the power of the
 *   validators, whose hash is the header's validators_hash).
 *
 * No dependency, no build step, no network. Exposed as `TanlianVerify`.
 */
"use strict";

const TanlianVerify = (() => {
  const DOMAIN = {
    tx: "tanlian/tx/v1\n",
    block: "tanlian/block/v1\n",
    vote: "tanlian/vote/v1\n",
    validators: "tanlian/validators/v1\n",
    genesis: "tanlian/genesis/v1\n",
  };
  const INTEGER_MAX = 2 ** 53 - 1;
  const DEPTH_MAX = 8; // a receipt: receipt > state_proofs > proof > value > serials > range
  const LOG_PATH_MAX = 64;
  const STATE_PATH_BITS = 256;
  const STATE_KEY_CHARS_MAX = 400;
  const RECEIPT_LOTS_MAX = 1000;
  const VALIDATORS_MAX = 100;
  const VALIDATOR_POWER_MAX = 1000;
  const SIGNATURES_MAX = 10;
  const KEY = /^[a-z][a-z0-9_]*$/;
  const HEX64 = /^[0-9a-f]{64}$/;
  const HEX128 = /^[0-9a-f]{128}$/;
  const SLUG = /^[a-z0-9][a-z0-9-]{1,62}$/;
  const BATCH = /^B-[1-9][0-9]{0,15}$/;
  const CHAIN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
  const JURISDICTION = /^[A-Z]{2}-[A-Z0-9]{1,3}$/;
  const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
  const TX_TYPES = [
    "register_methodology", "accredit_certifier", "revoke_certifier", "create_program",
    "suspend_account", "reinstate_account", "set_validators", "issue", "transfer", "retire",
    "invalidate", "set_keys",
  ];
  // Curve25519's field prime, the group order L, and the y coordinates of the eight points of
  // order dividing 8 (ledger/crypto.py SMALL_ORDER_Y; a test checks these against it).
  const FIELD_P = (1n << 255n) - 19n;
  const GROUP_L = (1n << 252n) + 27742317777372353535851937790883648493n;
  const SMALL_ORDER_Y = new Set([
    0n,
    1n,
    0x5fc536d880238b13933c6d305acdfd5f098eff289f4c345b027b2c28f95e826n,
    0x7a03ac9277fdc74ec6cc392cfa53202a0f67100d760b3cba4fd84d3d706a17c7n,
    FIELD_P - 1n,
  ]);
  // RFC 8032 §7.1, test 1: a signature every Ed25519 implementation accepts.
  const PROBE = {
    key: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    signature:
      "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
  };

  class ProofError extends Error {}
  const fail = (message) => {
    throw new ProofError(message);
  };
  const utf8 = new TextEncoder();

  // --- strict JSON (SPEC §2.1) -----------------------------------------------------------------

  function parseStrict(text, depthMax = DEPTH_MAX) {
    let at = 0;
    const error = (message) => fail(`not strict JSON: ${message} at character ${at}`);
    const space = () => {
      while (at < text.length && " \t\n\r".includes(text[at])) at += 1;
    };
    const value = (depth) => {
      space();
      const c = text[at];
      if (c === "{" || c === "[") {
        if (depth >= depthMax) error(`nesting deeper than ${depthMax}`);
        return c === "{" ? object(depth) : array(depth);
      }
      if (c === '"') return string();
      if (c === "-" || (c >= "0" && c <= "9")) return number();
      for (const [word, result] of [["true", true], ["false", false], ["null", null]]) {
        if (text.startsWith(word, at)) {
          at += word.length;
          return result;
        }
      }
      return error("unexpected input");
    };
    const object = (depth) => {
      at += 1;
      const result = {};
      const seen = new Set();
      space();
      if (text[at] === "}") {
        at += 1;
        return result;
      }
      for (;;) {
        space();
        if (text[at] !== '"') error("expected a key");
        const key = string();
        if (seen.has(key)) error(`duplicate key ${JSON.stringify(key)}`);
        seen.add(key);
        space();
        if (text[at] !== ":") error("expected ':'");
        at += 1;
        Object.defineProperty(result, key, {
          value: value(depth + 1), enumerable: true, writable: true, configurable: true,
        });
        space();
        if (text[at] === ",") {
          at += 1;
        } else if (text[at] === "}") {
          at += 1;
          return result;
        } else {
          error("expected ',' or '}'");
        }
      }
    };
    const array = (depth) => {
      at += 1;
      const result = [];
      space();
      if (text[at] === "]") {
        at += 1;
        return result;
      }
      for (;;) {
        result.push(value(depth + 1));
        space();
        if (text[at] === ",") {
          at += 1;
        } else if (text[at] === "]") {
          at += 1;
          return result;
        } else {
          error("expected ',' or ']'");
        }
      }
    };
    const ESCAPES = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
    const string = () => {
      at += 1;
      let result = "";
      for (;;) {
        if (at >= text.length) error("unterminated string");
        const c = text[at];
        const code = text.charCodeAt(at);
        if (c === '"') {
          at += 1;
          break;
        }
        if (code < 0x20) error("control character in a string");
        if (c === "\\") {
          const next = text[at + 1];
          if (next === "u") {
            const digits = text.slice(at + 2, at + 6);
            if (!/^[0-9a-fA-F]{4}$/.test(digits)) error("bad \\u escape");
            result += String.fromCharCode(parseInt(digits, 16));
            at += 6;
          } else if (Object.hasOwn(ESCAPES, next)) {
            result += ESCAPES[next];
            at += 2;
          } else {
            error("bad escape");
          }
        } else {
          result += c;
          at += 1;
        }
      }
      if (!result.isWellFormed()) error("a string holds a lone surrogate, which is not UTF-8");
      return result;
    };
    const number = () => {
      const match = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(at, at + 400));
      if (match === null) error("bad number");
      const [whole, , fraction, exponent] = match;
      if (fraction !== undefined || exponent !== undefined) {
        error(`number ${whole.slice(0, 24)} is not an integer (floats and exponents are invalid)`);
      }
      if (whole.startsWith("-")) error(`negative number ${whole.slice(0, 24)} is invalid`);
      if (whole.length > 16 || Number(whole) > INTEGER_MAX) {
        error(`integer ${whole.slice(0, 20)} is outside [0, 2**53 - 1]`);
      }
      at += whole.length;
      return Number(whole);
    };
    const result = value(0);
    space();
    if (at !== text.length) error("trailing data");
    return result;
  }

  // --- canonical JSON (RFC 8785 over the SPEC §2.1 value space) -------------------------------

  function canonical(value, depth = 0) {
    if (value !== null && typeof value === "object" && depth >= DEPTH_MAX) fail(`nesting deeper than ${DEPTH_MAX}`);
    if (value === null || value === true || value === false) return String(value);
    if (typeof value === "number") {
      if (!Number.isSafeInteger(value)) fail(`${value} is not an integer in [-(2**53 - 1), 2**53 - 1]`);
      return String(value);
    }
    if (typeof value === "string") {
      if (!value.isWellFormed()) fail("a string holds a lone surrogate");
      return JSON.stringify(value);
    }
    if (Array.isArray(value)) return `[${value.map((item) => canonical(item, depth + 1)).join(",")}]`;
    if (typeof value === "object") {
      const keys = Object.keys(value);
      for (const key of keys) if (!KEY.test(key)) fail(`object key ${JSON.stringify(key)} does not match [a-z][a-z0-9_]*`);
      keys.sort(); // UTF-16 code unit order: byte order for these ASCII keys
      return `{${keys.map((key) => `${JSON.stringify(key)}:${canonical(value[key], depth + 1)}`).join(",")}}`;
    }
    return fail(`${typeof value} is not a canonical JSON value`);
  }

  const canonicalBytes = (value) => utf8.encode(canonical(value));

  function same(a, b) {
    try {
      return canonical(a === undefined ? null : a) === canonical(b === undefined ? null : b);
    } catch (error) {
      if (error instanceof ProofError) return false;
      throw error;
    }
  }

  // --- bytes and hashes -------------------------------------------------------------------------

  function fromHex(text) {
    if (typeof text !== "string" || text.length % 2 || !/^[0-9a-f]*$/.test(text)) fail("not lowercase hex");
    const bytes = new Uint8Array(text.length / 2);
    for (let i = 0; i < bytes.length; i += 1) bytes[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
    return bytes;
  }

  const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

  function concat(...parts) {
    const result = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
    let at = 0;
    for (const part of parts) {
      result.set(part, at);
      at += part.length;
    }
    return result;
  }

  function equalBytes(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i += 1) if (a[i] !== b[i]) return false;
    return true;
  }

  function webCrypto() {
    if (!globalThis.crypto || !globalThis.crypto.subtle) {
      fail(
        "this browser withholds WebCrypto from this page (it is neither HTTPS nor localhost): " +
          "open the page over HTTPS, or check the receipt with `tanlian verify receipt`",
      );
    }
    return globalThis.crypto.subtle;
  }

  const sha256 = async (bytes) => new Uint8Array(await webCrypto().digest("SHA-256", bytes));
  const hashDomain = (domain, value) => sha256(concat(utf8.encode(domain), canonicalBytes(value)));
  const ZERO = new Uint8Array(32);
  const nodeHash = (left, right) => sha256(concat(Uint8Array.of(1), left, right));

  // --- strict Ed25519 (SPEC §2.3) ---------------------------------------------------------------

  let ed25519Support = null;

  /** Whether this browser's WebCrypto verifies Ed25519 (RFC 8032 test 1 as the probe). */
  async function ed25519Available() {
    if (ed25519Support === null) {
      try {
        const key = await webCrypto().importKey("raw", fromHex(PROBE.key), { name: "Ed25519" }, false, ["verify"]);
        ed25519Support = await webCrypto().verify({ name: "Ed25519" }, key, fromHex(PROBE.signature), new Uint8Array(0));
      } catch (error) {
        ed25519Support = false;
      }
    }
    return ed25519Support;
  }

  function littleEndian(bytes) {
    let value = 0n;
    for (let i = bytes.length - 1; i >= 0; i -= 1) value = (value << 8n) | BigInt(bytes[i]);
    return value;
  }

  function isStrictPoint(bytes) {
    if (bytes.length !== 32) return false;
    const y = littleEndian(bytes) & ((1n << 255n) - 1n);
    return y < FIELD_P && !SMALL_ORDER_Y.has(y);
  }

  function modPow(base, exponent, modulus) {
    let result = 1n;
    let square = ((base % modulus) + modulus) % modulus;
    for (let e = exponent; e > 0n; e >>= 1n) {
      if (e & 1n) result = (result * square) % modulus;
      square = (square * square) % modulus;
    }
    return result;
  }

  // The curve's constant d = -121665 / 121666 (RFC 8032 §5.1).
  const CURVE_D = (((-121665n * modPow(121666n, FIELD_P - 2n, FIELD_P)) % FIELD_P) + FIELD_P) % FIELD_P;

  /** A strict point that is on the curve (ledger/crypto.py is_public_key): x² = u / v, with
   * u = y² - 1 and v = d·y² + 1, has a root exactly when u·v is a square (Euler). */
  function isPublicKey(bytes) {
    if (!isStrictPoint(bytes)) return false;
    const y = littleEndian(bytes) & ((1n << 255n) - 1n);
    const ySquared = (y * y) % FIELD_P;
    const uv = (((ySquared - 1n) * (CURVE_D * ySquared + 1n)) % FIELD_P + FIELD_P) % FIELD_P;
    return modPow(uv, (FIELD_P - 1n) / 2n, FIELD_P) !== FIELD_P - 1n;
  }

  /** Strict Ed25519 verification; throws ProofError naming what failed. */
  async function verifySignature(publicKeyHex, message, signatureHex) {
    const publicKey = fromHex(publicKeyHex);
    const signature = fromHex(signatureHex);
    if (!isPublicKey(publicKey)) fail(`public key ${publicKeyHex} is not a canonical curve point of large order`);
    if (signature.length !== 64) fail("a signature is 64 bytes");
    if (!isStrictPoint(signature.slice(0, 32))) fail("signature R is not a canonical point of large order");
    if (littleEndian(signature.slice(32)) >= GROUP_L) fail("signature S is not reduced (S >= L)");
    const key = await webCrypto().importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    if (!(await webCrypto().verify({ name: "Ed25519" }, key, signature, message))) {
      fail(`signature does not verify for key ${publicKeyHex}`);
    }
  }

  // --- shapes (ledger/schema.py) ----------------------------------------------------------------

  const kind = (value) =>
    value === null ? "null" : Array.isArray(value) ? "an array" : typeof value === "object" ? "an object" : `a ${typeof value}`;

  function integer(path, value, low = 0, high = INTEGER_MAX) {
    if (typeof value !== "number" || !Number.isSafeInteger(value)) fail(`${path}: expected an integer, got ${kind(value)}`);
    if (value < low) fail(`${path}: ${value} is below the minimum ${low}`);
    if (value > high) fail(`${path}: ${value} is above the maximum ${high}`);
    return value;
  }

  function text(path, value, high, { low = 1, pattern = null } = {}) {
    if (typeof value !== "string") fail(`${path}: expected a string, got ${kind(value)}`);
    const length = Array.from(value).length; // code points, as Python counts them
    if (length > high) fail(`${path}: ${length} characters, at most ${high} allowed`);
    if (length < low) fail(`${path}: ${length} characters, at least ${low} needed`);
    if (pattern !== null) {
      if (!pattern.test(value)) fail(`${path}: ${JSON.stringify(value.slice(0, 80))} does not match ${pattern.source}`);
    } else if (CONTROL.test(value) || !value.isWellFormed()) {
      fail(`${path}: control characters are not allowed`);
    }
    return value;
  }

  const hash = (path, value) => text(path, value, 64, { low: 64, pattern: HEX64 });

  function array(path, value, low, high, item) {
    if (!Array.isArray(value)) fail(`${path}: expected an array, got ${kind(value)}`);
    if (value.length > high) fail(`${path}: ${value.length} items, at most ${high} allowed`);
    if (value.length < low) fail(`${path}: ${value.length} items, at least ${low} needed`);
    return value.map((element, index) => item(`${path}[${index}]`, element));
  }

  /** An object with exactly `required` fields and perhaps `optional` ones (never null). */
  function object(path, value, required, optional = {}) {
    if (value === null || typeof value !== "object" || Array.isArray(value)) fail(`${path}: expected an object, got ${kind(value)}`);
    const unknown = Object.keys(value)
      .filter((name) => !Object.hasOwn(required, name) && !Object.hasOwn(optional, name))
      .sort();
    if (unknown.length) fail(`${path}: unknown field ${JSON.stringify(unknown[0])}`);
    for (const [name, check] of Object.entries(required)) {
      if (!Object.hasOwn(value, name)) fail(`${path}: missing field ${JSON.stringify(name)}`);
      check(path ? `${path}.${name}` : name, value[name]);
    }
    for (const [name, check] of Object.entries(optional)) {
      if (Object.hasOwn(value, name)) check(path ? `${path}.${name}` : name, value[name]);
    }
    return value;
  }

  const any = () => {};

  function strictKey(path, value) {
    hash(path, value);
    if (!isPublicKey(fromHex(value))) fail(`${path}: not a canonical Ed25519 curve point of large order`);
  }

  function sortedUnique(path, keys) {
    for (let i = 1; i < keys.length; i += 1) {
      if (!(keys[i - 1] < keys[i])) fail(`${path}: must be sorted by public_key, each key once`);
    }
  }

  const HEADER = {
    chain_id: (p, v) => text(p, v, 64, { pattern: CHAIN_ID }),
    height: (p, v) => integer(p, v, 1),
    time: (p, v) => integer(p, v),
    parent_hash: hash,
    last_commit_hash: hash,
    log_size: (p, v) => integer(p, v),
    log_root: hash,
    state_root: hash,
    evidence_hash: hash,
    validators_hash: hash,
    next_validators_hash: hash,
    proposer: hash,
  };
  const SIGNATURE = {
    public_key: hash,
    signature: (p, v) => text(p, v, 128, { low: 128, pattern: HEX128 }),
  };

  function parseCertificate(path, value) {
    object(path, value, {
      chain_id: HEADER.chain_id,
      height: (p, v) => integer(p, v, 1),
      round: (p, v) => integer(p, v),
      block_hash: hash,
      signatures: (p, v) => array(p, v, 1, VALIDATORS_MAX, (q, s) => object(q, s, SIGNATURE)),
    });
    sortedUnique(`${path}.signatures`, value.signatures.map((s) => s.public_key));
    return value;
  }

  function parseValidators(path, value) {
    const entries = array(path, value, 1, VALIDATORS_MAX, (p, v) =>
      object(p, v, {
        public_key: strictKey,
        power: (q, w) => integer(q, w, 1, VALIDATOR_POWER_MAX),
        name: (q, w) => text(q, w, 200),
      }),
    );
    const sorted = entries
      .map((v) => ({ public_key: v.public_key, power: v.power, name: v.name }))
      .sort((a, b) => (a.public_key < b.public_key ? -1 : a.public_key > b.public_key ? 1 : 0));
    for (let i = 1; i < sorted.length; i += 1) {
      if (sorted[i - 1].public_key === sorted[i].public_key) fail(`${path}: a validator key appears twice`);
    }
    return sorted;
  }

  const RETIRE = {
    required: {
      batch_id: (p, v) => text(p, v, 18, { low: 3, pattern: BATCH }),
      quantity: (p, v) => integer(p, v, 1),
      beneficiary: (p, v) => text(p, v, 200),
      purpose: (p, v) => {
        if (!["voluntary", "incentive", "compliance"].includes(v)) fail(`${p}: ${JSON.stringify(v)} is not one of voluntary, incentive, compliance`);
      },
    },
    optional: {
      program_id: (p, v) => text(p, v, 63, { low: 2, pattern: SLUG }),
      jurisdiction: (p, v) => text(p, v, 6, { low: 4, pattern: JURISDICTION }),
      memo: (p, v) => text(p, v, 500),
    },
  };

  /** The envelope's shape (ledger/transactions.py parse_envelope); a retire's payload too. */
  function parseEnvelope(value) {
    object("", value, {
      tx: (p, tx) =>
        object(p, tx, {
          chain_id: HEADER.chain_id,
          type: (q, v) => {
            if (!TX_TYPES.includes(v)) fail(`${q}: ${JSON.stringify(v)} is not a transaction type`);
          },
          signer: hash,
          nonce: (q, v) => integer(q, v, 1),
          payload: any,
        }),
      signatures: (p, v) => array(p, v, 0, SIGNATURES_MAX, (q, s) => object(q, s, SIGNATURE)),
    });
    sortedUnique("signatures", value.signatures.map((s) => s.public_key));
    if (value.tx.type === "retire") {
      const payload = object("tx.payload", value.tx.payload, RETIRE.required, RETIRE.optional);
      if ((payload.purpose === "incentive") !== Object.hasOwn(payload, "program_id")) {
        fail("tx.payload: program_id is required if and only if purpose is incentive");
      }
    }
    return value;
  }

  // --- the checks -------------------------------------------------------------------------------

  const blockHash = async (header) => toHex(await hashDomain(DOMAIN.block, header));
  const validatorsHash = async (validators) => toHex(await hashDomain(DOMAIN.validators, validators));
  const genesisHash = async (genesis) => toHex(await hashDomain(DOMAIN.genesis, genesis));
  const transactionId = async (tx) => toHex(await hashDomain(DOMAIN.tx, tx));
  const leafHash = async (envelope) => sha256(concat(Uint8Array.of(0), canonicalBytes(envelope)));

  /** RFC 9162 §2.1.3.2, as ledger/merkle.py verify_inclusion. */
  async function verifyInclusion({ leaf, index, size, path, root }) {
    if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) {
      fail(`index ${index} is not inside a tree of size ${size}`);
    }
    if (path.length > LOG_PATH_MAX) fail("inclusion path is longer than any tree allows");
    let fn = BigInt(index);
    let sn = BigInt(size - 1);
    let result = leaf;
    for (const [position, hex] of path.entries()) {
      const sibling = fromHex(hex);
      if (sibling.length !== 32) fail(`path[${position}] is not a 32-byte hash`);
      if (sn === 0n) fail("inclusion path is longer than the tree is deep");
      if (fn & 1n || fn === sn) {
        result = await nodeHash(sibling, result);
        if (!(fn & 1n)) {
          while (!(fn & 1n) && fn !== 0n) {
            fn >>= 1n;
            sn >>= 1n;
          }
        }
      } else {
        result = await nodeHash(result, sibling);
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    if (sn !== 0n) fail("inclusion path is shorter than the tree is deep");
    if (!equalBytes(result, root)) fail("inclusion path does not lead to the root");
  }

  const bit = (digest, position) => (digest[position >> 3] >> (7 - (position & 7))) & 1;

  function firstDifference(a, b) {
    for (let i = 0; i < a.length; i += 1) {
      const x = a[i] ^ b[i];
      if (x) return 8 * i + Math.clz32(x) - 24;
    }
    return STATE_PATH_BITS;
  }

  /** SPEC §4, as ledger/state_tree.py verify_state_proof. */
  async function verifyStateProof(proof, root) {
    let encoded;
    try {
      object("proof", proof, {
        key: (p, v) => text(p, v, STATE_KEY_CHARS_MAX),
        value: any,
        siblings: (p, v) => array(p, v, 0, STATE_PATH_BITS, hash),
      }, {
        leaf: (p, v) => object(p, v, { key_hash: hash, value_hash: hash }),
      });
      encoded = proof.value === null ? null : canonicalBytes(proof.value);
    } catch (error) {
      if (error instanceof ProofError) fail(`malformed state proof: ${error.message}`);
      throw error;
    }
    const digest = await sha256(utf8.encode(proof.key));
    const siblings = proof.siblings.map(fromHex);
    const other = proof.leaf;
    let current;
    if (encoded !== null) {
      if (other !== undefined) fail("a proof of a present key names no other leaf");
      current = await sha256(concat(Uint8Array.of(0), digest, await sha256(encoded)));
    } else if (other !== undefined) {
      const otherDigest = fromHex(other.key_hash);
      if (equalBytes(otherDigest, digest)) fail("the leaf on the path is the key's own: it is not absent");
      if (firstDifference(digest, otherDigest) < siblings.length) fail("the leaf named does not sit on the key's path");
      current = await sha256(concat(Uint8Array.of(0), otherDigest, fromHex(other.value_hash)));
    } else {
      current = ZERO;
    }
    for (let level = siblings.length - 1; level >= 0; level -= 1) {
      current = bit(digest, level) ? await nodeHash(siblings[level], current) : await nodeHash(current, siblings[level]);
    }
    if (!equalBytes(current, root)) fail(`state proof for ${JSON.stringify(proof.key.slice(0, 80))} does not lead to the root`);
  }

  /**
   * A commit certificate (ledger/blocks.py verify_certificate): the header's hash, committed by
   * more than 2/3 of the validators' power. With `signatures` false the signatures themselves
   * are not checked (a browser without Ed25519) and the caller says so.
   */
  async function verifyCertificate(certificate, header, validators, signatures) {
    if (certificate.chain_id !== header.chain_id) fail(`certificate is for chain ${JSON.stringify(certificate.chain_id)}`);
    if (certificate.height !== header.height) fail(`certificate is for height ${certificate.height}, not ${header.height}`);
    const hashOfHeader = await blockHash(header);
    if (certificate.block_hash !== hashOfHeader) fail("certificate commits a different block hash");
    const powers = new Map(validators.map((v) => [v.public_key, v.power]));
    const message = concat(
      utf8.encode(DOMAIN.vote),
      canonicalBytes({
        chain_id: header.chain_id,
        type: "precommit",
        height: header.height,
        round: certificate.round,
        block_hash: hashOfHeader,
      }),
    );
    let signed = 0;
    let previous = "";
    for (const { public_key: key, signature } of certificate.signatures) {
      if (!(key > previous)) fail("certificate signatures are not sorted by distinct keys");
      previous = key;
      if (!powers.has(key)) fail(`certificate signer ${key} is not a validator at ${header.height}`);
      if (signatures) {
        try {
          await verifySignature(key, message, signature);
        } catch (error) {
          if (error instanceof ProofError) fail(`certificate signature of ${key}: ${error.message}`);
          throw error;
        }
      }
      signed += powers.get(key);
    }
    const total = validators.reduce((sum, v) => sum + v.power, 0);
    if (!(3 * signed > 2 * total)) fail(`certificate power ${signed} of ${total} is not more than 2/3`);
    return { signed, total, signers: certificate.signatures.length };
  }

  async function verifyEnvelopeSignatures(envelope) {
    const message = concat(utf8.encode(DOMAIN.tx), canonicalBytes(envelope.tx));
    for (const { public_key: key, signature } of envelope.signatures) await verifySignature(key, message, signature);
  }

  // --- reports: numbered steps, each passed, failed, not checked or not reached -----------------

  class Report {
    constructor(titles) {
      this.steps = titles.map(([id, title]) => ({ id, title, status: "not reached", detail: "" }));
      this.at = 0;
    }

    async run(fn) {
      const step = this.steps[this.at];
      this.at += 1;
      try {
        const outcome = await fn();
        step.status = outcome && outcome.unchecked ? "not checked" : "passed";
        step.detail = (outcome && outcome.detail) || "";
        return true;
      } catch (error) {
        step.status = "failed";
        step.detail = error instanceof ProofError ? error.message : `${error.name}: ${error.message}`;
        return false;
      }
    }

    /** true (every step passed), false (a step failed) or null (some could not be checked). */
    get verified() {
      if (this.steps.some((s) => s.status === "failed")) return false;
      if (this.steps.every((s) => s.status === "passed")) return true;
      return null;
    }
  }

  const RECEIPT_STEPS = [
    ["1", "The receipt has exactly the SPEC §6.3 fields, each well formed · 格式"],
    ["2", "The validators are the trusted set, and the ones the header names · 验证者"],
    ["3", "The certificate: more than 2/3 of their power signed this header · 提交证书"],
    ["4", "The transaction is this retirement, and its signatures verify · 交易签名"],
    ["5", "The transaction is in the log (RFC 9162 inclusion path) · 默克尔路径"],
    ["6", "The state holds the record and every lot retired by it · 状态证明"],
  ];

  /**
   * A retirement receipt (SPEC §6.3) against a trusted validator set hash, and the genesis hash
   * and chain id when they are given (the chain id is what the certificate signs: the receipt's
   * own genesis_hash is an unsigned claim); the steps of ledger/receipts.py, in order, stopping
   * at the first failure.
   */
  async function verifyReceipt(receipt, { validatorsHash: trusted, genesisHash: chain = null, chainId = null }) {
    const report = new Report(RECEIPT_STEPS);
    const signatures = await ed25519Available().catch(() => false);
    report.signatures = signatures;
    let header;
    let certificate;
    let validators;
    let envelope;
    let record;
    const ok =
      (await report.run(async () => {
        object("receipt", receipt, {
          retirement: any,
          transaction: any,
          log_index: (p, v) => integer(p, v),
          inclusion: (p, v) => array(p, v, 0, LOG_PATH_MAX, hash),
          state_proofs: (p, v) => array(p, v, 2, RECEIPT_LOTS_MAX + 1, any),
          checkpoint: (p, v) => object(p, v, { header: any, certificate: any }),
          validators: any,
          genesis_hash: hash,
        });
        header = object("receipt.checkpoint.header", receipt.checkpoint.header, HEADER);
        certificate = parseCertificate("receipt.checkpoint.certificate", receipt.checkpoint.certificate);
        validators = parseValidators("receipt.validators", receipt.validators);
        envelope = parseEnvelope(receipt.transaction);
        if (canonicalBytes(envelope).length > 1024 * 1024) fail("the transaction is over 1 MiB");
        record = receipt.retirement;
        if (record === null || typeof record !== "object" || Array.isArray(record)) fail("retirement is not an object");
        if (chain !== null && receipt.genesis_hash !== chain) fail("the receipt is for another chain's genesis");
        if (chainId !== null && header.chain_id !== chainId) fail(`the receipt is for chain ${JSON.stringify(header.chain_id)}, not ${JSON.stringify(chainId)}`);
      })) &&
      (await report.run(async () => {
        const computed = await validatorsHash(validators);
        if (computed !== trusted) fail(`the validators hash to ${computed}, not the trusted ${trusted}`);
        if (header.validators_hash !== computed) fail("the header names another validator set");
      })) &&
      (await report.run(async () => {
        const power = await verifyCertificate(certificate, header, validators, signatures);
        const detail = `${power.signers} of ${validators.length} validators, power ${power.signed} of ${power.total}`;
        return signatures ? { detail } : { unchecked: true, detail: `${detail}; ${NO_ED25519}` };
      })) &&
      (await report.run(async () => {
        const tx = envelope.tx;
        const id = await transactionId(tx);
        if (id !== record.retirement_id) fail("the transaction's id is not the retirement's id");
        if (tx.type !== "retire" || tx.chain_id !== header.chain_id) fail("the transaction is not a retirement on this chain");
        const expected = {
          holder: tx.signer,
          batch_id: tx.payload.batch_id,
          quantity: tx.payload.quantity,
          beneficiary: tx.payload.beneficiary,
          purpose: tx.payload.purpose,
          program_id: tx.payload.program_id,
          jurisdiction: tx.payload.jurisdiction,
          memo: tx.payload.memo,
        };
        for (const [name, value] of Object.entries(expected)) {
          if (!same(record[name], value)) fail(`the record's ${name} differs from the transaction's`);
        }
        if (!signatures) return { unchecked: true, detail: NO_ED25519 };
        await verifyEnvelopeSignatures(envelope);
        return { detail: `${envelope.signatures.length} signature(s) by the holder's keys` };
      })) &&
      (await report.run(async () => {
        await verifyInclusion({
          leaf: await leafHash(envelope),
          index: receipt.log_index,
          size: header.log_size,
          path: receipt.inclusion,
          root: fromHex(header.log_root),
        });
        return { detail: `leaf ${receipt.log_index} of ${header.log_size}, ${receipt.inclusion.length} hashes` };
      })) &&
      (await report.run(async () => {
        const root = fromHex(header.state_root);
        const proven = new Map();
        for (const proof of receipt.state_proofs) {
          await verifyStateProof(proof, root);
          proven.set(proof.key, proof.value);
        }
        const id = record.retirement_id;
        if (!same(proven.get(`retirement/${id}`), record)) fail("the state does not hold this retirement record");
        const serials = record.serials;
        if (!Array.isArray(serials) || serials.length === 0) fail("the record names no serials");
        let total = 0;
        for (const entry of serials) {
          if (!Array.isArray(entry) || entry.length !== 2) fail("a serial range is not [first, last]");
          const [first, last] = entry;
          const lot = proven.get(`lot/${record.batch_id}/${first}`);
          if (lot === null || typeof lot !== "object" || Array.isArray(lot) || lot.status !== "retired") {
            fail(`serials from ${first} are not proven retired`);
          }
          if (lot.retirement_id !== id || lot.owner !== record.holder) fail(`serials from ${first} are retired by another retirement`);
          if (!same(lot.quantity, last - first + 1)) fail(`the lot at ${first} does not cover [${first}, ${last}]`);
          total += lot.quantity;
        }
        if (!same(total, record.quantity)) fail(`the lots hold ${total} units, the retirement ${record.quantity}`);
        return { detail: `${receipt.state_proofs.length} state proofs against state_root ${header.state_root.slice(0, 16)}…` };
      }));
    report.ok = ok;
    return report;
  }

  const NO_ED25519 =
    "this browser cannot check Ed25519 signatures (WebCrypto has no Ed25519 here): " +
    "use a current browser, or `tanlian verify receipt`";

  const PROOF_STEPS = [
    ["1", "The proof is well formed · 格式"],
    ["2", "The validators are the trusted set, and the ones the header names · 验证者"],
    ["3", "The certificate: more than 2/3 of their power signed this header · 提交证书"],
    ["4", "The transaction hashes to its id, and its signatures verify · 交易签名"],
    ["5", "The transaction is in the log (RFC 9162 inclusion path) · 默克尔路径"],
  ];

  /**
   * A transaction's inclusion proof against a certified checkpoint: `proof` is
   * {transaction, height, log_index, log_size, path, checkpoint: {header, certificate},
   * validators} (api/reads.py transaction_proof).
   */
  async function verifyTransactionProof(proof, { txId, validatorsHash: trusted }) {
    const report = new Report(PROOF_STEPS);
    const signatures = await ed25519Available().catch(() => false);
    report.signatures = signatures;
    let header;
    let certificate;
    let validators;
    let envelope;
    report.ok =
      (await report.run(async () => {
        object("proof", proof, {
          transaction: any,
          height: (p, v) => integer(p, v, 1),
          log_index: (p, v) => integer(p, v),
          log_size: (p, v) => integer(p, v),
          path: (p, v) => array(p, v, 0, LOG_PATH_MAX, hash),
          checkpoint: (p, v) => object(p, v, { header: any, certificate: any }),
          validators: any,
        });
        header = object("proof.checkpoint.header", proof.checkpoint.header, HEADER);
        certificate = parseCertificate("proof.checkpoint.certificate", proof.checkpoint.certificate);
        validators = parseValidators("proof.validators", proof.validators);
        envelope = parseEnvelope(proof.transaction);
        if (proof.log_size !== header.log_size) fail("the proof's log size is not the header's");
        if (proof.height > header.height) fail("the transaction's block is after the checkpoint");
      })) &&
      (await report.run(async () => {
        const computed = await validatorsHash(validators);
        if (computed !== trusted) fail(`the validators hash to ${computed}, not the trusted ${trusted}`);
        if (header.validators_hash !== computed) fail("the header names another validator set");
      })) &&
      (await report.run(async () => {
        const power = await verifyCertificate(certificate, header, validators, signatures);
        const detail = `${power.signers} of ${validators.length} validators, power ${power.signed} of ${power.total}`;
        return signatures ? { detail } : { unchecked: true, detail: `${detail}; ${NO_ED25519}` };
      })) &&
      (await report.run(async () => {
        const id = await transactionId(envelope.tx);
        if (id !== txId) fail(`the transaction hashes to ${id}, not ${txId}`);
        if (envelope.tx.chain_id !== header.chain_id) fail("the transaction is for another chain");
        if (!signatures) return { unchecked: true, detail: NO_ED25519 };
        await verifyEnvelopeSignatures(envelope);
        return { detail: `${envelope.signatures.length} signature(s)` };
      })) &&
      (await report.run(async () => {
        await verifyInclusion({
          leaf: await leafHash(envelope),
          index: proof.log_index,
          size: header.log_size,
          path: proof.path,
          root: fromHex(header.log_root),
        });
        return { detail: `leaf ${proof.log_index} of ${header.log_size}, ${proof.path.length} hashes` };
      }));
    return report;
  }

  /** Parse `text` strictly, then verify; a parse failure fails step 1. */
  async function verifyReceiptText(textValue, options) {
    let receipt;
    try {
      receipt = parseStrict(textValue);
    } catch (error) {
      const report = new Report(RECEIPT_STEPS);
      await report.run(async () => {
        throw error;
      });
      report.ok = false;
      return report;
    }
    const report = await verifyReceipt(receipt, options);
    report.receipt = receipt;
    return report;
  }

  return {
    ProofError,
    parseStrict,
    canonical,
    sha256,
    toHex,
    fromHex,
    blockHash,
    validatorsHash,
    genesisHash,
    transactionId,
    ed25519Available,
    verifySignature,
    verifyInclusion,
    verifyStateProof,
    verifyReceipt,
    verifyReceiptText,
    verifyTransactionProof,
    SMALL_ORDER_Y,
    isPublicKey,
  };
})();
