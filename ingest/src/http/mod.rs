//! The HTTP surface (axum): the field engineers' page `GET /` ([`PAGE`], one file served by
//! the binary, no build step), the device API, `/health` (liveness), `/ready` (readiness:
//! the pipeline runs, the WAL is under its budget, ClickHouse inserts succeed) and `/metrics`
//! (Prometheus text).
//!
//! With `http.token` set, the API and `/metrics` need `Authorization: Bearer TOKEN`; `/health`,
//! `/ready` and the page's HTML stay open (the page asks for the token and sends it with every
//! API call), but `/ready` shows its checks only with the token. Without a token (loopback
//! only), the API and `/ready`'s checks answer only requests whose Host is an IP address or
//! `localhost`, so a web page cannot reach them by DNS rebinding.
//!
//! [`serve`] runs the listener with its limits (connections, header timeout and size, idle
//! time): see `server.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};

mod server;
pub use server::serve;

use crate::devices::{DeviceRegistry, DeviceState, Health};
use crate::progress::LsnMarks;
use meterflow_proto::now_ms;
use meterflow_storage::ShutdownSignal;

/// The page for field engineers.
pub const PAGE: &str = include_str!("page.html");

/// What `/ready` looks at.
#[derive(Clone)]
pub struct Readiness {
    pub marks: Arc<LsnMarks>,
    pub wal_max_bytes: u64,
    /// Unix ms since when ClickHouse inserts fail (0: they succeed); `None` without ClickHouse.
    pub clickhouse_failing_since: Option<Arc<AtomicI64>>,
    /// Where ClickHouse is, to ask it directly (an idle meterflow has no inserts to go by).
    pub clickhouse: Option<meterflow_storage::clickhouse::ClickHouseConfig>,
    /// False once the pipeline thread has ended.
    pub pipeline_running: Arc<AtomicBool>,
    /// Stopping from SIGTERM on: the listeners close, what was read is answered, the sinks
    /// are flushed. A load balancer sends nobody here any more.
    pub shutdown: ShutdownSignal,
    /// Each bridge's name, and since when (Unix ms) it has been without its subscription at
    /// its broker (0: it holds it).
    pub bridges: Vec<(String, Arc<AtomicI64>)>,
    /// The last answer from ClickHouse, reused for a few seconds, and who is asking now.
    pub clickhouse_asked: Arc<ClickHouseAsked>,
}

/// What `/ready` last heard from ClickHouse. One caller asks at a time; the others answer
/// with the last answer, however old, rather than wait (up to 2 s) beside it: so connections
/// sending `/ready` (open to all) cost one question between them, and cannot keep every
/// connection of the listener busy.
#[derive(Default)]
pub struct ClickHouseAsked {
    last: std::sync::Mutex<Option<(std::time::Instant, Check)>>,
    asking: tokio::sync::Mutex<()>,
}

impl ClickHouseAsked {
    /// The last answer and when it came.
    fn last(&self) -> Option<(std::time::Instant, Check)> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn fresh(&self) -> Option<Check> {
        self.last()
            .filter(|(at, _)| at.elapsed() < CLICKHOUSE_ASKED_FOR)
            .map(|(_, check)| check)
    }
}

/// A bridge without its subscription for longer than this fails `/ready`.
const BRIDGE_GRACE_MS: i64 = 30_000;

/// How long an answer from ClickHouse stands for `/ready`.
const CLICKHOUSE_ASKED_FOR: std::time::Duration = std::time::Duration::from_secs(5);
/// A WAL write error this recent makes meterflow not ready.
const WAL_ERROR_WINDOW_MS: i64 = 60_000;

#[derive(Clone)]
pub struct HttpState {
    pub devices: DeviceRegistry,
    pub metrics: PrometheusHandle,
    pub readiness: Readiness,
    /// `None`: no token asked.
    pub token: Option<Arc<str>>,
    /// Where VEE's runs and versions are kept when there is no ClickHouse (the data folder).
    pub data_dir: std::path::PathBuf,
    /// The meter registry (interval, district, kind of each meter) for health and the fleet
    /// summary.
    pub fleet: crate::fleet::Fleet,
}

pub fn router(state: HttpState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/devices", get(devices))
        .route("/api/devices/{meter_id}", get(device))
        // The same by query: ids such as `.` or `..` cannot travel as a path segment.
        .route("/api/device", get(device_by_query))
        .route("/api/devices/{meter_id}/vee", get(device_vee))
        .route("/api/device/vee", get(device_vee_by_query))
        .route("/api/devices/{meter_id}/events", get(device_events))
        .route("/api/device/events", get(device_events_by_query))
        .route("/api/fleet", get(fleet_summary))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(page))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .merge(protected)
        .with_state(state)
}

