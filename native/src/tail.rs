//! What tail sampling reads of a block of spans, per trace, without a Python object per span:
//! the facts its plain policies decide on (span count, statuses, durations, the root span) and
//! the trace summary needs (first start, last end, error spans), and the rows of the traces kept.
//!
//! The rows are the block's as the stages left them (head sampling dropped some, the label stage
//! and the catalog rewrote names), so the facts are those of the rows that would be written.

use std::collections::HashMap;

use crate::block::Block;

/// StatusCode Error (STATUS_CODES[2]).
const STATUS_ERROR: u8 = 2;

/// One trace's facts over the rows of a block.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub rows: u64,
    /// Bit `c` set when a row has status code `c` (STATUS_CODES).
    pub statuses: u8,
    pub max_duration: u64,
    /// The first row without a parent span id, if any.
    pub root: Option<usize>,
    /// The first row of the trace.
    pub first: usize,
    pub start: i64,
    /// The latest Timestamp + Duration (wider than either).
    pub end: i128,
    pub errors: u64,
}

impl Block {
    /// Each trace's facts, traces in the order first seen (rows with an empty trace id make a
    /// trace of their own, as grouping the TraceId column would).
    pub fn trace_facts(&self) -> Vec<(&[u8], Facts)> {
        let mut out: Vec<(&[u8], Facts)> = Vec::new();
        let mut seen: HashMap<&[u8], usize> = HashMap::new();
        for i in 0..self.trace_id.len() {
            let trace = self.trace_id.get(i);
            let k = *seen.entry(trace).or_insert_with(|| {
                out.push((trace, Facts { rows: 0, statuses: 0, max_duration: 0, root: None, first: i, start: i64::MAX,
                                         end: i128::MIN, errors: 0 }));
                out.len() - 1
            });
            let f = &mut out[k].1;
            let (status, duration, ts) = (self.status_code[i], self.duration[i], self.timestamp[i]);
            f.rows += 1;
            f.statuses |= 1 << status.min(7);
            f.max_duration = f.max_duration.max(duration);
            if f.root.is_none() && self.parent_span_id.get(i).is_empty() {
                f.root = Some(i);
            }
            f.start = f.start.min(ts);
            f.end = f.end.max(ts as i128 + duration as i128);
            f.errors += (status == STATUS_ERROR) as u64;
        }
        out
    }

    /// The service name of row `i`.
    pub fn row_service(&self, i: usize) -> &[u8] {
        self.resources.service.get(self.resource[i] as usize)
    }

    /// Tail sampling by trace: the flag and weight factor of each row, from {trace id: factor} of
    /// the traces kept (rows of other traces are dropped).
    pub fn tail_flags(&self, kept: &HashMap<Vec<u8>, f64>) -> (Vec<bool>, Vec<f64>) {
        let rows = self.trace_id.len();
        let (mut keep, mut factors) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        for i in 0..rows {
            match kept.get(self.trace_id.get(i)) {
                Some(&factor) => {
                    keep.push(true);
                    factors.push(factor);
                }
                None => {
                    keep.push(false);
                    factors.push(1.0);
                }
            }
        }
        (keep, factors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Signal;

    fn span(b: &mut Block, trace: &[u8], parent: &[u8], status: u8, ts: i64, duration: u64) {
        b.trace_id.push(trace);
        b.parent_span_id.push(parent);
        b.status_code.push(status);
        b.timestamp.push(ts);
        b.duration.push(duration);
        b.resource.push(0);
    }

    #[test]
    fn facts_per_trace_in_first_seen_order() {
        let mut b = Block::new(Signal::Traces);
        b.resources.service.push(b"svc");
        span(&mut b, b"t2", b"p", 1, 50, 10);
        span(&mut b, b"t1", b"", 2, 10, 100);
        span(&mut b, b"t2", b"", 0, 40, 5);
        span(&mut b, b"t2", b"", 2, 30, 90);
        let facts = b.trace_facts();
        assert_eq!(facts.len(), 2);
        assert_eq!(facts[0].0, b"t2");
        let t2 = &facts[0].1;
        assert_eq!((t2.rows, t2.statuses, t2.max_duration, t2.root, t2.first), (3, 0b111, 90, Some(2), 0));
        assert_eq!((t2.start, t2.end, t2.errors), (30, 120, 1));
        assert_eq!(facts[1].1.root, Some(1));
        let kept = HashMap::from([(b"t1".to_vec(), 4.0)]);
        assert_eq!(b.tail_flags(&kept), (vec![false, true, false, false], vec![1.0, 4.0, 1.0, 1.0]));
    }
}
