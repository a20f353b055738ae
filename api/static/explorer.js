/*
 * The explorer's page behaviour: the "verify" buttons and the receipt form. Everything it
 * checks, it checks with verify.js in this browser; it sends nothing anywhere.
 */
"use strict";

(() => {
  const script = document.currentScript;
  const genesisHash = script.dataset.genesisHash;
  const chainId = script.dataset.chainId;
  const HEX64 = /^[0-9a-f]{64}$/;
  const MARKS = {
    true: ["✔", "verified", "已核验 Verified"],
    false: ["✘", "failed", "核验失败 Not verified"],
    null: ["⚠", "partial", "部分核验 Partly verified"],
  };
  const ICONS = { passed: "✔", failed: "✘", "not checked": "⚠", "not reached": "·" };

  function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    for (const child of children) node.append(child);
    return node;
  }

  /** Show a report: one clear mark, then each numbered step with what it found. */
  function show(container, report, subject) {
    const verdict = report.verified;
    const [mark, state, words] = MARKS[String(verdict)];
    container.replaceChildren();
    container.dataset.verified = state;
    const headline = element("p", { class: `verdict verdict-${state}` }, element("span", { class: "mark", "aria-hidden": "true" }, mark), ` ${words}: ${subject}`);
    container.append(headline);
    if (verdict === null && report.signatures === false) {
      container.append(element("p", { class: "hint" }, "这个浏览器的 WebCrypto 不支持 Ed25519，签名未核验。 This browser's WebCrypto has no Ed25519: the signatures were not checked. Use a current browser, or `tanlian verify receipt`."));
    }
    const list = element("ol", { class: "steps" });
    for (const step of report.steps) {
      const item = element("li", { class: `step step-${step.status.replace(" ", "-")}` },
        element("span", { class: "mark", "aria-hidden": "true" }, ICONS[step.status]),
        ` ${step.title} — ${step.status}`);
      if (step.detail) item.append(element("br"), element("span", { class: "detail" }, step.detail));
      list.append(item);
    }
    container.append(list);
    window.tanlianLastReport = report;
  }

  function trusted(section) {
    const value = section.querySelector("#trusted").value.trim().toLowerCase();
    if (!HEX64.test(value)) throw new TanlianVerify.ProofError("the trusted validator set hash must be 64 hex characters");
    return value;
  }

  function failure(container, message) {
    show(container, { verified: false, steps: [{ title: message, status: "failed", detail: "" }] }, "");
  }

  async function verifyTransaction(section) {
    const result = section.querySelector(".result");
    try {
      const proof = TanlianVerify.parseStrict(document.getElementById("proof-data").textContent);
      const report = await TanlianVerify.verifyTransactionProof(proof, { txId: script.dataset.txId, validatorsHash: trusted(section) });
      show(result, report, `transaction ${script.dataset.txId.slice(0, 16)}…`);
    } catch (error) {
      failure(result, error.message);
    }
  }

  async function verifyCertificate(section) {
    const result = section.querySelector(".result");
    const seal = document.querySelector("[data-seal]");
    try {
      const text = document.getElementById("receipt-data").textContent;
      const report = await TanlianVerify.verifyReceiptText(text, { validatorsHash: trusted(section), genesisHash, chainId });
      show(result, report, "this certificate's receipt");
      const [mark, state, words] = MARKS[String(report.verified)];
      seal.textContent = `${mark} ${words}`;
      seal.dataset.verified = state;
    } catch (error) {
      failure(result, error.message);
      seal.textContent = `✘ ${MARKS.false[2]}`;
      seal.dataset.verified = "failed";
    }
  }

  async function verifyUpload(form) {
    const result = form.querySelector(".result");
    try {
      const file = form.querySelector("#receipt-file").files[0];
      let text = form.querySelector("#receipt-text").value;
      if (file !== undefined) {
        if (file.size > 4 * 1024 * 1024) throw new TanlianVerify.ProofError("the file is over 4 MiB: not a receipt");
        // fatal: invalid UTF-8 is refused; ignoreBOM: a byte order mark stays, and is refused
        text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(await file.arrayBuffer());
      }
      if (!text.trim()) throw new TanlianVerify.ProofError("choose a receipt file or paste its JSON");
      const sameChain = form.querySelector("#same-chain").checked;
      const report = await TanlianVerify.verifyReceiptText(text, {
        validatorsHash: trusted(form),
        genesisHash: sameChain ? genesisHash : null,
        chainId: sameChain ? chainId : null,
      });
      const record = report.receipt && report.receipt.retirement;
      const subject = record && typeof record === "object" ? `retirement ${String(record.retirement_id).slice(0, 16)}…` : "the receipt";
      show(result, report, subject);
    } catch (error) {
      failure(result, error.message);
    }
  }

  for (const section of document.querySelectorAll("[data-verify]")) {
    const kind = section.dataset.verify;
    if (kind === "transaction") {
      section.querySelector(".verify-button").addEventListener("click", () => verifyTransaction(section));
    } else if (kind === "receipt") {
      section.querySelector(".verify-button").addEventListener("click", () => verifyCertificate(section));
      verifyCertificate(section);
    } else if (kind === "upload") {
      section.addEventListener("submit", (event) => {
        event.preventDefault();
        verifyUpload(section);
      });
    }
  }
  for (const button of document.querySelectorAll(".print-button")) button.addEventListener("click", () => window.print());
})();
