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

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Chain, Cursor, Read};

use ::csv::{ByteRecord, ReaderBuilder};
use anyhow::{anyhow, bail, Context as _};
use chrono::{
    DateTime, LocalResult, NaiveDate, NaiveDateTime, Offset as _, SecondsFormat, TimeDelta,
    TimeZone as _, Utc,
};
use chrono_tz::Tz;
use meterflow_decoders::{EARLIEST_TS_MS, MAX_AHEAD_MS};
use meterflow_proto::is_valid_meter_id;
use serde::Deserialize;

/// Where one canonical field comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The header column of this name (compared with surrounding whitespace trimmed).
    Column(String),
    /// The column at this 1-based position.
    Position(usize),
    /// The same text on every row.
    Constant(String),
}

/// Where each canonical field comes from, and the settings a mapping file may carry.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvMapping {
    pub meter_id: Field,
    pub channel: Field,
    pub ts: Field,
    pub value: Field,
    pub unit: Field,
    /// `None`: quality 0 on every row.
    pub quality: Option<Field>,
    /// chrono strftime format of the stamps, for layouts the built-in ones do not read.
    pub ts_format: Option<String>,
    /// The mapping file's settings ([`CsvOptions::from_mapping`] starts from them).
    pub scale: Option<f64>,
    pub to_unit: Option<String>,
    pub tz: Option<Tz>,
    pub delimiter: Option<u8>,
}

/// The targets of a mapping, in the order error messages list them.
const TARGETS: [&str; 7] = [
    "meter_id",
    "channel",
    "ts",
    "value",
    "unit",
    "quality",
    "ts_format",
];

/// The mapping's fields while they are being collected.
#[derive(Default)]
struct Targets {
    meter_id: Option<Field>,
    channel: Option<Field>,
    ts: Option<Field>,
    value: Option<Field>,
    unit: Option<Field>,
    quality: Option<Field>,
    ts_format: Option<String>,
}

impl Targets {
    fn set(&mut self, target: &str, field: Field) -> anyhow::Result<()> {
        let slot = match target {
            "meter_id" => &mut self.meter_id,
            "channel" => &mut self.channel,
            "ts" => &mut self.ts,
            "value" => &mut self.value,
            "unit" => &mut self.unit,
            "quality" => &mut self.quality,
            "ts_format" => {
                if self.ts_format.is_some() {
                    bail!("mapping: ts_format is given twice");
                }
                let format = match field {
                    Field::Column(f) | Field::Constant(f) if !f.is_empty() => f,
                    _ => bail!("mapping: ts_format takes a format such as \"%d-%m-%Y %H:%M\""),
                };
                self.ts_format = Some(format);
                return Ok(());
            }
            _ => bail!(
                "mapping: unknown target {target:?} (targets: {})",
                TARGETS.join(", ")
            ),
        };
        if slot.is_some() {
            bail!("mapping: {target} is given twice");
        }
        *slot = Some(field);
        Ok(())
    }

    fn finish(self) -> anyhow::Result<CsvMapping> {
        let required = |field: Option<Field>, target: &str| {
            field.ok_or_else(|| {
                anyhow!(
                    "mapping: {target} is missing (meter_id, channel, ts, value and unit are \
                     required; channel and unit may be constants such as unit=\"kWh\")"
                )
            })
        };
        Ok(CsvMapping {
            meter_id: required(self.meter_id, "meter_id")?,
            channel: required(self.channel, "channel")?,
            ts: required(self.ts, "ts")?,
            value: required(self.value, "value")?,
            unit: required(self.unit, "unit")?,
            quality: self.quality,
            ts_format: self.ts_format,
            scale: None,
            to_unit: None,
            tz: None,
            delimiter: None,
        })
    }
}

/// A mapping file as TOML; fields are converted by [`toml_field`] so errors name the target.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    meter_id: toml::Value,
    channel: toml::Value,
    ts: toml::Value,
    value: toml::Value,
    unit: toml::Value,
    quality: Option<toml::Value>,
    ts_format: Option<String>,
    scale: Option<f64>,
    to_unit: Option<String>,
    tz: Option<String>,
    delimiter: Option<String>,
}

impl CsvMapping {
    /// Parses `--map meter_id=COL,channel=COL|"1-0:1.8.0",ts=COL,value=COL,unit=COL|"kWh"`
    /// (grammar in the module doc). Errors name the target.
    pub fn parse_spec(spec: &str) -> anyhow::Result<CsvMapping> {
        let mut targets = Targets::default();
        let mut chars = spec.chars().peekable();
        loop {
            let mut target = String::new();
            loop {
                match chars.next() {
                    Some('=') => break,
                    Some(',') | None => bail!(
                        "mapping: {:?} is not target=source (in {spec:?})",
                        target.trim()
                    ),
                    Some(c) => target.push(c),
                }
            }
            let target = target.trim().to_string();
            if target.is_empty() {
                bail!("mapping: a source without a target (in {spec:?})");
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            // `more`: a comma follows, so another pair must.
            let (field, more) = match chars.peek() {
                Some(&quote @ ('"' | '\'')) => {
                    chars.next();
                    let text = quoted(&mut chars, quote)
                        .ok_or_else(|| anyhow!("mapping: {target}: the {quote} is not closed"))?;
                    while chars.next_if(|c| c.is_whitespace()).is_some() {}
                    let more = match chars.next() {
                        Some(',') => true,
                        None => false,
                        Some(c) => bail!("mapping: {target}: {c:?} after the quoted source"),
                    };
                    let field = if quote == '"' {
                        Field::Constant(text)
                    } else if text.trim().is_empty() {
                        bail!("mapping: {target} has an empty column name");
                    } else {
                        Field::Column(text)
                    };
                    (field, more)
                }
                _ => {
                    let mut bare = String::new();
                    let mut more = false;
                    for c in chars.by_ref() {
                        if c == ',' {
                            more = true;
                            break;
                        }
                        bare.push(c);
                    }
                    (bare_field(&target, bare.trim())?, more)
                }
            };
            targets.set(&target, field)?;
            if !more {
                break;
            }
        }
        targets.finish()
    }

    /// Parses the TOML form (module doc); unknown keys are errors.
    pub fn from_toml(text: &str) -> anyhow::Result<CsvMapping> {
        let file: MappingFile = toml::from_str(text).context("mapping file")?;
        let mut targets = Targets::default();
        targets.set("meter_id", toml_field("meter_id", file.meter_id)?)?;
        targets.set("channel", toml_field("channel", file.channel)?)?;
        targets.set("ts", toml_field("ts", file.ts)?)?;
        targets.set("value", toml_field("value", file.value)?)?;
        targets.set("unit", toml_field("unit", file.unit)?)?;
        if let Some(q) = file.quality {
            targets.set("quality", toml_field("quality", q)?)?;
        }
        if let Some(f) = file.ts_format {
            targets.set("ts_format", Field::Constant(f))?;
        }
        let mut mapping = targets.finish()?;
        if let Some(scale) = file.scale {
            mapping.scale = Some(check_scale(scale)?);
        }
        if let Some(unit) = file.to_unit {
            check_unit(&unit)?;
            mapping.to_unit = Some(unit);
        }
        if let Some(tz) = file.tz {
            mapping.tz = Some(
                tz.parse::<Tz>()
                    .map_err(|_| anyhow!("mapping file: tz {tz:?} is not an IANA time zone"))?,
            );
        }
        if let Some(d) = file.delimiter {
            mapping.delimiter = Some(parse_delimiter(&d).context("mapping file")?);
        }
        Ok(mapping)
    }
}

/// Reads a quoted text after its opening quote, up to the closing one; `\` escapes the next
/// character. `None`: not closed.
fn quoted(chars: &mut impl Iterator<Item = char>, quote: char) -> Option<String> {
    let mut text = String::new();
    loop {
        match chars.next()? {
            '\\' => text.push(chars.next()?),
            c if c == quote => return Some(text),
            c => text.push(c),
        }
    }
}

/// An unquoted source: `#N` or a column name.
fn bare_field(target: &str, bare: &str) -> anyhow::Result<Field> {
    if bare.is_empty() {
        bail!("mapping: {target} has an empty source");
    }
    if let Some(n) = bare.strip_prefix('#') {
        return match n.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Field::Position(n)),
            _ => bail!("mapping: {target}: {bare:?} is not a column position (#1, #2, ...)"),
        };
    }
    if bare.contains(['=', '"', '\'']) {
        bail!(
            "mapping: {target}: column name {bare:?} holds = or a quote: put it in single \
             quotes (a missing comma?)"
        );
    }
    Ok(Field::Column(bare.to_string()))
}

