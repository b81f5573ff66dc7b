//! The operators' commands about the cluster itself: namespaces (`dynakv
//! ns ...`) and membership (`dynakv cluster ...`).

use dynakv::handoff::PlanChange;
use dynakv::namespace::{Changes, Kind, Request, parse_ttl};
use dynakv::{Error, NodeId, Result};
use dynakv_actors::client::{Client, Options};

use crate::cli::{ClusterCommand, NsCommand, NsSettings};
use crate::first_answering;
use crate::output::{emit, print_namespaces, print_plan};

pub async fn namespaces(command: NsCommand, options: Options) -> Result<()> {
    let (target, request, json) = match command {
        NsCommand::Create {
            name,
            settings,
            target,
        } => (
            target,
            Request::Create {
                name,
                changes: changes(settings)?,
            },
            false,
        ),
        NsCommand::Alter {
            name,
            settings,
            target,
        } => (
            target,
            Request::Alter {
                name,
                changes: changes(settings)?,
            },
            false,
        ),
        NsCommand::Drop { name, target } => (target, Request::Drop { name }, false),
        NsCommand::Show { name, json, target } => (target, Request::Show { name }, json),
        NsCommand::List { json, target } => (target, Request::List, json),
    };
    let options = Options {
        cluster: target.cluster,
        ..options
    };
    let within = options.timeout;
    let client = first_answering(&target.node, options).await?;
    if request.changes_table() {
        say!("{}", client.change_namespace(request).await?);
        return agreed(&client, within).await;
    }
    let shown = matches!(request, Request::Show { .. });
    print_namespaces(&client.namespaces(request).await?, shown, json)
}

/// Waits until every member holds the change (`--timeout`), as a script
/// that uses a namespace right after creating it needs; says which members
/// do not have it yet if some still do not. The change is made either way:
/// gossip takes it to them once they can be reached.
async fn agreed(client: &Client, within: std::time::Duration) -> Result<()> {
    let agreement = client.namespace_agreement(within).await?;
    if agreement.is_complete() {
        say!("on all {} members", agreement.agreed.len());
        return Ok(());
    }
    let names = |ids: &[NodeId]| {
        ids.iter()
            .map(NodeId::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut missing = Vec::new();
    if !agreement.behind.is_empty() {
        missing.push(format!("not yet on {}", names(&agreement.behind)));
    }
    if !agreement.unreachable.is_empty() {
        missing.push(format!("{} did not answer", names(&agreement.unreachable)));
    }
    eprintln!(
        "warning: on {} of {} members after {}; {} (gossip takes the change to them)",
        agreement.agreed.len(),
        agreement.agreed.len() + agreement.behind.len() + agreement.unreachable.len(),
        humantime::format_duration(within),
        missing.join("; ")
    );
    Ok(())
}

/// The settings given on the command line, checked.
fn changes(s: NsSettings) -> Result<Changes> {
    Ok(Changes {
        n: s.n,
        r: s.r,
        w: s.w,
        ttl_ms: s.ttl.as_deref().map(parse_ttl).transpose()?,
        max_siblings: s.max_siblings,
        max_value_bytes: s.max_value_bytes,
        kind: kind(s.kind.as_deref(), s.register.as_deref())?,
    })
}

/// A namespace type from `--type` and `--register` (`lww` makes a map's
/// registers last-writer-wins: the type `map-lww`).
fn kind(kind: Option<&str>, register: Option<&str>) -> Result<Option<Kind>> {
    let kind = kind.map(Kind::parse).transpose()?;
    match (kind, register) {
        (kind, None | Some("mv")) => Ok(kind),
        (Some(Kind::Map | Kind::LwwMap), Some("lww")) => Ok(Some(Kind::LwwMap)),
        (_, Some("lww")) => Err(Error::InvalidRequest(
            "--register lww applies to a map: give --type map".into(),
        )),
        (_, Some(other)) => Err(Error::InvalidRequest(format!(
            "--register {other:?} is not a register (mv, lww)"
        ))),
    }
}

pub async fn cluster(command: ClusterCommand, options: Options) -> Result<()> {
    let connect = async |addr: &str| Client::connect_with(addr, options.clone()).await;
    let message = match command {
        ClusterCommand::Join { node, seed } => connect(&node).await?.join(&seed).await?,
        ClusterCommand::Leave { node } => connect(&node).await?.leave().await?,
        ClusterCommand::Remove { node, via } => connect(&via).await?.remove(&node).await?,
        ClusterCommand::Split { via } => connect(&via).await?.split().await?,
        ClusterCommand::Plan {
            join,
            leave,
            weight,
            split,
            via,
            json,
        } => {
            let change = plan_change(join, leave, weight, split)?;
            let report = connect(&via).await?.plan(change).await?;
            return print_plan(&report, json);
        }
    };
    say!("{message}");
    Ok(())
}

fn plan_change(
    join: Option<String>,
    leave: Option<String>,
    weight: Option<String>,
    split: bool,
) -> Result<PlanChange> {
    if split {
        return Ok(PlanChange::Split);
    }
    let id =
        |s: &str| NodeId::new(s).map_err(|e| Error::InvalidRequest(format!("bad node id: {e}")));
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| Error::InvalidRequest(format!("bad weight {s:?}")))
    };
    match (join, leave, weight) {
        (Some(j), None, None) => {
            let (node, w) = j.split_once(':').unwrap_or((&j, "1"));
            Ok(PlanChange::Join {
                node: id(node)?,
                weight: number(w)?,
            })
        }
        (None, Some(l), None) => Ok(PlanChange::Leave { node: id(&l)? }),
        (None, None, Some(w)) => {
            let (node, w) = w
                .split_once('=')
                .ok_or_else(|| Error::InvalidRequest("--weight takes ID=WEIGHT".into()))?;
            Ok(PlanChange::Weight {
                node: id(node)?,
                weight: number(w)?,
            })
        }
        _ => Err(Error::InvalidRequest(
            "give one of --join, --leave, --weight, --split".into(),
        )),
    }
}
