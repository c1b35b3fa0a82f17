//! The protobuf wire format, read as upb (the protobuf library behind the Python decoder) reads it.
//!
//! Limits, every one checked before a byte is used: tags and lengths of at most 5 bytes, tags of
//! at most 32 bits (so field numbers below 2^29), lengths of at most 31 bits and never past the
//! end of the enclosing message; varints of at most 10 bytes (bits past 64 dropped, as protobuf
//! drops them); fixed32/fixed64 fields whole; field number 0 refused (but skipped inside an
//! unknown group, as upb before version 37 does); groups (deprecated, only ever unknown data here)
//! skipped up to their matching end tag with an explicit stack, nested at most `MAX_DEPTH` deep. Nothing is allocated from a declared length: a length only ever makes a
//! sub-slice of input that is already there.

/// Messages and groups nested at most this deep, counted from the request (upb's default limit,
/// which the Python decoder applies).
pub const MAX_DEPTH: usize = 100;

/// Why the wire bytes cannot be read. The Python decoder reports every one of these as protobuf's
/// `DecodeError`; the variant only says which rule it broke (for tests and debugging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    Overlong,
    TagOrLengthTooLarge,
    FieldZero,
    BadWireType,
    UnexpectedEndGroup,
    MismatchedEndGroup,
    UnterminatedGroup,
    TooDeep,
    InvalidUtf8,
}

pub type Result<T> = std::result::Result<T, WireError>;

/// One field's value. `Group` is a group already skipped (unknown data).
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
    Group,
}

#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
}

/// What a tag introduced: a field with its value, the start of a group, or the end of one.
enum Tagged<'a> {
    Field(Field<'a>),
    StartGroup(u32),
    EndGroup(u32),
}

/// A cursor over one message's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// A varint of at most 10 bytes; bits past 64 are dropped.
    #[inline]
    pub fn varint(&mut self) -> Result<u64> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        while shift < 64 {
            let byte = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
        Err(WireError::Overlong)
    }

    /// A tag or a length as upb reads them: at most 5 bytes, and at most `max`.
    #[inline]
    fn varint32(&mut self, max: u64) -> Result<u64> {
        if let Some(&byte) = self.buf.get(self.pos) {
            if byte < 0x80 {
                self.pos += 1;
                return if u64::from(byte) > max { Err(WireError::TagOrLengthTooLarge) } else { Ok(u64::from(byte)) };
            }
        }
        let mut value: u64 = 0;
        for i in 0..5 {
            let byte = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return if value > max { Err(WireError::TagOrLengthTooLarge) } else { Ok(value) };
            }
        }
        Err(WireError::Overlong)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(WireError::Truncated);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// One tag and its value. Field number 0 is refused in a message; inside an unknown group
    /// (`in_group`) the installed upb (protobuf 7.36, upb before 37) skips it like any field.
    #[inline]
    fn tagged(&mut self, in_group: bool) -> Result<Tagged<'a>> {
        let key = self.varint32(u64::from(u32::MAX))?;
        let number = (key >> 3) as u32;
        if number == 0 && !in_group {
            return Err(WireError::FieldZero);
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Value::Fixed64(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            2 => {
                let len = self.varint32(i32::MAX as u64)? as usize;
                Value::Len(self.take(len)?)
            }
            3 => return Ok(Tagged::StartGroup(number)),
            4 => return Ok(Tagged::EndGroup(number)),
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => return Err(WireError::BadWireType),
        };
        Ok(Tagged::Field(Field { number, value }))
    }

    /// Skip the group whose start tag (field `number`) was just read, up to its end tag, with
    /// `room` levels of nesting left (the group itself takes one). Iterative: no input can
    /// exhaust the stack.
    fn skip_group(&mut self, number: u32, room: usize) -> Result<()> {
        if room < 1 {
            return Err(WireError::TooDeep);
        }
        let mut open: Vec<u32> = vec![number];
        while let Some(&innermost) = open.last() {
            if self.at_end() {
                return Err(WireError::UnterminatedGroup);
            }
            match self.tagged(true)? {
                Tagged::Field(_) => {}
                Tagged::StartGroup(inner) => {
                    if open.len() >= room {
                        return Err(WireError::TooDeep);
                    }
                    open.push(inner);
                }
                Tagged::EndGroup(end) => {
                    if end != innermost {
                        return Err(WireError::MismatchedEndGroup);
                    }
                    open.pop();
                }
            }
        }
        Ok(())
    }

    /// The next field of a message nested `depth` levels below the request (groups are skipped
    /// whole and returned as `Value::Group`; an end-group tag here is malformed input).
    #[inline(always)]
    pub fn field(&mut self, depth: usize) -> Result<Field<'a>> {
        // Nearly every tag is one byte, and nearly every length and small varint too: read those
        // inline (the general path below reads the same bytes the same way).
        let (buf, pos) = (self.buf, self.pos);
        if let (Some(&key), Some(&next)) = (buf.get(pos), buf.get(pos + 1)) {
            if (8..0x80).contains(&key) {
                let number = u32::from(key >> 3);
                match key & 7 {
                    2 if next < 0x80 => {
                        let (start, end) = (pos + 2, pos + 2 + next as usize);
                        if let Some(bytes) = buf.get(start..end) {
                            self.pos = end;
                            return Ok(Field { number, value: Value::Len(bytes) });
                        }
                    }
                    0 if next < 0x80 => {
                        self.pos = pos + 2;
                        return Ok(Field { number, value: Value::Varint(u64::from(next)) });
                    }
                    1 => {
                        if let Some(b) = buf.get(pos + 1..pos + 9) {
                            self.pos = pos + 9;
                            let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                            return Ok(Field { number, value: Value::Fixed64(v) });
                        }
                    }
                    5 => {
                        if let Some(b) = buf.get(pos + 1..pos + 5) {
                            self.pos = pos + 5;
                            return Ok(Field { number, value: Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]])) });
                        }
                    }
                    _ => {}
                }
            }
        }
        self.field_slow(depth)
    }

    #[inline(never)]
    fn field_slow(&mut self, depth: usize) -> Result<Field<'a>> {
        match self.tagged(false)? {
            Tagged::Field(f) => Ok(f),
            Tagged::StartGroup(number) => {
                self.skip_group(number, MAX_DEPTH.saturating_sub(depth))?;
                Ok(Field { number, value: Value::Group })
            }
            Tagged::EndGroup(_) => Err(WireError::UnexpectedEndGroup),
        }
    }
}

/// Iterate a message's fields: `for f in fields(buf, depth) { let f = f?; ... }`.
pub struct Fields<'a> {
    reader: Reader<'a>,
    depth: usize,
    failed: bool,
}

#[inline]
pub fn fields(buf: &[u8], depth: usize) -> Fields<'_> {
    Fields { reader: Reader::new(buf), depth, failed: false }
}

impl<'a> Fields<'a> {
    /// Where the next field starts in the message's bytes (after the last one read).
    #[inline]
    pub fn position(&self) -> usize {
        self.reader.pos
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.at_end() {
            return None;
        }
        let item = self.reader.field(self.depth);
        self.failed = item.is_err();
        Some(item)
    }
}
