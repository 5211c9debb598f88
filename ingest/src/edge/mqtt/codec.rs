//! Framing on top of rumqttd's protocol codec (`rumqttd::protocol::{v4::V4, v5::V5}`): which
//! protocol a CONNECT speaks, which packets a client may send at all, and the publish fields
//! (QoS, packet id, DUP) that rumqttd's `Publish` keeps private, read from the frame's own
//! bytes before the codec consumes it.
//!
//! Everything here takes bytes from the network: it never panics. rumqttd's `read_mut` has
//! `unreachable!()` arms for packet types a server never receives (V5 has no CONNACK or UNSUBACK
//! arm), so those types are refused here first; as a last guard a panic inside the codec is
//! caught and reported as a malformed packet.

use bytes::BytesMut;
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{Error as CodecError, Packet, Protocol};

/// The MQTT version of a connection, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// A packet from a client, with what the codec does not expose. Its `Debug` names the packet
/// only: a CONNECT carries a password.
pub struct Inbound {
    pub packet: Packet,
    /// For a PUBLISH: its QoS (0, 1, 2), packet id (0 for QoS 0) and DUP flag.
    pub qos: u8,
    pub pkid: u16,
    pub dup: bool,
    /// Bytes the packet took on the wire.
    pub wire_len: usize,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.packet {
            Packet::Connect(..) => "CONNECT",
            Packet::Publish(..) => "PUBLISH",
            Packet::PubRel(..) => "PUBREL",
            Packet::Subscribe(..) => "SUBSCRIBE",
            Packet::Unsubscribe(..) => "UNSUBSCRIBE",
            Packet::PingReq(..) => "PINGREQ",
            Packet::Disconnect(..) => "DISCONNECT",
            _ => "other",
        };
        f.debug_struct("Inbound")
            .field("packet", &kind)
            .field("qos", &self.qos)
            .field("pkid", &self.pkid)
            .field("wire_len", &self.wire_len)
            .finish()
    }
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Larger than the limit: (announced remaining length).
    TooLarge(usize),
    /// A packet type a client never sends to a server (CONNACK, SUBACK, PUBACK...), or AUTH.
    UnexpectedType(u8),
    /// The bytes do not form a valid packet.
    Malformed(String),
}

const PUBLISH: u8 = 3;

/// Packets on which rumqttd's codec panicked (caught): should stay 0; the tests check it.
pub static CODEC_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Which protocol a CONNECT frame at the start of `buf` asks for: `Ok(None)` while its header
/// is incomplete, `Err(level)` for a protocol this server does not speak (3.1 is level 3).
pub fn connect_version(buf: &[u8]) -> Result<Option<Version>, Option<u8>> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] >> 4 != 1 {
        return Err(None); // the first packet must be a CONNECT
    }
    // Skip the remaining-length varint (1 to 4 bytes).
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(None);
        }
    }
    let Some(name_len) = buf.get(at..at + 2) else {
        return Ok(None);
    };
    let name_len = u16::from_be_bytes([name_len[0], name_len[1]]) as usize;
    let Some(level) = buf.get(at + 2 + name_len) else {
        return Ok(None);
    };
    match (&buf[at + 2..at + 2 + name_len], level) {
        (b"MQTT", 4) => Ok(Some(Version::V4)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        (_, level) => Err(Some(*level)),
    }
}

/// Reads the next whole packet from `buf`; `Ok(None)` until one is complete.
pub fn read(
    version: Version,
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<Inbound>, FrameError> {
    let header = match v4::check(buf.iter(), max_packet) {
        Ok(h) => h,
        Err(CodecError::InsufficientBytes(_)) => return Ok(None),
        Err(CodecError::PayloadSizeLimitExceeded(n)) => return Err(FrameError::TooLarge(n)),
        Err(e) => return Err(FrameError::Malformed(e.to_string())),
    };
    let kind = header.byte1 >> 4;
    // Client to server: CONNECT 1, PUBLISH 3, PUBREL 6, SUBSCRIBE 8, UNSUBSCRIBE 10,
    // PINGREQ 12, DISCONNECT 14. This server never sends a QoS > 0 PUBLISH, so a PUBACK,
    // PUBREC or PUBCOMP from a client is as wrong as a CONNACK.
    if !matches!(kind, 1 | 3 | 6 | 8 | 10 | 12 | 14) {
        return Err(FrameError::UnexpectedType(kind));
    }
    let wire_len = header.frame_length();
    let (mut qos, mut pkid, mut dup) = (0, 0, false);
    if kind == PUBLISH {
        qos = (header.byte1 >> 1) & 0b11;
        dup = header.byte1 & 0b1000 != 0;
        if qos > 0 {
            let at = header.fixed_header_len;
            let topic_len = buf
                .get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize);
            let id_at = topic_len.map(|l| at + 2 + l);
            pkid = match id_at
                .and_then(|i| buf.get(i..i + 2))
                .filter(|_| id_at < Some(wire_len))
            {
                Some(b) => u16::from_be_bytes([b[0], b[1]]),
                None => return Err(FrameError::Malformed("PUBLISH without a packet id".into())),
            };
        }
    }
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match version {
        Version::V4 => V4.read_mut(buf, max_packet),
        Version::V5 => V5.read_mut(buf, max_packet),
    }));
    match parsed {
        Ok(Ok(packet)) => Ok(Some(Inbound {
            packet,
            qos,
            pkid,
            dup,
            wire_len,
        })),
        Ok(Err(e)) => Err(FrameError::Malformed(e.to_string())),
        Err(_) => {
            CODEC_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("meterflow_mqtt_codec_panics_total").increment(1);
            Err(FrameError::Malformed(
                "the codec failed on this packet".into(),
            ))
        }
    }
}