/// Whether a request may see what the API shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// With `http.token` set, it carries the token; without one, its Host names this machine.
    Granted,
    /// No token is set and the Host is a name (a web page reaching us by DNS rebinding).
    ForeignHost,
    /// `http.token` is set and the request does not carry it.
    NoToken,
}

fn access(state: &HttpState, headers: &HeaderMap) -> Access {
    let Some(token) = &state.token else {
        return if host_is_local(headers) {
            Access::Granted
        } else {
            Access::ForeignHost
        };
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(offered.as_bytes(), token.as_bytes()) {
        Access::Granted
    } else {
        Access::NoToken
    }
}

async fn require_token(
    State(state): State<HttpState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    match access(&state, &headers) {
        Access::Granted => next.run(request).await,
        Access::ForeignHost => (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({"error": "without http.token only requests to an IP address or localhost are answered"})),
        )
            .into_response(),
        Access::NoToken => {
            metrics::counter!("meterflow_http_unauthorized_total").increment(1);
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({"error": "a bearer token is required (http.token)"})),
            )
                .into_response()
        }
    }
}

/// Whether the Host header names this machine by address or as `localhost` (not a domain
/// that could be rebound to it).
fn host_is_local(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true; // HTTP/1.0 without Host: not a browser
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Compares without an early exit on the first different byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    metrics::gauge!("meterflow_devices").set(state.devices.len() as f64);
    let registry = state.fleet.registry();
    let gauged = state.fleet.gauged.clone();
    let any = !gauged.lock().map(|g| g.is_empty()).unwrap_or(true);
    if !registry.is_empty() || any {
        // The registered and heard meters as of this scrape (one lookup per meter).
        let devices = state.devices.clone();
        let _ = tokio::task::spawn_blocking(move || {
            crate::fleet::set_gauges(&devices, &registry, now_ms(), &gauged)
        })
        .await;
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Clone, Serialize)]
struct Check {
    ok: bool,
    detail: String,
}

/// `/ready`: every check must pass. `/ready?ingest` is for a load balancer in front of the
/// MQTT and CoAP ports: a ClickHouse outage is reported but does not fail it, since the WAL
/// holds the data meanwhile (taking every instance out of service would stop ingest).
///
/// Open to all, but only a caller the API would answer (the token, or loopback without one)
/// sees the checks: their details name servers, sizes, error texts and bridges. Anyone else
/// gets the status code and `{"ready": true|false}`.
async fn ready(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let (code, body) = readiness(&state, query.contains_key("ingest")).await;
    if access(&state, &headers) == Access::Granted {
        return (code, Json(body)).into_response();
    }
    (code, Json(serde_json::json!({"ready": body["ready"]}))).into_response()
}

/// The status code of `/ready` and its whole answer (every check, with its detail).
async fn readiness(state: &HttpState, for_ingest: bool) -> (StatusCode, serde_json::Value) {
    let r = &state.readiness;
    let mut checks = BTreeMap::new();
    if r.shutdown.is_stopping() {
        checks.insert(
            "shutdown",
            Check {
                ok: false,
                detail:
                    "stopping: no longer accepting, answering what was read and flushing the sinks"
                        .into(),
            },
        );
    }
    let running = r.pipeline_running.load(Ordering::Acquire);
    checks.insert(
        "pipeline",
        Check {
            ok: running,
            detail: if running { "running" } else { "stopped" }.into(),
        },
    );
    let wal = r.marks.wal_bytes.load(Ordering::Relaxed);
    let error_at = r.marks.wal_error_at_ms.load(Ordering::Relaxed);
    let recent_error = error_at != 0 && now_ms() - error_at < WAL_ERROR_WINDOW_MS;
    // Ready while there is room for a while yet: 90 % of the budget.
    let wal_ok = wal < r.wal_max_bytes / 10 * 9 && !recent_error;
    checks.insert(
        "wal",
        Check {
            ok: wal_ok,
            detail: if recent_error {
                format!(
                    "a write failed {} s ago (see the log)",
                    (now_ms() - error_at) / 1000
                )
            } else {
                format!("{wal} of {} bytes (wal.max_bytes)", r.wal_max_bytes)
            },
        },
    );
    if let (Some(failing), Some(config)) = (&r.clickhouse_failing_since, &r.clickhouse) {
        let since = failing.load(Ordering::Acquire);
        let mut check = if since != 0 {
            Check {
                ok: false,
                detail: format!(
                    "inserts failing for {} s (retrying; the WAL holds the data)",
                    (now_ms() - since).max(0) / 1000
                ),
            }
        } else {
            ask_clickhouse(r, config).await
        };
        if for_ingest && !check.ok {
            check.detail = format!("{} (not counted for ?ingest)", check.detail);
            check.ok = true;
        }
        checks.insert("clickhouse", check);
    }
    if !r.bridges.is_empty() {
        // A reconnect (or start-up) takes a moment: only a bridge without its subscription
        // for longer than BRIDGE_GRACE_MS counts, so that a broker's blip does not flap it.
        let now = now_ms();
        let down: Vec<String> = r
            .bridges
            .iter()
            .filter_map(|(name, since)| {
                let since = since.load(Ordering::Acquire);
                (since != 0 && now - since > BRIDGE_GRACE_MS)
                    .then(|| format!("{name} (for {} s)", (now - since) / 1000))
            })
            .collect();
        let mut check = if down.is_empty() {
            Check {
                ok: true,
                detail: format!("{} subscribed, or reconnecting", r.bridges.len()),
            }
        } else {
            Check {
                ok: false,
                detail: format!("without their subscription: {}", down.join(", ")),
            }
        };
        // The load balancer in front of the edges has no business with the bridges.
        if for_ingest && !check.ok {
            check.detail = format!("{} (not counted for ?ingest)", check.detail);
            check.ok = true;
        }
        checks.insert("bridges", check);
    }
    let is_ready = checks.values().all(|c| c.ok);
    let code = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        serde_json::json!({"ready": is_ready, "checks": checks}),
    )
}

