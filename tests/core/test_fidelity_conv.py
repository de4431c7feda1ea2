"""Kind 8 of issue 11: LoRA on ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` in PEFT 0.21's layout and math.

A table of convolutions (stride, padding, bias, grouped); each cell: PEFT's file loaded by lorakit gives PEFT's
outputs, lorakit's file loaded by PEFT gives lorakit's, and merged == unmerged == PEFT merged (max |Δ| ≤ 1e-5
fp32). A grouped convolution cannot be merged (PEFT raises too): lorakit refuses with a typed error naming the
layer. Serving's per-row path: a mixed batch equals each adapter alone.
"""

from __future__ import annotations

import warnings

import peft
import pytest
import torch
from torch import nn

import lorakit as lk
from lorakit.core.errors import ConfigError, MergeError
from lorakit.core.merge import merged_adapters
from lorakit.core.model import adapter_parameters

TOL = 1e-5
CONVS = {  # name -> (the convolution, the shape of one input row)
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), (4, 9)),
    "conv1d_stride_nobias": (lambda: nn.Conv1d(4, 6, 4, stride=2, bias=False), (4, 10)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, padding=1), (4, 5, 5)),
    "conv2d_stride_rect": (lambda: nn.Conv2d(4, 6, (1, 3), stride=(2, 1), padding=(0, 2)), (4, 6, 5)),
    "conv3d": (lambda: nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1)), (4, 2, 4, 4)),
    "conv2d_grouped": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=2), (4, 5, 5)),
}


class ConvNet(nn.Module):
    """One convolution under a path with a prefix (``body.conv``), followed by a linear read-out."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.body = nn.ModuleDict({"conv": conv})
        self.out = nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body["conv"](x).flatten(1))  # (batch, out, *spatial) -> (batch, 3)


def _build(kind: str, seed: int = 0) -> tuple[ConvNet, torch.Tensor]:
    make, row = CONVS[kind]
    torch.manual_seed(seed)
    model = ConvNet(make())
    x = torch.randn(3, *row, generator=torch.Generator().manual_seed(7))
    model(x)  # materialise the lazy read-out
    return model.eval(), x


def _perturb(params, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


def _diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", list(CONVS))
def test_conv_lora_matches_peft_both_ways_and_merges(kind, tmp_path):
    warnings.simplefilter("ignore")
    grouped = "grouped" in kind
    _, x = _build(kind)

    # PEFT -> lorakit
    pm = peft.get_peft_model(
        _build(kind)[0], peft.LoraConfig(r=4, lora_alpha=8, target_modules=["conv"], init_lora_weights=False)
    )
    _perturb([p for n, p in pm.named_parameters() if "lora_" in n], seed=2)
    pm.eval()
    with torch.no_grad():
        reference = pm(x)
    pm.save_pretrained(tmp_path / "peft")
    model = lk.load_adapter(_build(kind)[0], tmp_path / "peft")
    with torch.no_grad():
        assert _diff(model(x), reference) <= TOL, "PEFT -> lorakit"

    # lorakit -> PEFT
    model = lk.inject(_build(kind)[0], lk.LoraConfig(r=4, alpha=8, targets=["conv"]))
    _perturb(adapter_parameters(model, "default").values(), seed=3)
    with torch.no_grad():
        reference = model(x)
    lk.save_adapter(model, tmp_path / "lk")
    pm = peft.PeftModel.from_pretrained(_build(kind)[0], tmp_path / "lk").eval()
    with torch.no_grad():
        assert _diff(pm(x), reference) <= TOL, "lorakit -> PEFT"

    # merge
    if grouped:
        with pytest.raises(NotImplementedError, match="groups > 1"):
            pm.merge_and_unload()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(MergeError, match=r"layer body\.conv: .*groups=2 cannot be merged"):
            lk.merge(model)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
        assert not merged_adapters(model)
        return
    lk.merge(model)
    with torch.no_grad():
        assert _diff(model(x), reference) <= TOL, "lorakit merged vs unmerged"
        assert _diff(model(x), pm.merge_and_unload()(x)) <= TOL, "lorakit merged vs PEFT merged"
    lk.unmerge(model)
    with torch.no_grad():
        assert _diff(model(x), reference) <= TOL, "unmerged again"


@pytest.mark.parametrize("kind", ["conv1d", "conv2d_stride_rect", "conv3d", "conv2d_grouped"])
def test_conv_rows_routed_to_adapters_equal_each_adapter_alone(kind):
    model, x = _build(kind)
    for name, seed in (("a", 4), ("b", 5)):
        lk.inject(model, lk.LoraConfig(r=2 if name == "a" else 4, alpha=8, targets=["conv"]), name=name)
        _perturb(adapter_parameters(model, name).values(), seed=seed)
    rows = ["a", None, "b"]
    with torch.no_grad(), lk.row_adapters(model, rows):
        mixed = model(x)
    for i, name in enumerate(rows):
        with torch.no_grad():
            if name is None:
                with lk.disabled(model):
                    alone = model(x[i : i + 1])
            else:
                lk.set_active(model, [name])
                alone = model(x[i : i + 1])
        assert _diff(mixed[i : i + 1], alone) <= TOL, f"row {i} ({name})"


@pytest.mark.parametrize(
    "conv,words",
    [
        (lambda: nn.Conv2d(4, 6, 3, dilation=2), "dilation"),
        (lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), "padding_mode 'reflect'"),
        (lambda: nn.Conv2d(4, 8, 3, groups=4), "groups=4 and rank 2"),
    ],
)
def test_convolutions_peft_would_get_wrong_are_refused_by_name(conv, words):
    model = ConvNet(conv())
    before = {k: v.clone() for k, v in model.state_dict().items() if "out" not in k}
    with pytest.raises(ConfigError, match=rf"target 'body\.conv'.*{words}"):
        lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["conv"]))
    assert not any("lora" in k for k in model.state_dict())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
