//! The CSV reader's tests: mappings, delimiters, lines and bytes of bad rows, resuming,
//! stamps across DST, values and units, the live checks, and a public load-profile file.

use super::reader::detect_delimiter;
use super::time::Stamp;
use super::units::{conversion, parse_value};
use super::*;
use crate::error::with_causes;
use chrono::NaiveDate;
use chrono_tz::Europe;
use meterflow_decoders::{MAX_CHANNEL_BYTES, MAX_UNIT_BYTES};

/// [`time::parse_time`] with its error as text, to compare.
fn parse_time(text: &str, ts_format: Option<&str>) -> Result<Stamp, String> {
    time::parse_time(text, ts_format).map_err(|e| e.to_string())
}

/// [`super::validate`] with its error as text, to compare.
fn validate(row: &Row, now_ms: i64) -> Result<(), String> {
    super::validate(row, now_ms).map_err(|e| e.to_string())
}

const SPEC: &str = r#"meter_id=EAN,channel="1-0:1.8.0",ts=Timestamp,value=Reading,unit="kWh""#;

fn options(spec: &str) -> CsvOptions {
    CsvOptions::from_mapping(CsvMapping::parse_spec(spec).unwrap())
}

/// Every returned row, and rows_read at the end.
fn read(text: &str, options: &CsvOptions, skip: u64) -> (Vec<Result<Row, BadRow>>, u64) {
    let mut reader = CsvReader::new(text.as_bytes(), options, skip).unwrap();
    let mut rows = Vec::new();
    while let Some(row) = reader.next_row().unwrap() {
        rows.push(row);
    }
    (rows, reader.rows_read())
}

fn good(rows: &[Result<Row, BadRow>]) -> Vec<&Row> {
    rows.iter().map(|r| r.as_ref().unwrap()).collect()
}

fn ts(rows: &[Result<Row, BadRow>]) -> Vec<i64> {
    good(rows).iter().map(|r| r.ts_ms).collect()
}

#[test]
fn spec_parses_columns_constants_positions_and_quotes() {
    let m = CsvMapping::parse_spec(
        r#" meter_id = Meter ID , channel="1-0:1.8.0",ts=#1,value='Value, kWh',unit="k\"Wh",quality=Q,ts_format="%d.%m.%Y, %H:%M""#,
    )
    .unwrap();
    assert_eq!(m.meter_id, Field::Column("Meter ID".into()));
    assert_eq!(m.channel, Field::Constant("1-0:1.8.0".into()));
    assert_eq!(m.ts, Field::Position(1));
    assert_eq!(m.value, Field::Column("Value, kWh".into()));
    assert_eq!(m.unit, Field::Constant("k\"Wh".into()));
    assert_eq!(m.quality, Some(Field::Column("Q".into())));
    assert_eq!(m.ts_format.as_deref(), Some("%d.%m.%Y, %H:%M"));
    assert_eq!((m.scale, m.tz, m.delimiter), (None, None, None));
}

#[test]
fn spec_errors_name_the_target() {
    let base = r#"channel="c",ts=T,value=V,unit="kWh""#;
    for (spec, expected) in [
        (
            format!("meter_id=M,{base},colour=C"),
            "unknown target \"colour\"",
        ),
        (format!("meter_id=M,{base},value=W"), "value is given twice"),
        (format!("meter_id=,{base}"), "meter_id has an empty source"),
        (
            format!("meter_id='',{base}"),
            "meter_id has an empty column name",
        ),
        (
            format!("meter_id=#0,{base}"),
            "meter_id: \"#0\" is not a column position",
        ),
        (
            format!("meter_id=M ts=T,{base}"),
            "meter_id: column name \"M ts=T\"",
        ),
        (
            format!("{base},meter_id=\"M"),
            "meter_id: the \" is not closed",
        ),
        (
            format!("meter_id=\"M\"x,{base}"),
            "meter_id: 'x' after the quoted source",
        ),
        (base.to_string(), "meter_id is missing"),
        (
            r#"meter_id=M,ts=T,value=V,unit="kWh""#.into(),
            "channel is missing",
        ),
        (format!("meter_id=M,{base},"), "\"\" is not target=source"),
        (format!("meter_id=M,{base},=X"), "a source without a target"),
        (
            format!("meter_id=M,{base},ts_format=#2"),
            "ts_format takes a format",
        ),
        (String::new(), "is not target=source"),
    ] {
        let err = CsvMapping::parse_spec(&spec).unwrap_err().to_string();
        assert!(err.contains(expected), "{spec}: {err}");
    }
}

