use super::*;
use crate::liveness::Heartbeats;
use crate::namespace;
use crate::ownership::Ownership;

fn settings(i: usize, seeds: &[usize]) -> Settings {
    Settings {
        me: Member {
            id: NodeId::new(format!("n{i}")).unwrap(),
            peer_addr: format!("127.0.0.1:{}", 7100 + i),
            client_addr: format!("127.0.0.1:{}", 7000 + i),
            weight: 1,
            status: Status::Joining,
            version: 0,
        },
        cluster: "test".into(),
        partitions: 64,
        n: 3,
        seeds: seeds
            .iter()
            .map(|s| format!("127.0.0.1:{}", 7100 + s))
            .collect(),
        suspect_after: 3000,
        down_after: 10_000,
        auto_join: true,
        incarnation: 0,
        protocol: crate::protocol::PROTOCOL_VERSION,
    }
}

fn push(view: View) -> GossipMsg {
    GossipMsg::Push {
        view,
        heartbeats: Heartbeats::new(),
    }
}

/// Delivers every message until none are left; addresses resolve to
/// the node listening there.
fn run(nodes: &mut [Membership], mut queue: Vec<(NodeId, Outgoing)>) {
    let mut steps = 0;
    while let Some((from, out)) = queue.pop() {
        steps += 1;
        assert!(steps < 10_000, "gossip does not quiesce");
        let to = match &out.to {
            Destination::Node(id) => id.clone(),
            Destination::Addr(a) => nodes
                .iter()
                .find(|n| &n.view().members[&n.me].peer_addr == a)
                .unwrap()
                .me
                .clone(),
        };
        let node = nodes.iter_mut().find(|n| n.me == to).unwrap();
        let (reply, _) = node.on_gossip(&from, out.msg, 0).unwrap();
        if let Some(r) = reply {
            queue.push((to, r));
        }
    }
}

fn rounds(nodes: &mut [Membership], count: u64) {
    for round in 0..count {
        for i in 0..nodes.len() {
            let me = nodes[i].me.clone();
            let (out, _) = nodes[i].tick(round * 100, round * 7 + i as u64);
            run(nodes, out.into_iter().map(|o| (me.clone(), o)).collect());
        }
    }
}

/// Three nodes seeding from each other, after `settle` gossip rounds.
fn three(settle: u64) -> Vec<Membership> {
    let mut nodes: Vec<Membership> = (1..=3)
        .map(|i| Membership::new(settings(i, &[1, 2, 3]), None))
        .collect();
    rounds(&mut nodes, settle);
    nodes
}

/// `three(4)` where node 3 speaks only up to `protocol`, as its hellos
/// told nodes 1 and 2; and node 3's id.
fn three_with_an_older_third(protocol: u8) -> (Vec<Membership>, NodeId) {
    let mut nodes: Vec<Membership> = (1..=3)
        .map(|i| {
            let mut s = settings(i, &[1, 2, 3]);
            if i == 3 {
                s.protocol = protocol;
            }
            Membership::new(s, None)
        })
        .collect();
    let n3 = nodes[2].me().clone();
    for n in &mut nodes[..2] {
        n.speaks(&n3, protocol);
    }
    rounds(&mut nodes, 4);
    (nodes, n3)
}

#[test]
fn nodes_started_with_the_same_seeds_found_identical_tables() {
    let mut nodes: Vec<Membership> = (1..=3)
        .map(|i| Membership::new(settings(i, &[1, 2, 3]), None))
        .collect();
    assert!(
        nodes.iter().all(|n| n.ring().is_none()),
        "no table before the seeds are known"
    );
    rounds(&mut nodes, 3);
    let views: Vec<&View> = nodes.iter().map(|n| n.view()).collect();
    assert!(views.windows(2).all(|w| w[0] == w[1]), "views differ");
    assert!(views[0].members.values().all(|m| m.status == Status::Up));
    let ring = nodes[0].ring().unwrap();
    assert_eq!(ring.owned_counts().len(), 3);
}

