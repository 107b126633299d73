//! Credentials of a role an AWS profile assumes (`role_arn`): STS `AssumeRole`, signed with
//! the credentials of its source (`source_profile`, `credential_source`), or, for a role with
//! `web_identity_token_file`, an unsigned `AssumeRoleWithWebIdentity` with the token that
//! file holds, as the AWS tools do. The STS
//! endpoint is `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`, else
//! `https://sts.REGION.amazonaws.com`. The role's credentials are fetched again five minutes
//! before they expire. A role with `mfa_serial` sends the device's code, asked for at the
//! controlling terminal (not echoed) each time the role's credentials are fetched; such a
//! role's credentials are shared with the AWS CLI's cache (see [`crate::aws_cli_cache`]). No
//! message quotes a credential or the STS reply's body beyond its error code and message.

use crate::aws_cli_cache;
use crate::aws_process::{parse_time, send_bounded, with_retries, Attempt, Fetched, Refreshing};
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpRequestBody};
use object_store::CredentialProvider;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// A [`CredentialProvider`] assuming a role with STS.
pub(crate) struct RoleCredentials {
    pub role_arn: String,
    pub session_name: String,
    pub external_id: Option<String>,
    pub duration_seconds: Option<u32>,
    /// The MFA device whose current code goes with each `AssumeRole` (typed at the terminal).
    pub mfa_serial: Option<String>,
    /// What the role is assumed with.
    pub source: RoleSigner,
    /// STS's URL and the region requests are signed for.
    pub endpoint: String,
    pub region: String,
    pub http: HttpClient,
    /// `AWS profile 'NAME' in PATH`, for messages.
    pub origin: String,
    pub cached: Refreshing,
    /// Where the AWS CLI caches this role's credentials (`~/.aws/cli/cache`, the file's
    /// key): shared for a role with `mfa_serial`, so that a code is typed once per session.
    pub shared: Option<(PathBuf, String)>,
}

impl std::fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleCredentials")
            .field("role_arn", &self.role_arn)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// What a role is assumed with.
pub(crate) enum RoleSigner {
    /// Credentials that sign an `AssumeRole` request.
    Credentials(Arc<dyn CredentialProvider<Credential = AwsCredential>>),
    /// A file with a web identity token (OIDC) for an unsigned `AssumeRoleWithWebIdentity`.
    TokenFile(String),
}

/// Largest web identity token read.
const MAX_TOKEN: u64 = 64 << 10;

/// Largest STS reply read.
const MAX_REPLY: usize = 64 << 10;
/// `AssumeRole` calls before a transient failure is final (1 s, then 2 s apart).
const STS_ATTEMPTS: u64 = 3;

