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

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flume::Sender;
use meterflow_proto::{is_valid_meter_id, Format, Source};
use meterflow_storage::ShutdownSignal;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::edge::RawMessage;
use crate::edge::{Durability, Submission};
use crate::IngestError;
use meterflow_proto::now_ms;

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
    // An IPv6 address keeps its brackets: rumqttc joins host and port with a colon.
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host.to_string(),
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
enum PatternPart {
    Literal(String),
    Any,
    MeterId,
    Format,
}

/// Where the meter id and the format are in the broker's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    segments: Vec<PatternPart>,
    /// The format of every message when the pattern has no `{format}`.
    fixed_format: Option<String>,
}

impl TopicPattern {
    /// `pattern` as the `topic` key takes it; `format` is the `format` key.
    pub fn parse(pattern: &str, format: &str) -> Result<TopicPattern, String> {
        let mut segments = Vec::new();
        for part in pattern.split('/') {
            segments.push(match part {
                "{meter_id}" => PatternPart::MeterId,
                "{format}" => PatternPart::Format,
                "+" => PatternPart::Any,
                "" => return Err(format!("{pattern:?} has an empty segment")),
                _ if part.contains(['+', '#', '{', '}']) => {
                    return Err(format!(
                        "segment {part:?} of {pattern:?} is not literal, `+`, `{{meter_id}}` or `{{format}}`"
                    ))
                }
                _ => PatternPart::Literal(part.to_string()),
            });
        }
        let count = |s: &PatternPart| segments.iter().filter(|x| *x == s).count();
        if count(&PatternPart::MeterId) != 1 {
            return Err(format!("{pattern:?} must have `{{meter_id}}` once"));
        }
        let fixed_format = match (count(&PatternPart::Format), format) {
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
                PatternPart::Literal(text) => text.as_str(),
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
                PatternPart::Literal(text) if text != part => return None,
                PatternPart::MeterId => meter_id = Some(*part),
                PatternPart::Format => format = Some(*part),
                _ => {}
            }
        }
        // An id the pipeline would refuse stays under its own topic, so the dead letter
        // names the topic the broker had. (A topic name the broker delivers has no wildcards.)
        let (meter_id, format) = (meter_id?, format?);
        if !is_valid_meter_id(meter_id) {
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

    /// Checks what the types alone do not (the error names the key, `bridge[N].KEY`), and
    /// reads what the client needs: the endpoint, the topic pattern and, for `mqtts://`, the
    /// TLS settings (the files read once, here). [`start`] takes what it prepared.
    pub fn prepare(&self, index: usize) -> Result<Prepared, IngestError> {
        let key = |k: &str| format!("bridge[{index}].{k}");
        let endpoint = parse_url(&self.url).map_err(|e| IngestError::config(key("url"), e))?;
        let pattern = TopicPattern::parse(&self.topic, &self.format)
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
        crate::error::positive(&key("receive_maximum"), self.receive_maximum.into())?;
        if !(5..=65_535).contains(&self.keep_alive_s) {
            return Err(IngestError::config(
                key("keep_alive_s"),
                "must be 5 to 65535 seconds",
            ));
        }
        if self.session_expiry_s == 0 {
            return Err(IngestError::config(
                key("session_expiry_s"),
                "must be greater than 0: the broker keeps what meterflow has not acknowledged in the session, across a restart",
            ));
        }
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
        if self.client_id.len() > 256 || self.client_id.starts_with(char::is_whitespace) {
            return Err(IngestError::config(
                key("client_id"),
                "must be at most 256 bytes, not starting with a space",
            ));
        }
        if endpoint.tls && endpoint.host.starts_with('[') {
            return Err(IngestError::config(
                key("url"),
                "mqtts:// to an IPv6 address is not supported (the TLS server name cannot be one): use the broker's DNS name",
            ));
        }
        // A bad file stops start-up with its key named.
        let tls = endpoint
            .tls
            .then(|| tls_client(self).map_err(|(k, e)| IngestError::config(key(k), e)))
            .transpose()?;
        Ok(Prepared {
            endpoint,
            pattern,
            tls,
        })
    }

    /// In log lines and the `bridge` label of the metrics: `name`, else the broker's address.
    fn display_name(&self, endpoint: &Endpoint) -> String {
        if self.name.is_empty() {
            format!("{}:{}", endpoint.host, endpoint.port)
        } else {
            self.name.clone()
        }
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

/// A checked [`BridgeConfig`], as the client takes it.
pub struct Prepared {
    endpoint: Endpoint,
    pattern: TopicPattern,
    tls: Option<rustls::ClientConfig>,
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
    subscribed: metrics::Gauge,
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
            subscribed: metrics::gauge!("meterflow_bridge_subscribed", "bridge" => name.clone()),
            received: metrics::counter!("meterflow_received_total", "source" => "bridge"),
            acked: metrics::counter!("meterflow_bridge_acked_total", "bridge" => name.clone()),
            not_acked: metrics::counter!("meterflow_bridge_not_acked_total", "bridge" => name.clone()),
            pending_acks: metrics::gauge!("meterflow_bridge_pending_acks", "bridge" => name.clone()),
            reconnects: metrics::counter!("meterflow_bridge_reconnects_total", "bridge" => name.clone()),
            unmatched: metrics::counter!("meterflow_bridge_unmatched_topics_total", "bridge" => name),
        }
    }
}

/// A message handed to the WAL, waiting for the WAL's word.
struct AwaitingWal {
    /// The connection it came on: only that connection may acknowledge it (a later one gets
    /// it again from the broker).
    connection: u64,
    /// The message without its topic and payload: an acknowledgement needs its packet id.
    publish: Publish,
    durable: oneshot::Receiver<Durability>,
}

/// The WAL's word on a message, in the order the messages came.
struct Verdict {
    connection: u64,
    publish: Publish,
    durable: bool,
}

/// Waits for the WAL's word on each message, in order, and hands it to the link's loop, which
/// alone acknowledges (so that no acknowledgement is queued for a connection the loop has
/// already given up).
async fn await_durability(
    mut pending: mpsc::UnboundedReceiver<AwaitingWal>,
    verdicts: mpsc::UnboundedSender<Verdict>,
) {
    while let Some(next) = pending.recv().await {
        let durable = matches!(next.durable.await, Ok(Durability::Durable(_)));
        let outcome = Verdict {
            connection: next.connection,
            publish: next.publish,
            durable,
        };
        if verdicts.send(outcome).is_err() {
            return;
        }
    }
}

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After a message the WAL could not take (at its budget until the sinks catch up): how long
/// the bridge stays away before the broker sends it again. MQTT 5 has no way to refuse one
/// message and have it later (a PUBACK with an error code discards it), so the session is
/// resumed, as a meter at the edge comes back after MQTT 5's 0x97.
const WAL_FULL_PAUSE: Duration = Duration::from_secs(5);

/// The one task of a bridge that polls the connection: it takes messages, and it alone
/// queues acknowledgements, each only while the connection its message came on is up.
struct Link {
    name: String,
    metrics: BridgeMetrics,
    client: AsyncClient,
    pattern: TopicPattern,
    subscription: String,
    qos: QoS,
    wal: Sender<Submission>,
    /// Counts connections (CONNACKs).
    connection: u64,
    /// Whether `connection` is up: its CONNACK seen and not lost since. Messages rumqttc
    /// still hands out from a lost connection are not taken (the broker sends them again).
    connected: bool,
    /// Acknowledgements for the current connection that rumqttc's request channel had no
    /// room for yet (should never hold any: see REQUEST_CAPACITY).
    to_ack: VecDeque<Publish>,
    /// Messages handed to the WAL whose outcome has not come back: what the broker has
    /// unacknowledged, at most `receive_maximum` while it keeps to it.
    awaiting: usize,
    receive_maximum: usize,
    /// Whether this connection was warned about a broker that sends more than
    /// `receive_maximum`.
    warned: bool,
    /// Unix ms since when the bridge has been without its subscription; 0 while it holds it.
    unsubscribed_since: Arc<AtomicI64>,
    summary: BridgeSummary,
}

impl Link {
    async fn run(
        mut self,
        mut eventloop: EventLoop,
        mut shutdown: ShutdownSignal,
    ) -> BridgeSummary {
        // Both unbounded, and never awaited by this loop: it must keep polling the event loop,
        // which sends the acknowledgements. Entries are small (a packet id and a channel; the
        // payload is the WAL's), and the broker's flow control bounds them; Mosquitto 2.0.11
        // keeps to the Receive Maximum but sends a resumed session everything it holds at
        // once (`meterflow_bridge_pending_acks` shows it).
        let (to_wait, pending) = mpsc::unbounded_channel::<AwaitingWal>();
        let (outcomes_tx, mut verdicts) = mpsc::unbounded_channel::<Verdict>();
        tokio::spawn(await_durability(pending, outcomes_tx));
        let mut backoff = Duration::from_millis(500);
        // A refused subscription is asked for again on the same connection (what the session
        // still sends is taken and acknowledged meanwhile), with its own backoff.
        let mut subscribe_backoff = Duration::from_millis(500);
        let mut resubscribe_at: Option<Instant> = None;
        'run: loop {
            // One poll of the connection at a time, never cancelled by a WAL outcome or the
            // subscription timer: rumqttc may be connecting or writing a PUBACK inside it.
            let polled = {
                let mut poll = std::pin::pin!(eventloop.poll());
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.stopping() => break 'run,
                        Some(outcome) = verdicts.recv(), if self.connected => {
                            if !self.settle(outcome) {
                                break None;
                            }
                        }
                        () = tokio::time::sleep_until(resubscribe_at.unwrap_or_else(Instant::now)),
                            if resubscribe_at.is_some() && self.connected =>
                        {
                            resubscribe_at = None;
                            self.subscribe();
                        }
                        event = &mut poll => break Some(event),
                    }
                }
            };
            let Some(event) = polled else {
                // The WAL refused a message of this connection: drop it, stay away a while,
                // and the resumed session brings the message again.
                self.disconnected(&mut eventloop);
                tracing::warn!(bridge = %self.name, retry_in_ms = WAL_FULL_PAUSE.as_millis() as u64, "the WAL did not take a message: reconnecting later so that the broker sends it again");
                if sleep_or_stop(WAL_FULL_PAUSE, &mut shutdown).await {
                    break;
                }
                continue;
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    self.connection += 1;
                    self.connected = true;
                    self.warned = false;
                    self.metrics.connected.set(1.0);
                    backoff = Duration::from_millis(500);
                    tracing::info!(bridge = %self.name, session_present = connack.session_present, "bridge connected");
                    // The session may hold the subscription already; subscribing again is
                    // harmless and covers a session the broker dropped.
                    resubscribe_at = None;
                    self.subscribe();
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    let refused = suback
                        .return_codes
                        .iter()
                        .find(|code| !matches!(code, SubscribeReasonCode::Success(_)));
                    match refused {
                        None => {
                            self.set_subscribed(true);
                            subscribe_backoff = Duration::from_millis(500);
                            tracing::info!(bridge = %self.name, subscription = %self.subscription, "bridge subscribed");
                        }
                        Some(reason) => {
                            self.set_subscribed(false);
                            tracing::error!(bridge = %self.name, subscription = %self.subscription, reason = ?reason, retry_in_ms = subscribe_backoff.as_millis() as u64, "the broker refused the subscription (check the bridge's ACL at the broker, and that it has shared subscriptions): asking again");
                            resubscribe_at = Some(Instant::now() + subscribe_backoff);
                            subscribe_backoff = (subscribe_backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if !self.connected {
                        // Read on a connection already given up: the broker sends it again.
                        continue;
                    }
                    if !self.take(publish, &to_wait).await {
                        tracing::error!(bridge = %self.name, "the WAL writer is gone; the bridge stops");
                        break;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => self.acked(),
                Ok(_) => {}
                Err(e) => {
                    self.disconnected(&mut eventloop);
                    tracing::warn!(bridge = %self.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "bridge connection failed");
                    if sleep_or_stop(backoff, &mut shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            self.flush_acks();
        }
        // Stop taking messages, and release the WAL channel. What was handed to the WAL is
        // acknowledged as its outcome comes back, while the connection is polled (the
        // acknowledgements go out through it); then disconnect, the DISCONNECT queued behind
        // them; all by the deadline of the stop. Messages that arrive meanwhile are not
        // acknowledged: the broker keeps them for the session.
        drop(to_wait);
        drop(std::mem::replace(&mut self.wal, flume::bounded(0).0));
        let deadline = shutdown
            .deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(2));
        let finish = async {
            while self.awaiting > 0 && self.connected {
                let polled = {
                    let mut poll = std::pin::pin!(eventloop.poll());
                    loop {
                        tokio::select! {
                            biased;
                            Some(outcome) = verdicts.recv() => {
                                if !self.settle(outcome) {
                                    break None;
                                }
                            }
                            event = &mut poll => break Some(event),
                        }
                    }
                };
                match polled {
                    Some(Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_)))) => self.acked(),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => self.disconnected(&mut eventloop),
                }
                self.flush_acks();
            }
            if self.connected && self.client.try_disconnect().is_ok() {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => self.acked(),
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, finish).await;
        self.metrics.connected.set(0.0);
        self.set_subscribed(false);
        tracing::info!(bridge = %self.name, received = self.summary.received, acked = self.summary.acked, "bridge stopped");
        self.summary
    }

    fn subscribe(&mut self) {
        if let Err(e) = self
            .client
            .try_subscribe(self.subscription.clone(), self.qos)
        {
            tracing::error!(bridge = %self.name, error = %e, "cannot queue the subscription");
        }
    }

    /// Takes the WAL's word on a message: queues its acknowledgement if it is durable and its
    /// connection still up. `false` when the WAL refused a message of the current connection:
    /// the caller then drops the connection, so that the broker sends it again later.
    fn settle(&mut self, outcome: Verdict) -> bool {
        self.awaiting = self.awaiting.saturating_sub(1);
        self.metrics.pending_acks.set(self.awaiting as f64);
        let current = self.connected && outcome.connection == self.connection;
        if outcome.durable && current {
            self.to_ack.push_back(outcome.publish);
            self.flush_acks();
            return true;
        }
        self.metrics.not_acked.increment(1);
        // Here, a message of the connection that is up is one the WAL refused.
        !current
    }

    /// Queues the waiting acknowledgements in rumqttc's request channel, which the event loop
    /// sends in order (or drops, should the connection go first).
    fn flush_acks(&mut self) {
        while let Some(publish) = self.to_ack.front() {
            if self.client.try_ack(publish).is_err() {
                return;
            }
            self.to_ack.pop_front();
        }
    }

    /// A PUBACK went out to the broker.
    fn acked(&mut self) {
        self.summary.acked += 1;
        self.metrics.acked.increment(1);
    }

    fn set_subscribed(&self, subscribed: bool) {
        if subscribed {
            self.unsubscribed_since.store(0, Ordering::Release);
        } else {
            let _ = self.unsubscribed_since.compare_exchange(
                0,
                now_ms(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        self.metrics
            .subscribed
            .set(if subscribed { 1.0 } else { 0.0 });
    }

    /// The connection is lost or given up: rumqttc drops it and the acknowledgements it had
    /// not sent, and so does the link; the next poll connects again.
    fn disconnected(&mut self, eventloop: &mut EventLoop) {
        eventloop.clean();
        // Packets read before the loss and not yet handed out.
        eventloop.state.events.clear();
        self.to_ack.clear();
        if self.connected {
            self.metrics.reconnects.increment(1);
        }
        self.connected = false;
        self.metrics.connected.set(0.0);
        self.set_subscribed(false);
    }

    /// Hands one message to the WAL writer and, for QoS 1, to the durability waiter; `false`
    /// when the writer is gone.
    async fn take(
        &mut self,
        publish: Publish,
        to_wait: &mpsc::UnboundedSender<AwaitingWal>,
    ) -> bool {
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
                content_type,
                ..RawMessage::new(Source::Bridge, topic, publish.payload.clone())
            },
            notify,
            budget: None,
        };
        if self.wal.send_async(submission).await.is_err() {
            return false;
        }
        if let Some(durable) = durable {
            let pending = AwaitingWal {
                connection: self.connection,
                publish: Publish {
                    topic: bytes::Bytes::new(),
                    payload: bytes::Bytes::new(),
                    properties: None,
                    ..publish
                },
                durable,
            };
            self.awaiting += 1;
            self.metrics.pending_acks.set(self.awaiting as f64);
            if to_wait.send(pending).is_err() {
                return false;
            }
            if self.awaiting > 4 * self.receive_maximum && !self.warned {
                self.warned = true;
                tracing::warn!(bridge = %self.name, awaiting = self.awaiting, receive_maximum = self.receive_maximum, "the broker sends far more unacknowledged messages than receive_maximum (a resumed session's backlog at once): they wait for the WAL in memory");
            }
        }
        true
    }
}

/// Sleeps `pause`; `true` if the shutdown began meanwhile.
async fn sleep_or_stop(pause: Duration, shutdown: &mut ShutdownSignal) -> bool {
    tokio::select! {
        _ = shutdown.stopping() => true,
        () = tokio::time::sleep(pause) => shutdown.is_stopping(),
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
        assert_eq!(parse_url("tcp://[::1]").unwrap().host, "[::1]");
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
        good.prepare(0).unwrap();
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
            (
                BridgeConfig {
                    keep_alive_s: 4,
                    ..good.clone()
                },
                "bridge[2].keep_alive_s",
            ),
            (
                BridgeConfig {
                    session_expiry_s: 0,
                    ..good.clone()
                },
                "bridge[2].session_expiry_s",
            ),
            (
                BridgeConfig {
                    url: "mqtts://u:p@broker".into(),
                    tls_ca: Some("/nonexistent/ca.pem".into()),
                    ..good.clone()
                },
                "bridge[2].tls_ca",
            ),
            (
                BridgeConfig::from_url("mqtts://[::1]:8883"),
                "bridge[2].url",
            ),
        ] {
            let e = config.prepare(2).err().unwrap().to_string();
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
