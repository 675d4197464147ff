//! Atomic checkpoints: a projection's state and the offsets it has applied, in one file,
//! written to a temporary file, fsynced, renamed over the old one and the directory
//! fsynced. A crash at any instant leaves either the old or the new checkpoint, never a mix,
//! so no record is applied twice or skipped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::name::ProjectionName;
use crate::segments::SegmentDir;

const FORMAT: &str = "fleetledger.checkpoint.v2";

/// The model of a projection's state: raised when the state's shape or meaning changes.
/// A checkpoint of an older model is set aside and its projection rebuilt from the start
/// of the topic (projections are derived data; the others keep their checkpoints).
///
/// `billing_hours` 2: the rates as step functions of event time (1 integrated in
/// arrival order); 3: closed days in Parquet segments; 4: a segment row is a run of equal
/// hours ([`crate::billing_hours::HourSpan`]). `audit_log` 2: rows in Parquet segments (1:
/// a JSON-lines rows file).
pub fn state_model(projection: ProjectionName) -> u32 {
    match projection {
        ProjectionName::BillingHours => 4,
        ProjectionName::AuditLog => 2,
        ProjectionName::Clusters => 1,
    }
}

fn first_model() -> u32 {
    1
}

/// What a checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint<S> {
    /// Always `fleetledger.checkpoint.v2`.
    pub format: String,
    /// The projection's name.
    pub projection: String,
    /// The model of its state ([`state_model`]); files from before models were counted
    /// are model 1.
    #[serde(default = "first_model")]
    pub model: u32,
    /// The history topic it was built from.
    pub topic: String,
    /// That topic's partition count.
    pub partitions: i32,
    /// Partition → next offset to apply.
    pub offsets: BTreeMap<i32, i64>,
    /// The projection's state after those offsets.
    pub state: S,
}

/// One history record the projections applied, as Kafka holds it: where it is, its key and
/// its Kafka timestamp (the ledger's write time). A history topic that holds another record
/// at that offset is not the one the checkpoints were written from (see
/// [`CheckpointStore::save_marks`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMark {
    /// Its offset.
    pub offset: i64,
    /// Its key (`cluster/facet/version`).
    pub key: String,
    /// Its Kafka timestamp, ms since the epoch.
    pub timestamp_ms: i64,
}

/// Partition → the last record applied there.
pub type HistoryMarks = BTreeMap<i32, RecordMark>;

/// An exclusive lock on the checkpoints of one topic in a directory, held while it lives:
/// two processes never write the same projections (their checkpoints would interleave).
/// The operating system releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct DirectoryLock {
    _file: std::fs::File,
}

