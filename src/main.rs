//! The `lalora` command line: expand `--config` files, parse, pick the backend, dispatch.

mod cli;

use clap::{CommandFactory, FromArgMatches};

fn main() -> anyhow::Result<()> {
    keep_freed_buffers();
    let args = lalora::run_config::expand_config_args(&cli::Cli::command(), std::env::args_os().collect())?;
    let matches = cli::Cli::command().get_matches_from(args);
    let parsed = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli::run(parsed, cli::resolved_flags(&matches))
}

/// Keeps freed buffers of up to 32 MiB in the process instead of handing them back to the
/// kernel. A training step allocates and frees the same tensor sizes every time; with glibc's
/// defaults many of them are fresh `mmap`s whose pages the kernel must fault in and zero again
/// (`clear_page_erms` and page faults were about 10% of a step's profile on the small preset).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_buffers() {
    // SAFETY: `mallopt` only sets allocator parameters; it runs before any other thread exists.
    // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_buffers() {}
