#!/usr/bin/env python3
"""Validates the Kubernetes manifests under deploy/k8s (every *.yaml, every document in it).

- Built-in kinds: the Kubernetes OpenAPI schemas of one stated version (default 1.30) through
  kubernetes-validate, in strict mode (an unknown or misspelled field fails).
- CRD kinds (InferencePool, HTTPRoute) and kustomization files: the small JSON schemas vendored in
  tools/k8s-schemas/, with jsonschema (which kubernetes-validate depends on).
- Any other kind fails: nothing is skipped silently.
- YAML with a duplicate key fails (PyYAML would keep the last value without a word).
- Cross-references the API server would accept but that leave a deployment broken: selectors that select no
  pod template, a StatefulSet's serviceName, claim and Secret names, named target ports, InferencePool
  backends and target ports, files a kustomization lists or forgets.

Then (unless --no-self-test) it feeds itself deliberately broken manifests from a temporary directory and
fails unless each one is rejected for the expected reason.

Exit status: 0 all valid, 1 a manifest is invalid, 2 the validator itself could not run.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMAS = os.path.join(ROOT, "tools", "k8s-schemas")
VENDORED = {
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepool-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-v1.json",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "kustomization-v1beta1.json",
}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a mapping with the same key twice."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


class Doc:
    def __init__(self, path, index, body):
        self.path, self.index, self.body = path, index, body

    @property
    def kind(self):
        return self.body.get("kind")

    @property
    def name(self):
        return (self.body.get("metadata") or {}).get("name")

    def where(self, rel):
        return f"{os.path.relpath(self.path, rel)}#{self.index} {self.kind}" + (f"/{self.name}" if self.name else "")


def manifest_files(directory):
    out = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith((".yaml", ".yml"))]
    return out


def load(path, errors):
    try:
        with open(path) as f:
            bodies = list(yaml.load_all(f, Loader=UniqueKeyLoader))
    except yaml.YAMLError as e:
        errors.append(f"{path}: not valid YAML: {e}")
        return []
    docs = []
    for i, body in enumerate(bodies):
        if body is None:
            continue
        if not isinstance(body, dict) or not isinstance(body.get("apiVersion"), str) or not isinstance(body.get("kind"), str):
            errors.append(f"{path}#{i}: not a Kubernetes object (a mapping with apiVersion and kind)")
            continue
        docs.append(Doc(path, i, body))
    return docs


def validate_schema(doc, version, rel, errors, notes):
    key = (doc.body["apiVersion"], doc.kind)
    if key in VENDORED:
        with open(os.path.join(SCHEMAS, VENDORED[key])) as f:
            schema = json.load(f)
        found = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc.body), key=lambda e: list(e.path))
        for e in found:
            errors.append(f"{doc.where(rel)}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message} [{VENDORED[key]}]")
        if not found:
            notes.append(f"ok   {doc.where(rel)} (vendored schema {VENDORED[key]})")
        return
    try:
        checked = kubernetes_validate.validate(doc.body, version, strict=True)
        notes.append(f"ok   {doc.where(rel)} (Kubernetes {checked}, strict)")
    except kubernetes_validate.ValidationError as e:
        errors.append(f"{doc.where(rel)}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message} [Kubernetes {e.version}, strict]")
    except kubernetes_validate.SchemaNotFoundError as e:
        errors.append(f"{doc.where(rel)}: no schema for {e.api_version} {e.kind} in Kubernetes {e.version} and none vendored")


def pod_templates(docs):
    """(doc, pod labels, pod spec) of every workload."""
    out = []
    for d in docs:
        if d.kind in WORKLOADS:
            t = (d.body.get("spec") or {}).get("template") or {}
            out.append((d, (t.get("metadata") or {}).get("labels") or {}, t.get("spec") or {}))
    return out


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cross_check(docs, rel, errors):
    templates = pod_templates(docs)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.kind, {})[d.name] = d

    def selected(selector):
        return [(d, spec) for d, labels, spec in templates if selects(selector, labels)]

    for d, labels, spec in templates:
        match = ((d.body.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not selects(match, labels):
            errors.append(f"{d.where(rel)}: spec.selector.matchLabels {match} does not select its own pod template's labels {labels}")
        if d.kind == "StatefulSet":
            svc = by_kind.get("Service", {}).get(d.body["spec"].get("serviceName"))
            if svc is None or (svc.body.get("spec") or {}).get("clusterIP") != "None":
                errors.append(f"{d.where(rel)}: serviceName {d.body['spec'].get('serviceName')!r} is not a headless Service here")
        for vol in spec.get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in by_kind.get("PersistentVolumeClaim", {}):
                errors.append(f"{d.where(rel)}: volume {vol.get('name')!r} claims {claim!r}, which no PersistentVolumeClaim here defines")
        for c in spec.get("containers") or []:
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = by_kind.get("Secret", {}).get(ref.get("name"))
                    data = {} if secret is None else {**(secret.body.get("data") or {}), **(secret.body.get("stringData") or {})}
                    if ref.get("key") not in data:
                        errors.append(f"{d.where(rel)}: env {env.get('name')} reads key {ref.get('key')!r} of Secret {ref.get('name')!r}, "
                                      "which no Secret here (secret.example.yaml included) has")

    def container_ports(pods):
        return [p for _, spec in pods for c in spec.get("containers") or [] for p in c.get("ports") or []]

    for d in by_kind.get("Service", {}).values():
        selector = (d.body.get("spec") or {}).get("selector") or {}
        pods = selected(selector)
        if not pods:
            errors.append(f"{d.where(rel)}: selector {selector} selects no pod template here")
            continue
        names = {p.get("name") for p in container_ports(pods)}
        for port in d.body["spec"].get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and target not in names:
                errors.append(f"{d.where(rel)}: targetPort {target!r} is no container port name of the selected pods")
    for d in by_kind.get("PodDisruptionBudget", {}).values():
        selector = ((d.body.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not selected(selector):
            errors.append(f"{d.where(rel)}: selector {selector} selects no pod template here")
    for d in by_kind.get("InferencePool", {}).values():
        selector = ((d.body.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        pods = selected(selector)
        if not pods:
            errors.append(f"{d.where(rel)}: selector {selector} selects no pod template here")
            continue
        numbers = {p.get("containerPort") for p in container_ports(pods)}
        for port in d.body["spec"].get("targetPorts") or []:
            if port.get("number") not in numbers:
                errors.append(f"{d.where(rel)}: targetPort {port.get('number')} is no container port of the selected pods")
    for d in by_kind.get("HTTPRoute", {}).values():
        for rule in (d.body.get("spec") or {}).get("rules") or []:
            for ref in rule.get("backendRefs") or []:
                if ref.get("kind") == "InferencePool":
                    if ref.get("group") != "inference.networking.k8s.io":
                        errors.append(f"{d.where(rel)}: an InferencePool backendRef needs group inference.networking.k8s.io")
                    if ref.get("name") not in by_kind.get("InferencePool", {}):
                        errors.append(f"{d.where(rel)}: backendRef names InferencePool {ref.get('name')!r}, which is not defined here")


def check_kustomization(doc, rel, errors):
    """Every listed file exists; every manifest beside it is listed (examples excepted)."""
    base = os.path.dirname(doc.path)
    listed = set(doc.body.get("resources") or [])
    for r in sorted(listed):
        if not os.path.exists(os.path.join(base, r)):
            errors.append(f"{doc.where(rel)}: lists {r!r}, which does not exist")
    for f in sorted(os.listdir(base)):
        if f.endswith((".yaml", ".yml")) and f != os.path.basename(doc.path) and not f.endswith((".example.yaml", ".example.yml")) \
                and f not in listed:
            errors.append(f"{doc.where(rel)}: {f} is beside it but not listed (name it *.example.yaml if it is meant to be applied by hand)")


def validate_tree(directory, version):
    errors, notes, docs = [], [], []
    files = manifest_files(directory)
    if not files:
        errors.append(f"{directory}: no manifests")
    for path in files:
        file_docs = load(path, errors)
        if any(d.kind == "Kustomization" for d in file_docs) and len(file_docs) != 1:
            errors.append(f"{path}: a kustomization file holds one document")
        docs += file_docs
    for d in docs:
        validate_schema(d, version, directory, errors, notes)
        if d.kind == "Kustomization":
            check_kustomization(d, directory, errors)
    cross_check([d for d in docs if d.kind != "Kustomization"], directory, errors)
    return errors, notes, len(files), len(docs)


# Each case: files of a broken tree, and a phrase the rejection must contain.
_GOOD_POD = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web:1, ports: [{name: http, containerPort: 8000}]}]
"""
SELF_TEST = [
    ("unknown field, strict mode", {"d.yaml": _GOOD_POD.replace("spec:\n  selector", "spec:\n  replicass: 2\n  selector")}, "replicass"),
    ("the second document of a file has a wrong type", {"d.yaml": _GOOD_POD + "---\n" + _GOOD_POD.replace("name: web, labels", "name: web2, labels")
                                                        .replace("spec:\n  selector", "spec:\n  replicas: two\n  selector")}, "'two'"),
    ("a required field is missing", {"d.yaml": _GOOD_POD.replace("      containers: [{name: web, image: web:1, ports: [{name: http, containerPort: 8000}]}]\n",
                                                                "      containers: [{image: web:1}]\n")}, "'name' is a required property"),
    ("duplicate key", {"d.yaml": _GOOD_POD.replace("metadata: {name: web, labels: {app: web}}", "metadata: {name: web, labels: {app: web}}\nkind: Service")},
     "duplicate key"),
    ("not YAML", {"d.yaml": "kind: [Deployment\n"}, "not valid YAML"),
    ("an unknown kind is not skipped", {"d.yaml": "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"}, "no schema"),
    ("InferencePool without targetPorts", {"d.yaml": _GOOD_POD, "p.yaml": "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\n"
                                           "metadata: {name: p}\nspec:\n  selector: {matchLabels: {app: web}}\n"
                                           "  endpointPickerRef: {name: epp, port: {number: 9002}}\n"}, "'targetPorts' is a required property"),
    ("InferencePool picker Service without a port", {"d.yaml": _GOOD_POD, "p.yaml": "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\n"
                                                     "metadata: {name: p}\nspec:\n  selector: {matchLabels: {app: web}}\n  targetPorts: [{number: 8000}]\n"
                                                     "  endpointPickerRef: {name: epp}\n"}, "'port' is a required property"),
    ("HTTPRoute backendRef without a name", {"r.yaml": "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n"
                                             "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool}]}]\n"},
     "'name' is a required property"),
    ("a Service that selects nothing", {"d.yaml": _GOOD_POD, "s.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n"
                                        "  selector: {app: wbe}\n  ports: [{port: 80, targetPort: http}]\n"}, "selects no pod template"),
    ("a kustomization that forgets a file", {"d.yaml": _GOOD_POD, "s.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n"
                                             "  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n",
                                             "kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [d.yaml]\n"},
     "s.yaml is beside it but not listed"),
]


