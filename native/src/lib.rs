//! streams.otlp._native: OTLP protobuf spans and log records straight to columnar buffers and
//! ClickHouse Native blocks, with the rows and refusals of the Python decoder
//! (streams/otlp/decode.py).

mod anyvalue;
mod block;
mod columns;
mod logs;
mod redact;
mod split;
mod stages;
mod tail;
mod text;
mod traces;
mod validate;
mod wire;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::collections::HashMap;

use block::{Block, Signal};
use columns::{columns_of, Col, Per, Rows, Source, COLUMNS, EXTRA_COLUMNS, LOG_COLUMNS};
use stages::Head;
use traces::{Decoder, SPAN_KINDS, STATUS_CODES};
use validate::{Kind, MESSAGES};

/// The Python decoder's default limit (decode_messages' max_message_bytes).
const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

type Refused = (u32, &'static str, String);

fn decode_all(payloads: &[&[u8]], max_message_bytes: usize, signal: Signal) -> (Block, Vec<Refused>) {
    let mut block = Block::new(signal);
    let mut errors = Vec::new();
    let mut decoder = Decoder::default();
    for (i, payload) in payloads.iter().enumerate() {
        let index = i as u32;
        if payload.len() > max_message_bytes {
            let detail = format!("{} bytes is over the limit of {}", payload.len(), max_message_bytes);
            errors.push((index, "too_large", detail));
            continue;
        }
        let mark = block.mark();
        // A panic would be a bug; it refuses this message only, as the Python decoder names an
        // unforeseen exception ("internal"), and the buffers are taken back to the mark.
        match catch_unwind(AssertUnwindSafe(|| decoder.message(&mut block, payload, index))) {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => {
                block.truncate(&mark);
                errors.push((index, refused.reason, refused.detail));
            }
            Err(_) => {
                block.truncate(&mark);
                decoder = Decoder::default();
                errors.push((index, "internal", "PanicException while decoding".to_string()));
            }
        }
    }
    (block, errors)
}

/// Spans of a batch of ExportTraceServiceRequest messages, or log records of a batch of
/// ExportLogsServiceRequest messages, as columns (see the module's text).
#[pyclass(module = "streams.otlp._native", name = "NativeBlock")]
struct NativeBlock {
    block: Block,
    errors: Vec<Refused>,
    messages: usize,
    /// Decisions plan_attribute_values made here, applied with the next remap_attribute_values.
    pending: Vec<(u32, Option<Vec<u8>>)>,
}

fn text<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    let s = std::str::from_utf8(bytes).map_err(|_| PyValueError::new_err("stored string is not UTF-8"))?;
    Ok(PyString::new(py, s))
}

/// The columns a block holds: its table's own, then those the stages added.
fn present(block: &Block) -> impl Iterator<Item = (Col, &'static str, &'static str)> + '_ {
    columns_of(block.signal).iter().chain(EXTRA_COLUMNS.iter()).copied().filter(|c| block.has(c.0))
}

fn selected(block: &Block, names: Option<Vec<String>>) -> PyResult<Vec<(Col, &'static str, &'static str)>> {
    match names {
        None => Ok(present(block).collect()),
        Some(names) => names
            .iter()
            .map(|name| {
                present(block)
                    .find(|c| c.1 == name)
                    .ok_or_else(|| {
                        PyKeyError::new_err(format!("no column {name:?} in this block of {}", block.signal.table()))
                    })
            })
            .collect(),
    }
}

/// A column of the block's table the stages may rewrite, by name.
fn text_col(block: &Block, name: &str) -> PyResult<Col> {
    columns_of(block.signal).iter().find(|c| c.1 == name).map(|c| c.0)
        .ok_or_else(|| PyKeyError::new_err(format!("no column {name:?} in {}", block.signal.table())))
}

/// The signal of a table name.
fn signal_of(table: &str) -> PyResult<Signal> {
    match table {
        "otel_traces" => Ok(Signal::Traces),
        "otel_logs" => Ok(Signal::Logs),
        _ => Err(PyValueError::new_err(format!("no native block for table {table:?} (otel_traces, otel_logs)"))),
    }
}

fn utf8(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    let s: String = value.extract().map_err(|_| PyTypeError::new_err(format!("{what} must be str")))?;
    Ok(s.into_bytes())
}

