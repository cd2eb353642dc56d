//! The union index over every list's deny names: one probe per suffix of a query tells
//! which lists, if any, may hold it.

use std::sync::Arc;

use super::hash::{NAMES_PER_BUCKET, bucket_of};
use super::list::CompiledList;

/// Lists numbered from this one up share the last bit of an index mask.
pub(super) const SHARED_BIT: usize = 15;

fn list_bit(id: usize) -> u16 {
    1 << id.min(SHARED_BIT)
}

/// For every deny name of every list: a 16-bit fingerprint (the low bits of its hash; the
/// high bits pick the bucket) and which lists hold it, so a miss costs one probe per suffix
/// and a hit probes only the tables of the lists that have the name.
#[derive(Default)]
pub(super) struct ListIndex {
    offsets: Box<[u32]>,
    /// `fingerprint << 16 | lists`: bit `i` for list `i`, bit 15 for any list from 15 up.
    entries: Box<[u32]>,
}

const FINGERPRINT: u32 = 0xffff_0000;

impl ListIndex {
    /// Linear passes over the lists' sorted keys, a chunk of buckets at a time: count the
    /// keys of each bucket, scatter `fingerprint | list bit` into a small scratch (each list's
    /// keys land in bucket order), then append each bucket with equal fingerprints merged (a
    /// name in several lists). Besides the result, only one chunk's scratch is held.
    pub(super) fn build(lists: &[Arc<CompiledList>]) -> ListIndex {
        /// Buckets per chunk: a scratch of about 256 KiB.
        const CHUNK: usize = 16 << 10;
        let mut tables: Vec<(&[u64], u32)> = lists
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.deny.is_empty())
            .map(|(id, l)| (&*l.deny.keys, u32::from(list_bit(id))))
            .collect();
        let total: usize = tables.iter().map(|(keys, _)| keys.len()).sum();
        if total == 0 {
            return ListIndex::default();
        }
        let buckets = total.div_ceil(NAMES_PER_BUCKET);
        let mut offsets: Vec<u32> = Vec::with_capacity(buckets + 1);
        offsets.push(0);
        // Room for every key; only what is written becomes resident, the rest is given back.
        let mut entries: Vec<u32> = Vec::with_capacity(total);
        let mut ends = vec![0u32; CHUNK.min(buckets)];
        let mut scratch: Vec<u32> = Vec::new();
        let mut chunk_keys: Vec<&[u64]> = Vec::with_capacity(tables.len());
        for first_bucket in (0..buckets).step_by(CHUNK) {
            let last_bucket = (first_bucket + CHUNK).min(buckets);
            let ends = &mut ends[..last_bucket - first_bucket];
            ends.fill(0);
            // Each list's keys of this chunk, taken off the front of what is left of it.
            chunk_keys.clear();
            for (keys, _) in &mut tables {
                let n = keys.partition_point(|&k| bucket_of(k, buckets) < last_bucket);
                chunk_keys.push(&keys[..n]);
                *keys = &keys[n..];
            }
            for keys in &chunk_keys {
                for &k in *keys {
                    ends[bucket_of(k, buckets) - first_bucket] += 1;
                }
            }
            // Start of each bucket in the scratch; the scatter leaves each at its end.
            let mut at = 0u32;
            for slot in ends.iter_mut() {
                let count = *slot;
                *slot = at;
                at += count;
            }
            scratch.clear();
            scratch.resize(at as usize, 0);
            for (keys, (_, bit)) in chunk_keys.iter().zip(&tables) {
                for &k in *keys {
                    let slot = &mut ends[bucket_of(k, buckets) - first_bucket];
                    scratch[*slot as usize] = u32::from(k as u16) << 16 | bit;
                    *slot += 1;
                }
            }
            let mut start = 0usize;
            for &end in ends.iter() {
                let first = entries.len();
                for &e in &scratch[start..end as usize] {
                    match entries[first..]
                        .iter()
                        .position(|&seen| seen & FINGERPRINT == e & FINGERPRINT)
                    {
                        Some(at) => entries[first + at] |= e & !FINGERPRINT,
                        None => entries.push(e),
                    }
                }
                offsets.push(entries.len() as u32);
                start = end as usize;
            }
        }
        ListIndex {
            offsets: offsets.into_boxed_slice(),
            entries: entries.into_boxed_slice(),
        }
    }

    /// The lists that may hold the name hashed to `hash` (0: none does).
    #[inline]
    pub(super) fn get(&self, hash: u64) -> u16 {
        let Some(buckets) = self.offsets.len().checked_sub(1).filter(|&b| b > 0) else {
            return 0;
        };
        let b = bucket_of(hash, buckets);
        let (start, end) = (self.offsets[b] as usize, self.offsets[b + 1] as usize);
        let fingerprint = u32::from(hash as u16) << 16;
        self.entries[start..end]
            .iter()
            .find(|&&e| e & FINGERPRINT == fingerprint)
            .map_or(0, |&e| e as u16)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn heap_bytes(&self) -> usize {
        (self.offsets.len() + self.entries.len()) * 4
    }
}

/// Distinct deny names over the lists: every list's names, less those an earlier list also
/// has. The index says which names may be shared; only those are looked up in the earlier
/// lists' tables.
pub(super) fn count_distinct(lists: &[Arc<CompiledList>], index: &ListIndex) -> usize {
    let mut distinct = 0;
    for (j, list) in lists.iter().enumerate() {
        // The index bits of the lists before `j` (the shared bit from list 16 on).
        let earlier_bits = if j > SHARED_BIT {
            u16::MAX
        } else {
            list_bit(j) - 1
        };
        for &key in list.deny.keys.iter() {
            let earlier = index.get(key) & earlier_bits;
            if earlier == 0
                || !(0..j).any(|i| earlier & list_bit(i) != 0 && lists[i].deny.get(key).is_some())
            {
                distinct += 1;
            }
        }
    }
    distinct
}
