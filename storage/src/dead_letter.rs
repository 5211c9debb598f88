//! Dead letters: messages that did not decode (or decoded only in part), kept with their raw
//! bytes, where they came from and why, so nothing is lost and an operator can replay them.
//!
//! One JSON object per line in `{data_dir}/dead_letters/YYYY-MM-DD.jsonl` (UTC date of receipt),
//! the payload in base64. Readable with `jq`, DuckDB `read_json` or pandas. Each line is
//! flushed to the OS as it is written; the file is fsynced on close.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// One message that did not (fully) decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When meterflow accepted the message, Unix milliseconds UTC.
    pub received_at_ms: i64,
    /// `mqtt`, `coap`, `bridge`, `dlms`.
    pub source: String,
    /// The MQTT topic or CoAP path.
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A stable label: `malformed`, `crc_mismatch`, `partial`, `bad_topic`, ...
    pub kind: String,
    /// The decoder's message, with the position in the payload where it has one.
    pub reason: String,
    /// The raw payload, base64 in the file.
    #[serde(with = "base64_bytes")]
    pub payload: Vec<u8>,
}

mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

pub struct DeadLetterStore {
    dir: PathBuf,
    /// The node's id, in the file names (`{date}.{node}.jsonl`); empty: `{date}.jsonl`.
    node: String,
    current: Option<(String, PathBuf, BufWriter<File>)>,
}

impl DeadLetterStore {
    /// `node`: the node's id (each node appends to its own files in a shared folder), or
    /// empty.
    pub fn open(data_dir: &Path, node: &str) -> Result<Self, StorageError> {
        let dir = data_dir.join("dead_letters");
        fs::create_dir_all(&dir).map_err(|e| StorageError::io("creating", &dir, e))?;
        Ok(DeadLetterStore {
            dir,
            node: node.to_string(),
            current: None,
        })
    }

    /// The folder of the daily files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn write(&mut self, letter: &DeadLetter) -> Result<(), StorageError> {
        let date = chrono::DateTime::from_timestamp_millis(letter.received_at_ms)
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string();
        if self.current.as_ref().map(|(d, ..)| d) != Some(&date) {
            self.close()?;
            let path = if self.node.is_empty() {
                self.dir.join(format!("{date}.jsonl"))
            } else {
                self.dir.join(format!("{date}.{}.jsonl", self.node))
            };
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| StorageError::io("opening", &path, e))?;
            self.current = Some((date, path, BufWriter::new(file)));
        }
        if let Some((_, path, out)) = self.current.as_mut() {
            let mut line = serde_json::to_vec(letter)
                .map_err(|e| StorageError::io("encoding a dead letter for", &*path, e.into()))?;
            line.push(b'\n');
            out.write_all(&line)
                .and_then(|()| out.flush())
                .map_err(|e| StorageError::io("appending to", &*path, e))?;
        }
        metrics::counter!("meterflow_dead_letters_written_total").increment(1);
        Ok(())
    }

    /// Flushes and fsyncs the current file.
    pub fn close(&mut self) -> Result<(), StorageError> {
        if let Some((_, path, out)) = self.current.take() {
            let file = out
                .into_inner()
                .map_err(|e| StorageError::io("flushing", &path, e.into_error()))?;
            file.sync_all()
                .map_err(|e| StorageError::io("syncing", &path, e))?;
        }
        Ok(())
    }
}

impl Drop for DeadLetterStore {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the dead-letter file");
        }
    }
}

/// The rows of a canonical batch as JSON lines (the payload of a dead letter made of rows).
pub fn rows_as_json_lines(batch: &arrow_array::RecordBatch) -> Vec<u8> {
    let c = match meterflow_proto::ReadingColumns::of(batch) {
        Ok(c) => c,
        Err(e) => return format!("{{\"error\": {:?}}}\n", e.to_string()).into_bytes(),
    };
    let mut out = Vec::new();
    for i in 0..c.len() {
        let row = serde_json::json!({
            "meter_id": c.meter_id.value(i), "channel": c.channel.value(i), "ts_ms": c.ts.value(i),
            "value": c.value.value(i), "unit": c.unit.value(i), "quality": c.quality.value(i),
            "received_at_ms": c.received_at.value(i), "source": c.source.value(i),
            "format": c.format.value(i),
        });
        out.extend_from_slice(row.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Reads every dead letter of a folder written by [`DeadLetterStore`] (for tools and tests).
pub fn read_all(dir: &Path) -> Result<Vec<DeadLetter>, StorageError> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| StorageError::io("listing", dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    let mut letters = Vec::new();
    for path in paths {
        let text = fs::read_to_string(&path).map_err(|e| StorageError::io("reading", &path, e))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let letter = serde_json::from_str(line)
                .map_err(|e| StorageError::io("parsing", &path, e.into()))?;
            letters.push(letter);
        }
    }
    Ok(letters)
}

/// The payload as base64, as it is stored.
pub fn encode_payload(payload: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_round_trip_with_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DeadLetterStore::open(dir.path(), "").unwrap();
        let letter = DeadLetter {
            received_at_ms: 1_709_337_600_000,
            source: "mqtt".into(),
            topic: "meters/m1/pb".into(),
            meter_id: Some("m1".into()),
            format: Some("pb".into()),
            kind: "malformed".into(),
            reason: "pb: malformed at payload: bad wire type".into(),
            payload: vec![0, 159, 146, 150, 255],
        };
        store.write(&letter).unwrap();
        store.write(&letter).unwrap();
        store.close().unwrap();
        let path = store.dir().join("2024-03-02.jsonl");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!(
            "\"payload\":\"{}\"",
            encode_payload(&letter.payload)
        )));
        let back = read_all(store.dir()).unwrap();
        assert_eq!(back, vec![letter.clone(), letter]);
    }
}
