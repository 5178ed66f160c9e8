"""The hub's pure parts: model specs, a repository's files grouped into models, the file a pull picks, and a header
parsed from the first bytes of a file as range requests fetch them."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.catalog import hub
from app.core.catalog.gguf.header import GGUFError
from app.core.catalog.gguf.reader import read_header
from app.core.errors import InvalidRequest, ModelNotFound, ModelUnavailable
from tests.support.gguf_files import FILE_TYPES, write_gguf
from tests.support.models import find_default_model

GiB = 1 << 30


def test_a_spec_is_a_repo_and_an_optional_quant() -> None:
    assert hub.parse_spec("bartowski/Qwen2.5-0.5B-Instruct-GGUF") == ("bartowski/Qwen2.5-0.5B-Instruct-GGUF", None)
    assert hub.parse_spec(" owner/repo:Q4_K_M ") == ("owner/repo", "q4_k_m")
    for bad in ("", "repo", "owner/repo/extra", "../x/y", "owner/..", "owner/repo:q4 k", "/repo", "owner/"):
        with pytest.raises(InvalidRequest):
            hub.parse_spec(bad)


def listing() -> hub.RepoListing:
    return hub.group_listing("o/r", "abc", [
        ("Model-Q4_K_M.gguf", 4 * GiB),
        ("Model-Q8_0.gguf", 8 * GiB),
        ("big/Model-F16-00002-of-00002.gguf", 7 * GiB),
        ("big/Model-F16-00001-of-00002.gguf", 9 * GiB),
        ("broken/Model-BF16-00001-of-00003.gguf", GiB),
        ("mmproj-model-f16.gguf", GiB // 2),
    ])


def test_split_parts_are_one_model_in_order_and_projectors_stand_apart() -> None:
    found = listing()
    assert [(m.stem, m.files, m.size, m.quant) for m in found.models] == [
        ("Model-Q4_K_M", ("Model-Q4_K_M.gguf",), 4 * GiB, "q4_k_m"),
        ("Model-Q8_0", ("Model-Q8_0.gguf",), 8 * GiB, "q8_0"),
        ("Model-F16", ("big/Model-F16-00001-of-00002.gguf", "big/Model-F16-00002-of-00002.gguf"), 16 * GiB, "f16"),
    ]
    assert [p.files for p in found.projectors] == [("mmproj-model-f16.gguf",)]
    assert found.incomplete == ["Model-BF16"]


@pytest.mark.parametrize("size", [None, 0, -1, True, "12", 1 << 50])
def test_a_size_the_hub_gets_wrong_is_refused(size: object) -> None:
    with pytest.raises(ModelUnavailable):
        hub.group_listing("o/r", None, [("m.gguf", size)])


def test_a_pull_picks_the_quant_asked_for_else_q4_k_m_else_the_smallest() -> None:
    found = listing()
    assert hub.choose(found, "q8_0").stem == "Model-Q8_0"
    assert hub.choose(found, "model-f16").stem == "Model-F16"
    assert hub.choose(found, None).stem == "Model-Q4_K_M"
    no_q4 = hub.group_listing("o/r", None, [("a-Q8_0.gguf", 8), ("b-Q6_K.gguf", 6)])
    assert hub.choose(no_q4, None).stem == "b-Q6_K"
    with pytest.raises(ModelNotFound, match="q2_k.*offers: f16, q4_k_m, q8_0"):
        hub.choose(found, "q2_k")
    with pytest.raises(InvalidRequest):
        hub.choose(hub.group_listing("o/r", None, [("mmproj-x.gguf", 5)]), None)


class Fetcher:
    """Serves byte ranges of a local file, as the hub answers range requests, and counts what it served."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.served = 0
        self.calls = 0

    def __call__(self, start: int, end: int) -> bytes:
        self.calls += 1
        self.served += end - start
        return self.data[start:end]


def test_the_header_comes_from_the_first_bytes_only() -> None:
    path = find_default_model()
    fetch = Fetcher(path)
    header = hub.header_from_prefix(fetch, path.stat().st_size, "o/r/model.gguf")
    local = read_header(path)
    assert header.metadata == local.metadata and header.file_size == local.file_size
    assert header.tensor_parameters == local.tensor_parameters
    assert fetch.served <= hub.FIRST_HEADER_BYTES < path.stat().st_size // 10


def test_a_header_longer_than_the_first_read_is_fetched_on(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", vocab_size=300_000, file_type=FILE_TYPES["Q8_0"])
    assert path.stat().st_size > hub.FIRST_HEADER_BYTES
    fetch = Fetcher(path)
    header = hub.header_from_prefix(fetch, path.stat().st_size, "o/r/m.gguf")
    assert header.metadata == read_header(path).metadata
    assert fetch.calls == 2 and fetch.served == path.stat().st_size  # the header is nearly the whole file here


def test_a_file_cut_short_or_not_gguf_is_an_error_without_reading_on(tmp_path: Path) -> None:
    path = find_default_model()
    fetch = Fetcher(path)
    # The listing says the file is shorter than its tensors need: a truncated upload.
    with pytest.raises(GGUFError, match="truncated: tensor data needs"):
        hub.header_from_prefix(fetch, path.stat().st_size - (1 << 20), "o/r/m.gguf")
    assert fetch.calls == 1
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"<html>not found</html>" * 100)
    fetch = Fetcher(junk)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        hub.header_from_prefix(fetch, junk.stat().st_size, "o/r/junk.gguf")
    assert fetch.calls == 1
    with pytest.raises(GGUFError):
        hub.header_from_prefix(fetch, 0, "o/r/empty.gguf")
