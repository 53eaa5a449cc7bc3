"""The `mobilenet` supernet: subnets as slices, sandwich training, BN recalibration, the store."""

from __future__ import annotations

import multiprocessing
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgetune.spaces import (
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    ParamValue,
    resolve_space,
)
from edgetune.trainers.datasets import ImageData, load_image_dataset
from edgetune.trainers.models import build_mobilenet
from edgetune.trainers.supernet import (
    MobileNetSupernet,
    SupernetConfig,
    SupernetStore,
    evaluate,
    recalibrate_bn,
    subnet,
    supernet_key,
    train_supernet,
)

FULL = resolve_space("mobilenet", [])
#: Narrowed: fixed width and resolution, narrower channels, no expansion, SE always on.
NARROW = resolve_space("mobilenet", [
    FixedParam(name="width_mult", value=0.75),
    FixedParam(name="resolution", value=16),
    IntParam(name="s1_channels", low=8, high=16, step=8),
    IntParam(name="s3_blocks", low=1, high=2),
    *(CategoricalParam(name=f"s{i}_expand", choices=[1, 3]) for i in (1, 2, 3)),
    CategoricalParam(name="s2_se", choices=[True]),
])
#: Only some architecture parameters (the rest take `build_mobilenet`'s defaults), a float
#: width and no resolution (no resize layer).
PARTIAL: list[Param] = [
    FloatParam(name="width_mult", low=0.5, high=1.25),
    CategoricalParam(name="s2_kernel", choices=[3, 5, 7]),
    CategoricalParam(name="s3_se", choices=[False, True]),
    FloatParam(name="lr", low=1e-3, high=1e-2),
]
#: Small enough to train in seconds on digits (8x8, so resolution 8 means no resize).
SMALL = resolve_space("mobilenet", [
    CategoricalParam(name="width_mult", choices=[0.5, 1.0]),
    FixedParam(name="resolution", value=8),
    *(param for i in (1, 2, 3) for param in (
        IntParam(name=f"s{i}_blocks", low=1, high=2),
        CategoricalParam(name=f"s{i}_kernel", choices=[3, 5]),
        CategoricalParam(name=f"s{i}_expand", choices=[1, 3]),
    )),
])


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_image_dataset("digits", val_fraction=0.2, seed=0)


