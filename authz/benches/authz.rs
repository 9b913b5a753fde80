//! Decision latency: `cargo bench -p ward-authz`.
//!
//! Policy sets of 10, 100, 1,000 and 10,000 generated policies in the shapes a mesh has: most
//! permit one workload one service (`principal ==`, `resource ==`, an action group), a tenth
//! are per-service forbids with a condition, and a few are global forbids (guardrails with no
//! scope, evaluated for every request). Requests mix allowed calls, calls a forbid catches and
//! calls nothing permits.
//!
//! Criterion measures the mean of sliced (`Snapshot::authorize_evaluated`) and unsliced
//! (`Snapshot::authorize_unsliced`) evaluation, and of `Snapshot::authorize` answering the same
//! requests again from remembered decisions ("remembered"). After it, a table of p50/p99 over
//! individually timed decisions is printed, plus the ext_authz gRPC round trip on loopback.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a benchmark fails loudly on broken setup"
)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as EnvoyRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use ward_authz::reload::Reloader;
use ward_authz::server::{self, Inputs, Server};
use ward_authz::{
    Authorizer, Modes, PolicyEngine, Principal, Request, RequestContext, Resource, Snapshot,
};
use ward_identity::SpiffeId;

/// Policy counts and how many of them are unscoped global forbids (every request evaluates
/// those): `n / 200`, at least 2, plus 10,000 with only 5 to show what the global ones cost.
const SHAPES: [(usize, usize); 5] = [(10, 2), (100, 2), (1_000, 5), (10_000, 50), (10_000, 5)];
const REQUESTS: usize = 1_000;

/// xorshift64*: tiny, seeded, deterministic.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

/// A generated repository and the requests to decide against it.
struct Fixture {
    _dir: tempfile::TempDir,
    snapshot: Snapshot,
    requests: Vec<Request>,
    globals: usize,
    allowed: usize,
    /// How long `Snapshot::load` took (what a reload costs).
    load: Duration,
}

fn workload(i: usize) -> String {
    format!("spiffe://ward.local/ns/team{}/sa/svc-{i}", i % 50)
}

fn service(i: usize) -> String {
    format!("svc-{i}")
}

