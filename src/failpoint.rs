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

/// A place where a test may kill the work in progress, with `fail::cfg(name, "1*panic")`: the task
/// dies there as if the process had, leaving its lease to expire.
#[cfg(feature = "failpoints")]
pub(crate) fn crash_point(name: &str) {
    let _ = fail::eval(name, |_| ());
}

/// No-op outside test builds.
#[cfg(not(feature = "failpoints"))]
pub(crate) fn crash_point(_name: &str) {}
