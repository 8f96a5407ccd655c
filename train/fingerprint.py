"""Stage fingerprints: what a finished stage's results depend on, as one hash.

A fingerprint covers the stage's resolved config (paths inside the pipeline folder written
relative to it, so a folder can move), the content of every user file the config names
(`local:` entries of mixtures, preference files, any existing file path outside the pipeline
folder) and the fingerprints of the stages it reads. Equal fingerprints mean "the same
computation": the pipeline skips a finished stage only then, and reruns it (and, since they
include its fingerprint, every stage that reads it) when anything changed, naming what.

Not covered, by choice: the code version (recorded in run_info.json; rerunning every stage on
every commit would make the pipeline useless for development — use --from STAGE after a change
that matters) and keys that only say where things go (workdir, cache_dir).
"""

import hashlib
import json
import os

LOCATION_KEYS = ("workdir", "cache_dir", "stage_cache")  # where things go, not what is computed
# Switches added to the configs after results existed, left out while at their default: a
# config with the switch off computes what one without the key computed (the code reads it
# with that default), so adding one does not invalidate every finished stage and sweep trial.
ADDED_DEFAULTS = {"z_loss": 0.0}
LOCAL_PREFIX = "local:"
HASH_LIMIT = 256 << 20  # files above this are fingerprinted by size and mtime, not read


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} → {"a.b": 1}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def canonical(config: dict, root: str) -> dict:
    """The flattened config with location keys dropped and paths inside `root` made relative
    (`<pipeline>/sft`), so fingerprints do not depend on where the pipeline folder lives."""
    roots = sorted({os.path.abspath(root), os.path.normpath(root)}, key=len, reverse=True)
    out = {}
    for key, value in flatten(config).items():
        if key.split(".")[-1] in LOCATION_KEYS or is_added_default(key, value):
            continue
        for r in roots:
            if isinstance(value, str) and (value == r or value.startswith(r + os.sep)):
                value = "<pipeline>" + value[len(r):]
        out[key] = value
    return out


def is_added_default(key: str, value) -> bool:
    name = key.split(".")[-1]
    return name in ADDED_DEFAULTS and value == ADDED_DEFAULTS[name]


def input_files(config: dict, root: str, key_prefix: str = "") -> dict:
    """{path: config key} of the user files the config reads: `local:` entries (which must
    exist; a folder is fingerprinted by its files) and values naming an existing file outside
    the pipeline folder (preference files, prompt files)."""
    root = os.path.abspath(root)
    found = {}
    for key, value in flatten(config).items():
        if not isinstance(value, str) or key.split(".")[-1] in LOCATION_KEYS:
            continue
        for part in value.replace("=", ",").split(","):
            part = part.strip()
            local = part.startswith(LOCAL_PREFIX)
            path = part[len(LOCAL_PREFIX):] if local else part
            if not path or os.path.abspath(path).startswith(root + os.sep):
                continue
            if local and not os.path.exists(path):
                raise FileNotFoundError(
                    f"config {key_prefix}{key}: the local file {path} does not exist")
            if local or ("/" in path and os.path.isfile(path)):  # folders only as local:
                found.setdefault(os.path.abspath(path), key)
    return found


def file_digest(path: str) -> str:
    """sha256 of a file (by size and mtime above HASH_LIMIT); of its listing for a folder."""
    if os.path.isdir(path):
        listing = []
        for folder, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                p = os.path.join(folder, name)
                listing.append((os.path.relpath(p, path), file_digest(p)))
        return "dir:" + _sha(json.dumps(listing))
    stat = os.stat(path)
    if stat.st_size > HASH_LIMIT:
        return f"stat:{stat.st_size}:{stat.st_mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_record(config: dict, root: str, upstream: dict, key_prefix: str = "",
                digests: dict | None = None) -> dict:
    """{fingerprint, config, files, upstream}: what a stage records before it runs.
    key_prefix: where `config` sits in the pipeline config (for error messages); digests: a
    path → digest cache shared by one plan's stages (several read the same corpus)."""
    conf = canonical(config, root)
    digests = {} if digests is None else digests
    files = {}
    for path in sorted(input_files(config, root, key_prefix)):
        if path not in digests:
            digests[path] = file_digest(path)
        files[path] = digests[path]
    body = {"config": conf, "files": files, "upstream": dict(sorted(upstream.items()))}
    return {"fingerprint": _sha(json.dumps(body, sort_keys=True, default=str)), **body}


def why_changed(old: dict | None, new: dict, limit: int = 4) -> str:
    """What differs between a stored record and a new one, in a few words."""
    if not old:
        return "it has no fingerprint (run by an older jaxchat or outside the pipeline)"
    reasons = []
    a, b = old.get("config", {}), new["config"]
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    reasons += [f"{k} {a.get(k, '<unset>')!r} → {b.get(k, '<unset>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        reasons.append(f"{len(keys) - limit} more keys")
    fa, fb = old.get("files", {}), new["files"]
    reasons += [f"file {p} changed" for p in sorted(set(fa) | set(fb)) if fa.get(p) != fb.get(p)]
    ua, ub = old.get("upstream", {}), new["upstream"]
    reasons += [f"{s} changed" for s in sorted(set(ua) | set(ub)) if ua.get(s) != ub.get(s)]
    return "; ".join(reasons) or "its fingerprint differs"
