//! Stateless pseudo-random mixing: every generated value is a pure function of (seed, seller, index),
//! which is what lets a million-product inventory exist without being stored.

/// SplitMix64 finaliser of `a` combined with `b`.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(b)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mix of three values.
pub(crate) fn mix3(a: u64, b: u64, c: u64) -> u64 {
    mix(mix(a, b), c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixing_is_deterministic_and_spreads() {
        assert_eq!(mix3(1, 2, 3), mix3(1, 2, 3));
        assert_ne!(mix3(1, 2, 3), mix3(1, 2, 4));
        let evens = (0..1000).filter(|i| mix(7, *i).is_multiple_of(2)).count();
        assert!((400..600).contains(&evens));
    }
}
