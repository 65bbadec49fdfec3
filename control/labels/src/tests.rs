//! Unit tests of [`crate::parse`] and the layering rules.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]
use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn one(kind: ObjectKind, label: &str, value: &str) -> Parsed {
    parse(kind, &labels(&[(label, value)]))
}

#[test]
fn endpoint_weight_accepts_0_to_128_and_rejects_the_rest() {
    use names::ENDPOINT_WEIGHT as W;
    let table: &[(&str, Result<u8, Reason>)] = &[
        ("0", Ok(0)),
        ("1", Ok(1)),
        ("100", Ok(100)),
        ("128", Ok(128)),
        ("129", Err(Reason::OutOfRange { min: 0, max: 128 })),
        ("-1", Err(Reason::OutOfRange { min: 0, max: 128 })),
        ("abc", Err(Reason::NotAnInteger)),
        ("", Err(Reason::NotAnInteger)),
        ("1.5", Err(Reason::NotAnInteger)),
        (
            "99999999999999999999999",
            Err(Reason::OutOfRange { min: 0, max: 128 }),
        ),
    ];
    for (value, want) in table {
        let p = one(ObjectKind::Workload, W, value);
        match want {
            Ok(w) => {
                assert_eq!(p.settings.weight, Some(*w), "{value}");
                assert!(p.errors.is_empty(), "{value}");
            }
            Err(reason) => {
                assert_eq!(p.settings.weight, None, "{value}");
                assert_eq!(
                    p.errors,
                    vec![LabelError {
                        label: W.into(),
                        value: value.to_string(),
                        reason: reason.clone()
                    }],
                    "{value}"
                );
            }
        }
    }
}

#[test]
fn durations_are_milliseconds_or_carry_a_unit() {
    let table: &[(&str, Option<u64>)] = &[
        ("3000", Some(3000)),
        ("0", Some(0)),
        ("3s", Some(3000)),
        ("250ms", Some(250)),
        ("1m", Some(60_000)),
        ("1h", Some(3_600_000)),
        ("1.5s", Some(1500)),
        ("abc", None),
        ("-5", None),
        ("5x", None),
        ("", None),
        ("s", None),
        (".5s", None),
        ("3 s", None),
    ];
    for (value, want) in table {
        let got = parse_duration(value, Unit::Millis)
            .ok()
            .map(|d| d.as_millis() as u64);
        assert_eq!(got, *want, "{value:?}");
        let p = one(ObjectKind::Service, names::REQUEST_TIMEOUT, value);
        assert_eq!(
            p.settings.traffic.request_timeout.map(|d| d.as_millis() as u64),
            *want
        );
        assert_eq!(p.errors.len(), usize::from(want.is_none()), "{value:?}");
    }
}

#[test]
fn cookie_ttl_plain_numbers_are_seconds() {
    let p = one(ObjectKind::Service, names::HASH_COOKIE_TTL, "30");
    assert_eq!(p.settings.cluster.hash_cookie_ttl, Some(Duration::from_secs(30)));
    let p = one(ObjectKind::Service, names::HASH_COOKIE_TTL, "1m");
    assert_eq!(p.settings.cluster.hash_cookie_ttl, Some(Duration::from_secs(60)));
}

#[test]
fn percentages_are_0_to_100_and_may_be_fractional() {
    let table: &[(&str, Option<u32>)] = &[
        ("0", Some(0)),
        ("100", Some(1_000_000)),
        ("50", Some(500_000)),
        ("0.5", Some(5_000)),
        ("33.3333", Some(333_333)),
        ("99.9999", Some(999_999)),
        ("100.0", Some(1_000_000)),
        ("100.5", None),
        ("101", None),
        ("-1", None),
        ("abc", None),
        ("nan", None),
        ("inf", None),
        ("1e2", None),
        ("", None),
    ];
    for label in [
        names::FAULT_DELAY_PERCENTAGE,
        names::FAULT_ABORT_PERCENTAGE,
        names::TRACING_SAMPLING,
    ] {
        for (value, want) in table {
            let p = one(ObjectKind::Service, label, value);
            let t = &p.settings.traffic;
            let got = match label {
                names::FAULT_DELAY_PERCENTAGE => t.fault.delay_percentage,
                names::FAULT_ABORT_PERCENTAGE => t.fault.abort_percentage,
                _ => t.tracing_sampling,
            };
            assert_eq!(got.map(Percent::ppm), *want, "{label}={value:?}");
            assert_eq!(p.errors.len(), usize::from(want.is_none()), "{label}={value:?}");
        }
    }
}

