//! Live updates for the queue: one watcher task polls the store's change stamp (newest scan
//! row and verdict seq, two index lookups) once a second and publishes it on a watch
//! channel; each open queue page holds a server-sent event stream that says "changed"
//! whenever the stamp moves, and the page then fetches its rows again. Polling the store,
//! rather than hooking the pipeline, also sees decisions made by another process (the
//! CLI) and costs the same with one operator or twenty. Streams end when the node stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::store::{self, Store, StoreError};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChangeStamp {
    pub last_scan: i64,
    pub last_verdict: i64,
}

const POLL: Duration = Duration::from_secs(1);

pub async fn watch(store: Store, tx: Arc<watch::Sender<ChangeStamp>>, token: CancellationToken) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        match store.read(store::queue::change_stamp).await {
            Ok((last_scan, last_verdict)) => {
                tx.send_if_modified(|s| {
                    let new = ChangeStamp {
                        last_scan,
                        last_verdict,
                    };
                    let moved = *s != new;
                    *s = new;
                    moved
                });
            }
            Err(StoreError::Closed) => break,
            Err(e) => tracing::warn!(error = %e, "queue change watcher cannot read the store"),
        }
    }
}

/// `GET /api/v1/events`: `event: changed` with the stamp, at once and on every change.
pub async fn sse(State(st): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = st.changes.clone();
    let token = st.shutdown.clone();
    let stream =
        futures_util::stream::unfold((rx, token, true), |(mut rx, token, first)| async move {
            if !first {
                tokio::select! {
                    _ = token.cancelled() => return None,
                    r = rx.changed() => if r.is_err() { return None },
                }
            }
            let stamp = *rx.borrow_and_update();
            let ev = Event::default()
                .event("changed")
                .data(serde_json::to_string(&stamp).unwrap_or_default());
            Some((Ok(ev), (rx, token, false)))
        });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
