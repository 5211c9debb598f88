//! SenML (RFC 8428) packs in JSON (topic suffix `senml`, CoAP 110) and CBOR (`senml-cbor`,
//! CoAP 112), and LwM2M 1.1 Send payloads (`POST /dp`) that carry either.
//!
//! Three steps, each in its own module:
//! 1. parse (`json`, `cbor`): bytes to raw records with their base fields, strings borrowed
//!    from the payload, streamed to a sink;
//! 2. resolve (`resolve`): RFC 8428 section 4.6 (base name/time/unit/value/sum, `bver`,
//!    times below 2**28 relative to `now_ms`);
//! 3. convert (this module): resolved records to [`Reading`]s, or to [`ResolvedRecord`]s for
//!    tests and tools ([`resolve_json`], [`resolve_cbor`], [`resolve_lwm2m`]).
//!
//! Decisions for the conversion into readings:
//! - only records with a numeric value (`v`) or a sum (`s`) become readings; string, boolean
//!   and data values are skipped silently (not rejections); records with neither a value nor a
//!   sum (base-only records) are not measurements and are skipped too;
//! - channel (SenML): the record's own name `n` ("the record name after the base name"); the
//!   base name usually names the device (`urn:dev:ow:10e2073a01080063:`) and the topic already
//!   names the meter, so it stays out of the channel and [`Decoded::meter_id`] is `None`. A
//!   record without `n` takes the base name as its channel. Caveat: records that differ only by
//!   unit (RFC 8428 section 5.1.3's lat/lon) share a channel;
//! - channel (LwM2M): the full resolved path (`/3303/0/5700`), because there the base name is
//!   part of the object path; see `lwm2m.rs` for the device status mapping;
//! - a sum `s` always becomes its own reading on channel `{channel}:sum` (also when `v` is
//!   present, which then gives a second reading on `{channel}`), so a channel never mixes
//!   instantaneous values with integrated ones. Its unit is the record's unit as given (RFC
//!   8428 defines the sum in unit-seconds; we keep the meter's word, the channel tells it apart);
//! - `ts_ms` is the resolved time rounded to the nearest millisecond; a record without `t` and
//!   without `bt` gets the receive time and the quality flag `TIME_FROM_RECEIVER`;
//! - unit: `u`, else `bu`, else `""`;
//! - a bad record (no name, wrong-typed field, non-finite value, time out of range) is listed in
//!   [`Decoded::rejected`] with `Position::Record(i)` and the rest is kept; when nothing is
//!   usable (no reading, no status) and something was rejected: `NothingUsable`. An empty pack
//!   (`[]`) is a valid, empty result;
//! - structural errors refuse the whole pack: not an array, syntax, truncation, trailing bytes,
//!   indefinite lengths (CBOR), must-understand fields (`..._`, `Unsupported`), `bver` > 10
//!   (`Unsupported`), a base field of the wrong type. Positions: `LineColumn` (JSON),
//!   `Offset` (CBOR), `Record` (resolver);
//! - LwM2M payload detection: first non-whitespace byte `[` is SenML-JSON, `{` is the legacy
//!   OMA LwM2M 1.0 JSON (`{"bn","bt","e":[...]}`, resolved with the same rules), anything else
//!   SenML-CBOR.
//!
//! The `resolve_*` functions are the strict view: a record that would be rejected is an error.
//! Allocation: the `Vec` of readings, plus a `String` per reading only where the channel must be
//! joined (LwM2M `bn` + `n`, `:sum`) or a JSON string had escapes.

mod cbor;
mod json;
mod lwm2m;
mod resolve;

use std::borrow::Cow;

use meterflow_proto::quality;

use self::resolve::{RawData, RawRecord, RawValue, Refusal, Resolved, Resolver};
use crate::{DecodeError, Decoded, Format, Position, Reading, Rejected};

/// Receives the records of a pack in order, as the parser produces them.
pub(crate) trait Sink<'a> {
    /// The number of records the pack declares (CBOR), checked against the payload size.
    fn size_hint(&mut self, _records: usize) {}
    /// One record; an error stops the parse and becomes the result.
    fn record(&mut self, index: usize, raw: RawRecord<'a>) -> Result<(), DecodeError>;
}

