//! The README's sample block is sample.toml, and both tables parse, with defaults uncommented.

use coaps::config::{IngressConfig, UplinkConfig};

#[test]
fn readme_sample_matches_sample_toml_and_parses() {
    let readme = include_str!("../README.md");
    let sample = include_str!("../sample.toml");
    let block = readme
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    assert_eq!(
        block, sample,
        "the README's sample block must be sample.toml"
    );
    for text in [
        sample.to_owned(),
        sample
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n"),
    ] {
        let table: toml::Table = toml::from_str(&text).unwrap();
        let mut up = table["sinks"]["uplink"].as_table().unwrap().clone();
        up.remove("plugin");
        let _: UplinkConfig = up.try_into().unwrap();
        let mut ing = table["sources"]["ingress"].as_table().unwrap().clone();
        ing.remove("plugin");
        let _: IngressConfig = ing.try_into().unwrap();
    }
}