/// Asks ClickHouse for its version (inserts have not failed, but an idle meterflow has none
/// to go by); the answer stands for a few seconds, so polling `/ready` does not load it.
async fn ask_clickhouse(
    r: &Readiness,
    config: &meterflow_storage::clickhouse::ClickHouseConfig,
) -> Check {
    let asked = &r.clickhouse_asked;
    if let Some(check) = asked.fresh() {
        return check;
    }
    // One caller asks; the others take the last answer, however old.
    let _asking = match asked.asking.try_lock() {
        Ok(asking) => asking,
        Err(_) => match asked.last() {
            Some((_, check)) => return check,
            // Never asked yet: wait for the answer being asked for.
            None => asked.asking.lock().await,
        },
    };
    // Asked by another while this one waited.
    if let Some(check) = asked.fresh() {
        return check;
    }
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        meterflow_storage::clickhouse::server_version(config),
    )
    .await;
    let check = match answer {
        Ok(Ok(version)) => Check {
            ok: true,
            detail: format!("reachable (ClickHouse {version})"),
        },
        Ok(Err(e)) => Check {
            ok: false,
            detail: format!("{} unreachable: {e}", config.server_for_logs()),
        },
        Err(_) => Check {
            ok: false,
            detail: format!("no answer from {} within 2 s", config.server_for_logs()),
        },
    };
    *asked
        .last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some((std::time::Instant::now(), check.clone()));
    check
}

/// A device as the API shows it: its state, how long it has been silent and its colour.
#[derive(Serialize)]
struct DeviceView<'a> {
    #[serde(flatten)]
    device: &'a DeviceState,
    silent_s: i64,
    health: Health,
    /// Why amber or red, in words (none: green).
    reasons: Vec<String>,
    /// After how long without a message it turns amber and red (its registry interval's, or
    /// the fixed ones).
    amber_after_s: u64,
    red_after_s: u64,
    /// Its record in the meter registry now, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    registry: Option<RegistryView>,
    /// The known channels' names in words (`1-0:1.8.0`: energy imported, total).
    channel_names: BTreeMap<&'a str, &'static str>,
    /// What the error flags it reports stand for (`cover_open`, ...), by its format's table.
    error_flag_kinds: Vec<&'static str>,
    /// Per channel, the recent readings as `[ts_ms, value]`, oldest first (single device only).
    #[serde(skip_serializing_if = "Option::is_none")]
    recent_readings: Option<BTreeMap<&'a str, Vec<(i64, f64)>>>,
    /// `"clickhouse"` when this node has not heard the meter and the state is what ClickHouse
    /// remembers (message and error counts are then unknown: 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'static str>,
}

/// What the registry says of a meter, as the API shows it.
#[derive(Serialize)]
struct RegistryView {
    kind: &'static str,
    model: String,
    expected_interval_s: Option<u32>,
    district: String,
    feeder: String,
    transformer: String,
    role: &'static str,
    tariff: String,
}

