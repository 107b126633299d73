//! Sources over small images built here: OCI layouts and docker archives, their error cases,
//! and layer streams end to end (decompression, blob and diff_id checks).

use super::*;
use flate2::write::GzEncoder;
use source::MAX_NESTED_INDEXES;
use std::io::{Read, Write};
use std::path::Path;

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn config_json(diff_ids: &[Digest], arch: &str) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap()
}

struct Built {
    tars: Vec<Vec<u8>>,
    blobs: Vec<Vec<u8>>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

/// An image of two layers (gzip + plain) as blobs.
fn image(arch: &str, salt: &str) -> Built {
    // Incompressible bytes make the gzip blob larger than the decoder's first look.
    let mut x = 0x2545_f491_u32;
    let noise: Vec<u8> = (0..65_536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let tars = vec![
        layer_tar(&[
            ("etc/os-release", b"ID=test\n"),
            ("bin/sh", salt.as_bytes()),
            ("data/noise", &noise),
        ]),
        layer_tar(&[("srv/app.txt", b"hello\n")]),
    ];
    let blobs = vec![gzip(&tars[0]), tars[1].clone()];
    let config = config_json(&[Digest::of(&tars[0]), Digest::of(&tars[1])], arch);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": Digest::of(&blobs[0]).to_string(), "size": blobs[0].len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar",
             "digest": Digest::of(&blobs[1]).to_string(), "size": blobs[1].len()},
        ],
    }))
    .unwrap();
    Built {
        tars,
        blobs,
        config,
        manifest,
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let path = dir.join("blobs/sha256");
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join(d.hex()), bytes).unwrap();
    d
}

/// A layout with `app` (single manifest) and `multi` (index of amd64 + arm64).
fn layout(dir: &Path) -> (Built, Built, Built) {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let app = image("amd64", "a");
    let amd = image("amd64", "b");
    let arm = image("arm64", "c");
    for img in [&app, &amd, &arm] {
        for b in img.blobs.iter().chain([&img.config, &img.manifest]) {
            put_blob(dir, b);
        }
    }
    let entry = |m: &[u8], arch: &str, variant: Option<&str>| {
        let mut p = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            p["variant"] = v.into();
        }
        serde_json::json!({"mediaType": manifest::OCI_MANIFEST, "digest": Digest::of(m).to_string(),
                           "size": m.len(), "platform": p})
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::OCI_INDEX,
        "manifests": [entry(&amd.manifest, "amd64", None), entry(&arm.manifest, "arm64", Some("v8"))],
    }))
    .unwrap();
    let index_digest = put_blob(dir, &index);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": manifest::OCI_MANIFEST, "digest": Digest::of(&app.manifest).to_string(),
             "size": app.manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "app:1"}},
            {"mediaType": manifest::OCI_INDEX, "digest": index_digest.to_string(),
             "size": index.len(), "annotations": {"org.opencontainers.image.ref.name": "127.0.0.1:5000/t/multi:1"}},
        ],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    (app, amd, arm)
}

fn read_layer(
    source: &dyn ImageSource,
    img: &ResolvedImage,
    i: usize,
) -> std::result::Result<Vec<u8>, Error> {
    let mut r = open_uncompressed_layer(source, img, i)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .map_err(|e| Error::from_io("reading", e))?;
    Ok(out)
}

fn open(text: &str) -> Box<dyn ImageSource> {
    Sources::new(RegistryOptions::default())
        .open(&ImageRef::parse(text).unwrap())
        .unwrap()
}

#[test]
fn oci_layout_single_image() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _, _) = layout(dir.path());
    let source = open(&format!("oci:{}:app:1", dir.path().display()));
    let images = source.resolve(&PlatformSelection::Host).unwrap();
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(img.name.to_string(), "local/app:1");
    assert_eq!(img.manifest_bytes, app.manifest);
    assert_eq!(img.manifest_digest, Digest::of(&app.manifest));
    assert_eq!(img.config_digest, Digest::of(&app.config));
    assert_eq!(img.config.cmd, ["/bin/sh"]);
    assert_eq!(img.platform.to_string(), "linux/amd64");
    assert!(!img.from_index);
    for i in 0..2 {
        assert_eq!(read_layer(source.as_ref(), img, i).unwrap(), app.tars[i]);
    }
    // The raw stream is the stored blob.
    let mut raw = Vec::new();
    source
        .open_layer(img, 0)
        .unwrap()
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(raw, app.blobs[0]);
}

#[test]
fn oci_layout_index_platforms() {
    let dir = tempfile::tempdir().unwrap();
    let (_, amd, arm) = layout(dir.path());
    let source = open(&format!(
        "oci:{}:127.0.0.1:5000/t/multi:1",
        dir.path().display()
    ));
    let all = source.resolve(&PlatformSelection::All).unwrap();
    assert_eq!(all.len(), 2);
    assert!(all
        .iter()
        .all(|i| i.from_index && i.name.to_string() == "127.0.0.1:5000/t/multi:1"));
    let arm_only = source
        .resolve(&PlatformSelection::One(
            Platform::parse("linux/arm64").unwrap(),
        ))
        .unwrap();
    assert_eq!(arm_only.len(), 1);
    assert_eq!(arm_only[0].config_bytes, arm.config);
    assert_eq!(
        read_layer(source.as_ref(), &arm_only[0], 0).unwrap(),
        arm.tars[0]
    );
    let amd_img = source
        .resolve(&PlatformSelection::One(
            Platform::parse("linux/amd64").unwrap(),
        ))
        .unwrap();
    assert_eq!(amd_img[0].manifest_bytes, amd.manifest);
    let err = source
        .resolve(&PlatformSelection::One(
            Platform::parse("linux/riscv64").unwrap(),
        ))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no manifest for platform linux/riscv64"),
        "{err}"
    );
}

/// Adds to the layout of [`layout`] an image `name` whose index nests the `multi` index
/// `depth` levels deep (each level an index whose only entry is the next).
fn nest_multi(dir: &Path, name: &str, depth: usize) {
    nest_multi_copies(dir, name, depth, 1);
}

/// [`nest_multi`] with each level listing the next `copies` times.
fn nest_multi_copies(dir: &Path, name: &str, depth: usize, copies: usize) {
    let top_path = dir.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&top_path).unwrap()).unwrap();
    let mut inner = top["manifests"][1].clone();
    inner.as_object_mut().unwrap().remove("annotations");
    for _ in 0..depth {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_INDEX,
            "manifests": vec![inner; copies],
        }))
        .unwrap();
        let digest = put_blob(dir, &index);
        inner = serde_json::json!({"mediaType": manifest::OCI_INDEX,
                                   "digest": digest.to_string(), "size": index.len()});
    }
    inner["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": name});
    top["manifests"].as_array_mut().unwrap().push(inner);
    std::fs::write(&top_path, serde_json::to_vec(&top).unwrap()).unwrap();
}

/// An index whose entry is an index (containerd follows them): the platforms of the nested
/// one are offered; too deep a chain is refused, saying so (never "the index offers: none").
#[test]
fn oci_layout_nested_index_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (_, amd, arm) = layout(dir.path());
    nest_multi(dir.path(), "127.0.0.1:5000/t/nested:1", 1);
    nest_multi(
        dir.path(),
        "127.0.0.1:5000/t/deep:1",
        1 + MAX_NESTED_INDEXES,
    );
    let source = open(&format!(
        "oci:{}:127.0.0.1:5000/t/nested:1",
        dir.path().display()
    ));
    let amd64 = PlatformSelection::One(Platform::parse("linux/amd64").unwrap());
    let one = source.resolve(&amd64).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].manifest_bytes, amd.manifest);
    assert!(one[0].from_index);
    let all = source.resolve(&PlatformSelection::All).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].config_bytes, arm.config);
    let deep = open(&format!(
        "oci:{}:127.0.0.1:5000/t/deep:1",
        dir.path().display()
    ));
    let err = deep.resolve(&amd64).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "nested more than {MAX_NESTED_INDEXES} levels deep (not supported)"
        )),
        "{err}"
    );
    assert!(!err.contains("offers: none"), "{err}");
}

