//! `[billing]` of the config file: the zone bills are made in, the longest gap interpolated
//! across, and the registers that wrap at a maximum.

use serde::{Deserialize, Serialize};

use crate::clock::Zone;
use crate::BillingError;

/// `[billing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// The IANA zone of billing days and tariff hours when `--tz` is not given.
    pub timezone: String,
    /// Readings further apart than this are not interpolated between (R(B) is the reading
    /// before, carried forward): `90m`, `36h`, `7d`, or seconds.
    pub max_interpolation_gap: String,
    /// A register with no reading in the period nor within `max_interpolation_gap` of it
    /// still gets its rows (the value carried from its last reading, consumption 0) when
    /// that reading is at most this long before the period's start; `0` turns it off. The
    /// readings of that time are read to find such registers.
    pub silent_look_back: String,
    /// The reading before a period is looked for at most this far back (a register silent
    /// for longer is billed as if it began in the period: that silence's step is not
    /// billed); `0`: as far back as the data goes.
    pub max_silence: String,
    /// Registers that start again from 0 after a maximum (`[[billing.rollover]]`); the first
    /// whose patterns match a meter and channel applies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollover: Vec<RolloverRule>,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            timezone: "UTC".into(),
            max_interpolation_gap: "7d".into(),
            silent_look_back: "31d".into(),
            max_silence: "400d".into(),
            rollover: Vec::new(),
        }
    }
}

/// A register that wraps: after `max` it shows 0 again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloverRule {
    /// Meter ids it applies to; `*` matches any run of characters. Default: every meter.
    #[serde(default = "any")]
    pub meter: String,
    /// Channels it applies to, e.g. `7-0:24.2.1` or `*:24.2.*`. Default: every channel.
    #[serde(default = "any")]
    pub channel: String,
    /// The value after which the register starts again from 0 (e.g. 100000 for five
    /// digits before the decimal point).
    pub max: f64,
}

