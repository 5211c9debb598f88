use meterflow_decoders::dsmr;
fn time(name: &str, p: &[u8]) {
    let n = 200_000;
    let t0 = std::time::Instant::now();
    let mut total = 0;
    for i in 0..n { total += dsmr::decode_at(std::hint::black_box(p), i).map(|d| d.readings.len()).unwrap_or(0); }
    let el = t0.elapsed();
    println!("{name}: {:?}/telegram, {:.0} MB/s, {} readings", el / n as u32, (p.len() * n as usize) as f64 / el.as_secs_f64() / 1e6, total / n as usize);
}
#[test]
#[ignore]
fn bench() {
    let p = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dsmr/ndokter_dsmr_parser/TELEGRAM_V5.txt")).unwrap();
    time("v5", &p);
    let bang = p.iter().position(|&b| b == b'!').unwrap();
    let mut nocrc = p[..=bang].to_vec(); nocrc.extend_from_slice(b"\r\n");
    time("v5 no crc", &nocrc);
    let mut noread = Vec::new();
    for line in p.split(|&b| b == b'\n') { if line.starts_with(b"/") || line.starts_with(b"!") || line.starts_with(b"\r") { noread.extend_from_slice(line); noread.push(b'\n'); } else { noread.extend_from_slice(b"0-0:96.13.0("); noread.extend(std::iter::repeat(b'A').take(line.len().saturating_sub(13))); noread.extend_from_slice(b")\r\n"); } }
    time("v5 text-only, crc", &noread);
}
