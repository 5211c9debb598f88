//! Numeric values (`-003.618*kW`) and their units.

use std::borrow::Cow;

/// Exact powers of ten as f64 (10^0 ..= 10^22 are exactly representable).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Parses a decimal `[+-]digits[.digits]`; `None` for anything else (no exponents, no comma,
/// at least one digit before and, where there is a point, after it).
///
/// The fast path is exact: a mantissa below 2^53 divided by an exact power of ten is one
/// correctly rounded IEEE operation, the same value `str::parse::<f64>` gives.
pub(crate) fn parse_decimal(b: &[u8]) -> Option<f64> {
    let (negative, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, b),
    };
    let mut mantissa: u64 = 0;
    let mut count = 0usize;
    let mut int_digits = 0usize;
    let mut frac_digits = 0usize;
    let mut seen_point = false;
    for &c in digits {
        match c {
            b'0'..=b'9' => {
                if count < 19 {
                    mantissa = mantissa * 10 + u64::from(c - b'0');
                }
                // Leading zeros do not use up precision.
                if mantissa != 0 || c != b'0' {
                    count += 1;
                }
                if seen_point {
                    frac_digits += 1;
                } else {
                    int_digits += 1;
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => return None,
        }
    }
    if int_digits == 0 || (seen_point && frac_digits == 0) {
        return None;
    }
    let value = if count <= 19 && mantissa < (1u64 << 53) && frac_digits < POW10.len() {
        let scale = POW10.get(frac_digits).copied().unwrap_or(1.0);
        mantissa as f64 / scale
    } else {
        std::str::from_utf8(digits).ok()?.parse::<f64>().ok()?
    };
    Some(if negative { -value } else { value })
}

/// The unit as the meter wrote it, with case variants of the usual units folded to one
/// spelling (`kwh`, `KWH` -> `kWh`; `kVArh` -> `kvarh`; `M3` -> `m3`). Units whose lower case
/// is ambiguous (`mwh`: milli or mega?) and unknown units are kept as written; bytes that are
/// not UTF-8 are read as Latin-1.
pub(crate) fn normalise_unit(unit: &[u8]) -> Cow<'_, str> {
    if let Some(known) = canonical_unit(unit) {
        return Cow::Borrowed(known);
    }
    match std::str::from_utf8(unit) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(unit.iter().map(|&b| char::from(b)).collect()),
    }
}

fn canonical_unit(unit: &[u8]) -> Option<&'static str> {
    // Exact spellings first: the common case, no folding.
    let exact = match unit {
        b"" => "",
        b"kWh" => "kWh",
        b"kW" => "kW",
        b"V" => "V",
        b"A" => "A",
        b"m3" => "m3",
        b"Wh" => "Wh",
        b"W" => "W",
        b"MWh" => "MWh",
        b"MW" => "MW",
        b"Mvarh" => "Mvarh",
        b"Mvar" => "Mvar",
        b"MVAh" => "MVAh",
        b"MVA" => "MVA",
        b"MJ" => "MJ",
        _ => "\u{0}",
    };
    if exact != "\u{0}" {
        return Some(exact);
    }
    let mut lower = [0u8; 8];
    let folded = lower.get_mut(..unit.len())?;
    for (dst, src) in folded.iter_mut().zip(unit) {
        *dst = src.to_ascii_lowercase();
    }
    Some(match &*folded {
        b"kwh" => "kWh",
        b"kw" => "kW",
        b"wh" => "Wh",
        b"w" => "W",
        b"v" => "V",
        b"kv" => "kV",
        b"a" => "A",
        b"m3" => "m3",
        b"dm3" => "dm3",
        b"l" => "l",
        b"gj" => "GJ",
        b"kj" => "kJ",
        b"kvarh" => "kvarh",
        b"kvar" => "kvar",
        b"varh" => "varh",
        b"var" => "var",
        b"kvah" => "kVAh",
        b"kva" => "kVA",
        b"vah" => "VAh",
        b"va" => "VA",
        b"hz" => "Hz",
        b"s" => "s",
        b"min" => "min",
        b"h" => "h",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        for s in [
            "0",
            "000123.321",
            "1581.123",
            "-03.618",
            "+1",
            "12345.678",
            "0.000",
            "00032549.5061662",
            "99999999999999999999.5",
            "2147483647",
            "0.1",
            "123456.789",
        ] {
            let expected: f64 = s.parse().unwrap_or(f64::NAN);
            assert_eq!(parse_decimal(s.as_bytes()), Some(expected), "{s}");
        }
    }

    #[test]
    fn non_decimals_are_refused() {
        for s in [
            "", "-", ".5", "5.", "1.2.3", "00.A23", "A0.123", "1e5", "1,5", " 1", "0x10", "--1",
        ] {
            assert_eq!(parse_decimal(s.as_bytes()), None, "{s}");
        }
    }

    #[test]
    fn units_fold_to_one_spelling() {
        assert_eq!(normalise_unit(b"kwh"), "kWh");
        assert_eq!(normalise_unit(b"KWH"), "kWh");
        assert_eq!(normalise_unit(b"kVArh"), "kvarh");
        assert_eq!(normalise_unit(b"kVAr"), "kvar");
        assert_eq!(normalise_unit(b"M3"), "m3");
        assert_eq!(normalise_unit(b"MWh"), "MWh");
        assert_eq!(normalise_unit(b"mwh"), "mwh");
        assert_eq!(normalise_unit(b"furlongs"), "furlongs");
        assert_eq!(normalise_unit(b"\xb0C"), "\u{b0}C");
    }
}
