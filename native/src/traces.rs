//! Pass 2: ExportTraceServiceRequest protobuf → rows of `otel_traces`, as
//! `streams.otlp.decode._spans_to_columns` builds them from the parsed request; and
//! ExportLogsServiceRequest → rows of `otel_logs` (`_logs_to_columns`; the record itself is read
//! in logs.rs). Both requests share their outer layout: field 1 a list of (resource, list of
//! (scope, list of items, schema URL), schema URL).
//!
//! Protobuf's merge semantics throughout: the last occurrence of a scalar wins, the occurrences of
//! a singular message merge (resource, scope, status, an attribute's value), repeated fields
//! accumulate; a field sent with another wire type than its own is unknown data. Resource and
//! scope fields may follow the spans on the wire, so each ResourceSpans and ScopeSpans is read
//! twice (its own fields, then its children). Attribute maps keep the first position of a key and
//! its last value (a Python dict built in order).
//!
//! A message is refused, with the Python decoder's reason and detail, when protobuf refuses it
//! (pass 1, `validate`), when it holds no resource_spans at all, or at the first span (in wire
//! order) with a time past DateTime64(9) or an id of the wrong size, checked in the Python
//! decoder's order: span times, trace_id, span_id, parent_span_id, event times, then every
//! link's trace_id before any link's span_id.

use crate::anyvalue::{key_value, value_text, Text};
use crate::block::{Block, Signal};
use crate::validate::{validate, Msg};
use crate::wire::{fields, Value, WireError};

/// Why a message was refused: the dead-letter reason and detail of the Python decoder.
#[derive(Debug)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

impl Refusal {
    fn new(reason: &'static str, detail: String) -> Self {
        Refusal { reason, detail }
    }
}

pub const SPAN_KINDS: [&str; 6] = ["Unspecified", "Internal", "Server", "Client", "Producer", "Consumer"];
pub const STATUS_CODES: [&str; 3] = ["Unset", "Ok", "Error"];

/// DateTime64(9) holds nanoseconds as Int64.
const MAX_TIMESTAMP_NS: u64 = i64::MAX as u64;

/// What the Python decoder says of bytes protobuf refuses (`decode._not_protobuf`).
pub fn not_protobuf(payload: &[u8], signal: Signal) -> Refusal {
    let first = payload.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c));
    let detail = format!("not an OTLP protobuf {} request (DecodeError)", signal.name());
    if matches!(first, Some(b'{') | Some(b'[')) {
        Refusal::new("wrong_encoding", detail + " (looks like JSON: is the topic's encoding otlp_json?)")
    } else {
        Refusal::new("undecodable", detail)
    }
}

pub(crate) fn past_2262(what: &str, value: u64) -> Refusal {
    Refusal::new("invalid_value", format!("{what} {value} ns is past 2262-04-11, the last DateTime64(9) instant"))
}

pub(crate) fn check_id(raw: &[u8], size: usize, what: &str) -> Result<(), Refusal> {
    if raw.is_empty() || raw.len() == size {
        Ok(())
    } else {
        Err(Refusal::new("invalid_id", format!("{what} must be {size} bytes, got {}", raw.len())))
    }
}

/// One attribute map being built: (key, pair) in the keys' first-seen order, each key with the
/// pair of its last value.
#[derive(Default)]
pub(crate) struct MapBuilder {
    entries: Vec<(u32, u32)>,
    /// key → position, once a map is too large for a linear search
    index: hashbrown::HashMap<u32, usize>,
}

const LINEAR_MAP: usize = 16;

impl MapBuilder {
    #[inline]
    fn add(&mut self, key: u32, pair: u32) {
        if self.entries.len() < LINEAR_MAP {
            if let Some(entry) = self.entries.iter_mut().find(|e| e.0 == key) {
                entry.1 = pair;
            } else {
                self.entries.push((key, pair));
            }
            return;
        }
        if self.index.is_empty() {
            self.index.extend(self.entries.iter().enumerate().map(|(i, e)| (e.0, i)));
        }
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = pair,
            None => {
                self.index.insert(key, self.entries.len());
                self.entries.push((key, pair));
            }
        }
    }

    /// The pair of `key`, if the map has it.
    fn pair_of(&self, key: u32) -> Option<u32> {
        self.entries.iter().find(|e| e.0 == key).map(|e| e.1)
    }

    /// Store the map in the block; returns its index.
    pub(crate) fn finish(&mut self, block: &mut Block) -> u32 {
        block.maps.pairs.extend(self.entries.iter().map(|e| e.1));
        block.maps.offsets.push(block.maps.pairs.len());
        self.entries.clear();
        self.index.clear();
        (block.maps.len() - 1) as u32
    }
}

