//! What one cached entry costs in heap memory beyond its key and value bytes, measured
//! with a counting allocator, against what the cache's weigher charges for it.
//!
//! The byte bound of a tier's cache is only a bound on its memory if the weigher counts
//! the memory an entry really takes: moka's entry, its key's copy, the `Arc<Copy>`, the
//! value's buffer and the allocator's own rounding. This file is its own test binary, so
//! its global allocator counts this test's allocations only.

use bytes::Bytes;
use kv_common::alloc::Counting;
use kv_tier::cache::VersionedCache;
use kv_tier::copy::{Copy, Value, ENTRY_OVERHEAD};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn the_weigher_charges_what_an_entry_really_costs() {
    const ENTRIES: usize = 100_000;
    const VALUE: usize = 100;
    let ns = "0123456789abcdef0123456789abcdef".to_string();
    let life = Duration::from_secs(3600);
    let copy_of = |i: usize| {
        let value = Value { bytes: Bytes::from(vec![b'v'; VALUE]), metadata_json: None, expiration: None };
        Copy::new(Some(value), i as u64 + 1, Instant::now(), life, life, 0)
    };
    // Two thirds full at the end, as a cache in use is: moka sizes its frequency sketch once
    // half full, and evicts nothing while measuring.
    let one = copy_of(0).weight(ns.len() + "key-00000000".len()) as u64;
    let cache = VersionedCache::new(one * ENTRIES as u64 * 3 / 2);
    let before = Counting::live();
    let (mut charged, mut payload) = (0, 0);
    for i in 0..ENTRIES {
        let key = (ns.clone(), format!("key-{i:08}"));
        payload += key.0.len() + key.1.len() + VALUE;
        let copy = copy_of(i);
        charged += copy.weight(key.0.len() + key.1.len()) as usize;
        cache.offer(key, Arc::new(copy));
    }
    assert_eq!(cache.entry_count(), ENTRIES as u64);
    let used = Counting::live() - before;
    let real = (used - payload) as f64 / ENTRIES as f64;
    let counted = (charged - payload) as f64 / ENTRIES as f64;
    println!("per entry beyond key and value: {real:.0} bytes in the heap, {counted:.0} charged");
    assert_eq!(counted, ENTRY_OVERHEAD as f64);
    assert!(
        (0.8..=1.25).contains(&(counted / real)),
        "the weigher charges {counted:.0} bytes per entry beyond its key and value; the heap holds {real:.0}"
    );
}
