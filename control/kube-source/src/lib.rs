//! Kubernetes as the source of truth for the mesh model.
