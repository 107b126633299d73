//! Image references as skopeo writes them, the names images get in the repository, and
//! platforms.

use super::digest::Digest;
use super::error::{Error, Result};
use std::fmt;
use std::path::PathBuf;

/// Host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Name DUCC gives Docker Hub in repository paths (`registry.hub.docker.com/library/ubuntu`).
pub const DOCKER_HUB_LAYOUT: &str = "registry.hub.docker.com";
/// Registry part of the layout name of images read from local files.
pub const LOCAL_LAYOUT: &str = "local";

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// `docker://REGISTRY/REPO[:TAG|@DIGEST]`
    Registry(RegistryRef),
    /// `oci:DIR[:REF]`: an OCI image layout; `REF` is an `org.opencontainers.image.ref.name`.
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE[:REF]`: `docker save` output; `REF` picks one of its `RepoTags`.
    DockerArchive { path: PathBuf, tag: Option<String> },
}

/// An image in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// Host (and port) the API is fetched from, e.g. `registry-1.docker.io`, `127.0.0.1:5000`.
    pub host: String,
    /// Repository path inside the registry, e.g. `library/ubuntu`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// The name an image gets in the repository: `/<registry>/<repository>:<tag>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName {
    /// Registry as DUCC writes it (Docker Hub → `registry.hub.docker.com`), port included.
    pub registry: String,
    pub repository: String,
    /// `:<tag>` or `@sha256:<hex>` for images referenced by digest only.
    pub reference: NameRef,
}

/// The last part of an image name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameRef {
    Tag(String),
    Digest(Digest),
}

impl ImageRef {
    /// Parses `docker://…`, `oci:…` or `docker-archive:…`.
    pub fn parse(input: &str) -> Result<ImageRef> {
        let shown = redact_userinfo(input);
        let bad = |reason: &str| Error::Reference {
            input: shown.clone(),
            reason: reason.to_owned(),
        };
        // Checked first: the parsers' reasons would quote pieces of the password.
        if shown != input {
            return Err(bad(USERINFO_REFUSED));
        }
        if let Some(rest) = input.strip_prefix("docker://") {
            return RegistryRef::parse(rest)
                .map(ImageRef::Registry)
                .map_err(|reason| bad(&reason));
        }
        // containers/image splits local transports at the first ':' after the prefix, so
        // paths cannot contain ':' but references can (`oci:/l:127.0.0.1:5000/a:1`).
        let local = |rest: &str| -> Result<(PathBuf, Option<String>)> {
            let (path, tag) = match rest.split_once(':') {
                Some((path, tag)) => (path, Some(tag.to_owned()).filter(|t| !t.is_empty())),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(bad("missing path"));
            }
            Ok((PathBuf::from(path), tag))
        };
        if let Some(rest) = input.strip_prefix("oci:") {
            let (dir, tag) = local(rest)?;
            return Ok(ImageRef::OciLayout { dir, tag });
        }
        if let Some(rest) = input.strip_prefix("docker-archive:") {
            let (path, tag) = local(rest)?;
            return Ok(ImageRef::DockerArchive { path, tag });
        }
        Err(bad(
            "expected docker://REGISTRY/REPO[:TAG|@DIGEST], oci:DIR[:TAG] or docker-archive:FILE",
        ))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let local =
            |f: &mut fmt::Formatter<'_>, kind: &str, path: &PathBuf, tag: &Option<String>| {
                write!(f, "{kind}:{}", path.display())?;
                match tag {
                    Some(tag) => write!(f, ":{tag}"),
                    None => Ok(()),
                }
            };
        match self {
            ImageRef::Registry(r) => write!(f, "docker://{r}"),
            ImageRef::OciLayout { dir, tag } => local(f, "oci", dir, tag),
            ImageRef::DockerArchive { path, tag } => local(f, "docker-archive", path, tag),
        }
    }
}

/// Why a reference with `user:password@` is refused.
pub const USERINFO_REFUSED: &str = "credentials do not belong in an image reference (give them \
     with --creds, in the auth file or through a credential helper)";

