//! Runs crmbridge's real Lambda function binaries (`webhook`, `dispatch`,
//! `admin`, `tick`, as cargo builds them into `target/debug/<name>`) the way
//! AWS Lambda runs a `provided.al2023` bootstrap, without Docker and without
//! `cargo lambda`: an in-process Lambda Runtime API emulator hands each
//! process its events and collects its answers.
//!
//! It exists so that end-to-end tests exercise exactly what is deployed (the
//! binaries with their `lambda_runtime` / `lambda_http` glue, their
//! environment-variable configuration, their DynamoDB and EventBridge
//! clients), and so that benchmarks can read cold-start numbers
//! ([`FunctionProcess::init_duration`]) from the same machinery.
//!
//! * [`LambdaEmulator`] / [`FunctionProcess`] — the Runtime API and the
//!   processes behind it ([`emulator`]).
//! * [`HttpApiRequest`] / [`HttpApiResponse`] — API Gateway HTTP API
//!   (payload format 2.0) events in and responses out ([`apigw`]).
//! * [`workspace_binary`] — where cargo put a binary of this workspace.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use crmbridge_lambda_harness::{HttpApiRequest, LambdaEmulator, workspace_binary};
//!
//! let emulator = LambdaEmulator::new();
//! let admin = emulator
//!     .spawn_function(workspace_binary("admin")?, [("CRMBRIDGE_TABLE", "t")])
//!     .await?;
//! let reply = admin.invoke(HttpApiRequest::get("/health").to_event()).await?;
//! println!("init {:?}", admin.init_duration());
//! # let _ = reply; Ok(()) }
//! ```

pub mod apigw;
pub mod emulator;

use std::path::PathBuf;

pub use apigw::{HttpApiRequest, HttpApiResponse, ResponseError};
pub use emulator::{
    EmulatorError, FunctionError, FunctionProcess, FunctionSpec, InvocationError, LambdaEmulator,
};

/// A binary of this workspace that must be built before the tests run.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} does not exist: build the function binaries first with `cargo build --bins` \
     (infra/test.sh does this before `cargo test`)",
    path.display()
)]
pub struct MissingBinary {
    pub path: PathBuf,
}

/// The cargo target directory of this workspace: `CARGO_TARGET_DIR` when set
/// (a relative value is taken from the workspace root, where cargo is run),
/// else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace.join(dir)
            }
        }
        _ => workspace.join("target"),
    }
}

/// `<target>/debug/<name>`, the binary `cargo build --bins` produced, or an
/// error saying to build it (the harness never builds: a test must not start
/// a cargo build of its own).
pub fn workspace_binary(name: &str) -> Result<PathBuf, MissingBinary> {
    let path = target_dir()
        .join("debug")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(MissingBinary { path })
    }
}

/// A random RFC 4122 version-4 UUID, e.g. for request ids.
pub fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_v4_shape() {
        let id = uuid_v4();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(uuid_v4(), id);
    }

    #[test]
    fn a_missing_binary_says_to_build_first() {
        let err = workspace_binary("no-such-binary-here").err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("cargo build --bins"), "{message}");
    }
}
