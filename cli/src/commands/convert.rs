//! `convert` and `sync`: container images into the DUCC layout, all images of one call in one
//! revision. A failing image is reported and skipped; the exit code says whether all succeeded.

use super::layers::{flatten, memo_keys, BLOB_BYTES_FETCHED};
use super::ledger;
use super::plan::{plan, Job};
use super::schedule::{LayerKey, Schedule};
use super::{new_pipeline, open_repo, report_outcome, unix_now};
use crate::args::{ConvertArgs, Global, RegistryArgs, SyncArgs, TuningArgs};
use crate::output::{event_json, Output};
use anyhow::{anyhow, bail, Context, Result};
use catalog_writer::namespace::Namespace;
use ingest::convert::{self as layout, Status};
use ingest::image::{
    AuthStore, ImageRef, Platform, PlatformSelection, RegistryOptions, ResolvedImage, Retry,
    RetryNotices, Sources, SYSTEM_CERTS_DIRS,
};
use ingest::pipeline::ObjectPipeline;
use ingest::MemoContext;
use publisher::{CommitSettings, Repository, StoreObjects, Transaction};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::TryRecvError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts for the closing summary.
#[derive(Default)]
struct Summary {
    converted: usize,
    linked: usize,
    skipped: usize,
    failed: usize,
    /// Tags from a tag list that are no container image, or have no manifest for the
    /// platform: skipped, no failure.
    skips: SkipCounts,
    pruned: usize,
    /// Flattened images removed because no link points at them any more.
    flat_removed: usize,
}

impl Summary {
    /// Images converted, linked, unchanged or failed: with `--all-platforms` one reference
    /// counts each platform's image.
    fn images(&self) -> usize {
        self.converted + self.linked + self.skipped + self.failed
    }

    /// `N image(s)`, and the references they came from where those are fewer.
    fn counted(&self, references: usize) -> String {
        match self.images() {
            n if n == references => format!("{n} image(s)"),
            n => format!("{n} image(s) of {references} reference(s)"),
        }
    }
}

pub fn convert(home: &Path, g: &Global, a: &ConvertArgs, out: Output) -> Result<i32> {
    let selection = selection(a.platform.as_deref(), a.all_platforms)?;
    let repo = open_repo(home, &a.fqrn)?;
    let sources = sources(&a.registry, out)?;
    let refs: Vec<String> = a.images.clone();
    let tag = a.tag.new_tag();
    let batch = Batch {
        command: "convert",
        refs: &refs,
        selection: &selection,
        // A prune that may remove no link: only the images left unlinked.
        prune: a
            .prune_unlinked
            .then(|| Prune::keeping(&refs, Vec::new()).only(HashSet::new())),
        ledger: LedgerUse::Claim,
        failed_inputs: 0,
        // Every image is named: a signature or artifact among them fails.
        listed: Listed::None,
        tag: tag.as_ref(),
    };
    run_batch(&repo, g, &sources, batch, &a.tuning, out)
}

pub fn sync(home: &Path, g: &Global, a: &SyncArgs, out: Output) -> Result<i32> {
    // Its errors name the recipe.
    let recipe = ingest::image::recipe::Recipe::load(&a.recipe)?;
    if !recipe.cvmfs_repo.is_empty() && recipe.cvmfs_repo != a.fqrn {
        out.notice(
            &format!(
                "note: recipe names repository {}, converting into {}",
                recipe.cvmfs_repo, a.fqrn
            ),
            event_json("note", json!({"recipe_repository": recipe.cvmfs_repo})),
        );
    }
    let repo = open_repo(home, &a.fqrn)?;
    let mut registry = a.registry.clone();
    for input in recipe.inputs.iter().filter(|i| i.insecure) {
        registry.insecure_registry.push(input.image.host.clone());
    }
    let sources = sources(&registry, out)?;
    let mut refs = Vec::new();
    let mut failed = 0usize;
    // References only a `*` tag pattern matched: the ones a signature or artifact is skipped in.
    let (mut from_tag_lists, mut named) = (HashSet::new(), HashSet::new());
    for input in &recipe.inputs {
        match expand_input(&sources, input) {
            Ok(r) => {
                let kind = if input.wildcard {
                    &mut from_tag_lists
                } else {
                    &mut named
                };
                kind.extend(r.iter().cloned());
                refs.extend(r);
            }
            Err(e) => {
                failed += 1;
                report_error(&input.text, &e, out);
            }
        }
    }
    from_tag_lists.retain(|r| !named.contains(r));
    let tag = a.tag.new_tag();
    let batch = Batch {
        command: "sync",
        refs: &refs,
        selection: &PlatformSelection::Host,
        prune: None,
        ledger: LedgerUse::Sync {
            key: ledger::recipe_key(&a.recipe, a.wishlist_name.as_deref()),
            prune: a.prune,
            listed_in_full: failed == 0,
        },
        failed_inputs: failed,
        listed: Listed::Only(from_tag_lists),
        tag: tag.as_ref(),
    };
    run_batch(&repo, g, &sources, batch, &a.tuning, out)
}

