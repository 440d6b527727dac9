//! Authorization cost: one decision with a decision-cache miss and with a hit, at
//! 10 / 10k / 50k tokens and scope maps, with 1 / 50 / 500 rules in the principal's
//! scope map (all but one or two of them not matching the repository).
//!
//! Two kinds of miss: `miss-time` (same principal and repository, new request time)
//! and `miss-repo` (a repository never seen before, with the same matching rules and
//! attributes: the context-free outcome is cached, no entities are built). After criterion's runs, a timing loop
//! prints p50/p99 per case (criterion reports means and medians only).
//!
//! `control/apply_change/50000-tokens`: the cost of applying one control-plane change
//! (a token record) to a 50k-token snapshot as the identity store does (clone, insert,
//! publish), beside `…-std-copy`: the same change when every change copied the maps.
//!
//! `cargo bench --bench authz` (criterion + percentiles), or
//! `cargo bench --bench authz -- --percentiles-only [FILTER]` (only the cases whose
//! name, e.g. `miss-time/10-tokens/1-rules`, contains FILTER).
#![allow(clippy::expect_used)] // a benchmark setup failure should abort loudly

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use portcullis::identity::scope::system_scope_maps;
use portcullis::identity::{
    Action, IdentitySnapshot, PasswordRecord, PasswordSlot, Principal, RepositoryPattern, ScopeMap,
    ScopeRule, Token, TokenStatus,
};
use portcullis::policy::{AuthzRequest, Operation, PolicyEngine, RequestContext};

const SIZES: [usize; 3] = [10, 10_000, 50_000];
const RULES: [usize; 3] = [1, 50, 500];
const NOW: i64 = 1_767_225_600;

fn rule(pattern: &str, actions: &[Action]) -> ScopeRule {
    ScopeRule {
        repository: RepositoryPattern::parse(pattern).expect("valid pattern"),
        actions: actions.iter().copied().collect::<BTreeSet<_>>(),
    }
}

fn map(name: String, rules: Vec<ScopeRule>) -> ScopeMap {
    ScopeMap {
        name,
        description: String::new(),
        rules,
        system: false,
        created_at: 0,
        updated_at: 0,
    }
}

fn token(name: String, scope_map: String) -> Token {
    let password = PasswordRecord {
        salt: [0; 16],
        hash: [0; 32],
        created_at: 0,
        expires_at: Some(NOW * 2),
    };
    Token {
        name,
        scope_map,
        status: TokenStatus::Enabled,
        password1: Some(password.clone()),
        password2: Some(password),
        created_at: 0,
        updated_at: 0,
    }
}

/// `size` tokens, each with its own scope map of 3 rules; token `t0`'s map has `rules`
/// rules of which only the last one or two match `team/app...`.
fn snapshot(size: usize, rules: usize) -> IdentitySnapshot {
    let mut snap = IdentitySnapshot {
        version: 1,
        ..Default::default()
    };
    for m in system_scope_maps() {
        snap.scope_maps.insert(m.name.clone(), Arc::new(m));
    }
    for i in 0..size {
        let name = format!("map{i}");
        let map_rules = if i == 0 {
            let mut r: Vec<ScopeRule> = (0..rules.saturating_sub(2))
                .map(|j| rule(&format!("other{j}/*"), &[Action::ContentRead]))
                .collect();
            if rules >= 2 {
                r.push(rule("team/app", &[Action::ContentWrite]));
            }
            r.push(rule("team/*", &[Action::ContentRead, Action::MetadataRead]));
            r
        } else {
            vec![
                rule(&format!("ns{i}/*"), &[Action::ContentRead]),
                rule(&format!("ns{i}/app"), &[Action::ContentWrite]),
                rule("shared/base", &[Action::ContentRead]),
            ]
        };
        snap.scope_maps
            .insert(name.clone(), Arc::new(map(name.clone(), map_rules)));
        let t = format!("t{i}");
        snap.tokens.insert(t.clone(), Arc::new(token(t, name)));
    }
    snap
}

fn request(repository: String, now: i64) -> AuthzRequest {
    AuthzRequest {
        principal: Principal::Token {
            name: "t0".into(),
            slot: PasswordSlot::Password1,
        },
        action: Action::ContentRead,
        repository,
        context: RequestContext {
            reference: None,
            signed: false,
            signatures: Default::default(),
            signature_artifact: false,
            source_ip: Some("10.1.2.3".parse().expect("ip")),
            now,
            operation: Operation::Pull,
        },
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Hit,
    MissTime,
    MissRepo,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Hit, Mode::MissTime, Mode::MissRepo];
    fn name(self) -> &'static str {
        match self {
            Mode::Hit => "hit",
            Mode::MissTime => "miss-time",
            Mode::MissRepo => "miss-repo",
        }
    }
}

