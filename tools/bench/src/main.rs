//! raftcache-bench: a closed-loop load generator. Each client holds its own connection (spread
//! over `--addrs`), sends one request, waits for the answer, and sends the next, until
//! `--seconds` have passed or `--max-ops` requests were made. Prints throughput, latency
//! percentiles, and (with `--pids`) the CPU time the server processes used per operation.
//! `--op put-many` writes `--batch` entries per request (one `put_many` call): with
//! `--sequential` it loads a large key space quickly, and prints the entries written too.
//!
//! By default the clients are tasks on one thread (as redis-benchmark and wrk run theirs), so
//! the generator takes little of the CPU it shares with the nodes; `--threads` gives each client
//! an OS thread and the blocking Rust client instead.

mod peers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use raftcache::client::CacheClient;
use raftcache::gen::cache::{
    CacheEntry, CacheServiceSyncClient, Consistency, ReadOptions, TCacheServiceSyncClient,
};
use raftcache::server::frame::{self, Measured};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(about = "Closed-loop load generator for raftcache")]
struct Args {
    /// Client addresses of the nodes; client i connects to addrs[i % n].
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9090")]
    addrs: Vec<String>,
    /// Speak TLS to raftcache, trusting node certificates signed by this CA (PEM).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Stop after this many operations in total, whichever comes first (with `put-many`:
    /// entries, not calls).
    #[arg(long, default_value_t = u64::MAX)]
    max_ops: u64,
    #[arg(long, value_enum, default_value = "put")]
    op: Op,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Write each key once, in order (client i takes its own range), instead of random keys:
    /// with `--max-ops N`, fills exactly N distinct keys.
    #[arg(long)]
    sequential: bool,
    /// Entries per `put_many` call with `--op put-many` (the server takes at most its
    /// --max-batch-items, 1000 by default, and --max-batch-bytes of keys and values).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Send a call that failed again, up to this many times, before going on to the next keys
    /// (raftcache only). Each attempt counts as a call (in ops or errors); with `--sequential`
    /// it keeps a leader change from leaving keys unwritten.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Server process ids whose CPU time (user + system) to report per operation.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// One OS thread per client with the blocking client, instead of tasks on one thread
    /// (raftcache only).
    #[arg(long)]
    threads: bool,
    /// The store to drive: raftcache, or Redis or etcd with the same clients, to compare.
    #[arg(long, value_enum, default_value = "raftcache")]
    backend: Backend,
}

/// The store the clients talk to.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Backend {
    /// raftcache's Thrift API.
    Raftcache,
    /// Redis: SET and GET (`lget` is a GET too: Redis has no other read).
    Redis,
    /// etcd v3 over gRPC: Put, and Range (serializable for `get`, linearizable for `lget`).
    Etcd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Op {
    Put,
    /// `put_many` of `--batch` entries per call: ops and latencies count calls, `items` the
    /// entries written (raftcache only).
    PutMany,
    Get,
    /// Linearizable get.
    Lget,
}

impl Args {
    /// Keys per call: `--batch` for `put-many`, else one.
    fn per_call(&self) -> u64 {
        if self.op == Op::PutMany {
            self.batch as u64
        } else {
            1
        }
    }
}

/// CPU time of a process in clock ticks (utime + stime from /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// The keys one client uses, in order.
struct Keys {
    index: u64,
    budget: u64,
    n: u64,
    done: u64,
}

impl Keys {
    fn new(index: usize, budget: u64) -> Self {
        Keys {
            index: index as u64,
            budget,
            n: index as u64 * 7919,
            done: 0,
        }
    }

    fn next(&mut self, args: &Args) -> String {
        self.n = self
            .n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.done += 1;
        if args.sequential {
            format!("key-{}", self.index * self.budget + self.done - 1)
        } else {
            format!("key-{}", (self.n >> 33) % args.keys)
        }
    }

