//! Rollback (`cvmfs_server rollback`): a new revision whose tree is that of a tagged earlier
//! revision. The tagged root catalog is published again with the next revision number, the
//! current root as its `previous_revision` and a new `last_modified` (nested catalogs are
//! shared unchanged); the tags of later revisions go, the target tag moves to the new
//! revision and becomes `trunk`. Without a tag name the target is `trunk-previous`, which a
//! rollback removes: only one such undo in a row, as with `cvmfs_server`.

use crate::error::{Error, Result};
use crate::history::{History, Tag, TRUNK_PREVIOUS};
use crate::local::LocalStore;
use crate::repo::{
    now_unix, parse_hash_field, publish_revision, HistoryChange, PublishInput, Repository,
};
use crate::store::{put_named, ObjectStore};
use crate::tempdb::TempDb;
use crate::txn::Published;
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::namespace::CatalogRef;

/// What a rollback did.
#[derive(Clone, Debug)]
pub struct RollBack {
    /// The new revision.
    pub published: Published,
    /// The tag rolled back to, as it was before.
    pub target: Tag,
    /// Tags that are gone: those of later revisions, newest first (`trunk` included), then
    /// `trunk-previous`.
    pub removed: Vec<Tag>,
}

/// Largest root catalog inflated for a rollback.
const MAX_ROOT_CATALOG: u64 = 4 << 30;

impl Repository {
    /// Publishes the tree of tag `name` (default `trunk-previous`) as the next revision.
    pub fn roll_back(&self, name: Option<&str>, wait: bool) -> Result<RollBack> {
        let fqrn = self.fqrn();
        let a = self.amendable(wait)?;
        let (store, base) = (&a.store, &a.base);
        let history = match base.history.as_deref() {
            Some(h) => History::load(store.as_ref(), &parse_hash_field("H", h)?)?,
            None => {
                return Err(Error::Invalid(format!(
                    "{fqrn} has no history database: no tag to roll back to"
                )))
            }
        };
        let target = rollback_target(&history, fqrn, name, base.revision)?;
        crate::tags::refuse_incomplete(store.as_ref(), &target, fqrn)?;
        let mut removed: Vec<Tag> = history
            .tags_replaced_by_rollback(&target)?
            .into_iter()
            .filter(|t| t.name != target.name)
            .collect();
        if let Some(undo) = history.tag(TRUNK_PREVIOUS)? {
            if undo.name != target.name && !removed.iter().any(|t| t.name == undo.name) {
                removed.push(undo);
            }
        }
        let current = parse_hash_field("C", &base.root_catalog)?;
        let revision = base.revision + 1;
        let timestamp = now_unix().max(base.timestamp);
        let root = republish_root(store, &target, revision, &current, timestamp)?;
        let history = publish_revision(&PublishInput {
            store,
            objects: store.as_ref(),
            keys: &a.keys,
            config: self.config(),
            root,
            revision,
            timestamp,
            previous: Some(base),
            expected_manifest: Some(&a.base_bytes),
            history_change: HistoryChange::RollBack(&target),
            meta_info: base.meta_info.clone(),
        })?;
        Ok(RollBack {
            published: Published {
                revision,
                root,
                timestamp,
                catalogs_written: 1,
                catalogs_total: 1,
                history,
            },
            target,
            removed,
        })
    }
}

/// The tag `name` (default `trunk-previous`), if it names an earlier revision.
fn rollback_target(history: &History, fqrn: &str, name: Option<&str>, current: u64) -> Result<Tag> {
    let wanted = name.unwrap_or(TRUNK_PREVIOUS);
    let target = history.tag(wanted)?.ok_or_else(|| match name {
        Some(name) => Error::Invalid(format!("{fqrn}: no tag {name}")),
        None => Error::Invalid(format!(
            "{fqrn}: no {TRUNK_PREVIOUS} tag (a rollback without a tag name undoes one \
             publish, and only once): name a tag"
        )),
    })?;
    if target.revision >= current {
        return Err(Error::Invalid(format!(
            "{fqrn}: tag {wanted} is revision {}, the current revision: nothing to roll back",
            target.revision
        )));
    }
    Ok(target)
}

/// Stores `target`'s root catalog again as revision `revision` following `previous`.
fn republish_root(
    store: &LocalStore,
    target: &Tag,
    revision: u64,
    previous: &ContentHash,
    timestamp: i64,
) -> Result<CatalogRef> {
    let what = format!(
        "root catalog {} of tag {} (revision {})",
        target.hash.object_path(Suffix::Catalog),
        target.name,
        target.revision
    );
    let stored = match store.get(&target.hash, Suffix::Catalog) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Invalid(format!(
                "{what} is not stored (garbage-collected?)"
            )))
        }
        Err(e) => return Err(Error::io(what, e)),
    };
    if ContentHash::of(&stored) != target.hash {
        return Err(Error::corrupt(what, "its bytes do not hash to its name"));
    }
    let raw = catalog_writer::zlib::decompress_sqlite(&stored, MAX_ROOT_CATALOG)
        .map_err(|e| Error::io(format!("{what}: inflate"), e))?;
    let db = TempDb::from_bytes(&what, &raw, false)?;
    db.set_property("revision", &revision.to_string())?;
    db.set_property("previous_revision", &previous.to_hex())?;
    db.set_property("last_modified", &timestamp.to_string())?;
    let bytes = db.into_bytes()?;
    let object = catalog_writer::zlib::compress_catalog(&bytes);
    let hash = put_named(store, &object, Suffix::Catalog, "catalog")?;
    Ok(CatalogRef {
        hash,
        size: bytes.len() as u64,
    })
}
