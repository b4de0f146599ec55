"""Specs: range normalisation, ``--set`` parsing and resolution, and one-sentence errors that name the key."""

import re

import numpy as np
import pytest

from dynsim import spec as S
from dynsim.spec import SpecError


def _one_sentence(message: str) -> bool:
    """One line, ending in a full stop or question mark, with no sentence break inside."""
    return "\n" not in message and len(re.findall(r"[.?!](?=\s|$)", message)) == 1 and message[-1] in ".?"


# ---------------------------------------------------------------------------------------------------------------
# validate(): normalisation


def test_logspace_expands_to_floats():
    out = S.validate({"sweep": {"lr": {"logspace": [-4, 1, 16]}}})
    lr = out["sweep"]["lr"]
    assert isinstance(lr, list) and len(lr) == 16
    assert all(type(v) is float for v in lr)
    np.testing.assert_allclose(lr, np.logspace(-4, 1, 16), rtol=1e-12)  # the same np.logspace in float64: round-off
    assert lr[0] == pytest.approx(1e-4) and lr[-1] == pytest.approx(10.0)  # float64 10^x: round-off (default rel 1e-6)


def test_geomspace_on_width_gives_ints():
    out = S.validate({"sweep": {"width": {"geomspace": [16, 1024, 7]}}})
    assert out["sweep"]["width"] == [16, 32, 64, 128, 256, 512, 1024]
    assert all(type(v) is int for v in out["sweep"]["width"])


def test_integer_range_rounds_and_drops_duplicates():
    # linspace(0, 2, 5) = 0, 0.5, 1, 1.5, 2 rounds to 0, 0, 1, 2, 2
    out = S.validate({"sweep": {"seed": {"linspace": [0, 2, 5]}}})
    assert out["sweep"]["seed"] == [0, 1, 2]


def test_linspace_on_float_axis_keeps_floats():
    out = S.validate({"sweep": {"momentum": {"linspace": [0, 0.9, 4]}}})
    np.testing.assert_allclose(out["sweep"]["momentum"], [0.0, 0.3, 0.6, 0.9])


def test_scalar_axis_becomes_list_and_input_is_not_mutated():
    spec = {"sweep": {"width": 64, "lr": {"logspace": [-2, 0, 3]}}, "train": {"steps": 20, "record_every": 10}}
    out = S.validate(spec)
    assert out["sweep"]["width"] == [64]
    assert len(out["sweep"]["lr"]) == 3
    assert spec["sweep"] == {"width": 64, "lr": {"logspace": [-2, 0, 3]}}  # the original is untouched


def test_validate_accepts_a_full_valid_spec_and_free_form_analysis():
    spec = {"experiment": "lr-transfer", "model": {"kind": "mlp", "depth": 3, "act": "tanh"},
            "task": {"d_in": 8, "n_train": 0, "n_test": 32, "teacher": "linear", "noise": 0.1, "seed": 4},
            "train": {"steps": 40, "record_every": 20, "batch_size": 8, "observables": ["loss", "test_loss"],
                      "betas": [0.9, 0.99], "diverge_factor": 100.0},
            "sweep": {"width": [8, 16], "lr": [0.1, 1], "seed": [0, 1], "param": ["sp", "mup"],
                      "optimizer": ["sgd", "adam"], "momentum": [0.0, 0.5], "weight_decay": [-0.1, 0.0]},
            "analysis": {"anything": {"nested": True}}}
    out = S.validate(spec, required=("task.d_in", "train.steps", "sweep.width", "sweep.lr"))
    assert out == spec


def test_every_experiment_default_and_quick_spec_is_valid():
    from dynsim import experiments

    for name in experiments.names():
        for quick in (False, True):
            exp, spec = experiments.resolve_spec(name, quick=quick)
            assert exp.name == name == spec["experiment"]
            assert all(isinstance(v, list) and v for v in spec.get("sweep", {}).values())  # engine experiments


# ---------------------------------------------------------------------------------------------------------------
# parse_set() / apply_sets()


