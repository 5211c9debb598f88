//! What the pipeline remembers of each meter in a run of `serve`, for its events: the last
//! status (error flags, firmware, the conditions it reported), the newest entry of its
//! power-failure log, and its DSMR event counters. With it a message's events are kept only
//! when they are news:
//!
//! - a condition the meter reports while it lasts (`Event::ongoing`: a status bit, an alarm
//!   bit, an error code) when it first appears, and an `..._closed`/`..._cleared` event when
//!   it ends; another firmware as `firmware_changed`;
//! - a logged occurrence (a DSMR power-failure log entry, repeated in every telegram) when it
//!   is newer than the newest seen;
//! - a counter that rose (DSMR's power failures `0-0:96.7.21`, voltage sags `x.32.0` and
//!   swells `x.36.0` of each phase) as one event whose code says by how much, at the
//!   telegram's time.
//!
//! A meter seen first in a run starts from its saved device state (flags and firmware), so a
//! restart does not write its open conditions again (unless the message is one the saved
//! state already counted, replayed from the WAL: then the meter starts from nothing and its
//! events are written again with their own times, which the stores keep once). Bounded:
//! `devices.max_devices` meters of about 100 bytes each; past it a meter's events are kept
//! as they come (a condition then once per report).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use meterflow_decoders::events::{self, Event, EventKind};
use meterflow_decoders::{DeviceStatus, Format, Reading};

/// The DSMR counters that become events when they rise: the OBIS code after `A-B:`, and the
/// kind.
const COUNTERS: [(&str, EventKind); 7] = [
    ("96.7.21", EventKind::PowerFailure),
    ("32.32.0", EventKind::VoltageSag),
    ("52.32.0", EventKind::VoltageSag),
    ("72.32.0", EventKind::VoltageSag),
    ("32.36.0", EventKind::VoltageSwell),
    ("52.36.0", EventKind::VoltageSwell),
    ("72.36.0", EventKind::VoltageSwell),
];

/// How far after its message a logged entry may be stamped and still move the mark.
const FUTURE_MS: i64 = 86_400_000;

/// One meter's memory.
#[derive(Debug, Default)]
struct Remembered {
    flags: Option<u32>,
    firmware: Option<Box<str>>,
    /// Hashes of the codes of the conditions of its last status.
    active: Vec<u64>,
    /// The newest logged occurrence written, Unix ms.
    logged_through_ms: Option<i64>,
    /// The last value of each of [`COUNTERS`] (by index): DSMR meters only.
    counters: Option<Box<[Option<f64>; COUNTERS.len()]>>,
}

/// What a meter's state already says, for a meter first seen in this run.
pub struct Saved {
    pub flags: Option<u32>,
    pub firmware: Option<String>,
    pub format: Option<Format>,
}

/// A message of a meter, as far as its events go.
pub struct Message<'a> {
    pub meter_id: &'a str,
    pub format: Format,
    pub status: Option<&'a DeviceStatus>,
    /// The events its decoder made.
    pub decoded: &'a [Event],
    /// Its readings (for DSMR counters).
    pub readings: &'a [Reading<'a>],
    /// Its own time, Unix ms.
    pub ts_ms: i64,
}

/// Every meter's memory.
#[derive(Debug)]
pub struct MeterMemory {
    meters: HashMap<Box<str>, Remembered>,
    max_meters: usize,
}

fn code_hash(code: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    code.hash(&mut h);
    h.finish()
}

impl MeterMemory {
    pub fn new(max_meters: usize) -> MeterMemory {
        MeterMemory {
            meters: HashMap::new(),
            max_meters,
        }
    }

    /// The events of a message of `meter_id` in `format` that are news (see the module),
    /// with the changes its `status` shows; `readings` are looked at for DSMR counters;
    /// `ts_ms` is the message's own time. `saved` gives the device state of a meter first
    /// seen in this run.
    pub fn news(
        &mut self,
        message: Message<'_>,
        saved: impl FnOnce() -> Option<Saved>,
    ) -> Vec<Event> {
        let Message {
            meter_id,
            format,
            status,
            decoded,
            readings,
            ts_ms,
        } = message;
        if !self.meters.contains_key(meter_id) {
            if self.meters.len() >= self.max_meters {
                return decoded.to_vec();
            }
            self.meters
                .insert(meter_id.into(), Remembered::from_saved(saved()));
        }
        let Some(m) = self.meters.get_mut(meter_id) else {
            return decoded.to_vec();
        };
        let mut news = Vec::new();
        let mut active = Vec::new();
        let mut logged_through = m.logged_through_ms;
        for e in decoded {
            if e.ongoing {
                let code = code_hash(&e.code);
                active.push(code);
                if !m.active.contains(&code) {
                    news.push(e.clone());
                }
            } else if m.logged_through_ms.is_none_or(|t| e.ts_ms > t) {
                // An entry stamped more than a day after its message (a clock gone wrong) is
                // written, but does not move the mark: it would hide the entries after it.
                if e.ts_ms <= ts_ms.saturating_add(FUTURE_MS) {
                    logged_through = Some(logged_through.map_or(e.ts_ms, |t| t.max(e.ts_ms)));
                }
                news.push(e.clone());
            }
        }
        m.logged_through_ms = logged_through;
        if format == Format::Dsmr {
            m.counters(readings, &mut news);
        }
        if let Some(status) = status {
            news.extend(events::status_changes(
                format,
                (m.flags, m.firmware.as_deref()),
                (status.error_flags, status.firmware.as_deref()),
                ts_ms,
            ));
            if status.error_flags.is_some() {
                m.flags = status.error_flags;
                m.active = active;
            }
            if let Some(firmware) = &status.firmware {
                m.firmware = Some(firmware.as_str().into());
            }
        }
        news
    }
}

