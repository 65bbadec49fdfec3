//! The readable dump decodes nested `Any`s and never prints private keys.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::*;
use traffic_translate::render::render_text;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{Options, TlsDelivery, INGRESS_NODE_ID};

#[test]
fn the_text_dump_decodes_nested_filters_and_hides_keys() {
    let t = run(&bookinfo());
    let text = render_text(&t.snapshot.for_node("p.default"));
    if std::env::var_os("PRINT_RENDER").is_some() {
        println!("{text}");
    }
    assert!(text.contains("### Listener \"outbound\" version="));
    assert!(
        text.contains("route_config_name: \"9080|default|reviews\""),
        "HCM decoded inside the listener"
    );
    assert!(text.contains("Router {"), "router filter decoded inside the HCM");
    assert!(!text.contains("value: [\n"), "no undecoded Any left");
    for tls in [TlsDelivery::Inline, TlsDelivery::Sds] {
        let t = run_with(
            &bookinfo(),
            &Options {
                ingress_tls: tls,
                ..Options::default()
            },
        );
        let text = render_text(&t.snapshot.for_node(INGRESS_NODE_ID));
        assert!(!text.contains("PRIVATE KEY"), "{tls:?}");
        assert!(text.contains("<redacted>"));
    }
    let _ = bookinfo().to_yaml().unwrap();
}
