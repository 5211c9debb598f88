//! The one error type of the decoders crate. No decode error is helped by a retry: the
//! payload goes to the dead letters with the error's text as its reason.

use std::fmt;

use meterflow_proto::Format;

/// Where in a payload something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// 1-based line of a text payload.
    Line(usize),
    /// 1-based line and column of a text payload.
    LineColumn(usize, usize),
    /// Byte offset into a binary payload.
    Offset(usize),
    /// 0-based index of a record (SenML record, report reading, series value).
    Record(usize),
    /// The payload as a whole.
    Whole,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(l) => write!(f, "line {l}"),
            Position::LineColumn(l, c) => write!(f, "line {l} column {c}"),
            Position::Offset(o) => write!(f, "byte offset {o}"),
            Position::Record(r) => write!(f, "record {r}"),
            Position::Whole => f.write_str("payload"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("{format}: empty payload")]
    Empty { format: Format },

    #[error("{format}: malformed at {position}: {reason}")]
    Malformed {
        format: Format,
        position: Position,
        reason: String,
    },

    #[error("{format}: unsupported at {position}: {reason}")]
    Unsupported {
        format: Format,
        position: Position,
        reason: String,
    },

    #[error("dsmr: CRC mismatch: telegram states {stated:04X}, computed {computed:04X}")]
    CrcMismatch { stated: u16, computed: u16 },

    #[error("{format}: no usable reading in payload ({rejected} rejected, first: {first})")]
    NothingUsable {
        format: Format,
        rejected: usize,
        first: String,
    },

    #[error("{format}: payload names meter {payload:?} but was sent for meter {topic:?}")]
    MeterMismatch {
        format: Format,
        payload: String,
        topic: String,
    },

    /// A ciphered push that its keys do not open (or that has none): not a bad payload but
    /// one refused, counted by its own kind.
    #[error("{format}: {refusal}: {reason}")]
    Refused {
        format: Format,
        refusal: Refusal,
        reason: String,
    },
}

/// Why a ciphered push was refused ([`DecodeError::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its tag does not match the keys of its system title.
    AuthFailed,
    /// Its system title belongs to a meter that has no key (or not the key it needs).
    NoKey,
    /// Its system title belongs to no meter.
    UnknownSystemTitle,
    /// Its invocation counter is not higher than the last one accepted.
    Replay,
    /// Its system title belongs to another meter than the one it was sent for.
    Unauthorized,
    /// It lacks the protection its meter's keys call for: in clear (or not authenticated)
    /// for a meter that has an encryption (or authentication) key.
    Unprotected,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::AuthFailed => "auth_failed",
            Refusal::NoKey => "no_key",
            Refusal::UnknownSystemTitle => "unknown_system_title",
            Refusal::Replay => "replay",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Unprotected => "unprotected",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DecodeError {
    pub fn malformed(format: Format, position: Position, reason: impl Into<String>) -> Self {
        DecodeError::Malformed {
            format,
            position,
            reason: reason.into(),
        }
    }

    /// Decoding the same bytes again gives the same answer.
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// A short, stable label for metrics (`reason` label of the dead-letter counter).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty { .. } => "empty",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::Unsupported { .. } => "unsupported",
            DecodeError::CrcMismatch { .. } => "crc_mismatch",
            DecodeError::NothingUsable { .. } => "nothing_usable",
            DecodeError::MeterMismatch { .. } => "meter_mismatch",
            DecodeError::Refused { refusal, .. } => refusal.as_str(),
        }
    }

    /// Where in the payload, if the error knows.
    pub fn position(&self) -> Option<Position> {
        match self {
            DecodeError::Malformed { position, .. } | DecodeError::Unsupported { position, .. } => {
                Some(*position)
            }
            _ => None,
        }
    }
}
