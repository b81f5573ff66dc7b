//! Backups: one node's stored state as a file of records and a manifest.
//!
//! `dynakv backup` asks a node for its storage page by page, all pages read
//! from one storage snapshot (so the backup is one consistent moment of
//! that node), and writes them to a directory: `records`, one frame per
//! stored record (data, then hints, then the membership view), and then
//! `manifest.json`: whose backup it is, when it was taken, what it holds,
//! and the CRC32 of `records`. A directory without a manifest is a backup
//! that did not finish.
//!
//! `dynakv restore` checks the manifest, the checksum and every frame
//! before it writes anything, then writes the records byte for byte into
//! an empty data directory: siblings, tombstones and data-type states are
//! restored exactly as they were stored.
//!
//! A restored node is a fresh writer: a node's writer identity is new at
//! every start (`crate::version`), so it never mints a dot it minted before
//! the backup. (A node that reused its dots after losing data lost writes
//! in Riak, KV679.) Writes made after the backup come back from the other
//! replicas through anti-entropy and read repair.

use std::io::Read;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The backup format this build writes and reads.
pub const FORMAT: u32 = 1;
/// The records' file in a backup directory.
pub const RECORDS_FILE: &str = "records";
/// The manifest's file in a backup directory, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Most bytes of records a node puts in one page (a page holds at least
/// one record, so a larger record makes a larger page).
pub const MAX_PAGE_BYTES: u32 = 8 << 20;
/// Largest record frame a restore accepts: a 4 MiB value is far below, a
/// data type's state (a large set) may be some MiB.
const MAX_RECORD_BYTES: u32 = 256 << 20;
/// Bytes of a frame's header: the record's length, then its CRC32.
const HEADER: usize = 8;

/// Which of a node's stores a record comes from, in the order a backup
/// holds them. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Section {
    /// Stored keys and their sibling sets.
    Data,
    /// Writes held for other nodes.
    Hints,
    /// The membership view and the node's own facts.
    Meta,
}

impl Section {
    pub const ALL: [Section; 3] = [Section::Data, Section::Hints, Section::Meta];

    /// The section after this one, if any.
    pub fn next(self) -> Option<Section> {
        Section::ALL.into_iter().find(|s| *s > self)
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub section: Section,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// Where the next page of a backup starts: in `section`, after `key`
/// (None: at the section's first record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub section: Section,
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
}

/// `ClientOp::Backup`: the next page of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// The snapshot the earlier pages came from (0: take a new one).
    pub snapshot: u64,
    /// Where the page starts (None: at the beginning).
    pub after: Option<Cursor>,
    /// About how many bytes of records the page may hold (at most
    /// `MAX_PAGE_BYTES`; a page holds at least one record if any is left).
    pub max_bytes: u32,
}

/// `ClientReply::Backup`: one page of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The snapshot to ask the next page from.
    pub snapshot: u64,
    /// The node whose storage this is, its cluster, and when the snapshot
    /// was taken (ms since the Unix epoch, by that node's clock).
    pub node: String,
    pub cluster: String,
    pub taken_ms: u64,
    pub records: Vec<Record>,
    /// Where the next page starts; None when this was the last.
    pub next: Option<Cursor>,
}

/// What a finished backup holds, as `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub node: String,
    pub cluster: String,
    /// When the node took the snapshot, in ms since the Unix epoch.
    pub taken_ms: u64,
    /// Stored keys (data records).
    pub keys: u64,
    pub hints: u64,
    pub meta: u64,
    /// Size of `records`, and its CRC32.
    pub bytes: u64,
    pub crc32: u32,
}

