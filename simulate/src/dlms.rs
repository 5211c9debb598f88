//! `--format dlms`: each report is a DLMS/COSEM push as an Austrian smart meter sends it (Kaifa
//! MA309, Sagemcom T210-D): a DataNotification (`0F`) with a long-invoke-id, the report's time
//! as a 12-byte COSEM date-time, and a **self-describing** body, one flat structure of
//!
//! - the clock `0-0:1.0.0` and the same date-time, the logical device name `0-0:42.0.0` and the
//!   meter id (text: not readings);
//! - per register of [`Plan::registers`]: its OBIS code (an octet-string of 6), its value
//!   (double-long-unsigned, or long64-unsigned above 2^32) and `{scaler, unit}`.
//!
//! The date-time is Austrian local time (CET, or CEST with the daylight-saving status bit)
//! with its deviation (-60 or -120 minutes), so that the decoder's UTC = local + deviation is
//! the report's instant exactly.
//!
//! With the meter's keys from `--credentials` ([`MeterKeys`]), the push is wrapped in
//! general-glo-ciphering (`DB`), security suite 0: system title, security control 0x30
//! (encrypted and authenticated, AAD = SC ‖ AK, a 12-byte GCM tag) or 0x20 when the meter has
//! only an encryption key (GCM's keystream, no tag), IV = system title ‖ invocation counter.
//! Without keys it goes in clear.
//!
//! Only what these pushes need of A-XDR is written here ([`Axdr`]); the decoder is the other
//! side, and the tests check every push against it.

use std::collections::HashMap;
use std::sync::Arc;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{AesGcm, KeyInit, Nonce};
use chrono::{DateTime, Datelike, Timelike};

use crate::{Plan, SimulateError};

/// AES-128-GCM with DLMS's 12-byte tag.
type Aes128Gcm12 = AesGcm<aes_gcm::aes::Aes128, U12, U12>;

/// The length of an IEC 62056-4-7 wrapper header.
pub const WRAPPER_HEADER: usize = 8;

/// A meter's DLMS identity from `--credentials` (the columns `dlms_system_title`, `dlms_ek`,
/// `dlms_ak` of `meterflow credentials import`). `Debug` never shows the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct MeterKeys {
    pub system_title: [u8; 8],
    /// The global unicast encryption key.
    pub ek: Option<[u8; 16]>,
    /// The authentication key.
    pub ak: Option<[u8; 16]>,
}

impl std::fmt::Debug for MeterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeterKeys")
            .field("system_title", &hex(&self.system_title))
            .field("ek", &self.ek.map(|_| "(key)"))
            .field("ak", &self.ak.map(|_| "(key)"))
            .finish()
    }
}

impl MeterKeys {
    /// The security control its pushes carry: 0x30 with both keys, 0x20 with the encryption
    /// key alone, `None` (in clear) without one.
    pub fn security_control(&self) -> Option<u8> {
        match (self.ek, self.ak) {
            (Some(_), Some(_)) => Some(0x30),
            (Some(_), None) => Some(0x20),
            (None, _) => None,
        }
    }
}

/// How a fleet's pushes are ciphered: each meter's keys, and the invocation counter of report 0.
#[derive(Debug, Clone, Default)]
pub struct DlmsSetup {
    /// Meter id → its DLMS identity (meters without one push in clear).
    pub keys: Arc<HashMap<String, MeterKeys>>,
    /// The invocation counter of every meter's report 0; report `k` carries this + `k`.
    pub invocation_base: u32,
}

/// 2025-01-01T00:00:00Z, Unix ms: where the clock of [`invocation_base_at`] starts.
const COUNTER_EPOCH_MS: i64 = 1_735_689_600_000;
/// Invocation counter steps per second of that clock.
const COUNTER_TICKS_PER_S: i64 = 8;

