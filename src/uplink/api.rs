//! `GET /api/v1/uplink`: the uplink's status for the operator UI (JSON schema in the
//! README). Read-only; outbox figures are read fresh from the store for each request.

use axum::extract::State;
use axum::Json;

use super::status::UplinkStatus;
use crate::store::outbox;
use crate::web::{AppError, AppState};

pub async fn status(State(st): State<AppState>) -> Result<Json<UplinkStatus>, AppError> {
    let stats = st.store.read(outbox::stats).await?;
    let mut s = st.uplink.status();
    s.outbox.quota_bytes = st.cfg.uplink.outbox_quota_bytes;
    s.set_outbox(&stats, st.cfg.uplink.outbox_warn_fraction);
    Ok(Json(s))
}
