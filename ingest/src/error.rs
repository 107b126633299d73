//! The one error type of the crate; every variant names what it was working on.

use std::io;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of sources, decoding, flattening and the object pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file or directory of a source tree failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A tar member is unusable (hostile path, truncated data, unsupported type, ...).
    #[error("{archive}: {path}: {msg}")]
    Tar {
        /// The tar file, "stdin", or an image + layer digest.
        archive: String,
        path: String,
        msg: String,
    },
    /// Reading or decompressing a layer/archive stream failed.
    #[error("{archive}: {msg}")]
    Decode { archive: String, msg: String },
    /// An image-level problem (used by image sources).
    #[error("image {image}: {msg}")]
    Image { image: String, msg: String },
    /// Writing or checking an object in the store failed.
    #[error("object {object} in {store}: {source}")]
    Store {
        /// Object path, e.g. `data/ab/cdef…P`.
        object: String,
        store: String,
        #[source]
        source: io::Error,
    },
    /// Compressing one piece of a file failed (e.g. its scratch file could not be written).
    #[error("compressing {what}: {source}")]
    Compress {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Invalid chunk size parameters.
    #[error("invalid chunk sizes: {0}")]
    ChunkSizes(String),
    /// The pipeline stopped after an earlier error (reported in full by `finish`).
    #[error("object pipeline stopped: {0}")]
    Stopped(String),
    /// Writing the layer memo failed.
    #[error("{layer}: layer memo: {source}")]
    Memo {
        /// The layer's name (image + digest).
        layer: String,
        #[source]
        source: publisher::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Lossy text of a raw path for messages.
pub(crate) fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}
