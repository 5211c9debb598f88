//! `meterflow`: the command line. Parses flags, environment and config file into one
//! [`Config`](meterflow_ingest::Config), sets up logging, and runs a subcommand: each is a
//! file of [`cli`] with its flags and its `run`.

mod cli;

use clap::{Parser, Subcommand};

use cli::{ListenArgs, SharedArgs};

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

#[derive(Subcommand)]
enum Command {
    /// Run the MQTT and CoAP servers, the pipeline and the sinks until SIGTERM or Ctrl-C.
    Serve(ListenArgs),
    /// Print the configuration in effect (defaults, file, environment, flags) as TOML.
    Config(ListenArgs),
    /// Print the rows a payload decodes to, or the error with its position.
    Decode(cli::decode::DecodeArgs),
    /// Run a fleet of simulated meters over MQTT (QoS 1) or CoAP (CON) and report what was acknowledged.
    Simulate(cli::simulate::SimulateArgs),
    /// Billing, anomalies and devices from the ClickHouse tables.
    Query(cli::query::QueryArgs),
    /// The device credential store: who may connect, and for which meters it may publish.
    Credentials(cli::credentials::CredentialsArgs),
    /// Load history (meterflow's Parquet tree, CSV exports of a legacy system) into ClickHouse
    /// (with --clickhouse-url) or else into the Parquet files under --data-dir. Resumable: a
    /// rerun skips what an earlier run finished.
    Import(cli::import::ImportArgs),
    /// Print the ClickHouse DDL for the configured server (or --server-version), or apply it.
    Schema(cli::schema::SchemaArgs),
    /// Validation and estimation: the twelve rules run over [from, to) (local days), each
    /// exception printed with what was estimated or substituted for it. Reads ClickHouse when a
    /// URL is configured, else the Parquet tree under --data-dir.
    Vee(VeeCommand),
    /// The meter registry: import the utility's CSV (what each meter is, the interval it reads
    /// at, its district, feeder and transformer, its role, validity), list it.
    Registry(cli::registry::RegistryArgs),
}

/// `meterflow vee` and how it prints.
#[derive(clap::Args)]
struct VeeCommand {
    #[command(flatten)]
    args: cli::vee::VeeArgs,
    /// table (aligned, for people), csv or json (for scripts).
    #[arg(long, value_enum, default_value = "table")]
    format: cli::query::OutputFormat,
}

fn main() -> anyhow::Result<()> {
    // Before any file is made: nothing meterflow writes is open to other users.
    meterflow_storage::data_dir::restrict_new_files();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("METERFLOW_LOG").ok()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match cli.command {
        Command::Serve(listen) => cli::serve::run(cli.shared.valid_config(&listen)?),
        Command::Config(listen) => cli::config::run(cli.shared.valid_config(&listen)?.config()),
        Command::Decode(args) => cli::decode::run(&cli.shared.config()?, args),
        Command::Simulate(args) => cli::simulate::run(args),
        Command::Credentials(args) => cli::credentials::run(&cli.shared, args),
        Command::Query(args) => cli::query::run(cli.shared.config()?, args),
        Command::Import(args) => cli::import::run(cli.shared.config()?, args),
        Command::Schema(args) => cli::schema::run(cli.shared.config()?, args),
        Command::Registry(args) => cli::registry::run(&cli.shared.config()?, args),
        Command::Vee(vee) => {
            let table = cli::vee::run(&cli.shared.config()?, vee.args)?;
            cli::query::print_table(&table, &["values"], vee.format)
        }
    }
}

/// The log filter: `METERFLOW_LOG` (else `info`, with rtc-dtls' per-record noise off), and in
/// any case without rustls' warning, with the bytes, of every client that names an IP address
/// in SNI (mosquitto_pub and OpenSSL do when given one: normal for meters), unless
/// `METERFLOW_LOG` says something of rustls itself.
fn log_filter(from_env: Option<String>) -> tracing_subscriber::EnvFilter {
    let mut directives = from_env
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| "info,rtc_dtls=error".to_string());
    if !directives.contains("rustls") {
        directives.push_str(",rustls::msgs::handshake=error");
    }
    tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,rustls::msgs::handshake=error")
    })
}
