//! The README's sample block is sample.toml, and it parses, with the defaults uncommented too.

use ds18b20::config::Config;

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
        let mut keys = table["sources"]["temp"].as_table().unwrap().clone();
        keys.remove("plugin");
        let _: Config = keys.try_into().unwrap();
    }
}
