//! Push profiles (`[[dlms.profile]]`) and the zone of DLMS meter clocks (`dlms.timezone`):
//! what a meter's pushes are read with besides their bytes, on every way in (MQTT, CoAP, the
//! wrapper listener).
//!
//! - A **values-only** push (an IDIS push setup's capture list, configured in the meter) names
//!   no object: its profile does, in order, as `class/OBIS/attribute` with the scaler and
//!   unit to read each value with.
//! - A meter's profile is the one its credential names (column `dlms_profile`), else the one
//!   whose `manufacturers` has the first three letters of its system title (the FLAG id:
//!   `KFM` Kaifa, `LGZ` Landis+Gyr, `ISK` Iskraemeco ...), else none (only self-describing
//!   pushes decode).
//! - A date-time without a deviation (Kamstrup, Aidon and many HAN ports send none) is read in
//!   the profile's `timezone`, else `dlms.timezone`, else taken as UTC and flagged
//!   `CLOCK_INVALID`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use meterflow_decoders::dlms::{self, Profile, ProfileObject, Tz};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::IngestError;

/// Most profiles, and most objects in one (an IDIS push captures a few dozen at most).
pub const MAX_PROFILES: usize = 256;
pub const MAX_OBJECTS: usize = 512;

/// One `[[dlms.profile]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// What credentials name it by (`dlms_profile`).
    pub name: String,
    /// The manufacturers (first three letters of the system title) whose meters use it
    /// unless their credential names another.
    #[serde(default)]
    pub manufacturers: Vec<String>,
    /// The zone of these meters' clocks, over `dlms.timezone`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The captured objects, in the order the push carries their values: each
    /// `"class/OBIS/attribute"`, or `{ object = "...", scaler = -3, unit = "Wh" }`.
    #[serde(default)]
    pub objects: Vec<ObjectConfig>,
}

/// A captured object: its `class/OBIS/attribute`, and the scaler and unit (a DLMS unit
/// symbol) its value is read with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectConfig {
    pub object: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scaler: i8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

fn is_zero(v: &i8) -> bool {
    *v == 0
}

/// The table form of an object, with unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectTable {
    object: String,
    #[serde(default)]
    scaler: i8,
    #[serde(default)]
    unit: Option<String>,
}

impl<'de> Deserialize<'de> for ObjectConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = ObjectConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"class/OBIS/attribute\" or { object = \"class/OBIS/attribute\", scaler = N, unit = \"...\" }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ObjectConfig, E> {
                Ok(ObjectConfig {
                    object: v.to_string(),
                    scaler: 0,
                    unit: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ObjectConfig, A::Error> {
                let t = ObjectTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ObjectConfig {
                    object: t.object,
                    scaler: t.scaler,
                    unit: t.unit,
                })
            }
        }
        deserializer.deserialize_any(ObjectVisitor)
    }
}

/// A profile as the pipeline uses it.
#[derive(Debug)]
struct Resolved {
    /// `None` for a profile with no objects (one that only gives a zone).
    profile: Option<Arc<Profile>>,
    zone: Option<Tz>,
}

/// The profiles and zones, checked: what each meter's pushes are read with.
#[derive(Debug, Default)]
pub struct PushProfiles {
    by_name: HashMap<String, Resolved>,
    by_manufacturer: HashMap<[u8; 3], String>,
    zone: Option<Tz>,
}

/// What one push is read with: [`PushProfiles::context`].
pub struct Chosen<'a> {
    pub profile: Option<&'a Profile>,
    /// Whether the profile is named for the meter (not its manufacturer's): a push that does
    /// not fit it is refused rather than read as self-describing.
    pub named: bool,
    pub zone: Option<Tz>,
}

impl Chosen<'_> {
    pub fn context(&self) -> dlms::Context<'_> {
        dlms::Context {
            profile: self.profile,
            profile_named: self.named,
            zone: self.zone,
        }
    }
}

fn zone(key: &str, name: &str) -> Result<Tz, IngestError> {
    name.parse::<Tz>().map_err(|_| {
        IngestError::config(
            key,
            format!("{name:?} is not an IANA time zone (for example \"Europe/Vienna\")"),
        )
    })
}

