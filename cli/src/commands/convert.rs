//! `convert` and `sync`: container images into the DUCC layout, all images of one call in one
//! revision. A failing image is reported and skipped; the exit code says whether all succeeded.

use super::{new_pipeline, open_repo, report_outcome, unix_now};
use crate::args::{ConvertArgs, Global, RegistryArgs, SyncArgs, TuningArgs};
use crate::output::{event_json, Output};
use anyhow::{anyhow, bail, Context, Result};
use catalog_writer::namespace::Namespace;
use ingest::convert::{self as layout, Status};
use ingest::image::{
    open_uncompressed_layer, AuthStore, ImageManifest, ImageRef, ImageSource, Platform,
    PlatformSelection, RegistryOptions, ResolvedImage, Sources,
};
use ingest::pipeline::ObjectPipeline;
use ingest::MemoContext;
use publisher::{CommitSettings, Repository, StoreObjects, Transaction};
use serde_json::json;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Counts for the closing summary.
#[derive(Default)]
struct Summary {
    converted: usize,
    linked: usize,
    skipped: usize,
    failed: usize,
    pruned: usize,
}

pub fn convert(home: &Path, g: &Global, a: &ConvertArgs, out: Output) -> Result<i32> {
    let selection = selection(a.platform.as_deref(), a.all_platforms)?;
    let repo = open_repo(home, &a.fqrn)?;
    let sources = sources(&a.registry)?;
    let refs: Vec<String> = a.images.clone();
    run_batch(&repo, g, &sources, &refs, &selection, &a.tuning, None, out)
}

pub fn sync(home: &Path, g: &Global, a: &SyncArgs, out: Output) -> Result<i32> {
    let recipe = ingest::image::recipe::Recipe::load(&a.recipe)
        .with_context(|| format!("recipe {}", a.recipe.display()))?;
    if !recipe.cvmfs_repo.is_empty() && recipe.cvmfs_repo != a.fqrn {
        out.say(&format!(
            "note: recipe names repository {}, converting into {}",
            recipe.cvmfs_repo, a.fqrn
        ));
    }
    let repo = open_repo(home, &a.fqrn)?;
    let mut registry = a.registry.clone();
    for input in recipe.inputs.iter().filter(|i| i.insecure) {
        registry.insecure_registry.push(input.image.host.clone());
    }
    let sources = sources(&registry)?;
    let mut refs = Vec::new();
    let mut failed = 0usize;
    for input in &recipe.inputs {
        match expand_input(&sources, input) {
            Ok(mut r) => refs.append(&mut r),
            Err(e) => {
                failed += 1;
                let line = format!("{e:#}");
                out.event(
                    &format!("failed: {line}"),
                    event_json("error", json!({"image": input.text, "error": line})),
                );
            }
        }
    }
    let prune_keep: Vec<Vec<u8>> = if a.prune {
        refs.iter().filter_map(|r| link_of(r)).collect()
    } else {
        Vec::new()
    };
    let prune = if a.prune { Some(prune_keep) } else { None };
    let code = run_batch(
        &repo,
        g,
        &sources,
        &refs,
        &PlatformSelection::Host,
        &a.tuning,
        prune,
        out,
    )?;
    Ok(if failed > 0 { 1 } else { code })
}

/// Registry references a recipe input stands for (`*` in the tag matched against the tag list).
fn expand_input(
    sources: &Sources,
    input: &ingest::image::recipe::RecipeInput,
) -> Result<Vec<String>> {
    if !input.wildcard {
        return Ok(vec![docker_ref(&input.image)]);
    }
    let client = sources.registry()?;
    let tags = client
        .list_tags(&input.image)
        .with_context(|| format!("listing tags of {}", input.text))?;
    Ok(input.expand(&tags).iter().map(docker_ref).collect())
}

fn docker_ref(r: &ingest::image::RegistryRef) -> String {
    let mut s = format!("docker://{}/{}", r.host, r.repository);
    if let Some(t) = &r.tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = &r.digest {
        s.push('@');
        s.push_str(&d.to_string());
    }
    s
}

/// The tag link path a reference gets (for --prune).
fn link_of(reference: &str) -> Option<Vec<u8>> {
    match ImageRef::parse(reference).ok()? {
        ImageRef::Registry(r) => Some(layout::link_path(&r.name(), None)),
        _ => None,
    }
}

pub(super) fn selection(platform: Option<&str>, all: bool) -> Result<PlatformSelection> {
    Ok(match (platform, all) {
        (_, true) => PlatformSelection::All,
        (Some(p), false) => PlatformSelection::One(Platform::parse(p)?),
        (None, false) => PlatformSelection::Host,
    })
}

