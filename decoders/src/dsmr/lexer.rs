//! The zero-copy lexer: frames a telegram and yields its objects as slices of the payload.
//! It knows the syntax of a telegram, not what any object means (that is the builder's).

use super::{Obis, Object};

/// Where the telegram is in the payload.
pub(crate) struct Frame<'a> {
    /// Offset of `/`.
    pub start: usize,
    /// 1-based payload line of `/`.
    pub line: usize,
    /// The identification line after `/`, without its line end.
    pub header: &'a [u8],
    /// Offset of the first byte after the header (its line end, or `!`).
    pub body: usize,
}

/// Finds the first `/` and the header line after it.
pub(crate) fn frame(p: &[u8]) -> Option<Frame<'_>> {
    let start = p.iter().position(|&b| b == b'/')?;
    let line = 1 + p.get(..start)?.iter().filter(|&&b| b == b'\n').count();
    let after = p.get(start + 1..)?;
    let len = after
        .iter()
        .position(|&b| matches!(b, b'\r' | b'\n' | b'!'))
        .unwrap_or(after.len());
    Some(Frame {
        start,
        line,
        header: after.get(..len)?,
        body: start + 1 + len,
    })
}

/// One thing the lexer found.
pub(crate) enum Item<'a> {
    Object(Object<'a>),
    /// A line (or object) that is not a well-formed OBIS object.
    Bad {
        line: usize,
        what: &'static str,
        text: &'a [u8],
    },
}

/// Yields the objects of the telegram body, then stops at the `!` line (or the end of input).
pub(crate) struct Lexer<'a> {
    p: &'a [u8],
    pos: usize,
    line: usize,
    done: bool,
    /// Offset and line of the `!` that ends the telegram, once found.
    pub end: Option<(usize, usize)>,
}

impl<'a> Lexer<'a> {
    pub fn new(p: &'a [u8], body: usize, line: usize) -> Self {
        Lexer {
            p,
            pos: body,
            line,
            done: false,
            end: None,
        }
    }

    /// The line the lexer is on (the last line of input once it has run out).
    pub fn line(&self) -> usize {
        self.line
    }

