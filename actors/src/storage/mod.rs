//! fjall storage: one database per node with the keyspaces `data` (sibling
//! sets keyed by partition ++ key), `hints` (writes held for other nodes) and
//! `meta` (membership view and node facts).
//!
//! `insert` only reaches the OS; durability comes from `persist`, which the
//! storage worker calls per batch of writes (`fsync = "always"`), and from
//! `persist_beside_writes`, which the syncer calls on a timer
//! (`"periodic"`), for barriers and at shutdown without stalling writes.
//!
//! Between `begin` and `commit`, writes to the stores are held back and
//! committed as one fjall batch: one journal write instead of one per
//! insert (the storage worker applies a batch of requests that way). Reads
//! in between see the held writes; a scan commits them first.
//!
//! The data store keeps a row cache: the latest stored copy (or absence) of
//! recently used keys, written through on every put and remove, so reads
//! and read-modify-writes of hot keys skip fjall's memtable and table
//! lookups (the top cost in profiles under load). The replica's front
//! answers reads from it on its own thread (`FjallStore::cached`), never
//! touching fjall there.

use std::any::Any;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::ops::Bound;

use dynakv::backup::Section;
use dynakv::config::StorageSection;
use dynakv::store::Store;
use dynakv::{Error, Result};
use fjall::{
    AbstractTree, Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch as WriteBatch,
    PersistMode, Readable, Slice, Snapshot,
};
use tracing::warn;

mod store;
pub use store::FjallStore;

/// Where `meta` records the Q this directory's stored keys are laid out
/// at (`cluster.partitions` when it was created).
const LAYOUT_KEY: &[u8] = b"layout";

fn storage_error(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// Writes held back since `begin`.
struct Pending {
    batch: WriteBatch,
    /// What they left, per store (indexed by `Slot`) and key (None:
    /// removed). Keys and values are shared with the batch and the row
    /// cache, not copied for each.
    overlay: [HashMap<Slice, Option<Slice>>; 3],
}

/// Which keyspace a store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Data = 0,
    Hints = 1,
    Meta = 2,
}

/// Weighs a cached row: key, value and bookkeeping.
#[derive(Clone)]
struct RowWeight;

impl quick_cache::Weighter<Slice, Option<Slice>> for RowWeight {
    fn weight(&self, key: &Slice, value: &Option<Slice>) -> u64 {
        (key.len() + value.as_ref().map_or(0, |v| v.len()) + 64) as u64
    }
}

type RowCache = quick_cache::sync::Cache<Slice, Option<Slice>, RowWeight>;

/// A memtable of fjall's (lsm-tree's type is not re-exported by name).
type Memtable = Arc<dyn Any + Send + Sync>;

/// What the stores of one database share.
struct Shared {
    pending: Mutex<Option<Pending>>,
    /// The data store's row cache.
    rows: Option<RowCache>,
    /// An fsync failed: what it should have made durable may be lost (the
    /// kernel may drop the dirty pages and report success next time), so
    /// every later write and sync is refused, as fjall does after its own.
    sync_failed: AtomicBool,
    /// Memtables sealed here, held until no one else holds them (see
    /// `Storage::free_memtables`).
    memtables: Mutex<Vec<Memtable>>,
    /// Size at which a keyspace's memtable is sealed (see `seal_if_full`).
    memtable_bytes: u64,
}

