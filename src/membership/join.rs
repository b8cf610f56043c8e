//! Adding a node as a voter, the safe way, from the outside: add it as a learner, wait until
//! it has caught up with the leader's log (bounded, with progress), then make it a voter. The
//! CLI's `add-node` and `replace-node` run this against any member's client port, and so does
//! a node started with `--join` for itself (the leader's probe then tells the cluster its
//! client address and hands it the cluster id).
//!
//! Making a voter of a node that is far behind would make every commit wait for it to catch
//! up; making a voter of one that does not answer would raise the quorum without adding a
//! vote (etcd's classic outage). The catch-up wait and the leader's probe prevent both.

use std::time::{Duration, Instant};

use crate::client::{describe_error, CacheClient};
use crate::gen::cache::{AdminOp, Membership};
use crate::types::NodeId;

/// How a caller waits for a learner to catch up before it is made a voter.
#[derive(Debug, Clone, Copy)]
pub struct CatchUp {
    /// The learner counts as caught up within this many entries of the leader's last one.
    pub max_lag: u64,
    /// Give up (the node stays a learner) after this long.
    pub timeout: Duration,
}

/// Pause between two looks at a learner's progress.
const PROGRESS_POLL: Duration = Duration::from_millis(200);

/// What makes a node a voter after it is a learner.
#[derive(Debug, Clone, Copy)]
enum Then {
    Promote,
    Replace { old: NodeId },
}

/// `add-node` (with `replace: None`) or `replace-node` (`replace: Some(old)`): adds `id` at
/// `peer_addr` as a learner, waits for it to catch up, then makes it a voter (replacing
/// `old`). `progress` is told each step. Returns the membership after the last step.
#[allow(clippy::too_many_arguments)]
pub fn add_node(
    client: &mut CacheClient,
    id: NodeId,
    peer_addr: &str,
    replace: Option<NodeId>,
    catch_up: CatchUp,
    force: bool,
    token: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Membership, String> {
    let err = |e: thrift::Error| describe_error(&e);
    if replace.is_none() {
        let members = client.admin_members(token).map_err(err)?;
        if let Some(known) = members.members.iter().find(|m| m.id == id as i64) {
            if known.voter && known.peer_addr == peer_addr {
                progress(&format!(
                    "node {id} is already a voter at {peer_addr}: nothing changed"
                ));
                return Ok(members);
            }
            if known.peer_addr != peer_addr {
                return Err(format!(
                    "node {id} is already a {} at {}, not at {peer_addr}: node ids are never reused; to move it, remove it (admin remove-node {id}) and add a new node, or replace it (admin replace-node {id} NEW_ID NEW_PEER_ADDR)",
                    if known.voter { "voter" } else { "learner" },
                    known.peer_addr
                ));
            }
        }
    }
    progress(&format!("adding node {id} at {peer_addr} as a learner"));
    client
        .admin_change(
            AdminOp::ADD_LEARNER,
            id,
            Some(peer_addr),
            None,
            force,
            token,
        )
        .map_err(err)?;
    wait_caught_up(client, id, catch_up, token, progress)?;
    let then = replace.map_or(Then::Promote, |old| Then::Replace { old });
    let membership = match then {
        Then::Promote => {
            progress(&format!("making node {id} a voter"));
            client.admin_change(AdminOp::PROMOTE, id, None, None, force, token)
        }
        Then::Replace { old } => {
            progress(&format!("replacing voter {old} by node {id}"));
            client.admin_change(AdminOp::REPLACE_NODE, old, None, Some(id), force, token)
        }
    };
    membership.map_err(err)
}

/// Polls the membership until learner `id` is within `max_lag` entries of the leader.
fn wait_caught_up(
    client: &mut CacheClient,
    id: NodeId,
    catch_up: CatchUp,
    token: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let deadline = Instant::now() + catch_up.timeout;
    let mut last_told = None;
    loop {
        let membership = client
            .admin_members(token)
            .map_err(|e| describe_error(&e))?;
        let lag = lag_of(&membership, id);
        if caught_up(lag, catch_up.max_lag) {
            progress(&format!(
                "node {id} has caught up ({} entries behind)",
                lag.unwrap_or_default()
            ));
            return Ok(());
        }
        if last_told != Some(lag) {
            let behind = lag.map_or("unknown".to_string(), |l| l.to_string());
            progress(&format!(
                "node {id} is catching up: {behind} entries behind (leader at {})",
                membership.last_log_index
            ));
            last_told = Some(lag);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {id} did not catch up to within {} entries of the leader in {} ms (last: {} behind); it stays a learner. Check that it runs and reaches the leader's peer port, then run the command again, or remove it",
                catch_up.max_lag,
                catch_up.timeout.as_millis(),
                lag.map_or("unknown".to_string(), |l| l.to_string())
            ));
        }
        std::thread::sleep(PROGRESS_POLL);
    }
}

