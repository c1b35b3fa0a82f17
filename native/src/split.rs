//! A spans or logs request cut into one request per trace, at the wire level: what the tail
//! sampling router sends to the partition of each trace.
//!
//! The input must be a request upb parses (checked first with `validate`: the router refuses
//! the others through the protobuf library, which says why). Each part is an
//! ExportTraceServiceRequest (ExportLogsServiceRequest) holding, for every resource and scope the
//! trace has records in, that resource's and scope's own fields as they came (bytes copied, in
//! their order: repeated occurrences merge on parsing as they did) and the trace's records as they
//! came. Parsed, a part gives the records, resources and scopes the protobuf library's cut
//! (`split_request`) gives; the bytes may differ (field order, unknown fields kept), which nothing
//! downstream compares: a part is named by its trace and source coordinates, never by its bytes.
//!
//! A record's trace id is its last trace_id field of wire type LEN (another wire type is unknown
//! data to upb); its end is a span's end_time_unix_nano, a log record's time_unix_nano or else its
//! observed_time_unix_nano (fixed64 fields, the last occurrence), 0 when absent.

use crate::block::Signal;
use crate::validate::{validate, Msg};
use crate::wire::{fields, Value, WireError};

/// One trace's part: its trace id (raw bytes), the request, how many records, the latest end (ns).
pub struct Part {
    pub trace_id: Vec<u8>,
    pub bytes: Vec<u8>,
    pub records: u32,
    pub end_ns: u64,
}

struct ScopeOut<'a> {
    head: Vec<&'a [u8]>,
    records: Vec<&'a [u8]>,
}

struct ResourceOut<'a> {
    head: Vec<&'a [u8]>,
    scopes: Vec<ScopeOut<'a>>,
}

struct TraceOut<'a> {
    trace_id: &'a [u8],
    resources: Vec<ResourceOut<'a>>,
    records: u32,
    end_ns: u64,
}

/// (trace id, end ns) of a span or log record.
fn record_key(record: &[u8], signal: Signal, depth: usize) -> Result<(&[u8], u64), WireError> {
    let (mut trace_id, mut end, mut time, mut observed): (&[u8], u64, u64, u64) = (b"", 0, 0, 0);
    for f in fields(record, depth) {
        let f = f?;
        match (signal, f.number, f.value) {
            (Signal::Traces, 1, Value::Len(id)) | (Signal::Logs, 9, Value::Len(id)) => trace_id = id,
            (Signal::Traces, 8, Value::Fixed64(v)) => end = v,
            (Signal::Logs, 1, Value::Fixed64(v)) => time = v,
            (Signal::Logs, 11, Value::Fixed64(v)) => observed = v,
            _ => {}
        }
    }
    if signal == Signal::Logs {
        end = if time != 0 { time } else { observed };
    }
    Ok((trace_id, end))
}

fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn sum(parts: &[&[u8]]) -> usize {
    parts.iter().map(|p| p.len()).sum()
}

fn scope_len(s: &ScopeOut<'_>) -> usize {
    sum(&s.head) + sum(&s.records)
}

fn resource_len(r: &ResourceOut<'_>) -> usize {
    sum(&r.head) + r.scopes.iter().map(|s| { let n = scope_len(s); 1 + varint_len(n) + n }).sum::<usize>()
}

fn encoded_len(trace: &TraceOut<'_>) -> usize {
    trace.resources.iter().map(|r| { let n = resource_len(r); 1 + varint_len(n) + n }).sum()
}

fn encode(trace: &TraceOut<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(trace));
    for r in &trace.resources {
        out.push(0x0a); // field 1, LEN: resource_spans / resource_logs
        put_varint(&mut out, resource_len(r));
        r.head.iter().for_each(|h| out.extend_from_slice(h));
        for s in &r.scopes {
            out.push(0x12); // field 2, LEN: scope_spans / scope_logs
            put_varint(&mut out, scope_len(s));
            s.head.iter().for_each(|h| out.extend_from_slice(h));
            s.records.iter().for_each(|rec| out.extend_from_slice(rec));
        }
    }
    out
}

/// Why a request was not cut.
pub enum NotSplit {
    /// upb would not parse it (the protobuf library says why).
    Invalid,
    /// Its parts would add up to this many bytes, over the limit: a resource repeated for each of
    /// many traces.
    TooLarge(usize),
}

