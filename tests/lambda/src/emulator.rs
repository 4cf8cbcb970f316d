//! A Lambda Runtime API emulator, so the real function binaries run in tests
//! exactly as Lambda runs a custom-runtime `bootstrap`.
//!
//! On Lambda every execution environment has its own Runtime API endpoint
//! (`AWS_LAMBDA_RUNTIME_API`, `host:port`): the runtime long-polls
//! `GET /2018-06-01/runtime/invocation/next`, handles the event and posts
//! `…/invocation/{id}/response` or `…/invocation/{id}/error` (or
//! `…/runtime/init/error` when it cannot start). Those requests carry nothing
//! that says which environment is asking, so here too each spawned process
//! gets its own endpoint: [`LambdaEmulator::spawn`] binds an axum server on
//! `127.0.0.1:0` for the process and starts the binary with
//! `AWS_LAMBDA_RUNTIME_API=127.0.0.1:<that port>`.
//!
//! [`FunctionProcess::invoke`] queues an event for its process and waits for
//! the answer, the process's exit, or the deadline, whichever comes first.
//! Like one execution environment, a process handles one event at a time:
//! concurrent invocations queue. A timed-out process is killed, as Lambda
//! discards such an environment; spawn another for a fresh cold start.
//! The emulator measures what Lambda reports: the init duration (process
//! spawn → its first `GET /next`) and each invocation's duration (event
//! handed out by `/next` → response or error posted).
//!
//! Processes are killed when their [`FunctionProcess`] is dropped.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

/// Largest synchronous invocation payload and response Lambda accepts.
const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;
/// Log lines kept per process (the newest).
const LOG_LINES_KEPT: usize = 5_000;
/// Log lines quoted in an error.
const LOG_LINES_QUOTED: usize = 40;

/// Could not start a function.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("could not bind the Runtime API listener on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error("could not start {}: {source}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a function reported through `/invocation/{id}/error` or
/// `/runtime/init/error` (the Lambda error shape).
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionError {
    /// `errorType` (or the `Lambda-Runtime-Function-Error-Type` header).
    pub error_type: String,
    /// `errorMessage`.
    pub error_message: String,
    /// The whole body the runtime posted.
    pub body: Value,
}

impl std::fmt::Display for FunctionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.error_message)
    }
}

/// Why an invocation produced no response.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The handler failed: the runtime posted `/invocation/{id}/error`.
    #[error("{function} returned an error: {error}")]
    Function {
        function: String,
        error: FunctionError,
    },
    /// The runtime posted `/runtime/init/error`.
    #[error("{function} failed to initialise: {error}\n--- last log lines ---\n{log_tail}")]
    Init {
        function: String,
        error: FunctionError,
        log_tail: String,
    },
    /// The process ended before answering.
    #[error("{function} exited ({status}) before answering\n--- last log lines ---\n{log_tail}")]
    ProcessExited {
        function: String,
        status: String,
        log_tail: String,
    },
    /// No answer before the deadline; the process is killed, as Lambda
    /// resets an execution environment after a timeout.
    #[error("{function} did not answer within {after:?}\n--- last log lines ---\n{log_tail}")]
    Timeout {
        function: String,
        after: Duration,
        log_tail: String,
    },
    /// The response body was not JSON.
    #[error("{function} answered with a body that is not JSON ({message}): {body}")]
    InvalidResponse {
        function: String,
        message: String,
        body: String,
    },
    /// The event could not be serialised.
    #[error("the event is not serialisable: {0}")]
    Event(#[from] serde_json::Error),
}

/// How to start one function: the binary, its name, its limits and its
/// environment (on top of the variables Lambda itself sets).
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    binary: PathBuf,
    name: String,
    env: Vec<(String, String)>,
    timeout: Duration,
    init_timeout: Duration,
    memory_mb: u32,
}

impl FunctionSpec {
    /// A function named after the binary's file name, 128 MB, a 30 s
    /// invocation timeout and 30 s to initialise (debug builds on a busy
    /// machine are slower than Lambda's 10 s init limit assumes).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        let binary = binary.into();
        let name = binary
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "function".to_owned());
        Self {
            binary,
            name,
            env: Vec::new(),
            timeout: Duration::from_secs(30),
            init_timeout: Duration::from_secs(30),
            memory_mb: 128,
        }
    }

    /// `AWS_LAMBDA_FUNCTION_NAME` (and the ARN and log group derived from it).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// One environment variable (overrides the Lambda defaults).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The invocation timeout (the `Lambda-Runtime-Deadline-Ms` handed out).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long the first invocation waits for the process to initialise.
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (informational: nothing is limited).
    pub fn memory_mb(mut self, memory_mb: u32) -> Self {
        self.memory_mb = memory_mb;
        self
    }
}

