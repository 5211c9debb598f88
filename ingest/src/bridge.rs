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
//! (Mosquitto: `pattern write meters/%u/#`); meterflow trusts the meter id in the topic the
//! broker delivered, and logs in to the broker with its own username/password or client
//! certificate over TLS.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flume::Sender;
use meterflow_proto::{is_valid_meter_id, Format, Source};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::message::{now_ms, RawMessage};
use crate::wal_writer::{Durability, Submission};
use crate::IngestError;

/// One broker meterflow takes messages from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// `mqtt://HOST[:1883]` or `mqtts://HOST[:8883]` (TLS); `mqtt://USER:PASSWORD@HOST` sets
    /// the login too (percent-encoded).
    pub url: String,
    /// In log lines and the `bridge` label of the metrics. Empty: the URL's host and port.
    pub name: String,
    /// The login at the broker (`username`/`password` win over the URL's).
    pub username: String,
    pub password: String,
    /// The MQTT client id. It must stay the same across restarts (the broker keeps the
    /// session under it) and differ between nodes. Empty: `meterflow-{node.id}` (with
    /// `-{n}` for the n-th bridge after the first), `meterflow` without a node id.
    pub client_id: String,
    /// Where the meters publish at the broker: `/`-separated literal segments, `+` (any one
    /// segment), `{meter_id}` (once) and `{format}` (at most once; `status` is a format too).
    pub topic: String,
    /// The format of every message when `topic` has no `{format}` (pb, json, senml,
    /// senml-cbor, dsmr, status).
    pub format: String,
    /// Nodes with the same group share the subscription (`$share/GROUP/...`); empty: a plain
    /// subscription (every node with it gets every message).
    pub share_group: String,
    /// 1: at least once, acknowledged after the WAL. 0: at most once (nothing to resend).
    pub qos: u8,
    /// How long the broker keeps the session (and the messages meterflow has not
    /// acknowledged) after the bridge disconnects.
    pub session_expiry_s: u32,
    /// Unacknowledged messages the broker may send at once (MQTT 5 Receive Maximum).
    pub receive_maximum: u16,
    /// Largest packet the broker may send; it drops larger ones (MQTT 5 Maximum Packet Size).
    pub max_packet_bytes: u32,
    pub keep_alive_s: u64,
    /// CA certificates (PEM) that the broker's certificate chains to, for `mqtts://`.
    /// None: the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate chain and its key (PEM), where the broker asks for one.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            url: String::new(),
            name: String::new(),
            username: String::new(),
            password: String::new(),
            client_id: String::new(),
            topic: "meters/{meter_id}/{format}".into(),
            format: String::new(),
            share_group: "meterflow".into(),
            qos: 1,
            session_expiry_s: 86_400,
            receive_maximum: 1000,
            max_packet_bytes: 256 * 1024,
            keep_alive_s: 30,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Where and how to connect, from the URL and the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Reads `mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT]` (also `tcp://`, `ssl://`).
pub fn parse_url(text: &str) -> Result<Endpoint, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    let tls = match url.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(format!("scheme {other}:// is not mqtt:// or mqtts://")),
    };
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host.trim_matches(|c| c == '[' || c == ']').to_string(),
        _ => return Err("has no host".into()),
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err("must not have a path or query: the topic is the `topic` key".into());
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| "the login is not UTF-8 once percent-decoded".to_string())
    };
    let username = (!url.username().is_empty())
        .then(|| decode(url.username()))
        .transpose()?;
    let password = url.password().map(decode).transpose()?;
    Ok(Endpoint {
        host,
        port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
        tls,
        username,
        password,
    })
}

/// `url` with its password, if any, replaced by `***` (for output people read).
pub fn url_without_password(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(_) => text.to_string(),
        // Not a URL: it may still hold a password somewhere, so show none of it.
        Err(_) => "(not a URL, not shown)".into(),
    }
}

/// One segment of a [`TopicPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    MeterId,
    Format,
}

