//! Endpoint choice. Each function picks an index into the backend's
//! endpoint list, honouring weights and skipping endpoints the caller says
//! are unavailable (ejected, or the one a retry should avoid).
//!
//! - [`pick_weighted`]: weighted random (also the two candidates of p2c);
//! - [`RoundRobin`]: smooth weighted round robin as a precomputed schedule;
//! - [`Ring`]: consistent hashing on a ring with virtual nodes (Envoy's ring hash);
//! - [`Maglev`]: Google's Maglev table, which moves fewer keys when the set changes.
//!
//! ```
//! use proxyless_core::policy::balance::{hash_key, Maglev};
//! let eps = [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)];
//! let table = Maglev::new(&eps);
//! let k = hash_key(b"user-42");
//! let first = table.pick(k, |_| true).unwrap();
//! assert_eq!(table.pick(k, |_| true), Some(first));   // sticky
//! ```

/// A stable 64-bit hash of a key (FNV-1a, then a splitmix64 finalizer so
/// nearby keys spread over the whole range).
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// A splitmix64 finalizer: spreads a key over the whole range, and gives a
/// second uniform sample from one, independent of it for choosing.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Weighted random choice among the available endpoints. `sample` is a
/// uniform random number.
pub fn pick_weighted(
    weights: &[u32],
    sample: u64,
    available: impl Fn(usize) -> bool,
) -> Option<usize> {
    let total: u64 = weights
        .iter()
        .enumerate()
        .filter(|(i, _)| available(*i))
        .map(|(_, w)| u64::from(*w))
        .sum();
    if total == 0 {
        return None;
    }
    let mut x = ((u128::from(sample) * u128::from(total)) >> 64) as u64;
    for (i, w) in weights.iter().enumerate() {
        if !available(i) {
            continue;
        }
        let w = u64::from(*w);
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    None
}

/// Two distinct weighted-random candidates (the same one twice only when
/// there is one).
pub fn pick_two(
    weights: &[u32],
    samples: (u64, u64),
    available: impl Fn(usize) -> bool,
) -> Option<(usize, usize)> {
    let a = pick_weighted(weights, samples.0, &available)?;
    let b = pick_weighted(weights, samples.1, |i| i != a && available(i)).unwrap_or(a);
    Some((a, b))
}

/// Smooth weighted round robin (nginx's), unrolled into a schedule once per
/// endpoint set so each pick is one atomic increment.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    schedule: Vec<u32>,
}