/// The invocation counter of report 0 for a run starting at `now_ms` (Unix ms): eighths of a
/// second since 2025-01-01 UTC.
///
/// Why: meterflow keeps, per system title, the highest counter it accepted, durably, and
/// refuses a push whose counter is not above it as a `replay`; so a rerun of `simulate`
/// against the same data folder must start above every counter an earlier run used, without
/// the simulator keeping any state. The counter is 32 bits: seconds × 1000 + report would not
/// fit (2^32 ms is 50 days), seconds alone would make two runs a second apart collide. Eighths
/// of a second fit until 2042 and step by 8 a second, so report `k` of a run carries
/// `base + k`, and a run is above every earlier one that started at least `messages / 8`
/// seconds before it (1.25 s for 10 reports; 25 s for 200). Runs closer together, or a
/// meter whose counter was set higher elsewhere: `--dlms-invocation-counter N` sets the base.
pub fn invocation_base_at(now_ms: i64) -> Result<u32, SimulateError> {
    let ticks = (now_ms - COUNTER_EPOCH_MS).max(0) / (1000 / COUNTER_TICKS_PER_S);
    u32::try_from(ticks).map_err(|_| {
        SimulateError::Invalid(
            "the clock is past 2042, beyond the invocation counters simulate derives from it: give --dlms-invocation-counter",
        )
    })
}

impl DlmsSetup {
    /// Whether `messages` reports fit above the base in the 32-bit invocation counter.
    pub fn validate(&self, messages: usize) -> Result<(), SimulateError> {
        let last = u64::from(self.invocation_base) + messages.saturating_sub(1) as u64;
        if last > u64::from(u32::MAX) {
            return Err(SimulateError::Invalid(
                "--dlms-invocation-counter + --messages is beyond the 32-bit invocation counter",
            ));
        }
        Ok(())
    }

    /// The invocation counter of report `k` (checked by [`DlmsSetup::validate`]).
    pub fn invocation_counter(&self, k: usize) -> u32 {
        self.invocation_base.saturating_add(k as u32)
    }

    /// Meters of `plan` whose pushes are ciphered.
    pub fn ciphered_meters(&self, plan: &Plan) -> usize {
        (0..plan.meters)
            .filter(|m| {
                self.keys
                    .get(&plan.meter_id(*m))
                    .and_then(MeterKeys::security_control)
                    .is_some()
            })
            .count()
    }
}

/// Report `k` of meter `m` as the meter pushes it (an APDU, unframed): ciphered with its keys,
/// else in clear.
pub fn push(plan: &Plan, m: usize, k: usize, setup: &DlmsSetup) -> Result<Vec<u8>, SimulateError> {
    let apdu = notification(plan, m, k);
    let meter_id = plan.meter_id(m);
    match setup.keys.get(&meter_id) {
        Some(keys) if keys.ek.is_some() => {
            cipher(&apdu, keys, setup.invocation_counter(k)).ok_or(SimulateError::DlmsCipher {
                meter_id,
                report: k,
            })
        }
        _ => Ok(apdu),
    }
}

/// `apdu` in an IEC 62056-4-7 wrapper frame: version 1, source wPort 1 (the meter's management
/// logical device), destination wPort 1, the APDU's length.
pub fn wrap(apdu: &[u8]) -> Result<Vec<u8>, SimulateError> {
    let len = u16::try_from(apdu.len()).map_err(|_| {
        SimulateError::Invalid("a DLMS push over 65535 bytes does not fit a wrapper frame")
    })?;
    let mut frame = Vec::with_capacity(WRAPPER_HEADER + apdu.len());
    frame.extend_from_slice(&[0, 1, 0, 1, 0, 1]);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(apdu);
    Ok(frame)
}

