//! The Kubernetes manifests (`deploy/kubernetes/`): they parse and keep their invariants (one
//! replica, Recreate, probes, a locked-down security context, CronJob `Forbid`, a narrow
//! NetworkPolicy) and agree with the ConfigMap's TOML and the Secret example.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_norway::Value as Yaml;

use super::kit::{
    at, configmap_tomls, credential_refs, duration_secs, env_refs, k8s_objects,
    listen_on_all_interfaces, repo, toml_table, yaml_docs, yaml_seq, yaml_str,
};

fn k8s_object<'a>(objects: &'a [(String, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| {
            o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} {name}");
    found[0]
}

fn pod_spec(obj: &Yaml) -> &Yaml {
    match obj["kind"].as_str() {
        Some("Deployment") => at(obj, "spec.template.spec"),
        Some("CronJob") => at(obj, "spec.jobTemplate.spec.template.spec"),
        other => panic!("no pod spec in {other:?}"),
    }
}

fn container_env(container: &Yaml) -> BTreeMap<String, Yaml> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|e| (yaml_str(e, "name").to_string(), e.clone()))
        .collect()
}

fn volume<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    yaml_seq(pod, "volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn mount_path<'a>(container: &'a Yaml, volume: &str) -> &'a str {
    yaml_seq(container, "volumeMounts")
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("volume {volume} is not mounted"))
}

fn assert_locked_down(what: &str, pod: &Yaml) {
    let psc = &pod["securityContext"];
    assert_eq!(
        psc["runAsNonRoot"].as_bool(),
        Some(true),
        "{what}: pod runAsNonRoot"
    );
    assert_ne!(psc["runAsUser"].as_u64(), Some(0), "{what}: runAsUser");
    assert_eq!(
        at(psc, "seccompProfile.type").as_str(),
        Some("RuntimeDefault"),
        "{what}: pod seccompProfile"
    );
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "{what}"
    );
    for c in yaml_seq(pod, "containers") {
        let sc = &c["securityContext"];
        assert_eq!(
            sc["runAsNonRoot"].as_bool(),
            Some(true),
            "{what}: runAsNonRoot"
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{what}: readOnlyRootFilesystem"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{what}: allowPrivilegeEscalation"
        );
        assert_ne!(sc["privileged"].as_bool(), Some(true), "{what}: privileged");
        let drop: Vec<&str> = yaml_seq(sc, "capabilities.drop")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(drop, ["ALL"], "{what}: capabilities.drop");
        assert!(
            sc["capabilities"]["add"].is_null(),
            "{what}: no capability added"
        );
        assert_eq!(
            at(sc, "seccompProfile.type").as_str(),
            Some("RuntimeDefault"),
            "{what}: seccompProfile"
        );
    }
}

/// The pod runs keysweep on the ConfigMap's TOML with every secret that TOML names.
fn assert_pod_fits_config(
    what: &str,
    pod: &Yaml,
    config: &toml::Table,
    secret: &Yaml,
    args_want: &[&str],
) {
    let c = &yaml_seq(pod, "containers")[0];
    let args: Vec<&str> = yaml_seq(c, "args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .map(|i| args[i + 1])
        .unwrap_or_else(|| panic!("{what}: no --config in {args:?}"));
    for a in args_want {
        assert!(args.contains(a), "{what}: args {args:?} lack {a}");
    }
    // The ConfigMap is mounted where --config points.
    let config_dir = Path::new(config_path).parent().unwrap();
    assert_eq!(
        Path::new(mount_path(c, "config")),
        config_dir,
        "{what}: config mount"
    );
    assert_eq!(
        at(volume(pod, "config"), "configMap.name").as_str(),
        Some("keysweep")
    );
    assert_eq!(Path::new(config_path).file_name().unwrap(), "keysweep.toml");

    // The state database is on the PVC.
    let state = Path::new(config["state_path"].as_str().unwrap());
    assert!(
        state.starts_with(mount_path(c, "state")),
        "{what}: state_path not on the PVC"
    );
    assert_eq!(
        at(volume(pod, "state"), "persistentVolumeClaim.claimName").as_str(),
        Some("keysweep-state")
    );

    // The admin key credential is a mounted Secret item under CREDENTIALS_DIRECTORY.
    let env = container_env(c);
    let creds_dir = env
        .get("CREDENTIALS_DIRECTORY")
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("{what}: CREDENTIALS_DIRECTORY not set"));
    assert_eq!(
        mount_path(c, "credentials"),
        creds_dir,
        "{what}: credentials mount"
    );
    let cred_vol = volume(pod, "credentials");
    assert_eq!(at(cred_vol, "secret.secretName").as_str(), Some("keysweep"));
    let items: Vec<&str> = yaml_seq(cred_vol, "secret.items")
        .iter()
        .map(|i| yaml_str(i, "path"))
        .collect();
    for name in credential_refs(config) {
        assert!(
            items.contains(&name.as_str()),
            "{what}: credential {name} not mounted"
        );
        assert!(
            !secret["stringData"][name.as_str()].is_null(),
            "secret example lacks {name}"
        );
    }

    // Every *_env variable comes from a key the Secret example has.
    let mut refs = BTreeMap::new();
    env_refs(&toml::Value::Table(config.clone()), &mut refs);
    for var in refs.keys() {
        let e = env
            .get(var)
            .unwrap_or_else(|| panic!("{what}: env {var} missing"));
        let key = yaml_str(e, "valueFrom.secretKeyRef.key");
        assert_eq!(yaml_str(e, "valueFrom.secretKeyRef.name"), "keysweep");
        assert!(
            !secret["stringData"][key].is_null(),
            "secret example lacks {key}"
        );
    }

    // SIGTERM leaves the sweep its grace period.
    let grace = duration_secs(config["shutdown_grace"].as_str().unwrap_or("30s"));
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        termination > grace,
        "{what}: terminationGracePeriodSeconds {termination} <= {grace}"
    );
}

