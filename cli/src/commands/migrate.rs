//! `migrate`: a whole registry into the repository, in batches of images, one revision each.
//! Converted images cost one manifest request on a rerun, so an interrupted migration resumes
//! where it stopped; the layer memo skips layers already flattened.

use super::concurrent;
use super::convert::{
    link_of, run_batch, selection, sources, Batch, LedgerUse, Listed, Prune, Skip, SkipCounts,
};
use super::open_repo;
use super::plan::{layer_count, plan};
use crate::args::{Global, MigrateArgs};
use crate::output::{event_json, Output};
use anyhow::{bail, Context, Result};
use ingest::convert::Status;
use ingest::image::{PlatformSelection, RegistryRef, Sources};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn migrate(home: &Path, g: &Global, a: &MigrateArgs, out: Output) -> Result<i32> {
    let (host, prefix) = parse_registry_url(&a.registry_url)?;
    let include = patterns(&a.include)?;
    let exclude = patterns(&a.exclude)?;
    let selection = selection(a.platform.as_deref(), a.all_platforms)?;
    let repo = open_repo(home, &a.fqrn)?;
    let sources = sources(&a.registry, out)?;
    let Listing {
        refs,
        unlisted,
        unmatched,
    } = list_images(&sources, (&host, &prefix), &include, &exclude, a.max_images)?;
    for (repository, why) in &unlisted {
        report_unlisted(repository, why, out);
    }
    for pattern in &unmatched {
        // A pattern without a tag part names no `repository:tag`: the usual slip.
        let hint = match pattern.contains(':') {
            true => String::new(),
            false => format!(" (patterns match REPOSITORY:TAG: {pattern}:* takes every tag)"),
        };
        out.notice(
            &format!("cvmfs-oci: warning: --include {pattern} matches no image{hint}"),
            event_json(
                "warning",
                json!({"include": pattern, "warning": "matches no image"}),
            ),
        );
    }
    out.event(
        &format!("{}: {} images selected", a.registry_url, refs.len()),
        event_json(
            "migrate-list",
            json!({"registry": a.registry_url, "images": refs.len(),
                   "unlisted_repositories": unlisted.len()}),
        ),
    );
    let mut code = i32::from(!unlisted.is_empty());
    if a.dry_run {
        return Ok(code | forecast(&repo, &sources, &refs, &selection, out)?);
    }
    let batch = a.batch.max(1);
    // A repository that could not be listed would look like all its images removed.
    let prune = match (a.prune, unlisted.len()) {
        (false, _) => None,
        (true, 0) => Some(Prune::keeping(&refs, registry_scope(&host, &prefix))),
        (true, n) => {
            let why = format!(
                "not pruning: {n} repositor{} could not be listed",
                if n == 1 { "y" } else { "ies" }
            );
            out.event(&why, event_json("warning", json!({"warning": why})));
            None
        }
    };
    let (refs, unreadable) = match refs.len() > batch {
        true => bases_first(&sources, refs, &selection),
        false => (refs, Vec::new()),
    };
    // Reported once: their batch would only ask again, through every retry.
    for (reference, e) in &unreadable {
        super::convert::report_error(reference, e, out);
    }
    code |= i32::from(!unreadable.is_empty());
    let mut failed_inputs = unreadable.len();
    for (i, chunk) in refs.chunks(batch).enumerate() {
        let batches = refs.len().div_ceil(batch);
        out.event(
            &format!("batch {}/{batches}: {} images", i + 1, chunk.len()),
            event_json(
                "batch",
                json!({"batch": i + 1, "batches": batches, "images": chunk.len()}),
            ),
        );
        let batch = Batch {
            command: "migrate",
            refs: chunk,
            selection: &selection,
            prune: None,
            ledger: LedgerUse::Claim,
            failed_inputs: std::mem::take(&mut failed_inputs),
            // Every tag of the registry: its signatures and artifacts are skipped.
            listed: Listed::All,
            tag: None,
        };
        code |= run_batch(&repo, g, &sources, batch, &a.tuning, out)?;
    }
    if let Some(prune) = prune {
        out.say("pruning links of images no longer listed");
        let batch = Batch {
            command: "migrate",
            refs: &[],
            selection: &selection,
            prune: Some(prune),
            ledger: LedgerUse::Claim,
            failed_inputs: 0,
            listed: Listed::All,
            tag: None,
        };
        code |= run_batch(&repo, g, &sources, batch, &a.tuning, out)?;
    }
    Ok(code)
}

