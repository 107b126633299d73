//! `HttpStore`: read-only access to a repository served over HTTP(S), for `check --storage URL`.

use crate::error::{Error, Result};
use crate::store::{read_at_most, root_files, too_large, ObjectStore};
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

    /// GETs `rel`, a body of at most `limit` bytes; `Ok(None)` on 404. A longer body (as
    /// announced, or as sent) is an error, read no further than one byte past the limit.
    fn fetch(&self, rel: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let url = self.url(rel);
        let resp = self.client.get(&url).send().map_err(|e| net_err(&url, e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(io::Error::other(format!("{url}: HTTP {status}")));
        }
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(too_large(&url, limit));
        }
        read_at_most(resp, limit, &url).map(Some)
    }

    /// GETs object `rel`; a 404 is a `NotFound` error.
    fn fetch_object(&self, rel: &str, limit: u64) -> io::Result<Vec<u8>> {
        self.fetch(rel, limit)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: HTTP 404", self.url(rel)),
            )
        })
    }
}

/// Most bytes of an object fetched without a size from its reference: the largest catalog
/// the catalog reader inflates. Readers that know the size ask for less
/// ([`ObjectStore::get_at_most`]).
const MAX_OBJECT_BYTES: u64 = 4 << 30;

/// `url`: the error with its causes ("error following redirect: too many redirects"), the URL
/// once.
fn net_err(url: &str, e: reqwest::Error) -> io::Error {
    io::Error::other(format!(
        "{url}: {}",
        crate::error::one_line(&e.without_url())
    ))
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
        self.fetch_object(&hash.object_path(suffix), MAX_OBJECT_BYTES)
    }

    fn get_at_most(&self, hash: &ContentHash, suffix: Suffix, limit: u64) -> io::Result<Vec<u8>> {
        self.fetch_object(&hash.object_path(suffix), limit)
    }

    fn put_root_file(&self, name: &str, _bytes: &[u8]) -> io::Result<()> {
        Err(read_only(&self.url(name)))
    }

    fn get_root_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.fetch(name, root_files::max_bytes(name))
    }

    fn describe(&self) -> String {
        self.base.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// What the test server answers to a GET.
    #[derive(Clone, Copy)]
    enum Body {
        /// Chunks of `A` until the client hangs up.
        Endless,
        /// A `Content-Length` this long, but no body.
        Announced(u64),
        /// These bytes.
        Exactly(&'static [u8]),
    }

    /// Serves `body` to `requests` GETs, one connection each, on loopback.
    fn serve(body: Body, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/repo", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming().take(requests) {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = answer(&mut conn, body);
            }
        });
        base
    }

    fn answer(conn: &mut impl Write, body: Body) -> io::Result<()> {
        match body {
            Body::Endless => {
                conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")?;
                let chunk = [b'A'; 65536];
                loop {
                    conn.write_all(b"10000\r\n")?;
                    conn.write_all(&chunk)?;
                    conn.write_all(b"\r\n")?;
                }
            }
            Body::Announced(n) => {
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {n}\r\n\r\n"
                )
            }
            Body::Exactly(b) => {
                // One connection per request: without `Connection: close` the client may
                // send the next request on this connection just as the server drops it.
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )?;
                conn.write_all(b)
            }
        }
    }

    #[test]
    fn an_endless_root_file_stops_at_the_limit() {
        let base = serve(Body::Endless, 1);
        let store = HttpStore::new(&base).unwrap();
        let msg = store
            .get_root_file(root_files::MANIFEST)
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&format!("{base}/.cvmfspublished")), "{msg}");
        assert!(
            msg.contains(&format!("limit of {}", root_files::MAX_SMALL)),
            "{msg}"
        );
    }

    #[test]
    fn an_announced_length_over_the_limit_is_refused_unread() {
        let base = serve(Body::Announced(100 << 30), 1);
        let store = HttpStore::new(&base).unwrap();
        let msg = store
            .get_root_file(root_files::WHITELIST)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(".cvmfswhitelist") && msg.contains("limit of"),
            "{msg}"
        );
    }

    #[test]
    fn objects_are_read_up_to_the_callers_limit() {
        let base = serve(Body::Exactly(b"0123456789"), 2);
        let store = HttpStore::new(&base).unwrap();
        let h = ContentHash::of(b"x");
        assert_eq!(
            store.get_at_most(&h, Suffix::Catalog, 10).unwrap(),
            b"0123456789"
        );
        let msg = store
            .get_at_most(&h, Suffix::Catalog, 9)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&h.object_path(Suffix::Catalog)) && msg.contains("limit of 9"),
            "{msg}"
        );
    }
}