@pytest.mark.parametrize("item,expected", [
    ("width=[64,256]", ("width", [64, 256])),
    ("train.steps=50", ("train.steps", 50)),
    ("lr=1e-3", ("lr", 1e-3)),
    ("param=mup", ("param", "mup")),  # a bare word is a string
    ("param=\"sp\"", ("param", "sp")),
    (" seed = [0, 1] ", ("seed", [0, 1])),
    ("lr={logspace=[-3,0,4]}", ("lr", {"logspace": [-3, 0, 4]})),
    ("analysis.metric=test_loss", ("analysis.metric", "test_loss")),
    ("train.steps=1\nx=2", ("train.steps", "1\nx=2")),  # not one TOML value: kept as text, not half-read
])
def test_parse_set(item, expected):
    assert S.parse_set(item) == expected


def test_apply_sets_resolves_bare_and_dotted_keys():
    base = {"task": {"d_in": 4, "seed": 0}, "train": {"steps": 10}, "sweep": {"width": [8], "lr": [0.1]}}
    out = S.apply_sets(base, ["width=[64,256]", "train.steps=50", "seed=[0,1]", "task.seed=3", "act=tanh",
                              "experiment=sweep"])
    assert out["sweep"]["width"] == [64, 256]
    assert out["train"]["steps"] == 50
    assert out["sweep"]["seed"] == [0, 1]  # a bare `seed` is the sweep axis ...
    assert out["task"]["seed"] == 3  # ... and task.seed the data seed
    assert out["model"]["act"] == "tanh"  # a section that was absent is created
    assert out["experiment"] == "sweep"
    assert base == {"task": {"d_in": 4, "seed": 0}, "train": {"steps": 10}, "sweep": {"width": [8], "lr": [0.1]}}


def test_apply_sets_later_wins_and_result_validates():
    out = S.apply_sets({}, ["lr=[0.1]", "lr={geomspace=[0.01,1,3]}", "width=16"])
    v = S.validate(out)
    np.testing.assert_allclose(v["sweep"]["lr"], [0.01, 0.1, 1.0])
    assert v["sweep"]["width"] == [16]


def test_merge_replaces_a_range_table_whole():
    base = {"sweep": {"lr": {"logspace": [-4, 1, 21]}, "width": [8]}, "task": {"d_in": 4, "n_train": 8}}
    out = S.merge(base, {"sweep": {"lr": {"geomspace": [0.01, 1, 3]}}, "task": {"n_train": 16}})
    assert out["sweep"] == {"lr": {"geomspace": [0.01, 1, 3]}, "width": [8]}
    assert out["task"] == {"d_in": 4, "n_train": 16}  # sections still merge key by key
    S.validate(out)


# ---------------------------------------------------------------------------------------------------------------
# bad specs: a SpecError whose message is one sentence that names the key

