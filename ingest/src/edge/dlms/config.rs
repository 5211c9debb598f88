//! The DLMS settings (`[dlms]`): the wrapper listener's, and what pushes are read with on
//! every way in (`timezone`, `[[dlms.profile]]`: [`crate::dlms_profiles`]); their defaults,
//! their checks, and what start-up says about plaintext pushes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::credentials::CredentialStore;
use crate::dlms_profiles::{ProfileConfig, PushProfiles};
use crate::error::{positive, IngestError};

/// The DLMS/COSEM settings (`[dlms]`): the wrapper listener, the clock zone, push profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlmsConfig {
    /// TCP and UDP listener (the same port for both; 4059 is usual) for IEC 62056-4-7 wrapper
    /// frames. Off unless set.
    pub listen: Option<SocketAddr>,
    /// Take pushes that carry no system title (not ciphered) from any address, stored for the
    /// meter `plaintext_meter_prefix` + the sender's IP address (warned at start-up). Without
    /// it they are taken only while the credential store is empty on a loopback listener.
    pub allow_plaintext: bool,
    /// The meter id of a plaintext push: this, then the sender's IP address with `.` and `:`
    /// made `-` (`ip-192-0-2-7`).
    pub plaintext_meter_prefix: String,
    /// TCP connections whose first push was taken (identified by its meter's keys), at most
    /// (at most 65536); the first push of one more resets it, not stored.
    pub max_connections: usize,
    /// TCP connections not identified yet (from accept to their first push taken), at most;
    /// with it full the oldest of the address holding the most (or one pending for half of
    /// `frame_timeout_s`) is reset for a newcomer, else the newcomer is reset at accept.
    pub max_pending_connections: usize,
    /// Connections not identified yet from one address (an IPv6 /64 counts as one), at most;
    /// one more is reset at accept.
    pub max_pending_per_address: usize,
    /// The largest APDU a frame may carry (its header's length field), bytes, 1 to 65535 (the
    /// field's maximum). 8192 by default: real pushes are well below 2 KB. A larger one
    /// resets its TCP connection (a UDP datagram is dropped).
    pub max_apdu_bytes: usize,
    /// Bytes of frames in flight at most, over every connection and datagram: from the header
    /// of a TCP frame (its whole length, before its body is read) or a datagram taken, until
    /// the WAL writer is done with it. A TCP frame that finds it full waits (its connection is
    /// not read meanwhile); a datagram is dropped (`busy`). At least 8 + `max_apdu_bytes`, at
    /// most 4294967295.
    pub max_inflight_bytes: usize,
    /// A TCP frame must arrive whole within this many seconds of its first byte (the first
    /// frame: of the accept), its wait for `max_inflight_bytes` included; else the connection
    /// is reset (`frame_timeout`). It keeps connection
    /// places from being held by connections that send nothing, or a frame a byte at a
    /// time. 1 to 3600.
    pub frame_timeout_s: u64,
    /// A TCP connection on which no frame begins for this long after the frame before is
    /// reset (closed in order if the meter ended its stream).
    pub idle_timeout_s: u64,
    /// The UDP socket's receive (and send) buffer, bytes: pushes that arrive together (the
    /// top of the hour) wait in it; beyond it the kernel drops them. 4 MiB; the kernel grants
    /// at most `net.core.rmem_max` (warned at start-up). 65536 to 268435456.
    pub udp_buffer_bytes: usize,
    /// The zone of meter clocks whose date-times carry no deviation (IANA name), on every way
    /// in; `None`: such a time is taken as UTC and flagged `CLOCK_INVALID`.
    pub timezone: Option<String>,
    /// Push profiles (`[[dlms.profile]]`): see [`crate::dlms_profiles`].
    #[serde(rename = "profile", skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<ProfileConfig>,
}

impl Default for DlmsConfig {
    fn default() -> Self {
        DlmsConfig {
            listen: None,
            allow_plaintext: false,
            plaintext_meter_prefix: "ip-".into(),
            max_connections: 1024,
            max_pending_connections: 1024,
            max_pending_per_address: 256,
            max_apdu_bytes: 8192,
            max_inflight_bytes: 16 * 1024 * 1024,
            frame_timeout_s: 30,
            idle_timeout_s: 600,
            udp_buffer_bytes: 4 * 1024 * 1024,
            timezone: None,
            profiles: Vec::new(),
        }
    }
}

/// The longest `dlms.plaintext_meter_prefix`: the prefix and the longest IPv6 address (39
/// characters) within a meter id's 64.
const MAX_PREFIX: usize = 64 - 39;

/// The longest `dlms.idle_timeout_s`: a day.
const MAX_IDLE_S: u64 = 86_400;

/// The longest `dlms.frame_timeout_s`: an hour.
const MAX_FRAME_S: u64 = 3600;

/// The most `dlms.max_connections`: it sizes the WAL writer's channel and counts in the
/// open-files check.
pub const MAX_CONNECTIONS: usize = 65_536;

