//! A loopback TCP server whose first connections hang: it accepts them, reads what the client
//! sends and never answers. Later connections are forwarded, byte for byte, to an upstream
//! server (moto), so a test sees the first attempt of a call hang and the retry succeed.
//!
//! Models what AWS documents a client must survive: a connection that is established but
//! never answered (the SDK's "Timeouts" guide, docs.aws.amazon.com/sdk-for-rust/latest/dg/timeouts.html,
//! is why every call needs an attempt timeout). moto never hangs, so this stands in front of it.
//!
//! Must never listen on, or forward to, anything but 127.0.0.1.
//!
//! # Guarantees
//! - Dropping the [`HangProxy`] stops it and closes every connection it holds or forwards.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, ensure};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The proxy; stopped when dropped.
pub struct HangProxy {
    addr: SocketAddr,
    hung: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl HangProxy {
    /// Listens on a free loopback port; the first `hang_first` connections hang, the rest go
    /// to `upstream` (a loopback address).
    pub async fn start(upstream: SocketAddr, hang_first: usize) -> Result<HangProxy> {
        ensure!(
            upstream.ip().is_loopback(),
            "upstream {upstream} is not loopback"
        );
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the hang proxy")?;
        let addr = listener.local_addr()?;
        let hung = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(listener, upstream, hang_first, hung.clone()));
        Ok(HangProxy { addr, hung, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many connections were accepted and left unanswered so far.
    pub fn hung(&self) -> usize {
        self.hung.load(Ordering::SeqCst)
    }
}

impl Drop for HangProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts until aborted; the connection tasks live in a set dropped (aborted) with this task.
async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    hang_first: usize,
    hung: Arc<AtomicUsize>,
) {
    let mut connections = JoinSet::new();
    let mut accepted = 0;
    while let Ok((client, _)) = listener.accept().await {
        accepted += 1;
        if accepted <= hang_first {
            hung.fetch_add(1, Ordering::SeqCst);
            connections.spawn(swallow(client));
        } else {
            connections.spawn(forward(client, upstream));
        }
    }
}

/// Reads and discards until the client gives up; never writes a byte.
async fn swallow(mut client: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn forward(mut client: TcpStream, upstream: SocketAddr) {
    if let Ok(mut server) = TcpStream::connect(upstream).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}
