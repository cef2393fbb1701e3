//! Property tests (issue 10): the decoders, codecs and parsers never panic on any input,
//! and what we encode decodes back to the same thing.
//!
//! A few hundred cases per property keep the whole file under a few seconds.

use std::collections::BTreeMap;

use base64::Engine as _;
use proptest::prelude::*;

use crate::core::argv::{split, Mode};
use crate::core::decision::LockKind;
use crate::core::lock::{from_labels, is_label_value, Lock};
use crate::core::release::{
    decode_release, decode_release_json, encode_release_json, ReleaseStatus,
};
use crate::core::version::{ChartVersion, Constraint};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256),
        // Failure persistence files would land in the source tree; shrinking output in the
        // test log is enough.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- release records -------------------------------------------------------------------

/// JSON without floats (Helm's release JSON has none we read; NaN cannot round-trip).
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
        ".{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..6)
                .prop_map(|pairs| { serde_json::Value::Object(pairs.into_iter().collect()) }),
        ]
    })
}

fn status_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("deployed".to_string()),
        Just("superseded".to_string()),
        Just("failed".to_string()),
        Just("pending-upgrade".to_string()),
        Just("pending-install".to_string()),
        Just("uninstalled".to_string()),
        "[a-z-]{0,12}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn record_decoders_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_release(&bytes);
        let _ = decode_release_json(&bytes);
    }

    #[test]
    fn record_decoders_never_panic_on_encoded_garbage(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        gzip_magic in any::<bool>(),
    ) {
        // Valid base64 around garbage, with and without the gzip magic in front.
        let mut payload = if gzip_magic { vec![0x1f, 0x8b, 0x08] } else { Vec::new() };
        payload.extend(&bytes);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&payload);
        let _ = decode_release(encoded.as_bytes());
        let _ = decode_release_json(encoded.as_bytes());
    }

    #[test]
    fn record_decoders_never_panic_on_any_json(value in json_value()) {
        let encoded = encode_release_json(&value).unwrap();
        let _ = decode_release(encoded.as_bytes());
        let _ = decode_release_json(encoded.as_bytes());
    }

    #[test]
    fn release_json_round_trips(value in prop::collection::vec((".{0,8}", json_value()), 0..6)) {
        let object = serde_json::Value::Object(value.into_iter().collect());
        let encoded = encode_release_json(&object).unwrap();
        prop_assert_eq!(decode_release_json(encoded.as_bytes()).unwrap(), object);
    }

    #[test]
    fn release_summary_round_trips(
        name in "[a-z][a-z0-9-]{0,20}",
        namespace in "[a-z0-9-]{0,20}",
        revision in any::<u64>(),
        status in status_text(),
        chart in proptest::option::of("[a-z-]{1,12}"),
        version in proptest::option::of("[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}"),
        app_version in proptest::option::of(".{0,10}"),
        config in json_value(),
    ) {
        let mut metadata = serde_json::Map::new();
        if let Some(c) = &chart { metadata.insert("name".into(), c.clone().into()); }
        if let Some(v) = &version { metadata.insert("version".into(), v.clone().into()); }
        if let Some(a) = &app_version { metadata.insert("appVersion".into(), a.clone().into()); }
        let release = serde_json::json!({
            "name": name, "namespace": namespace, "version": revision,
            "info": { "status": status },
            "chart": { "metadata": metadata },
            "config": config,
        });
        let encoded = encode_release_json(&release).unwrap();
        let summary = decode_release(encoded.as_bytes()).unwrap();
        prop_assert_eq!(summary.name, name);
        prop_assert_eq!(summary.namespace, namespace);
        prop_assert_eq!(summary.revision, revision);
        prop_assert_eq!(summary.status.as_str(), status.as_str());
        prop_assert_eq!(&summary.status, &ReleaseStatus::parse(&status));
        prop_assert_eq!(summary.chart_name, chart);
        prop_assert_eq!(summary.chart_version, version);
        prop_assert_eq!(summary.app_version, app_version);
    }
}

// ---- lock labels --------------------------------------------------------------------------

