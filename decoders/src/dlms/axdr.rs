//! A-XDR `Data` (IEC 62056-6-2, the COSEM data types), as a DataNotification's body carries
//! it: a tag byte, then the value. Every type of the standard is read; a value borrows its
//! bytes from the payload. Lengths are BER: one byte below 0x80, else 0x8N and N bytes.
//!
//! Nesting is bounded ([`MAX_DEPTH`]) and every count is checked against the bytes left before
//! anything is allocated, so no input can make the parser recurse or allocate without bound.

use super::malformed;
use crate::DecodeError;

/// Deepest nesting of arrays and structures read.
pub const MAX_DEPTH: usize = 16;

/// One A-XDR value.
#[derive(Debug, Clone, PartialEq)]
pub enum Data<'a> {
    Null,
    Array(Vec<Data<'a>>),
    Structure(Vec<Data<'a>>),
    Boolean(bool),
    /// The bits, most significant first, and how many of them count.
    BitString(&'a [u8], usize),
    DoubleLong(i32),
    DoubleLongUnsigned(u32),
    OctetString(&'a [u8]),
    VisibleString(&'a [u8]),
    Utf8String(&'a [u8]),
    /// Binary-coded decimal: one byte, two digits.
    Bcd(u8),
    Integer(i8),
    Long(i16),
    Unsigned(u8),
    LongUnsigned(u16),
    Long64(i64),
    Long64Unsigned(u64),
    Enum(u8),
    Float32(f32),
    Float64(f64),
    /// 12 bytes: a COSEM date-time ([`super::cosem::DateTime`]).
    DateTime(&'a [u8; 12]),
    /// 5 bytes: year, month, day of month, day of week.
    Date(&'a [u8; 5]),
    /// 4 bytes: hour, minute, second, hundredths.
    Time(&'a [u8; 4]),
}

impl Data<'_> {
    /// The value as an integer, for the numeric types that are integers.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Data::DoubleLong(v) => v.into(),
            Data::DoubleLongUnsigned(v) => v.into(),
            Data::Integer(v) => v.into(),
            Data::Long(v) => v.into(),
            Data::Unsigned(v) => v.into(),
            Data::LongUnsigned(v) => v.into(),
            Data::Long64(v) => v.into(),
            Data::Long64Unsigned(v) => v.into(),
            Data::Enum(v) => v.into(),
            _ => return None,
        })
    }

    /// The name of the type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::Null => "null-data",
            Data::Array(_) => "array",
            Data::Structure(_) => "structure",
            Data::Boolean(_) => "boolean",
            Data::BitString(..) => "bit-string",
            Data::DoubleLong(_) => "double-long",
            Data::DoubleLongUnsigned(_) => "double-long-unsigned",
            Data::OctetString(_) => "octet-string",
            Data::VisibleString(_) => "visible-string",
            Data::Utf8String(_) => "utf8-string",
            Data::Bcd(_) => "bcd",
            Data::Integer(_) => "integer",
            Data::Long(_) => "long",
            Data::Unsigned(_) => "unsigned",
            Data::LongUnsigned(_) => "long-unsigned",
            Data::Long64(_) => "long64",
            Data::Long64Unsigned(_) => "long64-unsigned",
            Data::Enum(_) => "enum",
            Data::Float32(_) => "float32",
            Data::Float64(_) => "float64",
            Data::DateTime(_) => "date-time",
            Data::Date(_) => "date",
            Data::Time(_) => "time",
        }
    }
}

/// A reader over a payload's bytes that knows its offset into the whole payload.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The offset of `bytes[0]` in the payload, for errors.
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8], base: usize) -> Reader<'a> {
        Reader {
            bytes,
            pos: 0,
            base,
        }
    }

    /// The offset of the next byte in the payload.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn error(&self, reason: impl Into<String>) -> DecodeError {
        malformed(self.offset(), reason)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| self.error(format!("{what}: the payload ends")))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.error(format!(
                "{what}: {n} bytes stated, {} left",
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self, what: &str) -> Result<&'a [u8; N], DecodeError> {
        let offset = self.offset();
        self.take(N, what)?
            .try_into()
            .map_err(|_| malformed(offset, format!("{what}: not {N} bytes")))
    }

    pub fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(*self.array::<2>(what)?))
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(*self.array::<4>(what)?))
    }

    /// A BER length: one byte below 0x80, else 0x81..=0x84 and that many bytes.
    pub fn length(&mut self, what: &str) -> Result<usize, DecodeError> {
        let offset = self.offset();
        let first = self.u8(what)?;
        if first < 0x80 {
            return Ok(usize::from(first));
        }
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(malformed(
                offset,
                format!("{what}: a length of {n} bytes (0x{first:02X})"),
            ));
        }
        let mut len = 0usize;
        for b in self.take(n, what)? {
            len = (len << 8) | usize::from(*b);
        }
        Ok(len)
    }

    /// One A-XDR value.
    pub fn data(&mut self) -> Result<Data<'a>, DecodeError> {
        self.data_at(0)
    }

    fn data_at(&mut self, depth: usize) -> Result<Data<'a>, DecodeError> {
        let offset = self.offset();
        let tag = self.u8("a data tag")?;
        Ok(match tag {
            1 | 2 => {
                if depth >= MAX_DEPTH {
                    return Err(malformed(
                        offset,
                        format!("nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
                let count = self.length("an element count")?;
                // Every element takes at least one byte.
                if count > self.remaining() {
                    return Err(malformed(
                        offset,
                        format!("{count} elements stated, {} bytes left", self.remaining()),
                    ));
                }
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.data_at(depth + 1)?);
                }
                if tag == 1 {
                    Data::Array(items)
                } else {
                    Data::Structure(items)
                }
            }
            19 => self.compact_array(offset, depth)?,
            0 | 3..=6 | 9 | 10 | 12 | 13 | 15..=18 | 20..=27 => Reader::tagged(tag, self)?,
            other => {
                return Err(malformed(
                    offset,
                    format!("data tag {other} (0x{other:02X}) is no A-XDR type"),
                ))
            }
        })
    }

    /// A compact-array (tag 19): a type description, then the array's contents as a
    /// length-prefixed run of values of that type without their tags. Read as an array.
    fn compact_array(&mut self, offset: usize, depth: usize) -> Result<Data<'a>, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(malformed(
                offset,
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let description = TypeDescription::read(self, 0)?;
        // Every element must take bytes: an element of no size (null-data, an empty
        // structure, an array of those) would make a few bytes stand for any number of them.
        let size = description.min_size();
        if size == 0 {
            return Err(malformed(
                offset,
                "a compact-array of elements that take no bytes",
            ));
        }
        let len = self.length("a compact-array's length")?;
        let contents = self.take(len, "a compact-array's contents")?;
        let mut inner = Reader::new(contents, self.base + self.pos - len);
        let mut items = Vec::with_capacity(len / size);
        while !inner.is_empty() {
            items.push(description.value(&mut inner, depth + 1)?);
        }
        Ok(Data::Array(items))
    }
}

