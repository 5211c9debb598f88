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
    /// A ciphered push whose system title is no meter's: not stored (a peer without an
    /// identity gets no storage), the connection reset.
    UnknownSystemTitle,
    /// A push without a system title where plaintext is not taken: not stored, the
    /// connection reset.
    Plaintext,
    /// A push whose system title is a meter's that has no key: nothing could tell it from
    /// a forgery; not stored, the connection reset.
    NoKey,
    /// A push that does not open with its meter's keys (its tag does not match, or it is
    /// not a push that reads): not stored, the connection reset.
    AuthFailed,
    /// A push that lacks the protection its meter's keys call for (authenticated when it
    /// has an authentication key, encrypted when it has only an encryption key), judged on
    /// its security header before anything is deciphered: not stored, the connection reset.
    Unprotected,
    /// A general-ded-ciphering push (`DC`): its dedicated key belongs to an association, so
    /// it never opens; refused before any crypto, not stored, the connection reset.
    DedCiphering,
    /// A header stating more than `dlms.max_apdu_bytes`: the connection reset, the datagram
    /// dropped.
    FrameTooLarge,
    /// Not a wrapper frame (version not 1; a datagram not one whole frame): the connection
    /// reset, the datagram dropped.
    BadFrame,
    /// A TCP connection that ended inside a frame (the part read is dropped).
    Truncated,
    /// A TCP frame not whole within `dlms.frame_timeout_s` of its first byte, or a first frame
    /// not whole within it of the accept: the connection reset (nothing of the
    /// frame came), the part read dropped.
    FrameTimeout,
    /// The WAL at its disk budget: the TCP connection reset (a UDP datagram is dropped by
    /// the writer, and counted in `meterflow_wal_overflow_total`).
    WalFull,
    /// The WAL could not be written: the TCP connection reset.
    WalFailed,
    /// A datagram that found the writer's channel full: dropped.
    Busy,
    /// A TCP connection whose first push was taken with `dlms.max_connections` identified
    /// ones open: reset, the push not stored.
    MaxConnections,
    /// A TCP connection past `dlms.max_pending_connections`, when none could be evicted for
    /// it: reset at accept.
    MaxPending,
    /// A TCP connection past `dlms.max_pending_per_address`: reset at accept.
    PendingPerAddress,
    /// A pending connection evicted for a newcomer that could not be identified after all
    /// (counted with the eviction, as `pending_evicted`).
    PendingEvicted,
    /// A ciphered push whose invocation counter is not above the last one stored for its
    /// system title (and key): a captured push sent again; not stored, the connection reset.
    Replay,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::UnknownSystemTitle => "unknown_system_title",
            Refused::Plaintext => "plaintext",
            Refused::NoKey => "no_key",
            Refused::AuthFailed => "auth_failed",
            Refused::Unprotected => "unprotected",
            Refused::DedCiphering => "ded_ciphering",
            Refused::FrameTooLarge => "frame_too_large",
            Refused::BadFrame => "bad_frame",
            Refused::Truncated => "truncated",
            Refused::FrameTimeout => "frame_timeout",
            Refused::WalFull => "wal_full",
            Refused::WalFailed => "wal_failed",
            Refused::Busy => "busy",
            Refused::MaxConnections => "max_connections",
            Refused::MaxPending => "max_pending",
            Refused::PendingPerAddress => "pending_per_address",
            Refused::PendingEvicted => "pending_evicted",
            Refused::Replay => "replay",
        }
    }

    /// The `reason` of `meterflow_dlms_rejected_total` of a refusal the pipeline makes too
    /// (for a push over MQTT).
    pub fn rejected(self) -> Option<&'static str> {
        match self {
            Refused::UnknownSystemTitle => Some("unknown_system_title"),
            Refused::NoKey => Some("no_key"),
            Refused::Replay => Some("replay"),
            Refused::AuthFailed => Some("auth_failed"),
            Refused::Unprotected => Some("unprotected"),
            _ => None,
        }
    }

    /// Counts it in `meterflow_dlms_refused_total{reason}`; one the pipeline makes too also
    /// in `meterflow_dlms_rejected_total{reason}`, so what watches that one sees the pushes
    /// refused at the listener as those refused over MQTT.
    pub fn count(self) {
        metrics::counter!("meterflow_dlms_refused_total", "reason" => self.label()).increment(1);
        if let Some(reason) = self.rejected() {
            metrics::counter!("meterflow_dlms_rejected_total", "reason" => reason).increment(1);
        }
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

/// A ciphered push's invocation counter, and whose: its system title under the key of this
/// check value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub system_title: [u8; 8],
    pub key: u32,
    pub counter: u32,
}

