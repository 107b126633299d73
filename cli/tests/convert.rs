//! `convert` end to end against a real `docker-registry` on loopback, with images built in code.
//! Read back through the independent `cvmfs` crate and compared with `umoci raw unpack`.

mod common;

use common::{convert_edge_layout_and_archive, edge_image, lock_holder, Env, FQRN};
use fixtures::oci::{Compression, ImageBuilder, MediaTypes};
use fixtures::registry::PushOptions;
use fixtures::Registry;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

fn registry_or_skip() -> Option<Registry> {
    if fixtures::tools::skip_if_missing(&[
        fixtures::tools::DOCKER_REGISTRY,
        fixtures::tools::SKOPEO,
        fixtures::tools::UMOCI,
        fixtures::tools::HTPASSWD,
    ]) {
        return None;
    }
    Some(Registry::start().expect("start docker-registry"))
}

/// A registry, a fresh repository and a path for OCI layouts; `None` when tools are missing.
fn registry_env() -> Option<(Registry, Env, std::path::PathBuf)> {
    let reg = registry_or_skip()?;
    let env = Env::init(&[]);
    let layout = env.path("layout");
    Some((reg, env, layout))
}

fn link_target(env: &Env, link: &str) -> String {
    let report = witness(env);
    let entry = report
        .entries
        .get(link)
        .unwrap_or_else(|| panic!("no link {link}"));
    let target = entry.symlink_target.clone().expect("a symlink");
    // Resolve the relative target against the link's directory.
    let mut parts: Vec<&str> = link.split('/').filter(|p| !p.is_empty()).collect();
    parts.pop();
    for t in target.split('/') {
        match t {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

fn witness(env: &Env) -> fixtures::witness::WitnessReport {
    let cache = env.path("witness-cache");
    std::fs::create_dir_all(&cache).unwrap();
    fixtures::witness::witness_read_dir(&env.storage, &cache).expect("witness read")
}

/// The flat directory of an image compared file by file with umoci's unpacking of `layout:ref`.
fn assert_flat_matches_umoci(env: &Env, flat: &str, layout: &Path, reference: &str) {
    let rootfs = fixtures::umoci::unpack_reference(layout, reference).expect("umoci unpack");
    let mut fs: BTreeMap<Vec<u8>, fixtures::FsEntry> = BTreeMap::new();
    for (k, mut v) in fixtures::tree_listing(rootfs.path()).expect("listing") {
        // CVMFS catalogs cannot hold xattr values over 255 bytes; cvmfs-oci drops them with a
        // warning (see the convert output), so the reference does not carry them either.
        v.xattrs.retain(|_, val| val.len() <= 255);
        let mut p = flat.as_bytes().to_vec();
        if k != b"/" {
            p.extend_from_slice(&k);
        }
        fs.insert(p, v);
    }
    let report = witness(env);
    let inside: BTreeMap<String, _> = report
        .entries
        .into_iter()
        .map(|(k, mut v)| {
            // umoci does not restore xattrs with empty values; CVMFS keeps them.
            v.xattr_blob = v.xattr_blob.map(|b| drop_empty_xattrs(&b));
            (k, v)
        })
        .filter(|(k, _)| {
            (k == flat || k.starts_with(&format!("{flat}/")))
                && !k.starts_with(&format!("{flat}/.singularity.d"))
        })
        .collect();
    let diffs = fixtures::witness::compare(&fs, &inside);
    assert!(
        diffs.is_empty(),
        "{flat} differs from umoci's {reference}:\n{}",
        diffs.join("\n")
    );
}

/// Re-encodes an xattr blob (spec 2.9) without the attributes whose value is empty.
fn drop_empty_xattrs(blob: &[u8]) -> Vec<u8> {
    let attrs = fixtures::witness::decode_xattrs(blob).unwrap_or_default();
    let kept: Vec<_> = attrs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let mut out = vec![1u8, kept.len() as u8];
    for (k, v) in kept {
        out.push(k.len() as u8);
        out.push(v.len() as u8);
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&v);
    }
    out
}

#[test]
fn converts_registry_images_in_one_revision_like_umoci() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    let cases = [
        ("gzip", Compression::Gzip, MediaTypes::Oci, false),
        ("zstd", Compression::Zstd, MediaTypes::Oci, false),
        ("plain", Compression::None, MediaTypes::Oci, false),
        // skopeo converts to Docker v2s2 media types while pushing.
        ("docker", Compression::Gzip, MediaTypes::Oci, true),
    ];
    for (tag, c, m, v2s2) in cases {
        edge_image(c, m).write_layout(&layout, tag).expect("layout");
        let opts = PushOptions {
            docker_v2s2: v2s2,
            all: false,
        };
        reg.push_oci_layout_with(&layout, tag, &format!("fixtures/edge:{tag}"), opts)
            .expect("push");
    }
    fixtures::oci::write_two_platform_index(
        &layout,
        "multi",
        &fixtures::layers::edge_case_layers(),
    )
    .expect("index");
    reg.push_oci_layout_with(
        &layout,
        "multi",
        "fixtures/multi:1",
        PushOptions {
            docker_v2s2: false,
            all: true,
        },
    )
    .expect("push index");

    let addr = reg.addr();
    let images: Vec<String> = ["edge:gzip", "edge:zstd", "edge:plain", "edge:docker"]
        .iter()
        .map(|t| format!("docker://{addr}/fixtures/{t}"))
        .collect();
    let mut args = vec!["--json", "convert", FQRN];
    args.extend(images.iter().map(String::as_str));
    args.extend(["--insecure-registry", addr.as_str()]);
    let out = env.ok(&args);
    assert_one_outcome(&out, "convert");
    assert_eq!(
        env.revision(),
        2,
        "all images of one call land in one revision"
    );
    env.check(true);

    // Same diff_ids and config: one flat directory shared by all four tags.
    let flats: Vec<String> = ["gzip", "zstd", "plain", "docker"]
        .iter()
        .map(|t| link_target(&env, &format!("/{addr}/fixtures/edge:{t}")))
        .collect();
    assert!(flats.iter().all(|f| f == &flats[0]), "{flats:?}");
    assert!(flats[0].starts_with("/.flat/"), "{}", flats[0]);
    assert_flat_matches_umoci(&env, &flats[0], &layout, "gzip");
    let report = witness(&env);
    let flat = &flats[0];
    for f in [
        ".singularity.d/env/10-docker2singularity.sh",
        ".singularity.d/runscript",
        ".singularity.d/labels.json",
    ] {
        assert!(
            report.entries.contains_key(&format!("{flat}/{f}")),
            "missing {f}"
        );
    }
    let meta = format!("/.metadata/{addr}/fixtures/edge:gzip");
    assert!(report
        .entries
        .contains_key(&format!("{meta}/manifest.json")));
    assert!(report.entries.contains_key(&format!("{meta}/config.json")));
    let root = report.entries.get(flat).expect("flat dir");
    assert!(
        root.nested_catalog_mountpoint,
        "flat dir is its own nested catalog"
    );

    // Converting the same images again changes nothing.
    env.ok(&args);
    assert_eq!(env.revision(), 2);

    // Both platforms of an index.
    let multi = format!("docker://{addr}/fixtures/multi:1");
    let all_platforms = [
        "--json",
        "convert",
        FQRN,
        &multi,
        "--all-platforms",
        "--insecure-registry",
        &addr,
    ];
    let out = env.ok(&all_platforms);
    assert_eq!(env.revision(), 3);
    // The counts are of images (one per platform), and say so against the one reference.
    let summary = events(&out, "summary").next().expect("summary event");
    assert_eq!(
        (
            &summary["images"],
            &summary["references"],
            &summary["converted"]
        ),
        (&2.into(), &1.into(), &2.into()),
        "{out}"
    );
    let outcome = assert_one_outcome(&out, "convert");
    let source = outcome["source"].as_str().unwrap_or_default();
    assert!(
        source.starts_with("2 image(s) of 1 reference(s): 2 converted"),
        "{source}"
    );
    // Again: each image's event and the summary say `unchanged` alike.
    let again = env.ok(&all_platforms);
    let results: Vec<_> = events(&again, "image")
        .map(|e| e["result"].clone())
        .collect();
    assert_eq!(results, ["unchanged", "unchanged"], "{again}");
    let summary = events(&again, "summary").next().expect("summary event");
    assert_eq!(summary["unchanged"], 2, "{again}");
    let report = witness(&env);
    for link in ["multi:1", "multi:1@linux-amd64", "multi:1@linux-arm64"] {
        assert!(
            report
                .entries
                .contains_key(&format!("/{addr}/fixtures/{link}")),
            "missing {link}"
        );
    }
    env.check(true);
}

#[test]
fn converts_oci_layout_and_docker_archive_without_registry() {
    let env = Env::init(&[]);
    let layout = convert_edge_layout_and_archive(&env);
    env.check(true);
    let report = witness(&env);
    let links: Vec<&String> = report
        .entries
        .iter()
        .filter(|(_, e)| {
            e.symlink_target
                .as_deref()
                .is_some_and(|t| t.contains(".flat/"))
        })
        .map(|(k, _)| k)
        .collect();
    assert_eq!(links.len(), 2, "{links:?}");
    if !fixtures::tools::skip_if_missing(&[fixtures::tools::UMOCI]) {
        let flat = link_target(&env, links[0]);
        assert_flat_matches_umoci(&env, &flat, &layout, "v1");
    }
}

/// Rewrites one blob of an OCI layout and every digest that names it (manifest, index).
fn tamper_layout(layout: &Path, reference: &str, edit: impl FnOnce(&mut serde_json::Value, &Path)) {
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"][fixtures::oci::REF_NAME] == reference)
        .expect("ref in index");
    let digest = entry["digest"].as_str().unwrap().to_string();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&digest)).unwrap()).unwrap();
    edit(&mut manifest, layout);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let new = fixtures::oci::sha256_digest(&bytes);
    std::fs::write(blob(&new), &bytes).unwrap();
    entry["digest"] = new.into();
    entry["size"] = bytes.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Replaces the bytes of layer 0 (keeping the manifest consistent with them).
fn replace_layer0(manifest: &mut serde_json::Value, layout: &Path, bytes: Vec<u8>) {
    let d = fixtures::oci::sha256_digest(&bytes);
    std::fs::write(
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:")),
        &bytes,
    )
    .unwrap();
    manifest["layers"][0]["digest"] = d.into();
    manifest["layers"][0]["size"] = bytes.len().into();
}

