"""Recipe strings (registry, parsing, clear errors) and the accuracy-aware back-off search on the digits model."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from modelroll.errors import InvalidInput
from optimizer.recipes import BAD_RECIPE, GOOD_RECIPE, MINILM_RECIPE, TECHNIQUES, parse_recipe, recipe_slug, search
from optimizer.sources import DigitsModel, ModelSource, digits_eval_set


def accuracy(path: Path) -> float:
    inputs, labels = digits_eval_set()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    run = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return float((run.run(None, {"input": inputs})[0].argmax(axis=1) == labels).mean())


def test_recipes_parse_to_steps_with_every_parameter_and_print_back() -> None:
    recipe = parse_recipe("prune:0.5:heads=0.25, drop-layers, distill:steps=50, int8-static:entropy:per_channel=false")
    assert [s.technique for s in recipe.steps] == ["prune", "drop-layers", "distill", "int8-static"]
    assert recipe.steps[0].options == {"amount": 0.5, "heads": 0.25}
    assert recipe.steps[3].options == {"method": "entropy", "per_channel": False, "exclude": 0, "smooth": 0.0}
    assert parse_recipe(str(recipe)) == recipe
    assert parse_recipe("int8-dynamic:per_channel").steps[0].options["per_channel"] is True
    assert recipe_slug(parse_recipe("prune:0.5,distill,int8")) == "prune0.5-distill-int8"
    assert set(TECHNIQUES) == {"prune", "drop-layers", "distill", "int8", "int8-static", "ov", "ov-int8", "ov-weights"}
    assert all(parse_recipe(text) for text in (GOOD_RECIPE, BAD_RECIPE, MINILM_RECIPE))


@pytest.mark.parametrize(("text", "message"), [
    ("", "non-empty"),
    ("sparsify:0.5", "unknown technique 'sparsify'.*accepted"),
    ("prune:1.5", r"amount='1.5' is not accepted: amount is float in \[0, 1\)"),
    ("prune:lots", "amount='lots' is not accepted"),
    ("prune:speed=3", "prune has no parameter 'speed'"),
    ("int8-static:magic", "method='magic' is not accepted: method is one of"),
    ("distill:steps=0", "steps='0' is not accepted"),
    ("int8,int8-static", "quantizes twice"),
    ("int8,prune:0.5", "prune must come before the quantization"),
    ("distill,int8", "put it after prune or drop-layers"),
    ("prune:0.5,,int8", "empty step"),
    ("prune:0.5:0.6", "cannot read '0.6'"),
    ("prune:amount=0.5:amount=0.6", "given twice"),
])
def test_bad_recipes_are_refused_saying_what_is_accepted(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_recipe(text)


def test_search_prunes_less_when_the_float_model_is_at_fault(digits: DigitsModel, digits_src: ModelSource,
                                                             tmp_path: Path) -> None:
    result = search("prune:0.6,int8", digits_src, tmp_path, accuracy, max_quality_drop=0.02, max_tries=4)
    first, *rest = result.tries
    assert not first.passed and first.quality_drop > 0.02
    assert first.float_quality is not None and result.baseline_quality - first.float_quality > 0.02
    assert rest and rest[0].recipe.startswith("prune:amount=0.36") and rest[0].action.startswith("pruned less")
    assert result.best is result.tries[-1] and result.best.quality_drop <= 0.02
    assert result.best.quality == pytest.approx(accuracy(result.best.model_path))


def test_search_keeps_sensitive_nodes_in_float_and_records_every_try(digits_src: ModelSource,
                                                                     tmp_path: Path) -> None:
    # A budget no candidate can meet forces the quantization back-off all the way to max_tries.
    started: list[tuple[int, str, str]] = []  # what a progress bar is told as each try starts
    result = search("int8", digits_src, tmp_path, accuracy, max_quality_drop=-1.0, max_tries=3,
                    on_try=lambda *args: started.append(args))
    assert result.best is None
    assert [t.recipe for t in result.tries] == ["int8", "int8:exclude=1", "int8:exclude=2"]
    assert [(i, r) for i, r, _ in started] == [(0, "int8"), (1, "int8:exclude=1"), (2, "int8:exclude=2")]
    assert started[1][2].startswith("kept the 1 most sensitive weight nodes in float")
    excluded = [t.records[-1].detail["excluded_nodes"] for t in result.tries]
    assert excluded[0] == [] and len(excluded[1]) == 1 and excluded[2][:1] == excluded[1]
    assert all(t.model_path.is_file() and 0.9 < t.quality <= 1.0 for t in result.tries)
    with pytest.raises(InvalidInput, match="max_tries"):
        search("int8", digits_src, tmp_path, accuracy, max_tries=0)
