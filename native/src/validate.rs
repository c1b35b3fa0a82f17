//! Pass 1: accept exactly what upb accepts for an ExportTraceServiceRequest or an
//! ExportLogsServiceRequest, before any row is built.
//!
//! Every field of every message in opentelemetry-proto's trace, logs, common and resource descriptors
//! (`SCHEMA`, which a test compares with the installed descriptors) is checked as upb checks it,
//! the fields the rows never read included (EntityRef, key_strindex, ...): proto3 strings valid
//! UTF-8, nested messages well-formed, unknown groups closed, messages and groups nested at most
//! `MAX_DEPTH` deep counted from the request. Iterative: one frame per open message.

use crate::wire::{Reader, Value, WireError, MAX_DEPTH};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    None,
    Varint,
    Fixed64,
    Fixed32,
    Bytes,
    Str,
    Message(Msg),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Msg {
    Request,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    LogsRequest,
    ResourceLogs,
    ScopeLogs,
    LogRecord,
}

pub const MESSAGES: [Msg; 18] = [
    Msg::Request,
    Msg::ResourceSpans,
    Msg::Resource,
    Msg::EntityRef,
    Msg::ScopeSpans,
    Msg::Scope,
    Msg::Span,
    Msg::Event,
    Msg::Link,
    Msg::Status,
    Msg::KeyValue,
    Msg::AnyValue,
    Msg::ArrayValue,
    Msg::KeyValueList,
    Msg::LogsRequest,
    Msg::ResourceLogs,
    Msg::ScopeLogs,
    Msg::LogRecord,
];

const MAX_FIELD: usize = 16;

impl Msg {
    pub fn full_name(self) -> &'static str {
        match self {
            Msg::Request => "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
            Msg::ResourceSpans => "opentelemetry.proto.trace.v1.ResourceSpans",
            Msg::Resource => "opentelemetry.proto.resource.v1.Resource",
            Msg::EntityRef => "opentelemetry.proto.common.v1.EntityRef",
            Msg::ScopeSpans => "opentelemetry.proto.trace.v1.ScopeSpans",
            Msg::Scope => "opentelemetry.proto.common.v1.InstrumentationScope",
            Msg::Span => "opentelemetry.proto.trace.v1.Span",
            Msg::Event => "opentelemetry.proto.trace.v1.Span.Event",
            Msg::Link => "opentelemetry.proto.trace.v1.Span.Link",
            Msg::Status => "opentelemetry.proto.trace.v1.Status",
            Msg::KeyValue => "opentelemetry.proto.common.v1.KeyValue",
            Msg::AnyValue => "opentelemetry.proto.common.v1.AnyValue",
            Msg::ArrayValue => "opentelemetry.proto.common.v1.ArrayValue",
            Msg::KeyValueList => "opentelemetry.proto.common.v1.KeyValueList",
            Msg::LogsRequest => "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
            Msg::ResourceLogs => "opentelemetry.proto.logs.v1.ResourceLogs",
            Msg::ScopeLogs => "opentelemetry.proto.logs.v1.ScopeLogs",
            Msg::LogRecord => "opentelemetry.proto.logs.v1.LogRecord",
        }
    }

    /// The declared kind of field `number` of this message (`Kind::None`: not declared).
    pub fn field(self, number: u32) -> Kind {
        use Kind::*;
        match (self, number) {
            (Msg::Request, 1) => Message(Msg::ResourceSpans),
            (Msg::ResourceSpans, 1) => Message(Msg::Resource),
            (Msg::ResourceSpans, 2) => Message(Msg::ScopeSpans),
            (Msg::ResourceSpans, 3) => Str,
            (Msg::Resource, 1) => Message(Msg::KeyValue),
            (Msg::Resource, 2) => Varint,
            (Msg::Resource, 3) => Message(Msg::EntityRef),
            (Msg::EntityRef, 1..=4) => Str,
            (Msg::ScopeSpans, 1) => Message(Msg::Scope),
            (Msg::ScopeSpans, 2) => Message(Msg::Span),
            (Msg::ScopeSpans, 3) => Str,
            (Msg::Scope, 1 | 2) => Str,
            (Msg::Scope, 3) => Message(Msg::KeyValue),
            (Msg::Scope, 4) => Varint,
            (Msg::Span, 1 | 2 | 4) => Bytes,
            (Msg::Span, 3 | 5) => Str,
            (Msg::Span, 6 | 10 | 12 | 14) => Varint,
            (Msg::Span, 7 | 8) => Fixed64,
            (Msg::Span, 9) => Message(Msg::KeyValue),
            (Msg::Span, 11) => Message(Msg::Event),
            (Msg::Span, 13) => Message(Msg::Link),
            (Msg::Span, 15) => Message(Msg::Status),
            (Msg::Span, 16) => Fixed32,
            (Msg::Event, 1) => Fixed64,
            (Msg::Event, 2) => Str,
            (Msg::Event, 3) => Message(Msg::KeyValue),
            (Msg::Event, 4) => Varint,
            (Msg::Link, 1 | 2) => Bytes,
            (Msg::Link, 3) => Str,
            (Msg::Link, 4) => Message(Msg::KeyValue),
            (Msg::Link, 5) => Varint,
            (Msg::Link, 6) => Fixed32,
            (Msg::Status, 2) => Str,
            (Msg::Status, 3) => Varint,
            (Msg::KeyValue, 1) => Str,
            (Msg::KeyValue, 2) => Message(Msg::AnyValue),
            (Msg::KeyValue, 3) => Varint,
            (Msg::AnyValue, 1) => Str,
            (Msg::AnyValue, 2 | 3 | 8) => Varint,
            (Msg::AnyValue, 4) => Fixed64,
            (Msg::AnyValue, 5) => Message(Msg::ArrayValue),
            (Msg::AnyValue, 6) => Message(Msg::KeyValueList),
            (Msg::AnyValue, 7) => Bytes,
            (Msg::ArrayValue, 1) => Message(Msg::AnyValue),
            (Msg::KeyValueList, 1) => Message(Msg::KeyValue),
            (Msg::LogsRequest, 1) => Message(Msg::ResourceLogs),
            (Msg::ResourceLogs, 1) => Message(Msg::Resource),
            (Msg::ResourceLogs, 2) => Message(Msg::ScopeLogs),
            (Msg::ResourceLogs, 3) => Str,
            (Msg::ScopeLogs, 1) => Message(Msg::Scope),
            (Msg::ScopeLogs, 2) => Message(Msg::LogRecord),
            (Msg::ScopeLogs, 3) => Str,
            (Msg::LogRecord, 1 | 11) => Fixed64,
            (Msg::LogRecord, 2 | 7) => Varint,
            (Msg::LogRecord, 3 | 12) => Str,
            (Msg::LogRecord, 5) => Message(Msg::AnyValue),
            (Msg::LogRecord, 6) => Message(Msg::KeyValue),
            (Msg::LogRecord, 8) => Fixed32,
            (Msg::LogRecord, 9 | 10) => Bytes,
            _ => None,
        }
    }

    /// Every declared field: (number, kind), for the test that compares them with the descriptors.
    pub fn declared(self) -> Vec<(u32, Kind)> {
        (1..=MAX_FIELD as u32).map(|n| (n, self.field(n))).filter(|(_, k)| *k != Kind::None).collect()
    }
}