/// Report `k` of meter `m` as a DataNotification in clear (`--shape readings`; validated).
pub(crate) fn notification(plan: &Plan, m: usize, k: usize) -> Vec<u8> {
    let ts_ms = plan.start_ms + k as i64 * plan.interval_s * 1000;
    let stamp = date_time(ts_ms);
    let registers = plan.registers(m, k);
    let mut a = Axdr(Vec::with_capacity(256));
    a.0.push(0x0F);
    // long-invoke-id-and-priority: the report's number (24 bits), normal priority.
    a.0.extend_from_slice(&((k as u32 + 1) & 0x00FF_FFFF).to_be_bytes());
    a.0.push(12);
    a.0.extend_from_slice(&stamp);
    a.structure(4 + 3 * registers.len());
    a.octet_string(&[0, 0, 1, 0, 0, 255]);
    a.octet_string(&stamp);
    a.octet_string(&[0, 0, 42, 0, 0, 255]);
    a.octet_string(plan.meter_id(m).as_bytes());
    for r in &registers {
        let unit = r.dlms();
        a.octet_string(&r.obis);
        a.integer(r.thousandths);
        a.structure(2);
        a.0.extend_from_slice(&[0x0F, unit.scaler as u8, 0x16, unit.code]);
    }
    a.0
}

/// A COSEM date-time (IEC 62056-6-2): Austrian local time of `utc_ms` (CET, CEST in EU summer
/// time) with its deviation, UTC = local + deviation (-60 or -120 minutes), and the clock
/// status (0x80: daylight saving active).
pub(crate) fn date_time(utc_ms: i64) -> [u8; 12] {
    let utc = DateTime::from_timestamp_millis(utc_ms).unwrap_or_default();
    let summer = crate::plan::is_eu_summer_time(&utc);
    let offset_min: i16 = if summer { 120 } else { 60 };
    let local = utc + chrono::Duration::minutes(i64::from(offset_min));
    let year = u16::try_from(local.year()).unwrap_or(0xFFFF);
    let [y0, y1] = year.to_be_bytes();
    let [d0, d1] = (-offset_min).to_be_bytes();
    [
        y0,
        y1,
        local.month() as u8,
        local.day() as u8,
        local.weekday().number_from_monday() as u8,
        local.hour() as u8,
        local.minute() as u8,
        local.second() as u8,
        (local.timestamp_subsec_millis() / 10) as u8,
        d0,
        d1,
        if summer { 0x80 } else { 0x00 },
    ]
}

/// `apdu` in general-glo-ciphering under `keys` (which have an encryption key) with
/// invocation counter `counter`; `None` if AES-GCM refuses it (it cannot at these lengths).
fn cipher(apdu: &[u8], keys: &MeterKeys, counter: u32) -> Option<Vec<u8>> {
    let ek = keys.ek?;
    let control = keys.security_control()?;
    let mut iv = [0u8; 12];
    iv[..8].copy_from_slice(&keys.system_title);
    iv[8..].copy_from_slice(&counter.to_be_bytes());
    let nonce = Nonce::<U12>::from_slice(&iv);
    let gcm = Aes128Gcm12::new(&ek.into());
    let mut data = apdu.to_vec();
    match keys.ak {
        Some(ak) => {
            let mut aad = Vec::with_capacity(17);
            aad.push(control);
            aad.extend_from_slice(&ak);
            let tag = gcm.encrypt_in_place_detached(nonce, &aad, &mut data).ok()?;
            data.extend_from_slice(&tag);
        }
        // Encrypted only: GCM's ciphertext is AES-CTR from the IV's counter 2, which is what
        // security control 0x20 carries; its tag is not sent.
        None => {
            gcm.encrypt_in_place_detached(nonce, &[], &mut data).ok()?;
        }
    }
    let mut a = Axdr(Vec::with_capacity(data.len() + 20));
    a.0.extend_from_slice(&[0xDB, 8]);
    a.0.extend_from_slice(&keys.system_title);
    a.length(5 + data.len());
    a.0.push(control);
    a.0.extend_from_slice(&counter.to_be_bytes());
    a.0.extend_from_slice(&data);
    Some(a.0)
}

/// The A-XDR a push needs, written: BER lengths, structures, octet-strings, integers.
struct Axdr(Vec<u8>);

impl Axdr {
    /// A BER length: one byte below 0x80, else 0x81 or 0x82 and the bytes.
    fn length(&mut self, n: usize) {
        if n < 0x80 {
            self.0.push(n as u8);
        } else if n <= 0xFF {
            self.0.extend_from_slice(&[0x81, n as u8]);
        } else {
            let n = u16::try_from(n).unwrap_or(u16::MAX);
            self.0.push(0x82);
            self.0.extend_from_slice(&n.to_be_bytes());
        }
    }

