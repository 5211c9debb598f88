//! Pure decoders from payload bytes to canonical readings. No I/O, no async, no panics on input.
//!
//! Each format has a parser module that turns bytes into a [`Decoded`] (borrowing from the
//! payload where it can); [`Decoded::append_to`] is the one builder step into an Arrow batch.
//! - [`pb`][]: `meterflow.v1.MeterReport` (protobuf)
//! - [`json`][]: the same report as JSON
//! - [`senml`][]: RFC 8428 SenML packs, JSON and CBOR, resolved per section 4.6
//! - [`dsmr`][]: DSMR P1 telegrams 2.2 to 5.0, e-MUCS, Smarty
//!
//! A payload that is partly bad keeps its good rows; the bad ones are listed in
//! [`Decoded::rejected`] with their position. A payload that is wholly bad is a [`DecodeError`].

pub mod dsmr;
mod error;
pub mod json;
pub mod pb;
pub mod senml;

use std::borrow::Cow;

pub use error::{DecodeError, Position};
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
}

impl Decoded<'_> {
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
    let decoded = match format {
        Format::Pb => pb::decode(payload)?,
        Format::Json => json::decode(payload)?,
        Format::Senml => senml::decode_json(payload, ctx.received_at_ms)?,
        Format::SenmlCbor => senml::decode_cbor(payload, ctx.received_at_ms)?,
        Format::Dsmr => dsmr::decode_at(payload, ctx.received_at_ms)?,
        Format::Lwm2m => senml::decode_lwm2m(payload, ctx.received_at_ms)?,
    };
    if let Some(named) = decoded.meter_id.as_deref() {
        if !named.is_empty() && named != ctx.meter_id {
            return Err(DecodeError::MeterMismatch {
                format,
                payload: named.to_string(),
                topic: ctx.meter_id.to_string(),
            });
        }
    }
    Ok(decoded)
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
}
