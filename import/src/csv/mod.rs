//! CSV exports of legacy head-end systems, turned into canonical readings one row at a time.
//!
//! This module owns how a CSV file becomes readings: the column mapping (`--map` spec or TOML
//! file), the header (delimiter detection, column lookup), time stamps (formats, time zones,
//! DST), values (decimal comma, scale, unit conversion), and the per-row checks live data gets.
//! It does not open files, write sinks, draw progress or remember the resume position: the
//! caller does, with [`CsvReader::rows_read`] as the position to persist.
//!
//! # Mapping
//! Each canonical field comes from a [`Field`]: a header column by name, a column by 1-based
//! position, or a constant. On the command line (`--map`, [`CsvMapping::parse_spec`]):
//!
//! ```text
//! meter_id=EAN,channel="1-0:1.8.0",ts=Timestamp,value=Reading,unit="kWh"
//! ```
//!
//! comma-separated `target=source` pairs. Targets: `meter_id`, `channel`, `ts`, `value`, `unit`
//! (all required; `channel` and `unit` are usually constants) and `quality` (optional, default
//! 0), plus the setting `ts_format=FORMAT`. A source is a bare column name (`Reading`, spaces
//! allowed), a column name in single quotes when it holds `,`, `=` or quotes (`'Value, kWh'`),
//! `#N` for the N-th column (for headers with empty or repeated names), or a constant in
//! double quotes (`"kWh"`). Inside quotes a backslash escapes the next character.
//!
//! The TOML form ([`CsvMapping::from_toml`]) holds the same fields, where a string is a column
//! name, `{ column = N }` a position and `{ value = "..." }` a constant, and may carry the
//! optional settings `ts_format`, `scale`, `to_unit`, `tz` and `delimiter`.
//!
//! # Settings: file and command line
//! [`CsvReader`] takes `tz`, `scale`, `to_unit` and `delimiter` from [`CsvOptions`] only (and
//! `ts_format` from the mapping). A mapping file's settings are kept in [`CsvMapping`];
//! [`CsvOptions::from_mapping`] starts from them and the caller then assigns each flag the user
//! gave, so the command line wins where both are given.
//!
//! # Time stamps
//! - RFC 3339 / ISO 8601 with `Z` or an offset (`2024-10-27T02:15:00+02:00`,
//!   `2024-10-27 00:15:00Z`): exact; `tz` does not apply.
//! - Unix time as an integer: seconds below 100 000 000 000, else milliseconds.
//! - Naive stamps (`2024-10-27 02:15`, `2024-10-27T02:15:00`, `2024-10-27 02:15:00.500`,
//!   `2024-10-27`, or `ts_format`, a chrono strftime format; a format with `%z` makes the
//!   stamps exact): local time in `tz`; **without `tz` a naive stamp is UTC**, which is what
//!   exporters without a zone mostly mean.
//! - DST in `tz`: in the repeated autumn hour the first occurrence is the earlier (summer)
//!   instant, unless that instant is not after the previous row's instant of the same
//!   `(meter_id, channel)`: exports list the hour twice in order, so a series that goes back
//!   in wall-clock time has reached the second pass (the later, standard-time instant). This
//!   assumes each series is in ascending time. A stamp in the skipped spring hour does not
//!   exist; it is read with the offset in force before the transition (standard time), as the
//!   DSMR decoder reads an unflagged time (`decoders/src/dsmr/time.rs`).
//!
//! # Values and units
//! A value is a decimal number with `.`; with `;` as the delimiter a decimal comma (`1234,5`)
//! too. `scale` multiplies it, then `to_unit` converts from the row's unit by SI prefix
//! (Wh/kWh/MWh/GWh, W/kW/MW, varh/kvarh/Mvarh, var/kvar, VAh/kVAh, VA/kVA, m3 (m³)/L; unit
//! names are case-sensitive) and the row's unit becomes `to_unit`.
//!
//! # Header and rows
//! The first line is the header (a UTF-8 BOM is skipped; names are compared trimmed). Fields
//! are trimmed; an empty quality is 0. A row that cannot become a valid reading (a field count
//! other than the header's, a mapped field not UTF-8, a time, value or quality that does not
//! parse, a unit that does not convert, or a reading that fails [`validate`], with "now" the
//! time the reader was made) is a [`BadRow`] with its physical line number (lines end in LF or
//! CRLF), its bytes as in the file and the reason; reading goes on. After the header only an
//! I/O error stops the file.