/// A SenML value after resolution.
#[derive(Debug, Clone, PartialEq)]
pub enum SenmlValue<'a> {
    /// `v`, with the base value `bv` added.
    Float(f64),
    /// `vs`.
    String(Cow<'a, str>),
    /// `vb`.
    Bool(bool),
    /// `vd`: the bytes (CBOR byte string, or JSON base64 decoded).
    Data(Cow<'a, [u8]>),
}

/// A record after RFC 8428 section 4.6 resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRecord<'a> {
    /// Base name and name, concatenated.
    pub name: Cow<'a, str>,
    /// Absolute Unix seconds (base time added; times below 2**28 taken relative to `now_ms`).
    pub time_s: f64,
    /// The pack gave neither `t` nor `bt`: the time is the receiver's `now_ms`.
    pub time_from_receiver: bool,
    /// `u`, else the base unit `bu`.
    pub unit: Option<Cow<'a, str>>,
    pub value: Option<SenmlValue<'a>>,
    /// `s`, with the base sum `bs` added.
    pub sum: Option<f64>,
    /// `ut`, seconds (a duration; not resolved against anything).
    pub update_time: Option<f64>,
}

impl ResolvedRecord<'_> {
    /// The time in Unix milliseconds, rounded to the nearest.
    pub fn ts_ms(&self) -> i64 {
        resolve::seconds_to_ms(self.time_s)
    }
}

/// Decodes a SenML-JSON pack (`Format::Senml`). `now_ms` anchors relative times.
pub fn decode_json(payload: &[u8], now_ms: i64) -> Result<Decoded<'_>, DecodeError> {
    let mut sink = ReadingSink::new(Format::Senml, now_ms, Channels::RecordName);
    sink.readings.reserve((payload.len() / 32).min(4096));
    json::parse(payload, Format::Senml, &mut sink)?;
    sink.finish()
}

/// Decodes a SenML-CBOR pack (`Format::SenmlCbor`). `now_ms` anchors relative times.
pub fn decode_cbor(payload: &[u8], now_ms: i64) -> Result<Decoded<'_>, DecodeError> {
    let mut sink = ReadingSink::new(Format::SenmlCbor, now_ms, Channels::RecordName);
    cbor::parse(payload, Format::SenmlCbor, &mut sink)?;
    sink.finish()
}

/// Decodes an LwM2M 1.1 Send payload (`Format::Lwm2m`): SenML-JSON, SenML-CBOR or legacy OMA
/// JSON. Channels are full object paths; device resources also fill [`Decoded::status`].
pub fn decode_lwm2m(payload: &[u8], now_ms: i64) -> Result<Decoded<'_>, DecodeError> {
    let mut sink = ReadingSink::new(Format::Lwm2m, now_ms, Channels::FullPath);
    sink.status = Some(lwm2m::StatusBuilder::default());
    parse_lwm2m(payload, &mut sink)?;
    sink.finish()
}

/// The resolved records of a SenML-JSON pack; any bad record is an error.
pub fn resolve_json(payload: &[u8], now_ms: i64) -> Result<Vec<ResolvedRecord<'_>>, DecodeError> {
    let mut sink = ResolvedSink::new(Format::Senml, now_ms);
    json::parse(payload, Format::Senml, &mut sink)?;
    Ok(sink.records)
}

/// The resolved records of a SenML-CBOR pack; any bad record is an error.
pub fn resolve_cbor(payload: &[u8], now_ms: i64) -> Result<Vec<ResolvedRecord<'_>>, DecodeError> {
    let mut sink = ResolvedSink::new(Format::SenmlCbor, now_ms);
    cbor::parse(payload, Format::SenmlCbor, &mut sink)?;
    Ok(sink.records)
}

/// The resolved records of an LwM2M payload (detected as in [`decode_lwm2m`]); any bad record
/// is an error.
pub fn resolve_lwm2m(payload: &[u8], now_ms: i64) -> Result<Vec<ResolvedRecord<'_>>, DecodeError> {
    let mut sink = ResolvedSink::new(Format::Lwm2m, now_ms);
    parse_lwm2m(payload, &mut sink)?;
    Ok(sink.records)
}