impl Manifest {
    /// Reads a manifest, refusing one of another format.
    pub fn parse(text: &str) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_str(text)
            .map_err(|e| Error::InvalidRequest(format!("not a backup manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(Error::InvalidRequest(format!(
                "the backup is in format {}; this build reads format {FORMAT}",
                manifest.format
            )));
        }
        Ok(manifest)
    }

    pub fn to_json(&self) -> String {
        // A struct of plain fields always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Whether this backup may be restored at `now_ms`: of node `node`
    /// (when given), and no older than deletes are kept (`keep_ms`, from
    /// `anti_entropy.keep_deleted_ms`), unless `force`. An older backup may
    /// hold values whose deletes the cluster has collected since, and the
    /// restored node would bring them back.
    pub fn restorable(
        &self,
        node: Option<&str>,
        now_ms: u64,
        keep_ms: u64,
        force: bool,
    ) -> Result<()> {
        if let Some(node) = node.filter(|n| *n != self.node) {
            return Err(Error::InvalidRequest(format!(
                "the backup is of node {:?}, and the configuration is of node {node:?}: a \
                 node starts only on its own data",
                self.node
            )));
        }
        let age = now_ms.saturating_sub(self.taken_ms);
        if age > keep_ms && !force {
            let span = |ms: u64| humantime::format_duration(Duration::from_secs(ms / 1000));
            return Err(Error::InvalidRequest(format!(
                "the backup was taken {} ago, longer than deletes are kept \
                 (anti_entropy.keep_deleted_ms: {}): the cluster may have forgotten deletes \
                 made since, and this node would bring the deleted values back. Restore \
                 anyway with --force",
                span(age),
                span(keep_ms)
            )));
        }
        Ok(())
    }

    /// Whether `tally`, counted over the records file, is what this
    /// manifest says the backup holds.
    pub fn check(&self, tally: &Tally) -> Result<()> {
        let found = (
            tally.keys,
            tally.hints,
            tally.meta,
            tally.bytes,
            tally.crc32,
        );
        let said = (self.keys, self.hints, self.meta, self.bytes, self.crc32);
        if found != said {
            return Err(Error::InvalidRequest(format!(
                "the backup's records do not match its manifest (keys, hints, meta, bytes, \
                 crc32: found {found:?}, the manifest says {said:?}): it is damaged or \
                 incomplete"
            )));
        }
        Ok(())
    }
}

/// What a records file holds, counted as it is written or read.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub keys: u64,
    pub hints: u64,
    pub meta: u64,
    pub bytes: u64,
    pub crc32: u32,
    hasher: crc32fast::Hasher,
}

impl Tally {
    /// Counts one record and the bytes of its frame.
    fn add(&mut self, section: Section, frame: &[u8]) {
        match section {
            Section::Data => self.keys += 1,
            Section::Hints => self.hints += 1,
            Section::Meta => self.meta += 1,
        }
        self.bytes += frame.len() as u64;
        self.hasher.update(frame);
        self.crc32 = self.hasher.clone().finalize();
    }

    /// Frames `record` for the records file and counts it.
    pub fn frame(&mut self, record: &Record) -> Result<Vec<u8>> {
        let body = postcard::to_stdvec(record).map_err(|e| Error::Internal(e.to_string()))?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD_BYTES)
            .ok_or_else(|| Error::InvalidRequest("a record too large for a backup".into()))?;
        let mut frame = Vec::with_capacity(HEADER + body.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        self.add(record.section, &frame);
        Ok(frame)
    }
}

/// The records of a records file, each checked against its frame's CRC32,
/// counted into `tally` as they are read.
pub struct Records<R> {
    source: R,
    pub tally: Tally,
}

impl<R: Read> Records<R> {
    pub fn new(source: R) -> Records<R> {
        Records {
            source,
            tally: Tally::default(),
        }
    }

    /// The next record; None at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        let damaged =
            |what: String| Error::InvalidRequest(format!("the backup is damaged: {what}"));
        let mut header = [0u8; HEADER];
        match read_full(&mut self.source, &mut header)? {
            0 => return Ok(None),
            HEADER => {}
            n => return Err(damaged(format!("a frame header cut short after {n} bytes"))),
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD_BYTES {
            return Err(damaged(format!("a frame claims {len} bytes")));
        }
        let mut body = vec![0u8; len as usize];
        if read_full(&mut self.source, &mut body)? != body.len() {
            return Err(damaged("the last frame is cut short".into()));
        }
        if crc32fast::hash(&body) != crc {
            return Err(damaged("a frame's checksum does not match".into()));
        }
        let record: Record = postcard::from_bytes(&body)
            .map_err(|e| damaged(format!("a record does not decode: {e}")))?;
        let mut frame = header.to_vec();
        frame.extend_from_slice(&body);
        self.tally.add(record.section, &frame);
        Ok(Some(record))
    }
}

