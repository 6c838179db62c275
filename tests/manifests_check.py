#!/usr/bin/env python3
"""Loads loam's Kubernetes manifests for tests/manifests.rs.

Reads every YAML document under deploy/kubernetes and deploy/examples, validates each against the Kubernetes
OpenAPI schemas shipped with the kubernetes-validate package (strict: unknown fields are errors too), and
prints one JSON object on stdout: the validation errors, the objects themselves, and the values the Rust test
compares with loam's real command-line and config parsers (loam's args and env, the CSI socket path each
container uses, the registration path, driver names, the config file from the ConfigMap).

Usage: python3 tests/manifests_check.py [REPO_ROOT]   (default: the parent of this file's directory)

Exit status: 0 whenever the manifests could be looked at (problems go into "errors"); 3 when PyYAML or
kubernetes-validate cannot be imported (pip install kubernetes-validate); anything else is a bug here.
"""

import json
import os
import posixpath
import sys

try:
    import yaml
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"manifests_check: {e}", file=sys.stderr)
    sys.exit(3)

# The oldest Kubernetes the manifests must be valid for; they are also checked against the newest schemas the
# installed kubernetes-validate has.
OLDEST_KUBE = "1.34"
MANIFEST_DIR = "deploy/kubernetes"
EXAMPLE_DIR = "deploy/examples"
KUSTOMIZATION = "kustomization.yaml"
LOAM_CONTAINER = "loam"


def kube_versions():
    newest = kv_utils.latest_version()
    newest = ".".join(newest.split(".")[:2])
    versions = [OLDEST_KUBE]
    if newest != OLDEST_KUBE:
        versions.append(newest)
    return versions


def yaml_files(root, rel_dir):
    d = os.path.join(root, rel_dir)
    if not os.path.isdir(d):
        return []
    return sorted(
        posixpath.join(rel_dir, f) for f in os.listdir(d) if f.endswith((".yaml", ".yml"))
    )


def load_docs(root, rel, errors):
    try:
        with open(os.path.join(root, rel)) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        errors.append(f"{rel}: cannot load: {e}")
        return []


def obj_key(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def validate(rel, doc, versions, errors):
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        errors.append(f"{rel}: a document without apiVersion and kind")
        return
    for v in versions:
        where = f"{rel}: {obj_key(doc)} (Kubernetes {v})"
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            errors.append(f"{where}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{where}: no schema: {e.message}")
        except Exception as e:  # InvalidSchemaError, VersionNotSupportedError, ...
            errors.append(f"{where}: cannot validate: {type(e).__name__}: {getattr(e, 'message', e)}")


def go_flags(args):
    """Go-style flags (-x, --x, --x=v, --x v) as {name: value}; a bare flag is True."""
    flags = {}
    i = 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("-") and a != "-":
            name = a.lstrip("-")
            if "=" in name:
                name, value = name.split("=", 1)
            elif i + 1 < len(args) and not str(args[i + 1]).startswith("-"):
                i += 1
                value = str(args[i])
            else:
                value = True
            flags[name] = value
        i += 1
    return flags


def env_of(container):
    env = {}
    for e in container.get("env") or []:
        vf = e.get("valueFrom") or {}
        if "value" in e:
            env[e["name"]] = {"value": str(e["value"])}
        elif "fieldRef" in vf:
            env[e["name"]] = {"fieldRef": vf["fieldRef"].get("fieldPath")}
        else:
            env[e["name"]] = {"other": vf}
    return env


def container_summary(c):
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or [] if p.get("name")}
    probe = (c.get("livenessProbe") or {}).get("httpGet")
    liveness = None
    if probe is not None:
        port = probe.get("port")
        liveness = {"path": probe.get("path"), "port": ports.get(port, port)}
    return {
        "image": c.get("image"),
        "command": c.get("command"),
        "args": [str(a) for a in c.get("args") or []],
        "flags": go_flags(c.get("args") or []),
        "env": env_of(c),
        "ports": ports,
        "privileged": bool((c.get("securityContext") or {}).get("privileged")),
        "liveness": liveness,
        "mounts": [
            {
                "path": m.get("mountPath"),
                "volume": m.get("name"),
                "propagation": m.get("mountPropagation"),
                "read_only": bool(m.get("readOnly")),
                "sub_path": m.get("subPath"),
            }
            for m in c.get("volumeMounts") or []
        ],
    }


