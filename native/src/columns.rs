//! The columns of `otel_traces` and `otel_logs` (streams.otlp.columns.TRACE_COLUMNS and
//! LOG_COLUMNS, in those orders) and the ClickHouse Native-format block of any of them.
//!
//! A Native block (HTTP `FORMAT Native`): varint column count, varint row count, then per
//! column its name, its type (each a varint length and the bytes) and its data. Types are the
//! table's: `DateTime64(9)` as Int64 nanoseconds, Array(T) as UInt64 cumulative offsets and then
//! the elements, a Map as an array of (key, value) (offsets, then every key, then every value),
//! integers little-endian. A LowCardinality(String) column (or map key, or array element) is sent
//! dictionary-encoded, as clickhouse-connect sends it: before the data the serialization version
//! (UInt64 1); then, where it has values, UInt64 flags (index width, a dictionary of its own), the
//! dictionary (UInt64 count, the strings in the order first seen) and the indexes (UInt64 count,
//! each 1, 2, 4 or 8 bytes). The block's own dictionaries make it cheap: map keys are numbered
//! once per batch, a service name once per resource, span kinds and status codes are codes.

use std::collections::HashMap;

use crate::block::{Block, Signal, StrCol};
use crate::traces::{SPAN_KINDS, STATUS_CODES};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Col {
    Timestamp,
    TraceId,
    SpanId,
    ParentSpanId,
    TraceState,
    SpanName,
    SpanKind,
    ServiceName,
    ResourceAttributes,
    ScopeName,
    ScopeVersion,
    SpanAttributes,
    Duration,
    StatusCode,
    StatusMessage,
    EventsTimestamp,
    EventsName,
    EventsAttributes,
    LinksTraceId,
    LinksSpanId,
    LinksTraceState,
    LinksAttributes,
    ResourceSchemaUrl,
    ResourceDroppedAttrCount,
    ScopeAttributes,
    ScopeDroppedAttrCount,
    ScopeSchemaUrl,
    SpanFlags,
    DroppedAttributesCount,
    DroppedEventsCount,
    DroppedLinksCount,
    EventsDroppedAttributesCount,
    LinksFlags,
    LinksDroppedAttributesCount,
    // log records
    TraceFlags,
    SeverityText,
    SeverityNumber,
    Body,
    LogAttributes,
    EventName,
    ObservedTimestamp,
    LogFlags,
    // set by the stages: in a block only once they ran (Block::has)
    SampleWeight,
    ServiceTeam,
    ServiceTier,
    ServiceOwner,
}

/// (column, name, Native type as sent), in TRACE_COLUMNS order.
pub const COLUMNS: [(Col, &str, &str); 34] = [
    (Col::Timestamp, "Timestamp", "DateTime64(9)"),
    (Col::TraceId, "TraceId", "String"),
    (Col::SpanId, "SpanId", "String"),
    (Col::ParentSpanId, "ParentSpanId", "String"),
    (Col::TraceState, "TraceState", "String"),
    (Col::SpanName, "SpanName", "LowCardinality(String)"),
    (Col::SpanKind, "SpanKind", "LowCardinality(String)"),
    (Col::ServiceName, "ServiceName", "LowCardinality(String)"),
    (Col::ResourceAttributes, "ResourceAttributes", "Map(LowCardinality(String), String)"),
    (Col::ScopeName, "ScopeName", "String"),
    (Col::ScopeVersion, "ScopeVersion", "String"),
    (Col::SpanAttributes, "SpanAttributes", "Map(LowCardinality(String), String)"),
    (Col::Duration, "Duration", "UInt64"),
    (Col::StatusCode, "StatusCode", "LowCardinality(String)"),
    (Col::StatusMessage, "StatusMessage", "String"),
    (Col::EventsTimestamp, "Events.Timestamp", "Array(DateTime64(9))"),
    (Col::EventsName, "Events.Name", "Array(LowCardinality(String))"),
    (Col::EventsAttributes, "Events.Attributes", "Array(Map(LowCardinality(String), String))"),
    (Col::LinksTraceId, "Links.TraceId", "Array(String)"),
    (Col::LinksSpanId, "Links.SpanId", "Array(String)"),
    (Col::LinksTraceState, "Links.TraceState", "Array(String)"),
    (Col::LinksAttributes, "Links.Attributes", "Array(Map(LowCardinality(String), String))"),
    (Col::ResourceSchemaUrl, "ResourceSchemaUrl", "LowCardinality(String)"),
    (Col::ResourceDroppedAttrCount, "ResourceDroppedAttrCount", "UInt32"),
    (Col::ScopeAttributes, "ScopeAttributes", "Map(LowCardinality(String), String)"),
    (Col::ScopeDroppedAttrCount, "ScopeDroppedAttrCount", "UInt32"),
    (Col::ScopeSchemaUrl, "ScopeSchemaUrl", "LowCardinality(String)"),
    (Col::SpanFlags, "SpanFlags", "UInt32"),
    (Col::DroppedAttributesCount, "DroppedAttributesCount", "UInt32"),
    (Col::DroppedEventsCount, "DroppedEventsCount", "UInt32"),
    (Col::DroppedLinksCount, "DroppedLinksCount", "UInt32"),
    (Col::EventsDroppedAttributesCount, "Events.DroppedAttributesCount", "Array(UInt32)"),
    (Col::LinksFlags, "Links.Flags", "Array(UInt32)"),
    (Col::LinksDroppedAttributesCount, "Links.DroppedAttributesCount", "Array(UInt32)"),
];

