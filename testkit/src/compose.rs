//! What running raftcache in containers needs on this machine: shared by the compose tests and
//! the fault-injection suite (`raftcache-faults`), which both drive docker and docker-compose.

use std::process::Command;

/// Why containers of `image` cannot run here (no docker daemon, no docker-compose, no such
/// image), if they cannot.
pub fn missing_prerequisite(image: &str) -> Option<String> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !works("docker", &["info"]) {
        return Some("docker is not installed or its daemon is not reachable".into());
    }
    if !works("docker-compose", &["version"]) {
        return Some("docker-compose is not installed".into());
    }
    if !works("docker", &["image", "inspect", image]) {
        return Some(format!(
            "no image {image}: build it with cluster/build-image.sh"
        ));
    }
    None
}
