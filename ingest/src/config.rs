//! meterflow's configuration: one TOML file whose every key has a default that works on a
//! fresh machine. `deploy/meterflow.example.toml` documents each key. Unknown keys are
//! errors, and [`Config::validate`] names the key of any bad value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meterflow_billing::{BillingConfig, BillingError};
use meterflow_storage::clickhouse::ClickHouseConfig;
use meterflow_storage::{BatchConfig, ParquetConfig, WalConfig};
use meterflow_vee::{VeeConfig, VeeError};
use serde::{Deserialize, Serialize};

pub use crate::devices::DevicesConfig;
pub use crate::edge::bridge::BridgeConfig;
pub use crate::edge::coap::CoapConfig;
pub use crate::edge::dlms::DlmsConfig;
pub use crate::edge::mqtt::MqttConfig;
use crate::error::positive;
use crate::error::IngestError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where Parquet files, dead letters and local state are kept.
    pub data_dir: PathBuf,
    pub node: NodeConfig,
    pub mqtt: MqttConfig,
    pub coap: CoapConfig,
    /// The DLMS/COSEM wrapper listener (IEC 62056-4-7, TCP and UDP); off by default.
    pub dlms: DlmsConfig,
    pub http: HttpConfig,
    pub devices: DevicesConfig,
    pub pipeline: PipelineConfig,
    pub batch: BatchConfig,
    pub parquet: ParquetConfig,
    pub wal: WalConfig,
    pub clickhouse: ClickHouseConfig,
    /// How `meterflow query billing` reads registers: the zone of billing days, the longest
    /// gap interpolated across, rollovers.
    pub billing: BillingConfig,
    /// Validation, estimation and editing: every rule's and method's parameters
    /// (`meterflow vee`).
    pub vee: VeeConfig,
    /// Brokers to take messages from (`[[bridge]]` sections), none by default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bridge: Vec<BridgeConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            node: NodeConfig::default(),
            mqtt: MqttConfig::default(),
            coap: CoapConfig::default(),
            dlms: DlmsConfig::default(),
            http: HttpConfig::default(),
            devices: DevicesConfig::default(),
            pipeline: PipelineConfig::default(),
            batch: BatchConfig::default(),
            parquet: ParquetConfig::default(),
            wal: WalConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            billing: BillingConfig::default(),
            vee: VeeConfig::default(),
            bridge: Vec::new(),
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The page, the API, `/health`, `/ready` and `/metrics`. Loopback by default.
    pub listen: SocketAddr,
    /// Bearer token for the API, the page's data and `/metrics` (`Authorization: Bearer
    /// TOKEN`); `/health` and `/ready` stay open (`/ready` tells only its status without the
    /// token). Empty: no token, allowed on loopback only.
    pub token: String,
    /// Open connections at most (about 16 KiB each at most: see `max_header_bytes`). At the cap
    /// a new connection makes room by closing the one that has waited longest without a
    /// request being answered (idle, or still sending its head); it is closed at accept only
    /// when every open one is answering a request. Each counted.
    pub max_connections: usize,
    /// A request's head (request line and headers) must arrive whole within this, counted from
    /// the connection's accept for its first request and from the first byte of each later one.
    pub header_read_timeout_ms: u64,
    /// A connection on which nothing is read or written for this long while no request is
    /// being answered (a keep-alive connection between requests, a client that stopped reading
    /// its answer) is closed.
    pub idle_timeout_ms: u64,
    /// A request head larger than this (request line and headers) is answered 431 and the
    /// connection closed; it is also what a connection buffers at most while reading a head.
    pub max_header_bytes: usize,
    /// At the stop, the open connections get this long to finish the answers under way (and
    /// their clients to read them); whatever is still open then is closed.
    pub shutdown_max_ms: u64,
}

