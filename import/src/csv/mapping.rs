//! The CSV mapping: where each canonical field comes from ([`Field`], [`CsvMapping`]), read
//! from a `--map` spec or a TOML mapping file (grammar in the module doc of `csv`), with the
//! settings a mapping file may carry.

use chrono_tz::Tz;
use serde::Deserialize;

use super::reader::parse_delimiter;
use super::units::{check_scale, check_unit};
use crate::ImportError;

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
    fn set(&mut self, target: &str, field: Field) -> Result<(), ImportError> {
        let slot = match target {
            "meter_id" => &mut self.meter_id,
            "channel" => &mut self.channel,
            "ts" => &mut self.ts,
            "value" => &mut self.value,
            "unit" => &mut self.unit,
            "quality" => &mut self.quality,
            "ts_format" => {
                if self.ts_format.is_some() {
                    return Err(ImportError::mapping(
                        "ts_format",
                        "mapping: ts_format is given twice",
                    ));
                }
                let format = match field {
                    Field::Column(f) | Field::Constant(f) if !f.is_empty() => f,
                    _ => {
                        return Err(ImportError::mapping(
                            "ts_format",
                            "mapping: ts_format takes a format such as \"%d-%m-%Y %H:%M\"",
                        ))
                    }
                };
                self.ts_format = Some(format);
                return Ok(());
            }
            _ => {
                return Err(ImportError::mapping(
                    target,
                    format!(
                        "mapping: unknown target {target:?} (targets: {})",
                        TARGETS.join(", ")
                    ),
                ))
            }
        };
        if slot.is_some() {
            return Err(ImportError::mapping(
                target,
                format!("mapping: {target} is given twice"),
            ));
        }
        *slot = Some(field);
        Ok(())
    }

    fn finish(self) -> Result<CsvMapping, ImportError> {
        let required = |field: Option<Field>, target: &str| {
            field.ok_or_else(|| {
                ImportError::mapping(
                    target,
                    format!(
                        "mapping: {target} is missing (meter_id, channel, ts, value and unit \
                         are required; channel and unit may be constants such as unit=\"kWh\")"
                    ),
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
    /// Each field from the column of its own name (`meter_id`, `channel`, `ts`, `value`,
    /// `unit`; a Parquet file's `quality` where there is one: a CSV's quality needs `--map`),
    /// and no settings.
    pub fn by_own_names() -> CsvMapping {
        let column = |name: &str| Field::Column(name.to_string());
        CsvMapping {
            meter_id: column("meter_id"),
            channel: column("channel"),
            ts: column("ts"),
            value: column("value"),
            unit: column("unit"),
            quality: None,
            ts_format: None,
            scale: None,
            to_unit: None,
            tz: None,
            delimiter: None,
        }
    }

    /// Parses `--map meter_id=COL,channel=COL|"1-0:1.8.0",ts=COL,value=COL,unit=COL|"kWh"`
    /// (grammar in the module doc). Errors name the target.
    pub fn parse_spec(spec: &str) -> Result<CsvMapping, ImportError> {
        let mut targets = Targets::default();
        let mut chars = spec.chars().peekable();
        loop {
            let mut target = String::new();
            loop {
                match chars.next() {
                    Some('=') => break,
                    Some(',') | None => {
                        return Err(ImportError::Mapping {
                            key: None,
                            reason: format!(
                                "mapping: {:?} is not target=source (in {spec:?})",
                                target.trim()
                            ),
                        })
                    }
                    Some(c) => target.push(c),
                }
            }
            let target = target.trim().to_string();
            if target.is_empty() {
                return Err(ImportError::Mapping {
                    key: None,
                    reason: format!("mapping: a source without a target (in {spec:?})"),
                });
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            // `more`: a comma follows, so another pair must.
            let (field, more) = match chars.peek() {
                Some(&quote @ ('"' | '\'')) => {
                    chars.next();
                    let text = quoted(&mut chars, quote).ok_or_else(|| {
                        ImportError::mapping(
                            &target,
                            format!("mapping: {target}: the {quote} is not closed"),
                        )
                    })?;
                    while chars.next_if(|c| c.is_whitespace()).is_some() {}
                    let more = match chars.next() {
                        Some(',') => true,
                        None => false,
                        Some(c) => {
                            return Err(ImportError::mapping(
                                &target,
                                format!("mapping: {target}: {c:?} after the quoted source"),
                            ))
                        }
                    };
                    let field = if quote == '"' {
                        Field::Constant(text)
                    } else if text.trim().is_empty() {
                        return Err(ImportError::mapping(
                            &target,
                            format!("mapping: {target} has an empty column name"),
                        ));
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
    pub fn from_toml(text: &str) -> Result<CsvMapping, ImportError> {
        let file: MappingFile = toml::from_str(text).map_err(ImportError::MappingToml)?;
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
            mapping.tz = Some(tz.parse::<Tz>().map_err(|_| {
                ImportError::mapping(
                    "tz",
                    format!("mapping file: tz {tz:?} is not an IANA time zone"),
                )
            })?);
        }
        if let Some(d) = file.delimiter {
            mapping.delimiter =
                Some(parse_delimiter(&d).map_err(|e| ImportError::MappingFile(Box::new(e)))?);
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
fn bare_field(target: &str, bare: &str) -> Result<Field, ImportError> {
    if bare.is_empty() {
        return Err(ImportError::mapping(
            target,
            format!("mapping: {target} has an empty source"),
        ));
    }
    if let Some(n) = bare.strip_prefix('#') {
        return match n.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Field::Position(n)),
            _ => Err(ImportError::mapping(
                target,
                format!("mapping: {target}: {bare:?} is not a column position (#1, #2, ...)"),
            )),
        };
    }
    if bare.contains(['=', '"', '\'']) {
        return Err(ImportError::mapping(
            target,
            format!(
                "mapping: {target}: column name {bare:?} holds = or a quote: put it in single \
                 quotes (a missing comma?)"
            ),
        ));
    }
    Ok(Field::Column(bare.to_string()))
}

/// A TOML source: `"Name"`, `{ column = N }` or `{ value = "..." }`.
fn toml_field(target: &str, value: toml::Value) -> Result<Field, ImportError> {
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
        ImportError::mapping(
            target,
            format!(
                "mapping file: {target} must be a column name, {{ column = N }} (1-based) or \
                 {{ value = \"constant\" }}"
            ),
        )
    })
}
