"""Shared by every source: walking folders safely, and turning .gguf paths into FoundModels.

A source only decides *where* to look and *how to name* what it finds; reading headers,
grouping split parts, attaching vision projectors and skipping non-models happen here.
"""

from __future__ import annotations

import errno
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from app.core.catalog.discovery.found import FoundModel, ScanProblem, ScanResult
from app.core.catalog.gguf.header import GGUFError, GGUFHeader
from app.core.catalog.gguf.reader import read_header

# llama.cpp's gguf-split names parts "<base>-00001-of-00003.gguf" (1-based; split.no is 0-based), on disk and on the
# hub alike.
SPLIT_NAME = re.compile(r"(?P<base>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf", re.IGNORECASE)
# Quantization suffixes as uploaders write them: ".Q4_1", "-Q4_K_M", "-UD-Q4_K_XL", "-IQ2_XXS", "-BF16", ...
_QUANT_SUFFIX = re.compile(
    r"[-._](?:UD-)?(?:I?Q\d+(?:_[A-Z0-9]+)*|TQ\d_\d|B?F16|F32|F64|MXFP4(?:_MOE)?)\Z", re.IGNORECASE
)


def is_gguf_name(name: str) -> bool:
    return name.lower().endswith(".gguf")


@dataclass(slots=True)
class GGUFGroup:
    """One model's files: its split parts in order (or the single file) and the projector beside it."""

    header: GGUFHeader  # header of part 1
    parts: list[str]
    size: int  # bytes over all parts, from the headers (no extra stat)
    stem: str  # part 1's file name without the split suffix and ".gguf"
    projector: str | None = None


def _read_or_report(path: str, source: str, problems: list[ScanProblem]) -> GGUFHeader | None:
    """read_header, with a bad file turned into a problem instead of an exception."""
    try:
        return read_header(path)
    except GGUFError as exc:
        problems.append(ScanProblem(path, source, exc.reason))
        return None


def not_a_model_reason(header: GGUFHeader) -> str | None:
    """Why a valid GGUF file cannot be run as a model on its own, or None if it can."""
    if header.is_projector:
        return "vision projector (mmproj), not a model"
    if header.is_vocab_only:
        return "vocab-only GGUF (tokenizer without weights), not a model"
    return None


def quant_tag(header: GGUFHeader) -> str:
    return (header.quantization or "gguf").lower()


def file_model_name(stem: str) -> str:
    """The name without its quantization: "SmolLM2-135M-Instruct.Q4_1" -> "smollm2-135m-instruct"."""
    return (_QUANT_SUFFIX.sub("", stem, count=1) or stem).lower()


def found_model(group: GGUFGroup, source: str, name: str, tag: str) -> FoundModel:
    return FoundModel(
        name=name,
        tag=tag,
        source=source,
        path=group.parts[0],
        header=group.header,
        parts=list(group.parts),
        projector=group.projector,
        size=group.size,
        display_name=group.header.name or name,
    )


def group_files(
    paths: Iterable[str], source: str, *, projectors_per_dir: bool = True
) -> tuple[list[GGUFGroup], list[ScanProblem]]:
    """Read each file's header once and group the files into models.

    Split parts become one model, projectors attach to the models in their directory (or, with
    projectors_per_dir=False, to every model given: one HF repo keeps quantizations in subfolders),
    and every file that does not end up in a model is reported with the reason.
    """
    problems: list[ScanProblem] = []
    groups: list[GGUFGroup] = []
    # (dir, base, count) -> {part no (1-based): (path, header)}
    splits: dict[tuple[str, str, int], dict[int, tuple[str, GGUFHeader]]] = defaultdict(dict)
    projectors: dict[str, list[GGUFHeader]] = defaultdict(list)

    def scope(path: str) -> str:
        return os.path.dirname(path) if projectors_per_dir else ""

    for path in paths:
        header = _read_or_report(path, source, problems)
        if header is None:
            continue
        if header.is_projector:
            projectors[scope(path)].append(header)
            continue
        match = SPLIT_NAME.fullmatch(os.path.basename(path))
        if match and int(match["count"]) > 1:
            no, count = int(match["no"]), int(match["count"])
            if (header.split_no + 1, header.split_count) != (no, count):
                problems.append(ScanProblem(path, source, (
                    f"file name says split part {no} of {count}, "
                    f"but its header says part {header.split_no + 1} of {header.split_count}"
                )))
                continue
            splits[(os.path.dirname(path), match["base"], count)][no] = (path, header)
            continue
        if header.split_count > 1:
            # Without the standard name the other parts cannot be found (llama.cpp can't either).
            problems.append(ScanProblem(path, source, (
                f"split part {header.split_no + 1} of {header.split_count} "
                "not named <name>-0000N-of-0000M.gguf"
            )))
            continue
        reason = not_a_model_reason(header)
        if reason:
            problems.append(ScanProblem(path, source, reason, skipped=True))
            continue
        groups.append(GGUFGroup(header, [path], header.file_size, _stem(path)))

    for (_dir, base, count), found in splits.items():
        missing = [no for no in range(1, count + 1) if no not in found]
        if missing:
            first_path = found[min(found)][0]
            problems.append(ScanProblem(first_path, source, (
                f"split model {base} is incomplete: missing part(s) "
                f"{', '.join(map(str, missing))} of {count}"
            )))
            continue
        ordered = [found[no] for no in range(1, count + 1)]
        groups.append(GGUFGroup(
            header=ordered[0][1],
            parts=[path for path, _ in ordered],
            size=sum(header.file_size for _, header in ordered),
            stem=base,
        ))

    _attach_projectors(groups, projectors, scope, source, problems)
    groups.sort(key=lambda group: group.parts[0])
    return groups, problems