/// The type of a compact-array's elements.
#[derive(Debug, Clone, PartialEq)]
enum TypeDescription {
    Simple(u8),
    Array(usize, Box<TypeDescription>),
    Structure(Vec<TypeDescription>),
}

impl TypeDescription {
    fn read(r: &mut Reader<'_>, depth: usize) -> Result<TypeDescription, DecodeError> {
        let offset = r.offset();
        if depth >= MAX_DEPTH {
            return Err(malformed(
                offset,
                format!("a type description nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(match r.u8("a type description")? {
            1 => {
                let count = usize::from(r.u16("an array description's count")?);
                TypeDescription::Array(count, Box::new(TypeDescription::read(r, depth + 1)?))
            }
            2 => {
                let count = r.length("a structure description's count")?;
                if count > r.remaining() {
                    return Err(malformed(
                        offset,
                        format!("{count} member types stated, {} bytes left", r.remaining()),
                    ));
                }
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    members.push(TypeDescription::read(r, depth + 1)?);
                }
                TypeDescription::Structure(members)
            }
            tag @ (0 | 3..=27) if tag != 19 => TypeDescription::Simple(tag),
            other => {
                return Err(malformed(
                    offset,
                    format!("type {other} in a compact-array's description"),
                ))
            }
        })
    }

    /// The fewest bytes a value of this type takes (saturating).
    fn min_size(&self) -> usize {
        match self {
            TypeDescription::Simple(0) => 0,
            TypeDescription::Simple(_) => 1,
            TypeDescription::Array(count, element) => count.saturating_mul(element.min_size()),
            TypeDescription::Structure(members) => members
                .iter()
                .fold(0usize, |n, m| n.saturating_add(m.min_size())),
        }
    }

    /// One value of this type, written without its tag.
    fn value<'a>(&self, r: &mut Reader<'a>, depth: usize) -> Result<Data<'a>, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(r.error(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        match self {
            TypeDescription::Simple(tag) => Reader::tagged(*tag, r),
            TypeDescription::Array(count, element) => {
                if count.saturating_mul(element.min_size().max(1)) > r.remaining() {
                    return Err(r.error(format!(
                        "{count} elements stated, {} bytes left",
                        r.remaining()
                    )));
                }
                let mut items = Vec::with_capacity(*count);
                for _ in 0..*count {
                    items.push(element.value(r, depth + 1)?);
                }
                Ok(Data::Array(items))
            }
            TypeDescription::Structure(members) => {
                let mut items = Vec::with_capacity(members.len());
                for m in members {
                    items.push(m.value(r, depth + 1)?);
                }
                Ok(Data::Structure(items))
            }
        }
    }
}

