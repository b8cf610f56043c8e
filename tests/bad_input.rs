//! Bad input on the client port. Each test starts a one-node cluster with limits set so the
//! test goes past them, sends raw strict-binary Thrift (or non-Thrift) bytes over a plain
//! `TcpStream`, and checks what the server does: messages over `--max-message-bytes` (and that
//! the body of a refused message is never run as a call), negative and huge length prefixes
//! (with the process's memory), invalid UTF-8, non-Thrift bytes, keys and values over
//! `--max-key-bytes`/`--max-value-bytes` (declared `InvalidRequest`, nothing sent to Raft), the
//! `--max-connections` cap, 1,000 idle connections, a client stalling mid-message
//! (`--read-timeout-ms`) and an idle one (`--idle-timeout-ms`). After every bad input a test
//! checks that no thread panicked, that a new client is still served (a put, then a get), and
//! that the server closed its side of the bad connection.
//!
//! Within one process the tests run one at a time (a shared lock): the memory test reads the
//! whole process's RSS.

mod in_process;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use in_process::{phase, InProcessCluster, WAIT};
use raftcache::client::CacheClient;
use raftcache::gen::cache::InvalidRequest;
use raftcache_testkit::wait::{wait_until, wait_until_async};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static PANICS: AtomicUsize = AtomicUsize::new(0);
/// How long a test waits for the server to close a connection it should close at once.
const PROMPT: Duration = Duration::from_secs(5);

// ---- strict binary Thrift encoding -------------------------------------------------------

const T_STRING: u8 = 11;
const T_STRUCT: u8 = 12;
const REPLY: u8 = 2;
const EXCEPTION: u8 = 3;

/// Version 1 | CALL, the method name, seqid 7.
fn call_header(method: &str) -> Vec<u8> {
    let mut b = 0x8001_0001u32.to_be_bytes().to_vec();
    string(&mut b, method.as_bytes());
    b.extend(7i32.to_be_bytes());
    b
}
fn string(b: &mut Vec<u8>, s: &[u8]) {
    b.extend((s.len() as i32).to_be_bytes());
    b.extend(s);
}
fn field(b: &mut Vec<u8>, ttype: u8, id: i16) {
    b.push(ttype);
    b.extend(id.to_be_bytes());
}
/// `get(1: string key)`.
fn get_call(key: &[u8]) -> Vec<u8> {
    let mut b = call_header("get");
    field(&mut b, T_STRING, 1);
    string(&mut b, key);
    b.push(0); // end of args
    b
}
/// `put(1: CacheEntry {1: key, 2: value})`.
fn put_call(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = call_header("put");
    field(&mut b, T_STRUCT, 1);
    field(&mut b, T_STRING, 1);
    string(&mut b, key);
    field(&mut b, T_STRING, 2);
    string(&mut b, value);
    b.extend([0, 0]); // end of CacheEntry, end of args
    b
}
fn status_call() -> Vec<u8> {
    [call_header("status"), vec![0]].concat()
}
/// A `get` whose key length prefix is `len`, followed by `rest` instead of the key.
fn get_with_len_prefix(len: i32, rest: &[u8]) -> Vec<u8> {
    let mut b = call_header("get");
    field(&mut b, T_STRING, 1);
    b.extend(len.to_be_bytes());
    b.extend(rest);
    b
}

// ---- raw connections -----------------------------------------------------------------------

/// How a connection ended: closed by the server (FIN), reset by it (it closed with our bytes
/// unread), or still open when the test stopped waiting.
#[derive(Debug, PartialEq, Clone, Copy)]
enum End {
    Eof,
    Reset,
    StillOpen,
}

#[derive(Debug)]
struct Outcome {
    bytes: Vec<u8>,
    end: End,
    after: Duration,
}

impl Outcome {
    /// The type of the first message the server sent back (REPLY, EXCEPTION), if any.
    fn first_message_type(&self) -> Option<u8> {
        let head = &self.bytes[..self.bytes.len().min(4)];
        assert!(
            head.is_empty() || head.starts_with(&[0x80, 0x01, 0x00]),
            "not a strict binary Thrift answer: {head:?}"
        );
        self.bytes.get(3).copied()
    }

