//! `raftcache-faults`: the fault-injection suite. Each run starts a fresh compose cluster of
//! the raftcache image (3 or 5 nodes), runs clients that record every operation, injects the
//! faults of a seeded schedule (partitions, kills, pauses, restarts, membership changes), heals
//! everything, kills and restarts every node, and checks that the history is linearizable,
//! that no acknowledged write is lost and that every node holds the same contents.
//! `docs/testing.md` describes the faults, the checks and how to replay a seed.

mod run;
mod schedule;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use raftcache_testkit::compose::{missing_prerequisite, DEFAULT_NODE_LOG};
use raftcache_testkit::history::ClientLimits;
use raftcache_testkit::linearizability::{self, Limits, Verdict};
use raftcache_testkit::rng::clock_seed;

use run::{RunConfig, RunReport};
use schedule::FaultKind;

#[derive(Parser, Debug)]
#[command(
    name = "raftcache-faults",
    about = "Fault injection on a container cluster of raftcache, with a linearizability check",
    long_about = "Runs raftcache in containers (docker-compose, the image of cluster/build-image.sh), \
injects faults from a seeded random schedule while clients record every operation, and checks \
the history for linearizability, lost acknowledged writes and diverging replicas. Run N uses seed \
SEED+N; a failed run prints the command that replays it and keeps its history, schedule and node \
logs under --out-dir. Exit status: 0 every run passed, 1 a run failed, 2 it could not run."
)]
struct Args {
    /// Runs to make, one fresh cluster each.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Seconds of client traffic (and faults) per run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Concurrent clients per run.
    #[arg(long, default_value_t = 5)]
    clients: u64,
    /// Seed of the first run (default: from the clock). The same seed replays the same schedule.
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes per run (3 or 5). Default: 3 for an even seed, 5 for an odd one.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["3", "5"]))]
    nodes: Option<String>,
    /// The kind of every run's first fault (one-way, partition-minority, kill-leader, ...), or
    /// several separated by commas for the first faults in that order, each injected even if
    /// it runs past --seconds (the clients then run until it is healed); the rest of the
    /// schedule is drawn from the seed as usual.
    #[arg(long, value_name = "KIND[,KIND...]")]
    first_fault: Option<String>,
    /// Keys the clients share (the contended registers).
    #[arg(long, default_value_t = 5)]
    hot_keys: u64,
    /// Families of 3 keys that the clients write with put_many and read with get_many (and
    /// single-key calls); the checker judges each family as one model, so a torn read fails.
    #[arg(long, default_value_t = 2)]
    families: u64,
    /// Spare nodes per run, each used by one membership change.
    #[arg(long, default_value_t = 2)]
    spares: u64,
    /// Most operations one client makes in a run.
    #[arg(long, default_value_t = 100_000)]
    max_ops_per_client: u64,
    /// Pause of a client between two operations, in milliseconds.
    #[arg(long, default_value_t = 2)]
    think_ms: u64,
    /// Search steps the linearizability checker may spend on one key.
    #[arg(long, default_value_t = 1_000_000)]
    checker_max_steps: u64,
    /// The raftcache image to run (built by cluster/build-image.sh).
    #[arg(long, env = "RAFTCACHE_IMAGE", default_value = "raftcache:local")]
    image: String,
    /// The log filter (RUST_LOG) of every node, e.g. "info,openraft=debug" to see each
    /// election in a replay's node logs.
    #[arg(long, value_name = "FILTER", default_value = DEFAULT_NODE_LOG)]
    node_log: String,
    /// Where failed runs keep their files.
    #[arg(long, default_value = "target/faults")]
    out_dir: PathBuf,
    /// Keep the files of every run, passed or failed (to study the timing of a fault in the
    /// node logs).
    #[arg(long)]
    keep_all: bool,
    /// Check a saved history (JSON lines) instead of running anything.
    #[arg(long, value_name = "FILE")]
    check_history: Option<PathBuf>,
}

