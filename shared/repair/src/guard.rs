//! The blast-radius guard: how many contracts one run may change without an
//! operator's approval. A mass difference between the fleet and Skeelo usually means a
//! wrong configuration (another partner account, a base URL pointing at a test
//! system), not drift, and "repairing" it would rewrite the whole base.

/// The guard's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guard {
    /// The most of the compared base one run may change, from 0 to 1.
    pub max_share: f64,
    /// The most contracts one run may change, whatever the base.
    pub max_count: u64,
}

impl Default for Guard {
    /// 5 % of the base, and never more than 500 contracts.
    fn default() -> Guard {
        Guard {
            max_share: 0.05,
            max_count: 500,
        }
    }
}

impl Guard {
    /// The most contracts a run that compared `base` may change: the share of the base
    /// rounded up (so one difference in a small base is always repaired), capped by the
    /// count.
    pub fn allows(&self, base: u64) -> u64 {
        let share = (self.max_share.clamp(0.0, 1.0) * base as f64).ceil() as u64;
        share.max(1).min(self.max_count).min(base.max(1))
    }

    /// Checks the limits an operator gave: a share in percent from 0 to 100.
    pub fn from_percent(percent: f64, max_count: u64) -> Result<Guard, String> {
        if !(0.0..=100.0).contains(&percent) || percent.is_nan() {
            return Err(format!(
                "the guard's share is a percentage from 0 to 100, not {percent}"
            ));
        }
        Ok(Guard {
            max_share: percent / 100.0,
            max_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_rounded_up_and_capped_by_the_count() {
        let g = Guard::default();
        assert_eq!(g.allows(0), 1);
        assert_eq!(g.allows(10), 1);
        assert_eq!(g.allows(20), 1);
        assert_eq!(g.allows(21), 2);
        assert_eq!(g.allows(1000), 50);
        assert_eq!(g.allows(100_000), 500, "the count caps a large base");
        let tight = Guard {
            max_share: 0.05,
            max_count: 3,
        };
        assert_eq!(tight.allows(1000), 3);
    }

    #[test]
    fn a_share_outside_0_to_100_percent_is_refused() {
        assert!(Guard::from_percent(5.0, 10).is_ok());
        assert!(Guard::from_percent(-1.0, 10).is_err());
        assert!(Guard::from_percent(101.0, 10).is_err());
        assert!(Guard::from_percent(f64::NAN, 10).is_err());
        let all = Guard::from_percent(100.0, u64::MAX).expect("valid");
        assert_eq!(all.allows(7), 7);
    }
}