/// (column, name, Native type as sent), in LOG_COLUMNS order.
pub const LOG_COLUMNS: [(Col, &str, &str); 21] = [
    (Col::Timestamp, "Timestamp", "DateTime64(9)"),
    (Col::TraceId, "TraceId", "String"),
    (Col::SpanId, "SpanId", "String"),
    (Col::TraceFlags, "TraceFlags", "UInt8"),
    (Col::SeverityText, "SeverityText", "LowCardinality(String)"),
    (Col::SeverityNumber, "SeverityNumber", "UInt8"),
    (Col::ServiceName, "ServiceName", "LowCardinality(String)"),
    (Col::Body, "Body", "String"),
    (Col::ResourceSchemaUrl, "ResourceSchemaUrl", "LowCardinality(String)"),
    (Col::ResourceAttributes, "ResourceAttributes", "Map(LowCardinality(String), String)"),
    (Col::ScopeSchemaUrl, "ScopeSchemaUrl", "LowCardinality(String)"),
    (Col::ScopeName, "ScopeName", "String"),
    (Col::ScopeVersion, "ScopeVersion", "LowCardinality(String)"),
    (Col::ScopeAttributes, "ScopeAttributes", "Map(LowCardinality(String), String)"),
    (Col::LogAttributes, "LogAttributes", "Map(LowCardinality(String), String)"),
    (Col::EventName, "EventName", "String"),
    (Col::ObservedTimestamp, "ObservedTimestamp", "DateTime64(9)"),
    (Col::LogFlags, "LogFlags", "UInt32"),
    (Col::DroppedAttributesCount, "DroppedAttributesCount", "UInt32"),
    (Col::ResourceDroppedAttrCount, "ResourceDroppedAttrCount", "UInt32"),
    (Col::ScopeDroppedAttrCount, "ScopeDroppedAttrCount", "UInt32"),
];

/// The columns of a signal's table, in order.
pub fn columns_of(signal: Signal) -> &'static [(Col, &'static str, &'static str)] {
    match signal {
        Signal::Traces => &COLUMNS,
        Signal::Logs => &LOG_COLUMNS,
    }
}

/// Columns the stages add after decoding, in the order they follow COLUMNS.
pub const EXTRA_COLUMNS: [(Col, &str, &str); 4] = [
    (Col::SampleWeight, "SampleWeight", "Float64"),
    (Col::ServiceTeam, "ServiceTeam", "LowCardinality(String)"),
    (Col::ServiceTier, "ServiceTier", "LowCardinality(String)"),
    (Col::ServiceOwner, "ServiceOwner", "LowCardinality(String)"),
];

static EMPTY_STRINGS: StrCol = StrCol { data: Vec::new(), ends: Vec::new() };

