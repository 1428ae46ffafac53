//! Progress reports for long work. The library shows one only when the caller asks for it;
//! with the `cli` feature it is an indicatif bar on stderr, without it nothing is drawn.

/// A progress bar, or nothing ([`Progress::hidden`]), so library code reports progress the same
/// way whether or not anyone is watching.
pub struct Progress(Option<Bar>);

#[cfg(feature = "cli")]
type Bar = indicatif::ProgressBar;

/// Without the `cli` feature there is no terminal front end: bars are never drawn.
#[cfg(not(feature = "cli"))]
type Bar = std::convert::Infallible;

impl Progress {
    /// No output.
    pub fn hidden() -> Self {
        Progress(None)
    }

    /// A bar of `len` steps labelled `label`, on stderr, showing elapsed time and an ETA;
    /// hidden when `show` is false (or without the `cli` feature).
    pub fn new(show: bool, len: u64, label: &str) -> Self {
        if !show {
            return Self::hidden();
        }
        Progress(bar(len, label))
    }

    /// Advances by `n` steps.
    pub fn inc(&self, n: u64) {
        #[cfg(feature = "cli")]
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
        #[cfg(not(feature = "cli"))]
        let _ = n;
    }

    /// Sets the text shown after the counter (`nll 2.31`, `4096 tokens`, ...).
    pub fn message(&self, msg: impl Into<String>) {
        #[cfg(feature = "cli")]
        if let Some(bar) = &self.0 {
            bar.set_message(msg.into());
        }
        #[cfg(not(feature = "cli"))]
        let _ = msg;
    }

    /// Prints a line above the bar; nothing when the bar is hidden.
    pub fn println(&self, line: impl AsRef<str>) {
        #[cfg(feature = "cli")]
        if let Some(bar) = &self.0 {
            bar.println(line.as_ref());
        }
        #[cfg(not(feature = "cli"))]
        let _ = line;
    }

    /// Stops the bar, leaving its last state printed.
    pub fn finish(&self) {
        #[cfg(feature = "cli")]
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}

#[cfg(feature = "cli")]
fn bar(len: u64, label: &str) -> Option<Bar> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] [{bar:32}] {pos}/{len} {msg} (ETA {eta})")
        .expect("valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    Some(bar)
}

#[cfg(not(feature = "cli"))]
fn bar(_len: u64, _label: &str) -> Option<Bar> {
    None
}
