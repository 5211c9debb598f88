//! The meter registry: what each meter is and where it sits in the grid (kind, model, the
//! interval it reads at, district, feeder and transformer, its role there, import only,
//! tariff), each record valid over `[valid_from, valid_to)`, so that a meter exchange or a
//! move keeps its history. Optional: without one, everything works as before.
//!
//! It comes as a CSV from the utility's asset system (`meterflow registry import`): the
//! columns below, by name, in any order; an unknown column is refused by name, a bad value
//! by line and column. Each import is a whole registry, kept on the tree as
//! `{data_dir}/registry/registry-{imported_ms}.parquet`; the newest is the registry.
//!
//! Columns: `meter_id` (required), `kind` (electricity, gas, water, heat, gateway; required),
//! `model`, `expected_interval_s`, `district`, `feeder`, `transformer`, `role` (customer,
//! feeder_head, transformer_head; customer when empty), `import_only` (true/false, yes/no,
//! 1/0; false when empty), `tariff`, `valid_from` and `valid_to` (a date, local midnight in
//! the time zone given, or RFC 3339; empty: open).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use meterflow_billing::Zone;

use crate::clickhouse::{sql_text, time_sql, ClickHouseConfig, ClickHouseError, TimeColumns};
use crate::whole_file::{column, parquet_files, read_batches, write_whole};
use crate::StorageError;

/// What a meter measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MeterKind {
    Electricity,
    Gas,
    Water,
    Heat,
    /// A gateway that publishes for meters behind it.
    Gateway,
}

impl MeterKind {
    pub const ALL: [MeterKind; 5] = [
        MeterKind::Electricity,
        MeterKind::Gas,
        MeterKind::Water,
        MeterKind::Heat,
        MeterKind::Gateway,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MeterKind::Electricity => "electricity",
            MeterKind::Gas => "gas",
            MeterKind::Water => "water",
            MeterKind::Heat => "heat",
            MeterKind::Gateway => "gateway",
        }
    }

    pub fn parse(text: &str) -> Option<MeterKind> {
        MeterKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// A meter's place in the energy balance of its feeder or transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Billed: its energy is the customers' side of the balance.
    Customer,
    /// Measures what enters its feeder.
    FeederHead,
    /// Measures what enters its transformer.
    TransformerHead,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Customer, Role::FeederHead, Role::TransformerHead];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::FeederHead => "feeder_head",
            Role::TransformerHead => "transformer_head",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// One meter over one span of time.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterRecord {
    pub meter_id: String,
    pub kind: MeterKind,
    pub model: String,
    /// The interval the meter reads at, seconds (`None`: not known, inferred from reads).
    pub expected_interval_s: Option<u32>,
    /// How often it reports, seconds, when not at each reading (a meter that reads every 15
    /// minutes and pushes its day once a night: 86400). `None`: at each reading.
    pub report_interval_s: Option<u32>,
    pub district: String,
    pub feeder: String,
    pub transformer: String,
    pub role: Role,
    /// Reverse energy on it is suspect.
    pub import_only: bool,
    pub tariff: String,
    /// `[valid_from, valid_to)`, Unix ms; `None`: open.
    pub valid_from_ms: Option<i64>,
    pub valid_to_ms: Option<i64>,
    /// The CSV line it came from (for errors).
    pub line: u64,
}

impl MeterRecord {
    /// How often the meter is heard, seconds: its report interval, else its reading interval.
    pub fn heard_every_s(&self) -> Option<u32> {
        self.report_interval_s.or(self.expected_interval_s)
    }

    /// Whether it holds at `at_ms`.
    pub fn holds_at(&self, at_ms: i64) -> bool {
        self.valid_from_ms.is_none_or(|f| f <= at_ms) && self.valid_to_ms.is_none_or(|t| at_ms < t)
    }
}

/// The columns a registry CSV may have.
pub const COLUMNS: [&str; 13] = [
    "meter_id",
    "kind",
    "model",
    "expected_interval_s",
    "district",
    "feeder",
    "transformer",
    "role",
    "import_only",
    "tariff",
    "valid_from",
    "valid_to",
    "report_interval_s",
];

/// The records of a registry, by meter, each meter's in order of `valid_from`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    meters: BTreeMap<String, Vec<MeterRecord>>,
}

fn bad(line: u64, column: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Registry {
        line,
        column: column.to_string(),
        reason: reason.into(),
    }
}