/// Nested indexes that each list the next many times (found by fuzzing: 60 copies over four
/// levels took gigabytes) are fetched once each.
#[test]
fn nested_indexes_listed_many_times_are_read_once() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    nest_multi_copies(dir.path(), "127.0.0.1:5000/t/fan:1", MAX_NESTED_INDEXES, 40);
    let source = open(&format!(
        "oci:{}:127.0.0.1:5000/t/fan:1",
        dir.path().display()
    ));
    let all = source.resolve(&PlatformSelection::All).unwrap();
    assert_eq!(all.len(), 2);
}

#[test]
fn oci_layout_names_and_missing_refs() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let source = open(&format!("oci:{}:nope", dir.path().display()));
    let err = source
        .resolve(&PlatformSelection::Host)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no image named \"nope\"") && err.contains("app"),
        "{err}"
    );
    let source = open(&format!("oci:{}", dir.path().display()));
    let err = source
        .resolve(&PlatformSelection::Host)
        .unwrap_err()
        .to_string();
    assert!(err.contains("several images"), "{err}");
}

/// Opens `app` after `damage` changed its first layer blob.
fn damaged(damage: impl FnOnce(&mut Vec<u8>)) -> std::result::Result<Vec<u8>, Error> {
    let dir = tempfile::tempdir().unwrap();
    let (app, _, _) = layout(dir.path());
    let path = dir
        .path()
        .join("blobs/sha256")
        .join(Digest::of(&app.blobs[0]).hex());
    let mut blob = std::fs::read(&path).unwrap();
    damage(&mut blob);
    std::fs::write(&path, blob).unwrap();
    let source = open(&format!("oci:{}:app:1", dir.path().display()));
    let img = source.resolve(&PlatformSelection::Host).unwrap().remove(0);
    read_layer(source.as_ref(), &img, 0)
}

#[test]
fn layer_digest_mismatch() {
    // The gzip mtime field: the data still decompresses, only the digest differs.
    let err = damaged(|b| b[4] ^= 0xff).unwrap_err().to_string();
    assert!(
        err.starts_with("image oci:") && err.contains(":app:1 layer sha256:"),
        "{err}"
    );
    assert!(err.contains(": digest mismatch (expected sha256:"), "{err}");
}

#[test]
fn layer_truncated() {
    let err = damaged(|b| b.truncate(b.len() - 20))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer sha256:") && err.contains("truncated blob: got"),
        "{err}"
    );
}

#[test]
fn layer_corrupt_gzip() {
    // Same size and a wrong digest, but the deflate data breaks first.
    let err = damaged(|b| {
        let mid = b.len() / 2;
        b[mid..mid + 8].copy_from_slice(&[0xff; 8]);
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("layer sha256:"), "{err}");
    assert_eq!(err.matches("layer sha256:").count(), 1, "{err}");
    assert!(err.contains(": corrupt compressed data: "), "{err}");
}

#[test]
fn diff_id_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _, _) = layout(dir.path());
    let source = open(&format!("oci:{}:app:1", dir.path().display()));
    let mut img = source.resolve(&PlatformSelection::Host).unwrap().remove(0);
    img.config.diff_ids[1] = Digest::of(b"something else");
    let err = read_layer(source.as_ref(), &img, 1)
        .unwrap_err()
        .to_string();
    let layer = Digest::of(&app.blobs[1]);
    assert!(
        err.starts_with(&format!(
            "image {} layer {layer}: uncompressed digest does not match",
            img.reference
        )),
        "{err}"
    );
}

#[test]
fn compressed_blob_whose_digest_is_its_diff_id_is_refused() {
    // A blob whose digest equals its diff_id is verified once, as a plain tar; a compressed
    // one cannot be that, and must not slip through unverified.
    let dir = tempfile::tempdir().unwrap();
    let (app, _, _) = layout(dir.path());
    let source = open(&format!("oci:{}:app:1", dir.path().display()));
    let mut img = source.resolve(&PlatformSelection::Host).unwrap().remove(0);
    let layer = Digest::of(&app.blobs[0]);
    img.config.diff_ids[0] = layer.clone();
    let err = read_layer(source.as_ref(), &img, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "image {} layer {layer}: the blob is Gzip-compressed",
            img.reference
        )),
        "{err}"
    );
}

#[test]
fn config_and_layer_count_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _, _) = layout(dir.path());
    // Swap the config blob's bytes: its digest no longer matches the manifest.
    let path = dir
        .path()
        .join("blobs/sha256")
        .join(Digest::of(&app.config).hex());
    let mut config = app.config.clone();
    config[0] = b' ';
    std::fs::write(&path, &config).unwrap();
    let source = open(&format!("oci:{}:app:1", dir.path().display()));
    let err = source
        .resolve(&PlatformSelection::Host)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config sha256:") && err.contains("digest mismatch"),
        "{err}"
    );
}

/// A docker archive as skopeo writes it: `<hex>.tar` layers, `<hex>.json` config, legacy
/// `<id>/layer.tar` symlinks; plus one gzip layer under a name that is no digest.
fn archive(path: &Path) -> (Vec<Vec<u8>>, Vec<u8>) {
    let tars = vec![
        layer_tar(&[("a.txt", b"A\n")]),
        layer_tar(&[("b.txt", b"B\n")]),
    ];
    let gz = gzip(&tars[1]);
    let config = config_json(&[Digest::of(&tars[0]), Digest::of(&tars[1])], "amd64");
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let layer0 = format!("{}.tar", Digest::of(&tars[0]).hex());
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": ["docker.io/testbed/small:latest"],
        "Layers": ["abc/layer.tar", "legacy/layer.tar.gz"],
    }]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o444);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add(&layer0, &tars[0]);
    add("legacy/layer.tar.gz", &gz);
    add(&config_name, &config);
    add("manifest.json", &manifest);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "abc/layer.tar", format!("../{layer0}"))
        .unwrap();
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
    (tars, gz)
}

#[test]
fn docker_archive_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.tar");
    let (tars, gz) = archive(&path);
    let source = open(&format!("docker-archive:{}", path.display()));
    let img = source.resolve(&PlatformSelection::Host).unwrap().remove(0);
    assert_eq!(
        img.name.to_string(),
        "registry.hub.docker.com/testbed/small:latest"
    );
    assert_eq!(img.manifest_media_type, manifest::DOCKER_MANIFEST);
    assert_eq!(img.layers[0].digest, Digest::of(&tars[0]));
    assert_eq!(
        img.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar"
    );
    assert_eq!(
        img.layers[1].digest,
        Digest::of(&gz),
        "hashed because its name is no digest"
    );
    assert_eq!(
        img.layers[1].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    for (i, tar) in tars.iter().enumerate() {
        assert_eq!(&read_layer(source.as_ref(), &img, i).unwrap(), tar);
    }
    let tagged = open(&format!(
        "docker-archive:{}:docker.io/testbed/small:latest",
        path.display()
    ));
    assert_eq!(tagged.resolve(&PlatformSelection::Host).unwrap().len(), 1);
    let wrong = Sources::new(RegistryOptions::default())
        .open(&ImageRef::parse(&format!("docker-archive:{}:other", path.display())).unwrap());
    let err = wrong.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("no such image in the archive (tags: docker.io/testbed/small:latest)"),
        "{err}"
    );
}

#[test]
fn docker_archive_detects_changed_layer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.tar");
    let (tars, _) = archive(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    // Change a byte of the first layer's file content ("A\n" → "Z\n") in place.
    let at = bytes.windows(2).position(|w| w == b"A\n").unwrap();
    bytes[at] = b'Z';
    std::fs::write(&path, bytes).unwrap();
    let source = open(&format!("docker-archive:{}", path.display()));
    let img = source.resolve(&PlatformSelection::Host).unwrap().remove(0);
    let err = read_layer(source.as_ref(), &img, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("layer {}: digest mismatch", Digest::of(&tars[0]))),
        "{err}"
    );
}

