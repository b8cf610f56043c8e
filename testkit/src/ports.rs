//! Ports for test nodes: bound on 127.0.0.1:0 all at once (so they differ), then released for
//! the node to bind. Another process may take one in between; the callers that start real
//! processes retry a node that lost that race.

use std::net::{SocketAddr, TcpListener};

/// `n` distinct loopback addresses free right now.
pub fn free_addrs(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners.iter().map(TcpListener::local_addr).collect()
}

/// `n` distinct loopback ports free right now.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    Ok(free_addrs(n)?.iter().map(SocketAddr::port).collect())
}
