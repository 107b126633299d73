//! TLS for a registry whose certificates the user trusts explicitly (`--registry-ca`,
//! `certs.d/HOST[:PORT]/*.crt`): [`publisher::tls`], which `push` shares for S3 endpoints,
//! and its tests against registries.

pub(super) use publisher::tls::{client_config, Identity};

#[cfg(test)]
mod tests {
    use super::super::{http_client_builder, RegistryClient, RegistryOptions};
    use crate::image::reference::RegistryRef;
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Docker's recipe for a registry's self-signed certificate (CA:TRUE, as `openssl req
    /// -x509` marks it) for `san`: `(certificate, key)` PEM files in `dir`.
    fn docker_recipe_cert(dir: &Path, name: &str, san: &str) -> (PathBuf, PathBuf) {
        self_signed(dir, name, &[&format!("subjectAltName={san}")])
    }

    /// A self-signed certificate (CA:TRUE) with the extensions `exts` (`-addext` values).
    fn self_signed(dir: &Path, name: &str, exts: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let status = Command::new("openssl")
            .args([
                "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-x509", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1"])
            .args(exts.iter().flat_map(|e| ["-addext", e]))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"));
        (cert, key)
    }

    /// An HTTPS registry on 127.0.0.1 presenting `cert` that answers every request with one
    /// tag list; returns `127.0.0.1:PORT`.
    fn serve(cert: &Path, key: &Path) -> String {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor
            .set_private_key_file(key, SslFiletype::PEM)
            .unwrap();
        acceptor.set_certificate_chain_file(cert).unwrap();
        let acceptor = acceptor.build();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                // A client refusing the certificate ends the handshake: nothing to answer.
                let Ok(stream) = acceptor.accept(stream) else {
                    continue;
                };
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let body = r#"{"name":"r/x","tags":["1"]}"#;
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        addr
    }

    fn list_tags(
        addr: &str,
        tune: impl FnOnce(&mut RegistryOptions),
    ) -> Result<Vec<String>, String> {
        let mut options = RegistryOptions {
            certs_dirs: Vec::new(),
            max_retries: 0,
            ..RegistryOptions::default()
        };
        tune(&mut options);
        let repo = RegistryRef::parse(&format!("{addr}/r/x:1")).unwrap();
        let client = RegistryClient::new(options).map_err(|e| e.to_string())?;
        client.list_tags(&repo).map_err(|e| e.to_string())
    }

    #[test]
    fn a_trusted_self_signed_ca_certificate_is_accepted_as_the_servers() {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = docker_recipe_cert(tmp.path(), "domain", "IP:127.0.0.1");
        let addr = serve(&cert, &key);
        let ca = list_tags(&addr, |o| o.ca_files = vec![cert.clone()]);
        assert_eq!(ca, Ok(vec!["1".to_owned()]));
        let host_dir = tmp.path().join("certs.d").join(&addr);
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::copy(&cert, host_dir.join("ca.crt")).unwrap();
        let certs_d = list_tags(&addr, |o| o.certs_dirs = vec![tmp.path().join("certs.d")]);
        assert_eq!(certs_d, Ok(vec!["1".to_owned()]));
    }

    /// Trusting a certificate trusts it for what it allows: one restricted to client
    /// authentication does not identify a server (as for Go and curl).
    #[test]
    fn a_trusted_self_signed_certificate_must_allow_server_authentication() {
        let tmp = tempfile::tempdir().unwrap();
        let san = "subjectAltName=IP:127.0.0.1";
        let (cert, key) = self_signed(tmp.path(), "client", &[san, "extendedKeyUsage=clientAuth"]);
        let addr = serve(&cert, &key);
        let e = list_tags(&addr, |o| o.ca_files = vec![cert.clone()]).unwrap_err();
        assert!(e.contains("InvalidPurpose"), "{e}");
        let (cert, key) = self_signed(tmp.path(), "server", &[san, "extendedKeyUsage=serverAuth"]);
        let addr = serve(&cert, &key);
        let ok = list_tags(&addr, |o| o.ca_files = vec![cert.clone()]);
        assert_eq!(ok, Ok(vec!["1".to_owned()]));
    }

    #[test]
    fn a_self_signed_ca_certificate_is_refused_unless_it_is_the_one_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = docker_recipe_cert(tmp.path(), "domain", "IP:127.0.0.1");
        let (other, _) = docker_recipe_cert(tmp.path(), "other", "IP:127.0.0.1");
        let addr = serve(&cert, &key);
        // webpki checks the server's certificate itself before looking for its issuer.
        let e = list_tags(&addr, |_| {}).unwrap_err();
        assert!(e.contains("CaUsedAsEndEntity"), "{e}");
        assert!(e.contains("marked as a CA"), "the hint says why: {e}");
        // Same subject, another key: trusting it trusts nothing else.
        let e = list_tags(&addr, |o| o.ca_files = vec![other.clone()]).unwrap_err();
        assert!(e.contains("invalid peer certificate"), "{e}");
    }

    #[test]
    fn a_trusted_self_signed_certificate_is_refused_for_a_host_it_does_not_name() {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = docker_recipe_cert(tmp.path(), "domain", "IP:127.0.0.1");
        let addr = serve(&cert, &key);
        let port = addr.rsplit(':').next().unwrap();
        let files = [cert];
        let fetch = |host: &str| {
            let client =
                http_client_builder(&RegistryOptions::default(), Some(&files), None, false)
                    .unwrap()
                    .resolve(host, addr.parse().unwrap())
                    .build()
                    .unwrap();
            let url = format!("https://{host}:{port}/v2/");
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async { client.get(url).send().await.map(|r| r.status().as_u16()) })
                .map_err(|e| format!("{e:?}"))
        };
        // The same client setup reaches the host the certificate names...
        assert_eq!(fetch("127.0.0.1"), Ok(200));
        // ...and not another name for the same server.
        let e = fetch("registry.example").unwrap_err();
        assert!(e.contains("NotValidForName"), "{e}");
    }
}