#[test]
fn toml_mapping_with_settings() {
    let m = CsvMapping::from_toml(
        r#"
        meter_id = "EAN"            # a column
        channel = { value = "1-0:1.8.0" }
        ts = { column = 2 }
        ts_format = "%d-%m-%Y %H:%M"
        value = "Reading"
        unit = { value = "kWh" }
        scale = 0.001
        to_unit = "kWh"
        tz = "Europe/Amsterdam"
        delimiter = ";"
        "#,
    )
    .unwrap();
    assert_eq!(m.meter_id, Field::Column("EAN".into()));
    assert_eq!(m.channel, Field::Constant("1-0:1.8.0".into()));
    assert_eq!(m.ts, Field::Position(2));
    assert_eq!(m.unit, Field::Constant("kWh".into()));
    assert_eq!(m.quality, None);
    assert_eq!(m.ts_format.as_deref(), Some("%d-%m-%Y %H:%M"));
    assert_eq!(m.scale, Some(0.001));
    assert_eq!(m.to_unit.as_deref(), Some("kWh"));
    assert_eq!(m.tz, Some(Europe::Amsterdam));
    assert_eq!(m.delimiter, Some(b';'));
    // The file's settings are the starting point; a flag then overrides one.
    let mut o = CsvOptions::from_mapping(m);
    assert_eq!(
        (o.scale, o.tz, o.delimiter),
        (0.001, Some(Europe::Amsterdam), Some(b';'))
    );
    o.scale = 1.0;
    assert_eq!(o.mapping.scale, Some(0.001));
}

#[test]
fn toml_errors() {
    let base = "meter_id = \"M\"\nchannel = { value = \"c\" }\nts = \"T\"\nvalue = \"V\"\n";
    for (extra, expected) in [
        (
            "unit = { value = \"kWh\" }\ncolour = 1",
            "unknown field `colour`",
        ),
        ("", "missing field `unit`"),
        ("unit = 3", "unit must be a column name"),
        ("unit = { column = 0 }", "unit must be a column name"),
        (
            "unit = { value = \"kWh\", column = 1 }",
            "unit must be a column name",
        ),
        (
            "unit = \"U\"\ntz = \"Mars/Olympus\"",
            "not an IANA time zone",
        ),
        (
            "unit = \"U\"\ndelimiter = \";;\"",
            "not one ASCII character",
        ),
        ("unit = \"U\"\nscale = 0", "scale 0 must be"),
        ("unit = \"U\"\nto_unit = \"furlong\"", "to_unit \"furlong\""),
    ] {
        let err = with_causes(&CsvMapping::from_toml(&format!("{base}{extra}")).unwrap_err());
        assert!(err.contains(expected), "{extra}: {err}");
    }
    assert_eq!(parse_delimiter("tab").unwrap(), b'\t');
    assert_eq!(parse_delimiter("\t").unwrap(), b'\t');
    assert!(parse_delimiter("\"").is_err());
}

#[test]
fn semicolons_and_decimal_commas() {
    let text = "EAN;Timestamp;Reading\n\
                E1;2024-03-01 12:00;1234,5\n\
                E1;2024-03-01 12:15; 1234.75 \n\
                E1;2024-03-01 12:30;1.234,5\n";
    let (rows, n) = read(text, &options(SPEC), 0);
    assert_eq!(n, 3);
    let r0 = rows[0].as_ref().unwrap();
    assert_eq!(r0.value, 1234.5);
    assert_eq!((r0.line, r0.meter_id.as_str()), (2, "E1"));
    assert_eq!(
        (r0.channel.as_str(), r0.unit.as_str()),
        ("1-0:1.8.0", "kWh")
    );
    // Naive without tz: UTC.
    assert_eq!(r0.ts_ms, 1_709_294_400_000);
    assert_eq!(rows[1].as_ref().unwrap().value, 1234.75);
    let bad = rows[2].as_ref().unwrap_err();
    assert_eq!(bad.line, 4);
    assert_eq!(
        bad.reason,
        "value \"1.234,5\" is not a finite number (column \"Reading\")"
    );
    // With a comma delimiter a decimal comma would be a field separator: not accepted.
    assert_eq!(parse_value("1234,5", false), None);
}

