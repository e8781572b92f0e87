//! What generated code may name besides the public API; not covered by semver.

pub use async_nats;
pub use schemars;
pub use serde;
pub use serde_json;
