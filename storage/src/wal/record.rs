//! The record format: how one message is laid out in a segment (header, CRC-32, body, the
//! edge-note bit, the source codes), and how one record is encoded and read back.

use std::io::Read;

use meterflow_proto::Source;

const HEADER: usize = 8;
/// A body is never larger than this; a length beyond it marks a corrupt record.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One message as accepted from the network.
#[derive(Debug, Clone, PartialEq)]
pub struct WalRecord {
    pub lsn: u64,
    pub received_at_ms: i64,
    pub source: Source,
    pub topic: String,
    pub content_type: Option<String>,
    /// What the edge said of it, as text the ingest crate writes and reads (its `EdgeNote`):
    /// refused to its sender (an `unauthorized` dead letter and nothing else), or who sent a
    /// message whose topic routes nowhere (a `bad_topic` dead letter naming the sender).
    pub edge_note: Option<String>,
    pub payload: Vec<u8>,
}

/// A message to append, borrowed from the edge that took it.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub received_at_ms: i64,
    pub source: Source,
    pub topic: &'a str,
    pub content_type: Option<&'a str>,
    pub edge_note: Option<&'a str>,
    pub payload: &'a [u8],
}

impl NewRecord<'_> {
    /// Bytes the record takes in a segment (header and body).
    pub fn encoded_len(&self) -> usize {
        let clamp = |n: usize| n.min(u16::MAX as usize);
        HEADER
            + 8
            + 8
            + 1
            + 2
            + clamp(self.topic.len())
            + 2
            + clamp(self.content_type.map_or(0, str::len))
            + self.edge_note.map_or(0, |r| 2 + clamp(r.len()))
            + self.payload.len()
    }
}

/// Bit 7 of the source byte: the record carries an edge note.
const EDGE_NOTE_BIT: u8 = 0x80;

fn source_code(s: Source) -> u8 {
    match s {
        Source::Mqtt => 0,
        Source::Coap => 1,
        Source::Bridge => 2,
        Source::Dlms => 3,
    }
}

fn source_from(code: u8) -> Option<Source> {
    match code {
        0 => Some(Source::Mqtt),
        1 => Some(Source::Coap),
        2 => Some(Source::Bridge),
        3 => Some(Source::Dlms),
        _ => None,
    }
}

/// Encodes one record (header and body) into `out`.
pub(super) fn encode(out: &mut Vec<u8>, lsn: u64, record: &NewRecord<'_>) {
    fn short(text: &str) -> &[u8] {
        &text.as_bytes()[..text.len().min(u16::MAX as usize)]
    }
    let topic = short(record.topic);
    let ct = short(record.content_type.unwrap_or(""));
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&record.received_at_ms.to_le_bytes());
    let edge_note_bit = if record.edge_note.is_some() {
        EDGE_NOTE_BIT
    } else {
        0
    };
    out.push(source_code(record.source) | edge_note_bit);
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&(ct.len() as u16).to_le_bytes());
    out.extend_from_slice(ct);
    if let Some(reason) = record.edge_note {
        let reason = short(reason);
        out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(record.payload);
    let body_len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a body whose CRC was checked; `None` if its fields do not fit.
fn decode_body(body: &[u8]) -> Option<WalRecord> {
    let mut at = 0usize;
    let mut take = |n: usize| {
        let s = body.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let lsn = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let received_at_ms = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let source_byte = take(1)?[0];
    let source = source_from(source_byte & !EDGE_NOTE_BIT)?;
    let topic_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let topic = String::from_utf8_lossy(take(topic_len)?).into_owned();
    let ct_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let ct = take(ct_len)?;
    let content_type = (!ct.is_empty()).then(|| String::from_utf8_lossy(ct).into_owned());
    let edge_note = if source_byte & EDGE_NOTE_BIT != 0 {
        let len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        Some(String::from_utf8_lossy(take(len)?).into_owned())
    } else {
        None
    };
    let payload = body.get(at..)?.to_vec();
    Some(WalRecord {
        lsn,
        received_at_ms,
        source,
        topic,
        content_type,
        edge_note,
        payload,
    })
}

/// Why a record could not be read.
#[derive(Debug)]
pub(super) enum ReadFailure {
    /// Short, over-long, failing its CRC, or with fields that do not fit: torn or corrupt.
    Torn,
    /// The file could not be read: says nothing about the bytes, so nothing may be cut.
    Io(std::io::Error),
}

/// Reads the next record of a segment; `Ok(None)` at a clean end.
pub(super) fn read_record(r: &mut impl Read) -> Result<Option<(WalRecord, u64)>, ReadFailure> {
    let mut header = [0u8; HEADER];
    match read_full(r, &mut header).map_err(ReadFailure::Io)? {
        0 => return Ok(None),
        HEADER => {}
        _ => return Err(ReadFailure::Torn),
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_BODY {
        return Err(ReadFailure::Torn);
    }
    let mut body = vec![0u8; len];
    if read_full(r, &mut body).map_err(ReadFailure::Io)? != len {
        return Err(ReadFailure::Torn);
    }
    if crc32fast::hash(&body) != crc {
        return Err(ReadFailure::Torn);
    }
    match decode_body(&body) {
        Some(record) => Ok(Some((record, (HEADER + len) as u64))),
        None => Err(ReadFailure::Torn),
    }
}

/// Like `read_exact`, but says how much it read before the end.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_has_its_own_code_and_reads_back() {
        let all = [Source::Mqtt, Source::Coap, Source::Bridge, Source::Dlms];
        for source in all {
            assert_eq!(source_from(source_code(source)), Some(source));
        }
        let mut codes: Vec<u8> = all.into_iter().map(source_code).collect();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        // The edge-note bit is not a source.
        assert!(codes.iter().all(|c| c & EDGE_NOTE_BIT == 0));
        assert_eq!(source_from(4), None);
    }
}
