//! The HTTP client under `push`'s S3 client: object_store's own reqwest client, with bounds on
//! what one reply may make it hold and with what a request sent scrubbed from error replies.
//!
//! object_store reads an error reply whole to quote it, and a listing page whole to parse it:
//! an endpoint sending an endless body made `push` hold gigabytes. And an endpoint (or a proxy)
//! that echoes the request's headers in its error page had the session token printed.

use async_trait::async_trait;
use futures_util::StreamExt;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;
use rustls::pki_types::CertificateDer;

/// What an error reply may bring: enough for S3's XML error and its message.
pub(crate) const MAX_ERROR_BODY: usize = 64 << 10;
/// What a listing page may bring: S3 lists at most 1 000 keys (about 300 KB) per page.
pub(crate) const MAX_LISTING_PAGE: usize = 16 << 20;

/// object_store's own limits, which `push` keeps: a request within 30 s, a connection
/// within 5 s.
pub(crate) const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
pub(crate) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects object_store's reqwest client wrapped in [`BoundedService`], or, with
/// `SSL_CERT_FILE` or `SSL_CERT_DIR` set, a reqwest client of ours with the same settings
/// whose TLS also takes a certificate of that file or directory as the endpoint's own
/// ([`crate::tls`]: a self-signed CA:TRUE certificate, as MinIO's `certgen -ca` and `openssl
/// req -x509` make).
#[derive(Debug, Default)]
pub(crate) struct BoundedConnector {
    pinned: Option<PinnedTls>,
}

#[derive(Debug)]
struct PinnedTls {
    config: rustls::ClientConfig,
    /// What object_store's client would send with every request (its default headers).
    headers: http::HeaderMap,
}

impl BoundedConnector {
    /// A connector for clients that send `headers` with every request.
    pub(crate) fn new(headers: http::HeaderMap) -> Result<Self, String> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let (file, dirs) = (var("SSL_CERT_FILE"), var("SSL_CERT_DIR"));
        if file.is_none() && dirs.is_none() {
            return Ok(Self::default());
        }
        let mut certs = Vec::new();
        if let Some(file) = file {
            let file = std::path::PathBuf::from(file);
            let found = crate::tls::certificates_in(&file)
                .map_err(|e| format!("SSL_CERT_FILE={}: {e}", file.display()))?;
            certs.extend(found);
        }
        // As OpenSSL reads it: directories separated by ':'.
        for dir in dirs.iter().flat_map(std::env::split_paths) {
            match certificates_in_dir(&dir) {
                Ok(found) => certs.extend(found),
                // OpenSSL passes over a directory that is not there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("SSL_CERT_DIR: {}: {e}", dir.display())),
            }
        }
        // The same certificate under its name and its hash link counts once.
        let mut seen = std::collections::HashSet::new();
        certs.retain(|c| seen.insert(c.as_ref().to_vec()));
        let config = crate::tls::client_config(certs, None, false)
            .map_err(|e| format!("SSL_CERT_FILE/SSL_CERT_DIR: TLS settings: {e}"))?;
        Ok(Self {
            pinned: Some(PinnedTls { config, headers }),
        })
    }
}

/// The certificates of the PEM files in `dir` (such as `c_rehash` makes: `HASH.0` links
/// beside the files). Files without a certificate (CRLs, notes) are passed over, as OpenSSL
/// passes over the names it does not look up.
fn certificates_in_dir(dir: &std::path::Path) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let mut certs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            if let Ok(found) = crate::tls::certificates_in(&path) {
                certs.extend(found);
            }
        }
    }
    Ok(certs)
}

/// Resolves a host name as the system does and puts its addresses in random order, as
/// object_store's own client does, so that the pushes of many hosts spread over the
/// servers a name has.
struct ShuffledDns;

impl reqwest::dns::Resolve for ShuffledDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = tokio::task::spawn_blocking(move || {
                use std::net::ToSocketAddrs;
                (host.as_str(), 0).to_socket_addrs().map(Vec::from_iter)
            })
            .await;
            let mut addrs = found.map_err(Box::new)?.map_err(Box::new)?;
            shuffle(&mut addrs, random_seed());
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A seed from std's per-process random keys (each `RandomState` differs).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Fisher-Yates over `items`, drawing from a xorshift generator seeded with `seed`.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = usize::try_from(x % (i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}