#[test]
fn bad_images_fail_cleanly_and_leave_the_manifest() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    let good = edge_image(Compression::Gzip, MediaTypes::Oci);
    let tar0 = fixtures::layers::edge_case_layers().remove(0);
    for r in [
        "corrupt-gzip",
        "media-type",
        "digest",
        "truncated",
        "diffid",
    ] {
        good.write_layout(&layout, r).unwrap();
    }
    ImageBuilder::new()
        .layer(fixtures::layers::hostile_layer(), Compression::Gzip)
        .write_layout(&layout, "hostile")
        .unwrap();
    let gz = fixtures::layers::gzip(&tar0);
    tamper_layout(&layout, "corrupt-gzip", |m, l| {
        replace_layer0(m, l, fixtures::layers::corrupt(&gz, gz.len() / 2))
    });
    tamper_layout(&layout, "media-type", |m, _| {
        m["layers"][0]["mediaType"] = "application/x-made-up".into();
    });
    tamper_layout(&layout, "diffid", |m, l| {
        replace_layer0(m, l, fixtures::layers::gzip(b"not the layer"))
    });
    // Digest mismatch / truncation: the blob named by the manifest holds other bytes.
    // "digest" and "truncated" share layer blobs with the good image: give them private copies.
    for (r, damage) in [("digest", 0usize), ("truncated", 1)] {
        let copy = fixtures::layers::gzip(&[tar0.as_slice(), &[0u8; 1024][..]].concat());
        let damaged = if damage == 0 {
            fixtures::layers::corrupt(&copy, copy.len() / 3)
        } else {
            fixtures::layers::truncate(&copy, copy.len() / 2)
        };
        let d = fixtures::oci::sha256_digest(&copy);
        tamper_layout(&layout, r, |m, l| {
            std::fs::write(
                l.join("blobs/sha256").join(d.trim_start_matches("sha256:")),
                &damaged,
            )
            .unwrap();
            m["layers"][0]["digest"] = d.clone().into();
            m["layers"][0]["size"] = copy.len().into();
        });
    }

    let before = env.snapshot();
    for (r, expect) in [
        ("corrupt-gzip", "corrupt"),
        ("media-type", "media type"),
        ("digest", "digest"),
        ("truncated", "sha256"),
        ("diffid", "diff_id"),
        ("hostile", ".."),
    ] {
        let image = format!("oci:{}:{r}", layout.display());
        let out = env.run(&["convert", FQRN, &image]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{r}: convert succeeded");
        let line = stderr.lines().find(|l| l.contains("error")).unwrap_or("");
        assert!(
            line.contains(r) || line.contains(&layout.display().to_string()),
            "{r}: error does not name the image: {stderr}"
        );
        assert!(
            line.to_lowercase().contains(expect),
            "{r}: expected {expect:?} in: {stderr}"
        );
    }
    // A layer that declares a terabyte and ends early was not fetched: the summary does not
    // count what the manifest declared.
    ImageBuilder::new()
        .layer(fixtures::layers::gzip(&tar0), Compression::Gzip)
        .write_layout(&layout, "declared-huge")
        .unwrap();
    tamper_layout(&layout, "declared-huge", |m, _| {
        m["layers"][0]["size"] = (1u64 << 40).into();
    });
    let image = format!("oci:{}:declared-huge", layout.display());
    let out = env.run(&["convert", FQRN, &image]);
    let all = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
    assert!(!out.status.success(), "{all}");
    assert!(all.contains(" 0.0 MB of layer blobs fetched"), "{all}");
    // With --json, the error event names the layer and the member as fields of their own.
    let image = format!("oci:{}:hostile", layout.display());
    let out = env.run(&["--json", "convert", FQRN, &image]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let error = events(&stdout, "error").next().expect("an error event");
    assert_eq!(error["path"], "../escape", "{error}");
    assert!(
        error["layer"]
            .as_str()
            .is_some_and(|l| l.starts_with("sha256:")),
        "{error}"
    );
    // Also when the member's data is what fails (a layer ending inside it): `layer` is the
    // layer's digest alone.
    let mut short = fixtures::layers::LayerBuilder::new();
    short.file("part", &[b'a'; 5000]);
    let short = short.finish()[..1512].to_vec();
    ImageBuilder::new()
        .layer(short, Compression::Gzip)
        .write_layout(&layout, "short-member")
        .unwrap();
    let image = format!("oci:{}:short-member", layout.display());
    let out = env.run(&["--json", "convert", FQRN, &image]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let error = events(&stdout, "error").next().expect("an error event");
    assert_eq!(error["path"], "part", "{error}");
    assert!(
        error["layer"]
            .as_str()
            .is_some_and(|l| l.starts_with("sha256:") && l.len() == 71),
        "{error}"
    );
    let after = env.snapshot();
    let manifest = env.storage.join(".cvmfspublished");
    assert_eq!(
        before.get(&manifest),
        after.get(&manifest),
        "manifest changed"
    );
    // What the failed images stored before failing is gone again: no orphans.
    let objects = |snapshot: &std::collections::BTreeMap<std::path::PathBuf, String>| {
        let data = env.storage.join("data");
        let txn = data.join("txn");
        snapshot
            .keys()
            .filter(|p| p.starts_with(&data) && !p.starts_with(&txn))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(objects(&before), objects(&after), "objects left behind");
    env.check(true);
}

/// Files of the storage that a convert may touch without publishing (its scratch
/// directory, the status file) left out, so equal snapshots mean nothing was stored.
fn stored(env: &Env) -> BTreeMap<std::path::PathBuf, String> {
    let scratch = env.storage.join("data/txn");
    let mut files = env.snapshot();
    files.retain(|p, _| !p.starts_with(&scratch) && !p.ends_with(".cvmfs_status.json"));
    files
}

/// Ref names and platforms that would put an image's links or metadata where the layout
/// cannot hold them (a `.cvmfscatalog` directory, another image's metadata, `/.flat`, above
/// the root) fail when the batch is planned: one error line naming the image and the name,
/// nothing stored, the revision unchanged and sound.
/// An image whose only name cannot be linked (a published file in the way) is not published
/// unlinked beside the images of its batch that succeed.
#[test]
fn an_image_none_of_whose_names_could_be_linked_is_not_left_in_the_revision() {
    let env = Env::init(&[]);
    let tree = env.path("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(
        tree.join("example.com"),
        b"a file where a link directory would go\n",
    )
    .unwrap();
    env.ok(&["publish", FQRN, tree.to_str().unwrap()]);
    let layout = env.path("layout");
    for (name, content) in [
        ("example.com/blocked:1", "blocked"),
        ("example.org/good:1", "good"),
    ] {
        let mut l = fixtures::layers::LayerBuilder::new();
        l.file("f", content.as_bytes());
        ImageBuilder::new()
            .layer(l.finish(), Compression::Gzip)
            .write_layout(&layout, name)
            .unwrap();
    }
    let run = env.run(&[
        "convert",
        FQRN,
        &format!("oci:{}:example.com/blocked:1", layout.display()),
        &format!("oci:{}:example.org/good:1", layout.display()),
    ]);
    assert!(!run.status.success(), "the blocked image failed");
    assert_eq!(env.revision(), 3, "the good image was published");
    let report = witness(&env);
    let flats: Vec<&String> = report
        .entries
        .keys()
        .filter(|p| p.starts_with("/.flat/") && p.matches('/').count() == 3)
        .collect();
    assert_eq!(flats.len(), 1, "only the linked image: {flats:?}");
    assert!(report.entries.contains_key("/example.org/good:1"));
    env.check(true);
}

#[test]
fn hostile_ref_names_fail_before_anything_is_stored() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    let image = |n: &str| {
        let mut l = fixtures::layers::LayerBuilder::new();
        l.file("f", n.as_bytes());
        ImageBuilder::new().layer(l.finish(), Compression::Gzip)
    };
    image("victim")
        .write_layout(&layout, "example.com/victim:1")
        .unwrap();
    let victim = format!("oci:{}:example.com/victim:1", layout.display());
    env.ok(&["convert", FQRN, &victim]);
    let long_host = format!("{}.example.org/x:1", "h".repeat(260));
    let long_tag = format!("example.org/{}:{}", "r".repeat(200), "t".repeat(100));
    // (ref name, what the error says); each image in a layout of its own, converted by the
    // name in its annotation (a NUL cannot be passed on the command line).
    let hostile = [
        (".cvmfscatalog/x:1", "registry host \".cvmfscatalog\""),
        (
            ".metadata/example.com/victim:1",
            "registry host \".metadata\"",
        ),
        (".flat/evil:latest", "registry host \".flat\""),
        ("../evil:latest", "registry host \"..\""),
        ("./evil:latest", "registry host \".\""),
        (
            "a\u{0}b.example.org/x:1",
            "registry host \"a\\0b.example.org\"",
        ),
        (
            long_host.as_str(),
            "registry host of 272 bytes (at most 255)",
        ),
        (long_tag.as_str(), "a component of 301 bytes (at most 255)"),
    ];
    let mut cases: Vec<(String, Vec<&str>, String)> = Vec::new();
    for (i, (name, why)) in hostile.iter().enumerate() {
        let dir = env.path(&format!("hostile-{i}"));
        image(&format!("hostile {i}"))
            .write_layout(&dir, name)
            .unwrap();
        cases.push((format!("oci:{}", dir.display()), vec![], why.to_string()));
    }
    let archive = env.path("hostile.tar");
    image("archive")
        .write_docker_archive(&archive, ".cvmfscatalog/y:2")
        .unwrap();
    let index = env.path("index");
    let platform = |arch: &str, variant: Option<&str>| {
        let mut l = fixtures::layers::LayerBuilder::new();
        l.file("arch", arch.as_bytes());
        ImageBuilder::new()
            .layer(l.finish(), Compression::Gzip)
            .platform(arch, variant)
    };
    for (tag, arch, variant) in [
        ("arch", "arm64/.cvmfscatalog", None),
        ("up", "../../../x", None),
        ("variant", "arm", Some("v7/.cvmfscatalog")),
    ] {
        let images = [platform("amd64", None), platform(arch, variant)];
        fixtures::oci::write_index_layout(&index, tag, &images).unwrap();
    }

    let before = stored(&env);
    let revision = env.revision();
    cases.push((
        format!("docker-archive:{}", archive.display()),
        vec![],
        "registry host \".cvmfscatalog\"".to_owned(),
    ));
    for (tag, shown) in [
        ("arch", "arm64/.cvmfscatalog"),
        ("up", "../../../x"),
        ("variant", "v7/.cvmfscatalog"),
    ] {
        let oci = format!("oci:{}:{tag}", index.display());
        let why = format!("{shown:?} is not a plain name");
        cases.push((oci, vec!["--all-platforms"], why));
    }
    for (reference, flags, why) in &cases {
        let mut args = vec!["convert", FQRN];
        args.extend(flags);
        args.push(reference);
        let line = env.fails(&args);
        assert!(
            line.contains(&format!("image {reference}")),
            "{reference}: {line}"
        );
        assert!(
            line.contains(why.as_str()),
            "{reference}: {why:?} not in {line}"
        );
        assert_eq!(stored(&env), before, "{reference}: something was stored");
        assert_eq!(env.revision(), revision, "{reference}");
    }
    // The victim's names are untouched and the repository is sound.
    let report = witness(&env);
    for victim in [
        "/example.com/victim:1",
        "/.metadata/example.com/victim:1/manifest.json",
    ] {
        assert!(report.entries.contains_key(victim), "{victim} missing");
    }
    env.check(true);
}

/// Entries a client cannot serve fail the image with an error naming the image, the layer
/// and the member, not only the repository path under `/.flat`.
#[test]
fn unservable_entries_name_the_layer() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    let long = "z".repeat(300);
    let mut ok = fixtures::layers::LayerBuilder::new();
    ok.file("a", b"1");
    let cases: [(&str, Vec<u8>, String); 3] = [
        (
            "long",
            fixtures::layers::LayerBuilder::new()
                .file(&long, b"x")
                .finish(),
            format!("{long}: a name of 300 bytes (at most 255)"),
        ),
        (
            "target",
            fixtures::layers::LayerBuilder::new()
                .symlink("s", "t".repeat(5000))
                .finish(),
            "s: symlink target of 5000 bytes (at most 4095)".to_owned(),
        ),
        (
            "marker",
            fixtures::layers::LayerBuilder::new()
                .dir("etc/.cvmfscatalog")
                .finish(),
            "etc/.cvmfscatalog/: directory .cvmfscatalog: a nested catalog marker must be a \
             regular file"
                .to_owned(),
        ),
    ];
    let before = stored(&env);
    for (tag, bad, why) in cases {
        let built = ImageBuilder::new()
            .layer(ok.finish(), Compression::Gzip)
            .layer(bad, Compression::Gzip)
            .write_layout(&layout, tag)
            .unwrap();
        let reference = format!("oci:{}:{tag}", layout.display());
        let line = env.fails(&["convert", FQRN, &reference]);
        let layer = &built.layer_digests[1];
        let want = format!("image {reference} layer {layer}: {why}");
        assert!(line.ends_with(&want), "{want:?} not in {line}");
    }
    let manifest = env.storage.join(".cvmfspublished");
    assert_eq!(stored(&env).get(&manifest), before.get(&manifest));
    env.check(true);
}

/// A loopback server that answers every request with `status` (and `Retry-After: 0`).
fn failing_server(status: u16) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        for stream in listener.incoming().take(64) {
            if std::time::Instant::now() > deadline {
                break;
            }
            let Ok(mut s) = stream else { break };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = "{\"errors\":[{\"code\":\"UNAVAILABLE\",\"message\":\"test\"}]}";
            let _ = write!(
                s,
                "HTTP/1.1 {status} Test\r\nRetry-After: 0\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, handle)
}

#[test]
fn registry_errors_fail_cleanly() {
    let env = Env::init(&[]);
    let manifest = std::fs::read(env.storage.join(".cvmfspublished")).unwrap();
    for status in [500u16, 429] {
        let (addr, _h) = failing_server(status);
        let image = format!("docker://{addr}/some/image:1");
        let out = env.run(&["convert", FQRN, &image, "--insecure-registry", &addr]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&addr) && stderr.contains(&status.to_string()),
            "{status}: {stderr}"
        );
        // Each retry is announced when it happens; the error is the last line.
        let manifest_url = format!("http://{addr}/v2/some/image/manifests/1: {status} ");
        let retries: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("retrying: "))
            .collect();
        assert_eq!(retries.len(), 5, "{stderr}");
        assert!(retries[0].contains(&manifest_url), "{stderr}");
        assert!(retries[4].contains("; retry 5 of 5 in "), "{stderr}");
        let last = stderr.trim_end().lines().last().unwrap();
        assert!(last.starts_with("cvmfs-oci: error: image "), "{stderr}");
    }
    let (addr, _h) = failing_server(503);
    let image = format!("docker://{addr}/some/image:1");
    let out = env.run(&[
        "--json",
        "convert",
        FQRN,
        &image,
        "--insecure-registry",
        &addr,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let retries: Vec<_> = events(&stdout, "retry").collect();
    assert_eq!(retries.len(), 5, "{stdout}");
    // Each names the image and what was fetched, so a log reader need not parse the message.
    for (n, retry) in retries.iter().enumerate() {
        assert_eq!(retry["image"], format!("{addr}/some/image"), "{retry}");
        assert_eq!(retry["object"], "manifests/1", "{retry}");
        assert_eq!(retry["attempt"], n + 1, "{retry}");
        assert_eq!(retry["retries"], 5, "{retry}");
    }
    if let Some(reg) = registry_or_skip() {
        let addr = reg.addr();
        let missing = format!("docker://{addr}/no/such:tag");
        let out = env.run(&["convert", FQRN, &missing, "--insecure-registry", &addr]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("404")
                || String::from_utf8_lossy(&out.stderr)
                    .to_lowercase()
                    .contains("not found")
        );
        let auth = Registry::start_with_basic_auth("alice", "s3cret").expect("auth registry");
        let layout = env.path("layout");
        edge_image(Compression::Gzip, MediaTypes::Oci)
            .write_layout(&layout, "a")
            .unwrap();
        auth.push_oci_layout(&layout, "a", "private/app:1")
            .expect("push with creds");
        let image = format!("docker://{}/private/app:1", auth.addr());
        let out = env.run(&["convert", FQRN, &image, "--insecure-registry", &auth.addr()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("401") || stderr.to_lowercase().contains("unauthorized"),
            "{stderr}"
        );
        let out = env.run(&[
            "--json",
            "convert",
            FQRN,
            &image,
            "--insecure-registry",
            &auth.addr(),
            "--creds",
            "alice:s3cret",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
        assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));
        // The same registry through a Docker credential helper named by `credHelpers`.
        auth.push_oci_layout(&layout, "a", "private/app:2")
            .expect("push with creds");
        let image = format!("docker://{}/private/app:2", auth.addr());
        let out = with_credential_helper(&env, &auth.addr(), "alice", "s3cret")
            .args(["convert", FQRN, &image, "--insecure-registry", &auth.addr()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
        // A helper that refuses: the error names it and the registry.
        let out = with_credential_helper(&env, &auth.addr(), "alice", "")
            .args(["convert", FQRN, &image, "--insecure-registry", &auth.addr()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("docker-credential-fixture") && stderr.contains(&auth.addr()),
            "{stderr}"
        );
        env.check(true);
        return;
    }
    assert_eq!(
        manifest,
        std::fs::read(env.storage.join(".cvmfspublished")).unwrap()
    );
}

/// A `cvmfs-oci` command whose Docker config sends `registry` to a credential helper
/// (`docker-credential-fixture` on `PATH`) that answers `user` / `secret`, or fails when
/// `secret` is empty.
fn with_credential_helper(
    env: &Env,
    registry: &str,
    user: &str,
    secret: &str,
) -> std::process::Command {
    use std::os::unix::fs::PermissionsExt;
    let dir = env.path(&format!("docker-config-{}", secret.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(r#"{{"credHelpers": {{"{registry}": "fixture"}}}}"#);
    std::fs::write(dir.join("config.json"), config).unwrap();
    let script = if secret.is_empty() {
        "echo 'the keychain is locked' >&2; exit 1".to_owned()
    } else {
        format!(
            r#"read url; echo '{{"ServerURL":"'"$url"'","Username":"{user}","Secret":"{secret}"}}'"#
        )
    };
    let helper = dir.join("docker-credential-fixture");
    std::fs::write(&helper, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![dir.clone()];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = env.cmd(&[]);
    cmd.env("DOCKER_CONFIG", &dir)
        .env("PATH", std::env::join_paths(paths).unwrap())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("CVMFS_OCI_CREDS");
    cmd
}

#[test]
fn migrate_a_registry_in_batches_and_resume() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    let base = fixtures::layers::edge_case_layers();
    for (i, name) in ["team/a:1", "team/a:2", "team/b:1", "other/c:1"]
        .iter()
        .enumerate()
    {
        let mut extra = fixtures::layers::LayerBuilder::new();
        extra.file("app/version", format!("{i}\n").as_bytes());
        let mut b = ImageBuilder::new().label("n", name);
        for l in &base {
            b = b.layer(l.clone(), Compression::Gzip);
        }
        b = b.layer(extra.finish(), Compression::Gzip);
        let r = format!("img{i}");
        b.write_layout(&layout, &r).unwrap();
        reg.push_oci_layout(&layout, &r, name).unwrap();
    }
    let addr = reg.addr();
    let url = format!("docker://{addr}/team");
    let manifest = std::fs::read(env.storage.join(".cvmfspublished")).unwrap();
    let out = env.ok(&[
        "--json",
        "migrate",
        FQRN,
        &url,
        "--dry-run",
        "--insecure-registry",
        &addr,
    ]);
    assert!(out.contains("\"convert\":3"), "{out}");
    assert_eq!(
        manifest,
        std::fs::read(env.storage.join(".cvmfspublished")).unwrap()
    );

    // Interrupted in the second batch: the first batch is published, a rerun finishes.
    let crashed = env
        .cmd(&[
            "migrate",
            FQRN,
            &url,
            "--batch",
            "2",
            "--insecure-registry",
            &addr,
            "--exclude",
            "team/b:*",
        ])
        .output()
        .unwrap();
    assert!(
        crashed.status.success(),
        "{}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    assert_eq!(env.revision(), 2, "one batch of two images");
    let out = env
        .cmd(&[
            "migrate",
            FQRN,
            &url,
            "--batch",
            "2",
            "--insecure-registry",
            &addr,
        ])
        .env("CVMFS_OCI_CRASH_AT", "before-manifest")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(env.revision(), 2);
    env.check(true);
    let out = env.ok(&[
        "--json",
        "migrate",
        FQRN,
        &url,
        "--batch",
        "2",
        "--insecure-registry",
        &addr,
    ]);
    assert!(
        out.contains("\"result\":\"unchanged\""),
        "converted images are unchanged on resume: {out}"
    );
    // One outcome per batch: the two unchanged images' batch, then team/b's.
    let actions: Vec<_> = outcomes(&out).map(|e| e["action"].clone()).collect();
    assert_eq!(actions, ["migrate", "migrate"], "{out}");
    let batches: Vec<_> = events(&out, "batch")
        .map(|e| {
            (
                e["batch"].clone(),
                e["batches"].clone(),
                e["images"].clone(),
            )
        })
        .collect();
    assert_eq!(
        batches,
        [
            (1.into(), 2.into(), 2.into()),
            (2.into(), 2.into(), 1.into())
        ]
    );
    assert_eq!(env.revision(), 3);
    env.check(true);
    let report = witness(&env);
    for link in ["team/a:1", "team/a:2", "team/b:1"] {
        assert!(
            report.entries.contains_key(&format!("/{addr}/{link}")),
            "missing {link}"
        );
    }
    assert!(!report.entries.contains_key(&format!("/{addr}/other/c:1")));

    // The whole registry once, then team/ again without team/b and with --prune: the team/b
    // link and its image go; team/a stays, and so does other/c (not below the prefix).
    let whole = format!("docker://{addr}");
    env.ok(&["migrate", FQRN, &whole, "--insecure-registry", &addr]);
    let flat_b = link_target(&env, &format!("/{addr}/team/b:1"));
    let out = env.ok(&[
        "migrate",
        FQRN,
        &url,
        "--insecure-registry",
        &addr,
        "--exclude",
        "team/b:*",
        "--prune",
    ]);
    assert!(
        out.contains("1 links pruned, 1 unlinked images removed"),
        "{out}"
    );
    env.check(true);
    let report = witness(&env);
    for (link, kept) in [
        ("team/a:1", true),
        ("team/a:2", true),
        ("team/b:1", false),
        ("other/c:1", true),
    ] {
        assert_eq!(
            report.entries.contains_key(&format!("/{addr}/{link}")),
            kept,
            "{link}"
        );
    }
    assert!(!report.entries.contains_key(&flat_b));
}

#[test]
fn known_layers_convert_from_the_memo_without_their_blobs() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    let first = edge_image(Compression::Gzip, MediaTypes::Oci)
        .write_layout(&layout, "v1")
        .unwrap();
    env.ok(&["convert", FQRN, &format!("oci:{}:v1", layout.display())]);
    // Same layers, another config (so another flat directory to build).
    let second = edge_image(Compression::Gzip, MediaTypes::Oci)
        .label("org.example.rebuilt", "yes")
        .write_layout(&layout, "v2")
        .unwrap();
    assert_eq!(second.diff_ids, first.diff_ids);
    assert_ne!(second.config_digest, first.config_digest);
    for digest in &second.layer_digests {
        let blob = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        std::fs::remove_file(&blob).unwrap();
    }
    let out = env.ok(&[
        "--json",
        "convert",
        FQRN,
        &format!("oci:{}:v2", layout.display()),
    ]);
    assert!(out.contains("\"result\":\"converted\""), "{out}");
    env.check(true);
    let links: Vec<String> = witness(&env)
        .entries
        .iter()
        .filter(|(_, e)| {
            e.symlink_target
                .as_deref()
                .is_some_and(|t| t.contains(".flat/"))
        })
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(links.len(), 2, "{links:?}");
    let (v1, v2) = (link_target(&env, &links[0]), link_target(&env, &links[1]));
    assert_ne!(v1, v2);
    // The two flat directories hold the same files (only .singularity.d differs).
    let report = witness(&env);
    type Seen = (Option<String>, Option<String>, u64, u32);
    let under = |flat: &str| -> BTreeMap<String, Seen> {
        report
            .entries
            .iter()
            .filter_map(|(k, e)| {
                let rel = k.strip_prefix(flat)?;
                let seen = (e.sha1.clone(), e.symlink_target.clone(), e.size, e.mode);
                (rel.starts_with('/') && !rel.starts_with("/.singularity.d"))
                    .then(|| (rel.to_string(), seen))
            })
            .collect()
    };
    assert_eq!(under(&v1), under(&v2));
    assert!(under(&v1).len() > 5);
}

#[test]
fn a_batch_reads_layers_its_images_share_once() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    // Three images with the same layers (diff_ids), none known yet: two gzip configs that
    // differ by a label, and the zstd encoding (other blobs, same diff_ids).
    let a = edge_image(Compression::Gzip, MediaTypes::Oci)
        .write_layout(&layout, "a")
        .unwrap();
    let b = edge_image(Compression::Gzip, MediaTypes::Oci)
        .label("org.example.rebuilt", "yes")
        .write_layout(&layout, "b")
        .unwrap();
    let c = edge_image(Compression::Zstd, MediaTypes::Oci)
        .label("org.example.zstd", "yes")
        .write_layout(&layout, "c")
        .unwrap();
    assert!(a.diff_ids == b.diff_ids && b.diff_ids == c.diff_ids);
    let refs: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|t| format!("oci:{}:{t}", layout.display()))
        .collect();
    let mut args = vec!["--json", "convert", FQRN, "--workers", "2"];
    args.extend(refs.iter().map(String::as_str));
    let out = env.ok(&args);
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let read: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "layer")
        .filter_map(|e| e["layer"].as_str())
        .collect();
    // The first image reads every layer; the others wait for it and replay its memo.
    assert_eq!(read.len(), a.layer_digests.len(), "{read:?}");
    for digest in &a.layer_digests {
        assert!(
            read.contains(&digest.as_str()),
            "{digest} not read: {read:?}"
        );
    }
    let converted = events
        .iter()
        .filter(|e| e["action"] == "image" && e["result"] == "converted")
        .count();
    assert_eq!(converted, 3, "{out}");
    env.check(true);
}

/// A base image and an app image built on it whose layer replaces a file of the base (read
/// under the app's layer, the base layer's memo lacks that file), written to `layout` as
/// `base` and `app`.
fn base_and_app(layout: &Path) -> (fixtures::oci::BuiltImage, fixtures::oci::BuiltImage) {
    let mut base = fixtures::layers::LayerBuilder::new();
    base.dir("etc").file("etc/os-release", b"base 1\n");
    base.file("etc/motd", b"welcome\n");
    let base = base.finish();
    let mut app = fixtures::layers::LayerBuilder::new();
    app.file("etc/motd", b"app\n").file("app.txt", b"app\n");
    let app = app.finish();
    let built_base = ImageBuilder::new()
        .layer(base.clone(), Compression::Gzip)
        .write_layout(layout, "base")
        .unwrap();
    let built_app = ImageBuilder::new()
        .layer(base, Compression::Gzip)
        .layer(app, Compression::Gzip)
        .write_layout(layout, "app")
        .unwrap();
    (built_base, built_app)
}

/// The events of `--json` output with this action, in order.
fn events<'a>(out: &'a str, action: &'a str) -> impl Iterator<Item = serde_json::Value> + 'a {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(move |e| e["action"] == action)
}

/// The outcome events of `--json` output (a revision made or found unchanged, with the
/// pipeline's counters): told by their fields, as the bench finds them.
fn outcomes(out: &str) -> impl Iterator<Item = serde_json::Value> + '_ {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e.get("revision").is_some() && e.get("bytes_in").is_some())
}

/// Asserts that `out` holds exactly one outcome event and that it names `command`; returns it.
fn assert_one_outcome(out: &str, command: &str) -> serde_json::Value {
    let all: Vec<_> = outcomes(out).collect();
    assert_eq!(all.len(), 1, "one outcome expected: {out}");
    assert_eq!(all[0]["action"], command, "{out}");
    for field in [
        "source",
        "files",
        "objects_new",
        "objects_existing",
        "seconds",
    ] {
        assert!(all[0].get(field).is_some(), "{field} missing: {out}");
    }
    all[0].clone()
}

/// The digests of the layers read (the `layer` events of `--json` output), in order.
fn layers_read(out: &str) -> Vec<String> {
    events(out, "layer")
        .filter_map(|e| e["layer"].as_str().map(str::to_string))
        .collect()
}

/// Every layer of `app` read once, the base layer first.
fn assert_read_once_base_first(
    read: &[String],
    base: &fixtures::oci::BuiltImage,
    app: &fixtures::oci::BuiltImage,
) {
    let mut want = app.layer_digests.clone();
    want.sort();
    let mut got = read.to_vec();
    got.sort();
    assert_eq!(got, want, "{read:?}");
    assert_eq!(read[0], base.layer_digests[0], "{read:?}");
}

#[test]
fn a_base_image_listed_after_the_image_built_on_it_still_reads_its_layer_once() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    let (base, app) = base_and_app(&layout);
    let refs: Vec<String> = ["app", "base"]
        .iter()
        .map(|t| format!("oci:{}:{t}", layout.display()))
        .collect();
    let mut args = vec!["--json", "convert", FQRN, "--workers", "2"];
    args.extend(refs.iter().map(String::as_str));
    // The base image goes first although listed last; the app replays the base layer's memo.
    assert_read_once_base_first(&layers_read(&env.ok(&args)), &base, &app);
    env.check(true);
}

/// Sibling images on one base, the first of which hides base files (a replaced file, a
/// whiteout): the base layer is read once in the batch and never again in a later run, and
/// each image sees the base files the others hide.
#[test]
fn sibling_images_read_their_shared_base_layer_once() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    let mut base = fixtures::layers::LayerBuilder::new();
    base.dir("etc").file("etc/motd", b"base motd\n");
    base.file("etc/gone", b"base gone\n")
        .file("etc/keep", b"keep\n");
    let base = base.finish();
    let image = |tag: &str, top: &fixtures::layers::LayerBuilder| {
        ImageBuilder::new()
            .layer(base.clone(), Compression::Gzip)
            .layer(top.finish(), Compression::Gzip)
            .write_layout(&layout, tag)
            .unwrap()
    };
    let mut hides = fixtures::layers::LayerBuilder::new();
    hides.file("etc/motd", b"jq motd\n").whiteout("etc/gone");
    let a = image("a-hides", &hides);
    let mut plain = fixtures::layers::LayerBuilder::new();
    plain.file("app0.txt", b"0\n");
    let b = image("b-plain", &plain);
    let mut later = fixtures::layers::LayerBuilder::new();
    later.file("app1.txt", b"1\n");
    let c = image("c-later", &later);
    let refs: Vec<String> = ["a-hides", "b-plain"]
        .iter()
        .map(|t| format!("oci:{}:{t}", layout.display()))
        .collect();
    let mut args = vec!["--json", "convert", FQRN, "--workers", "2"];
    args.extend(refs.iter().map(String::as_str));
    let mut read = layers_read(&env.ok(&args));
    read.sort();
    let mut want = vec![
        a.layer_digests[0].clone(),
        a.layer_digests[1].clone(),
        b.layer_digests[1].clone(),
    ];
    want.sort();
    assert_eq!(read, want, "the base layer is read once");
    // A later run: only the new top layer is read.
    let later_ref = format!("oci:{}:c-later", layout.display());
    let read = layers_read(&env.ok(&["--json", "convert", FQRN, &later_ref]));
    assert_eq!(read, [c.layer_digests[1].clone()]);
    let report = witness(&env);
    let sha1 = |path: &str, tag: &str| {
        let flat = link_target(&env, &format!("/local/layout:{tag}"));
        report
            .entries
            .get(&format!("{flat}/{path}"))
            .and_then(|e| e.sha1.clone())
    };
    let of = |bytes: &[u8]| Some(catalog_writer::hash::ContentHash::of(bytes).to_hex());
    assert_eq!(sha1("etc/motd", "a-hides"), of(b"jq motd\n"));
    assert_eq!(sha1("etc/gone", "a-hides"), None);
    for tag in ["b-plain", "c-later"] {
        assert_eq!(sha1("etc/motd", tag), of(b"base motd\n"), "{tag}");
        assert_eq!(sha1("etc/gone", tag), of(b"base gone\n"), "{tag}");
    }
    env.check(true);
}

/// A repository of `_catalog` whose tag list fails (deleted in between, or not readable by
/// the caller) is one reported failure, not the end of the migration; filters that rule it
/// out keep it from being asked at all; `--prune` does not run on such a listing.
#[test]
fn migrate_reports_an_unlistable_repository_and_goes_on() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    let (_, app) = base_and_app(&layout);
    reg.push_oci_layout(&layout, "app", "lib/ok:1").unwrap();
    reg.push_oci_layout(&layout, "base", "lib/gone:1").unwrap();
    // `_catalog` still lists lib/gone; its tag list answers 404 NAME_UNKNOWN.
    let tags = reg
        .storage_dir()
        .join("docker/registry/v2/repositories/lib/gone/_manifests/tags");
    std::fs::remove_dir_all(&tags).unwrap();
    let addr = reg.addr();
    let url = format!("docker://{addr}");
    let migrate = |extra: &[&str]| {
        let mut args = vec!["migrate", FQRN, &url, "--insecure-registry", &addr];
        args.extend(extra);
        env.run(&args)
    };
    let unlisted = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

    // --dry-run lists the rest and reports the repository.
    let dry = migrate(&["--dry-run"]);
    assert_eq!(dry.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert!(stdout.contains("1 images selected"), "{stdout}");
    assert!(stdout.contains("forecast: 1 images"), "{stdout}");
    let lines = unlisted(&dry);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "cvmfs-oci: error: repository docker://{addr}/lib/gone: "
        )) && lines[0].contains("tags/list"),
        "{}",
        lines[0]
    );

    // The run converts the rest and fails with that one line; --prune is not run on it.
    let run = migrate(&["--prune"]);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(unlisted(&run), lines, "the same single line");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("not pruning: 1 repository could not be listed"),
        "{stdout}"
    );
    assert_eq!(env.revision(), 2, "one batch, no prune revision");
    assert_eq!(
        link_target(&env, &format!("/{addr}/lib/ok:1")),
        format!(
            "/.flat/{}/{}",
            &app.config_digest[7..9],
            &app.config_digest[7..]
        )
    );

    // Filters that rule the repository out by its name: its tags are never asked for.
    let asked = || {
        let log = std::fs::read_to_string(reg.log_path()).unwrap_or_default();
        log.matches("/v2/lib/gone/tags/list").count()
    };
    let before = asked();
    assert!(before > 0, "the log shows tag-list requests");
    for filter in [
        &["--include", "lib/ok:*"][..],
        &["--exclude", "lib/gone*"],
        &["--include", "lib/o*", "--exclude", "lib/gone:*"],
    ] {
        let out = migrate(filter);
        assert!(
            out.status.success(),
            "{filter:?}: {}",
            unlisted(&out).join("\n")
        );
    }
    assert_eq!(asked(), before, "lib/gone's tags were asked for");
    env.check(true);
}

