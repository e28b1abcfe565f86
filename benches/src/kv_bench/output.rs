//! What a run writes besides its table: JSON lines, plots, and a progress bar meanwhile.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// What results are written as, besides the table.
#[derive(Args)]
pub struct Output {
    /// Also write the results as JSON lines to this file (`-` for standard output).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the results as SVG plots into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

impl Output {
    /// Writes `lines` where `--json` asks, if it does.
    pub fn json_lines(&self, lines: &[serde_json::Value]) -> anyhow::Result<()> {
        kv_benches::write_json_lines(self.json.as_deref(), lines)
    }
}

/// A progress bar drawn with `template`.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
