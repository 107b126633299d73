//! Credentials of an AWS profile signed in through IAM Identity Center (SSO): the access
//! token `aws sso login` left in `~/.aws/sso/cache/SHA1.json` (SHA-1 of the `sso_session`'s
//! name, or of the start URL of a profile without one) is exchanged at the portal
//! (`GetRoleCredentials`: `https://portal.sso.REGION.amazonaws.com`, else
//! `AWS_ENDPOINT_URL_SSO` or `AWS_ENDPOINT_URL`) for the credentials of the profile's
//! account and role, fetched again five minutes before they expire. A sign-in of an
//! `sso_session` that expires within 15 minutes is renewed as the AWS CLI does it: its refresh
//! token and client registration (kept in the same file) get a new access token from IAM
//! Identity Center's OIDC service (`CreateToken` at `https://oidc.REGION.amazonaws.com`, else
//! `AWS_ENDPOINT_URL_SSO_OIDC` or `AWS_ENDPOINT_URL`), written back to the file (0600) for the
//! AWS tools and the next run; if that fails, a sign-in still valid is used as it is. A sign-in
//! that is missing, expired and not renewable (no refresh token, an expired registration, the
//! older start-URL form) or refused says to run `aws sso login --profile NAME`. No message
//! quotes a token, a client secret or the credentials.

use crate::aws_process::{
    send_bounded, sha1_hex, with_retries, write_private, Attempt, Fetched, Refreshing,
};
use crate::aws_profile::SsoSettings;
use object_store::aws::AwsCredential;
use object_store::client::{HttpClient, HttpRequestBody};
use object_store::CredentialProvider;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A [`CredentialProvider`] taking a profile's role credentials from IAM Identity Center.
pub(crate) struct SsoCredentials {
    pub settings: SsoSettings,
    /// `~/.aws/sso/cache` (`None`: HOME is not set).
    pub cache_dir: Option<PathBuf>,
    /// The portal's URL.
    pub endpoint: String,
    /// The URL of IAM Identity Center's OIDC service, which renews sign-ins.
    pub oidc_endpoint: String,
    pub http: HttpClient,
    pub cached: Refreshing,
}

impl std::fmt::Debug for SsoCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoCredentials")
            .field("origin", &self.settings.origin)
            .finish_non_exhaustive()
    }
}

/// Largest portal reply read.
const MAX_REPLY: usize = 64 << 10;
/// Largest token cache file read.
const MAX_TOKEN_FILE: u64 = 1 << 20;
/// Requests to the portal before a transient failure is final (1 s, then 2 s apart).
const ATTEMPTS: u64 = 3;
/// A sign-in expiring within this long is renewed (as the AWS CLI does).
const RENEW_BEFORE: Duration = Duration::from_secs(15 * 60);

/// The part of a cached sign-in this reader needs.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedToken {
    access_token: String,
    expires_at: String,
    /// With the client registration below, what renews the sign-in (`aws sso login` of an
    /// `sso_session` leaves them).
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    registration_expires_at: Option<String>,
}

/// A cached sign-in: where it is, its fields as the file has them (all written back on
/// renewal), and what of them this reader uses.
struct SignIn {
    path: PathBuf,
    fields: serde_json::Map<String, serde_json::Value>,
    token: CachedToken,
    expires: SystemTime,
}

/// What `CreateToken` answers to a refresh.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Renewed {
    access_token: String,
    expires_in: u64,
    refresh_token: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reply {
    role_credentials: RoleCredentials,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoleCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    /// Milliseconds since the Unix epoch.
    expiration: u64,
}

impl SsoCredentials {
    fn error(&self, why: impl std::fmt::Display) -> object_store::Error {
        let s = &self.settings;
        object_store::Error::Generic {
            store: "S3",
            source: format!(
                "IAM Identity Center role {} of account {} for {}: {why}",
                s.role_name, s.account_id, s.origin
            )
            .into(),
        }
    }

    /// The error of a sign-in that is missing, expired or refused.
    fn sign_in(&self, what: &str) -> object_store::Error {
        self.error(format!(
            "{what}; sign in to {} with `aws sso login --profile {}`",
            self.settings.start_url, self.settings.profile
        ))
    }

    /// Where `aws sso login` keeps this profile's token.
    fn token_path(&self) -> Option<PathBuf> {
        let name = sha1_hex(&self.settings.cache_key);
        Some(self.cache_dir.as_ref()?.join(format!("{name}.json")))
    }

