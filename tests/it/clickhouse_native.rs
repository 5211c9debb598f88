//! The ClickHouse writer against the real server: Native blocks built from the Arrow batch
//! read back exactly (plain and LowCardinality columns, and RowBinary as the fallback), and
//! batches that waited during an outage go in as one merged insert, confirmed in order.

use crate::harness::{wait_for, ClickHouse};
use arrow_array::RecordBatch;
use meterflow_proto::{Format, ReadingBatchBuilder, RowMeta, Source};
use meterflow_storage::clickhouse::{
    schema_ddl, table_layout, ClickHouseConfig, ClickHouseWriter, InsertFormat, ReadingsNative,
    ServerVersion, SideRows, StatusRow, Topology,
};

/// One row as the test compares it: every column, times in seconds (this server stores
/// `DateTime`), the value's bits.
type Row = (String, String, i64, u64, String, u16, i64, String, String);

/// Rows with what a Native encoder can get wrong: multi-byte and empty strings, a 128-byte
/// channel, more distinct channels than a UInt8 index holds, extreme floats, the largest
/// quality, times across a DST switch.
fn edge_batch() -> RecordBatch {
    let mut b = ReadingBatchBuilder::default();
    let long = "c".repeat(128);
    let channels: Vec<String> = (0..300).map(|i| format!("ch-{i}")).collect();
    let values = [0.1, -0.0, 1e300, f64::MIN_POSITIVE, 123_456_789.123, -42.5];
    for (m, meter) in ["m-1", "Zähler_2", "m.3"].iter().enumerate() {
        let meta = RowMeta {
            meter_id: meter,
            received_at_ms: 1_729_990_000_000 + m as i64 * 1000,
            source: [Source::Mqtt, Source::Coap, Source::Bridge][m],
            format: [Format::Pb, Format::Dsmr, Format::SenmlCbor][m],
        };
        for (k, channel) in channels.iter().enumerate() {
            let ts = 1_729_987_200_000 + k as i64 * 900_000; // 2024-10-27 00:00Z on
            b.append(
                &meta,
                channel,
                ts,
                values[k % values.len()],
                "kWh",
                k as u16,
            );
        }
        b.append(&meta, &long, 1_729_987_200_000, 7.0, "", u16::MAX);
        b.append(&meta, "1-0:1.8.0", 1_729_987_200_000, 8.0, "m³", 0);
    }
    b.finish()
}

