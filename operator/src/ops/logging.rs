//! Logging for long-running commands: `tracing` events to stderr, filtered by `RUST_LOG`.
//!
//! Never log secret material: no private key, password, token PIN, digest credential or Secret data
//! goes into a field or message (docs/architecture.md §8). Log names and references instead.

use std::fmt;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// How each event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug)]
pub enum LoggingError {
    /// `RUST_LOG` is set but is not a valid filter.
    InvalidFilter { directives: String, reason: String },
    /// A global subscriber was installed before.
    AlreadyInitialized(String),
}

impl fmt::Display for LoggingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidFilter { directives, reason } => {
                write!(f, "RUST_LOG={directives:?} is not a valid log filter ({reason}); use e.g. RUST_LOG=info,callguard=debug")
            }
            Self::AlreadyInitialized(reason) => write!(f, "logging was already set up: {reason}"),
        }
    }
}

impl std::error::Error for LoggingError {}

/// The filter for `directives` (the value of `RUST_LOG`, if set), with `default_level` for everything
/// the directives do not name. The SIP stack (rsipstack) writes every message it sends or receives,
/// digest answers included, at INFO: it stays at WARN unless the directives name it.
pub fn env_filter(default_level: LevelFilter, directives: Option<&str>) -> Result<EnvFilter, LoggingError> {
    let directives = directives.unwrap_or_default();
    let filter = EnvFilter::builder()
        .with_default_directive(default_level.into())
        .parse(directives)
        .map_err(|error| LoggingError::InvalidFilter { directives: directives.to_owned(), reason: error.to_string() })?;
    if directives.contains("rsipstack") {
        return Ok(filter);
    }
    Ok(filter.add_directive("rsipstack=warn".parse().expect("a valid directive")))
}

/// Installs the process-wide subscriber: `RUST_LOG` if set, else `default_level`; stderr, so that
/// a command's own output on stdout stays clean.
pub fn init(default_level: LevelFilter, format: LogFormat) -> Result<(), LoggingError> {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    init_with(default_level, rust_log.as_deref(), format)
}

/// Installs the process-wide subscriber with `directives` (`RUST_LOG` syntax) instead of reading
/// `RUST_LOG`: for a command that takes them as an option. Colours only on a terminal.
pub fn init_with(default_level: LevelFilter, directives: Option<&str>, format: LogFormat) -> Result<(), LoggingError> {
    use std::io::IsTerminal;
    let filter = env_filter(default_level, directives)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|error| LoggingError::AlreadyInitialized(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIP stack's message dumps stay out of the logs unless asked for by name.
    #[test]
    fn the_sip_stack_logs_warnings_only_unless_named() {
        let quiet = env_filter(LevelFilter::INFO, None).unwrap().to_string();
        assert!(quiet.contains("rsipstack=warn"), "{quiet}");
        let asked = env_filter(LevelFilter::INFO, Some("rsipstack=debug")).unwrap().to_string();
        assert!(asked.contains("rsipstack=debug") && !asked.contains("rsipstack=warn"), "{asked}");
    }

    #[test]
    fn directives_override_the_default_level() {
        let filter = env_filter(LevelFilter::INFO, Some("warn,callguard::ops=trace")).expect("valid");
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::TRACE));
        let filter = env_filter(LevelFilter::DEBUG, None).expect("valid");
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::DEBUG));
        assert_eq!(env_filter(LevelFilter::WARN, Some("")).expect("valid").max_level_hint(), Some(LevelFilter::WARN));
    }

    #[test]
    fn an_invalid_filter_is_reported_with_its_text() {
        let error = env_filter(LevelFilter::INFO, Some("callguard=loud")).expect_err("not a level");
        assert!(matches!(&error, LoggingError::InvalidFilter { directives, .. } if directives == "callguard=loud"), "{error:?}");
        assert!(error.to_string().contains("RUST_LOG=\"callguard=loud\""), "{error}");
    }

    #[test]
    fn init_installs_once() {
        // The only test in this binary that installs the global subscriber.
        // At ERROR, so that the warnings other tests provoke do not clutter the test output.
        init(LevelFilter::ERROR, LogFormat::Json).expect("first install");
        assert!(matches!(init(LevelFilter::INFO, LogFormat::Text), Err(LoggingError::AlreadyInitialized(_))));
    }
}
