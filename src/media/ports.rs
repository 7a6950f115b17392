//! The RTP port pool: even ports in `[rtp] port_min..=port_max`.
//!
//! Shared by every call behind a short `std::sync::Mutex` (never held across
//! an await). A port is handed out with its socket already bound, so two calls
//! can never share one, and returned when the call's relay ends.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// Free even ports, least recently used first (a port is not reused at once,
/// so late packets of an old call do not reach a new one).
#[derive(Debug)]
pub struct PortPool {
    address: IpAddr,
    total: usize,
    free: Mutex<VecDeque<u16>>,
}

impl PortPool {
    /// A pool over the even ports of the range.
    pub fn new(address: IpAddr, min: u16, max: u16) -> PortPool {
        let start = min + (min % 2);
        let free: VecDeque<u16> = (start..=max).step_by(2).collect();
        PortPool {
            address,
            total: free.len(),
            free: Mutex::new(free),
        }
    }

    /// Ports in the pool.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Free ports left.
    pub fn available(&self) -> usize {
        self.free.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// Binds a UDP socket on a free port. Ports that fail to bind (taken by
    /// another program) go to the back of the line.
    pub fn bind(&self) -> Option<std::net::UdpSocket> {
        let mut free = self.free.lock().ok()?;
        for _ in 0..free.len().min(64) {
            let port = free.pop_front()?;
            match std::net::UdpSocket::bind(SocketAddr::new(self.address, port)) {
                Ok(sock) => return Some(sock),
                Err(_) => free.push_back(port),
            }
        }
        None
    }

    /// Returns a port.
    pub fn release(&self, port: u16) {
        if let Ok(mut free) = self.free.lock() {
            free.push_back(port);
        }
    }
}