impl NativeBlock {
    /// An error for a spans-only method called on a block of log records.
    fn spans_only(&self, method: &str) -> PyResult<()> {
        if self.block.signal == Signal::Traces {
            Ok(())
        } else {
            Err(PyValueError::new_err(format!("{method} is for a block of otel_traces, not {}", self.block.signal.table())))
        }
    }

    fn map_dict<'py>(&self, py: Python<'py>, map: u32) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for &p in self.block.maps.get(map) {
            let (k, v) = self.block.pair(p);
            dict.set_item(text(py, k)?, text(py, v)?)?;
        }
        Ok(dict)
    }

    /// Python values of one element index of a source (a row, an event or a link).
    fn value<'py>(&self, py: Python<'py>, source: &Source<'_>, i: usize, cache: &mut Vec<Option<Bound<'py, PyDict>>>)
        -> PyResult<Bound<'py, PyAny>> {
        Ok(match source {
            Source::Strings(values, _) => text(py, values.get(i))?.into_any(),
            Source::Fixed(names, codes) => PyString::new(py, names[codes[i] as usize]).into_any(),
            Source::I64(values, _) => values[i].into_pyobject(py)?.into_any(),
            Source::U64(values) => values[i].into_pyobject(py)?.into_any(),
            Source::U8(values) => values[i].into_pyobject(py)?.into_any(),
            Source::F64(values) => values[i].into_pyobject(py)?.into_any(),
            Source::U32(values, _) => values[i].into_pyobject(py)?.into_any(),
            Source::Maps(maps, _) => {
                // one dict per map: rows of one resource or scope share it, as in the Python decoder
                let m = maps[i] as usize;
                if cache.len() <= m {
                    cache.resize(m + 1, None);
                }
                if cache[m].is_none() {
                    cache[m] = Some(self.map_dict(py, m as u32)?);
                }
                cache[m].as_ref().map(|d| d.clone().into_any()).unwrap_or_else(|| py.None().into_bound(py))
            }
        })
    }

    fn column<'py>(&self, py: Python<'py>, col: Col, cache: &mut Vec<Option<Bound<'py, PyDict>>>)
        -> PyResult<Bound<'py, PyList>> {
        let source = self.block.source(col);
        let per = match source {
            Source::Strings(_, per) | Source::I64(_, per) | Source::U32(_, per) | Source::Maps(_, per) => per,
            Source::Fixed(..) | Source::U64(_) | Source::U8(_) | Source::F64(_) => Per::Row,
        };
        let out = PyList::empty(py);
        match self.block.offsets(per) {
            None => {
                for i in self.block.indexes(per) {
                    out.append(self.value(py, &source, i, cache)?)?;
                }
            }
            Some(ends) => {
                let empty = PyTuple::empty(py); // the Python decoder's NONE: a row without events
                let mut start = 0usize;
                for &end in ends {
                    let end = end as usize;
                    if end == start {
                        out.append(&empty)?;
                        continue;
                    }
                    let cell = PyList::empty(py);
                    for i in start..end {
                        cell.append(self.value(py, &source, i, cache)?)?;
                    }
                    out.append(cell)?;
                    start = end;
                }
            }
        }
        Ok(out)
    }
}

