//! What the stages change in a block. Each decision is made in Python once per distinct value of
//! a batch (streams/stages/native_traces.py); what is here applies it to every row that holds the
//! value, without a Python object per row:
//!
//! - text columns: their distinct values (with how many rows hold each) and a rewrite of them;
//! - span names: the distinct (name, value of the span's route attribute) pairs and a rewrite;
//! - head sampling: the distinct (service, trace state) groups of the rows, then one decision per
//!   group (keep, drop, or compare the trace id's randomness with a threshold), which drops rows,
//!   sets each kept row's weight and rewrites trace states;
//! - the service catalog: three columns derived from each resource's service name;
//! - attribute pairs with how many maps hold each (the counts of what a policy changed).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use crate::block::{Block, StrCol};
use crate::columns::{Col, Source};
use crate::text::{maybe_sensitive, template_path};

/// How the label stage treats the values of one attribute key (``plan_pairs``).
pub const KEY_PLAIN: u8 = 0; // only the detectors: a value they cannot match stays
pub const KEY_TEMPLATE: u8 = 1; // the detectors, then URL templating
pub const KEY_PYTHON: u8 = 2; // anything else (dropped keys, rules): every value to Python

/// Distinct pairs of strings with how many rows hold each, in the order first seen.
pub type PairCounts<'b> = Vec<((&'b [u8], &'b [u8]), u64)>;
/// Decisions the block makes itself: (pair number, its new value, or None to drop it).
pub type Decided = Vec<(u32, Option<Vec<u8>>)>;

/// How head sampling treats the rows of one (service, trace state) group.
pub struct Head {
    pub mode: u8,
    pub threshold: u64,
    pub weight: f64,
    pub state: Option<Vec<u8>>,
}

pub const HEAD_KEEP: u8 = 0;
pub const HEAD_TEST: u8 = 1;
pub const HEAD_DROP: u8 = 2;

/// The randomness of a trace id (lowercase hex): its last 14 hex digits (56 bits), as
/// streams.stages.sampling.trace_randomness reads them.
fn randomness(hex: &[u8]) -> u64 {
    let tail = &hex[hex.len().saturating_sub(14)..];
    tail.iter().fold(0u64, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => 0,
        };
        (acc << 4) | d as u64
    })
}

/// Keep the elements whose flag is set.
fn retain<T>(values: &mut Vec<T>, keep: &[bool]) {
    let mut i = 0;
    values.retain(|_| {
        let k = keep[i];
        i += 1;
        k
    });
}

fn retain_strings(col: &mut StrCol, keep: &[bool]) {
    if col.len() == 0 {
        return; // a column of the other signal
    }
    let mut out = StrCol::default();
    for (i, &k) in keep.iter().enumerate() {
        if k {
            out.push(col.get(i));
        }
    }
    *col = out;
}

/// Elements (events or links) of the kept rows, given the rows' cumulative ends: the element
/// flags and the new ends.
fn kept_elements(ends: &[u64], keep: &[bool]) -> (Vec<bool>, Vec<u64>) {
    let total = ends.last().copied().unwrap_or(0) as usize;
    let mut flags = vec![false; total];
    let mut new_ends = Vec::with_capacity(keep.iter().filter(|&&k| k).count());
    let (mut start, mut kept) = (0usize, 0u64);
    for (&end, &k) in ends.iter().zip(keep) {
        let end = end as usize;
        if k {
            flags[start..end].iter_mut().for_each(|f| *f = true);
            kept += (end - start) as u64;
            new_ends.push(kept);
        }
        start = end;
    }
    (flags, new_ends)
}

/// Distinct values in the order first seen, with how many times each occurs.
fn tally<'a, K: std::hash::Hash + Eq + Copy + 'a>(items: impl Iterator<Item = K>) -> (Vec<(K, u64)>, Vec<u32>) {
    let mut seen: HashMap<K, u32> = HashMap::new();
    let mut out: Vec<(K, u64)> = Vec::new();
    let mut group = Vec::new();
    for item in items {
        let g = match seen.entry(item) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                out.push((item, 0));
                *e.insert((out.len() - 1) as u32)
            }
        };
        out[g as usize].1 += 1;
        group.push(g);
    }
    (out, group)
}