impl RoundRobin {
    /// The schedule for `weights` (scaled down so it stays under 10,000 slots).
    pub fn new(weights: &[u32]) -> Self {
        let g = weights
            .iter()
            .copied()
            .filter(|w| *w > 0)
            .fold(0, gcd)
            .max(1);
        let mut w: Vec<i64> = weights.iter().map(|x| i64::from(x / g)).collect();
        let mut total: i64 = w.iter().sum();
        if total > 10_000 {
            let scale = total as f64 / 10_000.0;
            w = w
                .iter()
                .map(|x| {
                    if *x == 0 {
                        0
                    } else {
                        ((*x as f64 / scale).round() as i64).max(1)
                    }
                })
                .collect();
            total = w.iter().sum();
        }
        let mut current = vec![0i64; w.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, wi) in current.iter_mut().zip(&w) {
                *c += wi;
            }
            let Some((best, _)) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, -(*i as i64)))
            else {
                break;
            };
            current[best] -= total;
            schedule.push(best as u32);
        }
        Self { schedule }
    }

    /// The endpoint for turn `n`, skipping unavailable ones.
    pub fn pick(&self, n: usize, available: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        (0..len)
            .map(|k| self.schedule[(n + k) % len] as usize)
            .find(|i| available(*i))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The fewest points a hash ring has (Envoy's `minimum_ring_size`).
pub const MIN_RING_SIZE: u64 = 1024;
/// The most points a hash ring has (Envoy's `maximum_ring_size`), whatever
/// the weights; each endpoint of weight above zero has at least one.
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// A hash ring with virtual nodes; each endpoint gets points in proportion
/// to its weight, at least 1024 points in all (Envoy's minimum ring size).
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// The ring for (address, weight) pairs.
    pub fn new(endpoints: &[(&str, u32)]) -> Self {
        let total: u64 = endpoints.iter().map(|(_, w)| u64::from(*w)).sum();
        // 16 points per unit of weight, within Envoy's default ring sizes
        // (1,024 to 8M points): a huge weight cannot make a huge ring.
        let target = total.saturating_mul(16).clamp(MIN_RING_SIZE, MAX_RING_SIZE);
        let mut points = Vec::new();
        for (i, (addr, w)) in endpoints.iter().enumerate() {
            let share = u128::from(*w) * u128::from(target) / u128::from(total.max(1));
            let count = u64::try_from(share)
                .unwrap_or(MAX_RING_SIZE)
                .max(u64::from(*w > 0));
            for v in 0..count {
                let key = format!("{addr}_{v}");
                points.push((hash_key(key.as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The first available endpoint clockwise from `hash`.
    pub fn pick(&self, hash: u64, available: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|(h, _)| *h < hash);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|i| available(*i))
    }
}

/// A Maglev lookup table (Eisenbud et al., NSDI '16), weighted by letting
/// heavier endpoints take more turns while the table fills.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
}

/// The table size: a prime, as the algorithm needs (Envoy's default).
pub const MAGLEV_TABLE_SIZE: u64 = 65_537;

impl Maglev {
    /// The table for (address, weight) pairs.
    pub fn new(endpoints: &[(&str, u32)]) -> Self {
        let m = MAGLEV_TABLE_SIZE;
        let live: Vec<(usize, u64, u64, u32)> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, (_, w))| *w > 0)
            .map(|(i, (addr, w))| {
                let offset = hash_key(addr.as_bytes()) % m;
                let skip = mix(hash_key(addr.as_bytes()) ^ 0x5bd1_e995) % (m - 1) + 1;
                (i, offset, skip, *w)
            })
            .collect();
        if live.is_empty() {
            return Self { table: Vec::new() };
        }
        let max_w = live.iter().map(|l| l.3).max().unwrap_or(1);
        let mut table = vec![u32::MAX; m as usize];
        let mut next = vec![0u64; live.len()];
        let mut credit = vec![0u64; live.len()];
        let mut filled = 0u64;
        'fill: loop {
            for (k, &(i, offset, skip, w)) in live.iter().enumerate() {
                // Weighted: an endpoint takes a turn each time its credit
                // reaches the heaviest weight.
                credit[k] += u64::from(w);
                if credit[k] < u64::from(max_w) {
                    continue;
                }
                credit[k] -= u64::from(max_w);
                loop {
                    let slot = ((offset + next[k] * skip) % m) as usize;
                    next[k] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
        }
        Self { table }
    }

    /// The endpoint for `hash`; when it is unavailable, the next slots of the
    /// table are tried in order.
    pub fn pick(&self, hash: u64, available: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.table.len();
        if n == 0 {
            return None;
        }
        let start = (hash % n as u64) as usize;
        (0..n)
            .map(|k| self.table[(start + k) % n] as usize)
            .find(|i| available(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(counts: &[u32]) -> Vec<f64> {
        let total: u32 = counts.iter().sum();
        counts
            .iter()
            .map(|c| f64::from(*c) / f64::from(total))
            .collect()
    }

    #[test]
    fn round_robin_is_smooth_and_weighted() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|n| rr.pick(n, |_| true).unwrap_or(9)).collect();
        assert_eq!(seq.iter().filter(|i| **i == 0).count(), 5);
        // Smooth: the heavy endpoint never takes more than 3 turns in a row.
        assert_ne!(&seq[..4], &[0, 0, 0, 0]);
        assert_eq!(rr.pick(0, |i| i == 2), Some(2));
        assert_eq!(rr.pick(0, |_| false), None);
    }

    #[test]
    fn weighted_pick_follows_weights_and_skips_unavailable() {
        let mut counts = [0u32; 3];
        for k in 0..30_000u64 {
            let s = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            counts[pick_weighted(&[1, 2, 3], s, |_| true).unwrap_or(9)] += 1;
        }
        let s = shares(&counts);
        assert!(
            (s[0] - 1.0 / 6.0).abs() < 0.01 && (s[2] - 0.5).abs() < 0.01,
            "{s:?}"
        );
        assert_eq!(pick_weighted(&[1, 2, 3], 0, |i| i == 1), Some(1));
        assert_eq!(pick_two(&[1, 1], (0, 0), |_| true), Some((0, 1)));
        assert_eq!(pick_two(&[1, 1], (0, 0), |i| i == 1), Some((1, 1)));
    }

    fn moved_share(before: &[usize], after: &[usize]) -> f64 {
        before.iter().zip(after).filter(|(a, b)| a != b).count() as f64 / before.len() as f64
    }

    #[test]
    fn hashing_is_sticky_balanced_and_moves_minimally() {
        let four: Vec<String> = (1..=4).map(|i| format!("10.0.0.{i}:80")).collect();
        let eps4: Vec<(&str, u32)> = four.iter().map(|a| (a.as_str(), 1)).collect();
        let eps3 = &eps4[..3];
        let keys: Vec<u64> = (0..20_000)
            .map(|k| hash_key(format!("user-{k}").as_bytes()))
            .collect();
        for (name, before, after) in [
            (
                "ring",
                pick_all_ring(&Ring::new(eps3), &keys),
                pick_all_ring(&Ring::new(&eps4), &keys),
            ),
            (
                "maglev",
                pick_all_maglev(&Maglev::new(eps3), &keys),
                pick_all_maglev(&Maglev::new(&eps4), &keys),
            ),
        ] {
            let mut counts = [0u32; 4];
            for i in &after {
                counts[*i] += 1;
            }
            for s in shares(&counts) {
                assert!((s - 0.25).abs() < 0.06, "{name} unbalanced: {counts:?}");
            }
            // Adding a fourth endpoint should move about a quarter of keys.
            let moved = moved_share(&before, &after);
            assert!(moved < 0.35, "{name} moved {moved}");
        }
    }

    fn pick_all_ring(r: &Ring, keys: &[u64]) -> Vec<usize> {
        keys.iter()
            .map(|k| r.pick(*k, |_| true).unwrap_or(99))
            .collect()
    }

    fn pick_all_maglev(m: &Maglev, keys: &[u64]) -> Vec<usize> {
        keys.iter()
            .map(|k| m.pick(*k, |_| true).unwrap_or(99))
            .collect()
    }

    #[test]
    fn maglev_honours_weights() {
        let m = Maglev::new(&[("a:1", 3), ("b:1", 1)]);
        let a = m.table.iter().filter(|i| **i == 0).count() as f64 / m.table.len() as f64;
        assert!((a - 0.75).abs() < 0.02, "{a}");
        assert_eq!(m.pick(7, |i| i == 1), Some(1));
    }
}
