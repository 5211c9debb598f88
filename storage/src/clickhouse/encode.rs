//! The rows the writer inserts as RowBinary: status reports and dead letters from their row
//! structs, and readings from the canonical Arrow batch where the Native encoder
//! ([`super::native`]) cannot be used; times as the table stores them.

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use meterflow_proto::ReadingColumns;

use super::TimeColumns;

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// ClickHouse's VarUInt (LEB128), in RowBinary and Native alike.
pub(super) fn put_varuint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A String (RowBinary and Native): VarUInt length, then the bytes (any bytes: ClickHouse
/// does not check).
pub(super) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varuint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encodes a batch of the canonical schema as RowBinary for the `readings` columns; an error
/// when the batch is not of that schema.
pub fn encode_rowbinary(batch: &RecordBatch, times: TimeColumns) -> Result<Vec<u8>, ArrowError> {
    let c = ReadingColumns::of(batch)?;
    let mut out = Vec::with_capacity(c.len() * 64);
    for i in 0..c.len() {
        put_str(&mut out, c.meter_id.value(i));
        put_str(&mut out, c.channel.value(i));
        put_time(&mut out, c.ts.value(i), times);
        out.extend_from_slice(&c.value.value(i).to_le_bytes());
        put_str(&mut out, c.unit.value(i));
        out.extend_from_slice(&c.quality.value(i).to_le_bytes());
        put_time(&mut out, c.received_at.value(i), times);
        put_str(&mut out, c.source.value(i));
        put_str(&mut out, c.format.value(i));
    }
    Ok(out)
}

/// One device status report (bare, or inside a report), for the `device_status` table.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct StatusRow {
    pub meter_id: String,
    /// When meterflow accepted it, Unix ms.
    pub at_ms: i64,
    /// The report's own time, Unix ms: the newest reading of the message it came in; for a
    /// bare status report (no time of its own) when meterflow accepted it (`at_ms`). 0 in a
    /// spool file of an earlier version: then `at_ms` stands for it.
    #[serde(default)]
    pub ts_ms: i64,
    pub battery_pct: Option<u8>,
    pub rssi_dbm: Option<i32>,
    pub rsrp_dbm: Option<i32>,
    /// As bits in a spool file (a device may send NaN).
    #[serde(with = "super::queue::f32_bits")]
    pub snr_db: Option<f32>,
    pub firmware: Option<String>,
    pub error_flags: Option<u32>,
    pub source: String,
    /// The WAL position of the message it came from (a unique stand-in when it has none):
    /// part of the table's key, so an insert repeated by a retry is one row after merges,
    /// while two reports of one meter in the same second stay two.
    pub lsn: u64,
}

/// A payload that did not decode, for the `dead_letters` table (the same as the dead-letter
/// files hold).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterRow {
    pub received_at_ms: i64,
    pub source: String,
    pub topic: String,
    pub meter_id: String,
    pub format: String,
    pub kind: String,
    pub reason: String,
    /// The raw payload (a ClickHouse String holds any bytes); base64 in a spool file.
    #[serde(with = "super::queue::payload_base64")]
    pub payload: Vec<u8>,
    /// The WAL position of the message, as in [`StatusRow::lsn`].
    pub lsn: u64,
}

/// What goes to ClickHouse beside a batch of readings.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SideRows {
    pub statuses: Vec<StatusRow>,
    pub dead_letters: Vec<DeadLetterRow>,
    /// (A spool file written before events were kept has none.)
    #[serde(default)]
    pub events: Vec<crate::events::EventRow>,
    /// The oldest WAL record with a row here (what the checkpoint may not pass before they
    /// are inserted).
    oldest_lsn: Option<u64>,
}

impl SideRows {
    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty() && self.dead_letters.is_empty() && self.events.is_empty()
    }

    /// Notes that a row of WAL record `lsn` was added (0: not in the WAL, holds nothing).
    pub fn note_lsn(&mut self, lsn: u64) {
        if lsn > 0 {
            self.oldest_lsn = Some(self.oldest_lsn.map_or(lsn, |o| o.min(lsn)));
        }
    }

    /// Adds the rows of `other` (a later job's, merged into one insert).
    pub fn append(&mut self, other: SideRows) {
        self.statuses.extend(other.statuses);
        self.dead_letters.extend(other.dead_letters);
        self.events.extend(other.events);
        if let Some(lsn) = other.oldest_lsn {
            self.note_lsn(lsn);
        }
    }

    /// The rows of one side table (`table`: `device_status`, `dead_letters` or `events`),
    /// one row each (to find the one a server refuses).
    pub fn split_rows(&self, table: &str) -> Vec<SideRows> {
        fn each<T: Clone>(rows: &[T], put: impl Fn(T) -> SideRows) -> Vec<SideRows> {
            rows.iter().cloned().map(put).collect()
        }
        match table {
            "device_status" => each(&self.statuses, |r| SideRows {
                statuses: vec![r],
                ..Default::default()
            }),
            "events" => each(&self.events, |r| SideRows {
                events: vec![r],
                ..Default::default()
            }),
            _ => each(&self.dead_letters, |r| SideRows {
                dead_letters: vec![r],
                ..Default::default()
            }),
        }
    }

    /// The oldest WAL record with a row here.
    pub fn oldest_lsn(&self) -> Option<u64> {
        self.oldest_lsn
    }

    /// Rows held, and payload bytes (to flush before they grow large).
    pub fn size(&self) -> (usize, usize) {
        let bytes = self
            .dead_letters
            .iter()
            .map(|d| d.payload.len() + d.reason.len())
            .sum();
        (
            self.statuses.len() + self.dead_letters.len() + self.events.len(),
            bytes,
        )
    }
}