/// A TOML source: `"Name"`, `{ column = N }` or `{ value = "..." }`.
fn toml_field(target: &str, value: toml::Value) -> anyhow::Result<Field> {
    let field = match value {
        toml::Value::String(name) if !name.trim().is_empty() => Some(Field::Column(name)),
        toml::Value::Table(t) if t.len() == 1 => match (t.get("column"), t.get("value")) {
            (Some(toml::Value::Integer(n)), _) => usize::try_from(*n)
                .ok()
                .filter(|&n| n >= 1)
                .map(Field::Position),
            (_, Some(toml::Value::String(c))) => Some(Field::Constant(c.clone())),
            _ => None,
        },
        _ => None,
    };
    field.ok_or_else(|| {
        anyhow!(
            "mapping file: {target} must be a column name, {{ column = N }} (1-based) or \
             {{ value = \"constant\" }}"
        )
    })
}

/// Parses a delimiter setting: one ASCII character (`,` `;` `|` ...), or `tab`.
pub fn parse_delimiter(text: &str) -> anyhow::Result<u8> {
    let byte = match text.as_bytes() {
        [b] => *b,
        _ if text.eq_ignore_ascii_case("tab") => b'\t',
        _ => bail!("delimiter {text:?} is not one ASCII character or \"tab\""),
    };
    check_delimiter(byte)
}

fn check_delimiter(byte: u8) -> anyhow::Result<u8> {
    if !byte.is_ascii() || matches!(byte, b'"' | b'\r' | b'\n') {
        bail!(
            "delimiter {:?} cannot separate CSV fields",
            char::from(byte)
        );
    }
    Ok(byte)
}

fn check_scale(scale: f64) -> anyhow::Result<f64> {
    if !scale.is_finite() || scale == 0.0 {
        bail!("scale {scale} must be a finite number other than 0");
    }
    Ok(scale)
}

fn check_unit(unit: &str) -> anyhow::Result<()> {
    if parse_unit(unit).is_none() {
        bail!("to_unit {unit:?} is not a unit meterflow converts ({KNOWN_UNITS})");
    }
    Ok(())
}

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

/// A resolved field: a column index or a constant.
#[derive(Debug)]
enum Source {
    Column { index: usize, label: String },
    Constant(String),
}

impl Source {
    fn label(&self) -> &str {
        match self {
            Source::Column { label, .. } => label,
            Source::Constant(_) => "the constant",
        }
    }
}

/// How many bytes of the first line are looked at to detect the delimiter.
const HEADER_SNIFF_BYTES: u64 = 64 * 1024;

/// The input behind the csv reader: the header line read for detection, then the rest.
type Input<R> = Tape<Chain<Cursor<Vec<u8>>, BufReader<R>>>;

/// The csv reader's input, keeping the bytes it has read until they are released. The csv
/// crate gives neither a record's bytes nor its physical line (its `Position::line()` is off
/// with CRLF line ends and after blank lines), so both are taken from here by the byte offsets
/// it does report. Lines end in LF or CRLF.
struct Tape<R> {
    inner: R,
    /// The stream's bytes from offset `base` on.
    kept: Vec<u8>,
    base: u64,
    /// Offset up to which line ends are counted, and the 1-based line there.
    scanned: u64,
    line: u64,
}

/// Released bytes are dropped once this many have gathered (so dropping costs O(1) a byte).
const TAPE_DROP_BYTES: usize = 64 * 1024;

