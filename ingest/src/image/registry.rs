//! A registry client for the distribution API (v2): anonymous, bearer-token and basic auth,
//! retries with backoff (5xx, 429 with `Retry-After`, dropped connections, resumed blob
//! downloads), TLS verified against the system's roots plus any CA files given and the host's
//! `certs.d` CAs, with the host's `certs.d` client certificate if it has one, and for hosts
//! named insecure (as Docker's `insecure-registries`) HTTPS without verification, else plain
//! HTTP; and a cap on concurrent requests per registry.
//! Credentials and tokens go only to the registry's own host (a redirect or a `Link` to
//! another host gets none; a token realm gets credentials over HTTPS or when insecure), a
//! redirect to another host is fetched with that host's TLS settings, and whatever a server
//! says back reaches errors and notices with every secret sent blanked out.
//! Async inside (its own tokio runtime), blocking outside: blob bodies reach the caller
//! through a bounded channel, so memory stays bounded whatever the layer size.

use super::auth::{AuthStore, Redactor, Secret};
use super::digest::{Checked, Digest, VerifyingReader};
use super::error::{Error, Result};
use super::manifest::{PlatformSelection, ACCEPT};
use super::reference::RegistryRef;
use super::source::{
    check_blob, check_config, resolve_document, ImageManifest, ImageSource, ResolvedImage,
};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT as ACCEPT_HEADER, AUTHORIZATION, CONTENT_TYPE, LOCATION, RANGE,
};
use reqwest::{StatusCode, Url};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

mod trusted_tls;

/// Largest manifest, config or listing page read into memory.
const MAX_DOCUMENT: usize = super::local_file::MAX_DOCUMENT as usize;
/// Where podman/skopeo and Docker keep per-registry CAs (`HOST[:PORT]/*.crt`) and client
/// certificates (`HOST[:PORT]/NAME.cert` with `NAME.key`).
pub const SYSTEM_CERTS_DIRS: [&str; 2] = ["/etc/containers/certs.d", "/etc/docker/certs.d"];
/// How long an insecure host has to answer HTTPS before plain HTTP is used instead (a
/// plain-HTTP server that waits for a request line never answers a TLS hello).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Blob chunks buffered between the download task and the reader (each ≤ ~64 KiB).
const CHANNEL_CHUNKS: usize = 16;

/// How the client talks to registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    pub auth: AuthStore,
    /// `host[:port]` reached over HTTPS without certificate verification, or over plain HTTP
    /// when it does not speak HTTPS; every other host needs verified HTTPS.
    pub insecure: Vec<String>,
    /// PEM files of certificate authorities trusted for every registry, besides the system's
    /// (a registry with a private CA).
    pub ca_files: Vec<PathBuf>,
    /// Directories laid out as Docker's and podman's `certs.d`: the `*.crt` files in
    /// `DIR/HOST[:PORT]/` are trusted for that registry only, and a `NAME.cert` with its
    /// `NAME.key` there is the client certificate that registry gets.
    pub certs_dirs: Vec<PathBuf>,
    /// Requests in flight per registry host (blob downloads hold one for their duration).
    pub max_concurrent: usize,
    /// Retries after a 5xx, a 429 or a dropped connection, per request.
    pub max_retries: u32,
    /// First backoff delay; doubled per retry up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; longer requests wait this long.
    pub max_retry_after: Duration,
    pub connect_timeout: Duration,
    /// No bytes for this long ends (and retries) a request: a stalled registry.
    pub read_timeout: Duration,
    /// Longest a document (manifest, index, config, tag list page) may take to arrive: a
    /// registry sending a byte now and then never stalls, and would hold the repository lock
    /// for days.
    pub document_deadline: Duration,
    /// A blob download receiving fewer than `slow_blob_bytes` in `slow_blob_window` is cut
    /// and resumed as a stalled one is, without counting as progress: a registry sending a
    /// byte now and then never stalls.
    pub slow_blob_window: Duration,
    pub slow_blob_bytes: u64,
    /// Told about every retry before its backoff, so a failing or stalled registry shows up
    /// at once rather than when the last retry gives up minutes later.
    pub on_retry: Option<RetryNotices>,
}

/// A callback told about each retry. Notices never hold credentials: URLs carry none, and
/// token URLs are shown without their query.
#[derive(Clone)]
pub struct RetryNotices(Arc<dyn Fn(&Retry) + Send + Sync>);

impl RetryNotices {
    pub fn new(notice: impl Fn(&Retry) + Send + Sync + 'static) -> RetryNotices {
        RetryNotices(Arc::new(notice))
    }
}

/// One retry of a registry request, announced before its backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// One line: `URL: why; retry N of M in S s`.
    pub message: String,
    /// The image the request is for (`host/repository`); `None` for registry-wide endpoints.
    pub image: Option<String>,
    /// What the request fetches (`blobs/sha256:…` or `manifests/TAG`), if it names one.
    pub object: Option<String>,
    /// This retry's number, from 1, and how many retries a request gets.
    pub attempt: u32,
    pub retries: u32,
    pub delay: Duration,
}

impl fmt::Debug for RetryNotices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryNotices")
    }
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            auth: AuthStore::anonymous(),
            insecure: Vec::new(),
            ca_files: Vec::new(),
            certs_dirs: SYSTEM_CERTS_DIRS.iter().map(PathBuf::from).collect(),
            max_concurrent: 4,
            max_retries: 5,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            document_deadline: Duration::from_secs(300),
            slow_blob_window: Duration::from_secs(120),
            slow_blob_bytes: 64 << 10,
            on_retry: None,
        }
    }
}

/// What a failed request reports before the caller adds image/layer context.
struct Failure {
    url: String,
    status: Option<u16>,
    reason: String,
}

impl Failure {
    fn image(self, image: &str) -> Error {
        Error::Registry {
            image: image.to_owned(),
            url: self.url,
            status: self.status,
            reason: self.reason,
        }
    }

    fn layer(self, image: &str, layer: &Digest) -> Error {
        Error::layer(
            image,
            layer.to_string(),
            format!("{}: {}", self.url, self.reason),
        )
    }
}

/// Per-host state: the request cap and the auth learned from challenges.
struct Host {
    permits: Arc<Semaphore>,
    /// Bearer tokens by scope.
    tokens: tokio::sync::Mutex<HashMap<String, Secret>>,
    /// The host answered 401 with a Basic challenge: send credentials up front.
    basic: std::sync::atomic::AtomicBool,
    /// `https` or `http`, decided once for an insecure host.
    scheme: OnceLock<&'static str>,
}

struct Inner {
    http: reqwest::Client,
    /// For insecure hosts without a client certificate: certificates are not verified.
    unverified: Option<reqwest::Client>,
    /// The client of each host: `http` or `unverified`, or one of its own when its `certs.d`
    /// directory holds CAs or a client certificate.
    per_host: Mutex<HashMap<String, reqwest::Client>>,
    options: RegistryOptions,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// Every secret this client sent, blanked out of what servers say back.
    redactor: Redactor,
}

/// A blocking registry client; share it (`Arc`) between the sources of one run.
pub struct RegistryClient {
    runtime: tokio::runtime::Runtime,
    inner: Arc<Inner>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("options", &self.inner.options)
            .finish()
    }
}

/// The retries one request or document has taken: a failed status, a dropped connection, a
/// body cut short and a token fetch all count here against `max_retries`, so that retry loops
/// nested inside each other cannot multiply.
#[derive(Default)]
struct RetryBudget(std::sync::atomic::AtomicU32);

