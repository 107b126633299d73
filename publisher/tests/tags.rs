//! Tag edits on a history they cannot read whole.

mod common;
use common::{init_repo, tempdir};

use catalog_writer::hash::ContentHash;
use publisher::history::History;

/// A history with a row that does not read (a NULL name) is not built upon: `add_tag` used
/// to write a new history carrying the row and re-sign the manifest, while listing the tags
/// failed before and after.
#[test]
fn a_tag_is_not_added_to_a_history_whose_rows_do_not_read() {
    let tmp = tempdir();
    let repo = init_repo(tmp.path(), "tags.test.org");
    let store = repo.store();
    let published = store.root().join(".cvmfspublished");
    let bytes = std::fs::read(&published).unwrap();
    let mut manifest = signer::Manifest::parse(&bytes).unwrap().manifest;
    let h = ContentHash::from_hex(manifest.history.as_deref().unwrap()).unwrap();
    let history = History::load(store.as_ref(), &h).unwrap();

    // The same history with a tag row of NULLs, stored and named by a re-signed manifest.
    let scratch = tmp.path().join("h.db");
    std::fs::write(&scratch, history.to_sqlite().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(&scratch).unwrap();
    conn.execute("INSERT INTO tags (name) VALUES (NULL)", [])
        .unwrap();
    drop(conn);
    let damaged = History::from_sqlite(&std::fs::read(&scratch).unwrap(), "damaged").unwrap();
    manifest.history = Some(damaged.store(store.as_ref()).unwrap().to_hex());
    let keys = signer::RepoKeys::load(&tmp.path().join("home/tags.test.org/keys"), "tags.test.org")
        .unwrap();
    std::fs::write(&published, manifest.sign(&keys.repo_key).unwrap()).unwrap();

    assert!(repo.tags().is_err());
    let err = repo
        .add_tag("newtag", None, "", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Invalid column type Null"), "{err}");
    assert_eq!(
        std::fs::read(&published).unwrap(),
        manifest.sign(&keys.repo_key).unwrap()
    );
}
