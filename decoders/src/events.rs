//! Events: what a meter (or meterflow's edge) says happened to it, normalised to one list of
//! kinds whatever the format that carried it. This module owns the kinds ([`EventKind`], each
//! with its severity), the meaning of the status error bits of every format that has them
//! ([`flag_events`]), and the tables that turn a format's own codes into kinds:
//!
//! - meterflow's JSON, protobuf, CBOR and SenML status `error_flags` ([`STATUS_BITS`]);
//! - LwM2M's Device / Error Code (`/3/0/11`), whose codes the SenML decoder keeps as bit
//!   `1 << code` ([`LWM2M_CODES`]);
//! - DSMR/SMR alarm register 1 (`0-0:97.98.0`) of DLMS pushes ([`DLMS_ALARM_BITS`], the bit
//!   meanings of DSMR 4.2.2 and SMR 5 as the Open Smart Grid Platform has them);
//! - the DSMR P1 long power-failure log `1-0:99.97.0` (the DSMR decoder's own).
//!
//! The pipeline adds the events only an edge can see (`forged_publish`, `replay_rejected`,
//! `auth_failed`), keeps only the news of each meter (a condition once while it lasts, a log
//! entry once, a DSMR counter that rose: `ingest`'s `meter_memory`), and the stores keep one
//! row per (meter, second, kind, code) whatever is written twice.

use std::fmt;

use crate::Format;

/// How much an event matters to whoever reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

macro_rules! kinds {
    ($($kind:ident $name:literal $severity:ident $tamper:literal $doc:literal;)*) => {
        /// The normalised kinds of event. `as_str` is the name stored and queried.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $(#[doc = $doc] $kind,)*
        }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$(EventKind::$kind,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(EventKind::$kind => $name,)* }
            }

            pub fn severity(self) -> Severity {
                match self { $(EventKind::$kind => Severity::$severity,)* }
            }

            /// Whether it is a sign of tampering with the meter or its data (what
            /// revenue protection counts).
            pub fn is_tamper(self) -> bool {
                match self { $(EventKind::$kind => $tamper,)* }
            }

            /// What it means, in words (the README's table and the page).
            pub fn describe(self) -> &'static str {
                match self { $(EventKind::$kind => $doc,)* }
            }

            pub fn parse(name: &str) -> Option<EventKind> {
                match name { $($name => Some(EventKind::$kind),)* _ => None }
            }
        }
    };
}