/// What becomes of a whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stored as `meters/{meter_id}/dlms`; a ciphered push with its counter.
    Take {
        meter_id: String,
        counted: Option<Counted>,
    },
    /// Refused at the edge: not stored, counted, `reason` logged (at most once a second).
    Refuse { why: Refused, reason: String },
}

/// For which meter `frame` (a whole wrapper frame) from `peer` is stored, or why it is refused.
///
/// A ciphered push (general-glo-ciphering, maybe in blocks) is its meter's, by its system title
/// as the store has it now, only if that meter has keys, the push claims the protection they
/// call for (authenticated with an authentication key, at least encrypted with an encryption
/// key alone; checked on the security header before anything is deciphered, so a downgraded
/// push is `unprotected`) and it opens with them (its tag checked: `auth_failed`). The
/// pipeline opens it again and checks its invocation counter. General-ded-ciphering (`DC`) is
/// refused here: its dedicated key belongs to an association, never to a push.
///
/// A push without a system title (in clear, or not readable that far), where `plaintext_ok`,
/// is the meter `prefix` + the peer's address, unless that id is a meter of the store.
pub fn judge(
    frame: &[u8],
    peer: IpAddr,
    store: &CredentialStore,
    plaintext_ok: bool,
    prefix: &str,
) -> Verdict {
    let apdu = frame.get(WRAPPER_HEADER..).unwrap_or_default();
    let refuse = |why, reason: String| Verdict::Refuse { why, reason };
    let Some(head) = dlms::security_head(apdu) else {
        if !plaintext_ok {
            return refuse(
                Refused::Plaintext,
                "a DLMS push without a system title (not ciphered): taken only with dlms.allow_plaintext (over TCP), or on a loopback listener while the credential store is empty".into(),
            );
        }
        let meter_id = plaintext_meter(prefix, peer);
        if store.get(&meter_id).is_some() || store.is_revoked(&meter_id) {
            return refuse(
                Refused::Plaintext,
                format!("a DLMS push in clear from {peer} would be stored for {meter_id}, a meter of the credential store (active or revoked): its pushes must be ciphered"),
            );
        }
        return Verdict::Take {
            meter_id,
            counted: None,
        };
    };
    let title = dlms::apdu::hex(&head.system_title);
    if head.tag == 0xDC {
        return refuse(
            Refused::DedCiphering,
            format!("general-ded-ciphering (0xDC, system title {title}): its dedicated key belongs to an association, not a push"),
        );
    }
    let Some(meter_id) = store.meter_of_system_title(&head.system_title) else {
        return refuse(
            Refused::UnknownSystemTitle,
            format!("DLMS system title {title} is no meter's"),
        );
    };
    // Over this listener the push is its own identity: only a meter with keys can be told
    // from a forgery.
    let identity = store.get(meter_id).and_then(|c| c.dlms.as_ref());
    let Some((keys, key_check)) = identity.and_then(|d| Some((d.keys()?, d.key_check()))) else {
        return refuse(
            Refused::NoKey,
            format!("meter {meter_id} (system title {title}) has no DLMS key"),
        );
    };
    let needed = if keys.ak.is_some() { 0x10 } else { 0x20 };
    let unprotected = |control: u8| {
        refuse(
            Refused::Unprotected,
            format!("meter {meter_id}'s pushes must carry security control 0x{needed:02X}; this one has 0x{control:02X}"),
        )
    };
    // The protection claimed, before anything is deciphered.
    if let Some(control) = head.control.filter(|c| c & needed == 0) {
        return unprotected(control);
    }
    let lookup = |_: &[u8; 8]| dlms::KeyLookup::Keys(keys.clone());
    match dlms::apdu::open(apdu, WRAPPER_HEADER, &lookup) {
        Ok(opened) => {
            let control = opened.security.map_or(0, |s| s.control);
            if control & needed == 0 {
                return unprotected(control);
            }
            Verdict::Take {
                meter_id: meter_id.to_string(),
                // Only an authenticated push's counter is the meter's: an "encrypted only"
                // one's is anyone's to claim, and remembering it would let anyone lock the
                // meter out.
                counted: opened
                    .security
                    .filter(|s| s.control & 0x10 != 0)
                    .map(|s| Counted {
                        system_title: s.system_title,
                        key: key_check,
                        counter: s.invocation_counter,
                    }),
            }
        }
        Err(e) => refuse(Refused::AuthFailed, format!("meter {meter_id}: {e}")),
    }
}

/// The meter id of a plaintext push from `peer`: `prefix`, then the address with `.` and `:`
/// made `-` (an IPv4-mapped IPv6 address as the IPv4 one).
pub fn plaintext_meter(prefix: &str, peer: IpAddr) -> String {
    let address = peer.to_canonical().to_string().replace(['.', ':'], "-");
    format!("{prefix}{address}")
}