/// The parts of `payload`, one per trace id in the order first seen (records without a trace id
/// under the empty id), adding up to at most `max_total` bytes. `validated`: the caller has
/// validated `payload` already (a `walk` of it succeeded), so it is not validated again.
pub fn split_by_trace(payload: &[u8], signal: Signal, max_total: usize, validated: bool) -> Result<Vec<Part>, NotSplit> {
    let root = match signal {
        Signal::Traces => Msg::Request,
        Signal::Logs => Msg::LogsRequest,
    };
    if !validated {
        validate(payload, root).map_err(|_| NotSplit::Invalid)?;
    }
    let (traces, resources) = split(payload, signal).map_err(|_| NotSplit::Invalid)?;
    if !payload.is_empty() && resources == 0 {
        return Err(NotSplit::Invalid); // only unknown fields: not telemetry (the protobuf path says so)
    }
    let total: usize = traces.iter().map(encoded_len).sum();
    if total > max_total {
        return Err(NotSplit::TooLarge(total));
    }
    Ok(traces
        .iter()
        .map(|t| Part { trace_id: t.trace_id.to_vec(), bytes: encode(t), records: t.records, end_ns: t.end_ns })
        .collect())
}

/// The raw bytes of each field of a message, with the field.
fn raw_fields<'a>(msg: &'a [u8], depth: usize) -> Result<Vec<(u32, Value<'a>, &'a [u8])>, WireError> {
    let mut out = Vec::new();
    let mut it = fields(msg, depth);
    let mut start = 0;
    while let Some(f) = it.next() {
        let f = f?;
        out.push((f.number, f.value, &msg[start..it.position()]));
        start = it.position();
    }
    Ok(out)
}

/// The traces' parts, and how many resources the request holds.
fn split(payload: &[u8], signal: Signal) -> Result<(Vec<TraceOut<'_>>, usize), WireError> {
    let mut traces: Vec<TraceOut<'_>> = Vec::new();
    let mut resources = 0;
    let mut index: hashbrown::HashMap<&[u8], usize> = hashbrown::HashMap::new();
    for f in fields(payload, 0) {
        let f = f?;
        let (1, Value::Len(rs)) = (f.number, f.value) else { continue };
        resources += 1;
        let mut head: Vec<&[u8]> = Vec::new();
        let mut scopes: Vec<&[u8]> = Vec::new();
        for (number, value, raw) in raw_fields(rs, 1)? {
            match (number, value) {
                (2, Value::Len(ss)) => scopes.push(ss),
                _ => head.push(raw),
            }
        }
        let mut in_resource: hashbrown::HashMap<usize, usize> = hashbrown::HashMap::new(); // trace → its entry
        for ss in scopes {
            let mut scope_head: Vec<&[u8]> = Vec::new();
            // the records of each trace here, traces in the order they first appear in the scope
            let mut groups: Vec<(usize, Vec<&[u8]>)> = Vec::new();
            let mut group_of: hashbrown::HashMap<usize, usize> = hashbrown::HashMap::new();
            for (number, value, raw) in raw_fields(ss, 2)? {
                let (2, Value::Len(record)) = (number, value) else {
                    scope_head.push(raw);
                    continue;
                };
                let (trace_id, end) = record_key(record, signal, 3)?;
                let t = *index.entry(trace_id).or_insert_with(|| {
                    traces.push(TraceOut { trace_id, resources: Vec::new(), records: 0, end_ns: 0 });
                    traces.len() - 1
                });
                traces[t].records += 1;
                traces[t].end_ns = traces[t].end_ns.max(end);
                let g = *group_of.entry(t).or_insert_with(|| {
                    groups.push((t, Vec::new()));
                    groups.len() - 1
                });
                groups[g].1.push(raw);
            }
            for (t, records) in groups {
                let r = *in_resource.entry(t).or_insert_with(|| {
                    traces[t].resources.push(ResourceOut { head: head.clone(), scopes: Vec::new() });
                    traces[t].resources.len() - 1
                });
                traces[t].resources[r].scopes.push(ScopeOut { head: scope_head.clone(), records });
            }
        }
    }
    Ok((traces, resources))
}

/// What tail sampling's triage reads of one part of a trace (spans), before decoding it: bounds
/// of the facts its policies decide on, and the part cut to its root spans.
pub struct Triage {
    pub spans: u64,
    /// Bit `c` set when a span has status code `c` (codes no enum has count as Unset, as decoded).
    pub statuses: u8,
    pub max_duration: u64,
    /// The longest duration of a span without a parent span id (a root), if there is one.
    pub max_root_duration: Option<u64>,
    /// A span the decoder would refuse (a time past 2262, an id of the wrong size): the part must
    /// be decoded for its refusal to be seen.
    pub suspicious: bool,
    /// The request with only the root spans (their resources' and scopes' own fields as they
    /// came), if there are any.
    pub roots: Option<Vec<u8>>,
}

