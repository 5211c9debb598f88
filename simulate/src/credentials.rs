//! `--credentials FILE.csv`: the file `meterflow credentials import` takes
//! (`meter_id,secret[,publish_for][,dlms_system_title,dlms_ek,dlms_ak,dlms_profile]`, columns
//! found by name, `#` comments). Each meter's secret (its MQTT login, its DTLS pre-shared key)
//! and, where the row has them, its DLMS system title and keys, which `--format dlms` ciphers
//! its pushes with. A bad value stops the run naming the file, the line and the column, never
//! the key itself.

use std::collections::HashMap;
use std::path::Path;

use crate::dlms::MeterKeys;
use crate::SimulateError;

/// What `--credentials` gives each meter.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Meter id → secret.
    pub secrets: HashMap<String, String>,
    /// Meter id → DLMS system title and keys (rows with a `dlms_system_title`).
    pub dlms: HashMap<String, MeterKeys>,
}

/// Reads the credentials file at `path`.
pub fn read_credentials(path: &Path) -> Result<Credentials, SimulateError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(path)
        .map_err(|source| SimulateError::CredentialsFile {
            path: path.to_path_buf(),
            source,
        })?;
    let headers = reader
        .headers()
        .map_err(SimulateError::CredentialsRecord)?
        .clone();
    let optional = |column: &str| headers.iter().position(|h| h == column);
    let column = |column: &'static str| {
        optional(column).ok_or_else(|| SimulateError::CredentialsColumn {
            path: path.to_path_buf(),
            column,
        })
    };
    let (id, secret) = (column("meter_id")?, column("secret")?);
    let dlms = [
        optional("dlms_system_title"),
        optional("dlms_ek"),
        optional("dlms_ak"),
    ];
    let mut all = Credentials::default();
    for record in reader.records() {
        let record = record.map_err(SimulateError::CredentialsRecord)?;
        let Some(meter_id) = record.get(id) else {
            continue;
        };
        if let Some(s) = record.get(secret) {
            all.secrets.insert(meter_id.to_string(), s.to_string());
        }
        let [title, ek, ak] = dlms.map(|c| c.and_then(|c| record.get(c)).unwrap_or(""));
        let invalid = |reason: String| SimulateError::CredentialsValue {
            path: path.to_path_buf(),
            line: record.position().map_or(0, |p| p.line()),
            reason,
        };
        match (
            hex::<8>(title, "dlms_system_title").map_err(invalid)?,
            hex::<16>(ek, "dlms_ek").map_err(invalid)?,
            hex::<16>(ak, "dlms_ak").map_err(invalid)?,
        ) {
            (Some(_), None, Some(_)) => {
                return Err(invalid(format!("meter {meter_id}: dlms_ak without dlms_ek")))
            }
            (Some(system_title), ek, ak) => {
                all.dlms
                    .insert(meter_id.to_string(), MeterKeys { system_title, ek, ak });
            }
            (None, None, None) => {}
            (None, _, _) => {
                return Err(invalid(format!(
                    "meter {meter_id}: dlms_ek and dlms_ak need dlms_system_title (the meter's 8 bytes)"
                )))
            }
        }
    }
    Ok(all)
}

/// `N` bytes from `2N` hex digits; empty is `None`. The error names the column only.
fn hex<const N: usize>(text: &str, column: &str) -> Result<Option<[u8; N]>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let mut out = [0u8; N];
    if text.len() != 2 * N || !text.is_ascii() {
        return Err(format!("{column} is not {} hex digits", 2 * N));
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{column} is not {} hex digits", 2 * N))?;
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_are_read_by_column_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.csv");
        std::fs::write(&path, "secret,meter_id,publish_for\nabc-secret-0123456,E1,\n# note\nxyz-secret-0123456,E2,E*\n").unwrap();
        let all = read_credentials(&path).unwrap();
        assert_eq!(
            all.secrets.get("E1").map(String::as_str),
            Some("abc-secret-0123456")
        );
        assert_eq!((all.secrets.len(), all.dlms.len()), (2, 0));
        std::fs::write(&path, "id,secret\nE1,x\n").unwrap();
        assert!(read_credentials(&path).is_err());
    }

    #[test]
    fn dlms_columns_give_system_titles_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.csv");
        let ek = "101112131415161718191A1B1C1D1E1F";
        let ak = "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf";
        std::fs::write(
            &path,
            format!(
                "meter_id,secret,publish_for,state,dlms_system_title,dlms_ek,dlms_ak,dlms_profile\n\
                 E1,e1-secret-0123456,,active,4B464D1010000023,{ek},{ak},\n\
                 E2,e2-secret-0123456,,,4B464D1010000024,{ek},,\n\
                 E3,e3-secret-0123456,,,4B464D1010000025,,,\n\
                 E4,e4-secret-0123456,,,,,,\n"
            ),
        )
        .unwrap();
        let all = read_credentials(&path).unwrap();
        let e1 = &all.dlms["E1"];
        assert_eq!(e1.system_title, [0x4B, 0x46, 0x4D, 0x10, 0x10, 0, 0, 0x23]);
        assert_eq!(e1.ek.unwrap()[15], 0x1F);
        assert_eq!(e1.ak.unwrap()[0], 0xD0);
        assert_eq!(e1.security_control(), Some(0x30));
        assert_eq!(all.dlms["E2"].security_control(), Some(0x20));
        assert_eq!(all.dlms["E3"].security_control(), None);
        assert!(!all.dlms.contains_key("E4"));
        assert_eq!(all.secrets.len(), 4);

        // Bad values: the file, the line and the column, never the text.
        let bad = |row: &str| {
            std::fs::write(
                &path,
                format!("meter_id,secret,dlms_system_title,dlms_ek,dlms_ak\nE0,e0-secret-0123456,,,\n{row}\n"),
            )
            .unwrap();
            read_credentials(&path).unwrap_err().to_string()
        };
        let e = bad("E1,s,4B464D10,,");
        assert!(
            e.contains("fleet.csv line 3: dlms_system_title is not 16 hex digits"),
            "{e}"
        );
        let e = bad("E1,s,4B464D1010000023,SECRETSECRETSECRETSECRETSECRETSE,");
        assert!(
            e.contains("dlms_ek is not 32 hex digits") && !e.contains("SECRET"),
            "{e}"
        );
        let e = bad(&format!("E1,s,4B464D1010000023,,{ak}"));
        assert!(e.contains("dlms_ak without dlms_ek"), "{e}");
        let e = bad(&format!("E1,s,,{ek},"));
        assert!(e.contains("need dlms_system_title"), "{e}");
        let e = bad("E1,s,4B464D101000002é,,");
        assert!(e.contains("dlms_system_title is not 16 hex digits"), "{e}");
    }
}
