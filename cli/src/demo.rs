//! The bundled default job: a repository in a temporary directory, a sample tree published into
//! it, a full check, and the client settings to mount it. Needs no network.

use crate::args::{
    CheckArgs, DemoArgs, Global, GraftArgs, InitArgs, PublishArgs, RevisionTagArgs, TuningArgs,
};
use crate::commands;
use crate::output::Output;
use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

const FQRN: &str = "demo.cvmfs-oci.local";

pub fn run(a: &DemoArgs, g: &Global, out: Output) -> Result<i32> {
    let out = Output {
        fqrn: Some(FQRN),
        ..out
    };
    if g.home.is_some() || g.keys.is_some() {
        // Self-contained: deleting the demo directory leaves nothing behind.
        crate::output::to_stderr(
            "cvmfs-oci: note: demo keeps its home and keys inside its own directory \
             (--dir): --home (or CVMFS_OCI_HOME) and --keys are not used",
        );
    }
    let base = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("cvmfs-oci-demo-{}", std::process::id())),
    };
    if base.join("storage").exists() {
        anyhow::bail!(
            "{}: already holds a demo repository; pick another --dir",
            base.display()
        );
    }
    let home = base.join("home");
    // Its temporary databases go inside the demo directory too, as other commands' go to
    // their home (none is left behind in TMPDIR when the demo directory is deleted).
    publisher::tempdb::set_scratch_root(home.join("tmp"));
    let storage = base.join("storage");
    let source = base.join("source");
    write_sample_tree(&source).with_context(|| format!("writing {}", source.display()))?;
    out.say(&format!("demo directory: {}", base.display()));

    let g = Global {
        home: Some(home.clone()),
        keys: None,
        json: out.json,
        no_wait: false,
    };
    let init = InitArgs {
        fqrn: FQRN.into(),
        storage: storage.clone(),
        whitelist_days: 30,
        ttl: 240,
        gc: false,
        auto_gc: None,
        max_catalog_entries: 100_000,
        no_chunking: false,
        existing: false,
    };
    commands::init(&home, &g, &init, out)?;
    let tuning = TuningArgs {
        no_chunking: false,
        workers: None,
        memory_mib: None,
    };
    let publish = PublishArgs {
        fqrn: FQRN.into(),
        source: source.clone(),
        rescan: false,
        graft: GraftArgs {
            path: "/".into(),
            catalog: false,
            owner: None,
        },
        tag: RevisionTagArgs {
            name: None,
            description: None,
        },
        tuning,
    };
    commands::publish(&home, &g, &publish, out)?;
    let check = CheckArgs {
        fqrn: FQRN.into(),
        full: true,
        storage: None,
        key: vec![],
    };
    let code = commands::check(&home, &check, out)?;
    commands::info(&home, FQRN, out)?;
    out.say(&format!(
        "serve it and mount it:\n  (cd {} && python3 -m http.server 8000 --bind 127.0.0.1) &\n  CVMFS_SERVER_URL=http://127.0.0.1:8000\n  CVMFS_PUBLIC_KEY={}\n  CVMFS_HTTP_PROXY=DIRECT\n  mkdir -p /cvmfs/{FQRN} && mount -t cvmfs {FQRN} /cvmfs/{FQRN}",
        storage.display(),
        home.join(FQRN).join("keys").join(format!("{FQRN}.pub")).display()
    ));
    Ok(code)
}

/// A small tree with the usual cases: text, an empty file, a chunked 20 MiB file, a symlink,
/// a hardlink pair, an executable and a nested catalog.
fn write_sample_tree(dir: &Path) -> Result<()> {
    let p = |rel: &str| -> PathBuf { dir.join(rel) };
    fs::create_dir_all(p("bin"))?;
    fs::create_dir_all(p("share/doc"))?;
    fs::create_dir_all(p("lib/python"))?;
    fs::write(p("share/doc/README"), b"cvmfs-oci demo repository\n")?;
    fs::write(p("share/doc/empty"), b"")?;
    fs::write(p("bin/hello"), b"#!/bin/sh\necho hello from CernVM-FS\n")?;
    fs::set_permissions(p("bin/hello"), fs::Permissions::from_mode(0o755))?;
    symlink("../share/doc/README", p("bin/readme"))?;
    fs::hard_link(p("share/doc/README"), p("share/doc/README.hardlink"))?;
    fs::write(p("lib/python/.cvmfscatalog"), b"")?;
    for i in 0..50 {
        fs::write(
            p(&format!("lib/python/mod{i:02}.py")),
            format!("VALUE = {i}\n"),
        )?;
    }
    // Log-like text, large enough to be cut by the content-defined chunker.
    let mut big = fs::File::create(p("share/big.log"))?;
    let mut line = 0u64;
    let mut written = 0usize;
    while written < 20 << 20 {
        let s = format!(
            "2026-11-25T12:{:02}:{:02} worker-{} processed item {} status=ok\n",
            (line / 60) % 60,
            line % 60,
            line % 7,
            line.wrapping_mul(2654435761) % 1_000_003
        );
        big.write_all(s.as_bytes())?;
        written += s.len();
        line += 1;
    }
    Ok(())
}
