//! Each node's timers: when they first fire, and what every tick runs
//! (the start-up scan's next step, then gossip, anti-entropy, hints,
//! collection, syncs or handoff), as the node's actors run them.

use super::world::Timer;
use super::*;

impl Sim {
    pub(super) fn start_timers(&mut self, i: usize) {
        let life = self.nodes[i].life;
        for (timer, every) in [
            (Timer::Gossip, GOSSIP_EVERY),
            (Timer::AntiEntropy, AE_EVERY),
            (Timer::Hints, HINTS_EVERY),
            (Timer::Gc, GC_EVERY),
            (Timer::Sync, self.cfg.sync_every),
            (Timer::Handoff, HANDOFF_EVERY),
        ] {
            let at = self.now + 1 + self.rng.below(every);
            self.schedule(
                at,
                Event::Timer {
                    node: i,
                    life,
                    timer,
                },
            );
        }
    }

    pub(super) fn on_timer(&mut self, i: usize, timer: Timer) {
        // The replica takes a larger Q from the view as its actor does:
        // in its own time, so the node's drivers may ask it at the other.
        let node = &mut self.nodes[i];
        let q = node.membership.view().partitions;
        if q > node.replica.partition_count()
            && let Err(e) = node.replica.set_partitions(q)
        {
            panic!("a simulated replica refused Q = {q}: {e}");
        }
        if let Err(e) = self.nodes[i].replica.load(LOAD_STEP) {
            panic!("a simulated replica's start-up scan failed: {e}");
        }
        let every = match timer {
            Timer::Gossip => {
                let (now, rand) = (self.now, self.rng.next_u64());
                let node = &mut self.nodes[i];
                let (out, changed) = node.membership.tick(now, rand);
                node.keep_view(changed);
                for o in out {
                    self.send_gossip(i, o.to, o.msg);
                }
                GOSSIP_EVERY
            }
            Timer::AntiEntropy => {
                self.start_exchange(i);
                AE_EVERY
            }
            Timer::Hints => {
                self.deliver_hints(i);
                HINTS_EVERY
            }
            Timer::Gc => {
                self.start_gc(i);
                GC_EVERY
            }
            Timer::Handoff => {
                self.handoff_tick(i);
                if !self.nodes[i].running {
                    return; // it left and stopped
                }
                HANDOFF_EVERY
            }
            Timer::Sync => {
                // With fsync = always every write is durable already.
                if !self.cfg.fsync_always {
                    self.nodes[i].disks.sync();
                }
                self.cfg.sync_every
            }
        };
        let life = self.nodes[i].life;
        self.schedule(
            self.now + every,
            Event::Timer {
                node: i,
                life,
                timer,
            },
        );
    }
}
