//! Rate and ETA from recent throughput.
//!
//! An exponentially weighted moving average of the rate, weighted by time (a sample's weight
//! is `1 - e^(-dt/TAU)`), so the estimate follows the last few seconds, not the whole run: a
//! backup that reads fast small files and then slow large ones shows the slow rate. Nothing is
//! estimated until `WARMUP` of data is in, so a sub-second job never shows an ETA and a long
//! one never starts at "0 s" or "2 h". A stall (no progress) decays the rate, so the ETA grows
//! instead of freezing. Time is passed in (a `Duration` since any fixed start), so the tests
//! drive it with a synthetic clock.

use std::time::Duration;

/// Time constant of the average: a change of rate shows after about this long.
const TAU: f64 = 3.0;
/// Data needed before a first estimate.
const WARMUP: f64 = 1.0;
/// Samples closer than this are merged into the next one (their rate would be noise).
const MIN_STEP: f64 = 0.05;

#[derive(Debug, Default, Clone)]
pub(crate) struct Estimator {
    /// First sample: (seconds, done).
    first: Option<(f64, u64)>,
    /// Last sample folded into the average.
    last: Option<(f64, u64)>,
    /// Units per second, once warmed up.
    rate: Option<f64>,
}

impl Estimator {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records that `done` units (cumulative) were done at `now`.
    pub(crate) fn update(&mut self, now: Duration, done: u64) {
        let t = now.as_secs_f64();
        let Some((t0, d0)) = self.first else {
            self.first = Some((t, done));
            self.last = Some((t, done));
            return;
        };
        let (lt, ld) = self.last.unwrap_or((t0, d0));
        let done = done.max(ld);
        match self.rate {
            None => {
                if t - t0 >= WARMUP && done > d0 {
                    self.rate = Some((done - d0) as f64 / (t - t0));
                    self.last = Some((t, done));
                }
            }
            Some(rate) => {
                let dt = t - lt;
                if dt >= MIN_STEP {
                    let instant = (done - ld) as f64 / dt;
                    let alpha = 1.0 - (-dt / TAU).exp();
                    self.rate = Some(rate + alpha * (instant - rate));
                    self.last = Some((t, done));
                }
            }
        }
    }

    /// Units per second as of `now`; `None` until enough data. Time without a sample since the
    /// last one counts as no progress.
    pub(crate) fn rate(&self, now: Duration) -> Option<f64> {
        let rate = self.rate?;
        let (lt, _) = self.last?;
        let gap = (now.as_secs_f64() - lt).max(0.0);
        Some(rate * (-gap / TAU).exp())
    }

    /// Time left to reach `total` as of `now`: `None` until enough data, when done, or when
    /// the rate has decayed to nothing (a stall). Never under one second while work remains.
    pub(crate) fn eta(&self, now: Duration, total: u64) -> Option<Duration> {
        let (_, done) = self.last?;
        let remaining = total.checked_sub(done).filter(|r| *r > 0)?;
        let rate = self.rate(now).filter(|r| *r >= 1e-3)?;
        let secs = (remaining as f64 / rate).clamp(1.0, 100.0 * 24.0 * 3600.0);
        Some(Duration::from_secs_f64(secs))
    }
}

