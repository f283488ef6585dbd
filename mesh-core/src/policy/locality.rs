//! Locality-aware endpoint choice: which part of a backend a request goes
//! to, before the backend's balancer picks an endpoint within it.
//!
//! A [`Plan`] ranks a backend's endpoints into levels (by priority, then by
//! how far each is from the caller) and, within a level, groups them by
//! locality. Per request, [`Plan::choose`] sends the request to a level
//! with Envoy's arithmetic: a level's health is its healthy share of
//! endpoints times the overprovisioning factor, capped at 100%; levels take
//! load in order, each as much as its health, and when the levels' health
//! adds up to less than 100% the loads are scaled up to fill it. With
//! locality weights, a locality within the level is then chosen by its
//! weight times its own health the same way.
//!
//! ```
//! use proxyless_core::config::{Locality, LocalityLb};
//! use proxyless_core::policy::locality::{Plan, PlanEndpoint};
//!
//! let here = Locality::new("eu", "eu-1", "");
//! let there = Locality::new("eu", "eu-2", "");
//! let endpoints: Vec<PlanEndpoint> = [&here, &here, &here, &there]
//!     .into_iter()
//!     .map(|l| PlanEndpoint { locality: Some(l), priority: 0, weight: 1 })
//!     .collect();
//! let plan = Plan::new(Some(&here), &endpoints, &LocalityLb::default()).unwrap();
//! // All three local endpoints healthy: all traffic stays in the zone.
//! assert_eq!(plan.loads(|_| true), vec![100, 0]);
//! // Two of three: 2/3 x 1.4 = 93% stays, 7% goes to the other zone.
//! assert_eq!(plan.loads(|i| i != 0), vec![93, 7]);
//! ```

use super::balance::mix;
use crate::config::{Locality, LocalityLb, locality_pattern_matches};

/// What a plan needs to know of one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct PlanEndpoint<'a> {
    /// Where it runs.
    pub locality: Option<&'a Locality>,
    /// Its priority (0 first).
    pub priority: u32,
    /// Its weight.
    pub weight: u32,
}

/// Distance ranks within a priority, nearest first.
const RANK_NAMES: [&str; 5] = ["local", "zone", "region", "failover", "remote"];

/// A backend's endpoints ranked and grouped for one caller.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Per endpoint: its group.
    group_of: Box<[u32]>,
    /// Groups: the level each belongs to and its weight (0 in a level
    /// without weights).
    groups: Box<[Group]>,
    /// Levels in order of preference.
    levels: Box<[Level]>,
    /// The overprovisioning factor in percent (140 for 1.4).
    factor: u64,
}

#[derive(Debug, Clone)]
struct Group {
    level: u32,
    weight: u64,
    total: u32,
}

#[derive(Debug, Clone)]
struct Level {
    name: String,
    total: u32,
    weighted: bool,
}

/// The part of a backend a request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subset {
    /// Every endpoint of a level.
    Level(u32),
    /// One locality's endpoints within a level.
    Group(u32),
}

