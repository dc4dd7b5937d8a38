//! The documents match the code: the protocol reference names every request the
//! parser accepts and every field `wal_status` renders, and no document points at a
//! file outside the repository (a user who clones it has nothing beside it).

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

/// The quoted words in `text` that stand before `=>` on a line (match arms on strings).
fn match_arms(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('"')?;
            let end = rest.find('"')?;
            rest[end + 1..]
                .trim_start()
                .starts_with("=>")
                .then(|| rest[..end].to_string())
        })
        .collect()
}

#[test]
fn the_protocol_reference_names_every_request_type() {
    let protocol = read("docs/PROTOCOL.md");
    let wire = read("src/router/wire.rs");
    let types = match_arms(&wire);
    assert!(types.len() >= 12, "found only {types:?}");
    for t in &types {
        assert!(
            protocol.contains(&format!("`{t} ")) || protocol.contains(&format!("`{t}`")),
            "docs/PROTOCOL.md does not document the request type {t}"
        );
    }
}

#[test]
fn the_protocol_reference_names_every_status_field() {
    let protocol = read("docs/PROTOCOL.md");
    // A single node's status, a cluster node's, and the uploads to the store.
    let mut fields = Vec::new();
    let file = "src/router/answer.rs";
    let router = read(file);
    for (function, at_least) in [
        ("fn status_json", 20),
        ("fn cluster_status_json", 9),
        ("fn store_json", 8),
    ] {
        let start = router.find(function).unwrap();
        let body = &router[start..];
        let body = &body[..body.find("\n}\n").unwrap()];
        let before = fields.len();
        for line in body.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix('"')
                && let Some(end) = rest.find("\":")
            {
                fields.push(rest[..end].to_string());
            }
        }
        assert!(
            fields.len() - before >= at_least,
            "found only {:?} in {function} of {file}",
            &fields[before..]
        );
    }
    for f in &fields {
        assert!(
            protocol.contains(&format!("`{f}`")),
            "docs/PROTOCOL.md does not document the wal_status field {f}"
        );
    }
}

#[test]
fn no_document_points_outside_the_repository() {
    let mut docs = vec![
        "README.md".to_string(),
        "ARCHITECTURE.md".into(),
        "RELIABILITY.md".into(),
        "BENCHMARKS.md".into(),
    ];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        // Text documents; the plots (PNG) point nowhere.
        if !name.ends_with(".png") {
            docs.push(format!("docs/{name}"));
        }
    }
    for doc in docs {
        let text = read(&doc);
        assert!(
            !text.contains("../shared") && !text.contains("](../"),
            "{doc} links a file outside the repository"
        );
    }
}

/// `flintlog --help` fits 100 columns and ends with examples.
#[test]
fn the_help_fits_100_columns_and_shows_examples() {
    let out = std::process::Command::new(crate::support::binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for line in help.lines() {
        assert!(line.chars().count() <= 100, "too wide: {line}");
    }
    assert!(
        help.contains("Examples:") && help.contains("\"type\":\"init\""),
        "{help}"
    );
}
