//! `meterflow decode --format F FILE`: the rows a payload gives, as a table, with any parts
//! that were rejected; or the error with its position (exit status 1). Times are UTC.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use meterflow_decoders::dlms::{self, KeyLookup, Keys};
use meterflow_decoders::{decode, DecodeContext, Format};
use meterflow_ingest::dlms_profiles::PushProfiles;

#[derive(clap::Args)]
pub struct DecodeArgs {
    /// pb, json, cbor, senml, senml-cbor, dsmr, lwm2m, dlms (binary, or its bytes in hex)
    #[arg(long, short)]
    format: Format,
    /// The meter the payload is for (as the topic would name it).
    #[arg(long, default_value = "meter")]
    meter: String,
    /// dlms: the encryption key (32 hex digits) that opens a ciphered push (prefer the
    /// environment variable: a command line shows in `ps`; not METERFLOW_DLMS_EK, which
    /// `credentials add` would store for whatever meter it adds).
    #[arg(
        long,
        value_name = "HEX",
        env = "METERFLOW_DECODE_DLMS_EK",
        hide_env_values = true
    )]
    dlms_ek: Option<String>,
    /// dlms: the authentication key (32 hex digits), for pushes with a tag.
    #[arg(
        long,
        value_name = "HEX",
        env = "METERFLOW_DECODE_DLMS_AK",
        hide_env_values = true
    )]
    dlms_ak: Option<String>,
    /// dlms: read a values-only push with this push profile of the config ([[dlms.profile]]);
    /// without it, the profile of the push's manufacturer if the config has one. The config's
    /// dlms.timezone applies too.
    #[arg(long, value_name = "NAME")]
    dlms_profile: Option<String>,
    /// The payload file; `-` reads standard input.
    file: PathBuf,
}

/// Reads the payload and prints its report; exits with status 1 when it does not decode.
/// `config` gives the push profiles and the zone of DLMS clocks.
pub fn run(config: &meterflow_ingest::Config, args: DecodeArgs) -> anyhow::Result<()> {
    let DecodeArgs {
        format,
        meter,
        dlms_ek,
        dlms_ak,
        dlms_profile,
        file,
    } = args;
    let profiles = config.dlms.push_profiles()?;
    if let Some(name) = &dlms_profile {
        if !profiles.has(name) {
            anyhow::bail!(
                "--dlms-profile: the config has no [[dlms.profile]] named {name:?} (give the file with --config)"
            );
        }
    }
    let key = |flag: &str, text: Option<String>| -> anyhow::Result<Option<[u8; 16]>> {
        text.map(|t| {
            hex_bytes(&t)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .with_context(|| format!("--{flag}: not 32 hex digits"))
        })
        .transpose()
    };
    let keys = match (key("dlms-ek", dlms_ek)?, key("dlms-ak", dlms_ak)?) {
        (Some(ek), ak) => Some(Keys { ek, ak }),
        (None, Some(_)) => anyhow::bail!("--dlms-ak: give --dlms-ek too"),
        (None, None) => None,
    };
    let payload = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        buf
    } else {
        std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
    };
    // A DLMS push may be given as its bytes in hex (as meters' logs and specifications show
    // them).
    let payload = match format {
        Format::Dlms => std::str::from_utf8(&payload)
            .ok()
            .and_then(hex_bytes)
            .unwrap_or(payload),
        _ => payload,
    };
    let reading = DlmsReading {
        keys: keys.as_ref(),
        profiles: &profiles,
        profile: dlms_profile.as_deref(),
    };
    let ok = report(format, &meter, &payload, &reading, &mut std::io::stdout())?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Hex text (whitespace, `:` and `-` between bytes, `#` comments) as bytes; `None` when it is
/// not that.
fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(str::chars)
        .filter(|c| !c.is_whitespace() && *c != ':' && *c != '-')
        .collect();
    if digits.is_empty()
        || !digits.len().is_multiple_of(2)
        || !digits.chars().all(|c| c.is_ascii_hexdigit())
    {
        return None;
    }
    (0..digits.len() / 2)
        .map(|i| u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// What a DLMS push is read with: its keys, the config's push profiles and zone, and the
/// profile asked for.
struct DlmsReading<'a> {
    keys: Option<&'a Keys>,
    profiles: &'a PushProfiles,
    profile: Option<&'a str>,
}

