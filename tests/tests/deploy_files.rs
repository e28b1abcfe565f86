//! The deployment files in `deploy/` (container image, Kubernetes manifests, systemd units)
//! checked against what the binaries need: every config they carry is read by the binary's
//! own `Config` (unknown or malformed settings fail here as they would at start-up), every
//! file a config names is mounted where it says, probes and ports match the listeners, and
//! nothing runs as root.

use serde::Deserialize;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every YAML document of the Kubernetes manifests.
fn manifests() -> Vec<Value> {
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(repo().join("deploy/kubernetes")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).expect("valid YAML");
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("host:port")
}

/// Where a pod mounts `volume`, and with which sub-path.
fn mounts<'a>(container: &'a Value, volume: &str) -> Vec<(&'a str, Option<&'a str>)> {
    container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == volume)
        .map(|m| (m["mountPath"].as_str().unwrap(), m["subPath"].as_str()))
        .collect()
}

/// Checks one role's pod template against its config (already parsed by the binary's type):
/// the config file and the secrets are mounted where the command and the config say, the
/// probes and ports are the listeners', and the pod runs as a non-root user.
fn check_pod(
    workload: &Value,
    config_key: &str,
    (listen, http): (&str, &str),
    secret_files: &[&Path],
    tls: &kv_common::tls::TlsFiles,
) {
    let pod = &workload["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{config_key}: runs as root");
    let c = &pod["containers"][0];
    let command: Vec<&str> = [&c["command"], &c["args"]]
        .iter()
        .filter_map(|v| v.as_sequence())
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    let config_path = format!("/etc/kv/{config_key}");
    assert!(command.iter().any(|a| a.contains(&config_path)), "{config_key}: the command does not read {config_path}");
    assert_eq!(mounts(c, "config"), vec![(config_path.as_str(), Some(config_key))], "{config_key}: config mount");
    let secrets = mounts(c, "secrets");
    for file in secret_files {
        assert!(secrets.iter().any(|(at, _)| file.starts_with(at)), "{config_key}: {} is not mounted", file.display());
    }
    // Every listener is TLS: the role's certificate comes from its own Secret.
    assert!(tls.enabled().unwrap(), "{config_key}: no [tls]");
    let certs = mounts(c, "tls");
    for file in [&tls.ca_file, &tls.cert_file, &tls.key_file].into_iter().flatten() {
        assert!(certs.iter().any(|(at, _)| file.starts_with(at)), "{config_key}: {} is not mounted", file.display());
    }
    let role = config_key.trim_end_matches(".toml");
    let tls_volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == "tls").unwrap();
    assert_eq!(tls_volume["secret"]["secretName"].as_str(), Some(format!("kv-tls-{role}").as_str()));
    let ports: Vec<u64> =
        c["ports"].as_sequence().unwrap().iter().map(|p| p["containerPort"].as_u64().unwrap()).collect();
    assert!(ports.contains(&port_of(listen)) && ports.contains(&port_of(http)), "{config_key}: ports {ports:?}");
    // Kubernetes' gRPC probes cannot speak TLS; its HTTPS probes can.
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(
            (get["port"].as_u64(), get["scheme"].as_str()),
            (Some(port_of(http)), Some("HTTPS")),
            "{config_key}: {probe}"
        );
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/health"), "{config_key}: readiness");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
}