impl Shared {
    fn pending(&self) -> Result<std::sync::MutexGuard<'_, Option<Pending>>> {
        self.pending
            .lock()
            .map_err(|_| Error::Storage("pending writes poisoned".into()))
    }

    /// Fails once a sync has failed (see `sync_failed`).
    fn refuse_after_failed_sync(&self) -> Result<()> {
        if self.sync_failed.load(Ordering::SeqCst) {
            return Err(Error::Storage(
                "an fsync failed earlier; writes are refused until the node restarts".into(),
            ));
        }
        Ok(())
    }

    /// Seals `keyspace`'s memtable (for fjall to write out) once it holds
    /// `memtable_bytes`, and keeps hold of it, so that fjall never frees it
    /// (`Storage::free_memtables` does). The writes are in by then: a
    /// failure here is logged, not reported as theirs (the memtable grows
    /// on, up to fjall's backstop).
    fn seal_if_full(&self, keyspace: &Keyspace) {
        if keyspace.tree.active_memtable().size() >= self.memtable_bytes {
            self.seal(keyspace);
        }
    }

    /// Seals `keyspace`'s memtable and keeps hold of it (see
    /// `seal_if_full`).
    fn seal(&self, keyspace: &Keyspace) {
        let active = keyspace.tree.active_memtable();
        // Sealed either way: by this call or by fjall just before it.
        if let Err(e) = keyspace.rotate_memtable() {
            warn!(error = %e, "could not seal a memtable");
            return;
        }
        if let Ok(mut kept) = self.memtables.lock() {
            kept.push(active);
        }
    }

    /// Commits what is held back, if anything.
    fn commit(&self) -> Result<()> {
        self.refuse_after_failed_sync()?;
        let held = self.pending()?.take();
        match held {
            Some(p) if !p.batch.is_empty() => p.batch.commit().map_err(|e| {
                // The cache may hold rows that never reached storage.
                if let Some(rows) = &self.rows {
                    rows.clear();
                }
                storage_error(e)
            }),
            _ => Ok(()),
        }
    }
}

#[derive(Clone)]
pub struct Storage {
    dir: PathBuf,
    db: Database,
    data: Keyspace,
    hints: Keyspace,
    meta: Keyspace,
    shared: Arc<Shared>,
}

