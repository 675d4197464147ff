//! Segments: the Parquet files in which a projection keeps what is final (audit rows,
//! closed billing hours), so that its memory does not grow with history.
//!
//! **A file belongs to a projection only once a durable checkpoint names it.** A segment is
//! written to a temporary name, fsynced, renamed to its final name and the directory
//! fsynced; then the checkpoint that lists it is saved. A crash in between leaves a file no
//! checkpoint names: [`SegmentDir::remove_unnamed`] deletes such files when the projection
//! opens. A file a newer checkpoint no longer names (merged, rewritten) is *retired*: it is
//! deleted only once the checkpoint without it is durable and a grace period has passed,
//! so that a query that planned with it can still read it.
//!
//! Files are written with snappy (the one codec we write), row groups of
//! [`ROW_GROUP_ROWS`] rows, page statistics and a bloom filter on the columns a caller
//! names, so that DataFusion skips whole files and row groups on `hour`, `org_id`,
//! `cluster_id` filters.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::basic::Compression;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::properties::ReaderProperties;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::{ReadOptionsBuilder, SerializedFileReader};
use parquet::file::statistics::Statistics;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::ProjectionName;
use crate::error::{Error, Result};

/// Rows per row group: small enough that a one-cluster lookup reads little, large enough
/// that a scan of a year is not dominated by per-group overhead.
pub const ROW_GROUP_ROWS: usize = 16_384;

/// Rows per data page (at most, about) of a layout that asks for small pages: the page
/// index then tells a one-value lookup which thousand rows of a row group to decode, where
/// a page of the 1 MiB default would hold a sorted column's whole row group.
pub const PAGE_ROWS: usize = 1_024;

/// One segment file as a checkpoint names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The file's name in its [`SegmentDir`].
    pub name: String,
    /// Rows it holds.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// The smallest and largest value of the segment's key column (an hour or a time, ms).
    pub min_key: i64,
    /// See `min_key`.
    pub max_key: i64,
}

/// The row groups of a file whose statistics of column `idx` may hold `value`, and within
/// them the pages whose min/max may (all of a row group whose column has no page index).
fn lookup_selection(
    meta: &ParquetMetaData,
    idx: usize,
    value: &[u8],
) -> (Vec<usize>, RowSelection) {
    let may_hold = |lo: Option<&[u8]>, hi: Option<&[u8]>| match (lo, hi) {
        (Some(lo), Some(hi)) => lo <= value && value <= hi,
        _ => true,
    };
    let mut groups = Vec::new();
    let mut selectors = Vec::new();
    for g in 0..meta.num_row_groups() {
        let group = meta.row_group(g);
        let held = match group.column(idx).statistics() {
            Some(Statistics::ByteArray(s)) => {
                may_hold(s.min_opt().map(|v| v.data()), s.max_opt().map(|v| v.data()))
            }
            _ => true,
        };
        if !held {
            continue;
        }
        groups.push(g);
        let rows = usize::try_from(group.num_rows()).unwrap_or(0);
        let pages = meta
            .column_index()
            .zip(meta.offset_index())
            .and_then(|(ci, oi)| Some((ci.get(g)?.get(idx)?, oi.get(g)?.get(idx)?)));
        let Some((ColumnIndexMetaData::BYTE_ARRAY(index), offsets)) = pages else {
            selectors.push(RowSelector::select(rows));
            continue;
        };
        let locations = offsets.page_locations();
        for (p, loc) in locations.iter().enumerate() {
            let first = usize::try_from(loc.first_row_index).unwrap_or(0);
            let end = locations
                .get(p + 1)
                .map_or(rows, |n| usize::try_from(n.first_row_index).unwrap_or(rows));
            let n = end.saturating_sub(first);
            selectors.push(if may_hold(index.min_value(p), index.max_value(p)) {
                RowSelector::select(n)
            } else {
                RowSelector::skip(n)
            });
        }
    }
    (groups, RowSelection::from(selectors))
}

/// Rows read from each input of a merge at a time (at most).
const MERGE_BATCH_ROWS: usize = 4_096;

/// The parsed rows a [`SegmentDir::merge_sorted`] holds of all its inputs together: a
/// month of 31 day files is read 528 rows a file at a time (at 4,096 a file, a month's
/// merge held 127k parsed rows).
const MERGE_HELD_ROWS: usize = 16_384;

/// The fewest rows read from an input of a merge at a time, however many inputs.
const MERGE_MIN_BATCH_ROWS: usize = 256;

/// Parsed rows of one input of a merge, a batch at a time.
type RowBatches<'a, R> = Box<dyn Iterator<Item = Result<Vec<R>>> + 'a>;

/// One input of a merge ([`SegmentDir::merge_sorted`], [`SegmentDir::rewrite_sorted`]):
/// its rows still to read, a batch at a time, and the rows of the batch read last.
struct MergeSource<'a, R> {
    batches: RowBatches<'a, R>,
    rows: std::collections::VecDeque<R>,
}

