//! Planning a batch: what each reference stands for (one job per platform image), what the
//! repository already has of it, and the configs of the images to convert. Registry requests
//! run several at a time ([`concurrent`]); the repository is asked in between, so images
//! already converted cost no config request.

use super::concurrent;
use crate::output::{event_json, Output};
use anyhow::{anyhow, Result};
use catalog_writer::entry::Entry;
use ingest::convert::{self as layout, Status};
use ingest::image::{
    ImageManifest, ImageRef, ImageSource, PlatformSelection, ResolvedImage, Sources,
};
use publisher::{Snapshot, Transaction};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// Where [`plan`] looks up what the repository already has: the tree of a transaction, or a
/// snapshot of the published one (a forecast, which takes no lock).
pub(super) trait Tree {
    fn entry(&mut self, path: &[u8]) -> Result<Option<Entry>>;
}

impl Tree for Transaction {
    fn entry(&mut self, path: &[u8]) -> Result<Option<Entry>> {
        let (ns, objects) = self.namespace_and_objects();
        Ok(ns.entry(path, &objects)?)
    }
}

impl Tree for Snapshot {
    fn entry(&mut self, path: &[u8]) -> Result<Option<Entry>> {
        Ok(Snapshot::entry(self, path)?)
    }
}

/// One platform image of a reference and what it needs.
pub(super) struct Job {
    pub(super) source: Arc<dyn ImageSource>,
    pub(super) name: String,
    pub(super) placement: layout::Placement,
    pub(super) status: Status,
    /// The manifest, until [`plan`] has made it part of `image`.
    pub(super) manifest: Option<ImageManifest>,
    /// Manifest + config, unless the image is already complete.
    pub(super) image: Option<ResolvedImage>,
    /// This job flattens its image (the first job of its flat directory that needs it).
    pub(super) flatten: bool,
}

/// Resolves each reference to jobs, one per platform image, checking what the repository
/// has (see the module doc).
pub(super) fn plan(
    txn: &mut dyn Tree,
    sources: &Sources,
    refs: &[String],
    selection: &PlatformSelection,
    out: Output,
) -> Vec<Result<Vec<Job>>> {
    let resolved = concurrent::map(refs, concurrent::REQUESTS_IN_FLIGHT, |reference| {
        resolve_reference(sources, reference, selection)
    });
    let mut planned: Vec<Result<Vec<Job>>> = resolved
        .into_iter()
        .map(|r| {
            r.and_then(|(source, manifests)| {
                warn_links(&manifests, selection, out);
                check_present(txn, source, manifests, selection)
            })
        })
        .collect();
    reject_shared_links(&mut planned, refs);
    // Every job that needs a config, with the index of its reference.
    let todo: Vec<(usize, &Job)> = planned
        .iter()
        .enumerate()
        .filter_map(|(i, jobs)| Some((i, jobs.as_ref().ok()?)))
        .flat_map(|(i, jobs)| jobs.iter().map(move |j| (i, j)))
        .filter(|(_, j)| j.status != Status::Complete)
        .collect();
    let configs = concurrent::map(&todo, concurrent::REQUESTS_IN_FLIGHT, |(_, job)| {
        let manifest = job
            .manifest
            .as_ref()
            .ok_or_else(|| anyhow!("{}: no manifest", job.name))?;
        let config = job.source.fetch_config(manifest)?;
        Ok::<_, anyhow::Error>(ResolvedImage::new(manifest.clone(), config)?)
    });
    let owners: Vec<usize> = todo.iter().map(|(i, _)| *i).collect();
    attach_configs(&mut planned, owners.into_iter().zip(configs));
    planned
}

/// Two references of one batch whose different images would take one link (OCI layouts in
/// two directories of one name: `oci:a/layout:1` and `oci:b/layout:1` both link
/// `/local/layout:1`): the later one fails, rather than one image being published with its
/// link silently taken by the other.
fn reject_shared_links(planned: &mut [Result<Vec<Job>>], refs: &[String]) {
    let mut owners: HashMap<Vec<u8>, (usize, Vec<u8>)> = HashMap::new();
    for (i, planned_ref) in planned.iter_mut().enumerate() {
        let Ok(jobs) = planned_ref else { continue };
        let clash = jobs.iter().find_map(|job| {
            job.placement.links.iter().find_map(|link| {
                let (owner, flat) = owners.get(&link.path)?;
                (*owner != i && *flat != job.placement.flat_dir).then_some((&link.path, *owner))
            })
        });
        if let Some((path, owner)) = clash {
            let (me, other) = (refs.get(i), refs.get(owner));
            *planned_ref = Err(anyhow!(
                "{}: its link {} is also the link of {}, another image in this batch (OCI \
                 layouts in two directories of one name take one link: rename one directory)",
                me.map_or("?", String::as_str),
                String::from_utf8_lossy(path),
                other.map_or("?", String::as_str),
            ));
            continue;
        }
        for job in jobs.iter() {
            for link in &job.placement.links {
                owners
                    .entry(link.path.clone())
                    .or_insert_with(|| (i, job.placement.flat_dir.clone()));
            }
        }
    }
}

