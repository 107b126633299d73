//! Copies a repository's published revision from its local storage to an S3 bucket (AWS or
//! an S3-compatible store), from where clients read it over HTTP like any stratum 0.
//!
//! The bucket is updated in publish order, so a client (or a replica) reading it at any moment
//! sees the last complete revision: the objects the bucket lacks (catalogs after everything
//! else, as a catalog references the rest) → `.cvmfswhitelist`, `.cvmfsreflog`,
//! `.cvmfs_status.json` → `.cvmfspublished` last. Each S3 put is atomic, and the manifest's is
//! conditional on the manifest found at the start (its ETag, or its absence), so two pushers
//! cannot interleave; a bucket ahead of the local storage (a higher revision) or holding
//! another repository is refused. A push that stops half-way leaves the bucket's manifest as
//! it was; the next one lists the bucket and uploads only what is missing. With `delete`, objects the bucket holds and the
//! local storage no longer does (after `gc`) are deleted once the new manifest is in place.
//!
//! [`Repository::set_auto_push`] makes a target the repository's own (kept in `config.json`,
//! without credentials); [`Repository::auto_push`] then pushes there after each publish.
//!
//! The home's lock and the storage's collection lock (shared) are held: no local publish or
//! collection changes the storage during a push. Credentials come from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, ...)
//! and are never printed.
//!
//! ```no_run
//! use publisher::{PushOptions, Repository, S3Target};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let repo = Repository::open("/var/lib/cvmfs-oci".as_ref(), "sw.example.org")?;
//! let target = S3Target::parse("s3://cvmfs-bucket/sw.example.org")?;
//! let report = repo.push(&PushOptions::new(target))?;
//! println!("revision {}: {} objects uploaded", report.revision, report.objects_uploaded);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::local::{parse_object_name, LocalStore};
use crate::repo::{load_keys, lock, storage_lock, Repository, StorageUse};
use crate::store::{root_files, ObjectStore};
use crate::txn::{fault_point, verified_manifest};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as S3Path;
use object_store::{
    ClientOptions, ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion, WriteMultipart,
};
use std::collections::HashSet;
use std::path::PathBuf;

/// Where to push: `s3://BUCKET[/PREFIX]` plus how to reach the store. Kept in `config.json`
/// as the repository's push target ([`Config::auto_push`](crate::Config::auto_push)); no
/// credentials are part of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct S3Target {
    pub bucket: String,
    /// Key prefix of the repository inside the bucket ("" = the bucket's root).
    pub prefix: String,
    /// S3-compatible endpoint (e.g. `http://127.0.0.1:9000`); `None` = AWS.
    pub endpoint: Option<String>,
    /// `None`: from `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint (TLS is required otherwise).
    pub allow_http: bool,
    /// Upload with the canned ACL `public-read` (for buckets that still use ACLs; most serve
    /// a repository through a bucket policy instead).
    pub public_read: bool,
}

impl S3Target {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> Result<S3Target> {
        let invalid =
            |why: &str| Error::Invalid(format!("{url}: {why} (expected s3://BUCKET[/PREFIX])"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("not an s3:// address"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(invalid("'.' and '..' are not allowed in the prefix"));
        }
        Ok(S3Target {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            ..S3Target::default()
        })
    }

    /// `s3://BUCKET[/PREFIX]`.
    pub fn describe(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }

    fn key(&self, name: &str) -> S3Path {
        match self.prefix.as_str() {
            "" => S3Path::from(name),
            p => S3Path::from(format!("{p}/{name}")),
        }
    }

    fn client(&self) -> Result<AmazonS3> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        let mut client = ClientOptions::new().with_allow_http(self.allow_http);
        if self.public_read {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-amz-acl", http::HeaderValue::from_static("public-read"));
            client = client.with_default_headers(headers);
        }
        // Transient errors are retried, but a wrong endpoint or a dead store should fail
        // within a minute, not the library's three.
        let retry = RetryConfig {
            max_retries: 5,
            retry_timeout: std::time::Duration::from_secs(60),
            ..RetryConfig::default()
        };
        builder
            .with_retry(retry)
            .with_client_options(client)
            .build()
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.describe())))
    }
}

/// What [`Repository::push`] does besides copying.
#[derive(Clone, Debug)]
pub struct PushOptions {
    pub target: S3Target,
    /// Delete the bucket's objects the local storage no longer holds (after the manifest).
    pub delete: bool,
    /// Uploads in flight at once.
    pub jobs: usize,
    /// Wait for a busy lock instead of failing.
    pub wait: bool,
}

