//! The read model on ClickHouse's `readings` table (18.16 and current releases).
//!
//! Two queries, both answered in RowBinary and parsed here as the bytes arrive:
//!
//! - the window: every reading of the window, `ORDER BY meter_id, channel, ts, received_at,
//!   value, unit`, so the copy that counts of each reading comes last and is kept here, and
//!   a series is complete when the next one begins (it is then delivered: never the whole
//!   answer in memory). Not `FINAL`: the same rule as ClickHouse's `ReplacingMergeTree
//!   (received_at)` with the tie between equal versions decided as on Parquet (the greater
//!   value), and faster on 18.16 (2M readings: 0.97 s against 1.30 s with `FINAL`);
//! - the neighbours (when asked for): for the series that need them (`GLOBAL IN` the
//!   window's series with no reading in `[from - margin, from)`, or none in `[to, to +
//!   margin]`), the last reading before (from `before_since` on, when bounded) and the first
//!   after the window (`argMaxIf` / `argMinIf` on `(ts, received_at, value)`, the same choice
//!   between copies), `ORDER BY meter_id, channel`: read alongside the first one, series by
//!   series;
//! - the silent series (when asked for): the readings in `[silent_since, from - margin)` of
//!   the series `GLOBAL NOT IN` the window's (a set of two columns, nothing aggregated over
//!   the window), each series' last (`argMax` on `(ts, received_at, value, unit)`), `ORDER BY
//!   meter_id, channel`: few, read whole, then merged into the order of the window's series.
//!
//! Every query reads finite values only (`isFinite(value)`), as the Parquet side does.
//!
//! 18.16: no `param_*` (the request's values are checked and written into the SQL: times as
//! numbers, the meter id validated), times in whole seconds (`DateTime`: a bound in
//! milliseconds becomes the second that keeps the same rows), answers not compressed there
//! (`Accept-Encoding: lz4` is asked for, as `meterflow query` does, and only servers from 25.10
//! on honour it). `ts` comes back as Unix milliseconds on both kinds of table
//! ([`TimeColumns`]).

use std::cmp::Ordering;

use clickhouse::query::BytesCursor;

use super::{value_order, Neighbours, ReadRequest, Series};
use crate::clickhouse::{time_columns, ClickHouseConfig, ClickHouseError, TimeColumns};
use crate::StorageError;

const WINDOW_ACTION: &str = "reading the readings of the window";
const NEIGHBOURS_ACTION: &str = "reading the readings before and after the window";
const SILENT_ACTION: &str = "reading the series silent through the window";

/// A string longer than this in an answer means the answer is not what was asked for.
const MAX_STRING: u64 = 1 << 20;

/// Reads the series of `req` from ClickHouse and hands each to `each`, in (meter_id,
/// channel) byte order; stops at the first error, `each`'s included.
pub async fn read<E: From<StorageError>>(
    config: &ClickHouseConfig,
    req: &ReadRequest,
    mut each: impl FnMut(Series) -> Result<(), E>,
) -> Result<(), E> {
    req.validate()?;
    let times = time_columns(config).await.map_err(StorageError::from)?;
    let sql = read_sql(&config.database, req, times)?;
    let client = config
        .client()
        .map_err(StorageError::from)?
        .with_compression(clickhouse::Compression::Lz4);
    let fetch = |sql: &str, action: &'static str| {
        client
            .query(sql)
            .fetch_bytes("RowBinary")
            .map(|cursor| Answer::new(Some(cursor), action))
            .map_err(|source| StorageError::from(ClickHouseError { action, source }))
    };
    // The silent series first, whole (few: one row each), then the two streams.
    let silent = match &sql.silent {
        Some(silent_sql) => silent_series(&mut fetch(silent_sql, SILENT_ACTION)?).await?,
        None => Vec::new(),
    };
    let neighbours = match &sql.neighbours {
        Some(neighbours_sql) => fetch(neighbours_sql, NEIGHBOURS_ACTION)?,
        None => Answer::new(None, NEIGHBOURS_ACTION),
    };
    let window = fetch(&sql.window, WINDOW_ACTION)?;
    merge(window, neighbours, silent, req, &mut each).await
}

/// The series of the silent query's answer (rows as the window's), each its one reading.
async fn silent_series(answer: &mut Answer) -> Result<Vec<Series>, StorageError> {
    let mut silent = Vec::new();
    while answer.ready(&WINDOW_ROW).await? {
        let row = answer.window_row()?;
        silent.push(Series {
            meter_id: row.meter_id.to_string(),
            channel: row.channel.to_string(),
            unit: row.unit.to_string(),
            points: vec![(row.ts_ms, row.value)],
            other_units: Vec::new(),
            received_at: vec![row.received_ms],
            conflicts: Vec::new(),
        });
    }
    Ok(silent)
}

