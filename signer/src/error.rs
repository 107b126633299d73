//! The signer's error type. Messages name the file or item involved and never carry key material.

use std::io;
use std::path::PathBuf;

use openssl::error::ErrorStack;

/// Everything that can go wrong while handling keys, certificates, whitelists and manifests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, creating or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file has the wrong content for its role.
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    /// `RepoKeys::write` found a file it would have to overwrite.
    #[error("{}: already exists, refusing to overwrite", path.display())]
    Exists { path: PathBuf },
    /// OpenSSL rejected an operation on the named item (a path, "certificate", ...).
    #[error("{item}: {source}")]
    Openssl {
        item: String,
        #[source]
        source: ErrorStack,
    },
    /// A whitelist, manifest or PEM text does not follow the format.
    #[error("{item}: malformed: {reason}")]
    Malformed { item: &'static str, reason: String },
    /// A value handed to a signing function cannot be written in the format.
    #[error("{item}: cannot sign: {reason}")]
    Invalid { item: &'static str, reason: String },
    /// The hash line under `--` is not the hash of the body.
    #[error("{item}: body hashes to {computed}, but the hash line says {stated}")]
    HashMismatch {
        item: &'static str,
        computed: String,
        stated: String,
    },
    /// The signature bytes do not verify.
    #[error("{item}: signature does not verify with {against}")]
    BadSignature {
        item: &'static str,
        against: &'static str,
    },
    /// The repository name in the file is not the expected one.
    #[error("{item}: repository name is {found:?}, expected {expected:?}")]
    WrongFqrn {
        item: &'static str,
        found: String,
        expected: String,
    },
    /// The whitelist expiry hour has been reached.
    #[error("whitelist: expired at {expires} UTC (checked per hour), now is {now} UTC")]
    Expired { expires: String, now: String },
    /// Two key files that must belong together do not.
    #[error("{}: public key does not match {}", first.display(), second.display())]
    KeyMismatch { first: PathBuf, second: PathBuf },
    /// A feature of the file that this crate does not implement.
    #[error("{item}: unsupported: {reason}")]
    Unsupported { item: &'static str, reason: String },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an OpenSSL error stack with the item it concerns.
pub(crate) fn ossl(item: impl Into<String>) -> impl FnOnce(ErrorStack) -> Error {
    let item = item.into();
    move |source| Error::Openssl { item, source }
}

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
