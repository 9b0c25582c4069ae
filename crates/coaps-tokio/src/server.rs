//! The server driver: one UDP socket, a tokio loop on the server's own thread, requests out to
//! the application through a bounded channel and answers back through [`Responder`].

use crate::{grow_buffers, runtime};
use gateway_coap::{coap_lite::Packet, RequestId};
use gateway_dtls::{
    server::{busy, Config, Incoming, Server as Machine, Stats},
    DtlsError,
};
use std::{
    net::SocketAddr,
    sync::{mpsc as std_mpsc, Arc},
    time::{Duration, Instant},
};
use tokio::{net::UdpSocket, sync::mpsc, time::sleep_until};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen.
    pub bind: SocketAddr,
    /// Requests waiting for the application at most; more get 5.03 at once.
    pub max_pending: usize,
    /// Everything else: DTLS, CoAP, capacity, identities.
    pub server: Config,
}

/// Sends responses back into a running server, from any thread.
#[derive(Clone)]
pub struct Responder(mpsc::UnboundedSender<(RequestId, Packet)>);

impl Responder {
    /// Answers request `id`.
    pub fn respond(&self, id: RequestId, packet: Packet) {
        let _ = self.0.send((id, packet));
    }
}

/// A running CoAP-over-DTLS server.
pub struct Server {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// Requests for the application.
    pub requests: std_mpsc::Receiver<Incoming>,
    /// Where responses go.
    pub responder: Responder,
    /// Counters.
    pub stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Checks the settings, binds and starts serving.
    pub fn start(opts: ServerOptions) -> Result<Server, DtlsError> {
        let machine = Machine::new(opts.server, Instant::now(), gateway_dtls::rng())?;
        let std_socket = std::net::UdpSocket::bind(opts.bind)
            .map_err(|e| DtlsError::Config(format!("cannot listen on {}: {e}", opts.bind)))?;
        std_socket
            .set_nonblocking(true)
            .map_err(|e| DtlsError::Other(e.to_string()))?;
        grow_buffers(&socket2::SockRef::from(&std_socket));
        let local_addr = std_socket
            .local_addr()
            .map_err(|e| DtlsError::Other(e.to_string()))?;
        let (req_tx, requests) = std_mpsc::sync_channel(opts.max_pending.max(1));
        let (resp_tx, resp_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let stats = machine.stats().clone();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("coaps-server".into())
            .spawn(move || {
                let _e = span.enter();
                runtime().block_on(async move {
                    let socket = UdpSocket::from_std(std_socket).expect("tokio socket");
                    server_loop(machine, socket, req_tx, resp_rx, stop_rx).await
                })
            })
            .map_err(|e| DtlsError::Other(e.to_string()))?;
        Ok(Server {
            local_addr,
            requests,
            responder: Responder(resp_tx),
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn server_loop(
    mut machine: Machine,
    socket: UdpSocket,
    req_tx: std_mpsc::SyncSender<Incoming>,
    mut resp_rx: mpsc::UnboundedReceiver<(RequestId, Packet)>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        let next = machine
            .poll_timeout(now)
            .unwrap_or(now + Duration::from_secs(60));
        let stopping = tokio::select! {
            _ = &mut stop => {
                // Answers the application gave before it stopped still go out.
                while let Ok((id, packet)) = resp_rx.try_recv() {
                    machine.respond(Instant::now(), id, packet);
                }
                true
            }
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, peer)) = r {
                    machine.handle(Instant::now(), peer, &buf[..n]);
                }
                false
            }
            Some((id, packet)) = resp_rx.recv() => {
                machine.respond(Instant::now(), id, packet);
                false
            }
            _ = sleep_until(next.into()) => {
                machine.handle_timeout(Instant::now());
                false
            }
        };
        while let Some(inc) = machine.poll_event() {
            if let Err(
                std_mpsc::TrySendError::Full(inc) | std_mpsc::TrySendError::Disconnected(inc),
            ) = req_tx.try_send(inc)
            {
                machine.respond(Instant::now(), inc.id, busy());
            }
        }
        while let Some((peer, d)) = machine.poll_transmit() {
            let _ = socket.send_to(&d, peer).await;
        }
        if stopping {
            return;
        }
    }
}