//!
//! # Files
//! `mapping.rs` the mapping and its parsers; `reader.rs` the header, the delimiter and the
//! `Tape` that gives rows their lines and bytes; `time.rs` stamps, zones and
//! DST; `units.rs` values, scale and units; here the options, the reader that ties them
//! together, and the checks of [`validate`].

mod mapping;
mod reader;
#[cfg(test)]
mod tests;
pub(crate) mod time;
pub(crate) mod units;

use std::io::Read;

use ::csv::ByteRecord;
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use meterflow_decoders::{EARLIEST_TS_MS, MAX_AHEAD_MS};
use meterflow_proto::is_valid_meter_id;

pub use mapping::{CsvMapping, Field};
pub use reader::parse_delimiter;
use reader::{resolve, text, Source, TapedInput};
use time::{parse_time, Instants};
use units::{check_scale, check_unit, conversion, parse_value};

use crate::ImportError;

/// How to read a file: the mapping and the settings in force.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvOptions {
    /// Where each field comes from, and `ts_format`. Its `tz`, `scale`, `to_unit` and
    /// `delimiter` are the mapping file's; the reader uses the fields below instead.
    pub mapping: CsvMapping,
    /// Zone of naive local stamps (`--tz Europe/Amsterdam`); `None`: naive stamps are UTC.
    pub tz: Option<Tz>,
    /// Value multiplier (`--scale`), applied before the unit conversion.
    pub scale: f64,
    /// Convert each row's unit to this one (`--to-unit kWh`).
    pub to_unit: Option<String>,
    /// Field delimiter; `None`: detected from the header line (`,` `;` or tab).
    pub delimiter: Option<u8>,
}

impl CsvOptions {
    /// Options from the mapping file's settings (scale 1 where it has none); the caller then
    /// assigns each command-line flag given, which so overrides the file.
    pub fn from_mapping(mapping: CsvMapping) -> CsvOptions {
        CsvOptions {
            tz: mapping.tz,
            scale: mapping.scale.unwrap_or(1.0),
            to_unit: mapping.to_unit.clone(),
            delimiter: mapping.delimiter,
            mapping,
        }
    }
}

/// One reading from a CSV row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based physical line where the row starts.
    pub line: u64,
    pub meter_id: String,
    pub channel: String,
    /// Unix milliseconds, UTC.
    pub ts_ms: i64,
    pub value: f64,
    pub unit: String,
    pub quality: u16,
}

/// A row that is not a valid reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based physical line where the row starts.
    pub line: u64,
    /// The row's bytes in the file, without the line end.
    pub raw: Vec<u8>,
    pub reason: String,
}

/// Reads a CSV file with a header line, one [`Row`] or [`BadRow`] per data row.
pub struct CsvReader<R: Read> {
    csv: ::csv::Reader<TapedInput<R>>,
    record: ByteRecord,
    delimiter: u8,
    header_len: usize,
    meter_id: Source,
    channel: Source,
    ts: Source,
    value: Source,
    unit: Source,
    quality: Option<Source>,
    ts_format: Option<String>,
    /// Stamps to instants, in the zone of naive stamps (`tz`).
    instants: Instants,
    scale: f64,
    to_unit: Option<String>,
    decimal_comma: bool,
    skip_rows: u64,
    rows_read: u64,
    /// The "now" of [`validate`]: when the reader was made.
    now_ms: i64,
}

