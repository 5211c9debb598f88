//! The Parquet read model on files the crate's own sink wrote: values, neighbours, units,
//! order, and what it reads.

use super::*;
use crate::readings::{Channels, Neighbours};
use crate::{ParquetConfig, ParquetSink};
use meterflow_proto::{ReadingBatchBuilder, TextRow};

const D: i64 = 86_400_000;
const H: i64 = 3_600_000;
/// 2024-03-01T00:00:00Z
const T0: i64 = 1_709_251_200_000;

/// (meter, channel, ts, value, unit, received_at)
type Row<'a> = (&'a str, &'a str, i64, f64, &'a str, i64);

/// Writes `rows` as complete files `part-{name}-*` (one per UTC date), row groups of 3 rows.
fn write(dir: &Path, name: &str, rows: &[Row<'_>]) {
    let mut b = ReadingBatchBuilder::default();
    for &(meter_id, channel, ts_ms, value, unit, received_at_ms) in rows {
        b.append_text(&TextRow {
            meter_id,
            channel,
            ts_ms,
            value,
            unit,
            quality: 0,
            received_at_ms,
            source: "mqtt",
            format: "json",
        });
    }
    let config = ParquetConfig {
        row_group_rows: 3,
        ..Default::default()
    };
    let sink = ParquetSink::open_named(dir, config, name).unwrap();
    assert!(!sink.write_named(&b.finish(), name).unwrap().is_empty());
}

/// A reading received a second after it was taken.
fn r<'a>(meter: &'a str, channel: &'a str, ts: i64, value: f64, unit: &'a str) -> Row<'a> {
    (meter, channel, ts, value, unit, ts + 1000)
}

const IMPORT: &str = "1-0:1.8.0";
const EXPORT: &str = "1-0:2.8.0";
const GAS: &str = "0-1:24.2.1";

/// The period 2024-03-10 .. 2024-03-12 with an hour's margin, and data around it.
fn fixture(dir: &Path) {
    // A: import every 6 hours from 03-09 to 03-14 (across every midnight), value 100 + k.
    let a: Vec<Row<'_>> = (0..=20)
        .map(|k| r("A", IMPORT, T0 + 8 * D + k * 6 * H, 100.0 + k as f64, "kWh"))
        .collect();
    write(dir, "a1", &a);
    // Delivered again (at least once): at 03-11 00:00 a copy received earlier (loses) and
    // one received later (wins); at 03-11 06:00 a copy received at the same time with a
    // greater value (wins).
    let t8 = T0 + 10 * D;
    let t9 = t8 + 6 * H;
    write(
        dir,
        "a2",
        &[
            ("A", IMPORT, t8, 999.0, "kWh", t8 + 500),
            ("A", IMPORT, t8, 108.5, "kWh", t8 + 2000),
            ("A", IMPORT, t9, 109.25, "kWh", t9 + 1000),
        ],
    );
    // A: export, a reading an hour before the margin, two in the period, one two days later;
    // and channels that are no cumulative register.
    write(
        dir,
        "a3",
        &[
            r("A", EXPORT, T0 + 2 * D, 1.0, "Wh"),
            r("A", EXPORT, T0 + 8 * D + 22 * H, 4.0, "Wh"),
            r("A", EXPORT, T0 + 9 * D + 12 * H, 5.0, "Wh"),
            r("A", EXPORT, T0 + 10 * D + 23 * H + 30 * 60_000, 6.0, "Wh"),
            r("A", EXPORT, T0 + 12 * D, 7.0, "Wh"),
            r("A", "1-0:1.29.0", T0 + 10 * D, 0.25, "kWh"),
            r("A", "1-0:32.7.0", T0 + 10 * D, 231.0, "V"),
        ],
    );
    // B: import silent for 40 days before the period (the newest of them delivered twice),
    // one reading in the period, nothing after.
    let silent = T0 + 9 * D - 40 * D;
    write(
        dir,
        "b1",
        &[
            r("B", IMPORT, T0 - 35 * D, 45.0, "kWh"),
            ("B", IMPORT, silent, 48.0, "kWh", silent + 1000),
            ("B", IMPORT, silent, 50.0, "kWh", silent + 9000),
            r("B", IMPORT, T0 + 10 * D + 5 * H, 60.0, "kWh"),
        ],
    );
    // B: gas whose newest reading changed unit (the copy received later says dm3).
    let newest = T0 + 10 * D + 12 * H;
    write(
        dir,
        "b2",
        &[
            r("B", GAS, T0 + 9 * D + H, 10.0, "m3"),
            r("B", GAS, T0 + 10 * D, 11.0, "m3"),
            ("B", GAS, newest, 12.0, "ft3", newest + 1000),
            ("B", GAS, newest, 12.5, "dm3", newest + 3000),
        ],
    );
    // C: readings inside both margins, so neither neighbour is added.
    write(
        dir,
        "c1",
        &[
            r("C", IMPORT, T0 + 9 * D - 3 * H, 0.5, "kWh"),
            r("C", IMPORT, T0 + 9 * D - 30 * 60_000, 1.0, "kWh"),
            r("C", IMPORT, T0 + 10 * D, 2.0, "kWh"),
            r("C", IMPORT, T0 + 11 * D + 30 * 60_000, 3.0, "kWh"),
            r("C", IMPORT, T0 + 11 * D + 2 * H, 4.0, "kWh"),
        ],
    );
    // D: nothing in the window: not delivered. a: one reading, no neighbours at all.
    write(
        dir,
        "d1",
        &[
            r("D", IMPORT, T0 + 5 * D, 1.0, "kWh"),
            r("D", IMPORT, T0 + 15 * D, 2.0, "kWh"),
            r("a", IMPORT, T0 + 10 * D, 1.0, "kWh"),
        ],
    );
}