/// Scratch space reused across messages.
#[derive(Default)]
pub struct Decoder<'a> {
    pub(crate) values: Vec<&'a [u8]>,
    events: Vec<&'a [u8]>,
    links: Vec<&'a [u8]>,
    pub(crate) text: Vec<u8>,
    pub(crate) map: MapBuilder,
}

pub(crate) type Step = Result<(), Refusal>;

impl From<WireError> for Refusal {
    // Pass 1 refuses every malformed input first; this is for completeness only.
    fn from(_: WireError) -> Self {
        Refusal::new("undecodable", "not an OTLP protobuf traces request (DecodeError)".to_string())
    }
}

impl<'a> Decoder<'a> {
    /// Decode one message of the block's signal into `block` (message `index` of the batch). On a
    /// refusal the block may hold part of the message: the caller truncates it to its mark.
    pub fn message(&mut self, block: &mut Block, payload: &'a [u8], index: u32) -> Step {
        let root = match block.signal {
            Signal::Traces => Msg::Request,
            Signal::Logs => Msg::LogsRequest,
        };
        if validate(payload, root).is_err() {
            return Err(not_protobuf(payload, block.signal));
        }
        let mut resource_spans = 0usize;
        for f in fields(payload, 0) {
            let f = f?;
            if let (1, Value::Len(rs)) = (f.number, f.value) {
                resource_spans += 1;
                self.resource_spans(block, rs, index)?;
            }
        }
        if !payload.is_empty() && resource_spans == 0 {
            // bytes that parse only as unknown fields are not telemetry; an empty request is 0 bytes
            let signal = block.signal.name();
            return Err(Refusal::new("undecodable", format!("no OTLP {signal} content in {} bytes", payload.len())));
        }
        Ok(())
    }

    /// One KeyValue into the map being built.
    #[inline]
    pub(crate) fn attribute(&mut self, block: &mut Block, kv: &'a [u8], depth: usize) -> Step {
        let key = key_value(kv, depth, &mut self.values)?;
        let key = block.keys.intern(key);
        let value = match value_text(&self.values, depth + 1, &mut self.text)? {
            Text::Borrowed(s) => s,
            Text::Written => &self.text,
        };
        let pair = block.pairs.intern(key, value, &mut block.values);
        self.map.add(key, pair);
        Ok(())
    }

    fn resource_spans(&mut self, block: &mut Block, rs: &'a [u8], index: u32) -> Step {
        let mut schema_url: &[u8] = b"";
        let mut dropped = 0u32;
        for f in fields(rs, 1) {
            let f = f?;
            match (f.number, f.value) {
                (1, Value::Len(resource)) => {
                    for g in fields(resource, 2) {
                        let g = g?;
                        match (g.number, g.value) {
                            (1, Value::Len(kv)) => self.attribute(block, kv, 3)?,
                            (2, Value::Varint(v)) => dropped = v as u32,
                            _ => {}
                        }
                    }
                }
                (3, Value::Len(s)) => schema_url = s,
                _ => {}
            }
        }
        // ServiceName: service.name, else unknown_service[:process.executable.name]
        let lookup = |map: &MapBuilder, key: &[u8]| -> Option<&[u8]> {
            let value = block.pair(map.pair_of(block.keys.find(key)?)?).1;
            (!value.is_empty()).then_some(value)
        };
        let service = match lookup(&self.map, b"service.name") {
            Some(v) => v.to_vec(),
            None => match lookup(&self.map, b"process.executable.name") {
                Some(v) => [b"unknown_service:".as_slice(), v].concat(),
                None => b"unknown_service".to_vec(),
            },
        };
        let attrs = self.map.finish(block);
        let resources = &mut block.resources;
        resources.service.push(&service);
        resources.schema_url.push(schema_url);
        resources.dropped.push(dropped);
        resources.attrs.push(attrs);
        let resource = (resources.dropped.len() - 1) as u32;
        for f in fields(rs, 1) {
            let f = f?;
            if let (2, Value::Len(ss)) = (f.number, f.value) {
                self.scope_spans(block, ss, resource, index)?;
            }
        }
        Ok(())
    }