/// `text` (an image reference or wishlist line, echoed in an error) with the password of a
/// `user:password@` before the registry replaced by `***`: references take no credentials and
/// are refused, but whoever typed one must not see the password come back in logs.
pub fn redact_userinfo(text: &str) -> String {
    if text.starts_with("oci:") || text.starts_with("docker-archive:") {
        return text.to_owned();
    }
    let (scheme, rest) = match text.find("://") {
        Some(at) => text.split_at(at + 3),
        None => ("", text),
    };
    // The last `@` that does not introduce a digest ends the user info.
    let at = rest
        .match_indices('@')
        .map(|(i, _)| i)
        .rfind(|&i| !looks_like_digest(&rest[i + 1..]));
    let Some(at) = at else {
        return text.to_owned();
    };
    let (userinfo, after) = (&rest[..at], &rest[at + 1..]);
    // `host/repo@junk` is a bad digest, not user info (which holds no `/` before a host).
    let host = after.split('/').next().unwrap_or_default();
    if userinfo.contains('/') && !looks_like_host(host) {
        return text.to_owned();
    }
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}{user}:***@{after}"),
        None => format!("{scheme}***@{after}"),
    }
}

/// Digest algorithms the OCI image spec registers: `@sha256:d0758d…` after a name is a
/// (maybe mistyped) digest even when it is short, never `user@host:port`.
const DIGEST_ALGORITHMS: [&str; 4] = ["sha256", "sha384", "sha512", "blake3"];

/// Whether `text` starts with `ALGORITHM:ENCODED` (a digest after `@`), not `host:port/…`:
/// a registered algorithm with any encoded part (a truncated or mistyped digest, which the
/// parser then reports as such), or another lowercase algorithm with 32+ hex digits.
fn looks_like_digest(text: &str) -> bool {
    let Some((algorithm, rest)) = text.split_once(':') else {
        return false;
    };
    let encoded = rest.split('@').next().unwrap_or_default();
    if DIGEST_ALGORITHMS.contains(&algorithm) {
        return !encoded.is_empty()
            && encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
    }
    !algorithm.is_empty()
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && encoded.len() >= 32
        && encoded.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether the first path component of a reference names a registry host.
fn looks_like_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// Longest registry host (with port) accepted: a file name in the repository.
const HOST_MAX: usize = 255;

/// Checks a registry host as Docker's reference grammar has it: a host name (labels of
/// letters, digits and inner `-`, joined by `.`), an IPv4 address or a bracketed IPv6 one,
/// with an optional `:port`. The host becomes the first component of the image's link and
/// metadata paths, so nothing else may pass: `.flat`, `.metadata` or `.cvmfscatalog` would
/// put the image's names inside the layout's own directories or make a nested catalog
/// marker a directory.
fn check_host(host: &str) -> std::result::Result<(), String> {
    if host.len() > HOST_MAX {
        return Err(format!(
            "registry host of {} bytes (at most {HOST_MAX})",
            host.len()
        ));
    }
    let bad = |why: &str| Err(format!("registry host {host:?} {why}"));
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let Some((addr, after)) = rest.split_once(']') else {
                return bad("lacks the closing ']' of its IPv6 address");
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("is not a valid IPv6 address");
            }
            match after {
                "" => (None, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (None, Some(port)),
                    None => return bad("has text after its IPv6 address"),
                },
            }
        }
        None => match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        },
    };
    if let Some(port) = port {
        let digits =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !digits || port.parse::<u16>().is_err() {
            return bad("has an invalid port");
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_some_and(|n| !n.split('.').all(label_ok)) {
        return bad("is not a host name or IP address");
    }
    Ok(())
}

fn valid_repository(repo: &str) -> bool {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            && c.as_bytes()[0].is_ascii_alphanumeric()
    };
    repo.split('/').all(component_ok)
}

fn valid_tag(tag: &str) -> bool {
    tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Docker Hub's aliases; all are fetched from [`DOCKER_HUB_API`].
fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
    )
}

