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

    /// Starts at step `position` (a resumed run): the ETA counts only the steps done since.
    pub fn start_at(&self, position: u64) {
        #[cfg(feature = "cli")]
        if let Some(bar) = &self.0 {
            bar.set_position(position);
            bar.set_style(style(position));
        }
        #[cfg(not(feature = "cli"))]
        let _ = position;
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
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(style(0));
    bar.set_prefix(label.to_string());
    Some(bar)
}

#[cfg(not(feature = "cli"))]
fn bar(_len: u64, _label: &str) -> Option<Bar> {
    None
}

/// The bar's look: label, elapsed time, bar, count, message and the ETA from the average
/// speed since step `start` (indicatif's own estimate would count a resumed run's first
/// position as done in no time).
#[cfg(feature = "cli")]
use std::time::Duration;

#[cfg(feature = "cli")]
fn style(start: u64) -> indicatif::ProgressStyle {
    use indicatif::{ProgressState, ProgressStyle};
    ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] [{bar:32}] {pos}/{len} {msg} (eta {remaining})")
        .expect("valid template")
        .with_key("remaining", move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = match eta(state.elapsed(), state.pos(), state.len(), start) {
                Some(d) => write!(w, "{}", hms(d)),
                None => write!(w, "-"),
            };
        })
        .progress_chars("=> ")
}

/// Time left at the average speed since `start`: `elapsed * (len - pos) / (pos - start)`.
#[cfg(feature = "cli")]
fn eta(elapsed: Duration, pos: u64, len: Option<u64>, start: u64) -> Option<Duration> {
    let done = pos.checked_sub(start).filter(|&d| d > 0)?;
    let left = len?.saturating_sub(pos);
    Some(elapsed.mul_f64(left as f64 / done as f64))
}

/// `HH:MM:SS`.
#[cfg(feature = "cli")]
fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use super::*;

    #[test]
    fn the_eta_uses_the_speed_since_the_start_position() {
        // 10 steps in 20 s after resuming at step 50 of 100: 40 steps left take 80 s.
        assert_eq!(eta(Duration::from_secs(20), 60, Some(100), 50), Some(Duration::from_secs(80)));
        assert_eq!(eta(Duration::from_secs(5), 50, Some(100), 50), None, "no step done yet");
        assert_eq!(eta(Duration::from_secs(5), 3, None, 0), None, "no length");
        assert_eq!(hms(Duration::from_secs(3725)), "01:02:05");
    }
}
