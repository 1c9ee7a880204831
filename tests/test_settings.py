"""Paths and parameters the settings name: one derivation each, shared by ingest, answering and doctor."""

from __future__ import annotations

import json

from rag.judge.params import default_params_text, load_params, params_for
from rag.settings import load_settings


def test_cache_files_default_to_the_data_dir(tmp_path):
    settings = load_settings(data_dir=tmp_path / "idx")
    assert settings.embed_cache_file() == tmp_path / "idx" / "embed_cache.sqlite"
    assert settings.evidence_cache_file() == tmp_path / "idx" / "evidence_cache.sqlite"


def test_cache_files_follow_their_settings(tmp_path):
    settings = load_settings(data_dir=tmp_path / "idx", embed_cache_path=tmp_path / "e.sqlite",
                             evidence_cache_path=tmp_path / "j.sqlite")
    assert settings.embed_cache_file() == tmp_path / "e.sqlite"
    assert settings.evidence_cache_file() == tmp_path / "j.sqlite"


def test_judgement_params_come_from_the_settings(tmp_path):
    shipped = load_params()
    assert params_for(load_settings(data_dir=tmp_path)) == shipped
    custom = json.loads(default_params_text())
    custom["abstention"]["abstain_below"] = 0.125
    path = tmp_path / "judgement.json"
    path.write_text(json.dumps(custom))
    assert params_for(load_settings(data_dir=tmp_path, judgement_params=path)).abstain_below == 0.125
