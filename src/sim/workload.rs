//! The clients: gets, puts with contexts, blind puts and deletes, and
//! counter and set operations on typed keys (`super::typed`), against
//! random coordinators, run as coordinator sessions (the core's `Session`,
//! as the Coordinator actor runs them), with every operation recorded in
//! the history.

use std::collections::{BTreeMap, VecDeque};

use crate::coordinator::{
    Outcome as Answer, Request, Session as CoreSession, Step, Write as WriteOp, Written,
};
use crate::crdt::CausalContext;
use crate::error::Result;
use crate::node::NodeId;
use crate::replica::ReplicaMsg;
use crate::version::{Context, Value};

use super::history::{Read, Write, describe};
use super::network::Msg;
use super::typed::{TYPED_KEYS, TypedOp};
use super::world::Serves;
use super::{ATTEMPT_TIMEOUT, DEADLINE, Event, READ_SPARE, Session, Sim, expiry, planner};

#[derive(Debug, Clone, Copy)]
pub(super) enum ClientOp {
    Get,
    Put {
        blind: bool,
    },
    Delete,
    /// A counter or set operation, or a read, on a typed key.
    Typed,
}

#[derive(Default)]
pub(super) struct Client {
    /// The session and node of the operation under way.
    pub(super) waiting: Option<(usize, u64)>,
    pub(super) contexts: BTreeMap<usize, Context>,
    /// The context of the last read of each set and map key.
    pub(super) seen_contexts: BTreeMap<usize, CausalContext>,
    pub(super) written: u64,
    /// An operator's client runs this script (key, operation) and nothing
    /// else; the others pick at random.
    pub(super) script: Option<VecDeque<(usize, ClientOp)>>,
}

impl Sim {
    pub(super) fn client_next(&mut self, c: usize) {
        if self.faults {
            let at = self.now + 1 + self.rng.below(50);
            self.schedule(at, Event::Client { client: c });
        }
    }

    pub(super) fn client_step(&mut self, c: usize) {
        if !self.faults || self.clients[c].waiting.is_some() {
            return;
        }
        let (key, op) = match &mut self.clients[c].script {
            Some(script) => match script.pop_front() {
                Some(step) => step,
                None => return,
            },
            None if self.rng.below(4) == 0 => {
                let j = self.rng.below(TYPED_KEYS as u64) as usize;
                (self.typed_index(j), ClientOp::Typed)
            }
            None => {
                let key = self.rng.below(self.cfg.keys as u64) as usize;
                let op = match self.rng.below(10) {
                    0..=3 => ClientOp::Get,
                    4..=7 => ClientOp::Put { blind: false },
                    8 => ClientOp::Put { blind: true },
                    _ => ClientOp::Delete,
                };
                (key, op)
            }
        };
        let coordinator = self.rng.below(self.cfg.nodes as u64) as usize;
        if !self.nodes[coordinator].running {
            self.history.failed += 1;
            self.note(|| format!("client {c}: n{coordinator} refused the connection"));
            return self.client_next(c);
        }
        // As the Coordinator actor plans a request: the core's Planner.
        let node = &self.nodes[coordinator];
        let topology = node.membership.topology();
        let planner = planner(&self.cfg, coordinator);
        let k = self.keys[key].clone();
        let (planned, serves) = match op {
            ClientOp::Get => {
                self.note(|| format!("client {c}: get key-{key} via n{coordinator}"));
                (planner.get(Some(&topology), k, None), None)
            }
            ClientOp::Typed => match self.typed_operation(c, key) {
                None => {
                    self.note(|| format!("client {c}: fetch key-{key} via n{coordinator}"));
                    (planner.get(Some(&topology), k, None), None)
                }
                Some((operation, context)) => {
                    let line = format!("client {c}: {operation:?} key-{key} via n{coordinator}");
                    self.note(|| line);
                    let planned =
                        planner.apply(Some(&topology), k, operation.clone(), &context, None);
                    let i = self.history.typed.len();
                    if planned.is_ok() {
                        self.history.typed.push(TypedOp {
                            key,
                            operation,
                            acked: false,
                            seen: None,
                            deltas: Vec::new(),
                            start: self.now,
                        });
                    }
                    (planned, Some(Serves::Typed(i)))
                }
            },
            ClientOp::Put { .. } | ClientOp::Delete => {
                let context = match op {
                    ClientOp::Put { blind: true } => Context::default(),
                    _ => self.clients[c]
                        .contexts
                        .get(&key)
                        .cloned()
                        .unwrap_or_default(),
                };
                let value = match op {
                    ClientOp::Delete => None,
                    _ => {
                        self.clients[c].written += 1;
                        Some(format!("c{c}-{}", self.clients[c].written).into_bytes())
                    }
                };
                let stored = value.clone().map_or(Value::Tombstone, Value::Data);
                let context_bytes = context.to_bytes();
                let write = WriteOp::new(stored, &context_bytes, None);
                let planned = planner.write(Some(&topology), k, write, self.now);
                if planned.is_err() {
                    (planned, None)
                } else {
                    let w = self.history.writes.len();
                    self.history.writes.push(Write {
                        key,
                        value: value.clone(),
                        context,
                        dots: Vec::new(),
                        acked: None,
                        start: self.now,
                        end: None,
                        expires: value.as_ref().and_then(|_| expiry(key, self.now)),
                    });
                    let line = format!(
                        "client {c}: write #{w} key-{key} {} via n{coordinator}",
                        describe(&value)
                    );
                    self.note(|| line);
                    (planned, Some(Serves::Write(w)))
                }
            }
        };
        let (core, requests) = match planned {
            Ok(p) => (p.session, p.initial),
            Err(e) => {
                self.history.failed += 1;
                self.note(|| format!("client {c}: n{coordinator} refused: {e}"));
                return self.client_next(c);
            }
        };
        let session = self.id();
        self.clients[c].waiting = Some((coordinator, session));
        let mut s = Session {
            client: c,
            key,
            serves,
            core,
        };
        let initial = s.core.initial_answer();
        self.nodes[coordinator].sessions.insert(session, s);
        if let Some(answer) = initial {
            self.answer(coordinator, session, answer);
            self.end_session(coordinator, session);
            return;
        }
        self.send_requests(coordinator, session, serves, requests);
        let life = self.nodes[coordinator].life;
        self.schedule(
            self.now + DEADLINE,
            Event::Deadline {
                node: coordinator,
                life,
                session,
            },
        );
    }

