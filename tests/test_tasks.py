"""Typed contracts: the Task of each model, the trained-model class load_model returns, declared hooks."""

from __future__ import annotations

import json

import pytest

from hits_stamps.api import StampClassifier
from hits_stamps.datasets import make_synthetic_stamps
from hits_stamps.errors import HitsStampsError
from hits_stamps.models.registry import HOOKS, ModelSpec, Recipe, get_spec, model_names
from hits_stamps.montecarlo import predict_samples
from hits_stamps.tasks import Task
from hits_stamps.training import TrainConfig, TrainedClassifier, TrainedGenerator, fit, load_model


def test_task_is_its_string_in_json_and_comparisons():
    assert json.dumps({"task": Task.BAYESIAN_CLASSIFIER}) == '{"task": "bayesian-classifier"}'
    assert f"{Task.GENERATOR}" == "generator" and Task.CLASSIFIER == "classifier"
    assert [t.classifies for t in Task] == [True, True, False]
    assert [t.bayesian for t in Task] == [False, True, False]
    assert {get_spec(n).task for n in ("seed-cnn", "seed-bnn", "cvae")} == set(Task)


def test_spec_converts_and_checks_task_and_hooks():
    spec = ModelSpec("toy", "classifier", lambda **kw: None, lambda *a: None, Recipe())
    assert spec.task is Task.CLASSIFIER and spec.hooks == frozenset()
    with pytest.raises(HitsStampsError, match=r"model 'toy': task must be one of .*got 'regressor'"):
        ModelSpec("toy", "regressor", lambda **kw: None, lambda *a: None, Recipe())
    with pytest.raises(HitsStampsError, match=r"model 'toy': unknown hooks \['post_fitt'\]"):
        ModelSpec("toy", "generator", lambda **kw: None, lambda *a: None, Recipe(), hooks={"post_fitt"})
    with pytest.raises(ValueError, match="mc_samples must be an integer >= 1; got 0"):
        Recipe(mc_samples=0)


@pytest.mark.parametrize("name", model_names())
def test_declared_hooks_are_the_hooks_the_module_has(name):
    spec = get_spec(name)
    kwargs = dict(spec.default_kwargs)
    if kwargs.get("condition") == "auto":  # resolved on the training data by the loop
        kwargs["condition"] = "class"
    module = spec.builder(in_channels=4, size=(21, 21), **kwargs)
    has = {h for h in HOOKS if callable(getattr(module, h, None))}
    assert has == spec.hooks, f"{name}: declares {sorted(spec.hooks)}, its module has {sorted(has)}"


def test_load_model_returns_a_classifier_or_a_generator(tmp_path):
    toy = make_synthetic_stamps(64, seed=2)
    clf = fit(TrainConfig(model="seed-cnn", epochs=1, steps_per_epoch=2), toy, tmp_path / "c", progress=False)
    gen = fit(TrainConfig(model="cvae", epochs=1, steps_per_epoch=2,
                          model_kwargs={"latent_dim": 3, "base_channels": 4, "hidden": 16}),
              toy, tmp_path / "g", progress=False)
    assert type(clf) is TrainedClassifier and type(load_model(tmp_path / "c")) is TrainedClassifier
    assert type(gen) is TrainedGenerator and type(load_model(tmp_path / "g")) is TrainedGenerator
    assert clf.predict_proba(toy[:5]).shape == (5, 2) and clf.mc_samples == Recipe().mc_samples
    assert not hasattr(gen, "predict_proba") and not hasattr(gen, "mc_samples")
    with pytest.raises(HitsStampsError, match="cvae is a generator; it does not classify stamps"):
        predict_samples(gen, toy[:5])
    assert json.loads((tmp_path / "g" / "config.json").read_text())["task"] == "generator"
    with pytest.raises(HitsStampsError, match="cvae is a generator; a StampClassifier needs a trained classifier"):
        StampClassifier.from_dir(tmp_path / "g")
    with pytest.raises(HitsStampsError, match="'diffusion' is a generator; a StampClassifier trains classifiers"):
        StampClassifier(model="diffusion").fit(toy)
    assert StampClassifier.from_dir(tmp_path / "c").predict_proba(toy[:3]).shape == (3, 2)
