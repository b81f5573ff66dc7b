//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (or the configured
//! level), as text or one JSON object per line.

use dynakv::config::LogFormat;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// Noisy dependencies kept at warn unless RUST_LOG says otherwise.
const QUIET: &str = "fjall=warn,lsm_tree=warn";

/// Installs the global subscriber; a second call does nothing.
pub fn init(level: &str, format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(format!("{level},{QUIET}")),
    };
    let layer = fmt::layer().with_writer(std::io::stderr).with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry.with(layer).try_init(),
        LogFormat::Json => registry.with(layer.json()).try_init(),
    };
}