#[test]
fn a_stopping_node_tells_its_peers_which_hold_it_down_and_it_goes_quiet() {
    let mut nodes = three(3);
    let n1 = nodes[0].me.clone();
    let told = nodes[0].stop();
    assert_eq!(told, vec![nodes[1].me.clone(), nodes[2].me.clone()]);
    assert!(nodes[0].is_stopping());
    let (out, _) = nodes[0].tick(1_000, 1);
    assert!(out.is_empty(), "a stopping node gossips no more");
    let (n2, from_n2) = (nodes[1].me.clone(), push(nodes[1].view().clone()));
    assert!(nodes[0].on_gossip(&n2, from_n2, 1_000).is_err());
    let (reply, changed) = nodes[1].on_gossip(&n1, GossipMsg::Stopping, 1_000).unwrap();
    assert!(reply.is_none() && changed.liveness);
    assert_eq!(nodes[1].health_map()[&n1], Health::Down);
    // Gossip from the third node relaying a newer heartbeat of n1 does
    // not bring it back.
    let relayed = GossipMsg::Push {
        view: nodes[2].view().clone(),
        heartbeats: [(n1.clone(), 1_000)].into_iter().collect(),
    };
    let n3 = nodes[2].me.clone();
    nodes[1].on_gossip(&n3, relayed, 1_100).unwrap();
    assert_eq!(nodes[1].health_map()[&n1], Health::Down);
    // Direct gossip from n1 (restarted) does.
    let direct = push(nodes[0].view().clone());
    nodes[1].on_gossip(&n1, direct, 1_200).unwrap();
    assert_eq!(nodes[1].health_map()[&n1], Health::Up);
}

#[test]
fn a_leave_that_would_leave_fewer_members_than_a_namespaces_n_is_refused() {
    let mut nodes = three(3);
    let defaults = namespace::test_settings(3);
    let wide = namespace::Request::Create {
        name: "wide".into(),
        changes: namespace::Changes::default(),
    };
    nodes[0].namespace(wide, &defaults).unwrap();
    let e = nodes[0].leave().unwrap_err();
    assert!(
        e.to_string().contains(
            "leaving would leave 2 serving members, fewer than namespace wide's n = 3: lower it first (dynakv ns alter wide --n 2)"
        ),
        "{e}"
    );
    assert_eq!(nodes[0].member(nodes[0].me()).unwrap().status, Status::Up);
    let narrow = namespace::Request::Alter {
        name: "wide".into(),
        changes: namespace::Changes {
            n: Some(2),
            ..namespace::Changes::default()
        },
    };
    nodes[0].namespace(narrow, &defaults).unwrap();
    nodes[0].leave().unwrap();
    assert_eq!(
        nodes[0].member(nodes[0].me()).unwrap().status,
        Status::Leaving
    );
}

#[test]
fn a_lone_node_founds_at_once() {
    let m = Membership::new(settings(1, &[]), None);
    assert!(m.ring().is_some());
    assert_eq!(m.member(m.me()).unwrap().status, Status::Up);
}

#[test]
fn a_later_node_claims_its_share_as_pending_moves() {
    let mut nodes = vec![Membership::new(settings(1, &[]), None)];
    nodes.push(Membership::new(settings(2, &[1]), None));
    rounds(&mut nodes, 3);
    let table = nodes[0].view().ownership.clone().unwrap();
    let incoming = table.incoming(nodes[1].me());
    assert_eq!(
        incoming.len(),
        32,
        "half of 64 partitions, pending until handed off"
    );
    assert_eq!(
        nodes[1].member(nodes[1].me()).unwrap().status,
        Status::Joining
    );
    assert_eq!(nodes[0].view(), nodes[1].view());
}

