//! Read-only views of revisions: `diff` between two (`cvmfs_server diff`) and
//! `list-catalogs` of one (`cvmfs_server list-catalogs`), of the home's repository or of any
//! storage directory or URL, once its signatures are verified as `check` verifies them.

use super::trusted_storage;
use crate::args::{DiffArgs, ListCatalogsArgs};
use crate::output::{event_json, Output};
use anyhow::{Context, Result};
use publisher::catalog_tree::catalog_tree;
use publisher::diff::{diff_side, manifest_root, Change, DiffOptions, TreeDiff};
use serde_json::json;
use std::path::Path;

pub fn diff(home: &Path, a: &DiffArgs, out: Output) -> Result<i32> {
    let source = trusted_storage(home, "diff", &a.fqrn, a.storage.as_deref(), &a.key)?;
    let store = source.store;
    let context = || format!("diff {} {} --> {}", a.fqrn, a.from, a.to);
    let manifest = publisher::verified_manifest(store.as_ref(), &a.fqrn, &source.masters)
        .with_context(context)?;
    let from = diff_side(store.as_ref(), &manifest, &a.from).with_context(context)?;
    let to = diff_side(store.as_ref(), &manifest, &a.to).with_context(context)?;
    if a.header {
        out.say(&match a.machine_readable {
            true => MACHINE_LEGEND.to_string(),
            false => format!("DELTA: {} --> {}", from.header(), to.header()),
        });
    }
    let options = DiffOptions {
        ignore_timediff: a.ignore_timediff,
    };
    let diff = TreeDiff::open(store.as_ref(), &from.root, &to.root).with_context(context)?;
    let delta = diff.counts().with_context(context)?;
    let counts = [
        ("regular_files", delta.regular_files),
        ("symlinks", delta.symlinks),
        ("directories", delta.directories),
        ("catalogs", delta.catalogs),
    ];
    for (line, (name, n)) in delta.lines(a.machine_readable).iter().zip(counts) {
        out.event(
            line,
            event_json("diff-count", json!({"counter": name, "delta": n})),
        );
    }
    diff.run(options, &mut |change| {
        // One line whatever the path holds: a newline in a name must not make a line of its
        // own in `-m` output a script parses.
        let line = crate::output::printable(&change.line(a.machine_readable));
        out.event(&line, change_json(&change));
        Ok(())
    })
    .with_context(context)?;
    Ok(0)
}

pub fn list_catalogs(home: &Path, a: &ListCatalogsArgs, out: Output) -> Result<i32> {
    let source = trusted_storage(home, "list-catalogs", &a.fqrn, a.storage.as_deref(), &a.key)?;
    let store = source.store;
    let context = || format!("list-catalogs {}", a.fqrn);
    // Verified even when --root names the catalog: the tree is then shown as this
    // repository's, so the storage must be the repository.
    let manifest = publisher::verified_manifest(store.as_ref(), &a.fqrn, &source.masters)
        .with_context(context)?;
    let root = match &a.root {
        Some(hash) => diff_side(store.as_ref(), &manifest, &format!("@{hash}"))?.root,
        None => manifest_root(&manifest)?,
    };
    catalog_tree(store.as_ref(), root, &mut |node| {
        out.event(
            &node.line(!a.flat, a.hash, a.size, a.entries),
            event_json(
                "catalog",
                json!({"mountpoint": node.mountpoint, "level": node.level,
                       "hash": node.hash.to_hex(), "size": node.size, "entries": node.entries}),
            ),
        );
        Ok(())
    })
    .with_context(context)?;
    Ok(0)
}

/// `cvmfs_server diff -m -h`'s first line.
const MACHINE_LEGEND: &str = "# line descriptor: A - add, R - remove, M - modify, \
     S - statistics; modify flags: S - size, M - mode, T - timestamp, C - content, \
     L - symlink target; entry types: F - regular file, S - symbolic link, D - directory, \
     N - nested catalog";

fn change_json(change: &Change) -> serde_json::Value {
    let mut event = change_fields(change);
    // A name that is not UTF-8 shows with U+FFFD in `path`: its bytes, in hex, tell such
    // names apart.
    if std::str::from_utf8(change.path()).is_err() {
        let hex: String = change.path().iter().map(|b| format!("{b:02x}")).collect();
        event["path_hex"] = json!(hex);
    }
    event
}

fn change_fields(change: &Change) -> serde_json::Value {
    let path = catalog_writer::pathhash::display(change.path());
    match change {
        Change::Added { entry, .. } | Change::Removed { entry, .. } => {
            let op = match change {
                Change::Added { .. } => "add",
                _ => "remove",
            };
            event_json(
                "diff-change",
                json!({"op": op, "path": path, "type": entry.type_word(), "size": entry.size}),
            )
        }
        Change::Modified {
            from,
            to,
            differences,
            ..
        } => {
            let what = publisher::diff::difference_words(*differences);
            event_json(
                "diff-change",
                json!({"op": "modify", "path": path, "type": to.type_word(),
                       "was": from.type_word(), "size": to.size, "changes": what}),
            )
        }
    }
}
