//! The error type that crosses the plugin boundary.

use abi_stable::{std_types::RString, StableAbi};
use std::fmt;

/// What the host should do about a [`PluginError`].
///
/// A `u8` with named values rather than a Rust enum, so that a kind added in a later SDK cannot
/// be an invalid value in an older host: the host treats a kind it does not know as
/// [`ErrorKind::FATAL`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u8);

impl ErrorKind {
    /// The configuration is wrong: the instance cannot be built as configured.
    pub const CONFIG: ErrorKind = ErrorKind(1);
    /// A transient failure (network down, database busy): trying the same thing later can work.
    pub const RETRY: ErrorKind = ErrorKind(2);
    /// The data was refused for good (a 4.xx from a server, say): retrying cannot help.
    pub const REJECTED: ErrorKind = ErrorKind(3);
    /// The instance is broken: the host drops it and builds a new one, with backoff.
    pub const FATAL: ErrorKind = ErrorKind(4);
    /// The plugin panicked; the SDK caught it at the boundary. Handled like [`ErrorKind::FATAL`].
    pub const PANIC: ErrorKind = ErrorKind(5);
    /// The host is shutting down and did not take the batch. A source may return it from `run`
    /// (with `?`): that is a normal stop (see [`crate::Source`]).
    pub const STOPPED: ErrorKind = ErrorKind(6);

    /// A short lowercase name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::CONFIG => "config",
            ErrorKind::RETRY => "retryable",
            ErrorKind::REJECTED => "rejected",
            ErrorKind::FATAL => "fatal",
            ErrorKind::PANIC => "panic",
            ErrorKind::STOPPED => "stopped",
            _ => "unknown",
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::RETRY
    }

    /// Whether the instance should be dropped and rebuilt (fatal, panic, or a kind this SDK
    /// does not know).
    pub fn needs_restart(self) -> bool {
        !matches!(
            self,
            ErrorKind::CONFIG | ErrorKind::RETRY | ErrorKind::REJECTED | ErrorKind::STOPPED
        )
    }
}

impl fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "unknown" => write!(f, "ErrorKind({})", self.0),
            name => f.write_str(name),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// An error a plugin returns to the host: a kind that says what the host should do, and a
/// message for the person reading the log.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// What the host should do about it.
    pub kind: ErrorKind,
    /// What went wrong, for a person.
    pub message: RString,
}

impl PluginError {
    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        PluginError {
            kind,
            message: RString::from(message.to_string()),
        }
    }
    /// The configuration is wrong ([`ErrorKind::CONFIG`]).
    pub fn config(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::CONFIG, message)
    }
    /// A transient failure; retrying can help ([`ErrorKind::RETRY`]).
    pub fn retry(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::RETRY, message)
    }
    /// The data is refused for good ([`ErrorKind::REJECTED`]).
    pub fn rejected(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::REJECTED, message)
    }
    /// The instance is broken and should be rebuilt ([`ErrorKind::FATAL`]).
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::FATAL, message)
    }
    /// The message.
    pub fn message(&self) -> &str {
        self.message.as_str()
    }
}

impl fmt::Debug for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PluginError({}: {})", self.kind, self.message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl std::error::Error for PluginError {}

impl From<std::io::Error> for PluginError {
    /// I/O errors are taken as transient.
    fn from(e: std::io::Error) -> Self {
        PluginError::retry(e)
    }
}
