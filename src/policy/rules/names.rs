//! One list's names: a bucketed, sorted table of keyed hashes with 4 bytes of packed
//! metadata (line and flags) each, and the suffixes of a query that probe it.

use super::hash::{NAMES_PER_BUCKET, bucket_of, name_hash};

// A listed name's metadata is 4 bytes: its line in the low 29 bits, three flags above.

/// The 1-based line; longer lists report this line for every later rule.
pub(super) const LINE_MASK: u32 = (1 << 29) - 1;
pub(super) const F_SUBDOMAINS: u32 = 1 << 29;
pub(super) const F_EXACT: u32 = 1 << 30;
pub(super) const F_IMPORTANT: u32 = 1 << 31;
pub(super) const FLAGS: u32 = F_SUBDOMAINS | F_EXACT | F_IMPORTANT;

pub(super) fn pack(line: u32, flags: u32) -> u32 {
    line.min(LINE_MASK) | flags
}

/// One list's set of names, each covering itself (exact) and/or its subdomains.
///
/// Bucket `b` holds `keys[offsets[b]..offsets[b + 1]]` (and the same range of `metas`);
/// buckets follow key order and each is sorted, so `keys` is sorted as a whole.
#[derive(Default)]
pub(super) struct NameTable {
    offsets: Box<[u32]>,
    pub(super) keys: Box<[u64]>,
    metas: Box<[u32]>,
    /// Some name is a single label (a whole top-level domain).
    pub(super) has_single_label: bool,
}

impl NameTable {
    /// The metadata of the name hashed to `hash`.
    #[inline]
    pub(super) fn get(&self, hash: u64) -> Option<u32> {
        let buckets = self.offsets.len().checked_sub(1).filter(|&b| b > 0)?;
        let b = bucket_of(hash, buckets);
        let (start, end) = (self.offsets[b] as usize, self.offsets[b + 1] as usize);
        let at = self.keys[start..end].iter().position(|&k| k == hash)?;
        Some(self.metas[start + at])
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.offsets.len() * 4 + self.keys.len() * 8 + self.metas.len() * 4
    }
}

/// Names collected while a list is parsed, compiled by [`NameTableBuilder::finish`].
#[derive(Default)]
pub(super) struct NameTableBuilder {
    keys: Vec<u64>,
    metas: Vec<u32>,
    has_single_label: bool,
}

impl NameTableBuilder {
    pub(super) fn reserve(&mut self, names: usize) {
        self.keys.reserve(names);
        self.metas.reserve(names);
    }

    pub(super) fn insert(&mut self, name: &str, meta: u32) {
        self.has_single_label |= !name.contains('.');
        self.keys.push(name_hash(name));
        self.metas.push(meta);
    }

    /// Sorts the names into buckets (a counting sort: linear, stable), merges duplicates
    /// (the first line is kept, flags are widened) and drops the collected arrays.
    pub(super) fn finish(self) -> NameTable {
        let NameTableBuilder {
            keys: input_keys,
            metas: input_metas,
            has_single_label,
        } = self;
        let n = input_keys.len();
        if n == 0 {
            return NameTable::default();
        }
        let buckets = n.div_ceil(NAMES_PER_BUCKET);
        let mut offsets = vec![0u32; buckets + 1];
        for &k in &input_keys {
            offsets[bucket_of(k, buckets) + 1] += 1;
        }
        for b in 0..buckets {
            offsets[b + 1] += offsets[b];
        }
        let mut next = offsets[..buckets].to_vec();
        let mut keys = vec![0u64; n];
        let mut metas = vec![0u32; n];
        for (&k, &m) in input_keys.iter().zip(&input_metas) {
            let slot = &mut next[bucket_of(k, buckets)];
            keys[*slot as usize] = k;
            metas[*slot as usize] = m;
            *slot += 1;
        }
        drop((next, input_keys, input_metas));
        // Sort each bucket (insertion sort: a handful of names, stable) and merge duplicates,
        // compacting in place. `offsets[b + 1]` is read before it is rewritten.
        let mut write = 0usize;
        let mut start = 0usize;
        for b in 0..buckets {
            let end = offsets[b + 1] as usize;
            for i in start + 1..end {
                let (k, m) = (keys[i], metas[i]);
                let mut j = i;
                while j > start && keys[j - 1] > k {
                    keys[j] = keys[j - 1];
                    metas[j] = metas[j - 1];
                    j -= 1;
                }
                keys[j] = k;
                metas[j] = m;
            }
            let first = write;
            offsets[b] = first as u32;
            for i in start..end {
                if write > first && keys[write - 1] == keys[i] {
                    metas[write - 1] |= metas[i] & FLAGS;
                } else {
                    keys[write] = keys[i];
                    metas[write] = metas[i];
                    write += 1;
                }
            }
            start = end;
        }
        offsets[buckets] = write as u32;
        keys.truncate(write);
        metas.truncate(write);
        NameTable {
            offsets: offsets.into_boxed_slice(),
            keys: keys.into_boxed_slice(),
            metas: metas.into_boxed_slice(),
            has_single_label,
        }
    }
}

/// Start offsets of every suffix of `full`, longest first (a name has at most 127 labels),
/// and how many there are.
#[inline]
fn suffix_starts(full: &str) -> ([u8; 128], usize) {
    let mut starts = [0u8; 128];
    let mut count = 1;
    for (i, b) in full.bytes().enumerate() {
        if b == b'.' {
            starts[count] = (i + 1) as u8;
            count += 1;
        }
    }
    (starts, count)
}

/// The suffixes of `full` that a listed name could be, probed from the shortest up: where
/// each starts, its hash, and the rule flags that cover `full` from there (an exact rule
/// only at `full` itself). The top-level label alone only when `single_label` (some rule
/// names a whole TLD).
#[inline]
pub(super) fn parents(full: &str, single_label: bool) -> impl Iterator<Item = (u8, u64, u32)> + '_ {
    let (starts, count) = suffix_starts(full);
    let shortest = if single_label || count == 1 {
        count
    } else {
        count - 1
    };
    (0..shortest).rev().map(move |i| {
        let start = starts[i];
        let covers = if i == 0 {
            F_SUBDOMAINS | F_EXACT
        } else {
            F_SUBDOMAINS
        };
        (start, name_hash(&full[usize::from(start)..]), covers)
    })
}