/// The output of a merge, one row group per batch; `tap` sees each row written.
struct MergedBatches<'a, R, O, B, T> {
    sources: Vec<MergeSource<'a, R>>,
    order: &'a O,
    to_batch: &'a B,
    tap: T,
    /// The sources that have rows, as a binary heap whose first is the one whose next row
    /// comes first (of equal rows, the earlier source's): a row costs about log2(inputs)
    /// comparisons, not one per input. `None` until the sources are first read.
    heap: Option<Vec<usize>>,
}

impl<'a, R, O, B, T> MergedBatches<'a, R, O, B, T>
where
    O: Fn(&R, &R) -> std::cmp::Ordering,
    B: Fn(&[R]) -> RecordBatch,
    T: FnMut(&R),
{
    /// A merge of `sources` (each sorted by `order`).
    fn new(sources: Vec<MergeSource<'a, R>>, order: &'a O, to_batch: &'a B, tap: T) -> Self {
        MergedBatches {
            sources,
            order,
            to_batch,
            tap,
            heap: None,
        }
    }

    /// Refills source `i` if its rows ran out, from its next non-empty batch.
    fn refill(&mut self, i: usize) -> Result<()> {
        let s = &mut self.sources[i];
        while s.rows.is_empty() {
            let Some(rows) = s.batches.next() else { break };
            s.rows = rows?.into();
        }
        Ok(())
    }

    /// Source `a`'s next row comes before source `b`'s (both have one).
    fn before(&self, a: usize, b: usize) -> bool {
        let (Some(ra), Some(rb)) = (self.sources[a].rows.front(), self.sources[b].rows.front())
        else {
            return false;
        };
        (self.order)(ra, rb).then(a.cmp(&b)) == std::cmp::Ordering::Less
    }

    /// Moves `heap[i]` down to its place.
    fn sift_down(&self, heap: &mut [usize], mut i: usize) {
        loop {
            let left = 2 * i + 1;
            if left >= heap.len() {
                return;
            }
            let right = left + 1;
            let least = if right < heap.len() && self.before(heap[right], heap[left]) {
                right
            } else {
                left
            };
            if !self.before(heap[least], heap[i]) {
                return;
            }
            heap.swap(i, least);
            i = least;
        }
    }

    /// The heap of the sources that have rows, each read first.
    fn first_heap(&mut self) -> Result<Vec<usize>> {
        for i in 0..self.sources.len() {
            self.refill(i)?;
        }
        let mut heap: Vec<usize> = (0..self.sources.len())
            .filter(|&i| !self.sources[i].rows.is_empty())
            .collect();
        for i in (0..heap.len() / 2).rev() {
            self.sift_down(&mut heap, i);
        }
        Ok(heap)
    }

    /// The next merged row group, or `None` when every input is read.
    fn next_group(&mut self) -> Result<Option<RecordBatch>> {
        let mut heap = match self.heap.take() {
            Some(heap) => heap,
            None => self.first_heap()?,
        };
        let mut group = Vec::with_capacity(ROW_GROUP_ROWS);
        while group.len() < ROW_GROUP_ROWS {
            let Some(&first) = heap.first() else { break };
            group.extend(self.sources[first].rows.pop_front());
            self.refill(first)?;
            if self.sources[first].rows.is_empty() {
                heap.swap_remove(0);
            }
            self.sift_down(&mut heap, 0);
        }
        self.heap = Some(heap);
        group.iter().for_each(&mut self.tap);
        Ok((!group.is_empty()).then(|| (self.to_batch)(&group)))
    }
}

impl<R, O, B, T> Iterator for MergedBatches<'_, R, O, B, T>
where
    O: Fn(&R, &R) -> std::cmp::Ordering,
    B: Fn(&[R]) -> RecordBatch,
    T: FnMut(&R),
{
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_group().transpose()
    }
}

/// The directory of one projection's segments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SegmentDir {
    dir: PathBuf,
}

/// How a projection writes its segments.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLayout {
    /// Columns that get a bloom filter (those looked up by equality).
    pub bloom: &'static [&'static str],
    /// The key column (Int64 or Timestamp(ms)): its min and max go into [`Segment`].
    pub key: &'static str,
    /// How large its data pages are.
    pub pages: Pages,
    /// Most rows per row group ([`ROW_GROUP_ROWS`] but where a row group's every page read
    /// per lookup costs more than its rows would).
    pub group_rows: usize,
}

