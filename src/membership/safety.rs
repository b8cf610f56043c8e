//! The safety rules a membership change must pass before the leader proposes it, as pure
//! functions of the voter sets and of which nodes answered just now, so each rule is unit
//! tested on its own.

use std::collections::BTreeSet;

use crate::types::NodeId;

/// Refuses a change from voters `old` to voters `new` unless, with only the nodes in
/// `reachable` answering, both a majority of `old` and a majority of `new` answer: joint
/// consensus needs both to commit the change, and the cluster needs a majority of `new` to
/// keep committing writes after it.
pub fn check_quorum(
    old: &BTreeSet<NodeId>,
    new: &BTreeSet<NodeId>,
    reachable: &BTreeSet<NodeId>,
) -> Result<(), String> {
    if new.is_empty() {
        return Err("the change would leave no voter at all".into());
    }
    for (which, voters) in [("new", new), ("current", old)] {
        let up: BTreeSet<NodeId> = voters.intersection(reachable).copied().collect();
        let needed = voters.len() / 2 + 1;
        if up.len() < needed {
            return Err(format!(
                "the {which} voters would be {} and only {} of them answer now; a quorum needs {needed}. Bring the unreachable voters back first, or use --force if they are gone for good and you accept that the cluster stops committing until a quorum answers",
                list(voters),
                list(&up),
            ));
        }
    }
    Ok(())
}

/// `{1, 2, 3}`.
pub fn list(ids: &BTreeSet<NodeId>) -> String {
    let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    format!("{{{}}}", ids.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn removing_a_reachable_voter_while_another_is_down_is_refused() {
        let refused = check_quorum(&set(&[1, 2, 3]), &set(&[1, 3]), &set(&[1, 2])).unwrap_err();
        assert!(refused.contains("new voters would be {1, 3}"), "{refused}");
        assert!(refused.contains("only {1}"), "{refused}");
    }

    #[test]
    fn removing_the_voter_that_is_down_is_allowed() {
        check_quorum(&set(&[1, 2, 3]), &set(&[1, 2]), &set(&[1, 2])).unwrap();
    }

    #[test]
    fn adding_an_unreachable_voter_to_a_cluster_missing_one_is_refused() {
        // {1,2,3} with 3 down, adding 4 that does not answer: 2 of 4 cannot commit.
        assert!(check_quorum(&set(&[1, 2, 3]), &set(&[1, 2, 3, 4]), &set(&[1, 2])).is_err());
        check_quorum(&set(&[1, 2, 3]), &set(&[1, 2, 3, 4]), &set(&[1, 2, 4])).unwrap();
    }

    #[test]
    fn a_lost_current_quorum_is_refused_too() {
        assert!(check_quorum(&set(&[1, 2, 3]), &set(&[1]), &set(&[1])).is_err());
    }

    #[test]
    fn an_empty_voter_set_is_refused() {
        assert!(check_quorum(&set(&[1]), &set(&[]), &set(&[1])).is_err());
    }
}
