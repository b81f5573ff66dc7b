//! The simulated network: the messages nodes send each other, and their
//! delivery, subject to the run's partitions, drops, duplicates and delays.
//! The receiving side applies fencing as the Bridge does, then hands each
//! message to the node's concern.

use crate::anti_entropy::{AeMsg, respond};
use crate::error::Error;
use crate::fencing::Refusal;
use crate::handoff::{self, HandoffMsg};
use crate::membership::{Destination, GossipMsg, Member};
use crate::replica::ReplicaMsg;
use crate::store::Entry;
use crate::tombstones::{self, GcMsg};

use super::world::Serves;
use super::{Call, Event, MAX_DELAY, Sim, addr};

/// Messages between simulated nodes.
#[derive(Debug, Clone)]
pub(super) enum Msg {
    Gossip(GossipMsg),
    Replica {
        session: u64,
        /// The client operation this request serves (to record what is
        /// minted for it).
        serves: Option<Serves>,
        msg: ReplicaMsg,
    },
    ReplicaReply {
        session: u64,
        reply: std::result::Result<ReplicaMsg, Error>,
    },
    HintDeliver {
        id: u64,
        entries: Vec<Entry>,
    },
    HintDelivered {
        id: u64,
    },
    Ae {
        id: u64,
        msg: AeMsg,
    },
    AeReply {
        id: u64,
        reply: std::result::Result<AeMsg, Error>,
    },
    Gc {
        id: u64,
        msg: GcMsg,
    },
    GcReply {
        id: u64,
        msg: GcMsg,
    },
    Handoff {
        id: u64,
        msg: HandoffMsg,
    },
    HandoffReply {
        id: u64,
        reply: std::result::Result<HandoffMsg, Error>,
    },
    /// A request refused because its sender left or was removed
    /// (`crate::fencing`): the sender's own final record, and the session
    /// of a refused replica request (0: none).
    Fenced {
        record: Member,
        session: u64,
    },
}

impl Msg {
    pub(super) fn describe(&self) -> String {
        let name = match self {
            Msg::Gossip(_) => "gossip",
            Msg::Replica { msg, .. } => {
                let (what, key) = match msg {
                    ReplicaMsg::Read { key } => ("read", key),
                    ReplicaMsg::Update { key, .. } => ("update", key),
                    ReplicaMsg::Apply { key, operation, .. } => (operation.name(), key),
                    ReplicaMsg::Write { key, state, .. } => {
                        return format!(
                            "write {} {:?}",
                            String::from_utf8_lossy(key),
                            state
                                .siblings()
                                .map(|s| s.dot.to_string())
                                .collect::<Vec<_>>()
                        );
                    }
                    _ => return "a reply sent as a request".into(),
                };
                return format!("{what} {}", String::from_utf8_lossy(key));
            }
            Msg::ReplicaReply { reply, .. } => match reply {
                Ok(ReplicaMsg::State { state }) => {
                    return format!(
                        "state {:?}",
                        state
                            .siblings()
                            .map(|s| s.dot.to_string())
                            .collect::<Vec<_>>()
                    );
                }
                Ok(_) => "replica-reply",
                Err(_) => "replica-error",
            },
            Msg::HintDeliver { entries, .. } => {
                let keys: Vec<_> = entries
                    .iter()
                    .map(|(k, _)| String::from_utf8_lossy(k))
                    .collect();
                return format!("hint-deliver {keys:?}");
            }
            Msg::HintDelivered { .. } => "hint-delivered",
            Msg::Ae { .. } => "ae",
            Msg::AeReply { .. } => "ae-reply",
            Msg::Gc { .. } => "gc",
            Msg::GcReply { .. } => "gc-reply",
            Msg::Handoff { .. } => "fetch",
            Msg::HandoffReply { .. } => "chunk",
            Msg::Fenced { .. } => "fenced",
        };
        name.into()
    }
}

