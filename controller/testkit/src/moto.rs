//! A `moto_server` on loopback for tests, benchmarks and the demo.
//!
//! Owns: starting moto (PyPI `moto[server]`, pinned and installed into `.venv` by
//! `scripts/test`) on a free loopback port and stopping it; [`aws_config::SdkConfig`]s that point
//! the real AWS SDK at it, including one per emulated account obtained through a real STS
//! `AssumeRole`; moto's own API (`/moto-api/`): reset, the request recorder and `data.json`;
//! and reading an SSM parameter of any emulated account ([`MotoServer::ssm_parameter`]).
//!
//! Must never be used by the controller at run time, pointed at anything but 127.0.0.1, or
//! given real credentials.
//!
//! # Guarantees
//! - The server dies with the process that started it, even when no destructor runs (the
//!   [`MotoServer::shared`] one lives in a static): moto runs under a small `sh` wrapper that
//!   stops it as soon as its stdin pipe, whose write end only this process holds, closes.
//! - [`MotoServer::start`] returns once `GET /moto-api/` answers and the server proved it is ours
//!   (it reads back a nonce from its private recording file), so a port taken by someone else
//!   between choosing and binding it is detected and another port is tried.
//!
//! # Caveats
//! - moto's state and recorder are global to one server: [`MotoServer::reset`] and the recorder
//!   on [`MotoServer::shared`] affect every test of that test binary. A test that resets state or
//!   counts calls starts its own server with [`MotoServer::start`].
//! - An `SdkConfig` builds clients whose connection pools belong to the tokio runtime that first
//!   uses them: make one per test (each `#[tokio::test]` has its own runtime), never a static.
//! - moto isolates accounts by access key: the default credentials are account
//!   [`DEFAULT_ACCOUNT_ID`]; the credentials from [`MotoServer::sdk_config_for_account`] are the
//!   assumed account's. moto checks no IAM policy and no ExternalId.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::Method;
use serde::Deserialize;

/// The region every config points at.
pub const REGION: &str = "us-east-1";
/// The account moto serves to the static test credentials of [`MotoServer::sdk_config`].
pub const DEFAULT_ACCOUNT_ID: &str = "123456789012";
/// The role [`MotoServer::sdk_config_for_account`] assumes in each account.
pub const TEST_ROLE_NAME: &str = "tollgate-test";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: usize = 3;
const RECORDING_FILE: &str = "recording.jsonl";
const LOG_FILE: &str = "moto.log";

/// Runs `"$@"` (moto) in the background and stops it when stdin reaches end of file, that is
/// when the owning process closes the pipe or exits, however it exits. Exits when moto does.
/// `$1` is the server's scratch directory (log, recording), removed once moto is gone.
const WRAPPER: &str = r#"
dir=$1; shift
exec 3<&0
"$@" >"$dir/moto.log" 2>&1 </dev/null 3<&- &
pid=$!
{ cat <&3 >/dev/null
  kill -TERM "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$pid" 2>/dev/null
  rm -rf "$dir"; } &
exec 3<&-
wait "$pid"
"#;

/// A running `moto_server` on 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct MotoServer {
    port: u16,
    dir: PathBuf,
    wrapper: Child,
    http: reqwest::Client,
}

/// One AWS API request moto received while the recorder was on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// URL path without the query, e.g. `/` for the query and JSON protocols.
    pub path: String,
    /// The operation: the `Action` form or query field (query protocol: STS, CloudFormation,
    /// SNS), else the part of `X-Amz-Target` after its last dot (JSON protocol: ECR,
    /// CodePipeline), else the `<Op>` of an RPCv2 CBOR path `/service/<Svc>/operation/<Op>`.
    pub action: Option<String>,
    /// The raw `X-Amz-Target` header, e.g. `AmazonEC2ContainerRegistry_V20150921.DescribeImages`.
    pub target: Option<String>,
    /// The access key id the request was signed with: which (emulated) account made it.
    pub access_key_id: Option<String>,
    /// The request body, decoded.
    pub body: Vec<u8>,
}

