//! The gRPC services a central node offers: the store API for the tiers above (with its
//! change feed) and cluster administration.

pub mod admin;
pub mod store;
pub mod watch;
