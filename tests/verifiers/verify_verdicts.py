#!/usr/bin/env python3
"""A centre's verdict verifier in Python, as the README's "For the centre" describes it.

Subscribes to riac/v1/+/+/verdicts on an MQTT broker (paho-mqtt), verifies each verdict's
Ed25519 signature (`cryptography`) over its signing bytes (RFC 8785 via `rfc8785` for
riac.verdict/2; the received text minus its signature member for riac.verdict/1),
deduplicates by verdict_id, and once `--expect` distinct verdicts arrived checks the hash
chain: seq gap-free from 1, each prev_hash the SHA-256 of the previous verdict's signing
bytes. Prints "ready" once subscribed and a JSON report at the end; exits 0 only if every
verdict verified and the chain is whole. The Rust tests (tests/uplink.rs) run it against a
real node and mosquitto.
"""
import argparse
import hashlib
import json
import sys
import threading

import paho.mqtt.client as mqtt
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS = "0" * 64
SIGNING_V2 = {"canonicalization": "RFC8785", "algorithm": "Ed25519"}


def signing_bytes(text: str, verdict: dict) -> bytes:
    """The bytes the node signed and hashed, by the verdict's own schema version."""
    schema = verdict.get("schema")
    if schema == "riac.verdict/2":
        if verdict.get("signing") != SIGNING_V2:
            raise ValueError(f"unknown signing scheme {verdict.get('signing')!r}")
        unsigned = {k: v for k, v in verdict.items() if k != "signature"}
        return rfc8785.dumps(unsigned)
    if schema == "riac.verdict/1":
        # /1 bytes are the published text without its `"signature":"…"` member.
        member = '"signature":' + json.dumps(verdict["signature"])
        if text.count(member) != 1:
            raise ValueError("signature member not found exactly once")
        before, after = text.split(member)
        if before.endswith(","):
            before = before[:-1]
        elif after.startswith(","):
            after = after[1:]
        return (before + after).encode("utf-8")
    raise ValueError(f"unknown schema {schema!r}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pubkey", required=True, help="the node's Ed25519 public key, 64 hex")
    ap.add_argument("--expect", type=int, required=True, help="distinct verdicts to wait for")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--client-id", default="centre-python")
    a = ap.parse_args()

    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(a.pubkey))
    by_id: dict = {}  # verdict_id -> (seq, hash, prev_hash, schema, text)
    problems: list = []
    duplicates = 0
    done = threading.Event()
    lock = threading.Lock()

    def on_connect(client, _userdata, _flags, reason, _props):
        if reason.is_failure:
            problems.append(f"connect refused: {reason}")
            done.set()
            return
        client.subscribe("riac/v1/+/+/verdicts", qos=1)

    def on_subscribe(_client, _userdata, _mid, _codes, _props):
        print("ready", flush=True)

    def on_message(_client, _userdata, msg):
        nonlocal duplicates
        text = msg.payload.decode("utf-8")
        with lock:
            try:
                v = json.loads(text)
                data = signing_bytes(text, v)
                key.verify(bytes.fromhex(v["signature"]), data)
            except (ValueError, KeyError, TypeError, InvalidSignature) as e:
                problems.append(f"{msg.topic}: {type(e).__name__}: {e}: {text[:200]}")
                return
            entry = (v["seq"], hashlib.sha256(data).hexdigest(), v["prev_hash"], v["schema"])
            old = by_id.get(v["verdict_id"])
            if old is not None:
                duplicates += 1
                if old != entry:
                    problems.append(f"verdict_id {v['verdict_id']} arrived twice with different content")
                return
            by_id[v["verdict_id"]] = entry
            if len(by_id) >= a.expect:
                done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=a.client_id, clean_session=False)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(a.host, a.port, keepalive=10)
    c.loop_start()
    if not done.wait(a.timeout):
        problems.append(f"only {len(by_id)} of {a.expect} verdicts within {a.timeout} s")
    c.loop_stop()
    c.disconnect()

    with lock:
        by_seq = {}
        for vid, (seq, h, prev, _schema) in by_id.items():
            if seq in by_seq:
                problems.append(f"seq {seq} under two verdict_ids")
            by_seq[seq] = (h, prev)
        for seq in sorted(by_seq):
            want = GENESIS if seq == 1 else by_seq.get(seq - 1, (None,))[0]
            if want is None:
                problems.append(f"gap: seq {seq - 1} never received")
            elif by_seq[seq][1] != want:
                problems.append(f"seq {seq}: prev_hash is not the hash of seq {seq - 1}")
        schemas = sorted({s for (_, _, _, s) in by_id.values()})
        report = {
            "verifier": "python",
            "verified": len(by_id),
            "duplicates": duplicates,
            "schemas": schemas,
            "first_seq": min(by_seq, default=None),
            "last_seq": max(by_seq, default=None),
            "problems": problems,
        }
    print(json.dumps(report), flush=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
