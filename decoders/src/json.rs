//! The JSON form of the meter report (topic suffix `json`):
//! `{"meter_id", "seq", "readings": [{"channel", "ts", "value", "unit", "quality"}],
//!   "series": [{"channel", "start", "interval_s", "unit", "values", "quality"}], "status": {...}}`.
//!
//! `ts` and `start` take Unix milliseconds or an RFC 3339 string. Unknown keys are errors (a
//! misspelt `unit` must not silently become an empty one). Each reading and series is parsed
//! on its own, so one bad element is rejected with its index while the rest is kept; strings
//! are borrowed from the payload where they have no escapes.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{DecodeError, Decoded, DeviceStatus, Format, Position, Reading, Rejected, Series};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report<'a> {
    #[serde(borrow, default)]
    meter_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    readings: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    series: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonReading<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    ts: Time<'a>,
    value: f64,
    #[serde(borrow, default)]
    unit: Cow<'a, str>,
    #[serde(default)]
    quality: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSeries<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    start: Time<'a>,
    interval_s: u32,
    #[serde(borrow, default)]
    unit: Cow<'a, str>,
    values: Vec<f64>,
    #[serde(default)]
    quality: Vec<u16>,
}

/// Unix milliseconds or an RFC 3339 string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Time<'a> {
    Millis(i64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

impl Time<'_> {
    fn to_ms(&self) -> Result<i64, String> {
        let ms = match self {
            Time::Millis(ms) => *ms,
            Time::Text(text) => chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?
                .timestamp_millis(),
        };
        if ms <= 0 {
            return Err(format!("time {ms} is not after 1970"));
        }
        Ok(ms)
    }
}

fn json_error(e: &serde_json::Error) -> DecodeError {
    DecodeError::malformed(
        Format::Json,
        Position::LineColumn(e.line(), e.column()),
        e.to_string(),
    )
}

/// Decodes a JSON report.
pub fn decode(payload: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let report: Report<'_> = serde_json::from_slice(payload).map_err(|e| json_error(&e))?;
    let mut decoded = Decoded {
        meter_id: report.meter_id,
        seq: report.seq,
        readings: Vec::with_capacity(report.readings.len()),
        series: Vec::with_capacity(report.series.len()),
        status: None,
        rejected: Vec::new(),
        events: Vec::new(),
    };
    for (i, raw) in report.readings.iter().enumerate() {
        match parse_reading(raw) {
            Ok(r) => decoded.readings.push(r),
            Err(reason) => decoded.rejected.push(Rejected {
                position: Position::Record(i),
                reason: format!("readings[{i}]: {reason}"),
            }),
        }
    }
    for (i, raw) in report.series.iter().enumerate() {
        match parse_series(raw) {
            Ok(s) => decoded.series.push(s),
            Err(reason) => decoded.rejected.push(Rejected {
                position: Position::Record(i),
                reason: format!("series[{i}]: {reason}"),
            }),
        }
    }
    // A bad status (say, a field a newer firmware added) is rejected on its own: the
    // readings of the report are kept.
    if let Some(raw) = report.status {
        let status = serde_json::from_str::<DeviceStatus>(raw.get())
            .map_err(|e| e.to_string())
            .and_then(|s| check_status(&s).map(|()| s).map_err(|e| e.to_string()));
        match status {
            Ok(status) if !status.is_empty() => decoded.status = Some(status),
            Ok(_) => {}
            Err(reason) => decoded.rejected.push(Rejected {
                position: Position::Whole,
                reason: format!("status: {reason}"),
            }),
        }
    }
    if decoded.row_count() == 0 && decoded.status.is_none() {
        return Err(match decoded.rejected.first() {
            Some(first) => DecodeError::NothingUsable {
                format: Format::Json,
                rejected: decoded.rejected.len(),
                first: first.reason.clone(),
            },
            None => DecodeError::Empty {
                format: Format::Json,
            },
        });
    }
    Ok(decoded)
}

fn parse_reading<'a>(raw: &'a RawValue) -> Result<Reading<'a>, String> {
    let r: JsonReading<'a> = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    if r.channel.is_empty() {
        return Err("no channel".into());
    }
    if !r.value.is_finite() {
        return Err(format!("value {} is not finite", r.value));
    }
    Ok(Reading {
        channel: r.channel,
        ts_ms: r.ts.to_ms()?,
        value: r.value,
        unit: r.unit,
        quality: r.quality,
    })
}