impl RetryBudget {
    fn used(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn spend(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One HTTP request: where, for which auth scope, with which headers.
#[derive(Clone)]
struct Request {
    host: String,
    url: String,
    scope: String,
    accept: Option<String>,
    range_from: u64,
}

impl Request {
    /// The repository the request's scope names (`repository:NAME:pull`); `None` for the
    /// registry's own endpoints (`_catalog`), which only host-wide credentials cover.
    fn repository(&self) -> Option<&str> {
        self.scope
            .strip_prefix("repository:")?
            .strip_suffix(":pull")
    }

    /// What the request fetches, as its URL names it: `blobs/DIGEST` or `manifests/REF`.
    fn object(&self) -> Option<&str> {
        let path = self.url.split(['?', '#']).next()?;
        let repository = self.repository()?;
        let at = path.find(&format!("/v2/{repository}/"))? + repository.len() + 5;
        path.get(at..).filter(|o| !o.is_empty())
    }
}

impl RegistryClient {
    pub fn new(options: RegistryOptions) -> Result<RegistryClient> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("registry-io")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the registry I/O runtime", e))?;
        let http = http_client(&options, Some(&options.ca_files), None)?;
        let unverified = match options.insecure.is_empty() {
            true => None,
            false => Some(http_client(&options, None, None)?),
        };
        Ok(RegistryClient {
            runtime,
            inner: Arc::new(Inner {
                http,
                unverified,
                per_host: Mutex::new(HashMap::new()),
                options,
                hosts: Mutex::new(HashMap::new()),
                redactor: Redactor::default(),
            }),
        })
    }

    /// `SCHEME://host`; an insecure host is probed for HTTPS on first use.
    fn base(&self, host: &str) -> String {
        if self.inner.is_insecure(host) {
            let state = self.inner.host(host);
            if state.scheme.get().is_none() {
                let (inner, name) = (self.inner.clone(), host.to_owned());
                let scheme = self
                    .runtime
                    .block_on(async move { inner.probe_scheme(&name).await });
                let _ = state.scheme.set(scheme);
            }
        }
        self.inner.base(host)
    }

    /// Tags of a repository, following `Link` pagination.
    pub fn list_tags(&self, repo: &RegistryRef) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let display = format!("docker://{}/{}", repo.host, repo.repository);
        let first = format!(
            "{}/v2/{}/tags/list?n=1000",
            self.base(&repo.host),
            repo.repository
        );
        let scope = format!("repository:{}:pull", repo.repository);
        self.paginate(
            &repo.host,
            first,
            &scope,
            &display,
            "tag list",
            |p: Page| p.tags.unwrap_or_default(),
        )
    }

    /// Repositories of a registry (`/v2/_catalog`), following `Link` pagination.
    pub fn catalog(&self, host: &str) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            repositories: Option<Vec<String>>,
        }
        let display = format!("docker://{host}");
        let first = format!("{}/v2/_catalog?n=1000", self.base(host));
        let scope = "registry:catalog:*";
        self.paginate(host, first, scope, &display, "catalog", |p: Page| {
            p.repositories.unwrap_or_default()
        })
    }

    /// The names a listing's pages hold, each page parsed as it arrives (`names_of` takes a
    /// page's names). A listing that goes on for ever, or comes back to a page it had, is an
    /// error rather than memory spent on it.
    fn paginate<P: serde::de::DeserializeOwned>(
        &self,
        host: &str,
        first: String,
        scope: &str,
        display: &str,
        what: &str,
        names_of: impl Fn(P) -> Vec<String>,
    ) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let fail = |why: String| {
                // The URL and the reason are the registry's text.
                Error::image(display, self.inner.scrub(&format!("{url}: {why}")))
            };
            if !seen.insert(url.clone()) {
                return Err(fail("the listing's pages link back to this one".into()));
            }
            let req = Request {
                host: host.to_owned(),
                url: url.clone(),
                scope: scope.to_owned(),
                accept: Some("application/json".to_owned()),
                range_from: 0,
            };
            let inner = self.inner.clone();
            let (body, headers) = self
                .runtime
                .block_on(async move { inner.fetch_document(&req).await })
                .map_err(|f| f.image(display))?;
            let page: P =
                serde_json::from_slice(&body).map_err(|e| fail(format!("not a {what}: {e}")))?;
            names.extend(names_of(page));
            bytes += body.len();
            if names.len() > MAX_LISTED || seen.len() > MAX_PAGES || bytes > MAX_LISTING_BYTES {
                return Err(fail(format!(
                    "the {what} is longer than this tool takes ({} names in {} pages, {bytes} \
                     bytes so far; at most {MAX_LISTED} names, {MAX_PAGES} pages, \
                     {MAX_LISTING_BYTES} bytes)",
                    names.len(),
                    seen.len()
                )));
            }
            next = next_link(&headers, &url).map_err(fail)?;
        }
        Ok(names)
    }

    /// A manifest by tag or digest: bytes and `Content-Type`.
    fn manifest(
        &self,
        repo: &RegistryRef,
        reference: &str,
        display: &str,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let req = Request {
            host: repo.host.clone(),
            url: format!(
                "{}/v2/{}/manifests/{reference}",
                self.base(&repo.host),
                repo.repository
            ),
            scope: format!("repository:{}:pull", repo.repository),
            accept: Some(ACCEPT.join(", ")),
            range_from: 0,
        };
        let inner = self.inner.clone();
        let (body, headers) = self
            .runtime
            .block_on(async move { inner.fetch_document(&req).await })
            .map_err(|f| f.image(display))?;
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((body, content_type))
    }

    /// A small blob (config) read whole.
    fn small_blob(&self, repo: &RegistryRef, digest: &Digest, display: &str) -> Result<Vec<u8>> {
        let req = self.blob_request(repo, digest);
        let inner = self.inner.clone();
        let (body, _) = self
            .runtime
            .block_on(async move { inner.fetch_document(&req).await })
            .map_err(|f| f.image(display))?;
        Ok(body)
    }

    fn blob_request(&self, repo: &RegistryRef, digest: &Digest) -> Request {
        Request {
            host: repo.host.clone(),
            url: format!(
                "{}/v2/{}/blobs/{digest}",
                self.base(&repo.host),
                repo.repository
            ),
            scope: format!("repository:{}:pull", repo.repository),
            accept: None,
            range_from: 0,
        }
    }

    /// Streams a blob: on the first read a background task starts downloading (resuming
    /// with `Range` after a dropped connection) into a bounded channel; the returned reader
    /// blocks on it. Starting lazily keeps readers that were opened but not yet read from
    /// holding one of the host's request permits.
    pub fn open_blob(&self, repo: &RegistryRef, digest: &Digest, image: &str) -> impl Read + Send {
        BlobReader::Pending(Box::new(PendingBlob {
            runtime: self.runtime.handle().clone(),
            inner: self.inner.clone(),
            req: self.blob_request(repo, digest),
            image: image.to_owned(),
            layer: digest.clone(),
        }))
    }
}

type Chunk = std::result::Result<Vec<u8>, Error>;

/// A blob download not started yet.
struct PendingBlob {
    runtime: tokio::runtime::Handle,
    inner: Arc<Inner>,
    req: Request,
    image: String,
    layer: Digest,
}

impl PendingBlob {
    fn start(self) -> ChannelReader {
        let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
        let PendingBlob {
            runtime,
            inner,
            req,
            image,
            layer,
        } = self;
        runtime.spawn(async move {
            if let Err(failure) = inner.download(req, &tx).await {
                // The reader may be gone already; then nobody needs the error.
                let _ = tx.send(Err(failure.layer(&image, &layer))).await;
            }
        });
        ChannelReader {
            rx,
            current: Vec::new(),
            pos: 0,
        }
    }
}

/// The blocking end of a blob download.
enum BlobReader {
    Pending(Box<PendingBlob>),
    Running(ChannelReader),
    /// Only while switching from `Pending` to `Running`.
    Empty,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let BlobReader::Pending(_) = self {
            if let BlobReader::Pending(p) = std::mem::replace(self, BlobReader::Empty) {
                *self = BlobReader::Running(p.start());
            }
        }
        match self {
            BlobReader::Running(r) => r.read(buf),
            BlobReader::Pending(_) | BlobReader::Empty => Ok(0),
        }
    }
}

impl Inner {
    fn is_insecure(&self, host: &str) -> bool {
        self.options.insecure.iter().any(|h| h == host)
    }

    /// `SCHEME://host`: HTTPS, except for an insecure host that does not speak it.
    fn base(&self, host: &str) -> String {
        let scheme = match self.is_insecure(host) {
            true => self.host(host).scheme.get().copied().unwrap_or("https"),
            false => "https",
        };
        format!("{scheme}://{host}")
    }