    fn structure(&mut self, members: usize) {
        self.0.push(0x02);
        self.length(members);
    }

    fn octet_string(&mut self, bytes: &[u8]) {
        self.0.push(0x09);
        self.length(bytes.len());
        self.0.extend_from_slice(bytes);
    }

    /// An integer in the narrowest of the types meters use for registers:
    /// double-long-unsigned, double-long, long64-unsigned, long64.
    fn integer(&mut self, v: i64) {
        if let Ok(v) = u32::try_from(v) {
            self.0.push(0x06);
            self.0.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.0.push(0x05);
            self.0.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = u64::try_from(v) {
            self.0.push(0x15);
            self.0.extend_from_slice(&v.to_be_bytes());
        } else {
            self.0.push(0x14);
            self.0.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// Hex, upper case.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shape;
    use meterflow_decoders::dlms::{decode_push, Framing, KeyLookup, Keys};
    use meterflow_proto::Format;

    fn plan(meters: usize, start_ms: i64) -> Plan {
        Plan {
            meters,
            messages: 4,
            format: Format::Dlms,
            shape: Shape::Readings,
            start_ms,
            interval_s: 900,
            prefix: "dlms-".into(),
        }
    }

    /// Meter m's keys: 0x30 for even meters, 0x20 (encryption key only) for odd ones.
    fn fleet_keys(plan: &Plan) -> DlmsSetup {
        let keys = (0..plan.meters)
            .map(|m| {
                let k = MeterKeys {
                    system_title: [b'M', b'F', b'L', 0, 0, 0, (m >> 8) as u8, m as u8],
                    ek: Some([m as u8 ^ 0x5A; 16]),
                    ak: (m % 2 == 0).then_some([m as u8 ^ 0xA5; 16]),
                };
                (plan.meter_id(m), k)
            })
            .collect();
        DlmsSetup {
            keys: Arc::new(keys),
            invocation_base: 123_456_789,
        }
    }

    fn lookup(setup: &DlmsSetup) -> impl Fn(&[u8; 8]) -> KeyLookup + '_ {
        move |title: &[u8; 8]| {
            setup
                .keys
                .values()
                .find(|k| &k.system_title == title)
                .map_or(KeyLookup::Unknown, |k| match k.ek {
                    Some(ek) => KeyLookup::Keys(Keys { ek, ak: k.ak }),
                    None => KeyLookup::NoKey,
                })
        }
    }

    type Row = (String, i64, f64, String, u16);

    fn decoded_rows(bytes: &[u8], setup: &DlmsSetup) -> (Vec<Row>, meterflow_decoders::dlms::Push) {
        let push = decode_push(bytes, 1, &lookup(setup), None).unwrap();
        assert!(
            push.decoded.rejected.is_empty(),
            "{:?}",
            push.decoded.rejected
        );
        let rows = push
            .decoded
            .readings
            .iter()
            .map(|r| {
                (
                    r.channel.to_string(),
                    r.ts_ms,
                    r.value,
                    r.unit.to_string(),
                    r.quality,
                )
            })
            .collect();
        (rows, push)
    }

    fn expected(plan: &Plan, m: usize, k: usize) -> Vec<Row> {
        plan.expected_rows(m, k)
            .into_iter()
            .map(|r| (r.channel.into(), r.ts_ms, r.value, r.unit.into(), 0))
            .collect()
    }

    #[test]
    fn ciphered_pushes_decode_to_exactly_their_expected_rows() {
        // Summer and winter time, and meters past 2^32 Wh of import (long64-unsigned).
        for start_ms in [1_719_792_000_000, 1_704_067_200_000] {
            let p = plan(50_000, start_ms);
            p.validate().unwrap();
            let setup = fleet_keys(&plan(6, start_ms));
            let setup = DlmsSetup {
                keys: Arc::new(
                    setup
                        .keys
                        .iter()
                        .map(|(id, k)| (id.clone(), k.clone()))
                        .chain([(
                            p.meter_id(49_999),
                            MeterKeys {
                                system_title: *b"MFL\x00\x00\xC3\x4F\xFF",
                                ek: Some([7; 16]),
                                ak: Some([9; 16]),
                            },
                        )])
                        .collect(),
                ),
                ..setup
            };
            for (m, k) in [(0, 0), (1, 0), (2, 3), (3, 1), (5, 2), (49_999, 3)] {
                let bytes = push(&p, m, k, &setup).unwrap();
                assert_eq!(bytes[0], 0xDB, "ciphered");
                let (rows, decoded) = decoded_rows(&bytes, &setup);
                assert_eq!(rows, expected(&p, m, k), "meter {m} report {k}");
                let security = decoded.security.unwrap();
                let keys = &setup.keys[&p.meter_id(m)];
                assert_eq!(security.system_title, keys.system_title);
                assert_eq!(
                    security.control,
                    if keys.ak.is_some() { 0x30 } else { 0x20 }
                );
                assert_eq!(security.invocation_counter, 123_456_789 + k as u32);
                assert_eq!(decoded.long_invoke_id, Some(k as u32 + 1));
                assert_eq!(decoded.framing, Framing::Raw);
                // In a wrapper frame, as the listener gets it.
                let (wrapped, w) = decoded_rows(&wrap(&bytes).unwrap(), &setup);
                assert_eq!((wrapped, w.framing), (rows, Framing::Wrapper));
            }
        }
    }

    #[test]
    fn a_tampered_or_wrongly_keyed_push_does_not_decode() {
        let p = plan(2, 1_719_792_000_000);
        let setup = fleet_keys(&p);
        let mut bytes = push(&p, 0, 1, &setup).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let e = decode_push(&bytes, 1, &lookup(&setup), None).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        // Another meter's key for the same system title.
        let other = fleet_keys(&plan(2, 0));
        let mut swapped = (*other.keys).clone();
        let ek1 = swapped[&p.meter_id(1)].ek;
        if let Some(k) = swapped.get_mut(&p.meter_id(0)) {
            k.ek = ek1;
        }
        let swapped = DlmsSetup {
            keys: Arc::new(swapped),
            ..other
        };
        let bytes = push(&p, 0, 1, &setup).unwrap();
        assert!(decode_push(&bytes, 1, &lookup(&swapped), None).is_err());
    }

    #[test]
    fn pushes_without_keys_go_in_clear() {
        let p = plan(3, 1_704_067_200_000);
        let mut keys = HashMap::new();
        // A system title without keys: still in clear.
        keys.insert(
            p.meter_id(2),
            MeterKeys {
                system_title: *b"MFL\x00\x00\x00\x00\x02",
                ek: None,
                ak: None,
            },
        );
        let setup = DlmsSetup {
            keys: Arc::new(keys),
            invocation_base: 0,
        };
        assert_eq!(setup.ciphered_meters(&p), 0);
        for (m, k) in [(0, 0), (1, 3), (2, 2)] {
            let bytes = push(&p, m, k, &setup).unwrap();
            assert_eq!(bytes[0], 0x0F, "a DataNotification in clear");
            let push = decode_push(&bytes, 1, &|_| KeyLookup::NoKey, None).unwrap();
            assert!(push.security.is_none());
            let rows: Vec<Row> = push
                .decoded
                .readings
                .iter()
                .map(|r| {
                    (
                        r.channel.to_string(),
                        r.ts_ms,
                        r.value,
                        r.unit.to_string(),
                        r.quality,
                    )
                })
                .collect();
            assert_eq!(rows, expected(&p, m, k));
            // Through the generic entry point too (`meterflow decode --format dlms`).
            let ctx = meterflow_decoders::DecodeContext {
                meter_id: "x",
                received_at_ms: 1_800_000_000_000,
            };
            let d = meterflow_decoders::decode(Format::Dlms, &bytes, &ctx).unwrap();
            assert_eq!(d.readings.len(), 5);
        }
    }

    #[test]
    fn expected_rows_are_in_dlms_units() {
        let p = plan(3, 1_719_792_000_000);
        let rows = p.expected_rows(2, 3);
        let got: Vec<(&str, f64, &str)> =
            rows.iter().map(|r| (r.channel, r.value, r.unit)).collect();
        assert_eq!(
            got,
            [
                ("1-0:1.8.1", 200_750.0, "Wh"),
                ("1-0:1.8.2", 100_375.0, "Wh"),
                ("1-0:2.8.1", 30.0, "Wh"),
                ("1-0:1.7.0", 53.0, "W"),
                ("0-1:24.2.1", 40.12, "m3"),
            ]
        );
        // Every register's OBIS bytes are its channel.
        for r in p.registers(2, 3) {
            assert_eq!(meterflow_decoders::dlms::Obis(r.obis).channel(), r.channel);
        }
    }

    #[test]
    fn date_times_carry_local_time_and_deviation() {
        // 2024-07-01T00:00:00Z: 02:00 CEST, a Monday, deviation -120, daylight saving.
        assert_eq!(
            date_time(1_719_792_000_000),
            [0x07, 0xE8, 7, 1, 1, 2, 0, 0, 0, 0xFF, 0x88, 0x80]
        );
        // 2024-01-01T00:00:00Z: 01:00 CET, a Monday, deviation -60.
        assert_eq!(
            date_time(1_704_067_200_000),
            [0x07, 0xE8, 1, 1, 1, 1, 0, 0, 0, 0xFF, 0xC4, 0x00]
        );
        for ms in [1_711_846_799_000, 1_711_846_800_000, 1_729_990_800_000] {
            let (utc, doubtful) =
                meterflow_decoders::dlms::cosem::date_time(&date_time(ms)).unwrap();
            assert_eq!((utc, doubtful), (ms, false));
        }
    }

    #[test]
    fn invocation_counters_follow_the_clock_and_fit() {
        let t = 1_767_225_600_000; // 2026-01-01
        let base = invocation_base_at(t).unwrap();
        assert_eq!(base, 365 * 86_400 * 8);
        // A second later: 8 more, so a run of up to 8 reports a second ago is below it.
        assert_eq!(invocation_base_at(t + 1000).unwrap(), base + 8);
        assert_eq!(invocation_base_at(0).unwrap(), 0);
        // 2043: beyond 32 bits.
        assert!(invocation_base_at(Y2043_MS).is_err());
        let setup = DlmsSetup {
            keys: Arc::default(),
            invocation_base: u32::MAX - 9,
        };
        assert!(setup.validate(10).is_ok());
        assert!(setup.validate(11).is_err());
        assert_eq!(setup.invocation_counter(9), u32::MAX);
    }

    /// 2043-01-01T00:00:00Z, Unix ms.
    const Y2043_MS: i64 = 2_303_683_200_000;

    #[test]
    fn wrapper_frames_and_long_lengths() {
        assert_eq!(wrap(&[0x0F, 1]).unwrap(), [0, 1, 0, 1, 0, 1, 0, 2, 0x0F, 1]);
        assert!(wrap(&vec![0; 65_536]).is_err());
        let mut a = Axdr(Vec::new());
        a.length(0x7F);
        a.length(0x80);
        a.length(0x1234);
        assert_eq!(a.0, [0x7F, 0x81, 0x80, 0x82, 0x12, 0x34]);
        let mut a = Axdr(Vec::new());
        a.integer(-1);
        a.integer(1 << 40);
        assert_eq!(a.0[0], 0x05);
        assert_eq!(a.0[5], 0x15);
    }

    #[test]
    fn keys_are_not_shown() {
        let k = MeterKeys {
            system_title: [1; 8],
            ek: Some([0xAB; 16]),
            ak: None,
        };
        let shown = format!("{k:?}");
        assert!(!shown.contains("AB") && !shown.contains("171"), "{shown}");
    }
}