INF, NAN = float("inf"), float("nan")
BAD_SPECS = [
    # (id, spec, fragments the message must contain)
    ("unknown-top-key", {"experimnt": "sweep"}, ["'experimnt'", "did you mean 'experiment'"]),
    ("unknown-section", {"trian": {"steps": 10}}, ["'trian'", "did you mean 'train'"]),
    ("unknown-sweep-axis", {"sweep": {"widht": [4]}}, ["'sweep.widht'", "did you mean 'width'"]),
    ("unknown-model-key", {"model": {"dpeth": 3}}, ["'model.dpeth'", "did you mean 'depth'"]),
    ("section-not-table", {"model": 3}, ["'model'", "table"]),
    ("experiment-empty", {"experiment": ""}, ["'experiment'"]),
    ("steps-string", {"train": {"steps": "ten"}}, ["'train.steps'", "'ten'"]),
    ("steps-bool", {"train": {"steps": True}}, ["'train.steps'", "True"]),
    ("steps-zero", {"train": {"steps": 0}}, ["'train.steps'"]),
    ("lr-negative", {"sweep": {"lr": [-1]}}, ["'sweep.lr'", "-1"]),
    ("lr-zero", {"sweep": {"lr": [0.1, 0]}}, ["'sweep.lr'"]),
    ("lr-inf", {"sweep": {"lr": [INF]}}, ["'sweep.lr'"]),
    ("lr-nan", {"sweep": {"lr": NAN}}, ["'sweep.lr'"]),
    ("width-zero", {"sweep": {"width": [0, 8]}}, ["'sweep.width'"]),
    ("width-float", {"sweep": {"width": [8.5]}}, ["'sweep.width'"]),
    ("width-bool", {"sweep": {"width": [True]}}, ["'sweep.width'"]),
    ("seed-negative", {"sweep": {"seed": [-1]}}, ["'sweep.seed'"]),
    ("weight-decay-inf", {"sweep": {"weight_decay": [INF]}}, ["'sweep.weight_decay'"]),
    ("repeated", {"sweep": {"width": [64, 128, 64]}}, ["'sweep.width'", "64 more than once"]),
    ("repeated-int-float", {"sweep": {"lr": [1, 1.0]}}, ["'sweep.lr'", "1.0 more than once"]),
    ("empty-list", {"sweep": {"lr": []}}, ["'sweep.lr'", "empty"]),
    ("range-two-args", {"sweep": {"lr": {"logspace": [-4, 1]}}}, ["'sweep.lr'", "logspace"]),
    ("range-float-count", {"sweep": {"lr": {"logspace": [-4, 1, 3.0]}}}, ["'sweep.lr'"]),
    ("range-zero-count", {"sweep": {"lr": {"linspace": [0.1, 1, 0]}}}, ["'sweep.lr'"]),
    ("range-two-kinds", {"sweep": {"lr": {"logspace": [-4, 1, 3], "linspace": [0.1, 1, 3]}}}, ["'sweep.lr'"]),
    ("range-unknown-kind", {"sweep": {"lr": {"expspace": [1, 2, 3]}}}, ["'sweep.lr'", "'expspace'"]),
    ("range-empty-table", {"sweep": {"lr": {}}}, ["'sweep.lr'"]),
    ("geomspace-nonpositive", {"sweep": {"width": {"geomspace": [0, 64, 3]}}}, ["'sweep.width'", "geomspace"]),
    ("geomspace-inf", {"sweep": {"width": {"geomspace": [16, INF, 3]}}}, ["'sweep.width'"]),
    ("linspace-nan", {"sweep": {"seed": {"linspace": [NAN, 4, 3]}}}, ["'sweep.seed'"]),
    ("logspace-overflow-int", {"sweep": {"width": {"logspace": [1, 400, 3]}}}, ["'sweep.width'"]),
    ("logspace-overflow-float", {"sweep": {"lr": {"logspace": [-1, 400, 3]}}}, ["'sweep.lr'"]),
    ("logspace-rounds-to-zero", {"sweep": {"width": {"logspace": [-4, 1, 6]}}}, ["'sweep.width'", "0"]),
    ("steps-not-multiple", {"train": {"steps": 55, "record_every": 10}}, ["'train.steps'", "'train.record_every'"]),
    ("online-no-batch", {"task": {"d_in": 4, "n_train": 0}}, ["'train.batch_size'", "online"]),
    ("batch-too-big", {"task": {"n_train": 16}, "train": {"batch_size": 64}}, ["'train.batch_size'",
                                                                                 "'task.n_train'"]),
    ("batch-negative", {"train": {"batch_size": -1}}, ["'train.batch_size'"]),
    ("bad-param", {"sweep": {"param": ["sp", "mu_p"]}}, ["'sweep.param'", "'mu_p'", "mup"]),
    ("bad-optimizer", {"sweep": {"optimizer": "rmsprop"}}, ["'sweep.optimizer'", "'rmsprop'", "adamw"]),
    ("momentum-one", {"sweep": {"momentum": [0.5, 1.0]}}, ["'sweep.momentum'", "[0, 1)"]),
    ("momentum-negative", {"sweep": {"momentum": [-0.1]}}, ["'sweep.momentum'"]),
    ("init-scale-zero", {"sweep": {"init_scale": [0]}}, ["'sweep.init_scale'"]),
    ("depth-one", {"model": {"depth": 1}}, ["'model.depth'", ">= 2"]),
    ("depth-bool", {"model": {"depth": True}}, ["'model.depth'"]),
    ("unknown-act", {"model": {"act": "gelu"}}, ["'model.act'", "'gelu'", "'relu'"]),
    ("unknown-model-kind", {"model": {"kind": "cnn"}}, ["'model.kind'"]),
    ("uv-vector-output", {"model": {"kind": "uv"}, "task": {"d_out": 2}}, ["'task.d_out'", "uv"]),
    ("unknown-teacher", {"task": {"teacher": "cnn"}}, ["'task.teacher'"]),
    ("negative-noise", {"task": {"noise": -0.1}}, ["'task.noise'"]),
    ("d-in-zero", {"task": {"d_in": 0}}, ["'task.d_in'"]),
    ("bad-observable", {"train": {"observables": ["loss", "accuracy"]}}, ["'train.observables'", "'accuracy'"]),
    ("bad-hvp", {"train": {"hvp": "exact"}}, ["'train.hvp'", "'exact'", "fd"]),
    ("no-observables", {"train": {"observables": []}}, ["'train.observables'"]),
    ("betas-one", {"train": {"betas": [0.9]}}, ["'train.betas'"]),
    ("diverge-factor-one", {"train": {"diverge_factor": 1}}, ["'train.diverge_factor'"]),
    ("hypergrad-unknown-key", {"hypergrad": {"wrtt": ["lr"]}}, ["'hypergrad.wrtt'", "did you mean 'wrt'"]),
    ("hypergrad-bad-wrt", {"hypergrad": {"wrt": ["log_lr", "beta1"]}}, ["'hypergrad.wrt'", "'beta1'", "log_lr_layer"]),
    ("hypergrad-repeated-wrt", {"hypergrad": {"wrt": ["lr", "lr"]}}, ["'hypergrad.wrt'", "distinct"]),
    ("hypergrad-bad-objective", {"hypergrad": {"objective": "accuracy"}}, ["'hypergrad.objective'", "mean_loss"]),
    ("hypergrad-bad-mode", {"hypergrad": {"mode": "sideways"}}, ["'hypergrad.mode'", "'reverse'"]),
    ("hypergrad-remat-zero", {"hypergrad": {"remat_every": 0}}, ["'hypergrad.remat_every'"]),
    ("hypergrad-remat-past-steps", {"train": {"steps": 10}, "hypergrad": {"remat_every": 20}},
     ["'hypergrad.remat_every'", "'train.steps'"]),
    ("hypergrad-other-experiment", {"experiment": "lr-transfer", "hypergrad": {}}, ["'hypergrad'", "'sweep'"]),
    ("hypergrad-packed", {"train": {"layout": "packed"}, "hypergrad": {}}, ["'train.layout'", "[hypergrad]"]),
    ("hypergrad-observables", {"train": {"observables": ["loss"]}, "hypergrad": {}}, ["'train.observables'"]),
    ("hypergrad-momentum-adam", {"sweep": {"optimizer": ["sgd", "adam"]}, "hypergrad": {"wrt": ["momentum"]}},
     ["'hypergrad.wrt'", "'momentum'"]),
    ("hypergrad-task-axis", {"task": {"kind": "sparse_features"}, "train": {"batch_size": 8},
                             "sweep": {"alpha": [1.0, 2.0]}, "hypergrad": {}}, ["'sweep.alpha'", "[hypergrad]"]),
]


