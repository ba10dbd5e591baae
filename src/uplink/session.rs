//! The broker connection and the outbox drain. Two tasks share one rumqttc client:
//!
//! - [`drive`] owns the `EventLoop` and does nothing but poll it and forward what it yields.
//!   A poll future is never dropped half-way (that can lose a packet rumqttc has already
//!   counted as sent). On a connection error it tells the session, waits until the session
//!   has forgotten everything in flight, then drops whatever rumqttc still holds for resend
//!   (`clean` + `pending.clear()`) and reconnects after a jittered backoff. rumqttc's own
//!   resend is not used because its packet ids could then no longer be mapped to rows.
//! - [`Session::run`] owns the drain. It publishes outbox rows in id order, at most
//!   `uplink.inflight` messages and `uplink.inflight_mb` bytes unacknowledged. rumqttc
//!   handles requests strictly in order and reports each `Outgoing::Publish(pkid)` as it
//!   writes one, so the k-th publish submitted is the k-th such event: that is how a packet
//!   id is mapped to its row. A row is deleted only when `Incoming::PubAck(pkid)` arrives.
//!   After a reconnect (or a restart) the drain starts again from the oldest row still
//!   there: at-least-once, in order; the centre deduplicates by `verdict_id`.
//!
//! Packet ids: rumqttc cycles them through `1..=PKID_SPACE`; the window is far smaller, so an
//! id is never reused while its message is in flight.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing,
    Publish, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::BrokerConfig;
use super::status::{offline_message, ConnState, QuotaAlert};
use super::UplinkHandle;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{self, Store};

/// Packet ids rumqttc may use (its `inflight` setting, which also sizes its tables).
const PKID_SPACE: u16 = 1024;

/// Everything the uplink's tasks share.
pub(super) struct Context {
    pub cfg: Arc<Config>,
    pub broker: BrokerConfig,
    pub store: Store,
    pub metrics: Metrics,
    pub handle: UplinkHandle,
}

impl Context {
    /// `riac/v1/{site}/{node}/{leaf}`
    pub fn node_topic(&self, leaf: &str) -> String {
        format!("riac/v1/{}/{}/{leaf}", self.cfg.site_id, self.cfg.node_id)
    }
    /// Where entry packages for `exit_site` are published.
    pub fn entries_topic(exit_site: &str) -> String {
        format!("riac/v1/transit/{exit_site}/entries")
    }
}

enum Net {
    Event(Event),
    /// The connection failed or broke; `ack` is answered once the session has reset.
    Down {
        error: String,
        ack: oneshot::Sender<()>,
    },
}

/// An incoming message handed to the worker; its ack is sent only on the same connection.
pub(super) struct Received {
    epoch: u64,
    pub publish: Publish,
}