/// Makes the `i`th request of a run in `mode`, and decides it.
struct Case {
    engine: PolicyEngine,
    snap: IdentitySnapshot,
    mode: Mode,
    i: i64,
}

impl Case {
    fn new(size: usize, rules: usize, mode: Mode) -> Self {
        let engine = PolicyEngine::load(&[]).expect("policies load");
        let snap = snapshot(size, rules);
        let case = Case {
            engine,
            snap,
            mode,
            i: 0,
        };
        // Warm the compiled scope map, policy set and (for hits) the decision.
        assert!(
            case.engine
                .authorize(&case.snap, request("team/app".into(), NOW))
                .allowed
        );
        case
    }

    fn run(&mut self) -> bool {
        self.i += 1;
        let r = match self.mode {
            Mode::Hit => request("team/app".into(), NOW),
            Mode::MissTime => request("team/app".into(), NOW + self.i),
            Mode::MissRepo => request(format!("team/app{}", self.i), NOW),
        };
        self.engine.authorize(&self.snap, black_box(r)).allowed
    }
}

fn name(size: usize, rules: usize, mode: Mode) -> String {
    format!("{}/{size}-tokens/{rules}-rules", mode.name())
}

fn percentiles(size: usize, rules: usize, mode: Mode) -> (Duration, Duration) {
    let mut case = Case::new(size, rules, mode);
    for _ in 0..2_000 {
        black_box(case.run());
    }
    let mut samples: Vec<Duration> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            black_box(case.run());
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

/// One token change applied to a 50k-token snapshot: persistent maps (what the store
/// does) against copying std maps (what it did before).
fn apply_change(c: &mut Criterion) {
    let size = 50_000;
    let mut snap = None;
    let mut i = 0u64;
    c.bench_function(&format!("control/apply_change/{size}-tokens"), |b| {
        let current = snap.get_or_insert_with(|| Arc::new(snapshot(size, 3)));
        b.iter(|| {
            i += 1;
            let mut next = IdentitySnapshot::clone(current);
            let t = format!("t{}", i % size as u64);
            let mut changed = token(t.clone(), format!("map{}", i % size as u64));
            changed.updated_at = i as i64;
            next.tokens.insert(t, Arc::new(changed));
            next.version += 1;
            *current = Arc::new(next);
        })
    });
    let mut maps = None;
    c.bench_function(
        &format!("control/apply_change/{size}-tokens-std-copy"),
        |b| {
            let (tokens, scope_maps) = maps.get_or_insert_with(|| {
                let s = snapshot(size, 3);
                let tokens: std::collections::HashMap<String, Arc<Token>> =
                    s.tokens.into_iter().collect();
                let scope_maps: std::collections::HashMap<String, Arc<ScopeMap>> =
                    s.scope_maps.into_iter().collect();
                (tokens, scope_maps)
            });
            b.iter(|| {
                i += 1;
                let mut next = (tokens.clone(), scope_maps.clone());
                let t = format!("t{}", i % size as u64);
                next.0.insert(t.clone(), Arc::new(token(t, "map0".into())));
                black_box(next)
            })
        },
    );
}

fn main() {
    let percentiles_only = std::env::args().any(|a| a == "--percentiles-only");
    if !percentiles_only {
        let mut c = Criterion::default()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .configure_from_args();
        for size in SIZES {
            for rules in RULES {
                for mode in Mode::ALL {
                    // Built on first use: cases that criterion's filter skips cost nothing.
                    let mut case = None;
                    c.bench_function(&format!("authorize/{}", name(size, rules, mode)), |b| {
                        let case = case.get_or_insert_with(|| Case::new(size, rules, mode));
                        b.iter(|| case.run())
                    });
                }
            }
        }
        apply_change(&mut c);
        c.final_summary();
    }
    // `cargo test --all-targets` runs benches once without `--bench`, as a smoke test:
    // criterion then runs each case once, and the timing loop below is skipped.
    let benchmarking = std::env::args().any(|a| a == "--bench" || a == "--percentiles-only");
    if !benchmarking {
        return;
    }
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    println!("\n| tokens & scope maps | rules | mode | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for size in SIZES {
        for rules in RULES {
            for mode in Mode::ALL {
                if !name(size, rules, mode).contains(&filter) {
                    continue;
                }
                let (p50, p99) = percentiles(size, rules, mode);
                println!(
                    "| {size} | {rules} | {} | {:.2} µs | {:.2} µs |",
                    mode.name(),
                    p50.as_secs_f64() * 1e6,
                    p99.as_secs_f64() * 1e6
                );
            }
        }
    }
}