impl<'a> Reader<'a> {
    /// A simple value of type `tag` whose tag is not in the bytes (compact-array contents).
    fn tagged(tag: u8, r: &mut Reader<'a>) -> Result<Data<'a>, DecodeError> {
        Ok(match tag {
            0 => Data::Null,
            3 => Data::Boolean(r.u8("a boolean")? != 0),
            4 => {
                let bits = r.length("a bit-string's length")?;
                Data::BitString(r.take(bits.div_ceil(8), "a bit-string")?, bits)
            }
            5 => Data::DoubleLong(i32::from_be_bytes(*r.array("a double-long")?)),
            6 => Data::DoubleLongUnsigned(r.u32("a double-long-unsigned")?),
            9 => {
                let n = r.length("an octet-string's length")?;
                Data::OctetString(r.take(n, "an octet-string")?)
            }
            10 => {
                let n = r.length("a visible-string's length")?;
                Data::VisibleString(r.take(n, "a visible-string")?)
            }
            12 => {
                let n = r.length("a utf8-string's length")?;
                Data::Utf8String(r.take(n, "a utf8-string")?)
            }
            13 => Data::Bcd(r.u8("a bcd")?),
            15 => Data::Integer(i8::from_be_bytes(*r.array("an integer")?)),
            16 => Data::Long(i16::from_be_bytes(*r.array("a long")?)),
            17 => Data::Unsigned(r.u8("an unsigned")?),
            18 => Data::LongUnsigned(r.u16("a long-unsigned")?),
            20 => Data::Long64(i64::from_be_bytes(*r.array("a long64")?)),
            21 => Data::Long64Unsigned(u64::from_be_bytes(*r.array("a long64-unsigned")?)),
            22 => Data::Enum(r.u8("an enum")?),
            23 => Data::Float32(f32::from_be_bytes(*r.array("a float32")?)),
            24 => Data::Float64(f64::from_be_bytes(*r.array("a float64")?)),
            25 => Data::DateTime(r.array("a date-time")?),
            26 => Data::Date(r.array("a date")?),
            27 => Data::Time(r.array("a time")?),
            other => return Err(r.error(format!("type {other} in a compact-array"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Data<'_>, DecodeError> {
        let mut r = Reader::new(bytes, 0);
        let d = r.data()?;
        assert!(r.is_empty(), "{} bytes left", r.remaining());
        Ok(d)
    }

    #[test]
    fn every_simple_type() {
        assert_eq!(parse(&[0]).unwrap(), Data::Null);
        assert_eq!(parse(&[3, 1]).unwrap(), Data::Boolean(true));
        assert_eq!(
            parse(&[4, 10, 0xAB, 0xC0]).unwrap(),
            Data::BitString(&[0xAB, 0xC0], 10)
        );
        assert_eq!(
            parse(&[5, 0xFF, 0xFF, 0xFF, 0xFE]).unwrap(),
            Data::DoubleLong(-2)
        );
        assert_eq!(
            parse(&[6, 0, 0x43, 0x45, 0xA0]).unwrap(),
            Data::DoubleLongUnsigned(4_408_736)
        );
        assert_eq!(parse(&[9, 2, 1, 2]).unwrap(), Data::OctetString(&[1, 2]));
        assert_eq!(parse(&[10, 1, b'x']).unwrap(), Data::VisibleString(b"x"));
        assert_eq!(
            parse(&[12, 2, 0xC3, 0xA9]).unwrap(),
            Data::Utf8String("é".as_bytes())
        );
        assert_eq!(parse(&[13, 0x42]).unwrap(), Data::Bcd(0x42));
        assert_eq!(parse(&[15, 0xFD]).unwrap(), Data::Integer(-3));
        assert_eq!(parse(&[16, 0xFF, 0x9C]).unwrap(), Data::Long(-100));
        assert_eq!(parse(&[17, 200]).unwrap(), Data::Unsigned(200));
        assert_eq!(parse(&[18, 0x09, 0x29]).unwrap(), Data::LongUnsigned(2345));
        assert_eq!(
            parse(&[20, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).unwrap(),
            Data::Long64(-1)
        );
        assert_eq!(
            parse(&[21, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap(),
            Data::Long64Unsigned(256)
        );
        assert_eq!(parse(&[22, 30]).unwrap(), Data::Enum(30));
        assert_eq!(
            parse(&[23, 0x40, 0x49, 0x0F, 0xDB]).unwrap(),
            Data::Float32(std::f32::consts::PI)
        );
        let mut f64_bytes = vec![24];
        f64_bytes.extend_from_slice(&1.5f64.to_be_bytes());
        assert_eq!(parse(&f64_bytes).unwrap(), Data::Float64(1.5));
        let mut dt = vec![25];
        dt.extend_from_slice(&[0x07, 0xE5, 7, 19, 1, 15, 46, 35, 0, 0xFF, 0x88, 0x80]);
        assert!(matches!(parse(&dt).unwrap(), Data::DateTime(_)));
        assert!(matches!(
            parse(&[26, 0x07, 0xE5, 7, 19, 1]).unwrap(),
            Data::Date(_)
        ));
        assert!(matches!(
            parse(&[27, 15, 46, 35, 0]).unwrap(),
            Data::Time(_)
        ));
    }

    #[test]
    fn arrays_structures_and_long_lengths() {
        // {1-0:1.8.0, 4408736, {0, Wh}}
        let bytes = [
            2, 3, 9, 6, 1, 0, 1, 8, 0, 255, 6, 0, 0x43, 0x45, 0xA0, 2, 2, 15, 0, 22, 30,
        ];
        let Data::Structure(items) = parse(&bytes).unwrap() else {
            panic!("not a structure");
        };
        assert_eq!(items.len(), 3);
        assert_eq!(items[0], Data::OctetString(&[1, 0, 1, 8, 0, 255]));
        // An octet-string of 200 bytes: 0x81 0xC8.
        let mut long = vec![9, 0x81, 200];
        long.extend(std::iter::repeat_n(7u8, 200));
        assert_eq!(parse(&long).unwrap(), Data::OctetString(&long[3..]));
        let mut long = vec![9, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        assert!(matches!(parse(&long).unwrap(), Data::OctetString(s) if s.len() == 256));
    }

    #[test]
    fn a_compact_array_is_an_array() {
        // compact-array of structure {long-unsigned, integer}: two elements.
        let bytes = [19, 2, 2, 18, 15, 6, 0x00, 0x01, 0xFF, 0x00, 0x02, 0x03];
        assert_eq!(
            parse(&bytes).unwrap(),
            Data::Array(vec![
                Data::Structure(vec![Data::LongUnsigned(1), Data::Integer(-1)]),
                Data::Structure(vec![Data::LongUnsigned(2), Data::Integer(3)]),
            ])
        );
    }

    #[test]
    fn bad_input_is_an_error_at_its_offset() {
        let at = |bytes: &[u8]| match parse(bytes) {
            Err(DecodeError::Malformed {
                position: crate::Position::Offset(offset),
                ..
            }) => offset,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(&[2, 2, 17, 1]), 4, "the second element is missing");
        assert_eq!(at(&[9, 5, 1, 2]), 2, "an octet-string cut short");
        assert_eq!(at(&[200]), 0, "no such tag");
        assert_eq!(at(&[9, 0x85, 1, 1, 1, 1, 1]), 1, "a five-byte length");
        assert_eq!(
            at(&[1, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]),
            0,
            "a count beyond the bytes"
        );
        // Compact arrays whose elements take no bytes would stand for any number of them.
        assert_eq!(at(&[19, 0, 1, 0]), 0, "of null-data");
        assert_eq!(at(&[19, 2, 0, 1, 0]), 0, "of empty structures");
        assert_eq!(at(&[19, 1, 0, 200, 0, 1, 0]), 0, "of arrays of null-data");
        // Elements of a stated count need their bytes.
        assert!(parse(&[19, 1, 0, 200, 17, 1, 0]).is_err());
        // Nesting past the limit.
        let deep: Vec<u8> = std::iter::repeat_n([2u8, 1], 40)
            .flatten()
            .chain([0])
            .collect();
        assert!(parse(&deep).is_err());
    }
}
