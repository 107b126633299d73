//! `HttpStore`: read-only access to a repository served over HTTP(S), for `check --storage URL`.

use crate::error::{Error, Result};
use crate::store::ObjectStore;
use catalog_writer::hash::{ContentHash, Suffix};
use std::io;
use std::time::Duration;

/// Objects fetched from `<base>/data/XX/…`, root files from `<base>/<name>`.
pub struct HttpStore {
    base: String,
    client: reqwest::blocking::Client,
}

impl HttpStore {
    /// `base` is the repository URL, e.g. `http://127.0.0.1:8080/cvmfs/test.example.org`.
    pub fn new(base: &str) -> Result<HttpStore> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Invalid(format!("{base}: not an http(s):// URL")));
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Error::Invalid(format!("{base}: cannot build HTTP client: {e}")))?;
        Ok(HttpStore {
            base: base.trim_end_matches('/').to_string(),
            client,
        })
    }

    fn url(&self, rel: &str) -> String {
        format!("{}/{}", self.base, rel)
    }

    /// GETs `rel`; `Ok(None)` on 404.
    fn fetch(&self, rel: &str) -> io::Result<Option<Vec<u8>>> {
        let url = self.url(rel);
        let resp = self.client.get(&url).send().map_err(|e| net_err(&url, e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(io::Error::other(format!("{url}: HTTP {status}")));
        }
        let body = resp.bytes().map_err(|e| net_err(&url, e))?;
        Ok(Some(body.to_vec()))
    }
}

fn net_err(url: &str, e: reqwest::Error) -> io::Error {
    io::Error::other(format!("{url}: {e}"))
}

fn read_only(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{what}: HTTP store is read-only"),
    )
}

impl ObjectStore for HttpStore {
    fn contains(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<bool> {
        let url = self.url(&hash.object_path(suffix));
        let resp = self
            .client
            .head(&url)
            .send()
            .map_err(|e| net_err(&url, e))?;
        let status = resp.status();
        if status.is_success() {
            Ok(true)
        } else if status == reqwest::StatusCode::NOT_FOUND {
            Ok(false)
        } else {
            Err(io::Error::other(format!("{url}: HTTP {status}")))
        }
    }

    fn put(&self, hash: &ContentHash, suffix: Suffix, _bytes: &[u8]) -> io::Result<()> {
        Err(read_only(&self.url(&hash.object_path(suffix))))
    }

    fn get(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<Vec<u8>> {
        let rel = hash.object_path(suffix);
        self.fetch(&rel)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: HTTP 404", self.url(&rel)),
            )
        })
    }

    fn put_root_file(&self, name: &str, _bytes: &[u8]) -> io::Result<()> {
        Err(read_only(&self.url(name)))
    }

    fn get_root_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.fetch(name)
    }

    fn describe(&self) -> String {
        self.base.clone()
    }
}
