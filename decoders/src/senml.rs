//! SenML (being written).
use crate::{DecodeError, Decoded, Format, Position};

pub fn decode_json(_payload: &[u8], _now_ms: i64) -> Result<Decoded<'_>, DecodeError> {
    Err(DecodeError::Unsupported { format: Format::Senml, position: Position::Whole, reason: "not yet".into() })
}
pub fn decode_cbor(_payload: &[u8], _now_ms: i64) -> Result<Decoded<'_>, DecodeError> {
    Err(DecodeError::Unsupported { format: Format::SenmlCbor, position: Position::Whole, reason: "not yet".into() })
}
pub fn decode_lwm2m(_payload: &[u8], _now_ms: i64) -> Result<Decoded<'_>, DecodeError> {
    Err(DecodeError::Unsupported { format: Format::Lwm2m, position: Position::Whole, reason: "not yet".into() })
}
