//! The operations that change a device's state, one file each, each owning its whole
//! effect: the commit, the events, the delta, the log line.
//!
//! Two rules hold for all of them:
//! - **Commit order.** Operations on one device take its [`Sequencer`] turn, so the events
//!   of two concurrent updates are emitted in the order of their commits (version 5 before
//!   version 6), on the notify stream and in notification.log alike.
//! - **The effect happens.** An operation runs as a task of its own; the caller awaits its
//!   outcome but cannot cut it short. A REST client that hangs up after sending an update
//!   does not leave a stored change without its event or its delta.
//!
//! ```text
//! REST POST /devices/:id/shadow ─┐
//! device Dash.Shadow.Update ─────┼─> shadow_update::run ─> store commit ─> `updated` ─> delta
//! device Shadow.Delta result ────┘
//! ```

pub mod call;
pub mod change;
pub mod connect;
pub mod create;
pub mod delete;
pub mod device_info;
pub mod disconnect;
pub mod pair;
pub mod quarantine;
pub mod release;
pub mod shadow_update;
pub mod unpair;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::store::StoreError;

/// Runs an operation as a task of its own and waits for its outcome: the caller going
/// away (a REST client hanging up drops its handler) does not cut the operation short.
pub async fn carry_out<T, F>(operation: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    tokio::spawn(operation)
        .await
        .map_err(|e| StoreError::Backend(format!("an operation failed: {e}")))?
}

/// One turn at a time per device (see the module docs). Entries go away with their last
/// holder, so idle devices cost nothing.
#[derive(Debug, Default)]
pub struct Sequencer {
    turns: Mutex<HashMap<Arc<str>, Weak<tokio::sync::Mutex<()>>>>,
}

impl Sequencer {
    /// Waits for device `id`'s turn; the turn lasts as long as the guard.
    pub async fn turn(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut turns = self.turns.lock();
            match turns.get(id).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if turns.len() > 64 && turns.len().is_power_of_two() {
                        turns.retain(|_, weak| weak.strong_count() > 0);
                    }
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    turns.insert(id.into(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_turn_per_device_and_devices_do_not_wait_for_each_other() {
        let sequencer = Arc::new(Sequencer::default());
        let first = sequencer.turn("a").await;
        // Another device goes at once.
        let other = tokio::time::timeout(Duration::from_secs(5), sequencer.turn("b")).await;
        assert!(other.is_ok());
        // The same device waits until the first turn ends.
        let waiting = {
            let sequencer = sequencer.clone();
            tokio::spawn(async move { sequencer.turn("a").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the second turn comes")
            .expect("task");
    }
}
