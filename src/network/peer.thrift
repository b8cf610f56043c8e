// raftcache peer RPC: what nodes say to each other on the peer port.
//
// Each call carries one bincode-encoded payload (an openraft request, or a raftcache
// forward/read-index request) and returns one bincode-encoded `Result`; Thrift only frames
// the bytes. Clients never speak this service.

namespace rs peer

service RaftPeer {
    binary append_entries(1: binary request),
    binary vote(1: binary request),
    /// One chunk of a snapshot the leader streams to a follower.
    binary install_snapshot(1: binary request),
    /// A client write that reached a follower, forwarded to the leader.
    binary forward(1: binary request),
    /// Ask the leader for a read index (for a linearizable read on a follower).
    binary read_index(1: binary request),
    /// Ask a node whether it still leads with the given vote. A follower busy with a snapshot
    /// chunk asks its leader this, since the leader sends no heartbeats while it streams one.
    binary leader_check(1: binary request),
    /// Ask a node who it is (id, client address) and have it join the caller's cluster id:
    /// the leader's reachability probe before and around a membership change.
    binary node_info(1: binary request),
    /// An admin request (membership) that reached a follower, forwarded to the leader.
    binary admin(1: binary request),
    /// Would the receiver vote for the caller at the next term? Asked before an election, so
    /// that a node that cannot win never raises its term (pre-vote).
    binary pre_vote(1: binary request),
    /// The leader hands its leadership to the receiver: it is to call an election now.
    binary transfer_leader(1: binary request),
    /// A forward, read-index or admin call meant for the leader, from a node whose own calls
    /// do not reach it (a one-way partition): the receiver makes the call and passes the
    /// answer back.
    binary relay(1: binary request),
    /// A node's free disk space, sent to the leader while it is under the node's
    /// --min-free-disk-bytes (and once when it has room again): the leader refuses writes that
    /// add data meanwhile.
    binary disk_alarm(1: binary request),
}
