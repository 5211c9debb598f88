//! Pure decoders from payload bytes to canonical readings. No I/O, no async, no panics on input.
//!
//! Each format has a parser module that turns bytes into a [`Decoded`] (borrowing from the
//! payload where it can); [`Decoded::append_to`] is the one builder step into an Arrow batch.
//! - [`pb`][]: `meterflow.v1.MeterReport` (protobuf)
//! - [`json`][]: the same report as JSON
//! - [`cbor`][]: the same report as CBOR
//! - [`senml`][]: RFC 8428 SenML packs, JSON and CBOR, resolved per section 4.6
//! - [`dsmr`][]: DSMR P1 telegrams 2.2 to 5.0, e-MUCS, Smarty
//! - [`dlms`][]: DLMS/COSEM pushes (DataNotification, ciphered, in HDLC, M-Bus or the wrapper)
//!
//! A payload that is partly bad keeps its good rows; the bad ones are listed in
//! [`Decoded::rejected`] with their position. A payload that is wholly bad is a [`DecodeError`].

pub mod cbor;
pub mod dlms;
pub mod dsmr;
mod error;
pub mod events;
pub mod json;
pub mod pb;
pub mod senml;

use std::borrow::Cow;

pub use error::{DecodeError, Position, Refusal};
pub use meterflow_proto::Format;
use meterflow_proto::{ReadingBatchBuilder, RowMeta};

/// One measured value, before it gets its meter and receive metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading<'a> {
    pub channel: Cow<'a, str>,
    /// When the meter measured, Unix milliseconds UTC.
    pub ts_ms: i64,
    pub value: f64,
    pub unit: Cow<'a, str>,
    /// Bit flags from [`meterflow_proto::quality`].
    pub quality: u16,
}

/// Equidistant values of one channel; expanded into one row per value by [`Decoded::append_to`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series<'a> {
    pub channel: Cow<'a, str>,
    pub start_ts_ms: i64,
    pub interval_ms: i64,
    pub unit: Cow<'a, str>,
    pub values: Vec<f64>,
    /// Empty, or one flag set per value.
    pub quality: Vec<u16>,
}

impl Series<'_> {
    /// The time of value `i`.
    pub fn ts_ms(&self, i: usize) -> i64 {
        self.start_ts_ms
            .saturating_add((i as i64).saturating_mul(self.interval_ms))
    }
}

/// Device health as a meter reports it; every field optional.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssi_dbm: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsrp_dbm: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snr_db: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_flags: Option<u32>,
    /// The serial number the meter reports (DLMS: 0-0:96.1.x, else its logical device name
    /// 0-0:42.0.0; JSON status: `serial`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl DeviceStatus {
    pub fn is_empty(&self) -> bool {
        *self == DeviceStatus::default()
    }
}

/// A part of a payload that was skipped while the rest decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub position: Position,
    pub reason: String,
}

/// What a payload decoded to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded<'a> {
    /// The meter the payload names, where it names one (checked against the topic by [`decode`]).
    pub meter_id: Option<Cow<'a, str>>,
    /// The report's message counter, where the format has one.
    pub seq: Option<u64>,
    pub readings: Vec<Reading<'a>>,
    pub series: Vec<Series<'a>>,
    pub status: Option<DeviceStatus>,
    /// Parts that did not decode; the readings above are the parts that did.
    pub rejected: Vec<Rejected>,
    /// What the meter says happened to it ([`events`]): its status bits, alarm registers,
    /// power-failure log.
    pub events: Vec<events::Event>,
}

