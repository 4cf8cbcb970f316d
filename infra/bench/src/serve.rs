//! `crmbridge serve` as the benchmarks run it: a release binary on a fresh
//! data directory (fsync on), any vendor URL allowed (the fakes listen on
//! loopback), its owner key read from the banner.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running server; killed when dropped.
pub struct Serve {
    child: Child,
    pub base: String,
    pub key: String,
    pub pid: u32,
    _data: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// POSTs an admin request with the owner key; the body of a 2xx, else
    /// an error naming the status and body.
    pub async fn admin(
        &self,
        http: &reqwest::Client,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let response = http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "{path}: {status}: {body}");
        Ok(body)
    }
}

pub fn spawn(binary: &Path, workers: usize) -> anyhow::Result<Serve> {
    let data = tempfile::tempdir()?;
    let mut child = Command::new(binary)
        .args(["serve", "--port", "0", "--workers"])
        .arg(workers.to_string())
        .args(["--allow-any-vendor-url", "--data-dir"])
        .arg(data.path().join("data"))
        .env("CRMBRIDGE_LOG", "warn")
        .env_remove("CRMBRIDGE_ENCRYPTION_KEYS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut base, mut key) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line?;
        if let Some(k) = line.strip_prefix("owner API key (shown once, store it now): ") {
            key = k.to_owned();
        }
        if let Some(url) = line.strip_prefix("crmbridge listening on ") {
            base = url.to_owned();
            break;
        }
    }
    anyhow::ensure!(!base.is_empty(), "serve exited before listening");
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Serve {
        child,
        base,
        key,
        pid,
        _data: data,
    })
}
