//! DSMR P1 telegrams (being written).
use crate::{DecodeError, Decoded, Format, Position};

pub fn decode(_payload: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    Err(DecodeError::Unsupported { format: Format::Dsmr, position: Position::Whole, reason: "not yet".into() })
}