fn request(meter: Option<&str>) -> ReadRequest {
    ReadRequest {
        from_ms: T0 + 9 * D,
        to_ms: T0 + 11 * D,
        margin_ms: H,
        meter: meter.map(str::to_string),
        channels: Channels::CumulativeRegisters,
        neighbours: Neighbours::BeforeAndAfter,
        before_since_ms: None,
        silent_since_ms: None,
    }
}

/// A series as expected, each point received a second after its time (as [`r`] writes it).
fn series(meter: &str, channel: &str, unit: &str, points: &[(i64, f64)]) -> Series {
    Series {
        meter_id: meter.into(),
        channel: channel.into(),
        unit: unit.into(),
        points: points.to_vec(),
        other_units: Vec::new(),
        received_at: points.iter().map(|p| p.0 + 1000).collect(),
        conflicts: Vec::new(),
    }
}

fn expected() -> Vec<Series> {
    let a = |k: i64| T0 + 8 * D + k * 6 * H;
    let mut import: Vec<(i64, f64)> = (3..=12).map(|k| (a(k), 100.0 + k as f64)).collect();
    import[5].1 = 108.5; // k = 8: the copy received later
    import[6].1 = 109.25; // k = 9: the greater value at the same receive time
                          // B's gas: m3, then its newest reading in ft3 and (received later, so it counts) dm3.
    let mut gas = series(
        "B",
        GAS,
        "dm3",
        &[
            (T0 + 9 * D + H, 10.0),
            (T0 + 10 * D, 11.0),
            (T0 + 10 * D + 12 * H, 12.5),
        ],
    );
    gas.other_units = vec!["ft3".into(), "m3".into()];
    // Its newest reading's copy that counts was received 3 s after; the two differ.
    gas.received_at[2] += 2000;
    gas.conflicts = vec![(T0 + 10 * D + 12 * H, vec![12.0, 12.5])];
    // A's import: at 03-11 00:00 the copy that counts came 2 s after; copies of 108, 999
    // and 108.5 there, of 109 and 109.25 at 06:00.
    let mut a_import = series("A", IMPORT, "kWh", &import);
    a_import.received_at[5] += 1000;
    a_import.conflicts = vec![
        (a(8), vec![108.0, 108.5, 999.0]),
        (a(9), vec![109.0, 109.25]),
    ];
    // B's import: its reading before the window (40 days silent) received 9 s after.
    let mut b_import = series(
        "B",
        IMPORT,
        "kWh",
        &[(T0 - 31 * D, 50.0), (T0 + 10 * D + 5 * H, 60.0)],
    );
    b_import.received_at[0] += 8000;
    vec![
        // Before: 03-09 18:00 (none in [23:00, 00:00)); after: none needed (03-12 00:00).
        a_import,
        series(
            "A",
            EXPORT,
            "Wh",
            &[
                (T0 + 8 * D + 22 * H, 4.0),
                (T0 + 9 * D + 12 * H, 5.0),
                (T0 + 10 * D + 23 * H + 30 * 60_000, 6.0),
                (T0 + 12 * D, 7.0),
            ],
        ),
        gas,
        b_import,
        series(
            "C",
            IMPORT,
            "kWh",
            &[
                (T0 + 9 * D - 30 * 60_000, 1.0),
                (T0 + 10 * D, 2.0),
                (T0 + 11 * D + 30 * 60_000, 3.0),
            ],
        ),
        series("a", IMPORT, "kWh", &[(T0 + 10 * D, 1.0)]),
    ]
}

