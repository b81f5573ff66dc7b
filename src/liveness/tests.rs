use super::*;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// `me`, tracking "me", "a" and "b" (not itself), at incarnation 100.
fn detector(me: &str) -> FailureDetector {
    let mut d = FailureDetector::new(id(me), 3000, 10_000, 100);
    for peer in ["me", "a", "b"] {
        d.track(&id(peer));
    }
    d
}

fn report(incarnation: u64, suspect: bool) -> Report {
    Report {
        incarnation,
        suspect,
    }
}

/// `to` merges every report `from` holds.
fn sync(from: &FailureDetector, to: &mut FailureDetector, now: u64) -> Vec<(NodeId, Health)> {
    to.merge(&from.reports(), now)
}

#[test]
fn an_unanswered_probe_suspects_then_downs_and_contact_brings_the_peer_back() {
    let mut d = detector("me");
    d.probed(&id("a"), 0);
    assert!(d.tick(2999).is_empty());
    assert_eq!(d.tick(3000), vec![(id("a"), Health::Suspect)]);
    assert!(d.tick(5000).is_empty(), "no repeated transitions");
    // down once suspected for down_after - suspect_after
    assert!(d.tick(9999).is_empty());
    assert_eq!(d.tick(10_000), vec![(id("a"), Health::Down)]);
    assert!(!d.is_up(&id("a")));
    assert_eq!(d.heard(&id("a"), 0), Some(Health::Up));
    assert!(d.is_up(&id("a")));
    // An answered probe is no evidence against it.
    d.probed(&id("a"), 13_000);
    d.heard(&id("a"), 0);
    assert!(d.tick(20_000).is_empty());
    assert!(d.is_up(&id("b")), "b was never probed");
}

#[test]
fn a_suspicion_travels_in_reports_and_the_suspect_refutes_it_for_everyone() {
    let (mut me, mut b, mut a) = (detector("me"), detector("b"), detector("a"));
    // Everyone learns a's incarnation from a's own report.
    sync(&a, &mut me, 0);
    sync(&a, &mut b, 0);
    // A failed request is no news for the others.
    let before = me.changes();
    assert_eq!(me.failed(&id("a"), 0), Some(Health::Suspect));
    assert_eq!(me.changes(), before);
    assert!(me.reports().contains(&(id("a"), report(100, false))));
    me.reached(&id("a"));
    // An unanswered probe is.
    me.probed(&id("a"), 0);
    assert_eq!(me.tick(3000), vec![(id("a"), Health::Suspect)]);
    assert!(me.changes() > before, "a report changed");
    assert!(me.reports().contains(&(id("a"), report(100, true))));
    assert_eq!(sync(&me, &mut b, 10), vec![(id("a"), Health::Suspect)]);
    // a gets the suspicion of its incarnation and takes a higher one
    assert!(sync(&b, &mut a, 20).is_empty());
    assert_eq!(a.incarnation(), 101);
    assert!(a.reports().contains(&(id("a"), report(101, false))));
    // which lifts the suspicion wherever it goes, relayed or not
    assert_eq!(sync(&a, &mut me, 30), vec![(id("a"), Health::Up)]);
    assert_eq!(sync(&me, &mut b, 40), vec![(id("a"), Health::Up)]);
    // and a suspicion of the old incarnation arriving late changes nothing
    assert!(b.merge(&[(id("a"), report(100, true))], 50).is_empty());
    assert!(b.is_up(&id("a")));
    // Nor does a suspicion of an earlier run make a refute again.
    assert!(a.merge(&[(id("a"), report(99, true))], 60).is_empty());
    assert_eq!(a.incarnation(), 101);
    // Restarted with its start's incarnation, a takes its own later one
    // back from the others, so their reports agree again.
    let mut restarted = detector("a");
    restarted.merge(&b.reports(), 70);
    assert_eq!(restarted.incarnation(), 101);
    assert!(restarted.reports().contains(&(id("a"), report(101, false))));
}

#[test]
fn contact_lifts_a_suspicion_here_and_its_report_stands_until_refuted() {
    let mut me = detector("me");
    me.probed(&id("a"), 0);
    me.tick(3000);
    assert_eq!(me.heard(&id("a"), 0), Some(Health::Up));
    assert!(me.reports().contains(&(id("a"), report(0, true))));
    assert!(me.tick(20_000).is_empty(), "not taken down after contact");
    // A request failing again suspects it again.
    assert_eq!(me.failed(&id("a"), 21_000), Some(Health::Suspect));
}

