//! CVMFS file catalogs: the entry model every stage shares, SQLite catalogs in schema 2.5
//! (revision 7), nested catalogs and their statistics, and reading catalogs that already exist.
//!
//! ```
//! use catalog_writer::hash::{ContentHash, Suffix};
//! let obj = catalog_writer::zlib::compress(b"hello\n");
//! let h = ContentHash::of(&obj);
//! assert_eq!(h.object_path(Suffix::None), "data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3");
//! ```

pub mod entry;
pub mod hash;
pub mod tree;
pub mod zlib;
pub mod namespace;
mod error;
pub use error::{Error, Result};
