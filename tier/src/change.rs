//! What a change of a key does to the copies a tier holds.

use crate::cache::CacheKey;
use crate::copy::Value;

/// How a change acts on the copies of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The key now holds this (a put) or nothing (`None`, a delete).
    Set(CacheKey, Option<Value>),
    /// The key changed to a value not known here: drop the copy, read again on demand.
    Unknown(CacheKey),
    /// The whole namespace is gone.
    DropNamespace(String),
    /// A change kind this version does not know.
    Ignore,
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A held copy was replaced, or a fetch under way will answer with the change.
    Stored,
    /// The held copy was newer already.
    Older,
    /// No copy held and none being fetched: nothing to do.
    NotHeld,
    /// Copies were dropped.
    Dropped,
}