impl Registry {
    /// Reads a registry CSV (with a header); times without an offset are local to `zone`.
    /// Two records of one meter whose spans overlap are refused, naming both lines.
    pub fn from_csv(bytes: &[u8], zone: &Zone) -> Result<Registry, StorageError> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(bytes);
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| bad(1, "", format!("the header: {e}")))?
            .iter()
            .map(str::to_string)
            .collect();
        for name in &header {
            if !COLUMNS.contains(&name.as_str()) {
                return Err(bad(
                    1,
                    name,
                    format!("unknown column; the columns are {}", COLUMNS.join(", ")),
                ));
            }
        }
        for required in ["meter_id", "kind"] {
            if !header.iter().any(|h| h == required) {
                return Err(bad(1, required, "the column is required"));
            }
        }
        let mut registry = Registry::default();
        for (i, row) in reader.records().enumerate() {
            let line = i as u64 + 2;
            let row = row.map_err(|e| bad(line, "", e.to_string()))?;
            let cell = |name: &str| -> &str {
                header
                    .iter()
                    .position(|h| h == name)
                    .and_then(|c| row.get(c))
                    .unwrap_or("")
            };
            let meter_id = cell("meter_id");
            if !meterflow_proto::is_valid_meter_id(meter_id) {
                return Err(bad(
                    line,
                    "meter_id",
                    format!("{meter_id:?} is not a meter id"),
                ));
            }
            let kind = MeterKind::parse(cell("kind")).ok_or_else(|| {
                bad(
                    line,
                    "kind",
                    format!(
                        "{:?}: one of {}",
                        cell("kind"),
                        MeterKind::ALL.map(MeterKind::as_str).join(", ")
                    ),
                )
            })?;
            let role = match cell("role") {
                "" => Role::Customer,
                text => Role::parse(text).ok_or_else(|| {
                    bad(
                        line,
                        "role",
                        format!(
                            "{text:?}: one of {}",
                            Role::ALL.map(Role::as_str).join(", ")
                        ),
                    )
                })?,
            };
            let interval = |name: &str| -> Result<Option<u32>, StorageError> {
                match cell(name) {
                    "" => Ok(None),
                    text => text
                        .parse::<u32>()
                        .ok()
                        .filter(|s| (1..=31 * 86_400).contains(s))
                        .map(Some)
                        .ok_or_else(|| bad(line, name, format!("{text:?}: seconds, 1 to 2678400"))),
                }
            };
            let expected_interval_s = interval("expected_interval_s")?;
            let report_interval_s = interval("report_interval_s")?;
            let import_only = match cell("import_only").to_ascii_lowercase().as_str() {
                "" | "false" | "no" | "0" => false,
                "true" | "yes" | "1" => true,
                other => {
                    return Err(bad(
                        line,
                        "import_only",
                        format!("{other:?}: true or false"),
                    ))
                }
            };
            let time = |name: &str| -> Result<Option<i64>, StorageError> {
                match cell(name) {
                    "" => Ok(None),
                    text => zone
                        .parse_time(text, name)
                        .map(Some)
                        .map_err(|e| bad(line, name, e.to_string())),
                }
            };
            let (valid_from_ms, valid_to_ms) = (time("valid_from")?, time("valid_to")?);
            if let (Some(f), Some(t)) = (valid_from_ms, valid_to_ms) {
                if t <= f {
                    return Err(bad(line, "valid_to", "must be after valid_from"));
                }
            }
            registry
                .meters
                .entry(meter_id.to_string())
                .or_default()
                .push(MeterRecord {
                    meter_id: meter_id.to_string(),
                    kind,
                    model: cell("model").to_string(),
                    expected_interval_s,
                    report_interval_s,
                    district: cell("district").to_string(),
                    feeder: cell("feeder").to_string(),
                    transformer: cell("transformer").to_string(),
                    role,
                    import_only,
                    tariff: cell("tariff").to_string(),
                    valid_from_ms,
                    valid_to_ms,
                    line,
                });
        }
        for records in registry.meters.values_mut() {
            records.sort_by_key(|r| r.valid_from_ms.unwrap_or(i64::MIN));
            for pair in records.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                if a.valid_to_ms
                    .is_none_or(|to| to > b.valid_from_ms.unwrap_or(i64::MIN))
                {
                    return Err(bad(
                        b.line,
                        "valid_from",
                        format!(
                            "meter {} on line {} is valid over this time too: one record per meter at a time",
                            b.meter_id, a.line
                        ),
                    ));
                }
            }
        }
        Ok(registry)
    }

    /// The record of `meter` at `at_ms`, if the registry has one.
    pub fn at(&self, meter: &str, at_ms: i64) -> Option<&MeterRecord> {
        self.meters.get(meter)?.iter().find(|r| r.holds_at(at_ms))
    }

    /// Every record of `meter`, by time.
    pub fn records_of(&self, meter: &str) -> impl Iterator<Item = &MeterRecord> {
        self.meters.get(meter).into_iter().flatten()
    }

    /// Every record, by meter and time.
    pub fn records(&self) -> impl Iterator<Item = &MeterRecord> {
        self.meters.values().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
    }
}

