//! What a run writes besides its table: JSON lines, plots, and a progress bar meanwhile.

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write as _;
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
        match self.json.as_deref() {
            Some(p) if p.as_os_str() == "-" => {
                for l in lines {
                    println!("{l}");
                }
            }
            Some(p) => {
                let mut f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
                for l in lines {
                    writeln!(f, "{l}")?;
                }
            }
            None => {}
        }
        Ok(())
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
