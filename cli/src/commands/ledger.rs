//! The sync ledger (`state/sync-ledger.json`): the tag links each wishlist has listed, so that
//! `sync --prune` removes only links that this wishlist listed before and lists no more. Images
//! that `convert`, `migrate` or another wishlist put into the repository are never its to
//! remove, and a wishlist synced for the first time prunes nothing.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// Per wishlist (by its canonical path or its `--wishlist-name`), the link paths it listed and
/// that no prune removed.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct SyncLedger {
    recipes: BTreeMap<String, BTreeSet<String>>,
}

/// The ledger's file in the repository's local state.
pub(super) fn ledger_path(repo: &publisher::Repository) -> PathBuf {
    repo.home().state_dir().join("sync-ledger.json")
}

/// The key of a wishlist: `name:NAME` for a name given, else its canonical path (the file
/// given on the command line; a path is never taken for a name, as it starts with `/`).
pub(super) fn recipe_key(recipe: &Path, name: Option<&str>) -> String {
    if let Some(name) = name {
        return format!("name:{name}");
    }
    std::fs::canonicalize(recipe)
        .unwrap_or_else(|_| recipe.to_path_buf())
        .display()
        .to_string()
}

/// Takes the ledger's lock (`sync-ledger.lock` beside it, exclusive, released when the file is
/// dropped). Taken after the repository lock and held past the commit that releases it, so a
/// command never saves a ledger read before another one saved its own; released once the
/// ledger is saved, before anything takes the repository lock again (an automatic gc or
/// push), so that two commands never wait for each other. Its holder is between its commit
/// and its ledger's save, a moment: without `wait` a held lock is an error.
pub(super) fn lock(path: &Path, wait: bool) -> Result<std::fs::File> {
    let lock = path.with_extension("lock");
    if let Some(dir) = lock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .with_context(|| format!("opening {}", lock.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) if wait => file
            .lock()
            .with_context(|| format!("locking {}", lock.display()))?,
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{}: in use by another command of this home, saving its sync ledger (--no-wait)",
            lock.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", lock.display()))
        }
    }
    Ok(file)
}

impl SyncLedger {
    /// Reads the ledger; a missing one is empty. An unreadable one is an error: treating it as
    /// empty would silently stop pruning, and rewriting it would forget every wishlist.
    pub(super) fn load(path: &Path) -> Result<SyncLedger> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{}: unreadable sync ledger (delete it to start over: the next `sync \
                     --prune` of each wishlist then prunes nothing)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SyncLedger::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The links `recipe` listed before that no other wishlist lists: what its prune may remove.
    pub(super) fn prunable(&self, recipe: &str) -> HashSet<Vec<u8>> {
        let others: HashSet<&String> = self
            .recipes
            .iter()
            .filter(|(key, _)| key.as_str() != recipe)
            .flat_map(|(_, links)| links)
            .collect();
        self.recipes
            .get(recipe)
            .into_iter()
            .flatten()
            .filter(|link| !others.contains(link))
            .map(|link| link.as_bytes().to_vec())
            .collect()
    }

    /// Whether `recipe` was synced before (a first sync has nothing to prune).
    pub(super) fn knows(&self, recipe: &str) -> bool {
        self.recipes.contains_key(recipe)
    }

    /// Records what `recipe` lists now: `links` replace its earlier ones when `pruned` (the
    /// prune removed the rest), else they are added to them (a later prune still knows them).
    pub(super) fn record(&mut self, recipe: &str, links: &[Vec<u8>], pruned: bool) {
        let entry = self.recipes.entry(recipe.to_string()).or_default();
        if pruned {
            entry.clear();
        }
        entry.extend(
            links
                .iter()
                .map(|link| String::from_utf8_lossy(link).into_owned()),
        );
    }

    /// Forgets `links` in every wishlist's record: `convert` or `migrate` made them, so they
    /// are no wishlist's to prune any more (even where a sync had listed them before, or a
    /// rollback brought back a state the ledger does not know). Returns whether it changed.
    pub(super) fn claim(&mut self, links: &[Vec<u8>]) -> bool {
        let claimed: HashSet<String> = links
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let mut changed = false;
        for listed in self.recipes.values_mut() {
            let before = listed.len();
            listed.retain(|l| !claimed.contains(l));
            changed |= listed.len() != before;
        }
        changed
    }

    /// Writes the ledger atomically (temp file, then rename).
    pub(super) fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).context("encoding the sync ledger")?;
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(names: &[&str]) -> Vec<Vec<u8>> {
        names.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_wishlist_prunes_only_what_it_listed_and_no_other_lists() {
        let mut ledger = SyncLedger::default();
        assert!(!ledger.knows("a.yaml"));
        ledger.record("a.yaml", &links(&["/r/x:1", "/r/y:1"]), false);
        ledger.record("b.yaml", &links(&["/r/y:1"]), false);
        let prunable = ledger.prunable("a.yaml");
        assert!(prunable.contains(b"/r/x:1".as_slice()));
        assert!(!prunable.contains(b"/r/y:1".as_slice()), "b lists it too");
        assert!(ledger.prunable("c.yaml").is_empty());
        // Without a prune the earlier links stay known; after one only the current ones.
        ledger.record("a.yaml", &links(&["/r/z:1"]), false);
        assert!(ledger.prunable("a.yaml").contains(b"/r/x:1".as_slice()));
        ledger.record("a.yaml", &links(&["/r/z:1"]), true);
        assert_eq!(
            ledger.prunable("a.yaml"),
            links(&["/r/z:1"]).into_iter().collect()
        );
    }

    #[test]
    fn links_made_by_convert_are_no_wishlists_to_prune() {
        let mut ledger = SyncLedger::default();
        ledger.record("a.yaml", &links(&["/r/x:1", "/r/y:1"]), false);
        ledger.record("b.yaml", &links(&["/r/x:1"]), false);
        assert!(ledger.claim(&links(&["/r/x:1", "/r/z:1"])));
        assert_eq!(
            ledger.prunable("a.yaml"),
            links(&["/r/y:1"]).into_iter().collect()
        );
        assert!(ledger.prunable("b.yaml").is_empty());
        assert!(!ledger.claim(&links(&["/r/x:1"])), "nothing left to claim");
    }

    #[test]
    fn the_ledger_survives_a_save_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync-ledger.json");
        assert!(!SyncLedger::load(&path).unwrap().knows("a.yaml"));
        let mut ledger = SyncLedger::default();
        ledger.record("a.yaml", &links(&["/r/x:1"]), false);
        ledger.save(&path).unwrap();
        assert!(SyncLedger::load(&path).unwrap().knows("a.yaml"));
        std::fs::write(&path, b"{not json").unwrap();
        let err = SyncLedger::load(&path).err().unwrap();
        assert!(format!("{err:#}").contains("sync-ledger.json"), "{err:#}");
    }
}