#[test]
fn a_restart_keeps_the_view_and_refreshes_its_record() {
    let m = Membership::new(settings(1, &[]), None);
    let persisted = m.view().clone();
    let mut s = settings(1, &[]);
    s.me.client_addr = "127.0.0.1:9999".into();
    let again = Membership::new(s, Some(persisted.clone()));
    let rec = again.member(again.me()).unwrap();
    assert_eq!(rec.client_addr, "127.0.0.1:9999");
    assert!(rec.version > persisted.members[again.me()].version);
    assert_eq!(again.view().ownership, persisted.ownership);
}

#[test]
fn a_stale_own_record_after_a_restart_is_outranked() {
    let mut a = Membership::new(settings(1, &[]), None);
    let mut gossip = a.view().clone();
    gossip.members.get_mut(a.me()).unwrap().version += 3;
    let stale_version = gossip.members[a.me()].version;
    let from = NodeId::new("n2").unwrap();
    a.on_gossip(&from, push(gossip), 0).unwrap();
    assert!(a.member(a.me()).unwrap().version > stale_version);
    assert_eq!(a.member(a.me()).unwrap().status, Status::Up);
}

#[test]
fn bad_gossip_is_rejected_and_leaves_the_view_alone() {
    let mut a = Membership::new(settings(1, &[]), None);
    let before = a.view().clone();
    let from = NodeId::new("n9").unwrap();
    let stranger = |peer: &str, client: &str| Member {
        id: from.clone(),
        peer_addr: peer.into(),
        client_addr: client.into(),
        weight: 1,
        status: Status::Up,
        version: 1,
    };

    let mut other_cluster = before.clone();
    other_cluster.cluster = "else".into();
    let mut own_record_elsewhere = before.clone();
    let me = own_record_elsewhere.members.get_mut(a.me()).unwrap();
    me.version += 5;
    me.peer_addr = "10.0.0.9:7101".into();
    let mut bad_addr = before.clone();
    bad_addr
        .members
        .insert(from.clone(), stranger("nowhere", "127.0.0.1:1"));
    // a new id at the address of a live member
    let mut address_thief = before.clone();
    address_thief
        .members
        .insert(from.clone(), stranger("127.0.0.1:7101", "10.0.0.9:1"));
    let mut wrong_q = before.clone();
    wrong_q.partitions = 128;
    let mut unknown_owner = before.clone();
    let mut table = unknown_owner.ownership.clone().unwrap();
    let mut entries = table.entries().to_vec();
    entries[0].owner = NodeId::new("ghost").unwrap();
    entries[0].epoch = 99;
    table = Ownership::from_entries(entries).unwrap();
    unknown_owner.ownership = Some(table);

    for (what, view) in [
        ("another cluster", other_cluster),
        ("our id at another address", own_record_elsewhere),
        ("an unparseable address", bad_addr),
        ("a live member's address", address_thief),
        ("another partition count", wrong_q),
        ("an owner that is not a member", unknown_owner),
    ] {
        let e = a.on_gossip(&from, push(view), 0);
        assert!(e.is_err(), "{what} was accepted");
    }
    // more members or heartbeats than any cluster may have
    let mut crowd = before.clone();
    for i in 0..=MAX_MEMBERS {
        let id = NodeId::new(format!("m{i}")).unwrap();
        let member = Member {
            id: id.clone(),
            peer_addr: format!("10.1.{}.{}:7100", i / 250, i % 250),
            client_addr: format!("10.1.{}.{}:7000", i / 250, i % 250),
            ..stranger("", "")
        };
        crowd.members.insert(id, member);
    }
    assert!(a.on_gossip(&from, push(crowd), 0).is_err(), "a crowd");
    let heartbeats = (0..=MAX_MEMBERS)
        .map(|i| (NodeId::new(format!("m{i}")).unwrap(), 1))
        .collect();
    let noisy = GossipMsg::Push {
        view: before.clone(),
        heartbeats,
    };
    assert!(a.on_gossip(&from, noisy, 0).is_err(), "too many heartbeats");
    assert_eq!(a.view(), &before);
    // a well-formed newcomer is accepted
    let mut fine = before.clone();
    fine.members
        .insert(from.clone(), stranger("127.0.0.1:7109", "127.0.0.1:7009"));
    assert!(a.on_gossip(&from, push(fine), 0).unwrap().1.view);
}