impl Storage {
    /// Opens (or creates) the database of node `node` in `dir` with the
    /// sizes of `settings` (its fsync mode is the replica's business).
    pub fn open(dir: &Path, settings: &StorageSection, node: &str) -> Result<Storage> {
        let StorageSection {
            cache_mb,
            row_cache_mb,
            ..
        } = *settings;
        let memtable_bytes = settings.memtable_bytes(node);
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let db = Database::builder(dir)
            .cache_size(cache_mb.saturating_mul(1 << 20))
            .open()
            .map_err(|e| Error::Storage(format!("cannot open {}: {e}", dir.display())))?;
        // fjall records a keyspace's memtable size when it creates it and
        // keeps that one on every later open, so the configured size is
        // enforced here instead (`seal_if_full`), with fjall's own as a
        // backstop above any size the configuration allows. Directories
        // created before keep their recorded size as that backstop.
        // Index and filter blocks stay in memory at every level (fjall's
        // default keeps only the upper levels' there): a point read in a
        // deep level otherwise searched index blocks that missed the block
        // cache (about 20 MB a node at 10,000,000 keys). Measured at
        // 2,000,000 keys a node (`scale.sh`, two pairs): gets 1.24x and
        // 1.25x, puts 1.04x and 1.25x, RSS +40 MB a node. Values of 512
        // bytes and more (encoded sibling sets) go to blob files, out of
        // the compactions (fjall's key-value separation): at 64 KiB values
        // puts went from 873 to 3,099 a second and their p99 from 349 to
        // 37 ms (`peers.sh`, VALUE_SIZE=65536, with 4 KiB as the
        // threshold); 512 instead of 4 KiB then gave 1 KiB values 1.10-1.24x
        // the puts and gets unchanged. A keyspace keeps the options it was
        // created with: a data directory made before stays as it was.
        let keyspace = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(MEMTABLE_BACKSTOP)
                    .index_block_pinning_policy(fjall::config::PinningPolicy::all(true))
                    .filter_block_pinning_policy(fjall::config::PinningPolicy::all(true))
                    .with_kv_separation(Some(
                        fjall::KvSeparationOptions::default().separation_threshold(512),
                    ))
            })
            .map_err(storage_error)
        };
        Ok(Storage {
            data: keyspace("data")?,
            hints: keyspace("hints")?,
            meta: keyspace("meta")?,
            dir: dir.to_path_buf(),
            db,
            shared: Arc::new(Shared {
                pending: Mutex::new(None),
                sync_failed: AtomicBool::new(false),
                memtables: Mutex::new(Vec::new()),
                memtable_bytes,
                rows: (row_cache_mb > 0).then(|| {
                    let bytes = row_cache_mb.saturating_mul(1 << 20);
                    // ~200-byte rows: the item estimate only sizes tables.
                    RowCache::with_weighter((bytes / 200) as usize, bytes, RowWeight)
                }),
            }),
        })
    }

    /// Checks `cluster.partitions` against the Q this directory's stored
    /// keys are laid out at, recording it at the first start (a directory
    /// from before the record has always used the configured one, which
    /// could not change then). An operator who sets it to the cluster's Q
    /// after a split would make every stored key unreadable: refused.
    pub fn check_layout(&self, partitions: u32) -> Result<()> {
        let mut meta = self.meta();
        let Some(bytes) = meta.get(LAYOUT_KEY)? else {
            meta.put(LAYOUT_KEY, &partitions.to_be_bytes())?;
            return self.persist();
        };
        let at = <[u8; 4]>::try_from(bytes.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| Error::Storage("unreadable layout record in meta".into()))?;
        if at != partitions {
            return Err(Error::Config(format!(
                "cluster.partitions = {partitions}, but the data directory {} stores its keys at \
                 {at}: set it back to {at} (the Q this node was first started with, which stays \
                 when the cluster splits)",
                self.dir.display()
            )));
        }
        Ok(())
    }

    fn store(&self, keyspace: &Keyspace, slot: Slot) -> FjallStore {
        FjallStore {
            keyspace: keyspace.clone(),
            slot,
            shared: self.shared.clone(),
        }
    }

    pub fn data(&self) -> FjallStore {
        self.store(&self.data, Slot::Data)
    }

    pub fn hints(&self) -> FjallStore {
        self.store(&self.hints, Slot::Hints)
    }

    pub fn meta(&self) -> FjallStore {
        self.store(&self.meta, Slot::Meta)
    }

    /// The store of one section of a backup.
    pub fn section(&self, section: Section) -> FjallStore {
        match section {
            Section::Data => self.data(),
            Section::Hints => self.hints(),
            Section::Meta => self.meta(),
        }
    }

    /// A consistent view of every store as it is now, for a backup.
    pub fn snapshot(&self) -> Snapshot {
        self.db.snapshot()
    }

    /// Records of `section` in `snapshot` after `after` (None: from the
    /// first), up to about `max_bytes` of keys and values (at least one
    /// record if any is left).
    pub fn snapshot_page(
        &self,
        snapshot: &Snapshot,
        section: Section,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<SnapshotPage> {
        let keyspace = match section {
            Section::Data => &self.data,
            Section::Hints => &self.hints,
            Section::Meta => &self.meta,
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        let mut bytes = 0;
        for guard in snapshot.range::<&[u8], _>(keyspace, (from, Bound::Unbounded)) {
            if bytes >= max_bytes {
                return Ok(SnapshotPage {
                    records: out,
                    more: true,
                });
            }
            let (k, v) = guard.into_inner().map_err(storage_error)?;
            bytes += k.len() + v.len();
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(SnapshotPage {
            records: out,
            more: false,
        })
    }

    /// Holds writes back until `commit` (committing any still held).
    pub fn begin(&self) -> Result<()> {
        self.shared.commit()?;
        *self.shared.pending()? = Some(Pending {
            batch: self.db.batch(),
            overlay: Default::default(),
        });
        Ok(())
    }

    /// Writes what was held back since `begin`, as one batch.
    pub fn commit(&self) -> Result<()> {
        self.shared.commit()?;
        for keyspace in [&self.data, &self.hints, &self.meta] {
            self.shared.seal_if_full(keyspace);
        }
        Ok(())
    }

    /// Makes everything written so far durable (fsync), holding fjall's
    /// journal lock throughout: for the storage worker, the only writer,
    /// which waits for its own syncs anyway (`fsync = "always"`).
    pub fn persist(&self) -> Result<()> {
        self.guarded_sync(|| self.db.persist(PersistMode::SyncAll).map_err(storage_error))
    }

    /// Makes everything written so far durable (fsync) without stalling
    /// writes, for syncs beside the writer (the periodic timer, barriers).
    ///
    /// fjall's own sync holds its journal lock for the whole fsync, which
    /// stalled every write of the node for each periodic sync (tens of ms
    /// under load). Here the lock is held only to hand the journal's buffer
    /// to the OS, and the fsync runs on a handle of our own. That covers
    /// every write before the call: fjall fsyncs a journal when it seals
    /// it, so the only unsynced bytes are in the journal active at the
    /// hand-over, and the newest journal found afterwards is that one or a
    /// later one (and then that one was sealed). If no journal can be
    /// opened, fjall's own sync does the work.
    pub fn persist_beside_writes(&self) -> Result<()> {
        self.guarded_sync(|| {
            self.db
                .persist(PersistMode::Buffer)
                .map_err(storage_error)?;
            match newest_journal(&self.dir).and_then(|p| File::open(p).ok()) {
                Some(journal) => journal.sync_data().map_err(storage_error),
                None => self.db.persist(PersistMode::SyncAll).map_err(storage_error),
            }
        })
    }

    /// Runs `sync` unless one failed before, and remembers if this one
    /// fails: nothing is acknowledged after a failed sync.
    fn guarded_sync(&self, sync: impl FnOnce() -> Result<()>) -> Result<()> {
        self.shared.refuse_after_failed_sync()?;
        let synced = sync();
        if synced.is_err() {
            self.shared.sync_failed.store(true, Ordering::SeqCst);
        }
        synced
    }

    /// Frees, on the calling thread, the sealed memtables fjall has
    /// written out and let go of; returns how many. The syncer calls it
    /// every second.
    ///
    /// fjall would free a flushed memtable (a skiplist of some 150k nodes
    /// at 32 MiB) while it holds a tree's version lock, and every write of
    /// the node waits for that: stalls of 80-240 ms each time a memtable
    /// filled, on all replicas at once since they fill in step. Memtables
    /// fjall seals itself (only at its backstop size, or at the size an
    /// older data directory recorded) are still freed that way.
    pub fn free_memtables(&self) -> usize {
        let flushed: Vec<Memtable> = {
            let Ok(mut kept) = self.shared.memtables.lock() else {
                return 0;
            };
            let (flushed, live) = kept.drain(..).partition(|m| Arc::strong_count(m) == 1);
            *kept = live;
            flushed
        };
        // Freed here, after the lock: the writer takes it to seal.
        flushed.len()
    }

    /// Lets fjall drop old journals that only the rarely written
    /// keyspaces still need: once more than `JOURNALS_KEPT` are on disk,
    /// seals the memtables of hints and meta that hold anything, so that
    /// they are written out (returns whether there were more). The syncer
    /// calls it every second.
    ///
    /// A journal is kept until every keyspace has written out what it
    /// holds of it. The data keyspace fills its memtable within a few
    /// journals, but meta and hints can take hours, and until then every
    /// journal stays, up to fjall's 512 MiB, and a start after a SIGKILL
    /// replays them all (2.0-2.6 s to the first get at 2,000,000 keys).
    /// Capping fjall's journal size instead forced data memtables out
    /// before they were full and cost a quarter of the puts.
    pub fn release_journals(&self) -> bool {
        if self.db.journal_count() <= JOURNALS_KEPT {
            return false;
        }
        for keyspace in [&self.hints, &self.meta] {
            if keyspace.tree.active_memtable().size() > 0 {
                self.shared.seal(keyspace);
            }
        }
        true
    }

    /// Bytes on disk (tables; the journal is preallocated and not counted).
    pub fn disk_bytes(&self) -> u64 {
        self.data.disk_space() + self.hints.disk_space()
    }
}

/// Records of one section of a snapshot (`Storage::snapshot_page`).
pub struct SnapshotPage {
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// The section holds more after these.
    pub more: bool,
}

/// Above the largest memtable the configuration allows (1024 MiB, scaled
/// by up to 1.25).
const MEMTABLE_BACKSTOP: u64 = 1280 << 20;

/// Journals on disk past which `release_journals` writes out the rarely
/// written keyspaces: the one being written and those that hold what the
/// data keyspace's memtables have not written out yet (fjall starts a
/// journal at the first flush past 64 MB).
const JOURNALS_KEPT: usize = 2;

/// The newest journal of the database in `dir` (fjall keeps them there as
/// `<id>.jnl`, the active one with the highest id).
fn newest_journal(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let id: u64 = entry
                .file_name()
                .to_str()?
                .strip_suffix(".jnl")?
                .parse()
                .ok()?;
            Some((id, entry.path()))
        })
        .max_by_key(|(id, _)| *id)
        .map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::store::ROW_CACHE_MAX_VALUE;
    use super::*;

    #[test]
    fn the_fjall_store_behaves_like_the_memory_twin() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = StorageSection {
            cache_mb: 8,
            row_cache_mb: 1,
            ..StorageSection::default()
        };
        let storage = Storage::open(dir.path(), &sizes, "n1").unwrap();
        let mut fj = storage.data();
        let mut mem = dynakv::store::MemStore::default();
        for (k, v) in [
            (&[1u8, 1][..], &b"a"[..]),
            (&[1, 2], b"b"),
            (&[2, 1], b"c"),
            (&[1, 3], b"d"),
        ] {
            fj.put(k, v).unwrap();
            mem.put(k, v).unwrap();
        }
        fj.remove(&[1, 3]).unwrap();
        mem.remove(&[1, 3]).unwrap();
        for (prefix, after, limit) in [
            (&[1u8][..], None, 10),
            (&[1], Some(&[1u8, 1][..]), 10),
            (&[], None, 2),
            (&[2], None, 10),
        ] {
            assert_eq!(
                fj.scan(prefix, after, limit).unwrap(),
                mem.scan(prefix, after, limit).unwrap()
            );
        }
        assert_eq!(fj.get(&[1, 2]).unwrap(), Some(b"b".to_vec()));
        assert_eq!(fj.get(&[1, 3]).unwrap(), None);
        storage.persist().unwrap();
    }

    #[test]
    fn persist_syncs_the_journal_fjall_writes_to() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &StorageSection::default(), "n1").unwrap();
        let value = b"a value to find in the journal";
        storage.data().put(b"k", value).unwrap();
        storage.persist_beside_writes().unwrap();
        // The file persist syncs on its own handle is where fjall journals
        // writes; if fjall moved its journals this would find none.
        let journal = newest_journal(dir.path()).expect("a journal");
        let bytes = std::fs::read(journal).unwrap();
        assert!(bytes.windows(value.len()).any(|w| w == value));
    }

    #[test]
    fn flushed_memtables_are_freed_by_the_keeper_not_by_fjall() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StorageSection {
            memtable_mb: 1,
            ..StorageSection::default()
        };
        let storage = Storage::open(dir.path(), &settings, "n1").unwrap();
        let mut data = storage.data();
        let value = [7u8; 1000];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut written = 0u32;
        // Each freed memtable was let go of by fjall while the keeper
        // still held it, so fjall's lock was not held while it was freed.
        while storage.free_memtables() == 0 {
            assert!(std::time::Instant::now() < deadline, "no memtable freed");
            for _ in 0..100 {
                data.put(&written.to_be_bytes(), &value).unwrap();
                written += 1;
            }
        }
        // A memtable filled, was flushed and freed: its writes live on in
        // tables.
        assert!(written as u64 * value.len() as u64 > settings.memtable_bytes("n1"));
        for key in [0u32, written / 2, written - 1] {
            assert_eq!(
                data.get(&key.to_be_bytes()).unwrap().as_deref(),
                Some(&value[..])
            );
        }
    }

    #[test]
    fn journals_only_meta_and_hints_hold_are_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StorageSection {
            memtable_mb: 1,
            ..StorageSection::default()
        };
        let storage = Storage::open(dir.path(), &settings, "n1").unwrap();
        storage.meta().put(b"m", b"meta").unwrap();
        storage.hints().put(b"h", b"hint").unwrap();
        let mut data = storage.data();
        let mut written = 0u64;
        let mut write_more = || {
            for _ in 0..1000 {
                data.put(&written.to_be_bytes(), &[7u8; 400]).unwrap();
                written += 400;
            }
            storage.free_memtables();
            written
        };
        // The data keyspace writes out its memtable every megabyte, but
        // the first writes of meta and hints keep every journal.
        let mut at = 0;
        while storage.db.journal_count() <= JOURNALS_KEPT + 1 {
            assert!(at < 1 << 30, "fjall started no journal");
            at = write_more();
        }
        // Let go of within two more journals' worth of writes, well before
        // fjall's own cap (512 MiB) would force them out.
        assert!(storage.release_journals());
        let within = at + (128 << 20);
        while storage.db.journal_count() > JOURNALS_KEPT {
            let now = write_more();
            assert!(now < within, "{} journals kept", storage.db.journal_count());
            storage.release_journals();
        }
        assert_eq!(
            storage.meta().get(b"m").unwrap().as_deref(),
            Some(&b"meta"[..])
        );
        assert_eq!(
            storage.hints().get(b"h").unwrap().as_deref(),
            Some(&b"hint"[..])
        );
    }

    #[test]
    fn the_configured_memtable_size_holds_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let value = [7u8; 1000];
        // Writes 3 MiB in batches, as the storage worker does; returns the
        // largest the active memtable grew.
        let fill = |storage: &Storage, first: u32| {
            let mut data = storage.data();
            let mut largest = 0;
            for batch in 0..30 {
                storage.begin().unwrap();
                for i in 0..100u32 {
                    data.put(&(first + batch * 100 + i).to_be_bytes(), &value)
                        .unwrap();
                }
                storage.commit().unwrap();
                largest = largest.max(storage.data.tree.active_memtable().size());
            }
            largest
        };
        let with = |memtable_mb| StorageSection {
            memtable_mb,
            ..StorageSection::default()
        };
        let small = with(1).memtable_bytes("n1");
        let storage = Storage::open(dir.path(), &with(1), "n1").unwrap();
        let largest = fill(&storage, 0);
        assert!(largest < small, "{largest} >= {small}");
        drop(storage);
        // Reopened with larger tables: 3 MiB now fit in one (fjall alone
        // would keep the size the keyspace was created with).
        let storage = Storage::open(dir.path(), &with(4), "n1").unwrap();
        let largest = fill(&storage, 1 << 20);
        assert!(largest > 2 * small, "{largest} <= {}", 2 * small);
        drop(storage);
        // And smaller again.
        let storage = Storage::open(dir.path(), &with(1), "n1").unwrap();
        assert!(fill(&storage, 2 << 20) < small);
        assert_eq!(
            storage.data().get(&5u32.to_be_bytes()).unwrap().as_deref(),
            Some(&value[..])
        );
    }

    #[test]
    fn a_data_directory_keeps_the_partition_count_it_was_laid_out_at() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Storage::open(dir.path(), &StorageSection::default(), "n1").unwrap();
        let storage = open();
        storage.check_layout(256).unwrap();
        drop(storage);
        let storage = open();
        storage.check_layout(256).unwrap();
        let e = storage.check_layout(512).unwrap_err();
        assert!(e.to_string().contains("set it back to 256"), "{e}");
    }

    #[test]
    fn the_newest_journal_has_the_highest_id() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["2.jnl", "10.jnl", "9.jnl", "11.tmp", "x.jnl", "lock"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(newest_journal(dir.path()), Some(dir.path().join("10.jnl")));
        assert_eq!(newest_journal(&dir.path().join("missing")), None);
    }

    #[test]
    fn after_a_failed_fsync_writes_and_syncs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &StorageSection::default(), "n1").unwrap();
        let mut fj = storage.data();
        fj.put(b"k", b"v").unwrap();
        // A real fsync failure: the newest "journal" is a device that
        // cannot be synced (fsync answers EINVAL).
        std::os::unix::fs::symlink("/dev/null", dir.path().join("4294967296.jnl")).unwrap();
        assert!(storage.persist_beside_writes().is_err());
        std::fs::remove_file(dir.path().join("4294967296.jnl")).unwrap();
        // Syncing the real journal would now succeed, but what the failed
        // sync covered may be gone: nothing more is acknowledged.
        assert!(storage.persist_beside_writes().is_err());
        assert!(storage.persist().is_err());
        assert!(fj.put(b"k", b"v2").is_err());
        assert!(fj.remove(b"k").is_err());
        assert_eq!(fj.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn the_row_cache_answers_only_what_it_knows() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &StorageSection::default(), "n1").unwrap();
        let mut fj = storage.data();
        fj.put(b"k", b"v1").unwrap();
        assert_eq!(fj.cached(b"k"), Some(Some(b"v1".to_vec())));
        // A write held in a batch is known as soon as it is applied.
        storage.begin().unwrap();
        fj.put(b"k", b"v2").unwrap();
        assert_eq!(fj.cached(b"k"), Some(Some(b"v2".to_vec())));
        storage.commit().unwrap();
        fj.remove(b"k").unwrap();
        assert_eq!(fj.cached(b"k"), Some(None));
        // Never seen: the cache cannot say; a storage read teaches it.
        assert_eq!(fj.cached(b"other"), None);
        assert_eq!(fj.get(b"other").unwrap(), None);
        assert_eq!(fj.cached(b"other"), Some(None));
        // Other keyspaces have no row cache.
        let mut hints = storage.hints();
        hints.put(b"k", b"h").unwrap();
        assert_eq!(hints.cached(b"k"), None);
        // A large value is not kept, and its write forgets the small copy
        // before it; reads then come from storage.
        let large = vec![7u8; ROW_CACHE_MAX_VALUE + 1];
        fj.put(b"big", b"small").unwrap();
        fj.put(b"big", &large).unwrap();
        assert_eq!(fj.cached(b"big"), None);
        assert_eq!(fj.get(b"big").unwrap(), Some(large.clone()));
        assert_eq!(fj.cached(b"big"), None, "a read does not keep it either");
        storage.begin().unwrap();
        fj.put(b"big", b"small again").unwrap();
        assert_eq!(fj.cached(b"big"), Some(Some(b"small again".to_vec())));
        fj.put(b"big", &large).unwrap();
        assert_eq!(fj.cached(b"big"), None);
        storage.commit().unwrap();
        assert_eq!(fj.get(b"big").unwrap(), Some(large));
        // A tail's delta is never kept: only scans read it.
        let tail = [&dynakv::store::TAIL[..], b"k1"].concat();
        fj.put(&tail, b"delta").unwrap();
        assert_eq!(fj.cached(&tail), None);
        assert_eq!(
            fj.scan(&tail, None, 1).unwrap(),
            vec![(tail.clone(), b"delta".to_vec())]
        );
    }

    #[test]
    fn without_a_row_cache_nothing_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = StorageSection {
            row_cache_mb: 0,
            ..StorageSection::default()
        };
        let storage = Storage::open(dir.path(), &sizes, "n1").unwrap();
        let mut fj = storage.data();
        fj.put(b"k", b"v").unwrap();
        assert_eq!(fj.cached(b"k"), None);
        assert_eq!(fj.get(b"k").unwrap(), Some(b"v".to_vec()));
        // Writes held in a batch are read back from it, per keyspace.
        storage.begin().unwrap();
        fj.put(b"k", b"v2").unwrap();
        fj.remove(b"gone").unwrap();
        let mut hints = storage.hints();
        hints.put(b"k", b"h").unwrap();
        assert_eq!(fj.get(b"k").unwrap(), Some(b"v2".to_vec()));
        assert_eq!(fj.get(b"gone").unwrap(), None);
        assert_eq!(hints.get(b"k").unwrap(), Some(b"h".to_vec()));
        assert_eq!(storage.meta().get(b"k").unwrap(), None);
        storage.commit().unwrap();
        assert_eq!(fj.get(b"k").unwrap(), Some(b"v2".to_vec()));
    }
}