/// Where the meter id and the format are in the broker's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    segments: Vec<Segment>,
    /// The format of every message when the pattern has no `{format}`.
    fixed_format: Option<String>,
}

impl TopicPattern {
    /// `pattern` as the `topic` key takes it; `format` is the `format` key.
    pub fn parse(pattern: &str, format: &str) -> Result<TopicPattern, String> {
        let mut segments = Vec::new();
        for part in pattern.split('/') {
            segments.push(match part {
                "{meter_id}" => Segment::MeterId,
                "{format}" => Segment::Format,
                "+" => Segment::Any,
                "" => return Err(format!("{pattern:?} has an empty segment")),
                _ if part.contains(['+', '#', '{', '}']) => {
                    return Err(format!(
                        "segment {part:?} of {pattern:?} is not literal, `+`, `{{meter_id}}` or `{{format}}`"
                    ))
                }
                _ => Segment::Literal(part.to_string()),
            });
        }
        let count = |s: &Segment| segments.iter().filter(|x| *x == s).count();
        if count(&Segment::MeterId) != 1 {
            return Err(format!("{pattern:?} must have `{{meter_id}}` once"));
        }
        let fixed_format = match (count(&Segment::Format), format) {
            (0, "") => {
                return Err(format!(
                    "{pattern:?} has no `{{format}}`: set bridge `format` (pb, json, senml, senml-cbor, dsmr or status)"
                ))
            }
            (0, f) => {
                if f != "status" {
                    f.parse::<Format>().map_err(|e| e.to_string())?;
                }
                Some(f.to_string())
            }
            (1, "") => None,
            (1, _) => return Err(format!("{pattern:?} has `{{format}}`: leave `format` empty")),
            _ => return Err(format!("{pattern:?} has `{{format}}` more than once")),
        };
        Ok(TopicPattern {
            segments,
            fixed_format,
        })
    }

    /// The subscription filter: the pattern with `+` for the meter id and the format.
    pub fn filter(&self) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(text) => text.as_str(),
                _ => "+",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// `meters/{meter_id}/{format}` for a topic that fits the pattern; `None` otherwise (then
    /// the message is kept under its own topic and becomes a `bad_topic` dead letter).
    pub fn canonical(&self, topic: &str) -> Option<String> {
        let parts: Vec<&str> = topic.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let (mut meter_id, mut format) = (None, self.fixed_format.as_deref());
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(text) if text != part => return None,
                Segment::MeterId => meter_id = Some(*part),
                Segment::Format => format = Some(*part),
                _ => {}
            }
        }
        // An id the pipeline would refuse stays under its own topic, so the dead letter
        // names the topic the broker had; likewise a format segment that is not one.
        let (meter_id, format) = (meter_id?, format?);
        if !is_valid_meter_id(meter_id) || format.contains(['+', '#']) {
            return None;
        }
        Some(format!("meters/{meter_id}/{format}"))
    }
}

impl BridgeConfig {
    /// A bridge from `--mqtt-bridge URL`, with the defaults for everything else.
    pub fn from_url(url: &str) -> BridgeConfig {
        BridgeConfig {
            url: url.to_string(),
            ..BridgeConfig::default()
        }
    }