/// Ok if upb would parse `payload` as the request `root` (`Msg::Request` for spans,
/// `Msg::LogsRequest` for logs).
pub fn validate(payload: &[u8], root: Msg) -> Result<(), WireError> {
    walk(payload, root, |_, _, _| {})
}

/// `validate`, calling `on_text(message, field number, text)` for every string field of every
/// message (valid UTF-8 by then), in the order they come.
pub fn walk<'a>(payload: &'a [u8], root: Msg, mut on_text: impl FnMut(Msg, u32, &'a [u8])) -> Result<(), WireError> {
    // Frames of the open messages: the reader of each (positioned after the field that opened the
    // next one) and its type. Frame 0 is the request.
    let mut stack: Vec<(Reader<'a>, Msg)> = Vec::with_capacity(16);
    let mut reader = Reader::new(payload);
    let mut msg = root;
    loop {
        if reader.at_end() {
            match stack.pop() {
                None => return Ok(()),
                Some((outer, outer_msg)) => {
                    reader = outer;
                    msg = outer_msg;
                    continue;
                }
            }
        }
        let depth = stack.len();
        let field = reader.field(depth)?;
        if let Value::Len(bytes) = field.value {
            match msg.field(field.number) {
                Kind::Str if std::str::from_utf8(bytes).is_err() => return Err(WireError::InvalidUtf8),
                Kind::Str => on_text(msg, field.number, bytes),
                Kind::Message(sub) => {
                    if depth >= MAX_DEPTH {
                        return Err(WireError::TooDeep);
                    }
                    stack.push((reader, msg));
                    reader = Reader::new(bytes);
                    msg = sub;
                }
                // bytes, and fields sent with another wire type than their own: unknown data
                _ => {}
            }
        }
        // Varints, fixed values and groups were read (and groups checked) by `field`.
    }
}
