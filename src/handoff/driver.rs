//! The handoff driver: what a node's partition transfers do next, run
//! alike by the Handoff actor and by the simulator.
//!
//! One thing at a time, decided from the topology and the fetch progress
//! (`fetch_step`, `release_step`):
//! - *fetch*: the next chunk of a partition this node must hold, from a
//!   current replica that is up; each chunk is checked, merged durably,
//!   and recorded in the progress (persisted), then the next follows after
//!   the pause the byte budget asks for;
//! - *commit*: once every incoming partition is here, membership commits
//!   this node's incoming moves;
//! - *release*: what it holds of a partition but no longer replicates (the
//!   whole partition, or the namespaces whose `n` no longer reaches it) is
//!   pushed to every replica of it (a push-only exchange each, over what
//!   that replica holds), then dropped, if the ring still says so and
//!   nothing was written to it since the exchanges began;
//! - *leave*: a leaving node that owns and holds nothing has left.
//!
//! Time is an input (`now`, ms). The driver returns `HandoffWork` for the
//! shell to carry out, and takes each answer back with its `on_*` method.
//!
//! Whatever it waits for was asked at the Q of its topology then; an
//! answer that comes back after Q changed is dropped (a merged chunk is
//! kept, its progress not recorded), and the step is decided again at the
//! new Q.

use crate::anti_entropy::ExchangeReport;
use crate::error::{Error, Result};
use crate::node::NodeId;
use crate::partition::Partition;
use crate::placement::{Placement, Scope};
use crate::store::Entry;
use crate::topology::Topology;

use super::{
    Fetched, HandoffMsg, Next, Progress, fetch_step, release_step, to_fetch, verify_chunk,
};

#[derive(Debug, Clone)]
pub struct HandoffSettings {
    pub me: NodeId,
    /// Replicas per key of the namespace `default` (`[cluster] n`).
    pub n: usize,
    /// The Q this node stores data at (`cluster.partitions`): the ring's
    /// until the cluster splits.
    pub partitions: u32,
    /// Keys asked for per chunk.
    pub chunk_keys: u32,
    /// Transfer budget, in bytes per second.
    pub max_bytes_per_sec: u64,
    /// How long a peer may take to answer, in ms.
    pub call_timeout_ms: u64,
}

/// What the shell does for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffWork {
    /// Send `request` (a `HandoffMsg::Fetch` of a partition's next chunk)
    /// to `from`; answer with `on_chunk`.
    Fetch {
        from: NodeId,
        request: HandoffMsg,
        timeout_ms: u64,
    },
    /// Merge a checked chunk into the replica, durably; answer with
    /// `on_merged`.
    Merge { entries: Vec<Entry> },
    /// Persist the fetch progress (`Progress::to_bytes`). Nothing to answer.
    SaveProgress(Progress),
    /// Every incoming partition is here: ask membership to commit this
    /// node's incoming moves. Nothing to answer.
    Commit,
    /// Read which partitions (at `partitions`) the replica holds, with
    /// the namespaces held in each (`Replica::held`); answer with `on_held`.
    Held { partitions: u32 },
    /// Run a push-only exchange of `scope` in `partition` with `with`
    /// (`exchange`); answer with `on_synced`.
    Sync {
        partition: Partition,
        scope: Scope,
        with: NodeId,
    },
    /// Drop the replica's copy of `scope` in `partition` unless written to
    /// since the syncs began: each `synced` root still that of its scope
    /// (`Replica::release`); answer with `on_dropped`.
    Drop {
        partitions: u32,
        partition: Partition,
        scope: Scope,
        synced: Vec<(Scope, u64)>,
    },
    /// This leaving node holds nothing more: ask membership to mark it
    /// left. Nothing to answer.
    Leave,
    /// Call `on_tick` at `at` (ms): the byte budget's pause.
    Wake { at: u64 },
    /// A chunk of `keys` keys and `bytes` bytes was merged (for metrics).
    Chunk { keys: u64, bytes: u64 },
    /// `partition` was fetched whole from `from` (`keys` keys).
    Fetched {
        partition: Partition,
        from: NodeId,
        keys: u64,
    },
    /// What this node no longer replicates of `partition` (all of it, or
    /// the namespaces past their `n`) was synchronised with its replicas
    /// and dropped here.
    Released { partition: Partition, keys: usize },
}