#[test]
fn the_kubernetes_manifests_give_each_binary_what_it_needs() {
    let docs = manifests();
    let config = &find(&docs, "ConfigMap", "kv-config")["data"];
    let central: central_store::config::Config = toml::from_str(config["central.toml"].as_str().unwrap()).unwrap();
    let regional: regional_tier::config::Config = toml::from_str(config["regional.toml"].as_str().unwrap()).unwrap();
    let edge: edge_node::config::Config = toml::from_str(config["edge.toml"].as_str().unwrap()).unwrap();
    let secret = find(&docs, "Secret", "kv-secrets");
    for key in ["admin-token", "encryption-key"] {
        assert!(secret["stringData"][key].is_string(), "the Secret holds {key}");
    }

    // Central voters: a StatefulSet behind a headless Service, with a volume at the data dir.
    let set = find(&docs, "StatefulSet", "central");
    let service = find(&docs, "Service", "central");
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(set["spec"]["serviceName"], "central");
    let replicas = set["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(replicas % 2, 1, "an odd number of voters");
    let secrets = [central.admin_token_file.as_deref().unwrap(), central.encryption_key_file.as_deref().unwrap()];
    let ports = (central.listen.to_string(), central.http_listen.to_string());
    check_pod(set, "central.toml", (&ports.0, &ports.1), &secrets, &central.tls);
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(mounts(container, "data"), vec![(central.data_dir.to_str().unwrap(), None)]);
    assert_eq!(set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data");
    let members = container["env"].as_sequence().unwrap().iter().find(|e| e["name"] == "KV_INITIAL_MEMBERS").unwrap();
    let members: Vec<String> = members["value"].as_str().unwrap().split(',').map(String::from).collect();
    let expected: Vec<String> =
        (0..replicas).map(|i| format!("{}=central-{i}.central:{}", i + 1, central.listen.port())).collect();
    assert_eq!(members, expected, "each voter by its stable name, id = ordinal + 1");
    assert!(find(&docs, "PodDisruptionBudget", "central")["spec"]["maxUnavailable"] == 1);

    // Regional tiers and edges: Deployments that reach the tier above by its Service.
    let regional_set = find(&docs, "Deployment", "regional");
    let token = [regional.admin_token_file.as_deref().unwrap()];
    let ports = (regional.listen.to_string(), regional.http_listen.to_string());
    check_pod(regional_set, "regional.toml", (&ports.0, &ports.1), &token, &regional.tls);
    for (i, addr) in regional.central.iter().enumerate() {
        assert_eq!(addr, &format!("central-{i}.central:{}", central.listen.port()));
    }
    let edges = find(&docs, "Deployment", "edge");
    let token = [edge.admin_token_file.as_deref().unwrap()];
    let ports = (edge.listen.to_string(), edge.http_listen.to_string());
    check_pod(edges, "edge.toml", (&ports.0, &ports.1), &token, &edge.tls);
    assert_eq!(edge.upstream, vec![format!("regional:{}", regional.listen.port())]);
    let edge_id = &edges["spec"]["template"]["spec"]["containers"][0]["env"][0];
    assert_eq!(
        (edge_id["name"].as_str(), edge_id["valueFrom"]["fieldRef"]["fieldPath"].as_str()),
        (Some("KV_EDGE_ID"), Some("metadata.name"))
    );
}

/// The files of a `[tls]` section, which must name all three.
fn tls_files(tls: kv_common::tls::TlsFiles) -> Vec<std::path::PathBuf> {
    assert!(tls.enabled().unwrap(), "no [tls]");
    [tls.ca_file, tls.cert_file, tls.key_file].into_iter().flatten().collect()
}

#[test]
fn the_systemd_units_run_hardened_with_their_secrets_as_credentials() {
    let configs = [
        (
            "central",
            "central-store",
            toml::from_str::<central_store::config::Config>(&read("deploy/systemd/central.toml")).map(|c| {
                [vec![c.admin_token_file.unwrap(), c.encryption_key_file.unwrap()], tls_files(c.tls)].concat()
            }),
        ),
        (
            "regional",
            "regional-tier",
            toml::from_str::<regional_tier::config::Config>(&read("deploy/systemd/regional.toml"))
                .map(|c| [vec![c.admin_token_file.unwrap()], tls_files(c.tls)].concat()),
        ),
        (
            "edge",
            "edge-node",
            toml::from_str::<edge_node::config::Config>(&read("deploy/systemd/edge.toml"))
                .map(|c| [vec![c.admin_token_file.unwrap()], tls_files(c.tls)].concat()),
        ),
    ];
    for (role, bin, secret_files) in configs {
        let unit = read(&format!("deploy/systemd/kv-{role}.service"));
        let setting =
            |key: &str| unit.lines().filter_map(move |l| l.strip_prefix(&format!("{key}="))).collect::<Vec<_>>();
        assert_eq!(setting("ExecStart"), vec![format!("/usr/local/bin/{bin} --config /etc/kv/{role}.toml")]);
        for file in secret_files.unwrap_or_else(|e| panic!("{role}.toml: {e}")) {
            // A credential is at /run/credentials/<unit>/<name>.
            let name = file.file_name().unwrap().to_str().unwrap();
            assert_eq!(file.parent().unwrap(), Path::new(&format!("/run/credentials/kv-{role}.service")));
            assert!(setting("LoadCredential").iter().any(|c| c.starts_with(&format!("{name}:"))), "{role}: {name}");
        }
        for (key, value) in
            [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("DynamicUser", "yes"), ("PrivateTmp", "yes")]
        {
            assert_eq!(setting(key), vec![value], "{role}: {key}");
        }
        assert_eq!(setting("KillSignal"), vec!["SIGTERM"], "{role}: stops by draining");
    }
}

#[test]
fn the_container_image_is_built_in_two_stages_and_runs_as_a_user() {
    let file = read("deploy/container/Containerfile");
    assert_eq!(file.lines().filter(|l| l.starts_with("FROM ")).count(), 2, "a build stage and a small runtime stage");
    let user = file.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    assert!(!user.starts_with('0') && !user.starts_with("root"), "runs as {user}");
    for bin in ["central-store", "regional-tier", "edge-node", "kv"] {
        assert!(file.contains(&format!("target/release/{bin}")), "the image holds {bin}");
    }
}