#[pymethods]
impl NativeBlock {
    /// The table the rows are of: otel_traces or otel_logs.
    #[getter]
    fn table(&self) -> &'static str {
        self.block.signal.table()
    }

    /// Rows (spans or log records) in the block.
    #[getter]
    fn rows(&self) -> usize {
        self.block.rows()
    }

    /// Messages given to decode_traces or decode_logs.
    #[getter]
    fn messages(&self) -> usize {
        self.messages
    }

    /// Messages refused: [(message index, reason, detail)], in message order.
    #[getter]
    fn errors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (index, reason, detail) in &self.errors {
            out.append((*index, *reason, detail.as_str()))?;
        }
        Ok(out)
    }

    fn __len__(&self) -> usize {
        self.block.rows()
    }

    fn __repr__(&self) -> String {
        let (table, rows, messages, refused) = (self.block.signal.table(), self.block.rows(), self.messages, self.errors.len());
        format!("<NativeBlock {table}: {rows} rows of {messages} messages, {refused} refused>")
    }

    /// The index of the message each row came from.
    fn origins(&self) -> Vec<u32> {
        self.block.origin.clone()
    }

    /// {column: list of values} with the values and types of the Python decoder's ColumnBatch
    /// (ints for times, dicts for maps, lists for arrays and () for an empty one). For tests.
    #[pyo3(signature = (names=None))]
    fn to_columns<'py>(&self, py: Python<'py>, names: Option<Vec<String>>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        let mut cache = Vec::new();
        for (col, name, _) in selected(&self.block, names)? {
            out.set_item(name, self.column(py, col, &mut cache)?)?;
        }
        Ok(out)
    }

    /// One ClickHouse Native block of these columns (default: every column), in this order, for
    /// `client.raw_insert(table, names, insert_block=..., fmt="Native")`; of rows start..stop only
    /// when given (a long block sent as several).
    #[pyo3(signature = (names=None, start=0, stop=None))]
    fn to_native<'py>(&self, py: Python<'py>, names: Option<Vec<String>>, start: usize, stop: Option<usize>)
        -> PyResult<Bound<'py, PyBytes>> {
        let cols = selected(&self.block, names)?;
        let stop = stop.unwrap_or(self.block.rows()).min(self.block.rows());
        if start > stop {
            return Err(PyValueError::new_err(format!("rows {start}..{stop}: start is past stop")));
        }
        let rows = Rows { lo: start, hi: stop };
        let block = &self.block;
        let data = py.allow_threads(|| {
            let mut data = Vec::with_capacity(rows.len() * 640 + 4096);
            block.write_native(&mut data, &cols, rows);
            data
        });
        Ok(PyBytes::new(py, &data))
    }

    /// Every distinct (key, value) attribute pair the block's maps hold (resource, scope, span,
    /// event and link attributes), in the order first seen.
    fn distinct_attribute_values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for id in 0..self.block.pairs.pairs.len() {
            let (k, v) = self.block.pair(id as u32);
            out.append((text(py, k)?, text(py, v)?))?;
        }
        Ok(out)
    }

    /// Apply {(key, value): new value, or None to drop the pair} to every attribute map; pairs the
    /// mapping does not name stay. Returns how many distinct pairs it changed or dropped.
    fn remap_attribute_values(&mut self, mapping: &Bound<'_, PyDict>) -> PyResult<usize> {
        let mut decisions: Vec<(u32, Option<Vec<u8>>)> = Vec::with_capacity(mapping.len());
        for (pair, new_value) in mapping.iter() {
            let (key, value): (String, String) = pair
                .extract()
                .map_err(|_| PyTypeError::new_err("mapping keys must be (key, value) string pairs"))?;
            let new_value: Option<String> = new_value
                .extract()
                .map_err(|_| PyTypeError::new_err("mapping values must be str or None"))?;
            let b = &self.block;
            let found = b.keys.find(key.as_bytes()).zip(b.values.find(value.as_bytes()))
                .and_then(|(k, v)| b.pairs.find(k, v, &b.values));
            if let Some(id) = found {
                decisions.push((id, new_value.map(String::into_bytes)));
            }
        }
        decisions.append(&mut self.pending);
        if decisions.is_empty() {
            return Ok(0);
        }
        Ok(self.block.remap(&decisions))
    }

    /// The names of the columns the block holds, in order: otel_traces' own, then those the
    /// stages added (SampleWeight after head sampling; ServiceTeam, ServiceTier, ServiceOwner
    /// after the catalog).
    fn column_names(&self) -> Vec<&'static str> {
        present(&self.block).map(|c| c.1).collect()
    }

    /// [(key, value, maps holding the pair)] for every attribute pair, in the order of
    /// distinct_attribute_values (each resource's and scope's map counts once).
    fn attribute_pairs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (id, count) in self.block.pair_counts().into_iter().enumerate() {
            let (k, v) = self.block.pair(id as u32);
            out.append((text(py, k)?, text(py, v)?, count))?;
        }
        Ok(out)
    }

    /// [(value, rows holding it)] of a text column (per event or link for Events.Name and
    /// Links.TraceState), in the order first seen. With `secrets` (the query-secret names,
    /// lowercase ASCII), only the values some detector may match (see maybe_sensitive).
    /// KeyError for a column that is not text.
    #[pyo3(signature = (name, secrets=None))]
    fn distinct_strings<'py>(&self, py: Python<'py>, name: &str, secrets: Option<Vec<String>>)
        -> PyResult<Bound<'py, PyList>> {
        let values = self.block.distinct_strings(text_col(&self.block, name)?)
            .ok_or_else(|| PyKeyError::new_err(format!("{name:?} is not a text column")))?;
        let secrets: Option<Vec<Vec<u8>>> = secrets.map(|s| s.into_iter().map(String::into_bytes).collect());
        let out = PyList::empty(py);
        for (value, count) in values {
            if secrets.as_ref().is_none_or(|s| text::maybe_sensitive(value, s)) {
                out.append((text(py, value)?, count))?;
            }
        }
        Ok(out)
    }

    /// The distinct attribute keys, by number (the numbers plan_attribute_values' modes follow).
    fn distinct_keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for id in 0..self.block.keys.len() {
            out.append(text(py, self.block.keys.get(id as u32))?)?;
        }
        Ok(out)
    }

    /// Decide here what needs no Python: `modes[k]` for key number k is 0 (plain: only the
    /// detectors), 1 (the detectors, then URL templating) or 2 (everything to Python); `secrets`
    /// the query-secret names (lowercase ASCII). Returns ([(key, value, maps holding it)] that
    /// Python must decide, occurrences templated here); the decisions made here are applied by the
    /// next remap_attribute_values, with Python's.
    fn plan_attribute_values<'py>(&mut self, py: Python<'py>, modes: Vec<u8>, secrets: Vec<String>)
        -> PyResult<(Bound<'py, PyList>, u64)> {
        let secrets: Vec<Vec<u8>> = secrets.into_iter().map(String::into_bytes).collect();
        let (python, decided, templated) = self.block.plan_pairs(&modes, &secrets);
        let counts = self.block.pair_counts();
        let out = PyList::empty(py);
        for id in python {
            let (k, v) = self.block.pair(id);
            out.append((text(py, k)?, text(py, v)?, counts[id as usize]))?;
        }
        self.pending = decided;
        Ok((out, templated))
    }

    /// Rewrite a text column: {value: new value}; values the mapping does not name stay.
    fn remap_strings(&mut self, name: &str, mapping: &Bound<'_, PyDict>) -> PyResult<()> {
        let col = text_col(&self.block, name)?;
        let mut decided = HashMap::with_capacity(mapping.len());
        for (old, new) in mapping.iter() {
            decided.insert(utf8(&old, "mapping keys")?, utf8(&new, "mapping values")?);
        }
        if self.block.remap_strings(col, &decided) {
            Ok(())
        } else {
            Err(PyKeyError::new_err(format!("{name:?} is not a text column")))
        }
    }

    /// [(span name, value of span attribute `key` or "", rows)], distinct, in the order first seen.
    fn span_name_routes<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyList>> {
        self.spans_only("span_name_routes")?;
        let out = PyList::empty(py);
        for ((name, route), count) in self.block.name_routes(key.as_bytes()) {
            out.append((text(py, name)?, text(py, route)?, count))?;
        }
        Ok(out)
    }

    /// Rewrite span names: {(name, value of span attribute `key` or ""): new name}.
    fn remap_span_names(&mut self, key: &str, mapping: &Bound<'_, PyDict>) -> PyResult<()> {
        self.spans_only("remap_span_names")?;
        let mut decided = HashMap::with_capacity(mapping.len());
        for (pair, new) in mapping.iter() {
            let (name, route): (String, String) = pair
                .extract()
                .map_err(|_| PyTypeError::new_err("mapping keys must be (name, route) string pairs"))?;
            decided.insert((name.into_bytes(), route.into_bytes()), utf8(&new, "mapping values")?);
        }
        self.block.remap_name_routes(key.as_bytes(), &decided);
        Ok(())
    }

    /// Whether any row has a trace state.
    fn any_trace_state(&self) -> bool {
        !self.block.trace_state.data.is_empty()
    }

    /// [(service name, trace state, rows)]: the distinct groups head sampling decides for.
    fn head_groups<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.spans_only("head_groups")?;
        let out = PyList::empty(py);
        for ((service, state), count) in self.block.head_groups().0 {
            out.append((text(py, service)?, text(py, state)?, count))?;
        }
        Ok(out)
    }

    /// One decision per group of head_groups(), in its order: (mode, threshold, weight, new
    /// trace state or None), mode 0 keeps the rows, 1 keeps those whose trace id's randomness
    /// (its last 56 bits) is at least the threshold, 2 drops them. Kept rows get the weight as
    /// SampleWeight. Returns how many rows were dropped.
    fn apply_head(&mut self, decisions: Vec<(u8, u64, f64, Option<String>)>) -> PyResult<usize> {
        self.spans_only("apply_head")?;
        let heads: Vec<Head> = decisions
            .into_iter()
            .map(|(mode, threshold, weight, state)| Head { mode, threshold, weight, state: state.map(String::into_bytes) })
            .collect();
        self.block.apply_head(&heads).map_err(PyValueError::new_err)
    }

    /// Tail sampling's facts per trace, traces in the order first seen: [(trace id, spans,
    /// statuses (bit c set when a span has STATUS_CODES[c]), longest duration, the root span's
    /// duration or None, the root's service, the root's name, the first span's service, earliest
    /// Timestamp, latest Timestamp + Duration, spans with status Error)]. The root is the first
    /// span without a parent span id.
    fn trace_facts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.spans_only("trace_facts")?;
        let b = &self.block;
        let out = PyList::empty(py);
        for (trace, f) in b.trace_facts() {
            let (root_duration, root_service, root_name) = match f.root {
                Some(r) => (Some(b.duration[r]), b.row_service(r), b.name.get(r)),
                None => (None, &b""[..], &b""[..]),
            };
            let end = f.end.into_pyobject(py)?;
            let item = PyTuple::new(py, [
                text(py, trace)?.into_any(), f.rows.into_pyobject(py)?.into_any(),
                f.statuses.into_pyobject(py)?.into_any(), f.max_duration.into_pyobject(py)?.into_any(),
                root_duration.into_pyobject(py)?.into_any(), text(py, root_service)?.into_any(),
                text(py, root_name)?.into_any(), text(py, b.row_service(f.first))?.into_any(),
                f.start.into_pyobject(py)?.into_any(), end.into_any(), f.errors.into_pyobject(py)?.into_any(),
            ])?;
            out.append(item)?;
        }
        Ok(out)
    }

    /// Tail sampling by trace: keep the rows of the traces in `kept` ({trace id: weight factor}),
    /// each kept row's SampleWeight (1 where none was set) multiplied by its trace's factor; the
    /// others are dropped. Returns rows dropped.
    fn apply_tail_traces(&mut self, kept: &Bound<'_, PyDict>) -> PyResult<usize> {
        self.spans_only("apply_tail_traces")?;
        let mut factors = HashMap::with_capacity(kept.len());
        for (trace, factor) in kept.iter() {
            let factor: f64 = factor.extract().map_err(|_| PyTypeError::new_err("weight factors must be floats"))?;
            factors.insert(utf8(&trace, "trace ids")?, factor);
        }
        let (keep, factors) = self.block.tail_flags(&factors);
        self.block.apply_tail(&keep, &factors).map_err(PyValueError::new_err)
    }

    /// Tail sampling: keep the rows whose flag is set, each kept row's SampleWeight (1 where none
    /// was set) multiplied by its factor (1 / the tail probability). Returns rows dropped.
    fn apply_tail(&mut self, keep: Vec<bool>, factors: Vec<f64>) -> PyResult<usize> {
        self.spans_only("apply_tail")?;
        self.block.apply_tail(&keep, &factors).map_err(PyValueError::new_err)
    }

    /// [(service name, rows)]: the distinct services of the rows, in the order first seen (what
    /// head sampling of log records decides a threshold for).
    fn services<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (service, count) in self.block.services().0 {
            out.append((text(py, service)?, count))?;
        }
        Ok(out)
    }

    /// Head sampling of log records: one threshold per service of services(), in its order. A
    /// record stays without a trace id, at a severity number of at least `keep_severity`, or when
    /// its trace id's randomness is at least its service's threshold. Returns rows dropped.
    fn apply_log_head(&mut self, thresholds: Vec<u64>, keep_severity: u8) -> PyResult<usize> {
        if self.block.signal != Signal::Logs {
            return Err(PyValueError::new_err("apply_log_head is for a block of otel_logs"));
        }
        self.block.apply_log_head(&thresholds, keep_severity).map_err(PyValueError::new_err)
    }

    /// The catalog's columns (ServiceTeam, ServiceTier, ServiceOwner) from each resource's
    /// service name: {service: (team, tier, owner)}; other services get empty values.
    fn set_catalog(&mut self, mapping: &Bound<'_, PyDict>) -> PyResult<()> {
        let mut decided = HashMap::with_capacity(mapping.len());
        for (service, entry) in mapping.iter() {
            let (team, tier, owner): (String, String, String) = entry
                .extract()
                .map_err(|_| PyTypeError::new_err("catalog entries must be (team, tier, owner) strings"))?;
            decided.insert(utf8(&service, "services")?, [team.into_bytes(), tier.into_bytes(), owner.into_bytes()]);
        }
        self.block.set_catalog(&decided);
        Ok(())
    }

    /// (earliest, latest) Timestamp in ns, or None for a block without rows.
    fn time_range(&self) -> Option<(i64, i64)> {
        self.block.time_range()
    }

    /// How many rows start after `ns`.
    fn count_after(&self, ns: i64) -> usize {
        self.block.timestamp.iter().filter(|&&t| t > ns).count()
    }
}