impl Decoded<'_> {
    /// The same, owning its text (for payloads decoded from bytes made on the way, such as a
    /// deciphered telegram).
    pub fn into_owned(self) -> Decoded<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Decoded {
            meter_id: self.meter_id.map(own),
            seq: self.seq,
            readings: self
                .readings
                .into_iter()
                .map(|r| Reading {
                    channel: own(r.channel),
                    ts_ms: r.ts_ms,
                    value: r.value,
                    unit: own(r.unit),
                    quality: r.quality,
                })
                .collect(),
            series: self
                .series
                .into_iter()
                .map(|s| Series {
                    channel: own(s.channel),
                    start_ts_ms: s.start_ts_ms,
                    interval_ms: s.interval_ms,
                    unit: own(s.unit),
                    values: s.values,
                    quality: s.quality,
                })
                .collect(),
            status: self.status,
            rejected: self.rejected,
            events: self.events,
        }
    }

    /// The report's own time: that of its newest reading (a report without readings: when
    /// it was received).
    pub fn report_ts(&self, received_at_ms: i64) -> i64 {
        self.readings
            .iter()
            .map(|r| r.ts_ms)
            .chain(self.series.iter().filter_map(|s| {
                let last = s.values.len().checked_sub(1)?;
                Some(s.ts_ms(last))
            }))
            .max()
            .unwrap_or(received_at_ms)
    }

    /// How many rows [`Decoded::append_to`] appends.
    pub fn row_count(&self) -> usize {
        self.readings.len() + self.series.iter().map(|s| s.values.len()).sum::<usize>()
    }

    /// Appends every reading, and every value of every series, as a row of the canonical
    /// schema; returns how many.
    pub fn append_to(&self, builder: &mut ReadingBatchBuilder, meta: &RowMeta<'_>) -> usize {
        for r in &self.readings {
            builder.append(meta, &r.channel, r.ts_ms, r.value, &r.unit, r.quality);
        }
        for s in &self.series {
            for (i, value) in s.values.iter().enumerate() {
                let quality = s.quality.get(i).copied().unwrap_or(0);
                builder.append(meta, &s.channel, s.ts_ms(i), *value, &s.unit, quality);
            }
        }
        self.row_count()
    }
}

/// What a decoder may need beyond the bytes.
#[derive(Debug, Clone, Copy)]
pub struct DecodeContext<'a> {
    /// The meter named by the topic or path.
    pub meter_id: &'a str,
    /// When meterflow accepted the message, Unix ms: the time of readings that carry none
    /// and the anchor of SenML relative times.
    pub received_at_ms: i64,
}

/// Decodes a payload of the given format. A payload naming another meter than `ctx.meter_id`
/// is refused: a meter may only report for itself.
pub fn decode<'a>(
    format: Format,
    payload: &'a [u8],
    ctx: &DecodeContext<'_>,
) -> Result<Decoded<'a>, DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty { format });
    }
    let decoded: Decoded<'a> = match format {
        Format::Pb => pb::decode(payload)?,
        Format::Json => json::decode(payload)?,
        Format::Cbor => cbor::decode(payload)?,
        Format::Senml => senml::decode_json(payload, ctx.received_at_ms)?,
        Format::SenmlCbor => senml::decode_cbor(payload, ctx.received_at_ms)?,
        Format::Dsmr => dsmr::decode_at(payload, ctx.received_at_ms)?,
        Format::Lwm2m => senml::decode_lwm2m(payload, ctx.received_at_ms)?,
        Format::Dlms => dlms::decode_plain(payload, ctx.received_at_ms)?,
    };
    checked(format, decoded, ctx)
}

/// The checks every decoded payload passes, whichever way it was decoded: the limits of
/// times, channels and units ([`MAX_CHANNEL_BYTES`], [`EARLIEST_TS_MS`], …: parts beyond them
/// are rejected), something usable left, and no other meter named than `ctx.meter_id`.
pub fn checked<'a>(
    format: Format,
    decoded: Decoded<'a>,
    ctx: &DecodeContext<'_>,
) -> Result<Decoded<'a>, DecodeError> {
    let mut decoded = decoded;
    enforce_limits(&mut decoded, ctx.received_at_ms);
    if decoded.row_count() == 0 && decoded.status.is_none() {
        if let Some(first) = decoded.rejected.first() {
            return Err(DecodeError::NothingUsable {
                format,
                rejected: decoded.rejected.len(),
                first: format!("{}: {}", first.position, first.reason),
            });
        }
    }
    if let Some(named) = decoded.meter_id.as_deref() {
        if !named.is_empty() && named != ctx.meter_id {
            return Err(DecodeError::MeterMismatch {
                format,
                payload: named.to_string(),
                topic: ctx.meter_id.to_string(),
            });
        }
    }
    let flags = decoded.status.as_ref().and_then(|s| s.error_flags);
    let ts_ms = decoded.report_ts(ctx.received_at_ms);
    let flagged = events::status_events(format, flags, ts_ms);
    decoded.events.extend(flagged);
    Ok(decoded)
}