/// What the driver waits for (asked at `busy_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Busy {
    Idle,
    /// A chunk of `partition` after `after`, from `from`.
    Fetching {
        partition: Partition,
        from: NodeId,
        after: Option<Vec<u8>>,
    },
    /// The merge of a chunk whose last key is `upto`.
    Merging {
        partition: Partition,
        upto: Option<Vec<u8>>,
        last: bool,
        keys: u64,
        bytes: u64,
    },
    /// The byte budget's pause, until `until`.
    Pausing {
        until: u64,
    },
    /// The list of partitions the replica holds.
    Holding,
    /// The push-only exchange of `syncing` with one replica of the
    /// namespaces `release` in `partition`, `remaining` after it; `synced`
    /// holds the root each finished exchange started from, with its scope.
    Syncing {
        partition: Partition,
        release: Vec<String>,
        syncing: Scope,
        remaining: Vec<(NodeId, Scope)>,
        synced: Vec<(Scope, u64)>,
    },
    Dropping {
        partition: Partition,
    },
}

/// A fetch under way, for `status`.
#[derive(Debug, Clone)]
struct Transfer {
    partition: Partition,
    from: NodeId,
    keys: u64,
    bytes: u64,
    started: u64,
}

/// What this node moved since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub keys: u64,
    pub bytes: u64,
    /// Partitions fetched whole, and how long fetching them took (ms).
    pub partitions: u64,
    pub fetch_ms: u64,
    pub released: u64,
}

#[derive(Debug, Clone)]
pub struct HandoffDriver {
    settings: HandoffSettings,
    topology: Option<Topology>,
    progress: Progress,
    busy: Busy,
    /// The Q `busy` was asked at.
    busy_at: u32,
    transfer: Option<Transfer>,
    totals: Totals,
}

impl HandoffDriver {
    /// A driver resuming from `progress` (as persisted).
    pub fn new(settings: HandoffSettings, progress: Progress) -> Self {
        HandoffDriver {
            progress: progress.known_at(settings.partitions),
            busy_at: settings.partitions,
            settings,
            topology: None,
            busy: Busy::Idle,
            transfer: None,
            totals: Totals::default(),
        }
    }

    /// The view, ring or liveness changed: if ownership did, look for work
    /// at once.
    pub fn on_topology(&mut self, t: Topology, now: u64) -> Vec<HandoffWork> {
        let moved = self
            .topology
            .as_ref()
            .is_none_or(|old| old.view.ownership != t.view.ownership);
        self.topology = Some(t);
        if moved { self.on_tick(now) } else { Vec::new() }
    }

    /// Does the next thing due, unless something is under way.
    pub fn on_tick(&mut self, now: u64) -> Vec<HandoffWork> {
        match self.busy {
            Busy::Idle => {}
            Busy::Pausing { until } if now >= until => self.busy = Busy::Idle,
            _ => return Vec::new(),
        }
        let me = &self.settings.me;
        let Some(t) = &self.topology else {
            return Vec::new();
        };
        let Some(place) = t.placement(me, self.settings.n) else {
            return Vec::new();
        };
        let before = self.progress.clone();
        let next = fetch_step(&t.view, &place, me, &mut self.progress, |s| t.is_up(s));
        self.busy_at = t.view.partitions;
        let mut work = Vec::new();
        if self.progress != before {
            work.push(HandoffWork::SaveProgress(self.progress.clone()));
        }
        match next {
            Some(Next::Fetch {
                partition,
                from,
                after,
            }) => {
                if self
                    .transfer
                    .as_ref()
                    .is_none_or(|x| x.partition != partition)
                {
                    self.transfer = Some(Transfer {
                        partition,
                        from: from.clone(),
                        keys: 0,
                        bytes: 0,
                        started: now,
                    });
                }
                work.push(HandoffWork::Fetch {
                    from: from.clone(),
                    request: HandoffMsg::Fetch {
                        partition,
                        after: after.clone(),
                        limit: self.settings.chunk_keys,
                        partitions: self.busy_at,
                    },
                    timeout_ms: self.settings.call_timeout_ms,
                });
                self.busy = Busy::Fetching {
                    partition,
                    from,
                    after,
                };
            }
            Some(Next::Commit) => work.push(HandoffWork::Commit),
            // Due, but no current replica is up to send it.
            Some(_) => {}
            None => {
                self.busy = Busy::Holding;
                work.push(HandoffWork::Held {
                    partitions: self.busy_at,
                });
            }
        }
        work
    }