impl MotoServer {
    /// The server shared by every test of one test binary, started on first use. Panics with
    /// the reason when it cannot start. Safe from any thread or tokio runtime.
    pub fn shared() -> &'static MotoServer {
        static SHARED: OnceLock<Result<MotoServer, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| MotoServer::start().map_err(|e| format!("{e:#}")));
        match started {
            Ok(server) => server,
            Err(reason) => panic!("the shared moto_server did not start: {reason}"),
        }
    }

    /// Starts a private server (blocking, up to about 30 s).
    pub fn start() -> Result<MotoServer> {
        Self::start_with(&moto_binary(std::env::var_os("TOLLGATE_MOTO_SERVER"))?)
    }

    fn start_with(binary: &Path) -> Result<MotoServer> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .context("building the moto-api HTTP client")?;
        let mut last_error = anyhow!("no port tried");
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_on(binary, free_port()?, http.clone())? {
                Ok(server) => return Ok(server),
                Err(retryable) => last_error = retryable,
            }
        }
        Err(last_error.context(format!(
            "moto_server did not start in {PORT_ATTEMPTS} tries"
        )))
    }

    /// `Ok(Err(_))`: moto exited or the port was lost to another process; worth another try.
    fn start_on(binary: &Path, port: u16, http: reqwest::Client) -> Result<Result<Self>> {
        let dir = scratch_dir(port)?;
        let nonce = format!("tollgate-moto {}", dir.display());
        std::fs::write(dir.join(RECORDING_FILE), &nonce).context("writing the moto nonce")?;
        let wrapper = Command::new("sh")
            .args(["-c", WRAPPER, "tollgate-moto"])
            .arg(&dir)
            .arg(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(&dir)
            .env("MOTO_PORT", port.to_string())
            .env("MOTO_RECORDER_FILEPATH", dir.join(RECORDING_FILE))
            .env_remove("MOTO_ENABLE_RECORDING")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning sh to run moto_server")?;
        let mut server = MotoServer {
            port,
            dir,
            wrapper,
            http,
        };
        Ok(server.wait_until_ready(&nonce)?.map(|()| server))
    }

    /// Outer error: give up. Inner error: moto exited or the port is someone else's.
    fn wait_until_ready(&mut self, nonce: &str) -> Result<Result<()>> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.wrapper.try_wait()? {
                let log = self.log_tail();
                return Ok(Err(anyhow!(
                    "moto_server on port {} exited ({status}):\n{log}",
                    self.port
                )));
            }
            if matches!(raw_http(self.port, "GET", "/moto-api/"), Ok((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "moto_server did not answer in {STARTUP_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let recording = raw_http(self.port, "GET", "/moto-api/recorder/download-recording");
        let recording = recording.map(|(_, body)| body).unwrap_or_default();
        if recording != nonce {
            return Ok(Err(anyhow!(
                "port {} answered for another server",
                self.port
            )));
        }
        let (status, body) = raw_http(self.port, "POST", "/moto-api/recorder/reset-recording")?;
        ensure!(status == 200, "resetting moto's recording: {status} {body}");
        Ok(Ok(()))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join(LOG_FILE)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Config for the default account ([`DEFAULT_ACCOUNT_ID`]): region [`REGION`], static test
    /// credentials, endpoint = this server, latest behavior version.
    pub fn sdk_config(&self) -> SdkConfig {
        self.config_with(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "tollgate-moto",
        ))
    }

    /// Config for `account_id`, with the credentials of a real STS `AssumeRole` into
    /// `arn:aws:iam::{account_id}:role/tollgate-test`; moto ties them to that account.
    pub async fn sdk_config_for_account(&self, account_id: &str) -> Result<SdkConfig> {
        let role_arn = format!("arn:aws:iam::{account_id}:role/{TEST_ROLE_NAME}");
        let assumed = aws_sdk_sts::Client::new(&self.sdk_config())
            .assume_role()
            .role_arn(&role_arn)
            .role_session_name("tollgate-test")
            .send()
            .await
            .with_context(|| format!("AssumeRole {role_arn} on moto"))?;
        let c = assumed
            .credentials()
            .context("AssumeRole returned no credentials")?;
        let session_token = Some(c.session_token().to_owned());
        let credentials = Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            session_token,
            None,
            "tollgate-moto-assumed",
        );
        Ok(self.config_with(credentials))
    }

    fn config_with(&self, credentials: Credentials) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(SharedCredentialsProvider::new(credentials))
            .build()
    }

    /// Forgets every resource in every account (`POST /moto-api/reset`).
    pub async fn reset(&self) -> Result<()> {
        self.moto_api(Method::POST, "reset").await.map(drop)
    }

    /// Moto's whole in-memory state (`GET /moto-api/data.json`): every service's models, each
    /// row carrying the `account_id` it belongs to.
    pub async fn data(&self) -> Result<serde_json::Value> {
        let text = self.moto_api(Method::GET, "data.json").await?;
        serde_json::from_str(&text).context("moto's data.json is not JSON")
    }

    /// The value of the SSM parameter `name` in `account_id` (`None`: no such parameter), read
    /// live through SSM's `GetParameter` (moto serves any account named by
    /// `x-moto-account-id` and does not check signatures).
    pub async fn ssm_parameter(&self, account_id: &str, name: &str) -> Result<Option<String>> {
        let scope = format!("tollgate/20240101/{REGION}/ssm/aws4_request");
        let response = self
            .http
            .post(format!("{}/", self.endpoint()))
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", "AmazonSSM.GetParameter")
            .header("x-moto-account-id", account_id)
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=00"),
            )
            .body(serde_json::json!({ "Name": name }).to_string())
            .send()
            .await
            .with_context(|| format!("GetParameter {name} in {account_id}"))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("GetParameter {name} in {account_id}: not JSON"))?;
        if status.is_success() {
            return Ok(body["Parameter"]["Value"].as_str().map(str::to_owned));
        }
        match body["__type"].as_str() {
            Some(t) if t.ends_with("ParameterNotFound") => Ok(None),
            _ => Err(anyhow!(
                "GetParameter {name} in {account_id}: {status} {body}"
            )),
        }
    }

    /// Starts recording requests (appending to what is already recorded).
    pub async fn recorder_start(&self) -> Result<()> {
        self.moto_api(Method::POST, "recorder/start-recording")
            .await
            .map(drop)
    }

    /// Stops recording; what was recorded stays until [`Self::recorder_clear`].
    pub async fn recorder_stop(&self) -> Result<()> {
        self.moto_api(Method::POST, "recorder/stop-recording")
            .await
            .map(drop)
    }

    /// Erases what was recorded.
    pub async fn recorder_clear(&self) -> Result<()> {
        self.moto_api(Method::POST, "recorder/reset-recording")
            .await
            .map(drop)
    }

    /// The AWS API requests recorded so far, oldest first. Calls to `/moto-api/` itself (reset,
    /// dashboard), which moto records too, are left out.
    pub async fn recorded_requests(&self) -> Result<Vec<RecordedRequest>> {
        let recording = self
            .moto_api(Method::GET, "recorder/download-recording")
            .await?;
        let mut requests = Vec::new();
        // moto writes a record and its newline separately, so records of requests served at
        // the same time can share a line: read each line as a stream of JSON values. The last
        // record may still be being written while the recording is downloaded: a record cut
        // short at the very end is a request in flight, left for the next read.
        let lines: Vec<&str> = recording
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        for (i, line) in lines.iter().enumerate() {
            let values = serde_json::Deserializer::from_str(line).into_iter::<serde_json::Value>();
            for value in values {
                if let Err(e) = &value {
                    if e.is_eof() && i + 1 == lines.len() {
                        break;
                    }
                }
                let value = value.with_context(|| format!("a moto recording line: {line}"))?;
                let request = RecordedRequest::from_recording_line(&value.to_string())?;
                if !request.path.starts_with("/moto-api/") {
                    requests.push(request);
                }
            }
        }
        Ok(requests)
    }

    async fn moto_api(&self, method: Method, path: &str) -> Result<String> {
        let url = format!("{}/moto-api/{path}", self.endpoint());
        let response = self.http.request(method.clone(), &url).send().await;
        let response = response.with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("{method} {url}"))?;
        ensure!(status.is_success(), "{method} {url}: {status}: {body}");
        Ok(body)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        drop(self.wrapper.stdin.take()); // end of file: the wrapper stops moto
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(self.wrapper.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.wrapper.kill();
        let _ = self.wrapper.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One line of `/moto-api/recorder/download-recording` (JSON lines), as moto 5.2 writes it.
#[derive(Deserialize)]
struct RecordingLine {
    headers: BTreeMap<String, String>,
    method: String,
    /// The full URL, e.g. `http://127.0.0.1:5000/?Action=...`.
    url: String,
    body: Option<String>,
    /// `true`: `body` is base64 (moto encodes every body it reads from the socket).
    #[serde(default)]
    body_encoded: bool,
}

impl RecordedRequest {
    fn from_recording_line(line: &str) -> Result<Self> {
        let raw: RecordingLine = serde_json::from_str(line).with_context(|| {
            format!("a moto recording line that is not what moto 5.2 writes: {line}")
        })?;
        let url = url::Url::parse(&raw.url).with_context(|| format!("recorded url {}", raw.url))?;
        let body = match (raw.body, raw.body_encoded) {
            (None, _) => Vec::new(),
            (Some(body), false) => body.into_bytes(),
            (Some(body), true) => BASE64.decode(body).context("recorded body is not base64")?,
        };
        let header = |name: &str| {
            let found = raw
                .headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name));
            found.map(|(_, value)| value.clone())
        };
        let target = header("X-Amz-Target");
        let action = form_action(&body)
            .or_else(|| form_action(url.query().unwrap_or_default().as_bytes()))
            .or_else(|| {
                target
                    .as_deref()
                    .and_then(|t| t.rsplit('.').next())
                    .map(str::to_owned)
            })
            .or_else(|| {
                url.path()
                    .split_once("/operation/")
                    .map(|(_, op)| op.to_owned())
            });
        let access_key_id = header("Authorization")
            .as_deref()
            .and_then(credential_key_id);
        let path = url.path().to_owned();
        Ok(RecordedRequest {
            method: raw.method,
            path,
            action,
            target,
            access_key_id,
            body,
        })
    }

    /// The body as text (lossy), e.g. to look for a form field.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn form_action(form: &[u8]) -> Option<String> {
    url::form_urlencoded::parse(form)
        .find(|(key, _)| key == "Action")
        .map(|(_, value)| value.into_owned())
}

