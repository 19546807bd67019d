//! Test-only fault injection. With the `failpoints` feature (turned on by the test suite only) a test
//! can make a named point pause; in every other build these compile to nothing.

/// Sleeps for the milliseconds a test configured on `name` with `fail::cfg(name, "return(ms)")`.
#[cfg(feature = "failpoints")]
pub(crate) async fn pause(name: &str) {
    let configured = fail::eval(name, |arg| arg.and_then(|ms| ms.parse::<u64>().ok()));
    if let Some(Some(ms)) = configured {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// No-op outside test builds.
#[cfg(not(feature = "failpoints"))]
pub(crate) async fn pause(_name: &str) {}

/// The panic payload of [`crash_point`]: the worker treats it as the death of its process.
#[cfg(feature = "failpoints")]
#[derive(Debug)]
pub(crate) struct SimulatedCrash;

/// A place where a test may kill the work in progress, with `fail::cfg(name, "1*return")`: the job
/// stops there as if the process had died, recording nothing and leaving its lease to expire.
/// Configured with `panic` instead, it panics like a bug would (a failed attempt).
#[cfg(feature = "failpoints")]
pub(crate) fn crash_point(name: &str) {
    if fail::eval(name, |_| ()).is_some() {
        std::panic::panic_any(SimulatedCrash);
    }
}

/// No-op outside test builds.
#[cfg(not(feature = "failpoints"))]
pub(crate) fn crash_point(_name: &str) {}

/// Whether a caught panic is a test's [`crash_point`] rather than a bug.
#[cfg(feature = "failpoints")]
pub(crate) fn is_simulated_crash(payload: &(dyn std::any::Any + Send)) -> bool {
    payload.is::<SimulatedCrash>()
}

/// Never, outside test builds.
#[cfg(not(feature = "failpoints"))]
pub(crate) fn is_simulated_crash(_payload: &(dyn std::any::Any + Send)) -> bool {
    false
}

/// Whether a test switched `name` on (`fail::cfg(name, "return")`, or `"2*return"` for twice).
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) -> bool {
    fail::eval(name, |_| ()).is_some()
}

/// Never, outside test builds.
#[cfg(not(feature = "failpoints"))]
pub(crate) fn hit(_name: &str) -> bool {
    false
}
