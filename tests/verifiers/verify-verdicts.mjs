#!/usr/bin/env node
// A centre's verdict verifier in JavaScript, as the README's "For the centre" describes it.
//
// Subscribes to riac/v1/+/+/verdicts (npm `mqtt`), verifies each verdict's Ed25519
// signature (Node's built-in crypto) over its signing bytes (RFC 8785 via npm
// `canonicalize` for riac.verdict/2; the received text minus its signature member for
// riac.verdict/1), deduplicates by verdict_id, and once --expect distinct verdicts arrived
// checks the hash chain: seq gap-free from 1, each prev_hash the SHA-256 of the previous
// verdict's signing bytes. Prints "ready" once subscribed and a JSON report at the end;
// exits 0 only if every verdict verified and the chain is whole.
import { createHash, createPublicKey, verify } from "node:crypto";
import { parseArgs } from "node:util";
import canonicalize from "canonicalize";
import mqtt from "mqtt";

const GENESIS = "0".repeat(64);
const { values: a } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    pubkey: { type: "string" },
    expect: { type: "string" },
    timeout: { type: "string", default: "120" },
    "client-id": { type: "string", default: "centre-js" },
  },
});
const expect = Number(a.expect);
// An Ed25519 public key as SPKI DER: a fixed 12-byte prefix, then the 32 raw bytes.
const key = createPublicKey({
  key: Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), Buffer.from(a.pubkey, "hex")]),
  format: "der",
  type: "spki",
});

function signingBytes(text, v) {
  if (v.schema === "riac.verdict/2") {
    const s = v.signing || {};
    if (s.canonicalization !== "RFC8785" || s.algorithm !== "Ed25519" || Object.keys(s).length !== 2) {
      throw new Error(`unknown signing scheme ${JSON.stringify(v.signing)}`);
    }
    const { signature, ...unsigned } = v;
    return Buffer.from(canonicalize(unsigned), "utf8");
  }
  if (v.schema === "riac.verdict/1") {
    // /1 bytes are the published text without its `"signature":"…"` member.
    const member = `"signature":${JSON.stringify(v.signature)}`;
    const parts = text.split(member);
    if (parts.length !== 2) throw new Error("signature member not found exactly once");
    let [before, after] = parts;
    if (before.endsWith(",")) before = before.slice(0, -1);
    else if (after.startsWith(",")) after = after.slice(1);
    return Buffer.from(before + after, "utf8");
  }
  throw new Error(`unknown schema ${JSON.stringify(v.schema)}`);
}

const byId = new Map(); // verdict_id -> {seq, hash, prev, schema}
const problems = [];
let duplicates = 0;

const client = mqtt.connect({
  host: a.host,
  port: Number(a.port),
  clientId: a["client-id"],
  clean: false,
  keepalive: 10,
  reconnectPeriod: 200,
});
let finished = false;
const timer = setTimeout(() => {
  problems.push(`only ${byId.size} of ${expect} verdicts within ${a.timeout} s`);
  finish();
}, Number(a.timeout) * 1000);

client.on("connect", () => {
  client.subscribe("riac/v1/+/+/verdicts", { qos: 1 }, (err) => {
    if (err) {
      problems.push(`subscribe: ${err.message}`);
      finish();
    } else {
      console.log("ready");
    }
  });
});
client.on("error", (e) => problems.push(`mqtt: ${e.message}`));
client.on("message", (topic, payload) => {
  const text = payload.toString("utf8");
  let v, data;
  try {
    v = JSON.parse(text);
    data = signingBytes(text, v);
    if (!verify(null, data, key, Buffer.from(v.signature, "hex"))) throw new Error("bad signature");
  } catch (e) {
    problems.push(`${topic}: ${e.message}: ${text.slice(0, 200)}`);
    return;
  }
  const entry = { seq: v.seq, hash: createHash("sha256").update(data).digest("hex"), prev: v.prev_hash, schema: v.schema };
  const old = byId.get(v.verdict_id);
  if (old) {
    duplicates++;
    if (JSON.stringify(old) !== JSON.stringify(entry)) {
      problems.push(`verdict_id ${v.verdict_id} arrived twice with different content`);
    }
    return;
  }
  byId.set(v.verdict_id, entry);
  if (byId.size >= expect) finish();
});

function finish() {
  if (finished) return;
  finished = true;
  clearTimeout(timer);
  const bySeq = new Map();
  for (const e of byId.values()) {
    if (bySeq.has(e.seq)) problems.push(`seq ${e.seq} under two verdict_ids`);
    bySeq.set(e.seq, e);
  }
  const seqs = [...bySeq.keys()].sort((x, y) => x - y);
  for (const s of seqs) {
    const want = s === 1 ? GENESIS : bySeq.get(s - 1)?.hash;
    if (want === undefined) problems.push(`gap: seq ${s - 1} never received`);
    else if (bySeq.get(s).prev !== want) problems.push(`seq ${s}: prev_hash is not the hash of seq ${s - 1}`);
  }
  const report = {
    verifier: "javascript",
    verified: byId.size,
    duplicates,
    schemas: [...new Set([...byId.values()].map((e) => e.schema))].sort(),
    first_seq: seqs[0] ?? null,
    last_seq: seqs[seqs.length - 1] ?? null,
    problems,
  };
  console.log(JSON.stringify(report));
  process.exitCode = problems.length ? 1 : 0;
  // Exit with that code once the connection is closed (or at once if closing hangs).
  client.end(true, () => process.exit());
  setTimeout(() => process.exit(), 2000).unref();
}
