use super::*;
use crate::ownership::Capacity;
use crate::view::Status;

fn member(i: usize) -> Member {
    Member {
        id: NodeId::new(format!("n{i}")).unwrap(),
        peer_addr: format!("10.0.{}.{}:7100", i / 250, i % 250),
        client_addr: format!("10.0.{}.{}:7000", i / 250, i % 250),
        weight: 1,
        status: Status::Up,
        version: 1,
    }
}

/// A founded view of `count` members and `q` partitions.
fn view(count: usize, q: u32) -> View {
    let mut v = View::new("c".into(), q);
    for i in 0..count {
        let m = member(i);
        v.members.insert(m.id.clone(), m);
    }
    let caps: Vec<Capacity> = v.active();
    v.ownership = Some(Ownership::found(q, &caps, 3).unwrap());
    v
}

/// One exchange between `a` and `b` as a round makes it.
fn exchange(a: &mut View, b: &mut View) -> (usize, usize) {
    let buckets = Summary::of(a, &[]).differing(&Summary::of(b, &[]));
    let there = Records::of(a, &[], &buckets);
    let q = there.check(8, b.partitions).unwrap();
    there.merge_into(b, q).unwrap();
    let back = Records::of(b, &[], &buckets);
    let q = back.check(8, a.partitions).unwrap();
    back.merge_into(a, q).unwrap();
    (there.members.len(), there.entries.len())
}

#[test]
fn views_that_differ_in_a_few_records_exchange_only_their_buckets() {
    let mut a = view(200, 4096);
    let mut b = a.clone();
    assert_eq!(Summary::of(&a, &[]).root(), Summary::of(&b, &[]).root());
    assert!(
        Summary::of(&a, &[])
            .differing(&Summary::of(&b, &[]))
            .is_empty()
    );
    // a knows of a newcomer; b of a member's new version and of two moves
    let newcomer = member(500);
    a.members.insert(newcomer.id.clone(), newcomer.clone());
    b.members.get_mut(&member(7).id).unwrap().version = 2;
    let table = b.ownership.as_mut().unwrap();
    let moves: Vec<crate::ownership::Move> = [3u32, 4000]
        .iter()
        .map(|&p| crate::ownership::Move {
            partition: crate::partition::Partition(p),
            from: table.entry(crate::partition::Partition(p)).owner.clone(),
            to: member(9).id,
        })
        .collect();
    table.begin(&moves);
    let differing = Summary::of(&a, &[]).differing(&Summary::of(&b, &[]));
    assert!(differing.len() <= 4, "{differing:?}");
    let (members, entries) = exchange(&mut a, &mut b);
    assert_eq!(a, b);
    assert_eq!(Summary::of(&a, &[]).root(), Summary::of(&b, &[]).root());
    assert!(
        members <= 2 * 200 / MEMBER_BUCKETS + 8,
        "{members} member records"
    );
    assert_eq!(entries, 2 * 4096 / MAX_CHUNKS, "two chunks of the table");
    assert_eq!(a.members[&newcomer.id], newcomer);
    assert_eq!(a.members[&member(7).id].version, 2);
}

#[test]
fn a_view_without_a_table_takes_a_whole_one_and_no_part() {
    let founded = view(5, 64);
    let mut bare = founded.clone();
    bare.ownership = None;
    let summary = Summary::of(&bare, &[]);
    assert_eq!(summary.buckets.len(), 2 * MEMBER_BUCKETS + 1);
    let buckets = Summary::of(&founded, &[]).differing(&summary);
    assert_eq!(buckets.len(), 64, "every chunk");
    let mut part = Records::of(&founded, &[], &buckets);
    part.entries.pop();
    let mut copy = bare.clone();
    assert!(
        !part.merge_into(&mut copy, 64).unwrap(),
        "a part of a table"
    );
    assert!(copy.ownership.is_none());
    Records::of(&founded, &[], &buckets)
        .merge_into(&mut bare, 64)
        .unwrap();
    assert_eq!(bare, founded);
}

#[test]
fn views_of_two_partition_counts_meet_at_the_larger() {
    for q in [64, 1024] {
        let mut split = view(5, q);
        split.split().unwrap();
        let mut old = view(5, q);
        // A move the unsplit view began reaches both children.
        let table = old.ownership.as_mut().unwrap();
        let moved = crate::partition::Partition(7);
        table.begin(&[crate::ownership::Move {
            partition: moved,
            from: table.entry(moved).owner.clone(),
            to: member(4).id,
        }]);
        let mut expected = old.clone();
        expected.split().unwrap();
        exchange(&mut old, &mut split);
        assert_eq!(old, expected);
        assert_eq!(split, expected);
        assert_eq!(
            Summary::of(&old, &[]).root(),
            Summary::of(&split, &[]).root()
        );
        let children = moved.children();
        for c in children {
            assert_eq!(
                split.ownership.as_ref().unwrap().entry(c).next,
                Some(member(4).id)
            );
        }
    }
    // A peer of protocol 7 says no Q: its records are at the receiver's.
    let v = view(3, 64);
    let mut r = Records::of(&v, &[], &[129]);
    r.partitions = 0;
    assert_eq!(r.check(64, 64).unwrap(), 64);
    assert!(
        r.check(128, 64).is_err(),
        "fewer partitions than the layout"
    );
}

#[test]
fn summaries_bucket_lists_and_records_from_peers_are_bounded() {
    let v = view(3, 1024);
    let s = Summary::of(&v, &[]);
    assert_eq!(s.buckets.len(), 2 * MEMBER_BUCKETS + 1 + MAX_CHUNKS);
    s.check(64, 1024).unwrap();
    s.check(64, 64).unwrap();
    assert!(
        s.check(2048, 2048).is_err(),
        "fewer partitions than the layout"
    );
    let mut wrong = s.clone();
    wrong.partitions = 64;
    assert!(wrong.check(64, 1024).is_err(), "buckets of another count");
    wrong.partitions = 1000;
    assert!(wrong.check(64, 1024).is_err(), "not a power of two");
    let short = Summary {
        buckets: vec![0; 3],
        partitions: 1024,
    };
    assert!(short.check(64, 1024).is_err());
    Summary::check_buckets(&[0, 64, 128, 384], 1024).unwrap();
    assert!(Summary::check_buckets(&[385], 1024).is_err());
    assert!(Summary::check_buckets(&vec![0; 400], 1024).is_err());
    let mut r = Records::of(&v, &[], &[129]);
    r.check(64, 1024).unwrap();
    r.entries.push((1024, r.entries[0].1.clone()));
    assert!(r.check(64, 1024).is_err(), "a partition out of range");
    let crowd = Records {
        members: vec![member(1); MAX_MEMBERS + 1],
        ..Records::default()
    };
    assert!(crowd.check(64, 1024).is_err());
}