    /// The answer to a `Fetch`.
    pub fn on_chunk(&mut self, chunk: Result<HandoffMsg>) -> Vec<HandoffWork> {
        let Busy::Fetching {
            partition, after, ..
        } = &self.busy
        else {
            return Vec::new();
        };
        let partition = *partition;
        if !self.still_at_busy_q() {
            return self.interrupted();
        }
        let checked = chunk.and_then(|c| match c {
            HandoffMsg::Chunk {
                entries,
                checksum,
                last,
            } => {
                verify_chunk(
                    &entries,
                    checksum,
                    partition,
                    after.as_deref(),
                    self.busy_at,
                )?;
                Ok((entries, last))
            }
            other => Err(Error::Malformed(format!("fetch answered with {other:?}"))),
        });
        let (mut entries, last) = match checked {
            Ok(chunk) => chunk,
            Err(_) => return self.interrupted(),
        };
        let upto = entries.last().map(|(k, _)| k.clone());
        if let Some(place) = self.placement() {
            // Only the namespaces whose `n` reaches this node.
            let keep = place.held_by(partition, &self.settings.me);
            entries.retain(|(key, _)| keep.holds(key));
        }
        let bytes = entries
            .iter()
            .map(|(k, s)| (k.len() + s.value_bytes()) as u64)
            .sum();
        self.busy = Busy::Merging {
            partition,
            upto,
            last,
            keys: entries.len() as u64,
            bytes,
        };
        vec![HandoffWork::Merge { entries }]
    }

    /// The answer to a `Merge`: record the progress, then go on after the
    /// pause the byte budget asks for (a chunk of `bytes` may be followed
    /// after bytes / budget seconds).
    pub fn on_merged(&mut self, merged: Result<()>, now: u64) -> Vec<HandoffWork> {
        let Busy::Merging {
            partition,
            upto,
            last,
            keys,
            bytes,
        } = std::mem::replace(&mut self.busy, Busy::Idle)
        else {
            return Vec::new();
        };
        if merged.is_err() || !self.still_at_busy_q() {
            return self.interrupted();
        }
        let step = Fetched::after_chunk(upto, last);
        let done = step == Fetched::Done;
        self.progress.record(partition, step);
        let mut work = vec![
            HandoffWork::SaveProgress(self.progress.clone()),
            HandoffWork::Chunk { keys, bytes },
        ];
        self.totals.keys += keys;
        self.totals.bytes += bytes;
        if let Some(t) = &mut self.transfer {
            t.keys += keys;
            t.bytes += bytes;
        }
        if done && let Some(t) = self.transfer.take() {
            self.totals.partitions += 1;
            self.totals.fetch_ms += now.saturating_sub(t.started);
            work.push(HandoffWork::Fetched {
                partition,
                from: t.from,
                keys: t.keys,
            });
        }
        let pause = bytes.saturating_mul(1000) / self.settings.max_bytes_per_sec.max(1);
        self.busy = Busy::Pausing { until: now + pause };
        work.push(HandoffWork::Wake { at: now + pause });
        work
    }

    /// The answer to `Held`: release what this node no longer replicates of
    /// one partition, or finish a leave.
    pub fn on_held(&mut self, held: Result<Vec<(Partition, Vec<String>)>>) -> Vec<HandoffWork> {
        if self.busy != Busy::Holding {
            return Vec::new();
        }
        self.busy = Busy::Idle;
        if !self.still_at_busy_q() {
            return Vec::new();
        }
        let (Ok(held), Some(t), Some(place)) = (held, &self.topology, self.placement()) else {
            return Vec::new();
        };
        match release_step(&t.view, &place, &self.settings.me, &held, |r| t.is_up(r)) {
            Next::Release {
                partition,
                release,
                replicas,
            } => self.sync_next(partition, release, replicas, Vec::new()),
            Next::Leave => vec![HandoffWork::Leave],
            _ => Vec::new(),
        }
    }

    /// The answer to a `Sync`. A write landing between two exchanges
    /// reaches only the later replicas: no root may move from the one its
    /// exchange started from.
    pub fn on_synced(&mut self, synced: Result<ExchangeReport>) -> Vec<HandoffWork> {
        let Busy::Syncing {
            partition,
            release,
            syncing,
            remaining,
            synced: mut roots,
        } = std::mem::replace(&mut self.busy, Busy::Idle)
        else {
            return Vec::new();
        };
        if !self.still_at_busy_q() {
            return Vec::new();
        }
        match synced {
            Ok(report) => {
                roots.push((syncing, report.started_from));
                self.sync_next(partition, release, remaining, roots)
            }
            Err(_) => Vec::new(),
        }
    }