def _attach_projectors(
    groups: list[GGUFGroup],
    projectors: dict[str, list[GGUFHeader]],
    scope: Callable[[str], str],
    source: str,
    problems: list[ScanProblem],
) -> None:
    scopes_with_models = {scope(group.parts[0]) for group in groups}
    for key, headers in projectors.items():
        if key not in scopes_with_models:
            problems.extend(
                ScanProblem(h.path, source, "vision projector (mmproj) with no model beside it", skipped=True)
                for h in headers
            )
    for group in groups:
        candidates = projectors.get(scope(group.parts[0]))
        if candidates:
            # Repos often ship f16 and f32 projectors; the smaller one works the same and costs less memory.
            group.projector = min(candidates, key=lambda h: (h.file_size, h.path)).path


def models_from_files(paths: Iterable[str], source: str) -> ScanResult:
    """Models named after their files: "SmolLM2-135M-Instruct.Q4_1.gguf" -> smollm2-135m-instruct:q4_1."""
    groups, problems = group_files(paths, source)
    models = [found_model(g, source, file_model_name(g.stem), quant_tag(g.header)) for g in groups]
    return ScanResult(models, problems)


def _stem(path: str) -> str:
    name = os.path.basename(path)
    return name[:-5] if is_gguf_name(name) else name


def walk_files(
    root: str,
    source: str,
    problems: list[ScanProblem],
    *,
    want: Callable[[str], bool],
    seen_dirs: set[str] | None = None,
) -> list[str]:
    """Files under `root` whose name `want` accepts, following symlinks, in a stable order.

    Never raises: unreadable folders, dangling links and symlink loops become problems.
    `seen_dirs` (real paths) can be shared between roots so a folder reached twice is read once.
    """
    seen = set() if seen_dirs is None else seen_dirs
    root_real = os.path.realpath(root)
    if root_real in seen:
        return []
    seen.add(root_real)
    found: list[str] = []
    stack = [(root, root_real)]
    while stack:
        path, real = stack.pop()
        try:
            with os.scandir(path) as it:
                # Plain entries first: a link to a sibling folder is then recognised as an alias
                # and not walked instead of it (paths stay the ones the user sees in the tree).
                entries = sorted(it, key=lambda entry: (entry.is_symlink(), entry.name))
        except OSError as exc:
            problems.append(ScanProblem(path, source, f"cannot read folder: {exc.strerror or exc}"))
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError as exc:  # a link loop among files, or an unreadable entry
                problems.append(ScanProblem(entry.path, source, _os_reason(exc)))
                continue
            if is_dir:
                # Only a symlink can lead somewhere else; a plain folder's real path is known for free.
                child_real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
                if os.path.commonpath([child_real, real]) == child_real:
                    problems.append(ScanProblem(entry.path, source, f"symlink loop: points back to {child_real}"))
                elif child_real not in seen:  # else: an alias of a folder already walked
                    seen.add(child_real)
                    subdirs.append((entry.path, child_real))
            elif is_file:
                if want(entry.name):
                    found.append(entry.path)
            elif entry.is_symlink() and want(entry.name):
                # Only links named like what we look for are worth a report; others are not ours.
                problems.append(ScanProblem(entry.path, source, _dangling_reason(entry.path)))
        stack.extend(reversed(subdirs))
    return found


def _dangling_reason(path: str) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        return _os_reason(exc)
    return "not a regular file"


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink: target does not exist"
    return f"cannot read: {exc.strerror or exc}"


def expand_user(path: str, home: str) -> str:
    """os.path.expanduser against an injectable home (tests never see the real one)."""
    if path == "~" or path.startswith("~" + os.sep):
        return home + path[1:]
    return path