    /// Closed by the server, at most after an `Exception` message (never a normal reply).
    fn assert_refused(&self, what: &str) {
        let text = String::from_utf8_lossy(&self.bytes[..self.bytes.len().min(200)]);
        eprintln!(
            "{what}: {:?} after {:?}, back: {text:?}",
            self.end, self.after
        );
        let kind = self.first_message_type();
        assert!(
            kind.is_none() || kind == Some(EXCEPTION),
            "{what}: the server answered it with a normal reply: {text:?}"
        );
        assert_ne!(
            self.end,
            End::StillOpen,
            "{what}: still open {:?} later, after sending back {text:?}; a server that answers \
             with an exception and keeps reading takes the rest of the bad message as the next",
            self.after
        );
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Writes `bytes` (a write error is fine: the server may have closed already).
fn send(s: &mut TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes).and_then(|_| s.flush());
}

/// Reads whatever comes back until the server closes the connection or `limit` passes.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Outcome {
    let start = Instant::now();
    let (mut bytes, mut buf) = (Vec::new(), [0u8; 8192]);
    let end = loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            break End::StillOpen;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break End::Eof,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) => match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => break End::StillOpen,
                ErrorKind::Interrupted => {}
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => break End::Reset,
                _ => panic!("unexpected read error {e:?}"),
            },
        }
    };
    let after = start.elapsed();
    Outcome { bytes, end, after }
}

/// Opens a connection, sends `bytes`, and reads until the server closes it or `limit` passes.
async fn send_and_read(addr: SocketAddr, bytes: Vec<u8>, limit: Duration) -> Outcome {
    blocking(move || {
        let mut s = connect(addr);
        send(&mut s, &bytes);
        read_until_closed(&mut s, limit)
    })
    .await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

// ---- cluster checks ----------------------------------------------------------------------

/// Takes the test lock, counts panics from here on, and starts a one-node cluster.
async fn start(
    flags: &[&str],
) -> (
    tokio::sync::MutexGuard<'static, ()>,
    InProcessCluster,
    usize,
) {
    let guard = SERIAL.lock().await;
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info)
        }));
    });
    let cluster = InProcessCluster::start(1, flags).await;
    cluster.wait_for_leader().await;
    (guard, cluster, PANICS.load(Ordering::SeqCst))
}

/// No thread panicked, and a new client can still put and then get.
async fn assert_healthy(cluster: &InProcessCluster, panics_before: usize, tag: &str) {
    let panics = PANICS.load(Ordering::SeqCst);
    assert_eq!(panics, panics_before, "a thread panicked ({tag})");
    let (key, value) = (format!("after-{tag}"), format!("value after {tag}"));
    let put = cluster.client(1).put(&key, &value).await;
    assert_eq!(put.map_err(|e| e.to_string()), Ok(true), "put after {tag}");
    let got = cluster.client(1).get(&key, false).await;
    assert_eq!(
        got.map_err(|e| e.to_string()),
        Ok(Some(value)),
        "get after {tag}"
    );
}

/// The server closed its side of every client connection (a panicking connection thread would
/// leave its connection counted forever).
async fn wait_no_connections(cluster: &InProcessCluster, tag: &str) {
    let what = format!("the server closes every client connection ({tag})");
    wait_until_async(WAIT, &what, async || {
        cluster.node(1).open_client_connections() == 0
    })
    .await;
}

