//! Repository meta-info (`cvmfs_server update-repoinfo`): a JSON document about the repository
//! (administrator, contact, recommended stratum 1s, …) stored as an `M` object, zlib-compressed
//! like every object, and named by the manifest's `M` field. A new repository gets the same
//! skeleton `cvmfs_server mkfs` writes, so its object has the same name.

use crate::error::{Error, Result};
use crate::reflog::RefKind;
use crate::repo::{parse_hash_field, Repository};
use crate::store::{put_named, stored_bound, ObjectStore};
use catalog_writer::hash::{ContentHash, Suffix};

/// `create_repometa_skeleton` of `cvmfs_server` (cvmfs_server_common.sh), byte for byte.
pub const SKELETON: &str = r#"{
  "administrator" : "Your Name",
  "email"         : "you@organisation.org",
  "organisation"  : "Your Organisation",
  "description"   : "Repository content",
  "url"           : "Project website",
  "recommended-stratum0":  "stratum 0 url",
  "recommended-stratum1s" : [ "stratum1 url", "stratum1 url" ],

  "custom" : {
    "_comment" : "Put arbitrary structured data here"
  }
}
"#;

/// Largest meta-info document accepted (clients download it whole).
const MAX_META_INFO: usize = 1 << 20;

/// Stores `json` as a meta-info object; returns its name.
pub(crate) fn store_meta_info(objects: &dyn ObjectStore, json: &[u8]) -> Result<ContentHash> {
    let object = catalog_writer::zlib::compress(json);
    put_named(objects, &object, Suffix::MetaInfo, "meta-info")
}

impl Repository {
    /// The meta-info JSON the published manifest names (`None`: it names none).
    pub fn meta_info(&self) -> Result<Option<Vec<u8>>> {
        let Some(text) = self.published_manifest()?.meta_info else {
            return Ok(None);
        };
        let hash = parse_hash_field("M", &text)?;
        let what = format!("meta-info {}", hash.object_path(Suffix::MetaInfo));
        let stored = self
            .store()
            .get_at_most(&hash, Suffix::MetaInfo, stored_bound(MAX_META_INFO as u64))
            .map_err(|e| Error::io(what.as_str(), e))?;
        let json = catalog_writer::zlib::decompress(&stored, MAX_META_INFO as u64)
            .map_err(|e| Error::io(format!("{what}: inflate"), e))?;
        Ok(Some(json))
    }

    /// Replaces the meta-info with `json`, which must be a JSON object, and re-signs the
    /// manifest at the same revision. Returns the new object's name.
    pub fn set_meta_info(&self, json: &[u8], wait: bool) -> Result<ContentHash> {
        check_meta_info(json)?;
        self.amend_manifest(wait, |store, manifest| {
            let hash = store_meta_info(store, json)?;
            manifest.meta_info = Some(hash.to_hex());
            Ok((hash, vec![(hash, RefKind::MetaInfo)]))
        })
    }
}

/// A JSON object of reasonable size, as `cvmfs_server update-repoinfo` insists (`jq`).
fn check_meta_info(json: &[u8]) -> Result<()> {
    if json.len() > MAX_META_INFO {
        return Err(Error::Invalid(format!(
            "meta-info of {} bytes: at most {MAX_META_INFO}",
            json.len()
        )));
    }
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(Error::Invalid(
            "meta-info must be a JSON object ({...})".to_string(),
        )),
        Err(e) => Err(Error::Invalid(format!("meta-info is not valid JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skeleton_is_valid_json_and_cvmfs_server_names_it_alike() {
        check_meta_info(SKELETON.as_bytes()).unwrap();
        // The name `cvmfs_server mkfs` gives its skeleton (stock zlib, level 6, SHA-1).
        assert_eq!(
            ContentHash::of(&catalog_writer::zlib::compress(SKELETON.as_bytes())).to_hex(),
            "85e4f386da0d5d77c7f66cf2f58e10951f24b653"
        );
        assert!(check_meta_info(b"[1, 2]").is_err());
        assert!(check_meta_info(b"{\"a\": ").is_err());
    }
}
