//! Wall-clock helpers; only a leader's proposal time ever reaches replicated state.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whole seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    (now_ms() / 1000) as i64
}

/// Whether an entry with this expiration is gone at `now_secs` (expiration wins at its second).
pub fn is_expired(expiration: Option<i64>, now_secs: i64) -> bool {
    matches!(expiration, Some(e) if e <= now_secs)
}