/// How a [`SegmentLayout`] sizes its data pages. Small pages let the page index tell a
/// one-value lookup which rows of a row group to decode, where a page of the 1 MiB default
/// holds a sorted column's whole row group; but they make a large page index, which a
/// query engine caches per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// Pages of the writer's default size (1 MiB) in every column.
    Large,
    /// About [`PAGE_ROWS`] rows per page in every column.
    Small,
    /// [`Pages::Small`], and the named columns without a dictionary: a column with about
    /// as many distinct values in a row group as rows (an id in files where a row is one
    /// id's day) makes a dictionary page of the row group's every value, which a lookup
    /// reads and decodes with any one page of the column.
    SmallPlainIn(&'static [&'static str]),
    /// [`PAGE_ROWS`] rows per page in the named string columns (dictionary encoded, which
    /// their dictionary limit makes sure of for values up to 64 bytes), the default size in
    /// the others. A lookup on a named column then decodes the rows of the pages that may
    /// hold the value, and the other columns skip to those rows within their pages; the
    /// page index grows by one entry per page of the named columns only.
    SmallIn(&'static [&'static str]),
}

impl SegmentDir {
    /// Segments in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SegmentDir { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `segment`.
    pub fn path(&self, segment: &Segment) -> PathBuf {
        self.dir.join(&segment.name)
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> Error + use<> {
        let path = path.to_owned();
        move |source| Error::Io {
            path: path.clone(),
            source,
        }
    }

    /// Writes `batches` (one schema) as a new segment, durably, under a name no other
    /// segment of this directory has had. Returns `Ok(None)` for no rows.
    pub fn write(
        &self,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        layout: SegmentLayout,
    ) -> Result<Option<Segment>> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        self.write_batches(schema, rows, batches.iter().cloned().map(Ok), layout)
    }

    /// [`SegmentDir::write`] of `rows`, made into batches of one row group each as they
    /// are written (`to_batch` of each chunk): the rows' Arrow copy never exists whole,
    /// only one row group of it at a time.
    pub fn write_rows<R>(
        &self,
        schema: &SchemaRef,
        rows: &[R],
        to_batch: impl Fn(&[R]) -> RecordBatch,
        layout: SegmentLayout,
    ) -> Result<Option<Segment>> {
        let batches = rows.chunks(ROW_GROUP_ROWS).map(|c| Ok(to_batch(c)));
        self.write_batches(schema, rows.len(), batches, layout)
    }

    /// Merges `inputs`, each sorted by `order`, into one segment sorted by it, streaming:
    /// each input is read a batch at a time and the output written a row group at a time,
    /// so memory holds one batch per input and one row group, whatever the sizes (the
    /// batches smaller the more inputs there are: [`MERGE_HELD_ROWS`] rows in all). Rows of
    /// equal order keep the order of `inputs`. `rows_of` parses a batch (an error names
    /// the file as [`Error::Checkpoint`] of `projection`), `to_batch` builds one. On error
    /// no segment is left (the partial file is removed).
    #[allow(clippy::too_many_arguments)]
    pub fn merge_sorted<R>(
        &self,
        inputs: &[Segment],
        schema: &SchemaRef,
        projection: &str,
        rows_of: impl Fn(&RecordBatch) -> std::result::Result<Vec<R>, String>,
        order: impl Fn(&R, &R) -> std::cmp::Ordering,
        to_batch: impl Fn(&[R]) -> RecordBatch,
        layout: SegmentLayout,
    ) -> Result<Option<Segment>> {
        let rows: u64 = inputs.iter().map(|s| s.rows).sum();
        let batch_rows =
            (MERGE_HELD_ROWS / inputs.len().max(1)).clamp(MERGE_MIN_BATCH_ROWS, MERGE_BATCH_ROWS);
        let mut sources = Vec::with_capacity(inputs.len());
        for s in inputs {
            sources.push(MergeSource {
                batches: self.parsed_by(s, None, projection, &rows_of, batch_rows)?,
                rows: std::collections::VecDeque::new(),
            });
        }
        let merged = MergedBatches::new(sources, &order, &to_batch, |_: &R| {});
        self.write_batches(schema, rows as usize, merged, layout)
    }

    /// Writes `inputs` (segments of one schema), one after the other, as one segment by
    /// copying their encoded row groups (pages, statistics, bloom filters, page index)
    /// without decoding a value: what the inputs' order makes of the rows, the caller
    /// decides. The key range is the inputs'. On error no segment is left.
    pub fn concat(&self, inputs: &[Segment]) -> Result<Option<Segment>> {
        let Some(first) = inputs.first() else {
            return Ok(None);
        };
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let name = unique_name();
        let tmp = self.dir.join(format!("{name}.tmp"));
        let written = self.copy_row_groups(inputs, first, &tmp);
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let keys = (
            inputs.iter().map(|s| s.min_key).min().unwrap_or(0),
            inputs.iter().map(|s| s.max_key).max().unwrap_or(0),
        );
        let rows = inputs.iter().map(|s| s.rows).sum();
        self.seal(file, &tmp, name, rows, keys).map(Some)
    }

    /// Makes the written file `tmp` segment `name` durably: fsynced, renamed, the
    /// directory fsynced.
    fn seal(
        &self,
        file: std::fs::File,
        tmp: &Path,
        name: String,
        rows: u64,
        (min_key, max_key): (i64, i64),
    ) -> Result<Segment> {
        let io = self.io(tmp);
        file.sync_all().map_err(&io)?;
        let bytes = file.metadata().map_err(&io)?.len();
        drop(file);
        std::fs::rename(tmp, self.dir.join(&name)).map_err(&io)?;
        sync_dir(&self.dir).map_err(self.io(&self.dir))?;
        Ok(Segment {
            name,
            rows,
            bytes,
            min_key,
            max_key,
        })
    }

