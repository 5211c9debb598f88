//! `meterflow simulate`: the flags of the load generator, the [`Plan`](simulate::Plan) and
//! [`Target`](simulate::Target) they make, and the summary line (or JSON) of
//! [`meterflow_simulate::run`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meterflow_proto::Format;
use meterflow_simulate::{self as simulate, Shape};

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// The broker, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Post over CoAP to HOST:PORT instead of publishing over MQTT.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "dlms")]
    coap: Option<String>,
    /// Push DLMS/COSEM DataNotifications in IEC 62056-4-7 wrapper frames to meterflow's wrapper
    /// listener (`serve --dlms-listen`) at HOST:PORT instead of publishing over MQTT; implies
    /// --format dlms. Over TCP a meter's pushes count as acknowledged once meterflow closes its
    /// connection in order after the last one (every frame read, so durable); a reset fails it.
    #[arg(long, value_name = "HOST:PORT")]
    dlms: Option<String>,
    /// --dlms over tcp (one connection per meter) or udp (one datagram per push, counted as
    /// sent only: nothing is answered).
    #[arg(long, value_enum, default_value = "tcp", requires = "dlms")]
    dlms_transport: DlmsTransport,
    /// --format dlms: the invocation counter of every ciphered meter's first report (report k
    /// carries N + k) [default: eighths of a second since 2025-01-01, so that a later run is
    /// above an earlier one that started at least --messages / 8 s before it]
    #[arg(long, value_name = "N")]
    dlms_invocation_counter: Option<u32>,
    /// CoAP over DTLS (coaps): each meter handshakes with its id as the PSK identity and its
    /// secret from --credentials as the key, and keeps the session for all its reports.
    #[arg(long, requires_all = ["coap", "credentials"])]
    dtls: bool,
    /// CoAP: a report larger than this many bytes goes in Block1 blocks of this size
    /// (16 to 1024, a power of two).
    #[arg(long, default_value_t = 1024)]
    block_size: usize,
    /// How many meters (one MQTT connection each).
    #[arg(long, default_value_t = 100)]
    meters: usize,
    /// Reports per meter.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// pb, json, senml, dsmr or dlms [default: pb; dlms with --dlms]. dlms: a self-describing
    /// DataNotification per report (five registers in Wh, W and m3), ciphered (general-glo-
    /// ciphering, security control 0x30, or 0x20 with only an encryption key) for meters whose
    /// row in --credentials has dlms_system_title and dlms_ek, else in clear; over MQTT on
    /// meters/{id}/dlms, CoAP (Content-Format 65002) or --dlms.
    #[arg(long)]
    format: Option<Format>,
    /// readings: five registers per report; series: a day of 96 quarter-hour values per report.
    #[arg(long, value_enum, default_value = "readings")]
    shape: Shape,
    /// Time of the first report (RFC 3339) [default: so that the last report is now]
    #[arg(long)]
    start: Option<String>,
    /// Seconds between two reports of one meter (in the meter's time, not the real one).
    #[arg(long, default_value_t = 900)]
    interval_s: i64,
    /// Meter ids are PREFIX000000, PREFIX000001, ...
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// Connections open at once.
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Unacknowledged publishes per connection.
    #[arg(long, default_value_t = 10)]
    inflight: u16,
    /// Real pause between two reports of a meter, milliseconds.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Give up on a meter after this many seconds.
    #[arg(long, default_value_t = 120)]
    meter_timeout_s: u64,
    /// A CSV file meter_id,secret[,dlms_system_title,dlms_ek,dlms_ak] (as `meterflow
    /// credentials import` takes): each meter logs in with its own secret, and with --format
    /// dlms ciphers its pushes with its DLMS keys.
    #[arg(long, value_name = "FILE.csv")]
    credentials: Option<PathBuf>,
    /// Connect over TLS, trusting the CA certificate in this PEM file.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Connect, publish this many reports, disconnect, and again, as battery meters do
    /// (0: one connection per meter for all its reports).
    #[arg(long, default_value_t = 0)]
    reconnect_every: usize,
    /// Keep each connection open (idle, pinging) this many seconds after its reports.
    #[arg(long, default_value_t = 0)]
    hold_s: u64,
    /// Spread connections over 127.0.0.1 to 127.0.0.N [default: as many as a loopback fleet
    /// above the ephemeral port range needs].
    #[arg(long, default_value_t = 0)]
    source_addrs: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DlmsTransport {
    Tcp,
    Udp,
}

/// The wrapper listener's default `dlms.max_pending_per_address`.
const DLMS_PER_ADDRESS: usize = 256;