fn decode(py: Python<'_>, payloads: &Bound<'_, PyAny>, max_message_bytes: usize, signal: Signal) -> PyResult<NativeBlock> {
    let mut held: Vec<Bound<'_, PyBytes>> = Vec::new();
    for item in payloads.try_iter()? {
        let item = item?;
        let bytes = item.downcast_into::<PyBytes>().map_err(|_| PyTypeError::new_err("payloads must be bytes"))?;
        held.push(bytes);
    }
    let slices: Vec<&[u8]> = held.iter().map(|b| b.as_bytes()).collect();
    let (block, errors) = py.allow_threads(|| decode_all(&slices, max_message_bytes, signal));
    Ok(NativeBlock { block, errors, messages: slices.len(), pending: Vec::new() })
}

/// `f`'s answer, or None if it panicked (a bug): the caller's reference path (the protobuf library)
/// then decides, as the decoder refuses a message it panicked on instead of raising past the batch
/// (PyO3 raises a panic as PanicException, which `except Exception` does not catch).
fn unless_panicked<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// A spans ("traces") or logs request cut into one request per trace at the wire level (see
/// native/src/split.rs): [(trace id as hex, part bytes, records, latest end in ns)] in the order
/// the traces first appear, records without a trace id under "". None when upb would not parse
/// the request; ValueError("too_large", bytes) when the parts would add up to more than
/// `max_total` bytes. `validated`: redaction_inputs read this payload already (so it is valid),
/// and it is not validated again.
#[pyfunction]
#[pyo3(signature = (signal, payload, max_total, validated = false))]
fn split_by_trace<'py>(py: Python<'py>, signal: &str, payload: &[u8], max_total: usize, validated: bool)
    -> PyResult<Option<Bound<'py, PyList>>> {
    let signal = match signal {
        "traces" => Signal::Traces,
        "logs" => Signal::Logs,
        other => return Err(PyValueError::new_err(format!("split_by_trace cuts traces or logs, not {other:?}"))),
    };
    let cut = py.allow_threads(|| unless_panicked(|| split::split_by_trace(payload, signal, max_total, validated)));
    let parts = match cut {
        Some(Ok(parts)) => parts,
        None | Some(Err(split::NotSplit::Invalid)) => return Ok(None),
        Some(Err(split::NotSplit::TooLarge(total))) => return Err(PyValueError::new_err(("too_large", total))),
    };
    let out = PyList::empty(py);
    for part in parts {
        let hex: String = part.trace_id.iter().map(|b| format!("{b:02x}")).collect();
        out.append((hex, PyBytes::new(py, &part.bytes), part.records, part.end_ns))?;
    }
    Ok(Some(out))
}