/// A listing that selects more images than `--max-images` is refused before anything is
/// fetched (a registry listing millions of tags would otherwise fill the memory).
#[test]
fn migrate_refuses_a_listing_over_max_images() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    base_and_app(&layout);
    for tag in ["lib/a:1", "lib/a:2", "lib/b:1"] {
        reg.push_oci_layout(&layout, "app", tag).unwrap();
    }
    let addr = reg.addr();
    let url = format!("docker://{addr}");
    let dry = |max: &str| {
        env.run(&[
            "migrate",
            FQRN,
            &url,
            "--insecure-registry",
            &addr,
            "--dry-run",
            "--max-images",
            max,
        ])
    };
    let out = dry("2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "docker://{addr}: more than 2 images selected (--max-images); narrow"
        )),
        "{stderr}"
    );
    let out = dry("3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("3 images selected"), "{stdout}");
    assert_eq!(env.revision(), 1);
}

/// `migrate --dry-run` changes nothing: it gives its forecast while another process holds
/// the repository lock. The forecast counts a layer shared by several images once, and
/// another name for an image the run converts as links only.
#[test]
fn migrate_dry_run_takes_no_lock_and_counts_what_the_run_does() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    let (base, app) = base_and_app(&layout);
    reg.push_oci_layout(&layout, "app", "lib/app:1").unwrap();
    reg.push_oci_layout(&layout, "app", "lib/app:same").unwrap();
    reg.push_oci_layout(&layout, "base", "lib/base:1").unwrap();
    let addr = reg.addr();
    let url = format!("docker://{addr}");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(env.home.join(FQRN).join("lock"))
        .unwrap();
    lock.lock().unwrap();
    let mut child = env
        .cmd(&[
            "--json",
            "migrate",
            FQRN,
            &url,
            "--insecure-registry",
            &addr,
            "--dry-run",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("migrate --dry-run waits for the repository lock");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let dry = child.wait_with_output().unwrap();
    drop(lock);
    assert!(dry.status.success());
    let stdout = String::from_utf8_lossy(&dry.stdout);
    let forecast = events(&stdout, "migrate-forecast")
        .next()
        .unwrap_or_else(|| panic!("no forecast: {stdout}"));
    assert_eq!(forecast["convert"], 2, "{forecast}");
    assert_eq!(
        forecast["link_only"], 1,
        "lib/app:same is lib/app:1: {forecast}"
    );
    assert_eq!(
        forecast["layers"], 2,
        "the base layer counted once: {forecast}"
    );
    let size = |d: &str| std::fs::metadata(reg.blob_path(d)).unwrap().len();
    let blobs = size(&base.layer_digests[0]) + size(&app.layer_digests[1]);
    assert_eq!(forecast["download_bytes"], blobs, "{forecast}");
    assert_eq!(env.revision(), 1, "nothing changed");
    let run = env.ok(&[
        "--json",
        "migrate",
        FQRN,
        &url,
        "--insecure-registry",
        &addr,
    ]);
    let summary = events(&run, "summary").next().unwrap();
    assert_eq!(summary["converted"], 2, "{summary}");
    assert_eq!(summary["linked"], 1, "{summary}");
    assert_eq!(layers_read(&run).len(), 2, "each layer read once");
}

#[test]
fn migrate_converts_base_images_before_the_images_built_on_them() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    let (base, app) = base_and_app(&layout);
    // The registry lists lib/app before lib/zbase; one image per batch.
    reg.push_oci_layout(&layout, "app", "lib/app:1").unwrap();
    reg.push_oci_layout(&layout, "base", "lib/zbase:1").unwrap();
    let addr = reg.addr();
    let url = format!("docker://{addr}/lib");
    let out = env.ok(&[
        "--json",
        "migrate",
        FQRN,
        &url,
        "--batch",
        "1",
        "--insecure-registry",
        &addr,
    ]);
    assert_read_once_base_first(&layers_read(&out), &base, &app);
    assert_eq!(env.revision(), 3, "two batches");
    env.check(true);
}