    /// For an insecure host, whether it speaks HTTPS (certificate unchecked): Docker's rule
    /// for `insecure-registries`, HTTPS first and plain HTTP when that fails.
    async fn probe_scheme(&self, host: &str) -> &'static str {
        let url = format!("https://{host}/v2/");
        // The host's own client, with its client certificate if it has one.
        let Ok(client) = self.client_for(&url) else {
            return "https";
        };
        match client
            .get(&url)
            .timeout(PROBE_TIMEOUT.min(self.options.connect_timeout))
            .send()
            .await
        {
            Ok(_) => "https",
            // The TLS handshake was made: a registry that wants a (better) client certificate
            // speaks HTTPS all the same, and its requests will say what it wants.
            Err(e) if closed_after_handshake(&e) || client_certificate_refused(&e) => "https",
            Err(_) => "http",
        }
    }

    /// The client for `url`'s host, built on first use: verifying with the system's CAs, the
    /// `--registry-ca` files and the host's `certs.d` CAs (unverifying for an insecure host),
    /// and presenting the host's `certs.d` client certificate if it has one.
    fn client_for(&self, url: &str) -> Result<reqwest::Client> {
        let authority = authority(url);
        let mut cache = self.per_host.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = cache.get(authority) {
            return Ok(client.clone());
        }
        let certs = HostCerts::read(&self.options.certs_dirs, authority)?;
        let insecure = self.is_insecure(authority);
        let client = match (&self.unverified, &certs.client) {
            (Some(shared), None) if insecure => shared.clone(),
            (_, None) if !insecure && certs.cas.is_empty() => self.http.clone(),
            _ => self.host_client(authority, &certs, false)?,
        };
        cache.insert(authority.to_owned(), client.clone());
        Ok(client)
    }

    /// A new client for `authority` with what `certs.d` holds for it; `tls12_only` for
    /// [`Inner::client_certificate_refusal`].
    fn host_client(
        &self,
        authority: &str,
        certs: &HostCerts,
        tls12_only: bool,
    ) -> Result<reqwest::Client> {
        let files = [self.options.ca_files.clone(), certs.cas.clone()].concat();
        let verify = (!self.is_insecure(authority)).then_some(&files[..]);
        build_client(http_client_builder(
            &self.options,
            verify,
            certs.client.as_ref(),
            tls12_only,
        )?)
    }

    /// Whether an HTTPS connection to `url`'s host that closed right after the handshake was
    /// refused for want of a trusted client certificate, and the error that says so. Under
    /// TLS 1.3 the client's side of the handshake is over before the server checks the
    /// certificate, so the server's alert races with the request already sent and a try may
    /// see only a closed connection; under TLS 1.2 the alert ends the handshake, so one
    /// TLS 1.2 handshake tells (a server without TLS 1.2 tells nothing, and nothing changes).
    async fn client_certificate_refusal(&self, url: &str) -> Option<reqwest::Error> {
        let authority = url.strip_prefix("https://")?.split('/').next()?;
        let certs = HostCerts::read(&self.options.certs_dirs, authority).ok()?;
        let client = self.host_client(authority, &certs, true).ok()?;
        let probe = client
            .get(format!("https://{authority}/v2/"))
            .timeout(PROBE_TIMEOUT.min(self.options.connect_timeout))
            .send()
            .await;
        probe.err().filter(client_certificate_refused)
    }

    fn host(&self, host: &str) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| {
                Arc::new(Host {
                    permits: Arc::new(Semaphore::new(self.options.max_concurrent.max(1))),
                    tokens: tokio::sync::Mutex::new(HashMap::new()),
                    basic: std::sync::atomic::AtomicBool::new(false),
                    scheme: OnceLock::new(),
                })
            })
            .clone()
    }

    /// `stalled: no data for S s <where>`: a read that timed out.
    fn stalled(&self, place: &str) -> String {
        let secs = self.options.read_timeout.as_secs_f64();
        format!("stalled: no data for {secs} s {place}")
    }

    /// Why reading a document's body failed, a stall named as one.
    fn body_failure(&self, e: &io::Error) -> String {
        if e.kind() == io::ErrorKind::TimedOut {
            return self.stalled(&format!("{e} of the body"));
        }
        format!("reading the body: {e}")
    }

    /// Tells the `on_retry` callback that `url`, fetched for `req`, is retried after `why`.
    fn announce_retry(&self, url: &str, req: &Request, why: &str, attempt: u32, delay: Duration) {
        let Some(notices) = &self.options.on_retry else {
            return;
        };
        let retries = self.options.max_retries;
        let message = self.scrub(&format!(
            "{url}: {why}; retry {} of {retries} in {:.1} s",
            attempt + 1,
            delay.as_secs_f64()
        ));
        (notices.0)(&Retry {
            message,
            image: req.repository().map(|r| format!("{}/{r}", req.host)),
            object: req.object().map(|o| self.scrub(o)),
            attempt: attempt + 1,
            retries,
            delay,
        });
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.options
            .backoff
            .saturating_mul(factor)
            .min(self.options.max_backoff)
    }

    /// The `Authorization` header for a request, if any is known; never for a URL on another
    /// host than the one the credentials and tokens are for.
    async fn auth_header(&self, host: &Host, req: &Request) -> Option<String> {
        if authority(&req.url) != req.host {
            return None;
        }
        if let Some(token) = host.tokens.lock().await.get(&req.scope) {
            return Some(format!("Bearer {}", token.expose()));
        }
        if host.basic.load(std::sync::atomic::Ordering::Relaxed) {
            // A helper's failure was reported when the challenge was answered.
            let creds = self
                .options
                .auth
                .lookup_repository(&req.host, req.repository())
                .ok()
                .flatten()?;
            self.redactor.add_credentials(&creds);
            return Some(creds.basic_header());
        }
        None
    }

    /// `text` with every secret this client sent blanked out. Whatever a server said (error
    /// messages, redirect targets, a parser's quote of a body) goes through here before it
    /// reaches an error or a notice: a registry may echo the request's credentials.
    fn scrub(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    /// A failed request, scrubbed: its URL and reason may hold what a server sent.
    fn failure(&self, url: &str, status: Option<u16>, reason: String) -> Failure {
        Failure {
            url: self.scrub(url),
            status,
            reason: self.scrub(&reason),
        }
    }

    /// `CODE: message` of a distribution-API error body, scrubbed before it is cut to 200
    /// characters (a cut could leave part of a secret where the whole no longer matches).
    async fn error_detail(&self, resp: reqwest::Response) -> String {
        // Only a detail: not worth waiting long for a body sent a byte at a time.
        let patience = self
            .options
            .read_timeout
            .min(self.options.document_deadline);
        let detail = tokio::time::timeout(patience, error_detail(resp))
            .await
            .unwrap_or_default();
        let detail = self.scrub(&detail);
        detail
            .replace(['\n', '\r'], " ")
            .chars()
            .take(200)
            .collect()
    }

    /// GETs `url` with `headers` (and `auth`), following redirects: those within one origin
    /// the HTTP client follows itself ([`redirect_policy`]); one to another origin is followed
    /// here, with the client of the target's host (verifying its certificate unless that host
    /// is insecure itself) and without `Authorization`, which is for the registry only.
    async fn request(
        &self,
        url: &str,
        headers: &HeaderMap,
        auth: Option<String>,
    ) -> std::result::Result<reqwest::Response, SendError> {
        let client = self
            .client_for(url)
            .map_err(|e| SendError::Refused(e.to_string()))?;
        let mut builder = client.get(url).headers(headers.clone());
        if let Some(auth) = auth {
            builder = builder.header(AUTHORIZATION, auth);
        }
        let mut resp = builder.send().await.map_err(SendError::Http)?;
        let mut hops = 0;
        while let Some(target) = cross_origin_redirect(&resp) {
            if hops == MAX_REDIRECTS {
                return Err(SendError::Refused(format!(
                    "more than {MAX_REDIRECTS} redirects"
                )));
            }
            hops += 1;
            self.check_redirect(resp.url(), &target)?;
            remember_redirect(url, &target);
            let client = self
                .client_for(target.as_str())
                .map_err(|e| SendError::Refused(e.to_string()))?;
            let sent = client
                .get(target.clone())
                .headers(headers.clone())
                .send()
                .await;
            // Where the target sent the request on (within its origin) is where it went.
            adopt_redirect(target.as_str(), url);
            resp = sent.map_err(SendError::Http)?;
        }
        Ok(resp)
    }

    /// Refuses a redirect that gives up TLS for a host not named insecure (the content would
    /// travel unprotected), or that leaves HTTP altogether.
    fn check_redirect(&self, from: &Url, target: &Url) -> std::result::Result<(), SendError> {
        let shown = without_query(target);
        let to = authority(target.as_str());
        match (from.scheme(), target.scheme()) {
            (_, "https") => Ok(()),
            ("http", "http") => Ok(()),
            ("https", "http") if self.is_insecure(to) => Ok(()),
            ("https", "http") => Err(SendError::Refused(format!(
                "redirected from HTTPS to plain HTTP {shown}: not followed, the download would \
                 not be protected by TLS (if that host is trusted, allow it with \
                 --insecure-registry {to})"
            ))),
            (_, other) => Err(SendError::Refused(format!(
                "redirected to {shown}: not followed, {other:?} is not HTTP"
            ))),
        }
    }

    /// Sends a request, retrying 5xx, 429 and connection failures with backoff, and answering
    /// one 401 challenge. Returns the successful response and the permit it holds. Retries,
    /// the token fetch's included, draw from `retries`.
    async fn send(
        &self,
        req: &Request,
        retries: &RetryBudget,
    ) -> std::result::Result<(reqwest::Response, OwnedSemaphorePermit), Failure> {
        let host = self.host(&req.host);
        let fail = |status: Option<u16>, reason: String| self.failure(&req.url, status, reason);
        let mut headers = HeaderMap::new();
        if let Some(accept) = req
            .accept
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            headers.insert(ACCEPT_HEADER, accept);
        }
        if req.range_from > 0 {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={}-", req.range_from)) {
                headers.insert(RANGE, v);
            }
        }
        let mut authenticated = false;
        loop {
            let attempt = retries.used();
            let permit = host
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| fail(None, "client shut down".to_owned()))?;
            let auth = self.auth_header(&host, req).await;
            let delay = match self.request(&req.url, &headers, auth).await {
                Ok(resp) if resp.status().is_success() => {
                    forget_redirect(&req.url);
                    return Ok((resp, permit));
                }
                // A challenge from the registry itself, not from where it redirected to.
                Ok(resp)
                    if resp.status() == StatusCode::UNAUTHORIZED
                        && !authenticated
                        && authority(resp.url().as_str()) == req.host =>
                {
                    drop(permit);
                    authenticated = true;
                    self.answer_challenge(&host, req, resp.headers(), retries)
                        .await?;
                    continue;
                }
                Ok(resp) if retryable(resp.status()) && attempt < self.options.max_retries => {
                    let delay = retry_after(resp.headers())
                        .map(|d| d.min(self.options.max_retry_after))
                        .unwrap_or_else(|| self.backoff(attempt));
                    let why = status_line(resp.status()) + &redirect_note(&req.url);
                    self.announce_retry(&req.url, req, &why, attempt, delay);
                    delay
                }
                Ok(resp) => {
                    let status = resp.status();
                    let from_registry = authority(resp.url().as_str()) == req.host;
                    let detail = self.error_detail(resp).await;
                    let mut reason = describe_status(status, &detail);
                    reason.push_str(&redirect_note(&req.url));
                    let refused =
                        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
                    if refused && from_registry {
                        reason.push_str(
                            match self
                                .options
                                .auth
                                .lookup_repository(&req.host, req.repository())
                            {
                                Ok(Some(_)) => " (credentials were refused)",
                                _ => " (no credentials for this registry)",
                            },
                        );
                    }
                    if retryable(status) {
                        reason.push_str(&format!(" after {} retries", self.options.max_retries));
                    }
                    return Err(fail(Some(status.as_u16()), reason));
                }
                Err(SendError::Refused(reason)) => return Err(fail(None, reason)),
                Err(SendError::Http(e)) if transient(&e) && attempt < self.options.max_retries => {
                    if attempt == 0 && closed_after_handshake(&e) {
                        if let Some(refusal) = self.client_certificate_refusal(&req.url).await {
                            return Err(fail(None, describe_send_error(refusal, &req.url)));
                        }
                    }
                    let delay = self.backoff(attempt);
                    let note = redirect_note(&req.url);
                    let why = error_chain(&e.without_url()) + &note;
                    self.announce_retry(&req.url, req, &why, attempt, delay);
                    delay
                }
                Err(SendError::Http(e)) => {
                    let note = redirect_note(&req.url);
                    // The hints name the host that failed, which may be a redirect target.
                    let at = e.url().map_or_else(|| req.url.clone(), Url::to_string);
                    return Err(fail(None, describe_send_error(e, &at) + &note));
                }
            };
            drop(permit);
            retries.spend();
            tokio::time::sleep(delay).await;
        }
    }

    /// Learns how to authenticate from a 401's `WWW-Authenticate`: fetches a bearer token for
    /// the request's scope, or switches the host to basic auth.
    async fn answer_challenge(
        &self,
        host: &Host,
        req: &Request,
        headers: &HeaderMap,
        retries: &RetryBudget,
    ) -> std::result::Result<(), Failure> {
        let fail = |reason: String| self.failure(&req.url, Some(401), reason);
        let header = headers
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let (scheme, params) = parse_challenge(header);
        let creds = self
            .options
            .auth
            .lookup_repository(&req.host, req.repository())
            .map_err(fail)?;
        if let Some(creds) = &creds {
            // Before anything is sent: the token service's error may quote them.
            self.redactor.add_credentials(creds);
        }
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => match creds {
                Some(_) => {
                    host.basic.store(true, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
                None => Err(fail(
                    "401 Unauthorized (no credentials for this registry)".to_owned(),
                )),
            },
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| fail("401 with a Bearer challenge without realm".to_owned()))?;
                let mut token_url = reqwest::Url::parse(realm)
                    .map_err(|e| fail(format!("token realm {realm:?} is not a URL: {e}")))?;
                {
                    let mut q = token_url.query_pairs_mut();
                    if let Some(service) = params.get("service") {
                        q.append_pair("service", service);
                    }
                    q.append_pair("scope", params.get("scope").unwrap_or(&req.scope));
                }
                let token = self
                    .fetch_token(token_url, creds.map(|c| c.basic_header()), req, retries)
                    .await?;
                self.redactor.add_secret(&token);
                host.tokens.lock().await.insert(req.scope.clone(), token);
                Ok(())
            }
            _ => Err(fail(format!(
                "401 Unauthorized with an unsupported challenge {scheme:?}"
            ))),
        }
    }

    async fn fetch_token(
        &self,
        url: reqwest::Url,
        basic: Option<String>,
        for_req: &Request,
        retries: &RetryBudget,
    ) -> std::result::Result<Secret, Failure> {
        #[derive(serde::Deserialize)]
        struct TokenReply {
            token: Option<String>,
            access_token: Option<String>,
        }
        // The token URL without its query, for messages (the query holds no secret, but the
        // realm is what the user can act on).
        let shown = without_query(&url);
        let fail = |status: Option<u16>, reason: String| self.failure(&shown, status, reason);
        // Credentials cross the network in clear text only where the user said that is fine.
        let realm_host = authority(url.as_str());
        if basic.is_some() && url.scheme() != "https" && !self.is_insecure(realm_host) {
            return Err(fail(
                None,
                format!(
                    "the registry's token realm is plain HTTP: credentials are sent to a token \
                     service only over HTTPS (if that service is trusted, allow it with \
                     --insecure-registry {realm_host})"
                ),
            ));
        }
        loop {
            let attempt = retries.used();
            match self
                .request(url.as_str(), &HeaderMap::new(), basic.clone())
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    let deadline = self.options.document_deadline;
                    let body = tokio::time::timeout(deadline, read_limited(resp, MAX_DOCUMENT))
                        .await
                        .map_err(|_| fail(None, too_slow("token reply", deadline)))?
                        .map_err(|e| fail(None, format!("token: {}", self.body_failure(&e))))?;
                    // (`fail` scrubs serde's quote of the reply.)
                    let reply: TokenReply = serde_json::from_slice(&body)
                        .map_err(|e| fail(None, format!("token reply is not JSON: {e}")))?;
                    let token = reply.token.or(reply.access_token).filter(|t| !t.is_empty());
                    return token
                        .map(Secret::new)
                        .ok_or_else(|| fail(None, "token reply holds no token".to_owned()));
                }
                Ok(resp) if retryable(resp.status()) && attempt < self.options.max_retries => {
                    let delay = retry_after(resp.headers())
                        .unwrap_or_else(|| self.backoff(attempt))
                        .min(self.options.max_retry_after);
                    self.announce_retry(
                        &shown,
                        for_req,
                        &status_line(resp.status()),
                        attempt,
                        delay,
                    );
                    tokio::time::sleep(delay).await;
                }
                Ok(resp) => {
                    let status = resp.status();
                    let detail = self.error_detail(resp).await;
                    let what = if basic.is_some() {
                        "credentials were refused"
                    } else {
                        "anonymous token refused"
                    };
                    return Err(fail(
                        Some(status.as_u16()),
                        format!("{} ({what})", describe_status(status, &detail)),
                    ));
                }
                Err(SendError::Refused(reason)) => return Err(fail(None, reason)),
                Err(SendError::Http(e)) if transient(&e) && attempt < self.options.max_retries => {
                    let delay = self.backoff(attempt);
                    self.announce_retry(
                        &shown,
                        for_req,
                        &error_chain(&e.without_url()),
                        attempt,
                        delay,
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(SendError::Http(e)) => {
                    return Err(fail(
                        None,
                        format!("token request failed: {}", error_chain(&e.without_url())),
                    ))
                }
            }
            retries.spend();
        }
    }

    /// A whole small document; a body cut short is retried like a dropped connection. All
    /// attempts together get twice `document_deadline` (each body gets it once): retries of
    /// the body, of the request (5xx, 429 with its `Retry-After`) and of a token fetch nest,
    /// and would otherwise let one document take hours.
    async fn fetch_document(
        &self,
        req: &Request,
    ) -> std::result::Result<(Vec<u8>, HeaderMap), Failure> {
        let deadline = self.options.document_deadline.saturating_mul(2);
        match tokio::time::timeout(deadline, self.fetch_document_attempts(req)).await {
            Ok(result) => result,
            Err(_) => {
                let why = format!("{}, retries included", too_slow("document", deadline));
                Err(self.failure(&req.url, None, why))
            }
        }
    }

    async fn fetch_document_attempts(
        &self,
        req: &Request,
    ) -> std::result::Result<(Vec<u8>, HeaderMap), Failure> {
        // One budget for the body's, the request's and the token's retries: nested, separate
        // counts multiplied (5 × 5 × 5 requests for one manifest).
        let retries = RetryBudget::default();
        loop {
            let (resp, permit) = self.send(req, &retries).await?;
            let headers = resp.headers().clone();
            let deadline = self.options.document_deadline;
            let result = tokio::time::timeout(deadline, read_limited(resp, MAX_DOCUMENT)).await;
            drop(permit);
            let Ok(result) = result else {
                return Err(self.failure(&req.url, None, too_slow("body", deadline)));
            };
            match result {
                Ok(body) => return Ok((body, headers)),
                Err(e)
                    if retries.used() < self.options.max_retries
                        && e.kind() != io::ErrorKind::InvalidData =>
                {
                    let attempt = retries.used();
                    let delay = self.backoff(attempt);
                    let why = self.body_failure(&e);
                    self.announce_retry(&req.url, req, &why, attempt, delay);
                    tokio::time::sleep(delay).await;
                    retries.spend();
                }
                Err(e) => return Err(self.failure(&req.url, None, self.body_failure(&e))),
            }
        }
    }

    /// Feeds a blob into `tx`, resuming after dropped, stalled or too slow connections. Only
    /// failures in a row without a new byte count against `max_retries`: a long download over
    /// a flaky link finishes, a registry that sends nothing gives up after the retries. All
    /// resumes together are capped too ([`MAX_RESUMES`] and two per MiB received): a
    /// registry that drops the connection after every byte makes progress each time.
    async fn download(
        &self,
        mut req: Request,
        tx: &mpsc::Sender<Chunk>,
    ) -> std::result::Result<(), Failure> {
        let mut fruitless = 0u32;
        let mut resumes = 0u64;
        loop {
            let started_at = req.range_from;
            let (mut resp, _permit) = self.send(&req, &RetryBudget::default()).await?;
            // From the response on: waiting for a permit or a retried request is not slowness.
            let mut window = (std::time::Instant::now(), req.range_from);
            // A server that ignores `Range` resends from the start: skip what we have.
            let mut skip = if req.range_from > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
                req.range_from
            } else {
                0
            };
            let (window_len, window_min) =
                (self.options.slow_blob_window, self.options.slow_blob_bytes);
            let ended = loop {
                match resp.chunk().await {
                    Ok(Some(bytes)) => {
                        let drop_n = skip.min(bytes.len() as u64) as usize;
                        skip -= drop_n as u64;
                        let rest = &bytes[drop_n..];
                        if rest.is_empty() {
                            continue;
                        }
                        req.range_from += rest.len() as u64;
                        if tx.send(Ok(rest.to_vec())).await.is_err() {
                            return Ok(()); // the reader was dropped
                        }
                        if window.0.elapsed() >= window_len {
                            let got = req.range_from - window.1;
                            if got < window_min {
                                break Ended::TooSlow(got);
                            }
                            window = (std::time::Instant::now(), req.range_from);
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => break Ended::Failed(e),
                }
            };
            let too_slow = matches!(ended, Ended::TooSlow(_));
            let why = match ended {
                Ended::TooSlow(got) => format!(
                    "too slow: {got} bytes in {} s at byte {}",
                    window_len.as_secs_f64(),
                    req.range_from
                ),
                Ended::Failed(e) if e.is_timeout() => {
                    self.stalled(&format!("at byte {}", req.range_from))
                }
                Ended::Failed(e) => format!(
                    "connection dropped at byte {}: {}",
                    req.range_from,
                    error_chain(&e.without_url())
                ),
            };
            if req.range_from > started_at && !too_slow {
                fruitless = 0;
            }
            if fruitless >= self.options.max_retries {
                let reason = format!("{why} (after {fruitless} retries without progress)");
                return Err(self.failure(&req.url, None, reason));
            }
            resumes += 1;
            if resumes > MAX_RESUMES + 2 * (req.range_from >> 20) {
                let reason = format!(
                    "{why} (resumed {} times for {} bytes: the registry keeps failing)",
                    resumes - 1,
                    req.range_from
                );
                return Err(self.failure(&req.url, None, reason));
            }
            let delay = self.backoff(fruitless);
            self.announce_retry(&req.url, &req, &why, fruitless, delay);
            tokio::time::sleep(delay).await;
            fruitless += 1;
        }
    }
}