/// Writes a repository of `n` policies (`globals` of them global forbids) over `n / 10`
/// services and loads it.
fn fixture(n: usize, globals: usize) -> Fixture {
    let services = (n / 10).max(5);
    let forbids = n / 10;
    let permits = n - globals - forbids;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
    let mut cedar = String::new();
    let mut pairs = Vec::with_capacity(permits);
    for i in 0..permits {
        let (from, to) = (rng.below(services), rng.below(services));
        let group = if i % 3 == 0 { "write" } else { "read" };
        let cond = if i % 4 == 0 {
            " when { context.mtls }"
        } else {
            ""
        };
        let _ = writeln!(
            cedar,
            "@id(\"permit-{i}\")\npermit (principal == Ward::Workload::\"{}\", action in [Ward::Action::\"{group}\"], resource == Ward::Service::\"{}\"){cond};",
            workload(from),
            service(to)
        );
        pairs.push((from, to, group));
    }
    for i in 0..forbids {
        let _ = writeln!(
            cedar,
            "@id(\"forbid-{i}\")\nforbid (principal, action, resource == Ward::Service::\"{}\") when {{ context.path like \"/internal/{i}/*\" }};",
            service(rng.below(services))
        );
    }
    for i in 0..globals {
        let cond = match i % 3 {
            0 => "unless { context.mtls }".to_owned(),
            1 => format!("when {{ context.path like \"/admin/{i}/*\" }}"),
            _ => format!(
                "when {{ context.headers has \"x-canary\" && context.headers[\"x-canary\"] == \"block-{i}\" }}"
            ),
        };
        let _ = writeln!(
            cedar,
            "@id(\"global-{i}\")\nforbid (principal, action, resource) {cond};"
        );
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/schema.cedarschema");
    std::fs::copy(demo, dir.path().join("schema.cedarschema")).expect("schema");
    std::fs::write(dir.path().join("policies.cedar"), cedar).expect("policies");
    std::fs::create_dir(dir.path().join("entities")).expect("entities dir");
    let entities: Vec<_> = (0..services)
        .map(|i| {
            serde_json::json!({
                "uid": { "type": "Ward::Service", "id": service(i) },
                "attrs": { "namespace": format!("team{}", i % 50), "tenant": "shared", "labels": [] },
                "parents": []
            })
        })
        .collect();
    std::fs::write(
        dir.path().join("entities/services.json"),
        serde_json::to_string(&entities).expect("json"),
    )
    .expect("entities");
    let start = Instant::now();
    let snapshot = Snapshot::load(dir.path()).unwrap_or_else(|e| panic!("generated set: {e}"));
    let load = start.elapsed();
    assert_eq!(snapshot.policy_count(), n);

    let requests = (0..REQUESTS)
        .map(|i| {
            let (from, to, method, path) = match i % 10 {
                // Allowed: a permitted pair.
                0..=5 => {
                    let (from, to, group) = pairs[rng.below(pairs.len())];
                    let method = if group == "write" { "POST" } else { "GET" };
                    (from, to, method, "/api/items/42".to_owned())
                }
                // Caught by a per-service forbid's condition (or denied by default).
                6 | 7 => {
                    let (from, to, _) = pairs[rng.below(pairs.len())];
                    (
                        from,
                        to,
                        "GET",
                        format!("/internal/{}/x", rng.below(forbids.max(1))),
                    )
                }
                // Nothing permits it.
                _ => (
                    rng.below(services),
                    rng.below(services),
                    "DELETE",
                    "/api/items/1".to_owned(),
                ),
            };
            request(from, to, method, &path, i)
        })
        .collect();
    Fixture {
        _dir: dir,
        snapshot,
        requests,
        globals,
        allowed: 0,
        load,
    }
}

fn request(from: usize, to: usize, method: &str, path: &str, i: usize) -> Request {
    Request {
        principal: Principal::Workload(SpiffeId::parse(&workload(from)).expect("id")),
        action: method.to_owned(),
        resource: Resource::Service(service(to)),
        context: RequestContext {
            method: method.to_owned(),
            path: path.to_owned(),
            host: service(to),
            source_ip: Some([10, 0, 0, 7].into()),
            mtls: true,
            request_id: format!("req-{i}"),
            time: 1_764_430_000,
            ..RequestContext::default()
        },
        entities: Vec::new(),
    }
}

/// `100`, or `10000-5global` for the extra shape.
fn label(f: &Fixture) -> String {
    let n = f.snapshot.policy_count();
    let usual = SHAPES.iter().find(|(m, _)| *m == n).map(|(_, g)| *g);
    if usual == Some(f.globals) {
        n.to_string()
    } else {
        format!("{n}-{}global", f.globals)
    }
}

fn criterion_benches(c: &mut Criterion, fixtures: &[Fixture]) {
    let mut group = c.benchmark_group("decision");
    for f in fixtures {
        let n = label(f);
        let mut i = 0;
        group.bench_function(format!("sliced/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % f.requests.len();
                black_box(f.snapshot.authorize_evaluated(black_box(&f.requests[i])))
            })
        });
        group.bench_function(format!("remembered/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % f.requests.len();
                black_box(f.snapshot.authorize(black_box(&f.requests[i])))
            })
        });
        if f.snapshot.policy_count() >= 1_000 {
            // Whole-set evaluation of big sets is slow; fewer samples keep the run short.
            group.sample_size(20);
        }
        group.bench_function(format!("unsliced/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % f.requests.len();
                black_box(f.snapshot.authorize_unsliced(black_box(&f.requests[i])))
            })
        });
    }
    group.finish();
}