impl<R: Read> Read for Tape<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.kept
            .extend_from_slice(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

impl<R> Tape<R> {
    fn new(inner: R) -> Self {
        Tape {
            inner,
            kept: Vec::new(),
            base: 0,
            scanned: 0,
            line: 1,
        }
    }

    /// The stream's bytes `from..to` (empty where not kept).
    fn slice(&self, from: u64, to: u64) -> &[u8] {
        let index = |offset: u64| usize::try_from(offset.saturating_sub(self.base)).ok();
        match (index(from), index(to)) {
            (Some(from), Some(to)) => self.kept.get(from..to).unwrap_or_default(),
            _ => &[],
        }
    }

    /// The 1-based line of `offset` (offsets asked for only grow).
    fn line_at(&mut self, offset: u64) -> u64 {
        let ends = self
            .slice(self.scanned, offset)
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.line += ends as u64;
        self.scanned = self.scanned.max(offset);
        self.line
    }

    /// Bytes before `offset` are no longer needed.
    fn release(&mut self, offset: u64) {
        self.line_at(offset);
        let done = usize::try_from(offset.saturating_sub(self.base)).unwrap_or(usize::MAX);
        if done >= TAPE_DROP_BYTES {
            let done = done.min(self.kept.len());
            self.kept.drain(..done);
            self.base += done as u64;
        }
    }
}

/// Reads a CSV file with a header line, one [`Row`] or [`BadRow`] per data row.
pub struct CsvReader<R: Read> {
    csv: ::csv::Reader<Input<R>>,
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
    tz: Option<Tz>,
    scale: f64,
    to_unit: Option<String>,
    decimal_comma: bool,
    skip_rows: u64,
    rows_read: u64,
    /// Last instant per (meter_id, channel), for the repeated autumn hour (with `tz` only).
    last_ts: HashMap<(String, String), i64>,
    /// The "now" of [`validate`]: when the reader was made.
    now_ms: i64,
}

impl<R: Read> CsvReader<R> {
    /// Reads the header and resolves the mapping. `skip_rows`: data rows already imported
    /// (resume): they are read, and count for the DST rule, but not returned. Errors: no
    /// header, a mapped column missing (named, with the header's columns), bad settings.
    pub fn new(input: R, options: &CsvOptions, skip_rows: u64) -> anyhow::Result<Self> {
        let mut rest = BufReader::new(input);
        let mut first = Vec::new();
        rest.by_ref()
            .take(HEADER_SNIFF_BYTES)
            .read_until(b'\n', &mut first)
            .context("reading the CSV header")?;
        if let Some(without_bom) = first.strip_prefix(b"\xEF\xBB\xBF") {
            first = without_bom.to_vec();
        }
        let delimiter = match options.delimiter {
            Some(d) => check_delimiter(d)?,
            None => detect_delimiter(&first),
        };
        let mut csv = ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .has_headers(true)
            .from_reader(Tape::new(Cursor::new(first).chain(rest)));
        let header: Vec<String> = csv
            .byte_headers()
            .context("reading the CSV header")?
            .iter()
            .map(|h| String::from_utf8_lossy(h).trim().to_string())
            .collect();
        if header.is_empty() {
            bail!("the CSV file is empty: no header line");
        }
        let resolve = |target: &str, field: &Field| -> anyhow::Result<Source> {
            resolve(target, field, &header, delimiter)
        };
        let mapping = &options.mapping;
        let unit = resolve("unit", &mapping.unit)?;
        let scale = check_scale(options.scale)?;
        if let Some(to) = &options.to_unit {
            check_unit(to)?;
            if let Source::Constant(from) = &unit {
                conversion(from, to).map_err(|e| anyhow!("unit {from:?}: {e}"))?;
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
            tz: options.tz,
            scale,
            to_unit: options.to_unit.clone(),
            decimal_comma: delimiter == b';',
            skip_rows,
            rows_read: 0,
            last_ts: HashMap::new(),
            now_ms: meterflow_proto::now_ms(),
        })
    }

    /// The next data row: `Ok(None)` at the end of the file; `Err` only for an I/O error,
    /// which ends the file (a malformed row is a [`BadRow`]). Rows are checked with
    /// [`validate`] against the time the reader was made.
    pub fn next_row(&mut self) -> anyhow::Result<Option<Result<Row, BadRow>>> {
        loop {
            let more = self
                .csv
                .read_byte_record(&mut self.record)
                .with_context(|| {
                    format!("reading the CSV file after data row {}", self.rows_read)
                })?;
            if !more {
                return Ok(None);
            }
            self.rows_read += 1;
            // What the csv reader consumed for this record: blank lines and the rest of the
            // previous line end before it, its line end after it.
            let start = self.record.position().map_or(0, |p| p.byte());
            let end = self.csv.position().byte();
            let tape = self.csv.get_mut();
            let lead = tape
                .slice(start, end)
                .iter()
                .take_while(|&&b| matches!(b, b'\r' | b'\n'))
                .count();
            let start = start + lead as u64;
            let line = tape.line_at(start);
            // Skipped rows are converted too: they set the DST rule's last instants.
            let row = self.convert(line);
            let tape = self.csv.get_mut();
            let row = row.map_err(|reason| {
                let mut raw = tape.slice(start, end);
                while let [rest @ .., b'\r' | b'\n'] = raw {
                    raw = rest;
                }
                BadRow {
                    line,
                    raw: raw.to_vec(),
                    reason,
                }
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
    fn convert(&mut self, line: u64) -> Result<Row, String> {
        if self.record.len() != self.header_len {
            return Err(format!(
                "row has {} fields, the header {}",
                self.record.len(),
                self.header_len
            ));
        }
        let meter_id = text(&self.record, &self.meter_id, "meter_id")?.to_string();
        let channel = text(&self.record, &self.channel, "channel")?.to_string();
        let stamp = text(&self.record, &self.ts, "ts")?;
        let stamp = parse_time(stamp, self.ts_format.as_deref())
            .map_err(|e| format!("{e} ({})", self.ts.label()))?;
        let ts_ms = match (stamp, self.tz) {
            (Stamp::Utc(ms), None) => ms,
            (Stamp::Local(naive), None) => naive.and_utc().timestamp_millis(),
            (stamp, Some(tz)) => {
                let key = (meter_id.clone(), channel.clone());
                let ms = match stamp {
                    Stamp::Utc(ms) => ms,
                    Stamp::Local(naive) => local_to_ms(tz, naive, self.last_ts.get(&key).copied())
                        .ok_or_else(|| format!("time {naive} is out of range in {tz}"))?,
                };
                self.last_ts.insert(key, ms);
                ms
            }
        };
        let value_text = text(&self.record, &self.value, "value")?;
        let mut value = parse_value(value_text, self.decimal_comma).ok_or_else(|| {
            if value_text.is_empty() {
                format!("value is empty ({})", self.value.label())
            } else {
                format!(
                    "value {:?} is not a finite number ({})",
                    shown(value_text),
                    self.value.label()
                )
            }
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
                        format!(
                            "quality {:?} is not an integer 0 to 65535 ({})",
                            shown(q),
                            source.label()
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

/// Resolves a mapped field against the header.
fn resolve(
    target: &str,
    field: &Field,
    header: &[String],
    delimiter: u8,
) -> anyhow::Result<Source> {
    let columns = || {
        let names: Vec<String> = header.iter().map(|h| format!("{h:?}")).collect();
        format!(
            "{} (read with delimiter {:?})",
            names.join(", "),
            char::from(delimiter)
        )
    };
    match field {
        Field::Constant(c) => Ok(Source::Constant(c.clone())),
        Field::Column(name) => {
            let name = name.trim();
            let index = header.iter().position(|h| h == name).ok_or_else(|| {
                anyhow!(
                    "column {name:?} (for {target}) is not in the header; its columns are {}",
                    columns()
                )
            })?;
            Ok(Source::Column {
                index,
                label: format!("column {name:?}"),
            })
        }
        Field::Position(n) => {
            if *n == 0 || *n > header.len() {
                bail!(
                    "column #{n} (for {target}) is beyond the header's {} columns: {}",
                    header.len(),
                    columns()
                );
            }
            Ok(Source::Column {
                index: n - 1,
                label: format!("column #{n}"),
            })
        }
    }
}

/// A field's text, whitespace trimmed.
fn text<'a>(record: &'a ByteRecord, source: &'a Source, target: &str) -> Result<&'a str, String> {
    match source {
        Source::Constant(c) => Ok(c),
        Source::Column { index, label } => {
            let bytes = record
                .get(*index)
                .ok_or_else(|| format!("{target}: {label} is missing"))?;
            std::str::from_utf8(bytes)
                .map(str::trim)
                .map_err(|_| format!("{target}: {label} is not UTF-8"))
        }
    }
}

/// The delimiter of a header line: the most frequent of `,` `;` tab outside quotes (`,` when
/// none occurs or on a tie with it).
fn detect_delimiter(line: &[u8]) -> u8 {
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0)];
    let mut in_quotes = false;
    for &b in line {
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\r' | b'\n' if !in_quotes => break,
            _ if !in_quotes => {
                for (d, n) in &mut counts {
                    if *d == b {
                        *n += 1;
                    }
                }
            }
            _ => {}
        }
    }
    let mut best = (b',', 0);
    for (d, n) in counts {
        if n > best.1 {
            best = (d, n);
        }
    }
    best.0
}

/// A parsed time stamp.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stamp {
    /// An exact instant, Unix ms.
    Utc(i64),
    /// A wall-clock time without zone.
    Local(NaiveDateTime),
}

/// Unix integers at or above this are milliseconds, below it seconds (1e11 s is in 5138).
const EPOCH_MS_FROM: i64 = 100_000_000_000;

/// Naive layouts read without `ts_format` (`%.f`: optional fraction).
const NAIVE_FORMATS: [&str; 4] = [
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
];

fn parse_time(text: &str, ts_format: Option<&str>) -> Result<Stamp, String> {
    if let Some(format) = ts_format {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Ok(Stamp::Utc(t.timestamp_millis()));
        }
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Stamp::Local(t));
        }
        if let Ok(d) = NaiveDate::parse_from_str(text, format) {
            return Ok(Stamp::Local(d.and_time(chrono::NaiveTime::MIN)));
        }
        return Err(format!(
            "time {:?} does not match ts_format {format:?}",
            shown(text)
        ));
    }
    let not_a_time = || {
        format!(
            "time {:?} is not RFC 3339, YYYY-MM-DD[ hh:mm[:ss[.fff]]] or Unix seconds/ms \
             (ts_format reads other layouts)",
            shown(text)
        )
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = text.parse().map_err(|_| not_a_time())?;
        return if n < EPOCH_MS_FROM {
            Ok(Stamp::Utc(n * 1000))
        } else {
            Ok(Stamp::Utc(n))
        };
    }
    let (body, offset_s) = split_offset(text).ok_or_else(not_a_time)?;
    let naive = NAIVE_FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(body, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(body, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(chrono::NaiveTime::MIN))
        })
        .ok_or_else(not_a_time)?;
    Ok(match offset_s {
        Some(s) => Stamp::Utc(naive.and_utc().timestamp_millis() - s * 1000),
        None => Stamp::Local(naive),
    })
}

/// Splits a trailing `Z` or `±HH[:MM]` / `±HHMM` off a stamp: (the rest, seconds east of UTC).
/// `None`: an offset that does not parse.
fn split_offset(text: &str) -> Option<(&str, Option<i64>)> {
    if let Some(body) = text.strip_suffix(['Z', 'z']) {
        return Some((body.trim_end(), Some(0)));
    }
    // After "YYYY-MM-DD", a + or - starts the offset.
    let Some(at) = text.rfind(['+', '-']).filter(|&i| i > 10) else {
        return Some((text, None));
    };
    let (body, offset) = text.split_at(at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let digits = offset.get(1..)?;
    let (hh, mm) = match digits.len() {
        2 => (digits, "00"),
        4 => (digits.get(..2)?, digits.get(2..)?),
        5 if digits.get(2..3) == Some(":") => (digits.get(..2)?, digits.get(3..)?),
        _ => return None,
    };
    let digit_pair = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    let (hh, mm) = (digit_pair(hh)?, digit_pair(mm)?);
    if hh > 23 || mm > 59 {
        return None;
    }
    Some((body.trim_end(), Some(sign * (hh * 3600 + mm * 60))))
}

/// A wall-clock time in `tz` as Unix ms, by the DST rules of the module doc. `previous`: the
/// series' last instant. `None`: out of chrono's range.
fn local_to_ms(tz: Tz, naive: NaiveDateTime, previous: Option<i64>) -> Option<i64> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.timestamp_millis()),
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.timestamp_millis(), b.timestamp_millis());
            let (earlier, later) = (a.min(b), a.max(b));
            Some(match previous {
                Some(p) if earlier <= p => later,
                _ => earlier,
            })
        }
        LocalResult::None => {
            // In a gap: the offset in force a day before, i.e. before the transition.
            let before = naive.checked_sub_signed(TimeDelta::days(1))?;
            let offset_s = tz.offset_from_utc_datetime(&before).fix().local_minus_utc();
            Some(naive.and_utc().timestamp_millis() - i64::from(offset_s) * 1000)
        }
    }
}

