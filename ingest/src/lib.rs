//! Sources, layer decoding, OCI layer flattening and the chunk/compress/hash/store pipeline
//! of cvmfs-oci.
//!
//! Data flows one way: a source (tar archive, directory, image layers) produces a
//! [`catalog_writer::tree::Dir`] whose regular files were streamed through an
//! [`ObjectPipeline`] into an [`publisher::ObjectStore`]. Objects are only guaranteed to be
//! stored once [`ObjectPipeline::finish`] returned `Ok`.
//!
//! ```
//! use catalog_writer::entry::{EntryKind, FileData};
//! use catalog_writer::hash::{ContentHash, Suffix};
//! use ingest::{tree_from_tar, ObjectPipeline, PipelineConfig, TarOptions};
//! use publisher::ObjectStore;
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//!
//! // A minimal in-memory store (the publisher crate has the real ones).
//! #[derive(Default)]
//! struct Mem(Mutex<HashMap<(ContentHash, Suffix), Vec<u8>>>);
//! impl ObjectStore for Mem {
//!     fn contains(&self, h: &ContentHash, s: Suffix) -> std::io::Result<bool> {
//!         Ok(self.0.lock().unwrap().contains_key(&(*h, s)))
//!     }
//!     fn put(&self, h: &ContentHash, s: Suffix, b: &[u8]) -> std::io::Result<()> {
//!         self.0.lock().unwrap().insert((*h, s), b.to_vec());
//!         Ok(())
//!     }
//!     fn get(&self, h: &ContentHash, s: Suffix) -> std::io::Result<Vec<u8>> {
//!         self.0.lock().unwrap().get(&(*h, s)).cloned().ok_or(std::io::ErrorKind::NotFound.into())
//!     }
//!     fn put_root_file(&self, _: &str, _: &[u8]) -> std::io::Result<()> { Ok(()) }
//!     fn get_root_file(&self, _: &str) -> std::io::Result<Option<Vec<u8>>> { Ok(None) }
//!     fn describe(&self) -> String { "memory".into() }
//! }
//!
//! // A one-file tar archive.
//! let mut tar = tar::Builder::new(Vec::new());
//! let mut h = tar::Header::new_gnu();
//! h.set_size(6);
//! h.set_mode(0o644);
//! h.set_cksum();
//! tar.append_data(&mut h, "hello", &b"hello\n"[..]).unwrap();
//! let bytes = tar.into_inner().unwrap();
//!
//! let store = Arc::new(Mem::default());
//! let cfg = PipelineConfig { chunking: None, ..PipelineConfig::default() };
//! let pipeline = ObjectPipeline::new(store.clone(), None, cfg).unwrap();
//! let tree = tree_from_tar(std::io::Cursor::new(bytes), &pipeline, &TarOptions::default()).unwrap();
//! let stats = pipeline.finish().unwrap().stats;
//! assert_eq!(stats.objects_new, 1);
//! let entry = tree.children[&b"hello"[..]].entry();
//! let EntryKind::File { size: 6, data: FileData::Whole(h) } = &entry.kind else { panic!() };
//! assert_eq!(h.to_hex(), "5798f7f4ca7585d850eea64610a1f73d8f8de7a3");
//! assert!(store.contains(h, Suffix::None).unwrap());
//! ```

pub mod chunker;
pub mod convert;
pub mod decode;
pub mod dirsource;
pub mod error;
mod fdwalk;
pub mod flatten;
pub mod gzip;
pub mod image;
mod paxsparse;
pub mod pipeline;
mod targuard;
pub mod tarsource;

pub use chunker::{ChunkSizes, Chunker};
pub use decode::open_layer_stream;
pub use dirsource::{tree_from_dir, tree_from_dir_cached, CachedWalk};
pub use error::{Error, Result};
pub use flatten::{flatten_layers, flatten_layers_with, LayerInput, MemoContext};
pub use pipeline::{
    FileTicket, ObjectPipeline, PipelineConfig, PipelineOutput, PipelineStats, PipelineWatch,
};
pub use tarsource::{tree_from_tar, TarOptions};
