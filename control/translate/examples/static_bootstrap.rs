//! Write the static Envoy bootstrap (binary protobuf) of one node of a YAML mesh model, to run
//! Envoy with the translated config and no control plane:
//!
//! ```sh
//! cargo run -p traffic-translate --example static_bootstrap -- \
//!     control/translate/examples/bookinfo.yaml productpage-v1-6b746f74dc-x7k2p.default /tmp/b.pb [admin port]
//! envoy -c /tmp/b.pb
//! ```
use anyhow::Context;
use prost::Message;
use traffic_translate::model::MeshModel;
use traffic_translate::render::static_bootstrap;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Options};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, node, out, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: static_bootstrap <model.yaml> <node id> <out.pb> [admin port]");
    };
    let admin_port: u16 = rest.first().map(|p| p.parse()).transpose()?.unwrap_or(15000);
    let model = MeshModel::from_yaml_file(model)?;
    let options = Options {
        admin_port,
        ..Options::default()
    };
    let t = translate(&model, &options);
    for e in &t.label_errors {
        eprintln!("warning: {e}");
    }
    for p in &t.problems {
        eprintln!("warning: {p}");
    }
    let bootstrap = static_bootstrap(node, &t.snapshot.for_node(node), admin_port)?;
    std::fs::write(out, bootstrap.encode_to_vec()).with_context(|| format!("write {out}"))?;
    Ok(())
}
