"""Released-checkpoint compatibility: exact keys/shapes of UniRepLKNet-A and ``load_pretrained`` behaviour.

The reference key lists come from the shared spec folder (``../shared/spec`` relative to the repo root, or
``$URLK_SPEC_DIR``); the tests needing it skip with a message when it is absent.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from urlk_forecast.models import CheckpointError, create_model, load_pretrained, reparameterize_model

REPO = Path(__file__).resolve().parents[1]
# the reference key lists (facts: names and shapes of the released state dicts), copied from the project's shared/spec
# so that CI checks them on any clone; test_vendored_spec_equals_the_shared_one catches drift
SPEC_DIR = Path(os.environ.get("URLK_SPEC_DIR", REPO / "tests" / "fixtures" / "spec"))
SHARED_SPEC_DIR = REPO.parent / "shared" / "spec"


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_vendored_spec_equals_the_shared_one(form: str) -> None:
    shared = SHARED_SPEC_DIR / f"unireplknet_a_state_dict_{form}.tsv"
    if not shared.is_file():
        pytest.skip(f"{shared} not present (only the development checkout has shared/)")
    assert (SPEC_DIR / shared.name).read_bytes() == shared.read_bytes()


def read_spec(form: str) -> list[tuple[str, tuple[int, ...]]]:
    path = SPEC_DIR / f"unireplknet_a_state_dict_{form}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"reference key list {path} is missing")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            rows.append((key, tuple(ast.literal_eval(shape))))
    return rows


def fake_released(rows: list[tuple[str, tuple[int, ...]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A stand-in for the released .pth: random tensors with the spec's names and shapes."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in rows:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
    return sd


def signature(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_keys_and_shapes_equal_released(form: str) -> None:
    rows = read_spec(form)
    model = create_model("unireplknet_a", deploy=form == "deploy")
    assert signature(model) == rows  # same keys, same shapes, same order
    n_keys, n_params = {"train": (626, 4_649_060), "deploy": (156, 4_437_300)}[form]
    assert len(rows) == n_keys
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_reparameterized_keys_equal_released_deploy() -> None:
    rows = read_spec("deploy")
    model = create_model("unireplknet_a").eval()
    reparameterize_model(model)
    assert signature(model) == rows


@pytest.mark.parametrize("form", ["train", "deploy"])
@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "module_prefix"])
def test_fake_released_checkpoint_loads_strict(tmp_path: Path, form: str, wrap: str) -> None:
    rows = read_spec(form)
    sd = fake_released(rows)
    obj: object
    if wrap == "raw":
        obj = sd
    elif wrap == "module_prefix":
        obj = {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 299}
    else:
        obj = {wrap: sd, "epoch": 299, "args": {"lr": 4e-3}}
    path = tmp_path / f"unireplknet_a_{form}.pth"
    torch.save(obj, path)
    model = create_model("unireplknet_a", deploy=form == "deploy")
    report = load_pretrained(model, path)
    assert report.ok and len(report.loaded) == len(rows)
    loaded = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k
    # the nn.Module API agrees: strict load of the same dict works too
    model.load_state_dict(sd, strict=True)


def test_training_checkpoint_then_reparameterize_matches_deploy_checkpoint(tmp_path: Path) -> None:
    """Load a training-form checkpoint, reparameterize, save; the result loads into deploy=True with equal output."""
    train = create_model("unireplknet_a", num_classes=10).eval()
    sd = fake_released([(k, tuple(v.shape)) for k, v in train.state_dict().items()], seed=3)
    load_pretrained(train, sd)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        ref = train(x)
    reparameterize_model(train)
    torch.save({"model": train.state_dict()}, tmp_path / "deploy.pth")
    deploy = create_model("unireplknet_a", num_classes=10, deploy=True).eval()
    load_pretrained(deploy, tmp_path / "deploy.pth")
    with torch.no_grad():
        out = deploy(x)
    assert float((out - ref).norm() / ref.norm()) < 1e-5


def test_form_mismatch_reports_and_hints() -> None:
    train = create_model("unireplknet_a")
    deploy = create_model("unireplknet_a", deploy=True)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(train, deploy.state_dict())
    msg = str(err.value)
    assert "missing in checkpoint (494)" in msg and "stages.*.*.dwconv.origin_bn.{weight,bias,running_mean" in msg
    assert "unexpected in checkpoint (24)" in msg and "stages.*.*.dwconv.bias (x2)" in msg
    assert "deploy=True" in msg
    # a generic wrapper around a deploy backbone cannot be converted automatically: the error says what to do
    with pytest.raises(CheckpointError, match="training form"):
        load_pretrained(torch.nn.Sequential(deploy), torch.nn.Sequential(train).state_dict())


def test_head_mismatch_strict_and_non_strict() -> None:
    src = create_model("unireplknet_a")
    dst = create_model("unireplknet_a", num_classes=10)
    with pytest.raises(CheckpointError, match=r"head.weight: model \[10, 320\] vs checkpoint \[1000, 320\]"):
        load_pretrained(dst, src.state_dict())
    before = dst.head.weight.clone()
    report = load_pretrained(dst, src.state_dict(), strict=False)
    assert not report.ok and [k for k, _, _ in report.mismatched] == ["head.weight", "head.bias"]
    assert torch.equal(dst.head.weight, before)  # untouched
    assert torch.equal(dst.stages[2][3].dwconv.lk_origin.weight, src.stages[2][3].dwconv.lk_origin.weight)
    assert "strict=False" in str(report)


def test_backbone_into_features_model() -> None:
    """A 1000-class checkpoint into a features-mode model: strict=False loads the whole backbone."""
    src = create_model("unireplknet_a")
    dst = create_model("unireplknet_a", out_indices=(0, 1, 2, 3))
    report = load_pretrained(dst, src.state_dict(), strict=False)
    assert sorted(report.unexpected) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert sorted(report.missing) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert len(report.loaded) == 626 - 4


def test_bad_files(tmp_path: Path) -> None:
    model = create_model("unireplknet_a")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(model, tmp_path / "nope.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth: cannot read checkpoint"):
        load_pretrained(model, bad)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(CheckpointError, match="empty.pth.*no state dict|empty.pth: the state dict holds no tensors"):
        load_pretrained(model, empty)


def test_create_model_pretrained(tmp_path: Path) -> None:
    src = create_model("unireplknet_a", in_chans=1, num_classes=5)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth")
    m = create_model("a", in_chans=1, num_classes=5, pretrained=tmp_path / "w.pth")
    assert torch.equal(m.head.weight, src.head.weight)


def test_training_checkpoint_into_deploy_model_is_converted(tmp_path: Path) -> None:
    """Released checkpoints are in training form; a deploy=True model loads them by re-parameterizing."""
    train = create_model("unireplknet_a", num_classes=10).eval()
    sd = fake_released([(k, tuple(v.shape)) for k, v in train.state_dict().items()], seed=4)
    train.load_state_dict(sd)
    torch.save({"model": sd}, tmp_path / "released.pth")
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        ref = train(x)
    deploy = create_model("a", num_classes=10, deploy=True, pretrained=tmp_path / "released.pth").eval()
    with torch.no_grad():
        out = deploy(x)
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    report = load_pretrained(deploy, tmp_path / "released.pth")
    assert report.ok and "re-parameterized" in report.source
    # a wrong head still fails strictly, naming the shapes
    with pytest.raises(CheckpointError, match=r"head.weight: model \[7, 320\]"):
        load_pretrained(create_model("a", num_classes=7, deploy=True), sd)