#[test]
fn kubernetes_manifests_keep_their_invariants() {
    let objects = k8s_objects();
    let (cm_name, cm_toml) = configmap_tomls()
        .into_iter()
        .next()
        .expect("a ConfigMap with keysweep.toml");
    let config = toml_table(&cm_toml, &cm_name);
    let listen = listen_on_all_interfaces(&config, "the pod");
    let port = u64::from(listen.port());
    let secret = k8s_object(&objects, "Secret", "keysweep");
    for (k, v) in secret["stringData"].as_mapping().unwrap() {
        let v = v.as_str().unwrap();
        assert!(
            v.starts_with("REPLACE"),
            "secret example holds a value for {k:?}: use a placeholder"
        );
    }

    let dep = k8s_object(&objects, "Deployment", "keysweep");
    let port_name = assert_deployment(dep, &config, secret, port);
    // CronJob: one sweep per run, never overlapping.
    let cron = k8s_object(&objects, "CronJob", "keysweep");
    assert_eq!(yaml_str(cron, "spec.concurrencyPolicy"), "Forbid");
    let cpod = pod_spec(cron);
    assert_locked_down("CronJob", cpod);
    assert_pod_fits_config("CronJob", cpod, &config, secret, &["run", "--once"]);
    assert!(matches!(
        cpod["restartPolicy"].as_str(),
        Some("Never" | "OnFailure")
    ));

    assert_service(&objects, dep, port, &port_name);
    // PVC for the state.
    let pvc = k8s_object(&objects, "PersistentVolumeClaim", "keysweep-state");
    assert_eq!(
        yaml_seq(pvc, "spec.accessModes")[0].as_str(),
        Some("ReadWriteOnce")
    );

    assert_network_policy(&objects, dep, cron, port);
    assert_kustomization();
}

/// Deployment: one replica, never two at once, probes, scrape annotations. Returns the name of
/// the container port.
fn assert_deployment(dep: &Yaml, config: &toml::Table, secret: &Yaml, port: u64) -> String {
    assert_eq!(at(dep, "spec.replicas").as_u64(), Some(1));
    assert_eq!(yaml_str(dep, "spec.strategy.type"), "Recreate");
    let pod = pod_spec(dep);
    assert_locked_down("Deployment", pod);
    assert_pod_fits_config("Deployment", pod, config, secret, &["run"]);
    let c = &yaml_seq(pod, "containers")[0];
    assert!(
        !yaml_seq(c, "args")
            .iter()
            .any(|a| a.as_str() == Some("--once"))
    );
    let port_entry = yaml_seq(c, "ports")
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(port))
        .expect("containerPort = the configured listen port");
    let port_name = yaml_str(port_entry, "name");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(
            yaml_str(c, &format!("{probe}.httpGet.path")),
            path,
            "{probe}"
        );
        let p = at(c, &format!("{probe}.httpGet.port"));
        assert!(
            p.as_str() == Some(port_name) || p.as_u64() == Some(port),
            "{probe} port"
        );
    }
    let annotations = at(dep, "spec.template.metadata.annotations");
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    port_name.to_string()
}

