"""The query translator: capabilities, prompt text and context estimate from raw request bodies."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.routing.needs import CODE, IMAGE_PLACEHOLDER, QueryNeeds, translate
from tests.support.examples import examples


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": list(messages), **extra}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# -- hard capabilities and text ----------------------------------------------------------------
def test_plain_chat() -> None:
    needs = translate("chat", chat({"role": "system", "content": "Be brief."}, user("What is 2+2?"), max_tokens=50))
    assert isinstance(needs, QueryNeeds)
    assert needs.hard == {"chat"} and needs.soft == frozenset()
    assert needs.text == "system: Be brief.\nuser: What is 2+2?\n"
    assert needs.prompt_tokens_estimate == math.ceil(len(needs.text) / 4)
    assert needs.min_context == needs.prompt_tokens_estimate + 1  # max_tokens is a ceiling, not a need


def test_endpoint_names_and_paths() -> None:
    assert translate("/v1/chat/completions", chat(user("hi"))).hard == {"chat"}
    assert translate("/v1/completions", {"prompt": "Once"}).hard == {"completion"}
    assert translate("v1/embeddings", {"input": "x"}).hard == {"embeddings"}
    assert translate("somewhere-else", {"prompt": "Once"}).hard == frozenset()
    assert translate("somewhere-else", {"prompt": "Once"}).text == "Once"


def test_explicit_capabilities_are_hard_and_lower_cased() -> None:
    body = chat(user("hi"), capabilities=[" Vision", "ARABIC_NLP", "", 7])
    assert translate("chat", body).hard == {"chat", "vision", "arabic_nlp"}
    assert translate("chat", chat(user("hi"), capabilities="Tools")).hard == {"chat", "tools"}


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    {"type": "input_image", "image_url": "https://example.com/cat.png"},
])
def test_images_need_vision(part: dict[str, Any]) -> None:
    needs = translate("chat", chat(user([{"type": "text", "text": "What is this?"}, part])))
    assert needs.hard == {"chat", "vision"}
    assert needs.text == f"user: What is this?\n{IMAGE_PLACEHOLDER}\n"


def test_tools_and_legacy_functions_need_tools() -> None:
    tool = {"type": "function", "function": {"name": "weather", "parameters": {}}}
    assert "tools" in translate("chat", chat(user("rain?"), tools=[tool])).hard
    assert "tools" in translate("chat", chat(user("rain?"), functions=[tool["function"]])).hard
    assert "tools" not in translate("chat", chat(user("rain?"), tools=[])).hard
    assert "tools" not in translate("chat", chat(user("rain?"), tools=None)).hard


def test_tool_calls_are_part_of_the_text() -> None:
    call = {"id": "1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    needs = translate("chat", chat(user("rain?"), {"role": "assistant", "content": None, "tool_calls": [call]},
                                   {"role": "tool", "content": "sunny", "tool_call_id": "1"}))
    assert needs.text == 'user: rain?\nassistant: weather({"city": "Oslo"})\ntool: sunny\n'


def test_completions_and_embeddings_text() -> None:
    assert translate("completion", {"prompt": ["Once upon"], "max_tokens": 16}).text == "Once upon"
    needs = translate("embeddings", {"input": ["alpha", "beta"]})
    assert needs.text == "alpha\nbeta" and needs.hard == {"embeddings"}
    # Token ids count exactly; they have no text.
    tokens = translate("embeddings", {"input": [[1, 2, 3], [4, 5]]})
    assert tokens.text == "" and tokens.prompt_tokens_estimate == 5
    assert translate("completion", {"prompt": [1, 2, 3, True]}).prompt_tokens_estimate == 3


def test_completion_budget() -> None:
    base = translate("chat", chat(user("x" * 40))).prompt_tokens_estimate
    assert base == 12  # "user: " + 40 x + "\n" = 47 chars, 11.75 tokens rounded up
    # A budget of any size asks only for room for the prompt and one token: the worker stops at the context's end.
    for budget in ({}, {"max_completion_tokens": 100}, {"max_tokens": 32_000}, {"max_tokens": True}):
        assert translate("chat", chat(user("x" * 40), **budget)).min_context == base + 1
    assert translate("chat", chat(user("x" * 40)), chars_per_token=2.0).prompt_tokens_estimate == 24
    with pytest.raises(ValueError):
        translate("chat", chat(user("x")), chars_per_token=0)


def test_the_text_of_turn_n_is_a_prefix_of_turn_n_plus_one() -> None:
    turns = [{"role": "system", "content": "Be kind."}, user("Hello"),
             {"role": "assistant", "content": "Hi! How can I help?"},
             user([{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "x"}}])]
    texts = [translate("chat", chat(*turns[:n])).text for n in range(1, len(turns) + 1)]
    for shorter, longer in zip(texts, texts[1:]):
        assert longer.startswith(shorter) and len(longer) > len(shorter)
    assert translate("chat", chat(*turns)).text == texts[-1]  # deterministic


# -- soft: scripts -----------------------------------------------------------------------------
SAMPLES = {
    "arabic_nlp": "ما هي عاصمة فرنسا؟ أريد إجابة قصيرة من فضلك",
    "hebrew_nlp": "מהי בירת צרפת? אני רוצה תשובה קצרה בבקשה",
    "cyrillic_nlp": "Какая столица Франции? Ответь коротко, пожалуйста",
    "greek_nlp": "Ποια είναι η πρωτεύουσα της Γαλλίας; Απάντησε σύντομα",
    "devanagari_nlp": "फ्रांस की राजधानी क्या है? कृपया संक्षेप में उत्तर दें",
    "cjk_nlp": "法国的首都是哪里？请简短回答。",
    "korean_nlp": "프랑스의 수도는 어디입니까? 짧게 대답해 주세요",
    "thai_nlp": "เมืองหลวงของฝรั่งเศสคืออะไร กรุณาตอบสั้นๆ",
}


@pytest.mark.parametrize("tag", sorted(SAMPLES))
def test_script_detection(tag: str) -> None:
    assert translate("chat", chat(user(SAMPLES[tag]))).soft == {tag}


def test_japanese_is_kana_and_han_counts_on_its_own() -> None:
    # Mostly kana: Japanese only (4 Han characters are under 20 % of the letters).
    assert translate("chat", chat(user("フランスの首都はどこですか？短く答えてください。"))).soft == {"japanese_nlp"}
    # Kanji-heavy Japanese is both.
    soft = translate("chat", chat(user("日本国憲法は国民主権、基本的人権の尊重、平和主義を基本原理とする。"))).soft
    assert soft == {"japanese_nlp", "cjk_nlp"}


def test_a_script_must_be_a_meaningful_share_or_count() -> None:
    english = "Please translate the following word into English and explain its etymology in detail. " * 3
    # One short Arabic word in a long English request: under 20 % and under 20 letters.
    assert translate("chat", chat(user(english + "مرحبا"))).soft == frozenset()
    # A whole sentence is 20+ letters however long the English around it.
    assert "arabic_nlp" in translate("chat", chat(user(english + SAMPLES["arabic_nlp"]))).soft
    # A short request mostly in the script counts by share.
    assert translate("chat", chat(user("Translate: спасибо"))).soft == {"cyrillic_nlp"}
    # A lone Greek letter in maths is not Greek text; accented Latin is no script tag at all.
    assert translate("chat", chat(user("Compute π r² for r = 2"))).soft == frozenset()
    assert translate("chat", chat(user("Un café crème, s'il vous plaît, à côté de la fenêtre"))).soft == frozenset()


def test_scripts_in_completions_and_embeddings() -> None:
    assert translate("completion", {"prompt": SAMPLES["korean_nlp"]}).soft == {"korean_nlp"}
    assert translate("embeddings", {"input": [SAMPLES["hebrew_nlp"]]}).soft == {"hebrew_nlp"}


# -- soft: code --------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    "Why does this fail?\n```\nprint(x)\n```",
    "def area(r):\n    import math\n    return math.pi * r ** 2\nclass Circle:\n    pass",
    "Fix this:\nfunction add(a, b) {\n  return a + b;\n}",
    "#include <stdio.h>\nint main(void) {\n  printf(\"hi\");\n}",
    "import os\nimport sys\nfrom pathlib import Path",
])
def test_code_is_detected(content: str) -> None:
    assert CODE in translate("chat", chat(user(content))).soft


@pytest.mark.parametrize("content", [
    "Let me know what you think.\nlet me also ask: which class should I take?\nfrom what I hear, it's hard",
    "Write a poem about the sea.",
    "x = 1;\ny = 2;",  # two lines: not enough
    "Dear team,\nplease find the report attached.\nThanks,\nAnna",
])
def test_prose_is_not_code(content: str) -> None:
    assert CODE not in translate("chat", chat(user(content))).soft


# -- speed -------------------------------------------------------------------------------------
def test_a_2kb_chat_translates_in_tens_of_microseconds() -> None:
    system = "You are a helpful assistant. Answer concisely and cite your sources when you can. " * 6
    question = "Can you explain how photosynthesis works, and why most leaves are green in summer? " * 18
    body = chat({"role": "system", "content": system}, user(question),
                {"role": "assistant", "content": "Sure."}, user("More detail, please."), max_tokens=256)
    assert 1800 <= len(translate("chat", body).text) <= 2400
    runs = 2000
    best = min(_timed(body, runs) for _ in range(5)) / runs
    # ~12 µs on a developer machine; the bound leaves room for slow CI runners.
    assert best < 100e-6, f"{best * 1e6:.1f} µs per translate"


def _timed(body: dict[str, Any], runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        translate("chat", body)
    return time.perf_counter() - start


# -- properties --------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
keys = st.sampled_from(["messages", "prompt", "input", "capabilities", "tools", "functions", "max_tokens",
                        "max_completion_tokens", "model"])
parts = st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text", "image_url", "input_image", "x"]),
                               "text": json_values})
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]) | json_values,
     "content": st.text() | st.none() | st.lists(parts | json_values, max_size=4) | json_values},
    optional={"tool_calls": json_values | st.lists(st.fixed_dictionaries({"function": json_values}), max_size=3),
              "function_call": json_values},
), max_size=6)
endpoints = st.sampled_from(["chat", "completion", "embeddings", "/v1/chat/completions", "other"]) | st.text()


@settings(max_examples=examples(300), deadline=None)
@given(endpoint=endpoints, body=st.dictionaries(keys | st.text(max_size=8), json_values, max_size=8))
def test_never_raises_on_arbitrary_json(endpoint: str, body: dict[str, Any]) -> None:
    _check(translate(endpoint, body))


@settings(max_examples=examples(300), deadline=None)
@given(endpoint=endpoints, msgs=messages | json_values, extra=st.dictionaries(keys, json_values, max_size=4))
def test_never_raises_on_chat_shaped_bodies(endpoint: str, msgs: Any, extra: dict[str, Any]) -> None:
    _check(translate(endpoint, {**extra, "messages": msgs}))


@settings(max_examples=examples(200), deadline=None)
@given(msgs=messages, split=st.integers(min_value=0, max_value=6))
def test_prefix_property_holds_for_any_conversation(msgs: list[dict[str, Any]], split: int) -> None:
    shorter = translate("chat", {"messages": msgs[:split]}).text
    assert translate("chat", {"messages": msgs}).text.startswith(shorter)


@settings(max_examples=examples(100), deadline=None)
@given(body=json_values)
def test_non_mapping_bodies_are_empty(body: Any) -> None:
    _check(translate("chat", body))


def _check(needs: QueryNeeds) -> None:
    assert isinstance(needs.text, str)
    assert needs.prompt_tokens_estimate >= 0
    assert needs.min_context >= needs.prompt_tokens_estimate
    assert all(isinstance(c, str) and c == c.lower() for c in needs.hard | needs.soft)