/// Written by hand so that `token` never reach a log or an error.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field named, without `..`: a new one does not compile until it is shown here
        // (or chosen not to be).
        let HttpConfig {
            listen,
            token,
            max_connections,
            header_read_timeout_ms,
            idle_timeout_ms,
            max_header_bytes,
            shutdown_max_ms,
        } = self;
        f.debug_struct("HttpConfig")
            .field("listen", listen)
            .field("token", &meterflow_storage::redacted(token))
            .field("max_connections", max_connections)
            .field("header_read_timeout_ms", header_read_timeout_ms)
            .field("idle_timeout_ms", idle_timeout_ms)
            .field("max_header_bytes", max_header_bytes)
            .field("shutdown_max_ms", shutdown_max_ms)
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: String::new(),
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_header_bytes: 16_384,
            shutdown_max_ms: 5_000,
        }
    }
}

/// The longest `http.header_read_timeout_ms`, `http.idle_timeout_ms` and
/// `http.shutdown_max_ms` taken: a day.
const HTTP_TIMEOUT_MAX_MS: u64 = 86_400_000;
/// The range of `http.max_header_bytes`: a browser's request with its token and cookies
/// needs a few KiB; above a MiB a held connection costs more than the cap is meant to allow.
const HTTP_HEADER_BYTES: std::ops::RangeInclusive<usize> = 4096..=1_048_576;

/// Between the WAL writer and the decoder, and shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Messages waiting between the WAL writer and the decoder at most. When full, messages
    /// are in the WAL only and the pipeline reads them from there.
    pub queue_capacity: usize,
    /// No longer used (the former broker drain); accepted with a warning.
    #[serde(skip_serializing)]
    pub shutdown_quiet_ms: Option<u64>,
    /// On SIGTERM, connections get at most this long to answer the publishes they read.
    pub shutdown_max_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_capacity: 65_536,
            shutdown_quiet_ms: None,
            shutdown_max_ms: 10_000,
        }
    }
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, IngestError> {
        let text = std::fs::read_to_string(path).map_err(|source| IngestError::Io {
            action: "reading config",
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Config, IngestError> {
        toml::from_str(text).map_err(|e| {
            let key = match e.span() {
                Some(span) => key_at(text, span.start),
                None => "(file)".to_string(),
            };
            IngestError::Config {
                key,
                reason: e.message().to_string(),
            }
        })
    }

    /// Keys that are read but no longer do anything (set in an older config file).
    pub fn deprecated_keys(&self) -> Vec<&'static str> {
        [
            (
                "mqtt.router_segment_bytes",
                self.mqtt.router_segment_bytes.is_some(),
            ),
            (
                "mqtt.router_segment_count",
                self.mqtt.router_segment_count.is_some(),
            ),
            (
                "pipeline.shutdown_quiet_ms",
                self.pipeline.shutdown_quiet_ms.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// Checks every value that the types alone do not: each section checks its own, and the
    /// error names the key. What the checks prepare (a bridge's endpoint, topic pattern and
    /// TLS settings) comes with the config in the [`ValidConfig`] that the runtime starts from.
    pub fn validate(&self) -> Result<ValidConfig, IngestError> {
        self.node.validate()?;
        self.mqtt.validate()?;
        self.coap.validate()?;
        self.dlms.validate()?;
        self.http.validate()?;
        self.devices.validate()?;
        self.pipeline.validate()?;
        self.batch.validate()?;
        self.parquet.validate()?;
        self.wal.validate()?;
        self.clickhouse.validate()?;
        self.billing.validate().map_err(|e| match e {
            BillingError::Config { key, reason } => IngestError::config(key, reason),
            other => IngestError::config("billing.timezone", other.to_string()),
        })?;
        self.vee.params().map_err(|e| match e {
            VeeError::Config { key, reason } => IngestError::config(key, reason),
        })?;
        let bridges = self
            .bridge
            .iter()
            .enumerate()
            .map(|(index, bridge)| bridge.prepare(index))
            .collect::<Result<_, _>>()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(IngestError::config("data_dir", "must not be empty"));
        }
        Ok(ValidConfig {
            config: self.clone(),
            bridges,
        })
    }
}

/// A [`Config`] that passed [`Config::validate`], with what its checks prepared: the one
/// thing [`crate::runtime::start`] takes. Only `validate` makes one.
pub struct ValidConfig {
    config: Config,
    /// One per `[[bridge]]`, in order.
    bridges: Vec<crate::edge::bridge::Prepared>,
}

impl ValidConfig {
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The config, and each `[[bridge]]` with what its check prepared.
    pub(crate) fn into_parts(
        self,
    ) -> (
        Config,
        Vec<(
            crate::edge::bridge::BridgeConfig,
            crate::edge::bridge::Prepared,
        )>,
    ) {
        let bridges = self
            .config
            .bridge
            .iter()
            .cloned()
            .zip(self.bridges)
            .collect();
        (self.config, bridges)
    }
}

impl std::fmt::Debug for ValidConfig {
    /// Names no value: the config holds secrets (passwords, the HTTP token).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidConfig")
            .field("bridges", &self.bridges.len())
            .finish_non_exhaustive()
    }
}

/// This process among the nodes of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The node's name (1 to 64 of `[A-Za-z0-9._-]`): in the names of its Parquet and
    /// dead-letter files, so that many nodes can write into one shared archive, and in its log
    /// lines. Empty: a single node (a node then treats every leftover file as its own).
    pub id: String,
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), IngestError> {
        let ok = self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(IngestError::config(
                "node.id",
                "must be at most 64 characters of [A-Za-z0-9._-]",
            ));
        }
        Ok(())
    }
}