impl<R: Read> CsvReader<R> {
    /// Reads the header and resolves the mapping. `skip_rows`: data rows already imported
    /// (resume): they are read, and count for the DST rule, but not returned. Errors: no
    /// header, a mapped column missing (named, with the header's columns), bad settings.
    pub fn new(input: R, options: &CsvOptions, skip_rows: u64) -> Result<Self, ImportError> {
        let reader::Opened {
            csv,
            delimiter,
            header,
        } = reader::open(input, options.delimiter)?;
        let resolve = |target: &'static str, field: &Field| -> Result<Source, ImportError> {
            resolve(target, field, &header, delimiter)
        };
        let mapping = &options.mapping;
        let unit = resolve("unit", &mapping.unit)?;
        let scale = check_scale(options.scale)?;
        if let Some(to) = &options.to_unit {
            check_unit(to)?;
            if let Source::Constant(from) = &unit {
                conversion(from, to)
                    .map_err(|e| ImportError::mapping("to_unit", format!("unit {from:?}: {e}")))?;
            }
        }
        Ok(CsvReader {
            meter_id: resolve("meter_id", &mapping.meter_id)?,
            channel: resolve("channel", &mapping.channel)?,
            ts: resolve("ts", &mapping.ts)?,
            value: resolve("value", &mapping.value)?,
            quality: mapping
                .quality
                .as_ref()
                .map(|q| resolve("quality", q))
                .transpose()?,
            unit,
            csv,
            record: ByteRecord::new(),
            delimiter,
            header_len: header.len(),
            ts_format: mapping.ts_format.clone(),
            instants: Instants::new(options.tz),
            scale,
            to_unit: options.to_unit.clone(),
            decimal_comma: delimiter == b';',
            skip_rows,
            rows_read: 0,
            now_ms: meterflow_proto::now_ms(),
        })
    }

    /// The next data row: `Ok(None)` at the end of the file; `Err` only for an I/O error,
    /// which ends the file (a malformed row is a [`BadRow`]). Rows are checked with
    /// [`validate`] against the time the reader was made.
    pub fn next_row(&mut self) -> Result<Option<Result<Row, BadRow>>, ImportError> {
        loop {
            let more = self
                .csv
                .read_byte_record(&mut self.record)
                .map_err(|source| ImportError::CsvRead {
                    after_row: self.rows_read,
                    source,
                })?;
            if !more {
                return Ok(None);
            }
            self.rows_read += 1;
            // What the csv reader consumed for this record: blank lines and the rest of the
            // previous line end before it, its line end after it.
            let start = self.record.position().map_or(0, |p| p.byte());
            let end = self.csv.position().byte();
            let (start, line) = self.csv.get_mut().record_start(start, end);
            // Skipped rows are converted too: they set the DST rule's last instants.
            let row = self.convert(line);
            let tape = self.csv.get_mut();
            let row = row.map_err(|reason| BadRow {
                line,
                raw: tape.record_bytes(start, end).to_vec(),
                reason: reason.to_string(),
            });
            tape.release(end);
            if self.rows_read > self.skip_rows {
                return Ok(Some(row));
            }
        }
    }

    /// Data rows consumed so far, skipped and bad ones included: the resume position.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Bytes of the file consumed so far (for a progress bar).
    pub fn bytes_read(&self) -> u64 {
        self.csv.position().byte()
    }

    /// The delimiter in use (given or detected).
    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    /// The current record as a reading, or why it is not one.
    fn convert(&mut self, line: u64) -> Result<Row, ImportError> {
        if self.record.len() != self.header_len {
            return Err(ImportError::row(
                "row",
                format!(
                    "row has {} fields, the header {}",
                    self.record.len(),
                    self.header_len
                ),
            ));
        }
        let meter_id = text(&self.record, &self.meter_id, "meter_id")?.to_string();
        let channel = text(&self.record, &self.channel, "channel")?.to_string();
        let stamp = text(&self.record, &self.ts, "ts")?;
        let stamp = parse_time(stamp, self.ts_format.as_deref())
            .map_err(|e| ImportError::row("ts", format!("{e} ({})", self.ts.label())))?;
        let ts_ms = self.instants.of(stamp, &meter_id, &channel)?;
        let value_text = text(&self.record, &self.value, "value")?;
        let mut value = parse_value(value_text, self.decimal_comma).ok_or_else(|| {
            let reason = if value_text.is_empty() {
                format!("value is empty ({})", self.value.label())
            } else {
                format!(
                    "value {:?} is not a finite number ({})",
                    shown(value_text),
                    self.value.label()
                )
            };
            ImportError::row("value", reason)
        })?;
        value *= self.scale;
        let mut unit = text(&self.record, &self.unit, "unit")?.to_string();
        if let Some(to) = &self.to_unit {
            value = conversion(&unit, to)?.apply(value);
            unit.clone_from(to);
        }
        let quality = match &self.quality {
            None => 0,
            Some(source) => {
                let q = text(&self.record, source, "quality")?;
                if q.is_empty() {
                    0
                } else {
                    q.parse::<u16>().map_err(|_| {
                        ImportError::row(
                            "quality",
                            format!(
                                "quality {:?} is not an integer 0 to 65535 ({})",
                                shown(q),
                                source.label()
                            ),
                        )
                    })?
                }
            }
        };
        let row = Row {
            line,
            meter_id,
            channel,
            ts_ms,
            value,
            unit,
            quality,
        };
        validate(&row, self.now_ms)?;
        Ok(row)
    }
}