fn view<'a>(
    device: &'a DeviceState,
    state: &HttpState,
    registry: &meterflow_storage::registry::Registry,
    now: i64,
    recent: bool,
) -> DeviceView<'a> {
    let devices = &state.devices;
    let recent_readings = recent.then(|| {
        let mut by_channel: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
        for (channel, points) in &device.recent {
            let mut points: Vec<(i64, f64)> = points.iter().copied().collect();
            points.sort_by_key(|(ts, _)| *ts);
            by_channel.insert(channel, points);
        }
        by_channel
    });
    let record = registry.at(&device.meter_id, now);
    let assessment = crate::fleet::assess(device, record, now, devices.config());
    let channel_names = device
        .last_values
        .keys()
        .filter_map(|c| Some((c.as_str(), meterflow_proto::channels::channel_name(c)?)))
        .collect();
    let format = device.flags_format();
    let error_flag_kinds = device
        .status
        .error_flags
        .map(|f| meterflow_decoders::events::flag_kinds(format, f))
        .unwrap_or_default()
        .into_iter()
        .map(|k| k.as_str())
        .collect();
    DeviceView {
        device,
        silent_s: now.saturating_sub(device.last_seen_ms).max(0) / 1000,
        health: assessment.health,
        error_flag_kinds,
        reasons: assessment.reasons,
        amber_after_s: assessment.amber_after_s,
        red_after_s: assessment.red_after_s,
        registry: record.map(|r| RegistryView {
            kind: r.kind.as_str(),
            model: r.model.clone(),
            expected_interval_s: r.expected_interval_s,
            district: r.district.clone(),
            feeder: r.feeder.clone(),
            transformer: r.transformer.clone(),
            role: r.role.as_str(),
            tariff: r.tariff.clone(),
        }),
        channel_names,
        recent_readings,
        from: None,
    }
}

fn error(code: StatusCode, text: String) -> Response {
    (code, Json(serde_json::json!({"error": text}))).into_response()
}

async fn device_by_query(
    State(state): State<HttpState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    match query.get("meter_id") {
        Some(id) => device(State(state), Path(id.clone())).await,
        None => error(StatusCode::BAD_REQUEST, "meter_id is required".into()),
    }
}

/// One meter: from this node's state, or (a meter that reports to another node behind the
/// same load balancer) from what ClickHouse remembers of it, marked `"from": "clickhouse"`:
/// when this node has not heard it, or not for a minute and ClickHouse has heard it since.
async fn device(State(state): State<HttpState>, Path(meter_id): Path<String>) -> Response {
    let local = state.devices.get(&meter_id);
    let config = state.readiness.clickhouse.as_ref();
    // Whether, and within how long, to ask ClickHouse.
    let ask = match (&local, config) {
        (_, None) => None,
        (Some(d), Some(config)) => {
            // `last_lsn` 0: never heard here, only rebuilt from ClickHouse at start-up.
            let heard_lately = d.last_lsn > 0 && now_ms() - d.last_seen_ms < LOCAL_STATE_FRESH_MS;
            // Not while inserts fail: ClickHouse is behind or away, and this node has an
            // answer of its own to give.
            let inserts_failing = state
                .readiness
                .clickhouse_failing_since
                .as_ref()
                .is_some_and(|since| since.load(Ordering::Acquire) != 0);
            (!heard_lately && !inserts_failing).then_some((config, SECOND_OPINION_TIMEOUT))
        }
        (None, Some(config)) => meterflow_proto::is_valid_meter_id(&meter_id)
            .then_some((config, CLICKHOUSE_DEVICE_TIMEOUT)),
    };
    let Some((config, within)) = ask else {
        return match &local {
            Some(d) => {
                Json(view(d, &state, &state.fleet.registry(), now_ms(), true)).into_response()
            }
            None => error(
                StatusCode::NOT_FOUND,
                format!("no meter {meter_id:?} has been heard"),
            ),
        };
    };
    let asked = tokio::time::timeout(
        within,
        meterflow_storage::analytics::device_snapshot(
            config,
            &meter_id,
            crate::devices::CLICKHOUSE_LOOKBACK_DAYS,
        ),
    )
    .await;
    match (local, asked) {
        // Newer wins; a copy only rebuilt at start-up is ClickHouse's own from then, so the
        // fresh one wins a tie too (both count whole seconds).
        (Some(d), Ok(Ok(Some(snapshot))))
            if snapshot.last_seen_ms > d.last_seen_ms
                || (d.last_lsn == 0 && snapshot.last_seen_ms >= d.last_seen_ms) =>
        {
            from_clickhouse(&state, config, snapshot, within).await
        }
        // ClickHouse older, or slow or away: this node's own.
        (Some(d), _) => Json(view(&d, &state, &state.fleet.registry(), now_ms(), true)).into_response(),
        (None, Ok(Ok(Some(snapshot)))) => from_clickhouse(&state, config, snapshot, within).await,
        (None, Ok(Ok(None))) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no meter {meter_id:?} has been heard by this node, nor by ClickHouse in the last {} days",
                crate::devices::CLICKHOUSE_LOOKBACK_DAYS
            ),
        ),
        (None, Ok(Err(e))) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("meter {meter_id:?} has not been heard by this node, and ClickHouse could not be asked: {e}"),
        ),
        (None, Err(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "meter {meter_id:?} has not been heard by this node, and ClickHouse did not answer within {} s",
                within.as_secs()
            ),
        ),
    }
}