/// Resumes of one blob allowed beyond two per MiB received.
const MAX_RESUMES: u64 = 16;

/// How one request of a blob download ended, short of the blob's end.
enum Ended {
    Failed(reqwest::Error),
    /// Fewer than `slow_blob_bytes` (this many) in `slow_blob_window`.
    TooSlow(u64),
}

/// `503 Service Unavailable`.
fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}

/// Most names one listing (a registry's catalog, a repository's tags) may hold, and most pages
/// it may take.
const MAX_LISTED: usize = 1_000_000;
const MAX_PAGES: usize = 10_000;
/// Most bytes of pages one listing may take: a million names in JSON are about 50 MB.
const MAX_LISTING_BYTES: usize = 256 << 20;

/// Statuses worth retrying.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Connection-level failures worth retrying; a TLS handshake with a plain-HTTP server, with
/// a certificate that is not trusted, or refused for want of a client certificate, fails the
/// same way every time.
fn transient(e: &reqwest::Error) -> bool {
    (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
        && !tls_with_plain_http(e)
        && !untrusted_certificate(e)
        && !client_certificate_refused(e)
}

/// A connection that was open and then closed under the request: what a TLS 1.3 server's
/// refusal of our client certificate may look like (see
/// [`Inner::client_certificate_refusal`]).
fn closed_after_handshake(e: &reqwest::Error) -> bool {
    e.is_request() && !e.is_connect() && (closed_in_words(&error_chain(e)) || closed_io(e))
}

/// How hyper words a connection closed under a request; which one depends on which of its
/// tasks sees the close first. Reading the response: "connection closed before message
/// completed". The connection's task reading the server's close (or its alert) while the
/// request still waits to be dispatched: "channel closed", "operation was canceled:
/// connection closed" or "... connection was not ready" (most of the time on a loaded
/// machine, where the request is dispatched later: once taken for transient, they were
/// retried with announcements instead of being told a refusal by the TLS 1.2 probe).
fn closed_in_words(text: &str) -> bool {
    [
        "connection closed",
        "channel closed",
        "connection was not ready",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// An I/O error in `e`'s chain that says the peer closed or reset the connection (a write
/// after its close). By kind, as the OS words them "Connection reset by peer", "Broken pipe".
fn closed_io(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            use io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn untrusted_certificate(e: &reqwest::Error) -> bool {
    error_chain(e).contains("invalid peer certificate")
}

/// The server ended the handshake over our client certificate, or the lack of one. (With TLS
/// 1.3 the alert races with the request already sent, so a try may see only a closed
/// connection; a retry then usually gets the alert.)
fn client_certificate_refused(e: &reqwest::Error) -> bool {
    let text = error_chain(e);
    ["BadCertificate", "CertificateRequired", "UnknownCA"]
        .iter()
        .any(|alert| text.contains(&format!("received fatal alert: {alert}")))
}

/// An HTTP client trusting the system's CAs and those in `ca_files` (`None`: verifying
/// nothing, for insecure hosts), presenting `identity` when the server asks for a client
/// certificate.
fn http_client(
    options: &RegistryOptions,
    ca_files: Option<&[PathBuf]>,
    identity: Option<&ClientCertificate>,
) -> Result<reqwest::Client> {
    build_client(http_client_builder(options, ca_files, identity, false)?)
}

/// [`http_client`]'s builder; `tls12_only` caps the protocol at TLS 1.2.
fn http_client_builder(
    options: &RegistryOptions,
    ca_files: Option<&[PathBuf]>,
    identity: Option<&ClientCertificate>,
    tls12_only: bool,
) -> Result<reqwest::ClientBuilder> {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("cvmfs-oci/", env!("CARGO_PKG_VERSION")))
        .redirect(redirect_policy())
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout);
    // Explicitly trusted certificates: our own rustls configuration, so that one of them
    // may also be the server's certificate (see `trusted_tls`).
    if let Some(files) = ca_files.filter(|files| !files.is_empty()) {
        let identity = identity.map(ClientCertificate::load_rustls).transpose()?;
        let config = trusted_tls::client_config(trusted_certs(files)?, identity, tls12_only)
            .map_err(|e| {
                let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                Error::io(
                    format!("TLS settings trusting {}", files.join(", ")),
                    io::Error::other(e),
                )
            })?;
        return Ok(builder.tls_backend_preconfigured(config));
    }
    let builder = match ca_files {
        Some(_) => builder,
        None => builder.tls_danger_accept_invalid_certs(true),
    };
    let builder = match tls12_only {
        true => builder.max_tls_version(reqwest::tls::Version::TLS_1_2),
        false => builder,
    };
    Ok(match identity {
        Some(identity) => builder.identity(identity.load()?),
        None => builder,
    })
}

fn build_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client> {
    builder.build().map_err(|e| {
        Error::io(
            "building the HTTP client",
            io::Error::other(error_chain(&e)),
        )
    })
}

/// What the `certs.d` directories hold for one registry, read as Docker and podman read
/// them: `*.crt` are CAs; `NAME.cert` with `NAME.key` is a client certificate and its key,
/// and either without the other is an error.
#[derive(Debug, Default, PartialEq)]
struct HostCerts {
    cas: Vec<PathBuf>,
    /// The first pair by directory order, then name: one TLS client holds one identity
    /// (Docker offers every pair; Go's TLS then sends the first one unless the server names
    /// the CAs it accepts).
    client: Option<ClientCertificate>,
}

/// A client certificate (PEM, with any intermediates) and its private key (PEM).
#[derive(Debug, Clone, PartialEq)]
struct ClientCertificate {
    cert: PathBuf,
    key: PathBuf,
}

impl HostCerts {
    /// The files of `DIR/<authority>/` in each of `dirs`.
    fn read(dirs: &[PathBuf], authority: &str) -> Result<HostCerts> {
        let mut found = HostCerts::default();
        // A name from an image reference, never a path.
        if authority.is_empty() || authority.starts_with('.') || authority.contains(['/', '\\']) {
            return Ok(found);
        }
        for dir in dirs {
            let host_dir = dir.join(authority);
            let entries = match std::fs::read_dir(&host_dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(host_dir.display().to_string(), e)),
            };
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for path in files {
                found.add(path)?;
            }
        }
        Ok(found)
    }

    fn add(&mut self, path: PathBuf) -> Result<()> {
        let partner = |ext: &str| path.with_extension(ext);
        match path.extension().and_then(|x| x.to_str()) {
            Some("crt") => self.cas.push(path),
            Some("cert") if !partner("key").exists() => {
                return Err(Error::io(
                    format!("client certificate {}", path.display()),
                    io::Error::other(format!(
                        "its key {} is missing (CA certificates must end in .crt)",
                        partner("key").display()
                    )),
                ))
            }
            Some("key") if !partner("cert").exists() => {
                return Err(Error::io(
                    format!("client key {}", path.display()),
                    io::Error::other(format!(
                        "its certificate {} is missing",
                        partner("cert").display()
                    )),
                ))
            }
            Some("cert") if self.client.is_none() => {
                self.client = Some(ClientCertificate {
                    key: partner("key"),
                    cert: path,
                })
            }
            _ => {}
        }
        Ok(())
    }
}

impl ClientCertificate {
    fn load(&self) -> Result<reqwest::Identity> {
        let (what, pem) = self.read()?;
        reqwest::Identity::from_pem(&pem)
            .map_err(|e| Error::io(&what, io::Error::other(error_chain(&e))))
    }

    /// The same for a rustls configuration: the certificate chain and the key.
    fn load_rustls(&self) -> Result<trusted_tls::Identity> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (what, pem) = self.read()?;
        let bad = |e: String| Error::io(&what, io::Error::other(e));
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if chain.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(e.to_string()))?;
        Ok((chain, key))
    }

    /// What to call the pair in errors, and the certificate's PEM followed by the key's.
    fn read(&self) -> Result<(String, Vec<u8>)> {
        let what = format!(
            "client certificate {} with key {}",
            self.cert.display(),
            self.key.display()
        );
        let mut pem = std::fs::read(&self.cert).map_err(|e| Error::io(&what, e))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(&self.key).map_err(|e| Error::io(&what, e))?);
        Ok((what, pem))
    }
}