/// Starts function processes, each behind its own Runtime API endpoint.
#[derive(Debug, Clone)]
pub struct LambdaEmulator {
    region: String,
    account_id: String,
}

impl Default for LambdaEmulator {
    fn default() -> Self {
        Self::new()
    }
}

impl LambdaEmulator {
    /// Region `us-east-1`, account `123456789012`.
    pub fn new() -> Self {
        Self {
            region: "us-east-1".to_owned(),
            account_id: "123456789012".to_owned(),
        }
    }

    /// `AWS_REGION` / `AWS_DEFAULT_REGION` of the processes and the region in ARNs.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Starts `binary` (named after its file) with `env` added to the
    /// environment Lambda sets. See [`Self::spawn`].
    pub async fn spawn_function<I, K, V>(
        &self,
        binary: impl AsRef<Path>,
        env: I,
    ) -> Result<FunctionProcess, EmulatorError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.spawn(FunctionSpec::new(binary.as_ref()).envs(env))
            .await
    }

    /// Binds a Runtime API endpoint on `127.0.0.1:0` and starts the binary
    /// against it. The process gets a clean environment, as on Lambda:
    /// `AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_NAME`,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, `AWS_LAMBDA_FUNCTION_VERSION`,
    /// `AWS_LAMBDA_LOG_GROUP_NAME`, `AWS_LAMBDA_LOG_STREAM_NAME`,
    /// `AWS_REGION`, `AWS_DEFAULT_REGION`, `AWS_EXECUTION_ENV`,
    /// `LAMBDA_TASK_ROOT`, `LAMBDA_RUNTIME_DIR`, `TZ`, `LANG`, `PATH`, then
    /// the spec's variables (which win). Nothing of the test's own
    /// environment leaks in (no credentials, no `AWS_PROFILE`).
    pub async fn spawn(&self, spec: FunctionSpec) -> Result<FunctionProcess, EmulatorError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(EmulatorError::Bind)?;
        let addr = listener.local_addr().map_err(EmulatorError::Bind)?;
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (exit_tx, _) = watch::channel(None);
        let (init_error_tx, _) = watch::channel(None);
        let (ready_tx, _) = watch::channel(false);
        let (kill_tx, kill_rx) = watch::channel(false);
        let arn = format!(
            "arn:aws:lambda:{}:{}:function:{}",
            self.region, self.account_id, spec.name
        );
        let logs = Arc::new(LogBook::default());

        let mut command = tokio::process::Command::new(&spec.binary);
        let task_root = spec
            .binary
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        command
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                spec.memory_mb.to_string(),
            )
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", spec.name),
            )
            .env(
                "AWS_LAMBDA_LOG_STREAM_NAME",
                format!("emulated/[$LATEST]{:032x}", rand::random::<u128>()),
            )
            .env("AWS_REGION", &self.region)
            .env("AWS_DEFAULT_REGION", &self.region)
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023")
            .env("LAMBDA_TASK_ROOT", &task_root)
            .env("LAMBDA_RUNTIME_DIR", &task_root)
            .env("TZ", ":UTC")
            .env("LANG", "en_US.UTF-8")
            .env(
                "PATH",
                "/usr/local/bin:/usr/bin:/bin:/opt/bin:/usr/local/sbin:/usr/sbin:/sbin",
            )
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&task_root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // If the runtime goes away before our kill is delivered.
            .kill_on_drop(true);

        let sandbox = Arc::new(Sandbox {
            function: spec.name.clone(),
            arn,
            timeout: spec.timeout,
            spawned_at: Instant::now(),
            init_duration: OnceLock::new(),
            ready: ready_tx,
            queue: tokio::sync::Mutex::new(queue_rx),
            in_flight: Mutex::new(HashMap::new()),
            durations: Mutex::new(Vec::new()),
            init_error: init_error_tx,
        });
        let mut child = command.spawn().map_err(|source| EmulatorError::Spawn {
            binary: spec.binary.clone(),
            source,
        })?;
        let pid = child.id();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(Arc::clone(&logs).collect(stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(Arc::clone(&logs).collect(stderr));
        }
        let server = tokio::spawn(serve(listener, Arc::clone(&sandbox)));
        let exit = exit_tx.clone();
        tokio::spawn(async move {
            let mut kill_rx = kill_rx;
            let status = tokio::select! {
                status = child.wait() => status,
                () = async { drop(kill_rx.wait_for(|kill| *kill).await) } => {
                    // kill() sends SIGKILL and reaps the process.
                    let killed = child.kill().await;
                    match killed {
                        Ok(()) => child.wait().await,
                        Err(err) => Err(err),
                    }
                }
            };
            let text = match status {
                Ok(status) => status.to_string(),
                Err(err) => format!("wait failed: {err}"),
            };
            exit.send_replace(Some(text));
        });

        Ok(FunctionProcess {
            spec,
            pid,
            addr,
            sandbox,
            queue: queue_tx,
            exit: exit_tx,
            kill: kill_tx,
            logs,
            server,
        })
    }
}