/// Runs the fleet and prints its summary; exits with status 2 when a meter failed.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let (protocol, address, flag) = match (&args.coap, &args.dlms) {
        (Some(address), _) => (simulate::Protocol::Coap, address, "--coap"),
        (None, Some(address)) => match args.dlms_transport {
            DlmsTransport::Tcp => (simulate::Protocol::DlmsTcp, address, "--dlms"),
            DlmsTransport::Udp => (simulate::Protocol::DlmsUdp, address, "--dlms"),
        },
        (None, None) => (simulate::Protocol::Mqtt, &args.mqtt, "--mqtt"),
    };
    let format = match (args.format, &args.dlms) {
        (Some(format), _) => format,
        (None, Some(_)) => Format::Dlms,
        (None, None) => Format::Pb,
    };
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{flag} takes HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{flag}: the port is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let step_ms = args.interval_s * 1000;
    let start_ms = match &args.start {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .with_context(|| format!("--start {text:?} is not an RFC 3339 time"))?
            .timestamp_millis(),
        None => {
            let now = chrono::Utc::now().timestamp_millis();
            let span = match args.shape {
                Shape::Readings => step_ms,
                Shape::Series => 86_400_000,
            };
            let aligned = now - now.rem_euclid(span.max(1000));
            aligned - span * (args.messages.saturating_sub(1) as i64)
        }
    };
    let plan = simulate::Plan {
        meters: args.meters,
        messages: args.messages,
        format,
        shape: args.shape,
        start_ms,
        interval_s: args.interval_s,
        prefix: args.prefix,
    };
    let mut mqtt = simulate::mqtt::MqttSetup {
        reconnect_every: args.reconnect_every,
        hold: Duration::from_secs(args.hold_s),
        ..Default::default()
    };
    let mut dlms = simulate::dlms::DlmsSetup {
        invocation_base: match args.dlms_invocation_counter {
            Some(n) => n,
            None if format == Format::Dlms => {
                simulate::dlms::invocation_base_at(chrono::Utc::now().timestamp_millis())?
            }
            None => 0,
        },
        ..Default::default()
    };
    if let Some(path) = &args.credentials {
        let credentials = simulate::credentials::read_credentials(path)?;
        mqtt.credentials = Some(Arc::new(credentials.secrets));
        dlms.keys = Arc::new(credentials.dlms);
    }
    if protocol == simulate::Protocol::DlmsTcp
        && args.concurrency.min(args.meters) > DLMS_PER_ADDRESS
    {
        eprintln!(
            "simulate: {} connections at once from one address: above the listener's default dlms.max_pending_per_address ({DLMS_PER_ADDRESS}), connections past its [dlms] limits are closed at accept (raise them, or lower --concurrency)",
            args.concurrency.min(args.meters)
        );
    }
    if let Some(ca) = &args.tls_ca {
        mqtt.tls = Some(simulate::mqtt::tls_setup(ca, host)?);
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        mqtt.source_addrs =
            simulate::mqtt::source_addrs(ip, args.concurrency.min(args.meters), args.source_addrs);
    }
    let target = simulate::Target {
        protocol,
        host: host.to_string(),
        port,
        inflight: args.inflight,
        coap_block_size: args.block_size,
        coap_dtls: args.dtls,
        concurrency: args.concurrency,
        pause: Duration::from_millis(args.pause_ms),
        meter_timeout: Duration::from_secs(args.meter_timeout_s),
        mqtt,
        dlms,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(simulate::run(Arc::new(plan), target))?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "simulated {} meters over {} ({} {}): sent {} reports ({} rows, {} bytes), acknowledged {} ({} rows) in {:.2} s = {:.0} reports/s; ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} connections ({:.0}/s, CONNACK p50 {:.2} ms, p99 {:.2} ms); {} reconnects, {} retransmissions, {} busy answers, {} meters failed",
            summary.meters,
            protocol,
            summary.format,
            summary.shape,
            summary.messages_sent,
            summary.rows_sent,
            summary.bytes_sent,
            summary.messages_acked,
            summary.rows_acked,
            summary.elapsed_s,
            summary.acked_per_s,
            summary.ack_ms_p50,
            summary.ack_ms_p99,
            summary.ack_ms_max,
            summary.connections,
            summary.connects_per_s,
            summary.connect_ms_p50,
            summary.connect_ms_p99,
            summary.reconnects,
            summary.retransmissions,
            summary.busy_answers,
            summary.meters_failed
        );
        if summary.format == "dlms" {
            println!(
                "dlms: {} of {} meters ciphered{}; acknowledged means {}",
                summary.dlms_ciphered_meters,
                summary.meters,
                summary
                    .dlms_invocation_counters
                    .map(|(first, last)| format!(", invocation counters {first} to {last}"))
                    .unwrap_or_default(),
                summary.acked_means
            );
        }
    }
    // Sent can exceed acknowledged: a meter that reconnects (MQTT) or is told 5.03 (CoAP)
    // sends again what was not acknowledged.
    if let Some(why) = &summary.first_failure {
        eprintln!(
            "{} of {} meters failed; the first: {why}",
            summary.meters_failed, summary.meters
        );
    }
    let answered = summary.protocol.is_some_and(simulate::Protocol::answers);
    if answered && summary.messages_acked == 0 && summary.messages_sent + summary.meters_failed > 0
    {
        eprintln!("Error: no report was acknowledged");
        std::process::exit(2);
    }
    if summary.meters_failed > 0 {
        std::process::exit(2);
    }
    Ok(())
}
