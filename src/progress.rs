//! Progress bars for long work. The library shows one only when the caller asks for it.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar, or nothing (`Progress::hidden()`), so library code reports progress the same
/// way whether or not anyone is watching.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// No output.
    pub fn hidden() -> Self {
        Progress(None)
    }

    /// A bar of `len` steps labelled `label`, on stderr; hidden when `show` is false.
    pub fn new(show: bool, len: u64, label: &str) -> Self {
        if !show {
            return Self::hidden();
        }
        let bar = ProgressBar::new(len);
        let style = ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] [{bar:32}] {pos}/{len} {msg} ({eta})")
            .expect("valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        Progress(Some(bar))
    }

    /// Advances by `n` steps.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// Sets the text shown after the counter (`loss 2.31`, `4096 tokens`, ...).
    pub fn message(&self, msg: impl Into<String>) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg.into());
        }
    }

    /// Prints a line above the bar (or to stderr when hidden... not at all when hidden).
    pub fn println(&self, line: impl AsRef<str>) {
        if let Some(bar) = &self.0 {
            bar.println(line.as_ref());
        }
    }

    /// Removes the bar, leaving the last state printed.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}
