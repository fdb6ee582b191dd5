"""Fuzzing the config loader: whatever comes in, only ConfigError comes out."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.config import TrainConfig, load_config
from lorakit.errors import ConfigError

KEYS = [*TrainConfig.model_fields, "toy", "sd", "llm", "lora_rnk", "distributed"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["2e-4", "1e3", "-0", ".inf", "fp16", "adamw", "a/b"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
configs = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def load_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        try:
            load_config(path)
        except ConfigError as exc:
            assert "\n" not in str(exc)


@FUZZ
@given(st.text(max_size=200))
def test_random_text(toy_plugins, text):
    load_text(text)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(toy_plugins, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(data)
        try:
            load_config(path)
        except ConfigError as exc:
            assert "\n" not in str(exc)


@FUZZ
@given(configs)
def test_random_values_for_real_keys(toy_plugins, data):
    base = {"task_type": "toy-regression", "base_model": "a/b", "train_data_dir": "."}
    text = yaml.safe_dump({**base, **data}, allow_unicode=True)
    load_text(text)


@FUZZ
@given(st.lists(st.text(max_size=30), max_size=4))
def test_random_overrides(toy_plugins, overrides):
    base = {"task_type": "toy-regression", "base_model": "a/b", "train_data_dir": "."}
    try:
        load_config(data=base, overrides=overrides)
    except ConfigError as exc:
        assert "\n" not in str(exc)