/// One running function binary and its Runtime API endpoint.
pub struct FunctionProcess {
    spec: FunctionSpec,
    pid: Option<u32>,
    addr: std::net::SocketAddr,
    sandbox: Arc<Sandbox>,
    queue: mpsc::UnboundedSender<Queued>,
    exit: watch::Sender<Option<String>>,
    kill: watch::Sender<bool>,
    logs: Arc<LogBook>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FunctionProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionProcess")
            .field("function", &self.sandbox.function)
            .field("binary", &self.spec.binary)
            .field("pid", &self.pid)
            .field("runtime_api", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        self.kill.send_replace(true);
        self.server.abort();
    }
}

impl FunctionProcess {
    /// `AWS_LAMBDA_FUNCTION_NAME`.
    pub fn name(&self) -> &str {
        &self.sandbox.function
    }

    /// The binary that runs.
    pub fn binary(&self) -> &Path {
        &self.spec.binary
    }

    /// The OS process id (None once it was reaped before we asked).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// This process's `AWS_LAMBDA_RUNTIME_API`.
    pub fn runtime_api(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Process spawn → its first `GET /invocation/next`: what Lambda reports
    /// as Init Duration. None until the runtime has asked for an event.
    pub fn init_duration(&self) -> Option<Duration> {
        self.sandbox.init_duration.get().copied()
    }

    /// The duration of the latest completed invocation: event handed out by
    /// `/next` → response (or error) posted, as Lambda's Duration.
    pub fn last_invocation_duration(&self) -> Option<Duration> {
        lock(&self.sandbox.durations).last().copied()
    }

    /// Every completed invocation's duration, in order.
    pub fn invocation_durations(&self) -> Vec<Duration> {
        lock(&self.sandbox.durations).clone()
    }

    /// Everything the process wrote to stdout and stderr (the newest lines).
    ///
    /// Lines are read from the process's pipes as it writes them, so a line
    /// written during an invocation may arrive after its response: wait
    /// for it with [`Self::wait_for_log`].
    pub fn logs(&self) -> Vec<String> {
        lock(&self.logs.lines).lines.iter().cloned().collect()
    }

    /// How many lines the process has written so far: a position for
    /// [`Self::wait_for_log`].
    pub fn log_position(&self) -> u64 {
        lock(&self.logs.lines).written
    }

    /// The first line written at or after `position` that `matches`,
    /// waiting up to `within` for it.
    pub async fn wait_for_log(
        &self,
        position: u64,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let mut written = self.logs.written.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            {
                let book = lock(&self.logs.lines);
                // Lines older than the kept window are gone: look at what is kept.
                let kept_from = book.written - book.lines.len() as u64;
                let skip = position.saturating_sub(kept_from) as usize;
                if let Some(line) = book.lines.iter().skip(skip).find(|line| matches(line)) {
                    return Some(line.clone());
                }
                written.borrow_and_update();
            }
            if tokio::time::timeout_at(deadline, written.changed())
                .await
                .map_or(true, |changed| changed.is_err())
            {
                return None;
            }
        }
    }

