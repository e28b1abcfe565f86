//! Linearizability of one key as a register, checked exactly with the versions as witnesses.
//!
//! A general checker (Knossos, Porcupine: the Wing-Gong-Lowe search) looks for an order of
//! the operations that respects real time and the register's rules. Here every committed
//! write carries its commit version, and every linearizable observation (a STRONG read, a
//! failed condition) names the write it saw, so the only order that can explain them is
//! fixed: writes in version order, each observation right after the write it saw. The search
//! collapses to one question: does any operation that ended before another began come after
//! it in that order? If none does, sorting by that order (and by real time among
//! observations of the same write, which real time never orders in a cycle) is a valid
//! linearization; if one does, none exists. That is checked in O(n log n).

/// One operation on the register, placed where the versions put it.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    /// The history's call.
    pub op: usize,
    pub start: u64,
    /// `None`: its outcome was unknown to its caller, so it may have taken effect any time
    /// after it began (a retry under way in the tiers), and precedes nothing.
    pub end: Option<u64>,
    /// The version of the write it is, or of the write it observed.
    pub version: u64,
    /// An observation comes after the write it saw.
    pub observes: bool,
}

impl Placed {
    fn rank(&self) -> (u64, bool) {
        (self.version, self.observes)
    }
}

/// Pairs (earlier, later) of a key's operations where `earlier` ended before `later` began
/// yet the versions place it after `later`: each pair proves the key not linearizable.
/// Reports, for each operation, the latest-placed one that ended before it began.
pub fn out_of_order(ops: &[Placed]) -> Vec<(usize, usize)> {
    let mut ended: Vec<&Placed> = ops.iter().filter(|p| p.end.is_some()).collect();
    ended.sort_by_key(|p| p.end);
    let mut by_start: Vec<&Placed> = ops.iter().collect();
    by_start.sort_by_key(|p| p.start);
    let mut out = Vec::new();
    let mut done = 0;
    let mut latest: Option<&Placed> = None;
    for later in by_start {
        while let Some(p) = ended.get(done).filter(|p| p.end.is_some_and(|e| e < later.start)) {
            if latest.is_none_or(|l| p.rank() > l.rank()) {
                latest = Some(p);
            }
            done += 1;
        }
        if let Some(earlier) = latest.filter(|l| l.rank() > later.rank()) {
            out.push((earlier.op, later.op));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(op: usize, start: u64, end: u64, version: u64) -> Placed {
        Placed { op, start, end: Some(end), version, observes: false }
    }

    fn saw(op: usize, start: u64, end: u64, version: u64) -> Placed {
        Placed { op, start, end: Some(end), version, observes: true }
    }

    #[test]
    fn real_time_against_version_order() {
        // Overlapping operations may go either way; a write may be seen before its caller hears.
        let fine = [write(0, 0, 10, 5), write(1, 5, 20, 3), saw(2, 8, 9, 5), saw(3, 12, 13, 5)];
        assert!(out_of_order(&fine).is_empty());
        // A read that began after another had seen version 5 sees 3: a read went back.
        let back = [write(0, 0, 10, 3), write(1, 0, 30, 5), saw(2, 11, 12, 5), saw(3, 13, 14, 3)];
        assert_eq!(out_of_order(&back), vec![(2, 3)]);
        // A write acknowledged before another began committed after it.
        assert_eq!(out_of_order(&[write(0, 0, 1, 9), write(1, 2, 3, 8)]), vec![(0, 1)]);
        // A read that saw a write that began only after the read had ended.
        assert_eq!(out_of_order(&[saw(0, 0, 1, 4), write(1, 2, 3, 4)]), vec![(0, 1)]);
        // An unknown outcome precedes nothing, so it orders nothing after it.
        let unknown = Placed { op: 0, start: 0, end: None, version: 9, observes: false };
        assert!(out_of_order(&[unknown, write(1, 2, 3, 8)]).is_empty());
    }
}