#[test]
fn percent_reports_whole_numbers_and_floats() {
    let p = parse_percent("50").unwrap();
    assert_eq!(p.whole(), Some(50));
    assert_eq!(p.as_f64(), 50.0);
    let p = parse_percent("12.5").unwrap();
    assert_eq!(p.whole(), None);
    assert_eq!(p.as_f64(), 12.5);
}

#[test]
fn every_label_lands_in_its_own_field() {
    use names::*;
    let svc = parse(
        ObjectKind::Service,
        &labels(&[
            ("traffic.port.9080", "http"),
            ("traffic.port.3306", "TCP"),
            ("traffic.port.22", "direct"),
            (LB_POLICY, "least_request"),
            (HASH_COOKIE_NAME, "mycookie"),
            (HASH_COOKIE_TTL, "3600"),
            (HASH_HEADER_NAME, "X-User"),
            (CONNECTION_TIMEOUT, "2s"),
            (REQUEST_TIMEOUT, "1500"),
            (RETRIES_MAX, "5"),
            (RETRIES_5XX, "3"),
            (RETRIES_CONNECT_FAILURE, "2"),
            (RETRIES_GATEWAY_ERROR, "1"),
            (CONNECTION_MAX, "100"),
            (REQUEST_MAX_PENDING, "10"),
            (REQUEST_MAX, "1000"),
            (FAULT_DELAY_TIME, "3000"),
            (FAULT_DELAY_PERCENTAGE, "100"),
            (FAULT_ABORT_STATUS, "505"),
            (FAULT_ABORT_PERCENTAGE, "12.5"),
            (RATE_LIMIT, "64"),
            (TRACING_ENABLED, "true"),
            (TRACING_SAMPLING, "50"),
            ("app", "reviews"),
        ]),
    );
    assert_eq!(svc.errors, vec![]);
    let s = svc.settings;
    assert_eq!(
        s.ports,
        BTreeMap::from([
            (9080, PortProtocol::Http),
            (3306, PortProtocol::Tcp),
            (22, PortProtocol::Direct)
        ])
    );
    let c = &s.cluster;
    assert_eq!(c.lb_policy, Some(LbPolicy::LeastRequest));
    assert_eq!(c.hash_cookie_name.as_deref(), Some("mycookie"));
    assert_eq!(c.hash_cookie_ttl, Some(Duration::from_secs(3600)));
    assert_eq!(c.hash_header_name.as_deref(), Some("x-user"));
    assert_eq!(c.connection_timeout, Some(Duration::from_secs(2)));
    assert_eq!(c.retries_max, Some(5));
    assert_eq!(c.connection_max, Some(100));
    assert_eq!(c.request_max_pending, Some(10));
    assert_eq!(c.request_max, Some(1000));
    let t = &s.traffic;
    assert_eq!(t.request_timeout, Some(Duration::from_millis(1500)));
    assert_eq!(t.retries.on_5xx, Some(3));
    assert_eq!(t.retries.on_connect_failure, Some(2));
    assert_eq!(t.retries.on_gateway_error, Some(1));
    assert_eq!(t.fault.delay_time, Some(Duration::from_secs(3)));
    assert_eq!(t.fault.delay_percentage, Some(Percent::HUNDRED));
    assert_eq!(t.fault.abort_status, Some(505));
    assert_eq!(t.fault.abort_percentage, Percent::from_ppm(125_000));
    assert_eq!(t.rate_limit_kbps, Some(64));
    assert_eq!(t.tracing_enabled, Some(true));
    assert_eq!(t.tracing_sampling, Percent::from_ppm(500_000));

    let pod = parse(
        ObjectKind::Pod,
        &labels(&[
            (ENVOY_ENABLED, "TRUE"),
            (LOCAL_USE_PODIP, "true"),
            (ENDPOINT_WEIGHT, "10"),
        ]),
    );
    assert_eq!(pod.errors, vec![]);
    assert_eq!(pod.settings.enabled, Some(true));
    assert_eq!(pod.settings.use_podip, Some(true));
    assert_eq!(pod.settings.weight, Some(10));
}

