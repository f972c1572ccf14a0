//! The example's progress bars (drawn only on a terminal; hidden when output is redirected).

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// A bar named `prefix` counting `unit` (e.g. "events") up to `len`.
pub fn bar(prefix: &str, unit: &str, len: u64) -> ProgressBar {
    let template =
        format!("   {{prefix:<15}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{rate}}, {{eta}} left)");
    let style = ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
    let bar = ProgressBar::new(len).with_style(style);
    bar.set_prefix(prefix.to_owned());
    bar
}
