//! `riac-node verify-chain`: checks a stream of verdicts the way the centre receives them
//! (one JSON object per line, in arrival order, at-least-once so duplicates included) against
//! a node's public key. It owns the centre-side reading of the chain contract and never
//! trusts a field it has not checked: each verdict's signature is verified over the
//! signing bytes of the object *as received* (minus `signature`; RFC 8785 for
//! `riac.verdict/2`, sorted compact for `/1`, `store::chain`), so an added, removed or
//! changed field fails even if the struct would parse the same. One stream may hold both
//! versions: the chain runs on across an upgrade (`scan::verdict`).
//!
//! Problems reported: malformed lines, unsigned verdicts, bad signatures, the same `seq` with
//! different content, a `verdict_id` under two seqs, reorders (a new seq arriving after a
//! higher one), gaps (seqs never received), and broken links (`prev_hash` not the hash of
//! the previous verdict). Exact duplicates are counted, not reported: the uplink resends
//! after a reconnect by design.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::scan::verdict;
use crate::store::chain::{sha256_hex, signing_bytes, Canonicalization, GENESIS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Malformed,
    Unsigned,
    BadSignature,
    Conflict,
    Reorder,
    Gap,
    BrokenLink,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// 1-based line of the input, when the problem is about one line.
    pub line: Option<usize>,
    pub node_id: Option<String>,
    pub seq: Option<u64>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    pub node_id: String,
    pub verdicts: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub lines: usize,
    pub verdicts: usize,
    pub duplicates: usize,
    pub nodes: Vec<NodeSummary>,
    pub problems: Vec<Problem>,
}

impl ChainReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The human-readable report printed by the CLI.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{} lines, {} distinct verdicts, {} exact duplicates\n",
            self.lines, self.verdicts, self.duplicates
        ));
        for n in &self.nodes {
            out.push_str(&format!(
                "node {}: {} verdicts, seq {}..{}\n",
                n.node_id,
                n.verdicts,
                n.first_seq.map_or("-".into(), |s| s.to_string()),
                n.last_seq.map_or("-".into(), |s| s.to_string())
            ));
        }
        if self.problems.is_empty() {
            out.push_str("OK: every signature valid, no gap, no reorder, every link intact\n");
        } else {
            out.push_str(&format!("{} PROBLEMS:\n", self.problems.len()));
            for p in &self.problems {
                let line = p.line.map_or(String::new(), |l| format!("line {l}: "));
                out.push_str(&format!(
                    "  [{}] {line}{}\n",
                    serde_json::to_value(p.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    p.message
                ));
            }
        }
        out
    }
}

struct Seen {
    hash: String,
    prev_hash: String,
    signature: Option<String>,
    verdict_id: String,
    line: usize,
}

#[derive(Default)]
struct NodeChain {
    by_seq: BTreeMap<u64, Seen>,
    ids: HashMap<String, u64>,
    max_seq: u64,
}