fn any() -> String {
    "*".into()
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return true;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// `90s`, `45m`, `36h`, `7d`, or plain seconds, as milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(text.len(), |(i, _)| i);
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().ok()?;
    let scale: i64 = match unit {
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

impl BillingConfig {
    /// Checks every key; the error names the first bad one.
    pub fn validate(&self) -> Result<(), BillingError> {
        self.zone()?;
        self.max_gap_ms()?;
        self.silent_look_back_ms()?;
        self.max_silence_ms()?;
        for (i, rule) in self.rollover.iter().enumerate() {
            if !(rule.max.is_finite() && rule.max > 0.0) {
                return Err(BillingError::config(
                    &format!("billing.rollover[{i}].max"),
                    format!("{} is not a positive number", rule.max),
                ));
            }
            for (key, pattern) in [("meter", &rule.meter), ("channel", &rule.channel)] {
                if pattern.is_empty() {
                    return Err(BillingError::config(
                        &format!("billing.rollover[{i}].{key}"),
                        "is empty (`*` takes every one)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `billing.timezone`.
    pub fn zone(&self) -> Result<Zone, BillingError> {
        Zone::parse(&self.timezone, "billing.timezone")
    }

    /// `billing.max_interpolation_gap` in ms.
    pub fn max_gap_ms(&self) -> Result<i64, BillingError> {
        parse_duration_ms(&self.max_interpolation_gap)
            .filter(|&ms| ms > 0)
            .ok_or_else(|| {
                BillingError::config(
                    "billing.max_interpolation_gap",
                    format!(
                        "{:?} is not a duration like 90m, 36h or 7d",
                        self.max_interpolation_gap
                    ),
                )
            })
    }

    /// `billing.silent_look_back` in ms (0: off).
    pub fn silent_look_back_ms(&self) -> Result<i64, BillingError> {
        parse_duration_ms(&self.silent_look_back).ok_or_else(|| {
            BillingError::config(
                "billing.silent_look_back",
                format!(
                    "{:?} is not a duration like 90m, 36h or 31d (0 turns it off)",
                    self.silent_look_back
                ),
            )
        })
    }

    /// `billing.max_silence` in ms (`None`: unbounded).
    pub fn max_silence_ms(&self) -> Result<Option<i64>, BillingError> {
        match parse_duration_ms(&self.max_silence) {
            Some(0) => Ok(None),
            Some(ms) => Ok(Some(ms)),
            None => Err(BillingError::config(
                "billing.max_silence",
                format!(
                    "{:?} is not a duration like 36h or 400d (0: no bound)",
                    self.max_silence
                ),
            )),
        }
    }

    /// The rollover maximum of a register, if a rule names it.
    pub fn rollover_for(&self, meter: &str, channel: &str) -> Option<f64> {
        self.rollover
            .iter()
            .find(|r| glob(&r.meter, meter) && glob(&r.channel, channel))
            .map(|r| r.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "E0001"));
        assert!(glob("*:24.2.*", "0-1:24.2.1"));
        assert!(!glob("*:24.2.*", "1-0:1.8.0"));
        assert!(glob("G*", "G17"));
        assert!(!glob("G*", "E17"));
        assert!(glob("7-0:24.2.1", "7-0:24.2.1"));
        assert!(!glob("7-0:24.2.1", "7-0:24.2.10"));
        assert!(glob("a*b*c", "abxxbc"));
        assert!(!glob("a*b*c", "acb"));
    }

    #[test]
    fn keys_are_checked_and_named() {
        BillingConfig::default().validate().unwrap();
        let bad = |c: BillingConfig| c.validate().unwrap_err().to_string();
        let e = bad(BillingConfig {
            timezone: "Mars/Olympus".into(),
            ..BillingConfig::default()
        });
        assert!(
            e.contains("billing.timezone") && e.contains("Mars/Olympus"),
            "{e}"
        );
        let e = bad(BillingConfig {
            max_interpolation_gap: "a week".into(),
            ..BillingConfig::default()
        });
        assert!(e.contains("billing.max_interpolation_gap"), "{e}");
        let e = bad(BillingConfig {
            silent_look_back: "-1d".into(),
            ..BillingConfig::default()
        });
        assert!(e.contains("billing.silent_look_back"), "{e}");
        let off = BillingConfig {
            silent_look_back: "0".into(),
            ..BillingConfig::default()
        };
        assert_eq!(off.silent_look_back_ms().unwrap(), 0);
        let e = bad(BillingConfig {
            max_silence: "forever".into(),
            ..BillingConfig::default()
        });
        assert!(e.contains("billing.max_silence"), "{e}");
        let unbounded = BillingConfig {
            max_silence: "0".into(),
            ..BillingConfig::default()
        };
        assert_eq!(unbounded.max_silence_ms().unwrap(), None);
        assert_eq!(
            BillingConfig::default().max_silence_ms().unwrap(),
            Some(400 * 86_400_000)
        );
        assert_eq!(
            BillingConfig::default().silent_look_back_ms().unwrap(),
            31 * 86_400_000
        );
        let e = bad(BillingConfig {
            rollover: vec![RolloverRule {
                meter: "*".into(),
                channel: "*".into(),
                max: -1.0,
            }],
            ..BillingConfig::default()
        });
        assert!(e.contains("billing.rollover[0].max"), "{e}");
        assert_eq!(
            BillingConfig::default().max_gap_ms().unwrap(),
            7 * 86_400_000
        );
    }

    #[test]
    fn the_first_matching_rollover_rule_applies() {
        let c: BillingConfig = toml::from_str(
            "[[rollover]]\nmeter = \"G1\"\nmax = 1000\n[[rollover]]\nchannel = \"*:24.2.*\"\nmax = 100000\n",
        )
        .unwrap();
        assert_eq!(c.rollover_for("G1", "0-1:24.2.1"), Some(1000.0));
        assert_eq!(c.rollover_for("G2", "0-1:24.2.1"), Some(100_000.0));
        assert_eq!(c.rollover_for("G2", "1-0:1.8.0"), None);
    }
}