/// A DUCC wishlist for `FQRN` of `inputs` (`repo:tag`) on the plain-HTTP registry `addr`.
/// Pushes `repo:TAG` for each of `tags`: one small layer whose `version` file tells them apart.
fn push_versions(reg: &Registry, layout: &Path, repo: &str, tags: &[&str]) {
    for (i, tag) in tags.iter().enumerate() {
        let mut top = fixtures::layers::LayerBuilder::new();
        top.file("version", format!("{i}\n").as_bytes());
        ImageBuilder::new()
            .layer(top.finish(), Compression::Gzip)
            .write_layout(layout, tag)
            .unwrap();
        reg.push_oci_layout(layout, tag, &format!("{repo}:{tag}"))
            .unwrap();
    }
}

fn write_wishlist(path: &Path, addr: &str, inputs: &[&str]) {
    let lines: String = inputs
        .iter()
        .map(|i| format!("  - 'http://{addr}/{i}'\n"))
        .collect();
    std::fs::write(
        path,
        format!("version: 1\ncvmfs_repo: {FQRN}\ninput:\n{lines}"),
    )
    .unwrap();
}

#[test]
fn sync_a_wishlist_with_wildcards_and_prune() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    let push = |i: usize, tag: &str| {
        let mut top = fixtures::layers::LayerBuilder::new();
        top.file("version", format!("{i}\n").as_bytes());
        let b = ImageBuilder::new()
            .layer(
                fixtures::layers::edge_case_layers().remove(0),
                Compression::Gzip,
            )
            .layer(top.finish(), Compression::Zstd);
        b.write_layout(&layout, tag).unwrap();
        reg.push_oci_layout(&layout, tag, &format!("sync/app:{tag}"))
            .unwrap();
    };
    for (i, tag) in ["1.0", "1.1", "2.0", "9.0"].iter().enumerate() {
        push(i, tag);
    }
    let addr = reg.addr();
    let recipe = env.path("wishlist.yaml");
    let write = |inputs: &[&str]| write_wishlist(&recipe, &addr, inputs);
    let has = |report: &fixtures::witness::WitnessReport, path: &str| {
        report.entries.contains_key(&format!("/{addr}/{path}"))
    };
    write(&["sync/app:1.*"]);
    let out = env.ok(&["--json", "sync", FQRN, recipe.to_str().unwrap()]);
    let outcome = assert_one_outcome(&out, "sync");
    assert_eq!(
        (&outcome["revision"], &outcome["changed"]),
        (&2.into(), &true.into())
    );
    assert_eq!(env.revision(), 2);
    let report = witness(&env);
    assert!(has(&report, "sync/app:1.0"));
    assert!(has(&report, "sync/app:1.1"));
    assert!(!has(&report, "sync/app:2.0"));

    // Nothing new: no new revision.
    env.ok(&["sync", FQRN, recipe.to_str().unwrap()]);
    assert_eq!(env.revision(), 2);

    // An image the wishlist never listed, converted by hand: no prune of it removes it.
    env.ok(&[
        "convert",
        FQRN,
        &format!("docker://{addr}/sync/app:9.0"),
        "--insecure-registry",
        &addr,
    ]);
    assert_eq!(env.revision(), 3);

    // 1.1 dropped from the list, 2.0 added; --prune removes the 1.1 link, its metadata and
    // the image no link points at any more.
    let flat_1_0 = link_target(&env, &format!("/{addr}/sync/app:1.0"));
    let flat_1_1 = link_target(&env, &format!("/{addr}/sync/app:1.1"));
    write(&["sync/app:1.0", "sync/app:2.*"]);
    env.ok(&["sync", FQRN, recipe.to_str().unwrap(), "--prune"]);
    assert_eq!(env.revision(), 4);
    let report = witness(&env);
    assert!(has(&report, "sync/app:9.0"), "never listed: not pruned");
    assert!(has(&report, "sync/app:1.0"));
    assert!(has(&report, "sync/app:2.0"));
    assert!(!has(&report, "sync/app:1.1"));
    assert!(!report
        .entries
        .contains_key(&format!("/.metadata/{addr}/sync/app:1.1")));
    assert!(
        !report.entries.contains_key(&flat_1_1),
        "{flat_1_1} is unlinked"
    );
    assert!(report.entries.contains_key(&flat_1_0));
    env.check(true);

    // A second wishlist, synced for the first time with --prune, prunes nothing.
    let other = env.path("other.yaml");
    std::fs::write(
        &other,
        format!("version: 1\ncvmfs_repo: {FQRN}\ninput:\n  - 'http://{addr}/sync/app:2.0'\n"),
    )
    .unwrap();
    let out = env.ok(&["sync", FQRN, other.to_str().unwrap(), "--prune"]);
    assert!(out.contains("no earlier sync of this wishlist"), "{out}");
    assert!(has(&witness(&env), "sync/app:1.0"));
    assert_eq!(env.revision(), 4, "nothing new, nothing pruned");

    // The tag 1.0 moves to another image: the image it left goes with --prune.
    push(4, "1.0");
    let out = env.ok(&["sync", FQRN, recipe.to_str().unwrap(), "--prune"]);
    assert!(out.contains("1 unlinked images removed"), "{out}");
    assert_eq!(env.revision(), 5);
    let report = witness(&env);
    let moved = link_target(&env, &format!("/{addr}/sync/app:1.0"));
    assert_ne!(moved, flat_1_0);
    assert!(report.entries.contains_key(&moved));
    assert!(
        !report.entries.contains_key(&flat_1_0),
        "{flat_1_0} is unlinked"
    );
    env.check(true);

    // A tag list that cannot be read would look like all its tags gone: no prune then.
    write(&["sync/app:1.0", "sync/gone:*"]);
    let run = env.run(&["sync", FQRN, recipe.to_str().unwrap(), "--prune"]);
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "an input failed: {out}");
    // Said like any other failure, and counted as one.
    assert!(
        err.starts_with("cvmfs-oci: error: ") && err.contains("sync/gone"),
        "{err}"
    );
    assert!(
        out.contains("not pruning") && out.contains(" 1 failed"),
        "{out}"
    );
    assert!(has(&witness(&env), "sync/app:2.0"));
    assert_eq!(env.revision(), 5);

    // A listed image converted by hand becomes convert's: dropped from the wishlist, it stays
    // (as after a rollback to before the sync that listed it, then a convert).
    env.ok(&[
        "convert",
        FQRN,
        &format!("docker://{addr}/sync/app:1.0"),
        "--insecure-registry",
        &addr,
    ]);
    write(&["sync/app:2.*"]);
    env.ok(&["sync", FQRN, recipe.to_str().unwrap(), "--prune"]);
    assert!(has(&witness(&env), "sync/app:1.0"), "converted by hand");

    // A pruned link's directories go when it was their last (the registry's stays).
    reg.push_oci_layout(&layout, "1.0", "team/solo/app:1")
        .unwrap();
    write(&["sync/app:2.*", "team/solo/app:1"]);
    env.ok(&["sync", FQRN, recipe.to_str().unwrap(), "--prune"]);
    assert!(has(&witness(&env), "team/solo/app:1"));
    write(&["sync/app:2.*"]);
    env.ok(&["sync", FQRN, recipe.to_str().unwrap(), "--prune"]);
    let report = witness(&env);
    for gone in [format!("/{addr}/team"), format!("/.metadata/{addr}/team")] {
        assert!(!report.entries.contains_key(&gone), "{gone} is left empty");
    }
    assert!(has(&report, "sync/app:2.0"));
    env.check(true);
}