#[test]
fn wh_column_converted_to_kwh() {
    let text = "EAN,Timestamp,Reading,Unit\n\
                E1,2024-03-01T12:00:00Z,1234.5,Wh\n\
                E1,2024-03-01T12:15:00Z,2,MWh\n\
                E1,2024-03-01T12:30:00Z,3,kWh\n\
                E1,2024-03-01T12:45:00Z,4,m3\n";
    let mut o = options(r#"meter_id=EAN,channel="1-0:1.8.0",ts=Timestamp,value=Reading,unit=Unit"#);
    o.to_unit = Some("kWh".into());
    let (rows, _) = read(text, &o, 0);
    let values: Vec<f64> = rows[..3]
        .iter()
        .map(|r| r.as_ref().unwrap().value)
        .collect();
    // Dividing by the exact 1000 gives the double nearest 1.2345.
    assert_eq!(values, [1.2345, 2000.0, 3.0]);
    assert!(rows[..3].iter().all(|r| r.as_ref().unwrap().unit == "kWh"));
    assert_eq!(
        rows[3].as_ref().unwrap_err().reason,
        "cannot convert m3 to kWh"
    );

    // Scale first, then conversion; and volumes.
    o.scale = 0.5;
    o.to_unit = Some("L".into());
    let (rows, _) = read("EAN,Timestamp,Reading,Unit\nE1,1709294400,3,m³\n", &o, 0);
    assert_eq!(rows[0].as_ref().unwrap().value, 1500.0);
    assert_eq!(rows[0].as_ref().unwrap().unit, "L");
}

#[test]
fn unit_conversions_are_by_prefix_within_a_quantity() {
    let convert = |v: f64, from: &str, to: &str| {
        conversion(from, to)
            .map(|c| c.apply(v))
            .map_err(|e| e.to_string())
    };
    assert_eq!(convert(1.0, "GWh", "kWh"), Ok(1e6));
    assert_eq!(convert(1500.0, "W", "kW"), Ok(1.5));
    assert_eq!(convert(2.0, "Mvarh", "kvarh"), Ok(2000.0));
    assert_eq!(convert(250.0, "var", "kvar"), Ok(0.25));
    assert_eq!(convert(3.0, "kVAh", "VAh"), Ok(3000.0));
    assert_eq!(convert(3.0, "kVA", "VA"), Ok(3000.0));
    assert_eq!(convert(1.0, "m3", "L"), Ok(1000.0));
    assert_eq!(convert(7.0, "V", "V"), Ok(7.0));
    assert_eq!(
        convert(1.0, "Wh", "m3"),
        Err("cannot convert Wh to m3".into())
    );
    assert_eq!(
        convert(1.0, "kWh", "kW"),
        Err("cannot convert kWh to kW".into())
    );
    assert_eq!(
        convert(1.0, "kvarh", "kVAh"),
        Err("cannot convert kvarh to kVAh".into())
    );
    assert_eq!(
        convert(1.0, "KWH", "kWh"),
        Err("cannot convert KWH to kWh".into())
    );
}

#[test]
fn to_unit_is_checked_when_the_reader_is_made() {
    let text = "EAN,Timestamp,Reading\nE1,1709294400,1\n";
    let mut o = options(SPEC);
    o.to_unit = Some("furlong".into());
    let err = CsvReader::new(text.as_bytes(), &o, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("to_unit \"furlong\""), "{err}");
    o.to_unit = Some("m3".into());
    let err = CsvReader::new(text.as_bytes(), &o, 0)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(err, "unit \"kWh\": cannot convert kWh to m3");
    o.to_unit = None;
    o.scale = f64::NAN;
    assert!(CsvReader::new(text.as_bytes(), &o, 0).is_err());
}

#[test]
fn bad_rows_in_the_middle_keep_line_and_bytes() {
    let text = b"EAN,Timestamp,Reading\n\
                E1,2024-03-01T12:00:00Z,1\n\
                \n\
                E1,2024-03-01T12:15:00Z\n\
                E1,not a time,3\n\
                E\xff,2024-03-01T12:45:00Z,4\n\
                \"E,1\",2024-03-01T13:00:00Z,5\n\
                E1,1999-12-31T23:00:00Z,6\n\
                E1,2024-03-01T13:15:00Z,7\n";
    let mut reader = CsvReader::new(&text[..], &options(SPEC), 0).unwrap();
    let mut rows = Vec::new();
    while let Some(row) = reader.next_row().unwrap() {
        rows.push(row);
    }
    assert_eq!(reader.rows_read(), 7);
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[0].as_ref().unwrap().line, 2);
    let bad: Vec<&BadRow> = rows[1..6].iter().map(|r| r.as_ref().unwrap_err()).collect();
    // Line 3 is empty: the csv crate skips it; line numbers stay physical.
    assert_eq!(bad[0].line, 4);
    assert_eq!(bad[0].raw, b"E1,2024-03-01T12:15:00Z");
    assert_eq!(bad[0].reason, "row has 2 fields, the header 3");
    assert_eq!(bad[1].line, 5);
    assert_eq!(bad[1].raw, b"E1,not a time,3");
    assert!(
        bad[1]
            .reason
            .starts_with("time \"not a time\" is not RFC 3339"),
        "{}",
        bad[1].reason
    );
    assert!(
        bad[1].reason.ends_with("(column \"Timestamp\")"),
        "{}",
        bad[1].reason
    );
    assert_eq!(bad[2].line, 6);
    assert_eq!(bad[2].raw, b"E\xff,2024-03-01T12:45:00Z,4");
    assert_eq!(bad[2].reason, "meter_id: column \"EAN\" is not UTF-8");
    assert_eq!(bad[3].line, 7);
    assert_eq!(bad[3].raw, b"\"E,1\",2024-03-01T13:00:00Z,5");
    assert_eq!(
        bad[3].reason,
        "meter_id \"E,1\" must be 1 to 64 characters of [A-Za-z0-9._-]"
    );
    assert_eq!(bad[4].line, 8);
    assert_eq!(
        bad[4].reason,
        "time 946681200000 ms (1999-12-31T23:00:00.000Z) is outside 2000-01-01 .. now + 1 day"
    );
    let last = rows[6].as_ref().unwrap();
    assert_eq!((last.line, last.value), (9, 7.0));
}