/// p50/p99 (and p99.9, max) of individually timed calls; runs for about `budget`.
fn percentiles(budget: Duration, mut once: impl FnMut(usize)) -> (usize, [Duration; 5]) {
    // Warm up and estimate how many calls fit the budget (between 2,000 and 100,000).
    let start = Instant::now();
    let mut warm = 0;
    while start.elapsed() < budget / 10 || warm < 200 {
        once(warm);
        warm += 1;
    }
    let per = start.elapsed() / warm as u32;
    let iterations = (budget.as_nanos() / per.as_nanos().max(1)).clamp(2_000, 100_000) as usize;
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let t = Instant::now();
        once(i);
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    (
        iterations,
        [
            at(0.50),
            at(0.99),
            at(0.999),
            samples[samples.len() - 1],
            mean,
        ],
    )
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn latency_table(fixtures: &[Fixture]) {
    println!();
    println!("Decision latency, individually timed (µs):");
    println!(
        "| policies | global forbids | allowed | load (ms) | mode | decisions | p50 | p99 | p99.9 | max | mean |"
    );
    println!("| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for f in fixtures {
        let n = f.snapshot.policy_count();
        for mode in ["sliced", "remembered", "unsliced"] {
            let (iters, [p50, p99, p999, max, mean]) = percentiles(Duration::from_secs(3), |i| {
                let r = &f.requests[i % f.requests.len()];
                let d = match mode {
                    "sliced" => f.snapshot.authorize_evaluated(r),
                    "remembered" => f.snapshot.authorize(r),
                    _ => f.snapshot.authorize_unsliced(r),
                };
                black_box(d);
            });
            println!(
                "| {n} | {} | {}% | {} | {mode} | {iters} | {} | {} | {} | {} | {} |",
                f.globals,
                f.allowed * 100 / f.requests.len(),
                f.load.as_millis(),
                us(p50),
                us(p99),
                us(p999),
                us(max),
                us(mean)
            );
        }
    }
}

/// The ext_authz gRPC round trip on loopback: one tonic client, sequential calls, the demo
/// policies, an allowed request (`checkout-api` → `GET /orders/7712` on `orders-api`).
fn ext_authz_round_trip() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let engine = Arc::new(PolicyEngine::load(&demo).expect("demo policies"));
        let authorizer = Arc::new(Authorizer::new(engine, Modes::default(), "bench"));
        let reloader = Arc::new(Reloader::new(authorizer.clone(), demo, None));
        let cfg = server::Config {
            http_listen: "127.0.0.1:0".parse().expect("addr"),
            grpc_listen: "127.0.0.1:0".parse().expect("addr"),
            drain_timeout: Duration::from_secs(1),
        };
        let inputs = Inputs {
            authorizer,
            reloader,
            auditor: None,
        };
        let server = Server::bind(&cfg, inputs).await.expect("bind");
        let addr = server.grpc_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let mut client = AuthorizationClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let req = check_request();
        let answer = client.check(req.clone()).await.expect("check").into_inner();
        assert_eq!(
            answer.status.expect("status").code,
            0,
            "the bench request is allowed"
        );

        let budget = Duration::from_secs(5);
        let start = Instant::now();
        let mut samples = Vec::new();
        while start.elapsed() < budget && samples.len() < 100_000 {
            let t = Instant::now();
            black_box(client.check(req.clone()).await.expect("check"));
            samples.push(t.elapsed());
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!();
        println!("ext_authz gRPC round trip on loopback (µs), demo policies, sequential calls:");
        println!("| calls | p50 | p99 | p99.9 | max |");
        println!("| ---: | ---: | ---: | ---: | ---: |");
        println!(
            "| {} | {} | {} | {} | {} |",
            samples.len(),
            us(at(0.5)),
            us(at(0.99)),
            us(at(0.999)),
            us(samples[samples.len() - 1])
        );
        drop(client);
        let _ = stop.send(());
        let _ = running.await;
    });
}

fn check_request() -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: "spiffe://ward.local/ns/checkout/sa/checkout-api".to_owned(),
                ..Peer::default()
            }),
            destination: Some(Peer {
                principal: "spiffe://ward.local/ns/orders/sa/orders-api".to_owned(),
                ..Peer::default()
            }),
            request: Some(EnvoyRequest {
                time: None,
                http: Some(HttpRequest {
                    method: "GET".to_owned(),
                    path: "/orders/7712".to_owned(),
                    host: "orders-api".to_owned(),
                    headers: [("x-request-id".to_owned(), "bench".to_owned())].into(),
                    ..HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut fixtures: Vec<Fixture> = SHAPES.iter().map(|&(n, g)| fixture(n, g)).collect();
    // Sliced and unsliced evaluation agree on every generated request (decision and reasons).
    for f in &mut fixtures {
        // Whole-set evaluation of the big sets is slow; a hundred requests make the point.
        let check = if f.snapshot.policy_count() >= 1_000 {
            100
        } else {
            REQUESTS
        };
        for r in f.requests.iter().take(check) {
            let (a, b) = (f.snapshot.authorize(r), f.snapshot.authorize_unsliced(r));
            assert_eq!((a.allow, &a.reasons), (b.allow, &b.reasons), "{r:?}");
            let again = f.snapshot.authorize(r);
            assert_eq!(
                (again.allow, &again.reasons),
                (b.allow, &b.reasons),
                "{r:?}"
            );
        }
        f.allowed = f
            .requests
            .iter()
            .filter(|r| f.snapshot.authorize(r).allow)
            .count();
    }
    criterion_benches(&mut c, &fixtures);
    c.final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` only checks that the benches run.
    // `--profile-time` (profiling one bench) skips them too.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--profile-time") {
        latency_table(&fixtures);
        ext_authz_round_trip();
    }
}
