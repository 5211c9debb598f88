//! `meterflow credentials`: the device credential store (import, add, revoke, list): who may
//! connect, and for which meters it may publish.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use meterflow_ingest::credentials::{self, Credential, DlmsIdentity, Glob, Secret};
use meterflow_ingest::Config;

use super::SharedArgs;

#[derive(clap::Args)]
pub struct CredentialsArgs {
    #[command(subcommand)]
    action: CredentialsAction,
}

#[derive(Subcommand)]
pub enum CredentialsAction {
    /// Add or replace credentials from a CSV file with the header meter_id,secret and
    /// optionally publish_for (space-separated meter-id globs, for gateways). Nothing changes
    /// unless every row is valid.
    Import {
        /// The CSV file; `-` reads standard input.
        file: PathBuf,
    },
    /// Write a fleet's credentials CSV (meter_id,secret,publish_for) with a random 128-bit
    /// secret for each of --meters ids PREFIX000000, PREFIX000001, ... (the ids `meterflow
    /// simulate --prefix` uses): for `credentials import` and `simulate --credentials`. The
    /// file is created 0600 and never overwritten.
    Generate {
        /// How many meters.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        meters: u32,
        /// The ids' start.
        #[arg(long, default_value = "sim-")]
        prefix: String,
        /// The CSV file to write.
        #[arg(long)]
        out: PathBuf,
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
        /// A DLMS/COSEM meter's system title, 16 hex digits (its pushes name it; one meter
        /// each).
        #[arg(long, value_name = "HEX")]
        dlms_system_title: Option<String>,
        /// Its global unicast encryption key, 32 hex digits (or the variable, which keeps it
        /// out of the process list and the shell history).
        #[arg(
            long,
            value_name = "HEX",
            env = "METERFLOW_DLMS_EK",
            hide_env_values = true
        )]
        dlms_ek: Option<String>,
        /// Its authentication key, 32 hex digits (or the variable).
        #[arg(
            long,
            value_name = "HEX",
            env = "METERFLOW_DLMS_AK",
            hide_env_values = true
        )]
        dlms_ak: Option<String>,
        /// The `[[dlms.profile]]` its values-only pushes are read by.
        #[arg(long, value_name = "NAME")]
        dlms_profile: Option<String>,
    },
    /// Revoke a device: its secret is forgotten, its certificate refused, its live sessions
    /// closed within seconds.
    Revoke { id: String },
    /// List the devices (never the secrets).
    List,
}

/// Runs one action on the store in the data folder (from `--data-dir`, else the config
/// file, else the default).
pub fn run(shared: &SharedArgs, args: CredentialsArgs) -> anyhow::Result<()> {
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
        CredentialsAction::Generate {
            meters,
            prefix,
            out,
        } => {
            // The first and the last (the longest) ids must be meter ids.
            for id in [
                format!("{prefix}{:06}", 0),
                format!("{prefix}{:06}", meters.saturating_sub(1)),
            ] {
                anyhow::ensure!(
                    meterflow_proto::is_valid_meter_id(&id),
                    "--prefix with --meters: {id:?} is not a meter id (1 to 64 of [A-Za-z0-9._-])"
                );
            }
            let file = create_private(&out)?;
            let mut w = std::io::BufWriter::new(file);
            use std::io::Write as _;
            writeln!(w, "meter_id,secret,publish_for")?;
            for i in 0..meters {
                writeln!(w, "{prefix}{i:06},{},", credentials::generate_secret()?)?;
            }
            w.flush()
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "{meters} credentials written to {} (0600): import them with `meterflow credentials import {}`",
                out.display(),
                out.display()
            );
        }
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
            dlms_system_title,
            dlms_ek,
            dlms_ak,
            dlms_profile,
        } => {
            let text = |o: &Option<String>| o.clone().unwrap_or_default();
            let dlms = DlmsIdentity::parse(
                &text(&dlms_system_title),
                &text(&dlms_ek),
                &text(&dlms_ak),
                &text(&dlms_profile),
            )
            .map_err(|e| anyhow::anyhow!("--{}", e.replacen('_', "-", 2)))?;
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
                dlms,
            };
            let changes = credentials::update(&data_dir, |store| {
                let c = store
                    .add(&id, credential)
                    .map_err(|e| meterflow_ingest::IngestError::Credentials(e.to_string()))?;
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

/// Creates `path` for secrets: readable by its owner alone, and only if it does not exist.
fn create_private(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).with_context(|| {
        format!(
            "creating {} (an existing file is not overwritten)",
            path.display()
        )
    })
}