/// Reads until `buf` is full or the source ends; how many bytes it read.
fn read_full(source: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Storage(format!("reading the backup: {e}"))),
        }
    }
    Ok(filled)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(section: Section, key: &[u8], value: &[u8]) -> Record {
        Record {
            section,
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn file(records: &[Record]) -> (Vec<u8>, Tally) {
        let mut tally = Tally::default();
        let bytes = records
            .iter()
            .flat_map(|r| tally.frame(r).unwrap())
            .collect();
        (bytes, tally)
    }

    fn manifest(tally: &Tally) -> Manifest {
        Manifest {
            format: FORMAT,
            node: "n1".into(),
            cluster: "c".into(),
            taken_ms: 1,
            keys: tally.keys,
            hints: tally.hints,
            meta: tally.meta,
            bytes: tally.bytes,
            crc32: tally.crc32,
        }
    }

    fn read_all(bytes: &[u8]) -> Result<(Vec<Record>, Tally)> {
        let mut records = Records::new(bytes);
        let mut out = Vec::new();
        while let Some(r) = records.next_record()? {
            out.push(r);
        }
        Ok((out, records.tally))
    }

    #[test]
    fn records_come_back_as_written_and_match_their_manifest() {
        let written = vec![
            record(Section::Data, b"k1", b"v1"),
            record(Section::Data, b"k2", &[0u8; 3000]),
            record(Section::Hints, b"h", b""),
            record(Section::Meta, b"view", b"x"),
        ];
        let (bytes, tally) = file(&written);
        let m = Manifest::parse(&manifest(&tally).to_json()).unwrap();
        let (read, found) = read_all(&bytes).unwrap();
        assert_eq!(read, written);
        m.check(&found).unwrap();
        assert_eq!((m.keys, m.hints, m.meta), (2, 1, 1));
    }

    #[test]
    fn damage_anywhere_is_found() {
        let written = vec![
            record(Section::Data, b"k1", b"v1"),
            record(Section::Data, b"k2", b"v2"),
        ];
        let (bytes, tally) = file(&written);
        let m = manifest(&tally);
        // Every flipped byte: a frame fails its checksum or its decoding,
        // or the tally no longer matches the manifest.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let caught = read_all(&bad).and_then(|(_, t)| m.check(&t));
            assert!(caught.is_err(), "a flip at byte {i} went unnoticed");
        }
        // Cut short anywhere, or a whole record missing.
        for cut in 1..bytes.len() {
            let caught = read_all(&bytes[..cut]).and_then(|(_, t)| m.check(&t));
            assert!(caught.is_err(), "cut at {cut} went unnoticed");
        }
        let (one, _) = file(&written[..1]);
        assert!(read_all(&one).and_then(|(_, t)| m.check(&t)).is_err());
    }

    #[test]
    fn manifests_of_another_format_or_no_manifest_are_refused() {
        let mut m = manifest(&Tally::default());
        m.format = FORMAT + 1;
        let e = Manifest::parse(&m.to_json()).unwrap_err();
        assert!(e.to_string().contains("format"), "{e}");
        assert!(Manifest::parse("{\"node\": 1}").is_err());
        assert!(Manifest::parse("").is_err());
    }

    #[test]
    fn only_a_young_enough_backup_of_the_same_node_is_restorable() {
        let m = Manifest {
            taken_ms: 1_000,
            ..manifest(&Tally::default())
        };
        m.restorable(Some("n1"), 5_000, 4_000, false).unwrap();
        m.restorable(None, 5_000, 4_000, false).unwrap();
        let e = m.restorable(Some("n2"), 5_000, 4_000, false).unwrap_err();
        assert!(e.to_string().contains("of node \"n1\""), "{e}");
        let e = m.restorable(Some("n1"), 5_001, 4_000, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        m.restorable(Some("n1"), 5_001, 4_000, true).unwrap();
        // Another node's backup is refused even when forced.
        assert!(m.restorable(Some("n2"), 5_000, 4_000, true).is_err());
    }

    #[test]
    fn sections_follow_each_other_in_order() {
        assert_eq!(Section::Data.next(), Some(Section::Hints));
        assert_eq!(Section::Hints.next(), Some(Section::Meta));
        assert_eq!(Section::Meta.next(), None);
    }
}