/// Set by the first SIGINT or SIGTERM: the run under way ends as usual (its cluster taken down,
/// its one-way cuts and power-cut disks undone), and no other starts. A second signal exits at
/// once, leaving whatever the run had set up.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if STOPPING.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if let Some(path) = &args.check_history {
        return check_saved(path, args.checker_max_steps);
    }
    if let Some(reason) = missing_prerequisite(&args.image) {
        eprintln!("raftcache-faults: cannot run: {reason} (or name another with --image)");
        return ExitCode::from(2);
    }
    if args.runs == 0 || args.seconds < 10 || args.clients == 0 || args.hot_keys == 0 {
        eprintln!("raftcache-faults: --runs, --clients and --hot-keys must be at least 1 and --seconds at least 10");
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(clock_seed);
    let first: Result<Vec<FaultKind>, String> = args
        .first_fault
        .as_deref()
        .map(|kinds| kinds.split(',').map(str::parse).collect())
        .unwrap_or(Ok(Vec::new()));
    let first = match first {
        Ok(first) => first,
        Err(e) => {
            eprintln!("raftcache-faults: --first-fault: {e}");
            return ExitCode::from(2);
        }
    };
    let config = RunConfig {
        seconds: args.seconds,
        clients: args.clients,
        nodes: args.nodes.as_deref().map(|n| n.parse().expect("3 or 5")),
        first,
        spares: args.spares,
        image: args.image.clone(),
        node_log: args.node_log.clone(),
        out_dir: args.out_dir.clone(),
        keep_all: args.keep_all,
        limits: ClientLimits {
            hot_keys: args.hot_keys,
            families: args.families,
            max_ops: args.max_ops_per_client,
            think: Duration::from_millis(args.think_ms),
        },
        checker: Limits {
            max_steps_per_key: args.checker_max_steps,
        },
    };
    println!(
        "raftcache-faults: {} runs of {} s, {} clients, first seed {seed}, image {}",
        args.runs, args.seconds, args.clients, args.image
    );
    let mut reports = Vec::new();
    for i in 0..args.runs {
        if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
            println!("raftcache-faults: interrupted: stopped after {i} runs");
            break;
        }
        let report = run::run(&config, seed + i);
        println!("{}", run_line(i + 1, args.runs, &report));
        if let Some(failure) = &report.failure {
            println!("{failure}");
            println!(
                "  replay: cargo run -p raftcache-faults -- --seed {} --runs 1 --seconds {} --clients {}{}",
                report.seed,
                args.seconds,
                args.clients,
                args.nodes.as_ref().map(|n| format!(" --nodes {n}")).unwrap_or_default()
                    + &args
                        .first_fault
                        .as_ref()
                        .map(|k| format!(" --first-fault {k}"))
                        .unwrap_or_default()
            );
            if let Some(dir) = &report.kept {
                println!("  kept: {}", dir.display());
            }
        }
        reports.push(report);
    }
    println!("{}", summary(&reports));
    if reports.iter().any(|r| r.failure.is_some()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_line(n: u64, runs: u64, r: &RunReport) -> String {
    let faults: Vec<String> = r
        .faults
        .iter()
        .map(|(kind, count)| format!("{kind}×{count}"))
        .collect();
    format!(
        "run {n}/{runs} seed {}: {} nodes, {} operations ({} checked, {} put_many/get_many, {} own keys read back), faults [{}]: {}",
        r.seed,
        r.nodes,
        r.operations,
        r.checked,
        r.multi_key,
        r.own_keys_checked,
        faults.join(", "),
        if r.failure.is_some() { "FAILED" } else { "ok" }
    )
}

fn summary(reports: &[RunReport]) -> String {
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    for r in reports {
        for (kind, count) in &r.faults {
            *faults.entry(*kind).or_default() += count;
        }
    }
    let failed: Vec<u64> = reports
        .iter()
        .filter(|r| r.failure.is_some())
        .map(|r| r.seed)
        .collect();
    let never: Vec<&str> = FaultKind::ALL
        .iter()
        .filter(|k| !faults.contains_key(k))
        .map(|k| k.name())
        .collect();
    let mut text = format!(
        "summary: {} runs ({} with 5 nodes), {} operations, {} checked for linearizability ({} put_many/get_many), {} own keys read back\n",
        reports.len(),
        reports.iter().filter(|r| r.nodes == 5).count(),
        reports.iter().map(|r| r.operations).sum::<usize>(),
        reports.iter().map(|r| r.checked).sum::<usize>(),
        reports.iter().map(|r| r.multi_key).sum::<usize>(),
        reports.iter().map(|r| r.own_keys_checked).sum::<usize>(),
    );
    text += &format!(
        "faults injected: {} ({})\n",
        faults.values().sum::<u64>(),
        faults
            .iter()
            .map(|(k, c)| format!("{k} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !never.is_empty() {
        text += &format!("never injected: {}\n", never.join(", "));
    }
    let skipped: usize = reports.iter().map(|r| r.not_injected.len()).sum();
    text += &format!("planned steps not injected: {skipped}\n");
    text += &format!("failed runs: {} {failed:?}", failed.len());
    text
}

/// `--check-history`: the verdict on a saved history.
fn check_saved(path: &PathBuf, max_steps: u64) -> ExitCode {
    let history = std::fs::File::open(path)
        .map_err(linearizability::HistoryError::from)
        .and_then(|f| linearizability::read_history(std::io::BufReader::new(f)));
    let history = match history {
        Ok(h) => h,
        Err(e) => {
            eprintln!("raftcache-faults: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let limits = Limits {
        max_steps_per_key: max_steps,
    };
    match linearizability::check(&history, limits) {
        Ok(report) => {
            for v in &report.violations {
                println!("{v}");
            }
            println!(
                "{}: {} operations, {} checked on {} keys: {:?}{}",
                path.display(),
                history.len(),
                report.operations_checked,
                report.keys_checked,
                report.verdict(),
                if report.unknown_keys.is_empty() {
                    String::new()
                } else {
                    format!(" (out of budget: {:?})", report.unknown_keys)
                }
            );
            if report.verdict() == Verdict::Linearizable {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("raftcache-faults: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}