const FOLDER: &str = "registry";

fn schema() -> Arc<Schema> {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let time = |name: &str| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        )
    };
    Arc::new(Schema::new(vec![
        text("meter_id"),
        text("kind"),
        text("model"),
        Field::new("expected_interval_s", DataType::UInt32, true),
        text("district"),
        text("feeder"),
        text("transformer"),
        text("role"),
        Field::new("import_only", DataType::Boolean, false),
        text("tariff"),
        time("valid_from"),
        time("valid_to"),
        Field::new("line", DataType::UInt64, false),
        Field::new("report_interval_s", DataType::UInt32, true),
    ]))
}

impl Registry {
    /// Keeps this registry under `data_dir` as the newest (`imported_ms`: when it was
    /// imported). Returns the file.
    pub fn save(&self, data_dir: &Path, imported_ms: i64) -> Result<PathBuf, StorageError> {
        let records: Vec<&MeterRecord> = self.records().collect();
        let strings = |f: fn(&MeterRecord) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(records.iter().map(|r| f(r))))
        };
        let times = |f: fn(&MeterRecord) -> Option<i64>| -> ArrayRef {
            Arc::new(
                TimestampMillisecondArray::from_iter(records.iter().map(|r| f(r)))
                    .with_timezone("UTC"),
            )
        };
        let dir = data_dir.join(FOLDER);
        let name = format!("registry-{imported_ms}.parquet");
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                strings(|r| &r.meter_id),
                strings(|r| r.kind.as_str()),
                strings(|r| &r.model),
                Arc::new(UInt32Array::from_iter(
                    records.iter().map(|r| r.expected_interval_s),
                )),
                strings(|r| &r.district),
                strings(|r| &r.feeder),
                strings(|r| &r.transformer),
                strings(|r| r.role.as_str()),
                Arc::new(BooleanArray::from_iter(
                    records.iter().map(|r| Some(r.import_only)),
                )),
                strings(|r| &r.tariff),
                times(|r| r.valid_from_ms),
                times(|r| r.valid_to_ms),
                Arc::new(UInt64Array::from_iter_values(
                    records.iter().map(|r| r.line),
                )),
                Arc::new(UInt32Array::from_iter(
                    records.iter().map(|r| r.report_interval_s),
                )),
            ],
        )
        .map_err(|e| StorageError::io("building", dir.join(&name), std::io::Error::other(e)))?;
        write_whole(&dir, &name, &batch)
    }

    /// The newest registry kept under `data_dir`; empty when none was imported.
    pub fn load(data_dir: &Path) -> Result<Registry, StorageError> {
        let files = parquet_files(&data_dir.join(FOLDER))?;
        // `registry-{ms}.parquet`: the greatest import time is the newest.
        let Some(path) = files.iter().max_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix("registry-"))
                .and_then(|ms| ms.parse::<i64>().ok())
                .unwrap_or(i64::MIN)
        }) else {
            return Ok(Registry::default());
        };
        let mut registry = Registry::default();
        for batch in read_batches(path)? {
            let text = |name: &str| column::<StringArray>(&batch, name, path);
            let time = |name: &str| column::<TimestampMillisecondArray>(&batch, name, path);
            let (meters, kinds, models) = (text("meter_id")?, text("kind")?, text("model")?);
            let (districts, feeders, transformers) =
                (text("district")?, text("feeder")?, text("transformer")?);
            let (roles, tariffs) = (text("role")?, text("tariff")?);
            let intervals = column::<UInt32Array>(&batch, "expected_interval_s", path)?;
            let import_only = column::<BooleanArray>(&batch, "import_only", path)?;
            let lines = column::<UInt64Array>(&batch, "line", path)?;
            // (A registry kept by an earlier version has no report interval.)
            let reports = batch
                .column_by_name("report_interval_s")
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>());
            let (from, to) = (time("valid_from")?, time("valid_to")?);
            let unreadable = |what: &str| {
                StorageError::io(
                    "reading",
                    path,
                    std::io::Error::other(format!("a {what} meterflow does not know")),
                )
            };
            use arrow_array::Array;
            for i in 0..batch.num_rows() {
                let record = MeterRecord {
                    meter_id: meters.value(i).to_string(),
                    kind: MeterKind::parse(kinds.value(i)).ok_or_else(|| unreadable("kind"))?,
                    model: models.value(i).to_string(),
                    expected_interval_s: (!intervals.is_null(i)).then(|| intervals.value(i)),
                    report_interval_s: reports.filter(|r| !r.is_null(i)).map(|r| r.value(i)),
                    district: districts.value(i).to_string(),
                    feeder: feeders.value(i).to_string(),
                    transformer: transformers.value(i).to_string(),
                    role: Role::parse(roles.value(i)).ok_or_else(|| unreadable("role"))?,
                    import_only: import_only.value(i),
                    tariff: tariffs.value(i).to_string(),
                    valid_from_ms: (!from.is_null(i)).then(|| from.value(i)),
                    valid_to_ms: (!to.is_null(i)).then(|| to.value(i)),
                    line: lines.value(i),
                };
                registry
                    .meters
                    .entry(record.meter_id.clone())
                    .or_default()
                    .push(record);
            }
        }
        Ok(registry)
    }
}

