//! Named snapshots: tags in the history database (`cvmfs_server tag -a/-r/-l`). A tag names a
//! revision's root catalog; garbage collection keeps every tagged revision. Adding or removing
//! one writes a new history object and re-signs the manifest at the same revision (new `H`
//! and `Y`), under the repository lock and with the compare-and-swap a publish uses.

use crate::catalogs::{load_catalog, tree_gap, TreeGap};
use crate::error::{Error, Result};
use crate::history::{History, Tag, TRUNK, TRUNK_PREVIOUS};
use crate::local::LocalStore;
use crate::reflog::RefKind;
use crate::repo::{now_unix, parse_hash_field, replace_manifest, updated_reflog, Repository};
use crate::store::ObjectStore;
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::namespace::CatalogRef;

impl Repository {
    /// The tags of the current history database, by name (no signature check).
    pub fn tags(&self) -> Result<Vec<Tag>> {
        match self.published_manifest()?.history.as_deref() {
            Some(h) => History::load(self.store().as_ref(), &parse_hash_field("H", h)?)?.tags(),
            None => Ok(Vec::new()),
        }
    }

    /// Names revision `revision` (default: the current one) `name`; an existing tag of that
    /// name is moved. The revision must still be stored (not garbage-collected).
    pub fn add_tag(
        &self,
        name: &str,
        revision: Option<u64>,
        description: &str,
        wait: bool,
    ) -> Result<Tag> {
        check_tag_name(name)?;
        let fqrn = self.fqrn();
        self.edit_history(wait, |history, store, manifest| {
            let head = CatalogRef {
                hash: parse_hash_field("C", &manifest.root_catalog)?,
                size: manifest.root_size,
            };
            let wanted = revision.unwrap_or(manifest.revision);
            if wanted > manifest.revision {
                return Err(Error::Invalid(format!(
                    "no revision {wanted}: {fqrn} is at revision {}",
                    manifest.revision
                )));
            }
            let tag = find_revision(store, head, wanted)?;
            if revision.is_some() && wanted != manifest.revision {
                refuse_incomplete(store, &tag, fqrn)?;
            }
            let tag = Tag {
                name: name.to_string(),
                description: description.to_string(),
                ..tag
            };
            history.set_tag(&tag)?;
            Ok((tag, true))
        })
    }

    /// Removes tag `name`; returns whether it existed (nothing is written when it did not).
    pub fn remove_tag(&self, name: &str, wait: bool) -> Result<bool> {
        check_tag_name(name)?;
        self.edit_history(wait, |history, _, _| {
            let removed = history.remove_tag(name)?;
            Ok((removed, removed))
        })
    }

    /// Runs `edit` on the current history under the lock; when it reports a change, stores
    /// the new history and re-signs the manifest with it.
    fn edit_history<T>(
        &self,
        wait: bool,
        edit: impl FnOnce(&mut History, &LocalStore, &signer::Manifest) -> Result<(T, bool)>,
    ) -> Result<T> {
        let fqrn = self.fqrn().to_string();
        self.amend_manifest(wait, |store, manifest| {
            let old = manifest
                .history
                .as_deref()
                .map(|h| parse_hash_field("H", h))
                .transpose()?;
            let mut history = match &old {
                Some(h) => History::load(store, h)?,
                None => History::create(&fqrn)?,
            };
            // Every row must read: a new history is built on this one, and would carry a
            // damaged row into every later revision.
            history.tags()?;
            let (out, changed) = edit(&mut history, store, manifest)?;
            if !changed {
                return Ok((out, Vec::new()));
            }
            if let Some(h) = &old {
                history.set_previous_revision(h)?;
            }
            let new = history.store(store)?;
            manifest.history = Some(new.to_hex());
            Ok((out, vec![(new, RefKind::History)]))
        })
    }