    /// [`SegmentDir::concat`]'s copy into `tmp`, with the schema and key-value metadata
    /// (the Arrow schema) of `first`.
    fn copy_row_groups(
        &self,
        inputs: &[Segment],
        first: &Segment,
        tmp: &Path,
    ) -> Result<std::fs::File> {
        let io = self.io(tmp);
        let parquet_err = |path: &Path| {
            let io = self.io(path);
            move |e: parquet::errors::ParquetError| io(std::io::Error::other(e))
        };
        let open = |s: &Segment| -> Result<(std::fs::File, SerializedFileReader<std::fs::File>)> {
            let path = self.path(s);
            let file = std::fs::File::open(&path).map_err(self.io(&path))?;
            let options = ReadOptionsBuilder::new()
                .with_page_index()
                .with_reader_properties(
                    ReaderProperties::builder()
                        .set_read_bloom_filter(true)
                        .build(),
                )
                .build();
            let reader = file.try_clone().map_err(self.io(&path)).and_then(|f| {
                SerializedFileReader::new_with_options(f, options).map_err(parquet_err(&path))
            })?;
            Ok((file, reader))
        };
        let (_, head) = open(first)?;
        let meta = head.metadata().file_metadata();
        let props = WriterProperties::builder()
            .set_key_value_metadata(meta.key_value_metadata().cloned())
            .build();
        let out = std::fs::File::create(tmp).map_err(&io)?;
        let mut w =
            SerializedFileWriter::new(out, meta.schema_descr().root_schema_ptr(), Arc::new(props))
                .map_err(parquet_err(tmp))?;
        for s in inputs {
            let (file, reader) = open(s)?;
            let err = parquet_err(&self.path(s));
            let md = reader.metadata();
            for g in 0..md.num_row_groups() {
                let group = reader.get_row_group(g).map_err(&err)?;
                let mut rg = w.next_row_group().map_err(parquet_err(tmp))?;
                for (i, col) in md.row_group(g).columns().iter().enumerate() {
                    let close = ColumnCloseResult {
                        bytes_written: u64::try_from(col.compressed_size()).unwrap_or(0),
                        rows_written: u64::try_from(md.row_group(g).num_rows()).unwrap_or(0),
                        metadata: col.clone(),
                        bloom_filter: group.get_column_bloom_filter(i).cloned(),
                        column_index: md.column_index().and_then(|ci| ci.get(g)?.get(i).cloned()),
                        offset_index: md.offset_index().and_then(|oi| oi.get(g)?.get(i).cloned()),
                    };
                    rg.append_column(&file, close).map_err(&err)?;
                }
                rg.close().map_err(parquet_err(tmp))?;
            }
        }
        w.into_inner().map_err(parquet_err(tmp))
    }

    /// Rewrites `segment`, sorted by `order`, as a new segment sorted by it, streaming:
    /// each of its rows passes through `update` (which may change anything but its place
    /// in the order), and the rows of `extra` (sorted by `order`) are merged in. `tap`
    /// sees every row written, in order. Memory holds one batch of the old file, `extra`
    /// and one row group, whatever the file's size. On error no segment is left.
    #[allow(clippy::too_many_arguments)]
    pub fn rewrite_sorted<R>(
        &self,
        segment: &Segment,
        extra: Vec<R>,
        schema: &SchemaRef,
        projection: &str,
        rows_of: impl Fn(&RecordBatch) -> std::result::Result<Vec<R>, String>,
        mut update: impl FnMut(&mut R),
        order: impl Fn(&R, &R) -> std::cmp::Ordering,
        to_batch: impl Fn(&[R]) -> RecordBatch,
        tap: impl FnMut(&R),
        layout: SegmentLayout,
    ) -> Result<Option<Segment>> {
        let rows = segment.rows as usize + extra.len();
        let old = self
            .parsed(segment, None, projection, &rows_of)?
            .map(move |b| {
                b.map(|mut rows| {
                    rows.iter_mut().for_each(&mut update);
                    rows
                })
            });
        let sources = vec![
            MergeSource {
                batches: Box::new(old),
                rows: std::collections::VecDeque::new(),
            },
            MergeSource {
                batches: Box::new(std::iter::once(Ok(extra))),
                rows: std::collections::VecDeque::new(),
            },
        ];
        let merged = MergedBatches::new(sources, &order, &to_batch, tap);
        self.write_batches(schema, rows, merged, layout)
    }

