//! `meterflow schema`: the ClickHouse DDL for the configured server (or `--server-version`),
//! printed, or applied with `--apply`.

use anyhow::Context;
use meterflow_ingest::Config;
use meterflow_storage::clickhouse::{self as ch, ServerVersion};

#[derive(clap::Args)]
pub struct SchemaArgs {
    /// Create the database, tables and rollups that are missing on the server.
    #[arg(long)]
    apply: bool,
    /// Print the DDL for this server version (e.g. 18.16, 24.8) without asking a server.
    #[arg(long)]
    server_version: Option<String>,
}

/// Prints the DDL, or applies it with `--apply`.
pub fn run(config: Config, args: SchemaArgs) -> anyhow::Result<()> {
    let SchemaArgs {
        apply,
        server_version,
    } = args;
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
            "schema applied to {} (ClickHouse {version}), database {}",
            ch_config.server_for_logs(),
            ch_config.database
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