impl PushProfiles {
    /// Checks `[[dlms.profile]]` and `dlms.timezone`; the error names the key (with the
    /// profile's index) and what is wrong.
    pub fn new(profiles: &[ProfileConfig], timezone: Option<&str>) -> Result<Self, IngestError> {
        let mut out = PushProfiles {
            zone: timezone.map(|t| zone("dlms.timezone", t)).transpose()?,
            ..PushProfiles::default()
        };
        if profiles.len() > MAX_PROFILES {
            return Err(IngestError::config(
                "dlms.profile",
                format!("at most {MAX_PROFILES} profiles"),
            ));
        }
        for (i, p) in profiles.iter().enumerate() {
            let key = |field: &str| format!("dlms.profile[{i}].{field}");
            let name = p.name.trim();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(IngestError::config(
                    key("name"),
                    "must be 1 to 64 characters of [A-Za-z0-9._-]",
                ));
            }
            if out.by_name.contains_key(name) {
                return Err(IngestError::config(
                    key("name"),
                    format!("{name:?} is the name of an earlier profile"),
                ));
            }
            if p.objects.len() > MAX_OBJECTS {
                return Err(IngestError::config(
                    key("objects"),
                    format!("at most {MAX_OBJECTS} objects"),
                ));
            }
            let mut objects = Vec::with_capacity(p.objects.len());
            for (j, o) in p.objects.iter().enumerate() {
                let at = key(&format!("objects[{j}]"));
                let parsed =
                    ProfileObject::parse(&o.object).map_err(|e| IngestError::config(&at, e))?;
                let unit = match o.unit.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(u) => Some(dlms::unit_of_symbol(u).ok_or_else(|| {
                        IngestError::config(
                            &at,
                            format!(
                                "unit {u:?} is not a DLMS unit symbol (Wh, W, varh, V, A, m3, Hz, ...: kWh is Wh with scaler 3)"
                            ),
                        )
                    })?),
                };
                if !(-30..=30).contains(&o.scaler) {
                    return Err(IngestError::config(&at, "scaler must be -30 to 30"));
                }
                objects.push(ProfileObject {
                    scaler: o.scaler,
                    unit,
                    ..parsed
                });
            }
            for m in &p.manufacturers {
                let id: [u8; 3] = m
                    .as_bytes()
                    .try_into()
                    .ok()
                    .filter(|b: &[u8; 3]| b.iter().all(u8::is_ascii_uppercase))
                    .ok_or_else(|| {
                        IngestError::config(
                            key("manufacturers"),
                            format!(
                                "{m:?} is not a manufacturer id (three capital letters, the start of a system title: \"KFM\")"
                            ),
                        )
                    })?;
                if let Some(other) = out.by_manufacturer.insert(id, name.to_string()) {
                    return Err(IngestError::config(
                        key("manufacturers"),
                        format!("{m:?} is already profile {other:?}'s"),
                    ));
                }
            }
            let zone = p
                .timezone
                .as_deref()
                .map(|t| zone(&key("timezone"), t))
                .transpose()?;
            let profile = (!objects.is_empty()).then(|| {
                Arc::new(Profile {
                    name: name.to_string(),
                    objects,
                })
            });
            out.by_name
                .insert(name.to_string(), Resolved { profile, zone });
        }
        Ok(out)
    }

    /// Whether a profile of that name is configured.
    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// What a meter's push is read with: the profile its credential names (`named`), else
    /// its manufacturer's (from its system title); an error names a profile that is not
    /// configured.
    pub fn choose(
        &self,
        named: Option<&str>,
        system_title: Option<&[u8; 8]>,
    ) -> Result<Chosen<'_>, String> {
        let name = match named {
            Some(n) => Some(n),
            None => system_title
                .and_then(|t| self.by_manufacturer.get(&[t[0], t[1], t[2]]))
                .map(String::as_str),
        };
        let Some(name) = name else {
            return Ok(Chosen {
                profile: None,
                named: false,
                zone: self.zone,
            });
        };
        let resolved = self.by_name.get(name).ok_or_else(|| {
            format!("push profile {name:?} is not configured (no [[dlms.profile]] of that name)")
        })?;
        Ok(Chosen {
            profile: resolved.profile.as_deref(),
            named: named.is_some(),
            zone: resolved.zone.or(self.zone),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<PushProfiles, IngestError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Dlms {
            timezone: Option<String>,
            #[serde(default)]
            profile: Vec<ProfileConfig>,
        }
        let d: Dlms =
            toml::from_str(toml_text).map_err(|e| IngestError::config("toml", e.to_string()))?;
        PushProfiles::new(&d.profile, d.timezone.as_deref())
    }

    #[test]
    fn profiles_are_chosen_by_credential_then_manufacturer() {
        let p = parse(
            r#"
            timezone = "Europe/Oslo"
            [[profile]]
            name = "kaifa-3ph"
            manufacturers = ["KFM"]
            objects = [
              "1/1-1:0.2.129.255/2",
              { object = "3/1-0:1.7.0.255/2", unit = "W" },
              { object = "3/1-0:32.7.0.255/2", scaler = -1, unit = "V" },
            ]
            [[profile]]
            name = "vienna-clock"
            timezone = "Europe/Vienna"
            "#,
        )
        .unwrap();
        let kaifa = *b"KFM\x10\x00\x00\x00\x01";
        let chosen = p.choose(None, Some(&kaifa)).unwrap();
        assert!(!chosen.named, "the manufacturer's");
        let profile = chosen.profile.unwrap();
        assert_eq!(profile.name, "kaifa-3ph");
        assert_eq!(profile.objects.len(), 3);
        assert_eq!(
            (profile.objects[2].scaler, profile.objects[2].unit),
            (-1, Some("V"))
        );
        assert_eq!(chosen.zone, Some("Europe/Oslo".parse().unwrap()));
        // Named in the credential: that one, even for a Kaifa; a profile with only a zone.
        let chosen = p.choose(Some("vienna-clock"), Some(&kaifa)).unwrap();
        assert!(chosen.profile.is_none() && chosen.named);
        assert_eq!(chosen.zone, Some("Europe/Vienna".parse().unwrap()));
        // Another manufacturer: none, the global zone.
        let chosen = p.choose(None, Some(b"LGZ12345")).unwrap();
        assert!(chosen.profile.is_none());
        assert_eq!(chosen.zone, Some("Europe/Oslo".parse().unwrap()));
        let e = p.choose(Some("nope"), None).err().unwrap();
        assert!(e.contains("\"nope\" is not configured"), "{e}");
    }

    #[test]
    fn a_wrong_profile_stops_start_up_naming_the_key() {
        for (text, key, says) in [
            ("timezone = \"Mars/Base\"", "dlms.timezone", "IANA"),
            ("[[profile]]\nname = \"a b\"", "dlms.profile[0].name", "[A-Za-z0-9._-]"),
            (
                "[[profile]]\nname = \"a\"\n[[profile]]\nname = \"a\"",
                "dlms.profile[1].name",
                "earlier",
            ),
            (
                "[[profile]]\nname = \"a\"\nobjects = [\"3/1-0:1.8.0.255\"]",
                "dlms.profile[0].objects[0]",
                "class/OBIS/attribute",
            ),
            (
                "[[profile]]\nname = \"a\"\nobjects = [{ object = \"3/1-0:1.8.0.255/2\", unit = \"kWh\" }]",
                "dlms.profile[0].objects[0]",
                "kWh is Wh with scaler 3",
            ),
            (
                "[[profile]]\nname = \"a\"\nobjects = [{ object = \"3/1-0:1.8.0.255/2\", scaler = 99 }]",
                "dlms.profile[0].objects[0]",
                "-30 to 30",
            ),
            (
                "[[profile]]\nname = \"a\"\nmanufacturers = [\"kfm\"]",
                "dlms.profile[0].manufacturers",
                "three capital letters",
            ),
            (
                "[[profile]]\nname = \"a\"\nmanufacturers = [\"KFM\"]\n[[profile]]\nname = \"b\"\nmanufacturers = [\"KFM\"]",
                "dlms.profile[1].manufacturers",
                "already profile \"a\"'s",
            ),
            (
                "[[profile]]\nname = \"a\"\ntimezone = \"CEST\"",
                "dlms.profile[0].timezone",
                "IANA",
            ),
        ] {
            match parse(text) {
                Err(IngestError::Config { key: k, reason }) => {
                    assert_eq!(k, key, "{text}");
                    assert!(reason.contains(says), "{text}: {reason}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // An unknown key in an object's table is refused by name.
        let e = parse(
            "[[profile]]\nname = \"a\"\nobjects = [{ object = \"3/1-0:1.8.0.255/2\", scale = 1 }]",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("unknown field `scale`"), "{e}");
    }
}