#[test]
fn missing_mapped_column_is_named() {
    let text = "EAN;Time;Reading\nE1;1709294400;1\n";
    let err = CsvReader::new(text.as_bytes(), &options(SPEC), 0)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "column \"Timestamp\" (for ts) is not in the header; its columns are \"EAN\", \
         \"Time\", \"Reading\" (read with delimiter ';')"
    );
    let spec = r#"meter_id=EAN,channel="c",ts=#4,value=Reading,unit="kWh""#;
    let err = CsvReader::new(text.as_bytes(), &options(spec), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("column #4 (for ts) is beyond the header's 3 columns"),
        "{err}"
    );
    let err = CsvReader::new(&b""[..], &options(SPEC), 0)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(err, "the CSV file is empty: no header line");
}

#[test]
fn resume_skips_rows_but_counts_them() {
    let text = "EAN,Timestamp,Reading\n\
                E1,1709294400,1\n\
                E1,1709295300,x\n\
                E1,1709296200,3\n\
                E1,1709297100,4\n";
    let (rows, n) = read(text, &options(SPEC), 2);
    assert_eq!(n, 4);
    let rows = good(&rows);
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].line, rows[0].value), (4, 3.0));
    assert_eq!((rows[1].line, rows[1].value), (5, 4.0));
    // Skipping past the end: nothing, and rows_read says how many there were.
    let (rows, n) = read(text, &options(SPEC), 10);
    assert!(rows.is_empty());
    assert_eq!(n, 4);
}

#[test]
fn quoted_fields_with_commas_and_a_bom() {
    let text = "\u{feff}\"Meter, ID\",\"Time\",\"Value, kWh\",Q\n\
                \"E1\",\"2024-03-01 12:00:00\",\"1,5\",\"3\"\n\
                E2,2024-03-01 12:00:00,\"2.5\",\n\
                E3,2024-03-01 12:00:00,2.5,70000\n";
    let spec =
        r#"meter_id='Meter, ID',channel="c",ts=Time,value='Value, kWh',unit="kWh",quality=Q"#;
    let (rows, _) = read(text, &options(spec), 0);
    // Delimiter detected as ',' (commas inside quotes do not count); no decimal comma then.
    assert_eq!(
        rows[0].as_ref().unwrap_err().reason,
        "value \"1,5\" is not a finite number (column \"Value, kWh\")"
    );
    assert_eq!(
        rows[0].as_ref().unwrap_err().raw,
        b"\"E1\",\"2024-03-01 12:00:00\",\"1,5\",\"3\""
    );
    let r = rows[1].as_ref().unwrap();
    assert_eq!((r.meter_id.as_str(), r.value, r.quality), ("E2", 2.5, 0));
    assert_eq!(
        rows[2].as_ref().unwrap_err().reason,
        "quality \"70000\" is not an integer 0 to 65535 (column \"Q\")"
    );
}