impl Plan {
    /// The plan for `endpoints` seen from `caller`, or `None` when it
    /// would make no difference (one level, no weights): then the backend's
    /// balancer picks among all endpoints as it would without one.
    pub fn new(
        caller: Option<&Locality>,
        endpoints: &[PlanEndpoint<'_>],
        lb: &LocalityLb,
    ) -> Option<Self> {
        let caller = caller.filter(|c| !c.is_empty());
        let distribute = caller.and_then(|c| {
            lb.distribute
                .iter()
                .find(|d| locality_pattern_matches(&d.from, c))
        });
        let failover_to = caller.and_then(|c| {
            lb.failover
                .iter()
                .find(|f| f.from == c.region)
                .map(|f| f.to.as_str())
        });
        let by_distance = lb.prefer_local && distribute.is_none();
        let rank = |e: &PlanEndpoint<'_>| -> u32 {
            let Some(c) = caller.filter(|_| by_distance) else {
                return 0;
            };
            match e.locality {
                Some(l) => match c.distance(l) {
                    3 if failover_to == Some(l.region.as_str()) => 3,
                    3 => 4,
                    d => d,
                },
                None => 4,
            }
        };
        // Levels: distinct (priority, rank), in order.
        let mut keys: Vec<(u32, u32)> = endpoints.iter().map(|e| (e.priority, rank(e))).collect();
        let mut order = keys.clone();
        order.sort_unstable();
        order.dedup();
        let weighted = distribute.is_some() || !lb.weights.is_empty();
        if order.len() <= 1 && !weighted {
            return None;
        }
        let weights_by_key: Vec<(Locality, u64)> = lb
            .weights
            .iter()
            .filter_map(|(k, w)| Some((k.parse().ok()?, u64::from(*w))))
            .collect();
        // Groups: within a level, one per locality (or per distribute
        // pattern); without weights, one per level.
        let mut groups: Vec<Group> = Vec::new();
        // Found by key, not by a scan: a control plane may send as many
        // localities as endpoints.
        let mut group_keys: std::collections::HashMap<(u32, String), usize> =
            std::collections::HashMap::new();
        let mut group_of = Vec::with_capacity(endpoints.len());
        for (i, e) in endpoints.iter().enumerate() {
            let level = order.binary_search(&keys[i]).unwrap_or(0) as u32;
            let (key, weight) = match distribute {
                // The most specific pattern that covers the endpoint; its
                // share is split over the endpoints under it.
                Some(d) => {
                    let l = e.locality.cloned().unwrap_or_default();
                    d.to.iter()
                        .filter(|(p, _)| locality_pattern_matches(p, &l))
                        .max_by_key(|(p, _)| p.len())
                        .map_or((String::new(), 0), |(p, pct)| (p.clone(), u64::from(*pct)))
                }
                None if weighted => {
                    let l = e.locality.cloned().unwrap_or_default();
                    let w = weights_by_key
                        .iter()
                        .find(|(k, _)| *k == l)
                        .map_or(1, |(_, w)| *w);
                    (l.to_string(), w)
                }
                _ => (String::new(), 0),
            };
            let g = *group_keys.entry((level, key)).or_insert_with(|| {
                groups.push(Group {
                    level,
                    weight,
                    total: 0,
                });
                groups.len() - 1
            });
            groups[g].total += 1;
            group_of.push(g as u32);
        }
        keys.clear();
        let levels = order
            .iter()
            .map(|(priority, rank)| Level {
                name: if by_distance && caller.is_some() {
                    format!("p{priority}-{}", RANK_NAMES[*rank as usize])
                } else {
                    format!("p{priority}")
                },
                total: 0,
                weighted,
            })
            .collect::<Vec<_>>();
        let mut levels = levels.into_boxed_slice();
        for g in &groups {
            levels[g.level as usize].total += g.total;
        }
        Some(Self {
            group_of: group_of.into(),
            groups: groups.into(),
            levels,
            factor: (lb.overprovisioning.clamp(1.0, 10.0) * 100.0).round() as u64,
        })
    }

    /// The levels' names, in order (`p0-local`, `p0-zone`, `p1-region`, ...).
    pub fn level_names(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().map(|l| l.name.as_str())
    }

    /// The level of endpoint `i`.
    pub fn level_of(&self, i: usize) -> Option<u32> {
        let g = *self.group_of.get(i)?;
        Some(self.groups[g as usize].level)
    }

    /// Each level's share of requests in percent (they add up to 100, or
    /// all are 0 when no endpoint is available), given which endpoints
    /// are available.
    pub fn loads(&self, available: impl Fn(usize) -> bool) -> Vec<u32> {
        let healthy = self.healthy_groups(&available);
        let mut level_healthy = vec![0u32; self.levels.len()];
        for (g, h) in self.groups.iter().zip(&healthy) {
            level_healthy[g.level as usize] += h;
        }
        self.level_loads(&level_healthy)
    }

    fn healthy_groups(&self, available: &impl Fn(usize) -> bool) -> Vec<u32> {
        let mut healthy = vec![0u32; self.groups.len()];
        for (i, g) in self.group_of.iter().enumerate() {
            if available(i) {
                healthy[*g as usize] += 1;
            }
        }
        healthy
    }

    fn health(&self, healthy: u32, total: u32) -> u64 {
        if total == 0 {
            return 0;
        }
        (self.factor * u64::from(healthy) / u64::from(total)).min(100)
    }

    fn level_loads(&self, level_healthy: &[u32]) -> Vec<u32> {
        let health: Vec<u64> = self
            .levels
            .iter()
            .zip(level_healthy)
            .map(|(l, h)| self.health(*h, l.total))
            .collect();
        let normalized: u64 = health.iter().sum::<u64>().min(100);
        if normalized == 0 {
            return vec![0; health.len()];
        }
        let mut remaining = 100u64;
        let mut loads: Vec<u32> = health
            .iter()
            .map(|h| {
                let load = (h * 100 / normalized).min(remaining);
                remaining -= load;
                load as u32
            })
            .collect();
        // Rounding leaves a little over: the first level that can take it.
        if let Some(first) = health.iter().position(|h| *h > 0) {
            loads[first] += remaining as u32;
        }
        loads
    }