impl DirectoryLock {
    /// Takes the lock of `topic`'s checkpoints in `dir`; [`Error::DirectoryInUse`] if
    /// another process holds it.
    pub fn take(dir: &Path, topic: &str) -> Result<Self> {
        let path = dir.join(format!("{topic}.lock"));
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(Error::DirectoryInUse {
                    dir: dir.to_owned(),
                    topic: topic.to_owned(),
                    holder: holder.trim().to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "pid {}", std::process::id()).map_err(io)?;
        Ok(DirectoryLock { _file: file })
    }
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
    pub fn path(&self, projection: ProjectionName) -> PathBuf {
        self.dir
            .join(format!("{}.{projection}.checkpoint.json", self.topic))
    }

    /// Loads `projection`'s checkpoint; `Ok(None)` if there is none yet, or if it holds
    /// a state of an older model ([`state_model`]: the projection is rebuilt). A corrupt
    /// file or one written for another topic or partition count is [`Error::Checkpoint`].
    pub fn load<S: serde::de::DeserializeOwned>(
        &self,
        projection: ProjectionName,
    ) -> Result<Option<Checkpoint<S>>> {
        let path = self.path(projection);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let bad = |message: String| Error::Checkpoint {
            path: path.clone(),
            projection: projection.to_string(),
            message,
        };
        let cp: Checkpoint<S> = match serde_json::from_slice(&bytes) {
            Ok(cp) => cp,
            Err(e) => {
                // The state may be of an older model, which the header says.
                #[derive(Deserialize)]
                struct Header {
                    format: String,
                    #[serde(default = "first_model")]
                    model: u32,
                }
                let current = state_model(projection);
                match serde_json::from_slice::<Header>(&bytes) {
                    Ok(h) if h.format == FORMAT && h.model < current => {
                        tracing::warn!(
                            projection = projection.as_str(),
                            path = %path.display(),
                            model = h.model,
                            current,
                            "checkpoint of an older state model; rebuilding this projection from the start"
                        );
                        return Ok(None);
                    }
                    _ => return Err(bad(format!("not a readable checkpoint: {e}"))),
                }
            }
        };
        if cp.format != FORMAT {
            return Err(bad(format!(
                "format is {:?}, expected {FORMAT:?}",
                cp.format
            )));
        }
        if cp.model < state_model(projection) {
            tracing::warn!(projection = projection.as_str(), path = %path.display(), model = cp.model,
                "checkpoint of an older state model; rebuilding this projection from the start");
            return Ok(None);
        }
        if cp.projection != projection.as_str()
            || cp.topic != self.topic
            || cp.partitions != self.partitions
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
        projection: ProjectionName,
        offsets: &BTreeMap<i32, i64>,
        state: &S,
    ) -> Result<()> {
        self.write(projection, offsets, state)?.commit()
    }

    /// The first half of [`CheckpointStore::save`]: writes `projection`'s checkpoint to a
    /// temporary file, not yet synced, and leaves the checkpoint in force unchanged until
    /// [`UnsyncedCheckpoint::commit`]. A caller that reads its state under a lock releases
    /// the lock before the commit: the sync waits for the disk, and nothing else needs it.
    pub fn write<S: Serialize>(
        &self,
        projection: ProjectionName,
        offsets: &BTreeMap<i32, i64>,
        state: &S,
    ) -> Result<UnsyncedCheckpoint> {
        let cp = Checkpoint {
            format: FORMAT.to_owned(),
            projection: projection.to_string(),
            model: state_model(projection),
            topic: self.topic.clone(),
            partitions: self.partitions,
            offsets: offsets.clone(),
            state,
        };
        self.write_json(self.path(projection), &cp)
    }

    /// Writes `value` as JSON to a temporary file beside `path`, not yet synced, for
    /// [`UnsyncedCheckpoint::commit`] to put in place of `path`. Both the checkpoints and
    /// the marks are written this way.
    fn write_json<T: Serialize>(&self, path: PathBuf, value: &T) -> Result<UnsyncedCheckpoint> {
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        // A unique temporary name: a save still finishing for an aborted run must not
        // interleave with the save of its successor.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("json.{}.{seq}.tmp", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = std::io::BufWriter::new(file);
        let written = serde_json::to_writer(&mut w, value)
            .map_err(|e| io(std::io::Error::other(e)))
            .and_then(|()| w.into_inner().map_err(|e| io(e.into_error())));
        match written {
            Ok(file) => Ok(UnsyncedCheckpoint {
                file,
                tmp,
                path,
                dir: self.dir.clone(),
                renamed: false,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn marks_path(&self) -> PathBuf {
        self.dir.join(format!("{}.marks.json", self.topic))
    }

    /// Writes (atomically) the last record applied in each partition, after the checkpoints
    /// that applied it: the checkpoints name offsets, the marks say what stood there, so a
    /// history topic deleted and re-created since (a new incarnation, perhaps grown past
    /// those offsets) is told apart from the one they were written from.
    pub fn save_marks(&self, marks: &HistoryMarks) -> Result<()> {
        self.write_json(self.marks_path(), marks)?.commit()
    }

    /// The marks [`CheckpointStore::save_marks`] wrote; none if there are none. A mark file
    /// that cannot be read only weakens the start's check of the topic, so it is logged and
    /// taken as none.
    pub fn load_marks(&self) -> HistoryMarks {
        let path = self.marks_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "history marks unreadable; the topic's incarnation is not checked at this start");
                HistoryMarks::new()
            }),
            Err(_) => HistoryMarks::new(),
        }
    }

    /// The file where `projection` kept its rows before they went into segments (model 1
    /// of `audit_log`): removed when the projection opens.
    fn legacy_rows_path(&self, projection: ProjectionName) -> PathBuf {
        self.dir
            .join(format!("{}.{projection}.rows.jsonl", self.topic))
    }

    /// The directory of `projection`'s segment files.
    pub fn segments(&self, projection: ProjectionName) -> SegmentDir {
        SegmentDir::new(self.dir.join(format!("{}.{projection}", self.topic)))
    }

    /// Removes the rows file of an older model of `projection`, if there is one.
    pub fn remove_legacy_rows(&self, projection: ProjectionName) -> Result<()> {
        let path = self.legacy_rows_path(projection);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Removes `projection`'s checkpoint and its files (for a rebuild).
    pub fn remove(&self, projection: ProjectionName) -> Result<()> {
        match std::fs::remove_file(self.path(projection)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    path: self.path(projection),
                    source,
                });
            }
        }
        self.remove_legacy_rows(projection)?;
        self.segments(projection).remove_all()
    }
}