impl DlmsConfig {
    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), IngestError> {
        positive("dlms.max_connections", self.max_connections as u64)?;
        if self.max_connections > MAX_CONNECTIONS {
            return Err(IngestError::config(
                "dlms.max_connections",
                format!("must be at most {MAX_CONNECTIONS}"),
            ));
        }
        positive(
            "dlms.max_pending_connections",
            self.max_pending_connections as u64,
        )?;
        if self.max_pending_connections > MAX_CONNECTIONS {
            return Err(IngestError::config(
                "dlms.max_pending_connections",
                format!("must be at most {MAX_CONNECTIONS}"),
            ));
        }
        positive(
            "dlms.max_pending_per_address",
            self.max_pending_per_address as u64,
        )?;
        if !(65_536..=268_435_456).contains(&self.udp_buffer_bytes) {
            return Err(IngestError::config(
                "dlms.udp_buffer_bytes",
                "must be 65536 to 268435456",
            ));
        }
        if self.max_pending_per_address > self.max_pending_connections {
            return Err(IngestError::config(
                "dlms.max_pending_per_address",
                "must be at most dlms.max_pending_connections",
            ));
        }
        if !(1..=usize::from(u16::MAX)).contains(&self.max_apdu_bytes) {
            return Err(IngestError::config(
                "dlms.max_apdu_bytes",
                "must be 1 to 65535 (the wrapper header's length field)",
            ));
        }
        // Every pending connection's frame, and one more: what no identity can take from the
        // meters that have one (review 22, round 3, M1).
        let pending_frames = self
            .max_pending_connections
            .saturating_add(1)
            .saturating_mul(8 + self.max_apdu_bytes);
        if self.max_inflight_bytes < pending_frames || self.max_inflight_bytes > u32::MAX as usize {
            return Err(IngestError::config(
                "dlms.max_inflight_bytes",
                format!(
                    "must be at least (dlms.max_pending_connections + 1) x (8 + dlms.max_apdu_bytes) = {pending_frames} (so that connections not identified yet cannot take it all) and at most 4294967295"
                ),
            ));
        }
        if !(1..=MAX_FRAME_S).contains(&self.frame_timeout_s) {
            return Err(IngestError::config(
                "dlms.frame_timeout_s",
                format!("must be 1 to {MAX_FRAME_S} (an hour)"),
            ));
        }
        positive("dlms.idle_timeout_s", self.idle_timeout_s)?;
        if self.idle_timeout_s > MAX_IDLE_S {
            return Err(IngestError::config(
                "dlms.idle_timeout_s",
                format!("must be at most {MAX_IDLE_S} (a day)"),
            ));
        }
        self.push_profiles()?;
        let prefix = &self.plaintext_meter_prefix;
        if prefix.len() > MAX_PREFIX
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(IngestError::config(
                "dlms.plaintext_meter_prefix",
                format!("must be at most {MAX_PREFIX} characters of [A-Za-z0-9._-]"),
            ));
        }
        Ok(())
    }
}

impl DlmsConfig {
    /// The push profiles and zones, checked.
    pub fn push_profiles(&self) -> Result<PushProfiles, IngestError> {
        PushProfiles::new(&self.profiles, self.timezone.as_deref())
    }
}

/// What start-up says about pushes without a system title: warned where they are taken from
/// anyone, and where nothing will be taken until the store has meters with system titles.
pub fn check_plaintext_rule(config: &DlmsConfig, store_empty: bool) {
    let Some(addr) = config.listen else {
        return;
    };
    if config.allow_plaintext {
        tracing::warn!(
            %addr,
            prefix = %config.plaintext_meter_prefix,
            "dlms.allow_plaintext = true: DLMS pushes without a system title (not ciphered) are stored from anyone who reaches the listener, for the meter named by the prefix and the sender's address"
        );
    } else if store_empty && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "dlms.listen: the credential store is empty, so every push is refused until meters with a dlms_system_title are added (`meterflow credentials add ID --dlms-system-title HEX --dlms-ek HEX`)"
        );
    }
}

/// What start-up says about meters with an encryption key alone (review 22, M4): their pushes
/// (security control 0x20) carry no tag, and over the listener the push is its own identity,
/// so one on the path between meter and listener can alter one undetected (AES-CTR bits flip
/// through) and deliver it first (the original is then a `replay`). Warned once, with the
/// count, where the listener is on.
pub fn check_keys(config: &DlmsConfig, store: &CredentialStore) {
    let Some(addr) = config.listen else {
        return;
    };
    let meters = store.dlms_meters_without_ak();
    if meters > 0 {
        tracing::warn!(
            %addr,
            meters,
            "dlms.listen: {meters} meter(s) with DLMS keys have no authentication key (dlms_ak): their pushes carry no tag, so one altered on the way to the listener cannot be told from the original; give them their dlms_ak where the meters authenticate their pushes (security control 0x30 or 0x10)"
        );
    }
}
