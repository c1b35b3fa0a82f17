//! The label policy's redaction of a spans or logs request at the wire level, with the decisions
//! made in Python (streams/stages/redact_otlp.py: `redact_request` is the reference, walking the
//! parsed request; the tests compare both byte for byte on requests protobuf serialized, and
//! message for message on fuzzed ones).
//!
//! Python decides once per distinct key (`LabelStage.key_drop`) and per distinct string
//! (`LabelStage.scrub`); this applies the decisions where `redact_request` would:
//!
//! - every string field of every message: a string with a decision takes its new value, or the
//!   mask when the decision drops it;
//! - every attribute list (at any depth, kvlist values included): an entry whose key is dropped
//!   leaves the list, and so does an entry whose string value is dropped; an attribute's key is
//!   never rewritten;
//! - an array's string item that is dropped leaves the array; a log body's string is masked.
//!
//! Everything else is copied as it came (field order, unknown fields, the encoding of numbers),
//! so a request with nothing to change comes back unchanged. protobuf merges a message field sent
//! twice; where that could change a decision (an attribute with two keys or two values, an
//! AnyValue with two values) this declines (`NotCanonical`) and the Python walk decides. No
//! protobuf serializer writes either. It declines messages nested past `MAX_REWRITE_DEPTH` too.

use std::collections::{HashMap, HashSet};

use crate::validate::{Kind, Msg};
use crate::wire::{fields, Field, Value, WireError};

pub const MASK: &[u8] = b"****";

/// Messages nested deeper than this are left to the Python walk: each level of a rewritten
/// message is written again by the level above it (a new length), so the work grows with depth
/// times size. OTLP requests nest 6 deep, structured log bodies a few more.
pub const MAX_REWRITE_DEPTH: usize = 32;

/// Why a request is not rewritten here.
#[derive(Debug, PartialEq, Eq)]
pub enum Declined {
    Wire(WireError),
    NotCanonical,
    TooDeep,
}

impl From<WireError> for Declined {
    fn from(e: WireError) -> Self {
        Declined::Wire(e)
    }
}

type Result<T> = std::result::Result<T, Declined>;

/// The decisions: keys whose entries leave every attribute list, and strings with a new value
/// (`None`: dropped).
pub struct Decisions<'d> {
    pub drop_keys: HashSet<&'d [u8]>,
    pub replace: HashMap<&'d [u8], Option<&'d [u8]>>,
}

/// Where an AnyValue sits decides what a dropped string does: its attribute leaves the list, its
/// array item leaves the array, a log body is masked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Attribute,
    ArrayItem,
    Body,
}

/// What became of an AnyValue or an attribute.
enum Outcome {
    Kept(usize), // values changed inside
    Dropped,     // it leaves its list
}

struct Rewriter<'d, 'r> {
    decisions: &'r Decisions<'d>,
    changed: usize,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len(out: &mut Vec<u8>, number: u32, body: &[u8]) {
    put_varint(out, (u64::from(number) << 3) | 2);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// The fields of a message, each with its bytes as they came (tag, length and value).
fn each_field<'a>(buf: &'a [u8], depth: usize) -> impl Iterator<Item = Result<(Field<'a>, &'a [u8])>> + 'a {
    let mut it = fields(buf, depth);
    let mut start = 0;
    std::iter::from_fn(move || {
        let field = it.next()?;
        let raw = &buf[start..it.position()];
        start = it.position();
        Some(field.map(|f| (f, raw)).map_err(Declined::from))
    })
}

/// The request `payload` (`root`: `Msg::Request` or `Msg::LogsRequest`) redacted, and how many
/// values changed (as `redact_request` counts them).
pub fn redact(payload: &[u8], root: Msg, decisions: &Decisions<'_>) -> Result<(Vec<u8>, usize)> {
    let mut r = Rewriter { decisions, changed: 0 };
    let mut out = Vec::with_capacity(payload.len());
    r.message(payload, root, 0, &mut out)?;
    Ok((out, r.changed))
}

impl<'d, 'r> Rewriter<'d, 'r> {
    /// A message of type `msg` (not an AnyValue, KeyValue, ArrayValue or KeyValueList: those are
    /// read where they sit) into `out`.
    fn message(&mut self, buf: &[u8], msg: Msg, depth: usize, out: &mut Vec<u8>) -> Result<()> {
        if depth > MAX_REWRITE_DEPTH {
            return Err(Declined::TooDeep);
        }
        for item in each_field(buf, depth) {
            let (field, raw) = item?;
            let Value::Len(bytes) = field.value else {
                out.extend_from_slice(raw);
                continue;
            };
            match msg.field(field.number) {
                Kind::Str => self.string(field.number, bytes, raw, out)?,
                Kind::Message(Msg::KeyValue) => {
                    let mut body = Vec::new();
                    if let Outcome::Kept(n) = self.attribute(bytes, depth + 1, &mut body)? {
                        self.copy_or_put(field.number, raw, &body, n, out);
                    }
                }
                Kind::Message(Msg::AnyValue) => {
                    let mut body = Vec::new();
                    if let Outcome::Kept(n) = self.any_value(bytes, Place::Body, depth + 1, &mut body)? {
                        self.copy_or_put(field.number, raw, &body, n, out);
                    }
                }
                Kind::Message(sub) => {
                    let before = self.changed;
                    let mut body = Vec::with_capacity(bytes.len());
                    self.message(bytes, sub, depth + 1, &mut body)?;
                    self.copy_or_put(field.number, raw, &body, self.changed - before, out);
                }
                _ => out.extend_from_slice(raw),
            }
        }
        Ok(())
    }