impl PushOptions {
    pub fn new(target: S3Target) -> PushOptions {
        PushOptions {
            target,
            delete: false,
            jobs: 16,
            wait: true,
        }
    }
}

/// What a push did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PushReport {
    /// The revision the bucket serves now.
    pub revision: u64,
    /// The revision it served before (`None`: no repository there yet).
    pub remote_revision: Option<u64>,
    pub objects_uploaded: usize,
    pub bytes_uploaded: u64,
    /// Of those, how many went up in parts (large objects).
    pub multipart_uploads: usize,
    /// Objects the bucket already held.
    pub objects_present: usize,
    pub objects_deleted: usize,
    /// Whether `.cvmfspublished` was written (not when the bucket already had this one).
    pub manifest_written: bool,
}

impl Repository {
    /// Makes `target` the repository's push target, to which every publish that makes a
    /// revision is pushed from then on (`None`: no more automatic pushes).
    pub fn set_auto_push(&mut self, target: Option<S3Target>) -> Result<()> {
        let fqrn = self.fqrn().to_string();
        let _lock = lock(&self.home().lock_path(), &fqrn, true)?;
        let mut config = self.config().clone();
        config.auto_push = target;
        config.save(&self.home().config_path())?;
        self.config = config;
        Ok(())
    }

    /// After a publish that made a revision: the push to the repository's push target, if it
    /// has one.
    pub fn auto_push(&self) -> Result<Option<PushReport>> {
        match &self.config().auto_push {
            Some(target) => self.push(&PushOptions::new(target.clone())).map(Some),
            None => Ok(None),
        }
    }

    /// Copies the published revision to an S3 bucket; see the module documentation.
    pub fn push(&self, opts: &PushOptions) -> Result<PushReport> {
        let fqrn = self.fqrn();
        let _lock = lock(&self.home().lock_path(), fqrn, opts.wait)?;
        let store = self.store();
        let _storage = storage_lock(&store, fqrn, StorageUse::Publish, opts.wait)?;
        let keys = load_keys(self.config())?;
        let (manifest, parsed) = verified_manifest(&store, fqrn, &keys)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 client", e))?;
        let budget_mib = (self.config().memory_budget >> 20).clamp(16, u32::MAX as u64) as u32;
        let push = Push {
            target: &opts.target,
            client: opts.target.client()?,
            store: &store,
            buffers: tokio::sync::Semaphore::new(budget_mib as usize),
            budget_mib,
            multipart: Default::default(),
        };
        runtime.block_on(push.run(&manifest, &parsed, opts))
    }
}

/// The manifest a bucket held when the push began.
struct RemoteManifest {
    manifest: signer::Manifest,
    bytes: Vec<u8>,
    /// Its ETag: the manifest is replaced only if it is still this one.
    version: UpdateVersion,
}

struct Push<'a> {
    target: &'a S3Target,
    client: AmazonS3,
    store: &'a LocalStore,
    /// MiB of object bytes in memory at once: the repository's memory budget.
    buffers: tokio::sync::Semaphore,
    budget_mib: u32,
    /// Objects uploaded in parts.
    multipart: std::sync::atomic::AtomicUsize,
}