impl PinnedTls {
    /// A reqwest client as object_store builds one for `options` (user agent, headers,
    /// timeouts, no transparent decompression, HTTPS only unless allowed), with this TLS.
    fn client(&self, options: &ClientOptions) -> object_store::Result<reqwest::Client> {
        let allow_http = options
            .get_config_value(&object_store::ClientConfigKey::AllowHttp)
            .is_some_and(|v| v == "true");
        let shuffled = options
            .get_config_value(&object_store::ClientConfigKey::RandomizeAddresses)
            .is_none_or(|v| v != "false");
        let mut builder = reqwest::Client::builder();
        if shuffled {
            builder = builder.dns_resolver(std::sync::Arc::new(ShuffledDns));
        }
        builder
            .user_agent(concat!("cvmfs-oci/", env!("CARGO_PKG_VERSION")))
            .default_headers(self.headers.clone())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // A decompressed body would not match its Content-Length (as object_store says).
            .no_gzip()
            .no_brotli()
            .no_zstd()
            .no_deflate()
            .https_only(!allow_http)
            .tls_backend_preconfigured(self.config.clone())
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })
    }
}

impl HttpConnector for BoundedConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = match &self.pinned {
            None => ReqwestConnector::default().connect(options)?,
            Some(pinned) => HttpClient::new(pinned.client(options)?),
        };
        Ok(HttpClient::new(BoundedService { inner }))
    }
}

#[derive(Debug)]
struct BoundedService {
    inner: HttpClient,
}

#[async_trait]
impl HttpService for BoundedService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let sent = sent_secrets(&req);
        let listing = req.method() == http::Method::GET
            && req.uri().query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p == "list-type=2" || p == "uploads" || p.starts_with("uploads="))
            });
        let resp = self.inner.execute(req).await.map_err(final_if_refused)?;
        if !resp.status().is_success() {
            let (mut parts, body) = resp.into_parts();
            // Cut short, not refused: the first part of an error page says what went wrong.
            let (head, _) = read_at_most(body, MAX_ERROR_BODY).await?;
            parts.headers.remove(http::header::CONTENT_LENGTH);
            let body = HttpResponseBody::from(scrub(head, &sent));
            return Ok(HttpResponse::from_parts(parts, body));
        }
        if listing {
            let (mut parts, body) = resp.into_parts();
            let (page, whole) = read_at_most(body, MAX_LISTING_PAGE).await?;
            if !whole {
                return Err(HttpError::new(
                    HttpErrorKind::Decode,
                    std::io::Error::other(format!(
                        "a listing page of more than {} MiB (S3 pages hold at most 1000 keys)",
                        MAX_LISTING_PAGE >> 20
                    )),
                ));
            }
            parts.headers.remove(http::header::CONTENT_LENGTH);
            return Ok(HttpResponse::from_parts(
                parts,
                HttpResponseBody::from(page),
            ));
        }
        Ok(resp)
    }
}

/// A TLS refusal of the endpoint's certificate as a final error: object_store files it as a
/// connection error and would try again five times, to be refused each time.
fn final_if_refused(e: HttpError) -> HttpError {
    let mut next: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = next {
        if err.to_string().contains("invalid peer certificate") {
            return HttpError::new(HttpErrorKind::Unknown, Refused(e));
        }
        next = err.source();
    }
    e
}

/// An [`HttpError`] rewrapped by [`final_if_refused`]; it reads as the error it wraps did.
#[derive(Debug)]
struct Refused(HttpError);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::error::Error::source(&self.0) {
            Some(inner) => write!(f, "{inner}"),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0).and_then(|inner| inner.source())
    }
}