/// Series by series from the window's answer, each with its neighbours from the other, and
/// the `silent` series (in (meter, channel) order, none of the window's) between them.
async fn merge<E: From<StorageError>>(
    mut window: Answer,
    mut neighbours: Answer,
    silent: Vec<Series>,
    req: &ReadRequest,
    each: &mut impl FnMut(Series) -> Result<(), E>,
) -> Result<(), E> {
    let mut silent = silent.into_iter().peekable();
    let mut current: Option<Building> = None;
    while window.ready(&WINDOW_ROW).await? {
        let offset = window.offset();
        let row = window.window_row()?;
        if let Some(b) = current.as_mut().filter(|b| b.is(row.meter_id, row.channel)) {
            b.push(&row, offset)?;
            continue;
        }
        let next = Building::new(&row);
        if let Some(done) = current.replace(next) {
            if (done.meter_id.as_bytes(), done.channel.as_bytes())
                >= (row.meter_id.as_bytes(), row.channel.as_bytes())
            {
                return Err(out_of_order(WINDOW_ACTION, offset).into());
            }
            while let Some(s) = silent.next_if(|s| s.key() < done.key()) {
                each(s)?;
            }
            each(done.finish(req, &mut neighbours).await?)?;
        }
    }
    if let Some(done) = current {
        while let Some(s) = silent.next_if(|s| s.key() < done.key()) {
            each(s)?;
        }
        each(done.finish(req, &mut neighbours).await?)?;
    }
    for s in silent {
        each(s)?;
    }
    Ok(())
}

/// The series of whole answers (RowBinary) to the queries of [`read_sql`] (empty for a query
/// not asked), as [`read`] makes them from the streamed ones: for tests that run the SQL on
/// an engine of their own.
#[doc(hidden)]
pub async fn series_from_answers(
    window: Vec<u8>,
    neighbours: Vec<u8>,
    silent: Vec<u8>,
    req: &ReadRequest,
) -> Result<Vec<Series>, StorageError> {
    let answer = |buf: Vec<u8>, action| {
        let mut a = Answer::new(None, action);
        a.buf = buf;
        a
    };
    let silent = silent_series(&mut answer(silent, SILENT_ACTION)).await?;
    let mut out = Vec::new();
    merge(
        answer(window, WINDOW_ACTION),
        answer(neighbours, NEIGHBOURS_ACTION),
        silent,
        req,
        &mut |s| {
            out.push(s);
            Ok::<_, StorageError>(())
        },
    )
    .await?;
    Ok(out)
}

/// The queries of [`read`] for one request.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct ReadSql {
    /// Every reading of the window.
    pub window: String,
    /// The readings just outside the window, when the request asks for them.
    pub neighbours: Option<String>,
    /// The series silent through the window, when the request asks for them.
    pub silent: Option<String>,
}

/// The queries of [`read`] for a `readings` table with `times`, filled as they are sent.
#[doc(hidden)]
pub fn read_sql(db: &str, req: &ReadRequest, times: TimeColumns) -> Result<ReadSql, StorageError> {
    req.validate()?;
    let (lo, hi) = req.window();
    let ms = |column: &str| match times {
        TimeColumns::Millis => format!("toUnixTimestamp64Milli({column})"),
        TimeColumns::Seconds => format!("toInt64(toUnixTimestamp({column})) * 1000"),
    };
    // `ts >= X` and `ts < X` (the first second at or after X), `ts <= X` and `ts > X` (the
    // last second at or before X): in whole seconds, the same rows as in milliseconds.
    let ceil = |x: i64| time_literal(x, times, true);
    let floor = |x: i64| time_literal(x, times, false);
    let filter = format!(
        "match(channel, '{regex}') AND isFinite(value){meter}",
        regex = sql_string(req.channels.regex()),
        meter = req
            .meter
            .as_ref()
            .map(|m| format!(" AND meter_id = '{m}'"))
            .unwrap_or_default(),
    );
    let in_window = format!("ts >= {} AND ts <= {}", ceil(lo), floor(hi));
    let window = format!(
        "SELECT meter_id, channel, {ts_ms} AS ts_ms, value, unit, {received_ms} AS received_ms \
         FROM {db}.readings \
         WHERE {in_window} AND {filter} \
         ORDER BY meter_id, channel, ts, received_at, value, unit",
        ts_ms = ms("ts"),
        received_ms = ms("received_at"),
    );
    let series = |having: String| {
        format!(
            "(meter_id, channel) GLOBAL IN (SELECT meter_id, channel FROM {db}.readings \
             WHERE {in_window} AND {filter} GROUP BY meter_id, channel HAVING {having})"
        )
    };
    let before = match req.before_since_ms {
        Some(since) => format!("ts < {} AND ts >= {}", ceil(lo), ceil(since)),
        None => format!("ts < {}", ceil(lo)),
    };
    let after = format!("ts > {}", floor(hi));
    let both = req.neighbours == Neighbours::BeforeAndAfter;
    let neighbours = format!(
        "SELECT meter_id, channel, \
           countIf({before}) AS before_n, \
           toInt64(maxIf({ts_ms}, {before})) AS before_ts, \
           argMaxIf(value, (ts, received_at, value), {before}) AS before_value, \
           countIf({after}) AS after_n, \
           toInt64(minIf({ts_ms}, {after})) AS after_ts, \
           argMinIf(value, (ts, -({received_ms}), -value), {after}) AS after_value, \
           argMaxIf(unit, (ts, received_at, value, unit), {before}) AS before_unit, \
           toInt64(argMaxIf({received_ms}, (ts, received_at, value), {before})) AS before_received, \
           toInt64(argMinIf({received_ms}, (ts, -({received_ms}), -value), {after})) AS after_received \
         FROM {db}.readings \
         WHERE {filter} AND (({before} AND {needs_before}){or_after}) \
         GROUP BY meter_id, channel \
         ORDER BY meter_id, channel",
        ts_ms = ms("ts"),
        received_ms = ms("received_at"),
        needs_before = series(format!("min(ts) >= {}", ceil(req.from_ms))),
        or_after = if both {
            format!(
                " OR ({after} AND {})",
                series(format!("max(ts) < {}", ceil(req.to_ms)))
            )
        } else {
            String::new()
        },
    );
    // The series with readings in [silent_since, lo) and none in the window: the window's
    // series as a set (two columns, no aggregate), then the readings before it of the
    // others only are aggregated.
    let silent = req.silent_since_ms.filter(|&s| s < lo).map(|since| {
        format!(
            "SELECT meter_id, channel, toInt64(max({ts_ms})) AS last_ts, \
               argMax(value, (ts, received_at, value, unit)) AS last_value, \
               argMax(unit, (ts, received_at, value, unit)) AS last_unit, \
               toInt64(argMax({received_ms}, (ts, received_at, value, unit))) AS last_received \
             FROM {db}.readings \
             WHERE ts >= {since} AND ts < {lo} AND {filter} \
               AND (meter_id, channel) GLOBAL NOT IN (SELECT meter_id, channel FROM {db}.readings \
                 WHERE {in_window} AND {filter}) \
             GROUP BY meter_id, channel \
             ORDER BY meter_id, channel",
            ts_ms = ms("ts"),
            received_ms = ms("received_at"),
            since = ceil(since),
            lo = ceil(lo),
        )
    });
    Ok(ReadSql {
        window,
        neighbours: (req.neighbours != Neighbours::None).then_some(neighbours),
        silent,
    })
}