/// A checkpoint (or the marks) written by [`CheckpointStore::write`] but not yet in
/// force. Dropped without [`UnsyncedCheckpoint::commit`], its temporary file is removed
/// and the checkpoint in force stays as it was.
#[derive(Debug)]
#[must_use = "a checkpoint is in force only once committed"]
pub struct UnsyncedCheckpoint {
    file: std::fs::File,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    /// Whether `tmp` was renamed to `path` (nothing left to remove).
    renamed: bool,
}

impl UnsyncedCheckpoint {
    /// Syncs the file and puts it in place of the checkpoint in force, atomically (a
    /// rename, then the directory synced): on return it is durable.
    pub fn commit(mut self) -> Result<()> {
        let path = self.path.clone();
        let io = |source| Error::Io { path, source };
        self.file.sync_all().map_err(io.clone())?;
        std::fs::rename(&self.tmp, &self.path).map_err(io.clone())?;
        self.renamed = true;
        sync_dir(&self.dir).map_err(io)
    }
}

impl Drop for UnsyncedCheckpoint {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.tmp);
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
        assert!(
            store
                .load::<Vec<i32>>(ProjectionName::Clusters)
                .unwrap()
                .is_none()
        );
        let offsets = BTreeMap::from([(0, 5), (2, 9)]);
        store
            .save(ProjectionName::Clusters, &offsets, &vec![1, 2, 3])
            .unwrap();
        let cp = store
            .load::<Vec<i32>>(ProjectionName::Clusters)
            .unwrap()
            .unwrap();
        assert_eq!((cp.offsets, cp.state), (offsets, vec![1, 2, 3]));

        let other = CheckpointStore::new(&dir, "t.history.v1", 4);
        let err = other
            .load::<Vec<i32>>(ProjectionName::Clusters)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("3 partitions") && err.contains("project rebuild clusters"),
            "{err}"
        );

        std::fs::write(store.path(ProjectionName::Clusters), b"{\"half\":").unwrap();
        let err = store
            .load::<Vec<i32>>(ProjectionName::Clusters)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a readable checkpoint"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_checkpoint_of_an_older_state_model_is_set_aside_not_refused() {
        let dir = std::env::temp_dir().join(format!("fl-cp-{}-{}", std::process::id(), line!()));
        let store = CheckpointStore::new(&dir, "t.history.v1", 1);
        std::fs::create_dir_all(&dir).unwrap();
        // billing_hours as the arrival-order model wrote it: no model, another shape.
        let old = r#"{"format":"fleetledger.checkpoint.v2","projection":"billing_hours","topic":"t.history.v1","partitions":1,"offsets":{"0":7},"state":{"clusters":{"lkc-a":{"org_id":"o","sku":"s","cloud":"c","region":"r","billing":{"desired":1,"actual":1,"last_ms":5,"hours":{"0":5}}}}}}"#;
        std::fs::write(store.path(ProjectionName::BillingHours), old).unwrap();
        let loaded = store
            .load::<crate::billing_hours::BillingHours>(ProjectionName::BillingHours)
            .unwrap();
        assert!(loaded.is_none(), "rebuilt, not refused");
        // The same bytes under a projection whose model did not change are corrupt.
        std::fs::write(
            store.path(ProjectionName::Clusters),
            old.replace("billing_hours", "clusters"),
        )
        .unwrap();
        assert!(
            store
                .load::<crate::clusters::Clusters>(ProjectionName::Clusters)
                .is_err()
        );
        // A current checkpoint carries its model and loads.
        let b = crate::billing_hours::BillingHours::default();
        store
            .save(ProjectionName::BillingHours, &BTreeMap::from([(0, 7)]), &b)
            .unwrap();
        let cp = store
            .load::<crate::billing_hours::BillingHours>(ProjectionName::BillingHours)
            .unwrap()
            .unwrap();
        assert_eq!(
            (cp.model, cp.state),
            (state_model(ProjectionName::BillingHours), b)
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_directory_is_locked_while_its_holder_lives() {
        let dir = std::env::temp_dir().join(format!("fl-lock-{}-{}", std::process::id(), line!()));
        let held = DirectoryLock::take(&dir, "t.history.v1").unwrap();
        // flock-style locks are per open file: a second take in this process is refused
        // as one in another process would be.
        let err = DirectoryLock::take(&dir, "t.history.v1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("in use by another process") && err.contains("pid"),
            "{err}"
        );
        // Another topic's projections in the same directory are independent.
        let other = DirectoryLock::take(&dir, "u.history.v1").unwrap();
        drop((held, other));
        DirectoryLock::take(&dir, "t.history.v1").expect("free again");
        std::fs::remove_dir_all(&dir).ok();
    }
}