impl Push<'_> {
    async fn run(
        &self,
        manifest: &[u8],
        local: &signer::Manifest,
        opts: &PushOptions,
    ) -> Result<PushReport> {
        let remote = self.remote_manifest().await?;
        let mut report = PushReport {
            revision: local.revision,
            remote_revision: remote.as_ref().map(|r| r.manifest.revision),
            ..PushReport::default()
        };
        if let Some(remote) = &remote {
            self.may_replace(&remote.manifest, local)?;
        }
        let up_to_date = remote.as_ref().is_some_and(|r| r.bytes == manifest);
        if up_to_date && !opts.delete {
            return Ok(report);
        }
        let held = self.remote_objects().await?;
        let local = local_objects(self.store)?;
        let (catalogs, rest): (Vec<_>, Vec<_>) = local
            .iter()
            .filter(|name| !held.contains(*name))
            .partition(|name| name.ends_with('C'));
        report.objects_present = local.len() - catalogs.len() - rest.len();
        for batch in [rest, catalogs] {
            let (n, bytes) = self.upload_all(&batch, opts.jobs).await?;
            report.objects_uploaded += n;
            report.bytes_uploaded += bytes;
        }
        report.multipart_uploads = self.multipart.load(std::sync::atomic::Ordering::Relaxed);
        if !up_to_date {
            for name in [
                root_files::WHITELIST,
                root_files::REFLOG,
                root_files::STATUS,
            ] {
                if let Some(bytes) = self.root_file(name)? {
                    self.put(name, bytes, PutMode::Overwrite).await?;
                }
            }
            fault_point("push-before-manifest");
            let mode = match remote {
                Some(r) => PutMode::Update(r.version),
                None => PutMode::Create,
            };
            self.put(root_files::MANIFEST, manifest.to_vec(), mode)
                .await?;
            report.manifest_written = true;
        }
        if opts.delete {
            let local: HashSet<&String> = local.iter().collect();
            let gone: Vec<&String> = held.iter().filter(|n| !local.contains(n)).collect();
            report.objects_deleted = self.delete_all(&gone, opts.jobs).await?;
        }
        Ok(report)
    }

    /// Refuses to replace another repository's manifest, or a newer revision of this one.
    fn may_replace(&self, remote: &signer::Manifest, local: &signer::Manifest) -> Result<()> {
        let there = self.target.describe();
        if !remote.fqrn.is_empty() && remote.fqrn != local.fqrn {
            return Err(Error::Invalid(format!(
                "{there}: holds repository {}, not {}; refusing to replace it",
                remote.fqrn, local.fqrn
            )));
        }
        if remote.revision > local.revision {
            return Err(Error::Invalid(format!(
                "{there}: serves revision {}, newer than the local revision {}; refusing to \
                 go back",
                remote.revision, local.revision
            )));
        }
        Ok(())
    }

    /// The bucket's `.cvmfspublished`, if any.
    async fn remote_manifest(&self) -> Result<Option<RemoteManifest>> {
        let key = self.target.key(root_files::MANIFEST);
        let got = match self.client.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.remote_error(root_files::MANIFEST, e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = self.manifest_body(got).await?;
        let parsed = signer::Manifest::parse(&bytes).map_err(|e| {
            Error::corrupt(
                format!("{}/{}", self.target.describe(), root_files::MANIFEST),
                e.to_string(),
            )
        })?;
        Ok(Some(RemoteManifest {
            manifest: parsed.manifest,
            bytes,
            version,
        }))
    }

    /// The body of the bucket's manifest, refused (unread, or read no further than the
    /// limit) when it is longer than a root file may be.
    async fn manifest_body(&self, got: object_store::GetResult) -> Result<Vec<u8>> {
        let limit = root_files::max_bytes(root_files::MANIFEST);
        let too_large = || Error::Remote {
            what: format!("{}/{}", self.target.describe(), root_files::MANIFEST),
            reason: format!("longer than the limit of {limit} bytes; refusing to read it"),
        };
        if got.meta.size > limit {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut chunks = got.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| self.remote_error(root_files::MANIFEST, e))?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Names (`data/XX/…`) of the objects the bucket holds under the repository's prefix.
    async fn remote_objects(&self) -> Result<HashSet<String>> {
        let prefix = self.target.key("data");
        let strip = match self.target.prefix.as_str() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        self.client
            .list(Some(&prefix))
            .map_err(|e| self.remote_error("data/", e))
            .try_filter_map(|meta| {
                let key = meta.location.as_ref();
                let name = key.strip_prefix(strip.as_str()).unwrap_or(key);
                std::future::ready(Ok(is_object_key(name).then(|| name.to_string())))
            })
            .try_collect()
            .await
    }

    /// Uploads the named local objects, `jobs` at a time; returns how many and their bytes.
    async fn upload_all(&self, names: &[&String], jobs: usize) -> Result<(usize, u64)> {
        futures_util::stream::iter(names.iter().map(|name| self.upload(name)))
            .buffer_unordered(jobs.max(1))
            .try_fold((0, 0), |(n, total), bytes| async move {
                Ok((n + 1, total + bytes))
            })
            .await
    }

    async fn upload(&self, name: &str) -> Result<u64> {
        let path = self.store.root().join(name);
        let size = tokio::fs::metadata(&path)
            .await
            .map_err(|e| Error::io_path(&path, e))?
            .len();
        // Held until the put is done: the object whole, or what a multipart upload holds (the
        // parts in flight, the one being filled, and the read buffer).
        let held = size.min(MULTIPART_PART as u64 * (MULTIPART_IN_FLIGHT as u64 + 2));
        let mib = u32::try_from(held.div_ceil(1 << 20)).unwrap_or(u32::MAX);
        let _buffer = self
            .buffers
            .acquire_many(mib.clamp(1, self.budget_mib))
            .await
            .map_err(|e| Error::io(name.to_string(), std::io::Error::other(e)))?;
        if size >= MULTIPART_FROM {
            self.upload_in_parts(name, &path).await?;
            self.multipart
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(size);
        }
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| Error::io_path(&path, e))?;
        let len = bytes.len() as u64;
        // Same name, same bytes: an object someone stored meanwhile may be overwritten.
        self.put(name, bytes, PutMode::Overwrite).await?;
        Ok(len)
    }

    /// A large object (a single PUT takes at most 5 GB) as a multipart upload, read part by
    /// part: at most [`MULTIPART_IN_FLIGHT`] parts, the one being filled and the read buffer
    /// are in memory.
    async fn upload_in_parts(&self, name: &str, path: &std::path::Path) -> Result<()> {
        let key = self.target.key(name);
        let remote = |e| self.remote_error(name, e);
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io_path(path, e))?;
        let upload = self.client.put_multipart(&key).await.map_err(remote)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
        let mut part = vec![0u8; MULTIPART_PART];
        loop {
            let n = match read_full(&mut file, &mut part).await {
                Ok(n) => n,
                Err(e) => {
                    // Best effort: S3 would otherwise keep the parts until a lifecycle rule.
                    let _ = writer.abort().await;
                    return Err(Error::io_path(path, e));
                }
            };
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(MULTIPART_IN_FLIGHT)
                .await
                .map_err(remote)?;
            writer.write(&part[..n]);
        }
        writer.finish().await.map_err(remote)?;
        Ok(())
    }

    async fn delete_all(&self, names: &[&String], jobs: usize) -> Result<usize> {
        futures_util::stream::iter(names.iter().map(|name| async move {
            match self.client.delete(&self.target.key(name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.remote_error(name, e)),
            }
        }))
        .buffer_unordered(jobs.max(1))
        .try_fold(0, |n, ()| async move { Ok(n + 1) })
        .await
    }

    async fn put(&self, name: &str, bytes: Vec<u8>, mode: PutMode) -> Result<()> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let key = self.target.key(name);
        match self
            .client
            .put_opts(&key, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(Error::Conflict {
                path: PathBuf::from(format!("{}/{name}", self.target.describe())),
            }),
            Err(e) => Err(self.remote_error(name, e)),
        }
    }

    fn root_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.store
            .get_root_file(name)
            .map_err(|e| Error::io(format!("{}/{name}", self.store.describe()), e))
    }

    fn remote_error(&self, name: &str, e: object_store::Error) -> Error {
        // One line: S3 errors may quote a multi-line XML response.
        let reason = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Error::Remote {
            what: format!("{}/{name}", self.target.describe()),
            reason,
        }
    }
}

