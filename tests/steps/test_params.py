"""Every step's parameters live in steps.params, once; the config's ``steps:`` model lists them in run order."""

from __future__ import annotations

from imaxt_pipeline.config import RunConfig
from imaxt_pipeline.steps import STEP_ORDER, step_module
from imaxt_pipeline.steps.params import STEP_PARAMS, StepsConfig


def test_each_step_exports_its_model_from_params_and_the_config_lists_them_in_order():
    assert list(StepsConfig.model_fields) == list(STEP_ORDER) == list(STEP_PARAMS)
    for name in STEP_ORDER:
        assert step_module(name).Params is STEP_PARAMS[name], name
        assert StepsConfig.model_fields[name].annotation is STEP_PARAMS[name], name
    cfg = RunConfig(input_url="a", output_url="b", steps={"register": {"max_gap": 3}})
    assert cfg.step("register").max_gap == 3 and cfg.steps.register.max_gap == 3
    assert isinstance(cfg.step("crops"), STEP_PARAMS["crops"])
