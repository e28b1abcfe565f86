//! Config files: TOML, every field optional (defaults fill the rest), unknown fields refused.

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// Reads `path` when given, else the defaults; flags are applied by the caller on top.
pub fn load_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Splits a comma-separated flag value, dropping empty parts.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Every setting of `T` with its default value, as a config file would hold it, after
/// `header` (comment lines for the settings that have no default, such as secrets' files).
pub fn default_toml<T: Serialize + Default>(header: &str) -> anyhow::Result<String> {
    Ok(format!("{header}{}", toml::to_string(&T::default()).context("printing the default config")?))
}
