//! Just enough of an OCI image layout (`index.json`, manifests, configs, blobs) to find an
//! image's layers and their diff_ids.

use crate::Error;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From an OCI or Docker layer media type.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        if mt.ends_with("+gzip") || mt.ends_with(".tar.gzip") || mt.ends_with("tar.gz") {
            Some(Compression::Gzip)
        } else if mt.ends_with("+zstd") || mt.ends_with(".tar.zstd") {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") {
            Some(Compression::None)
        } else {
            None
        }
    }
}

/// One layer of an image.
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: PathBuf,
    pub digest: String,
    pub diff_id: String,
    pub compression: Compression,
}

/// An image of the layout: its ref name and its layers, bottom first.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub layers: Vec<Layer>,
}

/// An OCI image layout directory.
pub struct Layout {
    root: PathBuf,
    index: Value,
}

fn read_json(path: &Path) -> Result<Value, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })
}

fn str_field<'a>(v: &'a Value, key: &str, what: &Path) -> Result<&'a str, Error> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Layout(format!("{}: no string field {key:?}", what.display())))
}

impl Layout {
    pub fn open(root: &Path) -> Result<Layout, Error> {
        let index = read_json(&root.join("index.json"))?;
        Ok(Layout {
            root: root.to_path_buf(),
            index,
        })
    }

    /// Path of the blob `sha256:HEX`.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, Error> {
        let (alg, hex) = digest
            .split_once(':')
            .ok_or_else(|| Error::Layout(format!("bad digest {digest:?}")))?;
        Ok(self.root.join("blobs").join(alg).join(hex))
    }

    /// The ref names of the index, in order.
    pub fn refs(&self) -> Vec<String> {
        self.index["manifests"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The image whose `org.opencontainers.image.ref.name` is `name` (a manifest, not an index).
    pub fn image(&self, name: &str) -> Result<Image, Error> {
        let index_path = self.root.join("index.json");
        let desc = self.index["manifests"]
            .as_array()
            .and_then(|ms| {
                ms.iter().find(|m| {
                    m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(name)
                })
            })
            .ok_or_else(|| Error::Layout(format!("{}: no ref {name:?}", self.root.display())))?;
        let manifest_path = self.blob_path(str_field(desc, "digest", &index_path)?)?;
        let manifest = read_json(&manifest_path)?;
        let config_path =
            self.blob_path(str_field(&manifest["config"], "digest", &manifest_path)?)?;
        let config = read_json(&config_path)?;
        let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let descs = manifest["layers"].as_array().cloned().unwrap_or_default();
        if descs.len() != diff_ids.len() {
            return Err(Error::Layout(format!(
                "{name}: {} layers but {} diff_ids in {}",
                descs.len(),
                diff_ids.len(),
                config_path.display()
            )));
        }
        let mut layers = Vec::with_capacity(descs.len());
        for (d, diff_id) in descs.iter().zip(diff_ids) {
            let digest = str_field(d, "digest", &manifest_path)?.to_string();
            let mt = str_field(d, "mediaType", &manifest_path)?;
            let compression = Compression::from_media_type(mt).ok_or_else(|| {
                Error::Layout(format!("{name}: layer {digest}: unknown media type {mt}"))
            })?;
            layers.push(Layer {
                blob: self.blob_path(&digest)?,
                digest,
                diff_id: diff_id.to_string(),
                compression,
            });
        }
        Ok(Image {
            name: name.to_string(),
            layers,
        })
    }
}