/// A scripted HTTP/1.1 server on loopback: one thread per connection, `Connection: close`.
mod http {
    use openssl::ssl::{SslAcceptor, SslMethod};
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    pub struct Req {
        pub path: String,
        pub headers: HashMap<String, String>,
        /// How many times this path was requested before.
        pub seen: usize,
    }

    pub struct Reply {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
        /// Announce the full length but close after this many body bytes.
        pub cut_at: Option<usize>,
        /// Keep the connection open this long after the body, sending nothing: a stall.
        pub hold: Duration,
        /// Send the body a byte at a time, this long apart.
        pub trickle: Option<Duration>,
    }

    impl Reply {
        pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
            Reply {
                status,
                headers: Vec::new(),
                body: body.into(),
                cut_at: None,
                hold: Duration::ZERO,
                trickle: None,
            }
        }

        pub fn header(mut self, k: &str, v: &str) -> Reply {
            self.headers.push((k.to_owned(), v.to_owned()));
            self
        }
    }

    pub type Log = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;

    /// Starts the server; returns `127.0.0.1:PORT` and the request log.
    pub fn serve(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> (String, Log) {
        serve_with(None, handler)
    }

    /// The same over HTTPS, with a self-signed certificate for 127.0.0.1 that nothing trusts.
    pub fn serve_untrusted_tls(
        handler: impl Fn(&Req) -> Reply + Send + Sync + 'static,
    ) -> (String, Log) {
        serve_with(Some(Arc::new(self_signed_acceptor())), handler)
    }

    fn self_signed_acceptor() -> SslAcceptor {
        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::nid::Nid;
        use openssl::pkey::PKey;
        use openssl::x509::extension::SubjectAlternativeName;
        use openssl::x509::{X509Builder, X509NameBuilder};
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "127.0.0.1").unwrap();
        let name = name.build();
        let mut cert = X509Builder::new().unwrap();
        cert.set_version(2).unwrap();
        let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
        cert.set_serial_number(&serial).unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .build(&cert.x509v3_context(None, None))
            .unwrap();
        cert.append_extension(san).unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_private_key(&key).unwrap();
        acceptor.set_certificate(&cert.build()).unwrap();
        acceptor.build()
    }

    type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;
    type Counts = Arc<Mutex<HashMap<String, usize>>>;

    fn serve_with(
        tls: Option<Arc<SslAcceptor>>,
        handler: impl Fn(&Req) -> Reply + Send + Sync + 'static,
    ) -> (String, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handler: Handler = Arc::new(handler);
        let log: Log = Arc::default();
        let counts: Counts = Arc::default();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (handler, log, counts) = (handler.clone(), log2.clone(), counts.clone());
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => answer(stream, &handler, &log, &counts),
                    // A client that refuses the certificate ends the handshake: nothing to do.
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream) {
                            answer(stream, &handler, &log, &counts)
                        }
                    }
                });
            }
        });
        (addr, log)
    }

    /// Reads one request from `stream` and writes the handler's reply.
    fn answer(stream: impl Read + Write, handler: &Handler, log: &Log, counts: &Counts) {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // A TLS hello is no request line: answer with plain text, as an HTTP server would.
        if reader.read_line(&mut line).is_err() || !line.starts_with("GET ") {
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.trim_end().split_once(':') {
                headers.insert(k.to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let seen = {
            let mut c = counts.lock().unwrap();
            let n = c.entry(path.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        log.lock().unwrap().push((path.clone(), headers.clone()));
        let reply = handler(&Req {
            path,
            headers,
            seen,
        });
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let body = &reply.body[..reply.cut_at.unwrap_or(reply.body.len())];
        let stream = reader.get_mut();
        let _ = stream.write_all(head.as_bytes());
        match reply.trickle {
            None => {
                let _ = stream.write_all(body);
            }
            Some(every) => {
                for byte in body.chunks(1) {
                    if stream
                        .write_all(byte)
                        .and_then(|()| stream.flush())
                        .is_err()
                    {
                        return;
                    }
                    std::thread::sleep(every);
                }
            }
        }
        let _ = stream.flush();
        std::thread::sleep(reply.hold);
    }
}

use http::{serve, serve_untrusted_tls, Reply, Req};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn client_for(addr: &str, tune: impl FnOnce(&mut RegistryOptions)) -> Sources {
    let mut o = RegistryOptions {
        insecure: vec![addr.to_owned()],
        backoff: Duration::from_millis(5),
        max_retries: 3,
        ..RegistryOptions::default()
    };
    tune(&mut o);
    Sources::new(o)
}

/// Serves `app` from the layout helper's first image as `r/x:1`.
fn registry_routes(img: &Built) -> impl Fn(&Req) -> Option<Reply> {
    let manifest = img.manifest.clone();
    let config = img.config.clone();
    let blobs: Vec<(String, Vec<u8>)> = img
        .blobs
        .iter()
        .map(|b| (format!("/v2/r/x/blobs/{}", Digest::of(b)), b.clone()))
        .collect();
    let config_path = format!("/v2/r/x/blobs/{}", Digest::of(&config));
    move |req: &Req| {
        if req.path == "/v2/r/x/manifests/1" {
            return Some(
                Reply::new(200, manifest.clone()).header("Content-Type", manifest::OCI_MANIFEST),
            );
        }
        if req.path == config_path {
            return Some(Reply::new(200, config.clone()));
        }
        blobs
            .iter()
            .find(|(p, _)| *p == req.path)
            .map(|(_, b)| Reply::new(200, b.clone()))
    }
}

#[test]
fn registry_pull_with_retries_and_resume() {
    let img = image("amd64", "r");
    let routes = registry_routes(&img);
    let blob0 = format!("/v2/r/x/blobs/{}", Digest::of(&img.blobs[0]));
    let cut_path = blob0.clone();
    let (addr, log) = serve(move |req| {
        // The manifest fails twice with 503, the first layer's body is cut once.
        if req.path == "/v2/r/x/manifests/1" && req.seen < 2 {
            return Reply::new(503, "busy");
        }
        let mut reply = routes(req).unwrap_or_else(|| Reply::new(404, ""));
        if req.path == cut_path {
            if req.seen == 0 {
                reply.cut_at = Some(reply.body.len() / 2);
            } else if let Some(from) = req.headers.get("range") {
                let start: usize = from
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                reply = Reply::new(206, reply.body[start..].to_vec());
            }
        }
        reply
    });
    let sources = client_for(&addr, |_| {});
    let source = sources
        .open(&ImageRef::parse(&format!("docker://{addr}/r/x:1")).unwrap())
        .unwrap();
    let resolved = source.resolve(&PlatformSelection::Host).unwrap().remove(0);
    assert_eq!(resolved.name.to_string(), format!("{addr}/r/x:1"));
    for i in 0..2 {
        assert_eq!(
            read_layer(source.as_ref(), &resolved, i).unwrap(),
            img.tars[i]
        );
    }
    let log = log.lock().unwrap();
    let ranges: Vec<&String> = log
        .iter()
        .filter(|(p, _)| *p == blob0)
        .filter_map(|(_, h)| h.get("range"))
        .collect();
    assert_eq!(ranges.len(), 1, "one resumed request");
    assert!(log
        .iter()
        .all(|(_, h)| h.get("accept").is_none_or(|a| !a.is_empty())));
}

/// The start offset of a `Range: bytes=N-` request (0 without one).
fn range_start(req: &Req) -> usize {
    req.headers
        .get("range")
        .and_then(|r| {
            r.trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Notices collected from the client, and a client that records them.
fn noticing_client(addr: &str, read_timeout: Duration) -> (Sources, Arc<Mutex<Vec<Retry>>>) {
    let notices: Arc<Mutex<Vec<Retry>>> = Arc::default();
    let seen = notices.clone();
    let sources = client_for(addr, |o| {
        o.read_timeout = read_timeout;
        o.on_retry = Some(RetryNotices::new(move |n| {
            seen.lock().unwrap().push(n.clone())
        }));
    });
    (sources, notices)
}

/// Serves `img` as `r/x:1`, its first blob from the requested `Range` start; where
/// `cut(req, start)` says, that blob's body stops after so many bytes and the connection stays
/// open, sending nothing (a stall). Returns the address, the request log and the blob's path.
fn stalling_registry(
    img: &Built,
    cut: impl Fn(&Req, usize) -> Option<usize> + Send + Sync + 'static,
) -> (String, http::Log, String) {
    let routes = registry_routes(img);
    let blob0 = format!("/v2/r/x/blobs/{}", Digest::of(&img.blobs[0]));
    let stalled = blob0.clone();
    let (addr, log) = serve(move |req| {
        let mut reply = routes(req).unwrap_or_else(|| Reply::new(404, ""));
        if req.path == stalled {
            let from = range_start(req);
            let status = if from > 0 { 206 } else { 200 };
            reply = Reply::new(status, reply.body[from..].to_vec());
            reply.cut_at = cut(req, from);
            if reply.cut_at.is_some() {
                reply.hold = Duration::from_secs(3);
            }
        }
        reply
    });
    (addr, log, blob0)
}

/// `r/x:1` of the registry at `addr`, resolved for this host.
fn open_x1(sources: &Sources, addr: &str) -> (Box<dyn ImageSource>, ResolvedImage) {
    let source = sources
        .open(&ImageRef::parse(&format!("docker://{addr}/r/x:1")).unwrap())
        .unwrap();
    let resolved = source.resolve(&PlatformSelection::Host).unwrap().remove(0);
    (source, resolved)
}

#[test]
fn a_stalled_blob_is_resumed_and_every_retry_announced() {
    let img = image("amd64", "r");
    // Send a few bytes more each time, four times: each stall made progress, so with three
    // retries none of them is the last.
    let (addr, log, blob0) = stalling_registry(&img, |req, _| (req.seen < 4).then_some(3));
    let (sources, notices) = noticing_client(&addr, Duration::from_millis(300));
    let (source, resolved) = open_x1(&sources, &addr);
    assert_eq!(
        read_layer(source.as_ref(), &resolved, 0).unwrap(),
        img.tars[0]
    );
    let requests = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| *p == blob0)
        .count();
    assert_eq!(requests, 5, "the first request and four resumes");
    let notices = notices.lock().unwrap();
    assert_eq!(notices.len(), 4, "{notices:?}");
    for (i, n) in notices.iter().enumerate() {
        let at = 3 * (i + 1);
        let expected = format!("http://{addr}{blob0}: stalled: no data for 0.3 s at byte {at}");
        assert!(
            n.message
                .starts_with(&format!("{expected}; retry 1 of 3 in ")),
            "{n:?}"
        );
        assert_eq!(n.image.as_deref(), Some(&*format!("{addr}/r/x")));
        let layer = format!("blobs/{}", Digest::of(&img.blobs[0]));
        assert_eq!(n.object.as_deref(), Some(&*layer));
        assert_eq!((n.attempt, n.retries), (1, 3));
    }
}

/// Serves `img` as `r/x:1`, its first blob from the requested `Range` start, each reply of
/// it changed by `tweak`. Returns the address, the request log and the blob's path.
fn tweaked_blob_registry(
    img: &Built,
    tweak: impl Fn(&mut Reply) + Send + Sync + 'static,
) -> (String, http::Log, String) {
    let routes = registry_routes(img);
    let blob0 = format!("/v2/r/x/blobs/{}", Digest::of(&img.blobs[0]));
    let path = blob0.clone();
    let (addr, log) = serve(move |req| {
        let mut reply = routes(req).unwrap_or_else(|| Reply::new(404, ""));
        if req.path == path {
            let from = range_start(req);
            let status = if from > 0 { 206 } else { 200 };
            reply = Reply::new(status, reply.body[from..].to_vec());
            tweak(&mut reply);
        }
        reply
    });
    (addr, log, blob0)
}

/// How many requests in `log` asked for `path`.
fn requests_for(log: &http::Log, path: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == path)
        .count()
}

/// A registry that drops the connection after every byte makes progress each time, but is
/// resumed at most 16 times (plus two per MiB received), not once per byte (found by fuzzing).
#[test]
fn a_blob_dropped_after_every_byte_is_given_up_on() {
    let img = image("amd64", "r");
    assert!(
        img.blobs[0].len() > 40,
        "a blob longer than the resumes allowed"
    );
    let (addr, log, blob0) = tweaked_blob_registry(&img, |reply| reply.cut_at = Some(1));
    let sources = client_for(&addr, |o| o.backoff = Duration::from_millis(1));
    let (source, resolved) = open_x1(&sources, &addr);
    let err = read_layer(source.as_ref(), &resolved, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("connection dropped at byte 17: ")
            && err.contains("(resumed 16 times for 17 bytes: the registry keeps failing)"),
        "{err}"
    );
    assert_eq!(
        requests_for(&log, &blob0),
        17,
        "the first request and 16 resumes"
    );
}

/// A registry sending a blob a byte at a time, never stalling long enough for the read
/// timeout, is cut when a window passes with too few bytes, and given up on after the
/// retries: such an attempt counts as one without progress (found by fuzzing).
#[test]
fn a_blob_trickling_in_is_given_up_on_after_the_retries() {
    let img = image("amd64", "r");
    let (addr, log, blob0) = tweaked_blob_registry(&img, |reply| {
        reply.trickle = Some(Duration::from_millis(20));
    });
    let sources = client_for(&addr, |o| {
        o.backoff = Duration::from_millis(1);
        o.max_retries = 2;
        o.slow_blob_window = Duration::from_millis(200);
        o.slow_blob_bytes = 1 << 20;
    });
    let (source, resolved) = open_x1(&sources, &addr);
    let err = read_layer(source.as_ref(), &resolved, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("too slow: ") && err.contains("(after 2 retries without progress)"),
        "{err}"
    );
    assert_eq!(
        requests_for(&log, &blob0),
        3,
        "the first request and 2 resumes"
    );
}

#[test]
fn a_registry_that_sends_nothing_fails_after_the_retries_naming_the_layer() {
    let img = image("amd64", "r");
    let (addr, _, _) = stalling_registry(&img, |_, from| Some(if from == 0 { 5 } else { 0 }));
    let (sources, notices) = noticing_client(&addr, Duration::from_millis(200));
    let (source, resolved) = open_x1(&sources, &addr);
    let start = Instant::now();
    let err = read_layer(source.as_ref(), &resolved, 0)
        .unwrap_err()
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.contains(&Digest::of(&img.blobs[0]).to_string()),
        "{err}"
    );
    assert!(
        err.contains("stalled: no data for 0.2 s at byte 5 (after 3 retries without progress)"),
        "{err}"
    );
    let notices = notices.lock().unwrap();
    let retries: Vec<&str> = notices
        .iter()
        .map(|n| n.message.split("; ").nth(1).unwrap())
        .collect();
    assert_eq!(retries.len(), 3, "{notices:?}");
    assert!(retries[0].starts_with("retry 1 of 3") && retries[2].starts_with("retry 3 of 3"));
}

#[test]
fn failing_requests_are_announced_before_each_retry() {
    let img = image("amd64", "r");
    let routes = registry_routes(&img);
    let (addr, _) = serve(move |req| {
        if req.path == "/v2/r/x/manifests/1" && req.seen < 2 {
            return Reply::new(503, "busy");
        }
        routes(req).unwrap_or_else(|| Reply::new(404, ""))
    });
    let (sources, notices) = noticing_client(&addr, Duration::from_secs(30));
    open_x1(&sources, &addr);
    let notices = notices.lock().unwrap();
    assert_eq!(
        notices
            .iter()
            .map(|n| n.message.rsplit_once(" in ").unwrap().0)
            .collect::<Vec<_>>(),
        [
            format!("http://{addr}/v2/r/x/manifests/1: 503 Service Unavailable; retry 1 of 3"),
            format!("http://{addr}/v2/r/x/manifests/1: 503 Service Unavailable; retry 2 of 3"),
        ]
    );
}

#[test]
fn a_failing_redirect_target_is_named_without_its_query() {
    // A port nothing listens on: bound, then closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (addr, _) = serve(move |_| {
        Reply::new(302, "").header(
            "Location",
            &format!("http://{dead}/blob?X-Amz-Signature=secret"),
        )
    });
    let sources = client_for(&addr, |o| o.max_retries = 0);
    let err = sources
        .open(&ImageRef::parse(&format!("docker://{addr}/r/x:1")).unwrap())
        .and_then(|s| {
            s.resolve_manifests(&PlatformSelection::Host)
                .map(|m| m.len())
        })
        .expect_err("the redirect target refuses")
        .to_string();
    assert!(
        err.contains(&format!("(redirected to http://{dead}/blob)")),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn registry_honours_retry_after() {
    let img = image("amd64", "r");
    let routes = registry_routes(&img);
    let (addr, _) = serve(move |req| {
        if req.path == "/v2/r/x/manifests/1" && req.seen == 0 {
            return Reply::new(429, "").header("Retry-After", "0");
        }
        routes(req).unwrap_or_else(|| Reply::new(404, ""))
    });
    // A backoff far longer than the test: only Retry-After: 0 lets it finish quickly.
    let sources = client_for(&addr, |o| o.backoff = Duration::from_secs(60));
    let source = sources
        .open(&ImageRef::parse(&format!("docker://{addr}/r/x:1")).unwrap())
        .unwrap();
    let start = Instant::now();
    assert_eq!(
        source
            .resolve_manifests(&PlatformSelection::Host)
            .unwrap()
            .len(),
        1
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn registry_errors_name_image_and_layer() {
    let img = image("amd64", "r");
    let routes = registry_routes(&img);
    let blob1 = format!("/v2/r/x/blobs/{}", Digest::of(&img.blobs[1]));
    let (addr, _) = serve(move |req| {
        if req.path == "/v2/r/x/manifests/gone" {
            let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
            return Reply::new(404, body);
        }
        if req.path == "/v2/r/x/manifests/broken" {
            return Reply::new(500, "");
        }
        let mut reply = routes(req).unwrap_or_else(|| Reply::new(404, ""));
        if req.path == blob1 {
            // Same size, other bytes (after the tar header, so decoding starts fine).
            let n = reply.body.len();
            reply.body[n - 100..].iter_mut().for_each(|b| *b = b'x');
        }
        reply
    });
    let sources = client_for(&addr, |_| {});
    let open = |r: &str| {
        sources
            .open(&ImageRef::parse(&format!("docker://{addr}/r/x:{r}")).unwrap())
            .unwrap()
    };
    let err = open("gone")
        .resolve(&PlatformSelection::Host)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("image docker://{addr}/r/x:gone: http://{addr}/v2/r/x/manifests/gone: 404 Not Found (MANIFEST_UNKNOWN: manifest unknown)")
    );
    let err = open("broken")
        .resolve(&PlatformSelection::Host)
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("500 Internal Server Error after 3 retries"),
        "{err}"
    );
    let source = open("1");
    let resolved = source.resolve(&PlatformSelection::Host).unwrap().remove(0);
    let err = read_layer(source.as_ref(), &resolved, 1)
        .unwrap_err()
        .to_string();
    let layer = Digest::of(&img.blobs[1]);
    assert!(
        err.starts_with(&format!(
            "image docker://{addr}/r/x:1 layer {layer}: digest mismatch"
        )),
        "{err}"
    );
    // Default options (500 ms backoff): finishing fast shows the TLS failure is not retried.
    let https = Sources::new(RegistryOptions::default());
    let start = Instant::now();
    let source = https
        .open(&ImageRef::parse(&format!("docker://{addr}/r/x:1")).unwrap())
        .unwrap();
    let err = source
        .resolve(&PlatformSelection::Host)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("--insecure-registry {addr}")),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "retried: {err}"
    );
}

#[test]
fn registry_bearer_token_flow_and_tag_pages() {
    let (addr, log) = serve(|req| {
        let authorized =
            req.headers.get("authorization").map(String::as_str) == Some("Bearer tok-123");
        if req.path.starts_with("/token?") {
            // Credentials are required for the token: alice:s3cret.
            return match req.headers.get("authorization").map(String::as_str) {
                Some("Basic YWxpY2U6czNjcmV0") => Reply::new(200, r#"{"token":"tok-123"}"#),
                _ => Reply::new(401, ""),
            };
        }
        if !authorized {
            return Reply::new(401, "").header(
                "WWW-Authenticate",
                &format!(
                    "Bearer realm=\"http://{}/token\",service=\"test\"",
                    req.headers["host"]
                ),
            );
        }
        match req.path.as_str() {
            "/v2/r/x/tags/list?n=1000" => Reply::new(200, r#"{"name":"r/x","tags":["1","2"]}"#)
                .header("Link", "</v2/r/x/tags/list?last=2&n=1000>; rel=\"next\""),
            "/v2/r/x/tags/list?last=2&n=1000" => Reply::new(200, r#"{"name":"r/x","tags":["3"]}"#),
            _ => Reply::new(404, ""),
        }
    });
    let repo = RegistryRef::parse(&format!("{addr}/r/x")).unwrap();
    let anonymous = client_for(&addr, |_| {});
    let err = anonymous
        .registry()
        .unwrap()
        .list_tags(&repo)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("401") && err.contains("anonymous token refused"),
        "{err}"
    );
    let creds = Credentials::parse("alice:s3cret").unwrap();
    let authed = client_for(&addr, |o| {
        o.auth = AuthStore::anonymous().with_credentials(creds)
    });
    assert_eq!(
        authed.registry().unwrap().list_tags(&repo).unwrap(),
        ["1", "2", "3"]
    );
    let log = log.lock().unwrap();
    let token_req = log.iter().find(|(p, _)| p.starts_with("/token?")).unwrap();
    assert!(
        token_req.0.contains("service=test")
            && token_req.0.contains("scope=repository%3Ar%2Fx%3Apull")
    );
    // One token fetch served both pages.
    let fetches = log
        .iter()
        .filter(|(p, h)| p.starts_with("/token?") && h.contains_key("authorization"))
        .count();
    assert_eq!(fetches, 1);
}

#[test]
fn a_layer_error_reads_like_every_other_layer_error() {
    let e: crate::error::Error = Error::layer("docker://r/x:1", "sha256:ab", "gone").into();
    assert_eq!(e.to_string(), "image docker://r/x:1 layer sha256:ab: gone");
}

fn resolve_err(reference: &str) -> String {
    match Sources::new(RegistryOptions::default()).open(&ImageRef::parse(reference).unwrap()) {
        Ok(source) => source
            .resolve(&PlatformSelection::Host)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn oci_layout_documents_are_read_no_further_than_declared() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _, _) = layout(dir.path());
    let reference = format!("oci:{}:app:1", dir.path().display());
    // A config declared as its real size but 64 MiB on disk (sparse: nothing written; small
    // enough that a reader without the bound only wastes memory, not the machine).
    let config = Digest::of(&app.config);
    let config_path = dir.path().join("blobs/sha256").join(config.hex());
    let file = std::fs::File::options()
        .write(true)
        .open(&config_path)
        .unwrap();
    file.set_len(64 << 20).unwrap();
    assert_eq!(
        resolve_err(&reference),
        format!(
            "image {reference}: config {config} is {} bytes, declared {}",
            64u64 << 20,
            app.config.len()
        )
    );
    // A FIFO as the manifest blob would block a reader; /dev/zero as index.json never ends.
    let manifest_path = dir
        .path()
        .join("blobs/sha256")
        .join(Digest::of(&app.manifest).hex());
    std::fs::remove_file(&manifest_path).unwrap();
    let c = std::ffi::CString::new(manifest_path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let err = resolve_err(&reference);
    assert!(
        err.contains(&format!("manifest {}", Digest::of(&app.manifest)))
            && err.contains("not a regular file"),
        "{err}"
    );
    let index = dir.path().join("index.json");
    std::fs::remove_file(&index).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &index).unwrap();
    let err = resolve_err(&reference);
    assert!(
        err.contains("index.json") && err.contains("not a regular file"),
        "{err}"
    );
}

#[test]
fn a_negative_size_in_index_json_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _, _) = layout(dir.path());
    let digest = Digest::of(&app.manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": manifest::OCI_MANIFEST, "digest": digest.to_string(),
                       "size": -1, "annotations": {"org.opencontainers.image.ref.name": "app:1"}}],
    });
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let reference = format!("oci:{}:app:1", dir.path().display());
    assert_eq!(
        resolve_err(&reference),
        format!("image {reference}: index.json manifest {digest} has negative size")
    );
}

