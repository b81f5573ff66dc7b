//! Namespace administration: created, altered and dropped from any node,
//! the table converges everywhere by gossip (concurrent alters included),
//! survives a restart, and bad input is refused naming the field.

#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::time::Duration;

mod support;

use dynakv::namespace::{Changes, Info, Request, Settings};
use dynakv_actors::testkit::{Cluster, check, wait_for};
use support::{ProcessCluster, cli};

const WAIT: Duration = Duration::from_secs(30);

fn create(name: &str, changes: Changes) -> Request {
    Request::Create {
        name: name.into(),
        changes,
    }
}

fn alter(name: &str, changes: Changes) -> Request {
    Request::Alter {
        name: name.into(),
        changes,
    }
}

/// Node `i`'s list of namespaces.
async fn list(cluster: &Cluster, i: usize) -> dynakv::Result<Vec<Info>> {
    cluster.client(i).await?.namespaces(Request::List).await
}

/// Waits until every running node lists the same namespaces, and returns
/// them.
async fn converged(cluster: &Cluster) -> Vec<Info> {
    wait_for(WAIT, "every node to list the same namespaces", || async {
        let first = list(cluster, 0).await?;
        for i in 1..cluster.len() {
            let theirs = list(cluster, i).await?;
            check(theirs == first, || {
                format!("node {i} lists {theirs:?}, node 0 {first:?}")
            })?;
        }
        Ok(first)
    })
    .await
    .unwrap()
}

fn settings_of<'a>(infos: &'a [Info], name: &str) -> Option<&'a Settings> {
    infos.iter().find(|i| i.name == name).map(|i| &i.settings)
}