impl Block {
    fn strings_mut(&mut self, col: Col) -> Option<&mut StrCol> {
        use Col::*;
        let (r, s) = (&mut self.resources, &mut self.scopes);
        Some(match col {
            TraceState => &mut self.trace_state,
            SpanName => &mut self.name,
            ServiceName => &mut r.service,
            ScopeName => &mut s.name,
            ScopeVersion => &mut s.version,
            StatusMessage => &mut self.status_message,
            EventsName => &mut self.events.name,
            LinksTraceState => &mut self.links.trace_state,
            ResourceSchemaUrl => &mut r.schema_url,
            ScopeSchemaUrl => &mut s.schema_url,
            SeverityText => &mut self.severity_text,
            Body => &mut self.body,
            EventName => &mut self.event_name,
            _ => return None,
        })
    }

    /// The distinct values of a text column with how many rows (or events, links) hold each, in
    /// the order first seen; None for a column that is not text.
    pub fn distinct_strings(&self, col: Col) -> Option<Vec<(&[u8], u64)>> {
        let Source::Strings(values, per) = self.source(col) else { return None };
        Some(tally(self.indexes(per).map(|i| values.get(i))).0)
    }

    /// Rewrite the values a mapping names (others stay). False for a column that is not text.
    pub fn remap_strings(&mut self, col: Col, mapping: &HashMap<Vec<u8>, Vec<u8>>) -> bool {
        let Some(values) = self.strings_mut(col) else { return false };
        let mut out = StrCol::default();
        out.data.reserve(values.data.len());
        for i in 0..values.len() {
            let s = values.get(i);
            out.push(mapping.get(s).map_or(s, |v| v.as_slice()));
        }
        *values = out;
        true
    }

    /// The value of attribute `key` in row `row`'s span attributes ("" without it).
    fn span_attribute(&self, row: usize, key: Option<u32>) -> &[u8] {
        let Some(key) = key else { return b"" };
        for &p in self.maps.get(self.attrs[row]) {
            let (k, v) = self.pairs.pairs[p as usize];
            if k == key {
                return self.values.get(v);
            }
        }
        b""
    }