    /// Under the repository lock and the storage's publish lock, lets `edit` store objects
    /// and change the verified current manifest; when it names new references, they go into
    /// the reflog and the manifest is re-signed at the same revision (compare-and-swap
    /// against the one read). No references: nothing is written.
    pub(crate) fn amend_manifest<T>(
        &self,
        wait: bool,
        edit: impl FnOnce(
            &LocalStore,
            &mut signer::Manifest,
        ) -> Result<(T, Vec<(ContentHash, RefKind)>)>,
    ) -> Result<T> {
        let a = self.amendable(wait)?;
        let mut manifest = a.base.clone();
        let (out, refs) = edit(&a.store, &mut manifest)?;
        if refs.is_empty() {
            return Ok(out);
        }
        let reflog = updated_reflog(&a.store, self.fqrn(), &refs, now_unix())?;
        manifest.reflog = Some(ContentHash::of(&reflog).to_hex());
        replace_manifest(
            &a.store,
            &a.keys,
            &manifest,
            Some(&reflog),
            Some(&a.base_bytes),
        )?;
        Ok(out)
    }
}

/// A tag to give a revision as it is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTag {
    pub name: String,
    pub description: String,
}

impl NewTag {
    /// A tag named `name` (checked as [`check_tag_name`] does).
    pub fn new(name: &str, description: &str) -> Result<NewTag> {
        check_tag_name(name)?;
        Ok(NewTag {
            name: name.to_string(),
            description: description.to_string(),
        })
    }
}

/// Tag names as `cvmfs_server tag` takes them; the two it maintains itself are refused.
pub fn check_tag_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(Error::Invalid(format!(
            "tag name {name:?}: use letters, digits, '-', '_' and '.'"
        )));
    }
    if name == TRUNK || name == TRUNK_PREVIOUS {
        return Err(Error::Invalid(format!(
            "tag {name} is maintained by every publish and cannot be set or removed"
        )));
    }
    Ok(())
}

/// Refuses a revision whose tree is not all stored: a tag or a rollback would hand clients
/// catalogs or files that are gone.
pub(crate) fn refuse_incomplete(store: &dyn ObjectStore, tag: &Tag, fqrn: &str) -> Result<()> {
    let root = CatalogRef {
        hash: tag.hash,
        size: tag.size,
    };
    const ANY: [Suffix; 3] = [Suffix::None, Suffix::Partial, Suffix::Catalog];
    // An object that cannot be looked up counts as present: this is a refusal, not a check.
    let present = |h: &ContentHash| ANY.iter().any(|s| store.contains(h, *s).unwrap_or(true));
    let why = match tree_gap(store, root, &[], &present) {
        None => return Ok(()),
        Some(TreeGap::Unreadable(_, first)) => first,
        Some(TreeGap::Missing(n, first)) => {
            format!("{n} object(s) its catalogs reference are not stored, e.g. {first}")
        }
    };
    Err(Error::Invalid(format!(
        "{fqrn}: revision {} (root catalog {}) is not complete, a garbage collection may have \
         been stopped while deleting it: {why}",
        tag.revision, tag.hash
    )))
}

/// The tag fields of revision `wanted`, found by following `previous_revision` from `head`.
fn find_revision(store: &LocalStore, head: CatalogRef, wanted: u64) -> Result<Tag> {
    let mut cat = head;
    loop {
        let loaded = load_catalog(store, &cat)?;
        let number = |key: &str| -> Option<i64> { loaded.property(key).ok()??.parse().ok() };
        let revision = number("revision").and_then(|r| u64::try_from(r).ok());
        if revision == Some(wanted) {
            return Ok(Tag {
                name: String::new(),
                hash: cat.hash,
                revision: wanted,
                timestamp: number("last_modified").unwrap_or(0),
                description: String::new(),
                size: loaded.size,
            });
        }
        let previous = loaded
            .property("previous_revision")?
            .and_then(|p| ContentHash::from_hex(&p));
        let gone = || {
            Error::Invalid(format!(
                "revision {wanted} of {} is not stored (any more: garbage-collected?)",
                store.describe()
            ))
        };
        let Some(previous) = previous.filter(|_| revision.is_some_and(|r| r > wanted)) else {
            return Err(gone());
        };
        if !store
            .contains(&previous, Suffix::Catalog)
            .map_err(|e| Error::io(previous.object_path(Suffix::Catalog), e))?
        {
            return Err(gone());
        }
        cat = CatalogRef {
            hash: previous,
            size: 0,
        };
    }
}
