//! DLMS/COSEM pushes (IEC 62056): what a meter with a modem sends on a schedule or an alarm.
//! Sans-IO and panic-free like the other decoders; the layers, outside in:
//!
//! - [`frame`]: HDLC, M-Bus or the IEC 62056-4-7 wrapper, detected from the bytes (or none),
//!   checksums checked, segments joined;
//! - [`apdu`]: general-block-transfer joined, general-glo-ciphering opened with the keys of
//!   the push's system title (AES-GCM-128, the tag checked whenever there is one), the
//!   DataNotification read;
//! - [`axdr`]: the A-XDR data of its body;
//! - [`cosem`]: the objects in it as readings (channel = OBIS, value × 10^scaler, unit symbol)
//!   and device status (firmware, alarm flags), stamped with the notification's time, else
//!   the clock object's, else the time of receipt;
//! - a DSMR telegram inside the ciphering (encrypted P1) goes to [`crate::dsmr`].
//!
//! Keys come from the caller ([`KeyLookup`] by system title): the decoder holds none. What a
//! push's invocation counter must exceed is the caller's to keep (replays are refused where
//! counters are stored, not here).

pub mod apdu;
pub mod axdr;
pub mod cosem;
pub mod frame;

pub use apdu::{security_head, system_title, KeyLookup, Keys, Security, SecurityHead};
pub use chrono_tz::Tz;
pub use cosem::{unit_of_symbol, Obis, Profile, ProfileObject};
pub use frame::{Framing, WrapperHeader, WRAPPER_HEADER};

use meterflow_proto::Format;

use crate::{DecodeError, Decoded, Position, Refusal};

/// A push, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub framing: Framing,
    /// The ciphering it came in (system title, security control, invocation counter).
    pub security: Option<Security>,
    /// General-block-transfer blocks it came in (0: none).
    pub blocks: usize,
    /// The DataNotification's long-invoke-id-and-priority (none for encrypted DSMR).
    pub long_invoke_id: Option<u32>,
    /// The readings and status.
    pub decoded: Decoded<'static>,
}

/// What a meter's pushes are read with besides their bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'p> {
    /// The objects of its values-only bodies (`None`: only self-describing bodies decode).
    pub profile: Option<&'p Profile>,
    /// Whether the profile is the meter's own (named in its credential): a push that does
    /// not fit it is refused; else (a manufacturer's) such a push is read as self-describing.
    pub profile_named: bool,
    /// The zone its clock keeps, for date-times that carry no deviation (`None`: taken as
    /// UTC and flagged `CLOCK_INVALID`).
    pub zone: Option<Tz>,
}

/// Decodes a push: `keys` gives the keys of a system title, `profile` the objects of a
/// values-only body (`None`: only self-describing bodies decode).
pub fn decode_push(
    payload: &[u8],
    received_at_ms: i64,
    keys: &dyn Fn(&[u8; 8]) -> KeyLookup,
    profile: Option<&Profile>,
) -> Result<Push, DecodeError> {
    let context = Context {
        profile,
        profile_named: profile.is_some(),
        zone: None,
    };
    decode_push_in(payload, received_at_ms, keys, &context)
}

