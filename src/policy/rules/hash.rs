//! Names as keyed hashes: every name table and the union index store a name as the 64-bit
//! hash of its normalised text under one random key of the process.

use std::hash::BuildHasher;
use std::sync::LazyLock;

/// The key every name table of this process hashes with: tables are shared between policy
/// generations and the union index routes by the same hash, so there is exactly one.
static NAME_KEY: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

#[inline]
pub(super) fn name_hash(name: &str) -> u64 {
    NAME_KEY.hash_one(name.as_bytes())
}

/// The bucket of `hash` among `buckets`: its high bits, so buckets are in key order.
#[inline]
pub(super) fn bucket_of(hash: u64, buckets: usize) -> usize {
    ((u128::from(hash) * buckets as u128) >> 64) as usize
}

/// Names per bucket, on average, in name tables and in the union index.
pub(super) const NAMES_PER_BUCKET: usize = 4;