    /// The cached sign-in.
    fn read_sign_in(&self) -> object_store::Result<SignIn> {
        let path = self
            .token_path()
            .ok_or_else(|| self.error("HOME is not set: no ~/.aws/sso/cache to read"))?;
        let text = match read_at_most(&path, MAX_TOKEN_FILE) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.sign_in(&format!("no sign-in in {}", path.display())))
            }
            Err(e) => return Err(self.error(format!("{}: {e}", path.display()))),
        };
        let not_a_sign_in = || {
            self.sign_in(&format!(
                "{} is not a sign-in with accessToken and expiresAt",
                path.display()
            ))
        };
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|_| not_a_sign_in())?;
        let token: CachedToken =
            serde_json::from_value(fields.clone().into()).map_err(|_| not_a_sign_in())?;
        let expires = crate::aws_process::parse_time(&token.expires_at)
            .ok_or_else(|| self.sign_in(&format!("{}: expiresAt is no time", path.display())))?;
        Ok(SignIn {
            path,
            fields,
            token,
            expires,
        })
    }

    /// The access token of the cached sign-in, renewed first if it expires soon and can be.
    async fn token(&self) -> object_store::Result<String> {
        let sign_in = self.read_sign_in()?;
        let now = SystemTime::now();
        if sign_in.expires > now + RENEW_BEFORE {
            return Ok(sign_in.token.access_token);
        }
        let renewal = match self.renewal(&sign_in.token, now) {
            Some((client_id, secret, refresh)) => {
                Some(with_retries(ATTEMPTS, || self.renew_once(client_id, secret, refresh)).await)
            }
            None => None,
        };
        match renewal {
            Some(Ok(renewed)) => Ok(self.keep(sign_in, renewed, now)),
            // The AWS CLI, too, goes on with a sign-in that has not expired yet.
            _ if sign_in.expires > now => Ok(sign_in.token.access_token),
            Some(Err(e)) => Err(e),
            None => Err(self.sign_in(&format!(
                "the sign-in expired at {}",
                sign_in.token.expires_at
            ))),
        }
    }

    /// What renews `token` (client id, client secret, refresh token): an `sso_session`'s
    /// sign-in whose client registration has not expired.
    fn renewal<'a>(
        &self,
        token: &'a CachedToken,
        now: SystemTime,
    ) -> Option<(&'a str, &'a str, &'a str)> {
        let registered = token.registration_expires_at.as_deref()?;
        let registered = crate::aws_process::parse_time(registered)?;
        if !self.settings.renewable || registered <= now {
            return None;
        }
        Some((
            token.client_id.as_deref()?,
            token.client_secret.as_deref()?,
            token.refresh_token.as_deref()?,
        ))
    }

    /// One `CreateToken` request with the refresh token.
    async fn renew_once(
        &self,
        client_id: &str,
        secret: &str,
        refresh: &str,
    ) -> Result<Renewed, Attempt> {
        let url = format!("{}/token", self.oidc_endpoint.trim_end_matches('/'));
        let body = serde_json::json!({
            "clientId": client_id,
            "clientSecret": secret,
            "grantType": "refresh_token",
            "refreshToken": refresh,
        });
        let request = http::Request::post(url.as_str())
            .header("content-type", "application/json")
            .body(HttpRequestBody::from(body.to_string()))
            .map_err(|e| Attempt::Final(self.error(e)))?;
        let (status, body, whole) =
            send_bounded(&self.http, request, MAX_REPLY, |e| self.error(e)).await?;
        let failed = |what: String| {
            self.sign_in(&format!(
                "the sign-in expires and {} {what}",
                self.oidc_endpoint
            ))
        };
        if matches!(status.as_u16(), 400 | 401 | 403) {
            // invalid_grant: the refresh token was revoked or has expired.
            let what = format!("refused to renew it (HTTP {status})");
            return Err(Attempt::Final(failed(what)));
        }
        if !status.is_success() {
            let e = failed(format!("answered HTTP {status}"));
            return Err(Attempt::of_status(status, false, e));
        }
        if !whole {
            let e = self.error(format!("a reply of more than {} KiB", MAX_REPLY >> 10));
            return Err(Attempt::Final(e));
        }
        serde_json::from_slice(&body).map_err(|_| {
            Attempt::Final(failed("answered with no accessToken and expiresIn".into()))
        })
    }

    /// Writes a renewed sign-in back where `aws sso login` left it (0600, replaced whole, its
    /// other fields as they were) and returns its access token. A sign-in that cannot be
    /// written is still used: the next run renews it again, or asks to sign in.
    fn keep(&self, mut sign_in: SignIn, renewed: Renewed, now: SystemTime) -> String {
        // A lifetime past a year is no sign-in's (and would overflow the clock's arithmetic).
        let lifetime = Duration::from_secs(renewed.expires_in.min(366 * 86_400));
        let expires = chrono::DateTime::<chrono::Utc>::from(now + lifetime);
        let text = |v: &str| serde_json::Value::String(v.to_string());
        let fields = &mut sign_in.fields;
        fields.insert("accessToken".into(), text(&renewed.access_token));
        let expires = expires.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        fields.insert("expiresAt".into(), text(&expires));
        if let Some(refresh) = &renewed.refresh_token {
            fields.insert("refreshToken".into(), text(refresh));
        }
        let _ = write_private(&sign_in.path, &serde_json::Value::from(sign_in.fields));
        renewed.access_token
    }

    async fn fetch(&self) -> object_store::Result<Fetched> {
        let token = self.token().await?;
        with_retries(ATTEMPTS, || self.fetch_once(&token)).await
    }

    async fn fetch_once(&self, token: &str) -> Result<Fetched, Attempt> {
        let s = &self.settings;
        let url = format!(
            "{}/federation/credentials?account_id={}&role_name={}",
            self.endpoint.trim_end_matches('/'),
            form_encode(&s.account_id),
            form_encode(&s.role_name)
        );
        let request = http::Request::get(url.as_str())
            .header("x-amz-sso_bearer_token", token)
            .body(HttpRequestBody::empty())
            .map_err(|e| Attempt::Final(self.error(e)))?;
        let (status, body, whole) =
            send_bounded(&self.http, request, MAX_REPLY, |e| self.error(e)).await?;
        if status.as_u16() == 401 || status.as_u16() == 403 {
            let what = format!("{} refused the sign-in (HTTP {status})", self.endpoint);
            return Err(Attempt::Final(self.sign_in(&what)));
        }
        if !status.is_success() {
            let e = self.error(format!("{} answered HTTP {status}", self.endpoint));
            return Err(Attempt::of_status(status, false, e));
        }
        if !whole {
            let e = self.error(format!("a reply of more than {} KiB", MAX_REPLY >> 10));
            return Err(Attempt::Final(e));
        }
        parse_reply(&body).map_err(|e| Attempt::Final(self.error(e)))
    }
}