/// Decode a batch of OTLP ExportTraceServiceRequest protobuf payloads (one per Kafka message)
/// into one NativeBlock of otel_traces. Never raises for a payload's contents: a message that
/// cannot become rows is in `errors` with the reason and detail the Python decoder gives it, and
/// none of its rows are kept. The GIL is released while decoding.
#[pyfunction]
#[pyo3(signature = (payloads, max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES))]
fn decode_traces(py: Python<'_>, payloads: &Bound<'_, PyAny>, max_message_bytes: usize) -> PyResult<NativeBlock> {
    decode(py, payloads, max_message_bytes, Signal::Traces)
}

/// decode_traces for ExportLogsServiceRequest payloads: one NativeBlock of otel_logs.
#[pyfunction]
#[pyo3(signature = (payloads, max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES))]
fn decode_logs(py: Python<'_>, payloads: &Bound<'_, PyAny>, max_message_bytes: usize) -> PyResult<NativeBlock> {
    decode(py, payloads, max_message_bytes, Signal::Logs)
}

/// Tail sampling's triage of one routed spans part, before it is decoded: (spans, statuses (bit c
/// set when a span has STATUS_CODES[c]), longest duration, longest duration of a span without a
/// parent or None, whether the decoder would refuse a span (a time past 2262, an id of the wrong
/// size), the part cut to those root spans or None). None when the part does not parse. The GIL
/// is released while reading.
#[pyfunction]
fn triage_spans<'py>(py: Python<'py>, payload: &[u8])
    -> PyResult<Option<(u64, u8, u64, Option<u64>, bool, Option<Bound<'py, PyBytes>>)>> {
    let Some(Ok(t)) = py.allow_threads(|| unless_panicked(|| split::triage_spans(payload))) else {
        return Ok(None);
    };
    let roots = t.roots.map(|r| PyBytes::new(py, &r));
    Ok(Some((t.spans, t.statuses, t.max_duration, t.max_root_duration, t.suspicious, roots)))
}

