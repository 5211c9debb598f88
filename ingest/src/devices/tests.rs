//! The device state: what an observation changes (a replayed one counts once), the bounds,
//! pages and list scans, the state file, and snapshots from ClickHouse.

use super::*;

fn observe(
    r: &DeviceRegistry,
    at: i64,
    readings: &[(&'static str, i64, f64, &'static str)],
    status: Option<&DeviceStatus>,
) {
    let mut it = readings.iter().copied();
    r.observe(Observation {
        meter_id: "m1",
        lsn: 0,
        received_at_ms: at,
        source: "mqtt",
        format: "json",
        decode_error: false,
        seq: Some(at as u64),
        rows: readings.len() as u64,
        status,
        readings: &mut it,
    });
}

#[test]
fn keeps_the_newest_value_per_channel_and_merges_status() {
    let r = DeviceRegistry::new(DevicesConfig::default());
    let s1 = DeviceStatus {
        battery_pct: Some(90),
        firmware: Some("1.0".into()),
        ..Default::default()
    };
    observe(
        &r,
        10,
        &[("a", 100, 1.0, "kWh"), ("b", 100, 5.0, "V")],
        Some(&s1),
    );
    let s2 = DeviceStatus {
        rssi_dbm: Some(-70),
        ..Default::default()
    };
    observe(
        &r,
        20,
        &[("a", 50, 0.5, "kWh"), ("b", 200, 6.0, "V")],
        Some(&s2),
    );
    let d = r.get("m1").unwrap();
    assert_eq!(
        (d.first_seen_ms, d.last_seen_ms, d.messages, d.rows),
        (10, 20, 2, 4)
    );
    assert_eq!(
        d.last_values["a"].value, 1.0,
        "an older reading does not replace a newer one"
    );
    assert_eq!(d.last_values["b"].value, 6.0);
    assert_eq!(d.status.battery_pct, Some(90));
    assert_eq!(d.status.rssi_dbm, Some(-70));
    assert_eq!(d.status.firmware.as_deref(), Some("1.0"));
    assert_eq!(d.last_seq, Some(20));
}

#[test]
fn state_survives_save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let r = DeviceRegistry::new(DevicesConfig::default());
    observe(&r, 10, &[("a", 100, 1.0, "kWh")], None);
    r.note_dead_letter("m1", 0, note(11));
    r.save(dir.path()).unwrap();
    let back = DeviceRegistry::load(dir.path(), DevicesConfig::default()).unwrap();
    let mut saved = r.all();
    saved[0].recent.clear(); // recent readings are not saved
    assert_eq!(saved[0].heard_here_ms, 10);
    saved[0].heard_here_ms = 0; // nor what this node heard in this run
    assert_eq!(back.all(), saved);
    assert_eq!(back.get("m1").unwrap().recent_dead_letters.len(), 1);
    assert!(
        DeviceRegistry::load(&dir.path().join("none"), DevicesConfig::default())
            .unwrap()
            .is_empty()
    );
}

fn note(at: i64) -> DeadLetterNote {
    DeadLetterNote {
        received_at_ms: at,
        kind: "malformed".into(),
        reason: format!("bad at {at}"),
        bytes: 3,
    }
}

#[test]
fn every_table_is_bounded() {
    let config = DevicesConfig {
        max_devices: 3,
        recent_points: 4,
        ..DevicesConfig::default()
    };
    let r = DeviceRegistry::new(config);
    for i in 0..10 {
        let id = format!("m{i}");
        let mut it = std::iter::once(("a", i, 1.0, "kWh"));
        r.observe(Observation {
            meter_id: &id,
            lsn: 0,
            received_at_ms: i,
            source: "mqtt",
            format: "json",
            decode_error: false,
            seq: None,
            rows: 1,
            status: None,
            readings: &mut it,
        });
    }
    assert_eq!(r.len(), 3, "new meters past max_devices are not tracked");
    for i in 0..10 {
        observe(
            &r,
            i,
            &[("a", i, i as f64, "kWh"), ("b", i, 0.0, "V")],
            None,
        );
        r.note_dead_letter("m1", 0, note(i));
    }
    let d = r.get("m1").unwrap();
    assert_eq!(d.recent["a"].len(), 4, "recent_points per channel");
    assert_eq!(d.recent["a"].back(), Some(&(9, 9.0)));
    assert_eq!(d.recent["b"].len(), 4);
    assert_eq!(d.recent_dead_letters.len(), RECENT_DEAD_LETTERS);
    assert_eq!(d.recent_dead_letters.back().unwrap().received_at_ms, 9);
    // The count by kind keeps every one, beyond the recent few.
    let kind = d.recent_dead_letters.back().unwrap().kind.clone();
    assert_eq!(d.dead_letters_by_kind.get(&kind), Some(&10));
}

