//! The causal context: every dot a replica has seen of a key's data type.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::version::{Actor, Dot};

/// The most writers a context may name: every node incarnation that ever
/// wrote a key has one (a bound on what a client or a peer can make us
/// hold, far above any cluster's history between foldings).
const MAX_CONTEXT_WRITERS: usize = 1 << 16;
/// The most dots a context may hold beyond its writers' prefixes: they
/// are the gaps of deltas still on their way, a few per writer.
const MAX_CONTEXT_CLOUD: usize = 1 << 16;

/// Every dot a replica has seen: a contiguous prefix per writer, and the
/// dots seen beyond it (a delta's dots arrive out of order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalContext {
    pub(super) prefix: BTreeMap<Actor, u64>,
    pub(super) cloud: BTreeSet<Dot>,
}

impl CausalContext {
    pub fn contains(&self, dot: &Dot) -> bool {
        self.prefix
            .get(&dot.actor)
            .is_some_and(|&c| dot.counter <= c)
            || self.cloud.contains(dot)
    }

    /// How many dots it holds.
    pub fn size(&self) -> u64 {
        self.prefix.values().sum::<u64>() + self.cloud.len() as u64
    }

    /// Every dot seen, writer by writer (a delta's context is a few).
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        let prefixes = self
            .prefix
            .iter()
            .flat_map(|(&actor, &c)| (1..=c).map(move |counter| Dot { actor, counter }));
        prefixes.chain(self.cloud.iter().copied())
    }

    /// Whether any dot of `actor` was seen.
    pub(super) fn dots_of(&self, actor: Actor) -> bool {
        self.prefix.contains_key(&actor) || self.cloud.iter().any(|d| d.actor == actor)
    }

    /// The next dot `actor` mints: above every dot of it seen here.
    pub fn next(&self, actor: Actor) -> Dot {
        let prefix = self.prefix.get(&actor).copied().unwrap_or(0);
        let cloud = self
            .cloud
            .range(
                Dot { actor, counter: 0 }..=Dot {
                    actor,
                    counter: u64::MAX,
                },
            )
            .next_back()
            .map_or(0, |d| d.counter);
        Dot {
            actor,
            counter: prefix.max(cloud) + 1,
        }
    }

    pub fn insert(&mut self, dot: Dot) {
        if !self.contains(&dot) {
            self.cloud.insert(dot);
            self.compact();
        }
    }

    /// Checks a context decoded from a client, a peer or disk: at most
    /// `MAX_CONTEXT_WRITERS` writers and `MAX_CONTEXT_CLOUD` loose dots,
    /// and in the compact form `join` keeps (so equal contexts compare
    /// equal).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidContext(m));
        if self.prefix.len() > MAX_CONTEXT_WRITERS || self.cloud.len() > MAX_CONTEXT_CLOUD {
            return bad(format!(
                "{} writers and {} loose dots, more than {MAX_CONTEXT_WRITERS} and {MAX_CONTEXT_CLOUD}",
                self.prefix.len(),
                self.cloud.len()
            ));
        }
        if self.prefix.values().any(|&c| c == 0) {
            return bad("a writer's prefix of 0".into());
        }
        if let Some(dot) = self.cloud.iter().find(|d| {
            let prefix = self.prefix.get(&d.actor).copied().unwrap_or(0);
            d.counter <= prefix + 1
        }) {
            return bad(format!("loose dot {dot} belongs in its writer's prefix"));
        }
        Ok(())
    }

    /// The context as the opaque bytes a client holds.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    /// A context a client sent back (`to_bytes`), checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<CausalContext> {
        let (context, rest): (CausalContext, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| Error::InvalidContext(format!("undecodable set context: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::InvalidContext(format!(
                "{} trailing bytes after a set context",
                rest.len()
            )));
        }
        context.validate()?;
        Ok(context)
    }

    pub fn join(&mut self, other: &CausalContext) {
        for (&actor, &counter) in &other.prefix {
            let mine = self.prefix.entry(actor).or_insert(0);
            *mine = (*mine).max(counter);
        }
        self.cloud.extend(other.cloud.iter().copied());
        self.compact();
    }

    /// Moves cloud dots that extend a writer's prefix into it.
    fn compact(&mut self) {
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let prefix = self.prefix.entry(dot.actor).or_insert(0);
            if dot.counter == *prefix + 1 {
                *prefix += 1;
            } else if dot.counter > *prefix {
                self.cloud.insert(dot);
            }
        }
        self.prefix.retain(|_, c| *c > 0);
    }
}