    /// The answer to a `Drop` (`Some(keys)`: dropped; None: written to since
    /// its sync, released later).
    pub fn on_dropped(&mut self, dropped: Result<Option<usize>>, now: u64) -> Vec<HandoffWork> {
        let Busy::Dropping { partition } = std::mem::replace(&mut self.busy, Busy::Idle) else {
            return Vec::new();
        };
        let Ok(Some(keys)) = dropped else {
            return Vec::new();
        };
        self.totals.released += 1;
        let mut work = vec![HandoffWork::Released { partition, keys }];
        work.extend(self.on_tick(now));
        work
    }

    /// Forgets what was under way (the shell lost it: a restart), resuming
    /// from `progress` as persisted.
    pub fn reset(&mut self, progress: Progress) {
        self.progress = progress.known_at(self.settings.partitions);
        self.busy = Busy::Idle;
        self.transfer = None;
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn me(&self) -> &NodeId {
        &self.settings.me
    }

    pub fn call_timeout_ms(&self) -> u64 {
        self.settings.call_timeout_ms
    }

    /// For `status`: the transfer under way and what is left, at `now`.
    pub fn summary(&self, now: u64) -> Vec<String> {
        let mut lines = Vec::new();
        let remaining = self.placement().map_or(0, |place| {
            to_fetch(
                place.ring,
                &self.settings.me,
                place.extent(),
                &self.progress,
            )
            .len()
        });
        let totals = self.totals;
        if let Some(t) = &self.transfer {
            let secs = (now.saturating_sub(t.started) as f64 / 1000.0).max(0.001);
            let per_partition = if totals.partitions > 0 {
                totals.fetch_ms as f64 / 1000.0 / totals.partitions as f64
            } else {
                secs
            };
            lines.push(format!(
                "handoff: receiving {} from {}: {} keys, {} bytes, {:.0} keys/s; {remaining} partitions to go, ETA {:.0} s",
                t.partition,
                t.from,
                t.keys,
                t.bytes,
                t.keys as f64 / secs,
                per_partition * remaining as f64
            ));
        } else if remaining > 0 {
            lines.push(format!("handoff: {remaining} partitions to receive"));
        }
        if totals.partitions > 0 || totals.released > 0 {
            lines.push(format!(
                "handoff: {} partitions received ({} keys, {} bytes), {} released",
                totals.partitions, totals.keys, totals.bytes, totals.released
            ));
        }
        lines
    }

    /// Synchronises the namespaces `release` in `partition` with the first
    /// of `replicas` (the rest after it); with none left, drops them if the
    /// ring and the namespace table still say so.
    fn sync_next(
        &mut self,
        partition: Partition,
        release: Vec<String>,
        mut replicas: Vec<(NodeId, Scope)>,
        synced: Vec<(Scope, u64)>,
    ) -> Vec<HandoffWork> {
        if !replicas.is_empty() {
            let (with, scope) = replicas.remove(0);
            self.busy = Busy::Syncing {
                partition,
                release,
                syncing: scope.clone(),
                remaining: replicas,
                synced,
            };
            return vec![HandoffWork::Sync {
                partition,
                scope,
                with,
            }];
        }
        let still = self.placement().is_some_and(|place| {
            place.surplus(partition, &self.settings.me, &release).len() == release.len()
        });
        if !still || synced.is_empty() {
            return Vec::new();
        }
        self.busy = Busy::Dropping { partition };
        vec![HandoffWork::Drop {
            partitions: self.busy_at,
            partition,
            scope: Scope::only(release.iter().map(String::as_str)),
            synced,
        }]
    }

    /// Where keys live as this node sees it now, while it takes part.
    fn placement(&self) -> Option<Placement<'_>> {
        let t = self.topology.as_ref()?;
        t.placement(&self.settings.me, self.settings.n)
    }

    /// Whether the topology's Q is still the one what the driver waits
    /// for was asked at.
    fn still_at_busy_q(&self) -> bool {
        self.topology
            .as_ref()
            .is_none_or(|t| t.view.partitions == self.busy_at)
    }

    /// A fetch failed: resume at a later tick, where it stopped.
    fn interrupted(&mut self) -> Vec<HandoffWork> {
        self.busy = Busy::Idle;
        self.transfer = None;
        Vec::new()
    }
}
