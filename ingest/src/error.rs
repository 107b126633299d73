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
    #[error("{}", tar_line(archive, path, msg))]
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

/// Lossy text of a raw path for messages; a path longer than any name the repository takes
/// (a hostile one) is shown by its start, end and length, so a message stays a line.
pub(crate) fn show(path: &[u8]) -> String {
    const HEAD: usize = 200;
    const TAIL: usize = 100;
    if path.len() <= 4096 {
        return String::from_utf8_lossy(path).into_owned();
    }
    format!(
        "{}…({} bytes)…{}",
        String::from_utf8_lossy(&path[..HEAD]),
        path.len(),
        String::from_utf8_lossy(&path[path.len() - TAIL..])
    )
}

/// `archive: path: msg`, each said once: a layer stream's own errors (digest, decoding,
/// registry) already carry the layer's name, and errors after the last member have no path.
fn tar_line(archive: &str, path: &str, msg: &str) -> String {
    let msg = msg.replace(&format!("{archive}: "), "");
    if path.is_empty() {
        format!("{archive}: {msg}")
    } else {
        format!("{archive}: {path}: {msg}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_too_long_for_any_name_is_shown_abridged() {
        let name = [b"start/".as_slice(), &[b'a'; 10_000], b"/end"].concat();
        let shown = show(&name);
        assert!(
            shown.starts_with("start/aaa") && shown.ends_with("aaa/end"),
            "{shown}"
        );
        assert!(
            shown.contains("…(10010 bytes)…") && shown.len() < 400,
            "{shown}"
        );
        assert_eq!(show(&name[..4096]), String::from_utf8_lossy(&name[..4096]));
    }

    #[test]
    fn a_tar_error_names_archive_and_path_once() {
        let tar = |path: &str, msg: &str| Error::Tar {
            archive: "image i layer sha256:ab".into(),
            path: path.into(),
            msg: msg.into(),
        };
        assert_eq!(
            tar("etc/b", "image i layer sha256:ab: corrupt compressed data").to_string(),
            "image i layer sha256:ab: etc/b: corrupt compressed data"
        );
        assert_eq!(
            tar(
                "",
                "after the end of the layer: image i layer sha256:ab: bad digest"
            )
            .to_string(),
            "image i layer sha256:ab: after the end of the layer: bad digest"
        );
        assert_eq!(
            tar("x", "no such file").to_string(),
            "image i layer sha256:ab: x: no such file"
        );
    }
}
