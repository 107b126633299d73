//! The catalog writer's error type; messages name the path or object involved.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("catalog {catalog}: {source}")]
    Sql {
        catalog: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {reason}")]
    Path { path: String, reason: String },
    #[error("catalog {catalog}: {reason}")]
    Corrupt { catalog: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;