/// Checks every verdict read from `input` against `key`. `first_seq` is the seq the stream
/// is expected to start at (1 for a node's whole history). I/O errors end the check early
/// and are returned as errors; everything about the content is a [`Problem`].
pub fn verify_stream(
    input: impl BufRead,
    key: &VerifyingKey,
    first_seq: u64,
) -> std::io::Result<ChainReport> {
    let mut problems = Vec::new();
    let mut chains: BTreeMap<String, NodeChain> = BTreeMap::new();
    let (mut lines, mut duplicates) = (0usize, 0usize);
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let mut problem = |kind, node: Option<&str>, seq, message: String| {
            problems.push(Problem {
                kind,
                line: Some(lineno),
                node_id: node.map(str::to_string),
                seq,
                message,
            })
        };
        let value: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                problem(ProblemKind::Malformed, None, None, format!("not JSON: {e}"));
                continue;
            }
        };
        let Some(obj) = value.as_object() else {
            problem(
                ProblemKind::Malformed,
                None,
                None,
                "not a JSON object".into(),
            );
            continue;
        };
        let s = |k: &str| obj.get(k).and_then(|v| v.as_str());
        let canon = match verdict::canonicalization(obj) {
            Ok(c) => c,
            Err(why) => {
                problem(ProblemKind::Malformed, s("node_id"), None, why);
                continue;
            }
        };
        let (Some(node), Some(seq), Some(vid), Some(prev)) = (
            s("node_id"),
            obj.get("seq").and_then(|v| v.as_u64()),
            s("verdict_id"),
            s("prev_hash"),
        ) else {
            problem(
                ProblemKind::Malformed,
                s("node_id"),
                None,
                "missing node_id, seq, verdict_id or prev_hash".into(),
            );
            continue;
        };
        let signature = s("signature").map(str::to_string);
        let canonical = match signing_bytes(obj, canon) {
            Ok(b) => b,
            Err(e) => {
                problem(ProblemKind::Malformed, Some(node), Some(seq), e.to_string());
                continue;
            }
        };
        // A /1 verdict as published is canonical JSON: with its signature member cut out
        // of the text it is exactly the bytes that were signed and hashed, even where
        // serde_json would now write a number differently. Re-serialising is the fallback
        // for a line an intermediary reformatted. A /2 verdict's bytes are defined by
        // RFC 8785 over the parsed values, so its text does not matter.
        let raw = signature
            .as_deref()
            .filter(|_| canon == Canonicalization::SortedCompact)
            .and_then(|sig| strip_signature(line.trim(), sig))
            .map(String::into_bytes)
            .filter(|r| *r != canonical);
        let verified = signature.as_deref().and_then(|sig| {
            raw.iter()
                .chain(std::iter::once(&canonical))
                .find(|b| super::keys::verify_hex(key, b, sig).is_ok())
                .cloned()
        });
        let bytes = verified
            .clone()
            .or_else(|| raw.clone())
            .unwrap_or_else(|| canonical.clone());
        let hash = sha256_hex(&bytes);

        let chain = chains.entry(node.to_string()).or_default();
        if let Some(prev_seen) = chain.by_seq.get(&seq) {
            if prev_seen.hash == hash && prev_seen.signature == signature {
                duplicates += 1;
            } else {
                problem(
                    ProblemKind::Conflict,
                    Some(node),
                    Some(seq),
                    format!(
                        "seq {seq} received again with different content (first on line {}): one of them was altered",
                        prev_seen.line
                    ),
                );
            }
            continue;
        }
        match &signature {
            None => problem(
                ProblemKind::Unsigned,
                Some(node),
                Some(seq),
                format!("seq {seq} ({vid}) has no signature"),
            ),
            Some(_) if verified.is_some() => {}
            Some(sig) => {
                let why = super::keys::verify_hex(key, &bytes, sig)
                    .err()
                    .unwrap_or_default();
                problem(
                    ProblemKind::BadSignature,
                    Some(node),
                    Some(seq),
                    format!("seq {seq} ({vid}): {why}: the verdict was altered after signing, or not signed by this key"),
                );
            }
        }
        if let Some(other) = chain.ids.get(vid) {
            problem(
                ProblemKind::Conflict,
                Some(node),
                Some(seq),
                format!("verdict_id {vid} appears as seq {other} and as seq {seq}"),
            );
        }
        if seq < chain.max_seq {
            problem(
                ProblemKind::Reorder,
                Some(node),
                Some(seq),
                format!("seq {seq} arrived after seq {}", chain.max_seq),
            );
        }
        chain.max_seq = chain.max_seq.max(seq);
        chain.ids.insert(vid.to_string(), seq);
        chain.by_seq.insert(
            seq,
            Seen {
                hash,
                prev_hash: prev.to_string(),
                signature,
                verdict_id: vid.to_string(),
                line: lineno,
            },
        );
    }

    let mut nodes = Vec::new();
    let mut verdicts = 0;
    for (node, chain) in &chains {
        verdicts += chain.by_seq.len();
        let mut expected = first_seq;
        for (&seq, seen) in &chain.by_seq {
            if seq > expected {
                let missing = seq - expected;
                problems.push(Problem {
                    kind: ProblemKind::Gap,
                    line: None,
                    node_id: Some(node.clone()),
                    seq: Some(expected),
                    message: if missing == 1 {
                        format!("node {node}: seq {expected} was never received")
                    } else {
                        format!(
                            "node {node}: seq {expected}..{} were never received ({missing} verdicts)",
                            seq - 1
                        )
                    },
                });
            }
            expected = expected.max(seq + 1);
            let want_prev = if seq == 1 {
                Some(GENESIS.to_string())
            } else {
                chain.by_seq.get(&(seq - 1)).map(|p| p.hash.clone())
            };
            if let Some(want) = want_prev {
                if want != seen.prev_hash {
                    problems.push(Problem {
                        kind: ProblemKind::BrokenLink,
                        line: Some(seen.line),
                        node_id: Some(node.clone()),
                        seq: Some(seq),
                        message: format!(
                            "seq {seq} ({}): prev_hash is not the hash of seq {} as received: a verdict was altered or replaced",
                            seen.verdict_id,
                            seq.saturating_sub(1)
                        ),
                    });
                }
            }
        }
        nodes.push(NodeSummary {
            node_id: node.clone(),
            verdicts: chain.by_seq.len(),
            first_seq: chain.by_seq.keys().next().copied(),
            last_seq: chain.by_seq.keys().next_back().copied(),
        });
    }
    Ok(ChainReport {
        lines,
        verdicts,
        duplicates,
        nodes,
        problems,
    })
}

