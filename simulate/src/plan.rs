//! The reports of a simulated fleet: [`Plan`] (who sends what), and its deterministic payload
//! generator. Every value is a function of (meter, report) with at most three decimals, so
//! [`Plan::expected_rows`] says exactly which readings each payload must produce, in each
//! format (protobuf, JSON, SenML, DSMR telegrams with their CRC and local time stamps, DLMS
//! DataNotifications in clear: their ciphering is [`crate::dlms`]'s).

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc, Weekday};
use meterflow_proto::{pb, Format};
use prost::Message;
use serde::Serialize;

use crate::SimulateError;

/// What a report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Five register readings (import T1/T2, export, power, gas) per report.
    Readings,
    /// One day of 96 quarter-hour values of `1-0:1.29.0` per report.
    Series,
}

/// The reports of a fleet: who sends what.
#[derive(Debug, Clone)]
pub struct Plan {
    pub meters: usize,
    pub messages: usize,
    pub format: Format,
    pub shape: Shape,
    /// Time of report 0, Unix ms (whole seconds, so every format can carry it exactly).
    pub start_ms: i64,
    /// Seconds between two `readings` reports.
    pub interval_s: i64,
    pub prefix: String,
}

/// One reading a report must produce.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedRow {
    pub channel: &'static str,
    pub ts_ms: i64,
    pub value: f64,
    pub unit: &'static str,
}

const SERIES_CHANNEL: &str = "1-0:1.29.0";
const QUARTER_HOURS: usize = 96;

impl Plan {
    /// Whether the fleet can be simulated: a format the generator writes, a shape the format
    /// carries, a start of whole seconds.
    pub fn validate(&self) -> Result<(), SimulateError> {
        if !matches!(
            self.format,
            Format::Pb | Format::Json | Format::Senml | Format::Dsmr | Format::Dlms
        ) {
            return Err(SimulateError::Invalid(
                "simulate --format takes pb, json, senml, dsmr or dlms",
            ));
        }
        if self.shape == Shape::Series && self.format == Format::Dsmr {
            return Err(SimulateError::Invalid(
                "a DSMR telegram carries register readings only: use --shape readings",
            ));
        }
        if self.shape == Shape::Series && self.format == Format::Dlms {
            return Err(SimulateError::Invalid(
                "a simulated DLMS push carries register readings only (a self-describing DataNotification): use --shape readings",
            ));
        }
        if self.start_ms % 1000 != 0 {
            return Err(SimulateError::Invalid("--start must be a whole second"));
        }
        Ok(())
    }

    pub fn meter_id(&self, m: usize) -> String {
        format!("{}{m:06}", self.prefix)
    }

    pub fn topic(&self, m: usize) -> String {
        format!("meters/{}/{}", self.meter_id(m), self.format)
    }

    /// Rows one report produces.
    pub fn rows_per_message(&self) -> usize {
        match self.shape {
            Shape::Readings => 5,
            Shape::Series => QUARTER_HOURS,
        }
    }

    /// The five registers of `readings` report `k` of meter `m`, in payload order.
    pub(crate) fn registers(&self, m: usize, k: usize) -> [Register; 5] {
        let (m, k) = (m as i64, k as i64);
        let register = |channel, obis, thousandths, unit| Register {
            channel,
            obis,
            thousandths,
            unit,
        };
        [
            register(
                "1-0:1.8.1",
                [1, 0, 1, 8, 1, 255],
                m * 100_000 + k * 250,
                "kWh",
            ),
            register(
                "1-0:1.8.2",
                [1, 0, 1, 8, 2, 255],
                m * 50_000 + k * 125,
                "kWh",
            ),
            register("1-0:2.8.1", [1, 0, 2, 8, 1, 255], k * 10, "kWh"),
            register(
                "1-0:1.7.0",
                [1, 0, 1, 7, 0, 255],
                (m * 7 + k * 13) % 5000,
                "kW",
            ),
            register(
                "0-1:24.2.1",
                [0, 1, 24, 2, 1, 255],
                m * 20_000 + k * 40,
                "m3",
            ),
        ]
    }