    /// The rows of `segment` (its `columns`, all if `None`), parsed by `rows_of` a batch
    /// of [`MERGE_BATCH_ROWS`] at a time as they are asked for; a batch it cannot parse is
    /// [`Error::Checkpoint`] of `projection`, naming the file.
    pub fn parsed<'a, R: 'a>(
        &self,
        segment: &Segment,
        columns: Option<&[&str]>,
        projection: &str,
        rows_of: &'a impl Fn(&RecordBatch) -> std::result::Result<Vec<R>, String>,
    ) -> Result<RowBatches<'a, R>> {
        self.parsed_by(segment, columns, projection, rows_of, MERGE_BATCH_ROWS)
    }

    /// [`SegmentDir::parsed`], `batch_rows` rows at a time.
    fn parsed_by<'a, R: 'a>(
        &self,
        segment: &Segment,
        columns: Option<&[&str]>,
        projection: &str,
        rows_of: &'a impl Fn(&RecordBatch) -> std::result::Result<Vec<R>, String>,
        batch_rows: usize,
    ) -> Result<RowBatches<'a, R>> {
        let path = self.path(segment);
        let projection = projection.to_owned();
        let batches = self.stream(segment, columns, batch_rows)?;
        Ok(Box::new(batches.map(move |b| {
            rows_of(&b?).map_err(|message| Error::Checkpoint {
                path: path.clone(),
                projection: projection.clone(),
                message,
            })
        })))
    }

    /// The batches of `segment` (its `columns`, all if `None`), `batch_rows` rows at a
    /// time, read as they are asked for.
    pub fn stream(
        &self,
        segment: &Segment,
        columns: Option<&[&str]>,
        batch_rows: usize,
    ) -> Result<impl Iterator<Item = Result<RecordBatch>> + use<>> {
        let path = self.path(segment);
        let io = self.io(&path);
        let parquet_err = |e: parquet::errors::ParquetError| io(std::io::Error::other(e));
        let file = std::fs::File::open(&path).map_err(&io)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| {
                let b = match columns {
                    Some(cols) => {
                        let mask = ProjectionMask::columns(
                            b.metadata().file_metadata().schema_descr(),
                            cols.iter().copied(),
                        );
                        b.with_projection(mask)
                    }
                    None => b,
                };
                b.with_batch_size(batch_rows).build()
            })
            .map_err(parquet_err)?;
        Ok(reader.map(move |b| b.map_err(|e| io(std::io::Error::other(e)))))
    }

    /// Writes `batches` (about `rows` rows in all: it sizes the bloom filters, and none
    /// writes nothing) as one segment; the first error read from `batches` ends the
    /// write, removes the partial file and is returned.
    fn write_batches(
        &self,
        schema: &SchemaRef,
        rows: usize,
        batches: impl Iterator<Item = Result<RecordBatch>>,
        layout: SegmentLayout,
    ) -> Result<Option<Segment>> {
        if rows == 0 {
            return Ok(None);
        }
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let name = unique_name();
        let tmp = self.dir.join(format!("{name}.tmp"));
        let io = self.io(&tmp);
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(layout.group_rows))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_write_batch_size(PAGE_ROWS);
        match layout.pages {
            Pages::Large => {}
            Pages::Small => props = props.set_data_page_row_count_limit(PAGE_ROWS),
            Pages::SmallPlainIn(columns) => {
                props = props.set_data_page_row_count_limit(PAGE_ROWS);
                for col in columns {
                    props = props.set_column_dictionary_enabled(ColumnPath::from(*col), false);
                }
            }
            Pages::SmallIn(columns) => {
                for col in columns {
                    let c = ColumnPath::from(*col);
                    // The writer ends a page once it reaches the size limit, checked after
                    // each batch of PAGE_ROWS values (write_batch_size): a limit of one
                    // byte ends a page at every batch. The dictionary stays the encoding
                    // (plain values would be cut into pages of a value each) while a row
                    // group's distinct values fit its page: up to 16,384 values of 64 bytes
                    // (the longest cluster id) and their lengths.
                    props = props
                        .set_column_data_page_size_limit(c.clone(), 1)
                        .set_column_dictionary_page_size_limit(c, 2 << 20);
                }
            }
        }
        for col in layout.bloom {
            let c = ColumnPath::from(*col);
            props = props
                .set_column_bloom_filter_enabled(c.clone(), true)
                .set_column_bloom_filter_fpp(c.clone(), 0.01)
                .set_column_bloom_filter_max_ndv(c, rows.min(layout.group_rows) as u64);
        }
        let file = std::fs::File::create(&tmp).map_err(&io)?;
        let parquet_err = |e: parquet::errors::ParquetError| io(std::io::Error::other(e));
        let mut w =
            ArrowWriter::try_new(file, schema.clone(), Some(props.build())).map_err(parquet_err)?;
        let mut range = None;
        let mut written_rows = 0u64;
        for b in batches {
            let written = b.and_then(|b| {
                key_range(&b, layout.key, &mut range);
                written_rows += b.num_rows() as u64;
                w.write(&b).map_err(parquet_err)
            });
            if let Err(e) = written {
                drop(w);
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        let file = w.into_inner().map_err(parquet_err)?;
        self.seal(file, &tmp, name, written_rows, range.unwrap_or((0, 0)))
            .map(Some)
    }

    /// Reads `segment`'s columns `columns` (all if `None`) from the row groups whose
    /// statistics of column `stat_column` may hold `stat_value` (all if `None`).
    pub fn read(
        &self,
        segment: &Segment,
        columns: Option<&[&str]>,
        only: Option<(&str, &str)>,
    ) -> Result<Vec<RecordBatch>> {
        let path = self.path(segment);
        let io = self.io(&path);
        let parquet_err = |e: parquet::errors::ParquetError| io(std::io::Error::other(e));
        let file = std::fs::File::open(&path).map_err(&io)?;
        // The page index (each page's rows and min/max) only for a lookup: it skips the
        // pages of a row group that cannot hold the value.
        let options = ArrowReaderOptions::new().with_page_index_policy(if only.is_some() {
            PageIndexPolicy::Optional
        } else {
            PageIndexPolicy::Skip
        });
        let mut builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
            .map_err(parquet_err)?;
        let meta = builder.metadata().clone();
        let schema_descr = meta.file_metadata().schema_descr_ptr();
        if let Some(cols) = columns {
            builder = builder
                .with_projection(ProjectionMask::columns(&schema_descr, cols.iter().copied()));
        }
        let lookup = only.and_then(|(col, value)| {
            let idx = schema_descr
                .columns()
                .iter()
                .position(|c| c.name() == col)?;
            Some(lookup_selection(&meta, idx, value.as_bytes()))
        });
        if let Some((groups, selection)) = lookup {
            builder = builder
                .with_row_groups(groups)
                .with_row_selection(selection);
        }
        let reader = builder.build().map_err(parquet_err)?;
        reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| io(std::io::Error::other(e)))
    }

    /// Every row of `segment`, parsed by `rows_of` from its batches; a batch it cannot
    /// parse is [`Error::Checkpoint`] of `projection`, naming the file.
    pub fn read_rows<T>(
        &self,
        segment: &Segment,
        projection: &str,
        rows_of: impl Fn(&RecordBatch) -> std::result::Result<Vec<T>, String>,
    ) -> Result<Vec<T>> {
        let mut rows = Vec::new();
        for b in self.read(segment, None, None)? {
            rows.extend(rows_of(&b).map_err(|message| Error::Checkpoint {
                path: self.path(segment),
                projection: projection.to_owned(),
                message,
            })?);
        }
        Ok(rows)
    }

    /// Deletes every file in the directory that `named` does not list (segments of a
    /// checkpoint that never became durable, retired segments, temporary files). Returns how
    /// many it deleted.
    pub fn remove_unnamed(&self, named: &BTreeSet<&str>) -> Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.io(&self.dir)(e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(self.io(&self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if named.contains(name) {
                continue;
            }
            let path = entry.path();
            std::fs::remove_file(&path).map_err(self.io(&path))?;
            tracing::info!(file = %path.display(), "removed a projection file no checkpoint names");
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir).map_err(self.io(&self.dir))?;
        }
        Ok(removed)
    }

    /// Deletes the whole directory (a projection rebuilt from the start).
    pub fn remove_all(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&self.dir)(e)),
        }
    }
}