/// How far learner `id` is behind the leader: None when it does not answer or nothing has been
/// replicated to it yet.
fn lag_of(membership: &Membership, id: NodeId) -> Option<i64> {
    membership
        .members
        .iter()
        .find(|m| m.id == id as i64 && m.reachable)
        .and_then(|m| m.lag)
}

/// Whether a learner `lag` entries behind counts as caught up.
fn caught_up(lag: Option<i64>, max_lag: u64) -> bool {
    lag.is_some_and(|l| l >= 0 && l as u64 <= max_lag)
}

/// What `serve --join` asks for.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub id: NodeId,
    /// Where the other nodes reach this one (`--advertise-peer`): what the cluster records.
    pub peer_addr: String,
    /// The client address of any member.
    pub member_addr: String,
    pub voter: bool,
    pub token: String,
    pub catch_up: CatchUp,
    /// Socket timeout of each call to the member: longer than a change may take there.
    pub call_timeout: Duration,
    /// How to reach the member's client port: TLS (`--join-tls-ca`), the client token.
    pub connect: crate::client::ClientOptions,
}

/// `serve --join`: asks the cluster of `member_addr` to add this node, retrying failed steps
/// until `timeout`. Blocking: run it off the async runtime. Done means this node is a voter
/// (or a learner, with `voter: false`).
pub fn join_cluster(
    request: &JoinRequest,
    is_done: &dyn Fn() -> bool,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no attempt made");
    while Instant::now() < deadline {
        if is_done() {
            return Ok(());
        }
        match join_once(request, deadline) {
            Ok(()) if is_done() => return Ok(()),
            Ok(()) => last_error = "the cluster said yes but this node has not heard yet".into(),
            Err(e) => {
                tracing::warn!(error = %e, member = %request.member_addr, "join attempt failed; retrying");
                last_error = e;
            }
        }
        std::thread::sleep(PROGRESS_POLL);
    }
    Err(format!(
        "could not join the cluster of {} within the join timeout of {} ms: {last_error}",
        request.member_addr,
        timeout.as_millis()
    ))
}

fn join_once(request: &JoinRequest, deadline: Instant) -> Result<(), String> {
    let mut client =
        CacheClient::connect_with(&request.member_addr, request.call_timeout, &request.connect)
            .map_err(|e| format!("cannot connect to {}: {e}", request.member_addr))?;
    let mut tell = |step: &str| tracing::info!(step, "joining");
    let remaining = deadline.saturating_duration_since(Instant::now());
    let catch_up = CatchUp {
        timeout: remaining.min(request.catch_up.timeout),
        ..request.catch_up
    };
    if request.voter {
        add_node(
            &mut client,
            request.id,
            &request.peer_addr,
            None,
            catch_up,
            false,
            &request.token,
            &mut tell,
        )
        .map(|_| ())
    } else {
        tell("asking to be added as a learner");
        client
            .admin_change(
                AdminOp::ADD_LEARNER,
                request.id,
                Some(&request.peer_addr),
                None,
                false,
                &request.token,
            )
            .map(|_| ())
            .map_err(|e| describe_error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::cache::MemberState;

    fn learner(reachable: bool, lag: Option<i64>) -> Membership {
        Membership {
            leader: 1,
            last_log_index: 500,
            changing: false,
            members: vec![MemberState {
                id: 4,
                peer_addr: "p".into(),
                client_addr: "c".into(),
                voter: false,
                reachable,
                lag,
            }],
        }
    }

    #[test]
    fn a_learner_past_the_max_lag_has_not_caught_up() {
        assert!(caught_up(lag_of(&learner(true, Some(100)), 4), 100));
        assert!(!caught_up(lag_of(&learner(true, Some(101)), 4), 100));
        assert!(caught_up(lag_of(&learner(true, Some(0)), 4), 0));
    }

    #[test]
    fn an_unreachable_or_unreplicated_learner_has_not_caught_up() {
        assert!(!caught_up(lag_of(&learner(false, Some(0)), 4), 100));
        assert!(!caught_up(lag_of(&learner(true, None), 4), 100));
        assert!(!caught_up(lag_of(&learner(true, Some(0)), 5), 100));
    }
}
