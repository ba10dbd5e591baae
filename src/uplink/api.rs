//! `GET /api/v1/uplink`: the uplink's status for the operator UI (JSON schema in the
//! README). Read-only; outbox and entry-package figures are read fresh for each request.

use axum::extract::State;
use axum::Json;

use super::status::UplinkStatus;
use crate::web::{AppError, AppState};

pub async fn status(State(st): State<AppState>) -> Result<Json<UplinkStatus>, AppError> {
    Ok(Json(
        super::refresh_status(&st.uplink, &st.store, &st.metrics).await?,
    ))
}