fn parse_lwm2m<'a, S: Sink<'a>>(payload: &'a [u8], sink: &mut S) -> Result<(), DecodeError> {
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => json::parse(payload, Format::Lwm2m, sink),
        Some(b'{') => json::parse_oma(payload, Format::Lwm2m, sink),
        _ => cbor::parse(payload, Format::Lwm2m, sink),
    }
}

/// `bn` + `n`, allocating only when both are non-empty.
fn join<'a>(base: Cow<'a, str>, name: Cow<'a, str>) -> Cow<'a, str> {
    if base.is_empty() {
        name
    } else if name.is_empty() {
        base
    } else {
        let mut joined = String::with_capacity(base.len() + name.len());
        joined.push_str(&base);
        joined.push_str(&name);
        Cow::Owned(joined)
    }
}

/// Collects [`ResolvedRecord`]s; a record the resolver refuses is an error.
struct ResolvedSink<'a> {
    resolver: Resolver<'a>,
    format: Format,
    records: Vec<ResolvedRecord<'a>>,
}

impl<'a> ResolvedSink<'a> {
    fn new(format: Format, now_ms: i64) -> Self {
        ResolvedSink {
            resolver: Resolver::new(format, now_ms),
            format,
            records: Vec::new(),
        }
    }
}

impl<'a> Sink<'a> for ResolvedSink<'a> {
    fn size_hint(&mut self, records: usize) {
        self.records.reserve(records.min(1024));
    }

    fn record(&mut self, index: usize, raw: RawRecord<'a>) -> Result<(), DecodeError> {
        let r = match self.resolver.resolve(index, raw) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(Refusal::Pack(e)) => return Err(e),
            Err(Refusal::Record(reason)) => {
                return Err(DecodeError::malformed(
                    self.format,
                    Position::Record(index),
                    reason,
                ))
            }
        };
        let value = r.value.map(|v| match v {
            RawValue::Float(x) => SenmlValue::Float(x),
            RawValue::String(s) => SenmlValue::String(s),
            RawValue::Bool(b) => SenmlValue::Bool(b),
            RawValue::Data(RawData::Bytes(b)) => SenmlValue::Data(Cow::Borrowed(b)),
            RawValue::Data(RawData::Base64(text)) => {
                SenmlValue::Data(Cow::Owned(resolve::base64_decode(&text)))
            }
        });
        self.records.push(ResolvedRecord {
            name: join(r.base_name, r.name),
            time_s: r.time_s,
            time_from_receiver: r.time_from_receiver,
            unit: r.unit,
            value,
            sum: r.sum,
            update_time: r.update_time,
        });
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Channels {
    /// SenML: `n`, or the base name where the record has no `n`.
    RecordName,
    /// LwM2M: `bn` + `n`.
    FullPath,
}

/// Turns resolved records into readings, keeping the bad ones as rejections.
struct ReadingSink<'a> {
    resolver: Resolver<'a>,
    format: Format,
    channels: Channels,
    readings: Vec<Reading<'a>>,
    rejected: Vec<Rejected>,
    status: Option<lwm2m::StatusBuilder>,
}

impl<'a> ReadingSink<'a> {
    fn new(format: Format, now_ms: i64, channels: Channels) -> Self {
        ReadingSink {
            resolver: Resolver::new(format, now_ms),
            format,
            channels,
            readings: Vec::new(),
            rejected: Vec::new(),
            status: None,
        }
    }

    fn push(&mut self, r: Resolved<'a>) {
        let quality = if r.time_from_receiver {
            quality::TIME_FROM_RECEIVER
        } else {
            0
        };
        let ts_ms = r.ts_ms();
        let channel = match self.channels {
            Channels::RecordName if r.name.is_empty() => r.base_name,
            Channels::RecordName => r.name,
            Channels::FullPath => join(r.base_name, r.name),
        };
        if let Some(status) = &mut self.status {
            status.observe(&channel, r.value.as_ref(), r.time_s);
        }
        let unit = r.unit.unwrap_or(Cow::Borrowed(""));
        let value = match r.value {
            Some(RawValue::Float(v)) => Some(v),
            _ => None,
        };
        match (value, r.sum) {
            (Some(value), None) => self.readings.push(Reading {
                channel,
                ts_ms,
                value,
                unit,
                quality,
            }),
            (value, Some(sum)) => {
                let sum_channel = Cow::Owned(format!("{channel}:sum"));
                if let Some(value) = value {
                    self.readings.push(Reading {
                        channel,
                        ts_ms,
                        value,
                        unit: unit.clone(),
                        quality,
                    });
                }
                self.readings.push(Reading {
                    channel: sum_channel,
                    ts_ms,
                    value: sum,
                    unit,
                    quality,
                });
            }
            (None, None) => {}
        }
    }

