//! Waiting for a condition with a deadline: the one poll loop of the tests and the fault suite.
//! A wait checks its condition, and until it holds pauses a little longer each time (from
//! `FIRST_PAUSE`, doubling, up to `MAX_PAUSE`) and checks again, until `within` has passed.
//! Nothing sleeps a fixed time to synchronize.
//!
//! A check returns `bool`, `Option<T>` (done with a value) or `Result<T, E>`: an `Err` means
//! "not yet", and the last one is kept for the message when the wait times out.

use std::fmt::{self, Display};
use std::time::{Duration, Instant};

/// The first pause between two checks.
const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// The longest pause between two checks.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// What one check of a condition found: done, with a value, or not yet, perhaps with why.
pub trait Check {
    type Output;
    fn outcome(self) -> Result<Self::Output, Option<String>>;
}

impl Check for bool {
    type Output = ();
    fn outcome(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Check for Option<T> {
    type Output = T;
    fn outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Check for Result<T, E> {
    type Output = T;
    fn outcome(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// A condition that did not hold in time.
#[derive(Debug)]
pub struct TimedOut {
    pub within: Duration,
    /// Why the last check said "not yet", if it said.
    pub last: Option<String>,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not within {:?}", self.within)?;
        match &self.last {
            Some(last) => write!(f, " (last: {last})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for TimedOut {}

/// The pauses between checks: growing, so a quick condition is seen quickly and a slow one is
/// not checked in a busy loop.
struct Pauses(Duration);

impl Pauses {
    fn new() -> Self {
        Self(FIRST_PAUSE)
    }

    /// The next pause, never past `deadline`.
    fn next(&mut self, deadline: Instant) -> Duration {
        let pause = self
            .0
            .min(deadline.saturating_duration_since(Instant::now()));
        self.0 = (self.0 * 2).min(MAX_PAUSE);
        pause
    }
}

/// Checks `check` until it holds or `within` has passed; its value, or how it timed out.
pub fn poll<C: Check>(
    within: Duration,
    mut check: impl FnMut() -> C,
) -> Result<C::Output, TimedOut> {
    let deadline = Instant::now() + within;
    let mut pauses = Pauses::new();
    loop {
        let last = match check().outcome() {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(TimedOut { within, last });
        }
        std::thread::sleep(pauses.next(deadline));
    }
}

/// Checks `check` until it holds and returns its value; panics saying `what` did not happen
/// if `within` passes first.
pub fn wait_until<C: Check>(within: Duration, what: &str, check: impl FnMut() -> C) -> C::Output {
    poll(within, check).unwrap_or_else(|timeout| panic!("{what}: {timeout}"))
}

/// `poll` for async code: the check may await, and the pauses do not block the runtime.
pub async fn poll_async<C: Check>(
    within: Duration,
    mut check: impl AsyncFnMut() -> C,
) -> Result<C::Output, TimedOut> {
    let deadline = Instant::now() + within;
    let mut pauses = Pauses::new();
    loop {
        let last = match check().await.outcome() {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(TimedOut { within, last });
        }
        tokio::time::sleep(pauses.next(deadline)).await;
    }
}

/// `wait_until` for async code (the in-process clusters of `tests/`).
pub async fn wait_until_async<C: Check>(
    within: Duration,
    what: &str,
    check: impl AsyncFnMut() -> C,
) -> C::Output {
    poll_async(within, check)
        .await
        .unwrap_or_else(|timeout| panic!("{what}: {timeout}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_comes_true_is_waited_for() {
        let mut checks = 0;
        let value = wait_until(Duration::from_secs(5), "the third check", || {
            checks += 1;
            (checks == 3).then_some(checks)
        });
        assert_eq!(value, 3);
    }

    #[test]
    fn a_timeout_says_what_the_last_check_found() {
        let mut checks = 0;
        let timeout = poll(Duration::from_millis(30), || {
            checks += 1;
            Err::<(), _>(format!("check {checks}"))
        })
        .unwrap_err();
        assert!(checks > 1, "checked only once");
        assert_eq!(timeout.last, Some(format!("check {checks}")));
        assert!(timeout
            .to_string()
            .starts_with("not within 30ms (last: check"));
    }

    #[test]
    #[should_panic(expected = "the impossible: not within")]
    fn wait_until_panics_with_what_it_waited_for() {
        wait_until(Duration::from_millis(10), "the impossible", || false);
    }

    #[test]
    fn pauses_grow_to_their_cap_and_stop_at_the_deadline() {
        let mut pauses = Pauses::new();
        let far = Instant::now() + Duration::from_secs(60);
        let seen: Vec<Duration> = (0..10).map(|_| pauses.next(far)).collect();
        assert_eq!(seen[0], FIRST_PAUSE);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(seen[9], MAX_PAUSE);
        assert_eq!(pauses.next(Instant::now()), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_async_wait_awaits_its_check() {
        let mut checks = 0;
        let value = wait_until_async(Duration::from_secs(5), "the second check", async || {
            tokio::task::yield_now().await;
            checks += 1;
            (checks == 2).then_some("done")
        })
        .await;
        assert_eq!(value, "done");
    }
}
