//! Namespaces: each service's own N, default R and W, TTL and limits (the
//! Dynamo paper's per-instance trade-offs; Riak's bucket types).
//!
//! The table travels inside the membership view, so every node learns it by
//! gossip and keeps it with the view on disk. It is a state-based CRDT: per
//! name one `Record`, merged by keeping the record with the higher `stamp`
//! (a Lamport counter: an alter is stamped above everything its node has
//! seen), ties broken by the node that wrote it and then by content. So two
//! concurrent creates or alters of one name on different nodes resolve the
//! same way everywhere, and every node converges to the same table.
//!
//! A drop is a record too (`dropped`), and it is final: it wins over every
//! live record of the name, whatever its stamp, so neither a late copy nor
//! a concurrent alter undoes it, and the name is never used again (the
//! keys of a dropped namespace are being deleted in the background, and a
//! namespace of the same name would take over those not gone yet). The
//! namespace `default` is not in the table: it always exists, with the
//! node's `[cluster]` and `[limits]` settings.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::MAX_N;
use crate::error::{Error, Result};
use crate::node::NodeId;

mod agreement;
mod kind;

pub use agreement::{Agreement, Rounds};
pub use kind::Kind;

/// The namespace every request without one uses.
pub const DEFAULT: &str = "default";
/// Longest namespace name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Most namespaces a table may hold: bounds what a peer's view can make a
/// node store (each record is about 100 bytes, gossiped in every round).
pub const MAX_NAMESPACES: usize = 1024;
/// Most names a table may have used, dropped ones included (a dropped name
/// is kept, and never used again).
pub const MAX_NAMES: usize = MAX_NAMESPACES * 2;
/// Most siblings a namespace may allow a key (the default's limit is 100).
pub const MAX_SIBLINGS: u32 = 10_000;

/// A checked namespace name: 1 to 64 bytes of `a-z 0-9 _ - .`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Name(String);

/// Checks a namespace name: 1 to 64 bytes of `a-z 0-9 _ - .`.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidRequest(format!(
            "namespace name {name:?} must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.'))
    {
        return Err(Error::InvalidRequest(format!(
            "namespace name {name:?} has {c:?}: use a-z, 0-9, _, - and ."
        )));
    }
    Ok(())
}