impl HttpConfig {
    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), IngestError> {
        if self.token.is_empty() && !self.listen.ip().is_loopback() {
            return Err(IngestError::config(
                "http.token",
                format!(
                    "must be set when http.listen ({}) is not a loopback address: the API shows every meter's data",
                    self.listen
                ),
            ));
        }
        if !self.token.is_empty()
            && (self.token.len() < 16 || !self.token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(IngestError::config(
                "http.token",
                "must be at least 16 printable ASCII characters without spaces",
            ));
        }
        positive("http.max_connections", self.max_connections as u64)?;
        for (key, ms) in [
            ("http.header_read_timeout_ms", self.header_read_timeout_ms),
            ("http.idle_timeout_ms", self.idle_timeout_ms),
            ("http.shutdown_max_ms", self.shutdown_max_ms),
        ] {
            positive(key, ms)?;
            if ms > HTTP_TIMEOUT_MAX_MS {
                return Err(IngestError::config(
                    key,
                    format!("must be at most {HTTP_TIMEOUT_MAX_MS} (a day)"),
                ));
            }
        }
        if !HTTP_HEADER_BYTES.contains(&self.max_header_bytes) {
            return Err(IngestError::config(
                "http.max_header_bytes",
                format!(
                    "must be {} to {}",
                    HTTP_HEADER_BYTES.start(),
                    HTTP_HEADER_BYTES.end()
                ),
            ));
        }
        Ok(())
    }
}

impl PipelineConfig {
    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), IngestError> {
        positive("pipeline.queue_capacity", self.queue_capacity as u64)?;
        positive("pipeline.shutdown_max_ms", self.shutdown_max_ms)
    }
}

