//! `cvmfs-oci-bench`: runs the benchmark cases and prints the table (or JSON).

use anyhow::{bail, Context, Result};
use clap::Parser;
use cvmfs_oci_bench::cases::{self, CaseResult, Settings};
use cvmfs_oci_bench::{child, report};
use std::collections::BTreeSet;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "cvmfs-oci-bench",
    args_override_self = true,
    about = "Benchmark cvmfs-oci on the shared testbed against same-run floors"
)]
struct Args {
    /// The cvmfs-oci binary to measure.
    #[arg(long = "cvmfs-oci", default_value = "target/release/cvmfs-oci")]
    cvmfs_oci: PathBuf,
    /// Cases to run: 1 fresh convert, 2 same content re-tagged (needs 1, runs it),
    /// 3 corpus batch (and 3L: the same from its OCI layout), 4 small-file publish,
    /// 5 registry migration of many small images.
    #[arg(long, default_value = "1,2,3,4,5", value_delimiter = ',')]
    cases: Vec<u32>,
    /// Testbed outputs (oci/, corpus/oci, corpus.txt).
    #[arg(long, default_value = "/tmp/testbed")]
    testbed: PathBuf,
    /// Registry host:port serving the testbed images (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:5000")]
    registry: String,
    /// Scratch directory for repositories and the small-file tree (kept for reuse).
    #[arg(long, default_value = "/tmp/cvmfs-oci-bench")]
    work: PathBuf,
    /// Number of files of case 4.
    #[arg(long, default_value_t = 100_000)]
    small_files: usize,
    /// Number of images of case 5 (a multiple of 80: repositories of 20 tags, a quarter of
    /// the repositories first).
    #[arg(long, default_value_t = 1000)]
    scale_images: usize,
    /// The floor compresses contents in pieces of this many MiB (0 = whole contents).
    #[arg(long, default_value_t = 8)]
    floor_piece_mib: usize,
    /// Run each floor and each fresh tool run this many times; the fastest counts (peak RSS:
    /// the largest). Case 2 runs once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// One JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Exit with status 1 when a case misses its target or fails.
    #[arg(long)]
    fail_on_miss: bool,
}

fn main() -> Result<()> {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if raw.get(1).is_some_and(|a| a == child::MEASURE_ARG) {
        std::process::exit(child::measure_main(&raw[2..]));
    }
    let a = Args::parse();
    let wanted: BTreeSet<u32> = a.cases.iter().copied().collect();
    if let Some(bad) = wanted.iter().find(|c| !(1..=5).contains(*c)) {
        bail!("--cases: no case {bad} (1-5)");
    }
    let tool = std::fs::canonicalize(&a.cvmfs_oci)
        .with_context(|| format!("--cvmfs-oci {}", a.cvmfs_oci.display()))?;
    std::fs::create_dir_all(&a.work).with_context(|| format!("--work {}", a.work.display()))?;
    let s = Settings {
        tool: tool.clone(),
        measurer: std::env::current_exe().context("locating cvmfs-oci-bench itself")?,
        testbed: a.testbed.clone(),
        registry: a.registry.clone(),
        work: std::fs::canonicalize(&a.work)?,
        piece: a.floor_piece_mib << 20,
        small_files: a.small_files,
        scale_images: a.scale_images,
        repeat: a.repeat as usize,
    };
    let needs_registry = wanted.iter().any(|c| *c != 4);
    if needs_registry && !cases::registry_alive(&s.registry) {
        bail!(
            "no registry answers on http://{}/v2/ (run shared/testbed/registry start)",
            s.registry
        );
    }
    cases::settle_after_deletions(&s.work);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let progress = |r: &CaseResult| {
        eprintln!(
            "case {}: {} ({})",
            r.case,
            r.wall_s.map_or("-".into(), |w| format!("{w:.2} s")),
            r.error.as_deref().unwrap_or("ok")
        )
    };
    let mut results = Vec::new();
    if wanted.contains(&1) || wanted.contains(&2) {
        eprintln!("case 1: floor, then convert ...");
        let (r1, repo) = cases::case1(&s);
        progress(&r1);
        if wanted.contains(&2) {
            match &repo {
                Some(repo) => {
                    eprintln!("case 2: convert again under other tags ...");
                    for r in cases::case2(&s, &r1, repo) {
                        progress(&r);
                        results.push(r);
                    }
                }
                None => eprintln!("case 2: skipped, case 1 did not convert"),
            }
        }
        results.insert(0, r1);
    }
    if wanted.contains(&3) {
        eprintln!("case 3: floor of the corpus, then convert the batch ...");
        let r = cases::case3(&s);
        progress(&r);
        eprintln!("case 3L: the corpus again, from its OCI layout (no registry) ...");
        let layout = cases::case3_layout(&s, &r);
        progress(&layout);
        results.push(r);
        results.push(layout);
    }
    if wanted.contains(&4) {
        eprintln!("case 4: tree + floor, then publish ...");
        let r = cases::case4(&s);
        progress(&r);
        results.push(r);
    }
    if wanted.contains(&5) {
        eprintln!("case 5: registry of many small images, then migrate a quarter and all ...");
        let r = cases::case5(&s);
        progress(&r);
        results.push(r);
    }
    if a.json {
        let mut doc = report::json_doc(&results, cores, &tool.display().to_string());
        doc["repeat"] = a.repeat.into();
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "machine: {cores} cores; tool {}; best of {} run(s)",
            tool.display(),
            a.repeat
        );
        print!("{}", report::table(&results, cores));
    }
    cases::empty_trash(&s.work);
    if a.fail_on_miss && results.iter().any(|r| r.pass != Some(true)) {
        std::process::exit(1);
    }
    Ok(())
}