#[test]
fn an_invalid_value_drops_only_that_setting() {
    let p = parse(
        ObjectKind::Service,
        &labels(&[
            (names::FAULT_DELAY_TIME, "soon"),
            (names::FAULT_DELAY_PERCENTAGE, "100"),
            (names::LB_POLICY, "fastest"),
            ("traffic.port.9080", "grpc"),
            ("traffic.port.http", "http"),
            ("traffic.port.0", "http"),
            ("traffic.port.8080", "http"),
        ]),
    );
    assert_eq!(p.settings.traffic.fault.delay_time, None);
    assert_eq!(p.settings.traffic.fault.delay_percentage, Some(Percent::HUNDRED));
    assert_eq!(p.settings.cluster.lb_policy, None);
    assert_eq!(p.settings.ports, BTreeMap::from([(8080, PortProtocol::Http)]));
    let reasons: Vec<_> = p.errors.iter().map(|e| e.reason.clone()).collect();
    assert_eq!(
        reasons,
        vec![
            Reason::NotADuration,
            Reason::UnknownLbPolicy,
            Reason::BadPort("0".into()),
            Reason::UnknownProtocol,
            Reason::BadPort("http".into()),
        ]
    );
    assert_eq!(
        p.errors[0].to_string(),
        "label traffic.fault.delay.time=\"soon\" ignored: expected milliseconds (3000) or a \
         number with unit ms, s, m or h (3s, 250ms, 1m)"
    );
}

#[test]
fn abort_status_must_be_an_http_status_or_zero() {
    for (value, ok) in [
        ("0", true),
        ("200", true),
        ("505", true),
        ("599", true),
        ("600", false),
        ("99", false),
        ("abc", false),
    ] {
        let p = one(ObjectKind::Pod, names::FAULT_ABORT_STATUS, value);
        assert_eq!(p.errors.is_empty(), ok, "{value}");
    }
}

#[test]
fn a_connect_timeout_envoy_would_reject_is_reported_and_only_it_is_dropped() {
    // `traffic.connection.timeout=0` used to become `connect_timeout: 0s`, which Envoy
    // rejects (`gt: 0s`), failing the whole CDS update for every pod (issue 9).
    for value in ["0", "0s", "0.4"] {
        let p = parse(
            ObjectKind::Service,
            &labels(&[(names::CONNECTION_TIMEOUT, value), (names::RETRIES_MAX, "3")]),
        );
        assert_eq!(p.settings.cluster.connection_timeout, None, "{value}");
        assert_eq!(p.settings.cluster.retries_max, Some(3), "the rest applies");
        assert_eq!(p.errors.len(), 1, "{value}");
        assert_eq!(p.errors[0].reason, Reason::NotPositive);
        assert!(
            p.errors[0].to_string().contains("greater than 0"),
            "{}",
            p.errors[0]
        );
    }
    let p = one(ObjectKind::Service, names::CONNECTION_TIMEOUT, "1");
    assert_eq!(
        p.settings.cluster.connection_timeout,
        Some(Duration::from_millis(1))
    );
}

#[test]
fn hash_names_outside_the_token_grammar_are_reported() {
    let p = parse(
        ObjectKind::Service,
        &labels(&[
            (names::HASH_COOKIE_NAME, "my cookie"),
            (names::HASH_HEADER_NAME, "x-user;y"),
        ]),
    );
    assert_eq!(p.settings.cluster.hash_cookie_name, None);
    assert_eq!(p.settings.cluster.hash_header_name, None);
    let reasons: Vec<_> = p.errors.iter().map(|e| e.reason.clone()).collect();
    assert_eq!(reasons, vec![Reason::NotAToken, Reason::NotAToken]);
}

#[test]
fn booleans_reject_anything_but_true_and_false() {
    for (value, want) in [
        ("true", Some(true)),
        ("False", Some(false)),
        ("yes", None),
        ("1", None),
        ("", None),
    ] {
        let p = one(ObjectKind::Pod, names::ENVOY_ENABLED, value);
        assert_eq!(p.settings.enabled, want, "{value}");
    }
}

#[test]
fn labels_on_the_wrong_kind_and_unknown_labels_are_reported() {
    let p = parse(
        ObjectKind::Pod,
        &labels(&[(names::LB_POLICY, "random"), ("traffic.retries.5xxx", "3")]),
    );
    assert_eq!(p.settings, Settings::default());
    assert!(matches!(
        p.errors[0].reason,
        Reason::WrongKind {
            kind: ObjectKind::Pod,
            ..
        }
    ));
    assert_eq!(p.errors[1].reason, Reason::UnknownLabel);
    let p = one(ObjectKind::Service, names::ENVOY_ENABLED, "true");
    assert!(matches!(p.errors[0].reason, Reason::WrongKind { .. }));
    let p = one(ObjectKind::Workload, names::REQUEST_TIMEOUT, "5");
    assert!(matches!(p.errors[0].reason, Reason::WrongKind { .. }));
}

