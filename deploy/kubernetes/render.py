#!/usr/bin/env python3
"""Renders a kustomization directory offline, for validation where neither `kustomize`
nor a recent `kubectl` is installed.

    python3 render.py DIR            # every resource of DIR's kustomization, as YAML
    python3 render.py DIR --split OUT  # one file per resource in OUT/

It implements the subset of kustomize that deploy/kubernetes uses and refuses anything
else, so it can never silently render something different from `kubectl kustomize`:
- `resources`: files (one or more YAML documents) and directories with their own
  kustomization, rendered first;
- `namespace`: set on every namespaced resource (and on ServiceAccount subjects of
  RoleBindings that had the old namespace), as kustomize does;
- `images`: `name` matched against the image name without tag or digest, replaced by
  `newName` / `newTag` / `digest`;
- `patches`: strategic-merge patches from `path`, matched to a resource by
  apiVersion, kind, name and namespace. Lists are merged by their Kubernetes merge key
  where they have one (containers, env, volumes, ... by name; volumeMounts by
  mountPath; ports by containerPort or port) and replaced otherwise.
deploy/validate compares this output with `kubectl kustomize` whenever a kubectl with
kustomize v5 is installed, so the subset is checked against the real thing.
Needs PyYAML.
"""

import argparse
import copy
import os
import sys

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}

# Kinds without a namespace (the ones deploy/kubernetes could contain).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "PriorityClass",
    "APIService",
    "CSIDriver",
}

# Strategic-merge keys of the list fields we may patch, by field name.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}


class RenderError(Exception):
    pass


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "metadata" not in d:
            raise RenderError(f"{path}: every document must be a Kubernetes object")
    return docs


def find_kustomization(directory):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise RenderError(f"{directory}: no kustomization.yaml")


def merge_key_for(field, items):
    if field == "ports":
        if all(isinstance(i, dict) and "containerPort" in i for i in items):
            return "containerPort"
        if all(isinstance(i, dict) and "port" in i for i in items):
            return "port"
        return None
    return MERGE_KEYS.get(field)


def strategic_merge(base, patch, field=None):
    """Merges `patch` into a copy of `base` the way a strategic-merge patch does for the
    fields deploy/kubernetes patches."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if isinstance(k, str) and k.startswith("$"):
                raise RenderError(f"patch directive {k} is not supported by render.py")
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = merge_key_for(field, base + patch)
        if key is None:
            return copy.deepcopy(patch)
        out = copy.deepcopy(base)
        for item in patch:
            for i, existing in enumerate(out):
                if existing.get(key) == item.get(key):
                    out[i] = strategic_merge(existing, item, None)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def pod_specs(obj):
    """The Pod specs inside a workload object."""
    spec = obj.get("spec") or {}
    kind = obj["kind"]
    if kind == "Pod":
        yield spec
    elif kind == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif "template" in spec:
        yield spec["template"].get("spec", {})


def split_image(image):
    """(name, tag, digest) of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        image, tag = image[:colon], image[colon + 1 :]
    return image, tag, digest


def apply_images(obj, images):
    for spec in pod_specs(obj):
        for field in ("initContainers", "containers"):
            for c in spec.get(field) or []:
                name, tag, digest = split_image(c.get("image", ""))
                for img in images:
                    if img.get("name") != name:
                        continue
                    unknown = set(img) - {"name", "newName", "newTag", "digest"}
                    if unknown:
                        raise RenderError(f"images: unsupported keys {sorted(unknown)}")
                    name = img.get("newName", name)
                    if "newTag" in img:
                        tag, digest = str(img["newTag"]), None
                    if "digest" in img:
                        tag, digest = None, img["digest"]
                ref = name
                if tag:
                    ref += ":" + tag
                if digest:
                    ref += "@" + digest
                c["image"] = ref