    pub(super) fn send_requests(
        &mut self,
        node: usize,
        session: u64,
        serves: Option<Serves>,
        reqs: Vec<Request>,
    ) {
        let life = self.nodes[node].life;
        let slow_after = self.nodes[node]
            .sessions
            .get(&session)
            .map_or(ATTEMPT_TIMEOUT, |s| {
                s.core.slow_after(ATTEMPT_TIMEOUT, READ_SPARE)
            });
        for r in reqs {
            let Some(to) = self.index(&r.to) else {
                continue;
            };
            self.send(
                node,
                to,
                Msg::Replica {
                    session,
                    serves,
                    msg: r.msg,
                },
            );
            self.schedule(
                self.now + slow_after,
                Event::Attempt {
                    node,
                    life,
                    session,
                    target: to,
                },
            );
        }
    }

    /// Gives the client its answer (once) and records it.
    pub(super) fn answer(&mut self, node: usize, session: u64, answer: Result<Answer>) {
        let Some(s) = self.nodes[node].sessions.get(&session) else {
            return;
        };
        let (c, key, serves) = (s.client, s.key, s.serves);
        if self.clients[c].waiting != Some((node, session)) {
            return;
        }
        self.clients[c].waiting = None;
        match answer {
            Ok(Answer::Read(state)) if self.is_typed(key) => {
                self.note(|| format!("client {c}: fetched key-{key} {:?}", state.typed()));
                self.typed_read(c, key, &state);
            }
            Ok(Answer::Read(state)) => {
                let values: Vec<Vec<u8>> =
                    state.live_values(self.now).map(<[u8]>::to_vec).collect();
                let line = format!(
                    "client {c}: got key-{key} {:?}",
                    values
                        .iter()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect::<Vec<_>>()
                );
                self.note(|| line);
                self.clients[c].contexts.insert(key, state.context());
                self.history.reads.push(Read {
                    key,
                    values,
                    at: self.now,
                });
            }
            Ok(Answer::Written(Written {
                state,
                dot: Some(dot),
            })) => {
                if let Some(Serves::Write(w)) = serves {
                    let write = &mut self.history.writes[w];
                    write.acked = Some(dot);
                    write.end = Some(self.now);
                    self.clients[c].contexts.insert(key, state.context());
                    self.note(|| {
                        format!("client {c}: write #{w} of key-{key} acknowledged as {dot}")
                    });
                }
            }
            Ok(Answer::Written(Written { dot: None, .. })) => {
                if let Some(Serves::Typed(i)) = serves {
                    self.history.typed[i].acked = true;
                    self.note(|| format!("client {c}: typed #{i} of key-{key} acknowledged"));
                }
            }
            Err(e) => {
                self.history.failed += 1;
                self.note(|| format!("client {c}: key-{key}: error: {e}"));
            }
        }
        self.client_next(c);
    }

    pub(super) fn on_session_reply(
        &mut self,
        node: usize,
        session: u64,
        from: &NodeId,
        reply: Result<ReplicaMsg>,
    ) {
        self.session_step(node, session, |core| core.on_reply(from, reply));
    }

    /// Feeds a session one event (a reply, a slow target) and carries out
    /// what it asks: the client's answer, the next requests, its end.
    pub(super) fn session_step(
        &mut self,
        node: usize,
        session: u64,
        step: impl FnOnce(&mut CoreSession) -> Step<Answer>,
    ) {
        let Some(s) = self.nodes[node].sessions.get_mut(&session) else {
            return;
        };
        let Step { send: next, answer } = step(&mut s.core);
        let (complete, serves) = (s.core.is_complete(), s.serves);
        if let Some(answer) = answer {
            self.answer(node, session, answer);
        }
        self.send_requests(node, session, serves, next);
        if complete {
            self.end_session(node, session);
        }
    }

    pub(super) fn on_deadline(&mut self, node: usize, session: u64) {
        let Some(s) = self.nodes[node].sessions.get_mut(&session) else {
            return;
        };
        if let Some(answer) = s.core.on_timeout() {
            self.answer(node, session, answer);
        }
        self.end_session(node, session);
    }

    /// Ends a session; a get's read repair goes out, fire and forget.
    pub(super) fn end_session(&mut self, node: usize, session: u64) {
        let Some(s) = self.nodes[node].sessions.remove(&session) else {
            return;
        };
        let repairs = s.core.repairs();
        if !repairs.is_empty() {
            self.note(|| format!("n{node}: read repair to {} replicas", repairs.len()));
        }
        for r in repairs {
            if let Some(to) = self.index(&r.to) {
                self.send(
                    node,
                    to,
                    Msg::Replica {
                        session: 0,
                        serves: None,
                        msg: r.msg,
                    },
                );
            }
        }
    }
}