/// The registry in ClickHouse's `meters`: each import's records under its `imported_at`
/// (Unix ms), then a marker row (`meter_id` empty, `line` the number of records) once every
/// record is in. The registry is the newest import whose marker is there and whose records
/// all are: an import cut short, or still going on, is not read. Earlier imports stay as its
/// history.
impl Registry {
    /// The INSERT statements of this registry as imported at `imported_ms`, the marker last.
    #[doc(hidden)]
    pub fn insert_sql(&self, db: &str, times: TimeColumns, imported_ms: i64) -> Vec<String> {
        let (_, time) = time_sql(times, "valid_from");
        let nullable = |ms: Option<i64>| ms.map_or_else(|| "NULL".to_string(), time);
        let seconds = |s: Option<u32>| s.map_or_else(|| "NULL".to_string(), |s| s.to_string());
        let columns = "imported_at, meter_id, kind, model, expected_interval_s, district, feeder, \
                       transformer, role, import_only, tariff, valid_from, valid_to, line, \
                       report_interval_s";
        let records: Vec<&MeterRecord> = self.records().collect();
        let mut statements: Vec<String> = records
            .chunks(10_000)
            .map(|chunk| {
                let rows: Vec<String> = chunk
                    .iter()
                    .map(|r| {
                        format!(
                            "({imported_ms}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                            sql_text(&r.meter_id),
                            sql_text(r.kind.as_str()),
                            sql_text(&r.model),
                            seconds(r.expected_interval_s),
                            sql_text(&r.district),
                            sql_text(&r.feeder),
                            sql_text(&r.transformer),
                            sql_text(r.role.as_str()),
                            u8::from(r.import_only),
                            sql_text(&r.tariff),
                            nullable(r.valid_from_ms),
                            nullable(r.valid_to_ms),
                            r.line,
                            seconds(r.report_interval_s),
                        )
                    })
                    .collect();
                format!(
                    "INSERT INTO {db}.meters ({columns}) VALUES {}",
                    rows.join(", ")
                )
            })
            .collect();
        statements.push(format!(
            "INSERT INTO {db}.meters ({columns}) VALUES ({imported_ms}, '', '', '', NULL, '', '', '', '', 0, '', NULL, NULL, {}, NULL)",
            records.len()
        ));
        statements
    }

    /// The imports in `meters`, newest first (TabSeparatedWithNames: `imported_at`, `marked`,
    /// `expected`, `stored`), for [`Registry::complete_import`].
    #[doc(hidden)]
    pub fn imports_sql(db: &str) -> String {
        format!(
            "SELECT imported_at, countIf(meter_id = '') AS marked, \
             maxIf(line, meter_id = '') AS expected, uniqExactIf(line, meter_id != '') AS stored \
             FROM {db}.meters GROUP BY imported_at ORDER BY imported_at DESC"
        )
    }