impl Remembered {
    fn from_saved(saved: Option<Saved>) -> Remembered {
        let Some(saved) = saved else {
            return Remembered::default();
        };
        // Its open conditions, as its format words them (DLMS alarms are per register: those
        // come again once).
        let active = match (saved.format, saved.flags) {
            (Some(format), Some(flags)) if format != Format::Dlms => {
                events::status_events(format, Some(flags), 0)
                    .iter()
                    .map(|e| code_hash(&e.code))
                    .collect()
            }
            _ => Vec::new(),
        };
        Remembered {
            flags: saved.flags,
            firmware: saved.firmware.map(String::into_boxed_str),
            active,
            ..Remembered::default()
        }
    }

    /// Events of the DSMR counters in `readings` that rose since the last telegram.
    fn counters(&mut self, readings: &[Reading<'_>], news: &mut Vec<Event>) {
        for r in readings {
            let code = r.channel.rsplit_once(':').map_or(&*r.channel, |(_, c)| c);
            let Some(i) = COUNTERS.iter().position(|(c, _)| *c == code) else {
                continue;
            };
            let counters = self.counters.get_or_insert_with(Default::default);
            let before = counters[i].replace(r.value);
            let Some(before) = before else { continue };
            let rose = r.value - before;
            // A fall is a counter reset (a meter exchanged): nothing happened.
            if (1.0..=1000.0).contains(&rose) && rose.fract() == 0.0 {
                let kind = COUNTERS[i].1;
                news.push(Event {
                    kind,
                    ts_ms: r.ts_ms,
                    code: format!("{} +{rose}", r.channel),
                    detail: format!("the meter's counter rose from {before} to {}", r.value),
                    ongoing: false,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn flags(bits: u32) -> DeviceStatus {
        DeviceStatus {
            error_flags: Some(bits),
            ..DeviceStatus::default()
        }
    }

    fn msg<'a>(
        meter_id: &'a str,
        format: Format,
        status: Option<&'a DeviceStatus>,
        decoded: &'a [Event],
        readings: &'a [Reading<'a>],
        ts_ms: i64,
    ) -> Message<'a> {
        Message {
            meter_id,
            format,
            status,
            decoded,
            readings,
            ts_ms,
        }
    }

    fn kinds(events: &[Event]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_condition_is_news_once_and_its_end_too() {
        let mut m = MeterMemory::new(10);
        let status = flags(0x4);
        let cover = events::status_events(Format::Json, status.error_flags, 1);
        let first = m.news(
            msg("E1", Format::Json, Some(&status), &cover, &[], 1),
            || None,
        );
        assert_eq!(kinds(&first), [EventKind::CoverOpen]);
        let again = m.news(
            msg("E1", Format::Json, Some(&status), &cover, &[], 2),
            || None,
        );
        assert!(again.is_empty());
        let closed = m.news(
            msg("E1", Format::Json, Some(&flags(0)), &[], &[], 3),
            || None,
        );
        assert_eq!(kinds(&closed), [EventKind::CoverClosed]);
        // A meter whose saved state has the cover open: not news after a restart.
        let mut after = MeterMemory::new(10);
        let saved = || {
            Some(Saved {
                flags: Some(0x4),
                firmware: None,
                format: Some(Format::Json),
            })
        };
        assert!(after
            .news(
                msg("E1", Format::Json, Some(&status), &cover, &[], 4),
                saved
            )
            .is_empty());
        // Past the cap: every event as it comes.
        let mut small = MeterMemory::new(0);
        let all = small.news(
            msg("E1", Format::Json, Some(&status), &cover, &[], 1),
            || None,
        );
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn a_log_entry_is_news_once_and_a_counter_that_rose_is_events() {
        let mut m = MeterMemory::new(10);
        let failure = |ts_ms| Event {
            kind: EventKind::PowerFailure,
            ts_ms,
            code: "1-0:99.97.0 240".into(),
            detail: String::new(),
            ongoing: false,
        };
        let log = [failure(100), failure(50)];
        let counter = |value: f64| Reading {
            channel: Cow::Borrowed("0-0:96.7.21"),
            ts_ms: 1000,
            value,
            unit: Cow::Borrowed(""),
            quality: 0,
        };
        let readings = [counter(5.0)];
        let first = m.news(msg("P1", Format::Dsmr, None, &log, &readings, 1000), || {
            None
        });
        assert_eq!(
            first.len(),
            2,
            "the log, the counter's first value: nothing"
        );
        let log = [failure(100), failure(50), failure(200)];
        let readings = [counter(7.0)];
        let second = m.news(msg("P1", Format::Dsmr, None, &log, &readings, 2000), || {
            None
        });
        let got: Vec<(EventKind, i64, &str)> = second
            .iter()
            .map(|e| (e.kind, e.ts_ms, e.code.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (EventKind::PowerFailure, 200, "1-0:99.97.0 240"),
                (EventKind::PowerFailure, 1000, "0-0:96.7.21 +2"),
            ]
        );
        // A counter that fell (the meter exchanged): nothing.
        assert!(m
            .news(
                msg("P1", Format::Dsmr, None, &log, &[counter(0.0)], 3000),
                || None
            )
            .is_empty());
    }
}
