//! `meterflow.v1.MeterReport` in protobuf (topic suffix `pb`): decoded with prost, then
//! checked and moved (not copied) into a [`Decoded`].
//!
//! Checks beyond the wire format: a reading needs a channel, a finite value and a
//! timestamp; a series needs a channel, a positive interval and, where it carries quality
//! flags, one per value. A bad reading or series is rejected with its index while the rest
//! of the report is kept.

use std::borrow::Cow;

use meterflow_proto::pb;
use prost::Message;

use crate::{DecodeError, Decoded, DeviceStatus, Format, Position, Reading, Rejected, Series};

/// Decodes a protobuf `MeterReport`.
pub fn decode(payload: &[u8]) -> Result<Decoded<'static>, DecodeError> {
    let report = pb::MeterReport::decode(payload).map_err(|e| {
        DecodeError::malformed(
            Format::Pb,
            Position::Whole,
            format!("not a MeterReport: {e}"),
        )
    })?;
    from_report(report, Format::Pb)
}

/// Decodes a protobuf `DeviceStatus` (topic `meters/{id}/status`).
pub fn decode_status(payload: &[u8]) -> Result<DeviceStatus, DecodeError> {
    let status = pb::DeviceStatus::decode(payload).map_err(|e| {
        DecodeError::malformed(
            Format::Pb,
            Position::Whole,
            format!("not a DeviceStatus: {e}"),
        )
    })?;
    status_from_pb(status)
}

pub(crate) fn status_from_pb(s: pb::DeviceStatus) -> Result<DeviceStatus, DecodeError> {
    let battery_pct = match s.battery_pct {
        Some(b) if b <= 100 => Some(b as u8),
        Some(b) => {
            return Err(DecodeError::malformed(
                Format::Pb,
                Position::Whole,
                format!("status.battery_pct {b} is not a percentage"),
            ))
        }
        None => None,
    };
    Ok(DeviceStatus {
        serial: None,
        battery_pct,
        rssi_dbm: s.rssi_dbm,
        rsrp_dbm: s.rsrp_dbm,
        snr_db: s.snr_db,
        firmware: s.firmware,
        error_flags: s.error_flags,
    })
}

/// Validates a report and moves its parts into a [`Decoded`]; shared with the JSON form.
pub(crate) fn from_report(
    report: pb::MeterReport,
    format: Format,
) -> Result<Decoded<'static>, DecodeError> {
    let mut decoded = Decoded {
        meter_id: (!report.meter_id.is_empty()).then_some(Cow::Owned(report.meter_id)),
        seq: (report.seq != 0).then_some(report.seq),
        readings: Vec::with_capacity(report.readings.len()),
        series: Vec::with_capacity(report.series.len()),
        status: None,
        rejected: Vec::new(),
        events: Vec::new(),
    };
    for (i, r) in report.readings.into_iter().enumerate() {
        match check_reading(&r) {
            Ok(quality) => decoded.readings.push(Reading {
                channel: Cow::Owned(r.channel),
                ts_ms: r.ts_ms,
                value: r.value,
                unit: Cow::Owned(r.unit),
                quality,
            }),
            Err(reason) => decoded.rejected.push(Rejected {
                position: Position::Record(i),
                reason: format!("readings[{i}]: {reason}"),
            }),
        }
    }
    for (i, s) in report.series.into_iter().enumerate() {
        match check_series(&s) {
            Ok(quality) => decoded.series.push(Series {
                channel: Cow::Owned(s.channel),
                start_ts_ms: s.start_ts_ms,
                interval_ms: i64::from(s.interval_s) * 1000,
                unit: Cow::Owned(s.unit),
                values: s.values,
                quality,
            }),
            Err(reason) => decoded.rejected.push(Rejected {
                position: Position::Record(i),
                reason: format!("series[{i}]: {reason}"),
            }),
        }
    }
    // A bad status is rejected on its own: the readings of the report are kept.
    if let Some(status) = report.status {
        match status_from_pb(status) {
            Ok(status) if !status.is_empty() => decoded.status = Some(status),
            Ok(_) => {}
            Err(e) => decoded.rejected.push(Rejected {
                position: Position::Whole,
                reason: match e {
                    DecodeError::Malformed { reason, .. } => reason,
                    other => other.to_string(),
                },
            }),
        }
    }
    if decoded.row_count() == 0 && decoded.status.is_none() {
        return Err(match decoded.rejected.first() {
            Some(first) => DecodeError::NothingUsable {
                format,
                rejected: decoded.rejected.len(),
                first: first.reason.clone(),
            },
            None => DecodeError::Empty { format },
        });
    }
    Ok(decoded)
}

