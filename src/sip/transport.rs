//! SIP transports: UDP and TCP sockets, and stream framing.
//!
//! Room: the SIP house's doors. This is the only SIP code that owns sockets.
//! It moves whole messages: datagrams as they come, TCP streams cut by
//! Content-Length ([`super::message::frame_length`]). Received bytes go to an
//! [`Inbound`] function; everything to send comes through [`SipSockets::send`],
//! which never blocks the caller. Responses always go back to where the
//! request came from (address and port, and for TCP the same connection):
//! a host named inside a message is never looked up or used.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::message::{frame_length, MAX_MESSAGE_SIZE};
use super::{Peer, TransportKind};

/// Where received messages go: bytes of one message and who sent them.
pub type Inbound = Arc<dyn Fn(&[u8], Peer) + Send + Sync>;

/// The bound sockets and the table of open TCP connections.
pub struct SipSockets {
    udp: Arc<UdpSocket>,
    tcp_writers: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    next_conn: AtomicU64,
    open_conns: AtomicUsize,
    /// Most TCP connections at once; more are refused at accept.
    max_conns: usize,
    local: SocketAddr,
    /// Where received messages go; set by [`SipSockets::start`], also used by
    /// connections we open ourselves.
    inbound: OnceLock<Inbound>,
}

impl std::fmt::Debug for SipSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipSockets")
            .field("local", &self.local)
            .finish()
    }
}

impl SipSockets {
    /// Binds UDP and TCP on `addr`, taking at most `max_conns` TCP connections.
    pub async fn bind(
        addr: SocketAddr,
        max_conns: usize,
    ) -> std::io::Result<(Arc<SipSockets>, TcpListener)> {
        let udp = UdpSocket::bind(addr).await?;
        let local = udp.local_addr()?;
        // TCP on the same port as UDP (the port may have been 0: use what UDP got).
        let tcp = TcpListener::bind(local).await?;
        Ok((
            Arc::new(SipSockets {
                udp: Arc::new(udp),
                tcp_writers: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
                open_conns: AtomicUsize::new(0),
                max_conns,
                local,
                inbound: OnceLock::new(),
            }),
            tcp,
        ))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// TCP connections open now.
    pub fn open_connections(&self) -> usize {
        self.open_conns.load(Ordering::Relaxed)
    }

    /// Starts `readers` UDP receive tasks (they share the socket, so parsing
    /// spreads over the cores) and the TCP accept loop.
    pub fn start(self: &Arc<Self>, listener: TcpListener, readers: usize, inbound: Inbound) {
        let _ = self.inbound.set(inbound.clone());
        for _ in 0..readers.max(1) {
            let me = self.clone();
            let inbound = inbound.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_MESSAGE_SIZE + 1];
                loop {
                    match me.udp.recv_from(&mut buf).await {
                        Ok((n, src)) if n <= MAX_MESSAGE_SIZE => {
                            inbound(&buf[..n], Peer::new(src, TransportKind::Udp, 0));
                        }
                        Ok(_) => {} // oversized datagram: dropped
                        Err(e) => tracing::debug!(error = %e, "udp receive error"),
                    }
                }
            });
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, src)) = listener.accept().await else {
                    continue;
                };
                if me.open_conns.load(Ordering::Relaxed) >= me.max_conns {
                    drop(stream);
                    continue;
                }
                me.adopt(stream, src, inbound.clone());
            }
        });
    }

    /// Registers a TCP connection and starts its reader and writer. Returns its id.
    fn adopt(self: &Arc<Self>, stream: TcpStream, src: SocketAddr, inbound: Inbound) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        if let Ok(mut w) = self.tcp_writers.lock() {
            w.insert(id, tx);
        }
        self.open_conns.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let peer = Peer::new(src, TransportKind::Tcp, id);
            let mut buf = BytesMut::with_capacity(4096);
            let mut unframeable = false;
            'conn: loop {
                match reader.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                loop {
                    // RFC 5626 keep-alive: CRLFCRLF ping gets a CRLF pong.
                    let crlfs = buf
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    if crlfs > 0 {
                        if buf[..crlfs].windows(4).any(|w| w == b"\r\n\r\n") {
                            me.send(peer, Bytes::from_static(b"\r\n"));
                        }
                        buf.advance(crlfs);
                    }
                    match frame_length(&buf) {
                        Ok(Some(n)) => {
                            let msg = buf.split_to(n);
                            inbound(&msg, peer);
                        }
                        Ok(None) => break,
                        Err(why) => {
                            // The stream cannot be framed any more: close it (RFC 3261 §18.3).
                            tracing::debug!(peer = %src, why, "closing unframeable TCP connection");
                            if let Some(answer) = crate::sip::message::unframeable_answer(&buf, why)
                            {
                                me.send(peer, Bytes::from(answer));
                            }
                            unframeable = true;
                            break 'conn;
                        }
                    }
                }
            }
            if unframeable {
                // Answers to the messages framed before the junk are still on
                // their way through the workers: let them out before closing.
                drop(reader);
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            if let Ok(mut w) = me.tcp_writers.lock() {
                w.remove(&id);
            }
            me.open_conns.fetch_sub(1, Ordering::Relaxed);
        });
        id
    }

    /// Sends `bytes` to `peer` without waiting. A TCP peer whose connection is
    /// gone (or was never opened: `conn == 0`) gets a new connection.
    pub fn send(self: &Arc<Self>, peer: Peer, bytes: Bytes) {
        match peer.transport {
            TransportKind::Udp => {
                if let Err(e) = self.udp.try_send_to(&bytes, peer.addr) {
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        let udp = self.udp.clone();
                        tokio::spawn(async move {
                            let _ = udp.send_to(&bytes, peer.addr).await;
                        });
                    }
                }
            }
            TransportKind::Tcp => {
                let writer = self
                    .tcp_writers
                    .lock()
                    .ok()
                    .and_then(|w| w.get(&peer.conn).cloned());
                match writer {
                    Some(w) => {
                        let _ = w.try_send(bytes);
                    }
                    None => self.connect_and_send(peer.addr, bytes),
                }
            }
        }
    }

    fn connect_and_send(self: &Arc<Self>, addr: SocketAddr, bytes: Bytes) {
        let me = self.clone();
        let Some(inbound) = self.inbound.get().cloned() else {
            return;
        };
        tokio::spawn(async move {
            let Ok(stream) = TcpStream::connect(addr).await else {
                tracing::debug!(%addr, "tcp connect failed");
                return;
            };
            let id = me.adopt(stream, addr, inbound);
            me.send(Peer::new(addr, TransportKind::Tcp, id), bytes);
        });
    }
}
