//! The bridge from a broker a utility already runs (EMQX, HiveMQ, VerneMQ, Mosquitto): each
//! `[[bridge]]` section (or `--mqtt-bridge URL`) is an MQTT 5 client (rumqttc) that
//! subscribes to the meters' topics there and hands every message to the WAL writer as the
//! MQTT edge does, with `source = 'bridge'`.
//!
//! - **Shared subscription** (`$share/{share_group}/{filter}`): several meterflow nodes take
//!   turns, each message goes to one of them.
//! - **Persistent session** (clean start off, `session_expiry_s`): what the broker sent and
//!   meterflow did not acknowledge is sent again when the bridge reconnects, after a crash too.
//! - **Manual acknowledgements**: the PUBACK to the broker goes out only once the WAL holds
//!   the message (fsynced by `wal.fsync`), in the order the broker sent them. A message the
//!   WAL cannot take (at its budget, an I/O error) is not acknowledged: the bridge drops the
//!   connection, waits, and the broker sends it again on the resumed session.
//! - **Flow control**: the broker sends at most `receive_maximum` unacknowledged messages
//!   (MQTT 5 Receive Maximum); when the WAL writer's queue is full the bridge stops reading.
//! - **Topics**: the broker's topic tree is the utility's. `topic` is a pattern of literal
//!   segments, `+`, `{meter_id}` and `{format}`; a message is kept under the canonical topic
//!   `meters/{meter_id}/{format}`, so routing, decoding and dead letters are the MQTT edge's.
//!
//! Identity: the broker authenticates the meters and its ACL keeps each to its own topics
//! (Mosquitto: `pattern write meters/%u/+`, the `topic` pattern with `%u` for `{meter_id}`
//! and `+` for the other variable segments, never `#`; broker usernames must be valid meter
//! ids). meterflow trusts the meter id in the topic the broker delivered: MQTT does not tell a
//! subscriber who published, so a forgery the ACL lets through is the same message as the
//! meter's own, and nothing here can refuse it. (With `meters/%u/#` a broker user named
//! `E2/json` may write `meters/E2/json`, which would be stored as E2: `tests/it/bridge.rs`.)
//! meterflow logs in to the broker with its own username/password or client certificate over
//! TLS.
//!
//! - `config`: the settings, checked and prepared once (endpoint, topic pattern, TLS);
//! - `tls`: the TLS client settings for `mqtts://`;
//! - `link`: the connection loop of one bridge, and its metrics.
//!
//! This module starts a bridge ([`start`]) and waits for it at shutdown ([`Bridge::finish`]).

mod config;
mod link;
mod tls;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use flume::Sender;
use meterflow_proto::now_ms;
use meterflow_storage::ShutdownSignal;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use tokio::time::Instant;

use crate::edge::Submission;
use link::{BridgeMetrics, Link};

pub use config::{parse_url, url_without_password, BridgeConfig, Endpoint, Prepared, TopicPattern};

/// What a bridge did, for the shutdown summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct BridgeSummary {
    pub received: u64,
    /// PUBACKs sent to the broker in this run.
    pub acked: u64,
}

/// A running bridge.
pub struct Bridge {
    name: String,
    /// The process's shutdown: the bridge stops taking messages when it begins and finishes
    /// by its deadline.
    shutdown: ShutdownSignal,
    unsubscribed_since: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<BridgeSummary>,
}

/// Room in rumqttc's request channel: acknowledgements wait there until the event loop sends
/// them. Far more than can be outstanding (entries are a packet id each), so queuing one never
/// has to wait; should it be full all the same, acknowledgements wait in the link.
const REQUEST_CAPACITY: usize = 1 << 16;

/// Starts the bridge of `config` with what [`BridgeConfig::prepare`] made of it; it connects
/// (and reconnects) in the background until the shutdown begins. `wal` is the channel it
/// submits through.
pub fn start(
    config: &BridgeConfig,
    prepared: Prepared,
    node_id: &str,
    index: usize,
    wal: Sender<Submission>,
    shutdown: ShutdownSignal,
) -> Bridge {
    let Prepared {
        endpoint,
        pattern,
        tls,
    } = prepared;
    let name = config.display_name(&endpoint);
    let client_id = config.client_id_for(node_id, index);
    if config.client_id.is_empty() && node_id.is_empty() {
        tracing::warn!(bridge = %name, client_id = %client_id, "node.id is not set: a second node with this bridge would take over this one's session; set node.id on every node");
    }
    let mut options = MqttOptions::new(client_id.clone(), endpoint.host.clone(), endpoint.port);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(config.session_expiry_s))
        .set_receive_maximum(Some(config.receive_maximum))
        .set_max_packet_size(Some(config.max_packet_bytes))
        // prepare() keeps it within 5..=65535 s, as rumqttc asserts.
        .set_keep_alive(Duration::from_secs(config.keep_alive_s))
        .set_manual_acks(true)
        .set_request_channel_capacity(REQUEST_CAPACITY);
    let username = Some(config.username.clone())
        .filter(|u| !u.is_empty())
        .or(endpoint.username.clone());
    if let Some(username) = username {
        let password = Some(config.password.clone())
            .filter(|p| !p.is_empty())
            .or(endpoint.password.clone())
            .unwrap_or_default();
        options.set_credentials(username, password);
    }
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    let filter = pattern.filter();
    let subscription = if config.share_group.is_empty() {
        filter
    } else {
        format!("$share/{}/{filter}", config.share_group)
    };
    let qos = if config.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let unsubscribed_since = Arc::new(AtomicI64::new(now_ms()));
    tracing::info!(bridge = %name, client_id = %client_id, tls = endpoint.tls, subscription = %subscription, "bridge starting");
    let link = Link {
        metrics: BridgeMetrics::new(&name),
        name: name.clone(),
        client,
        pattern,
        subscription,
        qos,
        wal,
        connection: 0,
        connected: false,
        to_ack: VecDeque::new(),
        awaiting: 0,
        receive_maximum: usize::from(config.receive_maximum),
        warned: false,
        unsubscribed_since: unsubscribed_since.clone(),
        summary: BridgeSummary::default(),
    };
    let task = tokio::spawn(link.run(eventloop, shutdown.clone()));
    Bridge {
        name,
        shutdown,
        unsubscribed_since,
        task,
    }
}

impl Bridge {
    /// As in logs and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Unix ms since when it has been without its subscription at the broker, 0 while it holds
    /// it (for `/ready`).
    pub fn unsubscribed_since(&self) -> Arc<AtomicI64> {
        self.unsubscribed_since.clone()
    }

    /// Waits for it to end once the shutdown has begun: it stops taking messages, acknowledges
    /// what the WAL has, disconnects (the broker keeps the session and whatever was not
    /// acknowledged) and ends, dropping its WAL channel, by the shutdown's deadline (a second
    /// past it at most, then it is cut off).
    pub async fn finish(self) -> BridgeSummary {
        let deadline =
            self.shutdown.deadline().unwrap_or_else(Instant::now) + Duration::from_secs(1);
        let abort = self.task.abort_handle();
        match tokio::time::timeout_at(deadline, self.task).await {
            Ok(Ok(summary)) => summary,
            Ok(Err(e)) => {
                tracing::error!(bridge = %self.name, error = %e, "the bridge failed");
                BridgeSummary::default()
            }
            Err(_) => {
                tracing::warn!(bridge = %self.name, "the bridge did not stop in time; what it did not acknowledge, the broker sends again");
                abort.abort();
                BridgeSummary::default()
            }
        }
    }
}