/// What redaction could change in a spans ("traces") or logs request, read without building
/// rows: (every distinct attribute key, at any depth; every distinct other string a detector may
/// match (`maybe_sensitive` with `secrets`), from every string field of every message, entity
/// references and AnyValue strings included), in the order first seen. None when upb would not
/// parse the request.
#[pyfunction]
fn redaction_inputs<'py>(py: Python<'py>, signal: &str, payload: &[u8], secrets: Vec<String>)
    -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>)>> {
    let root = match signal {
        "traces" => validate::Msg::Request,
        "logs" => validate::Msg::LogsRequest,
        other => return Err(PyValueError::new_err(format!("redaction_inputs reads traces or logs, not {other:?}"))),
    };
    let secrets: Vec<Vec<u8>> = secrets.into_iter().map(String::into_bytes).collect();
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut texts: Vec<&[u8]> = Vec::new();
    let mut seen_keys: hashbrown::HashSet<&[u8]> = hashbrown::HashSet::new();
    let mut seen_texts: hashbrown::HashSet<&[u8]> = hashbrown::HashSet::new();
    let walked = unless_panicked(|| {
        validate::walk(payload, root, |msg, number, text| {
            if msg == validate::Msg::KeyValue && number == 1 {
                if seen_keys.insert(text) {
                    keys.push(text);
                }
            } else if seen_texts.insert(text) && text::maybe_sensitive(text, &secrets) {
                texts.push(text);
            }
        })
    });
    if !matches!(walked, Some(Ok(()))) {
        return Ok(None); // the protobuf library's parse and walk decide
    }
    let as_list = |items: &[&[u8]]| -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for item in items {
            out.append(text(py, item)?)?;
        }
        Ok(out)
    };
    Ok(Some((as_list(&keys)?, as_list(&texts)?)))
}

