//! Gossip with peers of older protocol versions.

use super::*;

#[test]
fn a_node_of_protocol_6_gossips_by_push_with_nodes_that_speak_7() {
    let (mut nodes, n3) = three_with_an_older_third(6);
    nodes[0].leave().unwrap();
    for round in 0..40u64 {
        let now = 1_000 + round * 100;
        for i in 0..3 {
            let me = nodes[i].me().clone();
            let (out, _) = nodes[i].tick(now, round + i as u64);
            for o in &out {
                let to_old = o.to == Destination::Node(n3.clone());
                let pushes = matches!(o.msg, GossipMsg::Push { .. });
                assert!(pushes == (i == 2 || to_old), "{me} sent {:?}", o.msg);
            }
            run(
                &mut nodes,
                out.into_iter().map(|o| (me.clone(), o)).collect(),
            );
        }
    }
    let views: Vec<&View> = nodes.iter().map(|n| n.view()).collect();
    assert!(views.windows(2).all(|w| w[0] == w[1]), "views differ");
    assert_eq!(views[0].members[nodes[0].me()].status, Status::Leaving);
    for n in &nodes {
        assert!(
            n.health_map().values().all(|h| *h == Health::Up),
            "{:?}",
            n.health_map()
        );
    }
}

#[test]
fn a_digest_an_older_peer_could_not_read_is_no_evidence_against_it() {
    let mut nodes = three(3);
    let n3 = nodes[2].me().clone();
    // rand 1 picks n3 among n1's others (n2, n3).
    let (out, _) = nodes[0].tick(1_000, 1);
    assert_eq!(out[0].to, Destination::Node(n3.clone()));
    assert!(matches!(out[0].msg, GossipMsg::Digest { .. }));
    // Its link withheld the digest: n3's hello said 6.
    nodes[0].speaks(&n3, 6);
    nodes[0].tick(4_100, 0);
    assert_eq!(nodes[0].health(&n3), Health::Up);
    let (out, _) = nodes[0].tick(4_200, 1);
    assert!(
        matches!(out[0].msg, GossipMsg::Push { .. }),
        "{:?}",
        out[0].msg
    );
}