/// A value: trimmed, `.` decimal (or one `,` with `decimal_comma` and no `.`), finite.
fn parse_value(text: &str, decimal_comma: bool) -> Option<f64> {
    let v = if decimal_comma && !text.contains('.') && text.contains(',') {
        text.replacen(',', ".", 1).parse::<f64>()
    } else {
        text.parse::<f64>()
    };
    v.ok().filter(|v| v.is_finite())
}

const KNOWN_UNITS: &str = "Wh, W, varh, var, VAh, VA with prefix k, M or G; m3 (m³), L";

/// A unit as (quantity, power of ten of its base unit), e.g. `kWh` = ("Wh", 3), `L` = ("m3", -3).
fn parse_unit(unit: &str) -> Option<(&'static str, i32)> {
    match unit {
        "m3" | "m³" => return Some(("m3", 0)),
        "L" | "l" => return Some(("m3", -3)),
        _ => {}
    }
    // The whole unit is an optional prefix and a base.
    for base in ["varh", "VAh", "var", "Wh", "VA", "W"] {
        let exponent = match unit.strip_suffix(base) {
            Some("") => 0,
            Some("k") => 3,
            Some("M") => 6,
            Some("G") => 9,
            _ => continue,
        };
        return Some((base, exponent));
    }
    None
}

/// A unit conversion: multiply or divide by an exact power of ten.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Conversion {
    Multiply(f64),
    Divide(f64),
}

impl Conversion {
    /// One correctly rounded operation with an exact operand: the double nearest to
    /// `value × 10^k` (`1234.5 Wh` → `1.2345 kWh`, where `× 0.001` may be off by one ulp).
    fn apply(self, value: f64) -> f64 {
        match self {
            Conversion::Multiply(f) => value * f,
            Conversion::Divide(d) => value / d,
        }
    }
}

fn conversion(from: &str, to: &str) -> Result<Conversion, String> {
    if from == to {
        return Ok(Conversion::Multiply(1.0));
    }
    match (parse_unit(from), parse_unit(to)) {
        (Some((q1, e1)), Some((q2, e2))) if q1 == q2 => {
            let e = e1 - e2;
            // 10^e for |e| <= 22 is exact in f64 (the prefixes give at most 12).
            Ok(if e >= 0 {
                Conversion::Multiply(10f64.powi(e))
            } else {
                Conversion::Divide(10f64.powi(-e))
            })
        }
        _ => Err(format!("cannot convert {} to {to}", shown(from))),
    }
}

