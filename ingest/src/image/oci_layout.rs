//! `oci:DIR[:REF]`: an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).

use super::digest::{Checked, Digest, VerifyingReader};
use super::error::{Error, Result};
use super::local_file::{open_regular, read_document_file};
use super::manifest::{descriptor, PlatformSelection, RawDescriptor};
use super::reference::ImageName;
use super::source::{check_blob, resolve_document, ImageManifest, ImageSource, ResolvedImage};
use serde::Deserialize;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Deserialize)]
struct LayoutIndex {
    manifests: Vec<RawDescriptor>,
}

/// Reads images from an OCI image layout.
pub struct OciLayoutSource {
    dir: PathBuf,
    tag: Option<String>,
    reference: String,
}

impl OciLayoutSource {
    /// A layout directory and, optionally, the `ref.name` to read (else its only image).
    pub fn new(dir: &Path, tag: Option<&str>) -> OciLayoutSource {
        let reference = match tag {
            Some(t) => format!("oci:{}:{t}", dir.display()),
            None => format!("oci:{}", dir.display()),
        };
        OciLayoutSource {
            dir: dir.to_owned(),
            tag: tag.map(str::to_owned),
            reference,
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// Reads blob `digest`, a `what` (manifest, config) of `size` bytes when a descriptor
    /// says so; never more than that size or the document cap.
    fn read_blob(&self, digest: &Digest, size: Option<u64>, what: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = read_document_file(&path, size, &self.reference, &format!("{what} {digest}"))?;
        check_blob(&bytes, digest, size, &self.reference, what)?;
        Ok(bytes)
    }

    /// The `index.json` entry this source stands for.
    fn pick_entry(&self) -> Result<RawDescriptor> {
        let path = self.dir.join("index.json");
        let bytes = read_document_file(&path, None, &self.reference, "index.json")?;
        let index: LayoutIndex = serde_json::from_slice(&bytes).map_err(|e| {
            Error::image(
                &self.reference,
                format!("{} is not a valid index: {e}", path.display()),
            )
        })?;
        let names: Vec<&str> = index
            .manifests
            .iter()
            .filter_map(|m| m.annotations.get(REF_NAME).map(String::as_str))
            .collect();
        let found = match &self.tag {
            Some(tag) => index
                .manifests
                .iter()
                .find(|m| m.annotations.get(REF_NAME) == Some(tag)),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => None,
        };
        found.cloned().ok_or_else(|| {
            let wanted = match &self.tag {
                Some(t) => format!("no image named {t:?}"),
                None => "several images and no name given".to_owned(),
            };
            Error::image(
                &self.reference,
                format!("{wanted} (names in the layout: {})", names.join(", ")),
            )
        })
    }

    /// The repository name: from the reference name, else the directory name.
    fn name(&self, entry: &RawDescriptor) -> Result<ImageName> {
        let dir_name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let candidate = self
            .tag
            .clone()
            .or_else(|| entry.annotations.get(REF_NAME).cloned())
            .or(dir_name)
            .unwrap_or_default();
        ImageName::for_local(&candidate).map_err(|why| {
            Error::image(
                &self.reference,
                format!("{candidate:?} is not usable as an image name: {why}"),
            )
        })
    }
}

impl ImageSource for OciLayoutSource {
    fn describe(&self) -> String {
        self.reference.clone()
    }

    fn resolve_manifests(&self, selection: &PlatformSelection) -> Result<Vec<ImageManifest>> {
        let entry = self.pick_entry()?;
        let (digest, size) = descriptor(&entry, &self.reference, "index.json manifest")?;
        let top = self.read_blob(&digest, Some(size), "manifest")?;
        let media_type = Some(entry.media_type.clone()).filter(|m| !m.is_empty());
        let name = self.name(&entry)?;
        let fetch = |digest: &Digest, size: u64| -> Result<(Vec<u8>, Option<String>)> {
            Ok((self.read_blob(digest, Some(size), "manifest")?, None))
        };
        resolve_document(&self.reference, &name, (top, media_type), selection, &fetch)
    }

    fn fetch_config(&self, manifest: &ImageManifest) -> Result<Vec<u8>> {
        self.read_blob(
            &manifest.config_digest,
            Some(manifest.config_size),
            "config",
        )
    }

    fn open_layer(&self, image: &ResolvedImage, index: usize) -> Result<Box<dyn Read + Send>> {
        let desc = image.layer(index)?;
        let path = self.blob_path(&desc.digest);
        let file = open_regular(&path).map_err(|e| {
            Error::layer(
                &image.reference,
                desc.digest.to_string(),
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok(Box::new(VerifyingReader::new(
            BufReader::with_capacity(256 * 1024, file),
            desc.digest.clone(),
            Some(desc.size),
            &image.reference,
            &desc.digest.to_string(),
            Checked::Blob,
        )))
    }
}
