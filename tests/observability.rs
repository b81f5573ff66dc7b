//! What an operator sees: the metrics endpoint and `status`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dynakv::wire::NetFault;
use dynakv::{Error, ErrorKind};
use dynakv_actors::testkit::{Cluster, check, metric, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// Waits until node `i`'s scrape shows `series` at `value`.
async fn wait_metric(cluster: &Cluster, i: usize, series: &str, value: f64) {
    wait_for(WAIT, series, || async {
        match metric(&cluster.scrape(i).await?, series) {
            v if v == value => Ok(()),
            v => Err(Error::Unavailable(format!("{series} = {v}"))),
        }
    })
    .await
    .unwrap();
}

#[actix_rt::test]
async fn metrics_count_requests_failures_repairs_liveness_and_storage() {
    // Nothing repairs behind the test's back: only reads do.
    let cluster = Cluster::start_with(3, |c| {
        c.hints.deliver = false;
        c.anti_entropy.enabled = false;
    })
    .await
    .unwrap();
    let client = cluster.client(0).await.unwrap();
    // W = 3: every copy lands before the answer, so no get below finds a
    // replica behind and the only read repair is the one provoked later.
    for i in 0..20u32 {
        let key = format!("k{i}");
        client
            .put(key.as_bytes(), b"v", &[], Some(3))
            .await
            .unwrap();
        client.get(key.as_bytes(), None).await.unwrap();
    }
    let missing = client.get(&[], None).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::InvalidRequest);

    let text = cluster.scrape(0).await.unwrap();
    assert_eq!(
        metric(
            &text,
            r#"dynakv_requests_total{op="put",outcome="ok",namespace="default"}"#
        ),
        20.0
    );
    assert_eq!(
        metric(
            &text,
            r#"dynakv_requests_total{op="get",outcome="ok",namespace="default"}"#
        ),
        20.0
    );
    assert_eq!(
        metric(
            &text,
            r#"dynakv_requests_total{op="get",outcome="invalid_request",namespace="default"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"dynakv_request_duration_seconds_count{op="put",namespace="default"}"#
        ),
        20.0
    );
    assert!(
        metric(
            &text,
            r#"dynakv_request_duration_seconds_sum{op="put",namespace="default"}"#
        ) > 0.0
    );
    assert_eq!(
        metric(
            &text,
            r#"dynakv_request_duration_seconds_bucket{le="+Inf",op="get",namespace="default"}"#
        ),
        21.0
    );
    // Every node holds every key, and the gauge is read at scrape.
    for i in 0..3 {
        wait_metric(&cluster, i, "dynakv_storage_keys", 20.0).await;
        let text = cluster.scrape(i).await.unwrap();
        assert!(metric(&text, "dynakv_storage_data_bytes") > 0.0);
        assert_eq!(
            metric(&text, "dynakv_client_connections"),
            f64::from(i == 0)
        );
    }

    // node3 cut off: node1 sees it down, and up again after the heal.
    let up = r#"dynakv_member_up{member="node3"}"#;
    wait_metric(&cluster, 0, up, 1.0).await;
    cluster.partition(&[2]).await;
    client.put(b"stale", b"new", &[], Some(2)).await.unwrap();
    wait_metric(&cluster, 0, up, 0.0).await;
    cluster.heal().await;
    wait_metric(&cluster, 0, up, 1.0).await;

    // node3 missed "stale": a read of all three repairs it.
    wait_for(WAIT, "a read of all three replicas", || async {
        client.get(b"stale", Some(3)).await
    })
    .await
    .unwrap();
    wait_metric(&cluster, 0, "dynakv_read_repairs_total", 1.0).await;

    // node1 alone cannot reach W = 2.
    cluster.partition(&[0]).await;
    let failed = client.put(b"alone", b"v", &[], Some(2)).await.unwrap_err();
    assert_eq!(failed.kind(), ErrorKind::Quorum, "{failed}");
    let text = cluster.scrape(0).await.unwrap();
    assert_eq!(
        metric(
            &text,
            r#"dynakv_quorum_failures_total{op="put",namespace="default"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"dynakv_requests_total{op="put",outcome="quorum",namespace="default"}"#
        ),
        1.0
    );
    cluster.heal().await;
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn status_shows_each_members_load_ownership_and_the_hints_waiting_for_it() {
    let cluster = Cluster::start_with(4, |c| c.hints.deliver = false)
        .await
        .unwrap();
    // Formed is not yet settled: members are up once gossip says so.
    cluster.settled(WAIT).await.unwrap();
    let client = cluster.client(0).await.unwrap();
    let report = client.status().await.unwrap();
    assert_eq!(report.members.len(), 4);
    let owned: u32 = report.members.iter().map(|m| m.owned).sum();
    assert_eq!(owned, report.partitions, "every partition has one owner");
    for m in &report.members {
        assert_eq!(m.state, "up");
        assert!(m.owned > 0 && m.load.is_some(), "{m:?}");
    }

    // node4 away: writes it owns wait as hints on the others.
    cluster.partition(&[3]).await;
    wait_for(WAIT, "node1 to see node4 down", || async {
        let report = client.status().await?;
        match report.members.iter().find(|m| m.node == cluster.id(3)) {
            Some(m) if m.liveness == "down" => Ok(()),
            m => Err(Error::Unavailable(format!("{m:?}"))),
        }
    })
    .await
    .unwrap();
    for i in 0..100u32 {
        client
            .put(format!("k{i}").as_bytes(), b"v", &[], None)
            .await
            .unwrap();
    }
    // Stand-ins place hinted copies after answering the client.
    let report = wait_for(WAIT, "the hints to be counted", || async {
        let report = client.status().await?;
        let stored: u64 = report
            .members
            .iter()
            .filter_map(|m| m.load.map(|l| l.keys))
            .sum();
        // 100 keys, 3 copies each, on the three members that answer
        if stored == 300 {
            Ok(report)
        } else {
            Err(Error::Unavailable(format!("{stored} copies")))
        }
    })
    .await
    .unwrap();
    let away = report
        .members
        .iter()
        .find(|m| m.node == cluster.id(3))
        .unwrap();
    assert_eq!(away.load, None, "node4 cannot answer");
    let ring = cluster
        .node(0)
        .membership
        .send(dynakv_actors::membership::CurrentView)
        .await
        .unwrap()
        .ring()
        .unwrap();
    let for_away = (0..100u32)
        .filter(|i| {
            let key = format!("k{i}");
            let pl = ring.preference_list(ring.partition_of(key.as_bytes()), 3);
            pl.contains(&&cluster.id(3))
        })
        .count() as u64;
    assert!(for_away > 0);
    assert_eq!(away.hints_pending, for_away);
    for m in report.members.iter().filter(|m| m.node != cluster.id(3)) {
        assert_eq!(m.hints_pending, 0);
    }
    // The members holding those hints say for how long, in status and in
    // the metrics.
    let waiting = format!("hints: holding some for {} for", cluster.id(3));
    let series = format!(
        "dynakv_hints_waiting_seconds{{member=\"{}\"}}",
        cluster.id(3)
    );
    wait_for(WAIT, "a holder of hints to say so", || async {
        for i in 0..3 {
            let notes = cluster.client(i).await?.status().await?.notes;
            if notes.iter().any(|l| l.starts_with(&waiting)) {
                let text = cluster.scrape(i).await?;
                check(text.contains(&series), || format!("no {series} in\n{text}"))?;
                return Ok(());
            }
        }
        Err(Error::Unavailable("no member says it holds hints".into()))
    })
    .await
    .unwrap();
    cluster.heal().await;
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn fault_requests_partition_a_node_only_where_fault_injection_is_on() {
    let cluster = Cluster::start_with(3, |c| c.testing.fault_injection = c.node.id != "node1")
        .await
        .unwrap();
    let refused = cluster
        .client(0)
        .await
        .unwrap()
        .fault(NetFault::Heal)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidRequest, "{refused}");
    assert!(refused.to_string().contains("fault_injection"), "{refused}");

    let node3 = cluster.client(2).await.unwrap();
    let bad = node3
        .fault(NetFault::Partition {
            peers: vec!["no spaces allowed".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidRequest, "{bad}");

    // node3 drops node1 and node2: both sides see the other down.
    let up = |n: u8| format!(r#"dynakv_member_up{{member="node{n}"}}"#);
    wait_metric(&cluster, 0, &up(3), 1.0).await;
    let peers = vec!["node1".to_string(), "node2".to_string()];
    node3.fault(NetFault::Partition { peers }).await.unwrap();
    wait_metric(&cluster, 0, &up(3), 0.0).await;
    wait_metric(&cluster, 2, &up(1), 0.0).await;
    node3.fault(NetFault::Heal).await.unwrap();
    wait_metric(&cluster, 0, &up(3), 1.0).await;
    wait_metric(&cluster, 2, &up(1), 1.0).await;
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn tombstones_waiting_to_be_collected_are_shown_in_metrics_and_status() {
    let cluster = Cluster::start_with(3, |c| {
        c.anti_entropy.gc_interval_ms = 100;
        c.anti_entropy.gc_grace_ms = 3_600_000;
        c.anti_entropy.keep_deleted_ms = 0;
    })
    .await
    .unwrap();
    let client = cluster.client(0).await.unwrap();
    let written = client.put(b"gone", b"v", &[], Some(3)).await.unwrap();
    client
        .delete(b"gone", &written.context, Some(3))
        .await
        .unwrap();
    // The node that leads the key's partition finds the tombstone; every
    // member allows it, and it waits out the (hour-long) grace period.
    wait_for(WAIT, "a node to report the tombstone waiting", || async {
        for i in 0..cluster.len() {
            let text = cluster.scrape(i).await?;
            if metric(&text, "dynakv_tombstones_awaiting") == 1.0 {
                let notes = cluster.client(i).await?.status().await?.notes;
                let line = notes.iter().find(|l| l.starts_with("tombstones:"));
                return match line {
                    Some(l) if l.contains("1 awaiting collection at the last round, all waiting out the grace period") => Ok(()),
                    other => Err(Error::Unavailable(format!("status says {other:?}"))),
                };
            }
        }
        Err(Error::Unavailable("no node reports it".into()))
    })
    .await
    .unwrap();
    cluster.stop().await.unwrap();
}
