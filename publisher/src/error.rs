//! The publisher's error type; every message names the repository, path or object involved.

use std::fmt::Display;
use std::io;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{context}: {source}")]
    Sql {
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Catalog(#[from] catalog_writer::Error),
    /// Key, certificate, whitelist or manifest handling failed (signer errors are flattened
    /// into text so this crate does not depend on the signer's error type).
    #[error("{context}: {reason}")]
    Signature { context: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("repository {fqrn} is being published by another process (lock {})", path.display())]
    Locked {
        fqrn: String,
        path: std::path::PathBuf,
    },
    #[error("storage of {fqrn} is in use by {holder} (lock {})", path.display())]
    StorageBusy {
        fqrn: String,
        holder: &'static str,
        path: std::path::PathBuf,
    },
    /// Compare-and-swap failure: someone else published while this transaction was open.
    #[error(
        "{} changed since the transaction began (another publisher, e.g. with another home?); \
         nothing was published", path.display()
    )]
    Conflict { path: std::path::PathBuf },
    #[error("{what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// An S3 request failed (`what` names the bucket and key).
    #[error("{what}: {reason}")]
    Remote { what: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io_path(path: &Path, source: io::Error) -> Error {
        Error::io(path.display().to_string(), source)
    }

    pub(crate) fn sql(context: impl Into<String>, source: rusqlite::Error) -> Error {
        Error::Sql {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn signature(context: impl Into<String>, reason: impl Display) -> Error {
        Error::Signature {
            context: context.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// An error and its sources on one line.
pub(crate) fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(err) = next {
        text.push_str(": ");
        text.push_str(&err.to_string());
        next = err.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
