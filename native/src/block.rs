//! The columnar buffers of one batch of spans or of log records.
//!
//! One row per span or log record (a block holds one signal: `Block::signal`; the other signal's
//! row buffers stay empty). Values shared by many rows are stored once: resources and scopes in tables
//! of their own (a row holds their index), attribute keys and values in per-batch dictionaries,
//! each distinct (key, value) pair once; an attribute map is a run of pair indexes. Events and
//! links are arrays per row, stored flat with cumulative offsets (as ClickHouse's Native format
//! wants them). Every buffer only grows while a batch is decoded, so a message that fails half-way
//! is taken back by truncating to a `Mark`.

use hashbrown::HashTable;
use std::hash::BuildHasher;

/// Strings one after the other, with their end offsets.
#[derive(Default)]
pub struct StrCol {
    pub data: Vec<u8>,
    pub ends: Vec<usize>,
}

impl StrCol {
    #[inline]
    pub fn push(&mut self, s: &[u8]) {
        self.data.extend_from_slice(s);
        self.ends.push(self.data.len());
    }

    /// Push the lowercase hex of `raw`.
    #[inline]
    pub fn push_hex(&mut self, raw: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.data.reserve(raw.len() * 2);
        for &b in raw {
            self.data.push(HEX[(b >> 4) as usize]);
            self.data.push(HEX[(b & 15) as usize]);
        }
        self.ends.push(self.data.len());
    }

    #[inline]
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn truncate(&mut self, n: usize) {
        self.ends.truncate(n);
        self.data.truncate(self.ends.last().copied().unwrap_or(0));
    }
}

type Hasher = hashbrown::DefaultHashBuilder;