impl RegistryRef {
    /// Parses `[HOST/]REPO[:TAG][@sha256:HEX]` with Docker's defaults (Docker Hub,
    /// `library/`, tag `latest`).
    pub fn parse(text: &str) -> std::result::Result<RegistryRef, String> {
        let (name, digest) = match text.split_once('@') {
            Some((name, d)) => {
                let digest = Digest::parse(d)
                    .ok_or_else(|| format!("digest {d:?} is not sha256:<64 lowercase hex>"))?;
                (name, Some(digest))
            }
            None => (text, None),
        };
        let (path, tag) = match name.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, Some(tag.to_owned())),
            _ => (name, None),
        };
        if let Some(tag) = &tag {
            if !valid_tag(tag) {
                return Err(format!("invalid tag {tag:?}"));
            }
        }
        let (host, repository) = match path.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (first.to_owned(), rest.to_owned()),
            _ => (DOCKER_HUB_API.to_owned(), path.to_owned()),
        };
        check_host(&host)?;
        let (host, repository) = if is_docker_hub(&host) {
            let repo = if repository.contains('/') {
                repository
            } else {
                format!("library/{repository}")
            };
            (DOCKER_HUB_API.to_owned(), repo)
        } else {
            (host, repository)
        };
        if !valid_repository(&repository) {
            return Err(format!("invalid repository name {repository:?}"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(RegistryRef {
            host,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry's manifest endpoint for: the digest when known, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository with another tag.
    pub fn with_tag(&self, tag: &str) -> RegistryRef {
        RegistryRef {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// Repository name: registry as DUCC names it, repository, tag (or digest).
    pub fn name(&self) -> ImageName {
        let registry = if self.host == DOCKER_HUB_API {
            DOCKER_HUB_LAYOUT.to_owned()
        } else {
            self.host.clone()
        };
        let reference = match (&self.tag, &self.digest) {
            (Some(t), _) => NameRef::Tag(t.clone()),
            (None, Some(d)) => NameRef::Digest(d.clone()),
            (None, None) => NameRef::Tag("latest".to_owned()),
        };
        ImageName {
            registry,
            repository: self.repository.clone(),
            reference,
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl ImageName {
    /// Name for an image read from a local file under the reference name `ref_name` (an OCI
    /// `ref.name` annotation or a `RepoTags` entry). A full registry reference keeps its
    /// registry (`127.0.0.1:5000/a/b:1`, `docker.io/a/b:1`) and must be a valid one; anything
    /// else lands under [`LOCAL_LAYOUT`] with tag `latest` unless it names one. The error
    /// says why the name is unusable.
    pub fn for_local(ref_name: &str) -> std::result::Result<ImageName, String> {
        let first = ref_name.split('/').next().unwrap_or_default();
        if ref_name.contains('/') && looks_like_host(first) {
            return RegistryRef::parse(ref_name).map(|r| r.name());
        }
        let (repository, tag) = match ref_name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (ref_name, "latest"),
        };
        if !valid_repository(repository) {
            return Err(format!("invalid repository name {repository:?}"));
        }
        if !valid_tag(tag) {
            return Err(format!("invalid tag {tag:?}"));
        }
        Ok(ImageName {
            registry: LOCAL_LAYOUT.to_owned(),
            repository: repository.to_owned(),
            reference: NameRef::Tag(tag.to_owned()),
        })
    }

    /// `<registry>/<repository>:<tag>` or `<registry>/<repository>@sha256:<hex>`.
    pub fn path_text(&self) -> String {
        match &self.reference {
            NameRef::Tag(t) => format!("{}/{}:{t}", self.registry, self.repository),
            NameRef::Digest(d) => format!("{}/{}@{d}", self.registry, self.repository),
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path_text())
    }
}

/// An OCI platform: `os/architecture[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`, e.g. `linux/amd64`, `linux/arm64/v8`.
    pub fn parse(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok = (2..=3).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty());
        if !ok {
            return Err(Error::Platform {
                input: text.to_owned(),
                reason: "a platform is os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8"
                    .to_owned(),
            });
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }

    /// The platform of this machine in OCI names (`x86_64` → `amd64`, `aarch64` → `arm64/v8`).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// The variant an entry without one stands for, as containerd normalises platforms:
    /// `amd64` is `v1`, `arm64` is `v8`, `arm` is `v7`; other architectures have none.
    fn default_variant(architecture: &str) -> Option<&'static str> {
        match architecture {
            "amd64" => Some("v1"),
            "arm64" => Some("v8"),
            "arm" => Some("v7"),
            _ => None,
        }
    }

    /// The variant with the architecture's default filled in (`arm64` without one is `v8`).
    fn effective_variant(&self) -> Option<&str> {
        self.variant
            .as_deref()
            .or_else(|| Platform::default_variant(&self.architecture))
    }

    /// Whether an image for `offered` runs where `self` is wanted (see [`Platform::rank`]).
    pub fn accepts(&self, offered: &Platform) -> bool {
        self.rank(offered).is_some()
    }

    /// How well an image for `offered` fits where `self` is wanted; `None` if it does not,
    /// and a smaller rank is a better fit. Among equal ranks callers take the first in
    /// index order, so the choice never depends on anything but the index.
    ///
    /// The order follows containerd's platform matcher (`platforms.Only`, which tries the
    /// normalised platform first, then the older variants it can run, newest first):
    ///
    /// * os and architecture must be equal.
    /// * A wanted variant matches only that variant, compared with defaults filled in
    ///   (`arm64/v8` ≡ `arm64`, `arm/v7` ≡ `arm`, `amd64/v1` ≡ `amd64`).
    /// * Without a wanted variant, any variant is accepted, best first:
    ///   1. no variant or the architecture's default (`amd64` v1, `arm64` v8, `arm` v7);
    ///   2. older levels than the default, the newest first (`arm`: v6, then v5): they
    ///      run on every machine of the default level;
    ///   3. newer levels, the lowest first (`amd64`: v2 before v3 before v4): the most
    ///      likely to run on a machine that was not asked about;
    ///   4. variants that are not `v<N>[.<M>]` levels, by name.
    pub fn rank(&self, offered: &Platform) -> Option<PlatformRank> {
        if self.os != offered.os || self.architecture != offered.architecture {
            return None;
        }
        if self.variant.is_some() {
            return (self.effective_variant() == offered.effective_variant())
                .then(PlatformRank::default);
        }
        let wanted = Platform::default_variant(&self.architecture);
        let got = offered.effective_variant();
        if got == wanted {
            return Some(PlatformRank::default());
        }
        let level = |v: Option<&str>| v.and_then(variant_level);
        Some(match (level(wanted), level(got)) {
            (Some(want), Some(have)) if have < want => PlatformRank {
                class: 1,
                level: (u32::MAX - have.0, u32::MAX - have.1),
                variant: String::new(),
            },
            (Some(_), Some(have)) => PlatformRank {
                class: 2,
                level: have,
                variant: String::new(),
            },
            _ => PlatformRank {
                class: 3,
                level: (0, 0),
                variant: got.unwrap_or_default().to_owned(),
            },
        })
    }

    /// Checks that os, architecture and variant are plain names (`a-z`, `0-9`, `.`, `_`,
    /// `-`, starting with a letter or digit): they become part of a link's file name
    /// ([`Platform::link_suffix`]), so `/`, `..` or control characters must not pass.
    pub fn check_names(&self) -> std::result::Result<(), String> {
        let plain = |t: &str| {
            t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && t.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        };
        let fields = [
            ("os", Some(&self.os)),
            ("architecture", Some(&self.architecture)),
            ("variant", self.variant.as_ref()),
        ];
        for (what, value) in fields {
            if let Some(v) = value.filter(|v| !plain(v)) {
                return Err(format!(
                    "platform {what} {v:?} is not a plain name (a-z, 0-9, '.', '_', '-', \
                     starting with a letter or digit)"
                ));
            }
        }
        Ok(())
    }

    /// Suffix of the per-platform tag link `<tag>@<suffix>`: `linux-amd64`, `linux-arm-v7`
    /// (the default `v8` of arm64 is left out).
    pub fn link_suffix(&self) -> String {
        let mut out = format!("{}-{}", self.os, self.architecture);
        if let Some(v) = self.variant.as_deref() {
            if !(self.architecture == "arm64" && v == "v8") {
                out.push('-');
                out.push_str(v);
            }
        }
        out
    }
}

/// How well an offered platform fits a wanted one ([`Platform::rank`]): smaller is better.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlatformRank {
    /// 0: exact or default variant; 1: older level; 2: newer level; 3: other variant.
    class: u8,
    /// Sorts the levels of a class in the order of preference.
    level: (u32, u32),
    /// Sorts the variants of class 3 by name.
    variant: String,
}

/// `v<N>` or `v<N>.<M>` as `(N, M)`: the micro-architecture levels of amd64, arm and arm64.
fn variant_level(variant: &str) -> Option<(u32, u32)> {
    let digits = variant.strip_prefix('v')?;
    let (major, minor) = digits.split_once('.').unwrap_or((digits, "0"));
    let number = |t: &str| {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u32>().ok())
            .flatten()
    };
    Some((number(major)?, number(minor)?))
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(text: &str) -> RegistryRef {
        match ImageRef::parse(text).unwrap() {
            ImageRef::Registry(r) => r,
            other => panic!("not a registry ref: {other:?}"),
        }
    }

    #[test]
    fn docker_hub_normalisation() {
        let r = reg("docker://ubuntu");
        assert_eq!(r.host, "registry-1.docker.io");
        assert_eq!(r.repository, "library/ubuntu");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(
            r.name().to_string(),
            "registry.hub.docker.com/library/ubuntu:latest"
        );
        let r = reg("docker://docker.io/jupyter/base-notebook:2024");
        assert_eq!(r.host, "registry-1.docker.io");
        assert_eq!(
            r.name().to_string(),
            "registry.hub.docker.com/jupyter/base-notebook:2024"
        );
        assert_eq!(
            reg("docker://registry.hub.docker.com/library/debian:12").host,
            DOCKER_HUB_API
        );
    }

    #[test]
    fn registry_with_port_tag_and_digest() {
        let hex = "ab".repeat(32);
        let r = reg("docker://127.0.0.1:5000/testbed/app:oci-gzip");
        assert_eq!(r.host, "127.0.0.1:5000");
        assert_eq!(r.repository, "testbed/app");
        assert_eq!(r.manifest_reference(), "oci-gzip");
        assert_eq!(r.name().to_string(), "127.0.0.1:5000/testbed/app:oci-gzip");
        let r = reg(&format!("docker://localhost/x@sha256:{hex}"));
        assert_eq!(r.host, "localhost");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
        assert_eq!(r.name().to_string(), format!("localhost/x@sha256:{hex}"));
        let r = reg(&format!("docker://quay.io/a/b:1.0@sha256:{hex}"));
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
        assert_eq!(r.name().to_string(), "quay.io/a/b:1.0");
        assert_eq!(r.to_string(), format!("quay.io/a/b:1.0@sha256:{hex}"));
    }

    #[test]
    fn invalid_references() {
        for bad in [
            "docker://UPPER/case",
            "docker://host.io/Repo",
            "docker://x@sha256:short",
            "docker://x:bad/tag:",
            "docker://x:-tag",
            "docker://a//b",
            "oci:",
            "podman://x",
            "ubuntu",
        ] {
            let err = ImageRef::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid image reference"), "{bad}: {err}");
        }
    }

    #[test]
    fn credentials_in_references_are_not_echoed() {
        let hex = "a".repeat(64);
        for (input, shown) in [
            (
                "docker://qauser:SECRETPW123@127.0.0.1:5000/testbed/base:bookworm".to_owned(),
                "docker://qauser:***@127.0.0.1:5000/testbed/base:bookworm".to_owned(),
            ),
            (
                format!("docker://u:p@ss/w:rd@quay.io/a/b@sha256:{hex}"),
                format!("docker://u:***@quay.io/a/b@sha256:{hex}"),
            ),
            (
                "docker://TOKEN@registry:5000".to_owned(),
                "docker://***@registry:5000".to_owned(),
            ),
        ] {
            let err = ImageRef::parse(&input).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("invalid image reference {shown:?}: {USERINFO_REFUSED}")
            );
            assert!(
                !["SECRETPW123", "p@ss", "w:rd", "TOKEN"]
                    .iter()
                    .any(|s| err.contains(s)),
                "{err}"
            );
        }
        // Digests, bad digests and local paths are no user info.
        for text in [
            format!("docker://ubuntu:22.04@sha256:{hex}"),
            format!("quay.io/a/b@sha256:{hex}"),
            "docker://host.io/repo@junk".to_owned(),
            "oci:/tmp/a@b:c".to_owned(),
        ] {
            assert_eq!(redact_userinfo(&text), text);
        }
        assert_eq!(
            redact_userinfo("http://u:pw@h.io/r:1"),
            "http://u:***@h.io/r:1"
        );
    }

    #[test]
    fn a_bad_platform_is_reported_as_a_platform() {
        for text in ["linux", "linux/", "/amd64", "a/b/c/d"] {
            let err = Platform::parse(text).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "invalid platform {text:?}: a platform is os/arch[/variant], e.g. \
                     linux/amd64 or linux/arm64/v8"
                )
            );
        }
    }

    /// A truncated or mistyped digest is a bad digest, shown as typed: not credentials, and
    /// the registry's `host:port` is not taken for `user:password`.
    #[test]
    fn short_digest_is_a_bad_digest_not_credentials() {
        for (input, digest) in [
            (
                "docker://127.0.0.1:5000/repo:tag@sha256:d0758d636741",
                "sha256:d0758d636741",
            ),
            ("docker://quay.io/a/b@sha256:abc", "sha256:abc"),
            ("docker://ubuntu@sha512:0", "sha512:0"),
        ] {
            assert_eq!(redact_userinfo(input), input);
            let err = ImageRef::parse(input).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "invalid image reference {input:?}: digest {digest:?} is not \
                     sha256:<64 lowercase hex>"
                )
            );
        }
        // Credentials before a bad digest are still refused and hidden.
        let err = ImageRef::parse("docker://u:SECRET@127.0.0.1:5000/r:t@sha256:d0758d")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "invalid image reference \"docker://u:***@127.0.0.1:5000/r:t@sha256:d0758d\": \
                 {USERINFO_REFUSED}"
            )
        );
        // `user@host:port` with a port is user info, whatever the host is called.
        assert_eq!(
            redact_userinfo("docker://TOKEN@sha256:5000/x"),
            "docker://***@sha256:5000/x"
        );
    }

    #[test]
    fn local_references() {
        assert_eq!(
            ImageRef::parse("oci:/tmp/l:127.0.0.1:5000/a/b:1").unwrap(),
            ImageRef::OciLayout {
                dir: "/tmp/l".into(),
                tag: Some("127.0.0.1:5000/a/b:1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:/tmp/l").unwrap(),
            ImageRef::OciLayout {
                dir: "/tmp/l".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("docker-archive:/tmp/a.tar").unwrap(),
            ImageRef::DockerArchive {
                path: "/tmp/a.tar".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("oci:/tmp/l:app").unwrap().to_string(),
            "oci:/tmp/l:app"
        );
    }

    #[test]
    fn local_names() {
        let n = ImageName::for_local("corpus/flask-app:1.0").unwrap();
        assert_eq!(n.to_string(), "local/corpus/flask-app:1.0");
        assert_eq!(
            ImageName::for_local("app").unwrap().to_string(),
            "local/app:latest"
        );
        let n = ImageName::for_local("docker.io/testbed/python:latest").unwrap();
        assert_eq!(
            n.to_string(),
            "registry.hub.docker.com/testbed/python:latest"
        );
        let n = ImageName::for_local("127.0.0.1:5000/testbed/app:oci-gzip").unwrap();
        assert_eq!(n.to_string(), "127.0.0.1:5000/testbed/app:oci-gzip");
        assert!(ImageName::for_local("Bad Name").is_err());
    }

    /// A ref name whose first component looks like a host must be a valid host: it becomes
    /// the first component of the link and metadata paths (`/.metadata/...`, `/.flat/...`
    /// or `/.cvmfscatalog/...` would land in the layout's own directories).
    #[test]
    fn local_names_with_a_host_need_a_valid_one() {
        let long = format!("{}.example.org/x:1", "a".repeat(250));
        for bad in [
            ".cvmfscatalog/x:1",
            ".cvmfsautocatalog/x:1",
            ".metadata/example.com/victim:1",
            ".flat/evil:latest",
            "../evil:latest",
            "./evil:latest",
            "a\0b.example.org/x:1",
            "ex_ample.org/x:1",
            "-a.org/x:1",
            "a..b/x:1",
            "host:port/x:1",
            "host:99999/x:1",
            "[::1/x:1",
            "[zz::1]:5000/x:1",
            long.as_str(),
        ] {
            let err = ImageName::for_local(bad).unwrap_err();
            assert!(err.contains("registry host"), "{bad:?}: {err}");
            assert!(
                ImageRef::parse(&format!("docker://{bad}")).is_err(),
                "docker://{bad:?} accepted"
            );
        }
        for good in [
            "localhost/x:1",
            "localhost:5000/x:1",
            "Registry.Example.org/x:1",
            "10.0.0.1/x:1",
            "[::1]:5000/x:1",
            "[fe80::1]/x:1",
            "a-b.example.org:443/team/x:1",
        ] {
            let name = ImageName::for_local(good).unwrap();
            assert_eq!(name.to_string(), good);
        }
        assert_eq!(
            ImageName::for_local("example.org/Up:1").unwrap_err(),
            "invalid repository name \"Up\""
        );
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(p.link_suffix(), "linux-arm64");
        let bare = Platform::parse("linux/arm64").unwrap();
        assert!(p.accepts(&bare) && bare.accepts(&p));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(v7.link_suffix(), "linux-arm-v7");
        assert!(!v7.accepts(&Platform::parse("linux/arm/v6").unwrap()));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v7").is_err());
        assert!(v7.check_names().is_ok());
        for (arch, variant) in [
            ("arm64/.cvmfscatalog", None),
            ("..", None),
            (".hidden", None),
            ("AMD64", None),
            ("arm", Some("v7/.cvmfscatalog")),
            ("arm", Some("")),
            ("arm", Some("v7\n")),
        ] {
            let p = Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.map(str::to_owned),
            };
            assert!(p.check_names().is_err(), "{p:?}");
        }
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), "linux/amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host.to_string(), "linux/arm64/v8");
        }
    }

    /// Without a variant the default variant wins, then older levels newest first, then newer
    /// levels lowest first, then other variants (containerd's order); a wanted variant takes
    /// only itself, defaults filled in.
    #[test]
    fn platform_ranks() {
        let p = |t: &str| Platform::parse(t).unwrap();
        let best = |want: &str, offered: &[&str]| -> String {
            let want = p(want);
            offered
                .iter()
                .enumerate()
                .filter_map(|(i, o)| Some((want.rank(&p(o))?, i, *o)))
                .min()
                .map(|(_, _, o)| o.to_owned())
                .unwrap_or_default()
        };
        let amd = [
            "linux/amd64/v3",
            "linux/amd64/v2",
            "linux/amd64",
            "linux/amd64/v4",
        ];
        assert_eq!(best("linux/amd64", &amd), "linux/amd64");
        assert_eq!(best("linux/amd64", &amd[..2]), "linux/amd64/v2");
        assert_eq!(
            best("linux/amd64", &["linux/amd64/v3", "linux/amd64/v1"]),
            "linux/amd64/v1"
        );
        assert_eq!(best("linux/amd64/v3", &amd), "linux/amd64/v3");
        assert_eq!(best("linux/amd64/v1", &amd), "linux/amd64");
        let arm = [
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v8",
            "linux/arm/v7",
        ];
        assert_eq!(best("linux/arm", &arm), "linux/arm/v7");
        assert_eq!(best("linux/arm", &arm[..3]), "linux/arm/v6");
        assert_eq!(best("linux/arm", &arm[..1]), "linux/arm/v5");
        assert_eq!(
            best("linux/arm", &["linux/arm/v8", "linux/arm/xyz"]),
            "linux/arm/v8"
        );
        assert_eq!(
            best("linux/arm", &["linux/arm/xyz", "linux/arm"]),
            "linux/arm"
        );
        assert_eq!(
            best("linux/arm/v7", &["linux/arm/v6", "linux/arm"]),
            "linux/arm"
        );
        assert_eq!(best("linux/arm/v6", &arm[..1]), "");
        let arm64 = ["linux/arm64/v9", "linux/arm64/v8.2", "linux/arm64/v8"];
        assert_eq!(best("linux/arm64", &arm64), "linux/arm64/v8");
        assert_eq!(best("linux/arm64", &arm64[..2]), "linux/arm64/v8.2");
        assert_eq!(
            best("linux/arm64/v8", &["linux/arm64/v9", "linux/arm64"]),
            "linux/arm64"
        );
        assert_eq!(
            best("linux/ppc64le", &["linux/ppc64le/power9", "linux/ppc64le"]),
            "linux/ppc64le"
        );
        assert_eq!(best("linux/amd64", &["windows/amd64", "linux/386"]), "");
        // Equal ranks: the index order decides (the caller's tie-break).
        assert_eq!(
            p("linux/arm64").rank(&p("linux/arm64/v8")),
            p("linux/arm64").rank(&p("linux/arm64"))
        );
    }
}
