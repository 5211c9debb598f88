//! The energy a meter used each local day, by billing's rule: per register, the positive
//! steps of its value from R(day start) to R(day end) (edges read, interpolated or carried
//! as a bill finds them; resets counted on from the new value), in kWh; import registers
//! minus export registers (a prosumer's export lowers what its feeder head measures). A day
//! without a reading of its own, or whose value at an edge had to be carried (no reading
//! within billing's interpolation gap), is not known: `None`, never 0, so that a missing read
//! is not taken for theft.

use chrono::NaiveDate;
use chrono::Timelike;
use meterflow_billing::{kwh_per, register_name, step, Bill, Query, ReadKind, Reading, Step, Zone};

/// The local days of `[from_ms, to_ms)` in `zone`, each with its bill (23 or 25 hours on
/// DST days).
pub struct Days {
    days: Vec<(NaiveDate, Bill)>,
}

impl Days {
    /// Whole local days from the one holding `from_ms` to the one before `to_ms`'s.
    pub fn new(zone: Zone, from_ms: i64, to_ms: i64, max_gap_ms: i64) -> Days {
        let mut days = Vec::new();
        let mut day = zone.local(from_ms).date();
        loop {
            let start = zone.midnight(day);
            if start >= to_ms {
                break;
            }
            let Some(next) = day.succ_opt() else { break };
            let bill = Bill::new(Query {
                from_ms: start,
                to_ms: zone.midnight(next),
                zone,
                tariff: None,
                max_gap_ms,
            });
            days.push((day, bill));
            day = next;
        }
        Days { days }
    }

    pub fn dates(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.days.iter().map(|(d, _)| *d)
    }

    pub fn len(&self) -> usize {
        self.days.len()
    }

    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// The end of the last day, Unix ms (the start of the first without days).
    pub fn end_ms(&self) -> Option<i64> {
        self.days.last().map(|(_, b)| b.query().to_ms)
    }

    /// The end of day `i`, Unix ms.
    pub fn end_of(&self, i: usize) -> i64 {
        self.days[i].1.query().to_ms
    }

    /// The start of day `i`, Unix ms.
    pub fn start_ms(&self, i: usize) -> i64 {
        self.days[i].1.query().from_ms
    }
}

/// One meter's energy per day, built register by register.
#[derive(Debug, Clone)]
pub struct MeterDays {
    /// Per day, per kind of register (import total, import tariffs, export total, export
    /// tariffs): what is known of it.
    days: Vec<[Slot; 4]>,
}

/// What is known of one kind of register on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Slot {
    /// No register of the kind.
    #[default]
    Absent,
    Known(f64),
    /// A register of the kind could not be known that day (an edge carried).
    Unknown,
}

impl Slot {
    fn add(self, kwh: Option<f64>) -> Slot {
        match (self, kwh) {
            (Slot::Unknown, _) | (_, None) => Slot::Unknown,
            (Slot::Absent, Some(k)) => Slot::Known(k),
            (Slot::Known(a), Some(k)) => Slot::Known(a + k),
        }
    }

    /// The total if there is one, else the tariffs.
    fn or(self, tariffs: Slot) -> Slot {
        if self == Slot::Absent {
            tariffs
        } else {
            self
        }
    }
}

/// Which kind of register `channel` is: import total, import tariff, export total, export
/// tariff; `None` for others.
fn slot_of(channel: &str) -> Option<usize> {
    let name = register_name(channel);
    Some(match name.as_str() {
        "import total" => 0,
        n if n.starts_with("import tariff") => 1,
        "export total" => 2,
        n if n.starts_with("export tariff") => 3,
        _ => return None,
    })
}

impl MeterDays {
    pub fn new(days: &Days) -> MeterDays {
        MeterDays {
            days: vec![[Slot::Absent; 4]; days.len()],
        }
    }