/// The request redacted at the wire level with the decisions Python made (`redact.rs`): the keys
/// whose attributes leave every list, and each string's new value (None: dropped). (bytes, values
/// changed); None when the request does not parse or holds a message protobuf would merge in a
/// way that could change a decision: the protobuf library's walk decides then.
#[pyfunction]
fn redact_request<'py>(py: Python<'py>, signal: &str, payload: &[u8], drop_keys: Vec<String>,
                       replace: HashMap<String, Option<String>>) -> PyResult<Option<(Bound<'py, PyBytes>, usize)>> {
    let root = match signal {
        "traces" => validate::Msg::Request,
        "logs" => validate::Msg::LogsRequest,
        other => return Err(PyValueError::new_err(format!("redact_request rewrites traces or logs, not {other:?}"))),
    };
    let done = py.allow_threads(|| {
        let decisions = redact::Decisions {
            drop_keys: drop_keys.iter().map(|k| k.as_bytes()).collect(),
            replace: replace.iter().map(|(k, v)| (k.as_bytes(), v.as_deref().map(str::as_bytes))).collect(),
        };
        unless_panicked(|| redact::redact(payload, root, &decisions))
    });
    Ok(done.and_then(Result::ok).map(|(bytes, changed)| (PyBytes::new(py, &bytes), changed)))
}

/// Whether a value may hold what the label stage's detectors look for (a no is exact; see text.rs).
#[pyfunction]
fn maybe_sensitive(value: &str, secrets: Vec<String>) -> bool {
    let secrets: Vec<Vec<u8>> = secrets.into_iter().map(String::into_bytes).collect();
    text::maybe_sensitive(value.as_bytes(), &secrets)
}

/// templating.template_path of a printable ASCII value; None for any other value.
#[pyfunction]
fn template_path(value: &str) -> Option<String> {
    text::template_path(value.as_bytes()).map(|t| String::from_utf8(t).expect("ASCII in, ASCII out"))
}