#[actix_rt::test]
async fn namespaces_made_on_any_node_reach_every_node_and_survive_a_restart() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let defaults = cluster.config(0).default_namespace();

    let made = cluster.client(0).await.unwrap();
    let done = made
        .change_namespace(create(
            "carts",
            Changes {
                r: Some(1),
                max_value_bytes: Some(1000),
                ..Changes::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(done, "namespace carts created");
    let all = converged(&cluster).await;
    let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["default", "carts"]);
    assert_eq!(settings_of(&all, "default"), Some(&defaults));
    let carts = settings_of(&all, "carts").unwrap();
    assert_eq!(
        (carts.n, carts.r, carts.w, carts.max_value_bytes),
        (defaults.n, 1, defaults.w, 1000)
    );
    assert_eq!(carts.max_siblings, defaults.max_siblings);

    // Two alters of one namespace at once on two nodes: every node ends
    // with the same one.
    let (b, c) = (
        cluster.client(1).await.unwrap(),
        cluster.client(2).await.unwrap(),
    );
    let (x, y) = tokio::join!(
        b.change_namespace(alter(
            "carts",
            Changes {
                w: Some(1),
                ..Changes::default()
            }
        )),
        c.change_namespace(alter(
            "carts",
            Changes {
                max_siblings: Some(7),
                ..Changes::default()
            }
        )),
    );
    x.unwrap();
    y.unwrap();
    let all = converged(&cluster).await;
    let carts = settings_of(&all, "carts").unwrap();
    assert!(
        carts.w == 1 || carts.max_siblings == 7,
        "one of the alters won: {carts:?}"
    );

    // Shown the same on every node, and kept across a restart.
    cluster.restart_node(1).await.unwrap();
    let shown = cluster
        .client(1)
        .await
        .unwrap()
        .namespaces(Request::Show {
            name: "carts".into(),
        })
        .await
        .unwrap();
    assert_eq!(shown[0].settings, *carts);

    // Dropped everywhere, for good: the name is not used again.
    made.change_namespace(Request::Drop {
        name: "carts".into(),
    })
    .await
    .unwrap();
    let all = converged(&cluster).await;
    assert!(settings_of(&all, "carts").is_none(), "{all:?}");
    let e = made
        .change_namespace(create("carts", Changes::default()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not used again"), "{e}");
    cluster.stop().await.unwrap();
}

/// The caller of a change learns when every member holds it (Cassandra's
/// schema agreement): a member cut off from gossip is named until the cut
/// heals, and once all agree every node serves the new namespace at once.
#[actix_rt::test]
async fn the_caller_learns_when_every_member_holds_a_change() {
    let cluster = Cluster::start(3).await.unwrap();
    let made = cluster.client(0).await.unwrap();
    cluster.partition(&[2]).await;
    made.change_namespace(create("carts", Changes::default()))
        .await
        .unwrap();
    let cut = made
        .namespace_agreement(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!cut.is_complete(), "{cut:?}");
    assert!(cut.behind.contains(&cluster.id(2)), "{cut:?}");
    assert!(!cut.agreed.contains(&cluster.id(2)), "{cut:?}");

    cluster.heal().await;
    let all = made.namespace_agreement(WAIT).await.unwrap();
    assert!(all.is_complete(), "{all:?}");
    let mut ids: Vec<_> = (0..3).map(|i| cluster.id(i)).collect();
    ids.sort();
    assert_eq!(all.agreed, ids);
    for i in 0..3 {
        let carts = cluster
            .client(i)
            .await
            .unwrap()
            .in_namespace("carts")
            .unwrap();
        carts.put(b"k", b"v", &[], None).await.unwrap();
    }
}

#[actix_rt::test]
async fn bad_namespace_requests_are_refused_naming_what_is_wrong() {
    let cluster = Cluster::start(3).await.unwrap();
    let client = cluster.client(0).await.unwrap();
    let refused = |request: Request| {
        let client = &client;
        async move {
            client
                .change_namespace(request)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let e = refused(create("Carts!", Changes::default())).await;
    assert!(e.contains("namespace name \"Carts!\""), "{e}");
    let e = refused(create(
        "wide",
        Changes {
            n: Some(5),
            ..Changes::default()
        },
    ))
    .await;
    assert!(e.contains("n = 5 is more than the 3 members"), "{e}");
    let e = refused(create(
        "quorum",
        Changes {
            n: Some(2),
            r: Some(3),
            ..Changes::default()
        },
    ))
    .await;
    assert!(e.contains("r = 3 must be between 1 and n = 2"), "{e}");
    let e = refused(alter("missing", Changes::default())).await;
    assert!(e.contains("no namespace missing"), "{e}");
    let e = refused(alter("default", Changes::default())).await;
    assert!(e.contains("[cluster]"), "{e}");
    let e = client
        .namespaces(Request::Show {
            name: "missing".into(),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no namespace missing"), "{e}");
    // Nothing was created along the way.
    assert_eq!(list(&cluster, 0).await.unwrap().len(), 1);
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn the_cli_creates_shows_lists_and_drops_namespaces() {
    let cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let [a, b] = [0, 1].map(|i| cluster.client_addrs[i].clone());
    let (ok, out, err) = cli(&[
        "ns",
        "create",
        "carts",
        "--r",
        "1",
        "--max-siblings",
        "8",
        "--node",
        &a,
    ]);
    assert!(ok, "{err}");
    // The command returns once every member has the change: node 2 knows
    // carts at once.
    assert_eq!(out, "namespace carts created\non all 3 members");
    let (ok, out, err) = cli(&["ns", "show", "carts", "--json", "--node", &b]);
    assert!(ok, "{err}");
    let shown = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(shown["r"], 1);
    assert_eq!(shown["max_siblings"], 8);
    assert_eq!(shown["type"], "blob");
    let (ok, out, _) = cli(&["ns", "list", "--node", &b]);
    assert!(
        ok && out.contains("carts") && out.contains("default"),
        "{out}"
    );

    for (args, says) in [
        (vec!["ns", "create", "x", "--ttl", "-1h"], "ttl \"-1h\""),
        (vec!["ns", "create", "x", "--n", "-1"], "--n"),
        (
            vec!["ns", "create", "x", "--n", "2", "--r", "3"],
            "r = 3 must be between 1 and n = 2",
        ),
        (
            vec!["ns", "create", "x", "--type", "list"],
            "not a namespace type",
        ),
        (
            vec!["ns", "create", "x", "--n", "4"],
            "n = 4 is more than the 3 members",
        ),
        (vec!["ns", "drop", "nothing"], "no namespace nothing"),
    ] {
        let mut args = args;
        args.extend(["--node", a.as_str()]);
        let (ok, _, err) = cli(&args);
        assert!(!ok && err.contains(says), "{args:?}: {err}");
    }
    // Keys in it, through any node.
    let (ok, _, err) = cli(&["put", "--ns", "carts", "k", "v", "--w", "3", "--node", &a]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["get", "--ns", "carts", "k", "--json", "--node", &b]);
    assert!(ok && out.contains(r#""values":["v"]"#), "{out} {err}");
    let (ok, out, _) = cli(&["get", "k", "--node", &b]);
    assert!(ok && out.contains("(not found)"), "default has no k: {out}");
    let (ok, out, err) = cli(&["list", "--ns", "carts", "--json", "--node", &b]);
    assert!(ok && out.contains(r#""keys":["k"]"#), "{out} {err}");
    let (ok, out, err) = cli(&["mget", "--ns", "carts", "k", "--node", &a]);
    assert!(ok && out.contains('v'), "{out} {err}");
    let (ok, _, err) = cli(&["get", "--ns", "nope", "k", "--node", &a]);
    assert!(!ok && err.contains("no namespace nope"), "{err}");

    let (ok, out, err) = cli(&["ns", "drop", "carts", "--node", &b]);
    assert!(
        ok && out == "namespace carts dropped\non all 3 members",
        "{out} {err}"
    );

    // Data types: operations in, one merged value out, as text or JSON.
    for (name, kind) in [("hits", "counter"), ("bag", "set")] {
        let (ok, _, err) = cli(&["ns", "create", name, "--type", kind, "--node", &a]);
        assert!(ok, "{err}");
    }
    let incr = |by: &str| cli(&["incr", "--ns", "hits", "k", by, "--node", &a]);
    assert_eq!(incr("5").1, "5");
    assert_eq!(incr("-7").1, "-2");
    let (ok, _, err) = incr("x");
    assert!(!ok && err.contains("invalid digit"), "{err}");
    let (ok, out, err) = cli(&["get", "--ns", "hits", "k", "--json", "--node", &b]);
    assert!(ok && out == r#"{"value":-2}"#, "{out} {err}");
    let (ok, _, err) = cli(&["sadd", "--ns", "bag", "k", "x", "y", "--node", &a]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["srem", "--ns", "bag", "k", "x", "--node", &b]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["smembers", "--ns", "bag", "k", "--json", "--node", &b]);
    assert!(ok && out.starts_with(r#"{"context":"#), "{out} {err}");
    assert!(out.contains(r#""members":["y"]"#), "{out}");
    let (ok, out, err) = cli(&["get", "--ns", "bag", "k", "--node", &a]);
    assert!(ok && out.starts_with("y\ncontext: "), "{out} {err}");
    let (ok, _, err) = cli(&["incr", "--ns", "bag", "k", "--node", &a]);
    assert!(!ok && err.contains("incr does not apply to a set"), "{err}");

    // Maps: register and counter fields; lww registers on request.
    let (ok, _, err) = cli(&[
        "ns",
        "create",
        "users",
        "--type",
        "map",
        "--register",
        "lww",
        "--node",
        &a,
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&["ns", "show", "users", "--node", &a]);
    assert!(ok && out.contains("map-lww"), "{out}");
    let (ok, _, err) = cli(&[
        "ns",
        "create",
        "x",
        "--type",
        "set",
        "--register",
        "lww",
        "--node",
        &a,
    ]);
    assert!(
        !ok && err.contains("--register lww applies to a map"),
        "{err}"
    );
    for args in [
        vec!["hset", "--ns", "users", "ann", "name", "Ann"],
        vec!["hset", "--ns", "users", "ann", "city", "Oslo"],
        vec!["hincr", "--ns", "users", "ann", "logins", "3"],
        vec!["hincr", "--ns", "users", "ann", "logins", "-1"],
        vec!["hdel", "--ns", "users", "ann", "city"],
        vec!["hsadd", "--ns", "users", "ann", "tags", "a", "b", "c"],
        vec!["hsrem", "--ns", "users", "ann", "tags", "b"],
    ] {
        let mut args = args;
        args.extend(["--node", a.as_str()]);
        let (ok, _, err) = cli(&args);
        assert!(ok, "{args:?}: {err}");
    }
    let (ok, out, err) = cli(&["hgetall", "--ns", "users", "ann", "--json", "--node", &b]);
    assert!(
        ok && out.contains(r#""fields":{"logins":2,"name":"Ann","tags":{"members":["a","c"]}}"#),
        "{out} {err}"
    );
    let (ok, out, err) = cli(&["get", "--ns", "users", "ann", "--node", &b]);
    assert!(
        ok && out.starts_with(
            "logins = 2\nname = \"Ann\"\ntags = {\"members\":[\"a\",\"c\"]}\ncontext: "
        ),
        "{out} {err}"
    );
    let (ok, _, err) = cli(&["hset", "--ns", "users", "ann", "", "v", "--node", &a]);
    assert!(!ok && err.contains("a field name of 0 bytes"), "{err}");
}

/// A member that hangs (SIGSTOP) does not keep the command from hearing
/// the others: it names the hung one after `--timeout` and succeeds, and
/// the change is on every member that answers.
#[actix_rt::test]
async fn a_change_names_a_hung_member_and_still_reaches_the_others() {
    let cluster = ProcessCluster::start(3, "");
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let [a, b] = [0, 1].map(|i| cluster.client_addrs[i].clone());
    cluster.signal(2, "STOP");
    let (ok, out, err) = cli(&["ns", "create", "carts", "--timeout", "5s", "--node", &a]);
    cluster.signal(2, "CONT");
    assert!(ok, "{err}");
    assert_eq!(out, "namespace carts created");
    assert_eq!(
        err,
        "warning: on 2 of 3 members after 5s; node3 did not answer \
         (gossip takes the change to them)"
    );
    let (ok, _, err) = cli(&["ns", "show", "carts", "--node", &b]);
    assert!(ok, "{err}");
}

#[actix_rt::test]
async fn keys_live_in_their_namespace_under_its_quorums_and_limits() {
    let cluster = Cluster::start(3).await.unwrap();
    let client = cluster.client(0).await.unwrap();
    client
        .change_namespace(create(
            "carts",
            Changes {
                r: Some(1),
                w: Some(1),
                max_value_bytes: Some(10),
                max_siblings: Some(2),
                ..Changes::default()
            },
        ))
        .await
        .unwrap();
    converged(&cluster).await;
    let carts = client.in_namespace("carts").unwrap();
    assert_eq!(carts.namespace(), "carts");

    // One key name, two namespaces, two values.
    carts.put(b"k", b"in carts", &[], None).await.unwrap();
    assert!(client.get(b"k", None).await.unwrap().values.is_empty());
    client.put(b"k", b"in default", &[], None).await.unwrap();
    assert_eq!(
        carts.get(b"k", None).await.unwrap().values,
        [b"in carts".to_vec()]
    );
    assert_eq!(
        client.get(b"k", None).await.unwrap().values,
        [b"in default".to_vec()]
    );
    for i in 0..5 {
        carts
            .put(format!("c{i}").as_bytes(), b"v", &[], None)
            .await
            .unwrap();
    }
    let page = carts.list(b"", 100, None).await.unwrap();
    let mut keys = page.keys;
    keys.sort();
    assert_eq!(keys, [&b"c0"[..], b"c1", b"c2", b"c3", b"c4", b"k"]);
    assert_eq!(client.list(b"", 100, None).await.unwrap().keys, [b"k"]);
    let batch = carts.get_many(&[b"c0", b"nope"], None).await.unwrap();
    assert_eq!(batch[0].as_ref().unwrap().values, [b"v".to_vec()]);
    assert!(batch[1].as_ref().unwrap().values.is_empty());
    let local = carts.inspect(b"c1").await.unwrap();
    assert_eq!(local.siblings.len(), 1, "{local:?}");

    // The namespace's own limit, and one that does not exist.
    let e = carts
        .put(b"big", b"eleven byte", &[], None)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("value of 11 bytes exceeds the limit of 10"),
        "{e}"
    );
    client.put(b"big", b"eleven byte", &[], None).await.unwrap();
    // Blind writes make siblings, up to the namespace's limit of 2 (the
    // replica learns the table from the view it follows).
    for _ in 0..2 {
        carts.put(b"sib", b"v", &[], Some(3)).await.unwrap();
    }
    wait_for(WAIT, "a third sibling to be refused", || async {
        match carts.put(b"sib", b"v", &[], Some(3)).await {
            Err(e) if e.to_string().contains("more than the limit of 2") => Ok(()),
            other => Err(dynakv::Error::Unavailable(format!("{other:?}"))),
        }
    })
    .await
    .unwrap();
    let e = client
        .in_namespace("users")
        .unwrap()
        .get(b"k", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no namespace users"), "{e}");
    assert!(client.in_namespace("Users!").is_err());
    let e = client.put(b"\x00raw", b"v", &[], None).await.unwrap_err();
    assert!(e.to_string().contains("0x00"), "{e}");

    // Node 1 alone: carts' default R = W = 1 are met there, default's
    // R = W = 2 are not, and a request may still ask for more.
    cluster.partition(&[0]).await;
    carts.put(b"alone", b"v", &[], None).await.unwrap();
    assert_eq!(
        carts.get(b"alone", None).await.unwrap().values,
        [b"v".to_vec()]
    );
    let e = carts.put(b"alone", b"v", &[], Some(2)).await.unwrap_err();
    assert_eq!(e.kind(), dynakv::ErrorKind::Quorum, "{e}");
    let e = client.put(b"alone", b"v", &[], None).await.unwrap_err();
    assert_eq!(e.kind(), dynakv::ErrorKind::Quorum, "{e}");
    cluster.heal().await;

    let text = cluster.scrape(0).await.unwrap();
    let puts = |ns: &str| {
        dynakv_actors::testkit::metric(
            &text,
            &format!(r#"dynakv_requests_total{{op="put",outcome="ok",namespace="{ns}"}}"#),
        )
    };
    // 9 in carts, more if a sibling got in before the replica learned the
    // limit.
    assert!(puts("carts") >= 9.0, "{}", puts("carts"));
    assert_eq!(puts("default"), 2.0);
    cluster.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_dropped_namespaces_keys_are_deleted_everywhere() {
    let cluster = Cluster::start_with(3, |c| {
        c.anti_entropy.gc_interval_ms = 200;
        c.anti_entropy.gc_grace_ms = 300;
        c.anti_entropy.keep_deleted_ms = 0;
    })
    .await
    .unwrap();
    let client = cluster.client(0).await.unwrap();
    client
        .change_namespace(create("carts", Changes::default()))
        .await
        .unwrap();
    let carts = client.in_namespace("carts").unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for k in &keys {
        carts.put(k.as_bytes(), b"v", &[], Some(3)).await.unwrap();
        client
            .put(k.as_bytes(), b"kept", &[], Some(3))
            .await
            .unwrap();
    }
    client
        .change_namespace(Request::Drop {
            name: "carts".into(),
        })
        .await
        .unwrap();
    let e = carts.get(b"k0", None).await.unwrap_err();
    assert!(e.to_string().contains("no namespace carts"), "{e}");

    // Every node deletes its copies; the tombstones are then collected.
    wait_for(WAIT, "no node to hold a key of carts", || async {
        for i in 0..cluster.len() {
            let node = cluster.client(i).await?.in_namespace("carts")?;
            for k in &keys {
                let local = node.inspect(k.as_bytes()).await?;
                check(local.siblings.is_empty(), || {
                    format!("node {i} holds {k}: {local:?}")
                })?;
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    for k in &keys {
        let read = client.get(k.as_bytes(), Some(3)).await.unwrap();
        assert_eq!(
            read.values,
            [b"kept".to_vec()],
            "the default namespace's {k}"
        );
    }
    cluster.stop().await.unwrap();
}
