//! `list-catalogs`: the nested-catalog tree of a revision, visited in the order of CVMFS's
//! `cvmfs_swissknife lsrepo` (what `cvmfs_server list-catalogs` runs): a catalog, then its
//! nested catalogs, taken from a stack, so the last one listed in `nested_catalogs` comes
//! first.

use crate::catalogs::{load_catalog, nested_links};
use crate::error::{Error, Result};
use crate::store::ObjectStore;
use catalog_writer::hash::ContentHash;
use catalog_writer::namespace::CatalogRef;
use catalog_writer::pathhash::display;

/// One catalog of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogNode {
    /// 0 for the root catalog, +1 per nesting.
    pub level: usize,
    /// `/` for the root catalog.
    pub mountpoint: String,
    pub hash: ContentHash,
    /// Size of the inflated SQLite file, as `lsrepo -s` shows it.
    pub size: u64,
    /// Rows of its `catalog` table (`lsrepo -e`).
    pub entries: u64,
}

impl CatalogNode {
    /// `lsrepo`'s line: tree drawing (`tree`), then hash (`hash`), size (`size`, `NB`) and
    /// entries (`entries`) when asked for, then the mountpoint.
    pub fn line(&self, tree: bool, hash: bool, size: bool, entries: bool) -> String {
        let mut out = String::new();
        if tree && self.level > 0 {
            out.push_str(&"\u{2502}  ".repeat(self.level - 1));
            out.push_str("\u{251c}\u{2500} ");
        }
        if hash {
            out.push_str(&format!("{} ", self.hash));
        }
        if size {
            out.push_str(&format!("{}B ", self.size));
        }
        if entries {
            out.push_str(&format!("{} ", self.entries));
        }
        out.push_str(&self.mountpoint);
        out
    }
}

/// Visits every catalog of the tree under `root`, handing each to `visit` as it is read.
pub fn catalog_tree(
    store: &dyn ObjectStore,
    root: CatalogRef,
    visit: &mut dyn FnMut(CatalogNode) -> Result<()>,
) -> Result<()> {
    let mut stack = vec![(0usize, Vec::new(), root)];
    // A catalog names its own mount point in its rows, so one catalog cannot serve two: a
    // repeated one is a damaged (or hostile) tree, which would otherwise be walked once per
    // path to it, exponentially many times.
    let mut seen = std::collections::HashMap::new();
    while let Some((level, mountpoint, cref)) = stack.pop() {
        let shown = display(&mountpoint);
        if let Some(first) = seen.insert(cref.hash, shown.clone()) {
            return Err(Error::corrupt(
                format!("catalog {}", cref.hash),
                format!("nested both at {first} and at {shown}"),
            ));
        }
        let what = format!("catalog {} for {shown}", cref.hash);
        let catalog = load_catalog(store, &cref)?;
        let rows: i64 = catalog
            .conn()
            .query_row("SELECT count(*) FROM catalog", [], |r| r.get(0))
            .map_err(|e| Error::sql(what.as_str(), e))?;
        for (path, nested) in nested_links(&catalog, &what)? {
            stack.push((level + 1, path, nested));
        }
        visit(CatalogNode {
            level,
            mountpoint: shown,
            hash: cref.hash,
            size: catalog.size,
            entries: u64::try_from(rows).unwrap_or(0),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalStore;
    use crate::store::StoreObjects;
    use catalog_writer::entry::Entry;
    use catalog_writer::hash::Suffix;
    use catalog_writer::namespace::{CommitOptions, Namespace};
    use catalog_writer::tree::{Dir, Node};

    #[test]
    fn a_catalog_mounted_twice_is_an_error_not_walked_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path()).unwrap();
        let objects = StoreObjects(&store);
        let top = Entry::directory(0o755, 0, 0, 1);
        let mut tree = Dir::new(top.clone());
        let mut nested = Dir::new(top.clone());
        let marker = catalog_writer::rows::marker_entry(&top);
        nested
            .children
            .insert(b".cvmfscatalog".to_vec(), Node::Leaf(marker));
        tree.children.insert(b"d".to_vec(), Node::Dir(nested));
        tree.children
            .insert(b"c".to_vec(), Node::Dir(Dir::new(top.clone())));
        let mut ns = Namespace::empty(1);
        ns.replace(b"", Node::Dir(tree), &top, &objects).unwrap();
        let opts = CommitOptions {
            revision: 2,
            timestamp: 1,
            ttl: 240,
            max_entries: 0,
            apply_dirtab: false,
        };
        let root = ns.commit(&opts, &objects).unwrap().root;
        let mut count = 0;
        let mut visit = |_| {
            count += 1;
            Ok(())
        };
        catalog_tree(&store, root, &mut visit).unwrap();
        assert_eq!(count, 2);
        // The root nests /d's catalog a second time at /c.
        let mut db = catalog_writer::verify::read_catalog(&root, &objects).unwrap();
        let d = db.nested[0].clone();
        db.nested.push(catalog_writer::sql::NestedRow {
            path: b"/c".to_vec(),
            ..d
        });
        let raw = catalog_writer::sql::write(&db, "edited").unwrap();
        let z = catalog_writer::zlib::compress(&raw);
        let hash = ContentHash::of(&z);
        store.put(&hash, Suffix::Catalog, &z).unwrap();
        let twice = CatalogRef {
            hash,
            size: raw.len() as u64,
        };
        let err = catalog_tree(&store, twice, &mut |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("nested both at"), "{err}");
    }

    #[test]
    fn lines_as_lsrepo_prints_them() {
        let node = |level: usize, mountpoint: &str| CatalogNode {
            level,
            mountpoint: mountpoint.to_owned(),
            hash: ContentHash([0xab; 20]),
            size: 4096,
            entries: 7,
        };
        assert_eq!(node(0, "/").line(true, false, false, false), "/");
        assert_eq!(node(1, "/a").line(true, false, false, false), "├─ /a");
        assert_eq!(
            node(3, "/a/b/c").line(true, false, true, true),
            "│  │  ├─ 4096B 7 /a/b/c"
        );
        assert_eq!(
            node(1, "/a").line(false, true, false, false),
            format!("{} /a", "ab".repeat(20))
        );
    }
}