/// Segments a newer checkpoint of their projection no longer names, waiting to be deleted.
///
/// Each file is retired by one projection, and only a durable checkpoint **of that
/// projection** starts its grace period: a re-save of another projection's checkpoint (an
/// audit merge re-saving `audit_log` alone, say) changes nothing for a billing file. The
/// caller keeps one rule: it retires a file once the projection's state in memory no longer
/// names it, and calls [`Retired::checkpointed`] for a projection only after a checkpoint of
/// that projection written from a later state is durable. The checkpoints of one projector
/// run one at a time under one lock, so "later" is the order of the calls.
#[derive(Debug, Default)]
pub struct Retired {
    /// Projection, file path, and when a checkpoint of that projection without the file
    /// became durable (`None`: not yet).
    files: Vec<(ProjectionName, PathBuf, Option<Instant>)>,
}

impl Retired {
    /// `path` is no longer named by `projection`'s state, so not by its next checkpoint;
    /// the checkpoint in force may still name it.
    pub fn retire(&mut self, projection: ProjectionName, path: PathBuf) {
        self.files.push((projection, path, None));
    }

    /// A checkpoint of `projection` was saved: every file it retired before is no longer
    /// named by a durable checkpoint, from now. Other projections' files are not touched.
    pub fn checkpointed(&mut self, projection: ProjectionName) {
        let now = Instant::now();
        for (_, _, at) in self.files.iter_mut().filter(|(p, _, _)| *p == projection) {
            at.get_or_insert(now);
        }
    }