def apply_namespace(obj, namespace):
    if obj["kind"] in CLUSTER_SCOPED:
        if obj["kind"] == "Namespace":
            obj["metadata"]["name"] = namespace
        return
    old = obj["metadata"].get("namespace")
    obj["metadata"]["namespace"] = namespace
    if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        for s in obj.get("subjects") or []:
            if s.get("kind") == "ServiceAccount" and s.get("namespace") in (None, old, "default"):
                s["namespace"] = namespace


def identity(obj):
    md = obj["metadata"]
    return (obj.get("apiVersion"), obj["kind"], md.get("name"), md.get("namespace"))


def render(directory):
    kpath = find_kustomization(directory)
    with open(kpath, encoding="utf-8") as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - SUPPORTED_KEYS
    if unknown:
        raise RenderError(
            f"{kpath}: render.py does not implement {sorted(unknown)}; "
            "use kubectl kustomize, or extend render.py and its cross-check"
        )
    objs = []
    for r in k.get("resources") or []:
        p = os.path.normpath(os.path.join(directory, r))
        if os.path.isdir(p):
            objs.extend(render(p))
        elif os.path.isfile(p):
            objs.extend(load_docs(p))
        else:
            raise RenderError(f"{kpath}: resource {r} does not exist")
    for patch in k.get("patches") or []:
        if set(patch) - {"path"}:
            raise RenderError(f"{kpath}: only `patches: - path: FILE` is supported")
        ppath = os.path.join(directory, patch["path"])
        for p in load_docs(ppath):
            pid = identity(p)
            matches = [i for i, o in enumerate(objs) if identity(o) == pid]
            if len(matches) != 1:
                raise RenderError(f"{ppath}: patch target {pid} matches {len(matches)} resources")
            objs[matches[0]] = strategic_merge(objs[matches[0]], p)
    if "namespace" in k:
        for o in objs:
            apply_namespace(o, k["namespace"])
    if k.get("images"):
        for o in objs:
            apply_images(o, k["images"])
    seen = set()
    for o in objs:
        if identity(o) in seen:
            raise RenderError(f"{kpath}: {identity(o)} is defined twice")
        seen.add(identity(o))
    return objs


def file_name(obj):
    md = obj["metadata"]
    return f"{obj['kind'].lower()}-{md.get('namespace') or 'cluster'}-{md['name']}.yaml"


def compare_with_kubectl(directory, objs):
    """Differences between `objs` and `kubectl kustomize DIR`, as readable lines."""
    import json
    import subprocess

    out = subprocess.run(
        ["kubectl", "kustomize", directory], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return [f"kubectl kustomize {directory} failed: {out.stderr.strip()}"]
    real = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    key = lambda o: (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
    mine = {key(o): o for o in objs}
    theirs = {key(o): o for o in real}
    problems = [f"only render.py has {k}" for k in mine.keys() - theirs.keys()]
    problems += [f"only kubectl has {k}" for k in theirs.keys() - mine.keys()]
    for k in mine.keys() & theirs.keys():
        if mine[k] != theirs[k]:
            problems.append(
                f"{k} differs:\n  render.py: {json.dumps(mine[k], sort_keys=True)}"
                f"\n  kubectl:   {json.dumps(theirs[k], sort_keys=True)}"
            )
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--split", metavar="OUT", help="write one file per resource into OUT")
    ap.add_argument(
        "--check-kubectl",
        action="store_true",
        help="also render with `kubectl kustomize` and fail if the results differ",
    )
    args = ap.parse_args()
    try:
        objs = render(args.dir)
    except (RenderError, yaml.YAMLError, OSError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    if args.check_kubectl:
        problems = compare_with_kubectl(args.dir, objs)
        for p in problems:
            print(f"render.py: {args.dir}: {p}", file=sys.stderr)
        if problems:
            return 1
    if args.split:
        os.makedirs(args.split, exist_ok=True)
        for o in objs:
            with open(os.path.join(args.split, file_name(o)), "w", encoding="utf-8") as f:
                yaml.safe_dump(o, f, sort_keys=False)
    else:
        yaml.safe_dump_all(objs, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
