//! Backups (`dynakv::backup` has the format and why a restored node loses
//! nothing): the node's side, which pages out a storage snapshot, and the
//! tool's side, which writes a backup directory (`dynakv backup`) and
//! prepares a data directory from one (`dynakv restore`).
//!
//! A backup's pages all come from one fjall snapshot, held between pages
//! by the `Backups` actor on a thread of its own (reading a page blocks).
//! A snapshot idle for `IDLE` is dropped, so an abandoned backup does not
//! keep old versions on disk for long.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dynakv::backup::{
    Cursor, FORMAT, MANIFEST_FILE, MAX_PAGE_BYTES, Manifest, Page, PageRequest, RECORDS_FILE,
    Record, Records, Section, Tally,
};
use dynakv::config::{Config, StorageSection};
use dynakv::store::Store;
use dynakv::{Error, Result};
use fjall::Snapshot;

use crate::client::Client;
use crate::clock::wall_ms;
use crate::storage::{SnapshotPage, Storage};

/// A snapshot no page was asked of for this long is dropped.
const IDLE: Duration = Duration::from_secs(60);
/// Backups one node serves at once.
const MAX_OPEN: usize = 4;
/// The page size the tool asks for.
const PAGE_BYTES: u32 = 4 << 20;
/// Records a restore writes per storage batch.
const RESTORE_BATCH: usize = 1024;

struct Held {
    snapshot: Snapshot,
    taken_ms: u64,
    used: Instant,
}

/// The node's side: pages of storage snapshots.
pub struct Backups {
    storage: Storage,
    node: String,
    cluster: String,
    open: HashMap<u64, Held>,
}

/// The next page of a backup.
#[derive(Message)]
#[rtype(result = "Result<Page>")]
pub struct TakePage(pub PageRequest);

/// Drops the snapshots idle for `IDLE`.
#[derive(Message)]
#[rtype(result = "()")]
struct DropIdle;

impl Actor for Backups {
    type Context = SyncContext<Self>;
}

impl Backups {
    /// Starts the actor on a thread of its own, and a timer on the current
    /// arbiter that drops idle snapshots.
    pub fn start(storage: Storage, node: String, cluster: String) -> Addr<Backups> {
        let addr = SyncArbiter::start(1, move || Backups {
            storage: storage.clone(),
            node: node.clone(),
            cluster: cluster.clone(),
            open: HashMap::new(),
        });
        // Weak: the timer must not keep the actor alive once the node stops.
        let timer = addr.downgrade();
        actix::spawn(async move {
            let mut tick = actix_rt::time::interval(IDLE / 4);
            loop {
                tick.tick().await;
                match timer.upgrade() {
                    Some(backups) => backups.do_send(DropIdle),
                    None => break,
                }
            }
        });
        addr
    }

    /// The snapshot a page is asked of: a new one for `0`.
    fn held(&mut self, id: u64) -> Result<(u64, &mut Held)> {
        let id = if id == 0 {
            if self.open.len() >= MAX_OPEN {
                return Err(Error::Unavailable(format!(
                    "{MAX_OPEN} backups of this node are running; try again when one ends"
                )));
            }
            let id = getrandom::u64()
                .map_err(|e| Error::Internal(format!("no randomness: {e}")))?
                .max(1);
            self.open.insert(
                id,
                Held {
                    snapshot: self.storage.snapshot(),
                    taken_ms: wall_ms(),
                    used: Instant::now(),
                },
            );
            id
        } else {
            id
        };
        let held = self.open.get_mut(&id).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "backup {id:x} is gone from this node (idle for {} s, or the node \
                 restarted): start the backup again",
                IDLE.as_secs()
            ))
        })?;
        held.used = Instant::now();
        Ok((id, held))
    }
}

impl Handler<TakePage> for Backups {
    type Result = Result<Page>;

    fn handle(&mut self, TakePage(request): TakePage, _: &mut SyncContext<Self>) -> Result<Page> {
        let max_bytes = request.max_bytes.clamp(1, MAX_PAGE_BYTES) as usize;
        let (node, cluster, storage) = (
            self.node.clone(),
            self.cluster.clone(),
            self.storage.clone(),
        );
        let (id, held) = self.held(request.snapshot)?;
        let mut cursor = request.after.unwrap_or(Cursor {
            section: Section::Data,
            key: None,
        });
        let mut records = Vec::new();
        let mut bytes = 0;
        let next = loop {
            let SnapshotPage {
                records: rows,
                more,
            } = storage.snapshot_page(
                &held.snapshot,
                cursor.section,
                cursor.key.as_deref(),
                max_bytes.saturating_sub(bytes),
            )?;
            let last = rows.last().map(|(k, _)| k.clone());
            for (key, value) in rows {
                bytes += key.len() + value.len();
                records.push(Record {
                    section: cursor.section,
                    key,
                    value,
                });
            }
            if more {
                break Some(Cursor {
                    section: cursor.section,
                    key: last,
                });
            }
            match cursor.section.next() {
                Some(section) => cursor = Cursor { section, key: None },
                None => break None,
            }
            if bytes >= max_bytes {
                break Some(cursor);
            }
        };
        let taken_ms = held.taken_ms;
        if next.is_none() {
            self.open.remove(&id);
        }
        Ok(Page {
            snapshot: id,
            node,
            cluster,
            taken_ms,
            records,
            next,
        })
    }
}

impl Handler<DropIdle> for Backups {
    type Result = ();

    fn handle(&mut self, _: DropIdle, _: &mut SyncContext<Self>) {
        self.open.retain(|_, held| held.used.elapsed() < IDLE);
    }
}