    /// The readings report `k` of meter `m` must produce, in payload order. DLMS has no kWh or
    /// kW: its pushes carry Wh and W (and m3 with a scaler of -3), see [`Register::dlms`].
    pub fn expected_rows(&self, m: usize, k: usize) -> Vec<ExpectedRow> {
        let milli = |v: i64| v as f64 / 1000.0;
        match self.shape {
            Shape::Readings => {
                let ts_ms = self.start_ms + k as i64 * self.interval_s * 1000;
                self.registers(m, k)
                    .into_iter()
                    .map(|r| {
                        let (value, unit) = if self.format == Format::Dlms {
                            let d = r.dlms();
                            (times_pow10(r.thousandths, d.scaler), d.symbol)
                        } else {
                            (milli(r.thousandths), r.unit)
                        };
                        ExpectedRow {
                            channel: r.channel,
                            ts_ms,
                            value,
                            unit,
                        }
                    })
                    .collect()
            }
            Shape::Series => {
                let (m, k) = (m as i64, k as i64);
                let start = self.start_ms + k * 86_400_000;
                (0..QUARTER_HOURS as i64)
                    .map(|i| ExpectedRow {
                        channel: SERIES_CHANNEL,
                        ts_ms: start + i * 900_000,
                        value: milli((m * 31 + k * 17 + i * 7) % 400 + 10),
                        unit: "kWh",
                    })
                    .collect()
            }
        }
    }

    /// The payload of report `k` of meter `m`.
    pub fn payload(&self, m: usize, k: usize) -> Vec<u8> {
        let rows = self.expected_rows(m, k);
        let meter_id = self.meter_id(m);
        let seq = k as u64 + 1;
        match (self.format, self.shape) {
            (Format::Pb, Shape::Readings) => pb::MeterReport {
                meter_id,
                seq,
                readings: rows
                    .iter()
                    .map(|r| pb::Reading {
                        channel: r.channel.into(),
                        ts_ms: r.ts_ms,
                        value: r.value,
                        unit: r.unit.into(),
                        quality: 0,
                    })
                    .collect(),
                ..Default::default()
            }
            .encode_to_vec(),
            (Format::Pb, Shape::Series) => pb::MeterReport {
                meter_id,
                seq,
                series: vec![pb::IntervalSeries {
                    channel: SERIES_CHANNEL.into(),
                    start_ts_ms: rows[0].ts_ms,
                    interval_s: 900,
                    unit: "kWh".into(),
                    values: rows.iter().map(|r| r.value).collect(),
                    quality: vec![],
                }],
                ..Default::default()
            }
            .encode_to_vec(),
            (Format::Json, Shape::Readings) => serde_json::json!({
                "meter_id": meter_id,
                "seq": seq,
                "readings": rows.iter().map(|r| serde_json::json!({
                    "channel": r.channel, "ts": r.ts_ms, "value": r.value, "unit": r.unit,
                })).collect::<Vec<_>>(),
            })
            .to_string()
            .into_bytes(),
            (Format::Json, Shape::Series) => serde_json::json!({
                "meter_id": meter_id,
                "seq": seq,
                "series": [{
                    "channel": SERIES_CHANNEL,
                    "start": rows[0].ts_ms,
                    "interval_s": 900,
                    "unit": "kWh",
                    "values": rows.iter().map(|r| r.value).collect::<Vec<_>>(),
                }],
            })
            .to_string()
            .into_bytes(),
            (Format::Senml, _) => {
                let base_s = rows[0].ts_ms / 1000;
                let records: Vec<serde_json::Value> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let mut rec =
                            serde_json::json!({"n": r.channel, "u": r.unit, "v": r.value});
                        if i == 0 {
                            rec["bn"] = format!("urn:dev:mf:{meter_id}:").into();
                            rec["bt"] = base_s.into();
                        }
                        let offset_s = r.ts_ms / 1000 - base_s;
                        if offset_s != 0 {
                            rec["t"] = offset_s.into();
                        }
                        rec
                    })
                    .collect();
                serde_json::Value::Array(records).to_string().into_bytes()
            }
            (Format::Dsmr, _) => dsmr_telegram(&meter_id, &rows),
            (Format::Dlms, _) => crate::dlms::notification(self, m, k),
            (other, _) => unreachable!("Plan::validate refuses {other}"),
        }
    }
}

