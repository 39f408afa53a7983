#!/usr/bin/env python3
"""Offline checks of everything in deploy/, run by deploy/validate (and so by CI).

    python3 deploy/validate.py --pods DIR

1. Renders deploy/kubernetes/base and every overlay with render.py (and, when a kubectl
   with kustomize v5 is installed, checks that `kubectl kustomize` renders the same).
2. `kubernetes-validate --strict` on every rendered resource, every example manifest
   and every Pod the Kubernetes executor rendered in the tests (DIR, written by
   `SHOAL_K8S_RENDER_DIR`). A resource kind without a schema counts as a failure.
3. Each deliberately broken manifest in deploy/kubernetes/tests/broken must FAIL the
   same check (so the check can fail).
4. compose.yaml against the Compose specification's schema (check-jsonschema), and a
   broken compose file must fail it.
5. The Containerfile: copies every workspace member, builds the `shoal` binary of
   shoal-cli, installs it where the entrypoint runs it, and fetches only from Debian
   (apt) and crates.io (cargo).
Needs kubernetes-validate, check-jsonschema and PyYAML on PATH / importable.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
K8S = os.path.join(HERE, "kubernetes")
# The oldest Kubernetes the manifests and the executor's Pods target (native sidecars
# are GA there; k8s-openapi is built with v1_33), and the newest kubernetes-validate
# knows.
VERSIONS = ["1.33.0", "1.37.0"]

sys.path.insert(0, K8S)
import render  # noqa: E402

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}", file=sys.stderr)


def ok(msg):
    print(f"ok: {msg}")


def kubernetes_validate(files, version):
    """(passed, output) of kubernetes-validate --strict over `files`."""
    out = subprocess.run(
        ["kubernetes-validate", "--strict", "-k", version, *files],
        capture_output=True,
        text=True,
        check=False,
    )
    text = out.stdout + out.stderr
    no_schema = "Couldn't find schema" in text
    return out.returncode == 0 and not no_schema and "ERROR" not in text, text


def yaml_files(directory):
    found = []
    for dirpath, _dirs, names in os.walk(directory):
        for n in sorted(names):
            if n.endswith((".yaml", ".yml", ".json")):
                found.append(os.path.join(dirpath, n))
    return sorted(found)


def quantity_bytes(q):
    """A Kubernetes memory quantity (`1Gi`, `512Mi`, `1536Mi`, plain bytes) in bytes."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(q))
    if not m:
        raise ValueError(f"unsupported quantity {q!r}")
    return int(m.group(1)) * {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}[m.group(2)]