fn read_all(dir: &Path, req: &ReadRequest) -> (Vec<Series>, Scanned) {
    let mut out = Vec::new();
    let scanned = read_counted(dir, req, |s| {
        out.push(s);
        Ok::<_, StorageError>(())
    })
    .unwrap();
    (out, scanned)
}

/// `YYYY-MM-DD` of a Unix day.
fn date(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * D)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

#[test]
fn a_period_reads_its_series_with_duplicates_neighbours_units_in_order() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let (got, scanned) = read_all(dir.path(), &request(None));
    assert_eq!(got, expected());
    let days: Vec<String> = scanned.days.iter().map(|d| date(*d)).collect();
    assert_eq!(
        days,
        [
            // the window, 03-09 23:00 .. 03-12 01:00
            "2024-03-09",
            "2024-03-10",
            "2024-03-11",
            "2024-03-12",
            // backwards for B's import (found on 01-30), B's gas and a (never found)
            "2024-03-06",
            "2024-03-03",
            "2024-01-30",
            "2024-01-26",
            // forwards for A's export (03-13), B and a (never found)
            "2024-03-13",
            "2024-03-14",
            "2024-03-16",
        ]
    );
    assert_eq!(scanned.stray_rows, 0);
}

#[test]
fn one_meter_reads_its_files_and_stops_walking_once_every_series_has_its_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let (all, _) = read_all(dir.path(), &request(None));
    for meter in ["A", "B", "C", "a", "D", "Z"] {
        let (got, _) = read_all(dir.path(), &request(Some(meter)));
        let want: Vec<Series> = all
            .iter()
            .filter(|s| s.meter_id == meter)
            .cloned()
            .collect();
        assert_eq!(got, want, "{meter}");
    }
    let (_, scanned) = read_all(dir.path(), &request(Some("A")));
    let days: Vec<String> = scanned.days.iter().map(|d| date(*d)).collect();
    // A's import found its reading before in the window's first day (row groups wholly
    // before the window, read only then); the export its reading after on 03-13: no
    // further folder is opened.
    assert_eq!(
        days,
        [
            "2024-03-09",
            "2024-03-10",
            "2024-03-11",
            "2024-03-12",
            "2024-03-13"
        ]
    );
    assert!(
        scanned.row_groups_skipped > 0,
        "other meters' files skipped by their statistics: {scanned:?}"
    );
}

#[test]
fn the_margin_and_the_period_edges_decide_the_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    // No margin: [from - 0, from) is empty, so every series gets the reading before (A's
    // import too, though it has one at `from`); a reading at `to` is in the window, so A's
    // import needs none after. C's readings inside the former margins are its neighbours.
    let req = ReadRequest {
        margin_ms: 0,
        ..request(None)
    };
    let (got, _) = read_all(dir.path(), &req);
    let a = |k: i64| T0 + 8 * D + k * 6 * H;
    let import = &got[0];
    assert_eq!(import.points.first(), Some(&(a(3), 103.0)));
    assert_eq!(import.points.get(1), Some(&(a(4), 104.0)));
    assert_eq!(import.points.last(), Some(&(a(12), 112.0)));
    let c = got.iter().find(|s| s.meter_id == "C").unwrap();
    assert_eq!(
        c.points,
        [
            (T0 + 9 * D - 30 * 60_000, 1.0),
            (T0 + 10 * D, 2.0),
            (T0 + 11 * D + 30 * 60_000, 3.0),
        ]
    );
    // A period of one instant still reads its edges.
    let req = ReadRequest {
        from_ms: T0 + 10 * D,
        to_ms: T0 + 10 * D,
        margin_ms: 0,
        meter: Some("C".into()),
        ..request(None)
    };
    let (got, _) = read_all(dir.path(), &req);
    assert_eq!(
        got[0].points,
        [(T0 + 9 * D - 30 * 60_000, 1.0), (T0 + 10 * D, 2.0)],
        "at `to` itself: nothing after is needed"
    );
}

