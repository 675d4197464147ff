//! Atomic checkpoints: a projection's state and the offsets it has applied, in one file,
//! written to a temporary file, fsynced, renamed over the old one and the directory
//! fsynced. A crash at any instant leaves either the old or the new checkpoint, never a mix,
//! so no record is applied twice or skipped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const FORMAT: &str = "fleetledger.checkpoint.v1";

/// What a checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint<S> {
    /// Always `fleetledger.checkpoint.v1`.
    pub format: String,
    /// The projection's name.
    pub projection: String,
    /// The history topic it was built from.
    pub topic: String,
    /// That topic's partition count.
    pub partitions: i32,
    /// Partition → next offset to apply.
    pub offsets: BTreeMap<i32, i64>,
    /// The projection's state after those offsets.
    pub state: S,
}

/// Where checkpoints of projections of one topic live.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    topic: String,
    partitions: i32,
}

impl CheckpointStore {
    /// Checkpoints in `dir` for `topic` with `partitions` partitions.
    pub fn new(dir: impl Into<PathBuf>, topic: &str, partitions: i32) -> Self {
        CheckpointStore {
            dir: dir.into(),
            topic: topic.to_owned(),
            partitions,
        }
    }

    /// The file of `projection`.
    pub fn path(&self, projection: &str) -> PathBuf {
        self.dir
            .join(format!("{}.{projection}.checkpoint.json", self.topic))
    }

    /// Loads `projection`'s checkpoint; `Ok(None)` if there is none yet. A corrupt file or
    /// one written for another topic or partition count is [`Error::Checkpoint`].
    pub fn load<S: serde::de::DeserializeOwned>(
        &self,
        projection: &str,
    ) -> Result<Option<Checkpoint<S>>> {
        let path = self.path(projection);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let bad = |message: String| Error::Checkpoint {
            path: path.clone(),
            projection: projection.to_owned(),
            message,
        };
        let cp: Checkpoint<S> = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a readable checkpoint: {e}")))?;
        if cp.format != FORMAT {
            return Err(bad(format!(
                "format is {:?}, expected {FORMAT:?}",
                cp.format
            )));
        }
        if cp.projection != projection || cp.topic != self.topic || cp.partitions != self.partitions
        {
            return Err(bad(format!(
                "written for projection {} of {} with {} partitions, not {projection} of {} with {}",
                cp.projection, cp.topic, cp.partitions, self.topic, self.partitions
            )));
        }
        Ok(Some(cp))
    }

    /// Writes `projection`'s checkpoint atomically.
    pub fn save<S: Serialize>(
        &self,
        projection: &str,
        offsets: &BTreeMap<i32, i64>,
        state: &S,
    ) -> Result<()> {
        let path = self.path(projection);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let cp = Checkpoint {
            format: FORMAT.to_owned(),
            projection: projection.to_owned(),
            topic: self.topic.clone(),
            partitions: self.partitions,
            offsets: offsets.clone(),
            state,
        };
        // A unique temporary name: a save still finishing for an aborted run must not
        // interleave with the save of its successor.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("json.{}.{seq}.tmp", std::process::id()));
        {
            let file = std::fs::File::create(&tmp).map_err(io)?;
            let mut w = std::io::BufWriter::new(file);
            serde_json::to_writer(&mut w, &cp).map_err(|e| io(std::io::Error::other(e)))?;
            w.flush().map_err(io)?;
            w.get_ref().sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        sync_dir(&self.dir).map_err(io)
    }

    /// Removes `projection`'s checkpoint (for a rebuild).
    pub fn remove(&self, projection: &str) -> Result<()> {
        let path = self.path(projection);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { path, source }),
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_or_corrupt_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("fl-cp-{}-{}", std::process::id(), line!()));
        let store = CheckpointStore::new(&dir, "t.history.v1", 3);
        assert!(store.load::<Vec<i32>>("clusters").unwrap().is_none());
        let offsets = BTreeMap::from([(0, 5), (2, 9)]);
        store.save("clusters", &offsets, &vec![1, 2, 3]).unwrap();
        let cp = store.load::<Vec<i32>>("clusters").unwrap().unwrap();
        assert_eq!((cp.offsets, cp.state), (offsets, vec![1, 2, 3]));

        let other = CheckpointStore::new(&dir, "t.history.v1", 4);
        let err = other.load::<Vec<i32>>("clusters").unwrap_err().to_string();
        assert!(
            err.contains("3 partitions") && err.contains("project rebuild clusters"),
            "{err}"
        );

        std::fs::write(store.path("clusters"), b"{\"half\":").unwrap();
        let err = store.load::<Vec<i32>>("clusters").unwrap_err().to_string();
        assert!(err.contains("not a readable checkpoint"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