fn check_quality(q: u32) -> Result<u16, String> {
    u16::try_from(q).map_err(|_| format!("quality {q} does not fit 16 bits"))
}

fn check_reading(r: &pb::Reading) -> Result<u16, String> {
    if r.channel.is_empty() {
        return Err("no channel".into());
    }
    if !r.value.is_finite() {
        return Err(format!("value {} is not finite", r.value));
    }
    if r.ts_ms <= 0 {
        return Err(format!("ts_ms {} is not a time", r.ts_ms));
    }
    check_quality(r.quality)
}

fn check_series(s: &pb::IntervalSeries) -> Result<Vec<u16>, String> {
    if s.channel.is_empty() {
        return Err("no channel".into());
    }
    if s.interval_s == 0 {
        return Err("interval_s is 0".into());
    }
    if s.start_ts_ms <= 0 {
        return Err(format!("start_ts_ms {} is not a time", s.start_ts_ms));
    }
    if let Some(i) = s.values.iter().position(|v| !v.is_finite()) {
        return Err(format!("values[{i}] is not finite"));
    }
    if !s.quality.is_empty() && s.quality.len() != s.values.len() {
        return Err(format!(
            "{} quality flags for {} values",
            s.quality.len(),
            s.values.len()
        ));
    }
    s.quality.iter().map(|q| check_quality(*q)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> pb::MeterReport {
        pb::MeterReport {
            meter_id: "E1".into(),
            seq: 7,
            readings: vec![pb::Reading {
                channel: "1-0:1.8.1".into(),
                ts_ms: 1_700_000_000_000,
                value: 1234.5,
                unit: "kWh".into(),
                quality: 0,
            }],
            series: vec![pb::IntervalSeries {
                channel: "1-0:1.29.0".into(),
                start_ts_ms: 1_700_000_000_000,
                interval_s: 900,
                unit: "kWh".into(),
                values: vec![0.25, 0.5, 0.75],
                quality: vec![],
            }],
            status: Some(pb::DeviceStatus {
                battery_pct: Some(87),
                rssi_dbm: Some(-71),
                firmware: Some("4.2.17".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_report_decodes_with_series_expanded() {
        let bytes = report().encode_to_vec();
        let d = decode(&bytes).unwrap();
        assert_eq!(d.meter_id.as_deref(), Some("E1"));
        assert_eq!(d.seq, Some(7));
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.row_count(), 4);
        assert_eq!(d.series[0].ts_ms(2), 1_700_000_000_000 + 2 * 900_000);
        let st = d.status.unwrap();
        assert_eq!(st.battery_pct, Some(87));
        assert_eq!(st.rssi_dbm, Some(-71));
        assert_eq!(st.firmware.as_deref(), Some("4.2.17"));
    }

    #[test]
    fn bad_parts_are_rejected_and_good_parts_kept() {
        let mut r = report();
        r.readings.push(pb::Reading {
            channel: String::new(),
            ts_ms: 1,
            value: 1.0,
            ..Default::default()
        });
        r.series[0].quality = vec![1];
        let d = decode(&r.encode_to_vec()).unwrap();
        assert_eq!(d.readings.len(), 1);
        assert!(d.series.is_empty());
        assert_eq!(d.rejected.len(), 2);
        assert_eq!(d.rejected[0].position, Position::Record(1));
        assert!(d.rejected[1]
            .reason
            .contains("1 quality flags for 3 values"));
    }

    #[test]
    fn garbage_is_malformed() {
        let e = decode(&[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(e.kind(), "malformed");
        assert!(e.to_string().starts_with("pb: malformed"));
    }

    #[test]
    fn battery_over_100_is_malformed() {
        let s = pb::DeviceStatus {
            battery_pct: Some(120),
            ..Default::default()
        };
        assert!(decode_status(&s.encode_to_vec()).is_err());
    }
}