const MAX_TIMESTAMP_NS: u64 = i64::MAX as u64;

fn bad_id(id: &[u8], size: usize) -> bool {
    !id.is_empty() && id.len() != size
}

/// (is a root, status code as decoded, duration, would be refused) of one span.
fn scan_span(span: &[u8]) -> Result<(bool, u8, u64, bool), WireError> {
    let (mut trace_id, mut span_id, mut parent): (&[u8], &[u8], &[u8]) = (b"", b"", b"");
    let (mut start, mut end, mut code) = (0u64, 0u64, 0u64);
    let mut suspicious = false;
    for f in fields(span, 3) {
        let f = f?;
        match (f.number, f.value) {
            (1, Value::Len(s)) => trace_id = s,
            (2, Value::Len(s)) => span_id = s,
            (4, Value::Len(s)) => parent = s,
            (7, Value::Fixed64(v)) => start = v,
            (8, Value::Fixed64(v)) => end = v,
            (11, Value::Len(event)) => {
                let mut time = 0u64;
                for g in fields(event, 4) {
                    if let (1, Value::Fixed64(v)) = { let g = g?; (g.number, g.value) } {
                        time = v;
                    }
                }
                suspicious |= time > MAX_TIMESTAMP_NS;
            }
            (13, Value::Len(link)) => {
                let (mut link_trace, mut link_span): (&[u8], &[u8]) = (b"", b"");
                for g in fields(link, 4) {
                    let g = g?;
                    match (g.number, g.value) {
                        (1, Value::Len(s)) => link_trace = s,
                        (2, Value::Len(s)) => link_span = s,
                        _ => {}
                    }
                }
                suspicious |= bad_id(link_trace, 16) || bad_id(link_span, 8);
            }
            (15, Value::Len(status)) => {
                for g in fields(status, 4) {
                    if let (3, Value::Varint(v)) = { let g = g?; (g.number, g.value) } {
                        code = v;
                    }
                }
            }
            _ => {}
        }
    }
    suspicious |= start > MAX_TIMESTAMP_NS || end > MAX_TIMESTAMP_NS;
    suspicious |= bad_id(trace_id, 16) || bad_id(span_id, 8) || bad_id(parent, 8);
    let code = code as u32 as i32; // enums are int32 on the wire
    let status = if (0..3).contains(&code) { code as u8 } else { 0 };
    Ok((parent.is_empty(), status, end.saturating_sub(start), suspicious))
}

/// The triage of a spans request (one trace's part, as routed). Err for what upb would not parse
/// (anyone may write to the tail topic: the decoder then says why).
pub fn triage_spans(payload: &[u8]) -> Result<Triage, WireError> {
    validate(payload, Msg::Request)?;
    let mut t = Triage { spans: 0, statuses: 0, max_duration: 0, max_root_duration: None, suspicious: false, roots: None };
    let mut roots = TraceOut { trace_id: b"", resources: Vec::new(), records: 0, end_ns: 0 };
    let mut resources = 0usize;
    for f in fields(payload, 0) {
        let f = f?;
        let (1, Value::Len(rs)) = (f.number, f.value) else { continue };
        resources += 1;
        let mut resource = ResourceOut { head: Vec::new(), scopes: Vec::new() };
        let mut scopes: Vec<&[u8]> = Vec::new();
        for (number, value, raw) in raw_fields(rs, 1)? {
            match (number, value) {
                (2, Value::Len(ss)) => scopes.push(ss),
                _ => resource.head.push(raw),
            }
        }
        for ss in scopes {
            let mut scope = ScopeOut { head: Vec::new(), records: Vec::new() };
            for (number, value, raw) in raw_fields(ss, 2)? {
                let (2, Value::Len(span)) = (number, value) else {
                    scope.head.push(raw);
                    continue;
                };
                let (root, status, duration, suspicious) = scan_span(span)?;
                t.spans += 1;
                t.statuses |= 1 << status;
                t.max_duration = t.max_duration.max(duration);
                t.suspicious |= suspicious;
                if root {
                    t.max_root_duration = Some(t.max_root_duration.map_or(duration, |d| d.max(duration)));
                    scope.records.push(raw);
                }
            }
            if !scope.records.is_empty() {
                resource.scopes.push(scope);
            }
        }
        if !resource.scopes.is_empty() {
            roots.resources.push(resource);
        }
    }
    // bytes that parse only as unknown fields: the decoder refuses them as not telemetry
    t.suspicious |= !payload.is_empty() && resources == 0;
    if !roots.resources.is_empty() {
        t.roots = Some(encode(&roots));
    }
    Ok(t)
}