/// The hash of a (key number, value hash) pair: a multiply-rotate mix, so a pair is hashed
/// without hashing its value's bytes again (the value's hash is stored with it).
#[inline]
fn pair_hash(key: u32, value_hash: u64) -> u64 {
    (value_hash.rotate_left(26) ^ (key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0x517C_C1B7_2722_0A95)
}

/// Distinct strings, each stored once, numbered in the order first seen. Each string's hash is
/// kept beside it: growing the table, finding a pair and forgetting strings never hash a string
/// twice.
#[derive(Default)]
pub struct Interner {
    strings: StrCol,
    hashes: Vec<u64>,
    table: HashTable<u32>,
    hasher: Hasher,
}

impl Interner {
    #[inline]
    pub fn hash(&self, s: &[u8]) -> u64 {
        self.hasher.hash_one(s)
    }

    #[inline]
    pub fn intern(&mut self, s: &[u8]) -> u32 {
        let hash = self.hash(s);
        self.intern_hashed(s, hash)
    }

    /// `intern` of a string whose `hash` is known.
    #[inline]
    pub fn intern_hashed(&mut self, s: &[u8], hash: u64) -> u32 {
        let (strings, hashes) = (&self.strings, &self.hashes);
        if let Some(&id) = self.table.find(hash, |&id| hashes[id as usize] == hash && strings.get(id as usize) == s) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s);
        self.hashes.push(hash);
        let hashes = &self.hashes;
        self.table.insert_unique(hash, id, |&id| hashes[id as usize]);
        id
    }

    pub fn find(&self, s: &[u8]) -> Option<u32> {
        let hash = self.hash(s);
        self.table.find(hash, |&id| self.hashes[id as usize] == hash && self.strings.get(id as usize) == s).copied()
    }

    #[inline]
    pub fn get(&self, id: u32) -> &[u8] {
        self.strings.get(id as usize)
    }

    /// The stored hash of string `id`.
    #[inline]
    pub fn hash_of(&self, id: u32) -> u64 {
        self.hashes[id as usize]
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Forget the strings numbered `n` and after.
    pub fn truncate(&mut self, n: usize) {
        for id in n..self.strings.len() {
            if let Ok(entry) = self.table.find_entry(self.hashes[id], |&found| found as usize == id) {
                entry.remove();
            }
        }
        self.strings.truncate(n);
        self.hashes.truncate(n);
    }
}

/// Distinct (key, value) pairs of interned strings, hashed by the key's number and the value's
/// hash: an attribute seen before is found with one hash of its value, which interns the value
/// too when the pair is new.
#[derive(Default)]
pub struct Pairs {
    pub pairs: Vec<(u32, u32)>,
    hashes: Vec<u64>,
    table: HashTable<u32>,
}

impl Pairs {
    /// The pair of key `key` and value `value`, interning the value if the pair is new.
    #[inline]
    pub fn intern(&mut self, key: u32, value: &[u8], values: &mut Interner) -> u32 {
        let value_hash = values.hash(value);
        let hash = pair_hash(key, value_hash);
        let (pairs, hashes) = (&self.pairs, &self.hashes);
        if let Some(&id) = self.table.find(hash, |&id| {
            let (k, v) = pairs[id as usize];
            hashes[id as usize] == hash && k == key && values.get(v) == value
        }) {
            return id;
        }
        let v = values.intern_hashed(value, value_hash);
        self.insert(hash, (key, v))
    }

    /// The pair of two interned ids.
    pub fn intern_ids(&mut self, key: u32, value: u32, values: &Interner) -> u32 {
        let hash = pair_hash(key, values.hash_of(value));
        let pairs = &self.pairs;
        if let Some(&id) = self.table.find(hash, |&id| pairs[id as usize] == (key, value)) {
            return id;
        }
        self.insert(hash, (key, value))
    }

    fn insert(&mut self, hash: u64, pair: (u32, u32)) -> u32 {
        let id = self.pairs.len() as u32;
        self.pairs.push(pair);
        self.hashes.push(hash);
        let hashes = &self.hashes;
        self.table.insert_unique(hash, id, |&id| hashes[id as usize]);
        id
    }

    pub fn find(&self, key: u32, value: u32, values: &Interner) -> Option<u32> {
        let hash = pair_hash(key, values.hash_of(value));
        self.table.find(hash, |&id| self.pairs[id as usize] == (key, value)).copied()
    }

    /// Forget the pairs numbered `n` and after.
    pub fn truncate(&mut self, n: usize) {
        for id in n..self.pairs.len() {
            if let Ok(entry) = self.table.find_entry(self.hashes[id], |&found| found as usize == id) {
                entry.remove();
            }
        }
        self.pairs.truncate(n);
        self.hashes.truncate(n);
    }

    /// An empty dictionary with room for `n` pairs.
    pub fn with_capacity(n: usize) -> Self {
        Pairs { pairs: Vec::with_capacity(n), hashes: Vec::with_capacity(n), table: HashTable::with_capacity(n) }
    }
}

/// Attribute maps: map `i` is the pairs `pairs[offsets[i]..offsets[i + 1]]`.
pub struct Maps {
    pub offsets: Vec<usize>,
    pub pairs: Vec<u32>,
}

impl Default for Maps {
    fn default() -> Self {
        Maps { offsets: vec![0], pairs: Vec::new() }
    }
}

impl Maps {
    #[inline]
    pub fn get(&self, map: u32) -> &[u32] {
        let m = map as usize;
        &self.pairs[self.offsets[m]..self.offsets[m + 1]]
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn truncate(&mut self, n: usize) {
        self.offsets.truncate(n + 1);
        self.pairs.truncate(self.offsets[n]);
    }
}

/// Per resource (one ResourceSpans).
#[derive(Default)]
pub struct Resources {
    pub service: StrCol,
    pub schema_url: StrCol,
    pub dropped: Vec<u32>,
    pub attrs: Vec<u32>,
}

/// Per scope (one ScopeSpans).
#[derive(Default)]
pub struct Scopes {
    pub name: StrCol,
    pub version: StrCol,
    pub schema_url: StrCol,
    pub dropped: Vec<u32>,
    pub attrs: Vec<u32>,
}

#[derive(Default)]
pub struct Events {
    pub time: Vec<i64>,
    pub name: StrCol,
    pub attrs: Vec<u32>,
    pub dropped: Vec<u32>,
}

#[derive(Default)]
pub struct Links {
    pub trace_id: StrCol,
    pub span_id: StrCol,
    pub trace_state: StrCol,
    pub attrs: Vec<u32>,
    pub flags: Vec<u32>,
    pub dropped: Vec<u32>,
}

/// What a block's rows are: the table they go to.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum Signal {
    #[default]
    Traces,
    Logs,
}

impl Signal {
    pub fn table(self) -> &'static str {
        match self {
            Signal::Traces => "otel_traces",
            Signal::Logs => "otel_logs",
        }
    }

    /// The word the Python decoder's refusals use.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }
}