/// The certificates of each PEM file in `files`.
fn trusted_certs(files: &[PathBuf]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let mut roots = Vec::new();
    for path in files {
        let certs = publisher::tls::certificates_in(path)
            .map_err(|e| Error::io(format!("CA file {}", path.display()), e))?;
        roots.extend(certs);
    }
    Ok(roots)
}

fn tls_with_plain_http(e: &reqwest::Error) -> bool {
    let text = error_chain(e);
    text.contains("InvalidContentType") || text.contains("corrupt message")
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(text)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(Duration::from_secs(at.saturating_sub(now).max(0) as u64))
}

/// Parses an IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`) to Unix seconds.
fn parse_http_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// `Bearer realm="…",service="…"` → scheme and parameters.
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_owned());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_owned(), params)
}

/// The `rel="next"` target of a `Link` header, resolved against `current` (the page it came
/// with). A link to another host, or from HTTPS to plain HTTP, is refused: the request would
/// carry this registry's token or credentials there.
fn next_link(headers: &HeaderMap, current: &str) -> std::result::Result<Option<String>, String> {
    let Some(link) = headers
        .get(reqwest::header::LINK)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    let target = link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.replace(' ', "").contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        target.trim().strip_prefix('<')?.strip_suffix('>')
    });
    let Some(target) = target else {
        return Ok(None);
    };
    let base = Url::parse(current).map_err(|e| format!("not a URL: {e}"))?;
    let next = base
        .join(target)
        .map_err(|e| format!("the next page's link {target:?} is not a URL: {e}"))?;
    let shown = without_query(&next);
    if authority(next.as_str()) != authority(base.as_str()) {
        return Err(format!(
            "the next page's link points to another host ({shown}): not followed, this \
             registry's credentials would go there"
        ));
    }
    match (base.scheme(), next.scheme()) {
        ("https", "https") | ("http", "http" | "https") => Ok(Some(next.to_string())),
        _ => Err(format!(
            "the next page's link {shown} leaves HTTPS: not followed, this registry's \
             credentials would travel without TLS"
        )),
    }
}