def resolve(mounts, path):
    """The mount holding `path` (the longest mountPath prefix) and the path inside that volume."""
    best = None
    for m in mounts:
        mp = (m["path"] or "").rstrip("/") or "/"
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, m)
    if best is None:
        return None, None
    rel = path[len(best[0]) :].lstrip("/")
    if best[1]["sub_path"]:
        rel = posixpath.join(best[1]["sub_path"], rel).rstrip("/")
    return best[1], rel


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    versions = kube_versions()
    errors = []
    objects, examples, kustomization = {}, {}, None
    manifest_files = []

    for rel in yaml_files(root, MANIFEST_DIR) + yaml_files(root, EXAMPLE_DIR):
        docs = load_docs(root, rel, errors)
        if posixpath.basename(rel) == KUSTOMIZATION and rel.startswith(MANIFEST_DIR + "/"):
            kustomization = docs[0] if docs else None
            continue  # not a Kubernetes object: no schema
        into = objects if rel.startswith(MANIFEST_DIR + "/") else examples
        if into is objects:
            manifest_files.append(posixpath.basename(rel))
        if not docs:
            errors.append(f"{rel}: no documents")
        for doc in docs:
            validate(rel, doc, versions, errors)
            if isinstance(doc, dict):
                key = obj_key(doc)
                if key in into:
                    errors.append(f"{rel}: {key} is defined twice")
                doc = dict(doc)
                into[key] = doc
                doc["__file"] = rel

    out = {
        "kubernetes_validate_version": kubernetes_validate.__version__,
        "kube_versions": versions,
        "errors": errors,
        "manifest_files": manifest_files,
        "kustomization": kustomization,
        "objects": objects,
        "examples": examples,
        "containers": {},
        "volumes": {},
        "loam_args": None,
        "loam_env": None,
        "pod_annotations": {},
        "socket_paths": {},
        "registration_path": None,
        "socket_volume_host_path": None,
        "driver_names": {
            "csidriver": [o["metadata"]["name"] for o in objects.values() if o.get("kind") == "CSIDriver"],
            "storageclasses": {
                o["metadata"]["name"]: o.get("provisioner")
                for o in list(objects.values()) + list(examples.values())
                if o.get("kind") == "StorageClass"
            },
            "loam_flag": None,
        },
        "config_toml": None,
    }

    daemonsets = [o for o in objects.values() if o.get("kind") == "DaemonSet"]
    if len(daemonsets) != 1:
        errors.append(f"expected one DaemonSet in {MANIFEST_DIR}, found {len(daemonsets)}")
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    template = (daemonsets[0].get("spec") or {}).get("template") or {}
    out["pod_annotations"] = (template.get("metadata") or {}).get("annotations") or {}
    pod = template.get("spec") or {}
    containers = {c.get("name"): container_summary(c) for c in pod.get("containers") or []}
    volumes = {v.get("name"): {k: v[k] for k in v if k != "name"} for v in pod.get("volumes") or []}
    out["containers"], out["volumes"] = containers, volumes

    loam = containers.get(LOAM_CONTAINER)
    if loam is None:
        errors.append(f"the DaemonSet has no container named {LOAM_CONTAINER}")
    else:
        out["loam_args"] = loam["args"]
        out["loam_env"] = loam["env"]
        endpoint = loam["flags"].get("endpoint")
        if isinstance(endpoint, str):
            sock = endpoint[len("unix://") :] if endpoint.startswith("unix://") else endpoint
            out["socket_paths"][LOAM_CONTAINER] = sock
            mount, rel = resolve(loam["mounts"], sock)
            host = (volumes.get(mount["volume"]) or {}).get("hostPath") if mount else None
            if host and posixpath.dirname(rel) == "":
                out["socket_volume_host_path"] = host.get("path")
        driver = loam["flags"].get("driver-name")
        out["driver_names"]["loam_flag"] = driver if isinstance(driver, str) else None
        config = loam["flags"].get("config")
        if isinstance(config, str):
            mount, rel = resolve(loam["mounts"], config)
            cm = (volumes.get(mount["volume"]) or {}).get("configMap") if mount else None
            if cm:
                data = (objects.get(f"ConfigMap/{cm.get('name')}") or {}).get("data") or {}
                out["config_toml"] = data.get(rel)
    for name, c in containers.items():
        if name != LOAM_CONTAINER and isinstance(c["flags"].get("csi-address"), str):
            out["socket_paths"][name] = c["flags"]["csi-address"]
        reg = c["flags"].get("kubelet-registration-path")
        if isinstance(reg, str):
            out["registration_path"] = reg

    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