/// `0.4 s`, `3.8 s`, `42 s`, `12 min 05 s`, `2 h 03 min`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        let s = s.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (s / 60.0).round() as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// An ETA as shown: whole seconds rounded up (never `0 s` while work remains).
pub(crate) fn human_eta(d: Duration) -> String {
    let secs = d.as_secs_f64().ceil().max(1.0);
    if secs < 60.0 {
        format!("{secs:.0} s")
    } else {
        human_duration(Duration::from_secs_f64(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `rate` units/s from `from` ms to `to` ms in 100 ms steps, starting at `done`;
    /// returns the new `done`.
    fn feed(e: &mut Estimator, from: u64, to: u64, rate: u64, mut done: u64) -> u64 {
        let mut t = from;
        while t < to {
            t += 100;
            done += rate / 10;
            e.update(ms(t), done);
        }
        done
    }

    #[test]
    fn no_estimate_before_a_second_of_data() {
        let mut e = Estimator::new();
        e.update(ms(0), 0);
        let done = feed(&mut e, 0, 900, 50 * MB, 0);
        assert_eq!(e.rate(ms(900)), None);
        assert_eq!(e.eta(ms(900), done * 100), None);
        feed(&mut e, 900, 1100, 50 * MB, done);
        assert!(e.rate(ms(1100)).is_some());
    }

    #[test]
    fn a_sub_second_job_never_shows_an_eta() {
        let mut e = Estimator::new();
        e.update(ms(0), 0);
        let total = 3 * MB;
        for (t, d) in [(100, MB), (300, 2 * MB), (600, total)] {
            e.update(ms(t), d);
            assert_eq!(e.eta(ms(t), total), None, "at {t} ms");
        }
    }

    #[test]
    fn a_steady_rate_gives_the_rate_and_an_eta_from_what_remains() {
        let mut e = Estimator::new();
        e.update(ms(0), 0);
        let done = feed(&mut e, 0, 10_000, 10 * MB, 0);
        let rate = e.rate(ms(10_000)).unwrap();
        assert!((rate / (10 * MB) as f64 - 1.0).abs() < 0.01, "{rate}");
        // 100 MB done, 400 MB left at 10 MB/s: 40 s.
        let eta = e.eta(ms(10_000), done + 400 * MB).unwrap().as_secs_f64();
        assert!((eta - 40.0).abs() < 1.0, "{eta}");
    }

    #[test]
    fn the_rate_follows_recent_throughput_not_the_average() {
        let mut e = Estimator::new();
        e.update(ms(0), 0);
        let done = feed(&mut e, 0, 20_000, 100 * MB, 0);
        let done = feed(&mut e, 20_000, 50_000, MB, done);
        let rate = e.rate(ms(50_000)).unwrap();
        // The average since the start is 40.6 MB/s; the last 30 s ran at 1 MB/s.
        assert!(rate < 1.05 * MB as f64 && rate > 0.95 * MB as f64, "{rate}");
        let eta = e.eta(ms(50_000), done + 60 * MB).unwrap().as_secs_f64();
        assert!((50.0..70.0).contains(&eta), "{eta}");
    }

    #[test]
    fn a_stall_makes_the_eta_grow_instead_of_freezing() {
        let mut e = Estimator::new();
        e.update(ms(0), 0);
        let done = feed(&mut e, 0, 5_000, 10 * MB, 0);
        let total = done + 100 * MB;
        let before = e.eta(ms(5_000), total).unwrap();
        let later = e.eta(ms(15_000), total).unwrap();
        assert!(later > before * 10, "{before:?} -> {later:?}");
        assert_eq!(e.eta(ms(200_000), total), None, "a long stall has no ETA");
    }

    #[test]
    fn an_eta_is_never_zero_while_work_remains_and_absent_when_done() {
        let mut e = Estimator::new();
        e.update(ms(0), 0);
        let done = feed(&mut e, 0, 2_000, 100 * MB, 0);
        let eta = e.eta(ms(2_000), done + 1).unwrap();
        assert_eq!(eta, Duration::from_secs(1));
        assert_eq!(human_eta(Duration::from_millis(10)), "1 s");
        assert_eq!(e.eta(ms(2_000), done), None);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_millis(380)), "0.4 s");
        assert_eq!(human_duration(Duration::from_secs(42)), "42 s");
        assert_eq!(human_duration(Duration::from_secs(725)), "12 min 05 s");
        assert_eq!(human_duration(Duration::from_secs(7380)), "2 h 03 min");
        assert_eq!(human_eta(Duration::from_millis(41_200)), "42 s");
    }
}