/// One line (and a JSON `error` event) for a repository whose tags could not be listed.
fn report_unlisted(repository: &str, why: &str, out: Output) {
    let line = format!(
        "repository {}: {}",
        crate::output::printable(repository),
        crate::output::printable(why)
    );
    crate::output::to_stderr(&format!("cvmfs-oci: error: {line}"));
    if out.json {
        out.event(
            "",
            event_json("error", json!({"repository": repository, "error": line})),
        );
    }
}

/// The repository path below which the links of `docker://HOST/PREFIX` live (`/HOST` or
/// `/HOST/PREFIX`).
fn registry_scope(host: &str, prefix: &str) -> Vec<u8> {
    let (probe, tail) = match prefix.is_empty() {
        true => (format!("docker://{host}/p/x:t"), "/p/x:t".len()),
        false => (format!("docker://{host}/{prefix}:t"), ":t".len()),
    };
    let mut link = link_of(&probe).unwrap_or_default();
    link.truncate(link.len().saturating_sub(tail));
    link
}

/// Orders images so that base images come before the images built on them, across batches:
/// a base layer read under an image's own layers also ingests the files they replace, which
/// only the base image needs (and a memo of an older version lacks them). A base image has fewer layers than any image built on it: images go by layer
/// count, in the listed order otherwise. Costs one manifest request per image, made only
/// when there is more than one batch; the images that cannot be read are returned apart, with
/// why. A tag that is no container image (a signature, an artifact) stays in, first: its
/// batch skips it, and says so, at the cost of a second manifest request.
fn bases_first(
    sources: &Sources,
    refs: Vec<String>,
    selection: &PlatformSelection,
) -> (Vec<String>, Vec<(String, anyhow::Error)>) {
    let counts = concurrent::map(&refs, concurrent::REQUESTS_IN_FLIGHT, |reference| {
        layer_count(sources, reference, selection)
    });
    let mut order = Vec::new();
    let mut unreadable = Vec::new();
    for (count, reference) in counts.into_iter().zip(refs) {
        match count {
            Ok(n) => order.push((n, reference)),
            Err(e) if Skip::of(&e).is_some() => order.push((0, reference)),
            Err(e) => unreadable.push((reference, e)),
        }
    }
    order.sort_by_key(|(count, _)| *count);
    let order = order.into_iter().map(|(_, reference)| reference).collect();
    (order, unreadable)
}

/// `docker://HOST[/PREFIX]` → (host, repository prefix).
fn parse_registry_url(url: &str) -> Result<(String, String)> {
    use ingest::image::reference::{redact_userinfo, USERINFO_REFUSED};
    let shown = redact_userinfo(url);
    if shown != url {
        bail!("{shown}: {USERINFO_REFUSED}");
    }
    let Some(rest) = url.strip_prefix("docker://") else {
        bail!("{url}: expected docker://REGISTRY[/REPOSITORY-PREFIX]");
    };
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        bail!("{url}: no registry host");
    }
    Ok((host.to_string(), prefix.trim_matches('/').to_string()))
}

fn patterns(globs: &[String]) -> Result<Vec<glob::Pattern>> {
    globs
        .iter()
        .map(|g| glob::Pattern::new(g).with_context(|| format!("glob {g:?}")))
        .collect()
}

/// What the registry listed: the selected images, and the repositories whose tag list could
/// not be read (with why).
struct Listing {
    refs: Vec<String>,
    unlisted: Vec<(String, String)>,
    /// The `--include` patterns no `repository:tag` matched.
    unmatched: Vec<String>,
}

