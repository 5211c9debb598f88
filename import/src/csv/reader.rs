//! Reading a CSV file's structure: the header line (sniffed for its delimiter, a BOM
//! skipped), the [`Tape`] that gives each record's bytes and physical line, and the mapping
//! resolved against the header ([`Source`], a field's text).

use std::io::{self, BufRead, BufReader, Chain, Cursor, Read};

use ::csv::{ByteRecord, ReaderBuilder};

use super::Field;
use crate::ImportError;

/// Parses a delimiter setting: one ASCII character (`,` `;` `|` ...), or `tab`.
pub fn parse_delimiter(text: &str) -> Result<u8, ImportError> {
    let byte = match text.as_bytes() {
        [b] => *b,
        _ if text.eq_ignore_ascii_case("tab") => b'\t',
        _ => {
            return Err(ImportError::mapping(
                "delimiter",
                format!("delimiter {text:?} is not one ASCII character or \"tab\""),
            ))
        }
    };
    check_delimiter(byte)
}

fn check_delimiter(byte: u8) -> Result<u8, ImportError> {
    if !byte.is_ascii() || matches!(byte, b'"' | b'\r' | b'\n') {
        return Err(ImportError::mapping(
            "delimiter",
            format!(
                "delimiter {:?} cannot separate CSV fields",
                char::from(byte)
            ),
        ));
    }
    Ok(byte)
}

/// A CSV file opened for reading: the csv reader, past the header, over its [`Tape`]; the
/// delimiter in use; the header's names, trimmed.
pub(super) struct Opened<R> {
    pub(super) csv: ::csv::Reader<TapedInput<R>>,
    pub(super) delimiter: u8,
    pub(super) header: Vec<String>,
}

/// Reads the header line (a UTF-8 BOM skipped): the delimiter is `delimiter` when given,
/// else detected from that line.
pub(super) fn open<R: Read>(input: R, delimiter: Option<u8>) -> Result<Opened<R>, ImportError> {
    let mut rest = BufReader::new(input);
    let mut first = Vec::new();
    rest.by_ref()
        .take(HEADER_SNIFF_BYTES)
        .read_until(b'\n', &mut first)
        .map_err(|e| ImportError::CsvHeader(e.into()))?;
    if let Some(without_bom) = first.strip_prefix(b"\xEF\xBB\xBF") {
        first = without_bom.to_vec();
    }
    let delimiter = match delimiter {
        Some(d) => check_delimiter(d)?,
        None => detect_delimiter(&first),
    };
    let mut csv = ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .has_headers(true)
        .from_reader(Tape::new(Cursor::new(first).chain(rest)));
    let header: Vec<String> = csv
        .byte_headers()
        .map_err(ImportError::CsvHeader)?
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    if header.is_empty() {
        return Err(ImportError::EmptyCsv);
    }
    Ok(Opened {
        csv,
        delimiter,
        header,
    })
}

/// A resolved field: a column index or a constant.
#[derive(Debug)]
pub(super) enum Source {
    Column { index: usize, label: String },
    Constant(String),
}

impl Source {
    pub(super) fn label(&self) -> &str {
        match self {
            Source::Column { label, .. } => label,
            Source::Constant(_) => "the constant",
        }
    }
}

/// How many bytes of the first line are looked at to detect the delimiter.
const HEADER_SNIFF_BYTES: u64 = 64 * 1024;

/// The input behind the csv reader: the header line read for detection, then the rest.
pub(super) type TapedInput<R> = Tape<Chain<Cursor<Vec<u8>>, BufReader<R>>>;

/// The csv reader's input, keeping the bytes it has read until they are released. The csv
/// crate gives neither a record's bytes nor its physical line (its `Position::line()` is off
/// with CRLF line ends and after blank lines), so both are taken from here by the byte offsets
/// it does report. Lines end in LF or CRLF.
pub(super) struct Tape<R> {
    inner: R,
    /// The stream's bytes from offset `base` on.
    kept: Vec<u8>,
    base: u64,
    /// Offset up to which line ends are counted, and the 1-based line there.
    scanned: u64,
    line: u64,
}

/// Released bytes are dropped once this many have gathered (so dropping costs O(1) a byte).
const TAPE_DROP_BYTES: usize = 64 * 1024;

