//! The README's sample block is sample.toml, and it parses, with the defaults uncommented too.

use gateway_sdk::testing::readme_sample_tables;

#[test]
fn readme_sample_matches_sample_toml_and_parses() {
    let tables = readme_sample_tables(include_str!("../README.md"), include_str!("../sample.toml"));
    assert_eq!(tables.len(), 2);
    for (name, keys) in tables {
        let _: system::config::Config = keys.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