    /// The part of the backend a request goes to, for a uniform random
    /// `sample`; `None` when no endpoint is available.
    pub fn choose(&self, sample: u64, available: impl Fn(usize) -> bool) -> Option<Subset> {
        let healthy = self.healthy_groups(&available);
        let mut level_healthy = vec![0u32; self.levels.len()];
        for (g, h) in self.groups.iter().zip(&healthy) {
            level_healthy[g.level as usize] += h;
        }
        let loads = self.level_loads(&level_healthy);
        let level = pick_share(loads.iter().map(|l| u64::from(*l)), sample)? as u32;
        if !self.levels[level as usize].weighted {
            return Some(Subset::Level(level));
        }
        // A locality of the level, by weight times its own health.
        let shares = self.groups.iter().zip(&healthy).map(|(g, h)| {
            if g.level == level {
                g.weight * self.health(*h, g.total)
            } else {
                0
            }
        });
        let second = mix(sample ^ 0x9e37_79b9_7f4a_7c15);
        Some(match pick_share(shares, second) {
            Some(g) => Subset::Group(g as u32),
            None => Subset::Level(level),
        })
    }

    /// Whether endpoint `i` is in `subset`.
    pub fn contains(&self, subset: Subset, i: usize) -> bool {
        let Some(g) = self.group_of.get(i) else {
            return false;
        };
        match subset {
            Subset::Group(want) => *g == want,
            Subset::Level(l) => self.groups[*g as usize].level == l,
        }
    }
}