#[test]
fn crlf_blank_lines_and_multiline_fields_keep_physical_lines() {
    // The csv crate's own Position::line() says 1, 2, 4, 6 here.
    let text = b"EAN;Timestamp;Reading\r\n\
                 E1;1709294400;1\r\n\
                 \r\n\
                 E1;1709295300;x\r\n\
                 \"E\r\n1\";1709296200;3\r\n\
                 E1;1709297100;4";
    let mut reader = CsvReader::new(&text[..], &options(SPEC), 0).unwrap();
    let mut rows = Vec::new();
    while let Some(row) = reader.next_row().unwrap() {
        rows.push(row);
    }
    assert_eq!(rows[0].as_ref().unwrap().line, 2);
    let bad = rows[1].as_ref().unwrap_err();
    assert_eq!((bad.line, bad.raw.as_slice()), (4, &b"E1;1709295300;x"[..]));
    let bad = rows[2].as_ref().unwrap_err();
    assert_eq!(bad.line, 5);
    assert_eq!(bad.raw, b"\"E\r\n1\";1709296200;3");
    assert!(
        bad.reason.starts_with("meter_id \"E\\r\\n1\""),
        "{}",
        bad.reason
    );
    assert_eq!(rows[3].as_ref().unwrap().line, 7);
    assert_eq!(reader.rows_read(), 4);
}

#[test]
fn lines_stay_right_past_the_kept_window() {
    let mut text = String::from("EAN,Timestamp,Reading\r\n");
    for i in 0..20_000 {
        text.push_str(&format!("E1,{},{}\r\n", 1_709_294_400 + i * 900, i));
    }
    text.push_str("E1,1709294400,oops\r\n");
    let (rows, n) = read(&text, &options(SPEC), 19_990);
    assert_eq!(n, 20_001);
    assert_eq!(rows.len(), 11);
    assert_eq!(rows[0].as_ref().unwrap().line, 19_992);
    let bad = rows[10].as_ref().unwrap_err();
    assert_eq!(
        (bad.line, bad.raw.as_slice()),
        (20_002, &b"E1,1709294400,oops"[..])
    );
}

#[test]
fn delimiter_detection() {
    assert_eq!(detect_delimiter(b"a;b;c\n"), b';');
    assert_eq!(detect_delimiter(b"a\tb\tc\r\n"), b'\t');
    assert_eq!(detect_delimiter(b"\"a;b\",c\n"), b',');
    assert_eq!(detect_delimiter(b"abc\n"), b',');
    let text = "EAN\tTimestamp\tReading\nE1\t1709294400\t1,5\n";
    let reader = CsvReader::new(text.as_bytes(), &options(SPEC), 0).unwrap();
    assert_eq!(reader.delimiter(), b'\t');
}

#[test]
fn dst_spring_in_amsterdam() {
    // 2024-03-31: 02:00 CET jumps to 03:00 CEST at 01:00Z; 02:00-02:59 does not exist
    // and reads as standard time (UTC+1), like an unflagged DSMR time.
    let text = "EAN,Timestamp,Reading\n\
                E1,2024-03-31 01:45,1\n\
                E1,2024-03-31 02:00,2\n\
                E1,2024-03-31 02:30,3\n\
                E1,2024-03-31 03:00,4\n\
                E1,2024-03-31T03:15:00.500,5\n";
    let mut o = options(SPEC);
    o.tz = Some(Europe::Amsterdam);
    let (rows, _) = read(text, &o, 0);
    assert_eq!(
        ts(&rows),
        [
            1_711_845_900_000, // 00:45Z
            1_711_846_800_000, // 01:00Z (02:00 read as +01:00)
            1_711_848_600_000, // 01:30Z
            1_711_846_800_000, // 01:00Z (03:00 CEST)
            1_711_847_700_500, // 01:15:00.5Z
        ]
    );
}

