//! traffic-control: wires the model sources, translation and the xDS server together.
