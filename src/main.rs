//! The `raftcache` binary: parses the command line (`cli`), starts tracing, and hands over to
//! the library (a node for `serve`, the client for everything else).

mod cli;

use std::process::ExitCode;

// mimalloc instead of glibc's malloc: on a node loading millions of keys it halved the time of
// the load and of each snapshot build, and kept RSS about a third lower (docs/benchmarks.md,
// "The allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use cli::{run_client, Cli, Command};
use raftcache::config::{LogFormat, NodeConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => serve(*config),
        Command::Restore(args) => restore(*args),
        other => {
            // A client command's output may go to a pipe that closes early (`| head`): end
            // quietly as other command-line tools do, rather than panic on a failed print.
            // SAFETY: setting a signal's disposition to its default, before any thread exists.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            run_client(other)
        }
    }
}

fn serve(config: NodeConfig) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| raftcache::config::DEFAULT_LOG_FILTER.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let node = match raftcache::node::start(config).await {
            Ok(node) => node,
            Err(e) => {
                tracing::error!(error = %e, "node failed to start");
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let mut hangup =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hangup) => hangup,
                Err(e) => {
                    eprintln!("error: cannot handle SIGHUP: {e}");
                    return ExitCode::from(2);
                }
            };
        let reloads = async {
            while hangup.recv().await.is_some() {
                match node.reload_tls() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificates and keys read again"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: TLS files not reloaded; the ones in use stay"),
                }
            }
        };
        let code = tokio::select! {
            _ = wait_for_signal() => ExitCode::SUCCESS,
            _ = reloads => ExitCode::SUCCESS,
            reason = node.failed() => {
                eprintln!("error: {reason}");
                ExitCode::from(2)
            }
            _ = node.raft_stopped() => {
                tracing::error!("Raft stopped after a fatal error (see above); exiting so this node can be repaired or restarted");
                ExitCode::from(1)
            }
        };
        node.shutdown().await;
        code
    })
}

/// The multi-threaded tokio runtime of `serve` and `restore`, or exit status 2 with why not.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(2)
        })
}

fn restore(args: cli::RestoreArgs) -> ExitCode {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut args = args;
    if let Err(e) = args.node.resolve_id() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match runtime.block_on(raftcache::backup::restore(&args.file, &args.node)) {
        Ok(done) => {
            let members: Vec<String> = done
                .members
                .iter()
                .map(|(id, node)| format!("{id}={}", node.peer_addr))
                .collect();
            println!(
                "restored the backup of cluster {} at log index {} ({} keys and removals) into {}: a new cluster {} of {}; start this node with `raftcache serve` and the same flags",
                done.header.cluster_id,
                done.header.index,
                done.items,
                done.data_dir.display(),
                done.cluster_id,
                members.join(",")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
