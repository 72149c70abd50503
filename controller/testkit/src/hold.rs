//! A loopback TCP proxy that holds a call in flight: once armed, the first request whose bytes
//! contain a marker (say `Action=ExecuteChangeSet`) is forwarded to the upstream — which acts
//! on it — and from then on nothing more flows either way, so the caller never learns the
//! outcome. A controller killed at that moment did something it has no record of finishing:
//! the case its successor must not repeat.
//!
//! [`HoldProxy::release`] lets everything flow again, the held answer first: the caller hears
//! back late, as from a process that was paused.
//!
//! Must never listen on, or forward to, anything but 127.0.0.1.
//!
//! # Guarantees
//! - Until armed it forwards byte for byte. Dropping the [`HoldProxy`] stops it and closes
//!   every connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

struct Shared {
    upstream: OnceLock<SocketAddr>,
    marker: Vec<u8>,
    armed: AtomicBool,
    held: AtomicBool,
    released: tokio::sync::Notify,
}

impl Shared {
    /// Returns at once unless a request is held; then when it is released.
    async fn until_released(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.held.load(Ordering::SeqCst) {
                return;
            }
            released.await;
        }
    }
}

/// The proxy; stopped when dropped.
pub struct HoldProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl HoldProxy {
    /// Listens on a free loopback port; forwards to the upstream given by
    /// [`HoldProxy::set_upstream`].
    pub async fn start(marker: &[u8]) -> Result<HoldProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the hold proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: OnceLock::new(),
            marker: marker.to_vec(),
            armed: AtomicBool::new(false),
            held: AtomicBool::new(false),
            released: tokio::sync::Notify::new(),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(HoldProxy { addr, shared, task })
    }

    /// Where connections go (a loopback address; set once).
    pub fn set_upstream(&self, upstream: SocketAddr) -> Result<()> {
        ensure!(
            upstream.ip().is_loopback(),
            "upstream {upstream} is not loopback"
        );
        ensure!(
            self.shared.upstream.set(upstream).is_ok(),
            "the upstream is set already"
        );
        Ok(())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, the next request carrying the marker is the one held.
    pub fn arm(&self) {
        self.shared.armed.store(true, Ordering::SeqCst);
    }

    /// Lets everything flow again (disarmed), the held answer first.
    pub fn release(&self) {
        self.shared.armed.store(false, Ordering::SeqCst);
        self.shared.held.store(false, Ordering::SeqCst);
        self.shared.released.notify_waiters();
    }

    /// Whether a request carrying the marker was forwarded and its answer is being held.
    pub fn held(&self) -> bool {
        self.shared.held.load(Ordering::SeqCst)
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        connections.spawn(forward(client, shared.clone()));
    }
}

async fn forward(client: TcpStream, shared: Arc<Shared>) {
    let Some(upstream) = shared.upstream.get().copied() else {
        return;
    };
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = up.into_split();
    let requests = {
        let shared = shared.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                shared.until_released().await;
                let chunk = &buf[..n];
                let marked = shared.armed.load(Ordering::SeqCst)
                    && chunk
                        .windows(shared.marker.len())
                        .any(|w| w == shared.marker.as_slice());
                if marked {
                    // Before the request goes: its answer must not slip through.
                    shared.held.store(true, Ordering::SeqCst);
                }
                if up_write.write_all(chunk).await.is_err() {
                    return;
                }
                if marked {
                    shared.until_released().await;
                }
            }
        }
    };
    let answers = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match up_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            shared.until_released().await;
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(requests, answers);
}