/// Encodes `packet` for `version` into `out`. Only the server's own packets come here; an
/// encoding error (a field too long for MQTT) is reported, never a panic.
pub fn write(version: Version, packet: Packet, out: &mut BytesMut) -> Result<(), String> {
    let before = out.len();
    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match version {
        Version::V4 => V4.write(packet, out),
        Version::V5 => V5.write(packet, out),
    }));
    let error = match written {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the codec cannot encode this packet".to_string(),
    };
    out.truncate(before);
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_connect(level: u8) -> Vec<u8> {
        let mut p = vec![0x10, 12, 0, 4];
        p.extend_from_slice(b"MQTT");
        p.extend_from_slice(&[level, 0x02, 0, 60, 0, 0]);
        p
    }

    #[test]
    fn the_connect_names_the_version() {
        assert_eq!(connect_version(&v4_connect(4)), Ok(Some(Version::V4)));
        assert_eq!(connect_version(&v4_connect(5)), Ok(Some(Version::V5)));
        assert_eq!(connect_version(&v4_connect(3)), Err(Some(3)));
        assert_eq!(connect_version(&v4_connect(4)[..5]), Ok(None));
        assert_eq!(connect_version(&[0x30, 0]), Err(None), "PUBLISH first");
        assert_eq!(
            connect_version(&[0x10, 0xff, 0xff, 0xff, 0xff, 1]),
            Err(None)
        );
    }

    #[test]
    fn publish_fields_come_from_the_frame() {
        // QoS 1, DUP, topic "a/b", packet id 0x1234, payload "x".
        let mut buf = BytesMut::from(&[0x3a, 8, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'x'][..]);
        let got = read(Version::V4, &mut buf, 1024).unwrap().unwrap();
        assert_eq!(
            (got.qos, got.pkid, got.dup, got.wire_len),
            (1, 0x1234, true, 10)
        );
        let Packet::Publish(p, None) = got.packet else {
            panic!("{:?}", got.packet)
        };
        assert_eq!((&p.topic[..], &p.payload[..]), (&b"a/b"[..], &b"x"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_oversized_and_server_only_packets() {
        let mut half = BytesMut::from(&[0x30, 8, 0, 3][..]);
        assert!(read(Version::V4, &mut half, 1024).unwrap().is_none());
        assert_eq!(half.len(), 4, "nothing consumed");
        let mut big = BytesMut::from(&[0x30, 0x80, 0x08][..]);
        assert_eq!(
            read(Version::V4, &mut big, 512).unwrap_err(),
            FrameError::TooLarge(1024)
        );
        // A CONNACK with a body sent to a V5 server hits an unreachable!() in rumqttd.
        for kind in [2u8, 4, 5, 7, 9, 11, 13, 15] {
            let mut b = BytesMut::from(&[kind << 4, 2, 0, 0][..]);
            assert_eq!(
                read(Version::V5, &mut b, 1024).unwrap_err(),
                FrameError::UnexpectedType(kind)
            );
        }
        // QoS 1 without room for the packet id.
        let mut short = BytesMut::from(&[0x32, 3, 0, 1, b'a'][..]);
        assert!(matches!(
            read(Version::V4, &mut short, 1024),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(
                &(
                    proptest::collection::vec(any::<u8>(), 0..300),
                    any::<bool>(),
                ),
                |(bytes, v5)| {
                    let version = if v5 { Version::V5 } else { Version::V4 };
                    let _ = connect_version(&bytes);
                    let mut buf = BytesMut::from(&bytes[..]);
                    while let Ok(Some(_)) = read(version, &mut buf, 256) {}
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(
            CODEC_PANICS.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "rumqttd's codec panicked on some input (caught)"
        );
    }
}
