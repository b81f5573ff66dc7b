//! MetricsServer: serves the node's metrics over HTTP (`GET /metrics`, the
//! OpenMetrics text Prometheus scrapes), refreshing the storage gauges from
//! the replica at each scrape and the liveness gauges at each topology.

use std::sync::Arc;

use actix::prelude::*;
use tracing::{debug, warn};

use crate::messages::RingChanged;
use crate::metrics::Metrics;
use crate::replica::{Replica, Stats};
use crate::supervise::shielded;

/// The content type of `Metrics::render`.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One HTTP request, handed from the listener thread.
#[derive(Message)]
#[rtype(result = "()")]
struct Scrape(tiny_http::Request);

/// Serves the metrics over HTTP; keeps the liveness gauges current.
pub struct MetricsServer {
    metrics: Metrics,
    replica: Addr<Replica>,
    /// Taken by the first start; the server keeps running across restarts.
    listener: Option<std::net::TcpListener>,
    server: Option<Arc<tiny_http::Server>>,
}

impl MetricsServer {
    pub fn new(metrics: Metrics, replica: Addr<Replica>, listener: std::net::TcpListener) -> Self {
        MetricsServer {
            metrics,
            replica,
            listener: Some(listener),
            server: None,
        }
    }
}

const NAME: &str = "metrics";

impl Actor for MetricsServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let server = match tiny_http::Server::from_listener(listener, None) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                warn!(error = %e, "metrics endpoint could not start");
                return;
            }
        };
        let me = ctx.address();
        let accepting = server.clone();
        let spawned = std::thread::Builder::new()
            .name("dynakv-metrics".into())
            .spawn(move || {
                // Ends when the server is unblocked (the actor stopped) or
                // the actor is gone.
                while let Ok(request) = accepting.recv() {
                    if me.try_send(Scrape(request)).is_err() {
                        break;
                    }
                }
            });
        match spawned {
            Ok(_) => self.server = Some(server),
            Err(e) => warn!(error = %e, "metrics endpoint thread could not start"),
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(server) = self.server.take() {
            server.unblock();
        }
    }
}

/// The metrics and the server are shared handles a panic cannot corrupt.
impl Supervised for MetricsServer {}

impl Handler<RingChanged> for MetricsServer {
    type Result = ();

    fn handle(&mut self, RingChanged(t): RingChanged, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, _| act.metrics.members(&t))
    }
}

impl Handler<Scrape> for MetricsServer {
    type Result = ();

    fn handle(&mut self, Scrape(request): Scrape, ctx: &mut Context<Self>) {
        shielded(NAME, self, ctx, |act, ctx| {
            let path = request.url().split('?').next().unwrap_or_default();
            if request.method() != &tiny_http::Method::Get || path != "/metrics" {
                let missing = tiny_http::Response::from_string("not found: try GET /metrics\n")
                    .with_status_code(404);
                return respond(request, missing);
            }
            // Refresh the storage gauges first; serve the rest regardless.
            let stats = act.replica.send(Stats).into_actor(act);
            ctx.spawn(stats.map(move |stats, act, ctx| {
                shielded(NAME, act, ctx, |act, _| {
                    match stats {
                        Ok(Ok(s)) => act.metrics.storage(s.keys, s.bytes, s.disk_bytes, &s.hints),
                        Ok(Err(e)) => debug!(error = %e, "storage stats unavailable for metrics"),
                        Err(e) => debug!(error = %e, "replica unavailable for metrics"),
                    }
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        CONTENT_TYPE.as_bytes(),
                    )
                    .expect("a valid header");
                    let body = tiny_http::Response::from_string(act.metrics.render());
                    respond(request, body.with_header(header));
                })
            }));
        })
    }
}

/// Sends an HTTP response off the arbiter (a slow scraper may block it).
fn respond<R: std::io::Read + Send + 'static>(
    request: tiny_http::Request,
    response: tiny_http::Response<R>,
) {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = request.respond(response) {
            debug!(error = %e, "metrics response not sent");
        }
    });
}
