//! The simulator's TCP listener, whose connections can be reset on demand.
//!
//! `FaultKind::ConnectionReset` must look, on the client's side, exactly like a server that
//! crashed mid-request: no status line, no bytes, a TCP reset. axum offers no way for a handler
//! to drop its connection, so every accepted stream is wrapped in [`SimIo`], and a handle to it
//! ([`ConnCtl`]) reaches the handler through axum's `ConnectInfo`. When a handler kills the
//! connection, the next write fails, hyper drops the stream, and `SO_LINGER = 0` turns the close
//! into an RST.
//!
//! Nothing here knows about HTTP or the organisation.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A `TcpListener` whose streams are [`SimIo`].
pub(crate) struct SimListener(pub TcpListener);

impl Listener for SimListener {
    type Io = SimIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    // Small JSON answers: do not let Nagle add latency the test did not ask for.
                    let _ = stream.set_nodelay(true);
                    let io = SimIo {
                        inner: stream,
                        ctl: ConnCtl(Arc::new(AtomicBool::new(false))),
                        lingering: false,
                    };
                    return (io, addr);
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Lets a handler reset the connection its request came on.
#[derive(Debug, Clone)]
pub(crate) struct ConnCtl(Arc<AtomicBool>);

impl ConnCtl {
    /// From now on every read and write on this connection fails, so hyper drops it.
    pub fn kill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn killed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Connected<IncomingStream<'_, SimListener>> for ConnCtl {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        stream.io().ctl.clone()
    }
}

pub(crate) struct SimIo {
    inner: TcpStream,
    ctl: ConnCtl,
    lingering: bool,
}

impl SimIo {
    fn reset_error(&mut self) -> io::Error {
        if !self.lingering {
            // Linger 0: closing the socket sends RST instead of FIN.
            let _ = self.inner.set_zero_linger();
            self.lingering = true;
        }
        io::Error::new(io::ErrorKind::ConnectionReset, "simulated connection reset")
    }
}

impl AsyncRead for SimIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.ctl.killed() {
            return Poll::Ready(Err(self.reset_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.ctl.killed() {
            return Poll::Ready(Err(self.reset_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.ctl.killed() {
            return Poll::Ready(Err(self.reset_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ctl.killed() {
            return Poll::Ready(Err(self.reset_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