/// A docker archive whose manifest.json names `layer` as its only layer, with the regular
/// member `real/layer.tar` and symlink members `links` (name, target).
fn archive_naming(path: &Path, layer: &str, links: &[(&str, &str)]) {
    let tar = layer_tar(&[("f", b"x")]);
    let config = config_json(&[Digest::of(&tar)], "amd64");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json", "RepoTags": ["t/x:1"], "Layers": [layer],
    }]))
    .unwrap();
    archive_of(
        path,
        &[
            ("real/layer.tar", &tar),
            ("config.json", &config),
            ("manifest.json", &manifest),
        ],
        links,
    );
}

#[test]
fn docker_archive_symlink_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar");
    let reference = format!("docker-archive:{}", path.display());
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("b/layer.tar", "../c/layer.tar"),
                ("c/layer.tar", "../b/layer.tar"),
            ],
            "is a symlink loop (b/layer.tar -> c/layer.tar -> b/layer.tar)",
        ),
        (
            &[("b/layer.tar", "/etc/passwd")],
            "is a symlink leading out of the archive (b/layer.tar -> /etc/passwd)",
        ),
        (
            &[("b/layer.tar", "../../etc/passwd")],
            "is a symlink leading out of the archive (b/layer.tar -> ../../etc/passwd)",
        ),
        (
            &[("b/layer.tar", "../gone.tar")],
            "is a symlink to a member the archive lacks (b/layer.tar -> gone.tar)",
        ),
    ];
    for (links, reason) in cases {
        archive_naming(&path, "b/layer.tar", links);
        assert_eq!(
            resolve_err(&reference),
            format!("image {reference}: member \"b/layer.tar\" {reason}")
        );
    }
    archive_naming(
        &path,
        "b/layer.tar",
        &[("b/layer.tar", "../real/layer.tar")],
    );
    assert_eq!(
        resolve_err(&reference),
        "",
        "a link inside the archive works"
    );
    archive_naming(&path, "nothere.tar", &[]);
    assert_eq!(
        resolve_err(&reference),
        format!("image {reference}: archive has no member \"nothere.tar\"")
    );
}