    fn finish(self) -> Result<Decoded<'a>, DecodeError> {
        let status = self.status.and_then(lwm2m::StatusBuilder::finish);
        if self.readings.is_empty() && status.is_none() {
            if let Some(first) = self.rejected.first() {
                return Err(DecodeError::NothingUsable {
                    format: self.format,
                    rejected: self.rejected.len(),
                    first: first.reason.clone(),
                });
            }
        }
        Ok(Decoded {
            meter_id: None,
            readings: self.readings,
            status,
            rejected: self.rejected,
            ..Decoded::default()
        })
    }
}

impl<'a> Sink<'a> for ReadingSink<'a> {
    fn size_hint(&mut self, records: usize) {
        self.readings.reserve(records.min(1024));
    }

    fn record(&mut self, index: usize, raw: RawRecord<'a>) -> Result<(), DecodeError> {
        match self.resolver.resolve(index, raw) {
            Ok(Some(r)) => self.push(r),
            Ok(None) => {}
            Err(Refusal::Record(reason)) => self.rejected.push(Rejected {
                position: Position::Record(index),
                reason: format!("record {index}: {reason}"),
            }),
            Err(Refusal::Pack(e)) => return Err(e),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_700_000_000_123;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn channel_is_the_record_name_and_meter_id_stays_none() {
        let d = decode_json(
            br#"[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.6e9,"n":"voltage","u":"V","v":120.1},
                 {"n":"current","t":-5,"u":"A","v":1.2},{"bn":"x","v":3}]"#,
            NOW_MS,
        )
        .unwrap();
        assert_eq!(d.meter_id, None);
        let got: Vec<_> = d
            .readings
            .iter()
            .map(|r| {
                (
                    r.channel.as_ref(),
                    r.ts_ms,
                    r.value,
                    r.unit.as_ref(),
                    r.quality,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("voltage", 1_600_000_000_000, 120.1, "V", 0),
                ("current", 1_599_999_995_000, 1.2, "A", 0),
                ("x", 1_600_000_000_000, 3.0, "", 0),
            ]
        );
        assert!(matches!(d.readings[0].channel, Cow::Borrowed(_)));
    }

    #[test]
    fn no_time_is_receive_time_with_its_flag_and_relative_times_are_anchored() {
        let d = decode_json(br#"[{"n":"a","v":1},{"n":"b","t":-1.5,"v":2}]"#, NOW_MS).unwrap();
        assert_eq!(d.readings[0].ts_ms, NOW_MS);
        assert_eq!(d.readings[0].quality, quality::TIME_FROM_RECEIVER);
        assert_eq!(d.readings[1].ts_ms, NOW_MS - 1500);
        assert_eq!(d.readings[1].quality, 0);
    }

    #[test]
    fn sums_get_their_own_channel() {
        let d = decode_json(
            br#"[{"bn":"m:","bs":1000,"n":"energy","u":"kWh","s":5},{"n":"power","u":"W","v":300,"s":7}]"#,
            NOW_MS,
        )
        .unwrap();
        let got: Vec<_> = d
            .readings
            .iter()
            .map(|r| (r.channel.as_ref(), r.value, r.unit.as_ref()))
            .collect();
        assert_eq!(
            got,
            [
                ("energy:sum", 1005.0, "kWh"),
                ("power", 300.0, "W"),
                ("power:sum", 1007.0, "W"),
            ]
        );
    }

    #[test]
    fn bad_records_are_rejected_and_the_rest_kept() {
        let d = decode_json(
            br#"[{"v":1},{"n":"a","v":"x"},{"n":"b","v":1,"vs":"y"},{"n":"c","vs":"text"},
                 {"n":"d","t":1e300,"v":1},7,{"n":"ok","v":2}]"#,
            NOW_MS,
        )
        .unwrap();
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].channel, "ok");
        let positions: Vec<_> = d.rejected.iter().map(|r| r.position).collect();
        assert_eq!(
            positions,
            [0, 1, 2, 4, 5].map(Position::Record),
            "{:?}",
            d.rejected
        );
        assert!(d.rejected[0].reason.contains("no name"), "{:?}", d.rejected);
    }

    #[test]
    fn nothing_usable_when_every_record_is_bad() {
        let e = decode_json(br#"[{"v":1},{"n":"a","v":true}]"#, NOW_MS).unwrap_err();
        assert!(
            matches!(e, DecodeError::NothingUsable { rejected: 2, .. }),
            "{e:?}"
        );
        // Only non-numeric values: nothing to store, but nothing wrong either.
        let d = decode_json(br#"[{"n":"a","vs":"x"}]"#, NOW_MS).unwrap();
        assert!(d.readings.is_empty() && d.rejected.is_empty());
        assert!(decode_json(b"[]", NOW_MS).unwrap().readings.is_empty());
    }

    #[test]
    fn structural_errors_refuse_the_pack() {
        let cases: [(&[u8], &str); 8] = [
            (br#"{"n":"a","v":1}"#, "malformed"),
            (br#"[{"n":"a","v":1}] x"#, "malformed"),
            (br#"[{"n":"a","v":1}"#, "malformed"),
            (br#"[{"n":"a","v":1,"x_":2}]"#, "unsupported"),
            (br#"[{"bver":11,"n":"a","v":1}]"#, "unsupported"),
            (br#"[{"bver":0,"n":"a","v":1}]"#, "malformed"),
            (br#"[{"n":"a","v":1},{"bn":5,"n":"b","v":1}]"#, "malformed"),
            (br#"[{"bt":"now","n":"a","v":1}]"#, "malformed"),
        ];
        for (payload, kind) in cases {
            let e = decode_json(payload, NOW_MS).unwrap_err();
            assert_eq!(
                e.kind(),
                kind,
                "{} -> {e}",
                String::from_utf8_lossy(payload)
            );
        }
        let e = decode_json(b"[1,\n  {\"n\":\"a\",\"v\":1,\"x_\":2}]", NOW_MS).unwrap_err();
        assert!(
            matches!(e.position(), Some(Position::LineColumn(2, _))),
            "{e:?}"
        );
        let e = decode_json(br#"[{"bver":11,"n":"a","v":1}]"#, NOW_MS).unwrap_err();
        assert_eq!(e.position(), Some(Position::Record(0)));
    }

    #[test]
    fn json_strings_with_escapes_are_owned_and_correct() {
        let r = resolve_json(br#"[{"bn":"a\/","n":"b\u00e9","vs":"x\ny"}]"#, NOW_MS).unwrap();
        assert_eq!(r[0].name, "a/b\u{e9}");
        assert_eq!(r[0].value, Some(SenmlValue::String("x\ny".into())));
    }

    #[test]
    fn cbor_numbers_tags_and_data() {
        // [{0:"a", 2: 1(1.5 half)}, {0:"b", 6: 4([-3, 1276020076001]), 2: -7},
        //  {0:"c", 8: h'0102', 6: 1(1600000000)}]
        let payload = hex(concat!(
            "83",
            "a2",
            "00",
            "6161",
            "02",
            "c1f93e00",
            "a3",
            "00",
            "6162",
            "06",
            "c482221b0000012918b92de1",
            "02",
            "26",
            "a3",
            "00",
            "6163",
            "08",
            "420102",
            "06",
            "c11a5f5e1000",
        ));
        let r = resolve_cbor(&payload, NOW_MS).unwrap();
        assert_eq!(r[0].value, Some(SenmlValue::Float(1.5)));
        assert_eq!(r[1].time_s, 1276020076.001);
        assert_eq!(r[1].value, Some(SenmlValue::Float(-7.0)));
        assert_eq!(
            r[2].value,
            Some(SenmlValue::Data(Cow::Borrowed(&[1u8, 2][..])))
        );
        assert_eq!(r[2].time_s, 1_600_000_000.0);
    }

    #[test]
    fn cbor_structural_errors() {
        let cases: [(&str, &str); 9] = [
            ("a0", "malformed"),                    // a map, not an array
            ("9fff", "malformed"),                  // indefinite array
            ("81bf6161ff", "malformed"),            // indefinite map
            ("9b00000000ffffffff", "malformed"),    // length beyond the input
            ("81a1", "malformed"),                  // truncated
            ("80ff", "malformed"),                  // trailing byte
            ("81a2006161027f6161ff", "malformed"),  // indefinite string
            ("81a2006161626e5f01", "unsupported"),  // text label "n_"
            ("81a3200b006161 0201", "unsupported"), // bver 11
        ];
        for (h, kind) in cases {
            let payload = hex(&h.replace(' ', ""));
            let e = decode_cbor(&payload, NOW_MS).unwrap_err();
            assert_eq!(e.kind(), kind, "{h} -> {e}");
        }
        let e = decode_cbor(&hex("80ff"), NOW_MS).unwrap_err();
        assert_eq!(e.position(), Some(Position::Offset(1)));
    }

    #[test]
    fn cbor_bad_records_and_ignored_fields() {
        // [{0:"a", 2:"x"}, 5, {0:"b", 2: NaN}, {0:"c", 99: [[[1]]], "ext": {1:2}, 2: 3}]
        let payload = hex(concat!(
            "84",
            "a2",
            "00",
            "6161",
            "02",
            "6178",
            "05",
            "a2",
            "00",
            "6162",
            "02",
            "f97e00",
            "a4",
            "00",
            "6163",
            "1863",
            "81818101",
            "63657874a10102",
            "02",
            "03",
        ));
        let d = decode_cbor(&payload, NOW_MS).unwrap();
        assert_eq!(d.readings.len(), 1);
        assert_eq!(
            (d.readings[0].channel.as_ref(), d.readings[0].value),
            ("c", 3.0)
        );
        let positions: Vec<_> = d.rejected.iter().map(|r| r.position).collect();
        assert_eq!(positions, [0, 1, 2].map(Position::Record));
    }

    #[test]
    fn cbor_deep_nesting_is_bounded() {
        let mut payload = hex("81a2006161186300");
        let last = payload.len() - 1;
        payload.truncate(last);
        payload.extend(std::iter::repeat_n(0x81, 10_000));
        payload.push(0x00);
        let e = decode_cbor(&payload, NOW_MS).unwrap_err();
        assert_eq!(e.kind(), "malformed");
    }

    #[test]
    fn lwm2m_channels_are_full_paths_and_status_is_mapped() {
        let d = decode_lwm2m(
            br#"[{"bn":"/3/0/","bt":1700000000,"n":"9","v":87},{"n":"3","vs":"4.2.17"},
                 {"n":"11/0","v":4},{"bn":"/4/0/","n":"2","v":-71},{"bn":"/3303/0/","n":"5700","u":"Cel","v":21.5}]"#,
            NOW_MS,
        )
        .unwrap();
        let channels: Vec<_> = d.readings.iter().map(|r| r.channel.as_ref()).collect();
        assert_eq!(channels, ["/3/0/9", "/3/0/11/0", "/4/0/2", "/3303/0/5700"]);
        let status = d.status.unwrap();
        assert_eq!(status.battery_pct, Some(87));
        assert_eq!(status.firmware.as_deref(), Some("4.2.17"));
        assert_eq!(status.rssi_dbm, Some(-71));
        assert_eq!(status.error_flags, Some(1 << 4));
        assert_eq!(d.meter_id, None);
    }

    #[test]
    fn lwm2m_detects_the_syntax() {
        // [{-2: "/3/0/9", 2: 100}]
        let cbor = hex("81a221662f332f302f39021864");
        let d = decode_lwm2m(&cbor, NOW_MS).unwrap();
        assert_eq!(d.readings[0].channel, "/3/0/9");
        assert_eq!(d.status.unwrap().battery_pct, Some(100));
        let d = decode_lwm2m(b"  [{\"n\":\"/3/0/9\",\"v\":50}]", NOW_MS).unwrap();
        assert_eq!(d.status.unwrap().battery_pct, Some(50));
        let d = decode_lwm2m(
            br#"{"bn":"/1024/0/1","bt":1700000000,"e":[{"v":22.9,"t":-30},{"sv":"x"},{"bv":true,"t":1}]}"#,
            NOW_MS,
        )
        .unwrap();
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].ts_ms, 1_699_999_970_000);
        assert_eq!(d.readings[0].channel, "/1024/0/1");
    }
}
