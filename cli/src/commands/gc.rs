//! `gc`: garbage collection of a garbage-collectable repository.

use super::{open_repo, unix_now};
use crate::args::{GcArgs, Global};
use crate::output::{event_json, Output};
use anyhow::{anyhow, bail, Context, Result};
use publisher::{CommitOutcome, GcOptions, GcReport, Keep, Repository};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// What `cvmfs_server gc` keeps when given neither `-r` nor `-t`.
const DEFAULT_KEEP_SINCE: &str = "3d";

pub fn gc(home: &Path, g: &Global, a: &GcArgs, out: Output) -> Result<i32> {
    let repo = open_repo(home, &a.fqrn)?;
    let keep = match (a.keep_revisions, a.keep_since.as_deref()) {
        (Some(n), _) => Keep::Revisions(n),
        (None, when) => {
            let when = when.unwrap_or(DEFAULT_KEEP_SINCE);
            Keep::Since(
                parse_since(when, unix_now()).with_context(|| format!("--keep-since {when:?}"))?,
            )
        }
    };
    let opts = GcOptions {
        keep,
        dry_run: a.dry_run,
        wait: !g.no_wait,
        deletion_log: a.deletion_log.clone(),
    };
    let started = Instant::now();
    let r = super::waiting(&a.fqrn, opts.wait, out, |wait| {
        repo.gc(&GcOptions {
            wait,
            ..opts.clone()
        })
    })
    .with_context(|| format!("gc {}", a.fqrn))?;
    if !r.incomplete_dropped.is_empty() {
        let list: Vec<String> = r.incomplete_dropped.iter().map(u64::to_string).collect();
        out.say(&format!(
            "note: revision(s) {} not kept: catalogs of theirs were gone already (an earlier \
             collection stopped half-way?); what is left of them is deleted",
            list.join(", ")
        ));
    }
    report(&a.fqrn, &r, started, out);
    Ok(0)
}

fn report(fqrn: &str, r: &GcReport, started: Instant, out: Output) {
    let kept: Vec<String> = r
        .kept
        .iter()
        .map(|k| match k.tags.is_empty() {
            true => k.revision.to_string(),
            false => format!("{} ({})", k.revision, k.tags.join(", ")),
        })
        .collect();
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    out.event(
        &format!(
            "{}: revision {}; kept revisions {}: {} catalogs, {} objects; {verb} {} objects \
             ({} catalogs, {:.1} MB){}; {:.2} s",
            fqrn,
            r.revision,
            kept.join(", "),
            r.catalogs_kept,
            r.objects_kept,
            r.objects_deleted,
            r.catalogs_deleted,
            r.bytes_deleted as f64 / 1e6,
            match r.objects_too_new {
                0 => String::new(),
                n => format!(", {n} unreferenced but newer than the collection spared"),
            },
            started.elapsed().as_secs_f64()
        ),
        event_json(
            "gc",
            json!({"fqrn": fqrn, "revision": r.revision, "dry_run": r.dry_run,
                   "kept": r.kept.iter().map(|k| json!({"revision": k.revision,
                       "root": k.root.to_hex(), "timestamp": k.timestamp, "tags": k.tags}))
                       .collect::<Vec<_>>(),
                   "catalogs_kept": r.catalogs_kept, "objects_kept": r.objects_kept,
                   "objects_deleted": r.objects_deleted, "bytes_deleted": r.bytes_deleted,
                   "catalogs_deleted": r.catalogs_deleted, "objects_too_new": r.objects_too_new,
                   "reflog_removed": r.reflog_removed, "index_forgotten": r.index_forgotten,
                   "memos_forgotten": r.memos_forgotten, "scratch_removed": r.scratch_removed,
                   "incomplete_dropped": r.incomplete_dropped,
                   "seconds": started.elapsed().as_secs_f64()}),
        ),
    );
}

/// `3d`, `12h`, `90m`, `30s`, `2w` (that long before `now`), `@UNIX`, an RFC 3339 time or a
/// date (`2026-11-01`, midnight UTC) → unix seconds.
fn parse_since(text: &str, now: i64) -> Result<i64> {
    if let Some(unix) = text.strip_prefix('@') {
        return unix
            .parse()
            .map_err(|_| anyhow!("not unix seconds after '@'"));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp());
    }
    let ago = parse_duration(text).map_err(|_| {
        anyhow!("expected e.g. 3d, 12h, 90m, @1700000000, 2026-11-01 or 2026-11-01T12:00:00Z")
    })?;
    Ok(now.saturating_sub(i64::try_from(ago).unwrap_or(i64::MAX)))
}

/// `30s`, `90m`, `12h`, `3d`, `2w` → seconds.
pub fn parse_duration(text: &str) -> Result<u64> {
    let split = text.len().saturating_sub(1);
    let (number, unit) = (
        text.get(..split).unwrap_or(""),
        text.get(split..).unwrap_or(""),
    );
    let seconds: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("expected a duration such as 3d, 12h, 90m or 30s"),
    };
    let n: u32 = number
        .parse()
        .map_err(|_| anyhow!("expected a whole number before '{unit}'"))?;
    Ok(u64::from(n) * seconds)
}

/// Runs the automatic garbage collection after a publish that made a revision, if the
/// repository has one configured and it is due; a failure is a warning (the publish stands).
pub fn after_publish(repo: &Repository, outcome: &CommitOutcome, out: Output) {
    if !matches!(outcome, CommitOutcome::Published(_)) {
        return;
    }
    let started = Instant::now();
    match repo.auto_gc() {
        Ok(Some(r)) => report(repo.fqrn(), &r, started, out),
        Ok(None) => {}
        Err(e) => crate::output::to_stderr(&format!(
            "cvmfs-oci: warning: automatic garbage collection of {}: {e}",
            repo.fqrn()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn keep_since_accepts_durations_unix_and_dates() {
        let now = 1_800_000_000;
        assert_eq!(parse_since("3d", now).unwrap(), now - 3 * 86_400);
        assert_eq!(parse_since("12h", now).unwrap(), now - 12 * 3600);
        assert_eq!(parse_since("90m", now).unwrap(), now - 90 * 60);
        assert_eq!(parse_since("2w", now).unwrap(), now - 14 * 86_400);
        assert_eq!(parse_since("@1700000000", now).unwrap(), 1_700_000_000);
        assert_eq!(parse_since("2023-11-14", now).unwrap(), 1_699_920_000);
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000
        );
        for bad in ["", "d", "3x", "-", "-3d", "@x", "3.5d", "yesterday"] {
            assert!(parse_since(bad, now).is_err(), "{bad:?}");
        }
    }
}