/// Longest channel name accepted, in bytes (OBIS codes are about 10; SenML names and LwM2M
/// paths a few dozen).
pub const MAX_CHANNEL_BYTES: usize = 128;
/// Longest firmware version (or serial number) accepted, in bytes (device state keeps it per
/// meter).
pub const MAX_FIRMWARE_BYTES: usize = 64;
/// Longest unit accepted, in bytes.
pub const MAX_UNIT_BYTES: usize = 32;
/// Most values in one series (a year of quarter-hours is 35 040).
pub const MAX_SERIES_VALUES: usize = 40_000;
/// Readings before 2000-01-01 are a meter clock that was never set.
pub const EARLIEST_TS_MS: i64 = 946_684_800_000;
/// How far ahead of the receive time a reading may be stamped (clock drift, time zones gone wrong).
pub const MAX_AHEAD_MS: i64 = 86_400_000;

/// The length limits of a reading's channel ([`MAX_CHANNEL_BYTES`]) and unit
/// ([`MAX_UNIT_BYTES`]), for decoded payloads and imported rows alike.
pub fn check_channel_and_unit(channel: &str, unit: &str) -> Result<(), String> {
    if channel.len() > MAX_CHANNEL_BYTES {
        return Err(format!(
            "channel is {} bytes, at most {MAX_CHANNEL_BYTES}",
            channel.len()
        ));
    }
    if unit.len() > MAX_UNIT_BYTES {
        return Err(format!(
            "unit is {} bytes, at most {MAX_UNIT_BYTES}",
            unit.len()
        ));
    }
    Ok(())
}

/// Rejects, part by part, what no meter sends and what would make one payload cost the
/// pipeline gigabytes or thousands of files: over-long names and units, huge series, and
/// timestamps outside 2000-01-01 .. receive time + 1 day.
fn enforce_limits(decoded: &mut Decoded<'_>, received_at_ms: i64) {
    let latest = received_at_ms.saturating_add(MAX_AHEAD_MS);
    let check = |channel: &str, unit: &str, first_ms: i64, last_ms: i64| -> Result<(), String> {
        check_channel_and_unit(channel, unit)?;
        if first_ms < EARLIEST_TS_MS || last_ms > latest {
            return Err(format!(
                "time {first_ms}..{last_ms} ms is outside 2000-01-01 .. receive time + 1 day"
            ));
        }
        Ok(())
    };
    let mut rejected = Vec::new();
    let readings = std::mem::take(&mut decoded.readings);
    for (i, r) in readings.into_iter().enumerate() {
        match check(&r.channel, &r.unit, r.ts_ms, r.ts_ms) {
            Ok(()) => decoded.readings.push(r),
            Err(reason) => rejected.push(Rejected {
                position: Position::Record(i),
                reason: format!("reading {:?}: {reason}", truncate(&r.channel)),
            }),
        }
    }
    let series = std::mem::take(&mut decoded.series);
    for (i, s) in series.into_iter().enumerate() {
        let last = s.ts_ms(s.values.len().saturating_sub(1));
        let result = if s.values.len() > MAX_SERIES_VALUES {
            Err(format!(
                "{} values, at most {MAX_SERIES_VALUES}",
                s.values.len()
            ))
        } else {
            check(&s.channel, &s.unit, s.start_ts_ms, last)
        };
        match result {
            Ok(()) => decoded.series.push(s),
            Err(reason) => rejected.push(Rejected {
                position: Position::Record(i),
                reason: format!("series {:?}: {reason}", truncate(&s.channel)),
            }),
        }
    }
    if let Some(reason) = decoded.status.as_ref().and_then(status_problem) {
        decoded.status = None;
        rejected.push(Rejected {
            position: Position::Whole,
            reason,
        });
    }
    decoded.rejected.extend(rejected);
}

/// What is wrong with a status no meter would send, if anything.
fn status_problem(status: &DeviceStatus) -> Option<String> {
    [("firmware", &status.firmware), ("serial", &status.serial)]
        .into_iter()
        .find_map(|(field, text)| {
            let text = text.as_deref()?;
            (text.len() > MAX_FIRMWARE_BYTES).then(|| {
                format!(
                    "status: {field} is {} bytes, at most {MAX_FIRMWARE_BYTES}",
                    text.len()
                )
            })
        })
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(32);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes a bare `DeviceStatus` (topic `meters/{id}/status`): protobuf, or JSON when the
/// payload starts with `{`.
pub fn decode_status(payload: &[u8]) -> Result<DeviceStatus, DecodeError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(DecodeError::Empty {
            format: Format::Json,
        }),
        Some(b'{') => json::decode_status(payload),
        Some(_) => pb::decode_status(payload),
    }
    .and_then(|status| match status_problem(&status) {
        None => Ok(status),
        Some(reason) => Err(DecodeError::malformed(
            Format::Json,
            Position::Whole,
            reason,
        )),
    })
}

