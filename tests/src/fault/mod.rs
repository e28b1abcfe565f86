//! The randomized fault suite: clients at edges in two regions call the cluster while a
//! nemesis breaks it (kills, partitions, stalls, skewed clocks); every call is recorded and
//! the history is checked against SPEC section 4 (`checker`). `scripts/fault-suite` runs it.

pub mod checker;
pub mod history;
pub mod linearizable;
pub mod nemesis;
pub mod run;
pub mod watcher;
pub mod workload;