    /// The newest import of an answer to [`Registry::imports_sql`] that is whole.
    #[doc(hidden)]
    pub fn complete_import(text: &str) -> Option<i64> {
        let table = crate::analytics::Table::from_tsv(text);
        (0..table.rows.len()).find_map(|i| {
            let n = |c: &str| table.get(i, c).and_then(|v| v.parse::<u64>().ok());
            let whole = n("marked")? > 0 && n("expected")? == n("stored")?;
            whole.then(|| table.get(i, "imported_at")?.parse().ok())?
        })
    }

    /// The query that reads import `imported_ms` back (TabSeparatedWithNames, for
    /// [`Registry::from_tsv`]).
    #[doc(hidden)]
    pub fn select_sql(db: &str, times: TimeColumns, imported_ms: i64) -> String {
        let (from, _) = time_sql(times, "valid_from");
        let (to, _) = time_sql(times, "valid_to");
        format!(
            "SELECT meter_id, kind, model, expected_interval_s, report_interval_s, district, \
             feeder, transformer, role, import_only, tariff, \
             if(isNull(valid_from), NULL, {from}) AS valid_from_ms, \
             if(isNull(valid_to), NULL, {to}) AS valid_to_ms, line FROM {db}.meters \
             WHERE imported_at = {imported_ms} AND meter_id != '' ORDER BY meter_id, line"
        )
    }

    /// The registry of an answer to [`Registry::select_sql`].
    #[doc(hidden)]
    pub fn from_tsv(text: &str) -> Result<Registry, StorageError> {
        let table = crate::analytics::Table::from_tsv(text);
        let mut registry = Registry::default();
        for i in 0..table.rows.len() {
            let cell = |c: &str| table.get(i, c).unwrap_or_default();
            let bad = |c: &str| StorageError::ClickHouseAnswer {
                action: "reading the meter registry",
                offset: i as u64,
                reason: format!("column {c} of row {i} does not parse"),
            };
            let optional = |c: &str| -> Result<Option<i64>, StorageError> {
                match cell(c) {
                    "" | "\\N" => Ok(None),
                    v => v.parse().map(Some).map_err(|_| bad(c)),
                }
            };
            let seconds = |c: &str| -> Result<Option<u32>, StorageError> {
                optional(c)?
                    .map(|s| u32::try_from(s).map_err(|_| bad(c)))
                    .transpose()
            };
            let record = MeterRecord {
                meter_id: cell("meter_id").to_string(),
                kind: MeterKind::parse(cell("kind")).ok_or_else(|| bad("kind"))?,
                model: cell("model").to_string(),
                expected_interval_s: seconds("expected_interval_s")?,
                report_interval_s: seconds("report_interval_s")?,
                district: cell("district").to_string(),
                feeder: cell("feeder").to_string(),
                transformer: cell("transformer").to_string(),
                role: Role::parse(cell("role")).ok_or_else(|| bad("role"))?,
                import_only: cell("import_only") == "1",
                tariff: cell("tariff").to_string(),
                valid_from_ms: optional("valid_from_ms")?,
                valid_to_ms: optional("valid_to_ms")?,
                line: cell("line").parse().map_err(|_| bad("line"))?,
            };
            let records = registry.meters.entry(record.meter_id.clone()).or_default();
            // A retried insert may have stored a record twice.
            if records.last().is_none_or(|r| r.line != record.line) {
                records.push(record);
            }
        }
        for records in registry.meters.values_mut() {
            records.sort_by_key(|r| r.valid_from_ms.unwrap_or(i64::MIN));
        }
        Ok(registry)
    }

    /// Keeps this registry in ClickHouse's `meters` as the import of `imported_ms`.
    pub async fn save_clickhouse(
        &self,
        config: &ClickHouseConfig,
        imported_ms: i64,
    ) -> Result<(), StorageError> {
        let times = crate::clickhouse::time_columns(config).await?;
        let client = config.client()?;
        for sql in self.insert_sql(&config.database, times, imported_ms) {
            client
                .query(&sql)
                .execute()
                .await
                .map_err(|source| ClickHouseError {
                    action: "writing the meter registry",
                    source,
                })?;
        }
        Ok(())
    }