/// The answer from what ClickHouse remembers of a meter, with its recent readings if they
/// come `within` the time given.
async fn from_clickhouse(
    state: &HttpState,
    config: &meterflow_storage::clickhouse::ClickHouseConfig,
    snapshot: meterflow_storage::analytics::DeviceSnapshot,
    within: std::time::Duration,
) -> Response {
    let mut device = DeviceState::from_snapshot(snapshot);
    let recent_points = state.devices.config().recent_points;
    if recent_points > 0 {
        let read = meterflow_storage::analytics::recent_readings(
            config,
            &device.meter_id,
            recent_points,
            crate::devices::CLICKHOUSE_LOOKBACK_DAYS,
        );
        if let Ok(Ok(points)) = tokio::time::timeout(within, read).await {
            for (channel, ts_ms, value) in points {
                device
                    .recent
                    .entry(channel)
                    .or_default()
                    .push_back((ts_ms, value));
            }
        }
    }
    let registry = state.fleet.registry();
    let mut body = view(&device, state, &registry, now_ms(), true);
    body.from = Some("clickhouse");
    Json(body).into_response()
}

/// What VEE found for a meter over the last [`VEE_DAYS`] days, for its page.
#[derive(Serialize)]
struct VeeView {
    days: i64,
    /// Whether any run judged the meter in those days: without, no exception means nothing.
    judged: bool,
    /// As the latest run that judged each day left them, newest first.
    exceptions: Vec<VeeException>,
    /// Per channel, its estimated and substituted values as `[ts_ms, value, quality]`.
    mended: BTreeMap<String, Vec<(i64, f64, String)>>,
}

#[derive(Serialize)]
struct VeeException {
    channel: String,
    rule: String,
    from_ms: i64,
    to_ms: i64,
    detail: String,
    estimated: bool,
    values: u32,
    method: String,
}

/// The days of VEE findings a meter's page shows.
const VEE_DAYS: i64 = 30;

async fn device_vee_by_query(
    State(state): State<HttpState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    match query.get("meter_id") {
        Some(id) => device_vee(State(state), Path(id.clone())).await,
        None => error(StatusCode::BAD_REQUEST, "meter_id is required".into()),
    }
}

/// A meter's VEE exceptions and mended values: from ClickHouse when configured (within
/// [`CLICKHOUSE_DEVICE_TIMEOUT`]), else from the data folder. A meter VEE never judged has
/// none of either.
async fn device_vee(State(state): State<HttpState>, Path(meter_id): Path<String>) -> Response {
    use meterflow_storage::vee::{runs, versions};
    if !meterflow_proto::is_valid_meter_id(&meter_id) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{meter_id:?} is not a meter id"),
        );
    }
    let to = now_ms() + 86_400_000;
    let from = to - (VEE_DAYS + 1) * 86_400_000;
    let found = match state.readiness.clickhouse.clone() {
        Some(config) => {
            let meter = meter_id.clone();
            let ask = async move {
                let all_runs = runs::runs_clickhouse(&config).await?;
                let found = runs::exceptions_clickhouse(&config, from, to, Some(&meter)).await?;
                let values = versions::latest_clickhouse(&config, from, to, Some(&meter)).await?;
                Ok::<_, meterflow_storage::StorageError>((all_runs, found, values))
            };
            match tokio::time::timeout(CLICKHOUSE_DEVICE_TIMEOUT, ask).await {
                Ok(found) => found,
                Err(_) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "ClickHouse did not answer within {} s",
                            CLICKHOUSE_DEVICE_TIMEOUT.as_secs()
                        ),
                    )
                }
            }
        }
        None => {
            let (dir, meter) = (state.data_dir.clone(), meter_id.clone());
            let read = tokio::task::spawn_blocking(move || {
                Ok::<_, meterflow_storage::StorageError>((
                    runs::runs(&dir)?,
                    runs::exceptions(&dir, from, to, Some(&meter))?,
                    versions::latest(&dir, from, to, Some(&meter))?,
                ))
            });
            // The files are the whole fleet's: a page does not wait on them for long.
            match tokio::time::timeout(CLICKHOUSE_DEVICE_TIMEOUT, read).await {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                Err(_) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "VEE's files were not read within {} s",
                            CLICKHOUSE_DEVICE_TIMEOUT.as_secs()
                        ),
                    )
                }
            }
        }
    };
    let (all_runs, found, values) = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(meter = %meter_id, error = %e, "the page's VEE findings could not be read");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "VEE's findings could not be read (the server's log says why)".into(),
            );
        }
    };
    let judged = all_runs
        .iter()
        .any(|r| (r.meter.is_empty() || r.meter == meter_id) && r.to_ms > from && r.from_ms < to);
    let mut exceptions: Vec<VeeException> = runs::standing(&all_runs, found)
        .into_iter()
        .map(|e| VeeException {
            channel: e.channel,
            rule: e.rule,
            from_ms: e.from_ms,
            to_ms: e.to_ms,
            detail: e.detail,
            estimated: e.estimated,
            values: e.mended,
            method: e.method,
        })
        .collect();
    exceptions.sort_by_key(|e| std::cmp::Reverse(e.from_ms));
    let mut mended: BTreeMap<String, Vec<(i64, f64, String)>> = BTreeMap::new();
    for v in values.into_iter().filter(|v| v.quality != "A") {
        mended
            .entry(v.channel)
            .or_default()
            .push((v.ts_ms, v.value, v.quality));
    }
    Json(VeeView {
        days: VEE_DAYS,
        judged,
        exceptions,
        mended,
    })
    .into_response()
}