/// `line` without its top-level `"signature":"…"` member (and the comma that joined it),
/// when that member appears exactly once.
fn strip_signature(line: &str, sig: &str) -> Option<String> {
    let member = format!(
        "\"signature\":{}",
        serde_json::Value::String(sig.to_string())
    );
    let at = line.find(&member)?;
    if line[at + 1..].contains(&member) {
        return None;
    }
    let (before, after) = (&line[..at], &line[at + member.len()..]);
    Some(if let Some(b) = before.strip_suffix(',') {
        format!("{b}{after}")
    } else if let Some(a) = after.strip_prefix(',') {
        format!("{before}{a}")
    } else {
        format!("{before}{after}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::verdict::*;
    use crate::store::chain::{canonical_bytes, Signing};
    use crate::store::verdicts::VerdictSigner;
    use crate::uplink::keys::NodeKey;

    /// A signed chain of `n` verdicts as published: the first half `/1` (written before an
    /// upgrade), the rest `/2`, with a float the two forms write differently (`1.0`).
    fn chain(key: &NodeKey, n: u64) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let v2 = seq > n / 2;
                let mut v = Verdict {
                    schema: if v2 {
                        VERDICT_SCHEMA
                    } else {
                        VERDICT_SCHEMA_V1
                    }
                    .into(),
                    verdict_id: format!("v-{seq}"),
                    seq,
                    node_id: "N1".into(),
                    site_id: "KHI".into(),
                    scan_id: format!("S-{seq}"),
                    container_ids: vec!["MSCU1234566".into()],
                    declaration: VerdictDeclaration {
                        number: "D".into(),
                        regime: "import".into(),
                    },
                    decided_at: "2026-11-28T03:14:05.120Z".into(),
                    outcome: Outcome::Refer,
                    decided_by: "auto".into(),
                    reasons: vec!["r".into()],
                    manifest: ManifestResult {
                        status: ManifestStatus::Unknown,
                        declared_hs_codes: vec![],
                        top_matches: vec![ManifestMatch {
                            hs_code: "8703".into(),
                            score: 0.1 + seq as f64 / 7.0,
                            reference_id: None,
                        }],
                        reason: None,
                        confidence: Some(1.0),
                        heading_probability: None,
                        chapter_probability: None,
                        tiles: None,
                        empty: None,
                    },
                    transit: None,
                    model: None,
                    supersedes: None,
                    note: None,
                    prev_hash: prev.clone(),
                    signing: v2.then(Signing::rfc8785_ed25519),
                    signature: None,
                };
                let b = v.signing_bytes().unwrap();
                prev = sha256_hex(&b);
                v.signature = Some(key.sign(&b));
                let value = serde_json::to_value(&v).unwrap();
                let canon = verdict::canonicalization(value.as_object().unwrap()).unwrap();
                String::from_utf8(canonical_bytes(&value, canon).unwrap()).unwrap()
            })
            .collect()
    }

    #[test]
    fn the_chain_runs_on_from_v1_to_v2_and_each_version_signs_its_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate(&dir.path().join("k")).unwrap();
        let lines = chain(&key, 6);
        assert!(
            lines[2].contains(r#""schema":"riac.verdict/1""#)
                && lines[2].contains(r#""confidence":1.0"#)
        );
        assert!(
            lines[3].contains(r#""schema":"riac.verdict/2""#)
                && lines[3].contains(r#""confidence":1,"#)
        );
        let r = check(&lines, &key);
        assert!(r.ok(), "{}", r.render());
        // seq 4 (the first /2) links to seq 3 by the hash of seq 3's /1 signing bytes.
        let v3: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        let v4: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
        let h3 = sha256_hex(
            &signing_bytes(v3.as_object().unwrap(), Canonicalization::SortedCompact).unwrap(),
        );
        assert_eq!(v4["prev_hash"], h3.as_str());

        // A /2 verdict's text may be reformatted (floats as `1.0`, keys in any order):
        // its signing bytes are RFC 8785 over the values.
        let mut reformatted = lines.clone();
        reformatted[4] = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&lines[4]).unwrap(),
        )
        .unwrap()
        .replace("\n", "")
        .replace(r#""confidence": 1"#, r#""confidence": 1.0"#);
        assert!(reformatted[4].contains("1.0"));
        let r = check(&reformatted, &key);
        assert!(r.ok(), "{}", r.render());

        // A /2 verdict relabelled /1 (or stripped of its scheme) is refused as malformed,
        // never verified under the other scheme's bytes.
        for (from, to) in [
            (
                r#""schema":"riac.verdict/2""#,
                r#""schema":"riac.verdict/1""#,
            ),
            (r#""algorithm":"Ed25519""#, r#""algorithm":"Ed448""#),
        ] {
            let mut relabelled = lines.clone();
            relabelled[5] = relabelled[5].replace(from, to);
            let r = check(&relabelled, &key);
            assert_eq!(kinds(&r), vec![ProblemKind::Malformed], "{}", r.render());
        }
    }

    #[test]
    fn signature_member_is_cut_cleanly() {
        assert_eq!(
            strip_signature(r#"{"a":1,"signature":"ab","z":2}"#, "ab").unwrap(),
            r#"{"a":1,"z":2}"#
        );
        assert_eq!(
            strip_signature(r#"{"signature":"ab","z":2}"#, "ab").unwrap(),
            r#"{"z":2}"#
        );
        assert_eq!(
            strip_signature(r#"{"signature":"ab"}"#, "ab").unwrap(),
            "{}"
        );
        assert!(strip_signature(r#"{"signature":"ab","x":{"signature":"ab"}}"#, "ab").is_none());
    }

    fn check(lines: &[String], key: &NodeKey) -> ChainReport {
        verify_stream(lines.join("\n").as_bytes(), &key.verifying_key(), 1).unwrap()
    }

    fn kinds(r: &ChainReport) -> Vec<ProblemKind> {
        r.problems.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn a_clean_stream_with_duplicates_passes() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate(&dir.path().join("k")).unwrap();
        let mut lines = chain(&key, 10);
        // A reconnect resends 6..10.
        let again: Vec<String> = lines[5..].to_vec();
        lines.extend(again);
        let r = check(&lines, &key);
        assert!(r.ok(), "{}", r.render());
        assert_eq!((r.verdicts, r.duplicates), (10, 5));
    }

    #[test]
    fn tampering_gaps_reorders_and_foreign_keys_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate(&dir.path().join("k")).unwrap();
        let lines = chain(&key, 6);

        // An altered field: the signature no longer matches, and seq 4's link breaks.
        let mut altered = lines.clone();
        altered[2] = altered[2].replace("\"outcome\":\"refer\"", "\"outcome\":\"clear\"");
        let r = check(&altered, &key);
        assert_eq!(
            kinds(&r),
            vec![ProblemKind::BadSignature, ProblemKind::BrokenLink],
            "{}",
            r.render()
        );

        // An added field is an alteration too.
        let mut added = lines.clone();
        added[1] = added[1].replacen('{', "{\"extra\":1,", 1);
        assert!(kinds(&check(&added, &key)).contains(&ProblemKind::BadSignature));

        // A missing seq.
        let mut gap = lines.clone();
        gap.remove(3);
        let r = check(&gap, &key);
        assert_eq!(kinds(&r), vec![ProblemKind::Gap], "{}", r.render());
        assert!(r.problems[0].message.contains("seq 4 was never received"));

        // A reorder.
        let mut re = lines.clone();
        re.swap(1, 2);
        assert_eq!(kinds(&check(&re, &key)), vec![ProblemKind::Reorder]);

        // Signed by someone else.
        let other = NodeKey::generate(&dir.path().join("o")).unwrap();
        let r = check(&lines, &other);
        assert_eq!(r.problems.len(), 6);
        assert!(r
            .problems
            .iter()
            .all(|p| p.kind == ProblemKind::BadSignature));

        // The same seq twice with different content.
        let mut conflict = lines.clone();
        conflict.push(altered[2].clone());
        assert_eq!(kinds(&check(&conflict, &key)), vec![ProblemKind::Conflict]);

        // Unsigned and malformed lines.
        let mut unsigned = lines.clone();
        let mut v: serde_json::Value = serde_json::from_str(&unsigned[0]).unwrap();
        v.as_object_mut().unwrap().remove("signature");
        unsigned[0] = v.to_string();
        unsigned.push("{not json".into());
        assert_eq!(
            kinds(&check(&unsigned, &key)),
            vec![ProblemKind::Unsigned, ProblemKind::Malformed]
        );
    }
}