fn put_time(out: &mut Vec<u8>, ms: i64, times: TimeColumns) {
    match times {
        TimeColumns::Millis => out.extend_from_slice(&ms.to_le_bytes()),
        TimeColumns::Seconds => {
            let secs = u32::try_from(ms.div_euclid(1000)).unwrap_or(0);
            out.extend_from_slice(&secs.to_le_bytes());
        }
    }
}

/// Encodes events as RowBinary for `events` (its columns in order).
pub fn encode_events_rowbinary(rows: &[crate::events::EventRow], times: TimeColumns) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 64);
    for r in rows {
        put_str(&mut out, &r.meter_id);
        put_time(&mut out, r.ts_ms, times);
        for text in [&r.kind, &r.severity, &r.source, &r.code, &r.detail, &r.raw] {
            put_str(&mut out, text);
        }
    }
    out
}

/// Encodes dead letters as RowBinary for `dead_letters` (with `lsn` when `with_lsn`).
pub fn encode_dead_letter_rowbinary(
    rows: &[DeadLetterRow],
    times: TimeColumns,
    with_lsn: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        put_time(&mut out, r.received_at_ms, times);
        for text in [
            &r.source,
            &r.topic,
            &r.meter_id,
            &r.format,
            &r.kind,
            &r.reason,
        ] {
            put_str(&mut out, text);
        }
        put_bytes(&mut out, &r.payload);
        if with_lsn {
            out.extend_from_slice(&r.lsn.to_le_bytes());
        }
    }
    out
}

/// Encodes status rows as RowBinary for `device_status` (Nullable: a null flag byte, then
/// the value when present; `lsn` when `with_lsn`, then `ts` when `with_ts`).
pub fn encode_status_rowbinary(
    rows: &[StatusRow],
    times: TimeColumns,
    with_lsn: bool,
    with_ts: bool,
) -> Vec<u8> {
    fn opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
        match v {
            Some(v) => {
                out.push(0);
                put(out, v);
            }
            None => out.push(1),
        }
    }
    let mut out = Vec::with_capacity(rows.len() * 48);
    for r in rows {
        put_str(&mut out, &r.meter_id);
        put_time(&mut out, r.at_ms, times);
        opt(&mut out, r.battery_pct, |o, v| o.push(v));
        opt(&mut out, r.rssi_dbm, |o, v| {
            o.extend_from_slice(&v.to_le_bytes())
        });
        opt(&mut out, r.rsrp_dbm, |o, v| {
            o.extend_from_slice(&v.to_le_bytes())
        });
        opt(&mut out, r.snr_db, |o, v| {
            o.extend_from_slice(&v.to_le_bytes())
        });
        opt(&mut out, r.firmware.as_deref(), put_str);
        opt(&mut out, r.error_flags, |o, v| {
            o.extend_from_slice(&v.to_le_bytes())
        });
        put_str(&mut out, &r.source);
        if with_lsn {
            out.extend_from_slice(&r.lsn.to_le_bytes());
        }
        if with_ts {
            put_time(&mut out, r.own_time_ms(), times);
        }
    }
    out
}

impl StatusRow {
    /// The report's own time: `ts_ms`, or `at_ms` where a row of an earlier version has none.
    pub fn own_time_ms(&self) -> i64 {
        if self.ts_ms == 0 {
            self.at_ms
        } else {
            self.ts_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_proto::{Format, ReadingBatchBuilder, RowMeta, Source};

    #[test]
    fn rowbinary_has_the_column_layout_of_each_server() {
        let mut b = ReadingBatchBuilder::default();
        let meta = RowMeta {
            meter_id: "m1",
            received_at_ms: 1_709_337_600_999,
            source: Source::Mqtt,
            format: Format::Pb,
        };
        b.append(&meta, "1-0:1.8.0", 1_709_337_600_500, 1.5, "kWh", 3);
        let batch = b.finish();
        let old = encode_rowbinary(&batch, TimeColumns::Seconds).unwrap();
        let mut want = vec![2, b'm', b'1', 9];
        want.extend_from_slice(b"1-0:1.8.0");
        want.extend_from_slice(&1_709_337_600u32.to_le_bytes());
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[3, b'k', b'W', b'h']);
        want.extend_from_slice(&3u16.to_le_bytes());
        want.extend_from_slice(&1_709_337_600u32.to_le_bytes());
        want.extend_from_slice(&[4, b'm', b'q', b't', b't', 2, b'p', b'b']);
        assert_eq!(old, want);
        let new = encode_rowbinary(&batch, TimeColumns::Millis).unwrap();
        assert_eq!(
            new.len(),
            old.len() + 8,
            "two Int64 times instead of two UInt32"
        );
    }

    #[test]
    fn status_rows_encode_nullable_fields() {
        let row = StatusRow {
            meter_id: "m".into(),
            at_ms: 2_000,
            battery_pct: Some(87),
            firmware: Some("1".into()),
            source: "mqtt".into(),
            lsn: 7,
            ..Default::default()
        };
        let bytes = encode_status_rowbinary(
            std::slice::from_ref(&row),
            TimeColumns::Seconds,
            false,
            false,
        );
        let mut want = vec![1, b'm'];
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(&[0, 87, 1, 1, 1, 0, 1, b'1', 1, 4, b'm', b'q', b't', b't']);
        assert_eq!(bytes, want, "a table of an earlier version: no lsn column");
        want.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(
            encode_status_rowbinary(&[row], TimeColumns::Seconds, true, false),
            want
        );
    }
}