pub(super) fn sources(r: &RegistryArgs) -> Result<Sources> {
    let auth = AuthStore::from_environment(r.creds.as_deref())?;
    Ok(Sources::new(RegistryOptions {
        auth,
        insecure: r.insecure_registry.clone(),
        ..RegistryOptions::default()
    }))
}

/// Converts `refs` into one transaction and commits once.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_batch(
    repo: &Repository,
    g: &Global,
    sources: &Sources,
    refs: &[String],
    selection: &PlatformSelection,
    tuning: &TuningArgs,
    prune_keep: Option<Vec<Vec<u8>>>,
    out: Output,
) -> Result<i32> {
    let started = Instant::now();
    let mut txn = repo.begin(!g.no_wait)?;
    let pipeline = new_pipeline(repo, &txn, tuning)?;
    let memo = repo.layer_memo()?;
    let mut summary = Summary::default();
    let mtime = unix_now();
    // 1. Serially: manifests, what is already there, configs (cheap requests).
    let mut jobs = Vec::new();
    for reference in refs {
        match plan_reference(&mut txn, sources, reference, selection) {
            Ok(mut j) => jobs.append(&mut j),
            Err(e) => report_failure(&mut summary, reference, &e, out),
        }
    }
    // 2. In parallel: flatten the images that need it (one per flat directory).
    let store = txn.objects();
    let memo_ctx = MemoContext::new(&memo, &*store);
    let rootfs = flatten_all(&jobs, &pipeline, &memo_ctx, mtime, tuning, out);
    // 3. Serially, in the order given: graft flat directories, links and metadata.
    let mut flat_ok: std::collections::HashMap<Vec<u8>, bool> = std::collections::HashMap::new();
    for (job, flat) in jobs.iter().zip(rootfs) {
        let t0 = Instant::now();
        let shares_flat = flat.is_none() && job.status == Status::Missing;
        let result = (|| -> Result<Status> {
            if let Some(flat) = flat {
                let ok = flat.is_ok();
                flat_ok.insert(job.placement.flat_dir.clone(), ok);
                apply(&mut txn, flat?)?;
            } else if flat_ok.get(&job.placement.flat_dir) == Some(&false) {
                bail!(
                    "{}: its image failed to convert under another name",
                    job.name
                );
            }
            if let Some(image) = &job.image {
                for graft in layout::name_grafts(image, &job.placement, mtime, &pipeline)? {
                    apply(&mut txn, graft)?;
                }
            }
            // A second name for an image flattened in this batch only needed its links.
            Ok(if shares_flat {
                Status::FlatPresent
            } else {
                job.status
            })
        })();
        match result {
            Ok(status) => report_image(&mut summary, status, &job.name, t0, out),
            Err(e) => report_failure(&mut summary, &job.name, &e, out),
        }
    }
    if let Some(keep) = prune_keep {
        summary.pruned = prune_links(&mut txn, &keep)?;
    }
    let stats = pipeline.finish()?.stats;
    publisher::fault_point("after-objects");
    let outcome = txn.commit(&CommitSettings::default())?;
    let what = format!(
        "{} image(s): {} converted, {} linked, {} unchanged, {} failed, {:.1} MB of layer blobs fetched{}",
        refs.len(),
        summary.converted,
        summary.linked,
        summary.skipped,
        summary.failed,
        BLOB_BYTES_FETCHED.swap(0, Ordering::Relaxed) as f64 / 1e6,
        if summary.pruned > 0 {
            format!(", {} links pruned", summary.pruned)
        } else {
            String::new()
        }
    );
    report_outcome(&what, &outcome, started, &stats, out);
    if out.json {
        out.event(
            "",
            event_json(
                "summary",
                json!({"images": refs.len(), "converted": summary.converted,
                       "linked": summary.linked, "unchanged": summary.skipped,
                       "failed": summary.failed, "pruned": summary.pruned,
                       "objects_new": stats.objects_new, "objects_existing": stats.objects_existing,
                       "seconds": started.elapsed().as_secs_f64()}),
            ),
        );
    }
    Ok(if summary.failed > 0 { 1 } else { 0 })
}

/// One platform image of a reference and what it needs.
struct Job {
    source: Arc<dyn ImageSource>,
    name: String,
    placement: layout::Placement,
    status: Status,
    /// Manifest + config, unless the image is already complete.
    image: Option<ResolvedImage>,
    /// This job flattens its image (the first job of its flat directory that needs it).
    flatten: bool,
}

