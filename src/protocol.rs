//! Protocol versions: which ones a node speaks, which one a pair of nodes
//! (or a client and a node) speaks, and how a frame of an older version
//! leaves out what later versions added.
//!
//! Every hello, on the peer port and on the client port, carries the
//! sender's range (`Versions`). Both ends take the highest version in both
//! ranges and encode every later frame at it; a pair with none in common
//! does not connect, and both ends log both ranges. A frame is decoded at
//! the version its first byte names, so either end reads what the other
//! wrote however the link was agreed.
//!
//! What a version adds is of two kinds:
//! - a field: it carries `#[serde(with = "crate::protocol::since_5")]`, is
//!   left out of frames encoded at an older version, and reads as its
//!   default from them;
//! - a message (an enum variant, appended): its `since` says when, and a
//!   frame holding it is never encoded at an older version; the link
//!   answers the sender instead (`PeerFrame::since`).
//!
//! Hellos (and the peer handshake's other frames) are always encoded at
//! `HELLO_VERSION`, the first version with ranges, and their layout never
//! changes again, so any two nodes from 5 on can tell why they cannot talk.
//! Versions before 5 had no ranges: a node of protocol 4 is told it needs
//! a full-cluster restart to upgrade (its clients, which only ever dial,
//! are still served at 4).
//!
//! The version a frame is being encoded or decoded at is a thread-local
//! set by `FrameCodec` around the postcard call (`at`): postcard cannot
//! carry a context through serde, and the frame is encoded on one thread.

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The newest protocol version this build speaks.
/// 2: the membership view carries the namespace table.
/// 3: a sibling set carries a typed key's data-type state.
/// 4: a delete's tombstone carries its time (`Value::Deleted`); backups.
/// 5: hellos carry version ranges; `status` shows each member's range; a
///    stopping node tells its peers (`GossipMsg::Stopping`).
/// 6: a counter carries its folds (retired writers' entries folded by
///    tombstone collection, `GcMsg::ProbeAs`, `HeldAs`, `Fold`).
/// 7: gossip by digest and liveness rumors (`GossipMsg::Digest`, `Agree`,
///    `Summary`, `Records`, `Delta`); protocol 6 peers still get pushes.
/// 8: Q can double (`dynakv cluster split`): what names partitions says
///    at which Q (`Summary`, `Records`, `HandoffMsg::Fetch`,
///    `ReplicaMsg::List`); protocol 7 peers get whole views, which they
///    refuse once Q has changed.
/// 9: a map's counter fields are folded (`FieldValue::Folded`, probed
///    with `GcMsg::ProbeFolds`): retired writers' entries become one.
pub const PROTOCOL_VERSION: u8 = 9;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u8 = 4;
/// The version every hello is encoded at: the first with ranges.
pub const HELLO_VERSION: u8 = 5;

/// The protocol versions a node speaks, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub min: u8,
    pub max: u8,
}

impl Default for Versions {
    fn default() -> Self {
        Versions::this_build()
    }
}

impl Versions {
    /// What a client hello (or a node's answer to one) without a range
    /// speaks: release 4's, which has only 4.
    const BEFORE_RANGES: Versions = Versions { min: 4, max: 4 };

    /// Everything this build speaks.
    pub const fn this_build() -> Self {
        Versions {
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        }
    }

    /// This build's range, capped at `max` (`testing.protocol_version`: a
    /// node that speaks like an older release, for upgrade tests).
    pub fn capped(max: Option<u8>) -> Result<Self> {
        let Some(max) = max else {
            return Ok(Versions::this_build());
        };
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&max) {
            return Err(Error::Config(format!(
                "testing.protocol_version = {max}: this build speaks {}",
                Versions::this_build()
            )));
        }
        Ok(Versions {
            min: MIN_PROTOCOL_VERSION,
            max,
        })
    }

    /// The highest version both ranges hold, if any.
    pub fn common(self, other: Versions) -> Option<u8> {
        let top = self.max.min(other.max);
        (top >= self.min.max(other.min)).then_some(top)
    }

    /// The version spoken with a peer whose hello carried `theirs` (None:
    /// a node from before ranges), or why there is none, naming both.
    pub fn agree(self, who: &str, theirs: Option<Versions>) -> Result<u8> {
        let Some(theirs) = theirs else {
            return Err(Error::Unavailable(format!(
                "{who} speaks a protocol older than 5, which has no version ranges; \
                 upgrading from it takes a full-cluster restart (this node speaks {self})"
            )));
        };
        self.common(theirs).ok_or_else(|| {
            Error::Unavailable(format!(
                "no protocol version in common: {who} speaks {theirs}, this node speaks {self}"
            ))
        })
    }

    /// `agree` on the client port, where a hello (or a node's answer to
    /// one) without a range is release 4's and is served at 4. On refusal,
    /// also the version to tell it at: the one its hello came in.
    pub fn agree_on_client_port(
        self,
        who: &str,
        theirs: Option<Versions>,
    ) -> std::result::Result<u8, (Error, u8)> {
        let told_at = theirs.map_or(Versions::BEFORE_RANGES.max, |_| HELLO_VERSION);
        self.agree(who, Some(theirs.unwrap_or(Versions::BEFORE_RANGES)))
            .map_err(|e| (e, told_at))
    }
}

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

