//! Every node's `/metrics` is valid Prometheus text exposition: `promtool check metrics`
//! passes it (names, types, units, help) when promtool is installed, and a strict parser
//! here checks it in any case: each sample belongs to a family announced by `# TYPE` before
//! it, names and labels are well formed, values are numbers, and no series appears twice.

use kv_deploy::launch::http_get;
use kv_tests::tiers::{put, test_topology, Tiers};
use std::collections::HashSet;
use std::io::Write;

/// What is wrong with `text` as an exposition, if anything.
fn exposition_errors(text: &str) -> Vec<String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut typed: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    let mut errors = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !name_ok(name) || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                errors.push(format!("bad TYPE line: {line}"));
            }
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (id, value) = match line.rsplit_once(' ') {
            Some(split) => split,
            None => {
                errors.push(format!("no value: {line}"));
                continue;
            }
        };
        if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
            errors.push(format!("value is not a number: {line}"));
        }
        let name = id.split('{').next().unwrap_or("");
        if let Some(labels) = id.strip_prefix(name) {
            let ok = labels.is_empty()
                || (labels.starts_with('{')
                    && labels.ends_with('}')
                    && labels[1..labels.len() - 1]
                        .split("\",")
                        .filter(|l| !l.is_empty())
                        .all(|l| l.split_once("=\"").is_some_and(|(k, _)| name_ok(k))));
            if !ok {
                errors.push(format!("bad labels: {line}"));
            }
        }
        let family =
            ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).filter(|f| typed.contains(*f));
        if !name_ok(name) || !(typed.contains(name) || family.is_some()) {
            errors.push(format!("sample without a TYPE before it: {line}"));
        }
        if !series.insert(id.to_owned()) {
            errors.push(format!("series twice: {id}"));
        }
    }
    errors
}

/// `promtool check metrics` on `text`: `None` when promtool is not installed.
fn promtool(text: &str) -> Option<Result<(), String>> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    })
}

#[test]
fn the_parser_catches_what_it_should() {
    assert!(exposition_errors("# TYPE a counter\na 1\na{x=\"y\"} 2\n").is_empty());
    assert_eq!(exposition_errors("a 1\n").len(), 1, "no TYPE");
    assert_eq!(exposition_errors("# TYPE a gauge\na 1\na 2\n").len(), 1, "twice");
    assert_eq!(exposition_errors("# TYPE a gauge\na one\n").len(), 1, "not a number");
    assert!(exposition_errors("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nodes_metrics_are_valid_prometheus_text() {
    let t = Tiers::start_topology(&test_topology(
        "[[regions]]\nname = \"a\"\ncentral_delay_ms = 2\nedges = [{ name = \"a-1\", delay_ms = 1 }]\n",
    ))
    .await
    .unwrap();
    // Traffic, so that the labelled series and histograms have samples.
    let edge = t.edge(0).await.unwrap();
    let ns = edge.create_namespace("metrics").await.unwrap().id;
    edge.put(put(&ns, "k", "v")).await.unwrap();
    edge.get(&ns, "k", None).await.unwrap();
    let c = &t.cluster;
    let nodes = c.central.iter().chain(c.regions.iter().map(|r| &r.regional)).chain(c.edges().map(|e| &e.node));
    let mut checked_by_promtool = 0;
    for n in nodes {
        let (status, text) = http_get(n.http, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{}", n.name);
        let errors = exposition_errors(&text);
        assert!(errors.is_empty(), "{}: {errors:#?}", n.name);
        if let Some(checked) = promtool(&text) {
            checked.unwrap_or_else(|e| panic!("{}: promtool check metrics: {e}", n.name));
            checked_by_promtool += 1;
        }
    }
    if checked_by_promtool == 0 {
        eprintln!("promtool is not installed: checked with this test's parser only");
    }
}