#[test]
fn dst_autumn_in_amsterdam() {
    // 2024-10-27: 03:00 CEST falls back to 02:00 CET at 01:00Z; exports list 02:00-02:45
    // twice. Two meters interleaved: each series keeps its own last instant.
    let mut text = String::from("EAN,Timestamp,Reading\n");
    let wall = [
        "01:45", "02:00", "02:15", "02:30", "02:45", "02:00", "02:15", "02:30", "02:45", "03:00",
    ];
    for w in wall {
        for meter in ["E1", "E2"] {
            text.push_str(&format!("{meter},2024-10-27 {w},1\n"));
        }
    }
    let mut o = options(SPEC);
    o.tz = Some(Europe::Amsterdam);
    let (rows, _) = read(&text, &o, 0);
    const MIN: i64 = 60_000;
    let first = 1_729_986_300_000; // 2024-10-26T23:45Z
    let expected: Vec<i64> = (0..10).flat_map(|i| [first + i * 15 * MIN; 2]).collect();
    assert_eq!(ts(&rows), expected);
    assert_eq!(ts(&rows)[2], 1_729_987_200_000); // first 02:00 = 00:00Z
    assert_eq!(ts(&rows)[10], 1_729_990_800_000); // second 02:00 = 01:00Z
    assert_eq!(ts(&rows)[18], 1_729_994_400_000); // 03:00 CET = 02:00Z

    // Resuming inside the repeated hour gives the same instants: skipped rows set the state.
    let (resumed, n) = read(&text, &o, 11);
    assert_eq!(n, 20);
    assert_eq!(ts(&resumed), expected[11..]);
}

#[test]
fn epoch_seconds_and_milliseconds() {
    assert_eq!(
        parse_time("1709294400", None),
        Ok(Stamp::Utc(1_709_294_400_000))
    );
    assert_eq!(
        parse_time("1709294400123", None),
        Ok(Stamp::Utc(1_709_294_400_123))
    );
    assert_eq!(
        parse_time("99999999999", None),
        Ok(Stamp::Utc(99_999_999_999_000))
    );
    assert_eq!(
        parse_time("100000000000", None),
        Ok(Stamp::Utc(100_000_000_000))
    );
    // tz does not apply to Unix times.
    let text = "EAN,Timestamp,Reading\nE1,1709294400,1\nE1,1709294400500,2\n";
    let mut o = options(SPEC);
    o.tz = Some(Europe::Amsterdam);
    let (rows, _) = read(text, &o, 0);
    assert_eq!(ts(&rows), [1_709_294_400_000, 1_709_294_400_500]);
}

#[test]
fn rfc3339_with_offsets() {
    let expected = Ok(Stamp::Utc(1_729_988_100_000)); // 2024-10-27T00:15:00Z
    for text in [
        "2024-10-27T02:15:00+02:00",
        "2024-10-27 00:15:00Z",
        "2024-10-27T00:15Z",
        "2024-10-26T19:15:00-0500",
        "2024-10-27 02:15:00 +02",
        "2024-10-27T00:15:00.000z",
    ] {
        assert_eq!(parse_time(text, None), expected, "{text}");
    }
    assert_eq!(
        parse_time("2024-10-27", None),
        Ok(Stamp::Local(
            NaiveDate::from_ymd_opt(2024, 10, 27)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
        ))
    );
    for text in [
        "2024-10-27T02:15:00+2",
        "2024-10-27T02:15:00+24:00",
        "27-10-2024 02:15",
        "",
        "-5",
    ] {
        assert!(parse_time(text, None).is_err(), "{text}");
    }
    // An offset is exact: tz does not shift it.
    let text = "EAN,Timestamp,Reading\nE1,2024-10-27T02:15:00+02:00,1\n";
    let mut o = options(SPEC);
    o.tz = Some(Europe::Amsterdam);
    assert_eq!(ts(&read(text, &o, 0).0), [1_729_988_100_000]);
}

