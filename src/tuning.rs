//! Centre-set tuning of the running checks: serves the uplink's `cmd/thresholds` (the
//! `[transit]` and `[matching]` thresholds, per site), `cmd/transit-calibration` (scanner-
//! pair calibrations pushed and read back; saved in the calibration file the daemon loads at
//! start, see `compare::calibrate`) and `cmd/library-add` (reference items for the manifest
//! check). Owns `<data_dir>/centre-thresholds.json`: the thresholds the centre set, applied
//! over the config file's at every start, so a restart does not undo them. It never speaks
//! MQTT (the uplink validates each command and sends the reply) and
//! never edits the config file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::compare::transit::Transit;
use crate::config::TransitConfig;
use crate::ingest::decode::{self, DecodeLimits, SourceFormat};
use crate::matching::cli::{reference_from_image, ReferenceSource};
use crate::matching::{check, library, CheckParams, Matcher};
use crate::store::chain::sha256_hex;
use crate::store::Store;
use crate::uplink::commands::{
    CalibrationUpdate, CentreRequest, CommandCall, CommandKind, LibraryAdd, ManifestThresholds,
    Thresholds, TransitThresholds,
};
use crate::uplink::UplinkHandle;

/// The file under the data dir that keeps the centre's thresholds.
pub const THRESHOLDS_FILE: &str = "centre-thresholds.json";

#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error("cannot read {path}: {source}; fix or remove the file (it holds the thresholds the centre set)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}; fix or remove the file (it holds the thresholds the centre set)")]
    Invalid { path: PathBuf, reason: String },
}

/// The node's checks as the centre may tune them.
pub struct Tuning {
    data_dir: PathBuf,
    limits: DecodeLimits,
    store: Store,
    transit: Transit,
    matcher: Option<Arc<Matcher>>,
    /// What the config file says; the centre's thresholds are applied over these.
    base_transit: TransitConfig,
    base_params: Option<CheckParams>,
    /// Everything the centre has set so far (later commands win key by key).
    saved: Mutex<Thresholds>,
}

