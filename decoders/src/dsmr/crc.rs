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

/// Slicing-by-8 tables: `TABLES[k][b]` is the CRC of byte `b` followed by `k` zero bytes.
const fn make_tables() -> [[u16; 256]; 8] {
    let mut tables = [[0u16; 256]; 8];
    tables[0] = make_table();
    let mut i = 0;
    while i < 256 {
        let mut k = 1;
        while k < 8 {
            let prev = tables[k - 1][i];
            tables[k][i] = (prev >> 8) ^ tables[0][(prev & 0xFF) as usize];
            k += 1;
        }
        i += 1;
    }
    tables
}

static TABLES: [[u16; 256]; 8] = make_tables();

#[inline]
fn step(crc: u16, byte: u8) -> u16 {
    (crc >> 8) ^ TABLES[0][usize::from((crc as u8) ^ byte)]
}

/// CRC-16/ARC of `bytes`, eight bytes a step.
pub fn crc16_arc(bytes: &[u8]) -> u16 {
    let [t0, t1, t2, t3, t4, t5, t6, t7] = &TABLES;
    let mut crc = 0u16;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let &[b0, b1, b2, b3, b4, b5, b6, b7] = chunk else {
            continue;
        };
        let [lo, hi] = crc.to_le_bytes();
        crc = t7[usize::from(b0 ^ lo)]
            ^ t6[usize::from(b1 ^ hi)]
            ^ t5[usize::from(b2)]
            ^ t4[usize::from(b3)]
            ^ t3[usize::from(b4)]
            ^ t2[usize::from(b5)]
            ^ t1[usize::from(b6)]
            ^ t0[usize::from(b7)];
    }
    chunks.remainder().iter().fold(crc, |crc, &b| step(crc, b))
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
    fn sliced_equals_bytewise() {
        let mut data = Vec::new();
        let mut x: u32 = 12345;
        for len in 0..200 {
            let bytewise = data.iter().fold(0, |crc, &b| step(crc, b));
            assert_eq!(crc16_arc(&data), bytewise, "length {len}");
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            data.push((x >> 16) as u8);
        }
    }

    #[test]
    fn crlf_form_equals_crc_of_expanded_bytes() {
        assert_eq!(crc16_arc_crlf(b"/a\nb\r\n!"), crc16_arc(b"/a\r\nb\r\n!"));
        assert_eq!(crc16_arc_crlf(b"/a\r\n!"), crc16_arc(b"/a\r\n!"));
    }
}