@pytest.mark.parametrize("spec,fragments", [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_raises_one_sentence_naming_the_key(spec, fragments):
    with pytest.raises(SpecError) as info:
        S.validate(spec)
    message = str(info.value)
    assert _one_sentence(message), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_required_key():
    with pytest.raises(SpecError, match=r"^spec key 'sweep\.lr' is required\.$"):
        S.validate({"sweep": {"width": [4]}}, required=("sweep.width", "sweep.lr"))


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)
    with pytest.raises(ValueError):
        S.validate({"sweep": {"lr": [-1]}})


BAD_SETS = [
    ("unknown-bare", ["widht=[4]"], ["'widht'", "did you mean 'width'"]),
    ("unknown-section", ["trian.steps=5"], ["'trian.steps'", "did you mean 'train'"]),
    ("ambiguous", ["kind=uv"], ["'kind'", "model.kind", "task.kind"]),
    ("section-as-value", ["sweep=3"], ["'sweep'", "sweep.KEY"]),
    ("no-equals", ["width"], ["'width'", "key=value"]),
    ("no-key", ["=5"], ["'=5'", "key=value"]),
]


@pytest.mark.parametrize("sets,fragments", [c[1:] for c in BAD_SETS], ids=[c[0] for c in BAD_SETS])
def test_bad_set_raises_one_sentence_naming_the_key(sets, fragments):
    with pytest.raises(SpecError) as info:
        S.apply_sets({"sweep": {"width": [4], "lr": [0.1]}}, sets)
    message = str(info.value)
    assert _one_sentence(message), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("item,key", [("width=[4,4]", "'sweep.width'"), ("train.steps=ten", "'train.steps'"),
                                      ("momentum=1", "'sweep.momentum'"), ("depth=true", "'model.depth'"),
                                      ("width=", "'sweep.width'"), ("lr=[0.1,", "'sweep.lr'")])
def test_bad_set_value_is_caught_by_validate(item, key):
    spec = S.apply_sets({"sweep": {"width": [4], "lr": [0.1]}}, [item])
    with pytest.raises(SpecError) as info:
        S.validate(spec)
    assert key in str(info.value) and _one_sentence(str(info.value)), str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# load()


def test_load_reads_toml(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('experiment = "sweep"\n[sweep]\nwidth = {geomspace = [16, 64, 3]}\nlr = [0.1]\n')
    spec = S.load(f)
    assert spec == {"experiment": "sweep", "sweep": {"width": {"geomspace": [16, 64, 3]}, "lr": [0.1]}}
    assert S.validate(spec)["sweep"]["width"] == [16, 32, 64]


@pytest.mark.parametrize("name,content,fragments", [
    ("missing.toml", None, ["'", "missing.toml'", "No such file"]),
    ("bad.toml", b"[sweep\nwidth = [4]\n", ["bad.toml'", "not valid TOML"]),
    ("dup.toml", b"[sweep]\nwidth = [4]\nwidth = [8]\n", ["dup.toml'", "not valid TOML"]),
    ("binary.toml", b"\xff\xfe[sweep]\n", ["binary.toml'", "UTF-8"]),
])
def test_load_errors(tmp_path, name, content, fragments):
    f = tmp_path / name
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(SpecError) as info:
        S.load(f)
    message = str(info.value)
    assert "\n" not in message and message.endswith("."), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_resolve_spec_file_range_overrides_default_range(tmp_path):
    # lr-transfer's default lr is a logspace table; a file's geomspace replaces it instead of merging into it
    from dynsim import experiments

    f = tmp_path / "s.toml"
    f.write_text('experiment = "lr-transfer"\n[sweep]\nlr = {geomspace = [0.01, 1, 3]}\n')
    exp, spec = experiments.resolve_spec(str(f), sets=["width=[8,16]"])
    assert exp.name == "lr-transfer"
    np.testing.assert_allclose(spec["sweep"]["lr"], [0.01, 0.1, 1.0])
    assert spec["sweep"]["width"] == [8, 16]
    assert spec["sweep"]["param"] == ["sp", "mup", "ntk", "mean_field"]  # the rest of the defaults still apply