#[test]
fn unanswered_probes_take_a_peer_down_and_its_gossip_brings_it_back() {
    let nodes = three(3);
    let n3 = nodes[2].me().clone();
    assert_eq!(nodes[0].health(&n3), Health::Up);
    // node 3 falls silent; nodes 1 and 2 keep gossiping with each other
    let mut alive: Vec<Membership> = nodes[..2].to_vec();
    let mut seen = Vec::new();
    let mut now = 300;
    while now < 16_000 {
        now += 100;
        for i in 0..2 {
            let (me, other) = (alive[i].me().clone(), alive[1 - i].me().clone());
            let (out, _) = alive[i].tick(now, now / 100);
            for o in out
                .into_iter()
                .filter(|o| o.to == Destination::Node(other.clone()))
            {
                let (reply, _) = alive[1 - i].on_gossip(&me, o.msg, now).unwrap();
                let reply = reply.unwrap();
                alive[i].on_gossip(&other, reply.msg, now).unwrap();
            }
        }
        seen.push(alive[0].health(&n3));
    }
    assert!(
        seen.contains(&Health::Suspect),
        "suspect before down: {seen:?}"
    );
    assert_eq!(alive[0].health(&n3), Health::Down);
    assert_eq!(
        alive[0].health(alive[1].me()),
        Health::Up,
        "the live peer stays up"
    );
    assert_eq!(alive[0].health_map()[&n3], Health::Down);

    // node 3 speaks again (protocol 6 here): its gossip brings it back up
    let mut back = nodes[2].clone();
    back.tick(now, 0);
    let push = GossipMsg::Push {
        view: back.view().clone(),
        heartbeats: back.detector.heartbeats(),
    };
    let (_, changed) = alive[0].on_gossip(&n3, push, now).unwrap();
    assert!(changed.liveness);
    assert_eq!(alive[0].health(&n3), Health::Up);
    // a failed request suspects it at once
    assert!(alive[0].on_unreachable(&n3, now).liveness);
    assert_eq!(alive[0].health(&n3), Health::Suspect);
    assert!(alive[0].on_reachable(&n3).liveness);
}

/// Three nodes; n3 is removed by n1 while n3 is away, with n3's own
/// record at a higher version than n1 knew (it restarted often).
fn removed_while_away() -> (Vec<Membership>, View) {
    let mut nodes = three(3);
    let mut away = nodes.pop().unwrap();
    // Restarts with new addresses bump its record past what n1 saw.
    let mut stale = away.view().clone();
    stale.members.get_mut(away.me()).unwrap().version += 10;
    *away.known.edit() = stale.clone();
    nodes[0].remove(away.me()).unwrap();
    rounds(&mut nodes, 2);
    (nodes, stale)
}

#[test]
fn a_removal_wins_over_any_older_record_of_the_removed_node() {
    let (mut nodes, stale) = removed_while_away();
    let gone = NodeId::new("n3").unwrap();
    assert!(stale.members[&gone].version > nodes[1].view().members[&gone].version);
    // Gossip relayed from a node that still holds the stale record
    // cannot bring n3 back.
    let from = NodeId::new("n1").unwrap();
    nodes[1].on_gossip(&from, push(stale), 0).unwrap();
    assert_eq!(nodes[1].view().members[&gone].status, Status::Removed);
    assert!(nodes[1].view().is_fenced(&gone));
    assert!(!nodes[1].is_fenced());
    assert_eq!(
        nodes[1]
            .admission()
            .check(&gone)
            .map_err(|r| matches!(r, crate::fencing::Refusal::Fenced(_))),
        Err(true)
    );
}