    /// The exit status, once the process has ended.
    pub fn exit_status(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Waits until the runtime has initialised (its first `GET /next`) and
    /// returns the init duration; fails if it exits, reports an init error
    /// or takes longer than `within`.
    pub async fn wait_ready(&self, within: Duration) -> Result<Duration, InvocationError> {
        let mut ready = self.sandbox.ready.subscribe();
        let mut exit = self.exit.subscribe();
        let mut init_error = self.sandbox.init_error.subscribe();
        tokio::select! {
            biased;
            () = async { drop(ready.wait_for(|r| *r).await) } => {}
            error = async { init_error.wait_for(Option::is_some).await.ok().and_then(|e| e.clone()) } => {
                return Err(self.init_failed(error));
            }
            status = async { exit.wait_for(Option::is_some).await.ok().and_then(|s| s.clone()) } => {
                return Err(self.exited(status));
            }
            () = tokio::time::sleep(within) => {
                return Err(self.timed_out(within));
            }
        }
        Ok(self.init_duration().unwrap_or_default())
    }

    /// Invokes the function synchronously (`RequestResponse`): queues `event`
    /// for this process and waits for its response. The wait is the
    /// function's timeout, plus its init timeout while it has not started.
    pub async fn invoke(&self, event: Value) -> Result<Value, InvocationError> {
        let body = serde_json::to_vec(&event)?;
        self.invoke_raw(body).await
    }

    /// [`Self::invoke`] with an already serialised payload.
    pub async fn invoke_raw(&self, payload: Vec<u8>) -> Result<Value, InvocationError> {
        let limit = if self.init_duration().is_some() {
            self.spec.timeout
        } else {
            self.spec.timeout + self.spec.init_timeout
        };
        let mut exit = self.exit.subscribe();
        let mut init_error = self.sandbox.init_error.subscribe();
        let (reply_tx, reply_rx) = oneshot::channel();
        let queued = Queued {
            request_id: crate::uuid_v4(),
            payload,
            reply: reply_tx,
        };
        if self.queue.send(queued).is_err() {
            return Err(self.exited(self.exit_status()));
        }
        tokio::select! {
            biased;
            outcome = reply_rx => match outcome {
                Ok(Outcome::Response(bytes)) => serde_json::from_slice(&bytes).map_err(|err| {
                    InvocationError::InvalidResponse {
                        function: self.name().to_owned(),
                        message: err.to_string(),
                        body: String::from_utf8_lossy(&bytes).into_owned(),
                    }
                }),
                Ok(Outcome::Error(error)) => Err(InvocationError::Function {
                    function: self.name().to_owned(),
                    error,
                }),
                // The endpoint went away (the process is being dropped).
                Err(_) => Err(self.exited(self.exit_status())),
            },
            error = async { init_error.wait_for(Option::is_some).await.ok().and_then(|e| e.clone()) } => {
                Err(self.init_failed(error))
            }
            status = async { exit.wait_for(Option::is_some).await.ok().and_then(|s| s.clone()) } => {
                Err(self.exited(status))
            }
            () = tokio::time::sleep(limit) => {
                // Lambda discards an execution environment that timed out.
                self.kill.send_replace(true);
                Err(self.timed_out(limit))
            }
        }
    }

    fn log_tail(&self) -> String {
        let book = lock(&self.logs.lines);
        let logs = &book.lines;
        let skip = logs.len().saturating_sub(LOG_LINES_QUOTED);
        logs.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn exited(&self, status: Option<String>) -> InvocationError {
        InvocationError::ProcessExited {
            function: self.name().to_owned(),
            status: status.unwrap_or_else(|| "unknown status".to_owned()),
            log_tail: self.log_tail(),
        }
    }

    fn init_failed(&self, error: Option<FunctionError>) -> InvocationError {
        InvocationError::Init {
            function: self.name().to_owned(),
            error: error.unwrap_or_else(|| FunctionError {
                error_type: "Unknown".to_owned(),
                error_message: String::new(),
                body: Value::Null,
            }),
            log_tail: self.log_tail(),
        }
    }

    fn timed_out(&self, after: Duration) -> InvocationError {
        InvocationError::Timeout {
            function: self.name().to_owned(),
            after,
            log_tail: self.log_tail(),
        }
    }
}

/// An event waiting for the runtime's next `GET /next`.
struct Queued {
    request_id: String,
    payload: Vec<u8>,
    reply: oneshot::Sender<Outcome>,
}

/// An event the runtime is working on.
struct InFlight {
    reply: oneshot::Sender<Outcome>,
    handed_out: Instant,
}

enum Outcome {
    Response(Bytes),
    Error(FunctionError),
}

/// The state behind one process's Runtime API endpoint.
struct Sandbox {
    function: String,
    arn: String,
    timeout: Duration,
    spawned_at: Instant,
    init_duration: OnceLock<Duration>,
    ready: watch::Sender<bool>,
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    in_flight: Mutex<HashMap<String, InFlight>>,
    durations: Mutex<Vec<Duration>>,
    init_error: watch::Sender<Option<FunctionError>>,
}

/// A poisoned lock only means another test thread panicked; the data is
/// still what we want to read.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A process's output lines, the newest [`LOG_LINES_KEPT`] of them.
#[derive(Default)]
struct LogBook {
    lines: Mutex<KeptLines>,
    /// How many lines were written, for waiters.
    written: watch::Sender<u64>,
}

#[derive(Default)]
struct KeptLines {
    lines: VecDeque<String>,
    written: u64,
}

impl LogBook {
    async fn collect(self: Arc<Self>, stream: impl AsyncRead + Unpin) {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let written = {
                let mut book = lock(&self.lines);
                if book.lines.len() == LOG_LINES_KEPT {
                    book.lines.pop_front();
                }
                book.lines.push_back(line);
                book.written += 1;
                book.written
            };
            self.written.send_replace(written);
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, sandbox: Arc<Sandbox>) {
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES + 1024))
        .with_state(sandbox);
    // Ends when the listener fails or the task is aborted (process dropped).
    drop(axum::serve(listener, app).await);
}

/// `GET /next`: long-polls for the next queued event.
async fn next(State(sandbox): State<Arc<Sandbox>>) -> Response {
    if sandbox.init_duration.get().is_none() {
        let elapsed = sandbox.spawned_at.elapsed();
        if sandbox.init_duration.set(elapsed).is_ok() {
            sandbox.ready.send_replace(true);
        }
    }
    let queued = loop {
        let received = sandbox.queue.lock().await.recv().await;
        match received {
            // The caller gave up before the event was handed out.
            Some(queued) if queued.reply.is_closed() => continue,
            Some(queued) => break queued,
            None => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"errorType": "ServiceException", "errorMessage": "the emulator is shutting down"})),
                )
                    .into_response();
            }
        }
    };
    let deadline = SystemTime::now() + sandbox.timeout;
    let deadline_ms = deadline
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let epoch_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let trace_id = format!(
        "Root=1-{epoch_secs:08x}-{:024x};Parent={:016x};Sampled=0",
        rand::random::<u128>() >> 32,
        rand::random::<u64>()
    );
    let mut headers = HeaderMap::new();
    let values = [
        ("lambda-runtime-aws-request-id", queued.request_id.clone()),
        ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
        ("lambda-runtime-invoked-function-arn", sandbox.arn.clone()),
        ("lambda-runtime-trace-id", trace_id),
        ("content-type", "application/json".to_owned()),
    ];
    for (name, value) in values {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    lock(&sandbox.in_flight).insert(
        queued.request_id,
        InFlight {
            reply: queued.reply,
            handed_out: Instant::now(),
        },
    );
    (StatusCode::OK, headers, queued.payload).into_response()
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

fn unknown_request(id: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"errorType": "InvalidRequestID", "errorMessage": format!("unknown request id {id}")})),
    )
        .into_response()
}

