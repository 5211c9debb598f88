//! The analytics utilities run on the ClickHouse tables: billing consumption from cumulative
//! registers, anomalies, and device overviews. The SQL lives in `storage/sql/` (one file per
//! question, readable and runnable by hand after filling the `{placeholders}`); this module
//! fills them with validated values and returns the result as a [`Table`].
//!
//! Every query reads `readings FINAL`, so results are exact before background merges have
//! removed duplicate deliveries. The SQL runs on ClickHouse 18.16 (no window functions: steps
//! between readings are computed on sorted arrays) and on current releases.

use crate::clickhouse::{ClickHouseConfig, ClickHouseError};

const REGISTER_STEPS: &str = include_str!("../sql/register_steps.sql");
const BILLING: &str = include_str!("../sql/billing.sql");
const ANOMALIES: &str = include_str!("../sql/anomalies.sql");
const STALE: &str = include_str!("../sql/stale.sql");
const DEVICES: &str = include_str!("../sql/devices.sql");

/// What a question is asked about.
#[derive(Debug, Clone)]
pub struct Period {
    /// Unix seconds, inclusive.
    pub from_s: i64,
    /// Unix seconds, exclusive.
    pub to_s: i64,
    /// One meter, or all. Must satisfy [`meterflow_proto::is_valid_meter_id`].
    pub meter: Option<String>,
}

/// Thresholds of the anomaly checks.
#[derive(Debug, Clone)]
pub struct AnomalyRules {
    /// An import register that has not moved for this many days.
    pub zero_days: u32,
    /// A step above this many times the meter's median step.
    pub spike_factor: f64,
    /// A meter not heard for this many seconds.
    pub stale_s: u64,
}

impl Default for AnomalyRules {
    fn default() -> Self {
        AnomalyRules {
            zero_days: 3,
            spike_factor: 5.0,
            stale_s: 86_400,
        }
    }
}

/// A query result: column names and rows of text cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Parses `TabSeparatedWithNames`.
    fn from_tsv(text: &str) -> Table {
        let mut lines = text.lines();
        let columns = lines
            .next()
            .map(|l| l.split('\t').map(unescape).collect())
            .unwrap_or_default();
        let rows = lines
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(unescape).collect())
            .collect();
        Table { columns, rows }
    }

    /// The cell of `column` in `row`.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let c = self.columns.iter().position(|name| name == column)?;
        self.rows.get(row)?.get(c).map(String::as_str)
    }

    fn append(&mut self, other: Table) {
        if self.columns.is_empty() {
            self.columns = other.columns;
        }
        self.rows.extend(other.rows);
    }
}

fn unescape(cell: &str) -> String {
    if !cell.contains('\\') {
        return cell.to_string();
    }
    let mut out = String::with_capacity(cell.len());
    let mut chars = cell.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn meter_filter(period: &Period, keyword: &str) -> Result<String, ClickHouseError> {
    match &period.meter {
        None => Ok(String::new()),
        Some(m) if meterflow_proto::is_valid_meter_id(m) => {
            Ok(format!("{keyword} meter_id = '{m}'"))
        }
        Some(m) => Err(ClickHouseError {
            action: "checking the meter id",
            source: clickhouse::error::Error::Custom(format!(
                "{m:?} is not a meter id (1 to 64 of [A-Za-z0-9._-])"
            )),
        }),
    }
}

fn steps(db: &str, period: &Period) -> Result<String, ClickHouseError> {
    Ok(REGISTER_STEPS
        .replace("{db}", db)
        .replace("{from}", &period.from_s.to_string())
        .replace("{to}", &period.to_s.to_string())
        .replace("{meter_filter}", &meter_filter(period, "AND")?))
}

async fn run(config: &ClickHouseConfig, sql: &str) -> Result<Table, ClickHouseError> {
    let client = clickhouse::Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_password(&config.password);
    let bytes = client
        .query(sql)
        .fetch_bytes("TabSeparatedWithNames")
        .map_err(|source| ClickHouseError {
            action: "running an analytics query",
            source,
        })?
        .collect()
        .await
        .map_err(|source| ClickHouseError {
            action: "running an analytics query",
            source,
        })?;
    Ok(Table::from_tsv(&String::from_utf8_lossy(&bytes)))
}

/// Consumption per meter and register for the period.
pub async fn billing(config: &ClickHouseConfig, period: &Period) -> Result<Table, ClickHouseError> {
    let sql = BILLING.replace("{steps}", &steps(&config.database, period)?);
    run(config, &sql).await
}

/// Every anomaly of the period, and the meters not heard for `rules.stale_s`.
pub async fn anomalies(
    config: &ClickHouseConfig,
    period: &Period,
    rules: &AnomalyRules,
) -> Result<Table, ClickHouseError> {
    let sql = ANOMALIES
        .replace("{steps}", &steps(&config.database, period)?)
        .replace("{db}", &config.database)
        .replace("{from}", &period.from_s.to_string())
        .replace("{to}", &period.to_s.to_string())
        .replace("{meter_filter}", &meter_filter(period, "AND")?)
        .replace("{zero_days}", &rules.zero_days.to_string())
        .replace("{spike_factor}", &format!("{:.6}", rules.spike_factor));
    let mut table = run(config, &sql).await?;
    let stale = STALE
        .replace("{db}", &config.database)
        .replace("{meter_filter_where}", &meter_filter(period, "AND")?)
        .replace("{stale_s}", &rules.stale_s.to_string());
    table.append(run(config, &stale).await?);
    Ok(table)
}

/// Last seen and last values per meter; only meters not heard for `stale_after_s` when given.
pub async fn devices(
    config: &ClickHouseConfig,
    meter: Option<String>,
    stale_after_s: u64,
) -> Result<Table, ClickHouseError> {
    let period = Period {
        from_s: 0,
        to_s: 0,
        meter,
    };
    let sql = DEVICES
        .replace("{db}", &config.database)
        .replace("{meter_filter_where}", &meter_filter(&period, "AND")?)
        .replace("{stale_s}", &stale_after_s.to_string());
    run(config, &sql).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_with_names_parses_with_escapes() {
        let t = Table::from_tsv("a\tb\n1\tx\\ty\n2\t\\\\n\n");
        assert_eq!(t.columns, vec!["a", "b"]);
        assert_eq!(t.rows, vec![vec!["1", "x\ty"], vec!["2", "\\n"]]);
        assert_eq!(t.get(1, "b"), Some("\\n"));
    }

    #[test]
    fn the_sql_has_no_placeholder_left() {
        let period = Period {
            from_s: 1,
            to_s: 2,
            meter: Some("m-1".into()),
        };
        let s = steps("mf", &period).unwrap();
        for sql in [
            BILLING.replace("{steps}", &s),
            ANOMALIES
                .replace("{steps}", &s)
                .replace("{db}", "mf")
                .replace("{from}", "1")
                .replace("{to}", "2")
                .replace("{meter_filter}", "AND meter_id = 'm-1'")
                .replace("{zero_days}", "3")
                .replace("{spike_factor}", "5"),
        ] {
            let code: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect();
            assert!(!code.contains('{'), "{code}");
            assert!(code.contains("meter_id = 'm-1'"));
        }
        let bad = Period {
            meter: Some("x' OR 1=1 --".into()),
            ..period
        };
        assert!(steps("mf", &bad).is_err());
    }
}
