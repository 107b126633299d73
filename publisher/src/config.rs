//! The repository home `<home>/<fqrn>/`: `config.json`, the `lock` file and `state/` caches.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Content-defined chunking settings (bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Chunking {
    pub enabled: bool,
    pub min: u64,
    pub avg: u64,
    pub max: u64,
}

impl Default for Chunking {
    fn default() -> Chunking {
        Chunking {
            enabled: true,
            min: 4 * 1024 * 1024,
            avg: 8 * 1024 * 1024,
            max: 16 * 1024 * 1024,
        }
    }
}

/// `config.json` of one repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub fqrn: String,
    /// The stratum-0 storage directory (served over HTTP).
    pub storage: PathBuf,
    /// Where `<fqrn>.masterkey`, `.pub`, `.key`, `.crt` live; never inside `storage`.
    pub keys_dir: PathBuf,
    /// Looked in before `keys_dir` for each key file, for this run only (never saved):
    /// `--keys DIR` given to a command other than `init`, e.g. the master key on removable
    /// media for `resign`.
    #[serde(skip)]
    pub keys_first: Option<PathBuf>,
    /// Manifest `D` and root catalog TTL (seconds).
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    #[serde(default = "default_whitelist_days")]
    pub whitelist_days: u32,
    #[serde(default)]
    pub chunking: Chunking,
    #[serde(default = "default_max_entries")]
    pub max_catalog_entries: u64,
    /// Manifest `G`.
    #[serde(default)]
    pub gc: bool,
    /// Bytes the ingest pipeline may keep in flight.
    #[serde(default = "default_memory_budget")]
    pub memory_budget: u64,
    /// Garbage collection after a publish (at most daily) keeping the revisions of this many
    /// seconds, as `CVMFS_AUTO_GC` with `CVMFS_AUTO_GC_TIMESPAN`; `None`: off.
    #[serde(default)]
    pub auto_gc_seconds: Option<u64>,
    /// The bucket every publish that makes a revision is pushed to (`push --auto`); `None`:
    /// only explicit pushes.
    #[serde(default)]
    pub auto_push: Option<crate::push::S3Target>,
}

fn default_ttl() -> u32 {
    240
}
fn default_whitelist_days() -> u32 {
    30
}
fn default_max_entries() -> u64 {
    100_000
}
fn default_memory_budget() -> u64 {
    256 * 1024 * 1024
}

impl Config {
    /// Defaults for a repository whose home directory is `repo_home`.
    pub fn new(fqrn: &str, storage: &Path, repo_home: &Path) -> Config {
        Config {
            fqrn: fqrn.to_string(),
            storage: storage.to_path_buf(),
            keys_dir: repo_home.join("keys"),
            keys_first: None,
            ttl: default_ttl(),
            whitelist_days: default_whitelist_days(),
            chunking: Chunking::default(),
            max_catalog_entries: default_max_entries(),
            gc: false,
            memory_budget: default_memory_budget(),
            auto_gc_seconds: None,
            auto_push: None,
        }
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = fs::read(path).map_err(|e| Error::io_path(path, e))?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::Invalid(format!("{}: invalid config: {e}", path.display())))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Invalid(format!("{}: cannot serialize: {e}", path.display())))?;
        text.push(b'\n');
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, &text).map_err(|e| Error::io_path(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io_path(path, e))
    }

    /// Path of the master public key clients must trust.
    pub fn public_key_path(&self) -> PathBuf {
        let name = format!("{}.pub", self.fqrn);
        let found = self
            .key_dirs()
            .into_iter()
            .map(|d| d.join(&name))
            .find(|p| p.exists());
        found.unwrap_or_else(|| self.keys_dir.join(name))
    }

    /// Refuses a keys directory inside (or equal to) the served storage directory.
    pub fn check_keys_outside_storage(&self) -> Result<()> {
        let storage = resolve(&self.storage)?;
        for dir in self.key_dirs() {
            if resolve(dir)?.starts_with(&storage) {
                return Err(Error::Invalid(format!(
                    "keys directory {} is inside the storage directory {}: private keys would be published",
                    dir.display(),
                    self.storage.display()
                )));
            }
        }
        Ok(())
    }

    /// Where key files are looked for, in order: `keys_first` (if given), then `keys_dir`.
    pub fn key_dirs(&self) -> Vec<&Path> {
        let first = self.keys_first.as_deref();
        first.into_iter().chain([self.keys_dir.as_path()]).collect()
    }

    /// `keys_dir`, or both directories when `keys_first` is given, for messages.
    pub fn describe_key_dirs(&self) -> String {
        let dirs: Vec<String> = self
            .key_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        dirs.join(" or ")
    }
}

