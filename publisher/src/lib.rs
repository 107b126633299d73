//! CVMFS object stores, repository home and locking, transactions, history, reflog and checks.

pub mod store;
pub use store::{ContentIndex, ObjectStore};