    /// The field as it came when nothing inside changed, else rewritten.
    fn copy_or_put(&self, number: u32, raw: &[u8], body: &[u8], changed: usize, out: &mut Vec<u8>) {
        if changed == 0 {
            out.extend_from_slice(raw);
        } else {
            put_len(out, number, body);
        }
    }

    /// A string field outside attributes and AnyValues: rewritten, or masked when dropped.
    fn string(&mut self, number: u32, text: &[u8], raw: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if std::str::from_utf8(text).is_err() {
            return Err(WireError::InvalidUtf8.into());
        }
        match self.decisions.replace.get(text) {
            None => out.extend_from_slice(raw),
            Some(new) => {
                self.changed += 1;
                put_len(out, number, new.unwrap_or(MASK));
            }
        }
        Ok(())
    }

    /// One KeyValue of an attribute list.
    fn attribute(&mut self, buf: &[u8], depth: usize, out: &mut Vec<u8>) -> Result<Outcome> {
        if depth > MAX_REWRITE_DEPTH {
            return Err(Declined::TooDeep);
        }
        let mut key: &[u8] = b"";
        let (mut keys, mut values) = (0, 0);
        for field in fields(buf, depth) {
            let field = field?;
            match field.number {
                1 => {
                    keys += 1;
                    if let Value::Len(bytes) = field.value {
                        if std::str::from_utf8(bytes).is_err() {
                            return Err(WireError::InvalidUtf8.into());
                        }
                        key = bytes;
                    }
                }
                2 => values += 1,
                _ => {}
            }
        }
        if keys > 1 || values > 1 {
            return Err(Declined::NotCanonical);
        }
        if self.decisions.drop_keys.contains(key) {
            self.changed += 1;
            return Ok(Outcome::Dropped);
        }
        let mut changed = 0;
        for item in each_field(buf, depth) {
            let (field, raw) = item?;
            match (field.number, field.value) {
                (2, Value::Len(bytes)) => {
                    let mut body = Vec::new();
                    match self.any_value(bytes, Place::Attribute, depth + 1, &mut body)? {
                        Outcome::Dropped => return Ok(Outcome::Dropped),
                        Outcome::Kept(0) => out.extend_from_slice(raw),
                        Outcome::Kept(n) => {
                            changed += n;
                            put_len(out, 2, &body);
                        }
                    }
                }
                _ => out.extend_from_slice(raw),
            }
        }
        Ok(Outcome::Kept(changed))
    }

    /// One AnyValue: its string, or the items of its array, or the entries of its kvlist.
    fn any_value(&mut self, buf: &[u8], place: Place, depth: usize, out: &mut Vec<u8>) -> Result<Outcome> {
        if depth > MAX_REWRITE_DEPTH {
            return Err(Declined::TooDeep);
        }
        let mut values = 0;
        for field in fields(buf, depth) {
            if (1..=8).contains(&field?.number) {
                values += 1;
            }
        }
        if values > 1 {
            return Err(Declined::NotCanonical);
        }
        let before = self.changed;
        for item in each_field(buf, depth) {
            let (field, raw) = item?;
            match (field.number, field.value) {
                (1, Value::Len(text)) => {
                    if std::str::from_utf8(text).is_err() {
                        return Err(WireError::InvalidUtf8.into());
                    }
                    match self.decisions.replace.get(text) {
                        None => out.extend_from_slice(raw),
                        Some(None) if place != Place::Body => {
                            self.changed += 1;
                            return Ok(Outcome::Dropped);
                        }
                        Some(new) => {
                            self.changed += 1;
                            put_len(out, 1, new.unwrap_or(MASK));
                        }
                    }
                }
                (5, Value::Len(array)) => {
                    let before_array = self.changed;
                    let mut body = Vec::with_capacity(array.len());
                    self.list(array, Msg::AnyValue, depth + 1, &mut body)?;
                    self.copy_or_put(5, raw, &body, self.changed - before_array, out);
                }
                (6, Value::Len(kvlist)) => {
                    let before_list = self.changed;
                    let mut body = Vec::with_capacity(kvlist.len());
                    self.list(kvlist, Msg::KeyValue, depth + 1, &mut body)?;
                    self.copy_or_put(6, raw, &body, self.changed - before_list, out);
                }
                _ => out.extend_from_slice(raw),
            }
        }
        Ok(Outcome::Kept(self.changed - before))
    }

    /// An ArrayValue (`of` `Msg::AnyValue`) or a KeyValueList (`of` `Msg::KeyValue`): field 1 of
    /// either, each item kept, rewritten or left out.
    fn list(&mut self, buf: &[u8], of: Msg, depth: usize, out: &mut Vec<u8>) -> Result<()> {
        if depth > MAX_REWRITE_DEPTH {
            return Err(Declined::TooDeep);
        }
        for item in each_field(buf, depth) {
            let (field, raw) = item?;
            let (1, Value::Len(bytes)) = (field.number, field.value) else {
                out.extend_from_slice(raw);
                continue;
            };
            let mut body = Vec::new();
            let outcome = if of == Msg::KeyValue {
                self.attribute(bytes, depth + 1, &mut body)?
            } else {
                self.any_value(bytes, Place::ArrayItem, depth + 1, &mut body)?
            };
            match outcome {
                Outcome::Dropped => {}
                Outcome::Kept(0) => out.extend_from_slice(raw),
                Outcome::Kept(_) => put_len(out, 1, &body),
            }
        }
        Ok(())
    }
}