/// One register of a `readings` report: its OBIS code and its value in thousandths of `unit`,
/// so that every format carries it exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Register {
    /// The OBIS code as `A-B:C.D.E`, the channel of every format.
    pub channel: &'static str,
    /// The same, as the six bytes a DLMS push names it by (F = 255).
    pub obis: [u8; 6],
    pub thousandths: i64,
    /// kWh, kW or m3.
    pub unit: &'static str,
}

/// How a DLMS push carries a register: raw = its thousandths, with this scaler and unit
/// (IEC 62056-6-2's unit enumeration and the symbol the decoder gives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DlmsUnit {
    pub code: u8,
    pub symbol: &'static str,
    pub scaler: i8,
}

impl Register {
    /// Thousandths of a kWh are Wh and of a kW W (scaler 0), as Kaifa and Sagemcom meters push
    /// energy and power; a gas volume stays m3 with a scaler of -3 (litres on the wire).
    pub(crate) fn dlms(&self) -> DlmsUnit {
        match self.unit {
            "kWh" => DlmsUnit {
                code: 30,
                symbol: "Wh",
                scaler: 0,
            },
            "kW" => DlmsUnit {
                code: 27,
                symbol: "W",
                scaler: 0,
            },
            _ => DlmsUnit {
                code: 13,
                symbol: "m3",
                scaler: -3,
            },
        }
    }
}

/// `raw × 10^scaler` as the closest double to that decimal (one operation by an exact power of
/// ten, for the small scalers and raws up to 2^53 used here).
fn times_pow10(raw: i64, scaler: i8) -> f64 {
    let p = 10f64.powi(i32::from(scaler.unsigned_abs()));
    if scaler < 0 {
        raw as f64 / p
    } else {
        raw as f64 * p
    }
}

/// A DSMR 5.0 telegram with CRC-16/ARC over `/` to `!`.
fn dsmr_telegram(meter_id: &str, rows: &[ExpectedRow]) -> Vec<u8> {
    let stamp = dsmr_timestamp(rows[0].ts_ms);
    let mut t = String::with_capacity(400);
    t.push_str("/MFL5\\2meterflow-simulator\r\n\r\n");
    t.push_str(&format!("0-0:1.0.0({stamp})\r\n"));
    let id_hex: String = meter_id.bytes().map(|b| format!("{b:02X}")).collect();
    t.push_str(&format!("0-0:96.1.1({id_hex})\r\n"));
    for r in rows {
        if r.channel.starts_with("0-1:24.2.1") {
            t.push_str(&format!(
                "{}({stamp})({:09.3}*{})\r\n",
                r.channel, r.value, r.unit
            ));
        } else if r.unit == "kW" {
            t.push_str(&format!("{}({:06.3}*{})\r\n", r.channel, r.value, r.unit));
        } else {
            t.push_str(&format!("{}({:010.3}*{})\r\n", r.channel, r.value, r.unit));
        }
    }
    t.push('!');
    let crc = meterflow_decoders::dsmr::crc16_arc(t.as_bytes());
    t.push_str(&format!("{crc:04X}\r\n"));
    t.into_bytes()
}

/// `YYMMDDhhmmssX` in Dutch/Belgian local time: `S` (CEST, UTC+2) or `W` (CET, UTC+1).
fn dsmr_timestamp(utc_ms: i64) -> String {
    let utc = DateTime::from_timestamp_millis(utc_ms).unwrap_or_default();
    let summer = is_eu_summer_time(&utc);
    let local = utc + chrono::Duration::hours(if summer { 2 } else { 1 });
    format!(
        "{}{}",
        local.format("%y%m%d%H%M%S"),
        if summer { 'S' } else { 'W' }
    )
}

