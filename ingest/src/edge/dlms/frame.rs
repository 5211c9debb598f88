//! What the listener decides about a frame, without I/O: whether its header may be read on
//! (version, length within `dlms.max_apdu_bytes`), whether a datagram is one whole frame,
//! and for which meter a frame is stored or why it is refused.

use std::net::IpAddr;

use meterflow_decoders::dlms::{self, WrapperHeader, WRAPPER_HEADER};

use crate::credentials::CredentialStore;

/// How a frame came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// What the listener refused: the `reason` of `meterflow_dlms_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A ciphered push whose system title is no meter's: an `unauthorized` dead letter.
    UnknownSystemTitle,
    /// A push without a system title where plaintext is not taken: an `unauthorized` dead
    /// letter.
    Plaintext,
    /// A header stating more than `dlms.max_apdu_bytes`: the connection closed, the datagram
    /// dropped.
    FrameTooLarge,
    /// Not a wrapper frame (version not 1; a datagram not one whole frame): the connection
    /// closed, the datagram dropped.
    BadFrame,
    /// A TCP connection that ended inside a frame (the part read is dropped).
    Truncated,
    /// The WAL at its disk budget: the TCP connection reset (a UDP datagram is dropped by
    /// the writer, and counted in `meterflow_wal_overflow_total`).
    WalFull,
    /// The WAL could not be written: the TCP connection reset.
    WalFailed,
    /// A datagram that found the writer's channel full: dropped.
    Busy,
    /// A TCP connection past `dlms.max_connections`: closed at accept.
    MaxConnections,
    /// A TCP connection past `dlms.max_connections_per_address`: closed at accept.
    MaxConnectionsPerAddress,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::UnknownSystemTitle => "unknown_system_title",
            Refused::Plaintext => "plaintext",
            Refused::FrameTooLarge => "frame_too_large",
            Refused::BadFrame => "bad_frame",
            Refused::Truncated => "truncated",
            Refused::WalFull => "wal_full",
            Refused::WalFailed => "wal_failed",
            Refused::Busy => "busy",
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerAddress => "max_connections_per_address",
        }
    }

    /// Counts it in `meterflow_dlms_refused_total{reason}`.
    pub fn count(self) {
        metrics::counter!("meterflow_dlms_refused_total", "reason" => self.label()).increment(1);
    }
}

/// The length of the APDU after `header`, if the frame may be read on.
pub fn apdu_len(header: &[u8; WRAPPER_HEADER], max_apdu_bytes: usize) -> Result<usize, Refused> {
    let header = WrapperHeader::parse(header);
    if header.version != 1 {
        return Err(Refused::BadFrame);
    }
    let len = usize::from(header.length);
    if len > max_apdu_bytes {
        return Err(Refused::FrameTooLarge);
    }
    Ok(len)
}

/// Checks that a datagram is one whole wrapper frame.
pub fn datagram(bytes: &[u8], max_apdu_bytes: usize) -> Result<(), Refused> {
    let header = bytes
        .first_chunk::<WRAPPER_HEADER>()
        .ok_or(Refused::BadFrame)?;
    let len = apdu_len(header, max_apdu_bytes)?;
    if bytes.len() != WRAPPER_HEADER + len {
        return Err(Refused::BadFrame);
    }
    Ok(())
}

/// What becomes of a whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stored as `meters/{meter_id}/dlms`.
    Take { meter_id: String },
    /// Refused at the edge: an `unauthorized` dead letter with `reason`.
    Refuse { why: Refused, reason: String },
}

/// For which meter `frame` (a whole wrapper frame) from `peer` is stored: the meter of the
/// system title of a ciphered APDU, as the store has it now; for a push without one (in
/// clear, or not readable that far), where `plaintext_ok`, the meter `prefix` + the peer's
/// address. Nothing is deciphered here: the pipeline opens the push with that meter's keys,
/// checks its tag and its invocation counter.
pub fn judge(
    frame: &[u8],
    peer: IpAddr,
    store: &CredentialStore,
    plaintext_ok: bool,
    prefix: &str,
) -> Verdict {
    let apdu = frame.get(WRAPPER_HEADER..).unwrap_or_default();
    match dlms::system_title(apdu) {
        Some(title) => match store.meter_of_system_title(&title) {
            Some(meter_id) => Verdict::Take {
                meter_id: meter_id.to_string(),
            },
            None => Verdict::Refuse {
                why: Refused::UnknownSystemTitle,
                reason: format!(
                    "DLMS system title {} is no meter's",
                    dlms::apdu::hex(&title)
                ),
            },
        },
        None if plaintext_ok => Verdict::Take {
            meter_id: plaintext_meter(prefix, peer),
        },
        None => Verdict::Refuse {
            why: Refused::Plaintext,
            reason: "a DLMS push without a system title (not ciphered): taken only with dlms.allow_plaintext, or on a loopback listener while the credential store is empty"
                .into(),
        },
    }
}

/// The meter id of a plaintext push from `peer`: `prefix`, then the address with `.` and `:`
/// made `-` (an IPv4-mapped IPv6 address as the IPv4 one).
pub fn plaintext_meter(prefix: &str, peer: IpAddr) -> String {
    let address = peer.to_canonical().to_string().replace(['.', ':'], "-");
    format!("{prefix}{address}")
}