/// Service: keeps an unready pod scrapeable; ServiceMonitor scrapes /metrics through it.
fn assert_service(objects: &[(String, Yaml)], dep: &Yaml, port: u64, port_name: &str) {
    let svc = k8s_object(objects, "Service", "keysweep");
    assert_eq!(
        at(svc, "spec.publishNotReadyAddresses").as_bool(),
        Some(true)
    );
    let sport = &yaml_seq(svc, "spec.ports")[0];
    assert_eq!(sport["port"].as_u64(), Some(port));
    assert_eq!(sport["targetPort"].as_str(), Some(port_name));
    let pod_labels = at(dep, "spec.template.metadata.labels");
    for (k, v) in at(svc, "spec.selector").as_mapping().unwrap() {
        assert_eq!(
            &pod_labels[k.as_str().unwrap()],
            v,
            "Service selector {k:?}"
        );
    }
    let sm = k8s_object(objects, "ServiceMonitor", "keysweep");
    let ep = &yaml_seq(sm, "spec.endpoints")[0];
    assert_eq!(ep["port"].as_str(), sport["name"].as_str());
    assert_eq!(ep["path"].as_str(), Some("/metrics"));
    let svc_labels = at(svc, "metadata.labels");
    for (k, v) in at(sm, "spec.selector.matchLabels").as_mapping().unwrap() {
        assert_eq!(
            &svc_labels[k.as_str().unwrap()],
            v,
            "ServiceMonitor selector {k:?}"
        );
    }
}

/// NetworkPolicy: ingress only to the metrics port, only from Prometheus in the monitoring
/// namespace; egress only DNS, HTTPS, SMTP.
fn assert_network_policy(objects: &[(String, Yaml)], dep: &Yaml, cron: &Yaml, port: u64) {
    let pod_labels = at(dep, "spec.template.metadata.labels");
    let np = k8s_object(objects, "NetworkPolicy", "keysweep");
    let types: BTreeSet<&str> = yaml_seq(np, "spec.policyTypes")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(types, BTreeSet::from(["Ingress", "Egress"]));
    let ports = |rules: &[Yaml]| -> BTreeSet<(u64, String)> {
        rules
            .iter()
            .flat_map(|r| yaml_seq(r, "ports").iter())
            .map(|p| {
                (
                    p["port"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap_or("TCP").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        ports(yaml_seq(np, "spec.ingress")),
        BTreeSet::from([(port, "TCP".to_string())])
    );
    assert_ingress_only_from_monitoring(np);
    assert_eq!(
        ports(yaml_seq(np, "spec.egress")),
        BTreeSet::from([
            (53, "UDP".to_string()),
            (53, "TCP".to_string()),
            (443, "TCP".to_string()),
            (587, "TCP".to_string()),
            (465, "TCP".to_string()),
        ])
    );
    for (k, v) in at(np, "spec.podSelector.matchLabels").as_mapping().unwrap() {
        assert_eq!(
            &pod_labels[k.as_str().unwrap()],
            v,
            "NetworkPolicy misses the daemon"
        );
        assert_eq!(
            &at(cron, "spec.jobTemplate.spec.template.metadata.labels")[k.as_str().unwrap()],
            v,
            "NetworkPolicy misses the CronJob"
        );
    }
}

/// Every ingress rule names its peers, and each peer is a Prometheus pod (a podSelector with
/// labels) in the monitoring namespace (a namespaceSelector on its name) — both in one peer, so
/// both must match. A rule without `from`, an empty selector or an `ipBlock` would admit pods
/// (or addresses) other than the scraper. Checked statically: no cluster runs in the tests.
fn assert_ingress_only_from_monitoring(np: &Yaml) {
    let rules = yaml_seq(np, "spec.ingress");
    assert!(!rules.is_empty(), "no ingress rule at all");
    for rule in rules {
        let peers = rule["from"]
            .as_sequence()
            .unwrap_or_else(|| panic!("an ingress rule without `from` admits every pod: {rule:?}"));
        assert!(!peers.is_empty(), "an empty `from` admits every pod");
        for peer in peers {
            assert!(peer["ipBlock"].is_null(), "an ipBlock peer: {peer:?}");
            let ns = &peer["namespaceSelector"]["matchLabels"];
            assert_eq!(
                ns["kubernetes.io/metadata.name"].as_str(),
                Some("monitoring"),
                "peer not limited to the monitoring namespace: {peer:?}"
            );
            let pods = peer["podSelector"]["matchLabels"]
                .as_mapping()
                .unwrap_or_else(|| panic!("peer not limited to Prometheus pods: {peer:?}"));
            assert!(
                !pods.is_empty(),
                "an empty podSelector admits every pod of the namespace"
            );
        }
    }
}

/// kustomization.yaml installs the daemon only: never the CronJob next to it, never the
/// placeholder Secret.
fn assert_kustomization() {
    let kust = yaml_docs(&repo().join("deploy/kubernetes/kustomization.yaml"));
    let resources: Vec<&str> = yaml_seq(&kust[0], "resources")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for r in &resources {
        assert!(
            repo().join("deploy/kubernetes").join(r).is_file(),
            "kustomization lists missing {r}"
        );
    }
    assert!(resources.contains(&"deployment.yaml"));
    assert!(
        !resources.contains(&"cronjob.yaml"),
        "the CronJob must not be installed next to the Deployment"
    );
    assert!(!resources.contains(&"secret.example.yaml"));
}