fn rows_of(batch: &RecordBatch) -> Vec<Row> {
    let c = meterflow_proto::ReadingColumns::of(batch).unwrap();
    let mut rows: Vec<Row> = (0..c.len())
        .map(|i| {
            (
                c.meter_id.value(i).to_string(),
                c.channel.value(i).to_string(),
                c.ts.value(i).div_euclid(1000),
                c.value.value(i).to_bits(),
                c.unit.value(i).to_string(),
                c.quality.value(i),
                c.received_at.value(i).div_euclid(1000),
                c.source.value(i).to_string(),
                c.format.value(i).to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn rows_in(ch: &ClickHouse, db: &str) -> Vec<Row> {
    let text = ch.query(&format!(
        "SELECT meter_id, channel, toUnixTimestamp(ts), value, unit, quality, \
         toUnixTimestamp(received_at), source, format FROM {db}.readings FORMAT TabSeparated"
    ));
    let mut rows: Vec<Row> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let value: f64 = match f[3] {
                "inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            (
                f[0].into(),
                f[1].into(),
                f[2].parse().unwrap(),
                value.to_bits(),
                f[4].into(),
                f[5].parse().unwrap(),
                f[6].parse().unwrap(),
                f[7].into(),
                f[8].into(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn writer(url: &str, db: &str, tune: impl FnOnce(&mut ClickHouseConfig)) -> ClickHouseWriter {
    let mut config = ClickHouseConfig {
        url: url.into(),
        database: db.into(),
        retry_initial_ms: 50,
        retry_max_ms: 200,
        ..Default::default()
    };
    tune(&mut config);
    ClickHouseWriter::start(config, None, meterflow_storage::ShutdownSignal::never()).unwrap()
}

fn wait_confirmed(w: &ClickHouseWriter, through: u64) {
    wait_for("the writer to confirm", || {
        (w.confirmed_through() >= through && w.pending() == 0).then_some(())
    });
}

#[test]
fn native_blocks_read_back_exactly_in_every_column_layout() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let ch = ClickHouse::shared();
    let batch = edge_batch();
    let want = rows_of(&batch);

    // meterflow's own schema on this server (String, DateTime), Native and RowBinary.
    for format in [InsertFormat::Native, InsertFormat::RowBinary] {
        let db = ClickHouse::fresh_database("native");
        let mut w = writer(&ch.url, &db, |c| c.insert_format = format);
        w.send(batch.clone(), SideRows::default(), 1).unwrap();
        wait_confirmed(&w, 1);
        w.close();
        assert_eq!(rows_in(&ch, &db), want, "{format:?}");
        assert!(w.take_rejected().is_empty());
        ch.query(&format!("DROP DATABASE {db}"));
    }

    // A table with LowCardinality strings (as current servers get; experimental on 18.16):
    // dictionaries of 4 to 302 keys, UInt8 and UInt16 indexes.
    let db = ClickHouse::fresh_database("native_lc");
    ch.query(&format!("CREATE DATABASE {db}"));
    let create = format!(
        "CREATE TABLE {db}.readings (meter_id String, channel LowCardinality(String), \
         ts DateTime, value Float64, unit LowCardinality(String), quality UInt16, \
         received_at DateTime, source LowCardinality(String), format LowCardinality(String)) \
         ENGINE = ReplacingMergeTree(received_at) PARTITION BY toYYYYMM(ts) \
         ORDER BY (meter_id, channel, ts)"
    );
    // The rest of meterflow's schema (the rollups inherit the LowCardinality columns).
    let version = ServerVersion::parse(&ch.query("SELECT version()")).unwrap();
    for statement in std::iter::once(create).chain(schema_ddl(&db, version, 0, Topology::Single)) {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--fail-with-body",
                "--data-binary",
                &statement,
                &format!("{}/?allow_experimental_low_cardinality_type=1", ch.url),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let mut w = writer(&ch.url, &db, |c| {
        c.settings
            .insert("allow_experimental_low_cardinality_type".into(), "1".into());
    });
    w.send(batch.clone(), SideRows::default(), 1).unwrap();
    // A second block in the same insert, with other dictionaries.
    let mut small = ReadingBatchBuilder::default();
    let meta = RowMeta {
        meter_id: "m-9",
        received_at_ms: 1_729_990_000_000,
        source: Source::Mqtt,
        format: Format::Json,
    };
    small.append(&meta, "only", 1_729_987_200_000, 1.25, "W", 1);
    let small = small.finish();
    w.send(small.clone(), SideRows::default(), 2).unwrap();
    wait_confirmed(&w, 2);
    w.close();
    assert!(w.take_rejected().is_empty());
    let mut want_lc = want.clone();
    want_lc.extend(rows_of(&small));
    want_lc.sort();
    assert_eq!(rows_in(&ch, &db), want_lc);
    assert_eq!(
        ch.query(&format!(
            "SELECT toTypeName(channel) FROM {db}.readings LIMIT 1"
        ))
        .trim(),
        "LowCardinality(String)"
    );
    // The same rows sent by hand as the encoder makes them for this table's layout, with no
    // fallback behind it: the LowCardinality block itself must be what the server reads.
    let config = ClickHouseConfig {
        url: ch.url.clone(),
        database: db.clone(),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layout = runtime.block_on(table_layout(&config)).unwrap();
    let native = layout
        .readings_native
        .expect("the encoder writes this layout");
    let mut body = Vec::new();
    native.encode_block(&batch, &mut body).unwrap();
    ch.query(&format!("TRUNCATE TABLE {db}.readings"));
    let body_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body_file.path(), &body).unwrap();
    let insert = format!(
        "{}/?query=INSERT%20INTO%20{db}.readings%20({})%20FORMAT%20Native",
        ch.url,
        ReadingsNative::column_list().replace(' ', "%20")
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail-with-body", "--data-binary"])
        .arg(format!("@{}", body_file.path().display()))
        .arg(&insert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(rows_in(&ch, &db), want);
    ch.query(&format!("DROP DATABASE {db}"));
}

/// A batch of `rows` readings of meter `meter`, and a status row for the side table.
fn job(meter: usize, rows: usize) -> (RecordBatch, SideRows) {
    let id = format!("merge-{meter:03}");
    let mut b = ReadingBatchBuilder::default();
    let meta = RowMeta {
        meter_id: &id,
        received_at_ms: 1_719_900_000_000,
        source: Source::Mqtt,
        format: Format::Pb,
    };
    for k in 0..rows {
        b.append(
            &meta,
            "1-0:1.8.0",
            1_719_792_000_000 + k as i64 * 900_000,
            k as f64,
            "kWh",
            0,
        );
    }
    let mut side = SideRows::default();
    side.statuses.push(StatusRow {
        meter_id: id,
        at_ms: 1_719_900_000_000,
        battery_pct: Some(50),
        source: "mqtt".into(),
        lsn: meter as u64 + 1,
        ..Default::default()
    });
    side.note_lsn(meter as u64 + 1);
    (b.finish(), side)
}

#[test]
fn batches_that_waited_during_an_outage_go_in_as_one_insert() {
    let ch = ClickHouse::private();
    let db = ClickHouse::fresh_database("merge");
    let mut w = writer(&ch.url, &db, |c| {
        c.queue_batches = 32;
        c.max_inflight_inserts = 1;
        c.max_insert_rows = 20_000;
    });
    // The schema is applied and the first job inserted while the server is up.
    let (batch, side) = job(0, 1000);
    w.send(batch, side, 1).unwrap();
    wait_confirmed(&w, 1);
    ch.kill();
    // Twenty jobs wait in the queue while the first of them is retried.
    for meter in 1..=20 {
        let (batch, side) = job(meter, 1000);
        w.send(batch, side, meter as u64 + 1).unwrap();
    }
    assert!(
        w.confirmed_through() == 1 && w.pending() == 20,
        "nothing confirmed while ClickHouse is away"
    );
    ch.start();
    wait_confirmed(&w, 21);
    w.close();
    assert_eq!(
        ch.query(&format!(
            "SELECT count(), uniqExact(meter_id) FROM {db}.readings"
        ))
        .trim(),
        "21000\t21"
    );
    assert_eq!(
        ch.query(&format!("SELECT count() FROM {db}.device_status"))
            .trim(),
        "21"
    );
    // Parts made by inserts (level 0, listed a while after merges): the first job, the
    // unit retried through the outage (the writer may have taken a few jobs into it), then
    // everything that waited behind it as one insert.
    let parts: Vec<u64> = ch
        .query(&format!(
            "SELECT rows FROM system.parts WHERE database = '{db}' AND table = 'readings' \
             AND level = 0 ORDER BY min_block_number FORMAT TabSeparated"
        ))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(parts[0], 1000, "{parts:?}");
    assert!((2..=3).contains(&parts.len()), "{parts:?}");
    assert_eq!(parts.iter().sum::<u64>(), 21_000);
}
