//! `tag`: named snapshots (history tags); `rollback` to one of them.

use super::{open_repo, waiting};
use crate::args::{Global, RollbackArgs, TagArgs};
use crate::output::{event_json, Output};
use anyhow::{bail, Context, Result};
use publisher::{CommitOutcome, Tag};
use serde_json::json;
use std::path::Path;

pub fn tag(home: &Path, g: &Global, a: &TagArgs, out: Output) -> Result<i32> {
    let repo = open_repo(home, &a.fqrn)?;
    let wait = !g.no_wait;
    if let Some(name) = &a.add {
        let t = waiting(&a.fqrn, wait, out, |w| {
            repo.add_tag(name, a.revision, &a.description, w)
        })
        .with_context(|| format!("tag {}", a.fqrn))?;
        out.event(
            &format!("{}: revision {} tagged {}", a.fqrn, t.revision, t.name),
            event_json("tag-added", tag_json(&t)),
        );
    } else if let Some(name) = &a.remove {
        if !waiting(&a.fqrn, wait, out, |w| repo.remove_tag(name, w))
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
    let r = waiting(&a.fqrn, !g.no_wait, out, |w| {
        repo.roll_back(a.tag.as_deref(), w)
    })
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

fn tag_json(t: &Tag) -> serde_json::Value {
    json!({"name": t.name, "revision": t.revision, "root": t.hash.to_hex(),
           "timestamp": t.timestamp, "size": t.size, "description": t.description})
}