/// How far back the page shows a meter's events.
const EVENT_DAYS: i64 = 30;

async fn device_events_by_query(
    State(state): State<HttpState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    match query.get("meter_id") {
        Some(id) => device_events(State(state), Path(id.clone())).await,
        None => error(StatusCode::BAD_REQUEST, "meter_id is required".into()),
    }
}

/// A meter's events of the last [`EVENT_DAYS`] days, newest first: from ClickHouse when
/// configured, else from the data folder, within [`CLICKHOUSE_DEVICE_TIMEOUT`].
async fn device_events(State(state): State<HttpState>, Path(meter_id): Path<String>) -> Response {
    use meterflow_storage::events::{self as store, EventRequest};
    if !meterflow_proto::is_valid_meter_id(&meter_id) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{meter_id:?} is not a meter id"),
        );
    }
    let to = now_ms() + 86_400_000;
    let request = EventRequest {
        period: Some((to - (EVENT_DAYS + 1) * 86_400_000, to)),
        meter: Some(meter_id.clone()),
        kinds: Vec::new(),
    };
    let read = async {
        match state.readiness.clickhouse.clone() {
            Some(config) => store::read_clickhouse(&config, &request).await,
            None => {
                let dir = state.data_dir.clone();
                let request = request.clone();
                tokio::task::spawn_blocking(move || store::read_parquet(&dir, &request))
                    .await
                    .unwrap_or_else(|e| {
                        Err(meterflow_storage::StorageError::ReadRequest {
                            reason: e.to_string(),
                        })
                    })
            }
        }
    };
    let mut events = match tokio::time::timeout(CLICKHOUSE_DEVICE_TIMEOUT, read).await {
        Ok(Ok(events)) => events,
        Ok(Err(e)) => {
            tracing::warn!(meter = %meter_id, error = %e, "the page's events could not be read");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the events could not be read (the server's log says why)".into(),
            );
        }
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the events were not read within {} s",
                    CLICKHOUSE_DEVICE_TIMEOUT.as_secs()
                ),
            )
        }
    };
    events.reverse();
    let events: Vec<serde_json::Value> = events
        .into_iter()
        .take(100)
        .map(|e| {
            let words = meterflow_decoders::events::EventKind::parse(&e.kind)
                .map(|k| k.describe())
                .unwrap_or_default();
            serde_json::json!({
                "ts_ms": e.ts_ms,
                "kind": e.kind,
                "severity": e.severity,
                "source": e.source,
                "code": e.code,
                "detail": e.detail,
                "meaning": words,
            })
        })
        .collect();
    Json(serde_json::json!({"days": EVENT_DAYS, "events": events})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetQuery {
    /// One district of the registry only.
    district: Option<String>,
}

/// The fleet summary: meters by health, and by district and health (the registry's
/// districts; a registered meter never heard counts red).
async fn fleet_summary(
    State(state): State<HttpState>,
    query: Result<Query<FleetQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (devices, registry) = (state.devices.clone(), state.fleet.registry());
    let node_only = state
        .readiness
        .clickhouse
        .as_ref()
        .is_some_and(|c| !c.cluster.is_empty());
    let summary = tokio::task::spawn_blocking(move || {
        let mut summary =
            crate::fleet::summary(&devices, &registry, now_ms(), q.district.as_deref());
        summary.node_only = node_only;
        summary
    })
    .await;
    match summary {
        Ok(summary) => Json(summary).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A meter this node heard within this long is answered from its own state alone; one
/// silent for longer, or only rebuilt from ClickHouse at start-up, is looked up in ClickHouse
/// too (another node may hear it now).
const LOCAL_STATE_FRESH_MS: i64 = 60_000;

/// How long the API waits for ClickHouse about a meter this node has heard, but not lately
/// (it has an answer of its own to give).
const SECOND_OPINION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the API waits for ClickHouse about a meter this node has not heard.
const CLICKHOUSE_DEVICE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesQuery {
    /// Only meters not heard for this long: seconds, or a duration such as `90s`, `30m`,
    /// `2h`, `1d`, or `amber` / `red` for the configured thresholds.
    stale_after: Option<String>,
    /// Devices per page, 1 to 1000 (100 by default).
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only the meters of this district of the meter registry.
    district: Option<String>,
}

/// Most devices in one page.
const MAX_PAGE: usize = 1000;

/// Why `stale_after` is not a duration; the text is the 400 answer's.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum BadDuration {
    #[error("stale_after={0:?} is not a duration (7200, 90s, 30m, 2h, 1d, amber, red)")]
    NotANumber(String),
    #[error("stale_after={text:?}: unknown unit {unit:?} (s, m, h, d)")]
    UnknownUnit { text: String, unit: String },
    #[error("stale_after={0:?} is too long")]
    TooLong(String),
}

/// Seconds of a duration as the API takes it.
fn parse_duration_s(text: &str, devices: &DeviceRegistry) -> Result<u64, BadDuration> {
    match text {
        "amber" => return Ok(devices.config().amber_after_s),
        "red" => return Ok(devices.config().red_after_s),
        _ => {}
    }
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| BadDuration::NotANumber(text.to_string()))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(BadDuration::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| BadDuration::TooLong(text.to_string()))
}

#[derive(Serialize)]
struct PageView<'a> {
    devices: Vec<DeviceView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

async fn devices(
    State(state): State<HttpState>,
    query: Result<Query<DevicesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let stale_after_ms = match q
        .stale_after
        .as_deref()
        .map(|s| parse_duration_s(s, &state.devices))
    {
        None => None,
        Some(Ok(s)) => match i64::try_from(s).ok().and_then(|s| s.checked_mul(1000)) {
            Some(ms) => Some(ms),
            None => return error(StatusCode::BAD_REQUEST, "stale_after is too long".into()),
        },
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_PAGE}"),
        );
    }
    let now = now_ms();
    let registry = state.fleet.registry();
    // `amber` and `red`: each meter by its own thresholds (its registry interval's).
    let by_health = match q.stale_after.as_deref() {
        Some("amber") => Some(false),
        Some("red") => Some(true),
        _ => None,
    };
    let config = state.devices.config();
    let page = state.devices.page_where(q.cursor.as_deref(), limit, |d| {
        if let Some(district) = &q.district {
            if registry
                .at(&d.meter_id, now)
                .is_none_or(|r| r.district != *district)
            {
                return false;
            }
        }
        let silent_s = now.saturating_sub(d.last_seen_ms) / 1000;
        match (by_health, stale_after_ms) {
            (Some(red), _) => {
                let (amber_s, red_s) =
                    crate::fleet::thresholds(registry.at(&d.meter_id, now), config);
                silent_s >= i64::try_from(if red { red_s } else { amber_s }).unwrap_or(i64::MAX)
            }
            (None, Some(ms)) => now.saturating_sub(d.last_seen_ms) >= ms,
            (None, None) => true,
        }
    });
    let body = PageView {
        devices: page
            .devices
            .iter()
            .map(|d| view(d, &state, &registry, now, false))
            .collect(),
        next_cursor: page.next_cursor,
    };
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DevicesConfig;

    fn state(stopping: bool) -> HttpState {
        HttpState {
            devices: DeviceRegistry::new(DevicesConfig::default()),
            metrics: crate::metrics_handle(),
            data_dir: std::path::PathBuf::from("/nonexistent"),
            fleet: crate::fleet::Fleet::default(),
            readiness: Readiness {
                marks: Arc::default(),
                wal_max_bytes: 1 << 30,
                clickhouse_failing_since: None,
                clickhouse: None,
                pipeline_running: Arc::new(AtomicBool::new(true)),
                shutdown: if stopping {
                    let shutdown = meterflow_storage::Shutdown::new();
                    shutdown.begin(std::time::Duration::from_secs(1));
                    shutdown.signal()
                } else {
                    ShutdownSignal::never()
                },
                bridges: Vec::new(),
                clickhouse_asked: Arc::default(),
            },
            token: None,
        }
    }

    #[tokio::test]
    async fn a_stopping_node_is_not_ready_for_a_load_balancer() {
        for (stopping, code) in [
            (false, StatusCode::OK),
            (true, StatusCode::SERVICE_UNAVAILABLE),
        ] {
            for query in ["", "ingest"] {
                let params = [(query.to_string(), String::new())]
                    .into_iter()
                    .filter(|(k, _)| !k.is_empty())
                    .collect();
                let answer = ready(State(state(stopping)), HeaderMap::new(), Query(params)).await;
                assert_eq!(answer.status(), code, "stopping {stopping}, ?{query}");
            }
        }
    }

    #[tokio::test]
    async fn a_bridge_long_without_its_subscription_fails_ready_but_not_ready_for_ingest() {
        let mut with_bridge = state(false);
        // Without its subscription for a minute.
        let since = Arc::new(AtomicI64::new(now_ms() - 60_000));
        with_bridge.readiness.bridges = vec![("broker:8883".into(), since.clone())];
        let ask = |query: &str| {
            let params = [(query.to_string(), String::new())]
                .into_iter()
                .filter(|(k, _)| !k.is_empty())
                .collect();
            ready(State(with_bridge.clone()), HeaderMap::new(), Query(params))
        };
        assert_eq!(ask("").await.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ask("ingest").await.status(), StatusCode::OK);
        // Reconnecting for a moment: still ready.
        since.store(now_ms() - 1000, Ordering::Release);
        assert_eq!(ask("").await.status(), StatusCode::OK);
        since.store(0, Ordering::Release);
        assert_eq!(ask("").await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn ready_shows_its_checks_only_to_a_caller_the_api_would_answer() {
        let mut with_bridge = state(false);
        let since = Arc::new(AtomicI64::new(now_ms() - 60_000));
        with_bridge.readiness.bridges = vec![("broker.example:8883".into(), since)];
        with_bridge.token = Some(Arc::from("a-token-of-16-chars-or-more"));
        let body = |state: &HttpState, headers: HeaderMap| {
            let state = state.clone();
            async move {
                let answer = ready(State(state), headers, Query(Default::default())).await;
                let code = answer.status();
                let bytes = axum::body::to_bytes(answer.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (code, String::from_utf8(bytes.to_vec()).unwrap())
            }
        };
        let mut wrong = HeaderMap::new();
        wrong.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        for headers in [HeaderMap::new(), wrong] {
            assert_eq!(
                body(&with_bridge, headers).await,
                (StatusCode::SERVICE_UNAVAILABLE, r#"{"ready":false}"#.into())
            );
        }
        let mut right = HeaderMap::new();
        right.insert(
            header::AUTHORIZATION,
            "Bearer a-token-of-16-chars-or-more".parse().unwrap(),
        );
        let (code, full) = body(&with_bridge, right).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(full.contains("broker.example:8883"), "{full}");
        // Without a token (loopback): to a request naming this machine, not to a rebound name.
        with_bridge.token = None;
        let mut local = HeaderMap::new();
        local.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(body(&with_bridge, local)
            .await
            .1
            .contains("broker.example:8883"));
        let mut rebound = HeaderMap::new();
        rebound.insert(header::HOST, "evil.example".parse().unwrap());
        assert_eq!(body(&with_bridge, rebound).await.1, r#"{"ready":false}"#);
    }

    #[test]
    fn durations_parse_with_units_and_thresholds() {
        let d = DeviceRegistry::new(DevicesConfig::default());
        assert_eq!(parse_duration_s("7200", &d), Ok(7200));
        assert_eq!(parse_duration_s("90s", &d), Ok(90));
        assert_eq!(parse_duration_s("30m", &d), Ok(1800));
        assert_eq!(parse_duration_s("2h", &d), Ok(7200));
        assert_eq!(parse_duration_s("1d", &d), Ok(86_400));
        assert_eq!(
            parse_duration_s("amber", &d),
            Ok(DevicesConfig::default().amber_after_s)
        );
        for bad in ["", "h", "2w", "-1", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration_s(bad, &d).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_local_hosts_without_a_token() {
        let host = |h: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, h.parse().unwrap());
            host_is_local(&headers)
        };
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.0.0.5",
        ] {
            assert!(host(ok), "{ok}");
        }
        for rebound in [
            "evil.example:8080",
            "meters.example.com",
            "localhost.evil.example",
        ] {
            assert!(!host(rebound), "{rebound}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