    /// Deletes the files whose checkpoint has been durable for `grace` (queries that
    /// planned with them have finished). A file that cannot be deleted is left for the
    /// next start ([`SegmentDir::remove_unnamed`]).
    pub fn sweep(&mut self, grace: Duration) {
        self.files.retain(|(_, path, at)| match at {
            Some(at) if at.elapsed() >= grace => {
                if let Err(e) = std::fs::remove_file(path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(file = %path.display(), error = %e, "cannot delete a retired projection file; it goes at the next start");
                }
                false
            }
            _ => true,
        });
    }
}

/// A name no segment has had: the time in nanoseconds, the process and a counter.
fn unique_name() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:020}-{}-{seq}.parquet", std::process::id())
}

/// The min and max of an Int64 or Timestamp(ms) column over `batches` (0, 0 if absent).
/// Widens `range` by the values of column `key` (a timestamp or an Int64) of `b`.
fn key_range(b: &RecordBatch, key: &str, range: &mut Option<(i64, i64)>) {
    let Some(col) = b.column_by_name(key) else {
        return;
    };
    let values: &[i64] = if let Some(a) = col
        .as_any()
        .downcast_ref::<arrow_array::TimestampMillisecondArray>()
    {
        a.values()
    } else if let Some(a) = col.as_any().downcast_ref::<arrow_array::Int64Array>() {
        a.values()
    } else {
        return;
    };
    for &v in values {
        *range = Some(range.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))));
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A shared, immutable set of rows being written to a segment: queries read it until the
/// segment is in the projection's list.
pub type Sealed<T> = Arc<Vec<T>>;

/// Column `name` of a segment's batch as array type `T`; an error that names the column
/// if it is missing or of another type.
pub fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| format!("segment has no column {name} of the expected type"))
}

