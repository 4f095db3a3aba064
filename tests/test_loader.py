"""TARGET forms, factory arguments, return forms and input inference."""

import sys

import pytest
import torch
from torch import nn

from initaudit import InputError, LoadError
from initaudit.load.inputs import first_layer, infer_shape, make_input, parse_shape
from initaudit.load.target import load_target, parse_factory_args


def test_file_target(write_target):
    path = write_target(
        """
        from torch import nn
        def build():
            return nn.Linear(3, 4)
        """
    )
    target = load_target(f"{path}:build")
    assert isinstance(target.model, nn.Linear) and target.example_input is None


def test_file_target_with_sibling_import(write_target, tmp_path):
    (tmp_path / "layers.py").write_text("from torch import nn\nWIDTH = 7\n")
    path = write_target(
        """
        import layers
        from torch import nn
        def build():
            return nn.Linear(layers.WIDTH, 2)
        """
    )
    assert load_target(f"{path}:build").model.in_features == 7


def test_package_module_target(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text("from torch import nn\ndef make():\n    return nn.Linear(5, 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_target("mypkg.nets:make").model.in_features == 5
    monkeypatch.delitem(sys.modules, "mypkg.nets")
    monkeypatch.delitem(sys.modules, "mypkg")


def test_factory_args_are_literals():
    assert parse_factory_args(["depth=30", "dims=(3, 4)", "act='tanh'", "name=relu", "flag=True"]) == {
        "depth": 30, "dims": (3, 4), "act": "tanh", "name": "relu", "flag": True,
    }
    with pytest.raises(LoadError):
        parse_factory_args(["novalue"])


def test_factory_args_reach_the_factory(write_target):
    path = write_target(
        """
        from torch import nn
        def build(width=3, bias=True):
            return nn.Linear(width, 2, bias=bias)
        """
    )
    model = load_target(f"{path}:build", {"width": 9, "bias": False}).model
    assert model.in_features == 9 and model.bias is None
    with pytest.raises(LoadError, match="cannot call build"):
        load_target(f"{path}:build", {"depth": 2})


def test_tuple_and_dict_returns(write_target):
    path = write_target(
        """
        import torch
        from torch import nn
        def pair():
            return nn.Linear(3, 1), torch.ones(2, 3)
        def full():
            return {"model": nn.Linear(3, 1), "input": torch.ones(2, 3), "loss": lambda out, x: out.sum()}
        def bad_key():
            return {"model": nn.Linear(3, 1), "inputs": torch.ones(2, 3)}
        """
    )
    t = load_target(f"{path}:pair")
    assert t.example_input.shape == (2, 3)
    t = load_target(f"{path}:full")
    assert callable(t.loss) and t.example_input.shape == (2, 3)
    with pytest.raises(LoadError, match="unknown key"):
        load_target(f"{path}:bad_key")


def test_example_input_function(write_target):
    path = write_target(
        """
        import torch
        from torch import nn
        def build():
            return nn.Linear(3, 1)
        def example_input():
            return torch.zeros(5, 3)
        """
    )
    assert load_target(f"{path}:build").example_input.shape == (5, 3)


@pytest.mark.parametrize(
    "source, target, match",
    [
        (None, "missing.py:build", "file not found"),
        ("def build(:\n    pass\n", "{path}:build", r"syntax error.*model.py:1"),
        ("from torch import nn\ndef make_model():\n    return nn.Linear(1, 1)\n", "{path}:build",
         "no attribute 'build'.*make_model"),
        ("def build():\n    raise RuntimeError('out of ideas')\n", "{path}:build",
         r"build\(\) raised RuntimeError: out of ideas \(.*model.py:2\)"),
        ("def build():\n    return 42\n", "{path}:build", r"returned int, expected an nn.Module"),
        ("import nonexistent_package_xyz\n", "{path}:build", "ModuleNotFoundError"),
        (None, "no_such_pkg_xyz.mod:build", "no module named 'no_such_pkg_xyz'"),
        (None, "model.py", "must be path/to/file.py:factory"),
    ],
)
def test_bad_targets(write_target, source, target, match):
    path = write_target(source) if source is not None else "unused"
    with pytest.raises(LoadError, match=match):
        load_target(target.format(path=path))


# input inference -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "module, shape, ids",
    [
        (nn.Linear(7, 2), (64, 7), False),
        (nn.Conv1d(3, 4, 3), (64, 3, 32), False),
        (nn.Conv2d(3, 4, 3), (64, 3, 32, 32), False),
        (nn.Conv3d(2, 4, 3), (64, 2, 32, 32, 32), False),
        (nn.Embedding(100, 8), (64, 16), True),
        (nn.LSTM(5, 8, batch_first=True), (64, 16, 5), False),
        (nn.GRU(5, 8), (16, 64, 5), False),
    ],
)
def test_infer_shape(module, shape, ids):
    assert infer_shape(module, 64) == (shape, ids)


def test_first_layer_follows_forward_order_not_registration():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(16, 2)  # registered first, called last
            self.body = nn.Linear(9, 16)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    assert first_layer(Backwards()) is not None
    assert first_layer(Backwards()).in_features == 9
    x = make_input(Backwards())
    assert x.shape == (64, 9)


def test_embedding_input_is_integer_ids_in_range():
    model = nn.Sequential(nn.Embedding(37, 4), nn.Flatten(), nn.Linear(64, 2))
    x = make_input(model)
    assert x.dtype == torch.long and x.shape == (64, 16) and 0 <= x.min() and x.max() < 37


def test_untraceable_model_falls_back_to_registration_order():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.a(x)
            return -self.a(x)

    assert make_input(Branchy()).shape == (64, 6)


def test_input_shape_override_and_parse():
    assert parse_shape("8,3,32,32") == (8, 3, 32, 32) == parse_shape("8x3x32x32")
    for bad in ("4,x", "4,,3", "", "-1,2", "8,3.5"):
        with pytest.raises(InputError):
            parse_shape(bad)
    with pytest.raises(InputError):
        parse_shape("8,three")
    with pytest.raises(InputError):
        parse_shape("8,0")
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert make_input(model, (2, 3, 10, 10)).shape == (2, 3, 10, 10)


def test_nothing_to_infer_names_the_three_ways():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.scale

    with pytest.raises(InputError) as info:
        make_input(Custom())
    message = str(info.value)
    assert "--input-shape" in message and "(model, example_input)" in message and "example_input()" in message


def test_input_dtype_follows_the_model():
    model = nn.Linear(4, 2).double()
    assert make_input(model).dtype == torch.float64