    fn scope_spans(&mut self, block: &mut Block, ss: &'a [u8], resource: u32, index: u32) -> Step {
        let (mut name, mut version, mut schema_url): (&[u8], &[u8], &[u8]) = (b"", b"", b"");
        let mut dropped = 0u32;
        for f in fields(ss, 2) {
            let f = f?;
            match (f.number, f.value) {
                (1, Value::Len(scope)) => {
                    for g in fields(scope, 3) {
                        let g = g?;
                        match (g.number, g.value) {
                            (1, Value::Len(s)) => name = s,
                            (2, Value::Len(s)) => version = s,
                            (3, Value::Len(kv)) => self.attribute(block, kv, 4)?,
                            (4, Value::Varint(v)) => dropped = v as u32,
                            _ => {}
                        }
                    }
                }
                (3, Value::Len(s)) => schema_url = s,
                _ => {}
            }
        }
        let attrs = self.map.finish(block);
        let scopes = &mut block.scopes;
        scopes.name.push(name);
        scopes.version.push(version);
        scopes.schema_url.push(schema_url);
        scopes.dropped.push(dropped);
        scopes.attrs.push(attrs);
        let scope = (scopes.dropped.len() - 1) as u32;
        for f in fields(ss, 2) {
            let f = f?;
            if let (2, Value::Len(item)) = (f.number, f.value) {
                match block.signal {
                    Signal::Traces => self.span(block, item, resource, scope, index)?,
                    Signal::Logs => self.log_record(block, item, resource, scope, index)?,
                }
            }
        }
        Ok(())
    }

    fn span(&mut self, block: &mut Block, span: &'a [u8], resource: u32, scope: u32, index: u32) -> Step {
        const EMPTY: &[u8] = b"";
        let (mut trace_id, mut span_id, mut parent, mut state, mut name) = (EMPTY, EMPTY, EMPTY, EMPTY, EMPTY);
        let mut status_message = EMPTY;
        let (mut kind, mut status_code, mut start, mut end) = (0u64, 0u64, 0u64, 0u64);
        let (mut dropped_attrs, mut dropped_events, mut dropped_links, mut flags) = (0u32, 0u32, 0u32, 0u32);
        self.events.clear();
        self.links.clear();
        for f in fields(span, 3) {
            let f = f?;
            match (f.number, f.value) {
                (1, Value::Len(s)) => trace_id = s,
                (2, Value::Len(s)) => span_id = s,
                (3, Value::Len(s)) => state = s,
                (4, Value::Len(s)) => parent = s,
                (5, Value::Len(s)) => name = s,
                (6, Value::Varint(v)) => kind = v,
                (7, Value::Fixed64(v)) => start = v,
                (8, Value::Fixed64(v)) => end = v,
                (9, Value::Len(kv)) => self.attribute(block, kv, 4)?,
                (10, Value::Varint(v)) => dropped_attrs = v as u32,
                (11, Value::Len(e)) => self.events.push(e),
                (12, Value::Varint(v)) => dropped_events = v as u32,
                (13, Value::Len(l)) => self.links.push(l),
                (14, Value::Varint(v)) => dropped_links = v as u32,
                (15, Value::Len(status)) => {
                    for g in fields(status, 4) {
                        let g = g?;
                        match (g.number, g.value) {
                            (2, Value::Len(s)) => status_message = s,
                            (3, Value::Varint(v)) => status_code = v,
                            _ => {}
                        }
                    }
                }
                (16, Value::Fixed32(v)) => flags = v,
                _ => {}
            }
        }
        let attrs = self.map.finish(block);
        if start > MAX_TIMESTAMP_NS || end > MAX_TIMESTAMP_NS {
            return Err(past_2262("span time", start.max(end)));
        }
        check_id(trace_id, 16, "trace_id")?;
        check_id(span_id, 8, "span_id")?;
        check_id(parent, 8, "parent_span_id")?;
        let events = std::mem::take(&mut self.events);
        let links = std::mem::take(&mut self.links);
        let result = self.events_and_links(block, &events, &links);
        self.events = events;
        self.links = links;
        result?;

        block.origin.push(index);
        block.resource.push(resource);
        block.scope.push(scope);
        block.timestamp.push(start as i64);
        block.trace_id.push_hex(trace_id);
        block.span_id.push_hex(span_id);
        block.parent_span_id.push_hex(parent);
        block.trace_state.push(state);
        block.name.push(name);
        // enums are int32 on the wire: protobuf keeps the low 32 bits of the varint
        let kind = kind as u32 as i32;
        block.kind.push(if (0..6).contains(&kind) { kind as u8 } else { 0 });
        block.attrs.push(attrs);
        block.duration.push(end.saturating_sub(start));
        let code = status_code as u32 as i32;
        block.status_code.push(if (0..3).contains(&code) { code as u8 } else { 0 });
        block.status_message.push(status_message);
        block.events_end.push(block.events.time.len() as u64);
        block.links_end.push(block.links.flags.len() as u64);
        block.flags.push(flags);
        block.dropped_attrs.push(dropped_attrs);
        block.dropped_events.push(dropped_events);
        block.dropped_links.push(dropped_links);
        Ok(())
    }

