//! The `traffic.*` label contract (see docs/labels.md in the README): typed parsing, pure.