/// The tags of one repository that the filters select, as `repository:tag`, and which
/// `--include` patterns matched any of its tags.
struct Selected {
    names: Vec<String>,
    matched: Vec<bool>,
}

/// Filters one repository's tags.
fn select_tags(
    repository: &str,
    tags: Vec<String>,
    include: &[glob::Pattern],
    exclude: &[glob::Pattern],
) -> Selected {
    let mut out = Selected {
        names: Vec::new(),
        matched: vec![false; include.len()],
    };
    for tag in tags {
        let name = format!("{repository}:{tag}");
        for (seen, p) in out.matched.iter_mut().zip(include) {
            *seen |= p.matches(&name);
        }
        let included = include.is_empty() || include.iter().any(|p| p.matches(&name));
        if included && !exclude.iter().any(|p| p.matches(&name)) {
            out.names.push(name);
        }
    }
    out
}

/// Every `repository:tag` of the registry under `prefix` that the filters select, as
/// `docker://` references, sorted. Repositories no filter lets through are not asked for
/// their tags; one whose tag list fails is reported in [`Listing::unlisted`] and the others
/// are still listed (`_catalog` often names repositories the caller may not read).
/// More than `max_selected` images selected is an error (a million `repository:tag` names
/// are about 100 MB).
fn list_images(
    sources: &Sources,
    (host, prefix): (&str, &str),
    include: &[glob::Pattern],
    exclude: &[glob::Pattern],
    max_selected: u64,
) -> Result<Listing> {
    let max_selected = usize::try_from(max_selected).unwrap_or(usize::MAX);
    let client = sources.registry()?;
    let repositories: Vec<String> = client
        .catalog(host)?
        .into_iter()
        .filter(|r| prefix.is_empty() || r == prefix || r.starts_with(&format!("{prefix}/")))
        .filter(|r| repository_may_be_selected(r, include, exclude))
        .collect();
    // One tag-list request per repository: several in flight. Each list is filtered as it
    // arrives and the images selected are counted across all: a registry listing millions of
    // tags per repository (each list within its own limits) must not fill the memory.
    let selected_so_far = AtomicUsize::new(0);
    let tags = concurrent::map(
        &repositories,
        concurrent::REQUESTS_IN_FLIGHT,
        |repository| -> Option<std::result::Result<Selected, ingest::image::Error>> {
            if selected_so_far.load(Ordering::Relaxed) > max_selected {
                return None;
            }
            let tags = client.list_tags(&RegistryRef {
                host: host.to_string(),
                repository: repository.clone(),
                tag: None,
                digest: None,
            });
            let selected = tags.map(|tags| select_tags(repository, tags, include, exclude));
            if let Ok(s) = &selected {
                selected_so_far.fetch_add(s.names.len(), Ordering::Relaxed);
            }
            Some(selected)
        },
    );
    if selected_so_far.load(Ordering::Relaxed) > max_selected {
        bail!(
            "docker://{host}: more than {max_selected} images selected (--max-images); narrow \
             the migration with a prefix, --include or --exclude"
        );
    }
    let mut out = BTreeSet::new();
    let mut unlisted = Vec::new();
    let mut matched = vec![false; include.len()];
    for (repository, selected) in repositories.iter().zip(tags) {
        let selected = match selected {
            Some(Ok(selected)) => selected,
            Some(Err(e)) => {
                unlisted.push((format!("docker://{host}/{repository}"), listing_error(&e)));
                continue;
            }
            None => continue,
        };
        for (seen, hit) in matched.iter_mut().zip(selected.matched) {
            *seen |= hit;
        }
        out.extend(
            selected
                .names
                .into_iter()
                .map(|name| format!("docker://{host}/{name}")),
        );
    }
    let unmatched = include
        .iter()
        .zip(matched)
        .filter(|(_, seen)| !seen)
        .map(|(p, _)| p.as_str().to_owned())
        .collect();
    Ok(Listing {
        refs: out.into_iter().collect(),
        unlisted,
        unmatched,
    })
}