/// [`decode_push`] with the meter's [`Context`].
pub fn decode_push_in(
    payload: &[u8],
    received_at_ms: i64,
    keys: &dyn Fn(&[u8; 8]) -> KeyLookup,
    context: &Context<'_>,
) -> Result<Push, DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty {
            format: Format::Dlms,
        });
    }
    let unframed = frame::unframe(payload)?;
    let opened = apdu::open(&unframed.apdu, unframed.base, keys)?;
    let (long_invoke_id, decoded) = match &opened.content {
        apdu::Content::Dsmr(telegram) => (
            None,
            crate::dsmr::decode_at(telegram, received_at_ms)?.into_owned(),
        ),
        apdu::Content::Notification(bytes) => {
            // Offsets name the APDU's bytes when they are one run of the payload.
            let base = if opened.security.is_none() && opened.blocks == 0 {
                unframed.base
            } else {
                0
            };
            let n = apdu::notification(bytes, base)?;
            let mut m = cosem::meaning(&n.body, context, Some(received_at_ms));
            // Nothing read: a values-only body (IDIS pushes name only their push setup, the
            // first element) needs a profile that says what its values are.
            if m.readings.is_empty() && m.status.is_empty() && m.rejected.is_empty() {
                let reason = match &m.profile_mismatch {
                    Some(mismatch) => format!("no reading in the body: {mismatch}"),
                    None => format!(
                        "no reading in the body ({} OBIS code(s) with values): a values-only push needs a push profile ([[dlms.profile]])",
                        m.objects
                    ),
                };
                return Err(unsupported(base, reason));
            }
            let stamp = n
                .date_time
                .and_then(|b| cosem::date_time_in(b, context.zone, Some(received_at_ms)));
            m.stamp(stamp, received_at_ms);
            let status = (!m.status.is_empty()).then_some(m.status);
            (
                Some(n.long_invoke_id),
                Decoded {
                    meter_id: None,
                    seq: None,
                    readings: m.readings,
                    series: Vec::new(),
                    status,
                    rejected: m.rejected,
                    events: m.events,
                },
            )
        }
    };
    Ok(Push {
        framing: unframed.framing,
        security: opened.security,
        blocks: opened.blocks,
        long_invoke_id,
        decoded,
    })
}

/// `Format::Dlms` through [`crate::decode`], where no keys are at hand: plaintext pushes
/// decode, ciphered ones are refused as `no_key`.
pub(crate) fn decode_plain(
    payload: &[u8],
    received_at_ms: i64,
) -> Result<Decoded<'static>, DecodeError> {
    decode_push(payload, received_at_ms, &|_| KeyLookup::NoKey, None).map(|p| p.decoded)
}

pub(crate) fn malformed(offset: usize, reason: impl Into<String>) -> DecodeError {
    DecodeError::malformed(Format::Dlms, Position::Offset(offset), reason)
}

pub(crate) fn unsupported(offset: usize, reason: impl Into<String>) -> DecodeError {
    DecodeError::Unsupported {
        format: Format::Dlms,
        position: Position::Offset(offset),
        reason: reason.into(),
    }
}

pub(crate) fn refused(refusal: Refusal, reason: impl Into<String>) -> DecodeError {
    DecodeError::Refused {
        format: Format::Dlms,
        refusal,
        reason: reason.into(),
    }
}

/// The entry point of the `dlms_ciphered` fuzz target: any bytes as a push, with a key for
/// every system title (so the ciphering layer is reached, and an "encrypted only" push's
/// deciphered body). Never panics.
#[doc(hidden)]
pub fn fuzz_ciphered(data: &[u8]) {
    let keys = |_: &[u8; 8]| {
        KeyLookup::Keys(Keys {
            ek: [0x10; 16],
            ak: Some([0x20; 16]),
        })
    };
    let _ = decode_push(data, 1_719_792_000_000, &keys, None);
}

/// The entry point of the `dlms_frame` fuzz target: the framings alone (HDLC segments with
/// their checksums, M-Bus long frames, the wrapper header) and the system title the listener
/// reads from a push's first bytes. Never panics.
#[doc(hidden)]
pub fn fuzz_frame(data: &[u8]) {
    if let Some(header) = data.first_chunk::<WRAPPER_HEADER>() {
        let _ = WrapperHeader::parse(header);
    }
    if let Ok(unframed) = frame::unframe(data) {
        let _ = system_title(&unframed.apdu);
    }
    let _ = system_title(data);
}

/// The entry point of the `dlms_axdr` fuzz target: A-XDR values read until the bytes end or
/// one does not parse. Never panics.
#[doc(hidden)]
pub fn fuzz_axdr(data: &[u8]) {
    let mut r = axdr::Reader::new(data, 0);
    while !r.is_empty() && r.data().is_ok() {}
}
