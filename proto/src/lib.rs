//! Wire types of the cluster's gRPC services, generated at build time from `proto/`.
//!
//! Only types live here; every tier keeps its logic to itself.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// The central store's API for the tiers above it.
pub mod store {
    /// Version 1 of the store API.
    pub mod v1 {
        tonic::include_proto!("kv.store.v1");
    }
}

/// Raft transport between central nodes.
pub mod raft {
    /// Version 1 of the Raft transport.
    pub mod v1 {
        tonic::include_proto!("kv.raft.v1");
    }
}

/// Administration of the central Raft group.
pub mod admin {
    /// Version 1 of the admin API.
    pub mod v1 {
        tonic::include_proto!("kv.admin.v1");
    }
}

/// The client API every edge node serves.
pub mod client {
    /// Version 1 of the client API.
    pub mod v1 {
        tonic::include_proto!("kv.client.v1");
    }
}

/// Pushes from a regional tier to its edges.
pub mod tier {
    /// Version 1 of the tier protocol.
    pub mod v1 {
        tonic::include_proto!("kv.tier.v1");
    }
}

pub mod codec;

/// Metadata key that carries the HTTP-equivalent status of a gRPC error (SPEC.md section 2).
pub const HTTP_STATUS_TRAILER: &str = "kv-http-status";
/// Metadata key of a failed compare-and-set: the key's version when the write was decided.
pub const CURRENT_VERSION_TRAILER: &str = "kv-current-version";

/// What a key that is not UTF-8 is told, over gRPC and REST alike.
pub const KEY_NOT_UTF8: &str = "Key names must be valid UTF-8.";

/// The encoded descriptor set of every service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv_descriptor.bin"));