/// Resolves a reference to jobs, one per platform image, checking what the repository has.
fn plan_reference(
    txn: &mut Transaction,
    sources: &Sources,
    reference: &str,
    selection: &PlatformSelection,
) -> Result<Vec<Job>> {
    let image_ref = ImageRef::parse(reference)?;
    let source: Arc<dyn ImageSource> = Arc::from(sources.open(&image_ref)?);
    let manifests = source.resolve_manifests(selection)?;
    let placements = layout::placements(&manifests, selection);
    let mut jobs = Vec::new();
    for (manifest, placement) in manifests.into_iter().zip(placements) {
        let name = display_name(&manifest);
        let status = {
            let (ns, objects) = txn.namespace_and_objects();
            layout::conversion_status(&placement, &manifest.manifest_bytes, |p| {
                ns.entry(p, &objects)
            })?
        };
        let image = if status == Status::Complete {
            None
        } else {
            let config = source.fetch_config(&manifest)?;
            Some(ResolvedImage::new(manifest, config)?)
        };
        jobs.push(Job {
            source: source.clone(),
            name,
            placement,
            status,
            image,
            flatten: status == Status::Missing,
        });
    }
    Ok(jobs)
}

/// Flattens the images of `jobs` that need it, on a few threads sharing the pipeline (each
/// thread inflates and parses its own layers, so reading keeps pace with compression).
/// Returns, per job, the flat-directory graft it produced (or `None`).
fn flatten_all(
    jobs: &[Job],
    pipeline: &ObjectPipeline,
    memo: &MemoContext<'_>,
    mtime: i64,
    tuning: &TuningArgs,
    out: Output,
) -> Vec<Option<Result<layout::Graft>>> {
    let mut seen = std::collections::HashSet::new();
    let todo: Vec<usize> = (0..jobs.len())
        .filter(|&i| jobs[i].flatten && seen.insert(jobs[i].placement.flat_dir.clone()))
        .collect();
    let results: Vec<std::sync::Mutex<Option<Result<layout::Graft>>>> =
        jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = tuning
        .workers
        .unwrap_or(2)
        .clamp(1, 4)
        .min(todo.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = todo.get(k) else { break };
                let job = &jobs[i];
                let result = (|| -> Result<layout::Graft> {
                    let image = job
                        .image
                        .as_ref()
                        .ok_or_else(|| anyhow!("{}: no manifest", job.name))?;
                    out.say(&format!(
                        "converting {}: {} layers",
                        job.name,
                        image.layers.len()
                    ));
                    let mut rootfs = flatten(&job.source, image, pipeline, Some(memo), out)?;
                    super::sanitize_xattrs(&mut rootfs, &mut job.placement.flat_dir.clone(), out);
                    Ok(layout::flat_graft(image, rootfs, mtime, pipeline)?)
                })();
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

fn report_image(summary: &mut Summary, status: Status, name: &str, t0: Instant, out: Output) {
    let action = match status {
        Status::Complete => {
            summary.skipped += 1;
            "skipped"
        }
        Status::FlatPresent => {
            summary.linked += 1;
            "linked"
        }
        Status::Missing => {
            summary.converted += 1;
            "converted"
        }
    };
    out.event(
        &format!("{action}: {name}"),
        event_json(
            "image",
            json!({"image": name, "result": action, "seconds": t0.elapsed().as_secs_f64()}),
        ),
    );
}

fn report_failure(summary: &mut Summary, image: &str, e: &anyhow::Error, out: Output) {
    summary.failed += 1;
    let line = format!("{e:#}").replace('\n', " ");
    eprintln!("cvmfs-oci: error: {line}");
    if out.json {
        out.event(
            "",
            event_json("error", json!({"image": image, "error": line})),
        );
    }
}

fn display_name(m: &ImageManifest) -> String {
    match &m.platform {
        Some(p) if m.from_index => format!("{} [{}]", m.reference, p),
        _ => m.reference.clone(),
    }
}

/// Streams the image's layers (top first, so shadowed content is never compressed); layers
/// the memo knows enough about are replayed from it without downloading them.
fn flatten(
    source: &Arc<dyn ImageSource>,
    image: &ResolvedImage,
    pipeline: &ObjectPipeline,
    memo: Option<&MemoContext<'_>>,
    out: Output,
) -> Result<catalog_writer::tree::Dir> {
    let image = Arc::new(image.clone());
    let layers = (0..image.layers.len())
        .map(|i| {
            let source = source.clone();
            let image = image.clone();
            let name = format!("image {} layer {}", image.reference, image.layers[i].digest);
            let err_name = name.clone();
            let diff_id = image.config.diff_ids.get(i).map(|d| d.to_string());
            ingest::LayerInput {
                name,
                diff_id,
                open: Box::new(move || {
                    let stream =
                        open_uncompressed_layer(source.as_ref(), &image, i).map_err(|e| {
                            ingest::Error::Image {
                                image: err_name.clone(),
                                msg: e.to_string(),
                            }
                        })?;
                    let layer = image.layers[i].digest.to_string();
                    BLOB_BYTES_FETCHED.fetch_add(image.layers[i].size, Ordering::Relaxed);
                    // Inflate and verify on another thread while this one parses and hashes.
                    let stream = Box::new(ingest::decode::read_ahead(stream, 256 << 10, 8));
                    Ok(
                        Box::new(LayerProgress::new(stream, &image.reference, layer, out))
                            as Box<dyn Read + Send>,
                    )
                }),
            }
        })
        .collect();
    Ok(ingest::flatten_layers_with(layers, pipeline, memo)?)
}

/// Blob bytes of the layers opened in this process (a second pass counts twice: it fetches
/// twice).
static BLOB_BYTES_FETCHED: AtomicU64 = AtomicU64::new(0);

/// Counts a layer's uncompressed bytes for the progress bar, and reports the layer (bytes,
/// seconds) when the flattener is done with it.
struct LayerProgress {
    inner: Box<dyn Read + Send>,
    bar: indicatif::ProgressBar,
    image: String,
    layer: String,
    bytes: u64,
    started: Instant,
    out: Output,
}

impl LayerProgress {
    fn new(inner: Box<dyn Read + Send>, image: &str, layer: String, out: Output) -> LayerProgress {
        let short = layer.get(..19).unwrap_or(&layer).to_string();
        LayerProgress {
            inner,
            bar: out.progress(format!("{image} {short}"), None),
            image: image.to_string(),
            layer,
            bytes: 0,
            started: Instant::now(),
            out,
        }
    }
}

impl Read for LayerProgress {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

impl Drop for LayerProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        let secs = self.started.elapsed().as_secs_f64();
        if self.out.json {
            self.out.event(
                "",
                event_json(
                    "layer",
                    json!({"image": self.image, "layer": self.layer, "bytes": self.bytes, "seconds": secs}),
                ),
            );
        }
    }
}

fn apply(txn: &mut Transaction, graft: layout::Graft) -> Result<()> {
    let (ns, objects) = txn.namespace_and_objects();
    let parent = layout::parent_meta(unix_now());
    ns.replace(&graft.path, graft.node, &parent, &objects)
        .map_err(|e| anyhow!("{}: {e}", String::from_utf8_lossy(&graft.path)))
}

/// Removes tag links (and their metadata) under registry directories that the recipe no
/// longer lists. Only symlinks pointing into `/.flat` are touched.
fn prune_links(txn: &mut Transaction, keep: &[Vec<u8>]) -> Result<usize> {
    let (ns, objects) = txn.namespace_and_objects();
    let mut links = Vec::new();
    collect_flat_links(ns, &objects, b"", &mut links)?;
    let mut pruned = 0;
    for link in links {
        let base = strip_platform_suffix(&link);
        if keep.iter().any(|k| k == &base) {
            continue;
        }
        ns.remove(&link, &objects)?;
        let meta = [layout::METADATA_ROOT.as_bytes(), &link].concat();
        ns.remove(&meta, &objects)?;
        pruned += 1;
    }
    Ok(pruned)
}

/// `/reg/repo:tag@linux-arm64` → `/reg/repo:tag`.
fn strip_platform_suffix(link: &[u8]) -> Vec<u8> {
    let name_start = link.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    match link[name_start..].iter().position(|&b| b == b'@') {
        Some(at) => link[..name_start + at].to_vec(),
        None => link.to_vec(),
    }
}

fn collect_flat_links(
    ns: &mut Namespace,
    objects: &StoreObjects<'_>,
    dir: &[u8],
    out: &mut Vec<Vec<u8>>,
) -> Result<()> {
    let Some(children) = ns.list(dir, objects)? else {
        return Ok(());
    };
    for (name, entry) in children {
        if dir.is_empty() && name.starts_with(b".") {
            continue; // /.flat, /.metadata, /.cvmfs*
        }
        let path = [dir, b"/", &name].concat();
        match &entry.kind {
            catalog_writer::entry::EntryKind::Directory => {
                collect_flat_links(ns, objects, &path, out)?
            }
            catalog_writer::entry::EntryKind::Symlink { target }
                if target.windows(6).any(|w| w == b".flat/") =>
            {
                out.push(path)
            }
            _ => {}
        }
    }
    Ok(())
}