#[test]
fn a_series_silent_through_the_window_is_its_last_reading_when_recent_enough() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    // D's last reading before the window is at 03-06 00:00 (1 kWh); it has none in the
    // window. From 03-06 on it is delivered, between C and a; from a millisecond later not.
    let req = ReadRequest {
        silent_since_ms: Some(T0 + 5 * D),
        ..request(None)
    };
    let (got, scanned) = read_all(dir.path(), &req);
    let mut want = expected();
    let at = want.iter().position(|s| s.meter_id == "a").unwrap();
    want.insert(at, series("D", IMPORT, "kWh", &[(T0 + 5 * D, 1.0)]));
    assert_eq!(got, want);
    assert!(scanned.days.contains(&(T0 / D + 5)), "{scanned:?}");
    let req = ReadRequest {
        silent_since_ms: Some(T0 + 5 * D + 1),
        ..request(None)
    };
    assert_eq!(read_all(dir.path(), &req).0, expected());
    // Its unit is its last reading's; one meter alone reads the same.
    let req = ReadRequest {
        silent_since_ms: Some(T0),
        meter: Some("D".into()),
        ..request(None)
    };
    let (got, _) = read_all(dir.path(), &req);
    assert_eq!(got, [series("D", IMPORT, "kWh", &[(T0 + 5 * D, 1.0)])]);
}

#[test]
fn the_reading_before_is_looked_for_from_before_since_on_only() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    // The reading before only, at most 4 days back: B's import (silent 40 days) and `a`
    // (none ever) get none, and no folder before 03-06 is opened; nothing after the window.
    let req = ReadRequest {
        neighbours: Neighbours::Before,
        before_since_ms: Some(T0 + 5 * D),
        ..request(None)
    };
    let (got, scanned) = read_all(dir.path(), &req);
    let days: Vec<String> = scanned.days.iter().map(|d| date(*d)).collect();
    assert_eq!(
        days,
        [
            "2024-03-09",
            "2024-03-10",
            "2024-03-11",
            "2024-03-12",
            "2024-03-06"
        ]
    );
    let b = got
        .iter()
        .find(|s| s.meter_id == "B" && s.channel == IMPORT)
        .unwrap();
    assert!(b.points.iter().all(|p| p.0 >= T0 + 9 * D - H), "{b:?}");
    let a = got.iter().find(|s| s.meter_id == "a").unwrap();
    assert_eq!(a.points, [(T0 + 10 * D, 1.0)]);
    // A's export has its reading after on 03-13: not asked for.
    let export = got
        .iter()
        .find(|s| s.meter_id == "A" && s.channel == EXPORT)
        .unwrap();
    assert!(export.points.iter().all(|p| p.0 <= T0 + 11 * D + H));
}

#[test]
fn a_meter_new_in_the_period_does_not_make_the_walk_read_the_whole_history() {
    let dir = tempfile::tempdir().unwrap();
    // `old` reads daily at noon for three weeks; `new` is installed on day 20 and has no
    // reading before. Billing's request looks for the reading before as far back as there is
    // one: for `new` there is none, and every older folder is passed, by its row groups'
    // meter-id bloom filters.
    let mut rows: Vec<Row<'_>> = (0..=21)
        .map(|k| r("old", IMPORT, T0 + k * D + 12 * H, k as f64, "kWh"))
        .collect();
    rows.push(r("new", IMPORT, T0 + 20 * D + 6 * H, 1.0, "kWh"));
    write(dir.path(), "h1", &rows);
    let req = ReadRequest {
        from_ms: T0 + 20 * D,
        to_ms: T0 + 21 * D,
        margin_ms: 0,
        ..request(None)
    };
    let (got, scanned) = read_all(dir.path(), &req);
    assert_eq!(
        got,
        [
            series("new", IMPORT, "kWh", &[(T0 + 20 * D + 6 * H, 1.0)]),
            series(
                "old",
                IMPORT,
                "kWh",
                &[
                    (T0 + 19 * D + 12 * H, 19.0),
                    (T0 + 20 * D + 12 * H, 20.0),
                    (T0 + 21 * D + 12 * H, 21.0)
                ]
            ),
        ]
    );
    // Every folder back to the first is passed...
    assert_eq!(scanned.days.len(), 22, "{scanned:?}");
    // ...but read only where `old` still looked (day 19, and day 21 after the period) and
    // the period's own group: 3, and a false positive of the 1 % filters at most.
    assert!(scanned.row_groups_read <= 4, "{scanned:?}");
    assert!(scanned.row_groups_skipped >= 18, "{scanned:?}");
}