    /// The newest whole registry in ClickHouse's `meters`; empty when none was imported (or
    /// the table is not there yet: a server the schema was not applied to).
    pub async fn load_clickhouse(config: &ClickHouseConfig) -> Result<Registry, StorageError> {
        let db = &config.database;
        let imports = match crate::analytics::run_text(config, &Registry::imports_sql(db)).await {
            Ok(text) => text,
            Err(e)
                if e.to_string().contains("Code: 60,") || e.to_string().contains("Code: 60.") =>
            {
                tracing::debug!(database = %db, "no meters table: no registry");
                return Ok(Registry::default());
            }
            Err(e) => return Err(e.into()),
        };
        let Some(imported_ms) = Registry::complete_import(&imports) else {
            return Ok(Registry::default());
        };
        let times = crate::clickhouse::time_columns(config).await?;
        let sql = Registry::select_sql(db, times, imported_ms);
        Registry::from_tsv(&crate::analytics::run_text(config, &sql).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        Zone::parse("Europe/Berlin", "tz").unwrap()
    }

    fn error_of(csv: &str) -> (u64, String, String) {
        match Registry::from_csv(csv.as_bytes(), &zone()) {
            Err(StorageError::Registry {
                line,
                column,
                reason,
            }) => (line, column, reason),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_meter_exchange_keeps_both_records_each_over_its_time() {
        let csv =
            "meter_id,kind,model,expected_interval_s,feeder,role,import_only,valid_from,valid_to\n\
                   E1,electricity,AM550,900,F1,customer,yes,2024-01-01,2024-06-01\n\
                   E1,electricity,AM560,900,F2,,no,2024-06-01,\n\
                   H1,electricity,,,F1,feeder_head,,,\n";
        let registry = Registry::from_csv(csv.as_bytes(), &zone()).unwrap();
        let may = zone().parse_time("2024-05-31T23:59", "t").unwrap();
        let june = zone().parse_time("2024-06-01", "t").unwrap();
        let old = registry.at("E1", may).unwrap();
        assert_eq!(
            (old.model.as_str(), old.feeder.as_str(), old.import_only),
            ("AM550", "F1", true)
        );
        assert_eq!(old.expected_interval_s, Some(900));
        let new = registry.at("E1", june).unwrap();
        assert_eq!(
            (new.model.as_str(), new.feeder.as_str(), new.role),
            ("AM560", "F2", Role::Customer)
        );
        assert!(registry
            .at("E1", zone().parse_time("2023-12-31", "t").unwrap())
            .is_none());
        assert_eq!(registry.at("H1", 0).unwrap().role, Role::FeederHead);
        assert!(registry.at("X9", 0).is_none());
        assert_eq!(registry.records().count(), 3);
        // Kept and read back; a newer import is the registry.
        let dir = tempfile::tempdir().unwrap();
        assert!(Registry::load(dir.path()).unwrap().is_empty());
        registry.save(dir.path(), 1_000).unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap(), registry);
        let newer = Registry::from_csv(b"meter_id,kind\nG7,gas\n", &zone()).unwrap();
        newer.save(dir.path(), 2_000).unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap(), newer);
    }

    #[test]
    fn bad_registries_are_refused_by_line_and_column() {
        let (line, column, reason) = error_of("meter_id,kind,colour\nE1,gas,red\n");
        assert_eq!((line, column.as_str()), (1, "colour"));
        assert!(reason.contains("unknown column"), "{reason}");
        assert_eq!(error_of("meter_id\nE1\n").1, "kind");
        let (line, column, reason) = error_of("meter_id,kind\nE1,gas\nE2,steam\n");
        assert_eq!((line, column.as_str()), (3, "kind"));
        assert!(reason.contains("electricity, gas"), "{reason}");
        assert_eq!(error_of("meter_id,kind,role\nE1,gas,boss\n").1, "role");
        assert_eq!(error_of("meter_id,kind\nE 1,gas\n").1, "meter_id");
        assert_eq!(
            error_of("meter_id,kind,expected_interval_s\nE1,gas,0\n").1,
            "expected_interval_s"
        );
        assert_eq!(
            error_of("meter_id,kind,import_only\nE1,gas,maybe\n").1,
            "import_only"
        );
        assert_eq!(
            error_of("meter_id,kind,valid_from\nE1,gas,someday\n").1,
            "valid_from"
        );
        assert_eq!(
            error_of("meter_id,kind,valid_from,valid_to\nE1,gas,2024-02-01,2024-01-01\n").1,
            "valid_to"
        );
        let (line, column, reason) = error_of(
            "meter_id,kind,valid_from,valid_to\nE1,gas,2024-01-01,2024-03-01\nE1,gas,2024-02-01,\n",
        );
        assert_eq!((line, column.as_str()), (3, "valid_from"));
        assert!(reason.contains("line 2"), "{reason}");
    }
}
