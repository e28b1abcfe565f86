//! The YCSB core workloads, as `kv-bench` runs them against the KV API: which operation
//! comes next, which key it touches and how large a value it writes.
//!
//! The mixes and distributions follow YCSB's core workloads (Cooper et al., SoCC 2010) so
//! numbers can be set beside other systems' published runs. Two things are KV's own: a
//! "scan" is a `List` of a key's prefix (KV has no range scan; keys are numbered so that a
//! prefix holds up to 100 neighbours), and the store allows one write per key per second
//! unless the cluster's `key_write_interval_ms` is lowered, so writes to hot keys of a
//! zipfian run are answered 429 and counted as such.

use clap::ValueEnum;
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest value KV stores (SPEC 2).
pub const MAX_VALUE_BYTES: u64 = 25 * 1024 * 1024;

/// One of YCSB's core workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Update heavy: 50% reads, 50% updates.
    A,
    /// Read mostly: 95% reads, 5% updates.
    B,
    /// Read only.
    C,
    /// Read latest: 95% reads of recently inserted keys, 5% inserts.
    D,
    /// Short ranges: 95% lists of up to 100 keys, 5% inserts.
    E,
    /// Read-modify-write: 50% reads, 50% read-then-update of one key.
    F,
}

/// What one operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Read,
    Update,
    Insert,
    Scan,
    ReadModifyWrite,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "update",
            Op::Insert => "insert",
            Op::Scan => "scan",
            Op::ReadModifyWrite => "read_modify_write",
        }
    }
}

impl Workload {
    /// The operations and their shares (summing to 100).
    pub fn mix(self) -> &'static [(Op, u32)] {
        match self {
            Workload::A => &[(Op::Read, 50), (Op::Update, 50)],
            Workload::B => &[(Op::Read, 95), (Op::Update, 5)],
            Workload::C => &[(Op::Read, 100)],
            Workload::D => &[(Op::Read, 95), (Op::Insert, 5)],
            Workload::E => &[(Op::Scan, 95), (Op::Insert, 5)],
            Workload::F => &[(Op::Read, 50), (Op::ReadModifyWrite, 50)],
        }
    }

    /// YCSB's request distribution for this workload when none is asked for.
    pub fn default_popularity(self) -> Popularity {
        match self {
            Workload::D => Popularity::Latest,
            _ => Popularity::Zipfian,
        }
    }

    /// Draws the next operation.
    pub fn next_op(self, rng: &mut impl Rng) -> Op {
        let mut roll = rng.gen_range(0..100);
        for &(op, share) in self.mix() {
            if roll < share {
                return op;
            }
            roll -= share;
        }
        Op::Read
    }
}

/// How popular each key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Popularity {
    /// Every key equally likely.
    Uniform,
    /// A few keys get most operations (the hot ones scattered over the key space).
    Zipfian,
    /// The most recently inserted keys are the most popular (zipfian over recency).
    Latest,
}

/// The key space: keys `0..count` exist (loaded or inserted and acknowledged); inserts
/// claim the next numbers.
pub struct Keys {
    prefix: String,
    /// Keys known to exist.
    count: AtomicU64,
    /// The next number an insert claims.
    next: AtomicU64,
    popularity: Popularity,
    zipf: Option<Zipf<f64>>,
    theta: f64,
}

impl Keys {
    /// `loaded` keys exist; `theta` is the zipfian constant (YCSB's default 0.99).
    pub fn new(prefix: &str, loaded: u64, popularity: Popularity, theta: f64) -> anyhow::Result<Keys> {
        anyhow::ensure!(loaded > 0, "the key space needs at least one key");
        anyhow::ensure!(theta > 0.0 && theta.is_finite(), "theta must be a positive number");
        let zipf = match popularity {
            Popularity::Uniform => None,
            _ => Some(Zipf::new(loaded, theta).map_err(|e| anyhow::anyhow!("zipfian over {loaded} keys: {e}"))?),
        };
        Ok(Keys {
            prefix: prefix.to_owned(),
            count: AtomicU64::new(loaded),
            next: AtomicU64::new(loaded),
            popularity,
            zipf,
            theta,
        })
    }

    /// The name of key number `n`: fixed width, so the keys sharing all but their last two
    /// digits are 100 neighbours a `List` of that prefix returns.
    pub fn name(&self, n: u64) -> String {
        format!("{}{n:012}", self.prefix)
    }

    /// The prefix a scan starting near key `n` lists.
    pub fn scan_prefix(&self, n: u64) -> String {
        let name = self.name(n);
        name[..name.len() - 2].to_owned()
    }

    /// Keys that exist now.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Draws an existing key's number.
    pub fn choose(&self, rng: &mut impl Rng) -> u64 {
        let count = self.count();
        match (self.popularity, &self.zipf) {
            (Popularity::Uniform, _) | (_, None) => rng.gen_range(0..count),
            (Popularity::Zipfian, Some(z)) => {
                // Rank 1 is the hottest; spreading the ranks over the key space keeps hot
                // keys from being neighbours, and a permutation keeps every key reachable.
                let rank = (z.sample(rng) as u64 - 1).min(count - 1);
                spread(rank, count)
            }
            (Popularity::Latest, Some(z)) => {
                // Ranks over the loaded count, counted back from the newest key.
                let back = z.sample(rng) as u64 - 1;
                count - 1 - back.min(count - 1)
            }
        }
    }