fn describe_status(status: StatusCode, detail: &str) -> String {
    let mut out = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("error")
    );
    if !detail.is_empty() {
        out.push_str(&format!(" ({detail})"));
    }
    out
}

/// `CODE: message` of the first error in a distribution-API error body, if any, whole and
/// unscrubbed: [`Inner::error_detail`] makes it fit to show.
async fn error_detail(resp: reqwest::Response) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        code: Option<String>,
        message: Option<String>,
    }
    let Ok(body) = read_limited(resp, 64 << 10).await else {
        return String::new();
    };
    let Ok(parsed) = serde_json::from_slice::<Body>(&body) else {
        return String::new();
    };
    parsed
        .errors
        .first()
        .map(|e| {
            format!(
                "{}: {}",
                e.code.as_deref().unwrap_or("ERROR"),
                e.message.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_default()
}

/// Reads a body of at most `limit` bytes (`InvalidData` beyond; `TimedOut` when it stalls,
/// saying where).
/// Why a `what` that had not all arrived by its `deadline` was given up on.
fn too_slow(what: &str, deadline: Duration) -> String {
    format!(
        "{what} not all there after {} s (the registry sends too slowly)",
        deadline.as_secs_f64()
    )
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(out),
            Err(e) if e.is_timeout() => {
                let at = out.len();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("at byte {at}"),
                ));
            }
            Err(e) => return Err(io::Error::other(error_chain(&e.without_url()))),
        };
        if out.len() + chunk.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("body larger than {limit} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
}

