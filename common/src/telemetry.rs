//! Tracing set-up for the binaries: human-readable logs on stderr, filtered
//! by `RUST_LOG` (default `info`), coloured only when stderr is a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. Safe to call more than once (later
/// calls are ignored), so tests and embedded services can share a process.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for people; log files stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
