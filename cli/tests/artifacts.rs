//! Signatures and artifacts stored as tags beside the images they describe (cosign's
//! `sha256-<hex>.sig` and `.att`, OCI 1.1 artifacts and their referrers fallback tag): a batch
//! that lists tags (`migrate`, a wishlist's `*`) skips them, says so and still succeeds; an
//! image named on its own that is one of them fails.

mod common;

use common::{Env, FQRN};
use fixtures::http::request_with_body;
use fixtures::oci::{sha256_digest, Compression, ImageBuilder, OCI_CONFIG, OCI_MANIFEST};
use fixtures::Registry;
use serde_json::{json, Value};
use std::path::Path;

const REPO: &str = "art/app";

fn registry_or_skip() -> Option<Registry> {
    if fixtures::tools::skip_if_missing(&[
        fixtures::tools::DOCKER_REGISTRY,
        fixtures::tools::SKOPEO,
    ]) {
        return None;
    }
    Some(Registry::start().expect("start docker-registry"))
}

/// Uploads `data` as a blob of `REPO` (POST, then the monolithic PUT); returns its digest.
fn push_blob(reg: &Registry, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let addr = reg.addr();
    let start = request_with_body(
        &addr,
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/"),
        &[],
        Some(b""),
    )
    .unwrap();
    assert_eq!(
        start.status,
        202,
        "{}",
        String::from_utf8_lossy(&start.body)
    );
    let location = start.header("location").expect("upload location");
    // The registry answers with an absolute URL: the request needs its path.
    let path = location
        .split_once(&addr)
        .map_or(location, |(_, path)| path);
    let sep = if path.contains('?') { '&' } else { '?' };
    let put = request_with_body(
        &addr,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        Some(data),
    )
    .unwrap();
    assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
    digest
}

/// Stores `manifest` (an OCI manifest) as `REPO:tag`.
fn push_manifest(reg: &Registry, tag: &str, manifest: &Value) {
    let body = serde_json::to_vec(manifest).unwrap();
    let put = request_with_body(
        &reg.addr(),
        "PUT",
        &format!("/v2/{REPO}/manifests/{tag}"),
        &[("Content-Type", OCI_MANIFEST)],
        Some(&body),
    )
    .unwrap();
    assert_eq!(
        put.status,
        201,
        "{tag}: {}",
        String::from_utf8_lossy(&put.body)
    );
}

fn descriptor(media_type: &str, digest: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": data.len()})
}

/// Pushes `REPO:1.0`, a real image, and beside it what cosign and ORAS store for it: a
/// signature, an attestation and an SBOM artifact under the referrers fallback tag. Returns
/// the non-image tags.
fn push_signed_image(reg: &Registry, layout: &Path) -> Vec<String> {
    let mut layer = fixtures::layers::LayerBuilder::new();
    layer.file("etc/hello", b"hi\n");
    ImageBuilder::new()
        .layer(layer.finish(), Compression::Gzip)
        .write_layout(layout, "1.0")
        .unwrap();
    reg.push_oci_layout(layout, "1.0", &format!("{REPO}:1.0"))
        .unwrap();
    let image = reg.manifest(REPO, "1.0").unwrap().body;
    let image_digest = sha256_digest(&image);
    let hex = image_digest.trim_start_matches("sha256:");
    let subject = descriptor(OCI_MANIFEST, &image_digest, &image);

    // cosign: an image config listing the payload as its "layer".
    let mut tags = Vec::new();
    for (suffix, layer_type, payload) in [
        (
            "sig",
            "application/vnd.dev.cosign.simplesigning.v1+json",
            json!({"critical": {"image": {"docker-manifest-digest": image_digest},
                                "type": "cosign container image signature"}}),
        ),
        (
            "att",
            "application/vnd.dsse.envelope.v1+json",
            json!({"payloadType": "application/vnd.in-toto+json", "payload": "e30=",
                   "signatures": []}),
        ),
    ] {
        let payload = serde_json::to_vec(&payload).unwrap();
        let payload_digest = push_blob(reg, &payload);
        let config = serde_json::to_vec(&json!({
            "architecture": "", "os": "", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
        }))
        .unwrap();
        let config_digest = push_blob(reg, &config);
        let tag = format!("sha256-{hex}.{suffix}");
        push_manifest(
            reg,
            &tag,
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": descriptor(OCI_CONFIG, &config_digest, &config),
                    "layers": [descriptor(layer_type, &payload_digest, &payload)]}),
        );
        tags.push(tag);
    }

    // ORAS / OCI 1.1: the empty config, an artifactType and a subject.
    let empty = b"{}";
    let empty_digest = push_blob(reg, empty);
    let sbom = br#"{"spdxVersion":"SPDX-2.3"}"#;
    let sbom_digest = push_blob(reg, sbom);
    let tag = format!("sha256-{hex}");
    push_manifest(
        reg,
        &tag,
        &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "artifactType": "application/spdx+json",
                "config": descriptor("application/vnd.oci.empty.v1+json", &empty_digest, empty),
                "layers": [descriptor("application/spdx+json", &sbom_digest, sbom)],
                "subject": subject}),
    );
    tags.push(tag);
    tags
}