/// A failed request in one line, with a hint when HTTPS met a plain-HTTP server.
/// The last redirect target of each request URL that was redirected (without its query,
/// which holds a pre-signed URL's credentials), for naming it when that target fails: the
/// HTTP client reports such errors under the first URL.
static REDIRECTS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// Redirects followed per request, as reqwest's default policy allows.
const MAX_REDIRECTS: usize = 10;

/// reqwest's default redirect policy within one origin, remembering where each request was
/// sent. A redirect to another origin is not followed: the client's TLS settings are those of
/// the registry's host (which may be insecure), so [`Inner::request`] follows it with the
/// target's own client.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        let from = attempt.previous().last().map(Url::origin);
        if from.is_some_and(|from| from != attempt.url().origin()) {
            return attempt.stop();
        }
        if let Some(first) = attempt.previous().first() {
            remember_redirect(first.as_str(), attempt.url());
        }
        attempt.follow()
    })
}

/// Notes that the request for `first` was sent on to `target` (shown without its query).
fn remember_redirect(first: &str, target: &Url) {
    let mut map = REDIRECTS.lock().unwrap_or_else(|p| p.into_inner());
    map.get_or_insert_with(HashMap::new)
        .insert(first.to_owned(), without_query(target));
}

/// Where the request for `hop` (a redirect target of `first`) went on to is where `first` went.
fn adopt_redirect(hop: &str, first: &str) {
    let mut map = REDIRECTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = map.as_mut() {
        if let Some(target) = m.remove(hop) {
            m.insert(first.to_owned(), target);
        }
    }
}

/// The target of a redirect to another origin (scheme, host or port) that the HTTP client
/// stopped at ([`redirect_policy`]).
fn cross_origin_redirect(resp: &reqwest::Response) -> Option<Url> {
    if !resp.status().is_redirection() {
        return None;
    }
    let location = resp.headers().get(LOCATION)?.to_str().ok()?;
    let target = resp.url().join(location).ok()?;
    (target.origin() != resp.url().origin()).then_some(target)
}

/// `host[:port]` of a URL (the key of `--insecure-registry`, `certs.d` and per-host state).
fn authority(url: &str) -> &str {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
}

/// A URL without its query and fragment, for messages: a pre-signed URL's query holds its
/// credentials.
fn without_query(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// Why a request got no response to judge: the HTTP client failed, or a redirect was refused.
enum SendError {
    Http(reqwest::Error),
    Refused(String),
}

/// Drops what [`redirect_policy`] remembered of `url` (it succeeded).
fn forget_redirect(url: &str) {
    let mut map = REDIRECTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = map.as_mut() {
        m.remove(url);
    }
}

/// ` (redirected to URL)` when `url` was redirected and the target is what failed:
/// registries send blobs to object stores and CDNs, and the one that failed must be named.
fn redirect_note(url: &str) -> String {
    let map = REDIRECTS.lock().unwrap_or_else(|p| p.into_inner());
    match map.as_ref().and_then(|m| m.get(url)) {
        Some(target) => format!(" (redirected to {target})"),
        None => String::new(),
    }
}

fn describe_send_error(e: reqwest::Error, url: &str) -> String {
    let plain_http = tls_with_plain_http(&e);
    let untrusted = untrusted_certificate(&e);
    let refused = client_certificate_refused(&e);
    let text = error_chain(&e.without_url());
    let host = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    if host.is_empty() {
        return text;
    }
    if plain_http {
        return format!("{text} (a plain-HTTP registry? allow it with --insecure-registry {host})");
    }
    if untrusted {
        return format!("{text} ({})", untrusted_advice(&text, host));
    }
    if refused {
        return format!(
            "{text} (the registry wants a client certificate it trusts: put one as NAME.cert, \
             with its key as NAME.key, in /etc/docker/certs.d/{host}/, \
             /etc/containers/certs.d/{host}/ or DIR/{host}/ with --registry-certs-dir DIR)"
        );
    }
    text
}

/// What to do about a registry certificate refused for the reason in `text` (the TLS
/// library's): trusting a CA helps only when the issuer is unknown.
fn untrusted_advice(text: &str, host: &str) -> String {
    let skip = format!("or skip verification for this host with --insecure-registry {host}");
    let reason = text.to_ascii_lowercase().replace(' ', "");
    if text.contains("CaUsedAsEndEntity") {
        "the registry's own certificate is marked as a CA, CA:TRUE: trust that certificate \
         itself with --registry-ca FILE, as for a self-signed one, or give the registry a \
         certificate without CA:TRUE"
            .to_string()
    } else if reason.contains("notvalidforname") {
        format!(
            "the registry's certificate does not list {}: reach it by a name it lists, {skip}",
            without_port(host)
        )
    } else if reason.contains("expired") || reason.contains("notvalidyet") {
        format!(
            "the registry's certificate is outside its validity period, or this machine's \
             clock is wrong: renew it, {skip}"
        )
    } else {
        format!("a registry with a private CA? trust it with --registry-ca FILE, {skip}")
    }
}

/// `host` of `host[:port]` (`[v6]` of `[v6]:port`): certificates name hosts, not ports.
fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => host,
    }
}

/// An error with its causes, on one line (reqwest's own text omits the interesting part).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Chunks of a running download.
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e.into_io()),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Images of one registry reference.
pub struct RegistrySource {
    client: Arc<RegistryClient>,
    repo: RegistryRef,
    reference: String,
}

impl RegistrySource {
    pub fn new(client: Arc<RegistryClient>, repo: RegistryRef) -> RegistrySource {
        let reference = format!("docker://{repo}");
        RegistrySource {
            client,
            repo,
            reference,
        }
    }
}

impl ImageSource for RegistrySource {
    fn describe(&self) -> String {
        self.reference.clone()
    }

    fn resolve_manifests(&self, selection: &PlatformSelection) -> Result<Vec<ImageManifest>> {
        // Parsers quote what the registry sent.
        self.resolve_unscrubbed(selection)
            .map_err(|e| e.scrubbed(|t| self.client.inner.scrub(t)))
    }

    fn fetch_config(&self, manifest: &ImageManifest) -> Result<Vec<u8>> {
        let bytes = self
            .client
            .small_blob(&self.repo, &manifest.config_digest, &self.reference)?;
        check_config(bytes, manifest, &self.reference)
            .map_err(|e| e.scrubbed(|t| self.client.inner.scrub(t)))
    }

    fn open_layer(&self, image: &ResolvedImage, index: usize) -> Result<Box<dyn Read + Send>> {
        let desc = image.layer(index)?;
        let stream = self
            .client
            .open_blob(&self.repo, &desc.digest, &image.reference);
        Ok(Box::new(VerifyingReader::new(
            stream,
            desc.digest.clone(),
            Some(desc.size),
            &image.reference,
            &desc.digest.to_string(),
            Checked::Blob,
        )))
    }
}