def _randomized(space: Sequence[Param], in_channels: int = 1) -> MobileNetSupernet:
    """A supernet with random weights and random batch-norm statistics, so that a wrong slice
    of any tensor changes the output."""
    torch.manual_seed(0)
    model = MobileNetSupernet(space, in_channels=in_channels, n_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _subnets(model: MobileNetSupernet, n: int) -> list[dict[str, ParamValue]]:
    rng = random.Random(0)
    return [model.largest(), model.smallest(), *(model.sample(rng) for _ in range(n))]


@pytest.mark.parametrize("space", [FULL, NARROW, PARTIAL], ids=["full", "narrow", "partial"])
def test_extracted_subnet_computes_what_the_active_supernet_does(space: list[Param]) -> None:
    model = _randomized(space)
    x = torch.rand(4, 1, 8, 8)
    configs = _subnets(model, 6)
    for params in configs:
        model.set_active(params)
        with torch.no_grad():
            expected = model(x)
            got = model.extract(params)(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The sample covers both expansion kinds and SE on and off where the space has them.
    if space is FULL:
        assert {c["s1_expand"] for c in configs} >= {1, 6}
        assert {c["s1_se"] for c in configs} == {False, True}


def test_subnets_differ_and_the_largest_is_the_whole_supernet() -> None:
    model = _randomized(FULL)
    x = torch.rand(2, 1, 8, 8)
    largest = model.extract(model.largest())
    assert {k: v.shape for k, v in largest.state_dict().items()} == {
        k.removeprefix("net."): v.shape for k, v in model.state_dict().items()
    }
    model.set_active(model.smallest())
    with torch.no_grad():
        assert not torch.allclose(model(x), largest(x))


@pytest.mark.parametrize("space", [FULL, NARROW, PARTIAL], ids=["full", "narrow", "partial"])
def test_extract_has_build_mobilenets_layout(space: list[Param]) -> None:
    model = _randomized(space, in_channels=3)
    for params in _subnets(model, 4):
        params = {**params, "arch": "mobilenet", "lr": 0.01, "dropout": 0.2}
        extracted = model.extract(params)
        built = build_mobilenet(params, in_channels=3, n_classes=10)
        assert [type(m) for m in extracted.modules()] == [type(m) for m in built.modules()]
        assert {k: v.shape for k, v in extracted.state_dict().items()} == {
            k: v.shape for k, v in built.state_dict().items()
        }
        assert not extracted.training


def test_extract_copies_so_the_supernet_is_left_alone() -> None:
    model = _randomized(SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    extracted = model.extract(model.smallest())
    with torch.no_grad():
        for p in extracted.parameters():
            p.add_(1.0)
    recalibrate_bn(extracted, np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_largest_smallest_and_samples_lie_in_the_space() -> None:
    model = MobileNetSupernet(NARROW, in_channels=1, n_classes=10)
    params = {p.name: p for p in NARROW}
    assert model.largest()["s1_channels"] == 16 and model.smallest()["s1_channels"] == 8
    assert model.largest()["s1_se"] is True and model.smallest()["s1_se"] is False
    assert model.largest()["s1_expand"] == 3 and model.smallest()["s1_expand"] == 1
    assert "lr" not in model.largest()
    for rng in (random.Random(3), np.random.default_rng(3)):
        for _ in range(20):
            sample = model.sample(rng)
            assert set(sample) == set(model.largest())
            assert all(params[k].can_take(v) for k, v in sample.items()), sample
    partial = MobileNetSupernet(PARTIAL, in_channels=1, n_classes=10)
    widths = {partial.sample(random.Random(i))["width_mult"] for i in range(10)}
    assert len(widths) == 10 and all(0.5 <= float(w) <= 1.25 for w in widths)


def test_params_outside_the_space_are_refused() -> None:
    model = MobileNetSupernet(NARROW, in_channels=1, n_classes=10)
    too_wide = {**model.largest(), "s1_channels": 32}
    with pytest.raises(ValueError, match="outside the supernet's space"):
        model.set_active(too_wide)
    with pytest.raises(ValueError, match="outside the supernet's space"):
        model.extract({**model.largest(), "s1_expand": 6})


@pytest.mark.slow
def test_training_lifts_the_largest_and_smallest_subnets_well_above_chance(
    digits: ImageData,
) -> None:
    seen: list[tuple[int, float]] = []
    model = train_supernet(SMALL, digits, SupernetConfig(epochs=3, batch_size=64),
                           progress=lambda epoch, acc: seen.append((epoch, acc)))
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert seen[-1][1] > 0.6  # chance: 0.1
    largest = evaluate(subnet(model, model.largest(), digits), digits.x_val, digits.y_val)
    smallest = evaluate(subnet(model, model.smallest(), digits), digits.x_val, digits.y_val)
    assert largest == pytest.approx(seen[-1][1])
    assert largest > 0.6 and smallest > 0.4, (largest, smallest)


def _tiny(digits: ImageData, n: int = 200) -> ImageData:
    return ImageData(digits.x_train[:n], digits.y_train[:n], digits.x_val[:n], digits.y_val[:n],
                     n_classes=digits.n_classes)


@pytest.mark.slow
@pytest.mark.parametrize("distill", [True, False])
def test_training_is_deterministic_for_a_seed(digits: ImageData, distill: bool) -> None:
    data = _tiny(digits)
    config = SupernetConfig(epochs=1, batch_size=64, distill=distill)
    a = train_supernet(SMALL, data, config).state_dict()
    b = train_supernet(SMALL, data, config).state_dict()
    c = train_supernet(SMALL, data, SupernetConfig(epochs=1, batch_size=64, distill=distill,
                                                   seed=1)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_recalibrate_bn_averages_the_statistics_of_the_data() -> None:
    torch.manual_seed(0)
    model = build_mobilenet({"s1_blocks": 1}, in_channels=1, n_classes=10)
    stem_conv, stem_bn = model.stem[0], model.stem[1]
    x = np.random.default_rng(0).random((300, 1, 8, 8), dtype=np.float32)
    recalibrate_bn(model, x, samples=256, batch_size=64)
    with torch.no_grad():
        batch_means = [stem_conv(torch.from_numpy(x[s : s + 64])).mean(dim=(0, 2, 3))
                       for s in range(0, 256, 64)]
    torch.testing.assert_close(stem_bn.running_mean, torch.stack(batch_means).mean(dim=0))
    assert stem_bn.momentum == 0.1 and not model.training


def _key(**changes: object) -> str:
    args: dict = {"dataset": "digits", "dataset_options": {"val_fraction": 0.2},
                  "config": SupernetConfig(), "in_channels": 1, "n_classes": 10}
    space = changes.pop("space", FULL)
    args.update(changes)
    return supernet_key(space, **args)  # type: ignore[arg-type]


def test_key_covers_the_space_data_and_config() -> None:
    base = _key()
    assert len(base) == 64 and base == _key()
    others = [
        _key(config=SupernetConfig(epochs=21)),
        _key(config=SupernetConfig(distill=False)),
        _key(dataset="mnist"),
        _key(dataset_options={"val_fraction": 0.3}),
        _key(space=NARROW),
        _key(in_channels=3),
        _key(n_classes=5),
    ]
    assert len({base, *others}) == len(others) + 1
    # Parameters that are not architecture (the learning rate) do not change the supernet.
    with_lr = resolve_space("mobilenet", [FloatParam(name="lr", low=1e-4, high=1e-1)])
    assert _key(space=with_lr) == base


def _count_and_build(
    counter: Path, space: Sequence[Param] = SMALL, delay: float = 0.0
) -> MobileNetSupernet:
    """An untrained supernet (the store does not care how it was trained), counted."""
    with counter.open("a") as f:
        f.write("built\n")
    time.sleep(delay)
    torch.manual_seed(len(counter.read_text().splitlines()))
    return MobileNetSupernet(space, in_channels=1, n_classes=10)


def test_store_trains_once_then_loads_the_same_weights(tmp_path: Path) -> None:
    store = SupernetStore(tmp_path / "supernets")
    assert (tmp_path / "supernets").stat().st_mode & 0o777 == 0o700
    key, counter = _key(space=SMALL), tmp_path / "count"
    first, trained = store.load_or_train(key, SMALL, lambda: _count_and_build(counter))
    assert trained and store.path(key).exists()
    second, trained = store.load_or_train(key, SMALL, lambda: _count_and_build(counter))
    assert not trained and counter.read_text() == "built\n"
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="sha256"):
        store.path("../escape")


@pytest.mark.parametrize("tamper", ["weights", "sidecar", "truncated", "other-space"])
def test_store_retrains_a_tampered_or_mismatched_file(tmp_path: Path, tamper: str) -> None:
    store = SupernetStore(tmp_path)
    key, counter = _key(space=SMALL), tmp_path / "count"
    store.load_or_train(key, SMALL, lambda: _count_and_build(counter))
    path = store.path(key)
    space: list[Param] = SMALL
    if tamper == "weights":  # same size, one byte flipped deep in the tensor data
        blob = bytearray(path.read_bytes())
        blob[-2000] ^= 0xFF
        path.write_bytes(bytes(blob))
    elif tamper == "sidecar":
        path.with_suffix(".json").write_text("{not json")
    elif tamper == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:  # the file under this key was trained for another space
        space = NARROW
    _, trained = store.load_or_train(key, space, lambda: _count_and_build(counter, space))
    assert trained and counter.read_text() == "built\nbuilt\n"
    _, trained = store.load_or_train(key, space, lambda: pytest.fail("built again"))
    assert not trained


def _race(root: str, key: str, counter: str) -> None:
    SupernetStore(Path(root)).load_or_train(
        key, SMALL, lambda: _count_and_build(Path(counter), delay=1.0)
    )


@pytest.mark.slow  # four spawned processes importing torch
def test_processes_racing_on_one_key_train_it_once(tmp_path: Path) -> None:
    key, counter = _key(space=SMALL), tmp_path / "count"
    other = _key(space=SMALL, n_classes=9)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_race, args=(str(tmp_path), k, str(counter)))
             for k in (key, key, key, other)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    # One build for `key` (three processes), one for the other key.
    assert counter.read_text() == "built\nbuilt\n"
    assert SupernetStore(tmp_path).load_or_train(key, SMALL, lambda: pytest.fail("built"))[1] \
        is False


def test_trainers_package_does_not_import_the_supernet() -> None:
    code = ("import sys, edgetune.trainers, edgetune.trainers.models; "
            "assert 'edgetune.trainers.supernet' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