impl Name {
    pub fn new(name: impl Into<String>) -> Result<Name> {
        let name = name.into();
        check_name(&name)?;
        Ok(Name(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The byte every key of a namespace other than `default` begins with; a
/// key of `default` may not begin with it.
const NAMED: u8 = 0;

/// The prefix every stored key of namespace `ns` begins with: nothing for
/// `default`, else `0x00`, the name's length (one byte) and the name.
pub fn key_prefix(ns: &Name) -> Vec<u8> {
    if ns.is_default() {
        return Vec::new();
    }
    let mut prefix = Vec::with_capacity(2 + ns.0.len());
    prefix.push(NAMED);
    prefix.push(ns.0.len() as u8);
    prefix.extend_from_slice(ns.0.as_bytes());
    prefix
}

/// The key the cluster stores, hashes and routes for `key` of namespace
/// `ns`: its prefix then the key. A key of `default` is stored as given,
/// so it may not begin with the byte 0x00 (the prefix of the others).
pub fn key_in(ns: &Name, key: &[u8]) -> Result<Vec<u8>> {
    if ns.is_default() && key.first() == Some(&NAMED) {
        return Err(Error::InvalidRequest(
            "a key of the namespace default may not begin with the byte 0x00".into(),
        ));
    }
    let mut stored = key_prefix(ns);
    stored.extend_from_slice(key);
    Ok(stored)
}

/// A stored key's namespace name and the key within it: the inverse of
/// `key_in`. A key that begins with 0x00 without a well-formed name after
/// it is refused.
pub fn split_key(stored: &[u8]) -> Result<(&str, &[u8])> {
    let Some((&NAMED, rest)) = stored.split_first() else {
        return Ok((DEFAULT, stored));
    };
    let bad = || {
        Error::InvalidRequest(
            "a key that begins with the byte 0x00 must continue with a namespace name's \
             length and the name (a key of the namespace default may not begin with it)"
                .into(),
        )
    };
    let (&len, rest) = rest.split_first().ok_or_else(bad)?;
    let len = usize::from(len);
    let name = rest.get(..len).ok_or_else(bad)?;
    let name = std::str::from_utf8(name).map_err(|_| bad())?;
    check_name(name)?;
    if name == DEFAULT {
        return Err(bad());
    }
    Ok((name, &rest[len..]))
}

/// The exclusive lower bound of a scan for keys that begin with `prefix`:
/// for the empty prefix (every key of `default`), just past the keys of
/// every other namespace, which all sort before `[0x00, 0xff]` (a name is
/// at most 64 bytes long). None for any other prefix.
pub fn scan_floor(prefix: &[u8]) -> Option<&'static [u8]> {
    prefix.is_empty().then_some(&[NAMED, u8::MAX])
}

/// One namespace's settings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Settings {
    /// Replicas of each key.
    pub n: u8,
    /// Default read and write quorums (a request may ask for others).
    pub r: u8,
    pub w: u8,
    /// Default time to live of a write, in milliseconds (0: none).
    pub ttl_ms: u64,
    pub max_siblings: u32,
    pub max_value_bytes: u32,
    pub kind: Kind,
}

impl Settings {
    /// Checks the settings against the cluster: `members` serving members,
    /// values up to `value_limit` bytes (what the node's frames carry).
    pub fn validate(&self, members: usize, value_limit: u32) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if !(1..=MAX_N).contains(&self.n) {
            return bad(format!("n = {} must be between 1 and {MAX_N}", self.n));
        }
        if usize::from(self.n) > members {
            return bad(format!(
                "n = {} is more than the {members} members of the cluster",
                self.n
            ));
        }
        for (what, q) in [("r", self.r), ("w", self.w)] {
            if q == 0 || q > self.n {
                return bad(format!("{what} = {q} must be between 1 and n = {}", self.n));
            }
        }
        if !(1..=MAX_SIBLINGS).contains(&self.max_siblings) {
            return bad(format!(
                "max_siblings = {} must be between 1 and {MAX_SIBLINGS}",
                self.max_siblings
            ));
        }
        if !(1..=value_limit).contains(&self.max_value_bytes) {
            return bad(format!(
                "max_value_bytes = {} must be between 1 and {value_limit} (limits.max_value_bytes)",
                self.max_value_bytes
            ));
        }
        if self.kind != Kind::Blob && self.ttl_ms > 0 {
            return bad(format!(
                "a {} namespace cannot have a ttl (its keys never expire)",
                self.kind.as_str()
            ));
        }
        Ok(())
    }
}

/// Changes to a namespace's settings; None keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub n: Option<u8>,
    pub r: Option<u8>,
    pub w: Option<u8>,
    pub ttl_ms: Option<u64>,
    pub max_siblings: Option<u32>,
    pub max_value_bytes: Option<u32>,
    pub kind: Option<Kind>,
}

impl Changes {
    /// `base` with these changes. Quorums not given stay as they were,
    /// lowered to a smaller `n`.
    pub fn apply(&self, base: &Settings) -> Settings {
        let n = self.n.unwrap_or(base.n);
        let quorum = |asked: Option<u8>, current: u8| asked.unwrap_or(current.min(n));
        Settings {
            n,
            r: quorum(self.r, base.r),
            w: quorum(self.w, base.w),
            ttl_ms: self.ttl_ms.unwrap_or(base.ttl_ms),
            max_siblings: self.max_siblings.unwrap_or(base.max_siblings),
            max_value_bytes: self.max_value_bytes.unwrap_or(base.max_value_bytes),
            kind: self.kind.unwrap_or(base.kind),
        }
    }
}

/// One name's register in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub settings: Settings,
    /// Lamport stamp: above every stamp its writer had seen.
    pub stamp: u64,
    /// The node that wrote this record (breaks ties between equal stamps).
    pub by: NodeId,
    pub dropped: bool,
}

