//! The way back, with real faults: nothing acknowledged is lost or stored twice when the
//! process is killed between a checkpoint and a ClickHouse insert, when ClickHouse fails one
//! table of a job, when an insert's answer is lost after the server committed it, or when the
//! WAL's disk fills up.

use std::path::Path;
use std::time::Duration;

use crate::harness::{
    config_file, free_port, mosquitto_pub_acked as publish, read_readings, wait_for, ClickHouse,
    LossyProxy, Server,
};

fn count(ch: &ClickHouse, sql: &str) -> u64 {
    ch.query(sql).trim().parse().unwrap_or(0)
}

fn report(ts_ms: i64, value: f64) -> String {
    format!(
        r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":{ts_ms},"value":{value},"unit":"kWh"}}]}}"#
    )
}

/// The checkpoint's `ALL` part: through which LSN every sink has confirmed.
fn checkpoint_all(data_dir: &Path) -> u64 {
    meterflow_storage::wal::read_checkpoint(data_dir).map_or(0, |c| c.all)
}

/// Whether `db` has `table` yet (the writer applies the schema before its first insert).
fn has_table(ch: &ClickHouse, db: &str, table: &str) -> bool {
    count(
        ch,
        &format!("SELECT count() FROM system.tables WHERE database = '{db}' AND name = '{table}'"),
    ) == 1
}

/// `serve` with ClickHouse at `url` (quick retries, 100 ms batches) once its schema is
/// applied and a first row is in, with merges of the side tables stopped, so that raw
/// counts show every insert.
fn warm_server(ch: &ClickHouse, url: &str, db: &str) -> (Server, tempfile::TempDir) {
    let (dir, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\nretry_initial_ms = 50\nretry_max_ms = 200\n[batch]\nmax_age_ms = 100\n"
    ));
    let server = Server::start_with(&["--config", &config]);
    assert!(publish(
        server.mqtt_port,
        "meters/warm-up/json",
        &report(1_719_792_000_000, 1.0)
    ));
    wait_for("the schema and the first row", || {
        (has_table(ch, db, "readings")
            && count(ch, &format!("SELECT count() FROM {db}.readings")) == 1)
            .then_some(())
    });
    ch.query(&format!("SYSTEM STOP MERGES {db}.device_status"));
    ch.query(&format!("SYSTEM STOP MERGES {db}.dead_letters"));
    ch.query(&format!("SYSTEM STOP MERGES {db}.events"));
    (server, dir)
}