impl RoleCredentials {
    fn error(&self, why: impl std::fmt::Display) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: format!(
                "assuming role {} of {} at {}: {why}",
                self.role_arn, self.origin, self.endpoint
            )
            .into(),
        }
    }

    /// The form of the `AssumeRole` request, with the MFA code `mfa_code` if one is needed,
    /// or of `AssumeRoleWithWebIdentity` with `token`.
    fn form(&self, mfa_code: Option<&str>, token: Option<&str>) -> String {
        let action = match token {
            Some(_) => "AssumeRoleWithWebIdentity",
            None => "AssumeRole",
        };
        let mut fields = vec![
            ("Action", action.to_string()),
            ("Version", "2011-06-15".to_string()),
            ("RoleArn", self.role_arn.clone()),
            ("RoleSessionName", self.session_name.clone()),
        ];
        if let Some(token) = token {
            fields.push(("WebIdentityToken", token.to_string()));
        }
        if let Some(id) = &self.external_id {
            fields.push(("ExternalId", id.clone()));
        }
        if let Some(d) = self.duration_seconds {
            fields.push(("DurationSeconds", d.to_string()));
        }
        if let (Some(serial), Some(code)) = (&self.mfa_serial, mfa_code) {
            fields.push(("SerialNumber", serial.clone()));
            fields.push(("TokenCode", code.to_string()));
        }
        fields
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The credentials the AWS CLI's cache holds for this role while they last, else
    /// `AssumeRole`, tried again after a dropped connection, a 5xx or throttling.
    async fn assume(&self) -> object_store::Result<Fetched> {
        if let Some((dir, key)) = &self.shared {
            if let Some(cached) = aws_cli_cache::load(dir, key, SystemTime::now()) {
                return Ok(cached);
            }
        }
        // Asked once per fetch, not per attempt: a code is good for one use.
        let code = match &self.mfa_serial {
            Some(serial) => Some(self.mfa_code(serial).await?),
            None => None,
        };
        let fetched = with_retries(STS_ATTEMPTS, || self.assume_once(code.as_deref())).await?;
        if let Some((dir, key)) = &self.shared {
            // Best effort: without it, the next push (or `aws`) asks for a code again.
            let _ = aws_cli_cache::store(dir, key, &fetched);
        }
        Ok(fetched)
    }

    /// The current code of the MFA device `serial`, typed at the terminal (as the AWS CLI
    /// asks for it).
    async fn mfa_code(&self, serial: &str) -> object_store::Result<String> {
        let prompt = format!("Enter MFA code for {serial}: ");
        let typed = tokio::task::spawn_blocking(move || match TERMINAL_PROMPTER.get() {
            Some(prompter) => prompter(&prompt),
            None => ask_at_terminal(&prompt),
        })
        .await;
        let code = match typed {
            Ok(Ok(code)) => code,
            Ok(Err(e)) => {
                return Err(self.error(format!(
                    "mfa_serial {serial}: its code is typed at a terminal, and there is none \
                     ({e}); run the push where one is, or use a profile whose \
                     credential_process hands over credentials"
                )))
            }
            Err(e) => return Err(self.error(e)),
        };
        if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error(format!("mfa_serial {serial}: the code is digits")));
        }
        Ok(code)
    }

    /// The web identity token of the file `path`, as it is now.
    fn token(&self, path: &str) -> object_store::Result<String> {
        use std::io::Read;
        let mut token = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_TOKEN + 1).read_to_string(&mut token))
            .map_err(|e| self.error(format!("web_identity_token_file {path}: {e}")))?;
        let token = token.trim();
        if token.is_empty() || token.len() as u64 > MAX_TOKEN {
            let why = format!("web_identity_token_file {path}: no token of at most 64 KiB");
            return Err(self.error(why));
        }
        Ok(token.to_string())
    }

    async fn assume_once(&self, mfa_code: Option<&str>) -> Result<Fetched, Attempt> {
        let token = match &self.source {
            RoleSigner::TokenFile(path) => Some(self.token(path).map_err(Attempt::Final)?),
            RoleSigner::Credentials(_) => None,
        };
        let form = self.form(mfa_code, token.as_deref());
        let mut request = http::Request::post(self.endpoint.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(HttpRequestBody::from(form.into_bytes()))
            .map_err(|e| Attempt::Final(self.error(e)))?;
        // AssumeRoleWithWebIdentity is not signed: the token is the proof.
        if let RoleSigner::Credentials(source) = &self.source {
            let source = source.get_credential().await.map_err(Attempt::Final)?;
            AwsAuthorizer::new(&source, "sts", &self.region)
                .try_authorize(&mut request, None)
                .map_err(|e| Attempt::Final(self.error(e)))?;
        }
        let (status, body, whole) =
            send_bounded(&self.http, request, MAX_REPLY, |e| self.error(e)).await?;
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let detail = quick_xml::de::from_str::<ErrorReply>(&text).ok();
            let throttled = detail
                .as_ref()
                .is_some_and(|d| d.error.code == "Throttling");
            let detail = detail
                .map(|e| format!(": {} {}", e.error.code, e.error.message))
                .unwrap_or_default();
            let e = self.error(format!("HTTP {status}{detail}"));
            return Err(Attempt::of_status(status, throttled, e));
        }
        if !whole {
            let e = self.error(format!("a reply of more than {} KiB", MAX_REPLY >> 10));
            return Err(Attempt::Final(e));
        }
        parse_reply(&text).map_err(|e| Attempt::Final(self.error(e)))
    }
}

#[async_trait::async_trait]
impl CredentialProvider for RoleCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        self.cached.get(self.assume()).await
    }
}

/// What asks at the terminal: a line typed after a prompt.
pub type TerminalPrompter = Box<dyn Fn(&str) -> std::io::Result<String> + Send + Sync>;

static TERMINAL_PROMPTER: std::sync::OnceLock<TerminalPrompter> = std::sync::OnceLock::new();

/// Sets how `push` asks for an MFA code (once per process; later calls are ignored): a
/// program drawing progress on the terminal hides it meanwhile, then calls
/// [`ask_at_terminal`]. Without one, [`ask_at_terminal`] asks.
pub fn set_terminal_prompter(prompter: TerminalPrompter) {
    let _ = TERMINAL_PROMPTER.set(prompter);
}

