//! Who gets in: TLS on the client port and on the peer port, with certificates the tests make
//! (`raftcache_testkit::certs`), and the admin token on admin calls forwarded over the peer port.
//!
//! - Client port: TLS clients are served; a plaintext client, a client that trusts another CA,
//!   a client that stalls in its handshake, and (with `--client-auth cert`) a client without a
//!   certificate of the client CA are refused with a message, while the other clients go on;
//!   certificates rotated with SIGHUP serve new connections while writers keep going without a
//!   failed request.
//! - Peer port: nodes with certificates of the peer CA naming their ids replicate; a connection
//!   without a certificate gets no answer; a node presenting another node's certificate is
//!   refused both ways.
//! - An admin call forwarded over the peer port without the admin token is refused.

mod multi_process;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use multi_process::{bin, describe, ProcessCluster, CLIENT_TIMEOUT, DEADLINE};
use raftcache::client::{CacheClient, ClientOptions, TlsOptions};
use raftcache::gen::peer::{RaftPeerSyncClient, TRaftPeerSyncClient};
use raftcache::membership::{AdminError, AdminRequest, Change, ForwardedAdmin, MembersView};
use raftcache::network::identity::{CallHeader, ReplyHeader, Stamp};
use raftcache::tls::ClientFiles;
use raftcache_testkit::certs::{Ca, Issued};
use raftcache_testkit::wait::wait_until;

/// A client of the node's CA, with `cert` as its own certificate if given.
fn options(ca: &Path, cert: Option<&Issued>) -> TlsOptions {
    TlsOptions {
        files: ClientFiles {
            ca: ca.to_path_buf(),
            cert: cert.map(|c| c.cert.clone()),
            key: cert.map(|c| c.key.clone()),
        },
        server_name: None,
    }
}

fn serve_flags(server: &Issued) -> Vec<String> {
    vec![
        format!("--tls-cert={}", server.cert.display()),
        format!("--tls-key={}", server.key.display()),
    ]
}

/// Connects with `tls` and asks for `status`: the error of whichever step failed.
fn status_over(addr: &str, tls: Option<&TlsOptions>) -> Result<(), String> {
    let options = ClientOptions {
        tls: tls.cloned(),
        token: None,
    };
    let mut client =
        CacheClient::connect_with(addr, CLIENT_TIMEOUT, &options).map_err(|e| e.to_string())?;
    client.status().map(|_| ()).map_err(describe)
}

#[test]
fn a_tls_client_port_serves_tls_clients_and_refuses_the_others_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "cluster");
    let rogue = Ca::new(dir.path(), "rogue");
    let server = ca.issue("node", &["localhost", "127.0.0.1"]);
    let cluster = ProcessCluster::single_with(|node| {
        node.extra_args = serve_flags(&server);
        node.extra_args.push("--read-timeout-ms=1000".into());
        node.options.tls = Some(options(&ca.pem, None));
    });
    let node = cluster.node(1);
    let addr = node.client_addr.to_string();

    let mut client = node.client().expect("a TLS client connects");
    client
        .put("k", "v")
        .map_err(describe)
        .expect("put over TLS");
    assert_eq!(
        client.get("k", true).map_err(describe).unwrap().as_deref(),
        Some("v")
    );

    // A plaintext client gets an exception that names the cause, not a hang.
    let mut plain = CacheClient::connect(&addr, CLIENT_TIMEOUT).expect("TCP connect");
    let refused = plain
        .get("k", false)
        .map_err(describe)
        .expect_err("plaintext must be refused");
    assert!(
        refused.contains("speaks TLS"),
        "plaintext refusal: {refused}"
    );

    // A client that trusts another CA refuses the node's certificate.
    let wrong_ca = status_over(&addr, Some(&options(&rogue.pem, None)))
        .expect_err("a client of another CA must not trust the node");
    assert!(
        wrong_ca.contains("invalid peer certificate"),
        "wrong CA: {wrong_ca}"
    );

    // A client that stops in the middle of its handshake is dropped at the read timeout.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stalled.write_all(&[22, 3, 1, 0, 200, 1]).unwrap();
    let mut byte = [0u8; 1];
    match stalled.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a stalled handshake was not dropped: {other:?}"),
    }

    // The first client was not disturbed, and the CLI speaks TLS too.
    assert_eq!(
        client.get("k", false).map_err(describe).unwrap().as_deref(),
        Some("v")
    );
    let out = std::process::Command::new(bin())
        .args(["get", "k", "--addr", &addr, "--tls-ca"])
        .arg(&ca.pem)
        .output()
        .unwrap();
    assert!(out.status.success(), "raftcache get over TLS: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
    let log = node.log_tail(200);
    assert!(
        log.contains("a plaintext client on a TLS port"),
        "log:\n{log}"
    );
    assert!(
        log.contains("read timeout in the TLS handshake"),
        "log:\n{log}"
    );
}

