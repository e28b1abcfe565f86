//! Wall-clock time, and the one rule for expiration.
//!
//! Expiration is judged on the central store's clock: a value stops existing once the
//! central clock reaches its `expiration` (its second, exactly). The central voters are
//! assumed to keep their clocks in step (NTP, skew well under a second); tiers need not.
//! A tier learns how the central clock stands against its own from central answers that
//! carry it (`learn_central_clock`): each gives an upper bound of the offset, measured from
//! the moment the request was sent, and the tightest recent bound is kept. A tier judges
//! expiration on `central_now_ms`, its clock plus that bound, so whether its own clock is
//! behind or ahead, it hides a value no later than the central clock says it is gone.
//!
//! Only a leader's proposal time ever reaches replicated state.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// A test hook: runs this process on a clock off by this many milliseconds.
pub const SKEW_VAR: &str = "KV_CLOCK_SKEW_MS";

/// Offset samples kept; the tightest of them is used.
const SAMPLES: usize = 32;

fn skew_ms() -> i64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    *SKEW.get_or_init(|| std::env::var(SKEW_VAR).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

/// Milliseconds since the Unix epoch, on this process's clock.
pub fn now_ms() -> u64 {
    let real = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    u64::try_from(real.saturating_add(skew_ms())).unwrap_or(0)
}

/// Whole seconds since the Unix epoch, on this process's clock.
pub fn now_secs() -> i64 {
    (now_ms() / 1000) as i64
}

/// Recent upper bounds of (central clock - this clock), in milliseconds.
static OFFSETS: Mutex<VecDeque<i64>> = Mutex::new(VecDeque::new());
/// The tightest of them, read on every expiration check without the lock.
static OFFSET: AtomicI64 = AtomicI64::new(0);

/// Records what a central answer said of the central clock: `central_ms` was read there
/// after this process sent the request at `sent_ms` (its own clock).
pub fn learn_central_clock(sent_ms: u64, central_ms: u64) {
    if central_ms == 0 {
        return;
    }
    let bound = central_ms as i64 - sent_ms as i64;
    let mut offsets = OFFSETS.lock().unwrap_or_else(PoisonError::into_inner);
    if offsets.len() == SAMPLES {
        offsets.pop_front();
    }
    offsets.push_back(bound);
    OFFSET.store(offsets.iter().copied().min().unwrap_or(0), Ordering::Release);
}

/// This process's best upper bound of the central clock, in milliseconds since the epoch.
pub fn central_now_ms() -> u64 {
    u64::try_from((now_ms() as i64).saturating_add(OFFSET.load(Ordering::Acquire))).unwrap_or(0)
}

/// `central_now_ms` in whole seconds: what expiration is judged on.
pub fn central_now_secs() -> i64 {
    (central_now_ms() / 1000) as i64
}

/// Whether an entry with this expiration is gone at `now_secs` (expiration wins at its second).
pub fn is_expired(expiration: Option<i64>, now_secs: i64) -> bool {
    matches!(expiration, Some(e) if e <= now_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_central_clock_is_bounded_from_above_by_the_tightest_sample() {
        let before = central_now_ms();
        let local = now_ms();
        // Central said 30 s later than our send time, then (a faster answer) 29.9 s.
        learn_central_clock(local, local + 30_000);
        learn_central_clock(local, local + 29_900);
        let estimate = central_now_ms();
        assert!(estimate >= now_ms() + 29_800 && estimate <= now_ms() + 29_950, "{estimate} vs {before}");
        assert!(is_expired(Some((estimate / 1000) as i64), central_now_secs()));
    }
}