/// The first `max` bytes of `body`, and whether that was all of it.
pub(crate) async fn read_at_most(
    body: HttpResponseBody,
    max: usize,
) -> Result<(Vec<u8>, bool), HttpError> {
    let mut stream = body.bytes_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = max - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

/// Values a request carried that a reply must not repeat: the session token, and the
/// `Authorization` header with its parts (access key id, signature). The secret key itself
/// is never sent.
fn sent_secrets(req: &HttpRequest) -> Vec<Vec<u8>> {
    let mut secrets = Vec::new();
    for name in ["x-amz-security-token", "authorization"] {
        for value in req.headers().get_all(name) {
            let value = value.as_bytes();
            secrets.push(value.to_vec());
            // `AWS4-HMAC-SHA256 Credential=AKID/date/region/s3/aws4_request, ..., Signature=…`
            for part in value.split(|&b| b == b' ' || b == b',') {
                if let Some(eq) = part.iter().position(|&b| b == b'=') {
                    let v = &part[eq + 1..];
                    let v = v.split(|&b| b == b'/').next().unwrap_or(v);
                    secrets.push(v.to_vec());
                }
            }
        }
    }
    secrets.retain(|s| s.len() >= 8);
    // Longest first: a header's value is replaced whole before its parts.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

/// `body` with every secret, as sent or percent-encoded, replaced by `[redacted]`.
fn scrub(body: Vec<u8>, secrets: &[Vec<u8>]) -> Vec<u8> {
    let mut body = body;
    for secret in secrets {
        for form in [secret.clone(), percent_encoded(secret)] {
            body = replace_all(&body, &form, b"[redacted]");
        }
    }
    body
}

/// `s` with every byte but the unreserved ones (RFC 3986: letters, digits, `-_.~`)
/// percent-encoded, as query strings and forms carry it.
pub(crate) fn percent_encoded(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3);
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_request_sent_is_scrubbed_in_every_form() {
        let req = http::Request::builder()
            .header(
                "x-amz-security-token",
                "FwoGZXIvYXdzEBYaDH+token/with=signs",
            )
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE123/20261128/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=0123456789abcdef0123",
            )
            .body(object_store::client::HttpRequestBody::empty())
            .unwrap();
        let secrets = sent_secrets(&req);
        let page = b"<Error><Token>FwoGZXIvYXdzEBYaDH+token/with=signs</Token>\
            <Echo>FwoGZXIvYXdzEBYaDH%2Btoken%2Fwith%3Dsigns</Echo>\
            <Key>AKIDEXAMPLE123</Key><Sig>0123456789abcdef0123</Sig></Error>";
        let out = String::from_utf8(scrub(page.to_vec(), &secrets)).unwrap();
        assert_eq!(
            out,
            "<Error><Token>[redacted]</Token><Echo>[redacted]</Echo>\
             <Key>[redacted]</Key><Sig>[redacted]</Sig></Error>"
        );
    }

    #[test]
    fn bodies_are_read_up_to_their_bound() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = || HttpResponseBody::from(vec![7u8; 1000]);
        let (head, whole) = rt.block_on(read_at_most(body(), 10)).unwrap();
        assert_eq!((head.len(), whole), (10, false));
        let (all, whole) = rt.block_on(read_at_most(body(), 1000)).unwrap();
        assert_eq!((all.len(), whole), (1000, true));
    }

    #[test]
    fn addresses_come_in_random_order() {
        let base: Vec<u32> = (0..6).collect();
        let mut orders = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut v = base.clone();
            shuffle(&mut v, random_seed());
            let mut sorted = v.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, base, "a permutation");
            orders.insert(v);
        }
        // 720 orders: fifty draws that all fell on a handful would be no shuffle.
        assert!(orders.len() > 20, "{orders:?}");

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let addrs: Vec<_> = rt
            .block_on(reqwest::dns::Resolve::resolve(&ShuffledDns, name))
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        assert!(!addrs.is_empty());
    }

    #[test]
    fn a_certificate_directory_gives_the_certificates_of_its_pem_files() {
        let ca = fixtures::tls::TestCa::new().unwrap();
        let (own, _key) = ca.self_signed_certificate("own", "IP:127.0.0.1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&own, dir.path().join("own.pem")).unwrap();
        // As c_rehash lays it out: a hash link beside the file, and other files passed over.
        std::os::unix::fs::symlink("own.pem", dir.path().join("0a1b2c3d.0")).unwrap();
        std::fs::write(dir.path().join("README"), "not a certificate\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let certs = certificates_in_dir(dir.path()).unwrap();
        let expected = crate::tls::certificates_in(&own).unwrap();
        assert_eq!(certs, [expected[0].clone(), expected[0].clone()]);
        let e = certificates_in_dir(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