/// EU rule: summer time from the last Sunday of March to the last Sunday of October, 01:00 UTC.
pub(crate) fn is_eu_summer_time(utc: &DateTime<Utc>) -> bool {
    let last_sunday_01utc = |month: u32| {
        let first_next = NaiveDate::from_ymd_opt(utc.year(), month + 1, 1).unwrap_or_default();
        let mut day = first_next.pred_opt().unwrap_or_default();
        while day.weekday() != Weekday::Sun {
            day = day.pred_opt().unwrap_or_default();
        }
        Utc.from_utc_datetime(&day.and_hms_opt(1, 0, 0).unwrap_or_default())
    };
    *utc >= last_sunday_01utc(3) && *utc < last_sunday_01utc(10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_decoders::{decode, DecodeContext};

    fn plan(format: Format, shape: Shape) -> Plan {
        Plan {
            meters: 3,
            messages: 4,
            format,
            shape,
            start_ms: 1_719_792_000_000, // 2024-07-01T00:00:00Z, summer time
            interval_s: 900,
            prefix: "sim-".into(),
        }
    }

    #[test]
    fn every_payload_decodes_to_exactly_its_expected_rows() {
        let cases = [
            (Format::Pb, Shape::Readings),
            (Format::Pb, Shape::Series),
            (Format::Json, Shape::Readings),
            (Format::Json, Shape::Series),
            (Format::Senml, Shape::Readings),
            (Format::Senml, Shape::Series),
            (Format::Dsmr, Shape::Readings),
            // In clear here; ciphered ones in dlms.rs's tests.
            (Format::Dlms, Shape::Readings),
        ];
        for (format, shape) in cases {
            let p = plan(format, shape);
            p.validate().unwrap();
            for (m, k) in [(0, 0), (2, 3)] {
                let payload = p.payload(m, k);
                let meter_id = p.meter_id(m);
                let ctx = DecodeContext {
                    meter_id: &meter_id,
                    received_at_ms: 1_800_000_000_000,
                };
                let d = decode(format, &payload, &ctx)
                    .unwrap_or_else(|e| panic!("{format} {shape:?}: {e}"));
                assert!(d.rejected.is_empty(), "{format}: {:?}", d.rejected);
                let mut got: Vec<(String, i64, f64, String)> = d
                    .readings
                    .iter()
                    .map(|r| (r.channel.to_string(), r.ts_ms, r.value, r.unit.to_string()))
                    .collect();
                for s in &d.series {
                    for (i, v) in s.values.iter().enumerate() {
                        got.push((s.channel.to_string(), s.ts_ms(i), *v, s.unit.to_string()));
                    }
                }
                let want: Vec<(String, i64, f64, String)> = p
                    .expected_rows(m, k)
                    .into_iter()
                    .map(|r| (r.channel.to_string(), r.ts_ms, r.value, r.unit.to_string()))
                    .collect();
                assert_eq!(got, want, "{format} {shape:?} meter {m} report {k}");
            }
        }
    }

    #[test]
    fn dsmr_timestamps_follow_eu_summer_time() {
        assert_eq!(dsmr_timestamp(1_719_792_000_000), "240701020000S");
        assert_eq!(dsmr_timestamp(1_704_067_200_000), "240101010000W");
        // 2024-03-31T01:00:00Z is the switch to summer time.
        assert_eq!(dsmr_timestamp(1_711_846_799_000), "240331015959W");
        assert_eq!(dsmr_timestamp(1_711_846_800_000), "240331030000S");
    }

    #[test]
    fn dsmr_is_refused_for_series() {
        assert!(plan(Format::Dsmr, Shape::Series).validate().is_err());
        let e = plan(Format::Dlms, Shape::Series).validate().unwrap_err();
        assert!(e.to_string().contains("use --shape readings"), "{e}");
        assert!(plan(Format::Lwm2m, Shape::Readings).validate().is_err());
    }
}
