//! `meterflow decode --format F FILE`: the rows a payload gives, as a table, with any parts
//! that were rejected; or the error with its position (exit status 1). Times are UTC.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use meterflow_decoders::{decode, DecodeContext, Format};

#[derive(clap::Args)]
pub struct DecodeArgs {
    /// pb, json, senml, senml-cbor, dsmr, lwm2m
    #[arg(long, short)]
    format: Format,
    /// The meter the payload is for (as the topic would name it).
    #[arg(long, default_value = "meter")]
    meter: String,
    /// The payload file; `-` reads standard input.
    file: PathBuf,
}

/// Reads the payload and prints its report; exits with status 1 when it does not decode.
pub fn run(args: DecodeArgs) -> anyhow::Result<()> {
    let DecodeArgs {
        format,
        meter,
        file,
    } = args;
    let payload = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        buf
    } else {
        std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
    };
    let ok = report(format, &meter, &payload, &mut std::io::stdout())?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Decodes `payload` and writes the report to `out`. Returns whether it decoded.
fn report(
    format: Format,
    meter_id: &str,
    payload: &[u8],
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let received_at_ms = chrono::Utc::now().timestamp_millis();
    let ctx = DecodeContext {
        meter_id,
        received_at_ms,
    };
    let decoded = match decode(format, payload, &ctx) {
        Ok(d) => d,
        Err(e) => {
            writeln!(out, "error: {e}")?;
            return Ok(false);
        }
    };
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