#[test]
fn docker_archive_documents_are_capped() {
    // A manifest.json member that says it holds 17 MiB (of zeros: the file is sparse).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.tar");
    let size: u64 = 17 << 20;
    let mut h = tar::Header::new_gnu();
    h.set_path("manifest.json").unwrap();
    h.set_size(size);
    h.set_mode(0o444);
    h.set_cksum();
    std::fs::write(&path, h.as_bytes()).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_len(512 + size + 1024).unwrap();
    let reference = format!("docker-archive:{}", path.display());
    assert_eq!(
        resolve_err(&reference),
        format!(
            "image {reference}: member \"manifest.json\" is {size} bytes, more than the \
             16777216-byte limit for documents"
        )
    );
}

/// A file that is no tar (say `/etc/passwd`), or a tar with something else after its members,
/// is named as such on one line that quotes none of its bytes (the tar crate's own message
/// repeats the block it could not read as a header).
#[test]
fn docker_archive_that_is_no_tar_is_named_so_without_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    let secret = "root:x:0:0:root:/root:/bin/bash\n";
    std::fs::write(&path, secret.repeat(40)).unwrap();
    let reference = format!("docker-archive:{}", path.display());
    assert_eq!(
        resolve_err(&reference),
        format!("image {reference}: not a docker-archive tar (no tar header at its start)")
    );

    // `docker save | gzip`: read in place, so not taken, but the line says what to do.
    let path = dir.path().join("saved.tar.gz");
    let plain = dir.path().join("saved.tar");
    archive(&plain);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &std::fs::read(&plain).unwrap()).unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let reference = format!("docker-archive:{}", path.display());
    assert_eq!(
        resolve_err(&reference),
        format!(
            "image {reference}: not a docker-archive tar (no tar header at its start: it is \
             gzip-compressed; decompress it first (gunzip))"
        )
    );

    let path = dir.path().join("trailing.tar");
    archive(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    // The first block of the end-of-archive zeros, where a reader looks for the next header.
    let end = bytes.len() - 1024;
    bytes.truncate(end);
    bytes.extend(secret.repeat(40).as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let reference = format!("docker-archive:{}", path.display());
    let err = resolve_err(&reference);
    assert!(
        err.starts_with(&format!(
            "image {reference}: not a docker-archive tar (no valid tar header after member "
        )),
        "{err}"
    );
    assert!(!err.contains("root:x"), "{err}");
}

/// `alice:s3cret-pw` for every registry, the registry itself insecure (plain HTTP here).
fn client_with_creds(addr: &str, insecure: &[&str]) -> Sources {
    let creds = Credentials::parse("alice:s3cret-pw").unwrap();
    client_for(addr, |o| {
        o.auth = AuthStore::anonymous().with_credentials(creds);
        o.insecure.extend(insecure.iter().map(|h| h.to_string()));
        o.max_retries = 0;
    })
}

/// Why resolving `r/x:1` at `addr` failed.
fn resolve_error(sources: &Sources, addr: &str) -> String {
    sources
        .open(&ImageRef::parse(&format!("docker://{addr}/r/x:1")).unwrap())
        .and_then(|s| s.resolve_manifests(&PlatformSelection::Host))
        .map(|m| m.len())
        .expect_err("the registry refuses")
        .to_string()
}

#[test]
fn registry_errors_never_show_the_credentials_sent() {
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw")
    };
    // Every refusal quotes the request's Authorization header, as a misbehaving proxy would.
    let echo = |req: &Req, pad: usize| {
        let auth = req
            .headers
            .get("authorization")
            .cloned()
            .unwrap_or_default();
        let message = format!(
            "{} you sent {auth} decoded=alice:s3cret-pw",
            "x".repeat(pad)
        );
        let body = serde_json::json!({"errors": [{"code": "DENIED", "message": message}]});
        Reply::new(403, body.to_string())
    };
    let basic = |pad: usize| {
        serve(move |req| match req.headers.get("authorization") {
            Some(_) => echo(req, pad),
            None => Reply::new(401, "").header("WWW-Authenticate", "Basic realm=\"r\""),
        })
    };
    let bearer = |token_status: u16| {
        serve(move |req| {
            let auth = req.headers.get("authorization").map(String::as_str);
            if req.path.starts_with("/token?") {
                return match token_status {
                    200 => Reply::new(200, r#"{"token":"tok-SECRET-1"}"#),
                    _ => Reply::new(token_status, echo(req, 0).body),
                };
            }
            match auth {
                Some("Bearer tok-SECRET-1") => echo(req, 0),
                _ => Reply::new(401, "").header(
                    "WWW-Authenticate",
                    &format!("Bearer realm=\"http://{}/token\"", req.headers["host"]),
                ),
            }
        })
    };
    let cases = [
        ("basic", basic(0)),
        // The base64 pair straddles the 200-character cut of error details ("DENIED: ",
        // the padding, " you sent Basic "): a cut before scrubbing would leave its start.
        ("basic, cut", basic(171)),
        ("bearer", bearer(200)),
        ("token service", bearer(401)),
    ];
    for (case, (addr, _)) in cases {
        let err = resolve_error(&client_with_creds(&addr, &[]), &addr);
        assert!(
            err.contains("you sent") && err.contains("[reda"),
            "{case}: {err}"
        );
        for secret in ["s3cret-pw", &b64, &b64[..5], "tok-SECRET-1", "SECRET"] {
            assert!(!err.contains(secret), "{case}: {secret} in {err}");
        }
    }
}

/// A registry serving `img` as `r/x:1` to requests bearing `Bearer tok`, challenging the others
/// to fetch that token at `realm` (`None`: its own `/token`, which hands it out).
fn bearer_registry(img: &Built, realm: Option<String>) -> (String, http::Log) {
    let routes = registry_routes(img);
    serve(move |req| {
        if req.path.starts_with("/token?") {
            return Reply::new(200, r#"{"token":"tok"}"#);
        }
        if req.headers.get("authorization").map(String::as_str) != Some("Bearer tok") {
            let own = format!("http://{}/token", req.headers["host"]);
            let realm = realm.clone().unwrap_or(own);
            return Reply::new(401, "")
                .header("WWW-Authenticate", &format!("Bearer realm=\"{realm}\""));
        }
        routes(req).unwrap_or_else(|| Reply::new(404, ""))
    })
}

#[test]
fn credentials_go_to_a_plain_http_token_realm_only_of_an_insecure_host() {
    let img = image("amd64", "t");
    let (realm, realm_log) = serve(|req| match req.path.starts_with("/token?") {
        true => Reply::new(200, r#"{"token":"tok"}"#),
        false => Reply::new(404, ""),
    });
    let (addr, _) = bearer_registry(&img, Some(format!("http://{realm}/token")));
    // The registry is insecure, the realm's host is not: no credentials go there.
    let err = resolve_error(&client_with_creds(&addr, &[]), &addr);
    assert!(
        err.contains(&format!(
            "http://{realm}/token: the registry's token realm is plain HTTP"
        )) && err.contains(&format!("--insecure-registry {realm}")),
        "{err}"
    );
    assert!(realm_log.lock().unwrap().is_empty(), "the realm was asked");
    // Anonymous token requests carry nothing to protect.
    open_x1(&client_for(&addr, |_| {}), &addr);
    // Named insecure, the realm gets the credentials.
    open_x1(&client_with_creds(&addr, &[&realm]), &addr);
    let log = realm_log.lock().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(!log[0].1.contains_key("authorization"));
    assert!(log[1].1["authorization"].starts_with("Basic "));
}

#[test]
fn a_next_page_on_another_host_is_not_followed() {
    let (elsewhere, elsewhere_log) = serve(|_| Reply::new(200, r#"{"tags":["evil"]}"#));
    for link in [
        format!("http://{elsewhere}/v2/r/x/tags/list?last=2"),
        format!("//{elsewhere}/v2/r/x/tags/list?last=2"),
    ] {
        let (addr, _) = serve(move |req| match req.headers.get("authorization") {
            None => Reply::new(401, "").header("WWW-Authenticate", "Basic realm=\"r\""),
            Some(_) => Reply::new(200, r#"{"name":"r/x","tags":["1","2"]}"#)
                .header("Link", &format!("<{link}>; rel=\"next\"")),
        });
        let repo = RegistryRef::parse(&format!("{addr}/r/x")).unwrap();
        let err = client_with_creds(&addr, &[])
            .registry()
            .unwrap()
            .list_tags(&repo)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "the next page's link points to another host (http://{elsewhere}/v2/r/x/tags/list)"
            )),
            "{err}"
        );
    }
    assert!(elsewhere_log.lock().unwrap().is_empty());
}

#[test]
fn a_redirect_to_another_host_is_fetched_with_that_hosts_tls_settings() {
    let img = image("amd64", "u");
    let manifest = img.manifest.clone();
    let (untrusted, untrusted_log) = serve_untrusted_tls(move |_| {
        Reply::new(200, manifest.clone()).header("Content-Type", manifest::OCI_MANIFEST)
    });
    let target = format!("https://{untrusted}/m");
    // A plain-HTTP registry (insecure) behind basic auth, sending its manifest elsewhere.
    let (addr, _) = serve(move |req| match req.headers.get("authorization") {
        None => Reply::new(401, "").header("WWW-Authenticate", "Basic realm=\"r\""),
        Some(_) => Reply::new(302, "").header("Location", &target),
    });
    // Only the registry is insecure: its target's certificate is checked, and refused.
    let err = resolve_error(&client_with_creds(&addr, &[]), &addr);
    assert!(
        err.contains("invalid peer certificate")
            && err.contains(&format!("--insecure-registry {untrusted}"))
            && err.contains(&format!("(redirected to https://{untrusted}/m)")),
        "{err}"
    );
    assert!(untrusted_log.lock().unwrap().is_empty());
    // Named insecure too, it is fetched, without the registry's credentials.
    let sources = client_with_creds(&addr, &[&untrusted]);
    let manifests = sources
        .open(&ImageRef::parse(&format!("docker://{addr}/r/x:1")).unwrap())
        .and_then(|s| s.resolve_manifests(&PlatformSelection::Host))
        .unwrap();
    assert_eq!(manifests[0].manifest_bytes, img.manifest);
    let log = untrusted_log.lock().unwrap();
    assert!(!log.is_empty() && log.iter().all(|(_, h)| !h.contains_key("authorization")));
}

#[test]
fn a_redirect_from_https_to_plain_http_is_refused_unless_that_host_is_insecure() {
    let img = image("amd64", "d");
    let manifest = img.manifest.clone();
    let (plain, plain_log) = serve(move |_| {
        Reply::new(200, manifest.clone()).header("Content-Type", manifest::OCI_MANIFEST)
    });
    let target = format!("http://{plain}/m");
    // An HTTPS registry (insecure: its certificate is not checked, but TLS is used).
    let (registry, _) = serve_untrusted_tls(move |req| match req.path.as_str() {
        "/v2/" => Reply::new(200, "{}"),
        _ => Reply::new(307, "").header("Location", &target),
    });
    let err = resolve_error(&client_for(&registry, |o| o.max_retries = 0), &registry);
    assert!(
        err.contains(&format!(
            "redirected from HTTPS to plain HTTP http://{plain}/m: not followed"
        )) && err.contains(&format!("--insecure-registry {plain}")),
        "{err}"
    );
    assert!(plain_log.lock().unwrap().is_empty());
    let sources = client_for(&registry, |o| o.insecure.push(plain.clone()));
    let manifests = sources
        .open(&ImageRef::parse(&format!("docker://{registry}/r/x:1")).unwrap())
        .and_then(|s| s.resolve_manifests(&PlatformSelection::Host))
        .unwrap();
    assert_eq!(manifests[0].manifest_bytes, img.manifest);
}

/// A listing whose pages link back to one it had, or go on for ever, fails naming the page,
/// with what it read so far parsed page by page, never held.
#[test]
fn a_listing_that_loops_or_never_ends_fails() {
    let (addr, _) = serve(|req| {
        let page: u64 = req
            .path
            .rsplit_once("page=")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0);
        let tags: Vec<String> = (0..1000).map(|i| format!("t{page}-{i}")).collect();
        let body = serde_json::json!({ "name": "r/x", "tags": tags }).to_string();
        // `/v2/r/loop` pages link back to their first page after the second one.
        let next = match req.path.starts_with("/v2/r/loop/") {
            true => (page + 1) % 2,
            false => page + 1,
        };
        let base = req.path.split('?').next().unwrap_or_default().to_owned();
        Reply::new(200, body).header(
            "Link",
            &format!("<{base}?n=1000&page={next}>; rel=\"next\""),
        )
    });
    let registry = client_for(&addr, |_| {}).registry().unwrap();
    let looping = RegistryRef::parse(&format!("{addr}/r/loop")).unwrap();
    let err = registry.list_tags(&looping).unwrap_err().to_string();
    assert!(
        err.contains(
            "/v2/r/loop/tags/list?n=1000&page=1: the listing's pages link back to this one"
        ),
        "{err}"
    );
    let endless = RegistryRef::parse(&format!("{addr}/r/endless")).unwrap();
    let err = registry.list_tags(&endless).unwrap_err().to_string();
    assert!(
        err.contains(
            "page=1000: the tag list is longer than this tool takes (1001000 names in 1001 pages, "
        ),
        "{err}"
    );
}

/// The error resolving `reference`.
fn resolve_fails(sources: &Sources, reference: &str) -> String {
    sources
        .open(&ImageRef::parse(reference).unwrap())
        .and_then(|s| s.resolve(&PlatformSelection::Host).map(|_| ()))
        .unwrap_err()
        .to_string()
}

/// A registry that sends a manifest a byte at a time, never stalling long enough for the read
/// timeout, is given up on once the document's deadline passes, not retried.
#[test]
fn a_document_trickling_in_fails_at_its_deadline() {
    let img = image("amd64", "r");
    let routes = registry_routes(&img);
    let (addr, log) = serve(move |req| {
        let mut reply = routes(req).unwrap_or_else(|| Reply::new(404, ""));
        if req.path.contains("/manifests/") {
            reply.trickle = Some(Duration::from_millis(50));
        }
        reply
    });
    let sources = client_for(&addr, |o| o.document_deadline = Duration::from_millis(500));
    let err = resolve_fails(&sources, &format!("docker://{addr}/r/x:1"));
    assert!(
        err.contains(
            "/v2/r/x/manifests/1: body not all there after 0.5 s (the registry sends too slowly)"
        ),
        "{err}"
    );
    assert_eq!(log.lock().unwrap().len(), 1, "not retried");
}

/// A registry answering 503 with `Retry-After` again and again holds a document no longer
/// than twice its deadline, retries included (found by fuzzing: nested retries of the body,
/// the request and the token with `Retry-After: 120` held one manifest for two hours).
#[test]
fn retries_of_a_document_end_at_twice_its_deadline() {
    let (addr, log) = serve(|_| Reply::new(503, "").header("Retry-After", "1"));
    let sources = client_for(&addr, |o| {
        o.document_deadline = Duration::from_millis(700);
        o.max_retries = 10;
    });
    let err = resolve_fails(&sources, &format!("docker://{addr}/r/x:1"));
    assert!(
        err.contains(
            "/v2/r/x/manifests/1: document not all there after 1.4 s (the registry \
             sends too slowly), retries included"
        ),
        "{err}"
    );
    // Not the 11 attempts the retries alone would allow.
    assert!(
        log.lock().unwrap().len() <= 3,
        "{:?}",
        log.lock().unwrap().len()
    );
}

/// The token's, the request's and the body's retries of one document share one budget: a
/// registry failing each of them in turn used to cost (1 + 3 + 3) requests per body attempt,
/// 16 in all with three retries, and 78 with the default five.
#[test]
fn nested_retries_of_a_document_share_one_budget() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let tokens = AtomicUsize::new(0);
    let manifests = AtomicUsize::new(0);
    let (addr, log) = serve(move |req| {
        if req.path.starts_with("/token") {
            // Every third token request succeeds.
            return match tokens.fetch_add(1, Ordering::SeqCst) % 3 {
                2 => Reply::new(200, r#"{"token":"t0k3n"}"#),
                _ => Reply::new(503, ""),
            };
        }
        if !req.headers.contains_key("authorization") {
            let realm = format!("http://{}/token", req.headers["host"]);
            return Reply::new(401, "")
                .header("WWW-Authenticate", &format!("Bearer realm=\"{realm}\""));
        }
        // Two 503s, then a manifest cut short, over and over.
        match manifests.fetch_add(1, Ordering::SeqCst) % 3 {
            2 => {
                let mut reply = Reply::new(200, "{\"schemaVersion\": 2}   ".repeat(10));
                reply.cut_at = Some(10);
                reply
            }
            _ => Reply::new(503, ""),
        }
    });
    let sources = client_for(&addr, |_| ());
    let err = resolve_fails(&sources, &format!("docker://{addr}/r/x:1"));
    assert!(err.contains("/v2/r/x/manifests/1: 503"), "{err}");
    // The challenge, 2 failed tokens and 1 good one, 2 failed manifests: the third retry was
    // the last.
    let requests = log.lock().unwrap().len();
    assert_eq!(requests, 6, "{:?}", log.lock().unwrap());
}

/// Error bodies and token replies sent a byte at a time are not waited for past the
/// document deadline either: an error's detail is dropped, a token reply is an error.
#[test]
fn trickled_error_bodies_and_token_replies_meet_the_deadline() {
    let (addr, _) = serve(|req| {
        let mut reply = match req.path.as_str() {
            p if p.starts_with("/token") => {
                Reply::new(200, format!(r#"{{"token":"{}"}}"#, "t".repeat(200)))
            }
            "/v2/r/denied/manifests/1" => Reply::new(401, "").header(
                "WWW-Authenticate",
                &format!(
                    "Bearer realm=\"http://{}/token\",service=\"s\"",
                    req.headers["host"]
                ),
            ),
            _ => Reply::new(
                404,
                format!(r#"{{"errors":[{{"code":"{}"}}]}}"#, "X".repeat(200)),
            ),
        };
        if reply.status != 401 {
            reply.trickle = Some(Duration::from_millis(50));
        }
        reply
    });
    let sources = client_for(&addr, |o| o.document_deadline = Duration::from_millis(500));
    for (image, expected) in [
        ("r/missing", "404"),
        ("r/denied", "token reply not all there after 0.5 s"),
    ] {
        let err = resolve_fails(&sources, &format!("docker://{addr}/{image}:1"));
        assert!(err.contains(expected), "{err}");
        // The error body's detail (its code) was not waited for.
        assert!(!err.contains("XXXX"), "{err}");
    }
}

/// A docker-archive whose outer tar holds an oversized long name is refused with that reason,
/// not as "not a docker-archive".
#[test]
fn an_oversized_long_name_in_a_docker_archive_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(1 << 30);
    h.set_cksum();
    std::fs::write(&path, h.as_bytes()).unwrap();
    let err = resolve_err(&format!("docker-archive:{}", path.display()));
    assert!(
        err.contains("GNU long name member of 1073741824 bytes at byte 0 (at most 65536)"),
        "{err}"
    );
}

/// A docker archive of `members` (name, bytes) and symlink members `links` (name, target).
fn archive_of(path: &Path, members: &[(&str, &[u8])], links: &[(&str, &str)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o444);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, name, target).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// manifest.json may be a symlink, as the members it names may be; an archive of many images
/// asked for a tag it lacks names a few of its tags, not all (found by fuzzing: 70 000 tags
/// made a 1.3 MB error line).
#[test]
fn docker_archive_manifest_may_be_a_link_and_missing_tags_are_named_briefly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar");
    let tar = layer_tar(&[("f", b"x")]);
    let config = config_json(&[Digest::of(&tar)], "amd64");
    let images: Vec<serde_json::Value> = (0..25)
        .map(|i| {
            serde_json::json!({
                "Config": "config.json", "RepoTags": [format!("t/x:{i}")], "Layers": ["l.tar"],
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&images).unwrap();
    archive_of(
        &path,
        &[
            ("l.tar", &tar),
            ("config.json", &config),
            ("real.json", &manifest),
        ],
        &[("manifest.json", "real.json")],
    );
    let reference = format!("docker-archive:{}:t/x:3", path.display());
    assert_eq!(
        resolve_err(&reference),
        "",
        "the linked manifest.json is read"
    );
    let reference = format!("docker-archive:{}:t/x:99", path.display());
    let tags: Vec<String> = (0..10).map(|i| format!("t/x:{i}")).collect();
    assert_eq!(
        resolve_err(&reference),
        format!(
            "image {reference}: no such image in the archive (tags: {} and 15 more)",
            tags.join(", ")
        )
    );
}