    /// The keys of the next call into `batch`: `args.per_call()` of them, fewer at the end of
    /// the budget.
    fn next_call(&mut self, args: &Args, batch: &mut Vec<String>) {
        batch.clear();
        while (batch.len() as u64) < args.per_call() && self.done < self.budget {
            batch.push(self.next(args));
        }
    }
}

/// Runs `call` on a generated client that writes its request to `out` and reads its answer
/// from `answer`: called once with no answer to encode a request, and once with the answer
/// to decode it. Returns whether the call succeeded.
fn with_client(
    out: &mut Vec<u8>,
    answer: &[u8],
    call: impl FnOnce(&mut dyn TCacheServiceSyncClient) -> bool,
) -> bool {
    let input = TBinaryInputProtocol::new(answer, true);
    let output = TBinaryOutputProtocol::new(out, true);
    call(&mut CacheServiceSyncClient::new(input, output))
}

/// The call of `op` on `keys` (one key, or a `put-many` batch).
fn call<'a>(
    op: Op,
    keys: &'a [String],
    value: &'a str,
) -> impl Fn(&mut dyn TCacheServiceSyncClient) -> bool + 'a {
    move |c: &mut dyn TCacheServiceSyncClient| match op {
        Op::Put => c
            .put(CacheEntry::new(keys[0].clone(), value.to_string(), None))
            .is_ok(),
        Op::PutMany => c
            .put_many(
                keys.iter()
                    .map(|key| CacheEntry::new(key.clone(), value.to_string(), None))
                    .collect(),
            )
            .is_ok_and(|written| written.count as usize == keys.len()),
        Op::Get => c.get(keys[0].clone()).is_ok(),
        Op::Lget => c
            .get_with(
                keys[0].clone(),
                ReadOptions::new(Some(Consistency::LINEARIZABLE), None),
            )
            .is_ok(),
    }
}

/// A request of `op` on `keys` in `backend`'s wire format, into `out`.
fn encode(backend: Backend, op: Op, keys: &[String], value: &str, out: &mut Vec<u8>) {
    match backend {
        Backend::Raftcache => {
            with_client(out, &[], call(op, keys, value));
        }
        Backend::Redis => match op {
            Op::Put => peers::resp_command(out, &[b"SET", keys[0].as_bytes(), value.as_bytes()]),
            Op::Get | Op::Lget => peers::resp_command(out, &[b"GET", keys[0].as_bytes()]),
            Op::PutMany => unreachable!("put-many drives raftcache only"),
        },
        Backend::Etcd => unreachable!("etcd speaks gRPC, not a byte stream"),
    }
}

/// The length of the whole answer at the start of `answer` and whether it succeeded, once it
/// is all there.
fn measure(
    backend: Backend,
    op: Op,
    keys: &[String],
    value: &str,
    answer: &[u8],
) -> Result<Option<(usize, bool)>, String> {
    match backend {
        Backend::Raftcache => match frame::measure(answer, usize::MAX) {
            Measured::Complete(len) => Ok(Some((
                len,
                with_client(&mut Vec::new(), &answer[..len], call(op, keys, value)),
            ))),
            Measured::Invalid(reason) => Err(reason.to_string()),
            Measured::Incomplete(_) => Ok(None),
        },
        Backend::Redis => match peers::resp_measure(answer) {
            peers::RespReply::Complete { len, ok } => Ok(Some((len, ok))),
            peers::RespReply::Invalid(reason) => Err(reason),
            peers::RespReply::Incomplete => Ok(None),
        },
        Backend::Etcd => unreachable!("etcd speaks gRPC, not a byte stream"),
    }
}

