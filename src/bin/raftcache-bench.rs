//! raftcache-bench: a closed-loop load generator. Each client thread holds its own connection
//! (spread over `--addrs`), sends one request, waits for the answer, and sends the next, until
//! `--seconds` have passed or `--max-ops` requests were made. Prints throughput, latency
//! percentiles, and (with `--pids`) the CPU time the server processes used per operation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use raftcache::client::CacheClient;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop load generator for raftcache")]
struct Args {
    /// Client addresses of the nodes; client i connects to addrs[i % n].
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9090")]
    addrs: Vec<String>,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Stop after this many operations in total, whichever comes first.
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
    /// Server process ids whose CPU time (user + system) to report per operation.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Op {
    Put,
    Get,
    /// Linearizable get.
    Lget,
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

fn run_client(
    args: Arc<Args>,
    index: usize,
    stop: Arc<AtomicBool>,
    budget: u64,
) -> (Vec<u32>, u64) {
    let addr = &args.addrs[index % args.addrs.len()];
    let mut client = CacheClient::connect(addr, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let value = "x".repeat(args.value_bytes);
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    let mut n: u64 = index as u64 * 7919;
    let mut done: u64 = 0;
    while !stop.load(Ordering::Relaxed) && done < budget {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let key = if args.sequential {
            format!("key-{}", index as u64 * budget + done)
        } else {
            format!("key-{}", (n >> 33) % args.keys)
        };
        done += 1;
        let started = Instant::now();
        let ok = match args.op {
            Op::Put => client.put(&key, &value).is_ok(),
            Op::Get => client.get(&key, false).is_ok(),
            Op::Lget => client.get(&key, true).is_ok(),
        };
        if ok {
            latencies_us.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        } else {
            errors += 1;
        }
    }
    (latencies_us, errors)
}

fn main() {
    let args = Arc::new(Args::parse());
    let stop = Arc::new(AtomicBool::new(false));
    let budget = args.max_ops / args.clients as u64;
    let cpu_before: u64 = args.pids.iter().map(|p| cpu_ticks(*p)).sum();
    let started = Instant::now();
    let threads: Vec<_> = (0..args.clients)
        .map(|i| {
            let (args, stop) = (args.clone(), stop.clone());
            std::thread::spawn(move || run_client(args, i, stop, budget))
        })
        .collect();
    let deadline = started + Duration::from_secs(args.seconds);
    while Instant::now() < deadline && !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (lat, err) = t.join().expect("client thread");
        all.extend(lat);
        errors += err;
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
        "op={:?} clients={} ops={} errors={} seconds={:.2} ops_per_sec={:.0} p50_us={} p99_us={} max_us={}",
        args.op, args.clients, all.len(), errors, elapsed, ops / elapsed, pct(0.50), pct(0.99), all.last().copied().unwrap_or(0)
    );
    if !args.pids.is_empty() && ops > 0.0 {
        // Clock ticks are 1/100 s on Linux.
        print!(
            " server_cpu_us_per_op={:.1}",
            cpu_ticks_used as f64 * 10_000.0 / ops
        );
    }
    println!();
}
