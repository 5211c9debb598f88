//! `meterflow config`: the configuration in effect (defaults, file, environment, flags) as
//! TOML, secrets hidden; its flags are those of `serve` ([`ListenArgs`](super::ListenArgs)).

use meterflow_ingest::Config;

/// Prints `config` as TOML.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let mut config = config.clone();
    // Secrets are not printed: the output is often pasted into tickets.
    for secret in [&mut config.http.token, &mut config.clickhouse.password]
        .into_iter()
        .chain(config.bridge.iter_mut().map(|b| &mut b.password))
    {
        if !secret.is_empty() {
            *secret = "(set, not shown)".into();
        }
    }
    // The login of clickhouse.url was moved into the keys when the config was read; a URL
    // that still carries a password is not printed with it all the same.
    config.clickhouse.url = meterflow_storage::url_without_password(&config.clickhouse.url);
    for bridge in &mut config.bridge {
        bridge.url = meterflow_ingest::edge::bridge::url_without_password(&bridge.url);
    }
    print!("{}", toml::to_string(&config)?);
    Ok(())
}