/// A Utf8 column of `f` over `rows`.
pub fn utf8_column<'a, R: 'a>(
    rows: impl Iterator<Item = &'a R>,
    f: impl Fn(&'a R) -> &'a str,
) -> arrow_array::ArrayRef {
    Arc::new(
        rows.map(|r| Some(f(r)))
            .collect::<arrow_array::StringArray>(),
    )
}

/// A UTC millisecond timestamp column of `f` over `rows`.
pub fn time_column<'a, R: 'a>(
    rows: impl Iterator<Item = &'a R>,
    f: impl Fn(&'a R) -> i64,
) -> arrow_array::ArrayRef {
    Arc::new(
        arrow_array::TimestampMillisecondArray::from_iter_values(rows.map(f)).with_timezone("UTC"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    #[test]
    fn a_retired_file_waits_for_a_durable_checkpoint_of_its_own_projection() {
        use ProjectionName::{AuditLog, BillingHours};
        let dir = std::env::temp_dir().join(format!("fl-retired-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (day, segment) = (dir.join("day.parquet"), dir.join("segment.parquet"));
        std::fs::write(&day, b"d").unwrap();
        std::fs::write(&segment, b"s").unwrap();
        let mut retired = Retired::default();
        // A month merged in memory replaces a day file the billing checkpoint in force
        // still names; an audit merge retires a segment and re-saves the audit checkpoint.
        retired.retire(BillingHours, day.clone());
        retired.retire(AuditLog, segment.clone());
        retired.sweep(Duration::ZERO);
        assert!(day.exists() && segment.exists(), "not before any save");
        retired.checkpointed(AuditLog);
        retired.sweep(Duration::ZERO);
        assert!(!segment.exists());
        assert!(
            day.exists(),
            "an audit re-save does not free a file the billing checkpoint names"
        );
        // The next billing save: durable, then swept (after the grace period).
        retired.checkpointed(BillingHours);
        retired.sweep(Duration::from_secs(3600));
        assert!(day.exists(), "not before the grace period");
        retired.sweep(Duration::ZERO);
        assert!(!day.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Data pages of each column of `segment`'s first row group.
    fn pages_per_column(dir: &SegmentDir, segment: &Segment) -> Vec<usize> {
        let file = std::fs::File::open(dir.path(segment)).unwrap();
        let options = ReadOptionsBuilder::new().with_page_index().build();
        let reader = SerializedFileReader::new_with_options(file, options).unwrap();
        let offsets = reader.metadata().offset_index().expect("a page index");
        offsets[0]
            .iter()
            .map(|c| c.page_locations().len())
            .collect()
    }

    #[test]
    fn small_pages_go_to_the_named_columns_only() {
        let dir = SegmentDir::new(
            std::env::temp_dir().join(format!("fl-segments-pages-{}", std::process::id())),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
        ]));
        // 5,000 rows sorted by k, 50 rows per value: five pages of 1,024 rows or fewer.
        let keys: Vec<String> = (0..5_000).map(|i| format!("lkc-{:05}", i / 50)).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(&keys)),
                Arc::new(Int64Array::from_iter_values(0..5_000)),
            ],
        )
        .unwrap();
        let layout = |pages| SegmentLayout {
            bloom: &[],
            key: "ts",
            pages,
            group_rows: ROW_GROUP_ROWS,
        };
        let pages = |p| {
            let s = dir
                .write(&schema, std::slice::from_ref(&batch), layout(p))
                .unwrap()
                .unwrap();
            pages_per_column(&dir, &s)
        };
        assert_eq!(pages(Pages::SmallIn(&["k"])), vec![5, 1]);
        assert_eq!(pages(Pages::Small), vec![5, 5]);
        assert_eq!(pages(Pages::Large), vec![1, 1]);
        // The page index narrows a lookup of one key in the named column to its page.
        let s = dir
            .write(
                &schema,
                std::slice::from_ref(&batch),
                layout(Pages::SmallIn(&["k"])),
            )
            .unwrap()
            .unwrap();
        let file = std::fs::File::open(dir.path(&s)).unwrap();
        let meta = SerializedFileReader::new_with_options(
            file,
            ReadOptionsBuilder::new().with_page_index().build(),
        )
        .unwrap()
        .metadata()
        .clone();
        let (groups, selection) = lookup_selection(&meta, 0, b"lkc-00042");
        assert_eq!(groups, vec![0]);
        assert_eq!(selection.row_count(), 1_024, "one page of rows, not 5,000");
        // A full row group of distinct 64-byte values (the longest cluster id) stays
        // dictionary encoded: 16 pages, not a page per value.
        let rows = ROW_GROUP_ROWS as i64;
        let longest: Vec<String> = (0..rows).map(|i| format!("{i:0>64}")).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(&longest)),
                Arc::new(Int64Array::from_iter_values(0..rows)),
            ],
        )
        .unwrap();
        let s = dir
            .write(&schema, &[batch], layout(Pages::SmallIn(&["k"])))
            .unwrap()
            .unwrap();
        assert_eq!(
            pages_per_column(&dir, &s),
            vec![ROW_GROUP_ROWS / PAGE_ROWS, 1]
        );
        let _ = std::fs::remove_dir_all(dir.dir());
    }

    proptest::proptest! {
        /// A merge of sorted inputs (up to 40, some empty, batches of any size, an empty
        /// batch among them, many equal keys) is their stable sort: every row once, in
        /// order, equal keys in the order of the inputs.
        #[test]
        fn a_merge_is_the_stable_sort_of_its_inputs(
            inputs in proptest::collection::vec(
                (proptest::collection::vec(0u8..20, 0..300), 1usize..70),
                0..40,
            ),
        ) {
            // A row is (key, input, position in the input).
            let sorted: Vec<Vec<(u8, usize, usize)>> = inputs
                .iter()
                .enumerate()
                .map(|(i, (keys, _))| {
                    let mut keys = keys.clone();
                    keys.sort_unstable();
                    keys.into_iter().enumerate().map(|(n, k)| (k, i, n)).collect()
                })
                .collect();
            let sources: Vec<MergeSource<'_, (u8, usize, usize)>> = sorted
                .iter()
                .zip(&inputs)
                .map(|(rows, (_, batch))| {
                    let mut batches: Vec<Result<Vec<_>>> =
                        rows.chunks(*batch).map(|c| Ok(c.to_vec())).collect();
                    batches.insert(batches.len() / 2, Ok(Vec::new()));
                    MergeSource {
                        batches: Box::new(batches.into_iter()) as RowBatches<'_, _>,
                        rows: std::collections::VecDeque::new(),
                    }
                })
                .collect();
            let order = |a: &(u8, usize, usize), b: &(u8, usize, usize)| a.0.cmp(&b.0);
            let to_batch = |rows: &[(u8, usize, usize)]| {
                let schema = Arc::new(Schema::new(vec![
                    Field::new("key", DataType::Int64, false),
                    Field::new("input", DataType::Int64, false),
                    Field::new("n", DataType::Int64, false),
                ]));
                let col = |f: fn(&(u8, usize, usize)) -> i64| {
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(f))) as arrow_array::ArrayRef
                };
                RecordBatch::try_new(
                    schema,
                    vec![col(|r| r.0.into()), col(|r| r.1 as i64), col(|r| r.2 as i64)],
                )
                .unwrap()
            };
            let mut tapped = 0;
            let merged: Vec<(u8, usize, usize)> =
                MergedBatches::new(sources, &order, &to_batch, |_: &_| tapped += 1)
                    .flat_map(|b| {
                        let b = b.unwrap();
                        let col = |i: usize| {
                            b.column(i).as_any().downcast_ref::<Int64Array>().unwrap().clone()
                        };
                        let (k, i, n) = (col(0), col(1), col(2));
                        (0..b.num_rows())
                            .map(|r| (k.value(r) as u8, i.value(r) as usize, n.value(r) as usize))
                            .collect::<Vec<_>>()
                    })
                    .collect();
            let mut want: Vec<(u8, usize, usize)> = sorted.concat();
            want.sort_by(order);
            proptest::prop_assert_eq!(tapped, want.len());
            proptest::prop_assert_eq!(merged, want);
        }
    }
}
