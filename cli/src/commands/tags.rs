//! `tag`: named snapshots (history tags); `rollback` to one of them; `diff` between two;
//! `list-catalogs` of one.

use super::open_repo;
use crate::args::{DiffArgs, Global, ListCatalogsArgs, RollbackArgs, TagArgs};
use crate::output::{event_json, Output};
use anyhow::{bail, Context, Result};
use catalog_writer::hash::ContentHash;
use catalog_writer::namespace::CatalogRef;
use publisher::catalog_tree::catalog_tree;
use publisher::diff::{diff_side, Change, DiffOptions, TreeDiff};
use publisher::{CommitOutcome, Tag};
use serde_json::json;
use std::path::Path;

pub fn tag(home: &Path, g: &Global, a: &TagArgs, out: Output) -> Result<i32> {
    let repo = open_repo(home, &a.fqrn)?;
    let wait = !g.no_wait;
    if let Some(name) = &a.add {
        let t = repo
            .add_tag(name, a.revision, &a.description, wait)
            .with_context(|| format!("tag {}", a.fqrn))?;
        out.event(
            &format!("{}: revision {} tagged {}", a.fqrn, t.revision, t.name),
            event_json("tag-added", tag_json(&t)),
        );
    } else if let Some(name) = &a.remove {
        if !repo
            .remove_tag(name, wait)
            .with_context(|| format!("tag {}", a.fqrn))?
        {
            bail!("{}: no tag {name}", a.fqrn);
        }
        out.event(
            &format!("{}: tag {name} removed", a.fqrn),
            event_json("tag-removed", json!({"fqrn": a.fqrn, "name": name})),
        );
    } else {
        for t in repo.tags().with_context(|| format!("tags of {}", a.fqrn))? {
            out.event(
                &format!(
                    "{:<24} revision {:<6} {} {} {}",
                    t.name,
                    t.revision,
                    signer::utc_stamp(t.timestamp),
                    t.hash,
                    t.description
                ),
                event_json("tag", tag_json(&t)),
            );
        }
    }
    Ok(0)
}

pub fn rollback(home: &Path, g: &Global, a: &RollbackArgs, out: Output) -> Result<i32> {
    let repo = open_repo(home, &a.fqrn)?;
    let r = repo
        .roll_back(a.tag.as_deref(), !g.no_wait)
        .with_context(|| format!("rollback {}", a.fqrn))?;
    let p = &r.published;
    let removed: Vec<&str> = r.removed.iter().map(|t| t.name.as_str()).collect();
    out.event(
        &format!(
            "{}: revision {} is the tree of tag {} (revision {}); tags removed: {}",
            a.fqrn,
            p.revision,
            r.target.name,
            r.target.revision,
            if removed.is_empty() {
                "none".to_string()
            } else {
                removed.join(", ")
            }
        ),
        event_json(
            "rollback",
            json!({"fqrn": a.fqrn, "revision": p.revision, "root": p.root.hash.to_hex(),
                   "target": tag_json(&r.target),
                   "removed": r.removed.iter().map(tag_json).collect::<Vec<_>>()}),
        ),
    );
    let outcome = CommitOutcome::Published(r.published);
    super::gc::after_publish(&repo, &outcome, out);
    super::push::after_publish(&repo, &outcome, out)?;
    Ok(0)
}

pub fn diff(home: &Path, a: &DiffArgs, out: Output) -> Result<i32> {
    let store = super::storage_or_home(home, &a.fqrn, a.storage.as_deref())?;
    let context = || format!("diff {} {} --> {}", a.fqrn, a.from, a.to);
    let from = diff_side(store.as_ref(), &a.from).with_context(context)?;
    let to = diff_side(store.as_ref(), &a.to).with_context(context)?;
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
        out.event(&change.line(a.machine_readable), change_json(&change));
        Ok(())
    })
    .with_context(context)?;
    Ok(0)
}

pub fn list_catalogs(home: &Path, a: &ListCatalogsArgs, out: Output) -> Result<i32> {
    let store = super::storage_or_home(home, &a.fqrn, a.storage.as_deref())?;
    let side = match &a.root {
        Some(hash) => format!("@{hash}"),
        None => "trunk".to_owned(),
    };
    let root = match a.root {
        Some(_) => diff_side(store.as_ref(), &side)?.root,
        None => current_root(store.as_ref())?,
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
    .with_context(|| format!("list-catalogs {}", a.fqrn))?;
    Ok(0)
}

/// The root catalog the manifest in `store` names.
fn current_root(store: &dyn publisher::ObjectStore) -> Result<CatalogRef> {
    let bytes = store
        .get_root_file(".cvmfspublished")?
        .with_context(|| format!("{}: no .cvmfspublished", store.describe()))?;
    let m = signer::Manifest::parse(&bytes)?.manifest;
    let hash = ContentHash::from_hex(&m.root_catalog)
        .with_context(|| format!("{}: C is not a hash", store.describe()))?;
    Ok(CatalogRef {
        hash,
        size: m.root_size,
    })
}

/// `cvmfs_server diff -m -h`'s first line.
const MACHINE_LEGEND: &str = "# line descriptor: A - add, R - remove, M - modify, \
     S - statistics; modify flags: S - size, M - mode, T - timestamp, C - content, \
     L - symlink target; entry types: F - regular file, S - symbolic link, D - directory, \
     N - nested catalog";

fn change_json(change: &Change) -> serde_json::Value {
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
            let what: Vec<&str> = publisher::diff::DIFFERENCES
                .iter()
                .filter(|(bit, _, _)| differences & bit != 0)
                .map(|(_, _, word)| *word)
                .collect();
            event_json(
                "diff-change",
                json!({"op": "modify", "path": path, "type": to.type_word(),
                       "was": from.type_word(), "size": to.size, "changes": what}),
            )
        }
    }
}

fn tag_json(t: &Tag) -> serde_json::Value {
    json!({"name": t.name, "revision": t.revision, "root": t.hash.to_hex(),
           "timestamp": t.timestamp, "size": t.size, "description": t.description})
}
