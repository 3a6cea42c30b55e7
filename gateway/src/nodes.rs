//! Which Herd device stands for which node, kept in `nodes.json` in the gateway's data
//! directory so a restarted gateway connects the same devices instead of creating new ones.
//!
//! The file is rewritten whole through a temporary file, fsync and rename, so a crash
//! leaves the old or the new map, never half of one. A node seen for the first time gets
//! a device created through the REST API with the gateway's key (`POST /devices`, named
//! after the node); the token the server returns once is what the gateway connects with.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use herd_client::{Client, NewDevice};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::topics::NodeKey;

/// The device of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub token: String,
}

/// The map and its file.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    map: Mutex<BTreeMap<String, Entry>>,
    max_nodes: usize,
}

impl Registry {
    /// Reads `nodes.json` in `dir` (an absent file is an empty map; an unreadable one is an
    /// error, never silently replaced).
    pub fn open(dir: &Path, max_nodes: usize) -> anyhow::Result<Registry> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("nodes.json");
        let map = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a node map", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Registry {
            path,
            map: Mutex::new(map),
            max_nodes,
        })
    }

    /// The device of `node`, created on first sight.
    pub async fn ensure(&self, client: &Client, node: &NodeKey) -> anyhow::Result<Entry> {
        let mut map = self.map.lock().await;
        let key = node.to_string();
        if let Some(entry) = map.get(&key) {
            return Ok(entry.clone());
        }
        anyhow::ensure!(
            map.len() < self.max_nodes,
            "already {} nodes; {node} gets no device (raise --max-nodes)",
            map.len()
        );
        let device = client
            .create_device(&NewDevice {
                name: Some(node.node.clone()),
                id: None,
            })
            .await
            .with_context(|| format!("cannot create a device for {node}"))?;
        let token = device
            .token
            .with_context(|| format!("the server gave no token for {node}'s device"))?;
        let entry = Entry {
            id: device.id,
            token,
        };
        map.insert(key, entry.clone());
        save(&self.path, &map)?;
        tracing::info!(%node, device = %entry.id, "new node, device created");
        Ok(entry)
    }

    /// Forgets a node whose device is gone (its token refused); the next sight creates a
    /// new device.
    pub async fn forget(&self, node: &NodeKey) -> anyhow::Result<()> {
        let mut map = self.map.lock().await;
        if map.remove(&node.to_string()).is_some() {
            save(&self.path, &map)?;
        }
        Ok(())
    }

    /// How many nodes have devices.
    pub async fn len(&self) -> usize {
        self.map.lock().await.len()
    }

    /// Whether no node has a device yet.
    pub async fn is_empty(&self) -> bool {
        self.map.lock().await.is_empty()
    }
}

fn save(path: &Path, map: &BTreeMap<String, Entry>) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(map)?;
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_map_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nodes.json"), b"{\"pyaiot/n1\": {\"id\": ").unwrap();
        let error = Registry::open(dir.path(), 10).unwrap_err();
        assert!(format!("{error:#}").contains("not a node map"), "{error:#}");
        // The file is left for the operator to look at.
        assert!(dir.path().join("nodes.json").exists());
    }

    #[test]
    fn the_map_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = BTreeMap::new();
        map.insert(
            "herd/lamp".to_string(),
            Entry {
                id: "d1".into(),
                token: "t1".into(),
            },
        );
        save(&dir.path().join("nodes.json"), &map).unwrap();
        let registry = Registry::open(dir.path(), 10).unwrap();
        assert_eq!(registry.map.try_lock().unwrap().clone(), map);
        assert!(!dir.path().join("nodes.json.tmp").exists());
    }
}
