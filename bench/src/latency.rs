//! Latency histograms in microseconds, and their transfer between processes.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest latency the histograms resolve; anything slower is clamped to it, which
/// only matters for runs that fail anyway.
const MAX_MICROS: u64 = 120_000_000;

/// An empty histogram: 1 µs to 120 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failing here is a programming
    // error, not a runtime condition.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid")
}

/// Records one latency given in nanoseconds.
pub fn record_nanos(histogram: &mut Histogram<u64>, nanos: u64) {
    histogram.saturating_record((nanos / 1000).clamp(1, MAX_MICROS));
}

/// Non-empty buckets as `(value, count)` pairs: small enough for a JSON line, and exact
/// at the histogram's own resolution when recorded back.
pub fn to_buckets(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds buckets from [`to_buckets`] into `histogram`.
pub fn add_buckets(histogram: &mut Histogram<u64>, buckets: &[(u64, u64)]) {
    for &(value, count) in buckets {
        // saturating_record_n clamps values outside the bounds instead of failing: the
        // buckets come from another process and must not abort the run.
        histogram.saturating_record_n(value.clamp(1, MAX_MICROS), count);
    }
}

/// The percentiles a report prints, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Summary {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// `1234` µs as `1.23 ms`.
pub fn format_micros(micros: u64) -> String {
    if micros >= 10_000 {
        format!("{:.0} ms", micros as f64 / 1000.0)
    } else {
        format!("{:.2} ms", micros as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_keeps_percentiles() {
        let mut original = new_histogram();
        for i in 1..=10_000u64 {
            record_nanos(&mut original, i * 1_000);
        }
        let mut copy = new_histogram();
        add_buckets(&mut copy, &to_buckets(&original));
        assert_eq!(Summary::of(&original), Summary::of(&copy));
        let summary = Summary::of(&copy);
        assert_eq!(summary.count, 10_000);
        assert!((4_990..=5_010).contains(&summary.p50_us));
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let mut histogram = new_histogram();
        record_nanos(&mut histogram, 0);
        record_nanos(&mut histogram, u64::MAX);
        add_buckets(&mut histogram, &[(0, 1), (u64::MAX, 1)]);
        assert_eq!(histogram.len(), 4);
    }
}