/// A time bound in the column's type: exact in milliseconds; in whole seconds the second at
/// or after `ms` (`up`) or at or before it, clamped to what `DateTime` holds.
fn time_literal(ms: i64, times: TimeColumns, up: bool) -> String {
    match times {
        TimeColumns::Millis => format!("fromUnixTimestamp64Milli(toInt64({ms}), 'UTC')"),
        TimeColumns::Seconds => {
            let s = if up {
                ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0)
            } else {
                ms.div_euclid(1000)
            };
            format!("toDateTime({})", s.clamp(0, i64::from(u32::MAX)))
        }
    }
}

/// `text` inside a single-quoted SQL string.
fn sql_string(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

/// One series of the window's answer being gathered.
struct Building {
    meter_id: String,
    channel: String,
    unit: String,
    points: Vec<(i64, f64)>,
    /// When each point's copy that counts was received.
    received: Vec<i64>,
    /// The distinct values of the copies at the last time, and the instants where they
    /// differ with theirs ([`Series::conflicts`]).
    copies: Vec<f64>,
    conflicts: Vec<(i64, Vec<f64>)>,
    /// Every unit of its rows, as first seen.
    units: Vec<String>,
}

impl Building {
    fn new(row: &WindowRow<'_>) -> Building {
        Building {
            meter_id: row.meter_id.to_string(),
            channel: row.channel.to_string(),
            unit: row.unit.to_string(),
            points: vec![(row.ts_ms, row.value)],
            received: vec![row.received_ms],
            copies: vec![row.value],
            conflicts: Vec::new(),
            units: vec![row.unit.to_string()],
        }
    }

    /// The copies of the reading at `ts` are all seen: a conflict when their values differ.
    fn close_copies(&mut self, ts: i64) {
        if self.copies.len() > 1 {
            self.copies.sort_unstable_by(|a, b| value_order(*a, *b));
            self.conflicts.push((ts, std::mem::take(&mut self.copies)));
        }
        self.copies.clear();
    }

    fn key(&self) -> (&[u8], &[u8]) {
        (self.meter_id.as_bytes(), self.channel.as_bytes())
    }

    fn is(&self, meter_id: &str, channel: &str) -> bool {
        self.meter_id == meter_id && self.channel == channel
    }

    /// The next row of this series: a later time, or another copy of the last reading (the
    /// answer's order puts the copy that counts last).
    fn push(&mut self, row: &WindowRow<'_>, offset: u64) -> Result<(), StorageError> {
        match self.points.last().copied() {
            Some(last) if last.0 == row.ts_ms => {
                if let (Some(p), Some(r)) = (self.points.last_mut(), self.received.last_mut()) {
                    p.1 = row.value;
                    *r = row.received_ms;
                }
                if !self
                    .copies
                    .iter()
                    .any(|v| value_order(*v, row.value) == Ordering::Equal)
                {
                    self.copies.push(row.value);
                }
            }
            Some(last) if last.0 > row.ts_ms => return Err(out_of_order(WINDOW_ACTION, offset)),
            Some(last) => {
                self.close_copies(last.0);
                self.points.push((row.ts_ms, row.value));
                self.received.push(row.received_ms);
                self.copies.push(row.value);
            }
            None => {
                self.points.push((row.ts_ms, row.value));
                self.received.push(row.received_ms);
                self.copies.push(row.value);
            }
        }
        if self.unit != row.unit {
            self.unit.clear();
            self.unit.push_str(row.unit);
            if !self.units.iter().any(|u| u == row.unit) {
                self.units.push(row.unit.to_string());
            }
        }
        Ok(())
    }

    /// The series with the neighbours it needs, from the neighbours' answer (read up to it).
    async fn finish(
        mut self,
        req: &ReadRequest,
        neighbours: &mut Answer,
    ) -> Result<Series, StorageError> {
        let (Some(&(first, _)), Some(&(last, _))) = (self.points.first(), self.points.last())
        else {
            return Err(StorageError::ReadRequest {
                reason: "a series without readings".into(),
            });
        };
        self.close_copies(last);
        let (needs_before, needs_after) = (req.needs_before(first), req.needs_after(last));
        if needs_before || needs_after {
            while neighbours.ready(&NEIGHBOURS_ROW).await? {
                let offset = neighbours.offset();
                let n = neighbours.peek_neighbours()?;
                let order = (n.meter_id.as_bytes(), n.channel.as_bytes())
                    .cmp(&(self.meter_id.as_bytes(), self.channel.as_bytes()));
                if order == Ordering::Greater {
                    break;
                }
                let n = neighbours.take_neighbours()?;
                if order == Ordering::Less {
                    continue;
                }
                if needs_before && n.before_n > 0 {
                    if n.before_ts >= first {
                        return Err(out_of_order(NEIGHBOURS_ACTION, offset));
                    }
                    self.points.insert(0, (n.before_ts, n.before_value));
                    self.received.insert(0, n.before_received);
                    if !self.units.contains(&n.before_unit) {
                        self.units.push(n.before_unit);
                    }
                }
                if needs_after && n.after_n > 0 {
                    if n.after_ts <= last {
                        return Err(out_of_order(NEIGHBOURS_ACTION, offset));
                    }
                    self.points.push((n.after_ts, n.after_value));
                    self.received.push(n.after_received);
                }
                break;
            }
        }
        let unit = self.unit;
        let mut other_units: Vec<String> = self.units.into_iter().filter(|u| *u != unit).collect();
        other_units.sort_unstable();
        Ok(Series {
            meter_id: self.meter_id,
            channel: self.channel,
            unit,
            points: self.points,
            other_units,
            received_at: self.received,
            conflicts: self.conflicts,
        })
    }
}

fn out_of_order(action: &'static str, offset: u64) -> StorageError {
    StorageError::ClickHouseAnswer {
        action,
        offset,
        reason: "rows out of the order asked for".into(),
    }
}

/// A field of a RowBinary row.
#[derive(Clone, Copy)]
enum Field {
    /// String: LEB128 length, bytes.
    Str,
    /// Int64, UInt64 or Float64: 8 bytes, little-endian.
    Eight,
}

/// meter_id, channel, ts_ms, value, unit, received_ms.
const WINDOW_ROW: [Field; 6] = [
    Field::Str,
    Field::Str,
    Field::Eight,
    Field::Eight,
    Field::Str,
    Field::Eight,
];
/// meter_id, channel, before_n, before_ts, before_value, after_n, after_ts, after_value,
/// before_unit, before_received, after_received.
const NEIGHBOURS_ROW: [Field; 11] = [
    Field::Str,
    Field::Str,
    Field::Eight,
    Field::Eight,
    Field::Eight,
    Field::Eight,
    Field::Eight,
    Field::Eight,
    Field::Str,
    Field::Eight,
    Field::Eight,
];

struct WindowRow<'a> {
    meter_id: &'a str,
    channel: &'a str,
    ts_ms: i64,
    value: f64,
    unit: &'a str,
    received_ms: i64,
}