/// A TLS registry holding `REPO:1` built from `edge_image`, and a fresh repository.
struct TlsCase {
    reg: Registry,
    env: Env,
    layout: std::path::PathBuf,
    repo: &'static str,
    /// The repository's manifest before any conversion.
    manifest: Vec<u8>,
}

impl TlsCase {
    fn start(start: fn() -> fixtures::Result<Registry>, repo: &'static str) -> Option<TlsCase> {
        use fixtures::tools::{skip_if_missing, DOCKER_REGISTRY, OPENSSL, SKOPEO};
        if skip_if_missing(&[DOCKER_REGISTRY, SKOPEO, OPENSSL]) {
            return None;
        }
        let reg = start().expect("start docker-registry with TLS");
        let env = Env::init(&[]);
        let manifest = std::fs::read(env.storage.join(".cvmfspublished")).unwrap();
        let layout = env.path("layout");
        edge_image(Compression::Gzip, MediaTypes::Oci)
            .write_layout(&layout, "a")
            .unwrap();
        let case = TlsCase {
            reg,
            env,
            layout,
            repo,
            manifest,
        };
        case.push(1);
        Some(case)
    }

    fn push(&self, tag: u32) {
        let dest = format!("{}:{tag}", self.repo);
        self.reg
            .push_oci_layout(&self.layout, "a", &dest)
            .expect("push over HTTPS");
    }

    fn image(&self, tag: u32) -> String {
        format!("docker://{}/{}:{tag}", self.reg.addr(), self.repo)
    }

