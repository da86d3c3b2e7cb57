"""Settings: defaults, then environment, then overrides; the README documents every variable."""

from __future__ import annotations

import re
from pathlib import Path

from layerq.config import Settings, env_var_names

ROOT = Path(__file__).resolve().parents[1]


def test_environment_then_overrides():
    env = {"LAYERQ_URL_TTL_S": "60", "LAYERQ_S3_CREATE_BUCKET": "true", "LAYERQ_MODEL": "tiny"}
    s = Settings.from_env(env, model="/models/x")
    assert s.url_ttl_s == 60 and s.s3_create_bucket is True and s.model == "/models/x"
    assert Settings.from_env({}).model == "Qwen/Qwen-Image-Layered"


def test_as_env_round_trips():
    s = Settings.from_env({}, url_ttl_s=42, s3_create_bucket=True, export_formats="psd,ora")
    assert Settings.from_env(s.as_env()) == s
    assert s.export_format_list == ("psd", "ora")


def test_readme_table_lists_every_variable():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(LAYERQ_[A-Z0-9_]+)` \|", readme, flags=re.M))
    assert documented == set(env_var_names())


def test_visibility_timeout_default_exceeds_hard_limit():
    s = Settings()
    assert s.visibility_timeout_s > s.job_time_limit_s > s.job_soft_time_limit_s