#[test]
fn client_auth_cert_serves_only_clients_with_a_valid_certificate_of_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "cluster");
    let clients_ca = Ca::new(dir.path(), "clients");
    let rogue = Ca::new(dir.path(), "rogue");
    let server = ca.issue("node", &["127.0.0.1"]);
    let good = clients_ca.issue("app", &["app.example"]);
    let expired = clients_ca.issue_expired("old-app", &["app.example"]);
    let stranger = rogue.issue("stranger", &["app.example"]);
    let cluster = ProcessCluster::single_with(|node| {
        node.extra_args = serve_flags(&server);
        node.extra_args.extend([
            "--client-auth=cert".to_string(),
            format!("--tls-ca={}", clients_ca.pem.display()),
        ]);
        node.options.tls = Some(options(&ca.pem, Some(&good)));
    });
    let node = cluster.node(1);
    let addr = node.client_addr.to_string();
    let mut client = node
        .client()
        .expect("a client with a good certificate connects");
    client.put("k", "v").map_err(describe).expect("put");

    // Each is told why by the TLS alert, and the node logs why.
    for (what, cert, alert, logged) in [
        (
            "no certificate",
            None,
            "CertificateRequired",
            "peer sent no certificates",
        ),
        (
            "an expired certificate",
            Some(&expired),
            "CertificateExpired",
            "certificate expired",
        ),
        (
            "a certificate of another CA",
            Some(&stranger),
            "UnknownCA",
            "UnknownIssuer",
        ),
    ] {
        let refused = status_over(&addr, Some(&options(&ca.pem, cert)))
            .expect_err(&format!("a client with {what} must be refused"));
        assert!(
            refused.contains(alert),
            "{what}: expected the alert {alert}: {refused}"
        );
        wait_until(
            DEADLINE,
            &format!("the node logs the refusal of {what}"),
            || node.log_tail(20).contains(logged),
        );
    }
    assert_eq!(
        client.get("k", false).map_err(describe).unwrap().as_deref(),
        Some("v")
    );
}

#[test]
fn certificates_rotated_by_sighup_serve_new_connections_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "cluster");
    let old = ca.issue("old", &["127.0.0.1", "old.raftcache.test"]);
    let new = ca.issue("new", &["127.0.0.1", "new.raftcache.test"]);
    let live = Issued {
        cert: dir.path().join("live.pem"),
        key: dir.path().join("live-key.pem"),
    };
    let install = |from: &Issued| {
        // As a deployment does: write beside, then rename over.
        for (src, dst) in [(&from.cert, &live.cert), (&from.key, &live.key)] {
            let tmp = dst.with_extension("tmp");
            std::fs::copy(src, &tmp).unwrap();
            std::fs::rename(&tmp, dst).unwrap();
        }
    };
    install(&old);
    let cluster = ProcessCluster::single_with(|node| {
        node.extra_args = serve_flags(&live);
        node.options.tls = Some(options(&ca.pem, None));
    });
    let node = cluster.node(1);
    let addr = node.client_addr.to_string();
    let named = |name: &str| TlsOptions {
        server_name: Some(name.into()),
        ..options(&ca.pem, None)
    };
    status_over(&addr, Some(&named("old.raftcache.test"))).expect("the old certificate at first");

    // Writers, each opening a new connection every 20 writes: none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, written, addr) = (stop.clone(), written.clone(), addr.clone());
            let tls = ClientOptions {
                tls: Some(options(&ca.pem, None)),
                token: None,
            };
            std::thread::spawn(move || -> Result<u64, String> {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && n < 100_000 {
                    let mut client = CacheClient::connect_with(&addr, CLIENT_TIMEOUT, &tls)
                        .map_err(|e| format!("writer {w}: connect after {n} writes: {e}"))?;
                    for _ in 0..20 {
                        client
                            .put(&format!("w{w}-{n}"), "x")
                            .map_err(|e| format!("writer {w}: put {n}: {}", describe(e)))?;
                        n += 1;
                        written.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Ok(n)
            })
        })
        .collect();
    let pid = node.pid().expect("running") as i32;
    let hup = || {
        // SAFETY: sending a signal to a child process of this test.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    };
    wait_until(DEADLINE, "writes before the rotation", || {
        written.load(Ordering::SeqCst) >= 200
    });
    install(&new);
    hup();
    wait_until(
        DEADLINE,
        "a new connection sees the new certificate",
        || status_over(&addr, Some(&named("new.raftcache.test"))),
    );
    let old_name = status_over(&addr, Some(&named("old.raftcache.test")))
        .expect_err("the old certificate is no longer presented");
    assert!(old_name.contains("invalid peer certificate"), "{old_name}");
    let at_rotation = written.load(Ordering::SeqCst);

    // A reload that fails keeps the certificate in use.
    std::fs::write(&live.key, "not a key").unwrap();
    hup();
    wait_until(DEADLINE, "the failed reload is logged", || {
        node.log_tail(50).contains("TLS files not reloaded")
    });
    status_over(&addr, Some(&named("new.raftcache.test"))).expect("still the new certificate");

    wait_until(DEADLINE, "writes after the rotation", || {
        written.load(Ordering::SeqCst) >= at_rotation + 200
    });
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        let n = writer.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0);
    }
}