    /// Adds one register's readings (sorted by time, one per instant). Registers that are
    /// not active energy import or export (1.8.x, 2.8.x in Wh, kWh or MWh) are left out;
    /// returns whether it was taken.
    pub fn add_register(
        &mut self,
        days: &Days,
        channel: &str,
        unit: &str,
        readings: &[Reading],
        rollover: Option<f64>,
    ) -> bool {
        let Some(slot) = slot_of(channel) else {
            return false;
        };
        let Some(scale) = kwh_per(unit) else {
            return false;
        };
        for (i, (_, bill)) in days.days.iter().enumerate() {
            let row = bill.register("", channel, unit, readings, rollover);
            // Known: a reading that day, and both edges read or interpolated.
            let kwh = row
                .first()
                .filter(|r| {
                    r.readings > 0
                        && r.start.kind != ReadKind::Carried
                        && r.end.kind != ReadKind::Carried
                })
                .map(|r| r.consumption * scale);
            let kind = &mut self.days[i][slot];
            *kind = kind.add(kwh);
        }
        true
    }

    /// Net energy per day, kWh: import (the total register, else the sum of the tariff
    /// registers) minus export (the same; none is 0); `None` for a day the import or export
    /// could not be known, or for a meter without an import register.
    pub fn net_kwh(&self) -> Vec<Option<f64>> {
        self.days
            .iter()
            .map(
                |[import_total, import_tariffs, export_total, export_tariffs]| {
                    let import = match import_total.or(*import_tariffs) {
                        Slot::Known(k) => k,
                        _ => return None,
                    };
                    let export = match export_total.or(*export_tariffs) {
                        Slot::Known(k) => k,
                        Slot::Absent => 0.0,
                        Slot::Unknown => return None,
                    };
                    Some(import - export)
                },
            )
            .collect()
    }

    /// Import energy per day, kWh (`None` when not known, or without an import register).
    pub fn import_kwh(&self) -> Vec<Option<f64>> {
        self.days
            .iter()
            .map(|[total, tariffs, _, _]| match total.or(*tariffs) {
                Slot::Known(k) => Some(k),
                _ => None,
            })
            .collect()
    }

    /// Makes the register `channel` not known on every day (its readings came in more than
    /// one unit).
    pub fn spoil(&mut self, channel: &str) {
        if let Some(slot) = slot_of(channel) {
            for day in &mut self.days {
                day[slot] = Slot::Unknown;
            }
        }
    }

    /// Export energy per day, kWh (0 without an export register; `None` when not known).
    pub fn export_kwh(&self) -> Vec<Option<f64>> {
        self.days
            .iter()
            .map(|[_, _, total, tariffs]| match total.or(*tariffs) {
                Slot::Known(k) => Some(k),
                Slot::Absent => Some(0.0),
                Slot::Unknown => None,
            })
            .collect()
    }
}

/// The shape of a meter's day: its import energy by local hour, before and from a time on
/// (interval data only: steps between readings at most [`SHAPE_MAX_STEP_MS`] apart, each
/// put in the hour its interval starts in), and the energy its import register ran back.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Per kind of import register (total, tariffs): by hour before, by hour from `split`.
    hours: [[[f64; 24]; 2]; 2],
    seen: [bool; 2],
    /// kWh by which an import register fell without a reset (ran back), from `split` on.
    pub ran_back_kwh: f64,
}

/// Readings further apart than this are not interval data: their step says nothing of the
/// hour it was used in.
pub const SHAPE_MAX_STEP_MS: i64 = 2 * 3_600_000;

