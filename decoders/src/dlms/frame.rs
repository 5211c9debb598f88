//! The link layers a DLMS push arrives in, detected from its first bytes, and the APDU they
//! carry (segments joined):
//!
//! - HDLC (IEC 62056-46; `7E A…`): frames between `7E` flags, each with its frame format and
//!   length, addresses, control, HCS and FCS (CRC-16/X.25, both checked); the segmentation
//!   bit joins the information fields of consecutive frames; the LLC header `E6 E7 00` of the
//!   first is dropped;
//! - M-Bus long frames (EN 13757-2; `68 L L 68`): checksum checked, CI `0x00..=0x1F` are DLMS
//!   segments (low nibble the segment number, bit 0x10 the last), after STSAP and DTSAP;
//! - the IEC 62056-4-7 wrapper (`00 01`: version, source and destination wPort, length) of
//!   TCP and UDP port 4059;
//! - else the bytes are the APDU itself.

use super::{malformed, unsupported};
use crate::DecodeError;

/// How the APDU came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Raw,
    Hdlc,
    MBus,
    Wrapper,
}

impl Framing {
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Raw => "raw",
            Framing::Hdlc => "hdlc",
            Framing::MBus => "mbus",
            Framing::Wrapper => "wrapper",
        }
    }
}

/// The APDU of a payload, with where it came from. `base` is the offset in the payload of
/// the APDU's first byte when it is one run of the payload (errors name offsets in it), else
/// of the first segment's data.
#[derive(Debug, Clone, PartialEq)]
pub struct Unframed {
    pub framing: Framing,
    pub apdu: Vec<u8>,
    pub base: usize,
}

/// The framing of `payload`, from its first bytes.
pub fn detect(payload: &[u8]) -> Framing {
    match payload {
        [0x7E, format, ..] if format & 0xF0 == 0xA0 => Framing::Hdlc,
        [0x68, l1, l2, 0x68, ..] if l1 == l2 => Framing::MBus,
        [0x00, 0x01, ..] => Framing::Wrapper,
        _ => Framing::Raw,
    }
}

/// The APDU of `payload`.
pub fn unframe(payload: &[u8]) -> Result<Unframed, DecodeError> {
    let framing = detect(payload);
    let (apdu, base) = match framing {
        Framing::Raw => (payload.to_vec(), 0),
        Framing::Hdlc => hdlc(payload)?,
        Framing::MBus => mbus(payload)?,
        Framing::Wrapper => wrapper(payload)?,
    };
    if apdu.is_empty() {
        return Err(malformed(
            base,
            format!("the {} frames carry no APDU", framing.as_str()),
        ));
    }
    Ok(Unframed {
        framing,
        apdu,
        base,
    })
}