/// Where a column's values come from: one per row, or one per event or link of each row.
pub enum Source<'b> {
    Strings(&'b StrCol, Per),
    Fixed(&'static [&'static str], &'b [u8]),
    I64(&'b [i64], Per),
    U64(&'b [u64]),
    U8(&'b [u8]),
    F64(&'b [f64]),
    U32(&'b [u32], Per),
    Maps(&'b [u32], Per),
}

/// How a column's values are indexed: by row, through the row's resource or scope, or as the
/// row's events or links.
#[derive(Clone, Copy)]
pub enum Per {
    Row,
    Resource,
    Scope,
    Event,
    Link,
}

impl Block {
    pub fn source(&self, col: Col) -> Source<'_> {
        use Col::*;
        use Per::*;
        let (r, s, e, l) = (&self.resources, &self.scopes, &self.events, &self.links);
        match col {
            Timestamp => Source::I64(&self.timestamp, Row),
            TraceId => Source::Strings(&self.trace_id, Row),
            SpanId => Source::Strings(&self.span_id, Row),
            ParentSpanId => Source::Strings(&self.parent_span_id, Row),
            TraceState => Source::Strings(&self.trace_state, Row),
            SpanName => Source::Strings(&self.name, Row),
            SpanKind => Source::Fixed(&SPAN_KINDS, &self.kind),
            ServiceName => Source::Strings(&r.service, Resource),
            ResourceAttributes => Source::Maps(&r.attrs, Resource),
            ScopeName => Source::Strings(&s.name, Scope),
            ScopeVersion => Source::Strings(&s.version, Scope),
            SpanAttributes => Source::Maps(&self.attrs, Row),
            Duration => Source::U64(&self.duration),
            StatusCode => Source::Fixed(&STATUS_CODES, &self.status_code),
            StatusMessage => Source::Strings(&self.status_message, Row),
            EventsTimestamp => Source::I64(&e.time, Event),
            EventsName => Source::Strings(&e.name, Event),
            EventsAttributes => Source::Maps(&e.attrs, Event),
            LinksTraceId => Source::Strings(&l.trace_id, Link),
            LinksSpanId => Source::Strings(&l.span_id, Link),
            LinksTraceState => Source::Strings(&l.trace_state, Link),
            LinksAttributes => Source::Maps(&l.attrs, Link),
            ResourceSchemaUrl => Source::Strings(&r.schema_url, Resource),
            ResourceDroppedAttrCount => Source::U32(&r.dropped, Resource),
            ScopeAttributes => Source::Maps(&s.attrs, Scope),
            ScopeDroppedAttrCount => Source::U32(&s.dropped, Scope),
            ScopeSchemaUrl => Source::Strings(&s.schema_url, Scope),
            SpanFlags => Source::U32(&self.flags, Row),
            DroppedAttributesCount => Source::U32(&self.dropped_attrs, Row),
            DroppedEventsCount => Source::U32(&self.dropped_events, Row),
            DroppedLinksCount => Source::U32(&self.dropped_links, Row),
            EventsDroppedAttributesCount => Source::U32(&e.dropped, Event),
            LinksFlags => Source::U32(&l.flags, Link),
            LinksDroppedAttributesCount => Source::U32(&l.dropped, Link),
            TraceFlags => Source::U8(&self.trace_flags),
            SeverityText => Source::Strings(&self.severity_text, Row),
            SeverityNumber => Source::U8(&self.severity_number),
            Body => Source::Strings(&self.body, Row),
            LogAttributes => Source::Maps(&self.attrs, Row),
            EventName => Source::Strings(&self.event_name, Row),
            ObservedTimestamp => Source::I64(&self.observed, Row),
            LogFlags => Source::U32(&self.flags, Row),
            SampleWeight => Source::F64(self.sample_weight.as_deref().unwrap_or(&[])),
            ServiceTeam | ServiceTier | ServiceOwner => {
                let c = col as usize - ServiceTeam as usize;
                Source::Strings(self.catalog.as_ref().map_or(&EMPTY_STRINGS, |cols| &cols[c]), Resource)
            }
        }
    }

    /// Whether the block holds this column (the stages' columns only once they ran).
    pub fn has(&self, col: Col) -> bool {
        match col {
            Col::SampleWeight => self.sample_weight.is_some(),
            Col::ServiceTeam | Col::ServiceTier | Col::ServiceOwner => self.catalog.is_some(),
            _ => true,
        }
    }

    /// The value index of each element a column has, in order: rows for a per-row column (through
    /// the row's resource or scope), all events or links for an array column.
    pub fn indexes(&self, per: Per) -> Indexes<'_> {
        match per {
            Per::Row => Indexes::Range(0..self.rows()),
            Per::Resource => Indexes::Table(self.resource.iter()),
            Per::Scope => Indexes::Table(self.scope.iter()),
            Per::Event => Indexes::Range(0..self.events.time.len()),
            Per::Link => Indexes::Range(0..self.links.flags.len()),
        }
    }

    /// The value indexes of rows `rows` of a column (their events or links for an array column).
    pub fn indexes_in(&self, per: Per, rows: Rows) -> Indexes<'_> {
        match per {
            Per::Row => Indexes::Range(rows.lo..rows.hi),
            Per::Resource => Indexes::Table(self.resource[rows.lo..rows.hi].iter()),
            Per::Scope => Indexes::Table(self.scope[rows.lo..rows.hi].iter()),
            Per::Event | Per::Link => {
                let (a, b) = self.elements(per, rows);
                Indexes::Range(a..b)
            }
        }
    }

    /// The element range of rows `rows`: themselves, or their events or links.
    pub fn elements(&self, per: Per, rows: Rows) -> (usize, usize) {
        match self.offsets(per) {
            None => (rows.lo, rows.hi),
            Some(ends) => {
                let at = |i: usize| if i == 0 { 0 } else { ends[i - 1] as usize };
                (at(rows.lo), at(rows.hi))
            }
        }
    }

    /// The cumulative offsets of an array column (None: not an array column).
    pub fn offsets(&self, per: Per) -> Option<&[u64]> {
        match per {
            Per::Event => Some(&self.events_end),
            Per::Link => Some(&self.links_end),
            _ => None,
        }
    }
}

/// A run of rows of a block, `lo..hi`.
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    pub lo: usize,
    pub hi: usize,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.hi - self.lo
    }
}

#[derive(Clone)]
pub enum Indexes<'b> {
    Range(std::ops::Range<usize>),
    Table(std::slice::Iter<'b, u32>),
}

impl Iterator for Indexes<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        match self {
            Indexes::Range(r) => r.next(),
            Indexes::Table(t) => t.next().map(|&i| i as usize),
        }
    }
}

