//! What running the operator needs beyond reconciling: metrics, the health and metrics HTTP endpoint,
//! leader election, shutdown on signals and logging. The controllers call these; nothing here knows a
//! controller.

pub mod accept;
pub mod http;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod shutdown;