impl Shape {
    /// Adds an import register's readings (others are left out) from `[.., end_ms)`, split
    /// at `split_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_register(
        &mut self,
        zone: &Zone,
        split_ms: i64,
        end_ms: i64,
        channel: &str,
        unit: &str,
        readings: &[Reading],
        rollover: Option<f64>,
    ) {
        let name = register_name(channel);
        let kind = match name.as_str() {
            "import total" => 0,
            n if n.starts_with("import tariff") => 1,
            _ => return,
        };
        let Some(scale) = kwh_per(unit) else { return };
        self.seen[kind] = true;
        for pair in readings.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.ts_ms >= end_ms || b.ts_ms - a.ts_ms > SHAPE_MAX_STEP_MS {
                continue;
            }
            let stepped = step(a.value, b.value, rollover);
            let during = a.ts_ms >= split_ms;
            if stepped == Step::Reverse && during {
                self.ran_back_kwh += (a.value - b.value) * scale;
            }
            let hour = zone.local(a.ts_ms).hour() as usize;
            self.hours[kind][usize::from(during)][hour] += stepped.consumption() * scale;
        }
    }

    /// By local hour: before the split, and from it on (the total register's, else the
    /// tariff registers' summed).
    pub fn hours(&self) -> ([f64; 24], [f64; 24]) {
        let kind = if self.seen[0] { 0 } else { 1 };
        (self.hours[kind][0], self.hours[kind][1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn zone() -> Zone {
        Zone::parse("Europe/Berlin", "tz").unwrap()
    }

    #[test]
    fn days_are_local_and_dst_days_are_23_or_25_hours() {
        let z = zone();
        // 2025-03-29 .. 2025-04-01 local: the 30th has 23 hours.
        let from = z.midnight(NaiveDate::from_ymd_opt(2025, 3, 29).unwrap());
        let to = z.midnight(NaiveDate::from_ymd_opt(2025, 4, 1).unwrap());
        let days = Days::new(z, from, to, HOUR);
        assert_eq!(days.len(), 3);
        assert_eq!(days.start_ms(2) - days.start_ms(1), 23 * HOUR);
    }

    #[test]
    fn net_energy_is_import_minus_export_and_a_carried_edge_is_unknown() {
        let z = zone();
        let from = z.midnight(NaiveDate::from_ymd_opt(2025, 6, 1).unwrap());
        let days = Days::new(z, from, from + 2 * 24 * HOUR, 2 * HOUR);
        // Import: 10 kWh on day 1, then silent (day 2's end is beyond the gap: unknown).
        let import: Vec<Reading> = (0..=24)
            .map(|h| Reading {
                ts_ms: from + h * HOUR,
                value: 100.0 + h as f64 * 10.0 / 24.0,
            })
            .collect();
        // Export in Wh: 2000 Wh on day 1.
        let export: Vec<Reading> = (0..=24)
            .map(|h| Reading {
                ts_ms: from + h * HOUR,
                value: h as f64 * 2000.0 / 24.0,
            })
            .collect();
        let mut m = MeterDays::new(&days);
        assert!(m.add_register(&days, "1-0:1.8.0", "kWh", &import, None));
        assert!(m.add_register(&days, "1-0:2.8.0", "Wh", &export, None));
        assert!(!m.add_register(&days, "1-0:32.7.0", "V", &import, None));
        let net = m.net_kwh();
        assert!((net[0].unwrap() - 8.0).abs() < 1e-9, "{net:?}");
        assert_eq!(net[1], None);
        // Tariff registers add up when there is no total.
        let mut t = MeterDays::new(&days);
        t.add_register(&days, "1-0:1.8.1", "kWh", &import, None);
        t.add_register(&days, "1-0:1.8.2", "kWh", &import, None);
        assert!((t.net_kwh()[0].unwrap() - 20.0).abs() < 1e-9);
    }

    #[test]
    fn a_shape_puts_each_interval_in_its_local_hour_and_counts_a_register_run_back() {
        let z = zone();
        let from = z.midnight(NaiveDate::from_ymd_opt(2025, 6, 1).unwrap());
        // 1 kWh in each hour, 3 in the local hour 18; on day 2 the register runs back 0.5.
        let mut value = 0.0;
        let mut readings = vec![Reading { ts_ms: from, value }];
        for h in 0..48 {
            value += if h % 24 == 18 { 3.0 } else { 1.0 };
            if h == 30 {
                value -= 1.5; // ran back: 1 used, 1.5 taken off
            }
            readings.push(Reading {
                ts_ms: from + (h + 1) * HOUR,
                value,
            });
        }
        let mut shape = Shape::default();
        shape.add_register(
            &z,
            from + 24 * HOUR,
            from + 48 * HOUR,
            "1-0:1.8.0",
            "kWh",
            &readings,
            None,
        );
        shape.add_register(
            &z,
            from + 24 * HOUR,
            from + 48 * HOUR,
            "1-0:32.7.0",
            "V",
            &readings,
            None,
        );
        let (before, during) = shape.hours();
        assert_eq!(before[18], 3.0);
        assert_eq!(before[17], 1.0);
        assert_eq!(during[6], 0.0);
        assert_eq!(during[18], 3.0);
        assert!((shape.ran_back_kwh - 0.5).abs() < 1e-9);
    }
}
