//! Named retry policies. Every retry in the service draws its delays from here: exponential, capped,
//! bounded, with *full* jitter (a uniform delay in `[0, backoff)`), so replicas retrying the same
//! failure spread out instead of arriving together. backon's own jitter only adds `[0, backoff)` on top
//! of the backoff, which keeps the retries bunched.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Exponential backoff from `min` doubling to `max`, each delay drawn uniformly below it.
#[derive(Debug)]
pub struct FullJitter {
    inner: ExponentialBackoff,
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.inner
            .next()
            .map(|ceiling| ceiling.mul_f64(rand::random::<f64>()))
    }
}

/// At most `retries` delays (`None`: without end), from `min` doubling up to `max`.
pub fn full_jitter(min: Duration, max: Duration, retries: Option<usize>) -> FullJitter {
    let builder = ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max);
    let builder = match retries {
        Some(retries) => builder.with_max_times(retries),
        None => builder.without_max_times(),
    };
    FullJitter {
        inner: builder.build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_below_the_doubling_ceiling_and_stop_after_the_bound() {
        let delays: Vec<Duration> =
            full_jitter(Duration::from_millis(100), Duration::from_secs(1), Some(5)).collect();

        assert_eq!(delays.len(), 5);
        let ceilings = [100, 200, 400, 800, 1000];
        for (delay, ceiling) in delays.iter().zip(ceilings) {
            assert!(
                *delay <= Duration::from_millis(ceiling),
                "{delay:?} above {ceiling} ms"
            );
        }
    }

    #[test]
    fn delays_are_spread_over_the_whole_range_not_bunched_at_the_top() {
        let delays: Vec<Duration> = (0..200)
            .filter_map(|_| {
                full_jitter(Duration::from_secs(1), Duration::from_secs(1), Some(1)).next()
            })
            .collect();

        assert!(
            delays
                .iter()
                .any(|delay| *delay < Duration::from_millis(250))
        );
        assert!(
            delays
                .iter()
                .any(|delay| *delay > Duration::from_millis(750))
        );
    }

    #[test]
    fn an_unbounded_policy_keeps_going() {
        assert_eq!(
            full_jitter(Duration::from_millis(1), Duration::from_millis(2), None)
                .take(100)
                .count(),
            100
        );
    }
}