/// A text for an error message: at most 64 bytes.
pub(crate) fn shown(text: &str) -> String {
    if text.len() <= 64 {
        return text.to_string();
    }
    let mut end = 64;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", text.get(..end).unwrap_or_default())
}

/// The rules live data gets (the decoders' limits): the meter id pattern, a channel of 1 to
/// [`meterflow_decoders::MAX_CHANNEL_BYTES`] bytes, a unit of at most
/// [`meterflow_decoders::MAX_UNIT_BYTES`], a finite value, and a
/// time from 2000-01-01 to `now_ms` + 1 day.
pub fn validate(row: &Row, now_ms: i64) -> Result<(), ImportError> {
    validate_reading(
        &row.meter_id,
        &row.channel,
        &row.unit,
        row.value,
        row.ts_ms,
        now_ms,
    )
}

/// [`validate`] on the parts of a reading (rows read from Parquet, without a [`Row`]).
pub fn validate_reading(
    meter_id: &str,
    channel: &str,
    unit: &str,
    value: f64,
    ts_ms: i64,
    now_ms: i64,
) -> Result<(), ImportError> {
    if !is_valid_meter_id(meter_id) {
        return Err(ImportError::row(
            "meter_id",
            format!(
                "meter_id {:?} must be 1 to 64 characters of [A-Za-z0-9._-]",
                shown(meter_id)
            ),
        ));
    }
    if channel.is_empty() {
        return Err(ImportError::row("channel", "no channel"));
    }
    // The channel first, then the unit, each checked alone so the fault names its field.
    meterflow_decoders::check_channel_and_unit(channel, "")
        .map_err(|reason| ImportError::row("channel", reason))?;
    meterflow_decoders::check_channel_and_unit("", unit)
        .map_err(|reason| ImportError::row("unit", reason))?;
    if !value.is_finite() {
        return Err(ImportError::row(
            "value",
            format!("value {} is not finite", value),
        ));
    }
    if ts_ms < EARLIEST_TS_MS || ts_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
        let at = DateTime::<Utc>::from_timestamp_millis(ts_ms)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_else(|| "out of range".into());
        return Err(ImportError::row(
            "ts",
            format!(
                "time {} ms ({at}) is outside 2000-01-01 .. now + 1 day",
                ts_ms
            ),
        ));
    }
    Ok(())
}