/// A client's connection: a socket, or TLS over one.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// One client as a task: its own connection, one request at a time.
async fn run_task(
    args: Arc<Args>,
    index: usize,
    stop: Arc<AtomicBool>,
    budget: u64,
) -> ClientResult {
    if args.backend == Backend::Etcd {
        return run_etcd_task(args, index, stop, budget).await;
    }
    let addr = &args.addrs[index % args.addrs.len()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.set_nodelay(true).expect("nodelay");
    let mut stream: Box<dyn Io> = match &args.tls_ca {
        None => Box::new(tcp),
        Some(ca) => {
            let files = raftcache::tls::ClientFiles {
                ca: ca.clone(),
                ..Default::default()
            };
            let config = raftcache::tls::ClientTls::build(&files)
                .unwrap_or_else(|e| panic!("--tls-ca: {e}"));
            let name = raftcache::tls::server_name(addr, None).unwrap_or_else(|e| panic!("{e}"));
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
            Box::new(tls)
        }
    };
    let value = "x".repeat(args.value_bytes);
    let mut tally = Tally::default();
    let mut keys = Keys::new(index, budget);
    let (mut batch, mut request, mut answer) = (Vec::new(), Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) && keys.done < budget {
        keys.next_call(&args, &mut batch);
        request.clear();
        encode(args.backend, args.op, &batch, &value, &mut request);
        for _ in 0..=args.retries {
            let started = Instant::now();
            stream.write_all(&request).await.expect("send");
            stream.flush().await.expect("send");
            answer.clear();
            let ok = loop {
                match measure(args.backend, args.op, &batch, &value, &answer) {
                    Ok(Some((_, ok))) => break ok,
                    Ok(None) => {}
                    Err(reason) => panic!("bad answer from {addr}: {reason}"),
                }
                if stream.read_buf(&mut answer).await.expect("receive") == 0 {
                    panic!("{addr} closed the connection");
                }
            };
            tally.record(ok, started, batch.len());
            if ok {
                break;
            }
        }
    }
    tally.done()
}

/// One etcd client as a task: its own HTTP/2 connection, one gRPC call at a time. `get` is a
/// serializable read (the member's own state), `lget` a linearizable one.
async fn run_etcd_task(
    args: Arc<Args>,
    index: usize,
    stop: Arc<AtomicBool>,
    budget: u64,
) -> ClientResult {
    let addr = &args.addrs[index % args.addrs.len()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.set_nodelay(true).expect("nodelay");
    let (mut send, connection) = h2::client::handshake(tcp)
        .await
        .unwrap_or_else(|e| panic!("HTTP/2 handshake with {addr}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let value = "x".repeat(args.value_bytes);
    let mut tally = Tally::default();
    let mut keys = Keys::new(index, budget);
    while !stop.load(Ordering::Relaxed) && keys.done < budget {
        let key = keys.next(&args);
        let (path, frame) = match args.op {
            Op::Put => (
                "/etcdserverpb.KV/Put",
                peers::etcd_put(key.as_bytes(), value.as_bytes()),
            ),
            Op::Get => (
                "/etcdserverpb.KV/Range",
                peers::etcd_range(key.as_bytes(), true),
            ),
            Op::Lget => (
                "/etcdserverpb.KV/Range",
                peers::etcd_range(key.as_bytes(), false),
            ),
            Op::PutMany => unreachable!("put-many drives raftcache only"),
        };
        let started = Instant::now();
        let ok = peers::grpc_call(&mut send, addr, path, frame).await;
        tally.record(ok, started, 1);
    }
    tally.done()
}

fn run_client(args: Arc<Args>, index: usize, stop: Arc<AtomicBool>, budget: u64) -> ClientResult {
    let addr = &args.addrs[index % args.addrs.len()];
    let mut client = CacheClient::connect(addr, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let value = "x".repeat(args.value_bytes);
    let mut tally = Tally::default();
    let mut keys = Keys::new(index, budget);
    let mut batch = Vec::new();
    while !stop.load(Ordering::Relaxed) && keys.done < budget {
        keys.next_call(&args, &mut batch);
        let key = &batch[0];
        for _ in 0..=args.retries {
            let started = Instant::now();
            let ok = match args.op {
                Op::Put => client.put(key, &value).is_ok(),
                Op::PutMany => call(args.op, &batch, &value)(client.service()),
                Op::Get => client.get(key, false).is_ok(),
                Op::Lget => client.get(key, true).is_ok(),
            };
            tally.record(ok, started, batch.len());
            if ok {
                break;
            }
        }
    }
    tally.done()
}

/// What `Tally::done` returns.
type ClientResult = (Vec<u32>, u64, u64);

/// One client's answered calls' latencies, its failed calls, and the keys its answered calls
/// carried.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    items: u64,
}

impl Tally {
    /// A call of `items` keys sent at `started` that succeeded, or not.
    fn record(&mut self, ok: bool, started: Instant, items: usize) {
        if ok {
            let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
            self.latencies_us.push(us);
            self.items += items as u64;
        } else {
            self.errors += 1;
        }
    }

    fn done(self) -> ClientResult {
        (self.latencies_us, self.errors, self.items)
    }
}

fn run_threads(
    args: &Arc<Args>,
    stop: &Arc<AtomicBool>,
    budget: u64,
    deadline: Instant,
) -> Vec<ClientResult> {
    let threads: Vec<_> = (0..args.clients)
        .map(|i| {
            let (args, stop) = (args.clone(), stop.clone());
            std::thread::spawn(move || run_client(args, i, stop, budget))
        })
        .collect();
    while Instant::now() < deadline && !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect()
}

fn run_tasks(
    args: &Arc<Args>,
    stop: &Arc<AtomicBool>,
    budget: u64,
    deadline: Instant,
) -> Vec<ClientResult> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tasks: Vec<_> = (0..args.clients)
            .map(|i| tokio::spawn(run_task(args.clone(), i, stop.clone(), budget)))
            .collect();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            stopper.store(true, Ordering::Relaxed);
        });
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("client task"));
        }
        results
    })
}

