//! What an operator watches, per minute, for the last hour: sagas completed,
//! compensated and stuck, and failed step calls. The dashboard draws it as a trend;
//! `/metrics` has the all-time counters.
//!
//! Counted in this process, in memory (a restart starts a new hour): a bounded ring
//! of 60 minutes, updated where the saga driver already counts its metrics, so the
//! hot path pays one uncontended lock per saga end or failed call.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Completed,
    Compensated,
    Stuck,
    /// A step or compensation call that failed (refused, or failed for now).
    StepFailed,
}

/// Minutes kept.
const MINUTES: usize = 60;

/// The counts of the last hour, one per minute.
#[derive(Debug, Default)]
pub struct Rates {
    /// (unix minute, counts by [`Rate`]), oldest first, at most [`MINUTES`].
    minutes: Mutex<VecDeque<(i64, [u64; 4])>>,
}

/// The last hour, minute by minute (minutes with nothing counted are zeros).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LastHour {
    /// Unix ms of the start of each minute, oldest first.
    pub minutes: Vec<i64>,
    pub completed: Vec<u64>,
    pub compensated: Vec<u64>,
    pub stuck: Vec<u64>,
    pub step_failures: Vec<u64>,
}

/// The process-wide counts.
pub fn rates() -> &'static Rates {
    static RATES: OnceLock<Rates> = OnceLock::new();
    RATES.get_or_init(Rates::default)
}

impl Rates {
    /// Counts one `rate` at `at` (unix ms).
    pub fn count(&self, rate: Rate, at: i64) {
        let minute = at.div_euclid(60_000);
        let mut minutes = self.minutes.lock().expect("rates mutex poisoned");
        match minutes.iter_mut().rev().find(|(m, _)| *m == minute) {
            Some((_, counts)) => counts[rate as usize] += 1,
            None => {
                let mut counts = [0; 4];
                counts[rate as usize] = 1;
                minutes.push_back((minute, counts));
                minutes.make_contiguous().sort_by_key(|(m, _)| *m);
                while minutes.len() > MINUTES {
                    minutes.pop_front();
                }
            }
        }
    }

    /// The 60 minutes up to `now` (unix ms).
    pub fn last_hour(&self, now: i64) -> LastHour {
        let current = now.div_euclid(60_000);
        let minutes = self.minutes.lock().expect("rates mutex poisoned");
        let mut hour = LastHour {
            minutes: Vec::with_capacity(MINUTES),
            completed: Vec::with_capacity(MINUTES),
            compensated: Vec::with_capacity(MINUTES),
            stuck: Vec::with_capacity(MINUTES),
            step_failures: Vec::with_capacity(MINUTES),
        };
        for minute in current - MINUTES as i64 + 1..=current {
            let counts = minutes.iter().find(|(m, _)| *m == minute).map_or([0; 4], |(_, c)| *c);
            hour.minutes.push(minute * 60_000);
            hour.completed.push(counts[Rate::Completed as usize]);
            hour.compensated.push(counts[Rate::Compensated as usize]);
            hour.stuck.push(counts[Rate::Stuck as usize]);
            hour.step_failures.push(counts[Rate::StepFailed as usize]);
        }
        hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_minute_and_the_hour_rolls_on() {
        let rates = Rates::default();
        let minute = 60_000;
        rates.count(Rate::Completed, 10 * minute + 5);
        rates.count(Rate::Completed, 10 * minute + 59_999);
        rates.count(Rate::StepFailed, 12 * minute);
        let hour = rates.last_hour(12 * minute + 30_000);
        assert_eq!(hour.minutes.len(), 60);
        assert_eq!(*hour.minutes.last().unwrap(), 12 * minute);
        assert_eq!(&hour.completed[57..], &[2, 0, 0]);
        assert_eq!(&hour.step_failures[57..], &[0, 0, 1]);

        rates.count(Rate::Stuck, 200 * minute);
        let later = rates.last_hour(200 * minute);
        assert_eq!(later.completed.iter().sum::<u64>(), 0, "an hour later, minute 10 is gone");
        assert_eq!(*later.stuck.last().unwrap(), 1);
        assert!(rates.minutes.lock().unwrap().len() <= MINUTES);
    }
}