impl Tuning {
    /// Loads the saved thresholds, if any, and applies them to the checks.
    pub fn load(
        data_dir: &Path,
        limits: DecodeLimits,
        store: Store,
        transit: Transit,
        matcher: Option<Arc<Matcher>>,
    ) -> Result<Tuning, TuningError> {
        let t = Tuning {
            data_dir: data_dir.to_path_buf(),
            limits,
            store,
            base_transit: transit.config(),
            base_params: matcher.as_ref().map(|m| m.params()),
            transit,
            matcher,
            saved: Mutex::new(Thresholds::default()),
        };
        let path = data_dir.join(THRESHOLDS_FILE);
        let saved = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice::<Thresholds>(&b).map_err(|e| TuningError::Invalid {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(t),
            Err(source) => return Err(TuningError::Read { path, source }),
        };
        let (tc, params) = t.resolve(&saved).map_err(|reason| TuningError::Invalid {
            path: path.clone(),
            reason,
        })?;
        t.apply(tc, params);
        tracing::warn!(path = %path.display(), "thresholds set by the centre are in force over the config file's");
        *t.saved.lock().expect("tuning lock") = saved;
        Ok(t)
    }

    /// Registers the command handlers with the uplink; they stop with `token`.
    pub fn spawn(
        self: Arc<Self>,
        uplink: &UplinkHandle,
        tracker: &TaskTracker,
        token: &CancellationToken,
    ) {
        for kind in [
            CommandKind::Thresholds,
            CommandKind::LibraryAdd,
            CommandKind::TransitCalibration,
        ] {
            let (tx, mut rx) = mpsc::channel::<CommandCall>(4);
            uplink.set_command_handler(kind, tx);
            let (me, token) = (self.clone(), token.clone());
            tracker.spawn(async move {
                loop {
                    let call = tokio::select! {
                        _ = token.cancelled() => break,
                        c = rx.recv() => match c { Some(c) => c, None => break },
                    };
                    let id = call.command_id.clone();
                    let r = match call.request {
                        CentreRequest::Thresholds(t) => me.thresholds(t).await,
                        CentreRequest::LibraryAdd(a) => me.library_add(a).await,
                        CentreRequest::TransitCalibration(u) => {
                            me.transit_calibration(&id, u).await
                        }
                    };
                    if let Err(e) = &r {
                        tracing::warn!(command_id = %id, error = %e, "centre command refused");
                    }
                    // The uplink may have given up waiting (timeout): nothing more to do.
                    let _ = call.reply.send(r);
                }
            });
        }
    }

    /// The settings that `t` (over the config file's) gives, checked as a whole.
    fn resolve(&self, t: &Thresholds) -> Result<(TransitConfig, Option<CheckParams>), String> {
        let mut tc = self.base_transit.clone();
        if let Some(x) = &t.transit {
            let th = &mut tc.thresholds;
            set(&mut th.refer_score, x.refer_score);
            set(&mut th.alert_score, x.alert_score);
            set(&mut th.alert_min_area_m2, x.alert_min_area_m2);
            set(&mut th.min_region_m2, x.min_region_m2);
            set(&mut th.min_alignment_quality, x.min_alignment_quality);
            if let Some(h) = x.unpaired_after_hours {
                tc.unpaired_after = std::time::Duration::from_secs_f64(h * 3600.0);
            }
            if th.alert_score < th.refer_score {
                return Err(format!(
                    "transit.alert_score {} is below transit.refer_score {}: an alert is a stronger change than a referral",
                    th.alert_score, th.refer_score
                ));
            }
        }
        let mut params = self.base_params;
        if let Some(m) = &t.manifest {
            let Some(p) = params.as_mut() else {
                return Err("manifest thresholds: no embedding model is loaded on this node ([matching] model is not set)".into());
            };
            set(&mut p.consistent_min, m.consistent_min);
            set(&mut p.inconsistent_max, m.inconsistent_max);
            set(&mut p.alert_confidence, m.alert_confidence);
            set(&mut p.empty_fill_max, m.empty_fill_max);
            set(&mut p.loaded_fill_min, m.loaded_fill_min);
            if p.inconsistent_max >= p.consistent_min {
                return Err(format!(
                    "manifest.inconsistent_max {} must be below manifest.consistent_min {}",
                    p.inconsistent_max, p.consistent_min
                ));
            }
            if p.empty_fill_max >= p.loaded_fill_min {
                return Err(format!(
                    "manifest.empty_fill_max {} must be below manifest.loaded_fill_min {}",
                    p.empty_fill_max, p.loaded_fill_min
                ));
            }
        }
        Ok((tc, params))
    }

    fn apply(&self, tc: TransitConfig, params: Option<CheckParams>) {
        self.transit.set_config(tc);
        if let (Some(m), Some(p)) = (&self.matcher, params) {
            m.set_params(p);
        }
    }

    /// `cmd/thresholds`: merges with what the centre set before, checks the whole, saves
    /// it durably, then applies it. Nothing changes when any part is refused.
    async fn thresholds(&self, t: Thresholds) -> Result<serde_json::Value, String> {
        let merged = merge(&self.saved.lock().expect("tuning lock"), &t);
        let (tc, params) = self.resolve(&merged)?;
        let bytes = serde_json::to_vec_pretty(&merged).map_err(|e| e.to_string())?;
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            library::write_file_durably(&dir, THRESHOLDS_FILE, &bytes)
        })
        .await
        .map_err(|_| "the node could not save the thresholds".to_string())?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot save {THRESHOLDS_FILE}");
            "the node could not save the thresholds (see its log); nothing was changed".to_string()
        })?;
        self.apply(tc.clone(), params);
        *self.saved.lock().expect("tuning lock") = merged;
        tracing::info!(?t, "thresholds set by the centre applied");
        let th = &tc.thresholds;
        Ok(serde_json::json!({
            "in_force": {
                "transit": {
                    "refer_score": th.refer_score,
                    "alert_score": th.alert_score,
                    "alert_min_area_m2": th.alert_min_area_m2,
                    "min_region_m2": th.min_region_m2,
                    "min_alignment_quality": th.min_alignment_quality,
                    "unpaired_after_hours": tc.unpaired_after.as_secs_f64() / 3600.0,
                },
                "manifest": params.map(|p| serde_json::json!({
                    "consistent_min": p.consistent_min,
                    "inconsistent_max": p.inconsistent_max,
                    "alert_confidence": p.alert_confidence,
                    "empty_fill_max": p.empty_fill_max,
                    "loaded_fill_min": p.loaded_fill_min,
                })),
            }
        }))
    }

    /// `cmd/transit-calibration`: drops and replaces scanner-pair calibrations (each pair
    /// pushed is marked `source: centre`), saves the whole set durably, then puts it in
    /// force and records it in the audit chain; answers with the set now in force. An
    /// update naming nothing only reads the set back. Nothing changes when a pair to drop
    /// has no calibration here or the file cannot be written.
    async fn transit_calibration(
        &self,
        command_id: &str,
        u: CalibrationUpdate,
    ) -> Result<serde_json::Value, String> {
        if u.set.is_empty() && u.remove.is_empty() {
            return Ok(serde_json::json!({ "in_force": self.transit.calibration().to_value() }));
        }
        let set_keys: Vec<String> = u.set.iter().map(|p| p.key()).collect();
        let ((), set) = self
            .transit
            .update_calibration(|set| {
                for k in &u.remove {
                    if !set.remove(k) {
                        let have: Vec<String> = set.pairs().map(|p| p.key()).collect();
                        return Err(format!(
                            "args.remove: this node has no calibration for scanner pair {k} (it has: {}); nothing was changed",
                            if have.is_empty() { "none".to_string() } else { have.join(", ") }
                        ));
                    }
                }
                for mut p in u.set {
                    p.source = "centre".into();
                    set.insert(p);
                }
                Ok(((), true))
            })
            .await
            .map_err(|e| e.to_string())?;
        let detail = serde_json::json!({"set": set_keys, "removed": u.remove});
        let subject = format!("command:{command_id}");
        if let Err(e) = self
            .store
            .write(move |t| {
                crate::store::audit::append(
                    t,
                    "centre",
                    "transit-calibration",
                    Some(&subject),
                    detail,
                )?;
                Ok(())
            })
            .await
        {
            tracing::error!(error = %e, "transit calibration applied but not audited");
        }
        tracing::info!(command_id, set = ?set_keys, removed = ?u.remove, "transit calibration set by the centre applied");
        Ok(serde_json::json!({ "in_force": set.to_value() }))
    }

    /// `cmd/library-add`: embeds each item and stores it as a reference (idempotent: an
    /// unchanged item is left as it is). Items that cannot be references are listed with
    /// the reason; the command fails only when none was stored.
    async fn library_add(&self, a: LibraryAdd) -> Result<serde_json::Value, String> {
        let Some(m) = self.matcher.clone() else {
            return Err("no embedding model is loaded on this node ([matching] model is not set): references cannot be embedded".into());
        };
        let model_sha = m.model().reference().sha256;
        let (mut added, mut replaced, mut unchanged, mut refused) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for item in a.items {
            let id = item.reference_id.clone();
            let sha = sha256_hex(&item.png);
            let existing = {
                let id = id.clone();
                self.store
                    .read(move |c| library::get(c, &id))
                    .await
                    .map_err(|e| e.to_string())?
            };
            if existing.as_ref().is_some_and(|x| {
                x.source_sha256 == sha && x.model_sha256.eq_ignore_ascii_case(&model_sha)
            }) {
                unchanged.push(id);
                continue;
            }
            let (m2, dir, limits) = (m.clone(), self.data_dir.clone(), self.limits);
            let made = tokio::task::spawn_blocking(move || {
                let d = decode::decode(&item.png, SourceFormat::Png, &limits)
                    .map_err(|e| e.to_string())?;
                let img = crate::imaging::gray16(d.width, d.height, d.pixels)
                    .map_err(|e| e.to_string())?;
                reference_from_image(
                    m2.model(),
                    &dir,
                    ReferenceSource {
                        reference_id: &item.reference_id,
                        hs_code: &item.hs_code,
                        description: item.description.clone(),
                        declares_empty: check::declares_empty(std::slice::from_ref(&item.hs_code)),
                        image: &img,
                        pixel_mm: item.pixel_mm,
                        cab_left: None,
                        source_sha256: &sha,
                    },
                )
            })
            .await
            .map_err(|_| "embedding failed on this node (see its log)".to_string())?;
            match made {
                Ok(r) => {
                    self.store
                        .write(move |t| library::upsert(t, &r))
                        .await
                        .map_err(|e| e.to_string())?;
                    if existing.is_some() {
                        replaced.push(id);
                    } else {
                        added.push(id);
                    }
                }
                Err(reason) => {
                    refused.push(serde_json::json!({"reference_id": id, "reason": reason}))
                }
            }
        }
        if added.is_empty() && replaced.is_empty() && unchanged.is_empty() {
            return Err(format!(
                "no item could be stored as a reference: {}",
                serde_json::Value::from(refused)
            ));
        }
        tracing::info!(
            added = added.len(),
            replaced = replaced.len(),
            refused = refused.len(),
            "reference items from the centre stored"
        );
        Ok(
            serde_json::json!({"added": added, "replaced": replaced, "unchanged": unchanged, "refused": refused}),
        )
    }
}