pub(super) fn spawn(
    ctx: Arc<Context>,
    tls: Option<Arc<rustls::ClientConfig>>,
    credentials: Option<(String, String)>,
    token: CancellationToken,
    tracker: &TaskTracker,
) {
    let b = &ctx.broker;
    let max_packet = ctx.cfg.uplink.max_message_bytes + 64 * 1024;
    let mut opts = MqttOptions::new(b.client_id.clone(), b.host.clone(), b.port);
    opts.set_keep_alive(b.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(PKID_SPACE)
        .set_max_packet_size(max_packet, max_packet)
        .set_request_channel_capacity(b.inflight + 256)
        .set_last_will(LastWill::new(
            ctx.node_topic("status"),
            offline_message(&ctx.cfg.node_id, &ctx.cfg.site_id, "connection lost"),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some((u, p)) = credentials {
        opts.set_credentials(u, p);
    }
    if let Some(tls) = tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, b.inflight + 256);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_connection_timeout(b.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(net);

    let (net_tx, net_rx) = mpsc::channel(1024);
    let (in_tx, in_rx) = mpsc::channel(256);
    let (ack_tx, ack_rx) = mpsc::channel(256);
    let stop = CancellationToken::new();
    tracker.spawn(drive(
        eventloop,
        net_tx,
        stop.clone(),
        b.reconnect_min,
        b.reconnect_max,
    ));
    let session = Session {
        ctx: ctx.clone(),
        client,
        window: b.inflight,
        window_bytes: b.inflight_bytes,
        max_packet,
        connected: false,
        epoch: 0,
        failures: 0,
        fifo: VecDeque::new(),
        flights: HashMap::new(),
        inflight_bytes: 0,
        cursor: 0,
        more: true,
        acked: Vec::new(),
        skipped: HashSet::new(),
        last_status: Instant::now(),
        last_alert: QuotaAlert::Ok,
        goodbye_acked: false,
        subacks_due: 0,
        published: 0,
        acknowledged: 0,
    };
    tracker.spawn(session.run(net_rx, in_tx, ack_rx, token.clone(), stop));
    tracker.spawn(incoming(ctx, in_rx, ack_tx, token));
}

/// Jittered exponential backoff: between half and all of min * 2^(attempt-1), capped.
fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    use rand::Rng;
    let exp = min.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(max);
    let half = cap / 2;
    half + Duration::from_secs_f64(rand::rng().random::<f64>() * half.as_secs_f64())
}

async fn drive(
    mut el: EventLoop,
    tx: mpsc::Sender<Net>,
    stop: CancellationToken,
    min: Duration,
    max: Duration,
) {
    let mut attempt = 0u32;
    loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => break,
            r = el.poll() => r,
        };
        match polled {
            Ok(ev) => {
                if matches!(ev, Event::Incoming(Incoming::ConnAck(_))) {
                    attempt = 0;
                }
                if tx.send(Net::Event(ev)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                let (ack_tx, ack_rx) = oneshot::channel();
                if tx
                    .send(Net::Down {
                        error: describe(&e),
                        ack: ack_tx,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ack_rx => {}
                }
                // The session has reset: drop every request rumqttc still holds (they
                // were submitted on the broken connection) so that the first publish
                // event after the next CONNACK is the session's first new publish.
                el.clean();
                el.pending.clear();
                attempt = attempt.saturating_add(1);
                let wait = backoff(attempt, min, max);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "the broker refused the connection ({code:?}); check uplink.username, uplink.password_file and the client certificate"
        ),
        ConnectionError::Tls(t) => format!("TLS: {t}"),
        ConnectionError::Io(io) => format!("network: {io}"),
        // The broker redelivers such a message on every connection: only the broker's own
        // size limit, or a higher uplink.max_message_mb, gets past it.
        other if other.to_string().contains("payload size limit exceeded") => format!(
            "{other}: the broker sent a message larger than uplink.max_message_mb; set the broker's message size limit (mosquitto: message_size_limit) to at most that, or raise uplink.max_message_mb"
        ),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Row(i64),
    Status,
    Goodbye,
}

#[derive(Debug, Clone, Copy)]
struct Flight {
    what: What,
    bytes: usize,
}

struct Session {
    ctx: Arc<Context>,
    client: AsyncClient,
    window: usize,
    window_bytes: usize,
    max_packet: usize,
    connected: bool,
    /// Counts connections; an incoming message is acked only on the one it came on.
    epoch: u64,
    failures: u64,
    /// Submitted to rumqttc, packet id not known yet (in submission order).
    fifo: VecDeque<Flight>,
    /// Written to the network, waiting for PUBACK.
    flights: HashMap<u16, Flight>,
    inflight_bytes: usize,
    /// The highest outbox id submitted on this connection.
    cursor: i64,
    /// Rows may be waiting past the cursor.
    more: bool,
    /// Acknowledged rows not yet deleted.
    acked: Vec<i64>,
    /// Rows too big to ever send (reported once each, kept in the outbox).
    skipped: HashSet<i64>,
    last_status: Instant,
    last_alert: QuotaAlert,
    goodbye_acked: bool,
    /// SUBACKs still expected on this connection.
    subacks_due: usize,
    published: u64,
    acknowledged: u64,
}

impl Session {
    async fn run(
        mut self,
        mut net_rx: mpsc::Receiver<Net>,
        in_tx: mpsc::Sender<Received>,
        mut ack_rx: mpsc::Receiver<Received>,
        token: CancellationToken,
        stop: CancellationToken,
    ) {
        let ctx = self.ctx.clone();
        // New rows are looked for at least this often (the pipeline does not notify).
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                m = net_rx.recv() => match m {
                    Some(m) => self.on_net(m, &in_tx).await,
                    None => break,
                },
                Some(r) = ack_rx.recv() => self.ack_incoming(&r),
                _ = ctx.handle.inner.outbox_changed.notified() => self.more = true,
                _ = tick.tick() => {
                    self.more = true;
                    self.maybe_status();
                }
            }
            // Take what is already buffered so that PUBACKs are deleted in batches.
            while let Ok(m) = net_rx.try_recv() {
                self.on_net(m, &in_tx).await;
            }
            self.flush_acked().await;
            self.fill().await;
            self.show();
        }
        self.goodbye(&mut net_rx, &in_tx).await;
        stop.cancel();
    }

    async fn on_net(&mut self, m: Net, in_tx: &mpsc::Sender<Received>) {
        match m {
            Net::Down { error, ack } => {
                // Acknowledged rows go first, so that nothing acknowledged is resent.
                self.flush_acked().await;
                self.failures += 1;
                if self.connected || self.failures == 1 || self.failures % 20 == 0 {
                    tracing::warn!(broker = %self.ctx.broker.url, error = %error, failures = self.failures, "uplink connection lost or refused; retrying with backoff");
                } else {
                    tracing::debug!(broker = %self.ctx.broker.url, error = %error, "uplink connection attempt failed");
                }
                self.connected = false;
                self.fifo.clear();
                self.flights.clear();
                self.inflight_bytes = 0;
                let m = self.ctx.metrics.uplink();
                m.connected.set(0);
                m.reconnects.inc();
                self.subacks_due = 0;
                self.ctx.handle.update_status(|s| {
                    s.set_state(ConnState::Disconnected);
                    s.subscribed = false;
                    s.last_error = Some(error);
                    s.reconnects += 1;
                    s.inflight = 0;
                });
                let _ = ack.send(());
            }
            Net::Event(Event::Incoming(Incoming::ConnAck(c))) => {
                self.connected = true;
                self.failures = 0;
                self.epoch += 1;
                self.cursor = 0;
                self.more = true;
                tracing::info!(broker = %self.ctx.broker.url, session_present = c.session_present, "uplink connected");
                self.ctx.metrics.uplink().connected.set(1);
                self.ctx.handle.update_status(|s| {
                    s.set_state(ConnState::Connected);
                    s.last_connected_at = Some(store::now_rfc3339());
                });
                let entries = Context::entries_topic(&self.ctx.cfg.site_id);
                let commands = self.ctx.node_topic("cmd/+");
                self.subacks_due = 0;
                for t in [entries, commands] {
                    match self.client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                        Ok(()) => self.subacks_due += 1,
                        Err(e) => tracing::error!(topic = %t, error = %e, "cannot subscribe"),
                    }
                }
                self.publish_status(What::Status);
            }
            Net::Event(Event::Outgoing(Outgoing::Publish(pkid))) => match self.fifo.pop_front() {
                Some(f) => {
                    if let Some(old) = self.flights.insert(pkid, f) {
                        tracing::error!(pkid, ?old, "packet id reused while in flight; the older message will be resent after the next reconnect");
                    }
                }
                None => tracing::warn!(pkid, "publish event with nothing submitted"),
            },
            Net::Event(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                // Cannot happen with a window below PKID_SPACE; if it does, start over
                // rather than guess which row the id belongs to.
                tracing::error!(pkid, "packet id collision in the MQTT client; reconnecting");
                let _ = self.client.try_disconnect();
            }
            Net::Event(Event::Incoming(Incoming::PubAck(a))) => {
                match self.flights.remove(&a.pkid) {
                    Some(f) => {
                        self.inflight_bytes = self.inflight_bytes.saturating_sub(f.bytes);
                        let now = store::now_rfc3339();
                        if let Some(t) = super::status::unix_secs(&now) {
                            self.ctx
                                .metrics
                                .uplink()
                                .last_puback_timestamp_seconds
                                .set(t);
                        }
                        self.ctx
                            .handle
                            .update_status(|s| s.last_puback_at = Some(now));
                        match f.what {
                            What::Row(id) => self.acked.push(id),
                            What::Status => {}
                            What::Goodbye => self.goodbye_acked = true,
                        }
                    }
                    None => tracing::debug!(pkid = a.pkid, "PUBACK for a packet id not in flight"),
                }
            }
            Net::Event(Event::Incoming(Incoming::SubAck(a))) => {
                if a.return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    // Kept unsubscribed (and shown so): the broker's ACL must allow it.
                    tracing::error!("the broker refused a subscription (entry packages or commands); check its ACL for this node");
                    self.ctx.handle.update_status(|s| {
                        s.last_error =
                            Some("the broker refused a subscription; check its ACL".into())
                    });
                    return;
                }
                self.subacks_due = self.subacks_due.saturating_sub(1);
                if self.subacks_due == 0 {
                    self.ctx.handle.update_status(|s| s.subscribed = true);
                }
            }
            Net::Event(Event::Incoming(Incoming::Publish(p))) => {
                let r = Received {
                    epoch: self.epoch,
                    publish: p,
                };
                if let Err(e) = in_tx.try_send(r) {
                    let topic = match &e {
                        mpsc::error::TrySendError::Full(r)
                        | mpsc::error::TrySendError::Closed(r) => r.publish.topic.clone(),
                    };
                    tracing::warn!(%topic, "incoming message not taken (worker busy or stopping); the broker redelivers it after the next reconnect");
                }
            }
            Net::Event(_) => {}
        }
    }

    fn ack_incoming(&self, r: &Received) {
        if self.connected && r.epoch == self.epoch {
            if let Err(e) = self.client.try_ack(&r.publish) {
                tracing::warn!(error = %e, "cannot acknowledge an incoming message; it will be redelivered");
            }
        }
    }

    async fn flush_acked(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.acked);
        let n = ids.len();
        match self
            .ctx
            .store
            .write(move |t| store::outbox::delete_acked(t, &ids))
            .await
        {
            Ok(_) => {
                self.acknowledged += n as u64;
                self.ctx.metrics.uplink().acknowledged.inc_by(n as u64);
            }
            Err(e) => {
                tracing::error!(error = %e, rows = n, "cannot delete acknowledged outbox rows; they will be sent again")
            }
        }
    }

    async fn fill(&mut self) {
        while self.connected && self.more {
            let count = self.fifo.len() + self.flights.len();
            if count >= self.window || self.inflight_bytes >= self.window_bytes {
                return;
            }
            let (after, rows, bytes) = (
                self.cursor,
                self.window - count,
                self.window_bytes - self.inflight_bytes,
            );
            let batch = match self
                .ctx
                .store
                .read(move |c| store::outbox::next_after(c, after, rows, bytes))
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox; retrying");
                    return;
                }
            };
            if batch.is_empty() {
                self.more = false;
                return;
            }
            for row in batch {
                let bytes = row.payload.len() + row.topic.len() + 8;
                if bytes > self.max_packet || row.topic.is_empty() || row.topic.contains(['+', '#'])
                {
                    if self.skipped.insert(row.id) {
                        let why = format!(
                            "outbox row {} ({} for {:?}, {} bytes on {:?}) cannot be sent: larger than uplink.max_message_mb or a bad topic; it stays in the outbox",
                            row.id,
                            row.kind,
                            row.reference,
                            row.payload.len(),
                            row.topic
                        );
                        tracing::error!("{why}");
                        self.ctx.handle.update_status(|s| s.last_error = Some(why));
                    }
                    self.cursor = row.id;
                    continue;
                }
                match self
                    .client
                    .try_publish(row.topic, QoS::AtLeastOnce, false, row.payload)
                {
                    Ok(()) => {
                        self.fifo.push_back(Flight {
                            what: What::Row(row.id),
                            bytes,
                        });
                        self.inflight_bytes += bytes;
                        self.cursor = row.id;
                        self.published += 1;
                        self.ctx.metrics.uplink().published.inc();
                    }
                    // The request channel is full: try again on the next wake-up.
                    Err(_) => return,
                }
            }
        }
    }

    /// The retained `status`: on connect, every `uplink.status_interval_secs`, and when
    /// the quota alert changes.
    fn maybe_status(&mut self) {
        if !self.connected {
            return;
        }
        let alert = self.ctx.handle.status().outbox.alert;
        if alert != self.last_alert
            || self.last_status.elapsed() >= self.ctx.cfg.uplink.status_interval
        {
            self.publish_status(What::Status);
        }
    }

    fn publish_status(&mut self, what: What) {
        let snapshot = self.ctx.handle.status();
        self.last_alert = snapshot.outbox.alert;
        self.last_status = Instant::now();
        let payload = match what {
            What::Goodbye => {
                offline_message(&self.ctx.cfg.node_id, &self.ctx.cfg.site_id, "shutdown")
            }
            _ => snapshot.message(
                &self.ctx.cfg.node_id,
                &self.ctx.cfg.site_id,
                self.ctx.handle.model_info().as_ref(),
            ),
        };
        let bytes = payload.len();
        match self.client.try_publish(
            self.ctx.node_topic("status"),
            QoS::AtLeastOnce,
            true,
            payload,
        ) {
            Ok(()) => {
                self.fifo.push_back(Flight { what, bytes });
                self.inflight_bytes += bytes;
            }
            Err(e) => tracing::warn!(error = %e, "cannot publish the status message"),
        }
    }

    fn show(&self) {
        let inflight = self.fifo.len() + self.flights.len();
        self.ctx.metrics.uplink().inflight.set(inflight as i64);
        let (published, acknowledged) = (self.published, self.acknowledged);
        self.ctx.handle.update_status(|s| {
            s.inflight = inflight;
            s.published = published;
            s.acknowledged = acknowledged;
        });
    }

    /// On shutdown: the `offline` status (retained, so the centre sees a clean stop rather
    /// than the LWT), acknowledged rows deleted, DISCONNECT.
    async fn goodbye(&mut self, net_rx: &mut mpsc::Receiver<Net>, in_tx: &mpsc::Sender<Received>) {
        if self.connected {
            // One last window of rows, then `offline`, acknowledged within the deadline;
            // whatever is not acknowledged by then stays queued for the next start.
            self.more = true;
            self.fill().await;
            self.publish_status(What::Goodbye);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while self.connected && !(self.goodbye_acked && self.flights.is_empty()) {
                tokio::select! {
                    m = net_rx.recv() => match m {
                        Some(m) => self.on_net(m, in_tx).await,
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.flush_acked().await;
            if self.connected {
                let _ = self.client.try_disconnect();
                // Let the driver write the DISCONNECT before it is stopped.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                loop {
                    tokio::select! {
                        m = net_rx.recv() => match m {
                            Some(Net::Event(Event::Outgoing(Outgoing::Disconnect))) | None => break,
                            Some(m) => self.on_net(m, in_tx).await,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
            }
        }
        self.flush_acked().await;
        self.ctx.metrics.uplink().connected.set(0);
        self.ctx
            .handle
            .update_status(|s| s.set_state(ConnState::Stopped));
        tracing::info!(
            published = self.published,
            acknowledged = self.acknowledged,
            "uplink stopped"
        );
    }
}

/// What the worker did with an incoming message.
pub(super) enum Disposition {
    /// Its effect is durable (or it was refused for good): acknowledge it.
    Ack,
    /// The node could not handle it now (shutting down, disk trouble): leave it
    /// unacknowledged so the broker delivers it again after the next reconnect.
    Retry,
}

/// Handles entry packages and commands one at a time, acknowledging each after its effect
/// is committed.
async fn incoming(
    ctx: Arc<Context>,
    mut rx: mpsc::Receiver<Received>,
    ack_tx: mpsc::Sender<Received>,
    token: CancellationToken,
) {
    let entries = Context::entries_topic(&ctx.cfg.site_id);
    let cmd_prefix = ctx.node_topic("cmd/");
    loop {
        let r = tokio::select! {
            _ = token.cancelled() => break,
            r = rx.recv() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let topic = r.publish.topic.clone();
        let d = if topic == entries {
            super::entries::receive(&ctx, &r.publish.payload).await
        } else if let Some(name) = topic.strip_prefix(&cmd_prefix) {
            super::commands::handle(&ctx, name, &r.publish.payload).await
        } else {
            tracing::warn!(%topic, "message on a topic this node did not subscribe to; ignored");
            Disposition::Ack
        };
        if matches!(d, Disposition::Ack) && ack_tx.send(r).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
        for attempt in 1..30 {
            let d = backoff(attempt, min, max);
            let cap = min.saturating_mul(1 << (attempt - 1).min(16)).min(max);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(40, min, max) <= max);
    }
}
