//! One LogRecord → one row of `otel_logs`, as `streams.otlp.decode._logs_to_columns` builds it.
//!
//! The request, resource and scope around it are read as for spans (traces.rs: the layouts are
//! the same). A record is refused with the Python decoder's reason and detail, checked in its
//! order: the observed time, the time (each past DateTime64(9)), then trace_id, then span_id. A
//! record without a time happened when it was observed (OTel data model); a severity number past
//! FATAL4 (24), or negative, is Unspecified (0); the body is the AnyValue as one string
//! (anyvalue.rs), "" without one; TraceFlags are the low 8 bits of the record's flags.

use crate::anyvalue::{value_text, Text};
use crate::block::Block;
use crate::traces::{check_id, past_2262, Decoder, Step};
use crate::wire::{fields, Value};

/// DateTime64(9) holds nanoseconds as Int64.
const MAX_TIMESTAMP_NS: u64 = i64::MAX as u64;
/// SeverityNumber's last value (FATAL4).
pub const MAX_SEVERITY_NUMBER: i32 = 24;

impl<'a> Decoder<'a> {
    pub(crate) fn log_record(&mut self, block: &mut Block, rec: &'a [u8], resource: u32, scope: u32, index: u32) -> Step {
        const EMPTY: &[u8] = b"";
        let (mut time, mut observed, mut severity) = (0u64, 0u64, 0u64);
        let (mut severity_text, mut trace_id, mut span_id, mut event_name) = (EMPTY, EMPTY, EMPTY, EMPTY);
        let (mut dropped, mut flags) = (0u32, 0u32);
        let mut body: Vec<&'a [u8]> = Vec::new();
        for f in fields(rec, 3) {
            let f = f?;
            match (f.number, f.value) {
                (1, Value::Fixed64(v)) => time = v,
                (2, Value::Varint(v)) => severity = v,
                (3, Value::Len(s)) => severity_text = s,
                (5, Value::Len(s)) => body.push(s),
                (6, Value::Len(kv)) => self.attribute(block, kv, 4)?,
                (7, Value::Varint(v)) => dropped = v as u32,
                (8, Value::Fixed32(v)) => flags = v,
                (9, Value::Len(s)) => trace_id = s,
                (10, Value::Len(s)) => span_id = s,
                (11, Value::Fixed64(v)) => observed = v,
                (12, Value::Len(s)) => event_name = s,
                _ => {}
            }
        }
        let attrs = self.map.finish(block);
        if observed > MAX_TIMESTAMP_NS {
            return Err(past_2262("observed time", observed));
        }
        if time > MAX_TIMESTAMP_NS {
            return Err(past_2262("log time", time));
        }
        check_id(trace_id, 16, "trace_id")?;
        check_id(span_id, 8, "span_id")?;
        let body = match value_text(&body, 4, &mut self.text)? {
            Text::Borrowed(s) => s,
            Text::Written => &self.text,
        };
        block.body.push(body);
        block.origin.push(index);
        block.resource.push(resource);
        block.scope.push(scope);
        block.timestamp.push(if time != 0 { time } else { observed } as i64);
        block.trace_id.push_hex(trace_id);
        block.span_id.push_hex(span_id);
        block.trace_flags.push((flags & 0xFF) as u8);
        block.severity_text.push(severity_text);
        // an enum is int32 on the wire: protobuf keeps the low 32 bits of the varint
        let severity = severity as u32 as i32;
        block.severity_number.push(if (0..=MAX_SEVERITY_NUMBER).contains(&severity) { severity as u8 } else { 0 });
        block.attrs.push(attrs);
        block.event_name.push(event_name);
        block.observed.push(observed as i64);
        block.flags.push(flags);
        block.dropped_attrs.push(dropped);
        Ok(())
    }
}