#[async_trait::async_trait]
impl CredentialProvider for SsoCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        self.cached.get(self.fetch()).await
    }
}

/// The credentials of a `GetRoleCredentials` reply; the error never quotes them.
fn parse_reply(body: &[u8]) -> Result<Fetched, String> {
    let reply: Reply = serde_json::from_slice(body)
        .map_err(|_| "the portal's reply is not role credentials".to_string())?;
    let c = reply.role_credentials;
    Ok(Fetched {
        credential: Arc::new(AwsCredential {
            key_id: c.access_key_id,
            secret_key: c.secret_access_key,
            token: Some(c.session_token),
        }),
        expires: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(c.expiration)),
    })
}

/// A file's text, refused beyond `max` bytes.
fn read_at_most(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::other(format!("more than {max} bytes")));
    }
    Ok(text)
}

/// A query value: unreserved bytes as they are, the rest percent-encoded.
fn form_encode(value: &str) -> String {
    String::from_utf8_lossy(&crate::s3_http::percent_encoded(value.as_bytes())).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::client::HttpConnector;

    /// The settings of profile `dev`, signed in through session `my-sso`.
    fn dev() -> SsoSettings {
        SsoSettings {
            start_url: "https://example.awsapps.com/start".into(),
            region: "us-east-1".into(),
            account_id: "111122223333".into(),
            role_name: "Pusher".into(),
            cache_key: "my-sso".into(),
            profile: "dev".into(),
            origin: "AWS profile 'dev' in test".into(),
            renewable: true,
        }
    }

    /// A provider for `settings` with its token cache in `dir` (and no service to reach).
    fn provider(settings: &SsoSettings, dir: &std::path::Path) -> SsoCredentials {
        SsoCredentials {
            settings: settings.clone(),
            cache_dir: Some(dir.to_path_buf()),
            endpoint: "http://127.0.0.1:9".into(),
            oidc_endpoint: "http://127.0.0.1:9".into(),
            http: crate::s3_http::BoundedConnector::default()
                .connect(&object_store::ClientOptions::new().with_allow_http(true))
                .unwrap(),
            cached: Refreshing::default(),
        }
    }

    #[test]
    fn the_token_is_found_by_the_sha1_of_its_session_and_replies_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let sso = provider(&dev(), dir.path());
        // The AWS CLI's name for session "my-sso": the SHA-1 of the name.
        let path = dir
            .path()
            .join("0ad374308c5a4e22f723adf10145eafad7c4031c.json");
        assert_eq!(sso.token_path().unwrap(), path);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let token = || runtime.block_on(sso.token());
        let err = token().unwrap_err().to_string();
        assert!(
            err.contains("no sign-in in") && err.contains("aws sso login --profile dev"),
            "{err}"
        );
        std::fs::write(
            &path,
            r#"{"startUrl": "x", "region": "us-east-1", "accessToken": "s3cr3t-token", "expiresAt": "2020-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let err = token().unwrap_err().to_string();
        assert!(err.contains("expired at 2020-01-01T00:00:00Z"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        std::fs::write(
            &path,
            r#"{"accessToken": "s3cr3t-token", "expiresAt": "2099-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(token().unwrap(), "s3cr3t-token");

        let reply = br#"{"roleCredentials": {"accessKeyId": "ASIA1", "secretAccessKey": "sec",
            "sessionToken": "tok", "expiration": 4102444800000}}"#;
        let f = parse_reply(reply).ok().unwrap();
        assert_eq!(f.credential.key_id, "ASIA1");
        assert_eq!(
            f.expires,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800))
        );
        let e = parse_reply(b"{\"accessKeyId\": \"sec\"}").err().unwrap();
        assert!(!e.contains("sec\""), "{e}");
    }

    #[test]
    fn a_renewed_sign_in_is_written_back_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let settings = dev();
        let sso = |settings: &SsoSettings| provider(settings, dir.path());
        let provider = sso(&settings);
        let path = provider.token_path().unwrap();
        let cached = |registration: &str, refresh: Option<&str>| {
            let refresh = refresh.map_or(String::new(), |r| format!(r#""refreshToken": "{r}","#));
            let text = format!(
                r#"{{"startUrl": "https://example.awsapps.com/start", "region": "us-east-1",
                "accessToken": "old", "expiresAt": "2020-01-01T00:00:00Z", {refresh}
                "clientId": "cid", "clientSecret": "csecret",
                "registrationExpiresAt": "{registration}"}}"#
            );
            std::fs::write(&path, text).unwrap();
            provider.read_sign_in().unwrap()
        };
        let now = SystemTime::now();
        let sign_in = cached("2099-01-01T00:00:00Z", Some("r1"));
        assert_eq!(
            provider.renewal(&sign_in.token, now),
            Some(("cid", "csecret", "r1"))
        );
        // Not renewable: an expired registration, no refresh token, the older form.
        let expired = cached("2020-01-01T00:00:00Z", Some("r1"));
        assert_eq!(provider.renewal(&expired.token, now), None);
        let no_refresh = cached("2099-01-01T00:00:00Z", None);
        assert_eq!(provider.renewal(&no_refresh.token, now), None);
        let older = SsoSettings {
            renewable: false,
            ..settings.clone()
        };
        assert_eq!(sso(&older).renewal(&sign_in.token, now), None);

        let renewed = Renewed {
            access_token: "new".into(),
            expires_in: 3600,
            refresh_token: Some("r2".into()),
        };
        let sign_in = cached("2099-01-01T00:00:00Z", Some("r1"));
        assert_eq!(provider.keep(sign_in, renewed, now), "new");
        let kept = provider.read_sign_in().unwrap();
        assert_eq!(kept.token.access_token, "new");
        assert_eq!(kept.token.refresh_token.as_deref(), Some("r2"));
        assert_eq!(kept.token.client_secret.as_deref(), Some("csecret"));
        assert_eq!(kept.fields["startUrl"], "https://example.awsapps.com/start");
        let in_an_hour = now + Duration::from_secs(3600);
        let off = kept
            .expires
            .max(in_an_hour)
            .duration_since(kept.expires.min(in_an_hour));
        assert!(
            off.unwrap() <= Duration::from_secs(1),
            "{:?}",
            kept.token.expires_at
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