fn lock_spec() -> impl Strategy<Value = Lock> {
    // Any text, including what looks like the codec's own `b32.` marker.
    let text = prop_oneof![".{0,100}", "b32\\.[a-z2-7]{0,10}", "[a-z0-9._-]{0,70}"];
    (
        prop_oneof![
            Just(LockKind::Soft),
            Just(LockKind::Hard),
            Just(LockKind::Pin)
        ],
        proptest::option::of(text.clone()),
        proptest::option::of(text.clone()),
        0i64..4_000_000_000,
        proptest::option::of(0i64..4_000_000_000),
        proptest::option::of(text.clone()),
        proptest::option::of(text),
    )
        .prop_map(|(kind, reason, by, since, expires_at, pin, pin_key)| Lock {
            kind,
            reason,
            by,
            since,
            expires_at,
            pin,
            pin_key,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lock_labels_round_trip_and_are_valid(spec in lock_spec()) {
        let labels = spec.labels();
        for (key, value) in &labels {
            prop_assert!(is_label_value(value), "{key}={value:?} is not a label value");
        }
        // A pin lock without a pin, or with a pin key that is no compare key, is
        // unreadable: it must fail, never read back as something else.
        let valid = !(spec.kind == LockKind::Pin && spec.pin.is_none())
            && spec
                .pin_key
                .as_deref()
                .is_none_or(|k| crate::core::decision::CompareKey::parse(k).is_ok());
        match from_labels(&labels) {
            Ok(read) => {
                prop_assert!(valid, "an invalid lock read back: {:?}", read);
                prop_assert_eq!(read, Some(spec));
            }
            Err(e) => prop_assert!(!valid, "a valid lock was refused: {}", e),
        }
    }

    #[test]
    fn lock_label_reader_never_panics(
        labels in prop::collection::btree_map(
            prop_oneof![
                Just("guarded-upgrade.io/lock".to_string()),
                Just("guarded-upgrade.io/reason".to_string()),
                Just("guarded-upgrade.io/reason-1".to_string()),
                Just("guarded-upgrade.io/by".to_string()),
                Just("guarded-upgrade.io/pin".to_string()),
                Just("guarded-upgrade.io/since".to_string()),
                Just("guarded-upgrade.io/expires".to_string()),
            ],
            prop_oneof![".{0,70}", "b32\\..{0,20}", Just("soft".to_string()), Just("hard".to_string())],
            0..7,
        )
    ) {
        let labels: BTreeMap<String, String> = labels;
        let _ = from_labels(&labels);
        let _ = crate::core::lock::from_labels(&labels);
    }
}

// ---- the guard on arbitrary lock labels (issue 17) ---------------------------------------

/// Label sets mixing every guarded-upgrade lock label (and continuations and unknown
/// keys under our prefix, and custom labels of others) with values that are valid, nearly
/// valid or junk.
fn arbitrary_lock_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key = prop_oneof![
        Just("guarded-upgrade.io/lock"),
        Just("guarded-upgrade.io/since"),
        Just("guarded-upgrade.io/expires"),
        Just("guarded-upgrade.io/by"),
        Just("guarded-upgrade.io/reason"),
        Just("guarded-upgrade.io/reason-1"),
        Just("guarded-upgrade.io/pin"),
        Just("guarded-upgrade.io/pin-1"),
        Just("guarded-upgrade.io/pin-key"),
        Just("guarded-upgrade.io/hard-original-status"),
        Just("guarded-upgrade.io/unknown"),
        Just("team"),
    ]
    .prop_map(str::to_string);
    let value = prop_oneof![
        Just("soft".to_string()),
        Just("hard".to_string()),
        Just("pin".to_string()),
        Just("1700000000".to_string()),
        Just("4000000000".to_string()),
        Just("~1.4".to_string()),
        Just(">=9".to_string()),
        Just("app-version".to_string()),
        Just("value:image.tag".to_string()),
        "b32\\.[a-z2-7]{0,12}",
        "b32\\..{0,6}",
        "[a-z0-9._-]{0,20}",
        ".{0,20}",
    ];
    prop::collection::btree_map(key, value, 0..9)
}

proptest! {
    #![proptest_config(config())]

    /// A valid deployed release whose latest record carries arbitrary labels, and a newer
    /// target: the guard reads the labels in full or refuses (exit 3) naming the record and
    /// the label; helm runs only when no lock is there or a fully read lock lets it.
    #[test]
    fn the_guard_never_runs_helm_on_lock_labels_it_cannot_read(labels in arbitrary_lock_labels()) {
        use crate::core::decision::{decide, Action, CompareKey, DecisionInput, VersionRule, Target};
        use crate::adapters::state::testkit::{block_on, rev, store};
        let mut latest = rev(2, ReleaseStatus::Deployed, "1.4.0");
        latest.labels = labels.clone().into_iter().collect();
        let store = store(&[rev(1, ReleaseStatus::Superseded, "1.3.0"), latest]);
        let ours = labels.keys().any(|k| k.starts_with("guarded-upgrade.io/"));
        let lock_kind = labels.get("guarded-upgrade.io/lock").map(String::as_str);
        let since_ok = labels
            .get("guarded-upgrade.io/since")
            .is_some_and(|t| t.parse::<i64>().is_ok());
        // Independent of the reader: label sets that can never be read in full.
        let surely_unreadable = ours
            && (!matches!(lock_kind, Some("soft" | "hard" | "pin"))
                || !since_ok
                || labels.contains_key("guarded-upgrade.io/unknown")
                || (lock_kind == Some("pin") && !labels.contains_key("guarded-upgrade.io/pin")));
        let view = match block_on(crate::adapters::state::read_release(&store, "db")) {
            Err(e) => {
                let text = e.to_string();
                prop_assert!(ours, "labels without a lock label failed the read: {}", text);
                prop_assert!(
                    text.starts_with("inconsistent record: Secret \"sh.helm.release.v1.db.v2\": label guarded-upgrade.io/"),
                    "the error does not name the record and the label: {}", text
                );
                return Ok(());
            }
            Ok(view) => view,
        };
        prop_assert!(!surely_unreadable, "an unreadable label set was read: {:?}", labels);
        prop_assert_eq!(view.state.lock.is_some(), ours);
        let target = Target { chart_name: Some("postgresql".into()), version: "1.5.0".into(), note: None };
        let compare = CompareKey::ChartVersion;
        let decision = decide(&DecisionInput {
            release: "db",
            namespace: "shared",
            state: &view.state,
            target: Some(&target),
            version_rule: VersionRule::Newer,
            allow_chart_change: false,
            now_unix: 1_800_000_000,
            compare: &compare,
            facts: None,
        });
        if matches!(decision.action, Action::Install | Action::Upgrade) {
            let lock = view.state.lock.as_ref();
            let lets_it = lock.is_none_or(|l| {
                l.expires_at.is_some_and(|t| t <= 1_800_000_000)
                    || (l.kind == LockKind::Pin && l.pin.as_deref().is_some_and(|p| {
                        Constraint::parse(p).is_ok_and(|c| c.matches(&ChartVersion::parse("1.5.0").unwrap()))
                    }))
            });
            prop_assert!(lets_it, "helm would run despite the lock {:?} from {:?}", lock, labels);
        }
    }
}

// ---- versions -----------------------------------------------------------------------------

fn version_text() -> impl Strategy<Value = (String, (u64, u64, u64), bool)> {
    (
        0u64..20,
        0u64..20,
        0u64..20,
        proptest::option::of("[a-z]{1,4}(\\.(0|[1-9][0-9]?))?"),
        proptest::option::of("[a-z0-9]{1,4}"),
        any::<bool>(),
    )
        .prop_map(|(ma, mi, pa, pre, build, v)| {
            let mut text = format!("{}{ma}.{mi}.{pa}", if v { "v" } else { "" });
            if let Some(p) = &pre {
                text.push('-');
                text.push_str(p);
            }
            if let Some(b) = build {
                text.push('+');
                text.push_str(&b);
            }
            (text, (ma, mi, pa), pre.is_some())
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn version_and_constraint_parsers_never_panic(text in ".{0,40}") {
        let _ = ChartVersion::parse(&text);
        if let Ok(c) = Constraint::parse(&text) {
            let _ = c.matches(&ChartVersion::parse("1.2.3").unwrap());
        }
        let _ = crate::core::version::is_exact_version(&text);
    }

    #[test]
    fn constraint_parser_never_panics_on_operator_soup(
        text in "[<>=!~^ ,|*xX.0-9v-]{0,30}",
        version in version_text(),
    ) {
        if let Ok(c) = Constraint::parse(&text) {
            let _ = c.matches(&ChartVersion::parse(&version.0).unwrap());
        }
    }

    #[test]
    fn versions_order_like_semver(a in version_text(), b in version_text(), c in version_text()) {
        let (va, vb, vc) = (
            ChartVersion::parse(&a.0).unwrap(),
            ChartVersion::parse(&b.0).unwrap(),
            ChartVersion::parse(&c.0).unwrap(),
        );
        // Antisymmetric, transitive, reflexive.
        prop_assert_eq!(va.cmp(&vb), vb.cmp(&va).reverse());
        if va <= vb && vb <= vc {
            prop_assert!(va <= vc);
        }
        prop_assert_eq!(va.cmp(&va.clone()), std::cmp::Ordering::Equal);
        // The numeric core decides when it differs; a release outranks its pre-releases.
        if a.1 != b.1 {
            prop_assert_eq!(va.cmp(&vb), a.1.cmp(&b.1));
        } else if a.2 != b.2 {
            prop_assert_eq!(va < vb, a.2);
        }
        // A leading `v`, surrounding whitespace and build metadata do not change precedence.
        let bare = a.0.trim_start_matches('v').split('+').next().unwrap().to_string();
        prop_assert_eq!(ChartVersion::parse(&format!(" {bare} ")).unwrap(), va);
    }

    #[test]
    fn exact_and_range_constraints_agree_with_ordering(a in version_text(), b in version_text()) {
        let (va, vb) = (ChartVersion::parse(&a.0).unwrap(), ChartVersion::parse(&b.0).unwrap());
        let core = |t: &str| t.trim_start_matches('v').split('+').next().unwrap().to_string();
        let (ca, cb) = (core(&a.0), core(&b.0));
        if let Ok(ge) = Constraint::parse(&format!(">={ca}")) {
            prop_assert!(ge.matches(&va));
            // Pre-releases only match constraints that name one (Masterminds semver);
            // release versions follow plain ordering.
            if !vb.is_prerelease() {
                prop_assert_eq!(ge.matches(&vb), vb >= va);
            }
        }
        if let Ok(lt) = Constraint::parse(&format!("<{cb}")) {
            prop_assert!(!lt.matches(&vb));
        }
        if let Ok(eq) = Constraint::parse(&format!("={ca}")) {
            prop_assert!(eq.matches(&va));
            if !vb.is_prerelease() {
                prop_assert_eq!(eq.matches(&vb), vb == va);
            }
        }
    }
}

// ---- argv ---------------------------------------------------------------------------------

/// One command-line item: its words, and whether the splitter must remove it.
fn argv_item() -> impl Strategy<Value = (Vec<String>, bool)> {
    let value = "[a-zA-Z0-9=,./: -]{0,12}";
    let helm_value_flag = prop::sample::select(vec![
        "--version",
        "--set",
        "--values",
        "-f",
        "--namespace",
        "-n",
        "--timeout",
        "--repo",
        "--kube-context",
        "--description",
        "--set-string",
        "--labels",
        "-l",
        "--output",
        "-o",
        "--post-renderer",
        "--history-max",
        "--password",
        "-v",
    ]);
    let helm_bool_flag = prop::sample::select(vec![
        "--install",
        "-i",
        "--atomic",
        "--wait",
        "--dry-run",
        "--devel",
        "--force",
        "--debug",
        "--create-namespace",
        "--reuse-values",
        "--wait-for-jobs",
        "--dry-run=server",
        "--wait=watcher",
        "--install=false",
        "-i=true",
        "--take-ownership",
    ]);
    let guard = prop::sample::select(vec![
        vec!["--min-version-policy", "off"],
        vec!["--min-version-policy=newer-or-equal"],
        vec!["--allow-chart-change"],
        vec!["--helm", "/usr/bin/helm"],
        vec!["--decision-output=json"],
        vec!["--decision-file", "-"],
        vec!["--detailed-exitcode"],
        vec!["--lock-timeout", "30s"],
        vec!["--lease-duration=20s"],
        vec!["--recover-pending-after", "1h"],
    ]);
    prop_oneof![
        (helm_value_flag.clone(), value).prop_map(|(f, v)| (vec![f.to_string(), v], false)),
        (helm_value_flag, value).prop_map(|(f, v)| {
            // `--flag=value`, `-fvalue`.
            if f.starts_with("--") {
                (vec![format!("{f}={v}")], false)
            } else if v.is_empty() {
                (vec![f.to_string(), v], false)
            } else {
                (vec![format!("{f}{v}")], false)
            }
        }),
        helm_bool_flag.prop_map(|f| (vec![f.to_string()], false)),
        guard.prop_map(|g| (g.iter().map(|s| s.to_string()).collect(), true)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn argv_splitter_never_panics(
        args in prop::collection::vec(
            prop_oneof!["-{0,2}[a-zA-Z=-]{0,8}", ".{0,10}", Just("--".to_string())],
            0..10,
        ),
        check in any::<bool>(),
    ) {
        let mode = if check { Mode::Check } else { Mode::Upgrade };
        let _ = split(&args, mode);
    }

    #[test]
    fn helm_arguments_pass_through_unchanged_and_in_order(
        items in prop::collection::vec(argv_item(), 0..8),
        release in "[a-z][a-z0-9-]{0,8}",
        chart in "[a-z./][a-z0-9./-]{0,12}",
        release_at in 0usize..9,
        chart_at in 0usize..9,
    ) {
        let mut items = items;
        let chart_at = chart_at.min(items.len());
        items.insert(chart_at, (vec![chart.clone()], false));
        let release_at = release_at.min(chart_at);
        items.insert(release_at, (vec![release.clone()], false));
        let args: Vec<String> = items.iter().flat_map(|(words, _)| words.clone()).collect();
        let want: Vec<String> = items
            .iter()
            .filter(|(_, guard)| !guard)
            .flat_map(|(words, _)| words.clone())
            .collect();
        let s = match split(&args, Mode::Upgrade) {
            Ok(s) => s,
            Err(e) => return Err(TestCaseError::fail(format!("{args:?}: {e}"))),
        };
        prop_assert_eq!(s.helm_args, want);
        prop_assert_eq!(s.release, release);
        prop_assert_eq!(s.chart, chart);
    }
}
