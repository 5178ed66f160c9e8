"""Models downloaded into the Hugging Face cache (huggingface_hub, llama.cpp -hf, LM tools using the hub)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping

from huggingface_hub import CacheNotFound, scan_cache_dir

from app.core.catalog.discovery.files import expand_user, found_model, group_files, is_gguf_name, quant_tag
from app.core.catalog.discovery.found import ScanProblem, ScanResult

SOURCE = "hf"


def hf_cache_dir(env: Mapping[str, str] | None = None, home: str | None = None) -> str:
    """The hub cache huggingface_hub itself would use, resolved now (not at import time as it does)."""
    env = os.environ if env is None else env
    home = os.path.expanduser("~") if home is None else home
    cache_home = env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    hf_home = env.get("HF_HOME") or os.path.join(cache_home, "huggingface")
    path = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(hf_home, "hub")
    return expand_user(os.path.expandvars(path), home)


def scan_hf_cache(cache_dir: str | os.PathLike[str] | None = None) -> ScanResult:
    """GGUF models in the newest cached revision of each model repo; never raises."""
    cache_dir = hf_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return ScanResult()  # nothing downloaded from the hub on this machine
    except (OSError, ValueError) as exc:  # the cache path is a file, or a refs file is unreadable
        return ScanResult(problems=[ScanProblem(cache_dir, SOURCE, f"cannot read the Hugging Face cache: {exc}")])

    # scan_cache_dir keeps going past a corrupted repo and hands back why it skipped it.
    result = ScanResult(problems=[ScanProblem(cache_dir, SOURCE, str(warning)) for warning in info.warnings])
    for repo in sorted(info.repos, key=lambda repo: repo.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda rev: (rev.last_modified, rev.commit_hash))
        paths = sorted(str(f.file_path) for f in newest.files if is_gguf_name(f.file_name))
        # One repo keeps its quantizations side by side or in subfolders: its projector serves them all.
        groups, problems = group_files(paths, SOURCE, projectors_per_dir=False)
        result.problems.extend(problems)
        quant_counts = Counter(quant_tag(group.header) for group in groups)
        for group in groups:
            tag = quant_tag(group.header)
            name = repo.repo_id if quant_counts[tag] == 1 else f"{repo.repo_id}/{group.stem}"
            result.models.append(found_model(group, SOURCE, name.lower(), tag))
    return result
