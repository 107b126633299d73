//! `push`: the published revision to an S3 bucket, now or after every publish.

use super::open_repo;
use crate::args::{Global, PushArgs};
use crate::output::{event_json, to_stderr, Counting, Follower, Output};
use anyhow::{anyhow, bail, Context, Result};
use publisher::{CommitOutcome, PushOptions, PushProgress, PushReport, Repository, S3Target};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub fn push(home: &Path, g: &Global, a: &PushArgs, out: Output) -> Result<i32> {
    if let Some(endpoint) = a.endpoint.as_deref().filter(|e| has_userinfo(e)) {
        // It would be kept in config.json (with --auto) and shown in errors.
        let scheme = endpoint.split_once("://").map_or("http", |(s, _)| s);
        bail!(
            "--endpoint {scheme}://…@…: credentials in the endpoint address are not taken; \
             give them in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        );
    }
    let mut repo = open_repo(home, &a.fqrn)?;
    if a.no_auto {
        repo.set_auto_push(None)?;
        out.event(
            &format!("{}: no push target; publishes stay local", a.fqrn),
            event_json("push-target", json!({"fqrn": a.fqrn, "target": null})),
        );
        return Ok(0);
    }
    let target = match &a.target {
        Some(url) => S3Target {
            endpoint: a.endpoint.clone(),
            region: a.region.clone(),
            allow_http: a.allow_http,
            single_pusher: a.single_pusher,
            public_read: a.public_read,
            profile: a.profile.clone(),
            ..S3Target::parse(url)?
        },
        None => {
            let target = repo.config().auto_push.clone().ok_or_else(|| {
                anyhow!(
                    "push {}: no target given and the repository has none (push FQRN \
                     s3://BUCKET --auto sets one)",
                    a.fqrn
                )
            })?;
            S3Target {
                profile: a.profile.clone().or(target.profile.clone()),
                ..target
            }
        }
    };
    let progress = Arc::new(PushProgress::default());
    let opts = |wait: bool| PushOptions {
        delete: a.delete,
        jobs: a.jobs,
        wait,
        progress: Some(Arc::clone(&progress)),
        ..PushOptions::new(target.clone())
    };
    let started = Instant::now();
    let following = follow(&a.fqrn, &target, Arc::clone(&progress), out);
    let r = super::waiting(&a.fqrn, !g.no_wait, out, |w| repo.push(&opts(w)))
        .with_context(|| format!("push {} to {}", a.fqrn, target.describe()));
    drop(following);
    let r = r?;
    report(&a.fqrn, &target, &r, started, out)?;
    if a.auto {
        repo.set_auto_push(Some(target.clone()))?;
        out.event(
            &format!(
                "{}: every new revision is pushed to {} from now on",
                a.fqrn,
                target.describe()
            ),
            event_json(
                "push-target",
                json!({"fqrn": a.fqrn, "target": target.describe()}),
            ),
        );
    }
    Ok(0)
}

/// After a publish: the push to the repository's push target, if it has one. Also after one
/// that changed nothing, so that the rerun of a command whose push failed (a CI job's retry)
/// brings the bucket up to date instead of succeeding with the bucket behind; that costs a
/// look at the bucket's manifest, and says nothing when the bucket is current. A failure is
/// an error (the revision stands locally; a rerun of `push` catches up).
pub fn after_publish(repo: &Repository, outcome: &CommitOutcome, out: Output) -> Result<()> {
    let Some(target) = &repo.config().auto_push else {
        return Ok(());
    };
    let (revision, made) = match outcome {
        CommitOutcome::Published(p) => (p.revision, true),
        CommitOutcome::Unchanged { revision } => (*revision, false),
    };
    let started = Instant::now();
    let progress = Arc::new(PushProgress::default());
    let following = follow(repo.fqrn(), target, Arc::clone(&progress), out);
    let r = super::waiting(repo.fqrn(), true, out, |w| {
        repo.auto_push(Some(Arc::clone(&progress)), w)
    })
    .with_context(|| {
        format!(
            "{}: revision {revision} is published locally, but its push to {} failed (`push {}` \
             retries)",
            repo.fqrn(),
            target.describe(),
            repo.fqrn()
        )
    });
    drop(following);
    match r? {
        Some(r) if made || !nothing_written(&r) => report(repo.fqrn(), target, &r, started, out),
        _ => Ok(()),
    }
}

/// Whether a push found the bucket current and wrote nothing.
fn nothing_written(r: &PushReport) -> bool {
    !r.manifest_written
        && r.objects_uploaded == 0
        && r.objects_deleted == 0
        && r.stale_uploads_aborted == 0
        && r.root_files_written.is_empty()
        && r.probe_left.is_none()
}

/// A bar of the objects uploaded, shown while the returned guard lives.
fn follow(fqrn: &str, target: &S3Target, progress: Arc<PushProgress>, out: Output) -> Follower {
    let bar = out.progress(
        format!("{fqrn}: push to {}", target.describe()),
        Some(0),
        Counting::Items("objects"),
    );
    Follower::start(bar, move |bar| {
        bar.set_length(progress.objects_to_upload.load(Ordering::Relaxed));
        bar.set_position(progress.objects_uploaded.load(Ordering::Relaxed));
    })
}

fn report(
    fqrn: &str,
    target: &S3Target,
    r: &PushReport,
    started: Instant,
    out: Output,
) -> Result<()> {
    let secs = started.elapsed().as_secs_f64();
    let to = target.describe();
    let text = if r.superseded {
        format!(
            "{fqrn} -> {to}: revision {} (was {}), published and pushed meanwhile from another \
             home sharing the storage; {} objects uploaded ({:.1} MB); {secs:.2} s",
            r.revision,
            r.remote_revision
                .map_or("no repository".into(), |n| format!("revision {n}")),
            r.objects_uploaded,
            r.bytes_uploaded as f64 / 1e6,
        )
    } else if nothing_written(r) {
        format!(
            "{fqrn} -> {to}: already at revision {}; {secs:.2} s",
            r.revision
        )
    } else {
        let before = match r.remote_revision {
            Some(n) => format!("revision {n}"),
            None => "no repository".to_string(),
        };
        format!(
            "{fqrn} -> {to}: revision {} (was {before}); {} objects uploaded ({:.1} MB), {} \
             already there{}{}{}{}{}; {secs:.2} s",
            r.revision,
            r.objects_uploaded,
            r.bytes_uploaded as f64 / 1e6,
            r.objects_present,
            if r.manifest_written {
                ""
            } else {
                ", manifest unchanged"
            },
            match r.root_files_written.as_slice() {
                [] => String::new(),
                files => format!(", {} updated", files.join(" ")),
            },
            match r.objects_deleted {
                0 => String::new(),
                n => format!(", {n} objects deleted"),
            },
            match r.objects_spared {
                0 => String::new(),
                n => format!(
                    ", {n} objects the storage lacks kept (a kept revision references them)"
                ),
            },
            match r.stale_uploads_aborted {
                0 => String::new(),
                n => format!(", {n} stale multipart uploads (of killed pushes) aborted"),
            },
        )
    };
    if let Some(e) = &r.stale_uploads_error {
        // The revision is pushed; what a killed push left stays until the next one.
        to_stderr(&format!(
            "cvmfs-oci: warning: {fqrn} -> {to}: stale multipart uploads not cleaned up: {e}"
        ));
    }
    if let Some(e) = &r.probe_left {
        // The revision is pushed; the probe key is harmless but stays.
        to_stderr(&format!(
            "cvmfs-oci: warning: {fqrn} -> {to}: the probe of conditional writes stays in the \
             bucket (24 bytes; every push probes unless --single-pusher): {e}"
        ));
    }
    let mut fields = serde_json::to_value(r)?;
    fields["fqrn"] = json!(fqrn);
    fields["target"] = json!(to);
    fields["seconds"] = json!(secs);
    out.event(&text, event_json("push", fields));
    Ok(())
}

/// Whether a URL carries `user[:password]@` before its host.
fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.contains('@')
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_with_credentials_are_recognised() {
        assert!(super::has_userinfo("http://u:SECRET@127.0.0.1:9000"));
        assert!(super::has_userinfo("u@host"));
        assert!(!super::has_userinfo("https://s3.example.org/path@x"));
        assert!(!super::has_userinfo("http://127.0.0.1:9000"));
    }
}
