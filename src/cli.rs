//! The command line: `raftcache serve` runs a node; `get`, `put`, `remove` and `status` talk to
//! one. Exit status: 0 success, 1 key absent, 2 any error (message on stderr).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::client::{describe_error, CacheClient};
use crate::config::NodeConfig;
use crate::gen::cache::NodeStatus;

/// raftcache: a persistent, replicated key-value cache (Thrift API, Raft replication, sled).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node. With no flags: a one-node cluster on 127.0.0.1:9090.
    Serve(NodeConfig),
    /// Print the value of KEY (exit 1 if absent).
    Get {
        key: String,
        /// Return a value at least as new as every write acknowledged before this read.
        #[arg(long)]
        linearizable: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Store VALUE under KEY.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove KEY (exit 1 if it was absent).
    Remove {
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Operate the cluster.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Show a node's view of the cluster.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Build a snapshot on the node now (and compact its log behind it).
    Snapshot {
        #[command(flatten)]
        conn: Conn,
    },
}

/// Where the client connects.
#[derive(clap::Args, Debug)]
pub struct Conn {
    /// Client address of any node.
    #[arg(long, default_value = "127.0.0.1:9090", env = "RAFTCACHE_ADDR")]
    pub addr: String,
    /// Seconds to wait for the connection and for each answer.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
}

impl Conn {
    fn connect(&self) -> Result<CacheClient, String> {
        CacheClient::connect(&self.addr, Duration::from_secs(self.timeout_secs))
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))
    }
}

/// Runs a client command (anything but `serve`) and returns the process exit code.
pub fn run_client(command: Command) -> ExitCode {
    match client_command(command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn client_command(command: Command) -> Result<ExitCode, String> {
    let err = |e: thrift::Error| describe_error(&e);
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
        Command::Get {
            key,
            linearizable,
            conn,
        } => match conn.connect()?.get(&key, linearizable).map_err(err)? {
            Some(value) => {
                println!("{value}");
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("key not found: {key}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Put { key, value, conn } => {
            conn.connect()?.put(&key, &value).map_err(err)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { key, conn } => {
            if conn.connect()?.remove(&key).map_err(err)? {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("key not found: {key}");
                Ok(ExitCode::from(1))
            }
        }
        Command::Admin {
            command: AdminCommand::Snapshot { conn },
        } => {
            let index = conn.connect()?.admin_snapshot().map_err(err)?;
            println!("snapshot at log index {index}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, conn } => {
            let status = conn.connect()?.status().map_err(err)?;
            println!(
                "{}",
                if json {
                    status_json(&status).to_string()
                } else {
                    status_text(&status)
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `status --json` object.
pub fn status_json(s: &NodeStatus) -> serde_json::Value {
    let members: Vec<_> = s
        .members
        .iter()
        .map(|m| json!({"id": m.id, "addr": m.peer_addr, "voter": m.voter}))
        .collect();
    json!({
        "id": s.id,
        "role": s.role,
        "leader": s.leader,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "last_applied": s.last_applied,
        "members": members,
        "log_flushes": s.log_flushes,
    })
}

fn status_text(s: &NodeStatus) -> String {
    let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
    let mut out = format!(
        "node {} is {} (leader: {leader}, term {}, last log index {}, last applied {})\nmembers:",
        s.id, s.role, s.term, s.last_log_index, s.last_applied
    );
    for m in &s.members {
        out.push_str(&format!(
            "\n  {} {} {}",
            m.id,
            m.peer_addr,
            if m.voter { "voter" } else { "learner" }
        ));
    }
    out
}
