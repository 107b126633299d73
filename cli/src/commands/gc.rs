//! `gc`: garbage collection of a garbage-collectable repository.

use super::open_repo;
use crate::args::{GcArgs, Global};
use crate::output::{event_json, Output};
use anyhow::{anyhow, bail, Context, Result};
use publisher::{GcOptions, Keep};
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
                parse_since(when, now_unix()).with_context(|| format!("--keep-since {when:?}"))?,
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
    let r = repo.gc(&opts).with_context(|| format!("gc {}", a.fqrn))?;
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
            a.fqrn,
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
            json!({"fqrn": a.fqrn, "revision": r.revision, "dry_run": r.dry_run,
                   "kept": r.kept.iter().map(|k| json!({"revision": k.revision,
                       "root": k.root.to_hex(), "timestamp": k.timestamp, "tags": k.tags}))
                       .collect::<Vec<_>>(),
                   "catalogs_kept": r.catalogs_kept, "objects_kept": r.objects_kept,
                   "objects_deleted": r.objects_deleted, "bytes_deleted": r.bytes_deleted,
                   "catalogs_deleted": r.catalogs_deleted, "objects_too_new": r.objects_too_new,
                   "reflog_removed": r.reflog_removed, "index_forgotten": r.index_forgotten,
                   "memos_forgotten": r.memos_forgotten,
                   "seconds": started.elapsed().as_secs_f64()}),
        ),
    );
    Ok(0)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
    let split = text.len().saturating_sub(1);
    let (number, unit) = (
        text.get(..split).unwrap_or(""),
        text.get(split..).unwrap_or(""),
    );
    let seconds: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("expected e.g. 3d, 12h, 90m, @1700000000, 2026-11-01 or 2026-11-01T12:00:00Z"),
    };
    let n: u32 = number
        .parse()
        .map_err(|_| anyhow!("expected a whole number before '{unit}'"))?;
    Ok(now.saturating_sub(i64::from(n).saturating_mul(seconds)))
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
