//! Wake-ups for tasks that wait for a device to change: an OTA job waiting for its device
//! to come back running the new image, a rollout waiting for an offline device.
//!
//! Every `updated` event of a device (connect, disconnect, device info, shadow change)
//! notifies its waiters; they then read the device's state themselves. A waiter arms its
//! wake-up before it looks, so a change between the look and the wait is never missed.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Waiters by device id; entries go away with their last waiter.
#[derive(Debug, Default)]
pub struct DeviceWatch {
    waiters: Mutex<HashMap<Arc<str>, Weak<Notify>>>,
}

impl DeviceWatch {
    /// The wake-up of device `id`, shared by all its waiters.
    pub fn subscribe(&self, id: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock();
        if let Some(notify) = waiters.get(id).and_then(Weak::upgrade) {
            return notify;
        }
        if waiters.len() > 64 && waiters.len().is_power_of_two() {
            waiters.retain(|_, weak| weak.strong_count() > 0);
        }
        let notify = Arc::new(Notify::new());
        waiters.insert(id.into(), Arc::downgrade(&notify));
        notify
    }

    /// Wakes everyone waiting on device `id`.
    pub fn notify(&self, id: &str) {
        let notify = self.waiters.lock().get(id).and_then(Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_armed_waiter_sees_a_change_made_before_it_waits() {
        let watch = DeviceWatch::default();
        let notify = watch.subscribe("d1");
        {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            watch.notify("d1");
            watch.notify("other");
            tokio::time::timeout(Duration::from_secs(5), notified)
                .await
                .expect("woken");
        }
        drop(notify);
        // Nobody waits any more: notifying costs nothing and keeps nothing.
        watch.notify("d1");
        assert!(watch
            .waiters
            .lock()
            .get("d1")
            .and_then(Weak::upgrade)
            .is_none());
    }
}