#[test]
fn a_removed_node_learns_from_a_refusal_and_stops_gossiping() {
    let (nodes, stale) = removed_while_away();
    let gone = NodeId::new("n3").unwrap();
    let mut back = Membership::new(settings(3, &[1, 2, 3]), Some(stale));
    assert!(!back.is_fenced());
    let (out, _) = back.tick(0, 1);
    assert!(!out.is_empty(), "it gossips until it learns");

    // Its gossip is refused, with its record from the refusing view.
    let record = nodes[0].view().members[&gone].clone();
    let from = NodeId::new("n3").unwrap();
    let mut n1 = nodes[0].clone();
    assert_eq!(
        n1.on_gossip(&from, push(back.view().clone()), 0)
            .map_err(|e| e.kind()),
        Err(crate::ErrorKind::Removed)
    );
    // Only its own final record counts as a refusal.
    let mut other = record.clone();
    other.id = NodeId::new("n2").unwrap();
    assert!(back.on_fenced(other).is_err());
    let mut up = record.clone();
    up.status = Status::Up;
    assert!(back.on_fenced(up).is_err());

    let changed = back.on_fenced(record).unwrap();
    assert!(changed.view && back.is_fenced());
    assert!(back.admission().me_fenced());
    let (out, _) = back.tick(100, 1);
    assert!(out.is_empty(), "a removed node gossips no more");
    assert!(back.join("127.0.0.1:7101".into()).is_err());
    // A restart on that view stays out.
    let again = Membership::new(settings(3, &[1, 2, 3]), Some(back.view().clone()));
    assert!(again.is_fenced());
}