/// One batch: the rows and everything they point to.
#[derive(Default)]
pub struct Block {
    pub signal: Signal,
    pub keys: Interner,
    pub values: Interner,
    pub pairs: Pairs,
    pub maps: Maps,
    pub resources: Resources,
    pub scopes: Scopes,
    pub events: Events,
    pub links: Links,

    // one value per row
    pub origin: Vec<u32>,
    pub resource: Vec<u32>,
    pub scope: Vec<u32>,
    pub timestamp: Vec<i64>,
    pub trace_id: StrCol,
    pub span_id: StrCol,
    pub parent_span_id: StrCol,
    pub trace_state: StrCol,
    pub name: StrCol,
    pub kind: Vec<u8>,
    pub attrs: Vec<u32>,
    pub duration: Vec<u64>,
    pub status_code: Vec<u8>,
    pub status_message: StrCol,
    /// Cumulative: the events of row `i` are `events_end[i - 1]..events_end[i]`.
    pub events_end: Vec<u64>,
    pub links_end: Vec<u64>,
    pub flags: Vec<u32>,
    pub dropped_attrs: Vec<u32>,
    pub dropped_events: Vec<u32>,
    pub dropped_links: Vec<u32>,

    // log records only (with timestamp, trace_id, span_id, attrs, flags, dropped_attrs)
    pub trace_flags: Vec<u8>,
    pub severity_text: StrCol,
    pub severity_number: Vec<u8>,
    pub body: StrCol,
    pub event_name: StrCol,
    pub observed: Vec<i64>,

    // set by the stages after decoding (streams/stages/native_traces.py)
    /// SampleWeight per row, once head sampling ran.
    pub sample_weight: Option<Vec<f64>>,
    /// ServiceTeam, ServiceTier, ServiceOwner per resource, once the catalog ran.
    pub catalog: Option<[StrCol; 3]>,
}

/// The lengths of every buffer at one moment.
pub struct Mark {
    keys: usize,
    values: usize,
    pairs: usize,
    maps: usize,
    resources: usize,
    scopes: usize,
    events: usize,
    links: usize,
    rows: usize,
}

impl Block {
    pub fn new(signal: Signal) -> Self {
        Block { signal, ..Block::default() }
    }

    pub fn rows(&self) -> usize {
        self.timestamp.len()
    }

    pub fn mark(&self) -> Mark {
        Mark {
            keys: self.keys.len(),
            values: self.values.len(),
            pairs: self.pairs.pairs.len(),
            maps: self.maps.len(),
            resources: self.resources.dropped.len(),
            scopes: self.scopes.dropped.len(),
            events: self.events.time.len(),
            links: self.links.flags.len(),
            rows: self.rows(),
        }
    }

