//! The README's sample block is sample.toml, and both tables parse, with defaults uncommented.

use coaps::config::{IngressConfig, UplinkConfig};
use gateway_sdk::testing::readme_sample_tables;

#[test]
fn readme_sample_matches_sample_toml_and_parses() {
    let tables = readme_sample_tables(include_str!("../README.md"), include_str!("../sample.toml"));
    assert_eq!(tables.len(), 4);
    for (name, keys) in tables {
        match name.as_str() {
            "sinks.uplink" => drop(UplinkConfig::deserialize_table(keys, &name)),
            "sources.ingress" => drop(IngressConfig::deserialize_table(keys, &name)),
            other => panic!("unexpected table {other}"),
        }
    }
}

trait FromTable: Sized {
    fn deserialize_table(keys: toml::Table, name: &str) -> Self;
}

impl<T: serde::de::DeserializeOwned> FromTable for T {
    fn deserialize_table(keys: toml::Table, name: &str) -> Self {
        keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}