#[test]
fn pages_follow_the_cursor_and_the_stale_filter() {
    let r = DeviceRegistry::new(DevicesConfig::default());
    for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let mut it = std::iter::empty();
        r.observe(Observation {
            meter_id: id,
            lsn: 0,
            received_at_ms: i as i64 * 1000,
            source: "mqtt",
            format: "json",
            decode_error: false,
            seq: None,
            rows: 0,
            status: None,
            readings: &mut it,
        });
    }
    let ids = |p: &Page| {
        p.devices
            .iter()
            .map(|d| d.meter_id.clone())
            .collect::<Vec<_>>()
    };
    let p1 = r.page(None, 2, None, 10_000);
    assert_eq!(
        (ids(&p1), p1.next_cursor.as_deref()),
        (vec!["a".into(), "b".into()], Some("b"))
    );
    let p2 = r.page(p1.next_cursor.as_deref(), 2, None, 10_000);
    assert_eq!(ids(&p2), vec!["c", "d"]);
    let p3 = r.page(p2.next_cursor.as_deref(), 2, None, 10_000);
    assert_eq!((ids(&p3), p3.next_cursor), (vec!["e".into()], None));
    // Not heard for 7 s at t = 10 s: a (0 s), b (1 s), c (2 s), d (3 s).
    let stale = r.page(None, 10, Some(7000), 10_000);
    assert_eq!(ids(&stale), vec!["a", "b", "c", "d"]);
    assert_eq!(stale.next_cursor, None);
    // b was last heard at 1 s.
    let d = r.get("b").unwrap();
    let config = DevicesConfig {
        amber_after_s: 5,
        red_after_s: 9,
        ..DevicesConfig::default()
    };
    let health = |now| crate::fleet::assess(&d, None, now, &config).health;
    assert_eq!(health(5_000), Health::Green);
    assert_eq!(health(6_000), Health::Amber);
    assert_eq!(health(10_000), Health::Red);
}

#[test]
fn snapshots_fill_in_what_the_file_did_not_know() {
    let r = DeviceRegistry::new(DevicesConfig::default());
    observe(&r, 100, &[("a", 100, 1.0, "kWh")], None);
    let snap = |id: &str, last: i64| DeviceSnapshot {
        meter_id: id.into(),
        first_seen_ms: 1,
        last_seen_ms: last,
        rows: 7,
        last_source: "mqtt".into(),
        last_format: "pb".into(),
        last_values: vec![(
            "a".into(),
            meterflow_storage::analytics::SnapshotValue {
                ts_ms: last,
                value: 2.0,
                unit: "kWh".into(),
            },
        )],
        battery_pct: Some(50),
        status_at_ms: Some(last),
        ..Default::default()
    };
    // m1 is newer in the file: its newer value and last seen stay, the earlier first
    // seen and the status it never had are taken; m2 is unknown: taken whole.
    assert_eq!(r.merge_snapshots(vec![snap("m1", 50), snap("m2", 500)]), 2);
    let m1 = r.get("m1").unwrap();
    assert_eq!(
        (m1.last_values["a"].value, m1.last_seen_ms, m1.first_seen_ms),
        (1.0, 100, 1)
    );
    assert_eq!(m1.status.battery_pct, Some(50));
    let m2 = r.get("m2").unwrap();
    assert_eq!(
        (m2.last_seen_ms, m2.rows, m2.status.battery_pct),
        (500, 7, Some(50))
    );
    assert_eq!(m2.last_values["a"].value, 2.0);
}

