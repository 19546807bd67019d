//! Test-only fault injection. With the `failpoints` feature (turned on by the test suite only) a test
//! can make a named point pause; in every other build these compile to nothing.

/// Pauses where a test asked: `fail::cfg(name, "return(ms)")` sleeps that many milliseconds;
/// `fail::cfg(name, "return")` holds here until the test removes the point, and while it does,
/// [`held`] says so, so the test can act at exactly that moment and then let the work go on.
#[cfg(feature = "failpoints")]
pub(crate) async fn pause(name: &str) {
    match fail::eval(name, |arg| arg.and_then(|ms| ms.parse::<u64>().ok())) {
        Some(Some(ms)) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
        Some(None) => {
            let _holding = Holding::start(name);
            while fail::eval(name, |_| ()).is_some() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        None => {}
    }
}

/// Names of the points some work is holding at now, once per holder.
#[cfg(feature = "failpoints")]
static HOLDING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// One holder at a point, registered until dropped (also when the holding future is dropped).
#[cfg(feature = "failpoints")]
struct Holding(String);

#[cfg(feature = "failpoints")]
impl Holding {
    fn start(name: &str) -> Self {
        if let Ok(mut holding) = HOLDING.lock() {
            holding.push(name.to_owned());
        }
        Self(name.to_owned())
    }
}

#[cfg(feature = "failpoints")]
impl Drop for Holding {
    fn drop(&mut self) {
        if let Ok(mut holding) = HOLDING.lock()
            && let Some(at) = holding.iter().position(|name| *name == self.0)
        {
            holding.swap_remove(at);
        }
    }
}

/// Whether some work is holding at `name` (configured with `"return"`) right now.
#[cfg(feature = "failpoints")]
pub fn held(name: &str) -> bool {
    HOLDING
        .lock()
        .map(|holding| holding.iter().any(|held| held == name))
        .unwrap_or(false)
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