// ---------------------------------------------------------------- Native encoding

/// Where encoded bytes go.
pub trait Put {
    fn put(&mut self, bytes: &[u8]);

    /// A String element: its length as a varint, then its bytes.
    #[inline]
    fn put_string(&mut self, s: &[u8]) {
        varint(self, s.len() as u64);
        self.put(s);
    }
}

impl Put for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[inline]
fn varint<P: Put + ?Sized>(out: &mut P, mut n: u64) {
    let mut bytes = [0u8; 10];
    let mut i = 0;
    while n >= 0x80 {
        bytes[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    bytes[i] = n as u8;
    out.put(&bytes[..=i]);
}

#[inline]
fn string(out: &mut impl Put, s: &[u8]) {
    out.put_string(s);
}

/// A LowCardinality column's own dictionary: strings numbered in the order first seen, found by
/// the number the block gives them (a resource, a key, a code, a row), so a string stored once is
/// hashed once.
struct Dictionary<'b> {
    by_slot: Vec<u32>,
    by_value: HashMap<&'b [u8], u32>,
    values: Vec<&'b [u8]>,
}

impl<'b> Dictionary<'b> {
    fn new(slots: usize) -> Self {
        Dictionary { by_slot: vec![u32::MAX; slots], by_value: HashMap::new(), values: Vec::new() }
    }

    /// The dictionary index of `value`, stored in the block at `slot`.
    #[inline]
    fn slot(&mut self, slot: usize, value: &'b [u8]) -> u32 {
        let known = self.by_slot[slot];
        if known != u32::MAX {
            return known;
        }
        let next = self.values.len() as u32;
        let index = *self.by_value.entry(value).or_insert(next);
        if index == next {
            self.values.push(value);
        }
        self.by_slot[slot] = index;
        index
    }

    /// The LowCardinality data of a column whose values are `idx` (nothing for no values).
    fn write(&self, out: &mut impl Put, idx: &[u32]) {
        if idx.is_empty() {
            return;
        }
        let n = self.values.len();
        let width = (usize::BITS - 1 - n.leading_zeros()) >> 3; // as clickhouse-connect: log2(n) / 8
        out.put(&((1u64 << 9) | (1u64 << 10) | width as u64).to_le_bytes());
        out.put(&(n as u64).to_le_bytes());
        for v in &self.values {
            string(out, v);
        }
        out.put(&(idx.len() as u64).to_le_bytes());
        match width {
            0 => idx.iter().for_each(|&i| out.put(&[i as u8])),
            1 => idx.iter().for_each(|&i| out.put(&(i as u16).to_le_bytes())),
            _ => idx.iter().for_each(|&i| out.put(&i.to_le_bytes())),
        }
    }
}

/// The Native data of one attribute map's keys and of its values, each as String elements.
struct MapBytes {
    keys: Vec<u8>,
    values: Vec<u8>,
    pairs: u64,
}

impl Block {
    fn map_bytes(&self, map: u32) -> MapBytes {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for &p in self.maps.get(map) {
            let (k, v) = self.pair(p);
            string(&mut keys, k);
            string(&mut values, v);
        }
        MapBytes { keys, values, pairs: self.maps.get(map).len() as u64 }
    }

    fn per(source: &Source<'_>) -> Per {
        match *source {
            Source::Strings(_, per) | Source::I64(_, per) | Source::U32(_, per) | Source::Maps(_, per) => per,
            Source::Fixed(..) | Source::U64(_) | Source::U8(_) | Source::F64(_) => Per::Row,
        }
    }

    fn write_column(&self, out: &mut impl Put, col: Col, rows: Rows, lc: bool) {
        let source = self.source(col);
        let per = Self::per(&source);
        if let Some(ends) = self.offsets(per) {
            let base = if rows.lo == 0 { 0 } else { ends[rows.lo - 1] };
            for &o in &ends[rows.lo..rows.hi] {
                out.put(&(o - base).to_le_bytes());
            }
        }
        match source {
            Source::Strings(values, per) if lc => {
                let mut dict = Dictionary::new(values.len());
                let idx: Vec<u32> = self.indexes_in(per, rows).map(|i| dict.slot(i, values.get(i))).collect();
                dict.write(out, &idx);
            }
            Source::Strings(values, per) => {
                for i in self.indexes_in(per, rows) {
                    string(out, values.get(i));
                }
            }
            Source::Fixed(names, codes) if lc => {
                let mut dict = Dictionary::new(names.len());
                let idx: Vec<u32> = codes[rows.lo..rows.hi].iter()
                    .map(|&c| dict.slot(c as usize, names[c as usize].as_bytes())).collect();
                dict.write(out, &idx);
            }
            Source::Fixed(names, codes) => {
                for &c in &codes[rows.lo..rows.hi] {
                    string(out, names[c as usize].as_bytes());
                }
            }
            Source::Maps(maps, per) if lc => {
                // keys dictionary-encoded by their number in the batch; values as strings
                let mut total = 0u64;
                for i in self.indexes_in(per, rows) {
                    total += self.maps.get(maps[i]).len() as u64;
                    out.put(&total.to_le_bytes());
                }
                let mut dict = Dictionary::new(self.keys.len());
                let mut idx = Vec::with_capacity(total as usize);
                for i in self.indexes_in(per, rows) {
                    for &p in self.maps.get(maps[i]) {
                        let key = self.pairs.pairs[p as usize].0;
                        idx.push(dict.slot(key as usize, self.keys.get(key)));
                    }
                }
                dict.write(out, &idx);
                for i in self.indexes_in(per, rows) {
                    for &p in self.maps.get(maps[i]) {
                        string(out, self.pair(p).1);
                    }
                }
            }
            Source::I64(values, per) => {
                for i in self.indexes_in(per, rows) {
                    out.put(&values[i].to_le_bytes());
                }
            }
            Source::U64(values) => {
                for v in &values[rows.lo..rows.hi] {
                    out.put(&v.to_le_bytes());
                }
            }
            Source::F64(values) => {
                for v in &values[rows.lo..rows.hi] {
                    out.put(&v.to_le_bytes());
                }
            }
            Source::U8(values) => out.put(&values[rows.lo..rows.hi]),
            Source::U32(values, per) => {
                for i in self.indexes_in(per, rows) {
                    out.put(&values[i].to_le_bytes());
                }
            }
            Source::Maps(maps, per @ (Per::Resource | Per::Scope)) => {
                // one map per resource or scope, repeated on each of its rows: encoded once
                let encoded: Vec<MapBytes> = maps.iter().map(|&m| self.map_bytes(m)).collect();
                let mut total = 0u64;
                for i in self.indexes_in(per, rows) {
                    total += encoded[i].pairs;
                    out.put(&total.to_le_bytes());
                }
                for i in self.indexes_in(per, rows) {
                    out.put(&encoded[i].keys);
                }
                for i in self.indexes_in(per, rows) {
                    out.put(&encoded[i].values);
                }
            }
            Source::Maps(maps, per) => {
                let mut total = 0u64;
                for i in self.indexes_in(per, rows) {
                    total += self.maps.get(maps[i]).len() as u64;
                    out.put(&total.to_le_bytes());
                }
                for i in self.indexes_in(per, rows) {
                    for &p in self.maps.get(maps[i]) {
                        string(out, self.pair(p).0);
                    }
                }
                for i in self.indexes_in(per, rows) {
                    for &p in self.maps.get(maps[i]) {
                        string(out, self.pair(p).1);
                    }
                }
            }
        }
    }

    /// One Native block of these columns, in this order, of rows `rows`.
    pub fn write_native(&self, out: &mut impl Put, cols: &[(Col, &str, &str)], rows: Rows) {
        varint(out, cols.len() as u64);
        varint(out, rows.len() as u64);
        for &(col, name, native_type) in cols {
            string(out, name.as_bytes());
            string(out, native_type.as_bytes());
            let lc = native_type.contains("LowCardinality");
            if lc {
                out.put(&1u64.to_le_bytes()); // the LowCardinality serialization version
            }
            self.write_column(out, col, rows, lc);
        }
    }
}
