//! What one tracked key costs in heap memory, measured with a counting allocator, against
//! what the tracker's weigher charges for it (`tracking_bytes` bounds the tracker's memory
//! only if the weigher is right). Its own test binary, so only this test is counted.

use kv_common::alloc::Counting;
use regional_tier::tracking::{Tracker, HOLDER_OVERHEAD, TRACKED_KEY_OVERHEAD};
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes per key beyond its names, and what the weigher charged, for keys tracked for
/// each of `edges` in turn (an edge named twice tracks the key again, as a refresh does).
fn per_key(edges: &[&str]) -> (f64, f64) {
    const KEYS: usize = 50_000;
    let ns = "0123456789abcdef0123456789abcdef".to_string();
    let name = |i: usize| format!("key-{i:08}");
    let names = ns.len() + name(0).len();
    let mut holders = edges.to_vec();
    holders.dedup();
    let charged =
        (names + TRACKED_KEY_OVERHEAD + holders.iter().map(|e| e.len() + HOLDER_OVERHEAD).sum::<usize>()) * KEYS;
    // Room for every key, and half full or more, as a tracker in use is.
    let tracker = Tracker::new((charged * 3 / 2) as u64, Duration::from_secs(3600));
    let before = Counting::live();
    for i in 0..KEYS {
        for edge in edges {
            tracker.track((ns.clone(), name(i)), edge, Duration::from_secs(600));
        }
    }
    assert_eq!(tracker.tracked_keys(), KEYS as u64);
    let used = Counting::live() - before;
    ((used - names * KEYS) as f64 / KEYS as f64, (charged - names * KEYS) as f64 / KEYS as f64)
}

#[test]
fn the_weigher_charges_what_a_tracked_key_really_costs() {
    // Tracked once; tracked again by the same edge (moka's first update of an entry costs
    // about 160 bytes more for good); held by two edges.
    for edges in [&["us-east-1"][..], &["us-east-1", "us-east-1"][..], &["us-east-1", "us-east-2"][..]] {
        let (real, charged) = per_key(edges);
        println!("tracked for {edges:?}: {real:.0} bytes per key beyond its names, {charged:.0} charged");
        assert!(
            (0.8..=1.25).contains(&(charged / real)),
            "tracked for {edges:?}: the weigher charges {charged:.0} bytes per key beyond its names; the heap holds {real:.0}"
        );
    }
}
