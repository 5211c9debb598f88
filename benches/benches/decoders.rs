//! Decoder throughput: rows per second from payload bytes into an Arrow batch, per format,
//! beside bare `prost` decoding of the same protobuf reports (the reference: what decoding
//! costs before any row is built).
//!
//! Payloads: `meterflow simulate`'s generator (the same reports a load run sends), a
//! SenML-CBOR pack of the same readings, a real DSMR 5.0 telegram from the vectors, and a real
//! ciphered DLMS push (Landis+Gyr E450: HDLC, three general-block-transfer blocks,
//! AES-128-GCM with a tag, 17 objects) opened with its meter's keys.
//! Run: `cargo bench -p meterflow-benches --bench decoders`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meterflow_decoders::dlms::{decode_push, KeyLookup, Keys};
use meterflow_decoders::{decode, DecodeContext, Format};
use meterflow_proto::{pb, ReadingBatchBuilder, RowMeta, Source};
use meterflow_simulate::{Plan, Shape};
use prost::Message;

const REPORTS: usize = 1000;

/// (meter_id, payload) of each report.
type Payloads = Vec<(String, Vec<u8>)>;
const NOW_MS: i64 = 1_719_792_000_000;

fn plan(format: Format, shape: Shape) -> Plan {
    Plan {
        meters: REPORTS,
        messages: 1,
        format,
        shape,
        start_ms: 1_719_792_000_000,
        interval_s: 900,
        prefix: "bench-".into(),
    }
}

/// One report per meter; (meter_id, payload).
fn payloads(format: Format, shape: Shape) -> Payloads {
    let p = plan(format, shape);
    (0..REPORTS)
        .map(|m| (p.meter_id(m), p.payload(m, 0)))
        .collect()
}

/// The readings of the simulated reports as SenML-CBOR packs (labels of RFC 8428 section 6).
fn senml_cbor_payloads() -> Payloads {
    let p = plan(Format::Senml, Shape::Readings);
    (0..REPORTS)
        .map(|m| {
            let rows = p.expected_rows(m, 0);
            let mut e = minicbor::Encoder::new(Vec::new());
            e.array(rows.len() as u64).unwrap();
            for (i, r) in rows.iter().enumerate() {
                e.map(if i == 0 { 5 } else { 3 }).unwrap();
                if i == 0 {
                    e.i8(-2)
                        .unwrap()
                        .str(&format!("urn:dev:mf:{}:", p.meter_id(m)))
                        .unwrap();
                    e.i8(-3).unwrap().i64(r.ts_ms / 1000).unwrap();
                }
                e.u8(0).unwrap().str(r.channel).unwrap();
                e.u8(1).unwrap().str(r.unit).unwrap();
                e.u8(2).unwrap().f64(r.value).unwrap();
            }
            (p.meter_id(m), e.into_writer())
        })
        .collect()
}

fn dsmr_payloads() -> Payloads {
    let telegram =
        include_bytes!("../../decoders/tests/fixtures/dsmr/ndokter_dsmr_parser/TELEGRAM_V5.txt");
    (0..REPORTS)
        .map(|m| (format!("bench-{m:06}"), telegram.to_vec()))
        .collect()
}

/// The L+G E450 push of the vectors (esphome-libs/dlms_parser, Apache-2.0; keys published
/// there), once per meter.
fn dlms_payloads() -> Payloads {
    let text = include_str!(
        "../../decoders/tests/fixtures/dlms/esphome_dlms_parser/hdlc_landis_gyr_e450.hex"
    );
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(str::chars)
        .filter(char::is_ascii_hexdigit)
        .collect();
    let push: Vec<u8> = (0..digits.len() / 2)
        .map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    (0..REPORTS)
        .map(|m| (format!("bench-{m:06}"), push.clone()))
        .collect()
}

fn hex16(text: &str) -> [u8; 16] {
    let v: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Opens and decodes every DLMS push with its keys and appends its rows to one Arrow batch.
fn decode_dlms_into_batch(payloads: &[(String, Vec<u8>)]) -> usize {
    let keys = Keys {
        ek: hex16("5C316162209EBB790B52EB0E7FC5B11C"),
        ak: Some(hex16("92705C5C97286064EABAE38D190F87A4")),
    };
    let lookup = |_: &[u8; 8]| KeyLookup::Keys(keys.clone());
    let mut builder = ReadingBatchBuilder::with_capacity(payloads.len() * 16);
    let mut rows = 0;
    for (meter_id, payload) in payloads {
        let push = decode_push(payload, NOW_MS, &lookup, None).expect("the bench push decodes");
        let meta = RowMeta {
            meter_id,
            received_at_ms: NOW_MS,
            source: Source::Mqtt,
            format: Format::Dlms,
        };
        rows += push.decoded.append_to(&mut builder, &meta);
    }
    let batch = builder.finish();
    assert_eq!(batch.num_rows(), rows);
    rows
}

/// Decodes every payload and appends its rows to one Arrow batch; returns the rows.
fn decode_into_batch(format: Format, payloads: &[(String, Vec<u8>)]) -> usize {
    let mut builder = ReadingBatchBuilder::with_capacity(payloads.len() * 8);
    let mut rows = 0;
    for (meter_id, payload) in payloads {
        let ctx = DecodeContext {
            meter_id,
            received_at_ms: NOW_MS,
        };
        let decoded = decode(format, payload, &ctx).expect("bench payloads decode");
        let meta = RowMeta {
            meter_id,
            received_at_ms: NOW_MS,
            source: Source::Mqtt,
            format,
        };
        rows += decoded.append_to(&mut builder, &meta);
    }
    let batch = builder.finish();
    assert_eq!(batch.num_rows(), rows);
    rows
}

fn bench_decoders(c: &mut Criterion) {
    let cases: Vec<(&str, Format, Payloads)> = vec![
        (
            "pb/readings",
            Format::Pb,
            payloads(Format::Pb, Shape::Readings),
        ),
        ("pb/series", Format::Pb, payloads(Format::Pb, Shape::Series)),
        (
            "json/readings",
            Format::Json,
            payloads(Format::Json, Shape::Readings),
        ),
        (
            "json/series",
            Format::Json,
            payloads(Format::Json, Shape::Series),
        ),
        (
            "senml/readings",
            Format::Senml,
            payloads(Format::Senml, Shape::Readings),
        ),
        (
            "senml-cbor/readings",
            Format::SenmlCbor,
            senml_cbor_payloads(),
        ),
        ("dsmr/telegram-v5", Format::Dsmr, dsmr_payloads()),
    ];
    let mut group = c.benchmark_group("decode_into_arrow");
    for (name, format, payloads) in &cases {
        let rows = decode_into_batch(*format, payloads);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(*name, |b| b.iter(|| decode_into_batch(*format, payloads)));
        // The reference: bare prost decoding of the same protobuf reports, no rows built.
        if *format == Format::Pb {
            group.bench_function(format!("{name}/prost-only"), |b| {
                b.iter(|| {
                    payloads
                        .iter()
                        .map(|(_, p)| pb::MeterReport::decode(p.as_slice()).expect("valid report"))
                        .map(|r| {
                            r.readings.len()
                                + r.series.iter().map(|s| s.values.len()).sum::<usize>()
                        })
                        .sum::<usize>()
                })
            });
        }
    }
    let dlms = dlms_payloads();
    let rows = decode_dlms_into_batch(&dlms);
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("dlms/ciphered-e450", |b| {
        b.iter(|| decode_dlms_into_batch(&dlms))
    });
    group.finish();
}

criterion_group!(benches, bench_decoders);
criterion_main!(benches);