/// A line typed at the controlling terminal after `prompt`, not echoed (as `getpass`).
pub fn ask_at_terminal(prompt: &str) -> std::io::Result<String> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: `fd` is open for the whole block and `termios` is plain data the call fills.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(fd, &mut t) == 0).then_some(t)
    };
    if let Some(mut quiet) = saved {
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above; a failure only leaves the echo on.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = (&tty)
        .write_all(prompt.as_bytes())
        .and_then(|()| std::io::BufReader::new(&tty).read_line(&mut line));
    if let Some(t) = saved {
        // SAFETY: as above; the terminal gets its echo back.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
    let _ = (&tty).write_all(b"\n");
    read?;
    Ok(line.trim().to_string())
}

/// `application/x-www-form-urlencoded` of a value: unreserved bytes as they are, the rest
/// percent-encoded (the output is ASCII).
fn form_encode(value: &str) -> String {
    String::from_utf8_lossy(&crate::s3_http::percent_encoded(value.as_bytes())).into_owned()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Reply {
    #[serde(alias = "AssumeRoleWithWebIdentityResult")]
    assume_role_result: ReplyResult,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReplyResult {
    credentials: ReplyCredentials,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReplyCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorReply {
    error: ErrorDetail,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorDetail {
    code: String,
    message: String,
}

/// The credentials of an `AssumeRoleResponse`; the error never quotes them.
fn parse_reply(text: &str) -> Result<Fetched, String> {
    let reply: Reply = quick_xml::de::from_str(text)
        .map_err(|_| "the reply is not an AssumeRoleResponse with credentials".to_string())?;
    let c = reply.assume_role_result.credentials;
    let expires = parse_time(&c.expiration)
        .ok_or_else(|| "the reply's Expiration is not an RFC 3339 time".to_string())?;
    Ok(Fetched {
        credential: Arc::new(AwsCredential {
            key_id: c.access_key_id,
            secret_key: c.secret_access_key,
            token: Some(c.session_token),
        }),
        expires: Some(expires),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::client::HttpConnector;
    use std::io::{Read, Write};

    /// A loopback STS answering each request with the next of `replies` (status, body);
    /// returns its URL and the number of requests it got.
    fn fake_sts(replies: Vec<(u16, &'static str)>) -> (String, std::thread::JoinHandle<usize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut served = 0;
            for (status, body) in replies {
                let Ok((mut conn, _)) = listener.accept() else {
                    break;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                if head.is_empty() {
                    // The test's own wake-up call: nothing more is asked.
                    break;
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let mut form = vec![0u8; length];
                conn.read_exact(&mut form).unwrap();
                assert!(String::from_utf8_lossy(&form).contains("Action=AssumeRole"));
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                served += 1;
            }
            served
        });
        (url, server)
    }

    fn assume_at(url: &str) -> object_store::Result<Arc<AwsCredential>> {
        let options = object_store::ClientOptions::new().with_allow_http(true);
        let source = AwsCredential {
            key_id: "SOURCEKEY".into(),
            secret_key: "source-secret".into(),
            token: None,
        };
        let role = RoleCredentials {
            role_arn: "arn:aws:iam::1:role/r".into(),
            session_name: "s".into(),
            external_id: None,
            duration_seconds: None,
            mfa_serial: None,
            source: RoleSigner::Credentials(Arc::new(object_store::StaticCredentialProvider::new(
                source,
            ))),
            endpoint: url.to_string(),
            region: "us-east-1".into(),
            http: crate::s3_http::BoundedConnector::default()
                .connect(&options)
                .unwrap(),
            origin: "AWS profile 'r' in test".into(),
            cached: Refreshing::default(),
            shared: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(role.get_credential())
    }

    const GRANTED: &str = "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
        <AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>s</SecretAccessKey>\
        <SessionToken>t</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>\
        </Credentials></AssumeRoleResult></AssumeRoleResponse>";

    #[test]
    fn sts_is_asked_again_after_a_server_error_but_not_after_a_refusal() {
        let (url, server) = fake_sts(vec![(503, "busy"), (200, GRANTED)]);
        assert_eq!(assume_at(&url).unwrap().key_id, "ASIA1");
        assert_eq!(server.join().unwrap(), 2);

        let denied = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>\
            <Message>not allowed</Message></Error></ErrorResponse>";
        let (url, server) = fake_sts(vec![(403, denied), (200, GRANTED)]);
        let e = assume_at(&url).unwrap_err().to_string();
        assert!(
            e.contains("HTTP 403 Forbidden: AccessDenied not allowed"),
            "{e}"
        );
        assert!(
            e.contains("assuming role arn:aws:iam::1:role/r of AWS profile 'r'"),
            "{e}"
        );
        // The refusal is final: the second reply is never asked for.
        drop(std::net::TcpStream::connect(
            url.trim_start_matches("http://").trim_end_matches('/'),
        ));
        assert_eq!(server.join().unwrap(), 1);
    }

    #[test]
    fn replies_and_forms_are_as_sts_defines_them() {
        let reply = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
          <AssumeRoleResult><SourceIdentity>x</SourceIdentity>
            <AssumedRoleUser><Arn>arn:aws:sts::1:assumed-role/r/s</Arn>
              <AssumedRoleId>ARO:s</AssumedRoleId></AssumedRoleUser>
            <Credentials><AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>s3cr3t</SecretAccessKey>
              <SessionToken>tok</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>
            </Credentials></AssumeRoleResult>
          <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
        </AssumeRoleResponse>"#;
        let f = parse_reply(reply).unwrap();
        assert_eq!(f.credential.key_id, "ASIA1");
        assert_eq!(f.credential.token.as_deref(), Some("tok"));
        assert!(f.expires.is_some());
        let e = parse_reply("<AssumeRoleResponse>s3cr3t</AssumeRoleResponse>")
            .err()
            .unwrap();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert_eq!(
            form_encode("arn:aws:iam::123:role/a b+c"),
            "arn%3Aaws%3Aiam%3A%3A123%3Arole%2Fa%20b%2Bc"
        );
    }
}
