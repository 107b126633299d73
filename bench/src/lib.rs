//! Benchmark harness for `cvmfs-oci` on the shared testbed (registry, images, 20-image corpus).
//!
//! The binary `cvmfs-oci-bench` runs the real `cvmfs-oci` as a child process (wall time and
//! peak RSS from `wait4`) for five cases and compares each with a floor computed in this
//! process, independent of the cvmfs-oci pipeline ([`floor`]): inflating the layers once and
//! zlib-6 compressing each distinct file content of the flattened image(s) once, on all cores.
//!
//! The floor's flattening follows the plain OCI rules:
//!
//! ```
//! use cvmfs_oci_bench::flatten::{Flat, LayerOps, Node, Op};
//!
//! let lower = LayerOps { ops: vec![Op::File(b"etc/a".to_vec(), 0), Op::File(b"etc/b".to_vec(), 1)] };
//! let upper = LayerOps { ops: vec![Op::Whiteout(b"etc/a".to_vec()), Op::File(b"etc/b".to_vec(), 2)] };
//! let mut flat = Flat::new();
//! flat.apply(&lower);
//! flat.apply(&upper);
//! assert_eq!(flat.nodes().get(&b"etc/a"[..]), None);
//! assert_eq!(flat.nodes().get(&b"etc/b"[..]), Some(&Node::File(2)));
//! ```

pub mod cases;
pub mod child;
pub mod flatten;
pub mod floor;
pub mod oci;
pub mod report;
pub mod scale;
pub mod tree;

use std::path::{Path, PathBuf};

/// Everything that can go wrong while benchmarking; messages name the file, layer or command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("layer {digest} ({}): {source}", path.display())]
    Layer {
        digest: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Layout(String),
    #[error("{url}: {message}")]
    Registry { url: String, message: String },
    #[error("{what}: {message}")]
    Child { what: String, message: String },
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