/// CRC-16/X.25 (HDLC's HCS and FCS): reflected polynomial 0x8408, initial and final 0xFFFF.
pub fn crc16_x25(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x8408
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The LLC header of a response or push in its first HDLC segment (`E6 E7 00`; some meters
/// send the request's `E6 E6 00`).
const LLC: [u8; 3] = [0xE6, 0xE7, 0x00];
const LLC_REQUEST: [u8; 3] = [0xE6, 0xE6, 0x00];

fn hdlc(payload: &[u8]) -> Result<(Vec<u8>, usize), DecodeError> {
    let mut apdu = Vec::new();
    let mut base = None;
    let mut at = 0;
    // Whether the frame before said that more segments follow.
    let mut continuing = false;
    // Whether a push's last segment was read (one push per payload).
    let mut ended = false;
    loop {
        // Flags: one between two frames (closing one, opening the next), or two.
        while payload.get(at) == Some(&0x7E) && payload.get(at + 1) == Some(&0x7E) {
            at += 1;
        }
        if at + 1 >= payload.len() {
            break;
        }
        if payload[at] != 0x7E {
            return Err(malformed(at, "an HDLC frame starts with 7E"));
        }
        let start = at + 1;
        let (Some(&f0), Some(&f1)) = (payload.get(start), payload.get(start + 1)) else {
            return Err(malformed(
                start,
                "an HDLC frame cut short before its length",
            ));
        };
        if f0 & 0xF0 != 0xA0 {
            return Err(malformed(
                start,
                format!("HDLC frame format 0x{f0:02X} is not type 3"),
            ));
        }
        let segmented = f0 & 0x08 != 0;
        let len = usize::from(u16::from_be_bytes([f0 & 0x07, f1]));
        let end = start + len; // the closing flag
        if len < 7 || payload.len() <= end {
            return Err(malformed(
                start,
                format!(
                    "an HDLC frame of {len} bytes, {} left",
                    payload.len() - start
                ),
            ));
        }
        if payload[end] != 0x7E {
            return Err(malformed(
                end,
                "an HDLC frame does not end with 7E where its length says",
            ));
        }
        let frame = &payload[start..end];
        // Addresses: each byte carries 7 bits; the low bit 1 ends one.
        let mut p = 2;
        for which in ["destination", "source"] {
            let mut n = 0;
            loop {
                let b = *frame.get(p).ok_or_else(|| {
                    malformed(start + p, format!("the HDLC {which} address ends"))
                })?;
                p += 1;
                n += 1;
                if b & 1 == 1 {
                    break;
                }
                if n == 4 {
                    return Err(malformed(
                        start + p,
                        format!("an HDLC {which} address over 4 bytes"),
                    ));
                }
            }
        }
        let control = *frame.get(p).ok_or_else(|| {
            malformed(
                start + p,
                "an HDLC frame cut short before its control field",
            )
        })?;
        p += 1;
        if p + 2 > frame.len() {
            return Err(malformed(
                start + p,
                "an HDLC frame cut short in its header",
            ));
        }
        let fcs_at = frame.len() - 2;
        let fcs = u16::from_le_bytes([frame[fcs_at], frame[fcs_at + 1]]);
        let computed = crc16_x25(&frame[..fcs_at]);
        if fcs != computed {
            return Err(malformed(
                start + fcs_at,
                format!("HDLC FCS {fcs:04X}, computed {computed:04X}"),
            ));
        }
        if p < fcs_at && p + 2 > fcs_at {
            return Err(malformed(
                start + p,
                "an HDLC header check sequence cut short",
            ));
        }
        if p + 2 <= fcs_at {
            // Only I-frames (bit 0 clear) and UI frames (03, 13) carry a push; the information
            // of any other (SNRM's or UA's link parameters, FRMR) is not an APDU.
            if control & 0x01 != 0 && control & 0xEF != 0x03 {
                return Err(unsupported(
                    start + p - 1,
                    format!("an HDLC frame with control 0x{control:02X} carries no push (only I and UI frames do)"),
                ));
            }
            // An information field: after the HCS over the header.
            let hcs = u16::from_le_bytes([frame[p], frame[p + 1]]);
            let computed = crc16_x25(&frame[..p]);
            if hcs != computed {
                return Err(malformed(
                    start + p,
                    format!("HDLC HCS {hcs:04X}, computed {computed:04X}"),
                ));
            }
            let mut info_at = p + 2;
            // The first segment of an APDU starts with the LLC header.
            if !continuing
                && matches!(frame.get(info_at..info_at + 3), Some(llc) if llc == LLC || llc == LLC_REQUEST)
            {
                info_at += 3;
            }
            // After a whole APDU, a frame may carry the next block of a general-block-transfer
            // (Landis+Gyr sends each block in a frame of its own), but not another push.
            if ended && frame.get(info_at) != Some(&0xE0) {
                return Err(malformed(
                    start,
                    "an HDLC frame after the last segment of a push: one push per message",
                ));
            }
            base.get_or_insert(start + info_at);
            apdu.extend_from_slice(&frame[info_at..fcs_at]);
            ended = !segmented;
        }
        continuing = segmented;
        at = end;
    }
    if continuing {
        return Err(malformed(
            payload.len(),
            "the last HDLC frame says more segments follow",
        ));
    }
    Ok((apdu, base.unwrap_or(0)))
}

fn mbus(payload: &[u8]) -> Result<(Vec<u8>, usize), DecodeError> {
    let mut apdu = Vec::new();
    let mut base = None;
    let mut at = 0;
    let mut expected_segment = 0u8;
    loop {
        let header = payload
            .get(at..at + 4)
            .ok_or_else(|| malformed(at, "an M-Bus frame cut short in its header"))?;
        if header[0] != 0x68 || header[3] != 0x68 || header[1] != header[2] {
            return Err(malformed(at, "an M-Bus long frame starts with 68 L L 68"));
        }
        let len = usize::from(header[1]);
        let body_at = at + 4;
        let body = payload
            .get(body_at..body_at + len)
            .ok_or_else(|| malformed(at, format!("an M-Bus frame of {len} bytes cut short")))?;
        let (Some(&cs), Some(&stop)) = (payload.get(body_at + len), payload.get(body_at + len + 1))
        else {
            return Err(malformed(
                body_at + len,
                "an M-Bus frame without its checksum and 16",
            ));
        };
        let sum = body.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        if cs != sum {
            return Err(malformed(
                body_at + len,
                format!("M-Bus checksum {cs:02X}, computed {sum:02X}"),
            ));
        }
        if stop != 0x16 {
            return Err(malformed(body_at + len + 1, "an M-Bus frame ends with 16"));
        }
        // C, A, CI, STSAP, DTSAP, then the segment.
        if len < 5 {
            return Err(malformed(
                body_at,
                "an M-Bus frame too short for a DLMS segment",
            ));
        }
        let ci = body[2];
        if ci > 0x1F {
            return Err(unsupported(
                body_at + 2,
                format!("M-Bus CI 0x{ci:02X} is no DLMS segment (0x00..=0x1F)"),
            ));
        }
        let number = ci & 0x0F;
        if number != expected_segment {
            return Err(malformed(
                body_at + 2,
                format!("M-Bus segment {number} where {expected_segment} was due"),
            ));
        }
        base.get_or_insert(body_at + 5);
        apdu.extend_from_slice(&body[5..]);
        at = body_at + len + 2;
        if ci & 0x10 != 0 {
            if at < payload.len() {
                return Err(malformed(
                    at,
                    format!(
                        "{} bytes after the last M-Bus segment: one push per message",
                        payload.len() - at
                    ),
                ));
            }
            break;
        }
        expected_segment = expected_segment.wrapping_add(1) & 0x0F;
        if at >= payload.len() {
            return Err(malformed(at, "the last M-Bus segment says more follow"));
        }
    }
    Ok((apdu, base.unwrap_or(0)))
}

/// The length of an IEC 62056-4-7 wrapper header.
pub const WRAPPER_HEADER: usize = 8;

/// The header of an IEC 62056-4-7 wrapper frame (TCP and UDP port 4059): version (1), the
/// source and destination wPorts, and the length of the APDU that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapperHeader {
    pub version: u16,
    pub source: u16,
    pub destination: u16,
    /// The APDU's bytes after the header.
    pub length: u16,
}

impl WrapperHeader {
    pub fn parse(header: &[u8; WRAPPER_HEADER]) -> WrapperHeader {
        let field = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
        WrapperHeader {
            version: field(0),
            source: field(2),
            destination: field(4),
            length: field(6),
        }
    }
}

fn wrapper(payload: &[u8]) -> Result<(Vec<u8>, usize), DecodeError> {
    let header = payload
        .first_chunk::<WRAPPER_HEADER>()
        .ok_or_else(|| malformed(0, "a wrapper header is 8 bytes"))?;
    let header = WrapperHeader::parse(header);
    if header.version != 1 {
        return Err(unsupported(
            0,
            format!("wrapper version {}", header.version),
        ));
    }
    let len = usize::from(header.length);
    let apdu = payload
        .get(WRAPPER_HEADER..WRAPPER_HEADER + len)
        .ok_or_else(|| {
            malformed(
                6,
                format!(
                    "the wrapper states {len} bytes, {} follow",
                    payload.len() - WRAPPER_HEADER
                ),
            )
        })?;
    if payload.len() > WRAPPER_HEADER + len {
        return Err(malformed(
            WRAPPER_HEADER + len,
            "bytes after the wrapper's APDU",
        ));
    }
    Ok((apdu.to_vec(), WRAPPER_HEADER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_x25() {
        // The check value of CRC-16/X.25.
        assert_eq!(crc16_x25(b"123456789"), 0x906E);
    }

    fn hdlc_frame(info: &[u8], segmented: bool) -> Vec<u8> {
        hdlc_frame_with(0x13, info, segmented)
    }

    fn hdlc_frame_with(control: u8, info: &[u8], segmented: bool) -> Vec<u8> {
        let header_len = 2 + 1 + 1 + 1 + 2; // format, dst, src, control, HCS
        let len = header_len + info.len() + 2;
        let mut f = vec![
            0xA0 | if segmented { 0x08 } else { 0 } | ((len >> 8) as u8 & 7),
            len as u8,
        ];
        f.extend_from_slice(&[0xFF, 0x03, control]);
        let hcs = crc16_x25(&f);
        f.extend_from_slice(&hcs.to_le_bytes());
        f.extend_from_slice(info);
        let fcs = crc16_x25(&f);
        f.extend_from_slice(&fcs.to_le_bytes());
        let mut out = vec![0x7E];
        out.extend(f);
        out.push(0x7E);
        out
    }

    #[test]
    fn hdlc_segments_join_and_checksums_are_checked() {
        let mut payload = hdlc_frame(&[0xE6, 0xE7, 0x00, 1, 2, 3], true);
        payload.extend(hdlc_frame(&[4, 5], false));
        let u = unframe(&payload).unwrap();
        assert_eq!(
            (u.framing, u.apdu.as_slice()),
            (Framing::Hdlc, &[1, 2, 3, 4, 5][..])
        );
        // One flag shared between the frames.
        let mut shared = hdlc_frame(&[0xE6, 0xE7, 0x00, 1, 2, 3], true);
        shared.pop();
        shared.extend(hdlc_frame(&[4, 5], false));
        assert_eq!(unframe(&shared).unwrap().apdu, [1, 2, 3, 4, 5]);
        // A flipped byte: the FCS says so.
        let mut bad = hdlc_frame(&[0xE6, 0xE7, 0x00, 1, 2, 3], false);
        bad[10] ^= 1;
        assert!(unframe(&bad).unwrap_err().to_string().contains("FCS"));
        // Segmented, and nothing after.
        assert!(unframe(&hdlc_frame(&[1], true)).is_err());
    }

    #[test]
    fn only_i_and_ui_frames_carry_one_push() {
        // An I-frame (control 0x10) with the request's LLC E6 E6 00: the LLC goes.
        let i_frame = hdlc_frame_with(0x10, &[0xE6, 0xE6, 0x00, 7, 8], false);
        assert_eq!(unframe(&i_frame).unwrap().apdu, [7, 8]);
        // A UA (0x73) carries link parameters, not a push.
        let ua = hdlc_frame_with(0x73, &[0x81, 0x80, 0x12, 0x05, 0x01], false);
        let e = unframe(&ua).unwrap_err().to_string();
        assert!(e.contains("control 0x73 carries no push"), "{e}");
        // Two whole pushes in one message are not joined into one.
        let mut two = hdlc_frame(&[0xE6, 0xE7, 0x00, 1], false);
        two.extend(hdlc_frame(&[0xE6, 0xE7, 0x00, 2], false));
        let e = unframe(&two).unwrap_err().to_string();
        assert!(e.contains("one push per message"), "{e}");
    }

    #[test]
    fn mbus_segments_and_the_wrapper() {
        let seg = |ci: u8, data: &[u8]| {
            let mut body = vec![0x53, 0xFF, ci, 0x01, 0x67];
            body.extend_from_slice(data);
            let mut f = vec![0x68, body.len() as u8, body.len() as u8, 0x68];
            let cs = body.iter().fold(0u8, |s, b| s.wrapping_add(*b));
            f.extend(body);
            f.extend([cs, 0x16]);
            f
        };
        let mut two = seg(0x00, &[0xDB, 8]);
        two.extend(seg(0x11, &[1, 2]));
        let u = unframe(&two).unwrap();
        assert_eq!((u.framing, u.apdu), (Framing::MBus, vec![0xDB, 8, 1, 2]));
        let mut trailing = two.clone();
        trailing.extend([0x68, 0x00]);
        let e = unframe(&trailing).unwrap_err().to_string();
        assert!(e.contains("2 bytes after the last M-Bus segment"), "{e}");
        let mut wrong_order = seg(0x01, &[0xDB]);
        wrong_order.extend(seg(0x10, &[1]));
        assert!(unframe(&wrong_order).is_err());
        let wrapped = [0, 1, 0, 1, 0, 1, 0, 3, 0x0F, 1, 2];
        let u = unframe(&wrapped).unwrap();
        assert_eq!(
            (u.framing, u.apdu, u.base),
            (Framing::Wrapper, vec![0x0F, 1, 2], 8)
        );
        assert!(unframe(&[0, 1, 0, 1, 0, 1, 0, 9, 0x0F]).is_err());
        assert_eq!(unframe(&[0x0F, 1]).unwrap().framing, Framing::Raw);
    }
}
