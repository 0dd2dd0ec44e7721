"""Storage options: one resolution order for configuration, environment and command line."""

from __future__ import annotations

import pytest

from imaxt_pipeline.errors import ConfigError
from imaxt_pipeline.io.storage import (
    ENDPOINT_ENV,
    normalise_storage_options,
    parse_storage_options,
    resolve_storage_options,
)


def test_later_sources_win_and_the_endpoint_is_one_setting():
    config = {"anon": True, "client_kwargs": {"endpoint_url": "http://cfg", "region_name": "eu"}}
    env = {ENDPOINT_ENV: "http://env"}
    assert resolve_storage_options(config=config, environ={}) == {
        "anon": True,
        "client_kwargs": {"region_name": "eu"},
        "endpoint_url": "http://cfg",
    }
    assert resolve_storage_options(config=config, environ=env)["endpoint_url"] == "http://env"
    assert resolve_storage_options(config=config, options='{"anon": false}', environ=env) == {
        "anon": False,
        "client_kwargs": {"region_name": "eu"},
        "endpoint_url": "http://env",
    }
    assert (
        resolve_storage_options(
            config=config, options={"endpoint_url": "http://json"}, endpoint_url="http://flag", environ=env
        )["endpoint_url"]
        == "http://flag"
    )
    assert resolve_storage_options(environ={ENDPOINT_ENV: ""}) == {}
    assert config == {"anon": True, "client_kwargs": {"endpoint_url": "http://cfg", "region_name": "eu"}}  # untouched


def test_resolution_is_idempotent():
    """The CLI resolves, then a launcher merges the config under it again: same answer."""
    env = {ENDPOINT_ENV: "http://env"}
    once = resolve_storage_options(options='{"key": "k"}', environ=env)
    assert resolve_storage_options(
        config={"endpoint_url": "http://cfg"}, options=once, environ=env
    ) == resolve_storage_options(config={"endpoint_url": "http://cfg"}, options='{"key": "k"}', environ=env)


@pytest.mark.parametrize(("text", "match"), [("{bad", "not valid JSON"), ('"x"', "must be a JSON object")])
def test_bad_json_is_a_config_error(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_storage_options(text)


def test_normalise_moves_the_endpoint_for_s3_only():
    opts = {"endpoint_url": "http://e", "anon": True}
    assert normalise_storage_options("s3://b/p", opts) == {"anon": True, "client_kwargs": {"endpoint_url": "http://e"}}
    assert normalise_storage_options("/local/p", opts) == opts and opts == {"endpoint_url": "http://e", "anon": True}