#[test]
fn five_nodes_converge_to_one_view_and_one_ring() {
    let mut nodes: Vec<Membership> = (1..=5)
        .map(|i| Membership::new(settings(i, &[1, 2, 3, 4, 5]), None))
        .collect();
    let mut rounds_needed = 0;
    while rounds_needed < 20 {
        rounds(&mut nodes, 1);
        rounds_needed += 1;
        let views: Vec<&View> = nodes.iter().map(|n| n.view()).collect();
        if views[0].ownership.is_some() && views.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
    }
    assert!(rounds_needed <= 3, "took {rounds_needed} rounds");
    let rings: Vec<Ring> = nodes.iter().map(|n| n.ring().unwrap()).collect();
    assert!(rings.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(rings[0].owned_counts().len(), 5);
}

#[test]
fn nodes_waiting_for_a_missing_seed_keep_each_other_alive() {
    // node 4 is a seed of everyone but never starts: no table is founded,
    // yet the three others keep exchanging heartbeats
    let mut nodes: Vec<Membership> = (1..=3)
        .map(|i| Membership::new(settings(i, &[1, 2, 3, 4]), None))
        .collect();
    for round in 0..100u64 {
        let now = round * 100;
        for i in 0..3 {
            let me = nodes[i].me().clone();
            let (out, _) = nodes[i].tick(now, round * 3 + i as u64);
            for o in out {
                let to = match &o.to {
                    Destination::Node(id) => id.clone(),
                    Destination::Addr(a) => {
                        match nodes
                            .iter()
                            .find(|n| &n.view().members[&n.me].peer_addr == a)
                        {
                            Some(n) => n.me.clone(),
                            None => continue, // the missing seed
                        }
                    }
                };
                let j = nodes.iter().position(|n| n.me == to).unwrap();
                let (reply, _) = nodes[j].on_gossip(&me, o.msg, now).unwrap();
                if let Some(r) = reply {
                    nodes[i].on_gossip(&to, r.msg, now).unwrap();
                }
            }
        }
    }
    assert!(
        nodes.iter().all(|n| n.ring().is_none()),
        "no founding without every seed"
    );
    for n in &nodes {
        for other in &nodes {
            assert_eq!(
                n.health(other.me()),
                Health::Up,
                "{} sees {} as down",
                n.me(),
                other.me()
            );
        }
    }
}

#[test]
fn agreeing_nodes_exchange_a_fingerprint_whatever_the_cluster_size() {
    let mut nodes = three(3);
    let (mut out, _) = nodes[0].tick(1_000, 0);
    let opening = out.pop().unwrap();
    let Destination::Node(to) = opening.to.clone() else {
        panic!("a member, not a seed: {opening:?}");
    };
    assert!(matches!(opening.msg, GossipMsg::Digest { .. }));
    let n1 = nodes[0].me().clone();
    let j = nodes.iter().position(|n| n.me == to).unwrap();
    let (answer, changed) = nodes[j].on_gossip(&n1, opening.msg, 1_000).unwrap();
    let answer = answer.unwrap().msg;
    assert!(matches!(answer, GossipMsg::Agree { .. }), "{answer:?}");
    assert!(!changed.any());
    let (next, _) = nodes[0].on_gossip(&to, answer, 1_000).unwrap();
    assert!(next.is_none(), "the round is over");

    // The opening is as long with thousands of members in the view.
    let mut crowded = nodes[0].view().clone();
    for i in 0..4000 {
        let id = NodeId::new(format!("m{i}")).unwrap();
        let member = Member {
            id: id.clone(),
            peer_addr: format!("10.1.{}.{}:7100", i / 250, i % 250),
            client_addr: format!("10.1.{}.{}:7000", i / 250, i % 250),
            weight: 1,
            status: Status::Up,
            version: 1,
        };
        crowded.members.insert(id, member);
    }
    let mut big = Membership::new(settings(1, &[1, 2, 3]), Some(crowded));
    let (out, _) = big.tick(1_000, 5);
    let size = postcard::to_stdvec(&out[0].msg).unwrap().len();
    assert!(size < 64, "a {size}-byte opening");
}

#[test]
fn a_change_travels_by_records_and_views_converge() {
    let mut nodes: Vec<Membership> = (1..=5)
        .map(|i| Membership::new(settings(i, &[1, 2, 3, 4, 5]), None))
        .collect();
    rounds(&mut nodes, 4);
    let defaults = namespace::test_settings(3);
    let create = namespace::Request::Create {
        name: "logs".into(),
        changes: namespace::Changes::default(),
    };
    nodes[2].namespace(create, &defaults).unwrap();
    nodes[4].leave().unwrap();
    rounds(&mut nodes, 6);
    let views: Vec<&View> = nodes.iter().map(|n| n.view()).collect();
    assert!(views.windows(2).all(|w| w[0] == w[1]), "views differ");
    assert!(
        views[0]
            .namespaces
            .live()
            .any(|(name, _)| name.as_str() == "logs")
    );
    assert_eq!(views[0].members[nodes[4].me()].status, Status::Leaving);
    let roots: Vec<u64> = nodes.iter_mut().map(|n| n.root()).collect();
    assert!(roots.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn records_that_would_let_one_node_pass_for_another_are_refused() {
    let mut nodes = three(3);
    let before = nodes[0].view().clone();
    let n2 = nodes[1].me().clone();
    let mut thief = before.members[nodes[2].me()].clone();
    thief.id = NodeId::new("intruder").unwrap();
    let records = Records {
        members: vec![thief],
        ..Records::default()
    };
    let msg = GossipMsg::Delta {
        records,
        heartbeat: 0,
    };
    assert!(nodes[0].on_gossip(&n2, msg, 0).is_err());
    let out_of_range = GossipMsg::Records {
        buckets: vec![100_000],
        records: Records::default(),
        heartbeat: 0,
    };
    assert!(nodes[0].on_gossip(&n2, out_of_range, 0).is_err());
    assert_eq!(nodes[0].view(), &before);
}

mod splits;
mod versions;