kinds! {
    PowerFailure "power_failure" Warning false "The meter lost its supply (its start; `code` holds the duration in seconds where known).";
    PowerRestored "power_restored" Info false "The supply came back.";
    CoverOpen "cover_open" Critical true "The meter's cover was opened.";
    CoverClosed "cover_closed" Info false "The meter's cover was closed again.";
    TerminalCoverOpen "terminal_cover_open" Critical true "The terminal cover was removed.";
    TerminalCoverClosed "terminal_cover_closed" Info false "The terminal cover was put back.";
    MagneticTamper "magnetic_tamper" Critical true "A strong magnetic (DC) field was detected at the meter.";
    MagneticTamperCleared "magnetic_tamper_cleared" Info false "The magnetic field is gone.";
    FraudAttempt "fraud_attempt" Critical true "The meter reports a fraud attempt (DSMR alarm bit 13, an M-Bus device's).";
    ReverseFlow "reverse_flow" Warning false "Energy or water flowed backwards through the meter (on an import-only meter, the suspects' `reverse` signal).";
    Leak "leak" Warning false "A leak was detected (water, gas, heat).";
    Burst "burst" Critical false "A burst (a flow far above the pipe's normal) was detected.";
    ValveClosed "valve_closed" Warning false "The meter's valve or breaker is closed: no supply.";
    ValveOpened "valve_opened" Info false "The meter's valve or breaker is open again.";
    LowBattery "low_battery" Warning false "The battery needs replacing.";
    ClockInvalid "clock_invalid" Warning false "The meter's clock is not set or not to be trusted.";
    ClockAdjusted "clock_adjusted" Info false "The meter's clock was set.";
    FirmwareChanged "firmware_changed" Info false "The meter reports another firmware version than before.";
    DeviceFault "device_fault" Warning false "A hardware, memory or measurement error of the device.";
    CommunicationError "communication_error" Warning false "The device reports a failure of its link (IP, SMS, M-Bus).";
    LowSignal "low_signal" Info false "The device reports a weak radio signal.";
    VoltageSag "voltage_sag" Info false "The voltage fell below its limit on a phase.";
    VoltageSwell "voltage_swell" Info false "The voltage rose above its limit on a phase.";
    PhaseOutage "phase_outage" Warning false "A phase lost its voltage.";
    ReplayRejected "replay_rejected" Critical true "A ciphered DLMS push was refused as a replay (its counter not above the last).";
    AuthFailed "auth_failed" Critical true "A DLMS push for the meter failed its authentication tag.";
    ForgedPublish "forged_publish" Critical true "Another identity published or posted for this meter and was refused.";
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of a meter, as decoded (the meter is the topic's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// When it happened (or was reported), Unix ms.
    pub ts_ms: i64,
    /// The source's own code: `bit 4`, `/3/0/11 = 1`, `0-0:97.98.0 bit 13`, `1-0:99.97.0`...
    pub code: String,
    /// Anything else worth knowing, in words.
    pub detail: String,
    /// A condition the meter reports while it lasts (a status bit, an alarm register's bit,
    /// an error code), as opposed to an occurrence (a logged power failure, a refusal): the
    /// pipeline keeps it once, when it first appears in the meter's reports.
    pub ongoing: bool,
}

/// What the bits of a status's `error_flags` mean in one format.
pub type BitTable = &'static [(u8, EventKind)];

/// meterflow's own status bits (JSON, protobuf, CBOR and SenML reports, `meters/{id}/status`).
pub const STATUS_BITS: BitTable = &[
    (0, EventKind::DeviceFault),
    (1, EventKind::LowBattery),
    (2, EventKind::CoverOpen),
    (3, EventKind::TerminalCoverOpen),
    (4, EventKind::MagneticTamper),
    (5, EventKind::ReverseFlow),
    (6, EventKind::Leak),
    (7, EventKind::Burst),
    (8, EventKind::ValveClosed),
    (9, EventKind::ClockInvalid),
    (10, EventKind::CommunicationError),
    (11, EventKind::PowerFailure),
];

/// LwM2M Device / Error Code (`/3/0/11`): code `c` is bit `c` (OMA object 3).
pub const LWM2M_CODES: BitTable = &[
    (1, EventKind::LowBattery),
    (2, EventKind::PowerFailure),
    (3, EventKind::DeviceFault),
    (4, EventKind::LowSignal),
    (5, EventKind::DeviceFault),
    (6, EventKind::CommunicationError),
    (7, EventKind::CommunicationError),
    (8, EventKind::DeviceFault),
];

/// DSMR 4.2.2 / SMR 5 alarm register 1 (`0-0:97.98.0`).
pub const DLMS_ALARM_BITS: BitTable = &[
    (0, EventKind::ClockInvalid),
    (1, EventKind::LowBattery),
    (2, EventKind::PowerRestored),
    (8, EventKind::DeviceFault),
    (9, EventKind::DeviceFault),
    (10, EventKind::DeviceFault),
    (11, EventKind::DeviceFault),
    (12, EventKind::DeviceFault),
    (13, EventKind::FraudAttempt),
    (16, EventKind::CommunicationError),
    (17, EventKind::CommunicationError),
    (18, EventKind::CommunicationError),
    (19, EventKind::CommunicationError),
    (20, EventKind::FraudAttempt),
    (21, EventKind::FraudAttempt),
    (22, EventKind::FraudAttempt),
    (23, EventKind::FraudAttempt),
    (28, EventKind::PhaseOutage),
    (29, EventKind::PhaseOutage),
    (30, EventKind::PhaseOutage),
];

/// The code prefix of an LwM2M error code (`/3/0/11 = 1`).
pub const LWM2M_PREFIX: &str = "/3/0/11";

/// The bit table of a format's status `error_flags`; `None` for DLMS, whose decoder makes
/// events of each alarm register itself (its `error_flags` ORs them all), and DSMR (no bits).
pub fn bit_table(format: Format) -> Option<BitTable> {
    match format {
        Format::Pb | Format::Json | Format::Cbor | Format::Senml | Format::SenmlCbor => {
            Some(STATUS_BITS)
        }
        Format::Lwm2m => Some(LWM2M_CODES),
        Format::Dlms | Format::Dsmr => None,
    }
}

/// The events of the bits set in `flags`, by `table`, at `ts_ms`. A bit the table does not
/// name is a `device_fault` that says which bit; `prefix` starts each code (`""`,
/// `/3/0/11`, `0-0:97.98.0`).
pub fn flag_events(table: BitTable, prefix: &str, flags: u32, ts_ms: i64) -> Vec<Event> {
    (0..32u8)
        .filter(|bit| flags & (1u32 << bit) != 0)
        .map(|bit| {
            let named = table.iter().find(|(b, _)| *b == bit).map(|(_, k)| *k);
            let code = match prefix {
                "" => format!("bit {bit}"),
                // LwM2M's error codes are values, kept as bits by the decoder.
                LWM2M_PREFIX => format!("{LWM2M_PREFIX} = {bit}"),
                _ => format!("{prefix} bit {bit}"),
            };
            Event {
                kind: named.unwrap_or(EventKind::DeviceFault),
                ts_ms,
                code,
                detail: if named.is_some() {
                    String::new()
                } else {
                    "a bit this table does not name".to_string()
                },
                ongoing: true,
            }
        })
        .collect()
}

/// The status bits of `flags` of a report in `format`, as events at `ts_ms` (none for a
/// format whose bits the decoder turns into events itself).
pub fn status_events(format: Format, flags: Option<u32>, ts_ms: i64) -> Vec<Event> {
    let prefix = if format == Format::Lwm2m {
        LWM2M_PREFIX
    } else {
        ""
    };
    match (bit_table(format), flags) {
        (Some(table), Some(flags)) if flags != 0 => flag_events(table, prefix, flags, ts_ms),
        _ => Vec::new(),
    }
}

/// The kind that says a condition of [`STATUS_BITS`] has ended, where it has one.
fn ended(kind: EventKind) -> Option<EventKind> {
    Some(match kind {
        EventKind::CoverOpen => EventKind::CoverClosed,
        EventKind::TerminalCoverOpen => EventKind::TerminalCoverClosed,
        EventKind::MagneticTamper => EventKind::MagneticTamperCleared,
        EventKind::ValveClosed => EventKind::ValveOpened,
        EventKind::PowerFailure => EventKind::PowerRestored,
        _ => return None,
    })
}

/// What changed between a meter's status before and now, in a format of meterflow's bits:
/// a condition that ended (a bit of [`STATUS_BITS`] set before and clear now: `cover_closed`,
/// `valve_opened`, ...) and another firmware than before (`firmware_changed`).
pub fn status_changes(
    format: Format,
    before: (Option<u32>, Option<&str>),
    now: (Option<u32>, Option<&str>),
    ts_ms: i64,
) -> Vec<Event> {
    let mut events = Vec::new();
    if let ((Some(was), Some(is)), Some(STATUS_BITS)) = ((before.0, now.0), bit_table(format)) {
        for (bit, kind) in STATUS_BITS {
            let mask = 1u32 << bit;
            if let (true, Some(end)) = (was & mask != 0 && is & mask == 0, ended(*kind)) {
                events.push(Event {
                    kind: end,
                    ts_ms,
                    code: format!("bit {bit}"),
                    detail: format!("{} no longer reported", kind.as_str()),
                    ongoing: false,
                });
            }
        }
    }
    if let (Some(was), Some(is)) = (before.1, now.1) {
        if was != is {
            events.push(Event {
                kind: EventKind::FirmwareChanged,
                ts_ms,
                code: is.to_string(),
                detail: format!("firmware {was} before, {is} now"),
                ongoing: false,
            });
        }
    }
    events
}

/// The kinds the bits of `flags` in `format` stand for, in bit order. A DLMS meter's
/// `error_flags` OR its alarm registers: only the bits from 8 up are worded, by alarm
/// register 1 (registers 2 and 3 use bits 0 to 5 only; its events say which register's).
pub fn flag_kinds(format: Format, flags: u32) -> Vec<EventKind> {
    let (table, flags) = match (format, bit_table(format)) {
        (Format::Dlms, _) => (DLMS_ALARM_BITS, flags & !0xFF),
        (_, Some(table)) => (table, flags),
        (_, None) => return Vec::new(),
    };
    flag_events(table, "", flags, 0)
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_are_unique() {
        let mut names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(*kind));
            assert!(!kind.describe().is_empty());
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventKind::ALL.len());
        assert!(EventKind::ALL.len() >= 20);
    }

    #[test]
    fn status_bits_become_events_and_unknown_bits_say_so() {
        // 0x5: device fault and cover open; bit 20 is no named bit.
        let events = status_events(Format::Json, Some(0x5 | 1 << 20), 7);
        let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.code.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (EventKind::DeviceFault, "bit 0"),
                (EventKind::CoverOpen, "bit 2"),
                (EventKind::DeviceFault, "bit 20"),
            ]
        );
        assert!(events.iter().all(|e| e.ts_ms == 7));
        assert!(events[2].detail.contains("does not name"));
        assert!(status_events(Format::Json, Some(0), 7).is_empty());
        assert!(status_events(Format::Dlms, Some(0x5), 7).is_empty());
        // LwM2M: error code 1 (low battery) is bit 1.
        let lwm2m = status_events(Format::Lwm2m, Some(1 << 1 | 1 << 7), 0);
        assert_eq!(lwm2m[0].kind, EventKind::LowBattery);
        assert_eq!(lwm2m[0].code, "/3/0/11 = 1");
        assert_eq!(lwm2m[1].kind, EventKind::CommunicationError);
        assert_eq!(
            flag_kinds(Format::Pb, 0x14),
            [EventKind::CoverOpen, EventKind::MagneticTamper]
        );
        assert_eq!(
            flag_kinds(Format::Dlms, 1 << 13 | 1),
            [EventKind::FraudAttempt]
        );
        assert!(flag_kinds(Format::Dlms, 0x7).is_empty());
    }

    #[test]
    fn an_ended_condition_and_a_new_firmware_are_changes() {
        // Cover open and valve closed before; only the valve now; new firmware.
        let changes = status_changes(
            Format::Json,
            (Some(0x104), Some("1.0")),
            (Some(0x100), Some("1.1")),
            9,
        );
        let kinds: Vec<_> = changes.iter().map(|e| (e.kind, e.code.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (EventKind::CoverClosed, "bit 2"),
                (EventKind::FirmwareChanged, "1.1"),
            ]
        );
        // Nothing known before (a first report, a restart): no change.
        assert!(status_changes(Format::Json, (None, None), (Some(0), Some("1.1")), 9).is_empty());
        // LwM2M's codes are not meterflow's bits: no "ended" guessed.
        assert!(status_changes(Format::Lwm2m, (Some(4), None), (Some(0), None), 9).is_empty());
    }
}