    /// Take back everything added since `mark`.
    pub fn truncate(&mut self, mark: &Mark) {
        self.pairs.truncate(mark.pairs);
        self.keys.truncate(mark.keys);
        self.values.truncate(mark.values);
        self.maps.truncate(mark.maps);
        let r = &mut self.resources;
        r.service.truncate(mark.resources);
        r.schema_url.truncate(mark.resources);
        r.dropped.truncate(mark.resources);
        r.attrs.truncate(mark.resources);
        let s = &mut self.scopes;
        s.name.truncate(mark.scopes);
        s.version.truncate(mark.scopes);
        s.schema_url.truncate(mark.scopes);
        s.dropped.truncate(mark.scopes);
        s.attrs.truncate(mark.scopes);
        let e = &mut self.events;
        e.time.truncate(mark.events);
        e.name.truncate(mark.events);
        e.attrs.truncate(mark.events);
        e.dropped.truncate(mark.events);
        let l = &mut self.links;
        l.trace_id.truncate(mark.links);
        l.span_id.truncate(mark.links);
        l.trace_state.truncate(mark.links);
        l.attrs.truncate(mark.links);
        l.flags.truncate(mark.links);
        l.dropped.truncate(mark.links);
        let n = mark.rows;
        self.origin.truncate(n);
        self.resource.truncate(n);
        self.scope.truncate(n);
        self.timestamp.truncate(n);
        self.trace_id.truncate(n);
        self.span_id.truncate(n);
        self.parent_span_id.truncate(n);
        self.trace_state.truncate(n);
        self.name.truncate(n);
        self.kind.truncate(n);
        self.attrs.truncate(n);
        self.duration.truncate(n);
        self.status_code.truncate(n);
        self.status_message.truncate(n);
        self.events_end.truncate(n);
        self.links_end.truncate(n);
        self.flags.truncate(n);
        self.dropped_attrs.truncate(n);
        self.dropped_events.truncate(n);
        self.dropped_links.truncate(n);
        self.trace_flags.truncate(n);
        self.severity_text.truncate(n);
        self.severity_number.truncate(n);
        self.body.truncate(n);
        self.event_name.truncate(n);
        self.observed.truncate(n);
    }

    /// The (key, value) pair `id` as strings.
    pub fn pair(&self, id: u32) -> (&[u8], &[u8]) {
        let (k, v) = self.pairs.pairs[id as usize];
        (self.keys.get(k), self.values.get(v))
    }

    /// Apply a decision per pair (`Some(value)`: the new value, `None`: the pair dropped) to every
    /// map; pairs without a decision stay. The pair dictionary is rebuilt from the maps, so it
    /// lists exactly the pairs some map holds afterwards. Returns how many distinct pairs were
    /// changed or dropped.
    pub fn remap(&mut self, decisions: &[(u32, Option<Vec<u8>>)]) -> usize {
        const KEEP: u32 = u32::MAX;
        const DROP: u32 = u32::MAX - 1;
        let mut new_value = vec![KEEP; self.pairs.pairs.len()];
        let mut changed = 0;
        for (pair, decision) in decisions {
            let target = match decision {
                Some(value) => self.values.intern(value),
                None => DROP,
            };
            let slot = &mut new_value[*pair as usize];
            if *slot == KEEP && target != self.pairs.pairs[*pair as usize].1 {
                changed += 1;
            }
            *slot = target;
        }
        let mut rebuilt = Pairs::with_capacity(self.pairs.pairs.len());
        let mut translated = vec![KEEP; self.pairs.pairs.len()];
        let mut offsets = Vec::with_capacity(self.maps.offsets.len());
        let mut pairs = Vec::with_capacity(self.maps.pairs.len());
        offsets.push(0);
        for m in 0..self.maps.len() {
            for &p in self.maps.get(m as u32) {
                let (key, value) = self.pairs.pairs[p as usize];
                let target = new_value[p as usize];
                if target == DROP {
                    continue;
                }
                if translated[p as usize] == KEEP {
                    let value = if target == KEEP { value } else { target };
                    translated[p as usize] = rebuilt.intern_ids(key, value, &self.values);
                }
                pairs.push(translated[p as usize]);
            }
            offsets.push(pairs.len());
        }
        self.pairs = rebuilt;
        self.maps = Maps { offsets, pairs };
        changed
    }
}