/// The fuzz targets' way in (`fuzz/fuzz_targets/decode_*.rs`, and the regression inputs in
/// the test command): decodes `data` as `format` as the pipeline does, and on success builds
/// its Arrow rows (where series are expanded). Not an API.
#[doc(hidden)]
pub fn fuzz_decode(format: Format, data: &[u8]) {
    let ctx = DecodeContext {
        meter_id: "E1",
        received_at_ms: 1_719_792_000_000,
    };
    if let Ok(decoded) = decode(format, data, &ctx) {
        let mut builder = meterflow_proto::ReadingBatchBuilder::default();
        let meta = meterflow_proto::RowMeta {
            meter_id: "E1",
            received_at_ms: ctx.received_at_ms,
            source: meterflow_proto::Source::Mqtt,
            format,
        };
        let rows = decoded.append_to(&mut builder, &meta);
        assert_eq!(
            rows,
            decoded.row_count(),
            "append_to builds every row it counts"
        );
    }
    if format == Format::Json {
        let _ = decode_status(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_709_337_600_000; // 2024-03-02

    fn ctx() -> DecodeContext<'static> {
        DecodeContext {
            meter_id: "m1",
            received_at_ms: NOW,
        }
    }

    #[test]
    fn an_overlong_firmware_rejects_the_status_only() {
        let long = "v".repeat(MAX_FIRMWARE_BYTES + 1);
        let report = format!(
            r#"{{"readings":[{{"channel":"a","ts":{NOW},"value":1}}],"status":{{"battery_pct":5,"firmware":"{long}"}}}}"#
        );
        let d = decode(Format::Json, report.as_bytes(), &ctx()).unwrap();
        assert_eq!(d.readings.len(), 1);
        assert!(d.status.is_none());
        assert!(
            d.rejected[0].reason.contains("firmware"),
            "{:?}",
            d.rejected
        );
        assert!(decode_status(format!(r#"{{"firmware":"{long}"}}"#).as_bytes()).is_err());
        assert!(decode_status(br#"{"firmware":"4.2.17"}"#).is_ok());
    }

    #[test]
    fn implausible_parts_are_rejected_and_the_rest_kept() {
        let long = "x".repeat(MAX_CHANNEL_BYTES + 1);
        let payload = format!(
            r#"{{"readings": [
                {{"channel": "ok", "ts": {NOW}, "value": 1}},
                {{"channel": "{long}", "ts": {NOW}, "value": 2}},
                {{"channel": "old", "ts": 900000000000, "value": 3}},
                {{"channel": "future", "ts": {}, "value": 4}}],
              "series": [{{"channel": "daily", "start": {NOW}, "interval_s": 86400, "values": [1, 2, 3]}}]}}"#,
            NOW + 2 * MAX_AHEAD_MS
        );
        let d = decode(Format::Json, payload.as_bytes(), &ctx()).unwrap();
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].channel, "ok");
        assert_eq!(d.series.len(), 0, "its last value is two days ahead");
        assert_eq!(d.rejected.len(), 4, "{:?}", d.rejected);
        assert!(d.rejected[0].reason.contains("129 bytes"));
    }

    #[test]
    fn a_payload_with_nothing_plausible_is_an_error() {
        let payload = br#"{"readings": [{"channel": "old", "ts": 900000000000, "value": 3}]}"#;
        let e = decode(Format::Json, payload, &ctx()).unwrap_err();
        assert_eq!(e.kind(), "nothing_usable");
    }

    #[test]
    fn a_payload_for_another_meter_is_refused() {
        let payload = format!(
            r#"{{"meter_id": "m2", "readings": [{{"channel": "a", "ts": {NOW}, "value": 1}}]}}"#
        );
        let e = decode(Format::Json, payload.as_bytes(), &ctx()).unwrap_err();
        assert_eq!(e.kind(), "meter_mismatch");
    }
}