#[test]
fn reports_merge_in_any_order_to_the_same_state() {
    let updates = [
        (id("a"), report(5, false)),
        (id("a"), report(5, true)),
        (id("a"), report(7, false)),
        (id("b"), report(3, true)),
    ];
    let mut forward = detector("me");
    let mut backward = detector("me");
    for u in &updates {
        forward.merge(std::slice::from_ref(u), 0);
    }
    for u in updates.iter().rev() {
        backward.merge(std::slice::from_ref(u), 0);
    }
    assert_eq!(forward.reports(), backward.reports());
    assert!(forward.reports().contains(&(id("a"), report(7, false))));
    assert_eq!(forward.health(&id("a")), Health::Up);
    assert_eq!(forward.health(&id("b")), Health::Suspect);
    assert_eq!(backward.health(&id("a")), Health::Up);
    // Reports of strangers are not taken.
    assert!(
        forward
            .merge(&[(id("stranger"), report(1, true))], 0)
            .is_empty()
    );
    assert!(!forward.reports().iter().any(|(n, _)| *n == id("stranger")));
}

#[test]
fn a_stop_notice_is_down_at_once_and_only_contact_or_a_new_incarnation_lifts_it() {
    let mut d = detector("me");
    d.merge(&[(id("a"), report(500, false))], 0);
    assert_eq!(d.stopped(&id("a"), 10), Some(Health::Down));
    assert_eq!(d.stopped(&id("a"), 10), None);
    // Its connection dropping afterwards changes nothing, nor does a
    // counter of it another node relays, nor its old report.
    assert_eq!(d.failed(&id("a"), 20), None);
    assert!(d.observe(&[(id("a"), 7)].into_iter().collect()).is_empty());
    assert!(d.merge(&[(id("a"), report(500, false))], 30).is_empty());
    assert_eq!(d.health(&id("a")), Health::Down);
    // Nor does an answer it sent before the notice, arriving after it.
    assert_eq!(d.heard(&id("a"), 0), None);
    assert_eq!(d.health(&id("a")), Health::Down);
    // Back: the restarted process's incarnation, relayed.
    assert_eq!(
        d.merge(&[(id("a"), report(9000, false))], 40),
        vec![(id("a"), Health::Up)]
    );
    // Or a connection from it.
    d.stopped(&id("b"), 50);
    assert_eq!(d.reached(&id("b")), Some(Health::Up));
    assert!(d.stopped(&id("stranger"), 60).is_none());
}

#[test]
fn a_stop_notice_that_arrives_after_the_restart_it_announced_holds_only_a_while() {
    // The simulator found this (`--stop-notices`, seed 1424): the notice
    // came after the restarted run's report, so no later one lifted it,
    // and the peer stayed down with its hints and handoff waiting.
    let mut d = detector("me");
    d.merge(&[(id("a"), report(9000, false))], 0);
    assert_eq!(d.stopped(&id("a"), 100), Some(Health::Down));
    assert_eq!(d.heard(&id("a"), 1), None, "held for now");
    d.tick(100 + 9_999);
    assert_eq!(d.heard(&id("a"), 2), None);
    d.tick(100 + 10_000);
    assert_eq!(d.health(&id("a")), Health::Down, "until it is heard from");
    assert_eq!(d.heard(&id("a"), 3), Some(Health::Up));
}

#[test]
fn heartbeats_of_protocol_6_peers_count_as_contact_and_ours_advance() {
    let mut d = detector("me");
    d.failed(&id("a"), 0);
    assert_eq!(
        d.observe(&[(id("a"), 3)].into_iter().collect()),
        vec![(id("a"), Health::Up)]
    );
    // a counter that does not advance is no evidence
    d.failed(&id("a"), 10);
    assert!(d.observe(&[(id("a"), 3)].into_iter().collect()).is_empty());
    d.beat();
    d.beat();
    let beats = d.heartbeats();
    assert_eq!(beats[&id("me")], 102, "starts at the incarnation");
    assert_eq!(beats[&id("a")], 3);
    assert!(!beats.contains_key(&id("b")), "no counter heard of b");
    assert!(d.is_up(&id("me")));
    assert_eq!(d.health(&id("stranger")), Health::Down);
    assert!(d.failed(&id("stranger"), 0).is_none());
}
