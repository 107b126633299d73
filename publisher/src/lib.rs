//! CVMFS object stores, repository home and locking, transactions, history, tags and rollback,
//! checks, garbage collection, and the copy of a published revision to S3 (`push`).
//!
//! A repository lives in two places: its **home** `<home>/<fqrn>/` (`config.json`, the `lock`
//! file, `state/` caches, by default `keys/`) and its **storage** directory, which is served
//! over HTTP as stratum 0. Keys are never placed inside the storage directory.
//!
//! Publishing follows the order of the CVMFS format: data objects → catalogs bottom-up →
//! certificate → history → reflog → `syncfs` → compare-and-swap on `.cvmfspublished` → new
//! signed manifest (atomic rename). Readers see either the old or the new revision.
//!
//! ```
//! use catalog_writer::entry::Entry;
//! use catalog_writer::tree::{Dir, Node};
//! use publisher::{check_repository, CommitOutcome, CommitSettings, InitOptions, Repository};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tmp = tempfile::tempdir()?;
//! let (home, storage) = (tmp.path().join("home"), tmp.path().join("srv/test.example.org"));
//! let repo = Repository::init(&home, "test.example.org", &storage, InitOptions::default())?;
//!
//! let mut txn = repo.begin(false)?; // exclusive lock on <home>/test.example.org/lock
//! let (ns, objects) = txn.namespace_and_objects();
//! let dir = Dir::new(Entry::directory(0o755, 0, 0, 1_700_000_000));
//! let parent = Entry::directory(0o755, 0, 0, 1_700_000_000);
//! ns.replace(b"/software", Node::Dir(dir), &parent, &objects)?;
//! match txn.commit(&CommitSettings::default())? {
//!     CommitOutcome::Published(p) => assert_eq!(p.revision, 2),
//!     CommitOutcome::Unchanged { .. } => unreachable!("a directory was added"),
//! }
//!
//! let master = signer::load_public_key(&repo.config().public_key_path())?;
//! let report = check_repository(repo.store().as_ref(), repo.fqrn(), &[master], true)?;
//! assert!(report.problems.is_empty(), "{:?}", report.problems);
//! # Ok(()) }
//! ```

mod aws_cli_cache;
mod aws_process;
mod aws_profile;
mod aws_role;
mod aws_sso;
mod cache_db;
pub mod catalog_tree;
mod catalogs;
pub mod check;
pub mod config;
pub mod content_index;
pub mod diff;
mod error;
pub mod gc;
pub mod history;
pub mod http;
pub mod layer_memo;
pub mod local;
pub mod push;
pub mod reflog;
pub mod repo;
pub mod repoinfo;
pub mod rollback;
mod s3_http;
pub mod seed;
pub mod stat_cache;
pub mod store;
mod tags;
pub mod tempdb;
pub mod tls;
pub mod txn;

pub use aws_role::{ask_at_terminal, set_terminal_prompter, TerminalPrompter};
pub use check::{check_repository, verified_manifest, CheckReport};
pub use config::{Chunking, Config, RepoHome};
pub use content_index::{IndexSummary, SqliteContentIndex};
pub use error::{Error, Result};
pub use gc::{GcOptions, GcReport, Keep, KeptRevision};
pub use history::{History, Tag};
pub use http::HttpStore;
pub use layer_memo::{LayerMemo, MemoEntry, MemoKind, MemoLayer, MemoMeta, MemoSummary};
pub use local::LocalStore;
pub use push::{PushOptions, PushProgress, PushReport, S3Target};
pub use reflog::Reflog;
pub use repo::{Adopted, InitOptions, RepoInfo, Repository, Snapshot};
pub use rollback::RollBack;
pub use seed::{seed_content_index, seed_repository, SeedProgress, SeedStats};
pub use stat_cache::{CachedFile, FileStat, SqliteStatCache, StatCache, StatCacheUpdate};
pub use store::{as_objects, ContentIndex, ObjectStore, StoreObjects};
pub use tags::{check_tag_name, NewTag};
pub use txn::{fault_point, CommitOutcome, CommitSettings, Published, Transaction};
