//! A bridge's settings (`[[bridge]]`) and what checking them prepares: the broker's
//! [`Endpoint`] (from the URL), the [`TopicPattern`] that maps the broker's topics to
//! meterflow's, and the TLS settings, in a [`Prepared`] that [`super::start`] takes.

use std::path::PathBuf;

use meterflow_proto::{is_valid_meter_id, Format};
use serde::{Deserialize, Serialize};

use super::tls::tls_client;
use crate::error::positive;
use crate::error::IngestError;

/// One broker meterflow takes messages from.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
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

/// Written by hand so that `password` never reach a log or an error.
impl std::fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field named, without `..`: a new one does not compile until it is shown here
        // (or chosen not to be).
        let BridgeConfig {
            url,
            name,
            username,
            password,
            client_id,
            topic,
            format,
            share_group,
            qos,
            session_expiry_s,
            receive_maximum,
            max_packet_bytes,
            keep_alive_s,
            tls_ca,
            tls_cert,
            tls_key,
        } = self;
        f.debug_struct("BridgeConfig")
            // The URL may carry the login (`mqtt://USER:PASSWORD@HOST`).
            .field("url", &url_without_password(url))
            .field("name", name)
            .field("username", username)
            .field("password", &meterflow_storage::redacted(password))
            .field("client_id", client_id)
            .field("topic", topic)
            .field("format", format)
            .field("share_group", share_group)
            .field("qos", qos)
            .field("session_expiry_s", session_expiry_s)
            .field("receive_maximum", receive_maximum)
            .field("max_packet_bytes", max_packet_bytes)
            .field("keep_alive_s", keep_alive_s)
            .field("tls_ca", tls_ca)
            .field("tls_cert", tls_cert)
            .field("tls_key", tls_key)
            .finish()
    }
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
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Written by hand so that `password` never reach a log or an error.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field named, without `..`: a new one does not compile until it is shown here.
        let Endpoint {
            host,
            port,
            tls,
            username,
            password,
        } = self;
        f.debug_struct("Endpoint")
            .field("host", host)
            .field("port", port)
            .field("tls", tls)
            .field("username", username)
            .field(
                "password",
                &password.as_deref().map(meterflow_storage::redacted),
            )
            .finish()
    }
}

/// Reads `mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT]` (also `tcp://`, `ssl://`); an error names
/// `key`, the config key the URL came from.
pub fn parse_url(text: &str, key: &str) -> Result<Endpoint, IngestError> {
    let invalid = |reason: String| IngestError::config(key, reason);
    let url = url::Url::parse(text).map_err(|e| invalid(format!("not a URL ({e})")))?;
    let tls = match url.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(invalid(format!(
                "scheme {other}:// is not mqtt:// or mqtts://"
            )))
        }
    };
    // An IPv6 address keeps its brackets: rumqttc joins host and port with a colon.
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host.to_string(),
        _ => return Err(invalid("has no host".into())),
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(invalid(
            "must not have a path or query: the topic is the `topic` key".into(),
        ));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| invalid("the login is not UTF-8 once percent-decoded".into()))
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
    meterflow_storage::url_without_password(text)
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
    /// `pattern` as the `topic` key takes it; `format` is the `format` key. An error names
    /// `key`, the config key of the topic.
    pub fn parse(pattern: &str, format: &str, key: &str) -> Result<TopicPattern, IngestError> {
        let invalid = |reason: String| IngestError::config(key, reason);
        let mut segments = Vec::new();
        for part in pattern.split('/') {
            segments.push(match part {
                "{meter_id}" => PatternPart::MeterId,
                "{format}" => PatternPart::Format,
                "+" => PatternPart::Any,
                "" => return Err(invalid(format!("{pattern:?} has an empty segment"))),
                _ if part.contains(['+', '#', '{', '}']) => {
                    return Err(invalid(format!(
                        "segment {part:?} of {pattern:?} is not literal, `+`, `{{meter_id}}` or `{{format}}`"
                    )))
                }
                _ => PatternPart::Literal(part.to_string()),
            });
        }
        let count = |s: &PatternPart| segments.iter().filter(|x| *x == s).count();
        if count(&PatternPart::MeterId) != 1 {
            return Err(invalid(format!(
                "{pattern:?} must have `{{meter_id}}` once"
            )));
        }
        let fixed_format = match (count(&PatternPart::Format), format) {
            (0, "") => {
                return Err(invalid(format!(
                    "{pattern:?} has no `{{format}}`: set bridge `format` (pb, json, senml, senml-cbor, dsmr or status)"
                )))
            }
            (0, f) => {
                if f != "status" {
                    f.parse::<Format>().map_err(|e| invalid(e.to_string()))?;
                }
                Some(f.to_string())
            }
            (1, "") => None,
            (1, _) => {
                return Err(invalid(format!(
                    "{pattern:?} has `{{format}}`: leave `format` empty"
                )))
            }
            _ => {
                return Err(invalid(format!(
                    "{pattern:?} has `{{format}}` more than once"
                )))
            }
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
    /// TLS settings (the files read once, here). [`super::start`] takes what it prepared.
    pub fn prepare(&self, index: usize) -> Result<Prepared, IngestError> {
        let key = |k: &str| format!("bridge[{index}].{k}");
        let endpoint = parse_url(&self.url, &key("url"))?;
        let pattern = TopicPattern::parse(&self.topic, &self.format, &key("topic"))?;
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
        positive(&key("receive_maximum"), self.receive_maximum.into())?;
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
    pub(super) fn display_name(&self, endpoint: &Endpoint) -> String {
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
    pub(super) endpoint: Endpoint,
    pub(super) pattern: TopicPattern,
    pub(super) tls: Option<rustls::ClientConfig>,
}