def self_test(version):
    """Runs this script on each broken tree in a fresh process; each must exit 1 naming the fault."""
    failures = 0
    for title, files, phrase in SELF_TEST:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
            run = subprocess.run([sys.executable, os.path.abspath(__file__), "--no-self-test", "--kubernetes-version", version, tmp],
                                 capture_output=True, text=True)
        out = run.stdout + run.stderr
        if run.returncode == 1 and phrase in out:
            print(f"self-test ok   rejected: {title}")
        else:
            failures += 1
            print(f"self-test FAIL {title}: exit {run.returncode}, expected 1 with {phrase!r}; output:\n{out}")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=os.path.join(ROOT, "deploy", "k8s"))
    parser.add_argument("--kubernetes-version", default="1.30")
    parser.add_argument("--no-self-test", action="store_true", help="validate the directory only")
    parser.add_argument("--quiet", action="store_true", help="print only errors and the summary")
    args = parser.parse_args()
    if args.kubernetes_version not in {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}:
        print(f"validate_k8s: kubernetes-validate {kubernetes_validate.__version__} has no schemas for Kubernetes {args.kubernetes_version}")
        return 2
    errors, notes, nfiles, ndocs = validate_tree(args.directory, args.kubernetes_version)
    if not args.quiet:
        print("\n".join(notes))
    for e in errors:
        print(f"ERROR {e}")
    print(f"validate_k8s: {nfiles} files, {ndocs} documents, {len(errors)} errors (Kubernetes {args.kubernetes_version} schemas, strict)")
    if errors:
        return 1
    if not args.no_self_test:
        failures = self_test(args.kubernetes_version)
        print(f"validate_k8s: self-test {len(SELF_TEST) - failures}/{len(SELF_TEST)} broken manifests rejected")
        if failures:
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