impl Record {
    /// Whether `self` wins over `other` in the merge: a drop over any live
    /// record, else the higher stamp.
    fn supersedes(&self, other: &Record) -> bool {
        (self.dropped, self.stamp, &self.by, &self.settings)
            > (other.dropped, other.stamp, &other.by, &other.settings)
    }
}

/// The namespaces of a cluster (`default` excepted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    records: BTreeMap<Name, Record>,
}

impl Table {
    /// The live namespace `name`, if the table has it.
    pub fn get<Q: Ord + ?Sized>(&self, name: &Q) -> Option<&Settings>
    where
        Name: std::borrow::Borrow<Q>,
    {
        self.records
            .get(name)
            .filter(|r| !r.dropped)
            .map(|r| &r.settings)
    }

    /// The namespace a stored key belongs to, its settings (`defaults` for
    /// `default`) and the key within it. A namespace the table does not
    /// hold live is an error naming it.
    pub fn resolve<'a>(
        &'a self,
        stored: &'a [u8],
        defaults: &'a Settings,
    ) -> Result<(&'a str, &'a Settings, &'a [u8])> {
        let (name, key) = split_key(stored)?;
        if name == DEFAULT {
            return Ok((name, defaults, key));
        }
        let settings = self.get(name).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "no namespace {name} here (create it with dynakv ns create {name}; one just created reaches every node by gossip within seconds)"
            ))
        })?;
        Ok((name, settings, key))
    }

    /// Every live namespace, by name.
    pub fn live(&self) -> impl Iterator<Item = (&Name, &Settings)> {
        self.records
            .iter()
            .filter(|(_, r)| !r.dropped)
            .map(|(n, r)| (n, &r.settings))
    }

    /// The record of `name`, dropped or not.
    pub fn record(&self, name: &str) -> Option<&Record> {
        self.records.get(name)
    }

    /// Every record, dropped ones included.
    pub fn records(&self) -> impl Iterator<Item = (&Name, &Record)> {
        self.records.iter()
    }

    /// The names of the dropped namespaces, whose keys are deleted in the
    /// background.
    pub fn dropped(&self) -> impl Iterator<Item = &Name> {
        self.records
            .iter()
            .filter(|(_, r)| r.dropped)
            .map(|(n, _)| n)
    }

    /// A stamp above every stamp in the table.
    fn next_stamp(&self) -> u64 {
        self.records.values().map(|r| r.stamp).max().unwrap_or(0) + 1
    }

    /// Creates `name` with `settings`, written by node `by`. Refused when
    /// it exists (alter it instead) or is `default`.
    pub fn create(&mut self, name: Name, settings: Settings, by: &NodeId) -> Result<()> {
        if name.is_default() {
            return Err(Error::InvalidRequest(
                "the namespace default always exists (its settings are [cluster]'s)".into(),
            ));
        }
        match self.records.get(&name) {
            Some(r) if r.dropped => {
                return Err(Error::InvalidRequest(format!(
                    "namespace {name} was dropped, and a dropped name is not used again (its keys may still be being deleted): choose another name"
                )));
            }
            Some(_) => {
                return Err(Error::InvalidRequest(format!(
                    "namespace {name} exists (alter it instead)"
                )));
            }
            None => {}
        }
        if self.live().count() >= MAX_NAMESPACES {
            return Err(Error::InvalidRequest(format!(
                "the cluster has {MAX_NAMESPACES} namespaces, the most it may"
            )));
        }
        if self.records.len() >= MAX_NAMES {
            return Err(Error::InvalidRequest(format!(
                "the cluster has used {MAX_NAMES} namespace names (dropped ones are kept), the most it may"
            )));
        }
        self.write(name, settings, by, false);
        Ok(())
    }

    /// Replaces the settings of the live namespace `name`.
    pub fn alter(&mut self, name: &Name, settings: Settings, by: &NodeId) -> Result<()> {
        self.existing(name)?;
        self.write(name.clone(), settings, by, false);
        Ok(())
    }

    /// Drops the live namespace `name`.
    pub fn drop_namespace(&mut self, name: &Name, by: &NodeId) -> Result<()> {
        let settings = self.existing(name)?.clone();
        self.write(name.clone(), settings, by, true);
        Ok(())
    }

    /// The settings of the live namespace `name`, or an error naming it.
    pub fn existing(&self, name: &Name) -> Result<&Settings> {
        if name.is_default() {
            return Err(Error::InvalidRequest(
                "the namespace default follows the [cluster] settings of the node's configuration"
                    .into(),
            ));
        }
        self.get(name)
            .ok_or_else(|| Error::InvalidRequest(format!("no namespace {name}")))
    }

    fn write(&mut self, name: Name, settings: Settings, by: &NodeId, dropped: bool) {
        let record = Record {
            settings,
            stamp: self.next_stamp(),
            by: by.clone(),
            dropped,
        };
        self.records.insert(name, record);
    }

    /// CRDT merge. Returns whether anything changed.
    pub fn merge(&mut self, other: &Table) -> bool {
        let mut changed = false;
        for (name, theirs) in &other.records {
            match self.records.get(name) {
                Some(mine) if !theirs.supersedes(mine) => {}
                _ => {
                    self.records.insert(name.clone(), theirs.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    /// Checks a table that arrived from a peer: bounded, names valid.
    pub fn validate(&self) -> Result<()> {
        if self.records.len() > MAX_NAMES {
            return Err(Error::Malformed(format!(
                "namespace table with {} records",
                self.records.len()
            )));
        }
        for (name, record) in &self.records {
            Name::new(name.as_str()).map_err(|e| Error::Malformed(e.to_string()))?;
            let s = &record.settings;
            if s.n == 0 || s.n > MAX_N || s.r == 0 || s.r > s.n || s.w == 0 || s.w > s.n {
                return Err(Error::Malformed(format!(
                    "namespace {name} with n {} r {} w {}",
                    s.n, s.r, s.w
                )));
            }
        }
        Ok(())
    }
}

/// An operator's request about namespaces (`dynakv ns ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Create a namespace; what `changes` leaves out comes from the
    /// default namespace's settings.
    Create {
        name: String,
        changes: Changes,
    },
    Alter {
        name: String,
        changes: Changes,
    },
    /// Drop a namespace (its keys are deleted in the background).
    Drop {
        name: String,
    },
    Show {
        name: String,
    },
    List,
}

impl Request {
    /// Whether it changes the table (else it only reads it).
    pub fn changes_table(&self) -> bool {
        matches!(
            self,
            Request::Create { .. } | Request::Alter { .. } | Request::Drop { .. }
        )
    }
}

/// A namespace as `ns show` and `ns list` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    pub settings: Settings,
}

/// Carries out a create, alter or drop on `table`, written by node `by`:
/// a create takes what it does not set from `defaults` (the default
/// namespace's settings), and the result is checked against the `members`
/// serving the cluster. Returns what was done, for the operator.
pub fn change(
    table: &mut Table,
    request: Request,
    defaults: &Settings,
    members: usize,
    by: &NodeId,
) -> Result<String> {
    match request {
        Request::Create { name, changes } => {
            let name = Name::new(name)?;
            let settings = changes.apply(defaults);
            settings.validate(members, defaults.max_value_bytes)?;
            table.create(name.clone(), settings, by)?;
            Ok(format!("namespace {name} created"))
        }
        Request::Alter { name, changes } => {
            let name = Name::new(name)?;
            let current = table.existing(&name)?;
            if changes.kind.is_some_and(|kind| kind != current.kind) {
                return Err(Error::InvalidRequest(format!(
                    "namespace {name} holds {} values: its type cannot change (create another namespace)",
                    current.kind.as_str()
                )));
            }
            let settings = changes.apply(current);
            settings.validate(members, defaults.max_value_bytes)?;
            table.alter(&name, settings, by)?;
            Ok(format!("namespace {name} altered"))
        }
        Request::Drop { name } => {
            let name = Name::new(name)?;
            table.drop_namespace(&name, by)?;
            Ok(format!("namespace {name} dropped"))
        }
        Request::Show { .. } | Request::List => Err(Error::InvalidRequest(
            "show and list do not change namespaces".into(),
        )),
    }
}

/// Answers `show` (one namespace) or `list` (every live one, `default`
/// first) from `table`, with `defaults` as the default namespace's.
pub fn describe(table: &Table, request: &Request, defaults: &Settings) -> Result<Vec<Info>> {
    let info = |name: &Name, settings: &Settings| Info {
        name: name.to_string(),
        settings: settings.clone(),
    };
    let default = Info {
        name: DEFAULT.to_string(),
        settings: defaults.clone(),
    };
    match request {
        Request::Show { name } => {
            let name = Name::new(name.as_str())?;
            if name.is_default() {
                return Ok(vec![default]);
            }
            let settings = table
                .get(&name)
                .ok_or_else(|| Error::InvalidRequest(format!("no namespace {name}")))?;
            Ok(vec![info(&name, settings)])
        }
        Request::List => Ok(std::iter::once(default)
            .chain(table.live().map(|(n, s)| info(n, s)))
            .collect()),
        _ => Err(Error::InvalidRequest(
            "create, alter and drop are not questions".into(),
        )),
    }
}

/// Parses a TTL as an operator writes it: `0` (none), `90s`, `1h`,
/// `7d`, `1h 30m`; in milliseconds.
pub fn parse_ttl(s: &str) -> Result<u64> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    humantime::parse_duration(s)
        .map_err(|e| {
            Error::InvalidRequest(format!("ttl {s:?} is not a duration ({e}): try 90s or 1h"))
        })
        .and_then(|d| {
            u64::try_from(d.as_millis())
                .map_err(|_| Error::InvalidRequest(format!("ttl {s:?} is too long")))
        })
}

/// Settings for the tests of every module: `n` replicas, majority
/// quorums, no TTL.
#[cfg(test)]
pub(crate) fn test_settings(n: u8) -> Settings {
    Settings {
        n,
        r: n / 2 + 1,
        w: n / 2 + 1,
        ttl_ms: 0,
        max_siblings: 64,
        max_value_bytes: 1 << 20,
        kind: Kind::Blob,
    }
}

#[cfg(test)]
mod tests {
    use super::test_settings as settings;
    use proptest::prelude::*;

    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn keys_of_a_namespace_carry_its_name_and_default_keys_are_as_given() {
        let carts = name("carts");
        let stored = key_in(&carts, b"k1").unwrap();
        assert_eq!(stored, b"\x00\x05cartsk1");
        assert_eq!(split_key(&stored).unwrap(), ("carts", &b"k1"[..]));
        assert_eq!(key_prefix(&carts), b"\x00\x05carts");
        let default = name(DEFAULT);
        assert_eq!(key_in(&default, b"k1").unwrap(), b"k1");
        assert_eq!(split_key(b"k1").unwrap(), (DEFAULT, &b"k1"[..]));
        assert!(key_prefix(&default).is_empty());
        let e = key_in(&default, b"\x00k").unwrap_err();
        assert!(e.to_string().contains("0x00"), "{e}");
        for bad in [
            &b"\x00"[..],
            b"\x00\x05car",
            b"\x00\x00k",
            b"\x00\x03A-bk",
            b"\x00\x07defaultk",
            b"\x00\x02\xff\xfek",
        ] {
            let e = split_key(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidRequest, "{bad:?}");
        }
    }

    #[test]
    fn a_key_resolves_to_its_namespace_settings_or_an_error_naming_it() {
        let defaults = settings(3);
        let mut t = Table::default();
        t.create(name("carts"), settings(2), &id("a")).unwrap();
        let stored = key_in(&name("carts"), b"k").unwrap();
        let (ns, s, key) = t.resolve(&stored, &defaults).unwrap();
        assert_eq!((ns, s.n, key), ("carts", 2, &b"k"[..]));
        let (ns, s, _) = t.resolve(b"k", &defaults).unwrap();
        assert_eq!((ns, s.n), (DEFAULT, 3));
        let unknown = key_in(&name("users"), b"k").unwrap();
        let e = t.resolve(&unknown, &defaults).unwrap_err();
        assert!(e.to_string().contains("no namespace users"), "{e}");
        t.drop_namespace(&name("carts"), &id("a")).unwrap();
        assert!(
            t.resolve(&stored, &defaults).is_err(),
            "a dropped namespace"
        );
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn encoding_round_trips_and_namespaces_do_not_overlap(
            ns in "[a-z0-9_.-]{1,64}",
            other in "[a-z0-9_.-]{1,64}",
            key in proptest::collection::vec(any::<u8>(), 0..40),
            default_key in proptest::collection::vec(1u8.., 1..40),
        ) {
            prop_assume!(ns != DEFAULT && other != DEFAULT && ns != other);
            let (ns, other) = (name(&ns), name(&other));
            let stored = key_in(&ns, &key).unwrap();
            prop_assert_eq!(split_key(&stored).unwrap(), (ns.as_str(), &key[..]));
            prop_assert!(stored.starts_with(&key_prefix(&ns)));
            prop_assert!(!stored.starts_with(&key_prefix(&other)));
            // A listing of default starts past every other namespace's keys.
            let floor = scan_floor(&[]).unwrap();
            prop_assert!(stored.as_slice() < floor);
            prop_assert!(default_key.as_slice() > floor);
            prop_assert_eq!(scan_floor(&stored), None);
        }
    }

    #[test]
    fn names_are_short_and_plain() {
        for good in ["carts", "a", "user_sessions-v2.eu", &"x".repeat(64)] {
            assert!(Name::new(good).is_ok(), "{good}");
        }
        for bad in ["", "Carts", "a b", "é", "a/b", &"x".repeat(65)] {
            let e = Name::new(bad).unwrap_err();
            assert!(e.to_string().contains("namespace name"), "{e}");
        }
    }

    #[test]
    fn settings_are_checked_against_the_cluster() {
        assert!(settings(3).validate(5, 4 << 20).is_ok());
        let e = settings(5).validate(3, 4 << 20).unwrap_err();
        assert!(
            e.to_string().contains("n = 5 is more than the 3 members"),
            "{e}"
        );
        let mut s = settings(2);
        s.r = 3;
        let e = s.validate(5, 4 << 20).unwrap_err();
        assert!(e.to_string().contains("r = 3"), "{e}");
        let mut s = settings(3);
        s.max_value_bytes = 8 << 20;
        let e = s.validate(5, 4 << 20).unwrap_err();
        assert!(e.to_string().contains("max_value_bytes"), "{e}");
    }

    #[test]
    fn default_cannot_be_created_altered_or_dropped() {
        let mut t = Table::default();
        assert!(t.create(name("default"), settings(3), &id("a")).is_err());
        assert!(t.alter(&name("default"), settings(3), &id("a")).is_err());
        assert!(t.drop_namespace(&name("default"), &id("a")).is_err());
    }

    #[test]
    fn create_alter_and_drop_for_good() {
        let mut t = Table::default();
        t.create(name("carts"), settings(3), &id("a")).unwrap();
        assert!(t.create(name("carts"), settings(2), &id("a")).is_err());
        t.alter(&name("carts"), settings(2), &id("b")).unwrap();
        assert_eq!(t.get(&name("carts")).map(|s| s.n), Some(2));
        t.drop_namespace(&name("carts"), &id("a")).unwrap();
        assert_eq!(t.get(&name("carts")), None);
        let e = t.alter(&name("carts"), settings(3), &id("a")).unwrap_err();
        assert!(e.to_string().contains("no namespace carts"), "{e}");
        let e = t.create(name("carts"), settings(1), &id("a")).unwrap_err();
        assert!(e.to_string().contains("not used again"), "{e}");
        assert_eq!(t.dropped().collect::<Vec<_>>(), [&name("carts")]);
        // Dropped names count against the names a table may use, so a
        // table stays within what a peer accepts.
        for i in 1..MAX_NAMES {
            let n = name(&format!("n{i}"));
            t.create(n.clone(), settings(1), &id("a")).unwrap();
            t.drop_namespace(&n, &id("a")).unwrap();
        }
        let e = t.create(name("last"), settings(1), &id("a")).unwrap_err();
        assert!(e.to_string().contains("namespace names"), "{e}");
        t.validate().unwrap();
    }

    #[test]
    fn a_late_copy_never_undoes_a_drop() {
        let mut a = Table::default();
        a.create(name("tmp"), settings(3), &id("a")).unwrap();
        let old = a.clone();
        a.drop_namespace(&name("tmp"), &id("b")).unwrap();
        assert!(!a.merge(&old), "the older live record loses");
        assert_eq!(a.get(&name("tmp")), None);
        // An alter that had not seen the drop, stamped later, loses too.
        let mut b = old.clone();
        b.alter(&name("tmp"), settings(1), &id("c")).unwrap();
        b.alter(&name("tmp"), settings(2), &id("c")).unwrap();
        assert!(!a.merge(&b));
        assert!(b.merge(&a));
        assert_eq!((a.get(&name("tmp")), b.get(&name("tmp"))), (None, None));
    }

    #[test]
    fn changing_n_keeps_the_quorums_within_it() {
        let base = settings(3); // r = w = 2
        let down = Changes {
            n: Some(1),
            ..Changes::default()
        }
        .apply(&base);
        assert_eq!((down.n, down.r, down.w), (1, 1, 1));
        let up = Changes {
            n: Some(5),
            w: Some(4),
            ..Changes::default()
        }
        .apply(&base);
        assert_eq!((up.n, up.r, up.w), (5, 2, 4));
    }

    #[test]
    fn ttls_parse_as_operators_write_them() {
        assert_eq!(parse_ttl("0").unwrap(), 0);
        assert_eq!(parse_ttl("90s").unwrap(), 90_000);
        assert_eq!(parse_ttl("1h").unwrap(), 3_600_000);
        assert_eq!(parse_ttl("2d").unwrap(), 172_800_000);
        assert_eq!(parse_ttl("1h 30m").unwrap(), 5_400_000);
        for bad in ["", "-1h", "h", "1 fortnight", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_data_types_namespace_keeps_its_type_and_has_no_ttl() {
        let mut t = Table::default();
        let defaults = settings(3);
        let set = Changes {
            kind: Some(Kind::parse("set").unwrap()),
            ..Changes::default()
        };
        let create = Request::Create {
            name: "carts".into(),
            changes: set.clone(),
        };
        change(&mut t, create, &defaults, 3, &id("a")).unwrap();
        assert_eq!(t.get("carts").map(|s| s.kind), Some(Kind::Set));
        let alter = |changes| Request::Alter {
            name: "carts".into(),
            changes,
        };
        let blob = Changes {
            kind: Some(Kind::Blob),
            ..Changes::default()
        };
        let e = change(&mut t, alter(blob), &defaults, 3, &id("a")).unwrap_err();
        assert!(e.to_string().contains("its type cannot change"), "{e}");
        change(&mut t, alter(set), &defaults, 3, &id("a")).unwrap();
        let ttl = Changes {
            ttl_ms: Some(1000),
            ..Changes::default()
        };
        let e = change(&mut t, alter(ttl), &defaults, 3, &id("a")).unwrap_err();
        assert!(
            e.to_string().contains("a set namespace cannot have a ttl"),
            "{e}"
        );
        assert_eq!(Kind::parse("map-lww").unwrap(), Kind::LwwMap);
        let e = Kind::parse("list").unwrap_err();
        assert!(
            e.to_string().contains("(blob, counter, set, map, map-lww)"),
            "{e}"
        );
    }

    #[test]
    fn a_create_takes_the_defaults_and_is_checked_against_the_cluster() {
        let mut t = Table::default();
        let defaults = settings(3);
        let create = |name: &str, changes: Changes| Request::Create {
            name: name.into(),
            changes,
        };
        let done = change(
            &mut t,
            create("carts", Changes::default()),
            &defaults,
            5,
            &id("a"),
        );
        assert_eq!(done.unwrap(), "namespace carts created");
        assert_eq!(t.get(&name("carts")), Some(&defaults));
        let wide = Changes {
            n: Some(5),
            ..Changes::default()
        };
        let e = change(&mut t, create("wide", wide.clone()), &defaults, 4, &id("a")).unwrap_err();
        assert!(
            e.to_string().contains("n = 5 is more than the 4 members"),
            "{e}"
        );
        let e = change(&mut t, create("Bad Name", wide), &defaults, 5, &id("a")).unwrap_err();
        assert!(e.to_string().contains("namespace name"), "{e}");
        let own_n = Changes {
            n: Some(2),
            r: Some(1),
            w: Some(1),
            ..Changes::default()
        };
        change(&mut t, create("pairs", own_n), &defaults, 5, &id("a")).unwrap();
        assert_eq!(t.get("pairs").map(|s| s.n), Some(2));
        let too_wide = Changes {
            r: Some(3),
            ..Changes::default()
        };
        let alter = Request::Alter {
            name: "pairs".into(),
            changes: too_wide,
        };
        let e = change(&mut t, alter, &defaults, 5, &id("a")).unwrap_err();
        assert!(
            e.to_string().contains("r = 3 must be between 1 and n = 2"),
            "{e}"
        );
        let alter = Request::Alter {
            name: "nope".into(),
            changes: Changes::default(),
        };
        let e = change(&mut t, alter, &defaults, 5, &id("a")).unwrap_err();
        assert!(e.to_string().contains("no namespace nope"), "{e}");

        let listed = describe(&t, &Request::List, &defaults).unwrap();
        let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["default", "carts", "pairs"]);
        let shown = describe(
            &t,
            &Request::Show {
                name: "default".into(),
            },
            &defaults,
        );
        assert_eq!(shown.unwrap()[0].settings, defaults);
        assert!(describe(&t, &Request::Show { name: "x".into() }, &defaults).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Create(u8, u8),
        Alter(u8, u8),
        Drop(u8),
    }

    /// Applies `op` at node `by`; refusals (a create of an existing name,
    /// an alter of a missing one) change nothing, as on a real node.
    fn apply(t: &mut Table, op: Op, by: &NodeId) {
        let k = |k: u8| name(&format!("ns{k}"));
        let _ = match op {
            Op::Create(key, n) => t.create(k(key), settings(n), by),
            Op::Alter(key, n) => t.alter(&k(key), settings(n), by),
            Op::Drop(key) => t.drop_namespace(&k(key), by),
        };
    }

    fn op() -> impl Strategy<Value = (usize, Op)> {
        let which = 0..3usize;
        let op = prop_oneof![
            (0..4u8, 1..4u8).prop_map(|(k, n)| Op::Create(k, n)),
            (0..4u8, 1..4u8).prop_map(|(k, n)| Op::Alter(k, n)),
            (0..4u8).prop_map(Op::Drop),
        ];
        (which, op)
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        /// Three nodes apply creates, alters and drops concurrently and
        /// exchange tables in any order: once each has merged everyone's,
        /// they hold the same table.
        #[test]
        fn concurrent_changes_converge(ops in prop::collection::vec(op(), 1..40),
                                       merges in prop::collection::vec((0..3usize, 0..3usize), 0..20)) {
            let nodes = [id("a"), id("b"), id("c")];
            let mut tables = vec![Table::default(); 3];
            let mut ops = ops.into_iter();
            for (from, to) in merges {
                if let Some((i, op)) = ops.next() {
                    apply(&mut tables[i], op, &nodes[i]);
                }
                let theirs = tables[from].clone();
                tables[to].merge(&theirs);
            }
            for (i, op) in ops {
                apply(&mut tables[i], op, &nodes[i]);
            }
            let mut all = Table::default();
            for t in &tables {
                all.merge(t);
            }
            for t in &mut tables {
                t.merge(&all);
                prop_assert_eq!(&*t, &all);
            }
        }
    }
}
