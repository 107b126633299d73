//! Credentials from an AWS profile's `credential_process`: a command (split into words as
//! the AWS tools split it, not run by a shell) that prints
//! `{"Version": 1, "AccessKeyId": …, "SecretAccessKey": …, "SessionToken": …, "Expiration": …}`.
//! It is how `aws-vault`, `aws configure export-credentials --format process` and many
//! single-sign-on helpers hand credentials over. The command runs when the first request is
//! signed and again five minutes before the `Expiration` it gave, so a long push keeps
//! working. Neither its output nor its error output is ever shown: both may hold secrets.

use object_store::aws::AwsCredential;
use object_store::CredentialProvider;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Credentials are fetched again this long before they expire…
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// …but not sooner than this after they were fetched: a helper handing out credentials that
/// expire within minutes would otherwise run for every request.
const REFRESH_AFTER_AT_LEAST: Duration = Duration::from_secs(30);

/// A [`CredentialProvider`] running `credential_process`.
pub(crate) struct ProcessCredentials {
    /// The command's words.
    argv: Vec<String>,
    /// Where it was configured, for messages: `AWS profile 'NAME' in PATH`.
    origin: String,
    cached: Refreshing,
}

/// Credentials fetched when first asked for, and again when they are about to expire.
#[derive(Default)]
pub(crate) struct Refreshing {
    /// The credentials and when to fetch them again.
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

impl Refreshing {
    /// The cached credentials while they last, else those `fetch` gets (and caches).
    pub(crate) async fn get<F>(&self, fetch: F) -> object_store::Result<Arc<AwsCredential>>
    where
        F: std::future::Future<Output = object_store::Result<Fetched>>,
    {
        let mut cached = self.cached.lock().await;
        if let Some((credential, refresh_at)) = cached.as_ref() {
            if refresh_at.is_none_or(|t| SystemTime::now() < t) {
                return Ok(Arc::clone(credential));
            }
        }
        let fetched_at = SystemTime::now();
        let fetched = fetch.await?;
        let refresh_at = fetched.refresh_at(fetched_at);
        *cached = Some((Arc::clone(&fetched.credential), refresh_at));
        Ok(fetched.credential)
    }
}

/// How one request for credentials (to STS, to the SSO portal) failed.
pub(crate) enum Attempt {
    /// Worth another try: the connection dropped, the service answered 5xx, 429 or throttled.
    Transient(object_store::Error),
    Final(object_store::Error),
}

impl Attempt {
    /// A service's refusal with `status`: worth another try on 5xx, 429 or when it says it
    /// was `throttled`.
    pub(crate) fn of_status(
        status: http::StatusCode,
        throttled: bool,
        e: object_store::Error,
    ) -> Attempt {
        match status.is_server_error() || status.as_u16() == 429 || throttled {
            true => Attempt::Transient(e),
            false => Attempt::Final(e),
        }
    }
}

/// `once` until it succeeds, fails for good, or has failed transiently `attempts` times
/// (1 s, then 2 s, … apart).
pub(crate) async fn with_retries<T, F, R>(attempts: u64, mut once: F) -> object_store::Result<T>
where
    F: FnMut() -> R,
    R: std::future::Future<Output = Result<T, Attempt>>,
{
    let mut attempt = 1;
    loop {
        match once().await {
            Err(Attempt::Transient(_)) if attempt < attempts => {
                tokio::time::sleep(Duration::from_secs(attempt)).await;
                attempt += 1;
            }
            Err(Attempt::Transient(e) | Attempt::Final(e)) => return Err(e),
            Ok(fetched) => return Ok(fetched),
        }
    }
}

/// Sends `request` and reads at most `max` bytes of the reply: its status, those bytes and
/// whether that was all. A dropped connection is transient, described by `error`.
pub(crate) async fn send_bounded(
    http: &object_store::client::HttpClient,
    request: object_store::client::HttpRequest,
    max: usize,
    error: impl Fn(String) -> object_store::Error,
) -> Result<(http::StatusCode, Vec<u8>, bool), Attempt> {
    let transient =
        |e: &dyn std::error::Error| Attempt::Transient(error(crate::error::one_line(e)));
    let response = http.execute(request).await.map_err(|e| transient(&e))?;
    let status = response.status();
    let (body, whole) = crate::s3_http::read_at_most(response.into_body(), max)
        .await
        .map_err(|e| transient(&e))?;
    Ok((status, body, whole))
}

pub(crate) struct Fetched {
    pub credential: Arc<AwsCredential>,
    pub expires: Option<SystemTime>,
}

impl Fetched {
    /// When to run the command again (`None`: the credentials do not expire).
    fn refresh_at(&self, fetched_at: SystemTime) -> Option<SystemTime> {
        let soonest = fetched_at + REFRESH_AFTER_AT_LEAST;
        self.expires
            .map(|e| e.checked_sub(REFRESH_BEFORE).unwrap_or(e).max(soonest))
    }
}

impl std::fmt::Debug for ProcessCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials: this may end up in a log.
        f.debug_struct("ProcessCredentials")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl ProcessCredentials {
    /// `None` when `command` does not split into words (an unclosed quote) or is empty.
    pub(crate) fn new(command: &str, origin: String) -> Option<ProcessCredentials> {
        let argv = shlex::split(command).filter(|a| !a.is_empty())?;
        Some(ProcessCredentials {
            argv,
            origin,
            cached: Refreshing::default(),
        })
    }

    /// Runs the command `argv` and reads its answer (blocking).
    fn fetch(argv: &[String]) -> Result<Fetched, String> {
        let (program, args) = argv.split_first().ok_or("an empty command")?;
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{program} failed ({})", out.status));
        }
        parse(&out.stdout).map_err(|why| format!("{program}: {why}"))
    }