#[test]
fn values_that_are_not_numbers_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let t = T0 + 10 * D;
    write(
        dir.path(),
        "n1",
        &[
            r("N", IMPORT, T0 + 7 * D, 10.0, "kWh"),
            // The newer reading before the window is NaN: the one before it is the neighbour.
            r("N", IMPORT, T0 + 8 * D, f64::NAN, "kWh"),
            r("N", IMPORT, t, 12.0, "kWh"),
            // A later copy of the window's reading that is infinite: the finite one counts
            // (on Parquet; ClickHouse keeps only the later copy once it merges its parts).
            ("N", IMPORT, t, f64::INFINITY, "kWh", t + 60_000),
            r("N", IMPORT, t + H, f64::NEG_INFINITY, "kWh"),
            // Only non-numbers in the window: no series.
            r("M", IMPORT, t, f64::NAN, "kWh"),
        ],
    );
    let (got, _) = read_all(dir.path(), &request(None));
    assert_eq!(
        got,
        [series("N", IMPORT, "kWh", &[(T0 + 7 * D, 10.0), (t, 12.0)])]
    );
}

#[test]
fn incomplete_and_hidden_files_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let day = dir.path().join("readings/date=2024-03-10");
    // A file being written, other tools' markers, and other files: none is read.
    fs::write(
        day.join(".part-x-20240310T000000000Z-000000.parquet.tmp"),
        b"PAR1",
    )
    .unwrap();
    fs::write(day.join("_SUCCESS"), b"").unwrap();
    fs::write(day.join("_common_metadata.parquet"), b"PAR1").unwrap();
    fs::write(day.join("notes.txt"), b"hello").unwrap();
    fs::create_dir_all(dir.path().join("readings/date=garbage")).unwrap();
    fs::write(dir.path().join("readings/README"), b"").unwrap();
    let (got, _) = read_all(dir.path(), &request(None));
    assert_eq!(got, expected());
}

#[test]
fn a_corrupt_or_foreign_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let day = dir.path().join("readings/date=2024-03-10");
    let good = fs::read_dir(&day)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    let bytes = fs::read(&good).unwrap();

    // Cut short: no footer.
    let cut = day.join("part-cut.parquet");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_counted(dir.path(), &request(None), |_| Ok::<_, StorageError>(())).unwrap_err();
    assert!(
        matches!(&e, StorageError::ParquetRead { path, .. } if *path == cut),
        "{e}"
    );
    assert!(e.to_string().contains("part-cut.parquet"), "{e}");
    fs::remove_file(&cut).unwrap();

    // Pages overwritten with garbage, footer intact: the row group is named.
    let mut garbled = bytes.clone();
    for b in &mut garbled[4..24] {
        *b = 0xA5;
    }
    let bad = day.join("part-garbled.parquet");
    fs::write(&bad, &garbled).unwrap();
    let e = read_counted(dir.path(), &request(None), |_| Ok::<_, StorageError>(())).unwrap_err();
    assert!(
        matches!(&e, StorageError::ParquetRead { path, row_group: Some(_), .. } if *path == bad),
        "{e}"
    );
    fs::remove_file(&bad).unwrap();

    // Parquet, but not readings: a column missing.
    let foreign = day.join("part-foreign.parquet");
    {
        let batch = RecordBatch::try_from_iter([(
            "meter_id",
            std::sync::Arc::new(StringArray::from(vec!["A"])) as arrow_array::ArrayRef,
        )])
        .unwrap();
        let mut w = ::parquet::arrow::ArrowWriter::try_new(
            File::create(&foreign).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let e = read_counted(dir.path(), &request(None), |_| Ok::<_, StorageError>(())).unwrap_err();
    assert!(
        matches!(&e, StorageError::ForeignParquet { path, reason } if *path == foreign && reason.contains("channel")),
        "{e}"
    );
    assert!(!e.is_retryable());
}

#[test]
fn rows_outside_the_date_of_their_folder_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "x", &[r("E", IMPORT, T0 + 10 * D, 1.0, "kWh")]);
    // Moved by hand into another date's folder.
    let from = dir.path().join("readings/date=2024-03-11");
    let to = dir.path().join("readings/date=2024-03-10");
    fs::rename(&from, &to).unwrap();
    let (got, scanned) = read_all(dir.path(), &request(None));
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(scanned.stray_rows, 1);
}