thread_local! {
    static SPEAKING: Cell<u8> = const { Cell::new(PROTOCOL_VERSION) };
}

/// The version being encoded or decoded on this thread (this build's
/// newest outside a frame: stored data is always written in full).
pub fn speaking() -> u8 {
    SPEAKING.with(Cell::get)
}

/// Runs `f` encoding or decoding at `version`.
pub fn at<R>(version: u8, f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            SPEAKING.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SPEAKING.with(|s| s.replace(version)));
    f()
}

/// Reads a field added in protocol `since`: from an older frame, which
/// holds nothing for it, as its default.
fn read_since<'de, T, D>(since: u8, d: D) -> std::result::Result<T, D::Error>
where
    T: Deserialize<'de> + Default,
    D: serde::Deserializer<'de>,
{
    if speaking() < since {
        <()>::deserialize(d)?;
        Ok(T::default())
    } else {
        T::deserialize(d)
    }
}

/// Why something added in protocol `since` is not encoded at the version
/// being spoken.
fn refused<E: serde::ser::Error>(since: u8) -> E {
    E::custom(format!(
        "this needs protocol {since}, and the peer speaks {}",
        speaking()
    ))
}

/// A module for `#[serde(with = ...)]` on a field added in protocol
/// `$since`: left out of older frames, read from them as its default.
/// Postcard encodes a unit as nothing, so an older frame holds exactly
/// the bytes its own version wrote.
macro_rules! left_out_before {
    ($(#[$doc:meta])* $name:ident, $since:expr) => {
        $(#[$doc])*
        pub mod $name {
            use serde::{Deserialize, Deserializer, Serialize, Serializer};

            const SINCE: u8 = $since;

            pub fn serialize<T: Serialize, S: Serializer>(
                value: &T,
                s: S,
            ) -> Result<S::Ok, S::Error> {
                if super::speaking() < SINCE {
                    s.serialize_unit()
                } else {
                    value.serialize(s)
                }
            }

            pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
            where
                T: Deserialize<'de> + Default,
                D: Deserializer<'de>,
            {
                super::read_since(SINCE, d)
            }
        }
    };
}

left_out_before!(
    /// A field added in protocol 5 (version ranges).
    since_5,
    5
);
left_out_before!(
    /// A field added in protocol 8: a partition count, 0 from an older
    /// peer, which never saw Q change.
    since_8,
    8
);

/// A field added in protocol 6. Unlike `since_5`, it is never dropped
/// silently: an older frame can carry it only at its default (an older
/// node would misread a counter without its folds), and encoding any other
/// value at an older version fails, so the message is not sent.
pub mod since_6 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    const SINCE: u8 = 6;

    pub fn serialize<T, S>(value: &T, s: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + Default + PartialEq,
        S: Serializer,
    {
        if super::speaking() >= SINCE {
            value.serialize(s)
        } else if *value == T::default() {
            s.serialize_unit()
        } else {
            Err(super::refused(SINCE))
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: Deserialize<'de> + Default,
        D: Deserializer<'de>,
    {
        super::read_since(SINCE, d)
    }
}

/// For a variant added in protocol 6 inside data (`serialize_with` on
/// it): encoding it at an older version fails, so the message holding it
/// is not sent to a node that could not read it.
pub fn refused_before_6<T: Serialize, S: serde::Serializer>(
    value: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    refused_before(6, value, s)
}

/// `refused_before_6`, for data added in protocol 9.
pub fn refused_before_9<T: Serialize, S: serde::Serializer>(
    value: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    refused_before(9, value, s)
}

fn refused_before<T: Serialize, S: serde::Serializer>(
    since: u8,
    value: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    if speaking() < since {
        Err(refused(since))
    } else {
        value.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Grown {
        old: u32,
        #[serde(with = "since_5")]
        new: Option<u32>,
    }

    #[test]
    fn a_field_since_5_is_left_out_below_5_and_read_as_its_default() {
        let grown = Grown {
            old: 7,
            new: Some(9),
        };
        let old = at(4, || postcard::to_stdvec(&grown)).unwrap();
        assert_eq!(
            old,
            postcard::to_stdvec(&7u32).unwrap(),
            "exactly the old bytes"
        );
        let back: Grown = at(4, || postcard::from_bytes(&old)).unwrap();
        assert_eq!(back, Grown { old: 7, new: None });
        let new = at(5, || postcard::to_stdvec(&grown)).unwrap();
        assert_eq!(
            at(5, || postcard::from_bytes::<Grown>(&new)).unwrap(),
            grown
        );
        assert_eq!(speaking(), PROTOCOL_VERSION, "restored after each call");
    }

    #[test]
    fn a_fetch_below_8_is_the_bytes_of_7_and_names_no_partition_count() {
        use crate::handoff::HandoffMsg;
        use crate::partition::Partition;
        let fetch = |partitions| HandoffMsg::Fetch {
            partition: Partition(5),
            after: None,
            limit: 10,
            partitions,
        };
        let old = at(7, || postcard::to_stdvec(&fetch(128))).unwrap();
        assert_eq!(
            old,
            at(8, || postcard::to_stdvec(&fetch(0))).unwrap()[..old.len()]
        );
        let back: HandoffMsg = at(7, || postcard::from_bytes(&old)).unwrap();
        assert_eq!(back, fetch(0), "a peer of 7 names none");
        let new = at(8, || postcard::to_stdvec(&fetch(128))).unwrap();
        assert_eq!(
            at(8, || postcard::from_bytes::<HandoffMsg>(&new)).unwrap(),
            fetch(128)
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Grown6 {
        old: u32,
        #[serde(with = "since_6")]
        new: u32,
    }

    #[test]
    fn a_field_since_6_goes_below_6_only_at_its_default() {
        let at_default = Grown6 { old: 7, new: 0 };
        let old = at(5, || postcard::to_stdvec(&at_default)).unwrap();
        assert_eq!(old, postcard::to_stdvec(&7u32).unwrap());
        let back: Grown6 = at(5, || postcard::from_bytes(&old)).unwrap();
        assert_eq!(back, at_default);
        let set = Grown6 { old: 7, new: 9 };
        assert!(
            at(5, || postcard::to_stdvec(&set)).is_err(),
            "never dropped"
        );
        let new = at(6, || postcard::to_stdvec(&set)).unwrap();
        assert_eq!(at(6, || postcard::from_bytes::<Grown6>(&new)).unwrap(), set);
    }

    #[test]
    fn ranges_agree_on_their_highest_common_version_or_name_both() {
        let v = |min, max| Versions { min, max };
        assert_eq!(v(4, 5).common(v(4, 4)), Some(4));
        assert_eq!(v(4, 5).common(v(5, 7)), Some(5));
        assert_eq!(v(4, 5).common(v(6, 7)), None);
        let refused = v(4, 5).agree("n2", Some(v(6, 7))).unwrap_err().to_string();
        assert!(
            refused.contains("6..7") && refused.contains("4..5"),
            "{refused}"
        );
        let legacy = v(4, 5).agree("n2", None).unwrap_err().to_string();
        assert!(legacy.contains("full-cluster restart"), "{legacy}");
        assert_eq!(v(4, 5).agree("n2", Some(v(4, 5))).unwrap(), 5);
    }

    #[test]
    fn a_client_without_a_range_is_served_at_4_and_a_refusal_told_at_its_hellos_version() {
        let v = |min, max| Versions { min, max };
        assert_eq!(v(4, 5).agree_on_client_port("c", None).unwrap(), 4);
        assert_eq!(v(4, 5).agree_on_client_port("c", Some(v(4, 5))).unwrap(), 5);
        let (e, at) = v(5, 6).agree_on_client_port("c", None).unwrap_err();
        assert!(e.to_string().contains("c speaks 4"), "{e}");
        assert_eq!(at, 4);
        let (_, at) = v(4, 5)
            .agree_on_client_port("c", Some(v(9, 9)))
            .unwrap_err();
        assert_eq!(at, HELLO_VERSION);
    }

    #[test]
    fn the_test_cap_stays_inside_this_build() {
        assert_eq!(Versions::capped(None).unwrap(), Versions::this_build());
        assert_eq!(Versions::capped(Some(4)).unwrap().max, 4);
        for bad in [3, PROTOCOL_VERSION + 1] {
            assert!(Versions::capped(Some(bad)).is_err());
        }
    }
}