/// The index of a share chosen in proportion to `shares` by `sample`.
fn pick_share(shares: impl Iterator<Item = u64> + Clone, sample: u64) -> Option<usize> {
    let total: u64 = shares.clone().sum();
    if total == 0 {
        return None;
    }
    let mut x = ((u128::from(sample) * u128::from(total)) >> 64) as u64;
    for (i, s) in shares.enumerate() {
        if x < s {
            return Some(i);
        }
        x -= s;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LocalityDistribute, LocalityFailover};

    fn l(s: &str) -> Locality {
        s.parse().unwrap_or_default()
    }

    fn eps<'a>(ls: &'a [Locality], priorities: &[u32]) -> Vec<PlanEndpoint<'a>> {
        ls.iter()
            .zip(priorities.iter().chain(std::iter::repeat(&0)))
            .map(|(l, p)| PlanEndpoint {
                locality: Some(l),
                priority: *p,
                weight: 1,
            })
            .collect()
    }

    /// Evenly spread samples choose a level within rounding of its exact
    /// share; the locality within it is chosen by a mixed sample, so its
    /// share is as good as random (a standard deviation of about 40 in
    /// 10,000: `within` 160 never fails by chance, and catches a share off
    /// by 2%).
    fn near(got: u64, want: u64) {
        within(got, want, 4);
    }

    fn within(got: u64, want: u64, tolerance: u64) {
        assert!(got.abs_diff(want) <= tolerance, "{got} is not {want}");
    }

    /// Requests per endpoint over `n` evenly spread samples, the level's
    /// endpoints taken in turn.
    fn spread(plan: &Plan, n: u64, available: impl Fn(usize) -> bool + Copy) -> Vec<u64> {
        let mut per_subset = std::collections::HashMap::new();
        for k in 0..n {
            let s = (u64::MAX / n) * k;
            if let Some(sub) = plan.choose(s, available) {
                *per_subset.entry(sub).or_insert(0u64) += 1;
            }
        }
        let mut counts = vec![0u64; plan.group_of.len()];
        for (sub, c) in per_subset {
            let members: Vec<usize> = (0..counts.len())
                .filter(|i| plan.contains(sub, *i) && available(*i))
                .collect();
            for m in &members {
                counts[*m] += c / members.len() as u64;
            }
        }
        counts
    }

    #[test]
    fn three_zones_fail_over_as_the_factor_says() {
        let zones = [
            l("r/a"),
            l("r/a"),
            l("r/a"),
            l("r/b"),
            l("r/b"),
            l("r/b"),
            l("s/c"),
            l("s/c"),
            l("s/c"),
        ];
        let e = eps(&zones, &[]);
        let plan = Plan::new(Some(&l("r/a")), &e, &LocalityLb::default()).unwrap();
        assert_eq!(
            plan.level_names().collect::<Vec<_>>(),
            ["p0-local", "p0-region", "p0-remote"]
        );
        let down = |n: usize| move |i: usize| i >= n;
        assert_eq!(plan.loads(down(0)), [100, 0, 0]);
        assert_eq!(plan.loads(down(1)), [93, 7, 0]);
        assert_eq!(plan.loads(down(2)), [46, 54, 0]);
        assert_eq!(plan.loads(down(3)), [0, 100, 0]);
        assert_eq!(plan.loads(down(4)), [0, 93, 7]);
        // The whole zone a and two of b: b gets 46 of 46+100 scaled up to
        // fill 100: 46 and the rest to c.
        assert_eq!(plan.loads(down(5)), [0, 46, 54]);
        assert_eq!(plan.loads(|_| false), [0, 0, 0]);
        assert_eq!(plan.choose(0, |_| false), None);
        // Health below 100 in all levels: scaled up to fill it.
        assert_eq!(plan.loads(|i| i == 0 || i == 3), [50, 50, 0]);

        let counts = spread(&plan, 10_000, down(1));
        let local: u64 = counts[..3].iter().sum();
        near(local, 9_300);
        assert_eq!(counts[0], 0, "an unavailable endpoint takes nothing");
    }

    #[test]
    fn priorities_come_before_distance_and_failover_regions_before_the_rest() {
        let ls = [l("r/a"), l("r/b"), l("s/x"), l("t/y"), l("r/a")];
        let e = eps(&ls, &[0, 0, 0, 0, 1]);
        let lb = LocalityLb {
            failover: vec![LocalityFailover {
                from: "r".into(),
                to: "t".into(),
            }],
            ..LocalityLb::default()
        };
        let plan = Plan::new(Some(&l("r/a")), &e, &lb).unwrap();
        assert_eq!(
            plan.level_names().collect::<Vec<_>>(),
            [
                "p0-local",
                "p0-region",
                "p0-failover",
                "p0-remote",
                "p1-local"
            ]
        );
        assert_eq!(plan.level_of(3), Some(2), "t is r's failover region");
        assert_eq!(plan.level_of(4), Some(4));
    }

    #[test]
    fn without_a_caller_locality_or_preference_only_priorities_rank() {
        let ls = [l("r/a"), l("r/b")];
        let e = eps(&ls, &[]);
        assert!(Plan::new(None, &e, &LocalityLb::default()).is_none());
        let off = LocalityLb {
            prefer_local: false,
            ..LocalityLb::default()
        };
        assert!(Plan::new(Some(&l("r/a")), &e, &off).is_none());
        let e = eps(&ls, &[0, 1]);
        let plan = Plan::new(Some(&l("r/b")), &e, &off).unwrap();
        assert_eq!(plan.level_names().collect::<Vec<_>>(), ["p0", "p1"]);
    }

    #[test]
    fn locality_weights_share_a_level_and_follow_health() {
        let ls = [l("r/a"), l("r/b"), l("r/b")];
        let e = eps(&ls, &[]);
        let lb = LocalityLb {
            prefer_local: false,
            weights: [("r/a".to_owned(), 3), ("r/b".to_owned(), 1)].into(),
            ..LocalityLb::default()
        };
        let plan = Plan::new(Some(&l("r/a")), &e, &lb).unwrap();
        let counts = spread(&plan, 10_000, |_| true);
        within(counts[0], 7_500, 160);
        // One of r/b's two down: its weight times min(1, 1.4 x 1/2) = 0.7.
        let counts = spread(&plan, 10_000, |i| i != 2);
        let a = counts[0] as f64 / 10_000.0;
        assert!((a - 3.0 / 3.7).abs() < 0.01, "{a}");
    }

    #[test]
    fn distribute_sends_fixed_shares_from_the_callers_locality() {
        let ls = [l("r/a"), l("r/a"), l("r/b"), l("s/c")];
        let e = eps(&ls, &[]);
        let lb = LocalityLb {
            distribute: vec![LocalityDistribute {
                from: "r/a/*".into(),
                to: [("r/a/*".to_owned(), 80), ("r/b/*".to_owned(), 20)].into(),
            }],
            ..LocalityLb::default()
        };
        let plan = Plan::new(Some(&l("r/a")), &e, &lb).unwrap();
        let counts = spread(&plan, 10_000, |_| true);
        for (got, want) in counts.iter().zip([4_000, 4_000, 2_000, 0]) {
            within(*got, want, 160);
        }
        // A caller the rule does not cover ranks by distance.
        let plan = Plan::new(Some(&l("s/c")), &e, &lb).unwrap();
        assert_eq!(plan.loads(|_| true), [100, 0]);
    }
}
