//! CVMFS file catalogs: the entry model every stage shares, SQLite catalogs in schema 2.5
//! (revision 7), nested catalogs and their statistics, and reading catalogs that already exist.
//!
//! * [`namespace::Namespace`] — the repository tree: open a revision (only the root catalog is
//!   read), change it (`replace`, `remove`), `commit` the dirty catalogs bottom-up. A catalog
//!   whose new content equals its stored version is kept, so grafting what is already there
//!   commits to the same root ([`namespace::CommitReport::changed`] is `false`).
//! * [`verify`] — the structural checks of `cvmfs_swissknife check` and a walk over every
//!   entry of any repository, including ones written by the real CVMFS tools.
//! * [`sql`], [`rows`], [`pathhash`], [`xattr`] — the byte-level catalog format.
//!
//! ```
//! use catalog_writer::entry::{Entry, EntryKind, FileData};
//! use catalog_writer::hash::{ContentHash, Suffix};
//! use catalog_writer::namespace::{CommitOptions, Namespace, Objects};
//! use catalog_writer::tree::Node;
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//!
//! #[derive(Default)]
//! struct Mem(Mutex<HashMap<(ContentHash, Suffix), Vec<u8>>>);
//! impl Objects for Mem {
//!     fn load(&self, h: &ContentHash, s: Suffix) -> std::io::Result<Vec<u8>> {
//!         self.0.lock().unwrap().get(&(*h, s)).cloned().ok_or(std::io::ErrorKind::NotFound.into())
//!     }
//!     fn store(&self, h: &ContentHash, s: Suffix, b: &[u8]) -> std::io::Result<()> {
//!         self.0.lock().unwrap().entry((*h, s)).or_insert_with(|| b.to_vec());
//!         Ok(())
//!     }
//! }
//!
//! let objects = Mem::default();
//! let obj = catalog_writer::zlib::compress(b"hello\n");
//! let h = ContentHash::of(&obj);
//! assert_eq!(h.object_path(Suffix::None), "data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3");
//! objects.store(&h, Suffix::None, &obj)?;
//!
//! let mut file = Entry::directory(0o644, 0, 0, 1_700_000_000);
//! file.kind = EntryKind::File { size: 6, data: FileData::Whole(h) };
//! let mut ns = Namespace::empty(1_700_000_000);
//! let parent = Entry::directory(0o755, 0, 0, 1_700_000_000);
//! ns.replace(b"/greeting/hello", Node::Leaf(file), &parent, &objects)?;
//! let opts = CommitOptions { revision: 1, timestamp: 1_700_000_000, ttl: 240, max_entries: 0, apply_dirtab: false };
//! let report = ns.commit(&opts, &objects)?;
//! assert!(report.changed);
//!
//! // Read it back and check it like `cvmfs_swissknife check` would.
//! let mut reopened = Namespace::open(report.root, &objects)?;
//! assert!(reopened.entry(b"/greeting/hello", &objects)?.is_some());
//! assert!(catalog_writer::verify::verify(report.root, &objects).problems.is_empty());
//!
//! // The same file again: nothing to write, the root stays.
//! let mut again = Entry::directory(0o644, 0, 0, 1_700_000_000);
//! again.kind = EntryKind::File { size: 6, data: FileData::Whole(h) };
//! reopened.replace(b"/greeting/hello", Node::Leaf(again), &parent, &objects)?;
//! let opts = CommitOptions { revision: 2, timestamp: 1_700_000_100, ..opts };
//! let same = reopened.commit(&opts, &objects)?;
//! assert_eq!((same.root, same.catalogs_written, same.changed), (report.root, 0, false));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod commit;
pub mod dirtab;
pub mod entry;
mod error;
mod fingerprint;
pub mod hash;
pub mod namespace;
mod node;
pub mod pathhash;
pub mod rows;
mod split;
pub mod sql;
pub mod tree;
pub mod verify;
pub mod xattr;
pub mod zlib;
pub use error::{Error, Result};