    /// Claims the next key number for an insert.
    pub fn claim(&self) -> u64 {
        self.next.fetch_add(1, Ordering::AcqRel)
    }

    /// Records that key `n` now exists (its insert was acknowledged). Inserts finish out of
    /// order; the readable range grows to `n + 1` at least, which may briefly include a
    /// claimed key whose insert is still in flight (read as absent, counted as such).
    pub fn inserted(&self, n: u64) {
        self.count.fetch_max(n + 1, Ordering::AcqRel);
    }

    pub fn theta(&self) -> f64 {
        self.theta
    }
}

/// Rank `rank` of `0..count` moved to its place in a fixed permutation of `0..count`:
/// multiplying by a number prime to `count` is a bijection modulo `count`.
fn spread(rank: u64, count: u64) -> u64 {
    let mut factor: u64 = 0x9e37_79b9_7f4a_7c15;
    while gcd(factor, count) != 1 {
        factor += 2;
    }
    ((u128::from(rank) * u128::from(factor)) % u128::from(count)) as u64
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// How large written values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueSize {
    Fixed(u64),
    /// Uniform between the bounds, inclusive.
    Uniform(u64, u64),
}

impl std::str::FromStr for ValueSize {
    type Err = String;

    /// `1024`, `1KiB`, `4MiB` or a range `100..64KiB`.
    fn from_str(s: &str) -> Result<ValueSize, String> {
        let size = match s.split_once("..") {
            None => ValueSize::Fixed(bytes(s)?),
            Some((lo, hi)) => {
                let (lo, hi) = (bytes(lo)?, bytes(hi)?);
                if lo > hi {
                    return Err(format!("{s:?}: the range is empty"));
                }
                ValueSize::Uniform(lo, hi)
            }
        };
        if size.max() > MAX_VALUE_BYTES {
            return Err(format!("{s:?}: values are at most 25 MiB ({MAX_VALUE_BYTES} bytes)"));
        }
        Ok(size)
    }
}

impl std::fmt::Display for ValueSize {
    /// In bytes, as it parses back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueSize::Fixed(n) => write!(f, "{n}"),
            ValueSize::Uniform(lo, hi) => write!(f, "{lo}..{hi}"),
        }
    }
}

impl ValueSize {
    pub fn max(self) -> u64 {
        match self {
            ValueSize::Fixed(n) | ValueSize::Uniform(_, n) => n,
        }
    }

    pub fn draw(self, rng: &mut impl Rng) -> usize {
        let n = match self {
            ValueSize::Fixed(n) => n,
            ValueSize::Uniform(lo, hi) => rng.gen_range(lo..=hi),
        };
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

/// `123`, `4KiB`, `2MiB` (also `KB`/`MB` as the binary units, as KV's docs write them).
fn bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{s:?} is not a size (e.g. 1024, 4KiB, 1MiB)"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, KiB, MiB)")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mixes_add_up_and_draw_in_proportion() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for w in Workload::value_variants() {
            assert_eq!(w.mix().iter().map(|(_, s)| s).sum::<u32>(), 100, "{w:?}");
        }
        let updates = (0..10_000).filter(|_| Workload::B.next_op(&mut rng) == Op::Update).count();
        assert!((350..650).contains(&updates), "about 5% updates in B, got {updates}");
    }

    #[test]
    fn zipfian_keys_are_skewed_and_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let keys = Keys::new("k", 1000, Popularity::Zipfian, 0.99).unwrap();
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[keys.choose(&mut rng) as usize] += 1;
        }
        // Every key is reachable.
        assert!(counts.iter().all(|&c| c > 0), "{:?}", counts.iter().filter(|&&c| c == 0).count());
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // The hottest 10% of keys take well over half of the operations.
        let top: u32 = counts[..100].iter().sum();
        assert!(top > 60_000, "top 10% took {top}");
    }

    #[test]
    fn latest_prefers_the_newest_keys() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let keys = Keys::new("k", 1000, Popularity::Latest, 0.99).unwrap();
        let n = keys.claim();
        keys.inserted(n);
        let newest = (0..10_000).filter(|_| keys.choose(&mut rng) == 1000).count();
        assert!(newest > 1000, "the newest key is the most read: {newest}");
        assert!((0..10_000).all(|_| keys.choose(&mut rng) <= 1000));
    }

    #[test]
    fn sizes_parse_with_units_and_ranges_and_respect_the_limit() {
        assert_eq!("1024".parse(), Ok(ValueSize::Fixed(1024)));
        assert_eq!("4KiB".parse(), Ok(ValueSize::Fixed(4096)));
        assert_eq!("100..1MiB".parse(), Ok(ValueSize::Uniform(100, 1 << 20)));
        assert_eq!("25MiB".parse(), Ok(ValueSize::Fixed(MAX_VALUE_BYTES)));
        assert_eq!("100..1MiB".parse::<ValueSize>().unwrap().to_string(), "100..1048576");
        for bad in ["26MiB", "x", "10..5", "1GiB", ""] {
            assert!(bad.parse::<ValueSize>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scans_list_a_hundred_neighbours() {
        let keys = Keys::new("user", 10, Popularity::Uniform, 0.99).unwrap();
        assert_eq!(keys.name(1234), "user000000001234");
        assert_eq!(keys.scan_prefix(1234), "user0000000012");
    }
}