/// Absolute, symlink-resolved form of `path`, resolving the longest existing prefix only
/// (the directory may not exist yet); `..` in the input is removed lexically first.
fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(|e| Error::io_path(path, e))?;
    let mut existing = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                existing.pop();
            }
            Component::CurDir => {}
            other => existing.push(other),
        }
    }
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(name) => {
                rest.push(name.to_os_string());
                existing.pop();
            }
            None => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .map_err(|e| Error::io_path(&existing, e))?;
    for part in rest.into_iter().rev() {
        out.push(part);
    }
    Ok(out)
}

/// Locations inside one repository home `<home>/<fqrn>/`.
#[derive(Clone, Debug)]
pub struct RepoHome {
    dir: PathBuf,
}

impl RepoHome {
    pub fn new(home: &Path, fqrn: &str) -> RepoHome {
        RepoHome {
            dir: home.join(fqrn),
        }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// When garbage was last collected (unix seconds, as text).
    pub fn last_gc_path(&self) -> PathBuf {
        self.state_dir().join("last_gc")
    }
    pub fn content_db_path(&self) -> PathBuf {
        self.state_dir().join("content.db")
    }
    /// The stat cache of `publish` (see [`crate::stat_cache`]).
    pub fn stat_db_path(&self) -> PathBuf {
        self.state_dir().join("stat.db")
    }
    /// The layer memo (see [`crate::layer_memo`]).
    pub fn layer_db_path(&self) -> PathBuf {
        self.state_dir().join("layers.db")
    }
}

/// A fully qualified repository name: has a dot, only `[a-z0-9.-]`, no empty labels.
pub fn validate_fqrn(fqrn: &str) -> Result<()> {
    let ok_chars = fqrn
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ok_shape =
        fqrn.contains('.') && fqrn.split('.').all(|l| !l.is_empty()) && fqrn.len() <= 253;
    if ok_chars && ok_shape {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid repository name {fqrn:?}: expected a dotted name of [a-z0-9.-], e.g. test.example.org"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqrn_rules() {
        assert!(validate_fqrn("test.example.org").is_ok());
        assert!(validate_fqrn("a-1.b").is_ok());
        for bad in ["nodot", "Upper.case", "a..b", ".a", "a/b.c", "a b.c", ""] {
            assert!(validate_fqrn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_round_trip_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::new(
            "t.example.org",
            &dir.path().join("srv"),
            &dir.path().join("home"),
        );
        let p = dir.path().join("config.json");
        c.save(&p).unwrap();
        assert_eq!(Config::load(&p).unwrap(), c);
        let minimal = r#"{"fqrn":"a.b","storage":"/s","keys_dir":"/k"}"#;
        std::fs::write(&p, minimal).unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(
            (c.ttl, c.whitelist_days, c.max_catalog_entries),
            (240, 30, 100_000)
        );
        assert_eq!(c.chunking.avg, 8 * 1024 * 1024);
        assert_eq!(c.memory_budget, 256 * 1024 * 1024);
    }

    #[test]
    fn keys_inside_storage_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::new("t.example.org", &dir.path().join("srv"), dir.path());
        c.keys_dir = dir.path().join("srv/../srv/keys");
        assert!(c.check_keys_outside_storage().is_err());
        c.keys_dir = dir.path().join("keys");
        assert!(c.check_keys_outside_storage().is_ok());
    }
}