impl Sim {
    /// Sends `msg` over the simulated network: to itself reliably, to a
    /// peer subject to partitions, drops, duplicates and delays.
    pub(super) fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if from == to {
            self.schedule(self.now, Event::Deliver { from, to, msg });
            return;
        }
        if let Some(sides) = &self.sides
            && sides[from] != sides[to]
        {
            return;
        }
        // A mint (`Update`, `Apply`) is not idempotent, and the Bridge
        // never sends a request twice (TCP, no retries): it is not
        // duplicated here.
        let mints = matches!(
            msg,
            Msg::Replica {
                msg: ReplicaMsg::Update { .. } | ReplicaMsg::Apply { .. },
                ..
            }
        );
        let copies = if self.faults && self.rng.per_mille(self.cfg.drop) {
            0
        } else if self.faults && !mints && self.rng.per_mille(self.cfg.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.rng.per_mille(50) {
                50 + self.rng.below(MAX_DELAY - 50)
            } else {
                1 + self.rng.below(10)
            };
            self.schedule(
                self.now + delay,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
    }

    pub(super) fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.nodes[to].running {
            return;
        }
        if self.cfg.trace {
            let what = msg.describe();
            self.note(|| format!("n{from} -> n{to}: {what}"));
        }
        let from_id = self.nodes[from].id.clone();
        let request = match &msg {
            Msg::Gossip(g) => g.is_request(),
            _ => false,
        } || matches!(
            msg,
            Msg::Replica { .. }
                | Msg::HintDeliver { .. }
                | Msg::Ae { .. }
                | Msg::Gc { .. }
                | Msg::Handoff { .. }
        );
        if request && let Err(refusal) = self.nodes[to].membership.admission().check(&from_id) {
            return self.refuse(from, to, msg, refusal);
        }
        match msg {
            Msg::Gossip(g) => {
                let now = self.now;
                let node = &mut self.nodes[to];
                if let Ok((reply, changed)) = node.membership.on_gossip(&from_id, g, now) {
                    node.keep_view(changed);
                    if let Some(reply) = reply {
                        self.send_gossip(to, reply.to, reply.msg);
                    }
                }
            }
            Msg::Replica {
                session,
                serves,
                msg,
            } => {
                let seen = match &msg {
                    ReplicaMsg::Apply { seen, .. } => Some(seen.clone()),
                    _ => None,
                };
                let reply = self.nodes[to].replica.apply(msg, self.now);
                match (serves, &reply) {
                    (Some(Serves::Write(w)), Ok(ReplicaMsg::Updated { dot, .. })) => {
                        self.history.writes[w].dots.push(*dot);
                        let line = format!(
                            "n{to}: minted {dot} for write #{w} of key-{}",
                            self.history.writes[w].key
                        );
                        self.note(|| line);
                    }
                    (Some(Serves::Typed(i)), Ok(ReplicaMsg::Applied { delta, .. })) => {
                        let op = &mut self.history.typed[i];
                        op.deltas.extend(delta.typed().cloned());
                        op.seen = seen;
                        let line = format!("n{to}: applied typed #{i} to key-{}", op.key);
                        self.note(|| line);
                    }
                    _ => {}
                }
                if session != 0 {
                    self.send(to, from, Msg::ReplicaReply { session, reply });
                }
            }
            Msg::ReplicaReply { session, reply } => {
                self.on_session_reply(to, session, &from_id, reply);
            }
            Msg::HintDeliver { id, entries } => {
                let replica = &mut self.nodes[to].replica;
                let merged = entries
                    .iter()
                    .try_for_each(|(k, s)| replica.merge(k, s, None).map(|_| ()));
                if merged.is_ok() {
                    self.send(to, from, Msg::HintDelivered { id });
                }
            }
            Msg::HintDelivered { id } => {
                if let Some(Call::Hints { owner }) = self.nodes[to].calls.remove(&id) {
                    let work = self.nodes[to].delivery.on_sent(&owner, Ok(()));
                    self.hint_work(to, work);
                }
            }
            Msg::Ae { id, msg } => {
                let reply = respond(&mut self.nodes[to].replica, msg);
                self.send(to, from, Msg::AeReply { id, reply });
            }
            Msg::AeReply { id, reply } => self.on_ae_reply(to, from, id, reply),
            Msg::Gc { id, msg } => {
                // What a collect removes is recorded for the history.
                let collecting = match &msg {
                    GcMsg::Collect { entries } => entries.clone(),
                    _ => Vec::new(),
                };
                let reply = tombstones::respond(&mut self.nodes[to].replica, msg);
                if let Ok(GcMsg::Collected { removed: 1.. }) = &reply {
                    for (key, state) in &collecting {
                        if let Some(k) = self.keys.iter().position(|x| x == key) {
                            let seen = state.context();
                            let collected = self.history.collected.entry(k).or_default();
                            collected.push((seen, self.now));
                        }
                    }
                }
                if let Ok(msg) = reply {
                    self.send(to, from, Msg::GcReply { id, msg });
                }
            }
            Msg::GcReply { id, msg } => self.on_gc_reply(to, id, msg),
            Msg::Handoff { id, msg } => {
                let reply = handoff::respond(&self.nodes[to].replica, msg);
                self.send(to, from, Msg::HandoffReply { id, reply });
            }
            Msg::HandoffReply { id, reply } => self.on_chunk(to, id, reply),
            Msg::Fenced { record, session } => {
                let node = &mut self.nodes[to];
                if let Ok(changed) = node.membership.on_fenced(record) {
                    node.keep_view(changed);
                    if changed.view {
                        self.note(|| format!("n{to} learns it is out of the cluster"));
                    }
                }
                if session != 0 {
                    let refused = Err(Error::Removed(format!("refused by n{from}")));
                    self.on_session_reply(to, session, &from_id, refused);
                }
            }
        }
    }

    /// As the Bridge does: a request `from` a member that is out gets its
    /// record back; a node that is out answers a replica request with an
    /// error and drops the rest.
    fn refuse(&mut self, from: usize, to: usize, msg: Msg, refusal: Refusal) {
        let session = match &msg {
            Msg::Replica { session, .. } => *session,
            _ => 0,
        };
        match refusal {
            Refusal::Fenced(record) => {
                self.fenced += 1;
                self.note(|| format!("n{to} refuses n{from}: it is out"));
                self.send(to, from, Msg::Fenced { record, session });
            }
            Refusal::Departed(e) if session != 0 => {
                let reply = Err(e);
                self.send(to, from, Msg::ReplicaReply { session, reply });
            }
            Refusal::Departed(_) => {}
        }
    }

    pub(super) fn send_gossip(&mut self, from: usize, to: Destination, msg: GossipMsg) {
        let to = match to {
            Destination::Node(id) => self.index(&id),
            Destination::Addr(a) => (0..self.cfg.nodes).find(|&i| addr(i) == a),
        };
        if let Some(to) = to {
            self.send(from, to, Msg::Gossip(msg));
        }
    }

    /// Registers a call awaiting an answer, failed after `timeout_ms`.
    pub(super) fn call(&mut self, i: usize, call: Call, timeout_ms: u64) -> u64 {
        let id = self.id();
        self.nodes[i].calls.insert(id, call);
        let life = self.nodes[i].life;
        self.schedule(
            self.now + timeout_ms,
            Event::CallTimeout { node: i, life, id },
        );
        id
    }
}
