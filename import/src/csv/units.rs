//! Values and units: decimal numbers (a decimal comma with `;` as the delimiter), the
//! `scale` setting, and unit conversion by SI prefix within a quantity (`to_unit`).

use super::shown;
use crate::ImportError;

/// A value: trimmed, `.` decimal (or one `,` with `decimal_comma` and no `.`), finite.
pub(super) fn parse_value(text: &str, decimal_comma: bool) -> Option<f64> {
    let v = if decimal_comma && !text.contains('.') && text.contains(',') {
        text.replacen(',', ".", 1).parse::<f64>()
    } else {
        text.parse::<f64>()
    };
    v.ok().filter(|v| v.is_finite())
}

const KNOWN_UNITS: &str = "Wh, W, varh, var, VAh, VA with prefix k, M or G; m3 (m³), L";

/// A unit as (quantity, power of ten of its base unit), e.g. `kWh` = ("Wh", 3), `L` = ("m3", -3).
fn parse_unit(unit: &str) -> Option<(&'static str, i32)> {
    match unit {
        "m3" | "m³" => return Some(("m3", 0)),
        "L" | "l" => return Some(("m3", -3)),
        _ => {}
    }
    // The whole unit is an optional prefix and a base.
    for base in ["varh", "VAh", "var", "Wh", "VA", "W"] {
        let exponent = match unit.strip_suffix(base) {
            Some("") => 0,
            Some("k") => 3,
            Some("M") => 6,
            Some("G") => 9,
            _ => continue,
        };
        return Some((base, exponent));
    }
    None
}

/// A unit conversion: multiply or divide by an exact power of ten.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Conversion {
    Multiply(f64),
    Divide(f64),
}

impl Conversion {
    /// One correctly rounded operation with an exact operand: the double nearest to
    /// `value × 10^k` (`1234.5 Wh` → `1.2345 kWh`, where `× 0.001` may be off by one ulp).
    pub(crate) fn apply(self, value: f64) -> f64 {
        match self {
            Conversion::Multiply(f) => value * f,
            Conversion::Divide(d) => value / d,
        }
    }
}

/// The conversion from unit `from` to unit `to` (by SI prefix, within one quantity); the
/// error is a row's reason.
pub(crate) fn conversion(from: &str, to: &str) -> Result<Conversion, ImportError> {
    if from == to {
        return Ok(Conversion::Multiply(1.0));
    }
    match (parse_unit(from), parse_unit(to)) {
        (Some((q1, e1)), Some((q2, e2))) if q1 == q2 => {
            let e = e1 - e2;
            // 10^e for |e| <= 22 is exact in f64 (the prefixes give at most 12).
            Ok(if e >= 0 {
                Conversion::Multiply(10f64.powi(e))
            } else {
                Conversion::Divide(10f64.powi(-e))
            })
        }
        _ => Err(ImportError::row(
            "unit",
            format!("cannot convert {} to {to}", shown(from)),
        )),
    }
}

/// A `scale` setting: finite, not 0.
pub(crate) fn check_scale(scale: f64) -> Result<f64, ImportError> {
    if !scale.is_finite() || scale == 0.0 {
        return Err(ImportError::mapping(
            "scale",
            format!("scale {scale} must be a finite number other than 0"),
        ));
    }
    Ok(scale)
}

/// A `to_unit` setting: a unit [`conversion`] knows.
pub(crate) fn check_unit(unit: &str) -> Result<(), ImportError> {
    if parse_unit(unit).is_none() {
        return Err(ImportError::mapping(
            "to_unit",
            format!("to_unit {unit:?} is not a unit meterflow converts ({KNOWN_UNITS})"),
        ));
    }
    Ok(())
}