#[test]
fn a_replayed_message_is_not_counted_twice() {
    let r = DeviceRegistry::new(DevicesConfig::default());
    let seen = |lsn: u64| {
        let mut it = std::iter::once(("a", 5, 1.0, "kWh"));
        r.observe(Observation {
            meter_id: "m1",
            lsn,
            received_at_ms: 10,
            source: "mqtt",
            format: "json",
            decode_error: false,
            seq: None,
            rows: 1,
            status: None,
            readings: &mut it,
        });
    };
    for lsn in [1, 2, 3, 2, 3, 4] {
        seen(lsn);
    }
    let d = r.get("m1").unwrap();
    assert_eq!((d.messages, d.rows, d.last_lsn), (4, 4, 4));
    seen(0);
    assert_eq!(
        r.get("m1").unwrap().messages,
        5,
        "not from the WAL: always counted"
    );
}

#[test]
fn a_list_request_scans_a_bounded_part_and_says_where_to_go_on() {
    let r = DeviceRegistry::new(DevicesConfig::default());
    {
        let mut map = r.write();
        for i in 0..(SCAN_BUDGET + 10) {
            let id = format!("m{i:07}");
            map.insert(
                id.clone(),
                DeviceState {
                    meter_id: id,
                    last_seen_ms: 1000,
                    ..Default::default()
                },
            );
        }
        map.get_mut("m0000005").unwrap().last_seen_ms = 0; // the one stale meter, early
        let last = format!("m{:07}", SCAN_BUDGET + 5);
        map.get_mut(&last).unwrap().last_seen_ms = 0; // and one past the first scan
    }
    let first = r.page(None, 10, Some(500), 1000);
    assert_eq!(first.devices.len(), 1);
    let cursor = first.next_cursor.expect("the scan stopped at its budget");
    let second = r.page(Some(&cursor), 10, Some(500), 1000);
    assert_eq!(second.devices.len(), 1);
    assert_eq!(
        second.devices[0].meter_id,
        format!("m{:07}", SCAN_BUDGET + 5)
    );
    assert_eq!(second.next_cursor, None);
}

#[test]
fn a_snapshot_does_not_overwrite_newer_local_state() {
    let r = DeviceRegistry::new(DevicesConfig::default());
    let fresh = DeviceStatus {
        battery_pct: Some(90),
        ..Default::default()
    };
    observe(&r, 5_000, &[("a", 5_000, 9.0, "kWh")], Some(&fresh));
    let snap = DeviceSnapshot {
        meter_id: "m1".into(),
        first_seen_ms: 100,
        last_seen_ms: 4_000,
        rows: 50,
        last_source: "mqtt".into(),
        last_format: "pb".into(),
        last_values: vec![
            (
                "a".into(),
                meterflow_storage::analytics::SnapshotValue {
                    ts_ms: 4_000,
                    value: 8.0,
                    unit: "kWh".into(),
                },
            ),
            (
                "b".into(),
                meterflow_storage::analytics::SnapshotValue {
                    ts_ms: 4_000,
                    value: 230.0,
                    unit: "V".into(),
                },
            ),
        ],
        battery_pct: Some(20),
        firmware: Some("1.0".into()),
        status_at_ms: Some(4_000),
        ..Default::default()
    };
    assert_eq!(r.merge_snapshots(vec![snap]), 1);
    let d = r.get("m1").unwrap();
    assert_eq!(d.first_seen_ms, 100, "the earlier first seen");
    assert_eq!(d.last_seen_ms, 5_000, "the later last seen");
    assert_eq!(d.last_values["a"].value, 9.0, "the newer value stays");
    assert_eq!(
        d.last_values["b"].value, 230.0,
        "a channel only ClickHouse knew"
    );
    assert_eq!(d.status.battery_pct, Some(90), "the newer status stays");
    assert_eq!(
        d.status.firmware.as_deref(),
        Some("1.0"),
        "a field we never had"
    );
    assert_eq!(d.rows, 50);
}