impl<R: Read> Read for Tape<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.kept
            .extend_from_slice(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

impl<R> Tape<R> {
    fn new(inner: R) -> Self {
        Tape {
            inner,
            kept: Vec::new(),
            base: 0,
            scanned: 0,
            line: 1,
        }
    }

    /// The stream's bytes `from..to` (empty where not kept).
    fn slice(&self, from: u64, to: u64) -> &[u8] {
        let index = |offset: u64| usize::try_from(offset.saturating_sub(self.base)).ok();
        match (index(from), index(to)) {
            (Some(from), Some(to)) => self.kept.get(from..to).unwrap_or_default(),
            _ => &[],
        }
    }

    /// Where the record the csv reader read from `start` to `end` begins, past blank lines
    /// and the rest of the previous line end, and its 1-based line.
    pub(super) fn record_start(&mut self, start: u64, end: u64) -> (u64, u64) {
        let lead = self
            .slice(start, end)
            .iter()
            .take_while(|&&b| matches!(b, b'\r' | b'\n'))
            .count();
        let start = start + lead as u64;
        (start, self.line_at(start))
    }

    /// A record's bytes `start..end`, without its line end.
    pub(super) fn record_bytes(&self, start: u64, end: u64) -> &[u8] {
        let mut raw = self.slice(start, end);
        while let [rest @ .., b'\r' | b'\n'] = raw {
            raw = rest;
        }
        raw
    }

    /// The 1-based line of `offset` (offsets asked for only grow).
    fn line_at(&mut self, offset: u64) -> u64 {
        let ends = self
            .slice(self.scanned, offset)
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.line += ends as u64;
        self.scanned = self.scanned.max(offset);
        self.line
    }

    /// Bytes before `offset` are no longer needed.
    pub(super) fn release(&mut self, offset: u64) {
        self.line_at(offset);
        let done = usize::try_from(offset.saturating_sub(self.base)).unwrap_or(usize::MAX);
        if done >= TAPE_DROP_BYTES {
            let done = done.min(self.kept.len());
            self.kept.drain(..done);
            self.base += done as u64;
        }
    }
}

/// Resolves a mapped field against the header.
pub(super) fn resolve(
    target: &'static str,
    field: &Field,
    header: &[String],
    delimiter: u8,
) -> Result<Source, ImportError> {
    let columns = || {
        let names: Vec<String> = header.iter().map(|h| format!("{h:?}")).collect();
        format!(
            "{} (read with delimiter {:?})",
            names.join(", "),
            char::from(delimiter)
        )
    };
    match field {
        Field::Constant(c) => Ok(Source::Constant(c.clone())),
        Field::Column(name) => {
            let name = name.trim();
            let index =
                header
                    .iter()
                    .position(|h| h == name)
                    .ok_or_else(|| ImportError::NoColumn {
                        key: target,
                        column: name.to_string(),
                        header: columns(),
                    })?;
            Ok(Source::Column {
                index,
                label: format!("column {name:?}"),
            })
        }
        Field::Position(n) => {
            if *n == 0 || *n > header.len() {
                return Err(ImportError::BeyondHeader {
                    key: target,
                    position: *n,
                    columns: header.len(),
                    header: columns(),
                });
            }
            Ok(Source::Column {
                index: n - 1,
                label: format!("column #{n}"),
            })
        }
    }
}

/// A field's text, whitespace trimmed.
pub(super) fn text<'a>(
    record: &'a ByteRecord,
    source: &'a Source,
    target: &'static str,
) -> Result<&'a str, ImportError> {
    match source {
        Source::Constant(c) => Ok(c),
        Source::Column { index, label } => {
            let bytes = record
                .get(*index)
                .ok_or_else(|| ImportError::row(target, format!("{target}: {label} is missing")))?;
            std::str::from_utf8(bytes)
                .map(str::trim)
                .map_err(|_| ImportError::row(target, format!("{target}: {label} is not UTF-8")))
        }
    }
}

/// The delimiter of a header line: the most frequent of `,` `;` tab outside quotes (`,` when
/// none occurs or on a tie with it).
pub(super) fn detect_delimiter(line: &[u8]) -> u8 {
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0)];
    let mut in_quotes = false;
    for &b in line {
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\r' | b'\n' if !in_quotes => break,
            _ if !in_quotes => {
                for (d, n) in &mut counts {
                    if *d == b {
                        *n += 1;
                    }
                }
            }
            _ => {}
        }
    }
    let mut best = (b',', 0);
    for (d, n) in counts {
        if n > best.1 {
            best = (d, n);
        }
    }
    best.0
}