    fn error(&self, why: String) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: format!("credential_process of {}: {why}", self.origin).into(),
        }
    }
}

#[async_trait::async_trait]
impl CredentialProvider for ProcessCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        // Lazy: the command's words are copied only when it is run.
        let fetch = async {
            let argv = self.argv.clone();
            tokio::task::spawn_blocking(move || Self::fetch(&argv))
                .await
                .map_err(|e| self.error(e.to_string()))?
                .map_err(|e| self.error(e))
        };
        self.cached.get(fetch).await
    }
}

/// The process's answer, as the AWS tools define it (Version 1).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    version: Option<u32>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    expiration: Option<String>,
}

/// The credential in `stdout`; the error never quotes it.
fn parse(stdout: &[u8]) -> Result<Fetched, String> {
    let answer: Answer = serde_json::from_slice(stdout).map_err(|e| {
        // The position only: the text around it may be a secret.
        format!(
            "its output is not the JSON object expected (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if answer.version != Some(1) {
        return Err(format!(
            "its output says Version {:?}; only Version 1 is defined",
            answer.version
        ));
    }
    let nonempty = |v: Option<String>, name: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| format!("its output has no {name}"))
    };
    let key_id = nonempty(answer.access_key_id, "AccessKeyId")?;
    let secret_key = nonempty(answer.secret_access_key, "SecretAccessKey")?;
    let expires = match answer.expiration.filter(|e| !e.is_empty()) {
        None => None,
        Some(text) => Some(
            parse_time(&text)
                .ok_or_else(|| "its Expiration is not an RFC 3339 time".to_string())?,
        ),
    };
    Ok(Fetched {
        credential: Arc::new(AwsCredential {
            key_id,
            secret_key,
            token: answer.session_token.filter(|t| !t.is_empty()),
        }),
        expires,
    })
}

/// Replaces `path` with `value`'s JSON through a new file of mode 0600 beside it.
pub(crate) fn write_private(
    path: &std::path::Path,
    value: &serde_json::Value,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut staged = path.as_os_str().to_owned();
    staged.push(format!(".{}.tmp", std::process::id()));
    let staged = std::path::PathBuf::from(staged);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .and_then(|mut f| f.write_all(value.to_string().as_bytes()));
    match written.and_then(|()| std::fs::rename(&staged, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            Err(e)
        }
    }
}

/// The SHA-1 of `text` in hex: how the AWS CLI names its cache files (botocore's
/// `hashlib.sha1(...).hexdigest()`).
pub(crate) fn sha1_hex(text: &str) -> String {
    use sha1::{Digest, Sha1};
    hex::encode(Sha1::digest(text.as_bytes()))
}

/// An RFC 3339 time (as AWS gives expirations).
pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let secs = u64::try_from(t.timestamp()).unwrap_or(0);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_the_aws_tools_define_them() {
        let ok = br#"{"Version": 1, "AccessKeyId": "AKID", "SecretAccessKey": "s3cr3t",
            "SessionToken": "tok", "Expiration": "2030-01-01T00:00:00Z"}"#;
        let f = parse(ok).unwrap();
        assert_eq!(f.credential.key_id, "AKID");
        assert_eq!(f.credential.token.as_deref(), Some("tok"));
        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
        assert_eq!(f.expires, Some(expected));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_000_000);
        assert_eq!(f.refresh_at(now), Some(expected - REFRESH_BEFORE));
        // Expiring within the refresh margin: fetched again 30 s later, not per request.
        let soon = now + Duration::from_secs(60);
        let short = Fetched {
            expires: Some(soon),
            ..f
        };
        assert_eq!(short.refresh_at(now), Some(now + REFRESH_AFTER_AT_LEAST));
        let lasting = br#"{"Version": 1, "AccessKeyId": "AKID", "SecretAccessKey": "s3cr3t"}"#;
        let lasting = parse(lasting).unwrap();
        assert!(lasting.expires.is_none() && lasting.refresh_at(now).is_none());

        let refused: [(&[u8], &str); 4] = [
            (b"s3cr3t garbage", "not the JSON object"),
            (br#"{"Version": 2, "AccessKeyId": "a", "SecretAccessKey": "s3cr3t"}"#, "Version"),
            (br#"{"Version": 1, "AccessKeyId": "a"}"#, "no SecretAccessKey"),
            (
                br#"{"Version": 1, "AccessKeyId": "a", "SecretAccessKey": "s3cr3t", "Expiration": "soon"}"#,
                "Expiration",
            ),
        ];
        for (answer, why) in refused {
            let e = parse(answer).err().unwrap();
            assert!(e.contains(why), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn commands_are_split_into_words_not_run_by_a_shell() {
        let p = ProcessCredentials::new(r#"/bin/helper --profile "a b" 'c'"#, "x".into()).unwrap();
        assert_eq!(p.argv, ["/bin/helper", "--profile", "a b", "c"]);
        assert!(ProcessCredentials::new("\"unclosed", "x".into()).is_none());
        assert!(ProcessCredentials::new("   ", "x".into()).is_none());
    }
}