/// The dotted key whose value starts at byte `offset`, with its line: `mqtt.listen (line 2)`.
fn key_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let section = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match (line.split_once('='), section) {
        (Some((key, _)), Some(section)) => format!("{section}.{} (line {line_no})", key.trim()),
        (Some((key, _)), None) => format!("{} (line {line_no})", key.trim()),
        (None, _) => format!("line {line_no}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    /// Issue 20 review, L1: a `{:?}` of the config (a panic message, a debug log) showed the
    /// ClickHouse password, the API token and the bridges' passwords.
    #[test]
    fn debug_output_hides_every_secret() {
        let c = Config::from_toml(
            "[http]\ntoken = \"tok-hunter2\"\n\
             [clickhouse]\nurl = \"http://127.0.0.1:8123\"\nuser = \"ingest\"\npassword = \"ch-hunter2\"\n\
             [[bridge]]\nurl = \"mqtt://broker:1883\"\nusername = \"mf\"\npassword = \"br-hunter2\"\n",
        )
        .unwrap();
        for shown in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert_eq!(shown.matches("<redacted>").count(), 3, "{shown}");
            // The rest is still there to debug with.
            assert!(
                shown.contains("ingest") && shown.contains("broker:1883"),
                "{shown}"
            );
            // Every field of the hand-written ones.
            assert!(shown.contains("shutdown_max_ms"), "{shown}");
        }
        // Passwords in the URLs: before the host, and as ClickHouse's ?password=.
        for (ch_url, bridge_url) in [
            (
                "http://ingest:ch-hunter2@127.0.0.1:8123",
                "mqtt://mf:br-hunter2@broker:1883",
            ),
            (
                "http://127.0.0.1:8123/?user=ingest&password=ch-hunter2",
                "mqtts://mf:br-hunter2@broker:8883",
            ),
        ] {
            let c = Config::from_toml(&format!(
                "[clickhouse]\nurl = \"{ch_url}\"\n[[bridge]]\nurl = \"{bridge_url}\"\n"
            ))
            .unwrap();
            let endpoint = crate::edge::bridge::parse_url(bridge_url, "bridge.url").unwrap();
            assert_eq!(endpoint.password.as_deref(), Some("br-hunter2"));
            for shown in [format!("{c:?}"), format!("{c:#?}"), format!("{endpoint:?}")] {
                assert!(!shown.contains("hunter2"), "{shown}");
                assert!(shown.contains("broker"), "{shown}");
            }
        }
        // Unset secrets show as unset.
        let shown = format!("{:?}", Config::default());
        assert!(!shown.contains("<redacted>"), "{shown}");
    }
    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let c = Config::from_toml("data_dir = \"/var/lib/meterflow\"\n[batch]\nmax_rows = 10\n")
            .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/meterflow"));
        assert_eq!(c.batch.max_rows, 10);
        assert_eq!(c.batch.max_age_ms, BatchConfig::default().max_age_ms);
        assert_eq!(c.mqtt, MqttConfig::default());
    }

    #[test]
    fn keys_of_the_former_broker_are_still_read() {
        let c = Config::from_toml(
            "[mqtt]\nrouter_segment_bytes = 1048576\nrouter_segment_count = 2\n[pipeline]\nshutdown_quiet_ms = 500\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.deprecated_keys(),
            vec![
                "mqtt.router_segment_bytes",
                "mqtt.router_segment_count",
                "pipeline.shutdown_quiet_ms"
            ]
        );
        assert!(Config::default().deprecated_keys().is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = Config::from_toml("[mqtt]\nlisten_port = 1\n").unwrap_err();
        assert!(e.to_string().contains("listen_port"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[node]\nid = \"mf 1\"\n", "node.id"),
            ("[clickhouse]\ncluster = \"a-b\"\n", "clickhouse.cluster"),
            (
                "[mqtt]\nmax_pending_connections = 0\n",
                "mqtt.max_pending_connections",
            ),
            (
                "[mqtt]\nmax_pending_per_address = 0\n",
                "mqtt.max_pending_per_address",
            ),
            (
                "[mqtt]\nmax_pending_connections = 10\nmax_pending_per_address = 11\n",
                "mqtt.max_pending_per_address",
            ),
        ] {
            let e = Config::from_toml(text).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let mut c = Config::default();
        c.parquet.zstd_level = 40;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("parquet.zstd_level"));
        let mut c = Config::default();
        c.mqtt.max_inflight_bytes = 10;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mqtt.max_inflight_bytes"));
        let mut c = Config::default();
        c.mqtt.tls_listen = Some("127.0.0.1:8883".parse().unwrap());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mqtt.tls_cert"));
        let mut c = Config::default();
        c.mqtt.tls_client_ca = Some("ca.pem".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mqtt.tls_client_ca"));
        let mut c = Config::default();
        c.mqtt.listen_v5 = Some(c.mqtt.listen);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mqtt.listen_v5"));
        let mut c = Config::default();
        c.http.listen = "0.0.0.0:8080".parse().unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("http.token"), "{e}");
        c.http.token = "short".into();
        assert!(c.validate().unwrap_err().to_string().contains("http.token"));
        c.http.token = "a-long-enough-token-1234".into();
        c.validate().unwrap();
        for (text, key) in [
            ("[http]\nmax_connections = 0\n", "http.max_connections"),
            ("[dlms]\nmax_connections = 0\n", "dlms.max_connections"),
            (
                "[dlms]\nmax_pending_per_address = 0\n",
                "dlms.max_pending_per_address",
            ),
            ("[dlms]\nmax_apdu_bytes = 0\n", "dlms.max_apdu_bytes"),
            ("[dlms]\nmax_apdu_bytes = 65536\n", "dlms.max_apdu_bytes"),
            ("[dlms]\nmax_connections = 65537\n", "dlms.max_connections"),
            (
                "[dlms]\nmax_inflight_bytes = 8199\n",
                "dlms.max_inflight_bytes",
            ),
            // Round 4: one frame's room is not enough; every pending connection's is needed
            // (1025 × 8200 with the defaults).
            (
                "[dlms]\nmax_inflight_bytes = 8404999\n",
                "dlms.max_inflight_bytes",
            ),
            (
                "[dlms]\nmax_pending_connections = 65537\n",
                "dlms.max_pending_connections",
            ),
            (
                "[dlms]\nmax_pending_connections = 4\nmax_pending_per_address = 5\n",
                "dlms.max_pending_per_address",
            ),
            (
                "[dlms]\nmax_inflight_bytes = 4294967296\n",
                "dlms.max_inflight_bytes",
            ),
            ("[dlms]\nframe_timeout_s = 0\n", "dlms.frame_timeout_s"),
            ("[dlms]\nframe_timeout_s = 3601\n", "dlms.frame_timeout_s"),
            ("[dlms]\nidle_timeout_s = 0\n", "dlms.idle_timeout_s"),
            ("[dlms]\nidle_timeout_s = 86401\n", "dlms.idle_timeout_s"),
            ("[dlms]\nudp_buffer_bytes = 1024\n", "dlms.udp_buffer_bytes"),
            (
                "[dlms]\nplaintext_meter_prefix = \"a b\"\n",
                "dlms.plaintext_meter_prefix",
            ),
            (
                "[dlms]\nplaintext_meter_prefix = \"abcdefghijklmnopqrstuvwxyz\"\n",
                "dlms.plaintext_meter_prefix",
            ),
            (
                "[http]\nheader_read_timeout_ms = 0\n",
                "http.header_read_timeout_ms",
            ),
            ("[http]\nidle_timeout_ms = 0\n", "http.idle_timeout_ms"),
            ("[http]\nshutdown_max_ms = 0\n", "http.shutdown_max_ms"),
            (
                "[http]\nshutdown_max_ms = 86400001\n",
                "http.shutdown_max_ms",
            ),
            (
                "[http]\nidle_timeout_ms = 86400001\n",
                "http.idle_timeout_ms",
            ),
            ("[http]\nmax_header_bytes = 1024\n", "http.max_header_bytes"),
            (
                "[http]\nmax_header_bytes = 2000000\n",
                "http.max_header_bytes",
            ),
        ] {
            let e = Config::from_toml(text).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        let e = Config::from_toml("[mqtt]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(e.to_string().contains("`mqtt.listen (line 2)`"), "{e}");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/meterflow.example.toml");

    #[test]
    fn the_example_bridge_documents_every_key() {
        // The [[bridge]] block is commented out (there is none by default): uncommented, it
        // must be a valid bridge whose keys are all of BridgeConfig's.
        let block = EXAMPLE
            .split("# [[bridge]]")
            .nth(1)
            .expect("a commented [[bridge]] block");
        let mut text = String::from("[[bridge]]\n");
        for line in block.lines() {
            if let Some(code) = line.strip_prefix("# ") {
                if !code.starts_with('#') {
                    text.push_str(code);
                    text.push('\n');
                }
            }
        }
        let config = Config::from_toml(&text).unwrap();
        // The TLS files are the example's paths, not on this machine: they are read, and
        // missing, then the rest is valid without them.
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("bridge[0].tls_ca"), "{e}");
        let bridge = &config.bridge[0];
        assert!(bridge.tls_ca.is_some() && bridge.tls_cert.is_some() && bridge.tls_key.is_some());
        let mut without_files = config.clone();
        for bridge in &mut without_files.bridge {
            (bridge.tls_ca, bridge.tls_cert, bridge.tls_key) = (None, None, None);
            bridge.url = bridge.url.replace("mqtts://", "mqtt://");
        }
        without_files.validate().unwrap();
        let defaults = toml::to_string(&BridgeConfig::default()).unwrap();
        for line in defaults.lines() {
            let key = line.split(" = ").next().unwrap();
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "bridge {key} is not in the example config"
            );
        }
    }

    #[test]
    fn the_example_push_profile_is_valid_and_shows_every_key() {
        // The [[dlms.profile]] block is commented out (there is none by default): uncommented,
        // it must be a valid profile that sets every key of ProfileConfig.
        let block = EXAMPLE
            .split("# [[dlms.profile]]")
            .nth(1)
            .expect("a commented [[dlms.profile]] block")
            .split("\n\n")
            .next()
            .unwrap();
        let mut text = String::from("[[dlms.profile]]\n");
        for line in block.lines() {
            if let Some(code) = line.strip_prefix("# ") {
                if !code.starts_with('#') {
                    text.push_str(code);
                    text.push('\n');
                }
            }
        }
        let config = Config::from_toml(&text).unwrap();
        let profiles = config.dlms.push_profiles().unwrap();
        let chosen = profiles.choose(None, Some(b"KFM\0\0\0\0\x01")).unwrap();
        assert_eq!(chosen.profile.map(|p| p.objects.len()), Some(4));
        let shown = toml::to_string(&config.dlms.profiles[0]).unwrap();
        for key in ["name", "manufacturers", "timezone", "objects"] {
            assert!(
                shown.contains(&format!("{key} = ")) || shown.contains(&format!("[[{key}]]")),
                "{key}: {shown}"
            );
        }
    }

    #[test]
    fn the_example_config_states_the_defaults() {
        assert_eq!(Config::from_toml(EXAMPLE).unwrap(), Config::default());
    }

    #[test]
    fn the_example_config_documents_every_key() {
        let defaults = toml::to_string(&Config::default()).unwrap();
        let mut section = String::new();
        for line in defaults.lines() {
            if line.starts_with('[') {
                section = line.to_string();
                assert!(
                    EXAMPLE.contains(&section),
                    "{section} is not in the example config"
                );
            } else if let Some((key, _)) = line.split_once(" = ") {
                // From the section's header to the next header.
                let scope = if section.is_empty() {
                    EXAMPLE.split("\n[").next().unwrap_or("")
                } else {
                    let rest = EXAMPLE.split(&section).nth(1).unwrap_or("");
                    rest.split("\n[").next().unwrap_or("")
                };
                let documented = scope.lines().any(|l| l.starts_with(&format!("{key} = ")));
                assert!(documented, "{section} {key} is not in the example config");
            }
        }
    }
}

/// An optional listener as a log line shows it: its address, or `off`.
pub fn listener_shown(listen: &Option<std::net::SocketAddr>) -> String {
    listen.map_or_else(|| "off".to_string(), |a| a.to_string())
}
