//! Running a whole cluster on one machine: the topology file format, software-delayed
//! links between tiers, and the launcher that starts every node as its own process.

pub mod launch;
pub mod link;
pub mod netns;
pub mod pki;
pub mod ports;
pub mod reach;
pub mod topology;