fn set(slot: &mut f64, v: Option<f64>) {
    if let Some(x) = v {
        *slot = x;
    }
}

fn or<T: Copy>(new: Option<T>, old: Option<T>) -> Option<T> {
    new.or(old)
}

/// `b` over `a`, key by key.
fn merge(a: &Thresholds, b: &Thresholds) -> Thresholds {
    let transit = match (&a.transit, &b.transit) {
        (None, None) => None,
        (x, y) => {
            let (x, y) = (x.clone().unwrap_or_default(), y.clone().unwrap_or_default());
            Some(TransitThresholds {
                refer_score: or(y.refer_score, x.refer_score),
                alert_score: or(y.alert_score, x.alert_score),
                alert_min_area_m2: or(y.alert_min_area_m2, x.alert_min_area_m2),
                min_region_m2: or(y.min_region_m2, x.min_region_m2),
                min_alignment_quality: or(y.min_alignment_quality, x.min_alignment_quality),
                unpaired_after_hours: or(y.unpaired_after_hours, x.unpaired_after_hours),
            })
        }
    };
    let manifest = match (&a.manifest, &b.manifest) {
        (None, None) => None,
        (x, y) => {
            let (x, y) = (x.clone().unwrap_or_default(), y.clone().unwrap_or_default());
            Some(ManifestThresholds {
                consistent_min: or(y.consistent_min, x.consistent_min),
                inconsistent_max: or(y.inconsistent_max, x.inconsistent_max),
                alert_confidence: or(y.alert_confidence, x.alert_confidence),
                empty_fill_max: or(y.empty_fill_max, x.empty_fill_max),
                loaded_fill_min: or(y.loaded_fill_min, x.loaded_fill_min),
            })
        }
    };
    Thresholds { transit, manifest }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_commands_win_key_by_key() {
        let a = Thresholds {
            transit: Some(TransitThresholds {
                refer_score: Some(0.3),
                min_region_m2: Some(0.1),
                ..Default::default()
            }),
            manifest: None,
        };
        let b = Thresholds {
            transit: Some(TransitThresholds {
                refer_score: Some(0.5),
                ..Default::default()
            }),
            manifest: Some(ManifestThresholds {
                consistent_min: Some(0.6),
                ..Default::default()
            }),
        };
        let m = merge(&a, &b);
        let t = m.transit.unwrap();
        assert_eq!((t.refer_score, t.min_region_m2), (Some(0.5), Some(0.1)));
        assert_eq!(m.manifest.unwrap().consistent_min, Some(0.6));
    }
}
