//! The contract's limits, configurable per deployment so tests can use small ones.

use serde::{Deserialize, Serialize};

/// Every number of SPEC.md section 2. `Default` is Workers KV's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_metadata_bytes: usize,
    /// Both the minimum `expiration_ttl` and how far ahead an absolute `expiration` must be.
    pub min_expiration_ttl_secs: i64,
    pub min_cache_ttl_secs: i64,
    pub default_cache_ttl_secs: i64,
    pub max_cache_ttl_secs: i64,
    pub max_list_limit: u32,
    pub max_bulk_get_keys: usize,
    pub max_bulk_get_bytes: usize,
    pub max_bulk_write_items: usize,
    pub max_bulk_write_bytes: usize,
    /// Minimum time between two writes to one key, enforced by the central leader; 0 turns it off.
    pub key_write_interval_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 512,
            max_value_bytes: 25 * 1024 * 1024,
            max_metadata_bytes: 1024,
            min_expiration_ttl_secs: 60,
            min_cache_ttl_secs: 30,
            default_cache_ttl_secs: 60,
            max_cache_ttl_secs: (1 << 53) - 1,
            max_list_limit: 1000,
            max_bulk_get_keys: 100,
            max_bulk_get_bytes: 25 * 1024 * 1024,
            max_bulk_write_items: 10_000,
            max_bulk_write_bytes: 100_000_000,
            key_write_interval_ms: 1000,
        }
    }
}
