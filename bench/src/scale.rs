//! Case 5's registry: many small images on one base, as a registry migration meets them.
//!
//! `bench-scale/appR:vT` for R < repos and T < tags: the testbed's Debian base layer (mounted
//! from `testbed/base`, so it is stored once) and one small layer of 31 files of its own. Tags
//! of one repository share most of those files; a third of them change every 5 tags. Pushed
//! straight through the registry API (one monolithic upload per blob), about 100 images/s,
//! and only what the registry lacks.

use crate::Error;
use fixtures::http::{request, request_with_body, HttpResponse};
use rayon::prelude::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;

/// The repository prefix below which the images are pushed.
pub const PREFIX: &str = "bench-scale";
const BASE: &str = "testbed/base";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Pushes the `repos` × `tags` images that the registry at `registry` lacks.
pub fn ensure(registry: &str, repos: usize, tags: usize) -> Result<(), Error> {
    let api = Api { registry };
    let manifest = api.json(&format!("/v2/{BASE}/manifests/bookworm"))?;
    let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
    let config = api.json(&format!("/v2/{BASE}/blobs/{config_digest}"))?;
    let base = Base { manifest, config };
    let missing: Vec<(usize, usize)> = (0..repos)
        .flat_map(|r| {
            let have = api.tags(&repo_name(r));
            (0..tags)
                .filter(move |t| !have.contains(&format!("v{t}")))
                .map(move |t| (r, t))
        })
        .collect();
    missing
        .par_iter()
        .try_for_each(|&(r, t)| api.push_image(&base, r, t))
}

/// `bench-scale/appR`.
pub fn repo_name(r: usize) -> String {
    format!("{PREFIX}/app{r}")
}

struct Base {
    manifest: Value,
    config: Value,
}

struct Api<'a> {
    registry: &'a str,
}

impl Api<'_> {
    fn fail(&self, path: &str, what: impl std::fmt::Display) -> Error {
        Error::Registry {
            url: format!("http://{}{path}", self.registry),
            message: what.to_string(),
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        expect: u16,
    ) -> Result<HttpResponse, Error> {
        let response = request_with_body(self.registry, method, path, headers, body)
            .map_err(|e| self.fail(path, e))?;
        if response.status != expect {
            let text = String::from_utf8_lossy(&response.body);
            let text = text.trim();
            return Err(self.fail(
                path,
                format!("{method}: status {}: {text}", response.status),
            ));
        }
        Ok(response)
    }

    fn json(&self, path: &str) -> Result<Value, Error> {
        let accept = [("Accept", OCI_MANIFEST)];
        let response = self.send("GET", path, &accept, None, 200)?;
        serde_json::from_slice(&response.body).map_err(|e| self.fail(path, e))
    }

    /// The tags `repo` has (none when the registry does not know it).
    fn tags(&self, repo: &str) -> Vec<String> {
        let Ok(response) = request(self.registry, "GET", &format!("/v2/{repo}/tags/list"), &[])
        else {
            return Vec::new();
        };
        let json: Value = serde_json::from_slice(&response.body).unwrap_or_default();
        json["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Uploads `data` into `repo` unless it is there; returns its digest.
    fn put_blob(&self, repo: &str, data: &[u8]) -> Result<String, Error> {
        let digest = sha256(data);
        let blob = format!("/v2/{repo}/blobs/{digest}");
        if request(self.registry, "HEAD", &blob, &[]).is_ok_and(|r| r.status == 200) {
            return Ok(digest);
        }
        let start = format!("/v2/{repo}/blobs/uploads/");
        let response = self.send("POST", &start, &[], Some(b""), 202)?;
        let location = response
            .header("location")
            .ok_or_else(|| self.fail(&start, "no Location in the answer"))?;
        // The registry answers with an absolute URL; requests take the path.
        let path = match location.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let put = format!("{path}{sep}digest={digest}");
        let octets = [("Content-Type", "application/octet-stream")];
        self.send("PUT", &put, &octets, Some(data), 201)?;
        Ok(digest)
    }

    fn push_image(&self, base: &Base, r: usize, t: usize) -> Result<(), Error> {
        let repo = repo_name(r);
        let base_layer = &base.manifest["layers"][0];
        let mount = format!(
            "/v2/{repo}/blobs/uploads/?mount={}&from={BASE}",
            base_layer["digest"].as_str().unwrap_or_default()
        );
        self.send("POST", &mount, &[], Some(b""), 201)?;
        let (tar, gz) = app_layer(r, t).map_err(|e| self.fail(&repo, e))?;
        let layer = self.put_blob(&repo, &gz)?;
        let mut config = base.config.clone();
        config["rootfs"]["diff_ids"] = json!([base.config["rootfs"]["diff_ids"][0], sha256(&tar)]);
        let config = serde_json::to_vec(&config).map_err(|e| self.fail(&repo, e))?;
        let config_digest = self.put_blob(&repo, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [base_layer, {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                    "digest": layer, "size": gz.len()}],
        });
        let path = format!("/v2/{repo}/manifests/v{t}");
        let body = manifest.to_string();
        let headers = [("Content-Type", OCI_MANIFEST)];
        self.send("PUT", &path, &headers, Some(body.as_bytes()), 201)?;
        Ok(())
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Image (r, t)'s own layer, as (tar, gzip of it).
fn app_layer(r: usize, t: usize) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: String, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        tar.append_data(&mut header, name, data)
    };
    for k in 0..30 {
        let generation = if k % 3 == 0 { t / 5 } else { 0 };
        let text = format!("# app {r} module {k} generation {generation}\n")
            + &format!("x = {k}\n").repeat(200);
        add(format!("opt/app{r}/lib/mod{k}.py"), text.as_bytes())?;
    }
    add(
        format!("opt/app{r}/VERSION"),
        format!("{r}.{t}\n").as_bytes(),
    )?;
    let tar = tar.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    Ok((tar, gz.finish()?))
}