struct NeighboursKey<'a> {
    meter_id: &'a str,
    channel: &'a str,
}

struct NeighboursRow {
    before_n: u64,
    before_ts: i64,
    before_value: f64,
    after_n: u64,
    after_ts: i64,
    after_value: f64,
    before_unit: String,
    before_received: i64,
    after_received: i64,
}

/// A RowBinary answer as it arrives: whole rows are parsed from the buffered bytes, which
/// keep only what is not parsed yet.
struct Answer {
    /// `None`: the answer is what `buf` holds (tests).
    cursor: Option<BytesCursor>,
    action: &'static str,
    buf: Vec<u8>,
    /// The next row's first byte in `buf`.
    pos: usize,
    /// Bytes of the answer before `buf[0]`.
    base: u64,
    ended: bool,
}

impl Answer {
    fn new(cursor: Option<BytesCursor>, action: &'static str) -> Answer {
        Answer {
            cursor,
            action,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            ended: false,
        }
    }

    /// The byte of the answer where the next row starts.
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn malformed(&self, at: usize, reason: impl Into<String>) -> StorageError {
        StorageError::ClickHouseAnswer {
            action: self.action,
            offset: self.base + at as u64,
            reason: reason.into(),
        }
    }

    /// Whether a whole row of `layout` is buffered (reading on until it is): false at the
    /// answer's end, an error when it ends inside a row.
    async fn ready(&mut self, layout: &[Field]) -> Result<bool, StorageError> {
        loop {
            if self.row_len(layout)?.is_some() {
                return Ok(true);
            }
            if self.ended {
                if self.pos < self.buf.len() {
                    return Err(self.malformed(self.pos, "the answer ends inside a row"));
                }
                return Ok(false);
            }
            // Keep only what is not parsed, then append the next chunk.
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
            let chunk = match &mut self.cursor {
                Some(cursor) => cursor.next().await.map_err(|source| ClickHouseError {
                    action: self.action,
                    source,
                })?,
                None => None,
            };
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => self.ended = true,
            }
        }
    }

    /// The length of the row of `layout` at `pos`, if it is all buffered.
    fn row_len(&self, layout: &[Field]) -> Result<Option<usize>, StorageError> {
        let mut at = self.pos;
        for field in layout {
            match field {
                Field::Eight => at += 8,
                Field::Str => {
                    let Some((len, header)) = self.leb128(at)? else {
                        return Ok(None);
                    };
                    if len > MAX_STRING {
                        return Err(self.malformed(at, format!("a string of {len} bytes")));
                    }
                    at += header + len as usize;
                }
            }
            if at > self.buf.len() {
                return Ok(None);
            }
        }
        Ok(Some(at - self.pos))
    }

    /// A LEB128 number at `at` and its length in bytes; `None` if it is not all buffered.
    fn leb128(&self, at: usize) -> Result<Option<(u64, usize)>, StorageError> {
        let mut value = 0u64;
        for (i, byte) in self.buf.get(at..).unwrap_or_default().iter().enumerate() {
            if i >= 10 {
                return Err(self.malformed(at, "a string length of more than 10 bytes"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some((value, i + 1)));
            }
        }
        Ok(None)
    }

    /// The string at `*at` (buffered: `ready` said so), moving `*at` past it.
    fn str_at(&self, at: &mut usize) -> Result<&str, StorageError> {
        let start = *at;
        let (len, header) = self
            .leb128(start)?
            .ok_or_else(|| self.malformed(start, "a string cut short"))?;
        let from = start + header;
        let to = from + len as usize;
        let bytes = self
            .buf
            .get(from..to)
            .ok_or_else(|| self.malformed(start, "a string cut short"))?;
        *at = to;
        std::str::from_utf8(bytes).map_err(|_| self.malformed(start, "a string that is not UTF-8"))
    }

    /// The 8 bytes at `*at`, moving `*at` past them.
    fn eight_at(&self, at: &mut usize) -> Result<[u8; 8], StorageError> {
        let start = *at;
        let bytes: [u8; 8] = self
            .buf
            .get(start..start + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| self.malformed(start, "a number cut short"))?;
        *at = start + 8;
        Ok(bytes)
    }

    /// The window's row at `pos` (after `ready(&WINDOW_ROW)`), moving past it.
    fn window_row(&mut self) -> Result<WindowRow<'_>, StorageError> {
        let start = self.pos;
        let len = self
            .row_len(&WINDOW_ROW)?
            .ok_or_else(|| self.malformed(start, "a row cut short"))?;
        self.pos = start + len;
        let this: &Answer = self;
        let mut at = start;
        Ok(WindowRow {
            meter_id: this.str_at(&mut at)?,
            channel: this.str_at(&mut at)?,
            ts_ms: i64::from_le_bytes(this.eight_at(&mut at)?),
            value: f64::from_le_bytes(this.eight_at(&mut at)?),
            unit: this.str_at(&mut at)?,
            received_ms: i64::from_le_bytes(this.eight_at(&mut at)?),
        })
    }

    /// The key of the neighbours' row at `pos` (after `ready(&NEIGHBOURS_ROW)`).
    fn peek_neighbours(&self) -> Result<NeighboursKey<'_>, StorageError> {
        let mut at = self.pos;
        Ok(NeighboursKey {
            meter_id: self.str_at(&mut at)?,
            channel: self.str_at(&mut at)?,
        })
    }

    /// The neighbours' row at `pos`, moving past it.
    fn take_neighbours(&mut self) -> Result<NeighboursRow, StorageError> {
        let mut at = self.pos;
        self.str_at(&mut at)?;
        self.str_at(&mut at)?;
        let u = |b: [u8; 8]| u64::from_le_bytes(b);
        let i = |b: [u8; 8]| i64::from_le_bytes(b);
        let f = |b: [u8; 8]| f64::from_le_bytes(b);
        let row = NeighboursRow {
            before_n: u(self.eight_at(&mut at)?),
            before_ts: i(self.eight_at(&mut at)?),
            before_value: f(self.eight_at(&mut at)?),
            after_n: u(self.eight_at(&mut at)?),
            after_ts: i(self.eight_at(&mut at)?),
            after_value: f(self.eight_at(&mut at)?),
            before_unit: self.str_at(&mut at)?.to_string(),
            before_received: i(self.eight_at(&mut at)?),
            after_received: i(self.eight_at(&mut at)?),
        };
        self.pos = at;
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readings::Channels;

    fn request(meter: Option<&str>) -> ReadRequest {
        ReadRequest {
            from_ms: 1_000,
            to_ms: 3_000,
            margin_ms: 0,
            meter: meter.map(str::to_string),
            channels: Channels::CumulativeRegisters,
            neighbours: Neighbours::BeforeAndAfter,
            before_since_ms: None,
            silent_since_ms: None,
        }
    }

    #[test]
    fn the_sql_has_the_bounds_in_the_column_type_and_the_checked_values_only() {
        let req = ReadRequest {
            from_ms: 1_709_251_200_500,
            to_ms: 1_709_337_600_000,
            margin_ms: 1_000,
            meter: Some("m-1".into()),
            channels: Channels::CumulativeRegisters,
            neighbours: Neighbours::BeforeAndAfter,
            before_since_ms: None,
            silent_since_ms: Some(1_709_000_000_500),
        };
        let sql = read_sql("mf", &req, TimeColumns::Seconds).unwrap();
        let (window, neighbours) = (sql.window, sql.neighbours.unwrap());
        let silent = sql.silent.unwrap();
        // lo = ...199.5 s: the first whole second in it is ...200; hi = ...601 s exactly.
        assert!(
            window.contains("ts >= toDateTime(1709251200) AND ts <= toDateTime(1709337601)"),
            "{window}"
        );
        assert!(window.contains("toInt64(toUnixTimestamp(ts)) * 1000 AS ts_ms"));
        assert!(window.contains("meter_id = 'm-1'"));
        assert!(window.contains(r"match(channel, '^[0-9]+-[0-9]+:(([12]\\.8\\.[0-9]+)|"));
        assert!(window.contains("ORDER BY meter_id, channel, ts, received_at, value, unit"));
        assert!(!window.contains("FINAL"));
        // from = ...200.5 s: `min(ts) >= from` is `>= ...201`; `max(ts) < to` is `< ...600`.
        assert!(neighbours.contains("HAVING min(ts) >= toDateTime(1709251201)"));
        assert!(neighbours.contains("HAVING max(ts) < toDateTime(1709337600)"));
        assert!(neighbours.contains("ts < toDateTime(1709251200)"));
        assert!(neighbours.contains("ts > toDateTime(1709337601)"));
        // Silent: readings of [since, hi] whose newest is before lo.
        assert!(
            silent.contains("ts >= toDateTime(1709000001) AND ts < toDateTime(1709251200)"),
            "{silent}"
        );
        assert!(silent.contains(
            "GLOBAL NOT IN (SELECT meter_id, channel FROM mf.readings \
             WHERE ts >= toDateTime(1709251200) AND ts <= toDateTime(1709337601)"
        ));
        for sql in [&window, &neighbours, &silent] {
            assert!(!sql.contains('{') && !sql.contains('?'), "{sql}");
            assert!(sql.contains("isFinite(value)"), "{sql}");
        }
        // The reading before only, from `before_since` on: no search after the window.
        let before_only = ReadRequest {
            neighbours: Neighbours::Before,
            before_since_ms: Some(1_709_164_800_000),
            silent_since_ms: None,
            ..req.clone()
        };
        let sql = read_sql("mf", &before_only, TimeColumns::Seconds).unwrap();
        let neighbours = sql.neighbours.unwrap();
        assert!(sql.silent.is_none());
        assert!(neighbours.contains("ts < toDateTime(1709251200) AND ts >= toDateTime(1709164800)"));
        // The columns of the reading after stay (0 rows: `after_n` is 0); no row is read for it.
        assert!(!neighbours.contains(" OR (ts > "), "{neighbours}");
        let alone = ReadRequest {
            neighbours: Neighbours::None,
            ..before_only
        };
        assert!(read_sql("mf", &alone, TimeColumns::Seconds)
            .unwrap()
            .neighbours
            .is_none());
        let sql = read_sql("mf", &req, TimeColumns::Millis).unwrap();
        let (window, neighbours) = (sql.window, sql.neighbours.unwrap());
        assert!(window.contains(
            "ts >= fromUnixTimestamp64Milli(toInt64(1709251199500), 'UTC') AND ts <= fromUnixTimestamp64Milli(toInt64(1709337601000), 'UTC')"
        ));
        assert!(window.contains("toUnixTimestamp64Milli(ts) AS ts_ms"));
        assert!(neighbours.contains("-(toUnixTimestamp64Milli(received_at))"));
        // Out of DateTime's range: clamped, the same rows.
        assert_eq!(
            time_literal(-5, TimeColumns::Seconds, true),
            "toDateTime(0)"
        );
        assert_eq!(
            time_literal(i64::MAX, TimeColumns::Seconds, false),
            "toDateTime(4294967295)"
        );
        assert_eq!(
            time_literal(-1_500, TimeColumns::Seconds, true),
            "toDateTime(0)"
        );
        let bad = ReadRequest {
            meter: Some("x' OR 1=1 --".into()),
            ..req
        };
        assert!(read_sql("mf", &bad, TimeColumns::Seconds).is_err());
    }

    /// RowBinary as ClickHouse writes it.
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn s(mut self, text: &str) -> Self {
            self.len(text.len() as u64);
            self.0.extend_from_slice(text.as_bytes());
            self
        }
        fn len(&mut self, mut n: u64) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    self.0.push(byte);
                    return;
                }
                self.0.push(byte | 0x80);
            }
        }
        fn i(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn f(mut self, v: f64) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        /// A window row, received 7 ms after its time.
        fn window(self, meter: &str, channel: &str, ts: i64, value: f64, unit: &str) -> Self {
            self.s(meter)
                .s(channel)
                .i(ts)
                .f(value)
                .s(unit)
                .i(ts + RECEIVED_AFTER)
        }
        fn neighbours(
            self,
            meter: &str,
            channel: &str,
            before: Option<(i64, f64, &str)>,
            after: Option<(i64, f64)>,
        ) -> Self {
            let (bn, bts, bv, bu) = before.map_or((0, 0, 0.0, ""), |(t, v, u)| (1, t, v, u));
            let (an, ats, av) = after.map_or((0, 0, 0.0), |(t, v)| (3, t, v));
            self.s(meter)
                .s(channel)
                .i(bn)
                .i(bts)
                .f(bv)
                .i(an)
                .i(ats)
                .f(av)
                .s(bu)
                .i(bts + RECEIVED_AFTER)
                .i(ats + RECEIVED_AFTER)
        }
        fn answer(self, action: &'static str) -> Answer {
            let mut a = Answer::new(None, action);
            a.buf = self.0;
            a
        }
    }

    async fn merged(
        window: Bytes,
        neighbours: Bytes,
        req: &ReadRequest,
    ) -> Result<Vec<Series>, StorageError> {
        merged_with_silent(window, neighbours, Bytes::default(), req).await
    }

    async fn merged_with_silent(
        window: Bytes,
        neighbours: Bytes,
        silent: Bytes,
        req: &ReadRequest,
    ) -> Result<Vec<Series>, StorageError> {
        let mut out = Vec::new();
        let silent = silent_series(&mut silent.answer(SILENT_ACTION)).await?;
        merge(
            window.answer(WINDOW_ACTION),
            neighbours.answer(NEIGHBOURS_ACTION),
            silent,
            req,
            &mut |s| {
                out.push(s);
                Ok::<_, StorageError>(())
            },
        )
        .await?;
        Ok(out)
    }

    /// The test rows are received this long after their time.
    const RECEIVED_AFTER: i64 = 7;

    /// A series as expected: each point received [`RECEIVED_AFTER`] its time.
    fn expect(
        meter: &str,
        channel: &str,
        unit: &str,
        points: Vec<(i64, f64)>,
        other_units: Vec<String>,
        conflicts: Vec<(i64, Vec<f64>)>,
    ) -> Series {
        Series {
            meter_id: meter.into(),
            channel: channel.into(),
            unit: unit.into(),
            received_at: points.iter().map(|p| p.0 + RECEIVED_AFTER).collect(),
            points,
            other_units,
            conflicts,
        }
    }

    #[tokio::test]
    async fn rows_become_series_with_the_last_copy_and_their_neighbours() {
        let window = Bytes::default()
            // A: two copies at 1000 (the last counts), a unit change at the newest.
            .window("A", "1-0:1.8.0", 1_000, 1.0, "kWh")
            .window("A", "1-0:1.8.0", 1_000, 2.0, "kWh")
            .window("A", "1-0:1.8.0", 2_000, 3.0, "Wh")
            // A long meter id (a two-byte length), a reading at `to`: nothing after needed.
            .window(&"m".repeat(200), "1-0:2.8.0", 3_000, 4.0, "kWh")
            .window("B", "0-1:24.2.1", 1_500, 5.0, "m3");
        let neighbours = Bytes::default()
            .neighbours(
                "A",
                "1-0:1.8.0",
                Some((500, 0.5, "kWh")),
                Some((4_000, 9.0)),
            )
            // A series the window does not have: passed over.
            .neighbours("A", "1-0:1.8.1", Some((1, 1.0, "kWh")), None)
            // Needs both neighbours and the server found none: nothing added.
            .neighbours("B", "0-1:24.2.1", None, None);
        // A's two copies at 1000 (1.0 and 2.0) are a conflict.
        let mut want = vec![
            expect(
                "A",
                "1-0:1.8.0",
                "Wh",
                vec![(500, 0.5), (1_000, 2.0), (2_000, 3.0), (4_000, 9.0)],
                vec!["kWh".into()],
                vec![(1_000, vec![1.0, 2.0])],
            ),
            expect(
                "B",
                "0-1:24.2.1",
                "m3",
                vec![(1_500, 5.0)],
                Vec::new(),
                Vec::new(),
            ),
            expect(
                &"m".repeat(200),
                "1-0:2.8.0",
                "kWh",
                vec![(3_000, 4.0)],
                Vec::new(),
                Vec::new(),
            ),
        ];
        // The window's rows must come in order: B before mmm....
        let window_sorted = Bytes::default()
            .window("A", "1-0:1.8.0", 1_000, 1.0, "kWh")
            .window("A", "1-0:1.8.0", 1_000, 2.0, "kWh")
            .window("A", "1-0:1.8.0", 2_000, 3.0, "Wh")
            .window("B", "0-1:24.2.1", 1_500, 5.0, "m3")
            .window(&"m".repeat(200), "1-0:2.8.0", 3_000, 4.0, "kWh");
        let got = merged(window_sorted, neighbours, &request(None))
            .await
            .unwrap();
        assert_eq!(got, want);
        // Out of order (mmm... before B): an error at the row's byte.
        let e = merged(window, Bytes::default(), &request(None))
            .await
            .unwrap_err();
        assert!(
            matches!(e, StorageError::ClickHouseAnswer { action: WINDOW_ACTION, offset, .. } if offset > 0),
            "{e}"
        );
        // No neighbours' answer at all: the series come without them.
        want[0].points = vec![(1_000, 2.0), (2_000, 3.0)];
        want[0].received_at = vec![1_000 + RECEIVED_AFTER, 2_000 + RECEIVED_AFTER];
        let window_sorted = Bytes::default()
            .window("A", "1-0:1.8.0", 1_000, 1.0, "kWh")
            .window("A", "1-0:1.8.0", 1_000, 2.0, "kWh")
            .window("A", "1-0:1.8.0", 2_000, 3.0, "Wh");
        let got = merged(window_sorted, Bytes::default(), &request(None))
            .await
            .unwrap();
        assert_eq!(got, want[..1]);
    }

    #[tokio::test]
    async fn silent_series_go_between_the_windows_in_key_order() {
        let window = Bytes::default()
            .window("B", "1-0:1.8.0", 1_500, 5.0, "kWh")
            .window("D", "1-0:1.8.0", 1_500, 6.0, "kWh");
        let silent = Bytes::default()
            .window("A", "1-0:1.8.0", 100, 1.0, "kWh")
            .window("B", "1-0:1.8.1", 200, 2.0, "Wh")
            .window("C", "0-1:24.2.1", 300, 3.0, "m3")
            .window("E", "1-0:1.8.0", 400, 4.0, "kWh");
        let req = ReadRequest {
            neighbours: Neighbours::None,
            silent_since_ms: Some(0),
            ..request(None)
        };
        let got = merged_with_silent(window, Bytes::default(), silent, &req)
            .await
            .unwrap();
        let k = |m: &str, c: &str, p: (i64, f64), u: &str| {
            expect(m, c, u, vec![p], Vec::new(), Vec::new())
        };
        assert_eq!(
            got,
            vec![
                k("A", "1-0:1.8.0", (100, 1.0), "kWh"),
                k("B", "1-0:1.8.0", (1_500, 5.0), "kWh"),
                k("B", "1-0:1.8.1", (200, 2.0), "Wh"),
                k("C", "0-1:24.2.1", (300, 3.0), "m3"),
                k("D", "1-0:1.8.0", (1_500, 6.0), "kWh"),
                k("E", "1-0:1.8.0", (400, 4.0), "kWh"),
            ]
        );
    }

    #[tokio::test]
    async fn a_malformed_answer_is_an_error_at_its_byte() {
        let row = Bytes::default()
            .window("A", "1-0:1.8.0", 1_000, 1.0, "kWh")
            .0;
        // Cut inside its second row.
        let mut cut = row.clone();
        cut.extend_from_slice(&row[..row.len() - 2]);
        let e = merged(Bytes(cut), Bytes::default(), &request(None))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StorageError::ClickHouseAnswer { offset, reason, .. } if *offset == row.len() as u64 && reason.contains("ends inside")),
            "{e}"
        );
        // Not UTF-8.
        let bad = Bytes::default()
            .s("A")
            .0
            .into_iter()
            .chain([1, 0xff])
            .collect::<Vec<u8>>();
        let bad = Bytes(bad).i(1_000).f(1.0).s("kWh").i(1_007);
        let e = merged(bad, Bytes::default(), &request(None))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        // A string length no answer of ours has.
        let mut huge = Bytes::default();
        huge.len(1 << 40);
        let e = merged(huge, Bytes::default(), &request(None))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("a string of"), "{e}");
        assert!(e.is_retryable());
        // Copies of one series going back in time.
        let back = Bytes::default()
            .window("A", "1-0:1.8.0", 2_000, 1.0, "kWh")
            .window("A", "1-0:1.8.0", 1_000, 1.0, "kWh");
        let e = merged(back, Bytes::default(), &request(None))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("out of the order"), "{e}");
    }
}