/// Sends `bytes` on a new connection; checks that the server stays healthy, that it closes the
/// connection promptly (at most after an Exception reply), and that it forgets it.
async fn assert_refused(cluster: &InProcessCluster, panics: usize, what: &str, bytes: Vec<u8>) {
    phase(what);
    let out = send_and_read(cluster.client_addrs[&1], bytes, PROMPT).await;
    assert_healthy(cluster, panics, what).await;
    out.assert_refused(what);
    wait_no_connections(cluster, what).await;
}

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with(field)).expect(field);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn invalid_request(e: &thrift::Error) -> &str {
    match e {
        thrift::Error::User(u) => match u.downcast_ref::<InvalidRequest>() {
            Some(invalid) => &invalid.message,
            None => panic!("not InvalidRequest: {e:?}"),
        },
        other => panic!("expected a declared InvalidRequest, got {other:?}"),
    }
}

// ---- the tests -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_over_max_message_bytes_closes_the_connection() {
    let flags = ["--max-message-bytes=65536", "--read-timeout-ms=30000"];
    let (_g, mut cluster, panics) = start(&flags).await;
    let big = put_call(b"big", &vec![b'a'; 1 << 20]);
    assert_refused(
        &cluster,
        panics,
        "a put of a 1 MiB value (limit 64 KiB)",
        big,
    )
    .await;
    // Each string is under the limit (the protocol's check); the message is not (the server's).
    let big = put_call(&[b'k'; 40 << 10], &[b'v'; 40 << 10]);
    assert_refused(&cluster, panics, "a put of 40 KiB key + 40 KiB value", big).await;
    let got = cluster.client(1).get("big", false).await.unwrap();
    assert_eq!(got, None, "the refused put was applied");
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn body_of_a_refused_oversized_message_is_not_executed() {
    let flags = ["--max-message-bytes=65536", "--read-timeout-ms=30000"];
    let (_g, mut cluster, panics) = start(&flags).await;
    phase("a 1 MiB put whose value bytes begin with a complete put call of key `smuggled`");
    let mut value = put_call(b"smuggled", b"yes");
    value.resize(1 << 20, b'a');
    let out = send_and_read(cluster.client_addrs[&1], put_call(b"outer", &value), PROMPT).await;
    assert_healthy(&cluster, panics, "smuggled put").await;
    let smuggled = cluster.client(1).get("smuggled", false).await.unwrap();
    assert_eq!(
        smuggled, None,
        "the server refused a message for its size, then read the rest of it as new calls and \
         ran the put hidden in its value"
    );
    out.assert_refused("a put with a call in its 1 MiB value");
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn negative_string_length_closes_the_connection() {
    let (_g, mut cluster, panics) = start(&["--read-timeout-ms=30000"]).await;
    let bad = get_with_len_prefix(-1, &[0]);
    assert_refused(&cluster, panics, "a get with key length -1", bad).await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_length_prefix_closes_promptly_without_allocating() {
    let (_g, mut cluster, panics) = start(&["--read-timeout-ms=30000"]).await;
    let addr = cluster.client_addrs[&1];
    assert_healthy(&cluster, panics, "warm-up").await;
    let (rss0, vm0) = (proc_status_kib("VmRSS:"), proc_status_kib("VmSize:"));

    phase("50 connections each claim a 0x7FFFFFF0-byte key and send 3 bytes of it");
    let (outcomes, rss1, vm1) = blocking(move || {
        let mut socks: Vec<TcpStream> = (0..50).map(|_| connect(addr)).collect();
        for s in &mut socks {
            send(s, &get_with_len_prefix(0x7FFF_FFF0, b"abc"));
        }
        let deadline = Instant::now() + PROMPT;
        let outcomes: Vec<Outcome> = socks
            .iter_mut()
            .map(|s| {
                let left = deadline.saturating_duration_since(Instant::now());
                read_until_closed(s, left.max(Duration::from_millis(200)))
            })
            .collect();
        // Measured while the sockets are still open, so any buffer the server made is alive.
        let (rss1, vm1) = (proc_status_kib("VmRSS:"), proc_status_kib("VmSize:"));
        (outcomes, rss1, vm1)
    })
    .await;
    eprintln!("VmRSS {rss0} -> {rss1} KiB, VmSize {vm0} -> {vm1} KiB");
    assert!(rss1 < rss0 + 64 * 1024, "RSS grew {rss0} -> {rss1} KiB");
    // A buffer for a claimed length is zeroed lazily and would not show in RSS; 50 of 2 GiB
    // would show in the address space.
    assert!(
        vm1 < vm0 + 4 * 1024 * 1024,
        "VmSize grew {vm0} -> {vm1} KiB"
    );
    assert_healthy(&cluster, panics, "huge length").await;
    let open = outcomes.iter().filter(|o| o.end == End::StillOpen).count();
    for out in &outcomes {
        out.assert_refused(&format!("huge length prefix ({open} of 50 left open)"));
    }
    wait_no_connections(&cluster, "huge length").await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_utf8_key_is_refused() {
    let (_g, mut cluster, panics) = start(&["--read-timeout-ms=30000"]).await;
    phase("a get of the key bytes ff fe, then a valid status call on the same connection");
    let bytes = [get_call(&[0xff, 0xfe]), status_call()].concat();
    let out = send_and_read(cluster.client_addrs[&1], bytes, PROMPT).await;
    assert_healthy(&cluster, panics, "invalid UTF-8").await;
    // Either closed (at most after an Exception), or an Exception then a correct reply to the
    // status call: never a hang, never a normal reply to the bad get.
    let answered = out.first_message_type() == Some(EXCEPTION)
        && out.bytes.windows(4).any(|w| w == [0x80, 0x01, 0x00, REPLY]);
    if !answered {
        out.assert_refused("invalid UTF-8 key");
    }
    wait_no_connections(&cluster, "invalid UTF-8").await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_thrift_bytes_close_the_connection() {
    let (_g, mut cluster, panics) = start(&["--read-timeout-ms=30000"]).await;
    let http = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    assert_refused(&cluster, panics, "an HTTP request", http).await;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15; // xorshift64, fixed seed
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    assert_refused(&cluster, panics, "4 KiB of pseudo-random bytes", noise).await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_key_and_value_get_invalid_request_and_never_reach_raft() {
    let flags = ["--max-key-bytes=64", "--max-value-bytes=1024"];
    let (_g, mut cluster, panics) = start(&flags).await;
    let addr = cluster.client_addrs[&1].to_string();
    let raft = cluster.node(1).raft().clone();
    // What `cluster.node(1).status()` reports, readable off the runtime.
    let last_log_index = move || raftcache::api::node_status(1, &raft).last_log_index;
    blocking(move || {
        let mut c = CacheClient::connect(&addr, Duration::from_secs(30)).expect("connect");
        phase("a 64-byte key and a 1024-byte value (exactly the limits) are accepted");
        assert!(c
            .put(&"k".repeat(64), &"v".repeat(1024))
            .expect("put at the limits"));
        let index = last_log_index();

        phase("a 65-byte key and a 1025-byte value are refused with InvalidRequest");
        let e = c
            .put(&"k".repeat(65), "v")
            .expect_err("put of a 65-byte key");
        let m = invalid_request(&e);
        assert!(m.contains("--max-key-bytes") && m.contains("64"), "{m}");
        let e = c
            .put("k", &"v".repeat(1025))
            .expect_err("put of a 1025-byte value");
        let m = invalid_request(&e);
        assert!(m.contains("--max-value-bytes") && m.contains("1024"), "{m}");
        let e = c
            .get(&"k".repeat(65), false)
            .expect_err("get of a 65-byte key");
        assert!(invalid_request(&e).contains("--max-key-bytes"));
        assert_eq!(
            last_log_index(),
            index,
            "a refused put reached the Raft log"
        );

        phase("the same connection keeps working");
        assert!(c.put("k", "fine").expect("a valid put on the same client"));
        assert_eq!(c.get("k", true).expect("get").as_deref(), Some("fine"));
        assert!(last_log_index() > index, "the valid put reached Raft");
    })
    .await;
    assert_healthy(&cluster, panics, "oversized key and value").await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_cap_refuses_the_extra_connection_and_frees_a_slot_on_close() {
    let (_g, mut cluster, panics) = start(&["--max-connections=8"]).await;
    let addr = cluster.client_addrs[&1].to_string();

    phase("8 connections, each served one request, held open");
    let a = addr.clone();
    let mut held = blocking(move || {
        let open = |_| {
            let mut c = CacheClient::connect(&a, Duration::from_secs(30)).expect("connect");
            c.status().expect("a connection under the cap is served");
            c
        };
        (0..8).map(open).collect::<Vec<_>>()
    })
    .await;
    assert_eq!(cluster.node(1).open_client_connections(), 8);

    phase("a 9th connection is closed without an answer");
    let out = send_and_read(cluster.client_addrs[&1], status_call(), PROMPT).await;
    assert!(
        out.bytes.is_empty(),
        "the 9th connection got an answer: {out:?}"
    );
    assert_ne!(out.end, End::StillOpen, "the 9th connection was left open");
    assert_eq!(cluster.node(1).open_client_connections(), 8);

    phase("after one of the 8 closes, a new connection is served");
    held.pop();
    let served = blocking(move || {
        let what = "a connection served after one closed";
        let mut c = wait_until(WAIT, what, || {
            let mut c = CacheClient::connect(&addr, Duration::from_secs(5))?;
            c.status().map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(c)
        });
        assert!(c.put("cap", "freed").expect("put on the freed slot"));
        c.get("cap", false).expect("get on the freed slot")
    })
    .await;
    assert_eq!(served.as_deref(), Some("freed"));
    drop(held);
    wait_no_connections(&cluster, "connection cap").await;
    assert_healthy(&cluster, panics, "connection cap").await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_idle_connections_do_not_block_a_new_client() {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX); // "unlimited"
    assert!(
        soft >= 4096,
        "this test needs 1000 client + 1000 server sockets in one process, but the open-file \
         limit is {soft}: run it after `ulimit -n 4096` (raising it from the test needs libc as \
         a dev-dependency)"
    );
    let (_g, mut cluster, panics) = start(&[]).await;
    let addr = cluster.client_addrs[&1];

    phase("open 1000 idle connections");
    let idle = blocking(move || (0..1000).map(|_| connect(addr)).collect::<Vec<_>>()).await;
    let open = || cluster.node(1).open_client_connections();
    let what = "the server holds 1000 connections";
    wait_until_async(WAIT, what, async || open() >= 1000).await;

    phase("a new client is served while they stay open");
    assert_healthy(&cluster, panics, "1000 idle connections").await;
    assert!(open() >= 1000, "idle connections were dropped: {}", open());
    drop(idle);
    wait_no_connections(&cluster, "1000 idle connections").await;
    cluster.stop(1).await;
}

/// Connects and sends `partial`; the connection must still be open 100 ms later (so it is not
/// an immediate error) and closed by the server within 10 s (the 500 ms read timeout).
async fn assert_stall_closed(
    cluster: &InProcessCluster,
    panics: usize,
    what: &str,
    partial: &[u8],
) {
    phase(what);
    let (addr, partial) = (cluster.client_addrs[&1], partial.to_vec());
    let (early, late) = blocking(move || {
        let mut s = connect(addr);
        send(&mut s, &partial);
        let early = read_until_closed(&mut s, Duration::from_millis(100));
        (early, read_until_closed(&mut s, Duration::from_secs(10)))
    })
    .await;
    assert_eq!(
        early.end,
        End::StillOpen,
        "{what}: closed at once: {early:?}"
    );
    assert_healthy(cluster, panics, what).await;
    late.assert_refused(what);
    wait_no_connections(cluster, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_stalling_in_the_message_header_is_closed_after_the_read_timeout() {
    let (_g, mut cluster, panics) = start(&["--read-timeout-ms=500"]).await;
    let call = put_call(b"stall", &[b'x'; 1000]);
    let what = "send the first 6 bytes of a put call and stall";
    assert_stall_closed(&cluster, panics, what, &call[..6]).await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_stalling_in_the_message_body_is_closed_after_the_read_timeout() {
    let (_g, mut cluster, panics) = start(&["--read-timeout-ms=500"]).await;
    let call = put_call(b"stall", &[b'x'; 1000]);
    let what = "send half of a put call with a 1000-byte value and stall";
    assert_stall_closed(&cluster, panics, what, &call[..call.len() / 2]).await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connection_outlives_the_read_timeout_and_closes_after_the_idle_timeout() {
    let flags = ["--idle-timeout-ms=1000", "--read-timeout-ms=200"];
    let (_g, mut cluster, panics) = start(&flags).await;
    let addr = cluster.client_addrs[&1];
    phase("connect, send nothing for 500 ms, then call status");
    let out = blocking(move || {
        let mut s = connect(addr);
        std::thread::sleep(Duration::from_millis(500));
        send(&mut s, &status_call());
        read_until_closed(&mut s, Duration::from_secs(10))
    })
    .await;
    assert_eq!(
        out.first_message_type(),
        Some(REPLY),
        "a call 500 ms into an idle connection (read timeout 200 ms) was not answered: {out:?}"
    );
    phase("then the connection is closed after the idle timeout");
    assert_ne!(
        out.end,
        End::StillOpen,
        "idle connection not closed in 10 s"
    );
    assert!(
        out.after >= Duration::from_millis(800),
        "closed {:?} after the call: sooner than the 1 s idle timeout",
        out.after
    );
    assert_healthy(&cluster, panics, "idle connection").await;
    wait_no_connections(&cluster, "idle connection").await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_method_gets_an_exception_and_the_connection_stays_usable() {
    let (_g, mut cluster, panics) = start(&["--read-timeout-ms=30000"]).await;
    phase("a call to `drop_everything` with a string argument, then a status call, pipelined");
    let mut unknown = call_header("drop_everything");
    field(&mut unknown, T_STRING, 1);
    string(&mut unknown, b"all of it");
    unknown.push(0);
    let bytes = [unknown, status_call()].concat();
    let out = send_and_read(cluster.client_addrs[&1], bytes, PROMPT).await;
    assert_healthy(&cluster, panics, "unknown method").await;
    assert_eq!(
        out.first_message_type(),
        Some(EXCEPTION),
        "the unknown method is answered with an exception"
    );
    let text = String::from_utf8_lossy(&out.bytes);
    assert!(text.contains("drop_everything"), "{text:?}");
    assert!(
        out.bytes.windows(4).any(|w| w == [0x80, 0x01, 0x00, REPLY]),
        "the status call after it got a reply: {text:?}"
    );
    cluster.stop(1).await;
}

// ---- framed transport and compact protocol -------------------------------------------------

/// A compact-protocol call header (seqid 1) of `method`.
fn compact_call(method: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x21, 0x01, method.len() as u8];
    b.extend(method.as_bytes());
    b
}

/// `bytes` behind a 4-byte frame length.
fn framed(bytes: &[u8]) -> Vec<u8> {
    [(bytes.len() as i32).to_be_bytes().as_slice(), bytes].concat()
}

/// The message types of the framed compact answers in `bytes` (0x41 reply, 0x61 exception).
fn framed_compact_answers(bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 6 {
        let len = i32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        assert_eq!(rest[4], 0x82, "a compact answer: {rest:?}");
        kinds.push(rest[5]);
        rest = &rest[(4 + len).min(rest.len())..];
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_frame_lengths_close_the_connection() {
    let (_g, mut cluster, panics) = start(&["--read-timeout-ms=1000"]).await;
    let status = compact_call("status");
    for (what, len) in [("negative", -1i32), ("zero", 0), ("huge", 0x7FFF_FFF0)] {
        phase(&format!("a frame length that is {what}"));
        let bad = [len.to_be_bytes().as_slice(), &status, &[0]].concat();
        let out = send_and_read(cluster.client_addrs[&1], bad, PROMPT).await;
        assert!(out.bytes.is_empty(), "{what}: no answer: {out:?}");
        assert_ne!(out.end, End::StillOpen, "{what}: closed");
        assert_healthy(&cluster, panics, what).await;
    }
    phase("a frame length larger than the bytes that follow, then a stall");
    let short = [100i32.to_be_bytes().as_slice(), &status, &[0]].concat();
    let out = send_and_read(cluster.client_addrs[&1], short, WAIT).await;
    assert!(out.bytes.is_empty() && out.end != End::StillOpen, "{out:?}");
    assert_healthy(&cluster, panics, "short frame").await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_compact_strings_are_refused_without_a_normal_reply() {
    let (_g, mut cluster, panics) = start(&["--read-timeout-ms=1000"]).await;
    phase("unframed compact get whose key claims 2^31 bytes (varint)");
    let mut huge = compact_call("get");
    huge.extend([0x18, 0x80, 0x80, 0x80, 0x80, 0x08, b'a']);
    let out = send_and_read(cluster.client_addrs[&1], huge, PROMPT).await;
    assert_ne!(out.end, End::StillOpen, "{out:?}");
    assert!(
        out.bytes.len() < 2 || out.bytes[1] != 0x41,
        "no normal reply: {out:?}"
    );
    assert_healthy(&cluster, panics, "huge compact string").await;

    phase("framed compact get whose key claims more bytes than its frame holds");
    let mut inside = compact_call("get");
    inside.extend([0x18, 100, b'a', b'b', 0]);
    let out = send_and_read(cluster.client_addrs[&1], framed(&inside), PROMPT).await;
    let kinds = framed_compact_answers(&out.bytes);
    assert!(!kinds.contains(&0x41), "no normal reply: {out:?}");
    assert_healthy(&cluster, panics, "short compact string").await;
    cluster.stop(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_method_over_framed_compact_gets_an_exception_and_the_connection_stays_usable() {
    let (_g, mut cluster, panics) = start(&["--read-timeout-ms=30000"]).await;
    phase("framed compact: drop_everything(\"all of it\"), then status, pipelined");
    let mut unknown = compact_call("drop_everything");
    unknown.extend([0x18, 9]);
    unknown.extend(b"all of it");
    unknown.push(0);
    let mut status = compact_call("status");
    status.push(0);
    let bytes = [framed(&unknown), framed(&status)].concat();
    let out = send_and_read(cluster.client_addrs[&1], bytes, PROMPT).await;
    assert_eq!(
        framed_compact_answers(&out.bytes),
        [0x61, 0x41],
        "an exception, then the status reply: {out:?}"
    );
    assert!(String::from_utf8_lossy(&out.bytes).contains("drop_everything"));
    assert_healthy(&cluster, panics, "unknown method over framed compact").await;
    cluster.stop(1).await;
}

/// raftcache declares no oneway method, and a REPLY or EXCEPTION is never a request: a `put`
/// sent with any of those message types is answered with an exception, not executed, and the
/// connection is closed (a oneway client reads no answers, so nothing after could be matched).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_that_are_not_calls_are_refused_unexecuted() {
    const ONEWAY: u8 = 4;
    let (_g, mut cluster, panics) = start(&[]).await;
    for (kind, name) in [
        (ONEWAY, "ONEWAY"),
        (REPLY, "REPLY"),
        (EXCEPTION, "EXCEPTION"),
    ] {
        phase(&format!("a put of `typed` sent as a {name} message"));
        let mut message = put_call(b"typed", name.as_bytes());
        message[3] = kind;
        let out = send_and_read(cluster.client_addrs[&1], message, PROMPT).await;
        out.assert_refused(name);
        let text = String::from_utf8_lossy(&out.bytes);
        assert!(text.contains("only CALL messages"), "{name}: {text:?}");
        let value = cluster.client(1).get("typed", true).await.expect("get");
        assert_eq!(value, None, "a {name} message was executed");
    }
    assert_healthy(&cluster, panics, "non-call messages").await;
    cluster.stop(1).await;
}
