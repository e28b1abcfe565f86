//! A Prometheus registry with terse constructors, for the tiers' metric structs.

use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

/// Registers metrics under one registry and renders them as Prometheus text.
#[derive(Default, Clone)]
pub struct Registrar {
    registry: Registry,
}

impl Registrar {
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::new(name, help).expect("valid metric name");
        self.registry.register(Box::new(c.clone())).expect("metric names are unique");
        c
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect("valid metric name");
        self.registry.register(Box::new(g.clone())).expect("metric names are unique");
        g
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
