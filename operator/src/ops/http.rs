//! The operator's HTTP endpoint: `/metrics` for Prometheus, `/healthz` (liveness) and `/readyz`
//! (readiness) for the kubelet's probes.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};

#[derive(Debug, Default)]
struct HealthState {
    /// Why the process should be restarted, once something said so.
    unhealthy: Option<String>,
    ready: bool,
    /// Watches failing now: what each watches, and its last error. Not ready while one fails: the
    /// changes it should see reach no reconcile.
    failing_watches: BTreeMap<String, String>,
}

/// What the probes answer. Cloned handles share one state: the controllers hold one to report
/// readiness, the HTTP server another to answer with it.
///
/// A new `Health` is live and not ready: readiness waits for `set_ready(true)` (e.g. once the
/// controllers' caches have synced) and ends at shutdown or when the process turns unhealthy.
#[derive(Debug, Clone, Default)]
pub struct Health {
    state: Arc<Mutex<HealthState>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, HealthState> {
        // The state is two plain fields: a panic while it was held cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_ready(&self, ready: bool) {
        self.state().ready = ready;
    }

    /// Marks the process as broken (e.g. a controller loop ended), so `/healthz` fails and the kubelet
    /// restarts the pod. It stays so: there is no way back to healthy in the same process.
    pub fn set_unhealthy(&self, reason: impl Into<String>) {
        let mut state = self.state();
        if state.unhealthy.is_none() {
            state.unhealthy = Some(reason.into());
        }
    }

    /// Records that the watch of `watched` fails with `error` (`Some`), or works again (`None`).
    pub fn set_watch_failing(&self, watched: &str, error: Option<String>) {
        let mut state = self.state();
        match error {
            Some(error) => state.failing_watches.insert(watched.to_owned(), error),
            None => state.failing_watches.remove(watched),
        };
    }

    /// Ready, not unhealthy, and no watch failing.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// `Err(why not)` when not ready.
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.state();
        if let Some(reason) = &state.unhealthy {
            return Err(format!("unhealthy: {reason}"));
        }
        if !state.ready {
            return Err("not ready".into());
        }
        if !state.failing_watches.is_empty() {
            let failing: Vec<String> =
                state.failing_watches.iter().map(|(watched, error)| format!("watch of {watched} failing: {error}")).collect();
            return Err(failing.join("\n"));
        }
        Ok(())
    }

    /// `Err(reason)` once `set_unhealthy` was called.
    pub fn liveness(&self) -> Result<(), String> {
        match &self.state().unhealthy {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }
}

#[derive(Clone)]
struct Endpoints {
    metrics: Arc<Metrics>,
    health: Health,
}

async fn metrics(State(endpoints): State<Endpoints>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], endpoints.metrics.encode()).into_response()
}

async fn healthz(State(endpoints): State<Endpoints>) -> Response {
    match endpoints.health.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {reason}\n")).into_response(),
    }
}

async fn readyz(State(endpoints): State<Endpoints>) -> Response {
    match endpoints.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// The routes, for callers that serve them their own way; `serve` is the usual entry.
pub fn router(metrics: Arc<Metrics>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Endpoints { metrics, health })
}

/// Binds `bind` and serves until `shutdown` resolves (see `serve_listener`).
pub async fn serve(
    bind: SocketAddr,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|error| io::Error::new(error.kind(), format!("cannot listen on {bind} for metrics and probes: {error}")))?;
    serve_listener(listener, metrics, health, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0 and read the address). When `shutdown`
/// resolves, readiness turns false, no new connection is accepted, and requests in flight finish.
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shutting_down = {
        let health = health.clone();
        async move {
            shutdown.await;
            health.set_ready(false);
        }
    };
    axum::serve(listener, router(metrics, health)).with_graceful_shutdown(shutting_down).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    struct Reply {
        status: u16,
        content_type: Option<String>,
        body: String,
    }

    /// One HTTP/1.1 GET over a fresh connection, read to its end.
    async fn get(address: SocketAddr, path: &str) -> Reply {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: callguard\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut raw)).await.expect("reply in time").expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
        let mut lines = head.lines();
        let status = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|code| code.parse().ok()).expect("a status line");
        let content_type = lines
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.trim().to_owned());
        Reply { status, content_type, body: body.to_owned() }
    }

    #[tokio::test]
    async fn probes_follow_health_and_metrics_are_openmetrics_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let metrics = Arc::new(Metrics::new());
        let health = Health::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_listener(listener, metrics.clone(), health.clone(), async move {
            let _ = stopped.await;
        }));

        let live = get(address, "/healthz").await;
        assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));
        assert_eq!(get(address, "/readyz").await.status, 503, "not ready before the caches synced");

        health.set_ready(true);
        let ready = get(address, "/readyz").await;
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

        metrics.observe_reconcile(super::super::metrics::Kind::Phone, Duration::from_millis(2), super::super::metrics::Outcome::Success);
        let scraped = get(address, "/metrics").await;
        assert_eq!(scraped.status, 200);
        assert_eq!(scraped.content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        assert!(scraped.body.contains("callguard_reconciles_total{kind=\"Phone\"} 1\n"), "{}", scraped.body);
        assert!(scraped.body.ends_with("# EOF\n"), "{}", scraped.body);

        assert_eq!(get(address, "/nothing-here").await.status, 404);

        health.set_watch_failing("SipRealm in default", Some("403 Forbidden".into()));
        let failing = get(address, "/readyz").await;
        assert_eq!((failing.status, failing.body.as_str()), (503, "watch of SipRealm in default failing: 403 Forbidden\n"));
        health.set_watch_failing("SipRealm in default", None);
        assert_eq!(get(address, "/readyz").await.status, 200, "ready again once the watch works");

        health.set_unhealthy("the Phone controller stopped");
        let broken = get(address, "/healthz").await;
        assert_eq!((broken.status, broken.body.as_str()), (503, "unhealthy: the Phone controller stopped\n"));
        assert_eq!(get(address, "/readyz").await.status, 503, "an unhealthy process is not ready either");

        stop.send(()).expect("server still running");
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stops").expect("join").expect("clean stop");
        assert!(TcpStream::connect(address).await.is_err(), "the listener is closed after shutdown");
    }

    #[tokio::test]
    async fn shutdown_turns_readiness_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let health = Health::new();
        health.set_ready(true);
        let served = serve_listener(listener, Arc::new(Metrics::new()), health.clone(), std::future::ready(()));
        tokio::time::timeout(Duration::from_secs(5), served).await.expect("stops at once").expect("clean stop");
        assert!(!health.is_ready());
        assert_eq!(health.liveness(), Ok(()));
    }

    #[tokio::test]
    async fn serve_names_the_address_it_cannot_bind() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = taken.local_addr().expect("address");
        let error = serve(address, Arc::new(Metrics::new()), Health::new(), std::future::pending()).await.expect_err("address in use");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert!(error.to_string().contains(&address.to_string()), "{error}");
    }

    #[test]
    fn unhealthy_keeps_the_first_reason() {
        let health = Health::new();
        health.set_unhealthy("first");
        health.set_unhealthy("second");
        assert_eq!(health.liveness(), Err("first".to_owned()));
    }
}