#[test]
fn the_callback_stops_the_read_and_a_missing_tree_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = read(dir.path(), &request(None), |_| Ok::<_, StorageError>(())).unwrap_err();
    assert!(matches!(e, StorageError::Io { .. }), "{e}");
    fixture(dir.path());
    let mut seen = 0;
    let e = read(dir.path(), &request(None), |_| {
        seen += 1;
        Err(StorageError::ReadRequest {
            reason: "enough".into(),
        })
    })
    .unwrap_err();
    assert_eq!((seen, e.to_string().as_str()), (1, "read request: enough"));
    let bad = ReadRequest {
        meter: Some("no/such".into()),
        ..request(None)
    };
    assert!(read(dir.path(), &bad, |_| Ok::<_, StorageError>(())).is_err());
}

#[test]
fn folder_names_and_file_names() {
    assert_eq!(folder_day("date=1970-01-01"), Some(0));
    assert_eq!(folder_day("date=2024-03-01"), Some(T0 / D));
    assert_eq!(folder_day("date=1969-12-31"), Some(-1));
    for bad in [
        "date=2024-02-30",
        "date=2024-3-01",
        "2024-03-01",
        "date=+024-03-01",
        "date=",
    ] {
        assert_eq!(folder_day(bad), None, "{bad}");
    }
    assert!(is_complete_file("part-x-000001.parquet"));
    assert!(!is_complete_file(".part-x-000001.parquet.tmp"));
    assert!(!is_complete_file("_SUCCESS"));
    assert!(!is_complete_file("part-x.parquet.tmp"));
}

#[test]
fn no_byte_of_a_file_can_make_the_read_panic() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Row<'_>> = (0..7)
        .map(|k| r("A", IMPORT, T0 + 10 * D + k * H, k as f64, "kWh"))
        .collect();
    write(dir.path(), "f", &rows);
    let path = fs::read_dir(dir.path().join("readings/date=2024-03-11"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .next()
        .unwrap();
    let bytes = fs::read(&path).unwrap();
    let (mut read, mut refused) = (0, 0);
    for i in 0..bytes.len() {
        for v in [0x00, 0xFF, bytes[i] ^ 0x80] {
            let mut b = bytes.clone();
            b[i] = v;
            fs::write(&path, &b).unwrap();
            // The parquet crate panics on some of these (caught: see `guarded`).
            match read_counted(dir.path(), &request(None), |_| Ok::<_, StorageError>(())) {
                Ok(_) => read += 1,
                Err(e) => {
                    assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
                    refused += 1;
                }
            }
        }
    }
    assert!(read > 0 && refused > 0, "{read} read, {refused} refused");
}

#[test]
fn summaries_read_from_since_on_and_leave_out_values_that_are_not_numbers() {
    use crate::readings::summary::SummaryRequest;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "s1",
        &[
            r("old", IMPORT, T0, 1.0, "kWh"),
            r("new", IMPORT, T0 + 10 * D, 2.0, "kWh"),
            r("new", IMPORT, T0 + 11 * D, f64::NAN, "kWh"),
        ],
    );
    let read = |since_ms| {
        let req = SummaryRequest {
            since_ms,
            ..SummaryRequest::default()
        };
        summaries(dir.path(), &req)
            .unwrap()
            .into_iter()
            .map(|s| (s.meter_id, s.last_ts_ms, s.last_value))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        read(None),
        [("new".into(), T0 + 10 * D, 2.0), ("old".into(), T0, 1.0)]
    );
    assert_eq!(read(Some(T0 + 5 * D)), [("new".into(), T0 + 10 * D, 2.0)]);
}