/// {column: the Native type its data is sent as}, for every column of the table (otel_traces or
/// otel_logs).
#[pyfunction]
#[pyo3(signature = (table = "otel_traces"))]
fn column_types<'py>(py: Python<'py>, table: &str) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for (_, name, native_type) in columns_of(signal_of(table)?) {
        out.set_item(name, native_type)?;
    }
    Ok(out)
}

/// {message: {field number: (kind, message or None)}}: the messages and fields the validator
/// checks, for the test that compares them with the installed descriptors.
#[pyfunction]
fn schema(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for msg in MESSAGES {
        let fields = PyDict::new(py);
        for (number, kind) in msg.declared() {
            let (name, sub) = match kind {
                Kind::Varint => ("varint", None),
                Kind::Fixed64 => ("fixed64", None),
                Kind::Fixed32 => ("fixed32", None),
                Kind::Bytes => ("bytes", None),
                Kind::Str => ("string", None),
                Kind::Message(m) => ("message", Some(m.full_name())),
                Kind::None => continue,
            };
            fields.set_item(number, (name, sub))?;
        }
        out.set_item(msg.full_name(), fields)?;
    }
    Ok(out)
}

/// OTLP ExportTraceServiceRequest and ExportLogsServiceRequest protobuf → the rows of otel_traces
/// and otel_logs, natively.
///
/// decode_traces(payloads: list[bytes], max_message_bytes=16 MiB) -> NativeBlock
///     One call per batch of messages. Each message gives all of its rows or none: a refused one
///     is in NativeBlock.errors as (message index, reason, detail), with the Python decoder's
///     reasons ("undecodable", "wrong_encoding", "invalid_id", "invalid_value", "too_large").
///     Every input is safe: protobuf's own limits (nesting 100 deep from the request, tags and
///     lengths of 5 bytes, varints of 10, lengths within the message, UTF-8 strings) are checked
///     before a row is built, and nothing is allocated from a declared length.
///
/// decode_logs(payloads, max_message_bytes=16 MiB) -> NativeBlock: the same for log records.
///
/// NativeBlock
///     .table, .rows, .messages, .errors, .origins() (message index per row),
///     .to_columns(names=None) -> {name: list} (the Python ColumnBatch's values; for tests),
///     .to_native(names=None, start=0, stop=None) -> bytes: one ClickHouse Native block of those
///         columns in that order, of those rows (the table's types; LowCardinality columns and map
///         keys dictionary-encoded from the block's own dictionaries, DateTime64(9) as Int64 ns,
///         arrays as UInt64 offsets then values),
///     .distinct_attribute_values() -> [(key, value)]: attribute keys and values are stored once
///         per batch and maps hold indexes into them; these are the distinct pairs,
///     .remap_attribute_values({(key, value): new value or None}) -> pairs changed: a policy
///         decided once per distinct pair, applied to every map (None drops the pair).
///
/// COLUMNS and LOG_COLUMNS (otel_traces' and otel_logs' columns in order), column_types(table)
/// {name: Native type}, schema().
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(split_by_trace, m)?)?;
    m.add_function(wrap_pyfunction!(triage_spans, m)?)?;
    m.add_function(wrap_pyfunction!(redaction_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(redact_request, m)?)?;
    m.add_function(wrap_pyfunction!(decode_traces, m)?)?;
    m.add_function(wrap_pyfunction!(decode_logs, m)?)?;
    m.add_function(wrap_pyfunction!(column_types, m)?)?;
    m.add_function(wrap_pyfunction!(schema, m)?)?;
    m.add_function(wrap_pyfunction!(maybe_sensitive, m)?)?;
    m.add_function(wrap_pyfunction!(template_path, m)?)?;
    m.add_class::<NativeBlock>()?;
    m.add("COLUMNS", PyTuple::new(m.py(), COLUMNS.iter().map(|c| c.1))?)?;
    m.add("LOG_COLUMNS", PyTuple::new(m.py(), LOG_COLUMNS.iter().map(|c| c.1))?)?;
    m.add("SPAN_KINDS", PyTuple::new(m.py(), SPAN_KINDS)?)?;
    m.add("STATUS_CODES", PyTuple::new(m.py(), STATUS_CODES)?)?;
    m.add("MAX_DEPTH", wire::MAX_DEPTH)?;
    Ok(())
}