/// Defect 1 of issue 10: a status report and a dead letter waited for ClickHouse beside the
/// batcher while rows of a later record were in it; the checkpoint passed them, and a kill -9
/// lost them from `device_status` and `dead_letters`.
#[test]
fn status_and_dead_letter_rows_waiting_for_clickhouse_survive_a_kill_9() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_side_kill");
    // Run 1: ClickHouse is away, batches wait: the five messages are in the WAL only.
    let (_c1, away) = config_file(&format!(
        "[clickhouse]\nurl = \"http://127.0.0.1:{}\"\ndatabase = \"{db}\"\nretry_initial_ms = 50\nretry_max_ms = 200\n\
         [batch]\nmax_rows = 1000\nmax_age_ms = 600000\n",
        free_port()
    ));
    let server = Server::start_with(&["--config", &away]);
    let port = server.mqtt_port;
    assert!(publish(
        port,
        "meters/cp-a/json",
        &report(1_719_792_000_000, 1.0)
    ));
    assert!(publish(
        port,
        "meters/cp-b/json",
        &report(1_719_792_000_000, 2.0)
    ));
    assert!(publish(
        port,
        "meters/cp-s/status",
        r#"{"battery_pct": 41}"#
    ));
    assert!(publish(port, "meters/cp-d/json", "{not json"));
    assert!(publish(
        port,
        "meters/cp-c/json",
        &report(1_719_792_000_000, 3.0)
    ));
    let tmp = server.crash();

    // Run 2 replays them: a and b make a full batch (inserted, its Parquet file complete);
    // the status and the dead letter wait for the next batch; c waits in the batcher.
    let (_c2, slow) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n\
         [batch]\nmax_rows = 2\nmax_age_ms = 600000\n[parquet]\nfile_max_rows = 1\n",
        ch.url
    ));
    let server = Server::start_in(tmp, &["--config", &slow]);
    let data_dir = server.data_dir.clone();
    wait_for(
        "the first batch in ClickHouse and a checkpoint after it",
        || {
            (has_table(&ch, &db, "readings")
                && count(&ch, &format!("SELECT count() FROM {db}.readings")) == 2
                && checkpoint_all(&data_dir) >= 2)
                .then_some(())
        },
    );
    // A second more of checkpoints, then the kill.
    std::thread::sleep(Duration::from_millis(1500));
    let all = checkpoint_all(&data_dir);
    let tmp = server.crash();
    assert!(
        all <= 2,
        "the checkpoint passed records whose status and dead-letter rows were not in ClickHouse (checkpoint {all})"
    );

    // Run 3: the replay brings them in.
    let (_c3, quick) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n[batch]\nmax_age_ms = 100\n",
        ch.url
    ));
    let server = Server::start_in(tmp, &["--config", &quick]);
    wait_for("c's row in ClickHouse", || {
        (count(
            &ch,
            &format!("SELECT count() FROM {db}.readings WHERE meter_id = 'cp-c'"),
        ) == 1)
            .then_some(())
    });
    let (exit, _, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
    assert_eq!(
        count(
            &ch,
            &format!("SELECT count() FROM {db}.device_status FINAL WHERE meter_id = 'cp-s'")
        ),
        1,
        "the status report is in device_status once"
    );
    assert_eq!(
        count(
            &ch,
            &format!(
                "SELECT count() FROM {db}.dead_letters FINAL WHERE topic = 'meters/cp-d/json'"
            )
        ),
        1,
        "the dead letter is in dead_letters once"
    );
    ch.query(&format!("DROP DATABASE {db}"));
}

/// Defect 2: a job's readings insert failed after its status and dead-letter rows went in;
/// the retry inserted those again. Each table is now its own retry unit.
#[test]
fn a_failed_readings_insert_does_not_insert_the_side_rows_again() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_part_retry");
    let (server, _cfg) = warm_server(&ch, &ch.url, &db);
    // The readings insert of the next job fails (the table is gone) until the writer applies
    // the schema again.
    ch.query(&format!("DROP TABLE {db}.readings"));
    // One message, one job: a status, a partial dead letter (a bad reading) and a row.
    let payload = r#"{"readings":[{"channel":"1-0:1.8.0","ts":1719792000000,"value":5.0,"unit":"kWh"},
        {"channel":"1-0:1.8.0","ts":"yesterday","value":6.0,"unit":"kWh"}],
        "status":{"battery_pct":77}}"#;
    assert!(publish(server.mqtt_port, "meters/pr-1/json", payload));
    wait_for("the row in the table made again", || {
        (has_table(&ch, &db, "readings")
            && count(
                &ch,
                &format!("SELECT count() FROM {db}.readings WHERE meter_id = 'pr-1'"),
            ) == 1)
            .then_some(())
    });
    let (exit, _, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(
        log.contains("ClickHouse insert failed; retrying"),
        "the fault happened"
    );
    assert_eq!(
        count(
            &ch,
            &format!("SELECT count() FROM {db}.device_status WHERE meter_id = 'pr-1'")
        ),
        1,
        "the status was inserted once"
    );
    assert_eq!(
        count(
            &ch,
            &format!("SELECT count() FROM {db}.dead_letters WHERE meter_id = 'pr-1'")
        ),
        1,
        "the dead letter was inserted once"
    );
    ch.query(&format!("DROP DATABASE {db}"));
}

