//! `push`: the published revision to an S3 bucket.

use super::open_repo;
use crate::args::{Global, PushArgs};
use crate::output::{event_json, Output};
use anyhow::{Context, Result};
use publisher::{PushOptions, S3Target};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

pub fn push(home: &Path, g: &Global, a: &PushArgs, out: Output) -> Result<i32> {
    let repo = open_repo(home, &a.fqrn)?;
    let target = S3Target {
        endpoint: a.endpoint.clone(),
        region: a.region.clone(),
        allow_http: a.allow_http,
        public_read: a.public_read,
        ..S3Target::parse(&a.target)?
    };
    let opts = PushOptions {
        delete: a.delete,
        jobs: a.jobs,
        wait: !g.no_wait,
        ..PushOptions::new(target)
    };
    let started = Instant::now();
    let r = repo
        .push(&opts)
        .with_context(|| format!("push {} to {}", a.fqrn, a.target))?;
    let secs = started.elapsed().as_secs_f64();
    let before = match r.remote_revision {
        Some(n) => format!("revision {n}"),
        None => "no repository".to_string(),
    };
    let text = if !r.manifest_written && r.objects_uploaded == 0 && r.objects_deleted == 0 {
        format!(
            "{} -> {}: already at revision {}; {secs:.2} s",
            a.fqrn, a.target, r.revision
        )
    } else {
        format!(
            "{} -> {}: revision {} (was {before}); {} objects uploaded ({:.1} MB), {} already \
         there{}{}; {secs:.2} s",
            a.fqrn,
            a.target,
            r.revision,
            r.objects_uploaded,
            r.bytes_uploaded as f64 / 1e6,
            r.objects_present,
            if r.manifest_written {
                ""
            } else {
                ", manifest unchanged"
            },
            match r.objects_deleted {
                0 => String::new(),
                n => format!(", {n} objects deleted"),
            },
        )
    };
    let mut fields = serde_json::to_value(&r)?;
    fields["fqrn"] = json!(a.fqrn);
    fields["target"] = json!(a.target);
    fields["seconds"] = json!(secs);
    out.event(&text, event_json("push", fields));
    Ok(0)
}
