//! Cold start: every Lambda bootstrap started under the Lambda Runtime API
//! emulator (crmbridge-lambda-harness), timing process start → the first
//! `GET /next` (init) and the first invocation, against a hello-world
//! lambda_runtime binary built with the same profile. Also the binary and
//! zip sizes and the peak RSS after the first invocation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crmbridge_lambda_harness::{FunctionSpec, HttpApiRequest, LambdaEmulator};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Serialize)]
pub struct ColdStart {
    pub function: String,
    pub binary_bytes: u64,
    pub zip_bytes: u64,
    pub init_ms_median: f64,
    pub first_invocation_ms_median: f64,
    pub warm_invocation_ms_median: f64,
    pub peak_rss_kib: u64,
    pub init_ratio_to_hello: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn zip_size(binary: &Path) -> anyhow::Result<u64> {
    // Lambda takes a zip with `bootstrap` at its root; python's zipfile
    // (deflate, level 9) stands in for `zip -9`.
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("bootstrap.zip");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED, compresslevel=9); z.write(sys.argv[1], 'bootstrap'); z.close()",
        ])
        .arg(binary)
        .arg(&out)
        .status()?;
    anyhow::ensure!(status.success(), "zipping {} failed", binary.display());
    Ok(std::fs::metadata(out)?.len())
}

fn peak_rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The sample each function is invoked with (a cheap, realistic event).
fn sample(function: &str) -> Value {
    match function {
        "webhook" => HttpApiRequest::post("/hooks/con_missing/tok")
            .json(&json!({"id": "1"}))
            .to_event(),
        "chat" => HttpApiRequest::post("/chat/con_missing/tok")
            .json(&json!({"id": "1"}))
            .to_event(),
        "admin" => HttpApiRequest::get("/health").to_event(),
        "tick" => {
            json!({"version": "0", "id": "t", "detail-type": "Scheduled Event", "source": "aws.events",
                         "account": "1", "time": "2026-11-24T10:00:00Z", "region": "us-east-1", "resources": [], "detail": {}})
        }
        "dispatch" => {
            json!({"version": "0", "id": "d", "detail-type": "generic.x", "source": "crmbridge", "account": "1",
                             "time": "2026-11-24T10:00:00Z", "region": "us-east-1", "resources": [],
                             "detail": {"id": "ev_bench", "tenant": "t", "connection": "c", "app": "generic", "kind": "generic.x",
                                        "subject": {"type": "record", "id": "1"}, "occurred_at": "2026-11-24T10:00:00Z",
                                        "received_at": "2026-11-24T10:00:00Z", "data": {}}})
        }
        _ => json!({"ping": true}),
    }
}

/// The bootstraps measured, hello-world first (the others' yardstick).
const FUNCTIONS: [&str; 6] = [
    "hello-lambda",
    "webhook",
    "chat",
    "admin",
    "dispatch",
    "tick",
];

/// One function's timings over the rounds.
#[derive(Default)]
struct Samples {
    inits: Vec<f64>,
    firsts: Vec<f64>,
    warms: Vec<f64>,
    rss: u64,
}

pub async fn run(
    dir: &Path,
    env: &[(String, String)],
    rounds: usize,
) -> anyhow::Result<Vec<ColdStart>> {
    let emulator = LambdaEmulator::new();
    let binaries: Vec<PathBuf> = FUNCTIONS.iter().map(|f| dir.join(f)).collect();
    for binary in &binaries {
        anyhow::ensure!(
            binary.exists(),
            "{} is missing: build with --release first",
            binary.display()
        );
    }
    let mut samples: Vec<Samples> = FUNCTIONS.iter().map(|_| Samples::default()).collect();
    // Round by round, every function once per round: a machine that slows
    // down mid-run slows every function alike, and the ratios to
    // hello-world hold.
    for _ in 0..rounds {
        for ((function, binary), taken) in FUNCTIONS.iter().zip(&binaries).zip(&mut samples) {
            let process = emulator
                .spawn(
                    FunctionSpec::new(binary)
                        .name(*function)
                        .envs(env.iter().cloned())
                        .timeout(Duration::from_secs(30)),
                )
                .await?;
            process
                .invoke(sample(function))
                .await
                .map_err(|e| anyhow::anyhow!("{function}: {e}"))?;
            let first = process.last_invocation_duration().unwrap_or_default();
            process
                .invoke(sample(function))
                .await
                .map_err(|e| anyhow::anyhow!("{function}: {e}"))?;
            let warm = process.last_invocation_duration().unwrap_or_default();
            taken.warms.push(warm.as_secs_f64() * 1000.0);
            taken
                .inits
                .push(process.init_duration().unwrap_or_default().as_secs_f64() * 1000.0);
            taken.firsts.push(first.as_secs_f64() * 1000.0);
            taken.rss = taken.rss.max(peak_rss_kib(process.pid()));
        }
    }
    let hello_init = median(samples[0].inits.clone());
    let mut results = Vec::new();
    for ((function, binary), taken) in FUNCTIONS.iter().zip(&binaries).zip(samples) {
        let init = median(taken.inits);
        results.push(ColdStart {
            function: (*function).to_owned(),
            binary_bytes: std::fs::metadata(binary)?.len(),
            zip_bytes: zip_size(binary)?,
            init_ms_median: init,
            first_invocation_ms_median: median(taken.firsts),
            warm_invocation_ms_median: median(taken.warms),
            peak_rss_kib: taken.rss,
            init_ratio_to_hello: init / hello_init,
        });
    }
    Ok(results)
}
