//! The progress bar of the long-running subcommands: position, rate and ETA on
//! stderr, drawn only when stderr is a terminal (indicatif hides it otherwise),
//! so logs and test output stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` items, `done` of them finished before this run.
pub fn bar(total: u64, done: u64, unit: &str, enabled: bool) -> ProgressBar {
    let target = if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    let template = format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template).expect("a fixed template: this is a bug").progress_chars("=> "),
    );
    // Resumed work is not part of this run's rate.
    bar.set_position(done);
    bar.reset_eta();
    bar
}

/// A bar over the bytes of an input (`total` unknown for a pipe: then a
/// counter), `done` of them finished before this run; the message says lines.
pub fn bytes_bar(total: Option<u64>, done: u64, enabled: bool) -> ProgressBar {
    let target = if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = ProgressBar::with_draw_target(total, target);
    let template = match total {
        Some(_) => "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        None => "{elapsed_precise} {bytes} {binary_bytes_per_sec} {msg}",
    };
    bar.set_style(
        ProgressStyle::with_template(template).expect("a fixed template: this is a bug").progress_chars("=> "),
    );
    bar.set_position(done);
    bar.reset_eta();
    bar
}