    /// Checks what the types alone do not; the error names the key (`bridge[N].KEY`).
    pub fn validate(&self, index: usize) -> Result<(), IngestError> {
        let key = |k: &str| format!("bridge[{index}].{k}");
        let endpoint = parse_url(&self.url).map_err(|e| IngestError::config(key("url"), e))?;
        TopicPattern::parse(&self.topic, &self.format)
            .map_err(|e| IngestError::config(key("topic"), e))?;
        if self.share_group.contains(['/', '+', '#']) {
            return Err(IngestError::config(
                key("share_group"),
                "must not contain `/`, `+` or `#`",
            ));
        }
        if self.qos > 1 {
            return Err(IngestError::config(
                key("qos"),
                "must be 0 or 1 (QoS 1 is acknowledged once in the WAL, which QoS 2 adds nothing to)",
            ));
        }
        crate::config::positive(&key("receive_maximum"), self.receive_maximum.into())?;
        crate::config::positive(&key("keep_alive_s"), self.keep_alive_s)?;
        if self.max_packet_bytes < 1024 {
            return Err(IngestError::config(
                key("max_packet_bytes"),
                "must be at least 1024",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(IngestError::config(
                key("tls_key"),
                "tls_cert and tls_key go together",
            ));
        }
        if !endpoint.tls && (self.tls_ca.is_some() || self.tls_cert.is_some()) {
            return Err(IngestError::config(
                key("url"),
                "tls_ca / tls_cert are set but the URL is not mqtts://",
            ));
        }
        if !self.password.is_empty() && self.username.is_empty() && endpoint.username.is_none() {
            return Err(IngestError::config(
                key("password"),
                "is set without a username",
            ));
        }
        if self.client_id.len() > 256 {
            return Err(IngestError::config(
                key("client_id"),
                "is longer than 256 bytes",
            ));
        }
        Ok(())
    }

    /// The client id in use (see `client_id`).
    pub fn client_id_for(&self, node_id: &str, index: usize) -> String {
        if !self.client_id.is_empty() {
            return self.client_id.clone();
        }
        let mut id = String::from("meterflow");
        if !node_id.is_empty() {
            id.push('-');
            id.push_str(node_id);
        }
        if index > 0 {
            id.push_str(&format!("-{index}"));
        }
        id
    }
}

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
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<BridgeSummary>,
}

/// Starts the bridge of `config` (checked by [`BridgeConfig::validate`]); it connects (and
/// reconnects) in the background. `wal` is the channel it submits through.
pub fn start(
    config: &BridgeConfig,
    node_id: &str,
    index: usize,
    wal: Sender<Submission>,
) -> Result<Bridge, IngestError> {
    let key = |k: &str| format!("bridge[{index}].{k}");
    let endpoint = parse_url(&config.url).map_err(|e| IngestError::config(key("url"), e))?;
    let pattern = TopicPattern::parse(&config.topic, &config.format)
        .map_err(|e| IngestError::config(key("topic"), e))?;
    let name = if config.name.is_empty() {
        format!("{}:{}", endpoint.host, endpoint.port)
    } else {
        config.name.clone()
    };
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
        .set_keep_alive(Duration::from_secs(config.keep_alive_s))
        .set_manual_acks(true)
        .set_request_channel_capacity(usize::from(config.receive_maximum) + 16);
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
    if endpoint.tls {
        let tls = tls_client(config).map_err(|(k, e)| IngestError::config(key(k), e))?;
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
    let (client, eventloop) = AsyncClient::new(options, usize::from(config.receive_maximum) + 16);
    let (stop, stop_rx) = watch::channel(false);
    tracing::info!(bridge = %name, client_id = %client_id, tls = endpoint.tls, subscription = %subscription, "bridge starting");
    let link = Link {
        metrics: BridgeMetrics::new(&name),
        name: name.clone(),
        client,
        pattern,
        subscription,
        qos,
        wal,
        generation: Arc::new(AtomicU64::new(0)),
        reconnect: Arc::new(Notify::new()),
        awaiting: Arc::default(),
        receive_maximum: usize::from(config.receive_maximum),
        warned: false,
        summary: BridgeSummary::default(),
    };
    let task = tokio::spawn(link.run(eventloop, stop_rx));
    Ok(Bridge { name, stop, task })
}

impl Bridge {
    /// Stops taking messages, acknowledges those the WAL has (waiting at most `max` for the
    /// writer), disconnects (the broker keeps the session and whatever was not acknowledged)
    /// and ends, dropping its WAL channel.
    pub async fn shutdown(self, max: Duration) -> BridgeSummary {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        match tokio::time::timeout(max + Duration::from_secs(1), self.task).await {
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

/// The client's TLS settings; an error names the key at fault.
fn tls_client(config: &BridgeConfig) -> Result<rustls::ClientConfig, (&'static str, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &config.tls_ca {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| ("tls_ca", format!("{}: {e}", ca.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| ("tls_ca", format!("{}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| ("tls_ca", format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err((
                    "tls_ca",
                    "the system has no CA certificates: set tls_ca".into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ("url", e.to_string()))?
    .with_root_certificates(roots);
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ("tls_cert", format!("{}: {e}", cert.display())))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ("tls_key", format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ("tls_key", e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

struct BridgeMetrics {
    connected: metrics::Gauge,
    received: metrics::Counter,
    acked: metrics::Counter,
    not_acked: metrics::Counter,
    pending_acks: metrics::Gauge,
    reconnects: metrics::Counter,
    unmatched: metrics::Counter,
}

impl BridgeMetrics {
    fn new(name: &str) -> BridgeMetrics {
        let name = name.to_string();
        BridgeMetrics {
            connected: metrics::gauge!("meterflow_bridge_connected", "bridge" => name.clone()),
            received: metrics::counter!("meterflow_received_total", "source" => "bridge"),
            acked: metrics::counter!("meterflow_bridge_acked_total", "bridge" => name.clone()),
            not_acked: metrics::counter!("meterflow_bridge_not_acked_total", "bridge" => name.clone()),
            pending_acks: metrics::gauge!("meterflow_bridge_pending_acks", "bridge" => name.clone()),
            reconnects: metrics::counter!("meterflow_bridge_reconnects_total", "bridge" => name.clone()),
            unmatched: metrics::counter!("meterflow_bridge_unmatched_topics_total", "bridge" => name),
        }
    }
}

/// A message handed to the WAL, waiting to be acknowledged to the broker.
struct PendingAck {
    /// The connection it came on (a later connection gets it again instead).
    generation: u64,
    /// The message without its topic and payload: an acknowledgement needs its packet id.
    publish: Publish,
    durable: oneshot::Receiver<Durability>,
}

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After a message the WAL could not take (at its budget until the sinks catch up): how long
/// the bridge stays away before the broker sends it again. MQTT 5 has no way to refuse one
/// message and have it later (a PUBACK with an error code discards it), so the session is
/// resumed, as a meter at the edge comes back after MQTT 5's 0x97.
const WAL_FULL_PAUSE: Duration = Duration::from_secs(5);

struct Link {
    name: String,
    metrics: BridgeMetrics,
    client: AsyncClient,
    pattern: TopicPattern,
    subscription: String,
    qos: QoS,
    wal: Sender<Submission>,
    /// Counts connections; an acknowledgement is sent only on the connection its message came on.
    generation: Arc<AtomicU64>,
    /// Asked by the acknowledger when the WAL could not take a message: drop the connection
    /// so that the broker sends the unacknowledged messages again.
    reconnect: Arc<Notify>,
    /// Messages handed to the WAL that the acknowledger has not dealt with yet: what the
    /// broker has unacknowledged, at most `receive_maximum` while it keeps to it.
    awaiting: Arc<AtomicUsize>,
    receive_maximum: usize,
    /// Whether this connection was warned about a broker that sends more than
    /// `receive_maximum`.
    warned: bool,
    summary: BridgeSummary,
}

impl Link {
    async fn run(
        mut self,
        mut eventloop: EventLoop,
        mut stop: watch::Receiver<bool>,
    ) -> BridgeSummary {
        // Unbounded, and never awaited here: this loop must keep polling the event loop, which
        // is what sends the acknowledgements. (A bounded queue full of messages waiting for
        // their PUBACK, with the PUBACKs waiting for this loop, stalled both: Mosquitto 2.0.11
        // keeps to the Receive Maximum, but sends a resumed session everything it holds at
        // once.) Its entries are small (a packet id and a channel; the payload is the WAL's),
        // and the broker's flow control bounds them; `meterflow_bridge_pending_acks` shows it.
        let (acks, pending) = mpsc::unbounded_channel::<PendingAck>();
        let acker = tokio::spawn(
            Acknowledger {
                client: self.client.clone(),
                generation: self.generation.clone(),
                reconnect: self.reconnect.clone(),
                awaiting: self.awaiting.clone(),
                not_acked: self.metrics.not_acked.clone(),
                pending_acks: self.metrics.pending_acks.clone(),
                name: self.name.clone(),
            }
            .run(pending),
        );
        let mut backoff = Duration::from_millis(500);
        loop {
            let event = tokio::select! {
                biased;
                _ = stop.changed() => break,
                () = self.reconnect.notified() => {
                    tracing::warn!(bridge = %self.name, retry_in_ms = WAL_FULL_PAUSE.as_millis() as u64, "the WAL did not take a message: reconnecting later so that the broker sends it again");
                    self.disconnected(&mut eventloop);
                    if sleep_or_stop(WAL_FULL_PAUSE, &mut stop).await {
                        break;
                    }
                    continue;
                }
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    self.metrics.connected.set(1.0);
                    self.warned = false;
                    backoff = Duration::from_millis(500);
                    tracing::info!(bridge = %self.name, session_present = connack.session_present, "bridge connected");
                    // The session may hold the subscription already; subscribing again is
                    // harmless and covers a session the broker dropped.
                    if let Err(e) = self
                        .client
                        .try_subscribe(self.subscription.clone(), self.qos)
                    {
                        tracing::error!(bridge = %self.name, error = %e, "cannot queue the subscription");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    for code in &suback.return_codes {
                        match code {
                            SubscribeReasonCode::Success(_) => {
                                tracing::info!(bridge = %self.name, subscription = %self.subscription, "bridge subscribed")
                            }
                            refused => {
                                tracing::error!(bridge = %self.name, subscription = %self.subscription, reason = ?refused, "the broker refused the subscription: check the bridge's ACL at the broker")
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if !self.take(publish, &acks).await {
                        tracing::error!(bridge = %self.name, "the WAL writer is gone; the bridge stops");
                        break;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => self.acked(),
                Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                    tracing::warn!(bridge = %self.name, reason = ?disconnect.reason_code, "the broker disconnected the bridge");
                }
                Ok(_) => {}
                Err(e) => {
                    self.disconnected(&mut eventloop);
                    tracing::warn!(bridge = %self.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "bridge connection failed");
                    if sleep_or_stop(backoff, &mut stop).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // Stop taking messages; acknowledge those handed to the WAL while the connection is
        // still polled (the acknowledgements go out through it), then disconnect. Messages
        // that arrive meanwhile are not acknowledged: the broker keeps them for the session.
        drop(acks);
        drop(std::mem::replace(&mut self.wal, flume::bounded(0).0));
        let mut acker = acker;
        let drained = loop {
            tokio::select! {
                done = &mut acker => break done.is_ok(),
                event = eventloop.poll() => match event {
                    Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => self.acked(),
                    Ok(_) => {}
                    Err(_) => break false,
                },
            }
        };
        if drained {
            // The acknowledgements queued before it go out first.
            let _ = self.client.try_disconnect();
            let flush = async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => self.acked(),
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
        }
        self.metrics.connected.set(0.0);
        tracing::info!(bridge = %self.name, received = self.summary.received, acked = self.summary.acked, "bridge stopped");
        self.summary
    }

    /// A PUBACK went out to the broker.
    fn acked(&mut self) {
        self.summary.acked += 1;
        self.metrics.acked.increment(1);
    }

    fn disconnected(&mut self, eventloop: &mut EventLoop) {
        eventloop.clean();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.metrics.connected.set(0.0);
        self.metrics.reconnects.increment(1);
    }

    /// Hands one message to the WAL writer and, for QoS 1, to the acknowledger; `false` when
    /// the writer is gone.
    async fn take(&mut self, publish: Publish, acks: &mpsc::UnboundedSender<PendingAck>) -> bool {
        let wants_ack = publish.qos != QoS::AtMostOnce;
        self.summary.received += 1;
        self.metrics.received.increment(1);
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let topic = match self.pattern.canonical(&topic) {
            Some(canonical) => canonical,
            None => {
                self.metrics.unmatched.increment(1);
                topic
            }
        };
        let content_type = publish
            .properties
            .as_ref()
            .and_then(|p| p.content_type.clone());
        let (notify, durable) = if wants_ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let submission = Submission {
            message: RawMessage {
                lsn: 0,
                topic,
                payload: publish.payload.clone(),
                source: Source::Bridge,
                received_at_ms: now_ms(),
                content_type,
                refused: None,
            },
            notify,
            budget: None,
        };
        if self.wal.send_async(submission).await.is_err() {
            return false;
        }
        if let Some(durable) = durable {
            let pending = PendingAck {
                generation: self.generation.load(Ordering::Acquire),
                publish: Publish {
                    topic: bytes::Bytes::new(),
                    payload: bytes::Bytes::new(),
                    properties: None,
                    ..publish
                },
                durable,
            };
            if acks.send(pending).is_err() {
                return false;
            }
            let awaiting = self.awaiting.fetch_add(1, Ordering::AcqRel) + 1;
            self.metrics.pending_acks.set(awaiting as f64);
            if awaiting > 4 * self.receive_maximum && !self.warned {
                self.warned = true;
                tracing::warn!(bridge = %self.name, awaiting, receive_maximum = self.receive_maximum, "the broker sends far more unacknowledged messages than receive_maximum (a resumed session's backlog at once): they wait for the WAL in memory");
            }
        }
        true
    }
}

/// Acknowledges messages to the broker in the order they came, each once the WAL holds it.
/// After a message the WAL did not take, nothing more of that connection is acknowledged (the
/// broker sends it all again on the next one).
struct Acknowledger {
    client: AsyncClient,
    /// The link's connection count: a message of an earlier connection is not acknowledged.
    generation: Arc<AtomicU64>,
    /// Told when the WAL did not take a message.
    reconnect: Arc<Notify>,
    /// The link's count of messages handed over and not dealt with yet.
    awaiting: Arc<AtomicUsize>,
    not_acked: metrics::Counter,
    pending_acks: metrics::Gauge,
    name: String,
}

impl Acknowledger {
    async fn run(self, mut pending: mpsc::UnboundedReceiver<PendingAck>) {
        let mut failed_generation = None;
        while let Some(next) = pending.recv().await {
            let durable = matches!(next.durable.await, Ok(Durability::Durable(_)));
            let current = self.generation.load(Ordering::Acquire) == next.generation;
            if durable && current && failed_generation != Some(next.generation) {
                // Queued for the event loop, which sends it on the connection the message came
                // on. Should that connection drop first, the event loop discards queued
                // acknowledgements and the broker sends the message again.
                let sent = self.client.ack(&next.publish).await;
                self.done();
                if sent.is_err() {
                    return;
                }
                continue;
            }
            self.done();
            self.not_acked.increment(1);
            if !durable && failed_generation != Some(next.generation) {
                failed_generation = Some(next.generation);
                tracing::warn!(bridge = %self.name, "a bridged message is not in the WAL: not acknowledged");
                self.reconnect.notify_one();
            }
        }
    }

    /// One message dealt with (its acknowledgement queued, or not to be sent).
    fn done(&self) {
        let left = self
            .awaiting
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        self.pending_acks.set(left as f64);
    }
}

/// Sleeps `pause`; `true` if asked to stop meanwhile.
async fn sleep_or_stop(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        () = tokio::time::sleep(pause) => *stop.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_tls_and_login() {
        let e = parse_url("mqtts://meterflow:p%40ss%3Aword@broker.example").unwrap();
        assert_eq!(
            e,
            Endpoint {
                host: "broker.example".into(),
                port: 8883,
                tls: true,
                username: Some("meterflow".into()),
                password: Some("p@ss:word".into()),
            }
        );
        let e = parse_url("mqtt://127.0.0.1:1999").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 1999, false));
        assert_eq!(e.username, None);
        assert_eq!(parse_url("tcp://[::1]").unwrap().host, "::1");
        for bad in [
            "http://h",
            "mqtt://",
            "broker:1883",
            "mqtt://h/meters/#",
            "mqtt://h?x=1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn printed_urls_hide_the_password() {
        assert_eq!(
            url_without_password("mqtts://mf:s3cret@broker:8883"),
            "mqtts://mf:***@broker:8883"
        );
        assert_eq!(url_without_password("mqtt://broker"), "mqtt://broker");
        assert!(!url_without_password("mqtt//mf:s3cret@b").contains("s3cret"));
    }

    #[test]
    fn the_default_pattern_maps_topics_one_to_one() {
        let p = TopicPattern::parse("meters/{meter_id}/{format}", "").unwrap();
        assert_eq!(p.filter(), "meters/+/+");
        assert_eq!(p.canonical("meters/E1/pb").as_deref(), Some("meters/E1/pb"));
        assert_eq!(
            p.canonical("meters/E1/status").as_deref(),
            Some("meters/E1/status")
        );
        assert_eq!(p.canonical("meters/E 1/pb"), None);
        assert_eq!(p.canonical("meters/E1"), None);
        assert_eq!(p.canonical("other/E1/pb"), None);
    }

    #[test]
    fn a_utility_tree_maps_to_the_canonical_topics() {
        let p = TopicPattern::parse("utility/+/ami/{meter_id}/up", "dsmr").unwrap();
        assert_eq!(p.filter(), "utility/+/ami/+/up");
        assert_eq!(
            p.canonical("utility/north/ami/E0001/up").as_deref(),
            Some("meters/E0001/dsmr")
        );
        assert_eq!(p.canonical("utility/north/ami/E0001/down"), None);
        let p = TopicPattern::parse("{format}/{meter_id}", "").unwrap();
        assert_eq!(p.canonical("json/M7").as_deref(), Some("meters/M7/json"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (pattern, format) in [
            ("meters/{format}", ""),
            ("meters/{meter_id}/{meter_id}", ""),
            ("meters/{meter_id}", ""),
            ("meters/{meter_id}", "xml"),
            ("meters/{meter_id}/{format}", "pb"),
            ("meters/#", ""),
            ("meters//{meter_id}", "pb"),
            ("m{meter_id}", "pb"),
        ] {
            assert!(
                TopicPattern::parse(pattern, format).is_err(),
                "{pattern} {format}"
            );
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let good = BridgeConfig::from_url("mqtt://u:p@broker");
        good.validate(0).unwrap();
        for (config, key) in [
            (BridgeConfig::from_url("http://x"), "bridge[2].url"),
            (
                BridgeConfig {
                    qos: 2,
                    ..good.clone()
                },
                "bridge[2].qos",
            ),
            (
                BridgeConfig {
                    share_group: "a/b".into(),
                    ..good.clone()
                },
                "bridge[2].share_group",
            ),
            (
                BridgeConfig {
                    tls_ca: Some("ca.pem".into()),
                    ..good.clone()
                },
                "bridge[2].url",
            ),
            (
                BridgeConfig {
                    url: "mqtt://broker".into(),
                    password: "secret".into(),
                    ..good.clone()
                },
                "bridge[2].password",
            ),
            (
                BridgeConfig {
                    receive_maximum: 0,
                    ..good.clone()
                },
                "bridge[2].receive_maximum",
            ),
        ] {
            let e = config.validate(2).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn client_ids_follow_the_node() {
        let c = BridgeConfig::default();
        assert_eq!(c.client_id_for("", 0), "meterflow");
        assert_eq!(c.client_id_for("mf-2", 0), "meterflow-mf-2");
        assert_eq!(c.client_id_for("mf-2", 1), "meterflow-mf-2-1");
        let c = BridgeConfig {
            client_id: "fixed".into(),
            ..c
        };
        assert_eq!(c.client_id_for("mf-2", 1), "fixed");
    }
}
