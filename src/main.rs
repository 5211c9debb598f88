//! `meterflow`: the command line. Parses flags, environment and config file into one
//! [`Config`], sets up logging, and runs a subcommand.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meterflow_ingest::Config;
use meterflow_proto::Format;
use meterflow_simulate::{self as simulate, Shape};

#[derive(Parser)]
#[command(
    name = "meterflow",
    version,
    about = "Smart-meter telemetry ingestion: MQTT and CoAP in, Parquet and ClickHouse out."
)]
struct Cli {
    #[command(flatten)]
    shared: SharedArgs,
    #[command(subcommand)]
    command: Command,
}

/// The flags every subcommand that reads the config understands, before or after its name
/// (`meterflow --clickhouse-url URL query ...` and `meterflow query ... --clickhouse-url URL`).
#[derive(clap::Args)]
struct SharedArgs {
    /// TOML config file; every key is optional (see deploy/meterflow.example.toml).
    #[arg(long, env = "METERFLOW_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Where Parquet files, the WAL, dead letters and state are kept [default ./data]
    #[arg(long, env = "METERFLOW_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// ClickHouse HTTP URL (e.g. http://127.0.0.1:8123): turns the ClickHouse sink on.
    #[arg(long, env = "METERFLOW_CLICKHOUSE_URL", global = true)]
    clickhouse_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MQTT and CoAP servers, the pipeline and the sinks until SIGTERM or Ctrl-C.
    Serve(ListenArgs),
    /// Print the configuration in effect (defaults, file, environment, flags) as TOML.
    Config(ListenArgs),
    /// Print the rows a payload decodes to, or the error with its position.
    Decode {
        /// pb, json, senml, senml-cbor, dsmr, lwm2m
        #[arg(long, short)]
        format: Format,
        /// The meter the payload is for (as the topic would name it).
        #[arg(long, default_value = "meter")]
        meter: String,
        /// The payload file; `-` reads standard input.
        file: PathBuf,
    },
    /// Run a fleet of simulated meters over MQTT (QoS 1) or CoAP (CON) and report what was acknowledged.
    Simulate(SimulateArgs),
    /// Billing, anomalies and devices from the ClickHouse tables.
    Query(QueryArgs),
    /// The device credential store: who may connect, and for which meters it may publish.
    Credentials(CredentialsArgs),
    /// Load history (meterflow's Parquet tree, CSV exports of a legacy system) into ClickHouse
    /// (with --clickhouse-url) or else into the Parquet files under --data-dir. Resumable: a
    /// rerun skips what an earlier run finished.
    Import(ImportArgs),
    /// Print the ClickHouse DDL for the configured server (or --server-version), or apply it.
    Schema {
        /// Create the database, tables and rollups that are missing on the server.
        #[arg(long)]
        apply: bool,
        /// Print the DDL for this server version (e.g. 18.16, 24.8) without asking a server.
        #[arg(long)]
        server_version: Option<String>,
    },
}