    /// The distinct (span name, value of span attribute `key`) pairs with their row counts.
    pub fn name_routes(&self, key: &[u8]) -> PairCounts<'_> {
        let key = self.keys.find(key);
        tally((0..self.rows()).map(|i| (self.name.get(i), self.span_attribute(i, key)))).0
    }

    /// Rewrite span names by (name, value of span attribute `key`); pairs not named stay.
    pub fn remap_name_routes(&mut self, key: &[u8], mapping: &HashMap<(Vec<u8>, Vec<u8>), Vec<u8>>) {
        let key_id = self.keys.find(key);
        let mut out = StrCol::default();
        let mut probe = (Vec::new(), Vec::new());
        for i in 0..self.rows() {
            let name = self.name.get(i);
            probe.0.clear();
            probe.0.extend_from_slice(name);
            probe.1.clear();
            probe.1.extend_from_slice(self.span_attribute(i, key_id));
            out.push(mapping.get(&probe).map_or(name, |v| v.as_slice()));
        }
        self.name = out;
    }

    /// The distinct (service name, trace state) groups of the rows, with their row counts, and
    /// each row's group.
    pub fn head_groups(&self) -> (PairCounts<'_>, Vec<u32>) {
        let service = &self.resources.service;
        tally((0..self.rows()).map(|i| (service.get(self.resource[i] as usize), self.trace_state.get(i))))
    }

    /// Apply one decision per group of `head_groups` (in its order): rows dropped, kept rows'
    /// weights set, trace states rewritten. Returns how many rows were dropped.
    pub fn apply_head(&mut self, decisions: &[Head]) -> Result<usize, String> {
        let (groups, group) = self.head_groups();
        if decisions.len() != groups.len() {
            return Err(format!("{} decisions for {} groups", decisions.len(), groups.len()));
        }
        drop(groups);
        if let Some(d) = decisions.iter().find(|d| d.mode > HEAD_DROP) {
            return Err(format!("head sampling mode {} is none of keep (0), test (1), drop (2)", d.mode));
        }
        let rows = self.rows();
        let mut keep = vec![true; rows];
        let mut weights = Vec::with_capacity(rows);
        let mut states = StrCol::default();
        for i in 0..rows {
            let d = &decisions[group[i] as usize];
            keep[i] = match d.mode {
                HEAD_KEEP => true,
                HEAD_TEST => randomness(self.trace_id.get(i)) >= d.threshold,
                _ => false,
            };
            if keep[i] {
                weights.push(d.weight);
            }
            states.push(d.state.as_deref().unwrap_or(self.trace_state.get(i)));
        }
        self.trace_state = states;
        let dropped = keep.iter().filter(|&&k| !k).count();
        if dropped > 0 {
            self.retain_rows(&keep);
        }
        self.sample_weight = Some(weights);
        Ok(dropped)
    }

    /// Tail sampling's decisions: keep the rows whose flag is set, each kept row's SampleWeight
    /// (1 where none was set) multiplied by its factor. Returns how many rows were dropped.
    pub fn apply_tail(&mut self, keep: &[bool], factors: &[f64]) -> Result<usize, String> {
        let rows = self.rows();
        if keep.len() != rows || factors.len() != rows {
            return Err(format!("{} flags and {} factors for {} rows", keep.len(), factors.len(), rows));
        }
        let weights: Vec<f64> = (0..rows)
            .filter(|&i| keep[i])
            .map(|i| self.sample_weight.as_ref().map_or(1.0, |w| w[i]) * factors[i])
            .collect();
        let dropped = rows - weights.len();
        if dropped > 0 {
            self.retain_rows(keep);
        }
        self.sample_weight = Some(weights);
        Ok(dropped)
    }

    /// The distinct service names of the rows, with their row counts, and each row's group: what
    /// head sampling of log records decides for (a threshold per service).
    pub fn services(&self) -> (Vec<(&[u8], u64)>, Vec<u32>) {
        let service = &self.resources.service;
        tally(self.resource.iter().map(|&r| service.get(r as usize)))
    }

    /// Head sampling of log records, one threshold per group of `services` (in its order): a
    /// record stays when it has no trace id, when its severity number is at least `keep_severity`,
    /// or when its trace id's randomness is at least its service's threshold (the decision its
    /// trace's spans get). Returns how many rows were dropped.
    pub fn apply_log_head(&mut self, thresholds: &[u64], keep_severity: u8) -> Result<usize, String> {
        let (groups, group) = self.services();
        if thresholds.len() != groups.len() {
            return Err(format!("{} thresholds for {} services", thresholds.len(), groups.len()));
        }
        drop(groups);
        let keep: Vec<bool> = (0..self.rows())
            .map(|i| {
                let trace_id = self.trace_id.get(i);
                trace_id.is_empty()
                    || self.severity_number[i] >= keep_severity
                    || randomness(trace_id) >= thresholds[group[i] as usize]
            })
            .collect();
        let dropped = keep.iter().filter(|&&k| !k).count();
        if dropped > 0 {
            self.retain_rows(&keep);
        }
        Ok(dropped)
    }

    /// Keep the rows whose flag is set (with their events and links); resources, scopes and the
    /// dictionaries stay as they are.
    pub fn retain_rows(&mut self, keep: &[bool]) {
        let (event_flags, events_end) = kept_elements(&self.events_end, keep);
        let e = &mut self.events;
        retain(&mut e.time, &event_flags);
        retain_strings(&mut e.name, &event_flags);
        retain(&mut e.attrs, &event_flags);
        retain(&mut e.dropped, &event_flags);
        self.events_end = events_end;
        let (link_flags, links_end) = kept_elements(&self.links_end, keep);
        let l = &mut self.links;
        retain_strings(&mut l.trace_id, &link_flags);
        retain_strings(&mut l.span_id, &link_flags);
        retain_strings(&mut l.trace_state, &link_flags);
        retain(&mut l.attrs, &link_flags);
        retain(&mut l.flags, &link_flags);
        retain(&mut l.dropped, &link_flags);
        self.links_end = links_end;
        retain(&mut self.origin, keep);
        retain(&mut self.resource, keep);
        retain(&mut self.scope, keep);
        retain(&mut self.timestamp, keep);
        retain_strings(&mut self.trace_id, keep);
        retain_strings(&mut self.span_id, keep);
        retain_strings(&mut self.parent_span_id, keep);
        retain_strings(&mut self.trace_state, keep);
        retain_strings(&mut self.name, keep);
        retain(&mut self.kind, keep);
        retain(&mut self.attrs, keep);
        retain(&mut self.duration, keep);
        retain(&mut self.status_code, keep);
        retain_strings(&mut self.status_message, keep);
        retain(&mut self.flags, keep);
        retain(&mut self.dropped_attrs, keep);
        retain(&mut self.dropped_events, keep);
        retain(&mut self.dropped_links, keep);
        retain(&mut self.trace_flags, keep);
        retain_strings(&mut self.severity_text, keep);
        retain(&mut self.severity_number, keep);
        retain_strings(&mut self.body, keep);
        retain_strings(&mut self.event_name, keep);
        retain(&mut self.observed, keep);
        if let Some(weights) = self.sample_weight.as_mut() {
            retain(weights, keep);
        }
    }

    /// The catalog's columns for each resource, from its service name; services the mapping
    /// does not name get empty values.
    pub fn set_catalog(&mut self, mapping: &HashMap<Vec<u8>, [Vec<u8>; 3]>) {
        let mut cols: [StrCol; 3] = Default::default();
        let service = &self.resources.service;
        for r in 0..service.len() {
            let entry = mapping.get(service.get(r));
            for (c, col) in cols.iter_mut().enumerate() {
                col.push(entry.map_or(b"".as_slice(), |e| e[c].as_slice()));
            }
        }
        self.catalog = Some(cols);
    }

    /// Every attribute pair some map holds, with how many maps hold it: each resource's and
    /// scope's map once, each span's, event's and link's.
    pub fn pair_counts(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.pairs.pairs.len()];
        let maps = self.resources.attrs.iter().chain(&self.scopes.attrs).chain(&self.attrs)
            .chain(&self.events.attrs).chain(&self.links.attrs);
        for &m in maps {
            for &p in self.maps.get(m) {
                counts[p as usize] += 1;
            }
        }
        counts
    }

    /// Which attribute pairs the label stage must see, given how it treats each key (`modes`, by
    /// key number) and the query-secret names: a pair of a plain key whose value no detector can
    /// match stays, and one of a templated key is templated here when it is printable ASCII. Returns
    /// (pairs for Python, decisions made here, occurrences templated here).
    pub fn plan_pairs(&self, modes: &[u8], secrets: &[Vec<u8>]) -> (Vec<u32>, Decided, u64) {
        let counts = self.pair_counts();
        let (mut python, mut decided, mut templated) = (Vec::new(), Vec::new(), 0u64);
        for (id, &(key, value)) in self.pairs.pairs.iter().enumerate() {
            if counts[id] == 0 {
                continue; // held only by rows head sampling dropped
            }
            let mode = modes.get(key as usize).copied().unwrap_or(KEY_PYTHON);
            let value = self.values.get(value);
            if !matches!(mode, KEY_PLAIN | KEY_TEMPLATE) || maybe_sensitive(value, secrets) {
                python.push(id as u32);
                continue;
            }
            if mode == KEY_TEMPLATE {
                match template_path(value) {
                    Some(t) if t != value => {
                        decided.push((id as u32, Some(t)));
                        templated += counts[id];
                    }
                    Some(_) => {}
                    None => python.push(id as u32),
                }
            }
        }
        (python, decided, templated)
    }

    /// (earliest, latest) row timestamp.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        let lo = self.timestamp.iter().copied().min()?;
        let hi = self.timestamp.iter().copied().max()?;
        Some((lo, hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn randomness_reads_the_last_56_bits() {
        assert_eq!(randomness(b""), 0);
        assert_eq!(randomness(b"ff"), 255);
        assert_eq!(randomness(b"0123456789abcdef0123456789abcdef"), 0x23456789abcdef);
    }

    #[test]
    fn kept_elements_follow_their_rows() {
        let (flags, ends) = kept_elements(&[2, 2, 5], &[false, true, true]);
        assert_eq!(flags, vec![false, false, true, true, true]);
        assert_eq!(ends, vec![0, 3]);
    }

    #[test]
    fn tally_counts_in_first_seen_order() {
        let (out, group) = tally(["b", "a", "b"].into_iter());
        assert_eq!(out, vec![("b", 2), ("a", 1)]);
        assert_eq!(group, vec![0, 1, 0]);
    }
}