/// Defect 2, the other half: an insert whose answer was lost after the server committed it
/// is sent again; the side tables take the repeat without a second row.
#[test]
fn a_side_row_insert_whose_answer_was_lost_is_stored_once() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_lost_answer");
    let proxy = LossyProxy::start(&ch.url);
    let (server, _cfg) = warm_server(&ch, &proxy.url, &db);
    for (table, topic, payload, column) in [
        (
            "device_status",
            "meters/la-s/status",
            r#"{"battery_pct": 12}"#,
            "meter_id = 'la-s'",
        ),
        (
            "dead_letters",
            "meters/la-d/json",
            "{broken",
            "meter_id = 'la-d'",
        ),
        (
            "events",
            "meters/la-e/status",
            r#"{"error_flags": 4}"#,
            "meter_id = 'la-e' AND kind = 'cover_open'",
        ),
    ] {
        let lost_before = proxy.lost();
        proxy.lose_answer_to(&format!("{db}.{table}"));
        assert!(publish(server.mqtt_port, topic, payload));
        wait_for("the answer lost and the insert sent again", || {
            (proxy.lost() > lost_before
                && count(
                    &ch,
                    &format!("SELECT count() FROM {db}.{table} WHERE {column}"),
                ) >= 2)
                .then_some(())
        });
        assert_eq!(
            count(
                &ch,
                &format!("SELECT count() FROM {db}.{table} FINAL WHERE {column}")
            ),
            1,
            "{table}: the repeated insert is one row"
        );
        ch.query(&format!("SYSTEM START MERGES {db}.{table}"));
        ch.query(&format!("OPTIMIZE TABLE {db}.{table} FINAL"));
        assert_eq!(
            count(
                &ch,
                &format!("SELECT count() FROM {db}.{table} WHERE {column}")
            ),
            1,
            "{table}: one row after merges"
        );
    }
    let (exit, _, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
    ch.query(&format!("DROP DATABASE {db}"));
}

/// Defect 4: a WAL write that failed (the disk full) was kept in the write buffer and landed
/// at the next commit, so a publish that was never acknowledged was stored, and stored again
/// when the device sent it again.
#[test]
fn a_publish_refused_on_a_full_wal_disk_is_stored_once_when_sent_again() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = crate::harness::small_disk::SmallDisk::mount(&tmp.path().join("data/wal"), 1 << 20);
    let server = Server::start_in(tmp, &[]);
    // Big reports (100 rows, about 8 KiB), so each needs new pages of the WAL's disk.
    let big = |meter: usize| {
        let rows: Vec<String> = (0..100)
            .map(|i| {
                format!(
                    r#"{{"channel":"1-0:1.8.0","ts":{},"value":{}.5,"unit":"kWh"}}"#,
                    1_719_792_000_000i64 + i * 900_000,
                    meter * 1000 + i as usize
                )
            })
            .collect();
        format!(r#"{{"readings":[{}]}}"#, rows.join(","))
    };
    let port = server.mqtt_port;
    for meter in 1..=3 {
        assert!(publish(
            port,
            &format!("meters/fd-{meter}/json"),
            &big(meter)
        ));
    }
    disk.fill();
    let refused: Vec<usize> = (4..=6)
        .filter(|meter| !publish(port, &format!("meters/fd-{meter}/json"), &big(*meter)))
        .collect();
    assert!(!refused.is_empty(), "the full disk refused publishes");
    disk.free();
    // The devices send again what was not acknowledged, and go on.
    for meter in refused.iter().copied().chain([7]) {
        assert!(publish(
            port,
            &format!("meters/fd-{meter}/json"),
            &big(meter)
        ));
    }
    let (exit, data_dir, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("WAL commit failed"), "the fault happened");
    let rows = read_readings(&data_dir);
    drop(disk);
    for meter in 1..=7 {
        let n = rows
            .iter()
            .filter(|r| r.meter_id == format!("fd-{meter}"))
            .count();
        assert_eq!(n, 100, "fd-{meter}: every row once");
    }
}
