//! CRC-16/ARC as DSMR 4+ uses it: polynomial 0x8005 reflected (0xA001), init 0, no final xor,
//! over every byte from `/` through `!` inclusive.

const fn make_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static TABLE: [u16; 256] = make_table();

#[inline]
fn step(crc: u16, byte: u8) -> u16 {
    (crc >> 8) ^ TABLE[usize::from((crc as u8) ^ byte)]
}

/// CRC-16/ARC of `bytes`.
pub(crate) fn crc16_arc(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0, |crc, &b| step(crc, b))
}

/// CRC-16/ARC of `bytes` as if every bare LF (one not preceded by CR) were CRLF: the telegram
/// as the meter sent it, before a gateway stripped the CRs.
pub(crate) fn crc16_arc_crlf(bytes: &[u8]) -> u16 {
    let mut crc = 0;
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            crc = step(crc, b'\r');
        }
        crc = step(crc, b);
        prev = b;
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_of_crc16_arc() {
        // The catalogue check value of CRC-16/ARC.
        assert_eq!(crc16_arc(b"123456789"), 0xBB3D);
        assert_eq!(crc16_arc(b""), 0);
    }

    #[test]
    fn crlf_form_equals_crc_of_expanded_bytes() {
        assert_eq!(crc16_arc_crlf(b"/a\nb\r\n!"), crc16_arc(b"/a\r\nb\r\n!"));
        assert_eq!(crc16_arc_crlf(b"/a\r\n!"), crc16_arc(b"/a\r\n!"));
    }
}