fn parse_series<'a>(raw: &'a RawValue) -> Result<Series<'a>, String> {
    let s: JsonSeries<'a> = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    if s.channel.is_empty() {
        return Err("no channel".into());
    }
    if s.interval_s == 0 {
        return Err("interval_s is 0".into());
    }
    if !s.quality.is_empty() && s.quality.len() != s.values.len() {
        return Err(format!(
            "{} quality flags for {} values",
            s.quality.len(),
            s.values.len()
        ));
    }
    Ok(Series {
        channel: s.channel,
        start_ts_ms: s.start.to_ms()?,
        interval_ms: i64::from(s.interval_s) * 1000,
        unit: s.unit,
        values: s.values,
        quality: s.quality,
    })
}

fn check_status(status: &DeviceStatus) -> Result<(), DecodeError> {
    match status.battery_pct {
        Some(b) if b > 100 => Err(DecodeError::malformed(
            Format::Json,
            Position::Whole,
            format!("status.battery_pct {b} is not a percentage"),
        )),
        _ => Ok(()),
    }
}

/// Decodes a bare JSON `DeviceStatus` (topic `meters/{id}/status`).
pub fn decode_status(payload: &[u8]) -> Result<DeviceStatus, DecodeError> {
    let status: DeviceStatus = serde_json::from_slice(payload).map_err(|e| json_error(&e))?;
    check_status(&status)?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
        "meter_id": "E1", "seq": 3,
        "readings": [
            {"channel": "1-0:1.8.1", "ts": "2024-03-01T00:15:00Z", "value": 1234.5, "unit": "kWh"},
            {"channel": "1-0:1.8.2", "ts": 1709252100000, "value": 99.25, "unit": "kWh", "quality": 1}
        ],
        "series": [{"channel": "1-0:1.29.0", "start": "2024-03-01T00:00:00+01:00", "interval_s": 900,
                    "unit": "kWh", "values": [0.1, 0.2]}],
        "status": {"battery_pct": 87, "rssi_dbm": -71, "firmware": "4.2.17"}
    }"#;

    #[test]
    fn a_report_decodes_with_both_time_forms() {
        let d = decode(REPORT.as_bytes()).unwrap();
        assert_eq!(d.meter_id.as_deref(), Some("E1"));
        assert_eq!(d.seq, Some(3));
        assert_eq!(d.readings[0].ts_ms, 1_709_252_100_000);
        assert_eq!(d.readings[1].ts_ms, 1_709_252_100_000);
        assert_eq!(d.readings[1].quality, 1);
        assert!(matches!(d.readings[0].channel, Cow::Borrowed(_)));
        assert_eq!(d.series[0].start_ts_ms, 1_709_247_600_000);
        assert_eq!(d.series[0].ts_ms(1), 1_709_247_600_000 + 900_000);
        assert_eq!(d.row_count(), 4);
        assert_eq!(d.status.unwrap().rssi_dbm, Some(-71));
    }

    #[test]
    fn one_bad_reading_is_rejected_with_its_index() {
        let payload = r#"{"readings": [
            {"channel": "a", "ts": 1709252100000, "value": 1},
            {"channel": "b", "ts": "yesterday", "value": 2},
            {"channel": "c", "ts": 1709252100000, "value": "x"}]}"#;
        let d = decode(payload.as_bytes()).unwrap();
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.rejected.len(), 2);
        assert_eq!(d.rejected[0].position, Position::Record(1));
        assert!(
            d.rejected[0].reason.contains("yesterday"),
            "{}",
            d.rejected[0].reason
        );
        assert_eq!(d.rejected[1].position, Position::Record(2));
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let e = decode(b"{\n\"readings\": [,]}").unwrap_err();
        assert_eq!(e.position(), Some(Position::LineColumn(2, 14)));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let payload =
            r#"{"readings": [{"channel": "a", "ts": 1709252100000, "value": 1, "unti": "kWh"}]}"#;
        let e = decode(payload.as_bytes()).unwrap_err();
        assert_eq!(e.kind(), "nothing_usable");
        assert!(e.to_string().contains("unti"));
    }

    #[test]
    fn a_bad_status_is_rejected_and_the_readings_kept() {
        let payload = r#"{"readings": [{"channel": "a", "ts": 1709252100000, "value": 1}],
                          "status": {"battery_pct": 87, "new_field": 1}}"#;
        let d = decode(payload.as_bytes()).unwrap();
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.status, None);
        assert_eq!(d.rejected.len(), 1);
        assert!(
            d.rejected[0]
                .reason
                .starts_with("status: unknown field `new_field`"),
            "{:?}",
            d.rejected
        );
    }

    #[test]
    fn bare_status_decodes() {
        let s = decode_status(br#"{"battery_pct": 87, "rssi_dbm": -71, "firmware": "4.2.17"}"#)
            .unwrap();
        assert_eq!(s.battery_pct, Some(87));
        assert!(decode_status(br#"{"battery_pct": 101}"#).is_err());
        assert!(decode_status(br#"{"batery_pct": 1}"#).is_err());
    }
}