fn io_error(what: &str, path: &Path) -> impl Fn(std::io::Error) -> Error {
    let at = format!("{what} {}", path.display());
    move |e| Error::Storage(format!("{at}: {e}"))
}

/// Whether `dir` is missing or empty.
fn is_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_error("reading", dir)(e)),
    }
}

/// `dynakv backup`: writes a backup of the node `client` talks to into
/// `dir` (created if missing; it must hold no backup yet): the records
/// first, the manifest last, each under a temporary name until complete.
/// Pages are asked for at most `max_bytes_per_sec` (0: as fast as the
/// node answers), so a backup leaves the node room for its clients.
pub async fn take(client: &Client, dir: &Path, max_bytes_per_sec: u64) -> Result<Manifest> {
    std::fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
    for name in [RECORDS_FILE, MANIFEST_FILE] {
        if dir.join(name).exists() {
            return Err(Error::InvalidRequest(format!(
                "{} already holds a backup ({name}); give an empty directory",
                dir.display()
            )));
        }
    }
    let partial = dir.join(format!("{RECORDS_FILE}.partial"));
    let mut out = BufWriter::new(File::create(&partial).map_err(io_error("creating", &partial))?);
    let mut tally = Tally::default();
    let mut request = PageRequest {
        snapshot: 0,
        after: None,
        max_bytes: PAGE_BYTES,
    };
    let began = tokio::time::Instant::now();
    let last = loop {
        let page = client.backup_page(request.clone()).await?;
        for record in &page.records {
            out.write_all(&tally.frame(record)?)
                .map_err(io_error("writing", &partial))?;
        }
        if max_bytes_per_sec > 0 {
            let due = Duration::from_secs_f64(tally.bytes as f64 / max_bytes_per_sec as f64);
            tokio::time::sleep_until(began + due).await;
        }
        match page.next {
            Some(after) => {
                request = PageRequest {
                    snapshot: page.snapshot,
                    after: Some(after),
                    max_bytes: PAGE_BYTES,
                }
            }
            None => break page,
        }
    };
    let file = out
        .into_inner()
        .map_err(|e| Error::Storage(format!("writing {}: {e}", partial.display())))?;
    file.sync_all().map_err(io_error("syncing", &partial))?;
    let records = dir.join(RECORDS_FILE);
    std::fs::rename(&partial, &records).map_err(io_error("renaming", &partial))?;
    let manifest = Manifest {
        format: FORMAT,
        node: last.node,
        cluster: last.cluster,
        taken_ms: last.taken_ms,
        keys: tally.keys,
        hints: tally.hints,
        meta: tally.meta,
        bytes: tally.bytes,
        crc32: tally.crc32,
    };
    let partial = dir.join(format!("{MANIFEST_FILE}.partial"));
    std::fs::write(&partial, manifest.to_json()).map_err(io_error("writing", &partial))?;
    File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io_error("syncing", &partial))?;
    std::fs::rename(&partial, dir.join(MANIFEST_FILE)).map_err(io_error("renaming", &partial))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("syncing", dir))?;
    Ok(manifest)
}

/// Reads the manifest of the backup in `from` and checks every record
/// against it and its frames' checksums.
pub fn verify(from: &Path) -> Result<Manifest> {
    let path = from.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::InvalidRequest(format!(
            "{} is not a finished backup (no readable {MANIFEST_FILE}: {e})",
            from.display()
        ))
    })?;
    let manifest = Manifest::parse(&text)?;
    let mut records = open_records(from)?;
    while records.next_record()?.is_some() {}
    manifest.check(&records.tally)?;
    Ok(manifest)
}

fn open_records(from: &Path) -> Result<Records<BufReader<File>>> {
    let path = from.join(RECORDS_FILE);
    let file = File::open(&path).map_err(io_error("opening", &path))?;
    Ok(Records::new(BufReader::new(file)))
}

/// `dynakv restore`: checks the backup in `from` whole, then writes its
/// records into `data_dir`, which must be missing or empty, with the
/// storage settings of `config`. A restore that fails midway removes what
/// it wrote.
///
/// A backup older than `anti_entropy.keep_deleted_ms` is refused unless
/// `force`: the cluster may have collected the tombstones of deletes made
/// since, and the restored node would bring those values back.
///
/// With `same_node`, the backup must be of the node `config` names.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    config: &Config,
    same_node: bool,
    force: bool,
) -> Result<Manifest> {
    if !is_empty_dir(data_dir)? {
        return Err(Error::InvalidRequest(format!(
            "{} is not empty: restore into an empty or new data directory",
            data_dir.display()
        )));
    }
    let manifest = verify(from)?;
    manifest.restorable(
        same_node.then_some(config.node.id.as_str()),
        wall_ms(),
        config.anti_entropy.keep_deleted_ms,
        force,
    )?;
    let written = write_records(from, data_dir, &config.storage, &manifest);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(data_dir);
    }
    written?;
    Ok(manifest)
}

fn write_records(
    from: &Path,
    data_dir: &Path,
    settings: &StorageSection,
    manifest: &Manifest,
) -> Result<()> {
    let storage = Storage::open(data_dir, settings, &manifest.node)?;
    let mut records = open_records(from)?;
    storage.begin()?;
    let mut in_batch = 0;
    while let Some(record) = records.next_record()? {
        storage
            .section(record.section)
            .put(&record.key, &record.value)?;
        in_batch += 1;
        if in_batch == RESTORE_BATCH {
            storage.commit()?;
            storage.begin()?;
            in_batch = 0;
        }
    }
    storage.commit()?;
    // The file was checked whole before; this guards against it changing
    // underneath.
    manifest.check(&records.tally)?;
    storage.persist()
}