impl RegistrySource {
    fn resolve_unscrubbed(&self, selection: &PlatformSelection) -> Result<Vec<ImageManifest>> {
        let top =
            self.client
                .manifest(&self.repo, &self.repo.manifest_reference(), &self.reference)?;
        if let Some(d) = &self.repo.digest {
            check_blob(&top.0, d, None, &self.reference, "manifest")?;
        }
        let fetch = |digest: &Digest, _size: u64| {
            self.client
                .manifest(&self.repo, &digest.to_string(), &self.reference)
        };
        resolve_document(&self.reference, &self.repo.name(), top, selection, &fetch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advice follows the TLS library's reason (as rustls words them, with and without
    /// their context): a CA helps only against an unknown issuer.
    #[test]
    fn refused_certificates_get_the_advice_of_their_reason() {
        let host = "reg.example:5000";
        let advice =
            |reason: &str| untrusted_advice(&format!("invalid peer certificate: {reason}"), host);
        for unknown in ["UnknownIssuer", "BadSignature"] {
            assert!(advice(unknown).contains("--registry-ca FILE"), "{unknown}");
        }
        for name in [
            "certificate not valid for name \"10.0.0.1\"; certificate is only valid for DnsName(\"a\")",
            "NotValidForName",
        ] {
            let a = advice(name);
            assert!(a.contains("does not list reg.example:"), "{a}");
            assert!(!a.contains("--registry-ca"), "{a}");
        }
        for when in [
            "certificate expired: verification time 2, but certificate is not valid after 1",
            "Expired",
            "certificate not valid yet: verification time 1, but certificate is not valid before 2",
            "NotValidYet",
        ] {
            let a = advice(when);
            assert!(a.contains("validity period"), "{a}");
            assert!(a.contains("--insecure-registry reg.example:5000"), "{a}");
        }
        assert!(advice("CaUsedAsEndEntity").contains("CA:TRUE"));
        for (host, name) in [
            ("h:5000", "h"),
            ("h", "h"),
            ("[::1]:443", "[::1]"),
            ("::1", "::1"),
        ] {
            assert_eq!(without_port(host), name);
        }
    }

    /// The ways hyper reported a mutual-TLS refusal racing with the request, as seen under
    /// load (the flaky `registries_asking_for_a_client_certificate`), and an OS-level reset.
    #[test]
    fn a_connection_closed_under_the_request_is_recognised_however_worded() {
        for seen in [
            "client error (SendRequest): channel closed",
            "client error (Canceled): operation was canceled: connection closed",
            "client error (Canceled): operation was canceled: connection was not ready",
            "client error (SendRequest): connection closed before message completed",
        ] {
            assert!(closed_in_words(seen), "{seen}");
        }
        assert!(!closed_in_words(
            "client error (Connect): tcp connect error"
        ));

        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connection error")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let reset = Wrapper(io::Error::from_raw_os_error(libc::ECONNRESET));
        assert!(!closed_in_words(&error_chain(&reset)), "the OS capitalises");
        assert!(closed_io(&reset));
        assert!(closed_io(&Wrapper(io::ErrorKind::BrokenPipe.into())));
        assert!(!closed_io(&Wrapper(io::ErrorKind::TimedOut.into())));
    }

    #[test]
    fn certs_d_directories_as_docker_reads_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
        let host = "registry.example:5000";
        for (dir, files) in [
            (&first, &["b.cert", "b.key", "ca.crt", "notes.txt"][..]),
            (&second, &["a.cert", "a.key", "more.crt"]),
        ] {
            std::fs::create_dir_all(dir.join(host)).unwrap();
            for name in files {
                std::fs::write(dir.join(host).join(name), "x").unwrap();
            }
        }
        let dirs = [first.clone(), tmp.path().join("absent"), second.clone()];
        let certs = HostCerts::read(&dirs, host).unwrap();
        assert_eq!(
            certs.cas,
            [
                first.join(host).join("ca.crt"),
                second.join(host).join("more.crt")
            ]
        );
        // The first directory's pair, though `a` sorts first in the second.
        assert_eq!(
            certs.client,
            Some(ClientCertificate {
                cert: first.join(host).join("b.cert"),
                key: first.join(host).join("b.key"),
            })
        );
        assert_eq!(
            HostCerts::read(&dirs, "other.example").unwrap(),
            HostCerts::default()
        );
        // Names from image references, never paths.
        for authority in ["", "..", "../first", "a/b"] {
            assert_eq!(
                HostCerts::read(&dirs, authority).unwrap(),
                HostCerts::default()
            );
        }

        // Half a pair is an error naming the file, either way round.
        std::fs::remove_file(second.join(host).join("a.key")).unwrap();
        let e = HostCerts::read(&dirs, host).unwrap_err().to_string();
        assert!(
            e.contains("a.cert") && e.contains("a.key is missing"),
            "{e}"
        );
        std::fs::remove_file(second.join(host).join("a.cert")).unwrap();
        std::fs::write(second.join(host).join("c.key"), "x").unwrap();
        let e = HostCerts::read(&dirs, host).unwrap_err().to_string();
        assert!(
            e.contains("c.key") && e.contains("c.cert is missing"),
            "{e}"
        );
    }

    #[test]
    fn a_client_certificate_that_is_not_pem_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let pair = ClientCertificate {
            cert: tmp.path().join("c.cert"),
            key: tmp.path().join("c.key"),
        };
        std::fs::write(&pair.cert, "not a certificate\n").unwrap();
        std::fs::write(&pair.key, "not a key\n").unwrap();
        let e = pair.load().unwrap_err().to_string();
        assert!(
            e.contains("client certificate") && e.contains("c.cert"),
            "{e}"
        );
        let e = http_client(&RegistryOptions::default(), None, Some(&pair))
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.key"), "{e}");
    }

    #[test]
    fn challenges() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/ubuntu:pull");
        let (scheme, p) = parse_challenge(r#"Basic realm="testbed-registry""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(p["realm"], "testbed-registry");
    }

    #[test]
    fn link_and_retry_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            "</v2/_catalog?last=b&n=2>; rel=\"next\"".parse().unwrap(),
        );
        let first = "http://127.0.0.1:5000/v2/_catalog?n=2";
        assert_eq!(
            next_link(&h, first).unwrap().as_deref(),
            Some("http://127.0.0.1:5000/v2/_catalog?last=b&n=2")
        );
        // Relative to the page, as RFC 8288 says; absolute on the same host.
        for (link, next) in [
            (
                "<_catalog?last=c>; rel=next",
                "http://127.0.0.1:5000/v2/_catalog?last=c",
            ),
            (
                "<?last=d>; rel=\"next\"",
                "http://127.0.0.1:5000/v2/_catalog?last=d",
            ),
            (
                "<https://127.0.0.1:5000/v2/_catalog?last=e>; rel=\"next\"",
                "https://127.0.0.1:5000/v2/_catalog?last=e",
            ),
        ] {
            h.insert(reqwest::header::LINK, link.parse().unwrap());
            assert_eq!(next_link(&h, first).unwrap().as_deref(), Some(next));
        }
        // Another host or port, or from HTTPS down to HTTP: refused, naming the target.
        for (current, link) in [
            (first, "http://localhost:5000/v2/_catalog?last=f"),
            (first, "http://127.0.0.1:5001/v2/_catalog"),
            (first, "//evil.example/v2/_catalog"),
            (
                "https://127.0.0.1:5000/v2/_catalog",
                "http://127.0.0.1:5000/v2/_catalog?last=g",
            ),
        ] {
            h.insert(
                reqwest::header::LINK,
                format!("<{link}>; rel=\"next\"").parse().unwrap(),
            );
            let e = next_link(&h, current).unwrap_err();
            assert!(e.contains("not followed"), "{e}");
        }
        h.remove(reqwest::header::LINK);
        assert_eq!(next_link(&h, first), Ok(None));
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1_445_412_480)
        );
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS) && retryable(StatusCode::BAD_GATEWAY));
        assert!(!retryable(StatusCode::NOT_FOUND));
    }

    #[test]
    fn insecure_is_per_host() {
        // Nothing speaks HTTPS on a port nobody listens on (let alone plain HTTP).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let insecure = format!("127.0.0.1:{port}");
        let client = RegistryClient::new(RegistryOptions {
            insecure: vec![insecure.clone()],
            ..RegistryOptions::default()
        })
        .unwrap();
        assert_eq!(client.base(&insecure), format!("http://{insecure}"));
        assert_eq!(client.base("127.0.0.1:5001"), "https://127.0.0.1:5001");
        assert_eq!(client.base("quay.io"), "https://quay.io");
        assert!(client.inner.is_insecure(&insecure) && !client.inner.is_insecure("quay.io"));
    }
}