/// `AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sts/aws4_request, ...` → `AKID`.
fn credential_key_id(authorization: &str) -> Option<String> {
    let (_, credential) = authorization.split_once("Credential=")?;
    credential.split('/').next().map(str::to_owned)
}

/// `TOLLGATE_MOTO_SERVER` (`configured`), else the workspace's `.venv/bin/moto_server`.
fn moto_binary(configured: Option<std::ffi::OsString>) -> Result<PathBuf> {
    let path = match configured {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(".venv/bin/moto_server"),
    };
    ensure!(
        path.is_file(),
        "moto_server not found at {}: run scripts/test once (it installs moto[server] into \
         .venv), or set TOLLGATE_MOTO_SERVER to a moto_server binary",
        path.display()
    );
    Ok(path)
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A new, empty directory for one server's log and recording.
fn scratch_dir(port: u16) -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("tollgate-moto-{}-{port}-{n}", std::process::id());
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A minimal blocking HTTP/1.1 exchange, used before any tokio runtime may exist.
fn raw_http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok());
    Ok((status.unwrap_or(0), body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as moto 5.2.5 writes them (one query-protocol, one JSON-protocol request).
    const STS_LINE: &str = r#"{"headers": {"Host": "127.0.0.1:5000", "Content-Type": "application/x-www-form-urlencoded", "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20261123/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=00", "Content-Length": "43"}, "method": "POST", "url": "http://127.0.0.1:5000/", "body": "QWN0aW9uPUdldENhbGxlcklkZW50aXR5JlZlcnNpb249MjAxMS0wNi0xNQ==", "body_encoded": true}"#;
    const ECR_LINE: &str = r#"{"headers": {"X-Amz-Target": "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories"}, "method": "POST", "url": "http://127.0.0.1:5000/", "body": "e30=", "body_encoded": true}"#;

    #[test]
    fn a_missing_moto_server_says_how_to_install_it() {
        let error = moto_binary(Some("/nonexistent/moto_server".into())).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("/nonexistent/moto_server"), "{message}");
        assert!(message.contains("run scripts/test"), "{message}");
    }

    #[test]
    fn a_server_that_exits_at_once_is_an_error_with_its_exit_status() {
        let error = MotoServer::start_with(Path::new("/bin/false")).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("did not start in 3 tries"), "{message}");
        assert!(message.contains("exited"), "{message}");
    }

    #[test]
    fn a_query_protocol_request_is_named_by_its_action_field() {
        let request = RecordedRequest::from_recording_line(STS_LINE).unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/");
        assert_eq!(request.action.as_deref(), Some("GetCallerIdentity"));
        assert_eq!(request.target, None);
        assert_eq!(request.access_key_id.as_deref(), Some("testing"));
        assert_eq!(
            request.body_text(),
            "Action=GetCallerIdentity&Version=2011-06-15"
        );
    }

    #[test]
    fn a_json_protocol_request_is_named_by_its_target_header() {
        let request = RecordedRequest::from_recording_line(ECR_LINE).unwrap();
        assert_eq!(request.action.as_deref(), Some("DescribeRepositories"));
        assert_eq!(
            request.target.as_deref(),
            Some("AmazonEC2ContainerRegistry_V20150921.DescribeRepositories")
        );
        assert_eq!(request.body, b"{}");
    }

    #[test]
    fn a_cbor_request_is_named_by_its_path_and_a_bodyless_one_parses() {
        let line = r#"{"headers": {}, "method": "POST", "url": "http://127.0.0.1:5000/service/GraniteServiceVersion20100801/operation/DescribeAlarms", "body": null, "body_encoded": false}"#;
        let request = RecordedRequest::from_recording_line(line).unwrap();
        assert_eq!(request.action.as_deref(), Some("DescribeAlarms"));
        assert!(request.body.is_empty());
    }
}
