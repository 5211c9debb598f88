//! What the subcommands share: the flags that lead to the config ([`SharedArgs`]), the
//! listener flags of `serve` and `config` ([`ListenArgs`]), and how a listener flag reads.
//! Each subcommand is a file here with its flags and its `run`.

pub mod as_billed;
pub mod billing;
pub mod config;
pub mod credentials;
pub mod decode;
pub mod import;
pub mod query;
pub mod questions;
pub mod registry;
pub mod revenue;
pub mod schema;
pub mod serve;
pub mod simulate;
pub mod vee;
pub mod vee_questions;
pub mod vee_schedule;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use meterflow_ingest::{Config, ValidConfig};

/// The flags every subcommand that reads the config understands, before or after its name
/// (`meterflow --clickhouse-url URL query ...` and `meterflow query ... --clickhouse-url URL`).
#[derive(clap::Args)]
pub struct SharedArgs {
    /// TOML config file; every key is optional (see deploy/meterflow.example.toml).
    #[arg(long, env = "METERFLOW_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where Parquet files, the WAL, dead letters and state are kept [default ./data]
    #[arg(long, env = "METERFLOW_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// ClickHouse HTTP(S) URL (e.g. http://127.0.0.1:8123): turns the ClickHouse sink on. A
    /// login in it (http://USER:PASSWORD@HOST, percent-encoded) goes to clickhouse.user and
    /// clickhouse.password; prefer those keys (a command line shows in `ps`).
    #[arg(
        long,
        env = "METERFLOW_CLICKHOUSE_URL",
        global = true,
        hide_env_values = true
    )]
    pub clickhouse_url: Option<String>,
}

/// The listeners of `serve` (and `config`, which shows what `serve` would run).
#[derive(clap::Args)]
pub struct ListenArgs {
    /// Plain MQTT listener, 3.1.1 and 5 [default 127.0.0.1:1883]
    #[arg(long, env = "METERFLOW_MQTT_LISTEN")]
    mqtt_listen: Option<SocketAddr>,
    /// A second plain MQTT listener [default 127.0.0.1:1884] (both versions); `off` for none.
    #[arg(long, env = "METERFLOW_MQTT_V5_LISTEN")]
    mqtt_v5_listen: Option<String>,
    /// MQTT over TLS listener, e.g. 0.0.0.0:8883 (needs mqtt.tls_cert and mqtt.tls_key); `off` for none.
    #[arg(long, env = "METERFLOW_MQTT_TLS_LISTEN")]
    mqtt_tls_listen: Option<String>,
    /// Plain CoAP (and LwM2M) UDP listener [default 127.0.0.1:5683]; `off` turns it off.
    #[arg(long, env = "METERFLOW_COAP_LISTEN")]
    coap_listen: Option<String>,
    /// CoAP over DTLS (coaps, pre-shared keys from the credential store) UDP listener, e.g.
    /// 0.0.0.0:5684; `off` for none.
    #[arg(long, env = "METERFLOW_COAPS_LISTEN")]
    coaps_listen: Option<String>,
    /// DLMS/COSEM wrapper listener (IEC 62056-4-7) on TCP and UDP at this address, e.g.
    /// 0.0.0.0:4059 [default off]; `off` for none.
    #[arg(long, env = "METERFLOW_DLMS_LISTEN")]
    dlms_listen: Option<String>,
    /// HTTP listener for /health, /metrics and the API [default 127.0.0.1:8080]
    #[arg(long, env = "METERFLOW_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Bearer token for the page's data, the API and /metrics; required when --http-listen is
    /// not loopback.
    #[arg(long, env = "METERFLOW_HTTP_TOKEN", hide_env_values = true)]
    http_token: Option<String>,
    /// Also take messages from this broker (mqtt[s]://USER:PASSWORD@HOST:PORT): an MQTT 5
    /// shared subscription to meters/{meter_id}/{format}, acknowledged once in the WAL. Adds
    /// a [[bridge]] with the defaults; repeat for several. A password on the command line
    /// shows in `ps`: prefer the environment variable or the config file.
    #[arg(
        long,
        env = "METERFLOW_MQTT_BRIDGE",
        hide_env_values = true,
        value_name = "URL"
    )]
    mqtt_bridge: Vec<String>,
}

/// A listener flag: an address, or `off` (or empty) for none.
fn address_or_off(value: &str, flag: &str) -> anyhow::Result<Option<SocketAddr>> {
    match value {
        "off" | "" => Ok(None),
        addr => Ok(Some(addr.parse().with_context(|| {
            format!("{flag}: {addr:?} is not an address or `off`")
        })?)),
    }
}

impl SharedArgs {
    /// The whole config of `serve` and `config` (with their listener flags), checked: what the
    /// check prepared comes with it, so `serve` starts from it without checking again.
    pub fn valid_config(&self, listen: &ListenArgs) -> anyhow::Result<ValidConfig> {
        let mut config = self.merged()?;
        listen.apply(&mut config)?;
        Ok(config.validate()?)
    }

    /// The config of `query`, `schema` and `import`: only its ClickHouse section is checked
    /// (the listeners, and the token that a non-loopback listener needs, are not theirs to
    /// judge).
    pub fn config(&self) -> anyhow::Result<Config> {
        let config = self.merged()?;
        config.clickhouse.validate()?;
        Ok(config)
    }

    /// Defaults, then the file, then environment and flags (clap merges those two, flags win).
    fn merged(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)
                .with_context(|| format!("config file {}", path.display()))?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(url) = &self.clickhouse_url {
            config.clickhouse.url = url.clone();
        }
        // A login in the URL is sent as ClickHouse expects, and shown nowhere.
        config.clickhouse.take_url_login()?;
        Ok(config)
    }
}

impl ListenArgs {
    fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        if let Some(addr) = self.mqtt_listen {
            config.mqtt.listen = addr;
        }
        if let Some(v5) = &self.mqtt_v5_listen {
            config.mqtt.listen_v5 =
                address_or_off(v5, "--mqtt-v5-listen / METERFLOW_MQTT_V5_LISTEN")?;
        }
        if let Some(tls) = &self.mqtt_tls_listen {
            config.mqtt.tls_listen =
                address_or_off(tls, "--mqtt-tls-listen / METERFLOW_MQTT_TLS_LISTEN")?;
        }
        if let Some(coap) = &self.coap_listen {
            config.coap.listen = address_or_off(coap, "--coap-listen / METERFLOW_COAP_LISTEN")?;
        }
        if let Some(coaps) = &self.coaps_listen {
            config.coap.dtls_listen =
                address_or_off(coaps, "--coaps-listen / METERFLOW_COAPS_LISTEN")?;
        }
        if let Some(dlms) = &self.dlms_listen {
            config.dlms.listen = address_or_off(dlms, "--dlms-listen / METERFLOW_DLMS_LISTEN")?;
        }
        if let Some(addr) = self.http_listen {
            config.http.listen = addr;
        }
        if let Some(token) = &self.http_token {
            config.http.token = token.clone();
        }
        config.bridge.extend(
            self.mqtt_bridge
                .iter()
                .map(|url| meterflow_ingest::BridgeConfig::from_url(url)),
        );
        Ok(())
    }
}