fn main() {
    let args = Arc::new(Args::parse());
    if args.threads && args.backend != Backend::Raftcache {
        eprintln!("raftcache-bench: --threads drives raftcache only");
        std::process::exit(2);
    }
    if args.op == Op::PutMany && args.backend != Backend::Raftcache {
        eprintln!("raftcache-bench: --op put-many drives raftcache only");
        std::process::exit(2);
    }
    if args.retries > 0 && args.backend != Backend::Raftcache {
        eprintln!("raftcache-bench: --retries drives raftcache only");
        std::process::exit(2);
    }
    if args.batch == 0 {
        eprintln!("raftcache-bench: --batch must be at least 1");
        std::process::exit(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let budget = args.max_ops / args.clients as u64;
    let cpu_before: u64 = args.pids.iter().map(|p| cpu_ticks(*p)).sum();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let results = if args.threads {
        run_threads(&args, &stop, budget, deadline)
    } else {
        run_tasks(&args, &stop, budget, deadline)
    };
    let mut all = Vec::new();
    let (mut errors, mut items) = (0, 0);
    for (lat, err, written) in results {
        all.extend(lat);
        errors += err;
        items += written;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_ticks_used = args
        .pids
        .iter()
        .map(|p| cpu_ticks(*p))
        .sum::<u64>()
        .saturating_sub(cpu_before);
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let ops = all.len() as f64;
    print!(
        "backend={:?} op={:?} clients={} ops={} errors={} seconds={:.2} ops_per_sec={:.0} p50_us={} p99_us={} max_us={}",
        args.backend, args.op, args.clients, all.len(), errors, elapsed, ops / elapsed, pct(0.50), pct(0.99), all.last().copied().unwrap_or(0)
    );
    if args.op == Op::PutMany {
        print!(" items={items} items_per_sec={:.0}", items as f64 / elapsed);
    }
    if !args.pids.is_empty() && ops > 0.0 {
        // Clock ticks are 1/100 s on Linux.
        print!(
            " server_cpu_us_per_op={:.1}",
            cpu_ticks_used as f64 * 10_000.0 / ops
        );
    }
    println!();
}
