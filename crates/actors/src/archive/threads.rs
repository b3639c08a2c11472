//! How many worker threads an archive operation runs: the one place where a requested count
//! (0 = the machine's available parallelism) becomes a number.

/// Most worker threads any archive operation starts, whatever was requested.
pub(crate) const MAX_THREADS: usize = 256;

/// The worker thread count for a request of `requested` threads: `requested` itself, or the
/// available parallelism when it is 0 (1 when that cannot be determined), always within
/// `1..=MAX_THREADS`.
pub(crate) fn resolve_threads(requested: usize) -> usize {
    let n = if requested == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        requested
    };
    n.clamp(1, MAX_THREADS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_available_parallelism() {
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(resolve_threads(0), available.clamp(1, MAX_THREADS));
        assert!(resolve_threads(0) >= 1);
    }

    #[test]
    fn explicit_counts_are_kept_within_bounds() {
        assert_eq!(resolve_threads(1), 1);
        assert_eq!(resolve_threads(3), 3);
        assert_eq!(resolve_threads(MAX_THREADS), MAX_THREADS);
        assert_eq!(resolve_threads(MAX_THREADS + 1), MAX_THREADS);
        assert_eq!(resolve_threads(usize::MAX), MAX_THREADS);
    }
}