/// Why a tag list failed, without the "image …" prefix the image errors carry: the line
/// names the repository itself.
fn listing_error(e: &ingest::image::Error) -> String {
    use ingest::image::Error;
    match e {
        Error::Registry { url, reason, .. } => format!("{url}: {reason}"),
        Error::Image { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// Whether some `repository:tag` of `repository` could pass the filters, decided from the
/// patterns' literal beginnings alone (when in doubt: yes). The glob `*` matches `/` and `:`
/// too, so `team/*` covers every tag of every repository below `team/`.
fn repository_may_be_selected(
    repository: &str,
    include: &[glob::Pattern],
    exclude: &[glob::Pattern],
) -> bool {
    let head = format!("{repository}:");
    let included =
        include.is_empty() || include.iter().any(|p| pattern_may_match(p.as_str(), &head));
    included
        && !exclude
            .iter()
            .any(|p| pattern_matches_all(p.as_str(), &head))
}

/// `pattern` up to its first wildcard, and the rest.
fn literal_prefix(pattern: &str) -> (&str, &str) {
    pattern.split_at(pattern.find(['*', '?', '[']).unwrap_or(pattern.len()))
}

/// Whether `pattern` may match a name `head` + tag (a tag has no `:` or `/`).
fn pattern_may_match(pattern: &str, head: &str) -> bool {
    let (literal, _) = literal_prefix(pattern);
    match literal.strip_prefix(head) {
        Some(tag_part) => !tag_part.contains([':', '/']),
        None => head.starts_with(literal),
    }
}

/// Whether `pattern` matches every name `head` + tag: its literal beginning is a prefix of
/// `head` and the rest is `*` alone.
fn pattern_matches_all(pattern: &str, head: &str) -> bool {
    let (literal, rest) = literal_prefix(pattern);
    !rest.is_empty() && rest.chars().all(|c| c == '*') && head.starts_with(literal)
}

/// What a migration would do: images already converted, layers the memo already knows, blob
/// bytes to download. Reads manifests and configs only; changes nothing.
/// Takes no lock (it reads the published revision): it neither waits for a running
/// migration nor holds one up.
fn forecast(
    repo: &publisher::Repository,
    sources: &Sources,
    refs: &[String],
    selection: &PlatformSelection,
    out: Output,
) -> Result<i32> {
    let memo = repo.layer_memo()?;
    super::note_set_aside(memo.set_aside(), "layer memo", out);
    let mut tree = repo.snapshot()?;
    let (mut complete, mut link_only, mut convert, mut failed) = (0usize, 0usize, 0usize, 0usize);
    // Signatures, artifacts and other platforms' images among the tags: the run skips them.
    let mut skips = SkipCounts::default();
    let mut layers = BTreeSet::new();
    let mut known = BTreeSet::new();
    let mut sizes = std::collections::BTreeMap::new();
    // Flat directories some image of the run converts: another name for the same image
    // (same config) only gets links, as the run does.
    let mut flats = BTreeSet::new();
    for (reference, planned) in refs
        .iter()
        .zip(plan(&mut tree, sources, refs, selection, out))
    {
        let result = planned.and_then(|jobs| {
            for job in jobs {
                match job.status {
                    Status::Complete => complete += 1,
                    Status::FlatPresent => link_only += 1,
                    Status::Missing if !flats.insert(job.placement.flat_dir.clone()) => {
                        link_only += 1
                    }
                    Status::Missing => {
                        convert += 1;
                        let image = job
                            .image
                            .ok_or_else(|| anyhow::anyhow!("{}: no config", job.name))?;
                        for (desc, diff_id) in image.layers.iter().zip(&image.config.diff_ids) {
                            let key = diff_id.to_string();
                            layers.insert(key.clone());
                            // A layer in two compressions (gzip and zstd images of one
                            // build) is fetched once, as either: the larger bounds it.
                            let size = sizes.entry(key.clone()).or_insert(0);
                            *size = (*size).max(desc.size);
                            if memo.get(&key)?.is_some_and(|l| l.is_complete()) {
                                known.insert(key);
                            }
                        }
                    }
                }
            }
            Ok(())
        });
        if let Some(skip) = result.as_ref().err().and_then(Skip::of) {
            skip.report(reference, &mut skips, out);
        } else if let Err(e) = result {
            failed += 1;
            // One line on stderr (not again on stdout), naming the image once.
            super::convert::report_error(reference, &e, out);
        }
    }
    let download: u64 = layers.difference(&known).filter_map(|l| sizes.get(l)).sum();
    let dedup: u64 = known.iter().filter_map(|l| sizes.get(l)).sum();
    out.event(
        &format!(
            "forecast: {} images: {complete} already converted, {link_only} need only links, {convert} to convert, {failed} unreadable{}\n  layers to flatten: {} distinct, {} already known (memo), {} to download\n  blob bytes to download: at most {:.1} MB (new content at most this, compressed); already known: {:.1} MB (deduplicated)",
            refs.len(),
            match skips.text() {
                t if t.is_empty() => t,
                t => format!(", {}", t.trim_end_matches(", ")),
            },
            layers.len(),
            known.len(),
            layers.len() - known.len(),
            download as f64 / 1e6,
            dedup as f64 / 1e6
        ),
        event_json(
            "migrate-forecast",
            json!({"images": refs.len(), "complete": complete, "link_only": link_only,
                   "convert": convert, "unreadable": failed, "not_images": skips.not_images,
                   "no_platform": skips.no_platform,
                   "layers": layers.len(),
                   "layers_known": known.len(), "download_bytes": download,
                   "known_bytes": dedup}),
        ),
    );
    Ok(if failed > 0 { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_url_with_credentials_is_refused_without_echoing_them() {
        let err = parse_registry_url("docker://u:SECRETPW123@r.io/team")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("docker://u:***@r.io/team: credentials do not belong"),
            "{err}"
        );
        assert_eq!(
            parse_registry_url("docker://r.io:5000/team/").unwrap(),
            ("r.io:5000".to_owned(), "team".to_owned())
        );
    }

    #[test]
    fn repositories_the_filters_rule_out_by_name_are_not_listed() {
        let pats = |g: &[&str]| {
            g.iter()
                .map(|p| glob::Pattern::new(p).unwrap())
                .collect::<Vec<_>>()
        };
        let selected = |repo: &str, inc: &[&str], exc: &[&str]| {
            repository_may_be_selected(repo, &pats(inc), &pats(exc))
        };
        assert!(selected("ok/plain", &["ok/plain:*"], &[]));
        assert!(!selected("basic/attfirst", &["ok/plain:*"], &[]));
        assert!(!selected("ok/plainer", &["ok/plain:*"], &[]));
        assert!(selected("ok/plainer", &["ok/plain*"], &[]));
        assert!(!selected("basic/x", &[], &["basic/*"]));
        assert!(!selected("basic", &[], &["basic*"]));
        assert!(selected("basic", &[], &["basic/*"]));
        assert!(
            selected("basic/x", &[], &["basic/*:v1"]),
            "other tags may pass"
        );
        assert!(
            selected("a/b", &["*/b:*"], &[]),
            "a wildcard first: undecided"
        );
        assert!(!selected("a/b", &["a/b:v1/x"], &[]), "a tag has no '/'");
        assert!(selected("a/b", &["a/b:v1"], &[]));
    }

    #[test]
    fn prune_scope_is_the_registry_or_its_prefix() {
        assert_eq!(registry_scope("127.0.0.1:5000", ""), b"/127.0.0.1:5000");
        assert_eq!(
            registry_scope("127.0.0.1:5000", "team"),
            b"/127.0.0.1:5000/team"
        );
        let prune = Prune::keeping(&[], registry_scope("r.example.org", "team"));
        for (link, covered) in [
            (&b"/r.example.org/team/app:1"[..], true),
            (b"/r.example.org/team:1", true),
            (b"/r.example.org/teams/app:1", false),
            (b"/r.example.org/other/app:1", false),
            (b"/q.example.org/team/app:1", false),
        ] {
            assert_eq!(
                prune.covers(link),
                covered,
                "{}",
                String::from_utf8_lossy(link)
            );
        }
    }
}