    /// Skips the rest of the line and reports it as bad.
    fn bad_line(&mut self, line: usize, what: &'static str, from: usize) -> Item<'a> {
        let rest = self.p.get(from..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| matches!(b, b'\r' | b'\n'))
            .unwrap_or(rest.len());
        self.pos = from + len;
        Item::Bad {
            line,
            what,
            text: rest.get(..len).unwrap_or_default(),
        }
    }

    /// Offset of the next line's first byte after the line end at `i`, and how many LFs that
    /// crossed.
    fn skip_eol(&self, i: usize) -> (usize, usize) {
        match (self.p.get(i), self.p.get(i + 1)) {
            (Some(b'\r'), Some(b'\n')) => (i + 2, 1),
            (Some(b'\n'), _) => (i + 1, 1),
            _ => (i + 1, 0),
        }
    }

    /// Whether a group left open at a line end goes on at `next` (a long text value broken
    /// over lines) rather than being cut off (the next line starts an object or ends the telegram).
    fn continues_text(&self, next: usize) -> bool {
        match self.p.get(next) {
            None | Some(b'\r' | b'\n' | b'!' | b'/') => false,
            Some(_) => !looks_like_obis_start(self.p.get(next..).unwrap_or_default()),
        }
    }

    fn object(&mut self) -> Item<'a> {
        let start = self.pos;
        let line = self.line;
        let Some((obis, after)) = Obis::lex(self.p, start) else {
            let what = if self.p.get(start) == Some(&b'(') {
                "value without an OBIS id"
            } else {
                "not an OBIS object"
            };
            return self.bad_line(line, what, start);
        };
        if self.p.get(after) != Some(&b'(') {
            return self.bad_line(line, "expected '(' right after the OBIS id", start);
        }
        let mut i = after;
        let mut in_group = false;
        let mut regular = true;
        let mut last_close = None;
        // First byte outside any group after the last parenthesis.
        let mut tail: Option<usize> = None;
        loop {
            match self.p.get(i) {
                None => {
                    if in_group {
                        self.pos = i;
                        return Item::Bad {
                            line,
                            what: "value not closed at the end of the input",
                            text: self.p.get(start..).unwrap_or_default(),
                        };
                    }
                    break;
                }
                Some(b'(') => {
                    if in_group || tail.take().is_some() {
                        regular = false;
                    }
                    in_group = true;
                    i += 1;
                }
                Some(b')') => {
                    if !in_group || tail.take().is_some() {
                        regular = false;
                    }
                    in_group = false;
                    last_close = Some(i);
                    i += 1;
                }
                Some(b'\r' | b'\n') => {
                    let (next, lfs) = self.skip_eol(i);
                    if in_group {
                        if self.continues_text(next) {
                            self.line += lfs;
                            i = next;
                            continue;
                        }
                        self.pos = i;
                        return Item::Bad {
                            line,
                            what: "value not closed at the end of the line",
                            text: self.p.get(start..i).unwrap_or_default(),
                        };
                    }
                    if tail.is_none() && regular && self.p.get(next) == Some(&b'(') {
                        // A value on the next line (DSMR 2.2/3.0 gas: `0-1:24.3.0(...)(m3)` then `(00001.001)`).
                        self.line += lfs;
                        i = next;
                        continue;
                    }
                    break;
                }
                Some(_) => {
                    if !in_group && tail.is_none() {
                        tail = Some(i);
                    }
                    i += 1;
                }
            }
        }
        self.pos = i;
        if let Some(t) = tail {
            let trailing = self.p.get(t..i).unwrap_or_default();
            if !trailing.iter().all(|&b| b == b' ' || b == b'\t') {
                return Item::Bad {
                    line,
                    what: "characters after the value",
                    text: self.p.get(start..i).unwrap_or_default(),
                };
            }
        }
        match last_close.and_then(|close| self.p.get(after..=close)) {
            Some(raw) => Item::Object(Object {
                line,
                obis,
                raw,
                regular,
            }),
            None => Item::Bad {
                line,
                what: "value not closed",
                text: self.p.get(start..i).unwrap_or_default(),
            },
        }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        if self.done {
            return None;
        }
        loop {
            let Some(&b) = self.p.get(self.pos) else {
                self.done = true;
                return None;
            };
            match b {
                b'\n' => {
                    self.pos += 1;
                    self.line += 1;
                }
                b'\r' | b' ' | b'\t' => self.pos += 1,
                b'!' => {
                    self.done = true;
                    self.end = Some((self.pos, self.line));
                    return None;
                }
                _ => return Some(self.object()),
            }
        }
    }
}

/// `1-3 digits` then `-`: the start of an OBIS id.
fn looks_like_obis_start(b: &[u8]) -> bool {
    let digits = b.iter().take(4).take_while(|c| c.is_ascii_digit()).count();
    (1..=3).contains(&digits) && b.get(digits) == Some(&b'-')
}

/// The CRC after `!`: `Ok(None)` when there is none (the next byte is not alphanumeric),
/// `Ok(Some)` for 1 to 4 hex digits (upper or lower case; unpadded CRCs such as `!B9F`
/// occur), `Err` for any other alphanumeric run.
pub(crate) fn crc_field(p: &[u8], bang: usize) -> Result<Option<u16>, &[u8]> {
    let after = p.get(bang + 1..).unwrap_or_default();
    let len = after
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    let field = after.get(..len).unwrap_or_default();
    if field.is_empty() {
        return Ok(None);
    }
    if field.len() > 4 {
        return Err(field);
    }
    let mut value: u16 = 0;
    for &c in field {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return Err(field),
        };
        value = (value << 4) | u16::from(digit);
    }
    Ok(Some(value))
}