#[test]
fn ts_format_reads_other_layouts() {
    let text = "EAN;Datum;Stand\nE1;27-10-2024 03:15;1\nE1;27.10.2024;2\n";
    let mut o = options(
        r#"meter_id=EAN,channel="c",ts=Datum,value=Stand,unit="kWh",ts_format="%d-%m-%Y %H:%M""#,
    );
    o.tz = Some(Europe::Amsterdam);
    let (rows, _) = read(text, &o, 0);
    assert_eq!(rows[0].as_ref().unwrap().ts_ms, 1_729_995_300_000); // 02:15Z
    assert_eq!(
        rows[1].as_ref().unwrap_err().reason,
        "time \"27.10.2024\" does not match ts_format \"%d-%m-%Y %H:%M\" (column \"Datum\")"
    );
    let day = parse_time("27.10.2024", Some("%d.%m.%Y")).unwrap();
    assert_eq!(
        day,
        Stamp::Local(
            NaiveDate::from_ymd_opt(2024, 10, 27)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
        )
    );
    let exact = parse_time("27-10-2024 02:15 +0200", Some("%d-%m-%Y %H:%M %z")).unwrap();
    assert_eq!(exact, Stamp::Utc(1_729_988_100_000));
}

#[test]
fn validate_applies_the_live_limits() {
    let now = 1_730_000_000_000;
    let row = Row {
        line: 2,
        meter_id: "E0001".into(),
        channel: "1-0:1.8.0".into(),
        ts_ms: now,
        value: 1.0,
        unit: "kWh".into(),
        quality: 0,
    };
    assert_eq!(validate(&row, now), Ok(()));
    let check = |f: &dyn Fn(&mut Row)| {
        let mut r = row.clone();
        f(&mut r);
        validate(&r, now).unwrap_err()
    };
    assert_eq!(
        check(&|r| r.meter_id = "a b".into()),
        "meter_id \"a b\" must be 1 to 64 characters of [A-Za-z0-9._-]"
    );
    assert_eq!(check(&|r| r.channel.clear()), "no channel");
    assert_eq!(
        check(&|r| r.channel = "x".repeat(MAX_CHANNEL_BYTES + 1)),
        "channel is 129 bytes, at most 128"
    );
    assert_eq!(
        check(&|r| r.unit = "x".repeat(MAX_UNIT_BYTES + 1)),
        "unit is 33 bytes, at most 32"
    );
    assert_eq!(check(&|r| r.value = f64::NAN), "value NaN is not finite");
    assert_eq!(
        check(&|r| r.ts_ms = now + MAX_AHEAD_MS + 1),
        "time 1730086400001 ms (2024-10-28T03:33:20.001Z) is outside 2000-01-01 .. now + 1 day"
    );
    assert_eq!(
        validate(
            &Row {
                ts_ms: EARLIEST_TS_MS,
                ..row.clone()
            },
            now
        ),
        Ok(())
    );
}

/// A public file: the BDEW standard load profiles as demandlib 0.2.2 ships them
/// (`demandlib/bdew/bdew_data/selp_series.csv`, MIT; data published by BDEW), see
/// `import/tests/fixtures/load_profiles/SOURCES.md`. Its first column has an empty name and holds
/// naive quarter-hour stamps; 21 typical days of 96 rows each.
#[test]
fn reads_the_bdew_selp_series() {
    const PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/load_profiles/selp_series.csv"
    );
    let text = std::fs::read_to_string(PATH).unwrap();
    let data_lines = text.lines().count() as u64 - 1;
    assert_eq!(data_lines, 2016);
    let mut o = options(r#"meter_id="h0-profile",channel="h0",ts=#1,value=h0,unit="kWh""#);
    o.tz = Some(Europe::Berlin);
    let file = std::fs::File::open(PATH).unwrap();
    let mut reader = CsvReader::new(file, &o, 0).unwrap();
    let mut rows = Vec::new();
    while let Some(row) = reader.next_row().unwrap() {
        rows.push(row.unwrap());
    }
    assert_eq!(reader.rows_read(), data_lines);
    assert_eq!(rows.len() as u64, data_lines);
    let first = &rows[0];
    // 2007-01-01 00:00 CET = 2006-12-31T23:00:00Z.
    assert_eq!(first.ts_ms, 1_167_606_000_000);
    assert_eq!(first.value, 0.08636);
    assert_eq!((first.line, first.meter_id.as_str()), (2, "h0-profile"));
    assert_eq!((first.channel.as_str(), first.unit.as_str()), ("h0", "kWh"));
    let last = &rows[rows.len() - 1];
    // 2007-01-21 23:45 CET = 22:45Z.
    assert_eq!(
        (last.ts_ms, last.value, last.line),
        (1_169_419_500_000, 0.08072, 2017)
    );
}