/// A text for an error message: at most 64 bytes.
fn shown(text: &str) -> String {
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
pub fn validate(row: &Row, now_ms: i64) -> Result<(), String> {
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
) -> Result<(), String> {
    if !is_valid_meter_id(meter_id) {
        return Err(format!(
            "meter_id {:?} must be 1 to 64 characters of [A-Za-z0-9._-]",
            shown(meter_id)
        ));
    }
    if channel.is_empty() {
        return Err("no channel".into());
    }
    meterflow_decoders::check_channel_and_unit(channel, unit)?;
    if !value.is_finite() {
        return Err(format!("value {} is not finite", value));
    }
    if ts_ms < EARLIEST_TS_MS || ts_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
        let at = DateTime::<Utc>::from_timestamp_millis(ts_ms)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_else(|| "out of range".into());
        return Err(format!(
            "time {} ms ({at}) is outside 2000-01-01 .. now + 1 day",
            ts_ms
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe;
    use meterflow_decoders::{MAX_CHANNEL_BYTES, MAX_UNIT_BYTES};

    const SPEC: &str = r#"meter_id=EAN,channel="1-0:1.8.0",ts=Timestamp,value=Reading,unit="kWh""#;

    fn options(spec: &str) -> CsvOptions {
        CsvOptions::from_mapping(CsvMapping::parse_spec(spec).unwrap())
    }

    /// Every returned row, and rows_read at the end.
    fn read(text: &str, options: &CsvOptions, skip: u64) -> (Vec<Result<Row, BadRow>>, u64) {
        let mut reader = CsvReader::new(text.as_bytes(), options, skip).unwrap();
        let mut rows = Vec::new();
        while let Some(row) = reader.next_row().unwrap() {
            rows.push(row);
        }
        (rows, reader.rows_read())
    }

    fn good(rows: &[Result<Row, BadRow>]) -> Vec<&Row> {
        rows.iter().map(|r| r.as_ref().unwrap()).collect()
    }

    fn ts(rows: &[Result<Row, BadRow>]) -> Vec<i64> {
        good(rows).iter().map(|r| r.ts_ms).collect()
    }

    #[test]
    fn spec_parses_columns_constants_positions_and_quotes() {
        let m = CsvMapping::parse_spec(
            r#" meter_id = Meter ID , channel="1-0:1.8.0",ts=#1,value='Value, kWh',unit="k\"Wh",quality=Q,ts_format="%d.%m.%Y, %H:%M""#,
        )
        .unwrap();
        assert_eq!(m.meter_id, Field::Column("Meter ID".into()));
        assert_eq!(m.channel, Field::Constant("1-0:1.8.0".into()));
        assert_eq!(m.ts, Field::Position(1));
        assert_eq!(m.value, Field::Column("Value, kWh".into()));
        assert_eq!(m.unit, Field::Constant("k\"Wh".into()));
        assert_eq!(m.quality, Some(Field::Column("Q".into())));
        assert_eq!(m.ts_format.as_deref(), Some("%d.%m.%Y, %H:%M"));
        assert_eq!((m.scale, m.tz, m.delimiter), (None, None, None));
    }

    #[test]
    fn spec_errors_name_the_target() {
        let base = r#"channel="c",ts=T,value=V,unit="kWh""#;
        for (spec, expected) in [
            (
                format!("meter_id=M,{base},colour=C"),
                "unknown target \"colour\"",
            ),
            (format!("meter_id=M,{base},value=W"), "value is given twice"),
            (format!("meter_id=,{base}"), "meter_id has an empty source"),
            (
                format!("meter_id='',{base}"),
                "meter_id has an empty column name",
            ),
            (
                format!("meter_id=#0,{base}"),
                "meter_id: \"#0\" is not a column position",
            ),
            (
                format!("meter_id=M ts=T,{base}"),
                "meter_id: column name \"M ts=T\"",
            ),
            (
                format!("{base},meter_id=\"M"),
                "meter_id: the \" is not closed",
            ),
            (
                format!("meter_id=\"M\"x,{base}"),
                "meter_id: 'x' after the quoted source",
            ),
            (base.to_string(), "meter_id is missing"),
            (
                r#"meter_id=M,ts=T,value=V,unit="kWh""#.into(),
                "channel is missing",
            ),
            (format!("meter_id=M,{base},"), "\"\" is not target=source"),
            (format!("meter_id=M,{base},=X"), "a source without a target"),
            (
                format!("meter_id=M,{base},ts_format=#2"),
                "ts_format takes a format",
            ),
            (String::new(), "is not target=source"),
        ] {
            let err = CsvMapping::parse_spec(&spec).unwrap_err().to_string();
            assert!(err.contains(expected), "{spec}: {err}");
        }
    }

    #[test]
    fn toml_mapping_with_settings() {
        let m = CsvMapping::from_toml(
            r#"
            meter_id = "EAN"            # a column
            channel = { value = "1-0:1.8.0" }
            ts = { column = 2 }
            ts_format = "%d-%m-%Y %H:%M"
            value = "Reading"
            unit = { value = "kWh" }
            scale = 0.001
            to_unit = "kWh"
            tz = "Europe/Amsterdam"
            delimiter = ";"
            "#,
        )
        .unwrap();
        assert_eq!(m.meter_id, Field::Column("EAN".into()));
        assert_eq!(m.channel, Field::Constant("1-0:1.8.0".into()));
        assert_eq!(m.ts, Field::Position(2));
        assert_eq!(m.unit, Field::Constant("kWh".into()));
        assert_eq!(m.quality, None);
        assert_eq!(m.ts_format.as_deref(), Some("%d-%m-%Y %H:%M"));
        assert_eq!(m.scale, Some(0.001));
        assert_eq!(m.to_unit.as_deref(), Some("kWh"));
        assert_eq!(m.tz, Some(Europe::Amsterdam));
        assert_eq!(m.delimiter, Some(b';'));
        // The file's settings are the starting point; a flag then overrides one.
        let mut o = CsvOptions::from_mapping(m);
        assert_eq!(
            (o.scale, o.tz, o.delimiter),
            (0.001, Some(Europe::Amsterdam), Some(b';'))
        );
        o.scale = 1.0;
        assert_eq!(o.mapping.scale, Some(0.001));
    }

    #[test]
    fn toml_errors() {
        let base = "meter_id = \"M\"\nchannel = { value = \"c\" }\nts = \"T\"\nvalue = \"V\"\n";
        for (extra, expected) in [
            (
                "unit = { value = \"kWh\" }\ncolour = 1",
                "unknown field `colour`",
            ),
            ("", "missing field `unit`"),
            ("unit = 3", "unit must be a column name"),
            ("unit = { column = 0 }", "unit must be a column name"),
            (
                "unit = { value = \"kWh\", column = 1 }",
                "unit must be a column name",
            ),
            (
                "unit = \"U\"\ntz = \"Mars/Olympus\"",
                "not an IANA time zone",
            ),
            (
                "unit = \"U\"\ndelimiter = \";;\"",
                "not one ASCII character",
            ),
            ("unit = \"U\"\nscale = 0", "scale 0 must be"),
            ("unit = \"U\"\nto_unit = \"furlong\"", "to_unit \"furlong\""),
        ] {
            let err = format!(
                "{:#}",
                CsvMapping::from_toml(&format!("{base}{extra}")).unwrap_err()
            );
            assert!(err.contains(expected), "{extra}: {err}");
        }
        assert_eq!(parse_delimiter("tab").unwrap(), b'\t');
        assert_eq!(parse_delimiter("\t").unwrap(), b'\t');
        assert!(parse_delimiter("\"").is_err());
    }

    #[test]
    fn semicolons_and_decimal_commas() {
        let text = "EAN;Timestamp;Reading\n\
                    E1;2024-03-01 12:00;1234,5\n\
                    E1;2024-03-01 12:15; 1234.75 \n\
                    E1;2024-03-01 12:30;1.234,5\n";
        let (rows, n) = read(text, &options(SPEC), 0);
        assert_eq!(n, 3);
        let r0 = rows[0].as_ref().unwrap();
        assert_eq!(r0.value, 1234.5);
        assert_eq!((r0.line, r0.meter_id.as_str()), (2, "E1"));
        assert_eq!(
            (r0.channel.as_str(), r0.unit.as_str()),
            ("1-0:1.8.0", "kWh")
        );
        // Naive without tz: UTC.
        assert_eq!(r0.ts_ms, 1_709_294_400_000);
        assert_eq!(rows[1].as_ref().unwrap().value, 1234.75);
        let bad = rows[2].as_ref().unwrap_err();
        assert_eq!(bad.line, 4);
        assert_eq!(
            bad.reason,
            "value \"1.234,5\" is not a finite number (column \"Reading\")"
        );
        // With a comma delimiter a decimal comma would be a field separator: not accepted.
        assert_eq!(parse_value("1234,5", false), None);
    }

    #[test]
    fn wh_column_converted_to_kwh() {
        let text = "EAN,Timestamp,Reading,Unit\n\
                    E1,2024-03-01T12:00:00Z,1234.5,Wh\n\
                    E1,2024-03-01T12:15:00Z,2,MWh\n\
                    E1,2024-03-01T12:30:00Z,3,kWh\n\
                    E1,2024-03-01T12:45:00Z,4,m3\n";
        let mut o =
            options(r#"meter_id=EAN,channel="1-0:1.8.0",ts=Timestamp,value=Reading,unit=Unit"#);
        o.to_unit = Some("kWh".into());
        let (rows, _) = read(text, &o, 0);
        let values: Vec<f64> = rows[..3]
            .iter()
            .map(|r| r.as_ref().unwrap().value)
            .collect();
        // Dividing by the exact 1000 gives the double nearest 1.2345.
        assert_eq!(values, [1.2345, 2000.0, 3.0]);
        assert!(rows[..3].iter().all(|r| r.as_ref().unwrap().unit == "kWh"));
        assert_eq!(
            rows[3].as_ref().unwrap_err().reason,
            "cannot convert m3 to kWh"
        );

        // Scale first, then conversion; and volumes.
        o.scale = 0.5;
        o.to_unit = Some("L".into());
        let (rows, _) = read("EAN,Timestamp,Reading,Unit\nE1,1709294400,3,m³\n", &o, 0);
        assert_eq!(rows[0].as_ref().unwrap().value, 1500.0);
        assert_eq!(rows[0].as_ref().unwrap().unit, "L");
    }

    #[test]
    fn unit_conversions_are_by_prefix_within_a_quantity() {
        let convert = |v: f64, from: &str, to: &str| conversion(from, to).map(|c| c.apply(v));
        assert_eq!(convert(1.0, "GWh", "kWh"), Ok(1e6));
        assert_eq!(convert(1500.0, "W", "kW"), Ok(1.5));
        assert_eq!(convert(2.0, "Mvarh", "kvarh"), Ok(2000.0));
        assert_eq!(convert(250.0, "var", "kvar"), Ok(0.25));
        assert_eq!(convert(3.0, "kVAh", "VAh"), Ok(3000.0));
        assert_eq!(convert(3.0, "kVA", "VA"), Ok(3000.0));
        assert_eq!(convert(1.0, "m3", "L"), Ok(1000.0));
        assert_eq!(convert(7.0, "V", "V"), Ok(7.0));
        assert_eq!(
            convert(1.0, "Wh", "m3"),
            Err("cannot convert Wh to m3".into())
        );
        assert_eq!(
            convert(1.0, "kWh", "kW"),
            Err("cannot convert kWh to kW".into())
        );
        assert_eq!(
            convert(1.0, "kvarh", "kVAh"),
            Err("cannot convert kvarh to kVAh".into())
        );
        assert_eq!(
            convert(1.0, "KWH", "kWh"),
            Err("cannot convert KWH to kWh".into())
        );
    }

    #[test]
    fn to_unit_is_checked_when_the_reader_is_made() {
        let text = "EAN,Timestamp,Reading\nE1,1709294400,1\n";
        let mut o = options(SPEC);
        o.to_unit = Some("furlong".into());
        let err = CsvReader::new(text.as_bytes(), &o, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("to_unit \"furlong\""), "{err}");
        o.to_unit = Some("m3".into());
        let err = CsvReader::new(text.as_bytes(), &o, 0)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(err, "unit \"kWh\": cannot convert kWh to m3");
        o.to_unit = None;
        o.scale = f64::NAN;
        assert!(CsvReader::new(text.as_bytes(), &o, 0).is_err());
    }

    #[test]
    fn bad_rows_in_the_middle_keep_line_and_bytes() {
        let text = b"EAN,Timestamp,Reading\n\
                    E1,2024-03-01T12:00:00Z,1\n\
                    \n\
                    E1,2024-03-01T12:15:00Z\n\
                    E1,not a time,3\n\
                    E\xff,2024-03-01T12:45:00Z,4\n\
                    \"E,1\",2024-03-01T13:00:00Z,5\n\
                    E1,1999-12-31T23:00:00Z,6\n\
                    E1,2024-03-01T13:15:00Z,7\n";
        let mut reader = CsvReader::new(&text[..], &options(SPEC), 0).unwrap();
        let mut rows = Vec::new();
        while let Some(row) = reader.next_row().unwrap() {
            rows.push(row);
        }
        assert_eq!(reader.rows_read(), 7);
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0].as_ref().unwrap().line, 2);
        let bad: Vec<&BadRow> = rows[1..6].iter().map(|r| r.as_ref().unwrap_err()).collect();
        // Line 3 is empty: the csv crate skips it; line numbers stay physical.
        assert_eq!(bad[0].line, 4);
        assert_eq!(bad[0].raw, b"E1,2024-03-01T12:15:00Z");
        assert_eq!(bad[0].reason, "row has 2 fields, the header 3");
        assert_eq!(bad[1].line, 5);
        assert_eq!(bad[1].raw, b"E1,not a time,3");
        assert!(
            bad[1]
                .reason
                .starts_with("time \"not a time\" is not RFC 3339"),
            "{}",
            bad[1].reason
        );
        assert!(
            bad[1].reason.ends_with("(column \"Timestamp\")"),
            "{}",
            bad[1].reason
        );
        assert_eq!(bad[2].line, 6);
        assert_eq!(bad[2].raw, b"E\xff,2024-03-01T12:45:00Z,4");
        assert_eq!(bad[2].reason, "meter_id: column \"EAN\" is not UTF-8");
        assert_eq!(bad[3].line, 7);
        assert_eq!(bad[3].raw, b"\"E,1\",2024-03-01T13:00:00Z,5");
        assert_eq!(
            bad[3].reason,
            "meter_id \"E,1\" must be 1 to 64 characters of [A-Za-z0-9._-]"
        );
        assert_eq!(bad[4].line, 8);
        assert_eq!(
            bad[4].reason,
            "time 946681200000 ms (1999-12-31T23:00:00.000Z) is outside 2000-01-01 .. now + 1 day"
        );
        let last = rows[6].as_ref().unwrap();
        assert_eq!((last.line, last.value), (9, 7.0));
    }

    #[test]
    fn missing_mapped_column_is_named() {
        let text = "EAN;Time;Reading\nE1;1709294400;1\n";
        let err = CsvReader::new(text.as_bytes(), &options(SPEC), 0)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "column \"Timestamp\" (for ts) is not in the header; its columns are \"EAN\", \
             \"Time\", \"Reading\" (read with delimiter ';')"
        );
        let spec = r#"meter_id=EAN,channel="c",ts=#4,value=Reading,unit="kWh""#;
        let err = CsvReader::new(text.as_bytes(), &options(spec), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("column #4 (for ts) is beyond the header's 3 columns"),
            "{err}"
        );
        let err = CsvReader::new(&b""[..], &options(SPEC), 0)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(err, "the CSV file is empty: no header line");
    }

    #[test]
    fn resume_skips_rows_but_counts_them() {
        let text = "EAN,Timestamp,Reading\n\
                    E1,1709294400,1\n\
                    E1,1709295300,x\n\
                    E1,1709296200,3\n\
                    E1,1709297100,4\n";
        let (rows, n) = read(text, &options(SPEC), 2);
        assert_eq!(n, 4);
        let rows = good(&rows);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].line, rows[0].value), (4, 3.0));
        assert_eq!((rows[1].line, rows[1].value), (5, 4.0));
        // Skipping past the end: nothing, and rows_read says how many there were.
        let (rows, n) = read(text, &options(SPEC), 10);
        assert!(rows.is_empty());
        assert_eq!(n, 4);
    }

    #[test]
    fn quoted_fields_with_commas_and_a_bom() {
        let text = "\u{feff}\"Meter, ID\",\"Time\",\"Value, kWh\",Q\n\
                    \"E1\",\"2024-03-01 12:00:00\",\"1,5\",\"3\"\n\
                    E2,2024-03-01 12:00:00,\"2.5\",\n\
                    E3,2024-03-01 12:00:00,2.5,70000\n";
        let spec =
            r#"meter_id='Meter, ID',channel="c",ts=Time,value='Value, kWh',unit="kWh",quality=Q"#;
        let (rows, _) = read(text, &options(spec), 0);
        // Delimiter detected as ',' (commas inside quotes do not count); no decimal comma then.
        assert_eq!(
            rows[0].as_ref().unwrap_err().reason,
            "value \"1,5\" is not a finite number (column \"Value, kWh\")"
        );
        assert_eq!(
            rows[0].as_ref().unwrap_err().raw,
            b"\"E1\",\"2024-03-01 12:00:00\",\"1,5\",\"3\""
        );
        let r = rows[1].as_ref().unwrap();
        assert_eq!((r.meter_id.as_str(), r.value, r.quality), ("E2", 2.5, 0));
        assert_eq!(
            rows[2].as_ref().unwrap_err().reason,
            "quality \"70000\" is not an integer 0 to 65535 (column \"Q\")"
        );
    }

    #[test]
    fn crlf_blank_lines_and_multiline_fields_keep_physical_lines() {
        // The csv crate's own Position::line() says 1, 2, 4, 6 here.
        let text = b"EAN;Timestamp;Reading\r\n\
                     E1;1709294400;1\r\n\
                     \r\n\
                     E1;1709295300;x\r\n\
                     \"E\r\n1\";1709296200;3\r\n\
                     E1;1709297100;4";
        let mut reader = CsvReader::new(&text[..], &options(SPEC), 0).unwrap();
        let mut rows = Vec::new();
        while let Some(row) = reader.next_row().unwrap() {
            rows.push(row);
        }
        assert_eq!(rows[0].as_ref().unwrap().line, 2);
        let bad = rows[1].as_ref().unwrap_err();
        assert_eq!((bad.line, bad.raw.as_slice()), (4, &b"E1;1709295300;x"[..]));
        let bad = rows[2].as_ref().unwrap_err();
        assert_eq!(bad.line, 5);
        assert_eq!(bad.raw, b"\"E\r\n1\";1709296200;3");
        assert!(
            bad.reason.starts_with("meter_id \"E\\r\\n1\""),
            "{}",
            bad.reason
        );
        assert_eq!(rows[3].as_ref().unwrap().line, 7);
        assert_eq!(reader.rows_read(), 4);
    }

    #[test]
    fn lines_stay_right_past_the_kept_window() {
        let mut text = String::from("EAN,Timestamp,Reading\r\n");
        for i in 0..20_000 {
            text.push_str(&format!("E1,{},{}\r\n", 1_709_294_400 + i * 900, i));
        }
        text.push_str("E1,1709294400,oops\r\n");
        let (rows, n) = read(&text, &options(SPEC), 19_990);
        assert_eq!(n, 20_001);
        assert_eq!(rows.len(), 11);
        assert_eq!(rows[0].as_ref().unwrap().line, 19_992);
        let bad = rows[10].as_ref().unwrap_err();
        assert_eq!(
            (bad.line, bad.raw.as_slice()),
            (20_002, &b"E1,1709294400,oops"[..])
        );
    }

    #[test]
    fn delimiter_detection() {
        assert_eq!(detect_delimiter(b"a;b;c\n"), b';');
        assert_eq!(detect_delimiter(b"a\tb\tc\r\n"), b'\t');
        assert_eq!(detect_delimiter(b"\"a;b\",c\n"), b',');
        assert_eq!(detect_delimiter(b"abc\n"), b',');
        let text = "EAN\tTimestamp\tReading\nE1\t1709294400\t1,5\n";
        let reader = CsvReader::new(text.as_bytes(), &options(SPEC), 0).unwrap();
        assert_eq!(reader.delimiter(), b'\t');
    }

    #[test]
    fn dst_spring_in_amsterdam() {
        // 2024-03-31: 02:00 CET jumps to 03:00 CEST at 01:00Z; 02:00-02:59 does not exist
        // and reads as standard time (UTC+1), like an unflagged DSMR time.
        let text = "EAN,Timestamp,Reading\n\
                    E1,2024-03-31 01:45,1\n\
                    E1,2024-03-31 02:00,2\n\
                    E1,2024-03-31 02:30,3\n\
                    E1,2024-03-31 03:00,4\n\
                    E1,2024-03-31T03:15:00.500,5\n";
        let mut o = options(SPEC);
        o.tz = Some(Europe::Amsterdam);
        let (rows, _) = read(text, &o, 0);
        assert_eq!(
            ts(&rows),
            [
                1_711_845_900_000, // 00:45Z
                1_711_846_800_000, // 01:00Z (02:00 read as +01:00)
                1_711_848_600_000, // 01:30Z
                1_711_846_800_000, // 01:00Z (03:00 CEST)
                1_711_847_700_500, // 01:15:00.5Z
            ]
        );
    }

    #[test]
    fn dst_autumn_in_amsterdam() {
        // 2024-10-27: 03:00 CEST falls back to 02:00 CET at 01:00Z; exports list 02:00-02:45
        // twice. Two meters interleaved: each series keeps its own last instant.
        let mut text = String::from("EAN,Timestamp,Reading\n");
        let wall = [
            "01:45", "02:00", "02:15", "02:30", "02:45", "02:00", "02:15", "02:30", "02:45",
            "03:00",
        ];
        for w in wall {
            for meter in ["E1", "E2"] {
                text.push_str(&format!("{meter},2024-10-27 {w},1\n"));
            }
        }
        let mut o = options(SPEC);
        o.tz = Some(Europe::Amsterdam);
        let (rows, _) = read(&text, &o, 0);
        const MIN: i64 = 60_000;
        let first = 1_729_986_300_000; // 2024-10-26T23:45Z
        let expected: Vec<i64> = (0..10).flat_map(|i| [first + i * 15 * MIN; 2]).collect();
        assert_eq!(ts(&rows), expected);
        assert_eq!(ts(&rows)[2], 1_729_987_200_000); // first 02:00 = 00:00Z
        assert_eq!(ts(&rows)[10], 1_729_990_800_000); // second 02:00 = 01:00Z
        assert_eq!(ts(&rows)[18], 1_729_994_400_000); // 03:00 CET = 02:00Z

        // Resuming inside the repeated hour gives the same instants: skipped rows set the state.
        let (resumed, n) = read(&text, &o, 11);
        assert_eq!(n, 20);
        assert_eq!(ts(&resumed), expected[11..]);
    }

    #[test]
    fn epoch_seconds_and_milliseconds() {
        assert_eq!(
            parse_time("1709294400", None),
            Ok(Stamp::Utc(1_709_294_400_000))
        );
        assert_eq!(
            parse_time("1709294400123", None),
            Ok(Stamp::Utc(1_709_294_400_123))
        );
        assert_eq!(
            parse_time("99999999999", None),
            Ok(Stamp::Utc(99_999_999_999_000))
        );
        assert_eq!(
            parse_time("100000000000", None),
            Ok(Stamp::Utc(100_000_000_000))
        );
        // tz does not apply to Unix times.
        let text = "EAN,Timestamp,Reading\nE1,1709294400,1\nE1,1709294400500,2\n";
        let mut o = options(SPEC);
        o.tz = Some(Europe::Amsterdam);
        let (rows, _) = read(text, &o, 0);
        assert_eq!(ts(&rows), [1_709_294_400_000, 1_709_294_400_500]);
    }

    #[test]
    fn rfc3339_with_offsets() {
        let expected = Ok(Stamp::Utc(1_729_988_100_000)); // 2024-10-27T00:15:00Z
        for text in [
            "2024-10-27T02:15:00+02:00",
            "2024-10-27 00:15:00Z",
            "2024-10-27T00:15Z",
            "2024-10-26T19:15:00-0500",
            "2024-10-27 02:15:00 +02",
            "2024-10-27T00:15:00.000z",
        ] {
            assert_eq!(parse_time(text, None), expected, "{text}");
        }
        assert_eq!(
            parse_time("2024-10-27", None),
            Ok(Stamp::Local(
                NaiveDate::from_ymd_opt(2024, 10, 27)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
            ))
        );
        for text in [
            "2024-10-27T02:15:00+2",
            "2024-10-27T02:15:00+24:00",
            "27-10-2024 02:15",
            "",
            "-5",
        ] {
            assert!(parse_time(text, None).is_err(), "{text}");
        }
        // An offset is exact: tz does not shift it.
        let text = "EAN,Timestamp,Reading\nE1,2024-10-27T02:15:00+02:00,1\n";
        let mut o = options(SPEC);
        o.tz = Some(Europe::Amsterdam);
        assert_eq!(ts(&read(text, &o, 0).0), [1_729_988_100_000]);
    }

    #[test]
    fn ts_format_reads_other_layouts() {
        let text = "EAN;Datum;Stand\nE1;27-10-2024 03:15;1\nE1;27.10.2024;2\n";
        let mut o = options(
            r#"meter_id=EAN,channel="c",ts=Datum,value=Stand,unit="kWh",ts_format="%d-%m-%Y %H:%M""#,
        );
        o.tz = Some(Europe::Amsterdam);
        let (rows, _) = read(text, &o, 0);
        assert_eq!(rows[0].as_ref().unwrap().ts_ms, 1_729_995_300_000); // 02:15Z
        assert_eq!(
            rows[1].as_ref().unwrap_err().reason,
            "time \"27.10.2024\" does not match ts_format \"%d-%m-%Y %H:%M\" (column \"Datum\")"
        );
        let day = parse_time("27.10.2024", Some("%d.%m.%Y")).unwrap();
        assert_eq!(
            day,
            Stamp::Local(
                NaiveDate::from_ymd_opt(2024, 10, 27)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
            )
        );
        let exact = parse_time("27-10-2024 02:15 +0200", Some("%d-%m-%Y %H:%M %z")).unwrap();
        assert_eq!(exact, Stamp::Utc(1_729_988_100_000));
    }

    #[test]
    fn validate_applies_the_live_limits() {
        let now = 1_730_000_000_000;
        let row = Row {
            line: 2,
            meter_id: "E0001".into(),
            channel: "1-0:1.8.0".into(),
            ts_ms: now,
            value: 1.0,
            unit: "kWh".into(),
            quality: 0,
        };
        assert_eq!(validate(&row, now), Ok(()));
        let check = |f: &dyn Fn(&mut Row)| {
            let mut r = row.clone();
            f(&mut r);
            validate(&r, now).unwrap_err()
        };
        assert_eq!(
            check(&|r| r.meter_id = "a b".into()),
            "meter_id \"a b\" must be 1 to 64 characters of [A-Za-z0-9._-]"
        );
        assert_eq!(check(&|r| r.channel.clear()), "no channel");
        assert_eq!(
            check(&|r| r.channel = "x".repeat(MAX_CHANNEL_BYTES + 1)),
            "channel is 129 bytes, at most 128"
        );
        assert_eq!(
            check(&|r| r.unit = "x".repeat(MAX_UNIT_BYTES + 1)),
            "unit is 33 bytes, at most 32"
        );
        assert_eq!(check(&|r| r.value = f64::NAN), "value NaN is not finite");
        assert_eq!(
            check(&|r| r.ts_ms = now + MAX_AHEAD_MS + 1),
            "time 1730086400001 ms (2024-10-28T03:33:20.001Z) is outside 2000-01-01 .. now + 1 day"
        );
        assert_eq!(
            validate(
                &Row {
                    ts_ms: EARLIEST_TS_MS,
                    ..row.clone()
                },
                now
            ),
            Ok(())
        );
    }

    /// A public file: the BDEW standard load profiles as demandlib 0.2.2 ships them
    /// (`demandlib/bdew/bdew_data/selp_series.csv`, MIT; data published by BDEW), see
    /// `tests/fixtures/load_profiles/SOURCES.md`. Its first column has an empty name and holds
    /// naive quarter-hour stamps; 21 typical days of 96 rows each.
    #[test]
    fn reads_the_bdew_selp_series() {
        const PATH: &str = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/load_profiles/selp_series.csv"
        );
        let text = std::fs::read_to_string(PATH).unwrap();
        let data_lines = text.lines().count() as u64 - 1;
        assert_eq!(data_lines, 2016);
        let mut o = options(r#"meter_id="h0-profile",channel="h0",ts=#1,value=h0,unit="kWh""#);
        o.tz = Some(Europe::Berlin);
        let file = std::fs::File::open(PATH).unwrap();
        let mut reader = CsvReader::new(file, &o, 0).unwrap();
        let mut rows = Vec::new();
        while let Some(row) = reader.next_row().unwrap() {
            rows.push(row.unwrap());
        }
        assert_eq!(reader.rows_read(), data_lines);
        assert_eq!(rows.len() as u64, data_lines);
        let first = &rows[0];
        // 2007-01-01 00:00 CET = 2006-12-31T23:00:00Z.
        assert_eq!(first.ts_ms, 1_167_606_000_000);
        assert_eq!(first.value, 0.08636);
        assert_eq!((first.line, first.meter_id.as_str()), (2, "h0-profile"));
        assert_eq!((first.channel.as_str(), first.unit.as_str()), ("h0", "kWh"));
        let last = &rows[rows.len() - 1];
        // 2007-01-21 23:45 CET = 22:45Z.
        assert_eq!(
            (last.ts_ms, last.value, last.line),
            (1_169_419_500_000, 0.08072, 2017)
        );
    }
}
