//! Devices that misbehave are held off (PROTOCOL §1, §11): a device that sends more than its
//! share of messages or bytes, or that connects again and again, is quarantined for a
//! cool-down. Its socket is closed, its connections are refused with 429 and a
//! `Retry-After` until the cool-down ends or an operator releases it, and `quarantined` /
//! `released` events say so.
//!
//! Each session keeps two token buckets ([`Budget`]): messages and bytes, refilled at the
//! configured rate up to a burst. Connects are counted per device over the last minute.
//! Quarantines live in memory: a restarted server forgives.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use herd_config::ServerSettings;
use parking_lot::Mutex;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl Bucket {
    /// Full, holding `burst`, refilled at `per_second`.
    pub fn new(per_second: f64, burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            burst,
            per_second,
            last: now,
        }
    }

    /// Takes `amount`; false when the bucket cannot give it.
    pub fn take(&mut self, amount: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

/// What one device session may send.
#[derive(Debug, Clone)]
pub struct Budget {
    messages: Bucket,
    bytes: Bucket,
}

impl Budget {
    /// The settings' limits, starting full.
    pub fn new(settings: &ServerSettings) -> Budget {
        let now = Instant::now();
        Budget {
            messages: Bucket::new(
                settings.device_messages_per_s,
                settings.device_message_burst,
                now,
            ),
            bytes: Bucket::new(settings.device_bytes_per_s, settings.device_byte_burst, now),
        }
    }

    /// Accounts for `len` bytes received; the reason when it is over the limit.
    pub fn spend_bytes(&mut self, len: usize) -> Result<(), String> {
        if self.bytes.take(len as f64, Instant::now()) {
            Ok(())
        } else {
            Err("sends more bytes than allowed".into())
        }
    }

    /// Accounts for one message the device sent of its own accord (a request, a
    /// notification, a reply nobody asked for); replies to the server's own requests are
    /// the server's doing and are not counted. The reason when it is over the limit.
    pub fn spend_message(&mut self) -> Result<(), String> {
        if self.messages.take(1.0, Instant::now()) {
            Ok(())
        } else {
            Err("sends more messages than allowed".into())
        }
    }
}

/// Why and until when a device is held off.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantine {
    pub reason: String,
    pub until: Instant,
    /// Unix seconds of `until`, for people and events.
    pub until_unix: f64,
}

/// Quarantines and connect counts, for all devices.
#[derive(Debug, Default)]
pub struct Guard {
    held: Mutex<HashMap<String, Quarantine>>,
    connects: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Guard {
    /// The quarantine of device `id`, if one is in force.
    pub fn held(&self, id: &str) -> Option<Quarantine> {
        let mut held = self.held.lock();
        match held.get(id) {
            Some(q) if q.until > Instant::now() => Some(q.clone()),
            Some(_) => {
                held.remove(id);
                None
            }
            None => None,
        }
    }

    /// Holds device `id` off for `cool_down`; returns the quarantine.
    pub fn quarantine(&self, id: &str, reason: &str, cool_down: Duration) -> Quarantine {
        let quarantine = Quarantine {
            reason: reason.to_string(),
            until: Instant::now() + cool_down,
            until_unix: crate::clock::now() + cool_down.as_secs_f64(),
        };
        self.held.lock().insert(id.to_string(), quarantine.clone());
        quarantine
    }

    /// Lifts the quarantine of device `id`; false when there was none.
    pub fn release(&self, id: &str) -> bool {
        self.connects.lock().remove(id);
        self.held
            .lock()
            .remove(id)
            .is_some_and(|q| q.until > Instant::now())
    }

    /// Counts a connect of device `id`; true when it is over `per_minute` in the last
    /// minute (a flapping device).
    pub fn note_connect(&self, id: &str, per_minute: u32) -> bool {
        let now = Instant::now();
        let mut connects = self.connects.lock();
        if connects.len() > 100_000 {
            // Forget devices that have been quiet for a minute.
            connects.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
            });
        }
        let times = connects.entry(id.to_string()).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            times.pop_front();
        }
        times.push_back(now);
        times.len() > per_minute as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(10.0, 5.0, start);
        for _ in 0..5 {
            assert!(bucket.take(1.0, start));
        }
        assert!(!bucket.take(1.0, start), "the burst is spent");
        assert!(
            bucket.take(1.0, start + Duration::from_millis(100)),
            "refilled at 10/s"
        );
        assert!(!bucket.take(1.0, start + Duration::from_millis(100)));
        assert!(
            bucket.take(5.0, start + Duration::from_secs(10)),
            "never beyond the burst"
        );
        assert!(!bucket.take(1.0, start + Duration::from_secs(10)));
    }

    #[test]
    fn quarantines_end_and_flapping_is_counted_per_minute() {
        let guard = Guard::default();
        assert!(guard.held("d").is_none());
        guard.quarantine("d", "floods", Duration::from_secs(60));
        assert_eq!(
            guard.held("d").map(|q| q.reason),
            Some("floods".to_string())
        );
        assert!(guard.release("d"));
        assert!(guard.held("d").is_none());
        guard.quarantine("e", "floods", Duration::ZERO);
        assert!(guard.held("e").is_none(), "a quarantine that ended is gone");
        for _ in 0..3 {
            assert!(!guard.note_connect("f", 3));
        }
        assert!(
            guard.note_connect("f", 3),
            "the fourth connect in a minute flaps"
        );
        assert!(!guard.note_connect("g", 3), "others are counted apart");
    }
}
