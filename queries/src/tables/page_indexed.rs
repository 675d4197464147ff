//! The Parquet readers of projection scans. Two things DataFusion's cached reader does
//! not do for local files read row group by row group:
//!
//! - **The page index is cached with the footer**, for scans with a predicate. DataFusion's
//!   opener reads a footer without the page index, and loads the index only when the
//!   predicate can use it; a reader asked for no index caches none, so every query read
//!   and parsed the page index of every file again. At 10M records that was a third of a
//!   one-cluster billing lookup.
//! - **Data is read in place.** The object store's local file system opens the file and
//!   hands each read to a blocking thread; a one-cluster lookup reads a few kilobytes from
//!   each of hundreds of row groups, and the thread hand-offs cost more than the reads.
//!   These readers keep the file open and read with `pread` on the calling thread: the
//!   projection files are local, written moments or days ago, and in the page cache.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetFileReaderFactory,
};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::object_store::local::LocalFileSystem;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, Label, MetricBuilder};
use futures::FutureExt;
use futures::future::BoxFuture;

/// Makes readers that read their data in place and, for a scan with a predicate (the
/// page index can prune its pages), read and cache a file's page index (when it has one)
/// with its footer: [`CachedParquetFileReaderFactory`]'s, asked for the index. A scan
/// without a predicate (`count(*)`, a whole table) leaves the index out of the cache:
/// it would not use it, and a year's audit page indexes are tens of MiB.
pub(crate) struct PageIndexedReaders {
    /// The readers of footers, through the metadata cache.
    pub(crate) footers: CachedParquetFileReaderFactory,
    /// Whether the scan has a predicate.
    pub(crate) page_index: bool,
}

impl fmt::Debug for PageIndexedReaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageIndexedReaders")
            .field("footers", &self.footers)
            .field("page_index", &self.page_index)
            .finish()
    }
}

impl ParquetFileReaderFactory for PageIndexedReaders {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        let location = &partitioned_file.object_meta.location;
        let path = LocalFileSystem::new()
            .path_to_filesystem(location)
            .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?;
        // Counted with the footer reads of the inner reader: EXPLAIN ANALYZE sums them.
        let bytes_scanned = MetricBuilder::new(metrics)
            .with_label(Label::new("filename", location.to_string()))
            .counter("bytes_scanned", partition_index);
        let footer = self.footers.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?;
        Ok(Box::new(PageIndexedReader {
            footer,
            path,
            file: None,
            bytes_scanned,
            page_index: self.page_index,
        }))
    }
}

/// A reader whose metadata includes the page index (if the file has one) when asked to,
/// and whose data reads are `pread`s of the file, opened once.
struct PageIndexedReader {
    /// Reads the footer and page index through the metadata cache.
    footer: Box<dyn AsyncFileReader + Send>,
    path: PathBuf,
    file: Option<std::fs::File>,
    bytes_scanned: Count,
    /// Whether its metadata is asked for with the page index.
    page_index: bool,
}

impl PageIndexedReader {
    fn read(&mut self, range: Range<u64>) -> ParquetResult<bytes::Bytes> {
        use std::os::unix::fs::FileExt;
        let failed = |path: &PathBuf, e: std::io::Error| {
            ParquetError::External(Box::new(std::io::Error::new(
                e.kind(),
                format!("reading {}: {e}", path.display()),
            )))
        };
        let file = match &mut self.file {
            Some(f) => f,
            None => self
                .file
                .insert(std::fs::File::open(&self.path).map_err(|e| failed(&self.path, e))?),
        };
        let len = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, range.start)
            .map_err(|e| failed(&self.path, e))?;
        self.bytes_scanned.add(len);
        Ok(bytes::Bytes::from(buf))
    }
}

impl AsyncFileReader for PageIndexedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<bytes::Bytes>> {
        futures::future::ready(self.read(range)).boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<bytes::Bytes>>> {
        let read: ParquetResult<Vec<bytes::Bytes>> =
            ranges.into_iter().map(|r| self.read(r)).collect();
        futures::future::ready(read).boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        if !self.page_index {
            return self.footer.get_metadata(options);
        }
        let options = options
            .cloned()
            .unwrap_or_default()
            .with_page_index_policy(PageIndexPolicy::Optional);
        async move { self.footer.get_metadata(Some(&options)).await }.boxed()
    }
}