fn events<'a>(out: &'a str, action: &'a str) -> impl Iterator<Item = Value> + 'a {
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(move |e| e["action"] == action)
}

/// The images the `skipped` events of `out` name, sorted, after checking each says why.
fn skipped(out: &str) -> Vec<String> {
    let mut images: Vec<String> = events(out, "skipped")
        .map(|e| {
            let reason = e["reason"].as_str().unwrap_or_default();
            assert!(reason.starts_with("not a container image: "), "{e}");
            e["image"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    images.sort();
    images
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
fn listed_signatures_and_artifacts_are_skipped_named_ones_fail() {
    let Some(reg) = registry_or_skip() else {
        return;
    };
    let env = Env::init(&[]);
    let tags = push_signed_image(&reg, &env.path("layout"));
    let addr = reg.addr();
    let reference = |tag: &str| format!("docker://{addr}/{REPO}:{tag}");
    let mut not_images: Vec<String> = tags.iter().map(|t| reference(t)).collect();
    not_images.sort();

    // migrate --dry-run: three tags the run would skip, none unreadable.
    let url = format!("docker://{addr}/art");
    let insecure = ["--insecure-registry", addr.as_str()];
    let mut args = vec!["--json", "migrate", FQRN, &url, "--dry-run"];
    args.extend(insecure);
    let out = env.ok(&args);
    let forecast = events(&out, "migrate-forecast").next().expect("forecast");
    assert_eq!(
        (
            &forecast["convert"],
            &forecast["unreadable"],
            &forecast["not_images"]
        ),
        (&1.into(), &0.into(), &3.into()),
        "{out}"
    );
    assert_eq!(skipped(&out), not_images);

    // A wishlist with a `*` tag: the image is converted, the rest skipped, exit 0.
    let recipe = env.path("wishlist.yaml");
    write_wishlist(&recipe, &addr, &[&format!("{REPO}:*")]);
    let sync = ["--json", "sync", FQRN, recipe.to_str().unwrap()];
    let out = env.run(&sync);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(skipped(&stdout), not_images);
    let summary = events(&stdout, "summary").next().expect("summary");
    assert_eq!(
        (
            &summary["converted"],
            &summary["failed"],
            &summary["not_images"]
        ),
        (&1.into(), &0.into(), &3.into()),
        "{stdout}"
    );

    // migrate, twice: nothing fails, and nothing of the signatures is published.
    for _ in 0..2 {
        let mut args = vec!["migrate", FQRN, &url];
        args.extend(insecure);
        let out = env.ok(&args);
        assert!(
            out.contains("0 failed, 3 not container images skipped"),
            "{out}"
        );
        for image in &not_images {
            assert!(
                out.contains(&format!("skipped: {image}: not a container image: ")),
                "{out}"
            );
        }
    }
    let cache = env.path("witness-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let report = fixtures::witness::witness_read_dir(&env.storage, &cache).expect("witness");
    let links: Vec<&String> = report
        .entries
        .keys()
        .filter(|p| p.starts_with(&format!("/{addr}/{REPO}:")))
        .collect();
    assert_eq!(links, [&format!("/{addr}/{REPO}:1.0")]);

    // Named, each still fails, on one line that says what it is.
    for (tag, what) in
        tags.iter()
            .zip(["a cosign signature", "a DSSE attestation", "artifact type"])
    {
        let mut args = vec!["convert", FQRN];
        let image = reference(tag);
        args.push(&image);
        args.extend(insecure);
        let line = env.fails(&args);
        assert!(
            line.starts_with(&format!(
                "cvmfs-oci: error: image {image}: not a container image: "
            )) && line.contains(what),
            "{line}"
        );
    }
    // A wishlist that names the signature's tag beside the `*`: that one fails.
    write_wishlist(
        &recipe,
        &addr,
        &[&format!("{REPO}:*"), &format!("{REPO}:{}", tags[0])],
    );
    let out = env.run(&sync);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let named = reference(&tags[0]);
    let listed: Vec<String> = not_images
        .iter()
        .filter(|i| **i != named)
        .cloned()
        .collect();
    assert_eq!(skipped(&stdout), listed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("image {named}: not a container image")),
        "{stderr}"
    );
}

/// A tag whose index lists images for other platforms only (an `s390x`/`riscv64` build beside
/// the host's images): `migrate` skips it, says why and still succeeds, counts it apart from
/// artifacts in the forecast and the summary, and converts it when asked for that platform;
/// named on its own, it fails.
#[test]
fn listed_indexes_without_the_platform_are_skipped_named_ones_fail() {
    // The messages below name the host's platform.
    if std::env::consts::ARCH != "x86_64" {
        return;
    }
    let Some(reg) = registry_or_skip() else {
        return;
    };
    let env = Env::init(&[]);
    let mut layer = fixtures::layers::LayerBuilder::new();
    layer.file("etc/hello", b"hi\n");
    ImageBuilder::new()
        .layer(layer.finish(), Compression::Gzip)
        .write_layout(&env.path("host"), "1.0")
        .unwrap();
    reg.push_oci_layout(&env.path("host"), "1.0", &format!("{REPO}:1.0"))
        .unwrap();
    let image = |arch: &str| {
        let mut l = fixtures::layers::LayerBuilder::new();
        l.file("arch", format!("{arch}\n").as_bytes());
        ImageBuilder::new()
            .platform(arch, None)
            .layer(l.finish(), Compression::Gzip)
    };
    let foreign = env.path("foreign");
    fixtures::oci::write_index_layout(&foreign, "2.0", &[image("s390x"), image("riscv64")])
        .unwrap();
    let all = fixtures::registry::PushOptions {
        all: true,
        ..Default::default()
    };
    reg.push_oci_layout_with(&foreign, "2.0", &format!("{REPO}:2.0"), all)
        .unwrap();
    let addr = reg.addr();
    let skipped_image = format!("docker://{addr}/{REPO}:2.0");
    let url = format!("docker://{addr}/art");
    let insecure = ["--insecure-registry", addr.as_str()];
    let why = "no manifest for platform linux/amd64 (the index offers: linux/s390x, linux/riscv64)";
    let skipped = |out: &str| -> Vec<(String, String)> {
        events(out, "skipped")
            .map(|e| (e["image"].to_string(), e["reason"].to_string()))
            .collect()
    };
    let expected = vec![(json!(skipped_image).to_string(), json!(why).to_string())];

    let mut dry = vec!["--json", "migrate", FQRN, &url, "--dry-run"];
    dry.extend(insecure);
    let out = env.ok(&dry);
    let forecast = events(&out, "migrate-forecast").next().expect("forecast");
    let counts = ["convert", "unreadable", "not_images", "no_platform"].map(|k| &forecast[k]);
    assert_eq!(counts, [1, 0, 0, 1].map(Value::from).each_ref(), "{out}");
    assert_eq!(skipped(&out), expected);

    // Twice: a rerun skips it again, and neither run fails.
    for _ in 0..2 {
        let mut args = vec!["--json", "migrate", FQRN, &url];
        args.extend(insecure);
        let out = env.run(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert_eq!(skipped(&stdout), expected);
        let summary = events(&stdout, "summary").last().expect("summary");
        assert_eq!(
            (&summary["failed"], &summary["no_platform"]),
            (&0.into(), &1.into()),
            "{stdout}"
        );
    }
    let mut args = vec!["migrate", FQRN, &url];
    args.extend(insecure);
    let out = env.ok(&args);
    assert!(
        out.contains(&format!("skipped: {skipped_image}: {why}"))
            && out.contains("0 failed, 1 with no manifest for the platform skipped"),
        "{out}"
    );

    // A wishlist's `*` skips it the same way; a wishlist that names it fails.
    let recipe = env.path("wishlist.yaml");
    write_wishlist(&recipe, &addr, &[&format!("{REPO}:*")]);
    let sync = ["--json", "sync", FQRN, recipe.to_str().unwrap()];
    let out = env.run(&sync);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(skipped(&stdout), expected);
    write_wishlist(&recipe, &addr, &[&format!("{REPO}:2.0")]);
    let out = env.run(&sync);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("image {skipped_image}: {why}")),
        "{stderr}"
    );

    // Named, it fails on one line naming the image and the platforms it offers.
    let mut args = vec!["convert", FQRN, &skipped_image];
    args.extend(insecure);
    let line = env.fails(&args);
    assert_eq!(
        line,
        format!("cvmfs-oci: error: image {skipped_image}: {why}")
    );

    // Asked for one of its platforms, migrate converts it.
    let mut args = vec!["migrate", FQRN, &url, "--platform", "linux/s390x"];
    args.extend(insecure);
    let out = env.ok(&args);
    assert!(!out.contains("skipped"), "{out}");
    let cache = env.path("witness-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let report = fixtures::witness::witness_read_dir(&env.storage, &cache).expect("witness");
    let link = format!("/{addr}/{REPO}:2.0");
    assert!(report.entries.contains_key(&link), "{link}");
}
