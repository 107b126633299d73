//! `gc` end to end through the binary: what only old revisions referenced goes, the kept
//! revision reads back through the independent `cvmfs` crate, the re-signed manifest verifies
//! with the openssl command line, and content or images that come back after a collection
//! are stored again (the content index and the layer memo do not point at deleted objects).

mod common;

use common::{assert_manifest_verifies, assert_matches_source, noise, Env, FQRN};
use fixtures::oci::{Compression, ImageBuilder};
use std::path::Path;

fn last_json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.lines().last().unwrap_or("{}")).expect("JSON line")
}

/// The revisions a `gc` event says it kept, newest first.
fn kept(gc: &serde_json::Value) -> Vec<u64> {
    gc["kept"]
        .as_array()
        .expect("kept")
        .iter()
        .map(|k| k["revision"].as_u64().expect("revision"))
        .collect()
}

fn publish(env: &Env, dir: &Path) -> serde_json::Value {
    last_json(&env.ok(&["--json", "publish", FQRN, dir.to_str().unwrap()]))
}

#[test]
fn gc_frees_what_only_old_revisions_need_and_the_rest_reads_back() {
    let env = Env::init(&["--gc"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    fixtures::write_sample_tree(&src).unwrap();
    let big = noise(10 << 20, 7);
    std::fs::write(src.join("gone.bin"), &big).unwrap();
    publish(&env, &src);
    std::fs::remove_file(src.join("gone.bin")).unwrap();
    publish(&env, &src);
    std::fs::write(src.join("extra.txt"), "revision 4\n").unwrap();
    publish(&env, &src);
    assert_eq!(env.revision(), 4);

    let before = env.snapshot();
    let dry = last_json(&env.ok(&["--json", "gc", FQRN, "--keep-revisions", "0", "--dry-run"]));
    assert_eq!(env.snapshot(), before, "a dry run changes nothing");
    let deleted = dry["objects_deleted"].as_u64().unwrap();
    assert!(dry["bytes_deleted"].as_u64().unwrap() > 10_000_000, "{dry}");

    let log = env.path("deleted.log");
    let args = [
        "--json",
        "gc",
        FQRN,
        "--keep-revisions",
        "0",
        "--deletion-log",
    ];
    let r = last_json(&env.ok(&[&args[..], &[log.to_str().unwrap()]].concat()));
    assert_eq!(r["objects_deleted"].as_u64(), Some(deleted), "{r}");
    assert_eq!(kept(&r), [4, 3]);
    let names: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_eq!(names.len() as u64, deleted);
    for name in &names {
        let path = env.storage.join("data").join(&name[..2]).join(&name[2..]);
        assert!(!path.exists(), "{name} still stored");
    }
    assert!(
        names.iter().filter(|n| n.ends_with('P')).count() >= 2,
        "the chunks of gone.bin"
    );
    assert_eq!(env.revision(), 4);
    env.check(true);
    assert_manifest_verifies(&env);
    assert_matches_source(&env, &src, "");

    // The same bytes again: compressed and stored anew, not taken from the content index.
    std::fs::write(src.join("gone.bin"), &big).unwrap();
    let p = publish(&env, &src);
    assert!(p["objects_new"].as_u64().unwrap() >= 2, "{p}");
    env.check(true);
    assert_matches_source(&env, &src, "");
}

#[test]
fn an_image_converted_again_after_gc_is_stored_again() {
    let env = Env::init(&["--gc"]);
    let layout = env.path("layout");
    let mut image = ImageBuilder::new();
    for layer in fixtures::layers::edge_case_layers() {
        image = image.layer(layer, Compression::Gzip);
    }
    image.write_layout(&layout, "v1").unwrap();
    let oci = format!("oci:{}:v1", layout.display());
    env.ok(&["convert", FQRN, &oci]);
    // Two revisions without the image: it is no longer in any kept revision.
    let empty = env.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    publish(&env, &empty);
    std::fs::write(empty.join("note"), "nothing here\n").unwrap();
    publish(&env, &empty);
    let memos =
        |env: &Env| last_json(&env.ok(&["--json", "cache", "stats", FQRN]))["layers"].clone();
    let layers = fixtures::layers::edge_case_layers().len() as u64;
    assert_eq!(memos(&env).as_u64(), Some(layers));
    let indexed = |env: &Env| {
        last_json(&env.ok(&["--json", "cache", "stats", FQRN]))["index_objects"]
            .as_u64()
            .expect("index_objects")
    };
    let before = indexed(&env);
    assert!(before > 0);
    let r = last_json(&env.ok(&["--json", "gc", FQRN, "--keep-revisions", "0"]));
    assert!(r["objects_deleted"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["memos_forgotten"].as_u64(), Some(layers), "{r}");
    assert_eq!(memos(&env).as_u64(), Some(0));
    // The index forgets the deleted objects too.
    assert!(indexed(&env) < before);
    env.check(true);

    // The layers are read again and their objects stored anew.
    let s = last_json(&env.ok(&["--json", "convert", FQRN, &oci]));
    assert!(s["objects_new"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(memos(&env).as_u64(), Some(layers));
    env.check(true);
    let cache = env.path("witness-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let report = fixtures::witness::witness_read_dir(&env.storage, &cache).expect("witness read");
    assert!(
        report.entries.keys().any(|p| p.starts_with("/.flat/")),
        "the image is back"
    );
}

#[test]
fn gc_refuses_a_repository_not_declared_collectable() {
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    fixtures::write_sample_tree(&src).unwrap();
    publish(&env, &src);
    let before = env.snapshot();
    let line = env.fails(&["gc", FQRN, "--keep-revisions", "0"]);
    assert!(line.contains("not garbage-collectable"), "{line}");
    assert_eq!(env.snapshot(), before);
    let line = env.fails(&["gc", FQRN, "--keep-since", "yesterday"]);
    assert!(line.contains("--keep-since"), "{line}");
}

#[test]
fn tags_name_revisions_that_gc_keeps() {
    let env = Env::init(&["--gc"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), noise(100_000, 1)).unwrap();
    publish(&env, &src);
    let t = last_json(&env.ok(&[
        "--json",
        "tag",
        FQRN,
        "--add",
        "release-1",
        "--description",
        "first release",
    ]));
    assert_eq!(
        (t["revision"].as_u64(), t["name"].as_str()),
        (Some(2), Some("release-1"))
    );
    assert_manifest_verifies(&env);
    env.check(true);
    for seed in [2, 3] {
        std::fs::write(src.join("a"), noise(100_000, seed)).unwrap();
        publish(&env, &src);
    }
    let listed: Vec<String> = env
        .ok(&["--json", "tag", FQRN])
        .lines()
        .map(|l| last_json(l)["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ["release-1", "trunk", "trunk-previous"]);

    let r = last_json(&env.ok(&["--json", "gc", FQRN, "--keep-revisions", "0"]));
    assert_eq!(kept(&r), [4, 3, 2]);
    env.check(true);

    env.ok(&["tag", FQRN, "--remove", "release-1"]);
    assert_manifest_verifies(&env);
    let line = env.fails(&["tag", FQRN, "--remove", "release-1"]);
    assert!(line.contains("no tag release-1"), "{line}");
    let line = env.fails(&["tag", FQRN, "--add", "trunk"]);
    assert!(line.contains("maintained by every publish"), "{line}");
    let r = last_json(&env.ok(&["--json", "gc", FQRN, "--keep-revisions", "0"]));
    assert_eq!(kept(&r), [4, 3]);
    assert!(r["bytes_deleted"].as_u64().unwrap() > 100_000, "{r}");
    let line = env.fails(&["tag", FQRN, "--add", "late", "--revision", "2"]);
    assert!(line.contains("not stored"), "{line}");
    env.check(true);
    assert_manifest_verifies(&env);
    assert_matches_source(&env, &src, "");
}

/// The tags (name, revision, description) `tag` lists.
fn tags(env: &Env) -> Vec<(String, u64, String)> {
    env.ok(&["--json", "tag", FQRN])
        .lines()
        .map(|l| {
            let t = last_json(l);
            let text = |k: &str| t[k].as_str().unwrap().to_string();
            (
                text("name"),
                t["revision"].as_u64().unwrap(),
                text("description"),
            )
        })
        .collect()
}

#[test]
fn publish_ingest_and_convert_tag_the_revision_they_make() {
    let env = Env::init(&["--gc"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), noise(50_000, 1)).unwrap();
    let dir = src.to_str().unwrap();
    let tagged = |out: &str| {
        let event = out
            .lines()
            .map(last_json)
            .find(|e| e["action"] == "tag")
            .expect("a tag event");
        (
            event["tag"].as_str().unwrap().to_string(),
            event["revision"].as_u64().unwrap(),
        )
    };

    // In the same commit as the revision: revision 2 is the first publish's, not a re-sign.
    let out = env.ok(&[
        "--json",
        "publish",
        FQRN,
        dir,
        "--tag",
        "v1",
        "--tag-description",
        "first",
    ]);
    assert_eq!(tagged(&out), ("v1".to_string(), 2));
    assert_eq!(env.revision(), 2);
    let tag = |name: &str, revision: u64, description: &str| {
        (name.to_string(), revision, description.to_string())
    };
    assert_eq!(
        tags(&env),
        [
            tag("trunk", 2, "current HEAD"),
            tag("trunk-previous", 1, "default undo target"),
            tag("v1", 2, "first")
        ]
    );
    assert_manifest_verifies(&env);
    env.check(true);

    // Nothing changed: no revision is made, and the current one gets the tag.
    let out = env.ok(&["--json", "publish", FQRN, dir, "--tag", "v1-again"]);
    assert_eq!(tagged(&out), ("v1-again".to_string(), 2));
    assert_eq!(env.revision(), 2);
    assert!(tags(&env).contains(&tag("v1-again", 2, "")));
    assert_manifest_verifies(&env);

    // A name another revision has moves to the new one; trunk-previous stays as ever.
    std::fs::write(src.join("a"), noise(50_000, 2)).unwrap();
    let out = env.ok(&["--json", "publish", FQRN, dir, "--tag", "v1"]);
    assert_eq!(tagged(&out), ("v1".to_string(), 3));
    let listed = tags(&env);
    assert!(listed.contains(&tag("v1", 3, "")), "{listed:?}");
    assert!(listed.contains(&tag("trunk-previous", 2, "default undo target")));

    // A name that cannot be a tag fails before any work; so does a description alone.
    std::fs::write(src.join("a"), noise(50_000, 3)).unwrap();
    for (args, why) in [
        (&["--tag", "trunk"][..], "maintained by every publish"),
        (&["--tag", "a b"][..], "use letters, digits"),
        (&["--tag-description", "x"][..], "--tag <NAME>"),
    ] {
        let mut all = vec!["publish", FQRN, dir];
        all.extend_from_slice(args);
        let out = env.run(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
    }
    assert_eq!(env.revision(), 3);

    // ingest and convert take it too.
    let tar = common::gnu_tar(&env, &src, "src.tar", "--no-auto-compress");
    let out = env.ok(&[
        "--json",
        "ingest",
        FQRN,
        tar.to_str().unwrap(),
        "--path",
        "/t",
        "--tag",
        "ingested",
    ]);
    assert_eq!(tagged(&out), ("ingested".to_string(), 4));
    let layout = env.path("layout");
    let image = ImageBuilder::new().layer(
        fixtures::layers::edge_case_layers().remove(0),
        Compression::Gzip,
    );
    image.write_layout(&layout, "v1").unwrap();
    let oci = format!("oci:{}:v1", layout.display());
    let out = env.ok(&["--json", "convert", FQRN, &oci, "--tag", "image-1"]);
    assert_eq!(tagged(&out), ("image-1".to_string(), 5));
    // Converted again: unchanged, and the tag names the revision that holds it.
    let out = env.ok(&["--json", "convert", FQRN, &oci, "--tag", "image-1b"]);
    assert_eq!(tagged(&out), ("image-1b".to_string(), 5));

    // gc keeps what the tags name.
    let r = last_json(&env.ok(&["--json", "gc", FQRN, "--keep-revisions", "0"]));
    assert_eq!(kept(&r), [5, 4, 3, 2]);
    env.check(true);
    assert_manifest_verifies(&env);
}

#[test]
fn automatic_gc_runs_after_a_publish_at_most_daily() {
    let line = Env::init_fails(&["--auto-gc", "3d"]);
    assert!(line.contains("garbage-collectable"), "{line}");
    let env = Env::init(&["--gc", "--auto-gc", "0s"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("gone.bin"), noise(3 << 20, 9)).unwrap();
    let gc_events = |out: &str| -> Vec<serde_json::Value> {
        out.lines()
            .map(last_json)
            .filter(|v| v["action"] == "gc")
            .collect()
    };
    let publish_all = |env: &Env| env.ok(&["--json", "publish", FQRN, src.to_str().unwrap()]);
    // The first publish collects (none ran before) and records when.
    assert_eq!(gc_events(&publish_all(&env)).len(), 1);
    let last_gc = env.home.join(FQRN).join("state/last_gc");
    assert!(last_gc.exists());
    std::fs::remove_file(src.join("gone.bin")).unwrap();
    assert!(
        gc_events(&publish_all(&env)).is_empty(),
        "ran less than a day ago"
    );
    std::fs::write(src.join("a"), "revision 4\n").unwrap();
    assert!(gc_events(&publish_all(&env)).is_empty());

    // A day later (as far as the record says): the next publish collects, keeping what was
    // current in the last 0 s (the new revision) and trunk-previous. Revision 4 must be older
    // than that second for the chain to stop there.
    std::fs::write(&last_gc, "1000000000\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(src.join("a"), "revision 5\n").unwrap();
    let events = gc_events(&publish_all(&env));
    assert_eq!(events.len(), 1);
    assert_eq!(kept(&events[0]), [5, 4]);
    assert!(
        events[0]["bytes_deleted"].as_u64().unwrap() > 3_000_000,
        "{}",
        events[0]
    );
    env.check(true);
    assert_matches_source(&env, &src, "");
}

/// The tag names of the current history, by name.
fn tag_names(env: &Env) -> Vec<(String, u64)> {
    env.ok(&["--json", "tag", FQRN])
        .lines()
        .map(|l| {
            let t = last_json(l);
            (
                t["name"].as_str().unwrap().to_string(),
                t["revision"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn rollback_publishes_a_tagged_tree_again_as_cvmfs_server_does() {
    let env = Env::init(&["--gc"]);
    let trees: Vec<_> = (1..=3u64)
        .map(|n| {
            let dir = env.path(&format!("v{n}"));
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            std::fs::write(dir.join("big.bin"), noise(200_000, n)).unwrap();
            std::fs::write(dir.join("sub/version"), format!("{n}\n")).unwrap();
            dir
        })
        .collect();
    publish(&env, &trees[0]);
    env.ok(&["tag", FQRN, "--add", "release-1", "--description", "first"]);
    publish(&env, &trees[1]);
    env.ok(&["tag", FQRN, "--add", "release-2"]);
    publish(&env, &trees[2]);
    assert_eq!(env.revision(), 4);

    // A crash before the manifest leaves revision 4 standing; the rerun completes.
    let out = env
        .cmd(&["rollback", FQRN, "--tag", "release-1"])
        .env("CVMFS_OCI_CRASH_AT", "before-manifest")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(env.revision(), 4);
    env.check(true);
    assert_matches_source(&env, &trees[2], "");

    let r = last_json(&env.ok(&["--json", "rollback", FQRN, "--tag", "release-1"]));
    assert_eq!(r["revision"].as_u64(), Some(5), "{r}");
    assert_eq!(r["target"]["revision"].as_u64(), Some(2), "{r}");
    let removed: Vec<&str> = r["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["trunk", "release-2", "trunk-previous"], "{r}");
    assert_eq!(env.revision(), 5);
    env.check(true);
    assert_manifest_verifies(&env);
    assert_matches_source(&env, &trees[0], "");
    assert_eq!(
        tag_names(&env),
        [("release-1".to_string(), 5), ("trunk".to_string(), 5)]
    );
    let listed = env.ok(&["--json", "tag", FQRN]);
    let release = last_json(listed.lines().next().unwrap());
    assert_eq!(release["description"], "first");
    assert_eq!(release["root"], r["root"]);

    // Nothing newer to go back from, and no undo target left.
    let line = env.fails(&["rollback", FQRN, "--tag", "release-1"]);
    assert!(line.contains("the current revision"), "{line}");
    let line = env.fails(&["rollback", FQRN]);
    assert!(line.contains("no trunk-previous"), "{line}");
    let line = env.fails(&["rollback", FQRN, "--tag", "release-2"]);
    assert!(line.contains("no tag release-2"), "{line}");

    // Without a tag: undo the last publish.
    publish(&env, &trees[1]);
    assert_matches_source(&env, &trees[1], "");
    let r = last_json(&env.ok(&["--json", "rollback", FQRN]));
    assert_eq!(
        (r["revision"].as_u64(), r["target"]["revision"].as_u64()),
        (Some(7), Some(5)),
        "{r}"
    );
    assert_matches_source(&env, &trees[0], "");
    assert_eq!(
        tag_names(&env),
        [("release-1".to_string(), 5), ("trunk".to_string(), 7)]
    );

    // What only the rolled-back revisions held can be collected; the tree stays whole.
    let g = last_json(&env.ok(&["--json", "gc", FQRN, "--keep-revisions", "0"]));
    assert_eq!(kept(&g), [7, 5]);
    assert!(g["bytes_deleted"].as_u64().unwrap() > 200_000, "{g}");
    env.check(true);
    assert_matches_source(&env, &trees[0], "");
}

/// Revisions 2..=5 of a tree whose `sub/` has a nested catalog and a file that changes each
/// time, so that every old revision has a nested catalog and an object of its own.
fn four_revisions_with_a_nested_catalog(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/.cvmfscatalog"), "").unwrap();
    for seed in 1..=4 {
        std::fs::write(src.join("sub/f"), noise(50_000, seed)).unwrap();
        publish(env, &src);
    }
    assert_eq!(env.revision(), 5);
    src
}

#[test]
fn a_collection_stopped_while_deleting_leaves_no_half_revision_behind() {
    let env = Env::init(&["--gc"]);
    let src = four_revisions_with_a_nested_catalog(&env);
    // Killed right after the abandoned revisions' root catalogs went, before their nested
    // catalogs and files.
    let out = env
        .cmd(&["gc", FQRN, "--keep-revisions", "0"])
        .env("CVMFS_OCI_CRASH_AT", "gc-after-heads")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fault point aborts");
    // Revisions 2 and 3 are gone as a whole: no tag can name them, nothing can roll back
    // to them, and a collection keeping three days of revisions is not blocked by them.
    for revision in ["2", "3"] {
        let line = env.fails(&["tag", FQRN, "--add", "old", "--revision", revision]);
        assert!(line.contains("not stored"), "{line}");
    }
    env.check(true);
    let r = last_json(&env.ok(&["--json", "gc", FQRN]));
    assert_eq!(kept(&r), [5, 4]);
    assert!(
        r["objects_deleted"].as_u64().unwrap() >= 4,
        "the rest goes now: {r}"
    );
    env.check(true);
    assert_matches_source(&env, &src, "");
}

/// The `Y` line of the signed manifest, and the SHA-1 of `.cvmfsreflog`.
fn reflog_hashes(env: &Env) -> (String, String) {
    let reflog = std::fs::read(env.storage.join(".cvmfsreflog")).unwrap();
    (
        env.manifest_field('Y'),
        catalog_writer::hash::ContentHash::of(&reflog).to_hex(),
    )
}

#[test]
fn a_collection_stopped_between_reflog_and_manifest_is_completed_by_its_rerun() {
    let env = Env::init(&["--gc"]);
    let src = four_revisions_with_a_nested_catalog(&env);
    let out = env
        .cmd(&["gc", FQRN, "--keep-revisions", "0"])
        .env("CVMFS_OCI_CRASH_AT", "after-reflog")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fault point aborts");
    let (named, actual) = reflog_hashes(&env);
    assert_ne!(named, actual, "the window: a new reflog, the old manifest");
    // The rerun has no entry left to remove, and still signs the manifest for the reflog
    // (which `cvmfs_swissknife check` verifies).
    env.ok(&["gc", FQRN, "--keep-revisions", "0"]);
    let (named, actual) = reflog_hashes(&env);
    assert_eq!(named, actual);
    assert_manifest_verifies(&env);
    env.check(true);
    assert_matches_source(&env, &src, "");
}

/// The objects a `gc --keep-revisions N` would delete (a dry run's deletion log).
fn doomed(env: &Env, keep: &str) -> std::collections::BTreeSet<String> {
    let log = env.path(&format!("doomed-{keep}.log"));
    let _ = std::fs::remove_file(&log);
    let log_arg = log.to_str().unwrap();
    let args = [
        "gc",
        FQRN,
        "--keep-revisions",
        keep,
        "--dry-run",
        "--deletion-log",
        log_arg,
    ];
    env.ok(&args);
    let text = std::fs::read_to_string(&log).unwrap();
    text.lines().skip(1).map(str::to_string).collect()
}

fn remove_object(env: &Env, name: &str) {
    std::fs::remove_file(env.storage.join("data").join(&name[..2]).join(&name[2..])).unwrap();
}

#[test]
fn a_revision_missing_objects_is_neither_tagged_nor_rolled_back_to() {
    let env = Env::init(&["--gc"]);
    four_revisions_with_a_nested_catalog(&env);
    // What only revision 2 references, and what only revision 3 does.
    let only_2 = doomed(&env, "2");
    let only_3: Vec<String> = doomed(&env, "1").difference(&only_2).cloned().collect();
    env.ok(&["tag", FQRN, "--add", "second", "--revision", "3"]);
    // Data objects (not catalogs: a missing root catalog ends the chain), as a collection
    // stopped by an older version, or a hand, could lose them.
    let data = |names: &[&String]| -> String {
        // A whole file's object: no suffix (old history objects `H` go too).
        let found = names.iter().find(|n| n.len() == 40);
        found.expect("a file's object").to_string()
    };
    remove_object(&env, &data(&only_2.iter().collect::<Vec<_>>()));
    remove_object(&env, &data(&only_3.iter().collect::<Vec<_>>()));
    let before = env.snapshot();
    let line = env.fails(&["tag", FQRN, "--add", "first", "--revision", "2"]);
    assert!(
        line.contains("revision 2") && line.contains("not complete"),
        "{line}"
    );
    let line = env.fails(&["rollback", FQRN, "--tag", "second"]);
    assert!(
        line.contains("revision 3") && line.contains("not complete"),
        "{line}"
    );
    assert_eq!(env.snapshot(), before, "nothing written");
    env.check(true);
}

#[test]
fn a_half_deleted_old_revision_does_not_block_later_collections() {
    let env = Env::init(&["--gc"]);
    let src = four_revisions_with_a_nested_catalog(&env);
    // Revision 3's nested catalog gone, its root left (as a collection by an older version,
    // stopped half-way, could leave it).
    let only_2 = doomed(&env, "2");
    let t = last_json(&env.ok(&["--json", "tag", FQRN, "--add", "probe", "--revision", "3"]));
    let root_3 = format!("{}C", t["root"].as_str().unwrap());
    env.ok(&["tag", FQRN, "--remove", "probe"]);
    let nested_3 = doomed(&env, "1")
        .difference(&only_2)
        .find(|n| n.ends_with('C') && **n != root_3)
        .cloned()
        .expect("the nested catalog only revision 3 has");
    remove_object(&env, &nested_3);
    // Every revision is younger than three days: the window holds revision 3.
    let out = env.ok(&["--json", "gc", FQRN]);
    let r = last_json(&out);
    let dropped: Vec<u64> = r["incomplete_dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(dropped.contains(&3), "{r}");
    assert!(!kept(&r).contains(&3), "{r}");
    assert!(kept(&r).contains(&2), "complete, in the window: {r}");
    env.check(true);
    assert_matches_source(&env, &src, "");
}
