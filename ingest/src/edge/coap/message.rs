//! CoAP messages as coap-lite gives them: the request's method and options read, the answer's
//! code and diagnostic set, the answer encoded, an RST built.

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};

/// Longest diagnostic payload, bytes (answers must fit a datagram).
const MAX_DIAGNOSTIC: usize = 400;

pub(super) fn request_type(packet: &Packet) -> RequestType {
    match packet.header.code {
        MessageClass::Request(r) => r,
        _ => RequestType::UnKnown,
    }
}

/// Sets the code and a diagnostic payload (RFC 7252 §5.5.2), cut to fit a datagram.
pub(super) fn with_code(mut reply: Packet, code: ResponseType, diagnostic: Option<&str>) -> Packet {
    reply.header.code = MessageClass::Response(code);
    if let Some(text) = diagnostic {
        let mut end = text.len().min(MAX_DIAGNOSTIC);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        reply.payload = text.as_bytes()[..end].to_vec();
    }
    metrics::counter!("meterflow_coap_answers_total", "code" => reply.header.get_code())
        .increment(1);
    reply
}

pub(super) fn encode(reply: &Packet) -> Vec<u8> {
    // Our answers are small (diagnostics are cut): this does not fail.
    reply.to_bytes_unlimited().unwrap_or_default()
}

/// An RST for a CON we cannot parse (RFC 7252 §4.2), when its header can be read at all.
pub(super) fn reset_for_malformed(bytes: &[u8]) -> Option<Vec<u8>> {
    let [first, _, hi, lo, ..] = *bytes else {
        return None;
    };
    let version = first >> 6;
    let confirmable = (first >> 4) & 0x3 == 0;
    (version == 1 && confirmable).then(|| reset(u16::from_be_bytes([hi, lo])))
}

pub(super) fn reset(message_id: u16) -> Vec<u8> {
    let [hi, lo] = message_id.to_be_bytes();
    vec![0x70, 0x00, hi, lo]
}

/// The values of a repeatable string option, or None when one is not UTF-8.
pub(super) fn strings(packet: &Packet, option: CoapOption) -> Option<Vec<&str>> {
    packet
        .get_option(option)
        .map_or(Some(Vec::new()), |values| {
            values
                .iter()
                .map(|v| std::str::from_utf8(v).ok())
                .filter(|s| s != &Some(""))
                .collect()
        })
}

/// An option's unsigned integer value (RFC 7252 §3.2: big-endian, leading zeros dropped).
pub(super) fn uint(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

pub(super) fn uint_bytes(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// Critical options (odd numbers) this server understands; any other is 4.02 (RFC 7252 §5.4.1).
/// Uri-Host (3) and Uri-Port (7) are accepted as is; Accept (17) and Block2 (23) matter for
/// `GET /.well-known/core` only, as every other answer carries no content.
const UNDERSTOOD_CRITICAL: [u16; 7] = [3, 7, 11, 15, 17, 23, 27];
/// Of those, the ones that may not repeat (RFC 7252 §5.4.5: a repeated one is an
/// unrecognized one).
const NOT_REPEATABLE: [u16; 5] = [3, 7, 17, 23, 27];

/// Why the request's options cannot be taken, if they cannot.
pub(super) fn unsupported_critical_option(packet: &Packet) -> Option<String> {
    packet.options().find_map(|(number, values)| {
        let number = *number;
        if number % 2 == 1 && !UNDERSTOOD_CRITICAL.contains(&number) {
            Some(format!("critical option {number} is not supported"))
        } else if values.len() > 1 && NOT_REPEATABLE.contains(&number) {
            Some(format!("option {number} must not repeat"))
        } else {
            None
        }
    })
}