/// What `sync --prune` of wishlist `key` may remove: the links it listed before, names no
/// more and no other wishlist names; `None` (said why) when it may not prune at all.
fn sync_prune(
    ledger: &ledger::SyncLedger,
    key: &str,
    refs: &[String],
    listed_in_full: bool,
    out: Output,
) -> Option<Prune> {
    let not_pruning = |why: &str| {
        out.event(
            &format!("not pruning: {why}"),
            event_json(
                "warning",
                json!({"wishlist": key, "warning": format!("not pruning: {why}")}),
            ),
        );
    };
    if !listed_in_full {
        // A tag list that could not be read would look like every tag of it removed.
        not_pruning("the wishlist could not be listed in full");
        return None;
    }
    if !ledger.knows(key) {
        not_pruning(&format!(
            "no earlier sync of this wishlist ({key}) is recorded (a wishlist checked out at \
             changing paths needs --wishlist-name)"
        ));
        return None;
    }
    Some(Prune::keeping(refs, Vec::new()).only(ledger.prunable(key)))
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

/// What `--prune` removes in a batch's revision: the tag links below `scope` (a repository
/// path such as `/host` or `/host/team`, or empty for every link) whose name is not in `keep`,
/// then the flattened images no link reaches any more.
pub(super) struct Prune {
    pub keep: Vec<Vec<u8>>,
    pub scope: Vec<u8>,
    /// When set, only these links may go (`sync`: what the wishlist listed before).
    pub only: Option<HashSet<Vec<u8>>>,
}

impl Prune {
    /// `--prune` of the references `refs` (links of other references under `scope` go).
    pub(super) fn keeping(refs: &[String], scope: Vec<u8>) -> Prune {
        Prune {
            keep: refs.iter().filter_map(|r| link_of(r)).collect(),
            scope,
            only: None,
        }
    }

    /// The same, removing no link outside `links`.
    pub(super) fn only(self, links: HashSet<Vec<u8>>) -> Prune {
        Prune {
            only: Some(links),
            ..self
        }
    }

    /// Whether the prune removes `link` (`/reg/repo:tag`, or with a `@platform` suffix).
    fn drops(&self, link: &[u8]) -> bool {
        let base = strip_platform_suffix(link);
        self.covers(link)
            && !self.keep.iter().any(|k| k == &base)
            && self.only.as_ref().is_none_or(|only| only.contains(&base))
    }

    /// Whether `link` lies below the scope (`/host/team` covers `/host/team:1` and
    /// `/host/team/app:1`, not `/host/teams/app:1`).
    pub(super) fn covers(&self, link: &[u8]) -> bool {
        link.strip_prefix(self.scope.as_slice())
            .is_some_and(|rest| matches!(rest.first(), Some(b'/' | b':')))
    }
}

/// The tag link path a reference gets (for --prune).
pub(super) fn link_of(reference: &str) -> Option<Vec<u8>> {
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

/// Registry sources as the flags ask; every retry is announced as it happens (stderr, or a
/// `retry` event with `--json`).
pub(super) fn sources(r: &RegistryArgs, out: Output) -> Result<Sources> {
    let auth = AuthStore::from_environment(r.creds.as_deref())?;
    let announce = move |retry: &Retry| {
        out.notice(
            &format!("retrying: {}", retry.message),
            event_json(
                "retry",
                json!({
                    "message": retry.message,
                    "image": retry.image,
                    "object": retry.object,
                    "attempt": retry.attempt,
                    "retries": retry.retries,
                    "delay_s": retry.delay.as_secs_f64(),
                }),
            ),
        );
    };
    Ok(Sources::new(RegistryOptions {
        auth,
        insecure: r.insecure_registry.clone(),
        ca_files: r.registry_ca.clone(),
        certs_dirs: r
            .registry_certs_dir
            .iter()
            .cloned()
            .chain(SYSTEM_CERTS_DIRS.iter().map(PathBuf::from))
            .collect(),
        read_timeout: Duration::from_secs(r.registry_timeout),
        on_retry: Some(RetryNotices::new(announce)),
        ..RegistryOptions::default()
    }))
}

/// What one revision of `convert`, `sync` or `migrate` converts.
pub(super) struct Batch<'a> {
    /// The command, named by the event that reports the batch's outcome (`"action"`), so that
    /// a script reading several commands' events can tell whose revision it was.
    pub command: &'static str,
    pub refs: &'a [String],
    pub selection: &'a PlatformSelection,
    /// Links to remove in the same revision.
    pub prune: Option<Prune>,
    pub ledger: LedgerUse,
    /// Inputs that failed before the batch (a wishlist entry whose tags could not be listed),
    /// reported already: counted with the images that fail.
    pub failed_inputs: usize,
    /// The references that came from a registry's tag list rather than being named.
    pub listed: Listed,
    /// `--tag`: a name for the batch's revision.
    pub tag: Option<&'a publisher::NewTag>,
}

/// Which references of a batch a registry's tag list gave (a `migrate`, a wishlist's `*`
/// tag). Such a list holds, beside the images, the signatures, attestations and SBOMs stored
/// as tags (cosign's `sha256-<hex>.sig`, OCI 1.1 artifacts and their referrers tags): for
/// those references a manifest that is no container image is skipped and said so, not
/// counted as a failure, else every run of a signed repository would fail. A named image
/// that is none still fails.
pub(super) enum Listed {
    None,
    All,
    Only(HashSet<String>),
}

impl Listed {
    fn covers(&self, reference: &str) -> bool {
        match self {
            Listed::None => false,
            Listed::All => true,
            Listed::Only(refs) => refs.contains(reference),
        }
    }
}

/// Why a tag that a batch listed itself is skipped rather than failed.
pub(super) enum Skip {
    /// A signature, attestation, SBOM or other artifact: `not a container image: …`.
    NotAnImage(String),
    /// An index with images for other platforms only: `no manifest for platform …`.
    NoPlatform(String),
}

impl Skip {
    /// The skip `e` calls for, if it is one of the errors a listed tag is skipped for.
    pub(super) fn of(e: &anyhow::Error) -> Option<Skip> {
        use ingest::image::Error;
        e.chain().find_map(|c| match c.downcast_ref::<Error>()? {
            Error::NotAnImage { reason, .. } => {
                Some(Skip::NotAnImage(format!("not a container image: {reason}")))
            }
            Error::NoPlatform { reason, .. } => Some(Skip::NoPlatform(reason.clone())),
            _ => None,
        })
    }

    /// `skipped: IMAGE: why`, and the `skipped` event with `--json`; counted in `counts`.
    pub(super) fn report(&self, image: &str, counts: &mut SkipCounts, out: Output) {
        let reason = match self {
            Skip::NotAnImage(reason) => {
                counts.not_images += 1;
                reason
            }
            Skip::NoPlatform(reason) => {
                counts.no_platform += 1;
                reason
            }
        };
        let shown = crate::output::printable(image);
        out.event(
            &format!("skipped: {shown}: {reason}"),
            event_json("skipped", json!({"image": image, "reason": reason})),
        );
    }
}

/// Listed tags a batch skipped, by why.
#[derive(Default)]
pub(super) struct SkipCounts {
    pub(super) not_images: usize,
    pub(super) no_platform: usize,
}

impl SkipCounts {
    /// `N not container images skipped, M with no manifest for the platform skipped, `
    /// (empty when nothing was skipped), for a summary line.
    pub(super) fn text(&self) -> String {
        let mut text = String::new();
        if self.not_images > 0 {
            text += &format!("{} not container images skipped, ", self.not_images);
        }
        if self.no_platform > 0 {
            let n = self.no_platform;
            text += &format!("{n} with no manifest for the platform skipped, ");
        }
        text
    }
}

/// What a batch does with the home's sync ledger. Read after the batch took the repository
/// lock and written under the ledger's own lock, held past the commit, so that a command
/// queued behind another sees, and keeps, what that one recorded (a ledger read before
/// waiting would be saved back stale).
pub(super) enum LedgerUse {
    /// `convert`, `migrate`: the links they make are no wishlist's to prune any more.
    Claim,
    /// `sync` of the wishlist `key`: with `prune` (and the wishlist `listed_in_full`) it
    /// removes what the wishlist listed before and lists no more, then records what it lists.
    Sync {
        key: String,
        prune: bool,
        listed_in_full: bool,
    },
}

/// Converts the batch's references into one transaction and commits once.
pub(super) fn run_batch(
    repo: &Repository,
    g: &Global,
    sources: &Sources,
    batch: Batch<'_>,
    tuning: &TuningArgs,
    out: Output,
) -> Result<i32> {
    let Batch {
        command,
        refs,
        selection,
        prune,
        ledger: ledger_use,
        failed_inputs,
        listed,
        tag,
    } = batch;
    let started = Instant::now();
    let mut txn = super::begin(repo, !g.no_wait, out)?;
    let ledger_path = ledger::ledger_path(repo);
    // Held until the ledger is saved after the commit, which releases the repository lock.
    let ledger_lock = ledger::lock(&ledger_path, !g.no_wait)?;
    let mut ledger = ledger::SyncLedger::load(&ledger_path)?;
    let prune = match &ledger_use {
        LedgerUse::Sync {
            key,
            prune: true,
            listed_in_full,
        } => sync_prune(&ledger, key, refs, *listed_in_full, out),
        _ => prune,
    };
    let pipeline = new_pipeline(repo, &txn, tuning, out)?;
    let memo = repo.layer_memo()?;
    super::note_set_aside(memo.set_aside(), "layer memo", out);
    let mut summary = Summary {
        failed: failed_inputs,
        ..Summary::default()
    };
    let mtime = unix_now();
    // 1+2. Manifests, what is already there and configs, a few references at a time; each
    // image is flattened as soon as it is planned (one per flat directory), so the first
    // layers stream while the rest of the batch is still being asked for; each flat
    // directory is grafted, and its catalog written, as soon as it is done.
    let store = txn.objects();
    let memo_ctx = MemoContext::new(&memo, &*store);
    let flatten = FlattenContext {
        pipeline: &pipeline,
        memo: &memo_ctx,
        mtime,
        out,
    };
    let (jobs, grafted) = plan_and_flatten(
        &mut txn,
        sources,
        (refs, &listed),
        selection,
        &flatten,
        flatten_threads(tuning, refs.len()),
        &mut summary,
    )?;
    // 3. Serially, in the order given: links and metadata.
    let mut flat_ok: std::collections::HashMap<Vec<u8>, bool> = std::collections::HashMap::new();
    // Flat directories grafted in this batch, and those some name now links to.
    let (mut new_flats, mut linked_flats) = (Vec::new(), HashSet::new());
    // Printed once the revision is committed: an image is not "converted" by a batch whose
    // commit then fails (another publisher won the revision, the object store failed).
    let mut image_events = Vec::new();
    for (job, flat) in jobs.iter().zip(grafted) {
        let t0 = Instant::now();
        let shares_flat = flat.is_none() && job.status == Status::Missing;
        let result = (|| -> Result<Status> {
            if let Some(flat) = flat {
                flat_ok.insert(job.placement.flat_dir.clone(), flat.is_ok());
                flat?;
                new_flats.push(job.placement.flat_dir.clone());
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
            Ok(status) => {
                linked_flats.insert(job.placement.flat_dir.clone());
                image_events.push(image_event(&mut summary, status, job, t0));
            }
            Err(e) => report_failure(&mut summary, &job.name, &e, out),
        }
    }
    // An image whose every name failed (a path in the way of its link) would be published
    // with nothing pointing at it.
    for dir in new_flats.iter().filter(|d| !linked_flats.contains(*d)) {
        let (ns, objects) = txn.namespace_and_objects();
        ns.remove(dir, &objects)?;
    }
    if let Some(prune) = &prune {
        (summary.pruned, summary.flat_removed) = apply_prune(&mut txn, prune)?;
    }
    let stats = match pipeline.finish() {
        Ok(output) => output.stats,
        // A failed object store stops every image still storing, and each was reported with
        // its error: the batch ends (uncommitted: objects may be missing) without it again.
        Err(_) if summary.failed > 0 => {
            let revision = txn.base_manifest().revision;
            txn.abort();
            out.event(
                &format!(
                    "{}: {} failed: the object pipeline stopped (see above), nothing committed, \
                     still revision {revision}",
                    summary.counted(refs.len()),
                    summary.failed
                ),
                event_json(
                    "summary",
                    json!({"images": summary.images(), "references": refs.len(),
                           "converted": 0, "linked": 0, "unchanged": summary.skipped,
                           "failed": summary.failed, "not_images": summary.skips.not_images,
                           "no_platform": summary.skips.no_platform,
                           "pruned": 0, "flat_removed": 0, "committed": false,
                           "revision": revision,
                           "seconds": started.elapsed().as_secs_f64()}),
                ),
            );
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    let links: Vec<Vec<u8>> = refs.iter().filter_map(|r| link_of(r)).collect();
    // A claim before the commit: one whose commit then fails only keeps a link from a prune.
    if matches!(ledger_use, LedgerUse::Claim) && ledger.claim(&links) {
        ledger.save(&ledger_path)?;
    }
    publisher::fault_point("after-objects");
    let outcome = if summary.failed > 0
        && summary.converted + summary.linked + summary.pruned + summary.flat_removed == 0
    {
        // Every image failed: what they stored is referenced by nothing, so it goes (a
        // repository without gc could never drop it).
        let revision = txn.base_manifest().revision;
        txn.abort();
        publisher::CommitOutcome::Unchanged { revision }
    } else {
        let settings = CommitSettings {
            tag: tag.cloned(),
            ..CommitSettings::default()
        };
        txn.commit(&settings)?
    };
    for (text, fields) in image_events {
        out.event(&text, fields);
    }
    // A sync's record after it: written before, a failed commit would forget the links its
    // prune dropped, and no rerun would prune them.
    if let LedgerUse::Sync { key, .. } = &ledger_use {
        ledger.record(key, &links, prune.is_some());
        ledger.save(&ledger_path)?;
    }
    // Before the automatic gc and push, which take the repository lock again: a command
    // queued for that lock would otherwise hold it while waiting for this one.
    drop(ledger_lock);
    publisher::fault_point("batch-after-ledger");
    let what = format!(
        "{}: {} converted, {} linked, {} unchanged, {} failed, {}{:.1} MB of layer blobs fetched{}",
        summary.counted(refs.len()),
        summary.converted,
        summary.linked,
        summary.skipped,
        summary.failed,
        summary.skips.text(),
        BLOB_BYTES_FETCHED.swap(0, Ordering::Relaxed) as f64 / 1e6,
        if summary.pruned + summary.flat_removed > 0 {
            format!(
                ", {} links pruned, {} unlinked images removed",
                summary.pruned, summary.flat_removed
            )
        } else {
            String::new()
        }
    );
    report_outcome(command, &what, &outcome, started, &stats, out);
    if summary.failed == 0 || matches!(outcome, publisher::CommitOutcome::Published(_)) {
        super::tag_revision(repo, !g.no_wait, &outcome, tag, out)?;
    }
    super::gc::after_publish(repo, &outcome, out);
    if out.json {
        out.event(
            "",
            event_json(
                "summary",
                json!({"images": summary.images(), "references": refs.len(),
                       "converted": summary.converted,
                       "linked": summary.linked, "unchanged": summary.skipped,
                       "failed": summary.failed, "not_images": summary.skips.not_images,
                           "no_platform": summary.skips.no_platform,
                       "pruned": summary.pruned,
                       "flat_removed": summary.flat_removed,
                       "objects_new": stats.objects_new, "objects_existing": stats.objects_existing,
                       "seconds": started.elapsed().as_secs_f64()}),
            ),
        );
    }
    super::push::after_publish(repo, &outcome, out)?;
    Ok(if summary.failed > 0 { 1 } else { 0 })
}

/// What flattening an image needs besides the image.
struct FlattenContext<'a> {
    pipeline: &'a ObjectPipeline,
    memo: &'a MemoContext<'a>,
    mtime: i64,
    out: Output,
}

/// Images flattened at once: each thread inflates and parses its own layers, so reading
/// keeps pace with compression.
fn flatten_threads(tuning: &TuningArgs, refs: usize) -> usize {
    tuning.workers.unwrap_or(2).clamp(1, 4).min(refs.max(1))
}

/// Plans `refs` on this thread ([`super::concurrent::REQUESTS_IN_FLIGHT`] requests at a
/// time), then flattens each image that needs it (the first job of its flat directory) on
/// `threads` others, in the order of the [`Schedule`]. This thread grafts each finished flat
/// directory and writes its catalog right away, while the other images are still being
/// flattened (otherwise all catalogs would be written after the last image). Returns the jobs
/// in the order of `refs` and, per job, whether it grafted a flat directory (`None`: it had
/// none to graft); references that cannot be planned are reported. An error is returned only
/// when a catalog cannot be written.
fn plan_and_flatten(
    txn: &mut Transaction,
    sources: &Sources,
    (refs, listed): (&[String], &Listed),
    selection: &PlatformSelection,
    cx: &FlattenContext<'_>,
    threads: usize,
    summary: &mut Summary,
) -> Result<(Vec<Arc<Job>>, Vec<Grafted>)> {
    let schedule: Schedule<Queued> = Schedule::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Flattened>();
    let mut jobs: Vec<Arc<Job>> = Vec::new();
    let mut finished = Finished {
        group: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Finished::default()
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (schedule, done_tx) = (&schedule, done_tx.clone());
            scope.spawn(move || {
                while let Some(taken) = schedule.next() {
                    let q = &taken.item;
                    // The receiver lives until every worker has ended.
                    let _ = done_tx.send((q.index, flatten_any(&q.job, &q.others, cx)));
                }
            });
        }
        drop(done_tx);
        // The whole batch is planned before any image goes: the schedule must see every image
        // sharing a layer to pick the one that reads it unshadowed (a registry lists `api`
        // before the `debian` it is built on). Planning is a few round trips per image.
        let mut seen = std::collections::HashSet::new();
        let mut queued = Vec::new();
        for (reference, planned) in refs.iter().zip(plan(txn, sources, refs, selection, cx.out)) {
            let planned = match planned {
                Ok(p) => p,
                Err(e) => {
                    match Skip::of(&e).filter(|_| listed.covers(reference)) {
                        Some(skip) => skip.report(reference, &mut summary.skips, cx.out),
                        None => report_failure(summary, reference, &e, cx.out),
                    }
                    continue;
                }
            };
            for job in planned {
                let job = Arc::new(job);
                if job.flatten && seen.insert(job.placement.flat_dir.clone()) {
                    let layers = job
                        .image
                        .as_ref()
                        .map_or_else(Vec::new, |image| layers_to_read(image, cx.memo));
                    queued.push((jobs.len(), layers));
                }
                jobs.push(job);
            }
        }
        let queued = queued.into_iter().map(|(index, layers)| {
            let job = jobs[index].clone();
            let others = other_sources(&job, &jobs);
            (Queued { index, job, others }, layers)
        });
        schedule.push_all(queued.collect::<Vec<_>>());
        schedule.close();
        loop {
            let done = match done_rx.try_recv() {
                Ok(done) => done,
                // Nothing else finished yet: write what is waiting rather than wait too.
                Err(TryRecvError::Empty) => {
                    finished.write_ready(txn);
                    match done_rx.recv() {
                        Ok(done) => done,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            finished.take(txn, &jobs, done);
        }
        finished.write_ready(txn);
    });
    if let Some(e) = finished.fatal {
        return Err(e).context("writing the catalog of a converted image");
    }
    let results = (0..jobs.len())
        .map(|i| finished.grafted.remove(&i))
        .collect();
    Ok((jobs, results))
}

/// An image to flatten: its job (by index), and the other names of the same image in other
/// repositories, to read it from when its own repository fails.
struct Queued {
    index: usize,
    job: Arc<Job>,
    others: Vec<Arc<Job>>,
}

/// The jobs of `job`'s image (same flat directory) that name another repository: a registry
/// keeps blobs, and their access rules, per repository, so one that lost a blob or refuses it
/// does not mean the others do.
fn other_sources(job: &Job, jobs: &[Arc<Job>]) -> Vec<Arc<Job>> {
    let mut repositories = vec![repository_of(&job.name)];
    let mut others = Vec::new();
    for other in jobs {
        let repository = repository_of(&other.name);
        if other.placement.flat_dir == job.placement.flat_dir
            && other.image.is_some()
            && !repositories.contains(&repository)
        {
            repositories.push(repository);
            others.push(other.clone());
        }
    }
    others
}

/// `docker://host/repo` of `docker://host/repo:tag` or `…@sha256:…`.
fn repository_of(name: &str) -> &str {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    }
}

/// [`flatten_job`] of `job`, else of the same image through each of `others` in turn; the
/// first error if none works.
fn flatten_any(job: &Job, others: &[Arc<Job>], cx: &FlattenContext<'_>) -> Result<layout::Graft> {
    let first = match flatten_job(job, cx) {
        Ok(graft) => return Ok(graft),
        Err(e) => e,
    };
    for other in others {
        let why = crate::output::error_line(&first);
        cx.out.notice(
            &format!(
                "{}: failed ({why}); reading it through {}",
                job.name, other.name
            ),
            event_json(
                "fallback",
                json!({"image": job.name, "through": other.name, "error": why}),
            ),
        );
        if let Ok(graft) = flatten_job(other, cx) {
            return Ok(graft);
        }
    }
    Err(first)
}

/// The layers of `image` the memo does not know, with their blob sizes, for the [`Schedule`].
fn layers_to_read(image: &ResolvedImage, memo: &MemoContext<'_>) -> Vec<LayerKey> {
    let n = image.layers.len();
    memo_keys(image)
        .into_iter()
        .zip(&image.layers)
        .enumerate()
        .filter(|(_, (diff_id, _))| !memo.knows(diff_id))
        .map(|(i, (id, layer))| LayerKey {
            id,
            size: layer.size,
            above: n.saturating_sub(i + 1),
        })
        .collect()
}

/// Flat directories grafted so far, by job index.
#[derive(Default)]
struct Finished {
    grafted: std::collections::HashMap<usize, Result<()>>,
    /// Flat directories grafted whose catalogs are not written yet.
    ready: Vec<Vec<u8>>,
    /// How many of them are written at once (the cores).
    group: usize,
    /// The first catalog that could not be written.
    fatal: Option<publisher::Error>,
}

impl Finished {
    /// Grafts job `i`'s flat directory; its catalog is written with the next group.
    fn take(&mut self, txn: &mut Transaction, jobs: &[Arc<Job>], (i, flat): Flattened) {
        let result = flat.and_then(|g| apply(txn, g));
        if let (Ok(()), Some(job)) = (&result, jobs.get(i)) {
            self.ready.push(job.placement.flat_dir.clone());
        }
        self.grafted.insert(i, result);
        if self.ready.len() >= self.group {
            self.write_ready(txn);
        }
    }

    /// Writes the catalogs of the flat directories waiting, one per core at a time: a batch
    /// of small images spent most of its time writing their catalogs one after the other.
    /// Written early, an image's tree leaves memory as soon as it is done.
    fn write_ready(&mut self, txn: &mut Transaction) {
        if self.ready.is_empty() {
            return;
        }
        let paths: Vec<&[u8]> = self.ready.iter().map(Vec::as_slice).collect();
        if let Err(e) = txn.commit_early(&paths, &CommitSettings::default()) {
            self.fatal.get_or_insert(e);
        }
        self.ready.clear();
    }
}

/// A job index and the flat-directory graft its image gave.
type Flattened = (usize, Result<layout::Graft>);

/// Whether a job grafted its flat directory (`None`: it had none to graft).
type Grafted = Option<Result<()>>;

/// The flat-directory graft of one image.
fn flatten_job(job: &Job, cx: &FlattenContext<'_>) -> Result<layout::Graft> {
    let image = job
        .image
        .as_ref()
        .ok_or_else(|| anyhow!("{}: no manifest", job.name))?;
    cx.out.say(&format!(
        "converting {}: {} layers",
        job.name,
        image.layers.len()
    ));
    let mut rootfs = flatten(&job.source, image, cx.pipeline, Some(cx.memo), cx.out)?;
    let mut path = job.placement.flat_dir.clone();
    super::sanitize_xattrs(&mut rootfs, &mut path, Some(&job.name), cx.out);
    Ok(layout::flat_graft(image, rootfs, cx.mtime, cx.pipeline)?)
}

/// `converted: NAME` for people; with `--json` also where it went: its flat directory and the
/// links that name it. Counted now, printed by the caller.
fn image_event(summary: &mut Summary, status: Status, job: &Job, t0: Instant) -> (String, Value) {
    let action = match status {
        Status::Complete => {
            summary.skipped += 1;
            "unchanged"
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
    let text = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let links: Vec<String> = job.placement.links.iter().map(|l| text(&l.path)).collect();
    (
        format!("{action}: {}", job.name),
        event_json(
            "image",
            json!({"image": job.name, "result": action, "flat": text(&job.placement.flat_dir),
                   "links": links, "seconds": t0.elapsed().as_secs_f64()}),
        ),
    )
}

fn report_failure(summary: &mut Summary, image: &str, e: &anyhow::Error, out: Output) {
    summary.failed += 1;
    report_error(image, e, out);
}

/// `cvmfs-oci: error: image …: why` on stderr, and the `error` event with `--json`.
pub(super) fn report_error(image: &str, e: &anyhow::Error, out: Output) {
    // A reference typed with `user:password@` is refused; its password is not echoed.
    let image = &ingest::image::reference::redact_userinfo(image);
    let mut line = crate::output::error_line(e);
    let shown = crate::output::printable(image);
    if !line.contains(&shown) {
        line = format!("image {shown}: {line}");
    }
    crate::output::to_stderr(&format!("cvmfs-oci: error: {line}"));
    if out.json {
        let mut event = event_json("error", json!({"image": image, "error": line}));
        // The layer and the member, where the failure was in one, as fields of their own.
        let member = e
            .chain()
            .find_map(|c| match c.downcast_ref::<ingest::Error>() {
                Some(ingest::Error::Tar { archive, path, .. }) => Some((archive, Some(path))),
                Some(ingest::Error::Decode { archive, .. }) => Some((archive, None)),
                _ => None,
            });
        if let Some((archive, path)) = member {
            if let Some((_, layer)) = archive.rsplit_once(" layer ") {
                // A member's data (truncated, unreadable) names it after the layer:
                // `sha256:…: PATH`.
                let (layer, in_name) = match layer.split_once(": ") {
                    Some((layer, member)) => (layer, Some(member)),
                    None => (layer, None),
                };
                event["layer"] = json!(layer);
                if let Some(member) = in_name.filter(|_| path.is_none()) {
                    event["path"] = json!(member);
                }
            }
            if let Some(path) = path.filter(|p| !p.is_empty()) {
                event["path"] = json!(path);
            }
        }
        out.event("", event);
    }
}

fn apply(txn: &mut Transaction, graft: layout::Graft) -> Result<()> {
    let (ns, objects) = txn.namespace_and_objects();
    let parent = layout::parent_meta(unix_now());
    ns.replace(&graft.path, graft.node, &parent, &objects)
        .map_err(|e| {
            let path = String::from_utf8_lossy(&graft.path);
            let msg = e.to_string();
            if msg.contains(path.as_ref()) {
                anyhow!(msg)
            } else {
                anyhow!("{path}: {msg}")
            }
        })
}

/// Removes the tag links (and their metadata) the prune covers and does not keep, then the
/// flattened images no remaining link reaches; returns how many of each. Only symlinks
/// pointing into `/.flat` are touched.
fn apply_prune(txn: &mut Transaction, prune: &Prune) -> Result<(usize, usize)> {
    let (ns, objects) = txn.namespace_and_objects();
    let mut links = Vec::new();
    collect_flat_links(ns, &objects, b"", &mut links)?;
    let mut remaining = Vec::with_capacity(links.len());
    let mut pruned = 0;
    for (link, target) in links {
        if !prune.drops(&link) {
            remaining.push((link, target));
            continue;
        }
        ns.remove(&link, &objects)?;
        let meta = [layout::METADATA_ROOT.as_bytes(), &link].concat();
        ns.remove(&meta, &objects)?;
        remove_emptied_parents(ns, &objects, &link, 1)?;
        remove_emptied_parents(ns, &objects, &meta, 2)?;
        pruned += 1;
    }
    let removed = remove_unlinked_flat_dirs(ns, &objects, &remaining)?;
    Ok((pruned, removed))
}

/// Removes the directories above `path` that its removal left empty (`/REGISTRY/TEAM` once
/// its last link is pruned), but not the first `keep` levels (`/REGISTRY`; with the
/// metadata, `/.metadata/REGISTRY`), as a registry's directory is kept.
fn remove_emptied_parents(
    ns: &mut catalog_writer::namespace::Namespace,
    objects: &dyn catalog_writer::namespace::Objects,
    path: &[u8],
    keep: usize,
) -> Result<()> {
    let mut dir = path;
    while let Some(slash) = dir.iter().rposition(|&b| b == b'/') {
        dir = &dir[..slash];
        if dir.iter().filter(|&&b| b == b'/').count() <= keep {
            break;
        }
        match ns.list(dir, objects)? {
            Some(children) if children.is_empty() => {
                ns.remove(dir, objects)?;
            }
            _ => break,
        }
    }
    Ok(())
}

/// `/reg/repo:tag@linux-arm64` → `/reg/repo:tag`.
fn strip_platform_suffix(link: &[u8]) -> Vec<u8> {
    let name_start = link.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    match link[name_start..].iter().position(|&b| b == b'@') {
        Some(at) => link[..name_start + at].to_vec(),
        None => link.to_vec(),
    }
}

/// Removes the flattened images (`/.flat/XX/<digest>`) none of `links` points at (their
/// links were pruned, or their tags moved to other images), so that `gc` can free their
/// objects; returns how many.
fn remove_unlinked_flat_dirs(
    ns: &mut Namespace,
    objects: &StoreObjects<'_>,
    links: &[(Vec<u8>, Vec<u8>)],
) -> Result<usize> {
    let linked: HashSet<Vec<u8>> = links
        .iter()
        .filter_map(|(link, target)| layout::flat_image_of(link, target))
        .collect();
    let flat_root = layout::FLAT_ROOT.as_bytes();
    let mut removed = 0;
    let is_dir = |e: &catalog_writer::entry::Entry| {
        matches!(e.kind, catalog_writer::entry::EntryKind::Directory)
    };
    for (prefix, entry) in ns.list(flat_root, objects)?.unwrap_or_default() {
        // Only `XX/XXXX…` directories are images; anything else there is not ours to remove.
        if !is_dir(&entry) || prefix.len() != 2 {
            continue;
        }
        let dir = [flat_root, b"/", &prefix].concat();
        let images = ns.list(&dir, objects)?.unwrap_or_default();
        let mut left = images.len();
        for (name, entry) in images {
            let flat = [&dir[..], b"/", &name].concat();
            let image = is_dir(&entry) && name.starts_with(&prefix);
            if image && !linked.contains(&flat) && ns.remove(&flat, objects)? {
                removed += 1;
                left -= 1;
            }
        }
        if left == 0 {
            ns.remove(&dir, objects)?;
        }
    }
    Ok(removed)
}

/// Symlinks into `/.flat` below `dir`: (path, target as stored).
fn collect_flat_links(
    ns: &mut Namespace,
    objects: &StoreObjects<'_>,
    dir: &[u8],
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<()> {
    let Some(children) = ns.list(dir, objects)? else {
        return Ok(());
    };
    for (name, entry) in children {
        // The images and their metadata hold no links to images; anything else may, an
        // operator's `/.pinned` too.
        let ours = [layout::FLAT_ROOT, layout::METADATA_ROOT]
            .iter()
            .any(|r| r.as_bytes()[1..] == name[..]);
        if dir.is_empty() && (ours || name.starts_with(b".cvmfs")) {
            continue;
        }
        let path = [dir, b"/", &name].concat();
        match &entry.kind {
            catalog_writer::entry::EntryKind::Directory => {
                collect_flat_links(ns, objects, &path, out)?
            }
            catalog_writer::entry::EntryKind::Symlink { target }
                if target.windows(6).any(|w| w == b".flat/") =>
            {
                out.push((path, target.clone()))
            }
            _ => {}
        }
    }
    Ok(())
}