/// Gives each job that needs one its image (manifest + config), in the order `plan` asked
/// for them; a reference with a config that could not be had fails as a whole.
fn attach_configs(
    planned: &mut [Result<Vec<Job>>],
    mut configs: impl Iterator<Item = (usize, Result<ResolvedImage>)>,
) {
    for (i, jobs) in planned.iter_mut().enumerate() {
        let Ok(list) = jobs else { continue };
        let mut failure = None;
        for job in list.iter_mut().filter(|j| j.status != Status::Complete) {
            match configs.next() {
                Some((owner, Ok(image))) if owner == i => {
                    job.image = Some(image);
                    job.manifest = None;
                }
                Some((_, Err(e))) => failure = failure.or(Some(e)),
                _ => failure = failure.or(Some(anyhow!("{}: config not fetched", job.name))),
            }
        }
        if let Some(e) = failure {
            *jobs = Err(e);
        }
    }
}

/// The source of `reference` and its manifests (one per platform selected).
fn resolve_reference(
    sources: &Sources,
    reference: &str,
    selection: &PlatformSelection,
) -> Result<(Arc<dyn ImageSource>, Vec<ImageManifest>)> {
    let image_ref = ImageRef::parse(reference)?;
    let source: Arc<dyn ImageSource> = Arc::from(sources.open(&image_ref)?);
    let manifests = source.resolve_manifests(selection)?;
    Ok((source, manifests))
}

/// The most layers of the manifests `reference` resolves to (one request, or two for an index).
pub(super) fn layer_count(
    sources: &Sources,
    reference: &str,
    selection: &PlatformSelection,
) -> Result<usize> {
    let (_, manifests) = resolve_reference(sources, reference, selection)?;
    Ok(manifests.iter().map(|m| m.layers.len()).max().unwrap_or(0))
}

/// Index entries of `--all-platforms` left out because another entry has their link name
/// (`arm64` and `arm64/v8`), and a plain `TAG` not made because the index lacks the host's
/// platform: said, so that no image or link goes missing without a word.
fn warn_links(manifests: &[ImageManifest], selection: &PlatformSelection, out: Output) {
    let warn = |reference: &str, w: String| {
        out.notice(
            &format!("cvmfs-oci: warning: {w}"),
            event_json("warning", json!({"image": reference, "warning": w})),
        )
    };
    for m in manifests {
        for w in m.same_link_warnings() {
            warn(&m.reference, w);
        }
    }
    if let (Some(m), Some(w)) = (
        manifests.first(),
        layout::missing_plain_tag(manifests, selection),
    ) {
        warn(&m.reference, w);
    }
}

/// Jobs for resolved manifests, with what the repository already has of each.
fn check_present(
    txn: &mut dyn Tree,
    source: Arc<dyn ImageSource>,
    manifests: Vec<ImageManifest>,
    selection: &PlatformSelection,
) -> Result<Vec<Job>> {
    // Names the layout cannot hold fail the reference here, before any layer is read.
    let placements = layout::placements(&manifests, selection)?;
    let mut jobs = Vec::new();
    for (manifest, placement) in manifests.into_iter().zip(placements) {
        let status =
            layout::conversion_status(&placement, &manifest.manifest_bytes, |p| txn.entry(p))?;
        jobs.push(Job {
            source: source.clone(),
            name: display_name(&manifest),
            placement,
            status,
            manifest: Some(manifest),
            image: None,
            flatten: status == Status::Missing,
        });
    }
    Ok(jobs)
}

fn display_name(m: &ImageManifest) -> String {
    match &m.platform {
        Some(p) if m.from_index => format!("{} [{}]", m.reference, p),
        _ => m.reference.clone(),
    }
}