#[test]
fn a_pods_own_label_wins_over_its_owners() {
    let owner = one(ObjectKind::Workload, names::ENVOY_ENABLED, "true").settings;
    let pod_off = one(ObjectKind::Pod, names::ENVOY_ENABLED, "false").settings;
    let pod_unset = Settings::default();
    assert!(effective_enabled(&pod_unset, Some(&owner)));
    assert!(!effective_enabled(&pod_off, Some(&owner)));
    assert!(!effective_enabled(&pod_unset, None));

    let owner_w = one(ObjectKind::Workload, names::ENDPOINT_WEIGHT, "10").settings;
    let pod_w = one(ObjectKind::Pod, names::ENDPOINT_WEIGHT, "0").settings;
    assert_eq!(effective_weight(&pod_unset, Some(&owner_w)), 10);
    assert_eq!(effective_weight(&pod_w, Some(&owner_w)), 0);
    assert_eq!(effective_weight(&pod_unset, None), 100);
}

#[test]
fn pod_traffic_settings_override_the_services_field_by_field() {
    let svc = parse(
        ObjectKind::Service,
        &labels(&[
            (names::REQUEST_TIMEOUT, "1000"),
            (names::RETRIES_5XX, "3"),
            ("traffic.port.9080", "http"),
            (names::CONNECTION_MAX, "7"),
        ]),
    )
    .settings;
    let pod = parse(
        ObjectKind::Pod,
        &labels(&[(names::REQUEST_TIMEOUT, "2s"), ("traffic.port.9080", "tcp")]),
    )
    .settings;
    let eff = pod.overlay(&svc);
    assert_eq!(eff.traffic.request_timeout, Some(Duration::from_secs(2)));
    assert_eq!(eff.traffic.retries.on_5xx, Some(3));
    assert_eq!(eff.ports[&9080], PortProtocol::Tcp);
    assert_eq!(eff.cluster.connection_max, Some(7));
}

#[test]
fn every_label_of_the_contract_is_known_and_lands_in_its_own_field() {
    let unique: std::collections::BTreeSet<_> = names::ALL.iter().collect();
    assert_eq!(unique.len(), names::ALL.len());
    for label in names::ALL {
        let applied = [ObjectKind::Service, ObjectKind::Pod, ObjectKind::Workload]
            .into_iter()
            .filter(|kind| {
                // A value every label of its type accepts.
                ["1", "true", "round_robin", "200"].iter().any(|v| {
                    let p = one(*kind, label, v);
                    p.errors.is_empty() && p.settings.holds(label)
                })
            })
            .count();
        assert!(applied >= 1, "{label} never applies");
        let others: Vec<_> = names::ALL.iter().filter(|l| **l != label).collect();
        let p = one(ObjectKind::Service, label, "1");
        assert!(
            others.iter().all(|l| !p.settings.holds(l)),
            "{label} sets another field"
        );
    }
    let p = one(ObjectKind::Service, "traffic.port.80", "http");
    assert!(p.settings.holds("traffic.port.80") && !p.settings.holds("traffic.port.81"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(&names::ALL[..]).prop_map(String::from),
            any::<String>().prop_map(|p| format!("{}{p}", names::PORT_PREFIX)),
            "traffic\\.[a-z.0-9-]{0,20}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// The short in-CI version of `cargo fuzz run labels` (control/fuzz).
        #[test]
        fn any_labels_on_any_object_are_applied_or_reported_and_never_panic(
            kind in proptest::sample::select(&[ObjectKind::Pod, ObjectKind::Workload, ObjectKind::Service][..]),
            labels in proptest::collection::btree_map(key(), any::<String>(), 0..12),
        ) {
            let parsed = parse(kind, &labels);
            for (label, value) in labels.iter().filter(|(l, _)| l.starts_with(PREFIX)) {
                let reported = parsed.errors.iter().any(|e| &e.label == label);
                prop_assert!(reported || parsed.settings.holds(label), "{kind} {label}={value:?}");
            }
            prop_assert!(parsed.errors.iter().all(|e| labels.get(&e.label) == Some(&e.value)));
        }
    }
}