/// Decodes `payload` and writes the report to `out`. Returns whether it decoded.
fn report(
    format: Format,
    meter_id: &str,
    payload: &[u8],
    dlms_reading: &DlmsReading<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let keys = dlms_reading.keys;
    let received_at_ms = chrono::Utc::now().timestamp_millis();
    let ctx = DecodeContext {
        meter_id,
        received_at_ms,
    };
    let result = match format {
        Format::Dlms => {
            let lookup = |_: &[u8; 8]| keys.cloned().map_or(KeyLookup::NoKey, KeyLookup::Keys);
            let title = dlms::frame::unframe(payload)
                .ok()
                .and_then(|u| dlms::system_title(&u.apdu));
            let chosen = dlms_reading
                .profiles
                .choose(dlms_reading.profile, title.as_ref())
                .map_err(anyhow::Error::msg)?;
            let profile_name = chosen.profile.map(|p| p.name.clone());
            dlms::decode_push_in(payload, received_at_ms, &lookup, &chosen.context())
                .map(|push| {
                    let mut line = format!("dlms: {} framing", push.framing.as_str());
                    if let Some(s) = &push.security {
                        line.push_str(&format!(
                        ", system title {} ({}), security control 0x{:02X}, invocation counter {}",
                        dlms::apdu::hex(&s.system_title),
                        s.manufacturer().unwrap_or("?"),
                        s.control,
                        s.invocation_counter
                    ));
                    }
                    if push.blocks > 0 {
                        line.push_str(&format!(", {} blocks", push.blocks));
                    }
                    if let Some(name) = &profile_name {
                        line.push_str(&format!(", push profile {name}"));
                    }
                    (Some(line), push.decoded)
                })
                // The checks serve makes too (times, channel names, value bounds).
                .and_then(|(line, decoded)| {
                    meterflow_decoders::checked(Format::Dlms, decoded, &ctx).map(|d| (line, d))
                })
        }
        _ => decode(format, payload, &ctx).map(|d| (None, d)),
    };
    let (header_line, decoded) = match result {
        Ok(d) => d,
        Err(e) => {
            writeln!(out, "error: {e}")?;
            return Ok(false);
        }
    };
    if let Some(line) = header_line {
        writeln!(out, "{line}")?;
    }
    let mut rows: Vec<[String; 5]> = Vec::with_capacity(decoded.row_count());
    let mut push = |channel: &str, ts_ms: i64, value: f64, unit: &str, quality: u16| {
        let ts = chrono::DateTime::from_timestamp_millis(ts_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| ts_ms.to_string());
        rows.push([
            channel.into(),
            ts,
            value.to_string(),
            unit.into(),
            quality.to_string(),
        ]);
    };
    for r in &decoded.readings {
        push(&r.channel, r.ts_ms, r.value, &r.unit, r.quality);
    }
    for s in &decoded.series {
        for (i, v) in s.values.iter().enumerate() {
            push(
                &s.channel,
                s.ts_ms(i),
                *v,
                &s.unit,
                s.quality.get(i).copied().unwrap_or(0),
            );
        }
    }
    let header = ["channel", "ts", "value", "unit", "quality"].map(String::from);
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            rows.iter()
                .chain([&header])
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in [&header].into_iter().chain(rows.iter()) {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c == 2 {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    let rows = rows.len();
    writeln!(out, "{rows} row(s)")?;
    if let Some(seq) = decoded.seq {
        writeln!(out, "seq: {seq}")?;
    }
    if let Some(status) = &decoded.status {
        writeln!(out, "status: {}", serde_json::to_string(status)?)?;
    }
    for r in &decoded.rejected {
        writeln!(out, "rejected at {}: {}", r.position, r.reason)?;
    }
    Ok(true)
}