    /// Converts `REPO:TAG` (pushed first unless it is 1) with `flags`; the witness reads it.
    fn converts(&self, tag: u32, flags: &[&str]) {
        if tag > 1 {
            self.push(tag);
        }
        let image = self.image(tag);
        let out = self
            .env
            .run(&[&["convert", FQRN, image.as_str()][..], flags].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let link = format!("/{}/{}:{tag}", self.reg.addr(), self.repo);
        assert!(witness(&self.env).entries.contains_key(&link));
    }

    /// Converting `REPO:1` with `flags` fails at once, without retries and without touching
    /// the repository; returns the error line.
    fn fails(&self, flags: &[&str]) -> String {
        let image = self.image(1);
        let out = self
            .env
            .run(&[&["convert", FQRN, image.as_str()][..], flags].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(!stderr.contains("retrying"), "{stderr}");
        let last = stderr.trim_end().lines().last().unwrap().to_owned();
        assert!(last.starts_with("cvmfs-oci: error: "), "{stderr}");
        let manifest = std::fs::read(self.env.storage.join(".cvmfspublished")).unwrap();
        assert_eq!(self.manifest, manifest);
        last
    }
}

/// A registry that speaks only HTTPS with a certificate from a private CA: refused with a hint
/// and no retries, accepted with `--registry-ca`, and with `--insecure-registry` (HTTPS without
/// verification, as Docker's insecure-registries).
#[test]
fn registries_with_a_private_ca() {
    let Some(case) = TlsCase::start(Registry::start_tls, "tls/app") else {
        return;
    };
    let ca = case.reg.ca_path().expect("a CA");
    let addr = case.reg.addr();
    let last = case.fails(&[]);
    assert!(
        last.starts_with("cvmfs-oci: error: image ")
            && last.contains(&case.image(1))
            && last.contains("certificate")
            && last.contains("--registry-ca")
            && last.contains(&format!("--insecure-registry {addr}")),
        "{last}"
    );
    let not_pem = case.env.path("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let last = case.fails(&["--registry-ca", not_pem.to_str().unwrap()]);
    assert!(last.contains("not-a-ca.pem"), "{last}");

    case.converts(1, &["--registry-ca", ca.to_str().unwrap()]);
    // The registry speaks only HTTPS, so this goes over HTTPS without the CA.
    case.converts(2, &["--insecure-registry", &addr]);

    // A certs.d directory as Docker and podman keep it: the CA for this host only.
    let certs_d = case.env.path("certs.d");
    std::fs::create_dir_all(certs_d.join(&addr)).unwrap();
    std::fs::copy(&ca, certs_d.join(&addr).join("ca.crt")).unwrap();
    std::fs::create_dir_all(certs_d.join("other.example:5000")).unwrap();
    let dir = certs_d.to_str().unwrap();
    case.converts(3, &["--registry-certs-dir", dir]);
    // A CA filed under another host is not trusted for this one.
    std::fs::rename(
        certs_d.join(&addr).join("ca.crt"),
        certs_d.join("other.example:5000/ca.crt"),
    )
    .unwrap();
    let out = case
        .env
        .run(&["convert", FQRN, &case.image(1), "--registry-certs-dir", dir]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    case.env.check(true);
}

/// A registry whose certificate comes from a trusted CA but names another host, or has
/// expired: refused whatever CA is given, with the reason and the way out (not "trust the CA"
/// again). The registry speaks plain HTTP behind a TLS relay that presents that certificate.
#[test]
fn a_registry_certificate_for_another_name_or_expired_is_refused_with_its_reason() {
    let Some(case) = TlsCase::start(Registry::start, "named/app") else {
        return;
    };
    let ca = fixtures::tls::TestCa::new().unwrap();
    let (cert, key) = ca.server_certificate("other", "DNS:other.example").unwrap();
    let (old_cert, old_key) = ca.expired_certificate("old", "IP:127.0.0.1").unwrap();
    let ca_file = ca.ca_path();
    let refused = |cert: &Path, key: &Path, reasons: [&str; 2]| {
        let front = fixtures::tls::TlsFront::start(cert, key, case.reg.port()).unwrap();
        let image = format!("docker://127.0.0.1:{}/{}:1", front.port(), case.repo);
        let out = case.env.run(&[
            "convert",
            FQRN,
            &image,
            "--registry-ca",
            ca_file.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(!stderr.contains("retrying"), "{stderr}");
        let last = stderr.trim_end().lines().last().unwrap();
        assert!(
            last.contains(&image)
                && reasons.iter().all(|r| last.contains(r))
                && !last.contains("trust it with --registry-ca"),
            "{last}"
        );
    };
    refused(
        &cert,
        &key,
        [
            "not valid for name \"127.0.0.1\"",
            "does not list 127.0.0.1:",
        ],
    );
    refused(
        &old_cert,
        &old_key,
        ["certificate expired", "outside its validity period"],
    );
    let manifest = std::fs::read(case.env.storage.join(".cvmfspublished")).unwrap();
    assert_eq!(case.manifest, manifest);
}

/// A registry that wants a client certificate from its CA (mutual TLS): without one, refused
/// at once with the way out; with one in certs.d (`NAME.cert` and `NAME.key`), converted, for
/// an insecure host too; half a pair is an error.
#[test]
fn registries_asking_for_a_client_certificate() {
    let Some(case) = TlsCase::start(Registry::start_mutual_tls, "mtls/app") else {
        return;
    };
    let ca = case.reg.ca_path().expect("a CA");
    let client = case.reg.client_cert_dir().expect("a client certificate");
    let addr = case.reg.addr();
    let ca_flag = ["--registry-ca", ca.to_str().unwrap()];

    // The handshake is refused: said at once, with where the certificate goes.
    for flags in [&ca_flag[..], &["--insecure-registry", &addr]] {
        let last = case.fails(flags);
        assert!(
            last.contains(&case.image(1)) && last.contains(&format!("certs.d/{addr}/")),
            "{last}"
        );
    }

    // certs.d/HOST/NAME.cert with NAME.key, as Docker and podman read them.
    let certs_d = case.env.path("certs.d");
    let host_dir = certs_d.join(&addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(client.join("client.cert"), host_dir.join("client.cert")).unwrap();
    let dir = certs_d.to_str().unwrap();
    let certs_flag = ["--registry-certs-dir", dir];
    // A certificate without its key is named, as Docker does.
    let last = case.fails(&[&ca_flag[..], &certs_flag].concat());
    assert!(
        last.contains("client.cert") && last.contains("client.key is missing"),
        "{last}"
    );
    std::fs::copy(client.join("client.key"), host_dir.join("client.key")).unwrap();

    case.converts(1, &[&ca_flag[..], &certs_flag].concat());
    // The CA from certs.d too; and an insecure host still presents the certificate (its
    // HTTPS probe included, which would otherwise fall back to plain HTTP).
    std::fs::copy(&ca, host_dir.join("ca.crt")).unwrap();
    case.converts(2, &certs_flag);
    case.converts(
        3,
        &[&certs_flag[..], &["--insecure-registry", &addr]].concat(),
    );
    case.env.check(true);
}

#[test]
fn a_closed_stderr_does_not_stop_a_conversion() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    edge_image(Compression::Gzip, MediaTypes::Oci)
        .write_layout(&layout, "a")
        .unwrap();
    let image = format!("oci:{}:a", layout.display());
    // The edge image has an xattr CVMFS cannot store: the warning goes to a stderr whose
    // reader has gone away (`2>&1 | head`), which must not kill or hang the run.
    let mut child = env
        .cmd(&["convert", FQRN, &image])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(env.revision(), 2);
    env.check(true);
    // The same conversion elsewhere, read: the warning is there.
    let other = Env::init(&[]);
    let out = other.run(&["convert", FQRN, &image]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("warning"), "{err}");
}

/// Runs `args` (with `--json`) while another process holds the repository lock; once the
/// command says it waits, runs `meanwhile`, then lets it go and checks that it succeeds.
fn behind_the_lock(env: &Env, args: &[&str], meanwhile: impl FnOnce()) {
    let mut holder = lock_holder(&env.home.join(FQRN).join("lock"));
    let mut child = env
        .cmd(&[&["--json"], args].concat())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains(r#""action":"waiting""#), "{first}");
    meanwhile();
    holder.kill().unwrap();
    holder.wait().unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success(), "{rest:?}");
}

#[test]
fn the_sync_ledger_is_read_and_written_under_the_lock() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    push_versions(&reg, &layout, "ledger/app", &["1.0", "2.0"]);
    let addr = reg.addr();
    let wishlist = |name: &str, tags: &[&str]| {
        let path = env.path(name);
        let inputs: Vec<String> = tags.iter().map(|t| format!("ledger/app:{t}")).collect();
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        write_wishlist(&path, &addr, &inputs);
        path.to_str().unwrap().to_string()
    };
    let ledger = env.home.join(FQRN).join("state/sync-ledger.json");
    let w1 = wishlist("w1.yaml", &["1.0"]);
    env.ok(&["sync", FQRN, &w1]);
    let recorded = std::fs::read(&ledger).unwrap();

    // A convert queued behind the lock claims its link once it holds the lock: a sync that
    // recorded the link while the convert waited (here: the ledger written back as that sync
    // left it) does not get it back.
    let image = format!("docker://{addr}/ledger/app:1.0");
    let convert = ["convert", FQRN, &image, "--insecure-registry", &addr];
    behind_the_lock(&env, &convert, || {
        std::fs::write(&ledger, &recorded).unwrap()
    });
    let w1_next = wishlist("w1.yaml", &["2.0"]);
    env.ok(&["sync", FQRN, &w1_next, "--prune"]);
    let report = witness(&env);
    assert!(
        report
            .entries
            .contains_key(&format!("/{addr}/ledger/app:1.0")),
        "converted by hand while the sync's record was written: kept"
    );

    // A sync queued behind the lock reads the ledger once it holds the lock: what another
    // command recorded meanwhile (here: another wishlist's record) stays.
    let w2 = wishlist("w2.yaml", &["2.0"]);
    behind_the_lock(&env, &["sync", FQRN, &w2], || {
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&ledger).unwrap()).unwrap();
        doc["recipes"]["/elsewhere/w3.yaml"] = serde_json::json!(["/somewhere/else:1"]);
        std::fs::write(&ledger, serde_json::to_vec(&doc).unwrap()).unwrap();
    });
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&ledger).unwrap()).unwrap();
    assert_eq!(
        doc["recipes"]["/elsewhere/w3.yaml"],
        serde_json::json!(["/somewhere/else:1"]),
        "{doc}"
    );
    assert!(doc["recipes"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.ends_with("w2.yaml")));

    // A sync --prune that dies before its commit forgets nothing: its rerun prunes.
    let w4 = wishlist("w4.yaml", &["1.0", "2.0"]);
    env.ok(&["sync", FQRN, &w4]);
    let w4 = wishlist("w4.yaml", &["2.0"]);
    let crashed = env
        .cmd(&["sync", FQRN, &w4, "--prune"])
        .env("CVMFS_OCI_CRASH_AT", "before-manifest")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    let link = format!("/{addr}/ledger/app:1.0");
    assert!(witness(&env).entries.contains_key(&link), "not pruned yet");
    env.ok(&["sync", FQRN, &w4, "--prune"]);
    assert!(
        !witness(&env).entries.contains_key(&link),
        "pruned by the rerun"
    );
}

#[test]
fn a_moved_tag_leaves_its_old_image_until_prune_unlinked() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    let addr = reg.addr();
    let image = format!("docker://{addr}/moving/app:latest");
    let link = format!("/{addr}/moving/app:latest");
    let build = |i: usize| {
        let mut top = fixtures::layers::LayerBuilder::new();
        top.file("build", format!("{i}\n").as_bytes());
        ImageBuilder::new()
            .layer(top.finish(), Compression::Gzip)
            .write_layout(&layout, "latest")
            .unwrap();
        reg.push_oci_layout(&layout, "latest", "moving/app:latest")
            .unwrap();
    };
    let convert = |extra: &[&str]| {
        let args = [
            &[
                "--json",
                "convert",
                FQRN,
                &image,
                "--insecure-registry",
                &addr,
            ][..],
            extra,
        ]
        .concat();
        env.ok(&args)
    };
    build(1);
    convert(&[]);
    let first = link_target(&env, &link);
    build(2);
    convert(&[]);
    let second = link_target(&env, &link);
    assert_ne!(first, second);
    assert!(
        witness(&env).entries.contains_key(&first),
        "without the option the old image stays"
    );
    // Links of the operator's own keep the old images: one through the clients' mount
    // point (as older DUCC versions wrote them), one into an image from a directory of its
    // own whose name starts with a dot.
    let (apps, pinned) = (env.path("apps"), env.path("pinned"));
    let publish_at = |dir: &std::path::Path, at: &str| {
        env.ok(&["publish", FQRN, dir.to_str().unwrap(), "--path", at]);
    };
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::create_dir_all(&pinned).unwrap();
    std::os::unix::fs::symlink(format!("/cvmfs/{FQRN}{first}"), apps.join("abs")).unwrap();
    std::os::unix::fs::symlink(format!("..{second}/build"), pinned.join("into")).unwrap();
    publish_at(&apps, "/apps");
    publish_at(&pinned, "/.pinned");
    build(3);
    let out = convert(&["--prune-unlinked"]);
    assert!(out.contains(r#""flat_removed":0"#), "{out}");
    let report = witness(&env);
    assert!(report.entries.contains_key(&first) && report.entries.contains_key(&second));
    // Without them, they go.
    for dir in [&apps, &pinned] {
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::create_dir_all(dir).unwrap();
    }
    publish_at(&apps, "/apps");
    publish_at(&pinned, "/.pinned");
    let out = convert(&["--prune-unlinked"]);
    assert!(out.contains(r#""flat_removed":2"#), "{out}");
    let third = link_target(&env, &link);
    let report = witness(&env);
    assert!(report.entries.contains_key(&third));
    assert!(!report.entries.contains_key(&first) && !report.entries.contains_key(&second));
    env.check(true);
}

/// An extended attribute CVMFS cannot store is dropped with one warning line per attribute,
/// naming the image; control characters in the member's name and the attribute's key are
/// escaped, so the warning cannot split or rewrite the terminal's lines.
#[test]
fn dropped_attribute_warnings_name_the_image_and_stay_one_line() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    let meta = fixtures::layers::Meta::new(0o644)
        .xattr("user.big", &[b'v'; 300])
        .xattr("user.k\u{1b}[31m\rX", &[b'w'; 300]);
    let mut l = fixtures::layers::LayerBuilder::new();
    l.file_with(b"dir/evil\nname\r\x1b[2Kall fine", b"x", meta);
    ImageBuilder::new()
        .layer(l.finish(), Compression::Gzip)
        .write_layout(&layout, "a")
        .unwrap();
    let image = format!("oci:{}:a", layout.display());
    let out = env.run(&["convert", FQRN, &image]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    for w in &warnings {
        assert!(
            w.starts_with(&format!("cvmfs-oci: warning: image {image}: /.flat/")),
            "{w}"
        );
        assert!(w.contains("/dir/evil\\nname\\r\\u{1b}[2Kall fine: "), "{w}");
        assert!(!w.contains(['\r', '\u{1b}']), "{w}");
    }
    assert!(warnings[1].contains("user.k\\u{1b}[31m\\rX"), "{stderr}");
    assert!(!stderr.contains(['\r', '\u{1b}']), "{stderr:?}");
}

/// A batch lets go of the sync ledger before its automatic gc and push, which take the
/// repository lock again: a conversion queued for that lock then never holds it while waiting
/// for the ledger (each would wait for the other for ever), and one with `--no-wait` runs.
#[test]
fn a_batch_releases_the_sync_ledger_before_its_automatic_gc_and_push() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    for tag in ["a", "b"] {
        let mut l = fixtures::layers::LayerBuilder::new();
        l.file("tag", tag.as_bytes());
        ImageBuilder::new()
            .layer(l.finish(), Compression::Gzip)
            .write_layout(&layout, tag)
            .unwrap();
    }
    let image = |tag: &str| format!("oci:{}:{tag}", layout.display());
    let mut first = env.cmd(&["convert", FQRN, &image("a")]);
    first.stdout(std::process::Stdio::null());
    let first = common::Paused::at(first, "batch-after-ledger");
    env.ok(&["--no-wait", "convert", FQRN, &image("b")]);
    assert!(first.resume().status.success());
    assert_eq!(env.revision(), 3);
    env.check(true);
}

/// One image under two names in two repositories, one of which lost a layer blob (a registry
/// keeps blobs, and their access rules, per repository): the image is read through the other
/// name, and both names are linked, whichever comes first.
#[test]
fn an_image_is_read_through_another_repository_when_its_own_lost_a_blob() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    let mut l = fixtures::layers::LayerBuilder::new();
    l.file("f", b"the content");
    let layer = l.finish();
    let layer_digest = fixtures::oci::sha256_digest(&fixtures::layers::gzip(&layer));
    let layer_digest = layer_digest.trim_start_matches("sha256:");
    ImageBuilder::new()
        .layer(layer, Compression::Gzip)
        .write_layout(&layout, "1")
        .unwrap();
    for name in ["a/broken:1", "b/healthy:1"] {
        reg.push_oci_layout(&layout, "1", name).unwrap();
    }
    let addr = reg.addr();
    // Deleted through the API: the registry's blob cache forgets it too; `b` keeps it.
    let mut http = std::net::TcpStream::connect(&addr).unwrap();
    let request = format!(
        "DELETE /v2/a/broken/blobs/sha256:{layer_digest} HTTP/1.1\r\nHost: {addr}\r\n\
         Connection: close\r\n\r\n"
    );
    std::io::Write::write_all(&mut http, request.as_bytes()).unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut http, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    let image = |name: &str| format!("docker://{addr}/{name}");
    let out = env.ok(&[
        "--json",
        "convert",
        FQRN,
        &image("a/broken:1"),
        &image("b/healthy:1"),
        "--insecure-registry",
        &addr,
    ]);
    let fallback: Vec<_> = events(&out, "fallback").collect();
    assert_eq!(fallback.len(), 1, "{out}");
    assert_eq!(fallback[0]["through"], image("b/healthy:1"), "{out}");
    let report = witness(&env);
    for name in ["a/broken:1", "b/healthy:1"] {
        assert!(
            report.entries.contains_key(&format!("/{addr}/{name}")),
            "{name}"
        );
    }
    env.check(true);
}

/// A layer that comes in two compressions (the gzip and zstd images of one build) is fetched
/// once, as either: the forecast's download figure is an upper bound, counting the larger.
#[test]
fn the_forecast_counts_the_larger_of_a_layers_two_compressions() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    let mut l = fixtures::layers::LayerBuilder::new();
    l.file("a", &common::noise(20_000, 1))
        .file("b", &[b'b'; 50_000]);
    let layer = l.finish();
    let mut sizes = Vec::new();
    for (tag, compression) in [("gz", Compression::Gzip), ("zst", Compression::Zstd)] {
        let built = ImageBuilder::new()
            .layer(layer.clone(), compression)
            .write_layout(&layout, tag)
            .unwrap();
        reg.push_oci_layout(&layout, tag, &format!("twin/{tag}:1"))
            .unwrap();
        let blob = reg.blob_path(&built.layer_digests[0]);
        sizes.push(std::fs::metadata(blob).unwrap().len());
    }
    assert_ne!(sizes[0], sizes[1]);
    let addr = reg.addr();
    let url = format!("docker://{addr}");
    let out = env.ok(&[
        "--json",
        "migrate",
        FQRN,
        &url,
        "--insecure-registry",
        &addr,
        "--dry-run",
    ]);
    let forecast = events(&out, "migrate-forecast").next().unwrap();
    assert_eq!(forecast["layers"], 1, "{forecast}");
    assert_eq!(
        forecast["download_bytes"],
        *sizes.iter().max().unwrap(),
        "{forecast}"
    );
    // A pattern that selects nothing says so (patterns match `repository:tag`).
    let run = env.run(&[
        "migrate",
        FQRN,
        &url,
        "--insecure-registry",
        &addr,
        "--dry-run",
        "--include",
        "twin/gz",
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    let hint = "(patterns match REPOSITORY:TAG: twin/gz:* takes every tag)";
    assert!(
        err.contains(&format!("--include twin/gz matches no image {hint}")),
        "{err}"
    );
}

/// An image whose manifest fails while the migration orders its images is reported then, once,
/// and not asked for again, through every retry, in its batch.
#[test]
fn migrate_asks_for_an_unreadable_manifest_once() {
    use std::io::{BufRead, Write};
    let env = Env::init(&[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let manifests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = manifests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut line = String::new();
            let _ = std::io::BufReader::new(&s).read_line(&mut line);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (status, body) = if path.starts_with("/v2/_catalog") {
                (200, r#"{"repositories":["bad/x"]}"#)
            } else if path.starts_with("/v2/bad/x/tags/list") {
                (200, r#"{"name":"bad/x","tags":["1","2"]}"#)
            } else if path.starts_with("/v2/bad/x/manifests/") {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (
                    503,
                    r#"{"errors":[{"code":"UNAVAILABLE","message":"down"}]}"#,
                )
            } else {
                (404, "")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nRetry-After: 0\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let url = format!("docker://{addr}");
    let run = env.run(&[
        "migrate",
        FQRN,
        &url,
        "--batch",
        "1",
        "--insecure-registry",
        &addr,
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("cvmfs-oci: error:"))
        .collect();
    assert_eq!(errors.len(), 2, "{err}");
    // Each of the two tags: its first request and 5 retries, once.
    assert_eq!(
        manifests.load(std::sync::atomic::Ordering::SeqCst),
        12,
        "{err}"
    );
    // The forecast says it once, on stderr, naming the image once.
    let run = env.run(&[
        "migrate",
        FQRN,
        &url,
        "--dry-run",
        "--insecure-registry",
        &addr,
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("bad/x:1")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(errors[0].matches("bad/x:1").count(), 1, "{err}");
    assert!(!out.contains("bad/x:"), "{out}");
    assert!(out.contains("2 unreadable"), "{out}");
}

/// `skopeo copy … oci:DIR:latest` writes the bare tag as the ref name: each layout is
/// published under its directory's name, with that tag, so two layouts tagged `latest` keep
/// a link each.
#[test]
fn layouts_with_a_tag_only_ref_name_are_named_after_their_directory() {
    let env = Env::init(&[]);
    let mut refs = Vec::new();
    for (dir, tag) in [("busybox", "latest"), ("jq", "latest"), ("jq", "1.6")] {
        let layout = env.path(dir);
        let mut l = fixtures::layers::LayerBuilder::new();
        l.file("id", format!("{dir} {tag}\n").as_bytes());
        ImageBuilder::new()
            .layer(l.finish(), Compression::Gzip)
            .write_layout(&layout, tag)
            .unwrap();
        refs.push(format!("oci:{}:{tag}", layout.display()));
    }
    let mut args = vec!["--json", "convert", FQRN];
    args.extend(refs.iter().map(String::as_str));
    let out = env.ok(&args);
    let links: Vec<_> = events(&out, "image")
        .map(|e| e["links"][0].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        links,
        ["/local/busybox:latest", "/local/jq:latest", "/local/jq:1.6"],
        "{out}"
    );
    let report = witness(&env);
    let id = |link: &str| {
        let flat = link_target(&env, link);
        report.entries[&format!("{flat}/id")].sha1.clone()
    };
    let of = |bytes: &[u8]| Some(catalog_writer::hash::ContentHash::of(bytes).to_hex());
    assert_eq!(id("/local/busybox:latest"), of(b"busybox latest\n"));
    assert_eq!(id("/local/jq:latest"), of(b"jq latest\n"));
    assert_eq!(id("/local/jq:1.6"), of(b"jq 1.6\n"));
    env.check(true);
}

/// `--all-platforms` over an index listing `arm64` and `arm64/v8` (one link name): one is
/// converted, and the other is named in a warning, not lost without a word.
#[test]
fn all_platforms_warns_about_entries_sharing_a_link_name() {
    let env = Env::init(&[]);
    let layout = env.path("multi");
    let image = |arch: &str, variant: Option<&str>| {
        let mut l = fixtures::layers::LayerBuilder::new();
        l.file("id", format!("{arch} {variant:?}\n").as_bytes());
        ImageBuilder::new()
            .platform(arch, variant)
            .layer(l.finish(), Compression::Gzip)
    };
    let built = fixtures::oci::write_index_layout(
        &layout,
        "app:1",
        &[
            image("amd64", None),
            image("arm64", None),
            image("arm64", Some("v8")),
        ],
    )
    .unwrap();
    let reference = format!("oci:{}:app:1", layout.display());
    let out = env.run(&["convert", FQRN, &reference, "--all-platforms"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dropped = &built.images[2].manifest_digest;
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("cvmfs-oci: warning:"))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.contains(&format!(
            "index entry {dropped} (linux/arm64/v8) is not converted"
        )),
        "{warning}"
    );
    assert!(warning.contains("app:1@linux-arm64"), "{warning}");
    let report = witness(&env);
    let arm = link_target(&env, "/local/app:1@linux-arm64");
    assert_eq!(
        report.entries[&format!("{arm}/id")].sha1,
        Some(catalog_writer::hash::ContentHash::of(b"arm64 None\n").to_hex())
    );
    // With --json, a warning event naming the image.
    let out = env.ok(&["--json", "convert", FQRN, &reference, "--all-platforms"]);
    let w = events(&out, "warning").next().expect("warning event");
    assert!(
        w["warning"]
            .as_str()
            .unwrap_or_default()
            .contains(dropped.as_str()),
        "{w}"
    );
    env.check(true);
}

/// A full disk under the objects stops the batch: each image it stopped is reported once,
/// then one summary says nothing was committed; the repository keeps its revision.
#[test]
fn a_full_disk_is_reported_once_per_image_and_commits_nothing() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    let image = edge_image(Compression::Gzip, MediaTypes::Oci);
    image.write_layout(&layout, "a").unwrap();
    let src = format!("oci:{}:a", layout.display());
    let out = env
        .cmd(&["--json", "convert", FQRN, &src])
        .env("CVMFS_OCI_CRASH_AT", "objects-disk-full")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line for the one image: {stderr}");
    assert!(lines[0].contains("No space left on device"), "{stderr}");
    let errors: Vec<_> = events(&stdout, "error").collect();
    assert_eq!(errors.len(), 1, "{stdout}");
    assert!(
        errors[0]["image"].as_str().unwrap().contains(":a"),
        "{stdout}"
    );
    let summary: Vec<_> = events(&stdout, "summary").collect();
    assert_eq!(summary.len(), 1, "{stdout}");
    assert_eq!(summary[0]["committed"], false, "{stdout}");
    assert_eq!(summary[0]["failed"], 1, "{stdout}");
    assert_eq!(env.revision(), 1);
    env.check(true);
    env.ok(&["convert", FQRN, &src]);
    assert_eq!(env.revision(), 2, "a rerun with room converts it");
}

/// A CI job checks its wishlist out at another path every time: under `--wishlist-name` its
/// syncs are one wishlist's, and a sync that cannot prune says why in `--json` too.
#[test]
fn a_named_wishlist_prunes_from_any_path() {
    let Some((reg, env, layout)) = registry_env() else {
        return;
    };
    push_versions(&reg, &layout, "ci/app", &["1", "2"]);
    let addr = reg.addr();
    let sync = |dir: &str, inputs: &[&str], name: Option<&str>| {
        let recipe = env.path(dir).join("wishlist.yaml");
        std::fs::create_dir_all(recipe.parent().unwrap()).unwrap();
        write_wishlist(&recipe, &addr, inputs);
        let mut args = vec!["--json", "sync", FQRN, recipe.to_str().unwrap(), "--prune"];
        if let Some(n) = name {
            args.extend(["--wishlist-name", n]);
        }
        env.ok(&args)
    };
    let first = sync("build-1", &["ci/app:1", "ci/app:2"], Some("app"));
    let warning: Vec<_> = events(&first, "warning").collect();
    assert_eq!(warning.len(), 1, "{first}");
    assert!(
        warning[0]["warning"]
            .as_str()
            .unwrap()
            .starts_with("not pruning: no earlier sync"),
        "{first}"
    );
    // Another checkout path, same name: ci/app:2, no longer listed, is pruned.
    let second = sync("build-2", &["ci/app:1"], Some("app"));
    assert_eq!(events(&second, "warning").count(), 0, "{second}");
    let report = witness(&env);
    assert!(report.entries.contains_key(&format!("/{addr}/ci/app:1")));
    assert!(!report.entries.contains_key(&format!("/{addr}/ci/app:2")));
    // Without the name, a new path is a wishlist of its own: nothing pruned, and said so.
    let third = sync("build-3", &[], None);
    assert_eq!(events(&third, "warning").count(), 1, "{third}");
    assert!(witness(&env)
        .entries
        .contains_key(&format!("/{addr}/ci/app:1")));
}

/// A batch whose commit loses the revision to another home's publish reports its images only
/// with the error, never as `converted`; a rerun converts them.
#[test]
fn a_batch_that_loses_its_commit_reports_no_image_converted() {
    let env = Env::init(&[]);
    let other = env.other_home();
    let layout = env.path("layout");
    let mut layer = fixtures::layers::LayerBuilder::new();
    layer.file("f", b"from the image\n");
    ImageBuilder::new()
        .layer(layer.finish(), Compression::Gzip)
        .write_layout(&layout, "a")
        .unwrap();
    let src = format!("oci:{}:a", layout.display());
    let mut cmd = env.cmd(&["--json", "convert", FQRN, &src]);
    cmd.stdout(std::process::Stdio::piped());
    let paused = common::Paused::at(cmd, "after-objects");
    let tree = other.path("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), "from the other home\n").unwrap();
    other.ok(&["publish", FQRN, tree.to_str().unwrap()]);
    let out = paused.resume();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert_eq!(events(&stdout, "image").count(), 0, "{stdout}");
    assert!(!stderr.contains("converted"), "{stderr}");
    assert_eq!(env.revision(), 2, "the other home's revision stands");
    let again = env.ok(&["--json", "convert", FQRN, &src]);
    let results: Vec<_> = events(&again, "image")
        .map(|e| e["result"].clone())
        .collect();
    assert_eq!(results, ["converted"], "{again}");
    env.check(true);
}

/// Two OCI layouts in directories of one name, converted in one batch, would both link
/// `/local/layout:a`: the second fails in one line naming both, the first is published.
#[test]
fn two_layouts_that_would_share_a_link_in_one_batch_fail_the_second() {
    let env = Env::init(&[]);
    let mut refs = Vec::new();
    for (dir, content) in [("x", "first"), ("y", "second")] {
        let layout = env.path(dir).join("layout");
        let mut layer = fixtures::layers::LayerBuilder::new();
        layer.file("f", content.as_bytes());
        ImageBuilder::new()
            .layer(layer.finish(), Compression::Gzip)
            .write_layout(&layout, "a")
            .unwrap();
        refs.push(format!("oci:{}:a", layout.display()));
    }
    let run = env.run(&["convert", FQRN, &refs[0], &refs[1]]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(refs[1].as_str())
            && lines[0].contains(refs[0].as_str())
            && lines[0].contains("/local/layout:a"),
        "{stderr}"
    );
    assert_eq!(env.revision(), 2);
    let flat = link_target(&env, "/local/layout:a");
    let file = witness(&env).entries[&format!("{flat}/f")].clone();
    assert_eq!(
        file.sha1,
        Some(hex::encode(<sha1::Sha1 as sha1::Digest>::digest(b"first")))
    );
    env.check(true);
}

/// A moving tag's next build drops the host's platform: `--all-platforms` makes only its
/// `TAG@os-arch` links and says so; `TAG` keeps the host's last image, never another
/// architecture's.
#[test]
fn all_platforms_without_the_host_platform_leaves_the_plain_tag_alone() {
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipped: the test's images assume an amd64 host");
        return;
    }
    let env = Env::init(&[]);
    let image = |arch: &str, build: &str| {
        let mut l = fixtures::layers::LayerBuilder::new();
        l.file("id", format!("{arch} {build}\n").as_bytes());
        ImageBuilder::new()
            .platform(arch, None)
            .layer(l.finish(), Compression::Gzip)
    };
    let id = |link: &str| {
        let flat = link_target(&env, link);
        witness(&env).entries[&format!("{flat}/id")].sha1.clone()
    };
    let of = |s: &str| Some(catalog_writer::hash::ContentHash::of(s.as_bytes()).to_hex());
    let first = env.path("b1").join("app");
    fixtures::oci::write_index_layout(&first, "1", &[image("amd64", "1"), image("arm64", "1")])
        .unwrap();
    env.ok(&[
        "convert",
        FQRN,
        &format!("oci:{}:1", first.display()),
        "--all-platforms",
    ]);
    assert_eq!(id("/local/app:1"), of("amd64 1\n"));
    let next = env.path("b2").join("app");
    fixtures::oci::write_index_layout(&next, "1", &[image("arm64", "2")]).unwrap();
    let out = env.ok(&[
        "--json",
        "convert",
        FQRN,
        &format!("oci:{}:1", next.display()),
        "--all-platforms",
    ]);
    let w = events(&out, "warning").next().expect("warning event");
    let text = w["warning"].as_str().unwrap_or_default();
    assert!(
        text.contains("no entry for platform linux/amd64") && text.contains("/local/app:1 "),
        "{w}"
    );
    assert_eq!(
        id("/local/app:1"),
        of("amd64 1\n"),
        "TAG keeps the host's image"
    );
    assert_eq!(id("/local/app:1@linux-arm64"), of("arm64 2\n"));
    env.check(true);
}

/// A batch whose every image fails is rolled back: the objects it stored go, and so do the
/// layer memos that name them, so that no later run replays a layer whose objects are gone
/// (it would find them missing and read the layer again, but only after asking the store).
#[test]
fn a_batch_that_fails_whole_forgets_the_memos_of_what_it_removed() {
    let env = Env::init(&[]);
    let layout = env.path("layout");
    let mut top = fixtures::layers::LayerBuilder::new();
    top.file("app/new.bin", &[b'n'; 70_000]);
    let mut bottom = fixtures::layers::LayerBuilder::new();
    bottom.file("base/old.bin", &[b'o'; 50_000]);
    let bottom = fixtures::layers::gzip(&bottom.finish());
    ImageBuilder::new()
        .layer(
            fixtures::layers::LayerBuilder::new().finish(),
            Compression::Gzip,
        )
        .layer(top.finish(), Compression::Gzip)
        .write_layout(&layout, "broken-base")
        .unwrap();
    // The bottom layer (read last) is a corrupt gzip stream: the image fails after its top
    // layer was read, stored and recorded in the memo.
    tamper_layout(&layout, "broken-base", |m, l| {
        replace_layer0(m, l, fixtures::layers::corrupt(&bottom, bottom.len() / 2));
    });
    let before = env.snapshot();
    let image = format!("oci:{}:broken-base", layout.display());
    let out = env.run(&["--json", "convert", FQRN, &image]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(events(&stdout, "layer").count() >= 1, "{stdout}");
    assert_eq!(env.snapshot(), before, "the rolled-back objects are gone");
    let out = env.run(&["--json", "cache", "stats", FQRN]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["layers"], 0, "{stats}");
    assert_eq!(stats["index_entries"], 0, "{stats}");
}