/// The listeners of `serve` (and `config`, which shows what `serve` would run).
#[derive(clap::Args)]
struct ListenArgs {
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
    /// Defaults, then the file, then environment and flags (clap merges those two, flags win);
    /// `listen` are the listener flags of `serve` and `config`. Without them (`query`,
    /// `schema`) only the ClickHouse section is checked: the listeners, and the token that a
    /// non-loopback listener needs, are not theirs to judge.
    fn config(&self, listen: Option<&ListenArgs>) -> anyhow::Result<Config> {
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
        match listen {
            Some(listen) => {
                listen.apply(&mut config)?;
                config.validate()?;
            }
            None => config.clickhouse.validate()?,
        }
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

#[derive(clap::Args)]
struct ImportArgs {
    /// Files and folders; folders are searched for *.parquet and *.csv.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// How CSV columns map to readings, e.g.
    /// meter_id=EAN,channel="1-0:1.8.0",ts=Timestamp,value=Reading,unit="kWh"
    #[arg(long, conflicts_with = "mapping")]
    map: Option<String>,
    /// The CSV mapping as a TOML file (see README, "Importing history").
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// IANA zone of CSV stamps without an offset, e.g. Europe/Amsterdam [default UTC]
    #[arg(long)]
    tz: Option<String>,
    /// Multiply CSV values by this (e.g. 0.001).
    #[arg(long)]
    scale: Option<f64>,
    /// Convert CSV values to this unit from the row's unit (e.g. kWh from Wh).
    #[arg(long)]
    to_unit: Option<String>,
    /// CSV field delimiter (one character, or `tab`) [default: detected from the header]
    #[arg(long)]
    delimiter: Option<String>,
    /// Forget the progress of earlier runs and import every file from its start.
    #[arg(long)]
    restart: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct QueryArgs {
    /// table (aligned, for people), csv or json (for scripts).
    #[arg(long, global = true, value_enum, default_value = "table")]
    format: meterflow::query_cmd::OutputFormat,
    #[command(subcommand)]
    question: Question,
}

#[derive(Subcommand)]
enum Question {
    /// Consumption per meter and register (tariffs 1.8.x, export 2.8.x, gas) in [from, to).
    Billing {
        /// Start, RFC 3339 or YYYY-MM-DD (UTC midnight), inclusive.
        #[arg(long)]
        from: String,
        /// End, exclusive.
        #[arg(long)]
        to: String,
        #[arg(long)]
        meter: Option<String>,
    },
    /// Reverse runs, resets, zero consumption, spikes, missing intervals, stale meters.
    Anomalies {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        meter: Option<String>,
        /// Days an import register may stand still before it is flagged.
        #[arg(long, default_value_t = 3)]
        zero_days: u32,
        /// A step above this many times the meter's median step is a spike.
        #[arg(long, default_value_t = 5.0)]
        spike_factor: f64,
        /// Not heard for this long (e.g. 90m, 2h, 3d, or seconds) is stale.
        #[arg(long, default_value = "24h")]
        stale_after: String,
    },
    /// Last seen and newest values per meter.
    Devices {
        #[arg(long)]
        meter: Option<String>,
        /// Only meters not heard for this long (e.g. 2h).
        #[arg(long)]
        stale_after: Option<String>,
    },
}

#[derive(clap::Args)]
struct CredentialsArgs {
    #[command(subcommand)]
    action: CredentialsAction,
}

#[derive(Subcommand)]
enum CredentialsAction {
    /// Add or replace credentials from a CSV file with the header meter_id,secret and
    /// optionally publish_for (space-separated meter-id globs, for gateways). Nothing changes
    /// unless every row is valid.
    Import {
        /// The CSV file; `-` reads standard input.
        file: PathBuf,
    },
    /// Add or replace one device's credential. Without --secret a random 128-bit secret is
    /// made and printed once.
    Add {
        /// The meter (or gateway) id: the MQTT username, the DTLS PSK identity.
        id: String,
        /// The secret, 16 to 64 printable characters (the MQTT password, the DTLS PSK); `-`
        /// reads it from standard input, which keeps it out of the process list and the shell
        /// history (as does the variable).
        #[arg(long, env = "METERFLOW_NEW_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Meter-id globs a gateway may publish for, e.g. --publish-for 'E00*' (repeatable).
        #[arg(long = "publish-for")]
        publish_for: Vec<String>,
    },
    /// Revoke a device: its secret is forgotten, its certificate refused, its live sessions
    /// closed within seconds.
    Revoke { id: String },
    /// List the devices (never the secrets).
    List,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// The broker, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Post over CoAP to HOST:PORT instead of publishing over MQTT.
    #[arg(long, value_name = "HOST:PORT")]
    coap: Option<String>,
    /// CoAP over DTLS (coaps): each meter handshakes with its id as the PSK identity and its
    /// secret from --credentials as the key, and keeps the session for all its reports.
    #[arg(long, requires_all = ["coap", "credentials"])]
    dtls: bool,
    /// CoAP: a report larger than this many bytes goes in Block1 blocks of this size
    /// (16 to 1024, a power of two).
    #[arg(long, default_value_t = 1024)]
    block_size: usize,
    /// How many meters (one MQTT connection each).
    #[arg(long, default_value_t = 100)]
    meters: usize,
    /// Reports per meter.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// pb, json, senml or dsmr.
    #[arg(long, default_value = "pb")]
    format: Format,
    /// readings: five registers per report; series: a day of 96 quarter-hour values per report.
    #[arg(long, value_enum, default_value = "readings")]
    shape: Shape,
    /// Time of the first report (RFC 3339) [default: so that the last report is now]
    #[arg(long)]
    start: Option<String>,
    /// Seconds between two reports of one meter (in the meter's time, not the real one).
    #[arg(long, default_value_t = 900)]
    interval_s: i64,
    /// Meter ids are PREFIX000000, PREFIX000001, ...
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// Connections open at once.
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Unacknowledged publishes per connection.
    #[arg(long, default_value_t = 10)]
    inflight: u16,
    /// Real pause between two reports of a meter, milliseconds.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Give up on a meter after this many seconds.
    #[arg(long, default_value_t = 120)]
    meter_timeout_s: u64,
    /// A CSV file meter_id,secret (as `meterflow credentials import` takes): each meter logs
    /// in with its own secret.
    #[arg(long, value_name = "FILE.csv")]
    credentials: Option<PathBuf>,
    /// Connect over TLS, trusting the CA certificate in this PEM file.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Connect, publish this many reports, disconnect, and again, as battery meters do
    /// (0: one connection per meter for all its reports).
    #[arg(long, default_value_t = 0)]
    reconnect_every: usize,
    /// Keep each connection open (idle, pinging) this many seconds after its reports.
    #[arg(long, default_value_t = 0)]
    hold_s: u64,
    /// Spread connections over 127.0.0.1 to 127.0.0.N [default: as many as a loopback fleet
    /// above the ephemeral port range needs].
    #[arg(long, default_value_t = 0)]
    source_addrs: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("METERFLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rtc_dtls=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match cli.command {
        Command::Serve(listen) => serve(cli.shared.config(Some(&listen))?),
        Command::Config(listen) => {
            // Secrets are not printed: the output is often pasted into tickets.
            let mut config = cli.shared.config(Some(&listen))?;
            for secret in [&mut config.http.token, &mut config.clickhouse.password]
                .into_iter()
                .chain(config.bridge.iter_mut().map(|b| &mut b.password))
            {
                if !secret.is_empty() {
                    *secret = "(set, not shown)".into();
                }
            }
            for bridge in &mut config.bridge {
                bridge.url = meterflow_ingest::edge::bridge::url_without_password(&bridge.url);
            }
            print!("{}", toml::to_string(&config)?);
            Ok(())
        }
        Command::Decode {
            format,
            meter,
            file,
        } => {
            let payload = if file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf)?;
                buf
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let ok = meterflow::decode_cmd::run(format, &meter, &payload, &mut std::io::stdout())?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Simulate(args) => simulate(args),
        Command::Credentials(args) => credentials(&cli.shared, args),
        Command::Query(args) => query(cli.shared.config(None)?, args),
        Command::Import(args) => import(cli.shared.config(None)?, args),
        Command::Schema {
            apply,
            server_version,
        } => schema(cli.shared.config(None)?, apply, server_version),
    }
}

fn query(config: Config, args: QueryArgs) -> anyhow::Result<()> {
    use meterflow::query_cmd::{parse_duration_s, parse_time_s};
    use meterflow_storage::analytics::{self, AnomalyRules, Period};
    anyhow::ensure!(
        config.clickhouse.enabled(),
        "queries read ClickHouse: give --clickhouse-url or clickhouse.url"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let period = |from: &str, to: &str, meter: Option<String>| -> anyhow::Result<Period> {
        let period = Period {
            from_s: parse_time_s(from).context("--from")?,
            to_s: parse_time_s(to).context("--to")?,
            meter,
        };
        anyhow::ensure!(period.from_s < period.to_s, "--from must be before --to");
        Ok(period)
    };
    let ch = &config.clickhouse;
    let table = match args.question {
        Question::Billing { from, to, meter } => {
            runtime.block_on(analytics::billing(ch, &period(&from, &to, meter)?))?
        }
        Question::Anomalies {
            from,
            to,
            meter,
            zero_days,
            spike_factor,
            stale_after,
        } => {
            let rules = AnomalyRules {
                zero_days,
                spike_factor,
                stale_s: parse_duration_s(&stale_after).context("--stale-after")?,
            };
            runtime.block_on(analytics::anomalies(
                ch,
                &period(&from, &to, meter)?,
                &rules,
            ))?
        }
        Question::Devices { meter, stale_after } => {
            let stale_s = match stale_after {
                Some(text) => parse_duration_s(&text).context("--stale-after")?,
                None => 0,
            };
            runtime.block_on(analytics::devices(ch, meter, stale_s))?
        }
    };
    meterflow::query_cmd::print(&table, args.format, &mut std::io::stdout())?;
    Ok(())
}

fn credentials(shared: &SharedArgs, args: CredentialsArgs) -> anyhow::Result<()> {
    use meterflow_ingest::credentials::{self, Credential, Glob, Secret};
    let data_dir = match (&shared.data_dir, &shared.config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(path)) => {
            Config::from_file(path)
                .with_context(|| format!("config file {}", path.display()))?
                .data_dir
        }
        (None, None) => Config::default().data_dir,
    };
    let store_path = credentials::CredentialStore::path(&data_dir);
    match args.action {
        CredentialsAction::Import { file } => {
            let (input, name): (Box<dyn Read>, String) = if file.as_os_str() == "-" {
                (Box::new(std::io::stdin()), "standard input".into())
            } else {
                let f = std::fs::File::open(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                (Box::new(f), file.display().to_string())
            };
            let changes = credentials::update(&data_dir, |store| {
                let c = store.import_csv(input, &name)?;
                Ok((c, c.added + c.updated > 0))
            })?;
            println!(
                "{}: {} added, {} updated, {} unchanged ({})",
                name,
                changes.added,
                changes.updated,
                changes.unchanged,
                store_path.display()
            );
        }
        CredentialsAction::Add {
            id,
            secret,
            publish_for,
        } => {
            let generated = secret.is_none();
            let secret_text = match secret.as_deref() {
                Some("-") => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the secret from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
                Some(s) => s.to_string(),
                None => credentials::generate_secret()?,
            };
            let credential = Credential {
                secret: Secret::new(&secret_text).map_err(|e| anyhow::anyhow!("--secret: {e}"))?,
                publish_for: publish_for
                    .iter()
                    .flat_map(|g| g.split_whitespace())
                    .map(Glob::new)
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--publish-for: {e}"))?,
            };
            let changes = credentials::update(&data_dir, |store| {
                let c = store
                    .add(&id, credential)
                    .map_err(meterflow_ingest::IngestError::Credentials)?;
                Ok((c, c.unchanged == 0))
            })?;
            let what = if changes.added > 0 {
                "added"
            } else {
                "updated"
            };
            if generated {
                // Printed once, to standard output only: it is stored, never shown again.
                println!("{id} {what}; its secret (shown only now): {secret_text}");
            } else {
                println!("{id} {what} ({})", store_path.display());
            }
        }
        CredentialsAction::Revoke { id } => {
            let was = credentials::update(&data_dir, |store| {
                let was = store.revoke(&id);
                Ok((was, true))
            })?;
            if was {
                println!("{id} revoked; a running meterflow closes its sessions within seconds");
            } else {
                println!("{id} had no active credential; it is now refused (certificates too)");
            }
        }
        CredentialsAction::List => {
            let store = credentials::CredentialStore::load(&data_dir)?;
            let all = store.list();
            let width = all
                .iter()
                .map(|(id, ..)| id.len())
                .max()
                .unwrap_or(8)
                .max(8);
            println!("{:width$}  {:8}  publish_for", "meter_id", "state");
            for (id, globs, active) in &all {
                let globs: Vec<&str> = globs.iter().map(Glob::as_str).collect();
                let state = if *active { "active" } else { "revoked" };
                println!("{id:width$}  {state:8}  {}", globs.join(" "));
            }
            println!(
                "{} active, {} revoked ({})",
                store.len(),
                all.len() - store.len(),
                store_path.display()
            );
        }
    }
    Ok(())
}

fn import(config: Config, args: ImportArgs) -> anyhow::Result<()> {
    use meterflow_import::csv::{parse_delimiter, CsvMapping, CsvOptions};
    use std::io::IsTerminal;
    config.parquet.validate()?;
    let mapping = match (&args.map, &args.mapping) {
        (Some(spec), _) => Some(CsvMapping::parse_spec(spec).context("--map")?),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --mapping {}", path.display()))?;
            Some(
                CsvMapping::from_toml(&text)
                    .with_context(|| format!("--mapping {}", path.display()))?,
            )
        }
        (None, None) => None,
    };
    let csv = match mapping {
        Some(mapping) => {
            let mut options = CsvOptions::from_mapping(mapping);
            if let Some(tz) = &args.tz {
                options.tz = Some(
                    tz.parse()
                        .map_err(|_| anyhow::anyhow!("--tz {tz:?} is not an IANA zone name"))?,
                );
            }
            if let Some(scale) = args.scale {
                options.scale = scale;
            }
            if let Some(unit) = &args.to_unit {
                options.to_unit = Some(unit.clone());
            }
            if let Some(d) = &args.delimiter {
                options.delimiter = Some(parse_delimiter(d).context("--delimiter")?);
            }
            Some(options)
        }
        None if args.tz.is_some()
            || args.scale.is_some()
            || args.to_unit.is_some()
            || args.delimiter.is_some() =>
        {
            anyhow::bail!("--tz, --scale, --to-unit and --delimiter are for CSV files: give --map or --mapping too")
        }
        None => None,
    };
    let options = meterflow_import::ImportOptions {
        paths: args.paths,
        csv,
        restart: args.restart,
        bar: std::io::stderr().is_terminal(),
    };
    let target = meterflow_import::ImportTarget {
        data_dir: config.data_dir,
        node_id: config.node.id,
        parquet: config.parquet,
        clickhouse: config.clickhouse,
    };
    let summary = meterflow_import::run(&target, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "imported {} rows from {} files into {} in {:.1} s ({:.0} rows/s); {} dead letters; {} files done earlier, {} failed",
            summary.rows,
            summary.files,
            summary.target,
            summary.seconds,
            summary.rows as f64 / summary.seconds.max(1e-3),
            summary.dead_letters,
            summary.files_already_done,
            summary.files_failed
        );
    }
    if summary.files_failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn schema(config: Config, apply: bool, server_version: Option<String>) -> anyhow::Result<()> {
    use meterflow_storage::clickhouse::{self as ch, ServerVersion};
    let ch_config = &config.clickhouse;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if apply {
        anyhow::ensure!(
            ch_config.enabled(),
            "--apply needs a server: --clickhouse-url or clickhouse.url"
        );
        let version = runtime.block_on(ch::apply_schema(ch_config, false))?;
        // Tables that were there already must fit the config (a cluster's are Distributed).
        runtime.block_on(ch::table_layout(ch_config))?;
        println!(
            "schema applied to {} (ClickHouse {}.{}), database {}",
            ch_config.url, version.major, version.minor, ch_config.database
        );
        return Ok(());
    }
    let version = match (&server_version, ch_config.enabled()) {
        (Some(text), _) => ServerVersion::parse(text)
            .with_context(|| format!("--server-version {text:?} is not MAJOR.MINOR"))?,
        (None, true) => runtime.block_on(ch::server_version(ch_config))?,
        (None, false) => anyhow::bail!(
            "name the server: --clickhouse-url URL, or --server-version MAJOR.MINOR to print without one"
        ),
    };
    for statement in ch::schema_ddl(
        &ch_config.database,
        version,
        ch_config.ttl_days,
        ch_config.topology(),
    ) {
        println!("{statement};\n");
    }
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let node = config.node.id.clone();
    let summary = runtime.block_on(meterflow_ingest::serve(config, shutdown_signal()))?;
    tracing::info!(
        node,
        received = summary.received,
        rows = summary.pipeline.rows,
        dead_letters = summary.pipeline.dead_letters,
        files = summary.pipeline.files,
        from_wal = summary.pipeline.from_wal,
        mqtt_sessions = summary.mqtt_sessions,
        wal_overflow = summary.wal_overflow,
        coap_requests = summary.coap_requests,
        "meterflow stopped cleanly"
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let (protocol, address, flag) = match &args.coap {
        Some(address) => (simulate::Protocol::Coap, address, "--coap"),
        None => (simulate::Protocol::Mqtt, &args.mqtt, "--mqtt"),
    };
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{flag} takes HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{flag}: the port is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let step_ms = args.interval_s * 1000;
    let start_ms = match &args.start {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .with_context(|| format!("--start {text:?} is not an RFC 3339 time"))?
            .timestamp_millis(),
        None => {
            let now = chrono::Utc::now().timestamp_millis();
            let span = match args.shape {
                Shape::Readings => step_ms,
                Shape::Series => 86_400_000,
            };
            let aligned = now - now.rem_euclid(span.max(1000));
            aligned - span * (args.messages.saturating_sub(1) as i64)
        }
    };
    let plan = simulate::Plan {
        meters: args.meters,
        messages: args.messages,
        format: args.format,
        shape: args.shape,
        start_ms,
        interval_s: args.interval_s,
        prefix: args.prefix,
    };
    let mut mqtt = simulate::mqtt::MqttSetup {
        reconnect_every: args.reconnect_every,
        hold: Duration::from_secs(args.hold_s),
        ..Default::default()
    };
    if let Some(path) = &args.credentials {
        mqtt.credentials = Some(Arc::new(simulate::mqtt::read_credentials(path)?));
    }
    if let Some(ca) = &args.tls_ca {
        mqtt.tls = Some(simulate::mqtt::tls_setup(ca, host)?);
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        mqtt.source_addrs =
            simulate::mqtt::source_addrs(ip, args.concurrency.min(args.meters), args.source_addrs);
    }
    let target = simulate::Target {
        protocol,
        host: host.to_string(),
        port,
        inflight: args.inflight,
        coap_block_size: args.block_size,
        coap_dtls: args.dtls,
        concurrency: args.concurrency,
        pause: Duration::from_millis(args.pause_ms),
        meter_timeout: Duration::from_secs(args.meter_timeout_s),
        mqtt,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(simulate::run(Arc::new(plan), target))?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "simulated {} meters over {:?} ({} {}): sent {} reports ({} rows, {} bytes), acknowledged {} ({} rows) in {:.2} s = {:.0} reports/s; ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} connections ({:.0}/s, CONNACK p50 {:.2} ms, p99 {:.2} ms); {} reconnects, {} retransmissions, {} busy answers, {} meters failed",
            summary.meters,
            protocol,
            summary.format,
            summary.shape,
            summary.messages_sent,
            summary.rows_sent,
            summary.bytes_sent,
            summary.messages_acked,
            summary.rows_acked,
            summary.elapsed_s,
            summary.acked_per_s,
            summary.ack_ms_p50,
            summary.ack_ms_p99,
            summary.ack_ms_max,
            summary.connections,
            summary.connects_per_s,
            summary.connect_ms_p50,
            summary.connect_ms_p99,
            summary.reconnects,
            summary.retransmissions,
            summary.busy_answers,
            summary.meters_failed
        );
    }
    // Sent can exceed acknowledged: a meter that reconnects (MQTT) or is told 5.03 (CoAP)
    // sends again what was not acknowledged.
    if summary.meters_failed > 0 {
        std::process::exit(2);
    }
    Ok(())
}