fn finish(sandbox: &Sandbox, id: &str, outcome: Outcome) -> Response {
    let Some(in_flight) = lock(&sandbox.in_flight).remove(id) else {
        return unknown_request(id);
    };
    lock(&sandbox.durations).push(in_flight.handed_out.elapsed());
    // The caller may have timed out meanwhile; then nobody is waiting.
    drop(in_flight.reply.send(outcome));
    accepted()
}

/// `POST /invocation/{id}/response`.
async fn response(
    State(sandbox): State<Arc<Sandbox>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    finish(&sandbox, &id, Outcome::Response(body))
}

fn function_error(headers: &HeaderMap, body: &Bytes) -> FunctionError {
    let parsed: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let header_type = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok());
    FunctionError {
        error_type: parsed["errorType"]
            .as_str()
            .or(header_type)
            .unwrap_or("Unhandled")
            .to_owned(),
        error_message: parsed["errorMessage"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| parsed.to_string()),
        body: parsed,
    }
}

/// `POST /invocation/{id}/error`.
async fn error(
    State(sandbox): State<Arc<Sandbox>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    finish(
        &sandbox,
        &id,
        Outcome::Error(function_error(&headers, &body)),
    )
}

/// `POST /runtime/init/error`.
async fn init_error(
    State(sandbox): State<Arc<Sandbox>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sandbox
        .init_error
        .send_replace(Some(function_error(&headers, &body)));
    accepted()
}
