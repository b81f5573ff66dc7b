//! Splits of Q: how they spread, and who may start one.

use super::*;

#[test]
fn a_split_spreads_by_digest_and_keeps_every_preference_list() {
    let mut nodes: Vec<Membership> = (1..=5)
        .map(|i| Membership::new(settings(i, &[1]), None))
        .collect();
    rounds(&mut nodes, 6);
    let before = nodes[4].ring().unwrap();
    let (changed, done) = nodes[2].split().unwrap();
    assert!(changed.view && done.contains("128"), "{done}");
    for round in 0..8u64 {
        for i in 0..nodes.len() {
            let me = nodes[i].me.clone();
            let (out, _) = nodes[i].tick(1_000 + round * 100, round * 7 + i as u64);
            assert!(out.iter().all(|o| !matches!(o.msg, GossipMsg::Push { .. })));
            run(
                &mut nodes,
                out.into_iter().map(|o| (me.clone(), o)).collect(),
            );
        }
    }
    let views: Vec<&View> = nodes.iter().map(|n| n.view()).collect();
    assert!(views.windows(2).all(|w| w[0] == w[1]), "views differ");
    assert_eq!(views[0].partitions, 128);
    let after = nodes[0].ring().unwrap();
    for i in 0..500u32 {
        let key = i.to_be_bytes();
        assert_eq!(
            before.preference_list(before.partition_of(&key), 3),
            after.preference_list(after.partition_of(&key), 3)
        );
    }
}

#[test]
fn a_split_waits_for_every_member_to_speak_8() {
    let (mut nodes, n3) = three_with_an_older_third(7);
    let e = nodes[0].split().unwrap_err();
    assert!(
        e.to_string().contains("n3 speaks a protocol older than 8"),
        "{e}"
    );
    assert!(nodes[2].split().is_err(), "a node of 7 cannot split");
    // Node 1 answers node 3's digests with whole views (they say their Q).
    let root = nodes[2].root();
    let (reply, _) = nodes[0]
        .on_gossip(
            &n3,
            GossipMsg::Digest {
                root: root ^ 1,
                heartbeat: 1,
            },
            0,
        )
        .unwrap();
    assert!(matches!(reply.unwrap().msg, GossipMsg::Push { .. }));
}

#[test]
fn a_node_configured_with_a_larger_q_neither_joins_nor_splits_the_cluster() {
    let mut nodes = three(4);
    let mut s = settings(4, &[1]);
    s.partitions = 128;
    let mut big = Membership::new(s, None);
    let n4 = big.me().clone();
    // Its records and whole view reach a member: the cluster stays at 64.
    let (out, _) = big.tick(1_000, 0);
    for o in out {
        let _ = nodes[0].on_gossip(&n4, o.msg, 1_000);
    }
    let bare = GossipMsg::Records {
        buckets: (0..200).collect(),
        records: Records::of(big.view(), &[], &(0..200).collect::<Vec<_>>()),
        heartbeat: 1,
    };
    let _ = nodes[0].on_gossip(&n4, bare, 1_000);
    assert_eq!(nodes[0].view().partitions, 64);
    // The cluster's table is refused there, with the reason.
    let n1 = nodes[0].me().clone();
    let e = big
        .on_gossip(&n1, push(nodes[0].view().clone()), 1_000)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("fewer than this node's cluster.partitions = 128"),
        "{e}"
    );
    assert!(big.view().ownership.is_none());
}
