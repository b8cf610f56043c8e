//! The addresses a node gives its cluster for itself: `--advertise-peer` and
//! `--advertise-client`, or the addresses its listeners are bound to. A node that binds
//! `0.0.0.0` (in a container) must tell the cluster a name or address others can reach; the
//! cluster records it as written, and a host name is looked up again on every connect.

use std::net::SocketAddr;

use super::NodeConfig;

/// The addresses a node gives the cluster for itself (`--advertise-peer`, `--advertise-client`,
/// or the addresses it is bound to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// How the other nodes reach this node's peer port.
    pub peer_addr: String,
    /// How clients and operators reach this node's client port.
    pub client_addr: String,
}

/// An address to give other nodes, `HOST:PORT`: an IP address (IPv6 in brackets) or a host name,
/// kept as written so that a name is looked up again on every connect. An unspecified IP
/// (0.0.0.0, ::) or port 0 reaches no one and is refused.
pub(super) fn parse_addr(text: &str) -> Result<String, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.ip().is_unspecified() {
            return Err(format!(
                "{} is not an address other nodes can reach: give this node's own IP or host name",
                addr.ip()
            ));
        }
        if addr.port() == 0 {
            return Err("port 0 is not an address other nodes can reach".into());
        }
        return Ok(text.to_string());
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not HOST:PORT"))?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !host_ok {
        return Err(format!(
            "`{host}` in `{text}` is not a host name or IP address (put an IPv6 address in brackets: [::1]:9190)"
        ));
    }
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not an address other nodes can reach".into()),
        Ok(_) => Ok(text.to_string()),
        Err(_) => Err(format!("`{port}` in `{text}` is not a port number")),
    }
}

impl NodeConfig {
    /// The addresses this node gives the cluster for itself, its listeners being bound to
    /// `peer_bound` and `client_bound`: `--advertise-peer` and `--advertise-client`, else the
    /// bound addresses.
    ///
    /// With `--join`, a bound address with an unspecified IP (0.0.0.0, ::) and no flag to
    /// replace it is refused: the cluster would record an address no other node or client can
    /// reach, and the leader could never replicate to this node.
    pub fn advertised(
        &self,
        peer_bound: SocketAddr,
        client_bound: SocketAddr,
    ) -> Result<Advertised, String> {
        let joining = matches!(self.start_mode(), super::StartMode::Join { .. });
        let mut unreachable = Vec::new();
        let mut pick = |flag: &Option<String>, bound: SocketAddr, listen: &str, advertise: &str| {
            if let Some(addr) = flag {
                return addr.clone();
            }
            if joining && bound.ip().is_unspecified() {
                unreachable.push(format!(
                    "{listen} {bound} is an unspecified address that no other node or client can reach: give the address to register with {advertise} HOST:PORT (this node's host name or IP as the others see it, e.g. {advertise} node4:{})",
                    bound.port()
                ));
            }
            bound.to_string()
        };
        let advertised = Advertised {
            peer_addr: pick(
                &self.advertise_peer,
                peer_bound,
                "--peer-listen",
                "--advertise-peer",
            ),
            client_addr: pick(
                &self.advertise_client,
                client_bound,
                "--listen",
                "--advertise-client",
            ),
        };
        if unreachable.is_empty() {
            Ok(advertised)
        } else {
            Err(format!(
                "--join registers this node's addresses with the cluster, and {}",
                unreachable.join("; and ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn advertised_addresses_default_to_the_bound_ones() {
        let config = NodeConfig::from_args(["--join=a:1"]).unwrap();
        let advertised = config
            .advertised(addr("127.0.0.1:4321"), addr("127.0.0.1:1234"))
            .unwrap();
        assert_eq!(advertised.peer_addr, "127.0.0.1:4321");
        assert_eq!(advertised.client_addr, "127.0.0.1:1234");
    }

    #[test]
    fn advertised_addresses_take_host_names_and_replace_the_bound_ones() {
        let config = NodeConfig::from_args([
            "--listen=0.0.0.0:9090",
            "--peer-listen=0.0.0.0:9190",
            "--advertise-peer=node4:9190",
            "--advertise-client=cache-4.example.com:19090",
            "--join=node1:9090",
        ])
        .unwrap();
        let advertised = config
            .advertised(config.peer_listen, config.listen)
            .unwrap();
        assert_eq!(advertised.peer_addr, "node4:9190");
        assert_eq!(advertised.client_addr, "cache-4.example.com:19090");
        let bootstrapping = NodeConfig::from_args(["--advertise-peer=[fd00::4]:9190"]).unwrap();
        let own = bootstrapping
            .advertised(addr("[::]:9190"), addr("127.0.0.1:9090"))
            .unwrap();
        let members = bootstrapping.bootstrap_members(&own).unwrap();
        assert_eq!(members[&1].peer_addr, "[fd00::4]:9190");
        assert_eq!(members[&1].client_addr, "127.0.0.1:9090");
    }

    #[test]
    fn join_from_an_unspecified_address_needs_the_address_to_advertise() {
        let peer =
            NodeConfig::from_args(["--peer-listen=0.0.0.0:9190", "--join=node1:9090"]).unwrap();
        let why = peer.advertised(peer.peer_listen, peer.listen).unwrap_err();
        assert!(why.contains("--advertise-peer HOST:PORT"), "{why}");
        assert!(why.contains("0.0.0.0:9190"), "{why}");
        assert!(!why.contains("--advertise-client"), "{why}");

        let both = NodeConfig::from_args([
            "--listen=[::]:9090",
            "--peer-listen=0.0.0.0:9190",
            "--join=node1:9090",
        ])
        .unwrap();
        let why = both.advertised(both.peer_listen, both.listen).unwrap_err();
        assert!(why.contains("--advertise-peer"), "{why}");
        assert!(why.contains("--advertise-client"), "{why}");

        let client = NodeConfig::from_args([
            "--listen=0.0.0.0:9090",
            "--peer-listen=0.0.0.0:9190",
            "--advertise-peer=node4:9190",
            "--join=node1:9090",
        ])
        .unwrap();
        let why = client
            .advertised(client.peer_listen, client.listen)
            .unwrap_err();
        assert!(why.contains("--advertise-client HOST:PORT"), "{why}");
        assert!(!why.contains("--advertise-peer"), "{why}");
    }

    #[test]
    fn an_unspecified_address_is_fine_without_join() {
        for mode in [&[][..], &["--no-bootstrap"][..]] {
            let args = ["--listen=0.0.0.0:9090", "--peer-listen=0.0.0.0:9190"];
            let config = NodeConfig::from_args(args.iter().chain(mode)).unwrap();
            let advertised = config
                .advertised(config.peer_listen, config.listen)
                .unwrap();
            assert_eq!(advertised.peer_addr, "0.0.0.0:9190");
        }
    }

    #[test]
    fn an_advertised_address_is_host_port_that_others_can_reach() {
        for good in ["node4:9190", "10.0.0.4:9190", "[fd00::4]:9190", "a_b.c-d:1"] {
            assert_eq!(parse_addr(good).as_deref(), Ok(good));
        }
        for bad in [
            "0.0.0.0:9190",
            "[::]:9190",
            "node4",
            "node4:",
            ":9190",
            "node4:0",
            "10.0.0.4:0",
            "node4:65536",
            "fd00::4:9190",
            "node 4:9190",
            "http://node4:9190",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad} was accepted");
        }
        assert!(NodeConfig::from_args(["--advertise-peer=0.0.0.0:9190"]).is_err());
        assert!(NodeConfig::from_args(["--advertise-client=node4"]).is_err());
    }
}