/// Objects from this size on go up as multipart uploads (one PUT takes at most 5 GB; parts
/// also retry alone).
const MULTIPART_FROM: u64 = 64 << 20;
/// Part size of a multipart upload.
const MULTIPART_PART: usize = 16 << 20;
/// Parts of one multipart upload in flight at once.
const MULTIPART_IN_FLIGHT: usize = 2;

/// Fills `buf` from `file` unless the file ends first; returns the bytes read.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// `data/XX/<38 hex>[suffix]`: an object file name, as [`local_objects`] lists them.
fn is_object_key(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("data/") else {
        return false;
    };
    let Some((dir, file)) = rest.split_once('/') else {
        return false;
    };
    let Ok(prefix) = u8::from_str_radix(dir, 16) else {
        return false;
    };
    dir.len() == 2 && parse_object_name(prefix, std::ffi::OsStr::new(file)).is_some()
}

/// Every object file of the local storage, as `data/XX/<name>`.
fn local_objects(store: &LocalStore) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for prefix in 0..=255u8 {
        for (entry, _, _) in store.object_files(prefix)? {
            // An object name is ASCII: `object_files` parsed it.
            if let Some(file) = entry.file_name().to_str() {
                names.push(format!("data/{prefix:02x}/{file}"));
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_name_keys() {
        let t = S3Target::parse("s3://bucket/a/b/").unwrap();
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("bucket", "a/b"));
        assert_eq!(t.key(".cvmfspublished").as_ref(), "a/b/.cvmfspublished");
        let t = S3Target::parse("s3://bucket").unwrap();
        assert_eq!(t.key("data/ab/cd").as_ref(), "data/ab/cd");
        for bad in ["http://x/y", "s3://", "s3:///p", "s3://b/../c"] {
            assert!(S3Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_object_names_are_object_keys() {
        let hex = "0123456789abcdef0123456789abcdef012345";
        assert!(is_object_key(&format!("data/ab/{hex}")));
        assert!(is_object_key(&format!("data/ab/{hex}C")));
        assert!(!is_object_key(&format!("data/ab/{hex}Q")));
        assert!(!is_object_key(&format!("data/txn/{hex}")));
        assert!(!is_object_key(&format!("data/ab/{}", &hex[..30])));
        assert!(!is_object_key(".cvmfspublished"));
    }
}