    fn events_and_links(&mut self, block: &mut Block, events: &[&'a [u8]], links: &[&'a [u8]]) -> Step {
        for &event in events {
            let (mut time, mut name, mut dropped): (u64, &[u8], u32) = (0, b"", 0);
            for f in fields(event, 4) {
                let f = f?;
                match (f.number, f.value) {
                    (1, Value::Fixed64(v)) => time = v,
                    (2, Value::Len(s)) => name = s,
                    (3, Value::Len(kv)) => self.attribute(block, kv, 5)?,
                    (4, Value::Varint(v)) => dropped = v as u32,
                    _ => {}
                }
            }
            let attrs = self.map.finish(block);
            if time > MAX_TIMESTAMP_NS {
                return Err(past_2262("event time", time));
            }
            let e = &mut block.events;
            e.time.push(time as i64);
            e.name.push(name);
            e.attrs.push(attrs);
            e.dropped.push(dropped);
        }
        // every link's trace_id is checked before any link's span_id (the Python decoder builds
        // the Links.TraceId list first)
        let ids = |link: &'a [u8]| -> Result<(&'a [u8], &'a [u8]), Refusal> {
            let (mut trace_id, mut span_id): (&[u8], &[u8]) = (b"", b"");
            for f in fields(link, 4) {
                let f = f?;
                match (f.number, f.value) {
                    (1, Value::Len(s)) => trace_id = s,
                    (2, Value::Len(s)) => span_id = s,
                    _ => {}
                }
            }
            Ok((trace_id, span_id))
        };
        for &link in links {
            check_id(ids(link)?.0, 16, "link trace_id")?;
        }
        for &link in links {
            check_id(ids(link)?.1, 8, "link span_id")?;
        }
        for &link in links {
            let (mut trace_id, mut span_id, mut state): (&[u8], &[u8], &[u8]) = (b"", b"", b"");
            let (mut flags, mut dropped) = (0u32, 0u32);
            for f in fields(link, 4) {
                let f = f?;
                match (f.number, f.value) {
                    (1, Value::Len(s)) => trace_id = s,
                    (2, Value::Len(s)) => span_id = s,
                    (3, Value::Len(s)) => state = s,
                    (4, Value::Len(kv)) => self.attribute(block, kv, 5)?,
                    (5, Value::Varint(v)) => dropped = v as u32,
                    (6, Value::Fixed32(v)) => flags = v,
                    _ => {}
                }
            }
            let attrs = self.map.finish(block);
            let l = &mut block.links;
            l.trace_id.push_hex(trace_id);
            l.span_id.push_hex(span_id);
            l.trace_state.push(state);
            l.attrs.push(attrs);
            l.flags.push(flags);
            l.dropped.push(dropped);
        }
        Ok(())
    }
}