def shoal_bytes(s):
    """A shoal size (`256MiB`, `1GiB`) in bytes."""
    m = re.fullmatch(r"(\d+)\s*(KiB|MiB|GiB|TiB)?", s)
    if not m:
        raise ValueError(f"unsupported size {s!r}")
    return int(m.group(1)) * {None: 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[m.group(2)]


def check_sizing(name, objs):
    """The worker's mem tier is on memory (the node's /dev/shm, or a memory-backed
    emptyDir within its sizeLimit), mounted where the tier path says, and fits the
    worker's memory limit, which its pages are charged to."""
    cm = next((o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shoal-config"), None)
    ds = next((o for o in objs if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "shoal-worker"), None)
    if not cm or not ds:
        return fail(f"{name}: no shoal-config ConfigMap or shoal-worker DaemonSet")
    tiers = tomllib.loads(cm["data"]["shoal.toml"])["worker"]["tiers"]
    mem = next(t for t in tiers if t["name"] == "mem")
    quota = shoal_bytes(mem["quota"])
    pod = ds["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "mem-tier")
    worker = next(c for c in pod["containers"] if c["name"] == "worker")
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "mem-tier")
    limit = quantity_bytes(worker["resources"]["limits"]["memory"])
    if "hostPath" in vol:
        if not vol["hostPath"]["path"].startswith("/dev/shm/"):
            fail(f"{name}: the mem tier's hostPath {vol['hostPath']['path']} is not under the node's /dev/shm")
    elif vol.get("emptyDir", {}).get("medium") != "Memory":
        fail(f"{name}: the mem tier is neither under the node's /dev/shm nor a memory-backed emptyDir")
    elif "sizeLimit" in vol["emptyDir"] and quota > quantity_bytes(vol["emptyDir"]["sizeLimit"]):
        fail(f"{name}: mem tier quota {mem['quota']} exceeds its emptyDir sizeLimit {vol['emptyDir']['sizeLimit']}")
    if mount["mountPath"] != mem["path"]:
        fail(f"{name}: mem tier path {mem['path']} is not where mem-tier is mounted ({mount['mountPath']})")
    if quota >= limit:
        fail(f"{name}: mem tier quota {mem['quota']} leaves no memory for the worker under its limit")
    else:
        ok(f"{name}: mem tier {mem['quota']} is on memory and fits the worker's memory limit")
    check_fast_path(name, objs, ds)


def check_fast_path(name, objs, worker_ds):
    """The CSI node plugin mounts every hostPath tier of the worker read-only at the
    same path, so its mounts find the tier files where the worker advertises them."""
    plugin_ds = next((o for o in objs if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "shoal-csi-node"), None)
    if not plugin_ds:
        return fail(f"{name}: no shoal-csi-node DaemonSet")
    wpod = worker_ds["spec"]["template"]["spec"]
    worker = next(c for c in wpod["containers"] if c["name"] == "worker")
    ppod = plugin_ds["spec"]["template"]["spec"]
    plugin = next(c for c in ppod["containers"] if c["name"] == "shoal-csi")
    host = lambda pod: {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    wh, ph = host(wpod), host(ppod)
    pmounts = {(ph.get(m["name"]), m["mountPath"]): m for m in plugin["volumeMounts"]}
    for m in worker["volumeMounts"]:
        if m["name"] not in wh:
            continue
        pm = pmounts.get((wh[m["name"]], m["mountPath"]))
        if pm is None:
            fail(f"{name}: the CSI plugin does not mount the worker's {wh[m['name']]} at {m['mountPath']}")
        elif not pm.get("readOnly"):
            fail(f"{name}: the CSI plugin mounts the worker's {wh[m['name']]} writable")
        else:
            ok(f"{name}: the CSI plugin reads the worker's {wh[m['name']]} at {m['mountPath']}")
    if worker.get("securityContext", {}).get("runAsUser", wpod.get("securityContext", {}).get("runAsUser")) != 0:
        fail(f"{name}: the worker does not run as root, so the root-run mounts refuse its tier directories")


def render_all(out_dir):
    """Renders base and overlays into out_dir/<name>/; returns the files."""
    targets = [os.path.join(K8S, "base")] + [
        os.path.join(K8S, "overlays", d) for d in sorted(os.listdir(os.path.join(K8S, "overlays")))
    ]
    kubectl = shutil.which("kubectl")
    has_kustomize5 = False
    if kubectl:
        v = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, check=False)
        has_kustomize5 = re.search(r"Kustomize Version: v5\.", v.stdout) is not None
    files = []
    for t in targets:
        name = os.path.relpath(t, K8S).replace(os.sep, "-")
        try:
            objs = render.render(t)
        except render.RenderError as e:
            fail(f"render {t}: {e}")
            continue
        dest = os.path.join(out_dir, name)
        os.makedirs(dest, exist_ok=True)
        for o in objs:
            p = os.path.join(dest, render.file_name(o))
            with open(p, "w", encoding="utf-8") as f:
                render.yaml.safe_dump(o, f, sort_keys=False)
            files.append(p)
        ok(f"rendered {os.path.relpath(t, ROOT)}: {len(objs)} resources")
        check_sizing(os.path.relpath(t, ROOT), objs)
        if has_kustomize5:
            problems = render.compare_with_kubectl(t, objs)
            for p in problems:
                fail(f"render.py and kubectl kustomize differ on {os.path.relpath(t, ROOT)}: {p}")
            if not problems:
                ok(f"render.py matches kubectl kustomize on {os.path.relpath(t, ROOT)}")
    if not has_kustomize5:
        print("note: no kubectl with kustomize v5 here; render.py's output was not cross-checked")
    return files


def check_manifests(pods_dir, work):
    rendered = render_all(os.path.join(work, "rendered"))
    examples = yaml_files(os.path.join(K8S, "examples"))
    pods = yaml_files(pods_dir) if pods_dir else []
    if pods_dir and not pods:
        fail(f"no executor-rendered Pods in {pods_dir}: did the kubernetes tests run with SHOAL_K8S_RENDER_DIR?")
    groups = [("rendered manifests", rendered), ("examples", examples), ("executor Pods", pods)]
    for version in VERSIONS:
        for label, files in groups:
            if not files:
                continue
            passed, text = kubernetes_validate(files, version)
            if passed:
                ok(f"kubernetes-validate --strict ({version}): {len(files)} {label}")
            else:
                bad = [line for line in text.splitlines() if not line.startswith("INFO")]
                fail(f"kubernetes-validate --strict ({version}) on {label}:\n  " + "\n  ".join(bad))

    # broken/command-line/ holds schema-valid manifests whose shoal command line is
    # wrong; `shoal ... --check` refuses them (cli/tests/it/shipped_commands.rs).
    broken = [
        f
        for f in yaml_files(os.path.join(K8S, "tests", "broken"))
        if "compose" not in os.path.basename(f) and os.sep + "command-line" + os.sep not in f
    ]
    if not broken:
        fail("no broken manifests to prove the check can fail")
    for f in broken:
        passed, _ = kubernetes_validate([f], VERSIONS[0])
        if passed:
            fail(f"the deliberately broken {os.path.relpath(f, ROOT)} passed validation")
        else:
            ok(f"broken {os.path.basename(f)} is rejected")


def check_compose():
    def schema_ok(path):
        out = subprocess.run(
            ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", path],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.returncode == 0, out.stdout + out.stderr

    passed, text = schema_ok(os.path.join(HERE, "compose.yaml"))
    if passed:
        ok("compose.yaml matches the Compose specification")
    else:
        fail(f"compose.yaml: {text.strip()}")
    broken = os.path.join(K8S, "tests", "broken", "compose-unknown-key.yaml")
    passed, _ = schema_ok(broken)
    if passed:
        fail("the deliberately broken compose file passed the schema check")
    else:
        ok("broken compose-unknown-key.yaml is rejected")


def check_containerfile():
    path = os.path.join(HERE, "Containerfile")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # Instructions with their continuation lines joined.
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instr = [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]

    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        members = tomllib.load(f)["workspace"]["members"]
    copied = set()
    for l in instr:
        m = re.match(r"COPY\s+(?!--from)(.+)\s+(\S+)$", l)
        if m:
            copied.update(m.group(1).split())
    missing = [m for m in members if m not in copied]
    if missing:
        fail(f"Containerfile does not COPY workspace members {missing}")
    else:
        ok(f"Containerfile copies all {len(members)} workspace members")
    for needed in ("Cargo.toml", "Cargo.lock"):
        if needed not in copied:
            fail(f"Containerfile does not COPY {needed}")

    with open(os.path.join(ROOT, "cli", "Cargo.toml"), "rb") as f:
        cli = tomllib.load(f)
    bins = [b["name"] for b in cli.get("bin", [])]
    if cli["package"]["name"] != "shoal-cli" or "shoal" not in bins:
        fail(f"cli/Cargo.toml no longer builds a `shoal` binary of shoal-cli (bins: {bins})")
    build = [l for l in instr if "cargo build" in l]
    if not any(re.search(r"cargo build .*--locked.*--release.*-p shoal-cli", l) for l in build):
        fail("Containerfile does not build shoal-cli with --locked --release")
    if not any("target/release/shoal /out/shoal" in l for l in build):
        fail("Containerfile does not install target/release/shoal as /out/shoal")
    if "COPY --from=build /out/shoal /usr/local/bin/shoal" not in instr:
        fail("Containerfile does not put the binary at /usr/local/bin/shoal")
    entry = [l for l in instr if l.startswith("ENTRYPOINT")]
    if entry != ['ENTRYPOINT ["/usr/local/bin/shoal"]']:
        fail(f"Containerfile's entrypoint is not the shoal binary: {entry}")
    else:
        ok("Containerfile builds `shoal` (shoal-cli) and runs it as the entrypoint")

    # What the build steps fetch from: Debian's archive through apt and crates.io
    # through cargo; nothing downloaded by URL, no other package manager.
    runs = [l for l in instr if l.startswith("RUN")]
    for l in runs:
        for tool in ("curl", "wget", "pip", "npm", "go install", "rustup", "git clone", "ADD http"):
            if re.search(rf"(^|[\s;&|]){re.escape(tool)}(\s|$)", l):
                fail(f"Containerfile RUN step fetches with `{tool}`: {l[:100]}")
    if any(l.startswith("ADD") for l in instr):
        fail("Containerfile uses ADD (may fetch URLs); use COPY")
    froms = [l for l in instr if l.startswith("FROM")]
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), l.split()[1]) for l in froms]
    bad_base = [i for i in images if not re.match(r"docker\.io/library/(rust|debian):", i)]
    if bad_base:
        fail(f"Containerfile base images are not Docker Hub's official rust/debian: {bad_base}")
    else:
        ok(f"Containerfile fetches only from apt (Debian) and cargo (crates.io); bases {images}")
    apt = [l for l in runs if "apt-get install" in l]
    pkgs = set()
    for l in apt:
        seg = l.split("apt-get install", 1)[1].split("&&")[0]
        pkgs.update(w for w in seg.split() if not w.startswith("-"))
    if pkgs != {"fuse3", "ca-certificates"}:
        fail(f"Containerfile apt packages changed: {sorted(pkgs)} (update this check and the docs)")
    if shutil.which("apt-cache"):
        for p in sorted(pkgs):
            r = subprocess.run(["apt-cache", "show", p], capture_output=True, text=True, check=False)
            if r.returncode != 0 or not r.stdout.strip():
                print(f"note: apt-cache does not know {p} here (no apt lists?); not checked")
            else:
                ok(f"Debian package {p} exists")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", metavar="DIR", help="executor-rendered Pods to validate")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-deploy-validate-") as work:
        check_manifests(args.pods, work)
    check_compose()
    check_containerfile()
    if failures:
        print(f"\ndeploy/validate: {len(failures)} problem(s)", file=sys.stderr)
        return 1
    print("\ndeploy/validate: all deploy checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