/// The flags of node `id`'s peer certificate, `cert`.
fn peer_flags(ca: &Ca, cert: &Issued) -> Vec<String> {
    vec![
        format!("--peer-tls-cert={}", cert.cert.display()),
        format!("--peer-tls-key={}", cert.key.display()),
        format!("--peer-tls-ca={}", ca.pem.display()),
    ]
}

#[test]
fn peers_talk_only_to_nodes_presenting_the_certificate_of_the_id_they_claim() {
    let dir = tempfile::tempdir().unwrap();
    let peer_ca = Ca::new(dir.path(), "peers");
    let certs: Vec<Issued> = (1..=3)
        .map(|id| peer_ca.issue(&format!("node-{id}"), &[&raftcache::tls::peer_name(id)]))
        .collect();
    // Node 3 is given node 2's certificate: it can prove only that it is node 2.
    let mut cluster = ProcessCluster::create_with(3, &[]);
    for node in &mut cluster.nodes {
        let cert = if node.id == 3 {
            &certs[1]
        } else {
            &certs[node.id as usize - 1]
        };
        node.extra_args = peer_flags(&peer_ca, cert);
        node.spawn();
    }
    for node in &mut cluster.nodes {
        node.wait_up();
    }
    let leader = cluster.wait_for_leader(&[1, 2]);
    let follower = if leader == 1 { 2 } else { 1 };
    let mut client = cluster.node(leader).client().unwrap();
    client
        .put("k", "v")
        .map_err(describe)
        .expect("a put through nodes 1 and 2");
    let mut on_follower = cluster.node(follower).client().unwrap();
    assert_eq!(
        on_follower
            .get("k", true)
            .map_err(describe)
            .unwrap()
            .as_deref(),
        Some("v")
    );

    // Node 3's calls are refused for their certificate, and calls to it fail their handshake.
    wait_until(
        DEADLINE,
        "node 3's calls refused for their certificate",
        || {
            cluster
                .node(leader)
                .log_tail(400)
                .contains("its certificate does not name node-3.raftcache")
                || cluster
                    .node(follower)
                    .log_tail(400)
                    .contains("its certificate does not name node-3.raftcache")
        },
    );
    wait_until(
        DEADLINE,
        "the leader's calls to node 3 fail their handshake",
        || {
            cluster
                .node(leader)
                .log_tail(400)
                .contains(r#"certificate not valid for name "node-3.raftcache""#)
        },
    );
    let mut on_3 = cluster.node(3).client().unwrap();
    assert_eq!(
        on_3.get("k", false).map_err(describe).unwrap(),
        None,
        "node 3 took entries"
    );

    // A hand-made connection to a peer port without a certificate gets no answer.
    let peer_addr = cluster.node(leader).peer_addr.to_string();
    let tls = TlsOptions {
        server_name: Some(raftcache::tls::peer_name(leader)),
        ..options(&peer_ca.pem, None)
    };
    let refused = status_over(&peer_addr, Some(&tls))
        .expect_err("a peer connection without a certificate must get no answer");
    assert!(refused.contains("CertificateRequired"), "{refused}");
}

#[test]
fn an_admin_call_forwarded_over_the_peer_port_needs_the_admin_token() {
    let cluster = ProcessCluster::start_with(3, &["--admin-token=s3cret"]);
    let leader = cluster.wait_for_leader(&[1, 2, 3]);
    let follower = if leader == 1 { 2 } else { 1 };
    let status = cluster.node(leader).status().unwrap();
    let cluster_id = status.cluster_id.expect("status names the cluster");
    // Called as the follower would: its id and the incarnation the leader knows it by.
    let known: BTreeMap<u64, String> = serde_json::from_slice(
        &std::fs::read(cluster.node(leader).data_dir.join("peers.json")).unwrap(),
    )
    .unwrap();
    let ask = |token: &str, request: AdminRequest| -> Result<MembersView, AdminError> {
        let header = CallHeader {
            from: Stamp {
                cluster_id: cluster_id.clone(),
                node_id: follower,
                incarnation: known[&follower].clone(),
            },
            to: leader,
            to_incarnation: None,
            known: BTreeMap::new(),
            known_as_of: None,
        };
        let mut payload = bincode::serialize(&header).unwrap();
        payload.extend(
            bincode::serialize(&ForwardedAdmin {
                token: token.into(),
                request,
            })
            .unwrap(),
        );
        let stream = TcpStream::connect(cluster.node(leader).peer_addr).unwrap();
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        let input = thrift::protocol::TBinaryInputProtocol::new(stream.try_clone().unwrap(), true);
        let output = thrift::protocol::TBinaryOutputProtocol::new(stream, true);
        let answer = RaftPeerSyncClient::new(input, output)
            .admin(payload)
            .unwrap();
        let mut body = answer.as_slice();
        match bincode::deserialize_from::<_, ReplyHeader>(&mut body).unwrap() {
            ReplyHeader::Accepted(_) => bincode::deserialize(body).unwrap(),
            ReplyHeader::Refused(reason) => panic!("the call itself was refused: {reason}"),
        }
    };
    // A change (removing the follower, which the rules allow) and a read of the membership.
    let remove = AdminRequest::Change {
        change: Change::Remove { id: follower },
        force: false,
    };
    match ask("", remove.clone()) {
        Err(AdminError::Unauthorized(message)) => assert!(message.contains("admin token")),
        other => panic!("a forwarded admin change without the token was answered: {other:?}"),
    }
    assert!(matches!(
        ask("guess", AdminRequest::Members),
        Err(AdminError::Unauthorized(_))
    ));
    let members = ask("s3cret", AdminRequest::Members).expect("with the token");
    assert_eq!(
        members.members.len(),
        3,
        "the change without the token was made"
    );
    let log = cluster.node(leader).log_tail(100);
    assert!(log.contains("forwarded admin call refused"), "log:\n{log}");
    assert!(!log.contains("guess"), "a token must never be logged");
}

#[test]
fn client_auth_token_serves_a_connection_once_it_presents_the_token() {
    use raftcache::gen::cache::TCacheServiceSyncClient;
    let token = "client-s3cret";
    let cluster = ProcessCluster::single_with(|node| {
        node.extra_args = vec![
            "--client-auth=token".into(),
            format!("--client-token={token}"),
        ];
        node.options.token = Some(token.into());
    });
    let node = cluster.node(1);
    let addr = node.client_addr.to_string();
    let mut client = node.client().expect("a client with the token");
    client
        .put("k", "v")
        .map_err(describe)
        .expect("put after authenticate");

    // Every call of a connection that has not authenticated is refused, each with an
    // exception its method declares (or an application exception for status).
    let mut anonymous = CacheClient::connect(&addr, CLIENT_TIMEOUT).unwrap();
    let get = anonymous
        .get("k", false)
        .map_err(describe)
        .expect_err("get without a token");
    assert!(
        get.starts_with("invalid request:") && get.contains("client token"),
        "{get}"
    );
    let status = anonymous
        .status()
        .map_err(describe)
        .expect_err("status without a token");
    assert!(status.contains("client token"), "{status}");
    let admin = anonymous
        .admin_members("")
        .map_err(describe)
        .expect_err("admin without a token");
    assert!(admin.starts_with("unauthorized:"), "{admin}");
    let wrong = anonymous
        .service()
        .authenticate("guess".into())
        .map_err(describe);
    assert!(
        wrong
            .clone()
            .expect_err("a wrong token")
            .starts_with("unauthorized:"),
        "{wrong:?}"
    );
    assert!(
        anonymous.get("k", false).is_err(),
        "a wrong token must not authenticate"
    );
    anonymous
        .service()
        .authenticate(token.into())
        .map_err(describe)
        .unwrap();
    assert_eq!(
        anonymous
            .get("k", false)
            .map_err(describe)
            .unwrap()
            .as_deref(),
        Some("v")
    );

    // The CLI presents it with --client-token (or RAFTCACHE_CLIENT_TOKEN).
    let cli = |extra: &[&str]| {
        std::process::Command::new(bin())
            .args(["get", "k", "--addr", &addr])
            .args(extra)
            .env_remove("RAFTCACHE_CLIENT_TOKEN")
            .output()
            .unwrap()
    };
    let with = cli(&["--client-token", token]);
    assert!(with.status.success(), "{with:?}");
    assert_eq!(String::from_utf8_lossy(&with.stdout).trim(), "v");
    let without = cli(&[]);
    assert_eq!(without.status.code(), Some(2), "{without:?}");
    assert!(String::from_utf8_lossy(&without.stderr).contains("client token"));

    let log = node.log_tail(200);
    assert!(log.contains("a wrong client token"), "log:\n{log}");
    assert!(
        !log.contains("guess") && !log.contains(token),
        "a token must never be logged"
    );
}

#[test]
fn client_auth_flags_that_do_not_go_together_stop_the_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    for (flags, expected) in [
        (
            vec!["--client-auth=token"],
            "--client-auth token needs --client-token",
        ),
        (
            vec!["--client-token=t"],
            "--client-token needs --client-auth token",
        ),
        (
            vec!["--client-auth=cert"],
            "--client-auth cert needs --tls-ca",
        ),
    ] {
        let out = std::process::Command::new(bin())
            .arg("serve")
            .args(&flags)
            .arg("--listen=127.0.0.1:0")
            .arg("--peer-listen=127.0.0.1:0")
            .arg("--http-listen=none")
            .arg(format!("--data-dir={}", dir.path().join("d").display()))
            .env_remove("RAFTCACHE_CLIENT_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
}

#[test]
fn with_http_tls_the_http_port_speaks_https_with_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "cluster");
    let server = ca.issue("node", &["127.0.0.1"]);
    let cluster = ProcessCluster::single_with(|node| {
        node.extra_args = serve_flags(&server);
        node.extra_args.push("--http-tls".into());
        node.options.tls = Some(options(&ca.pem, None));
    });
    let http = cluster.node(1).http_addr.to_string();
    let timeout = Duration::from_secs(5);
    let tls = options(&ca.pem, None);
    let (status, body) = raftcache::http::get_with(&http, "/metrics", timeout, Some(&tls))
        .expect("GET /metrics over TLS");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("raftcache_"), "{body}");
    // Plain HTTP gets no HTTP answer.
    let plain = raftcache::http::get(&http, "/health", timeout);
    assert!(plain.is_err(), "plain HTTP to an HTTPS port: {plain:?}");
    let out = std::process::Command::new(bin())
        .args(["check", "health", "--http", &http, "--tls-ca"])
        .arg(&ca.pem)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "raftcache check health over TLS: {out:?}"
    );
}

#[test]
fn a_node_joins_a_cluster_over_tls_with_the_client_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "cluster");
    let server = ca.issue("node", &["127.0.0.1"]);
    let token = "join-client-token";
    let mut flags = serve_flags(&server);
    flags.extend([
        "--client-auth=token".to_string(),
        format!("--client-token={token}"),
    ]);
    let client = ClientOptions {
        tls: Some(options(&ca.pem, None)),
        token: Some(token.into()),
    };
    let mut cluster = ProcessCluster::single_with(|node| {
        node.extra_args = flags.clone();
        node.options = client.clone();
    });
    let first = cluster.node(1).client_addr;
    let mut joining = flags.clone();
    joining.extend([
        format!("--join={first}"),
        format!("--join-tls-ca={}", ca.pem.display()),
    ]);
    let id = cluster.add_node(&joining);
    cluster.node_mut(id).options = client;
    cluster.node_mut(id).start();
    wait_until(DEADLINE, "the joining node is a voter", || {
        let status = cluster.node(1).status()?;
        let voters = status.members.iter().filter(|m| m.voter).count();
        (voters == 2).then_some(()).ok_or(format!("{status:?}"))
    });
}
