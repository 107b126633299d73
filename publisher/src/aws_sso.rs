//! Credentials of an AWS profile signed in through IAM Identity Center (SSO): the access
//! token `aws sso login` left in `~/.aws/sso/cache/SHA1.json` (SHA-1 of the `sso_session`'s
//! name, or of the start URL of a profile without one) is exchanged at the portal
//! (`GetRoleCredentials`: `https://portal.sso.REGION.amazonaws.com`, else
//! `AWS_ENDPOINT_URL_SSO` or `AWS_ENDPOINT_URL`) for the credentials of the profile's
//! account and role, fetched again five minutes before they expire. A missing or expired
//! sign-in is not renewed here: the error says to run `aws sso login --profile NAME`. No
//! message quotes the token or the credentials.

use crate::aws_process::{send_bounded, with_retries, Attempt, Fetched, Refreshing};
use crate::aws_profile::SsoSettings;
use object_store::aws::AwsCredential;
use object_store::client::{HttpClient, HttpRequestBody};
use object_store::CredentialProvider;
use sha1::{Digest, Sha1};
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

/// The part of a cached sign-in this reader needs.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedToken {
    access_token: String,
    expires_at: String,
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
        let name = hex(&Sha1::digest(self.settings.cache_key.as_bytes()));
        Some(self.cache_dir.as_ref()?.join(format!("{name}.json")))
    }

    /// The cached access token, if it is there and still valid.
    fn token(&self) -> object_store::Result<String> {
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
        let cached: CachedToken = serde_json::from_str(&text).map_err(|_| {
            self.sign_in(&format!(
                "{} is not a sign-in with accessToken and expiresAt",
                path.display()
            ))
        })?;
        let expires = crate::aws_process::parse_time(&cached.expires_at)
            .ok_or_else(|| self.sign_in(&format!("{}: expiresAt is no time", path.display())))?;
        if expires <= SystemTime::now() {
            return Err(self.sign_in(&format!("the sign-in expired at {}", cached.expires_at)));
        }
        Ok(cached.access_token)
    }

    async fn fetch(&self) -> object_store::Result<Fetched> {
        let token = self.token()?;
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A query value: unreserved bytes as they are, the rest percent-encoded.
fn form_encode(value: &str) -> String {
    String::from_utf8_lossy(&crate::s3_http::percent_encoded(value.as_bytes())).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::client::HttpConnector;

    #[test]
    fn the_token_is_found_by_the_sha1_of_its_session_and_replies_are_read() {
        let settings = SsoSettings {
            start_url: "https://example.awsapps.com/start".into(),
            region: "us-east-1".into(),
            account_id: "111122223333".into(),
            role_name: "Pusher".into(),
            cache_key: "my-sso".into(),
            profile: "dev".into(),
            origin: "AWS profile 'dev' in test".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let sso = SsoCredentials {
            settings,
            cache_dir: Some(dir.path().to_path_buf()),
            endpoint: "http://127.0.0.1:9".into(),
            http: crate::s3_http::BoundedConnector::default()
                .connect(&object_store::ClientOptions::new().with_allow_http(true))
                .unwrap(),
            cached: Refreshing::default(),
        };
        // The AWS CLI's name for session "my-sso": the SHA-1 of the name.
        let path = dir
            .path()
            .join("0ad374308c5a4e22f723adf10145eafad7c4031c.json");
        assert_eq!(sso.token_path().unwrap(), path);
        let err = sso.token().unwrap_err().to_string();
        assert!(
            err.contains("no sign-in in") && err.contains("aws sso login --profile dev"),
            "{err}"
        );
        std::fs::write(
            &path,
            r#"{"startUrl": "x", "region": "us-east-1", "accessToken": "s3cr3t-token", "expiresAt": "2020-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let err = sso.token().unwrap_err().to_string();
        assert!(err.contains("expired at 2020-01-01T00:00:00Z"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        std::fs::write(
            &path,
            r#"{"accessToken": "s3cr3t-token", "expiresAt": "2099-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(sso.token().unwrap(), "s3cr3t-token");

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
}
